"""Training and evaluation speed of ELMRec on a P5 dataset (default: ../shared/data/beauty).

Training: samples/s per task (forward + backward + AdamW step, batch 64) and the share of step
time that is not model compute (sampling, prompt rendering, tokenisation). Evaluation: users/s for
sequential (constrained beam search, 30 beams, reranking) and direct (exact scoring of the 100
candidates, or beam search with 20 beams). Random weights: our constrained search always runs to
the end of an id, so a trained model costs the same. Peak resident memory is per process, so run
one size per process for memory figures. On a GPU (``--device cuda``) the figures are per task:
peak allocated GPU memory, and every timed step ends with a synchronisation.

    python benchmarks/speed.py --sizes tiny,cpu,small --threads 1 --output speed.json
    python benchmarks/speed.py --device cuda --amp --sizes small --batches 20 --eval-users 512 --eval-batch-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from elmrec import tasks as T
from elmrec.batching import default_length_groups, make_batch
from elmrec.config import load_config, positive_int
from elmrec.data import DataError
from elmrec.formats import load_p5
from elmrec.io import atomic_write_text
from elmrec.model import T5_SIZES
from elmrec.recommender import Recommender
from elmrec.runtime import machine_info, resolve_device, tune_cpu
from elmrec.training import forward_backward, fresh_model

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def bf16(enabled: bool, device: torch.device = CPU):
    """The autocast of ``--amp`` (training's ``autocast``), or none."""
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer reads the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gpu_gb(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last reset (None on a CPU: RSS is per process)."""
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None


def train_speed(dataset, size: str, batches: int, batch_size: int, micro: int | None, tasks: list[str],
                warmup: int, amp: bool = False, length_groups: int | None = None,
                device: torch.device = CPU) -> dict:
    overrides = {"size": size, "batch_size": batch_size}
    if length_groups is not None:
        overrides["length_groups"] = length_groups
    cfg = load_config(preset="beauty", overrides={**overrides, "seed": 0})
    model, tok = fresh_model(cfg, dataset)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    rng = np.random.default_rng(0)
    groups = cfg.train.length_groups or default_length_groups(device)
    out = {}
    for task in tasks:
        prep = step = 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for k in range(batches + warmup):  # the first batches warm up the allocator and kernels
            t0 = time.perf_counter()
            users = rng.choice(dataset.users, batch_size)
            samples = T.train_samples(task, dataset, users, rng, cfg.train.max_history, cfg.train.n_negatives)
            templates = rng.integers(4, size=len(samples)).tolist()
            batch = make_batch(samples, templates, tok, dataset.n_users, cfg, device)
            synchronize(device)
            t1 = time.perf_counter()
            opt.zero_grad()
            forward_backward(model, batch, micro, bf16(amp, device), groups)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            synchronize(device)
            t2 = time.perf_counter()
            if k >= warmup:
                prep += t1 - t0
                step += t2 - t1
        total = prep + step
        out[task] = {"s_per_batch": total / batches, "samples_per_s": batches * batch_size / total,
                     "non_model_share": prep / total, "tokens": int(batch.inputs["input_ids"].shape[1]),
                     "mean_tokens": float(batch.inputs["attention_mask"].sum(1).float().mean()),
                     "length_groups": groups, "peak_gpu_gb": peak_gpu_gb(device)}
        gpu = f"  peak GPU {out[task]['peak_gpu_gb']:.2f} GB" if device.type == "cuda" else ""
        print(f"  train {size:5s} {task:10s} {total / batches:7.3f} s/batch  {batches * batch_size / total:7.1f} "
              f"samples/s  non-model {100 * prep / total:4.1f}%{gpu}", flush=True)
    return out


def eval_speed(dataset, size: str, users: int, direct_decode: str, amp: bool = False,
               device: torch.device = CPU, batch_size: int | None = None) -> dict:
    overrides = {"size": size, "direct_decode": direct_decode, "eval_amp": amp}
    if batch_size is not None:
        overrides["eval_batch_size"] = batch_size
    cfg = load_config(preset="beauty", overrides={**overrides, "seed": 0})
    model, tok = fresh_model(cfg, dataset)
    model.to(device)
    model.eval()
    rec = Recommender(model, tok, cfg, dataset.offsets, dataset.items, dataset.summary())
    warm = untimed_users(cfg.eval.eval_batch_size)
    ids = np.random.default_rng(0).choice(dataset.users, users + warm, replace=False)
    hist = [dataset.split_history(int(u), "test") for u in ids]
    cands = np.concatenate([dataset.targets("test")[ids][:, None], dataset.negatives[ids]], 1)
    rec.trie()  # built once per process (12k ids), not per batch
    rec.score_all(ids[:warm], hist[:warm])
    rec.score_candidates(ids[:warm], hist[:warm], cands[:warm])
    ids, hist, cands = ids[warm:], hist[warm:], cands[warm:]
    out = {"eval_batch_size": cfg.eval.eval_batch_size}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    rec.score_all(ids, hist)
    out["sequential_users_per_s"] = users / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    rec.score_candidates(ids, hist, cands)
    out[f"direct_{direct_decode}_users_per_s"] = users / (time.perf_counter() - t0)
    out["peak_gpu_gb"] = peak_gpu_gb(device)
    print(f"  eval  {size:5s} sequential {out['sequential_users_per_s']:.2f} users/s   direct ({direct_decode}) "
          f"{out[f'direct_{direct_decode}_users_per_s']:.2f} users/s", flush=True)
    return out


def untimed_users(eval_batch_size: int) -> int:
    """Users evaluated once before the timing (one batch of each task: allocator, kernels)."""
    return max(16, eval_batch_size)


def non_negative_int(text: str) -> int:
    """argparse type for --warmup: 0 is allowed (no untimed batches), negatives are not."""
    return positive_int(text) if text.strip() != "0" else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "beauty"))
    p.add_argument("--sizes", default="tiny,cpu,small")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--batches", type=positive_int, default=3)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--micro-batch-size", type=positive_int, help="forward/backward each batch in chunks of this size")
    p.add_argument("--length-groups", type=positive_int,
                   help="train.length_groups: a batch sorted by length in this many groups (default: 4 on a CPU, "
                        "1 on a GPU)")
    p.add_argument("--tasks", default="sequential,direct", help="training tasks to time")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed batches before the timed ones")
    p.add_argument("--eval-users", type=positive_int, default=48)
    p.add_argument("--direct-decode", default="score", choices=("score", "beam"))
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast in training (train.amp) and evaluation (eval.eval_amp)")
    p.add_argument("--eval-batch-size", type=positive_int, help="eval.eval_batch_size (default: the config's, 16)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--output")
    args = p.parse_args(argv)
    if unknown := set(args.sizes.split(",")) - set(T5_SIZES):
        p.error(f"--sizes: choose from {','.join(T5_SIZES)}, got {sorted(unknown)}")
    if set(args.tasks.split(",")) - {"sequential", "direct"}:
        p.error(f"--tasks: choose from sequential,direct, got {args.tasks!r}")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    tune_cpu()
    try:
        dataset = load_p5(args.data)
    except DataError as e:
        p.error(str(e))
    warm = untimed_users(args.eval_batch_size or load_config().eval.eval_batch_size)
    if not args.skip_eval and args.eval_users + warm > len(dataset.users):
        p.error(f"--eval-users: at most {len(dataset.users) - warm} for this dataset ({len(dataset.users)} users, "
                f"{warm} of them untimed)")
    results = {"data": args.data, "threads": args.threads, "machine": machine_info(),
               "python": sys.version.split()[0], "amp": args.amp, "device": str(device),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "argv": sys.argv[1:] if argv is None else argv,
               "date": time.strftime("%Y-%m-%d"),
               "sizes": {}}
    for size in args.sizes.split(","):
        r = {}
        if not args.skip_train:
            r["train"] = train_speed(dataset, size, args.batches, args.batch_size, args.micro_batch_size,
                                     args.tasks.split(","), args.warmup, args.amp, args.length_groups, device)
        if not args.skip_eval:
            r["eval"] = eval_speed(dataset, size, args.eval_users, args.direct_decode, args.amp, device,
                                   args.eval_batch_size)
        r["peak_rss_gb_so_far"] = peak_rss_gb()
        results["sizes"][size] = r
        print(f"  peak RSS so far {r['peak_rss_gb_so_far']:.2f} GB", flush=True)
    if args.output:
        atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
