"""ELMRec against the learning-free baselines on a P5 dataset within a fixed CPU budget.

Every ELMRec row is trained with the same wall-clock budget; its checkpoint is chosen on the
validation loss (the test split is used for nothing but the final figures), then evaluated on the
test split: sequential (all items, reranking on) and direct (100 candidates). Rows: popularity,
id-shortcut, ELMRec and its ablations (no graph-aware / no incremental whole-word embeddings, no
soft prompts, and no reranking = the ELMRec checkpoint with N = 0). ``--reindex both`` repeats
everything on a copy with randomly permuted item ids, where the P5 id-order shortcut is worthless.

    python benchmarks/beauty_cpu.py --budget-minutes 30 --reindex both --out runs/beauty-cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from elmrec.baselines import BASELINES
from elmrec.config import load_config
from elmrec.data import load_p5, reindex
from elmrec.evaluation import evaluate, sample_users
from elmrec.io import atomic_write_text
from elmrec.recommender import Recommender
from elmrec.training import train

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = {
    "elmrec": {},
    "no-graph": {"use_graph": False},
    "no-incremental": {"use_incremental": False},
    "no-soft-prompts": {"use_soft_prompts": False},
}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def evaluate_row(results: dict, label: str, scorer, dataset, users, name: str, progress: bool, wall=None) -> None:
    """Test-split metrics of one row on both tasks, printed and stored in ``results[label]``."""
    results[label] = {"wall_s": wall}
    for task in ("sequential", "direct"):
        t0 = time.time()
        res = evaluate(scorer, dataset, task, "test", users=users, progress=progress)
        results[label][task] = res.metrics
        results[label][f"{task}_eval_s"] = time.time() - t0
    print(f"[{name}] {label}: " + "  ".join(
        f"{t} NDCG@10 {results[label][t]['NDCG@10']:.4f} HR@10 {results[label][t]['HR@10']:.4f}"
        for t in ("sequential", "direct")), flush=True)


def run(args: argparse.Namespace) -> dict:
    base = load_p5(args.data)
    variants = {"p5": base, "random": reindex(base, "random", seed=0)}
    wanted = ["p5", "random"] if args.reindex == "both" else [args.reindex]
    rows = args.rows.split(",")
    unknown = set(rows) - set(ABLATIONS) - {"no-rerank"}
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {sorted(ABLATIONS) + ['no-rerank']}")
    overrides = dict(size=args.size, budget_minutes=args.budget_minutes, valid_users=args.valid_users,
                     threads=args.threads, epochs=args.epochs)
    for item in args.set or []:
        key, _, value = item.partition("=")
        overrides[key] = value
    out = Path(args.out)
    report = {"commit": commit(), "data": args.data, "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M"), "budget_minutes": args.budget_minutes,
              "preset": args.preset, "overrides": overrides, "results": {}}
    for name in wanted:
        dataset = variants[name]
        users = sample_users(dataset, args.eval_users, seed=0)
        results = report["results"][name] = {}

        def score(label, scorer, wall=None, _results=results, _dataset=dataset, _users=users, _name=name):
            evaluate_row(_results, label, scorer, _dataset, _users, _name, args.progress, wall)

        for baseline in ("popularity", "id-shortcut"):
            score(baseline, BASELINES[baseline](dataset))
        for row in rows:
            if row == "no-rerank":
                continue
            cfg = load_config(preset=args.preset, overrides={**overrides, **ABLATIONS[row]})
            run_dir = out / name / row
            t0 = time.time()
            summary = train(cfg, dataset, run_dir, progress=args.progress, echo=lambda s: None)
            wall = time.time() - t0
            results[f"{row} (train)"] = summary
            score(row, Recommender.from_pretrained(run_dir / "best", device="cpu"), wall)
            if row == "elmrec" and "no-rerank" in rows:
                plain = Recommender.from_pretrained(run_dir / "best", device="cpu", rerank=False, extra_candidates=0)
                score("no-rerank", plain)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "beauty"))
    p.add_argument("--out", default="runs/beauty-cpu")
    p.add_argument("--size", default="cpu")
    p.add_argument("--preset", default="beauty")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="training budget per ELMRec row")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--reindex", choices=("p5", "random", "both"), default="both")
    p.add_argument("--rows", default="elmrec,no-graph,no-incremental,no-rerank,no-soft-prompts")
    p.add_argument("--valid-users", type=int, default=2000)
    p.add_argument("--eval-users", type=int, help="evaluate a fixed random subset (default: all users)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any other config field, e.g. seq_alpha=0.1")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--output", help="JSON report (default: OUT/report.json)")
    args = p.parse_args(argv)
    t0 = time.time()
    report = run(args)
    report["wall_s"] = time.time() - t0
    path = Path(args.output or Path(args.out) / "report.json")
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
