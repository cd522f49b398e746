"""torchrun on this machine: N gloo processes against one, same global batch and seed.

Trains the same short run both ways (per-task losses, validation losses, final weights, samples/s
from each run's log) and evaluates a checkpoint's test users sharded over N processes against one
(metrics and wall time). Correctness and overhead, not speed-up: the ranks share the CPU cores.

    python benchmarks/distributed_check.py --data ../shared/data/beauty --checkpoint RUN/best \
        --out benchmarks/results/distributed-beauty.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from safetensors.torch import load_file

from elmrec.io import atomic_write_text


def elmrec(args: list[str], ranks: int, threads: int) -> float:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    cmd = (launcher if ranks > 1 else [sys.executable]) + ["-m", "elmrec", *args]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", help="evaluate this checkpoint sharded (default: the trained run's best)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=50, help="training steps of each run")
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--eval-users", type=int, default=2000)
    p.add_argument("--out", help="JSON report")
    args = p.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.ranks)
    work = Path(tempfile.mkdtemp(prefix="elmrec-dist-"))
    train = ["train", "--data", args.data, "--preset", "beauty", "--size", "tiny", "--tasks", "sequential,direct",
             "--batch-size", str(args.batch_size), "--steps-per-epoch", str(args.steps // 2), "--epochs", "1",
             "--dropout", "0", "--valid-users", "500", "--no-progress", "--seq-targets", "20", "--lr", "3e-3"]
    report: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "ranks": args.ranks,
                    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                    "steps": args.steps, "global_batch": args.batch_size, "train": {}, "evaluate": {}}
    logs = {}
    for ranks in (1, args.ranks):
        t = threads * args.ranks if ranks == 1 else threads  # every run uses all cores
        wall = elmrec(train + ["--out", str(work / f"r{ranks}"), "--threads", str(t)], ranks, t)
        logs[ranks] = [json.loads(x) for x in (work / f"r{ranks}" / "log.jsonl").read_text().splitlines()]
        last = logs[ranks][-1]
        report["train"][ranks] = {"wall_s": round(wall, 1), "threads_per_rank": t,
                                  "samples_per_s": {k: round(v["samples_per_s"], 1) for k, v in last["train"].items()},
                                  "train_loss": {k: v["loss"] for k, v in last["train"].items()},
                                  "valid_loss": last["valid_loss"]}
        print(json.dumps({ranks: report["train"][ranks]}))
    a = load_file(work / "r1" / "last" / "model.safetensors")
    b = load_file(work / f"r{args.ranks}" / "last" / "model.safetensors")
    report["train"]["max_relative_weight_difference"] = max(
        float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-6)) for k in a)
    one, many = report["train"][1], report["train"][args.ranks]
    report["train"]["max_relative_loss_difference"] = max(
        abs(many[s][k] - one[s][k]) / abs(one[s][k]) for s in ("train_loss", "valid_loss") for k in one[s])
    checkpoint = args.checkpoint or str(work / "r1" / "best")
    for task in ("sequential", "direct"):
        for ranks in (1, args.ranks):
            out = work / f"eval-{task}-{ranks}.json"
            t = threads * args.ranks if ranks == 1 else threads
            wall = elmrec(["evaluate", "--checkpoint", checkpoint, "--data", args.data, "--task", task, "--users",
                           str(args.eval_users), "--threads", str(t), "--no-progress", "--output", str(out)], ranks, t)
            res = json.loads(out.read_text())
            report["evaluate"].setdefault(task, {})[ranks] = {"wall_s": round(wall, 1), "metrics": res["metrics"]}
        same = report["evaluate"][task][1]["metrics"] == report["evaluate"][task][args.ranks]["metrics"]
        report["evaluate"][task]["identical_metrics"] = same
        print(json.dumps({task: report["evaluate"][task]}))
    print(json.dumps({k: report["train"][k] for k in ("max_relative_weight_difference",
                                                      "max_relative_loss_difference")}))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
