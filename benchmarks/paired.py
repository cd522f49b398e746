"""Is a checkpoint's margin over a baseline more than noise? A paired test on the same users.

Both scorers rank the same test users' targets, so their differences are paired. For each baseline
this reports the discordant users at HR@K (the checkpoint hits and the baseline misses, and the
reverse) with the exact two-sided McNemar p-value (a binomial test on the discordant users), and the
mean per-user NDCG@K difference with its paired standard error.

    python benchmarks/paired.py runs/beauty-d16/p5/elmrec/best --data ../shared/data/beauty \\
        --task sequential --eval-users 5000
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from scipy.stats import binomtest

from elmrec.baselines import BASELINES
from elmrec.data import DataError, load_p5, reindex
from elmrec.evaluation import evaluate, sample_users
from elmrec.io import atomic_write_text
from elmrec.recommender import Recommender
from elmrec.runtime import machine_info


def paired(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int = 10) -> dict:
    """Paired comparison of two rank vectors (0-based rank of each user's target), A against B."""
    hit_a, hit_b = ranks_a < k, ranks_b < k
    only_a, only_b = int(np.sum(hit_a & ~hit_b)), int(np.sum(hit_b & ~hit_a))
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    gain_a, gain_b = (np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0) for r in (ranks_a, ranks_b))
    diff = gain_a - gain_b
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return {"users": len(diff), f"hr@{k}_a": float(hit_a.mean()), f"hr@{k}_b": float(hit_b.mean()),
            "only_a_hits": only_a, "only_b_hits": only_b, "mcnemar_p": float(p),
            f"ndcg@{k}_diff": float(diff.mean()), f"ndcg@{k}_diff_se": se}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory (e.g. RUN/best)")
    p.add_argument("--data", required=True, help="the P5 directory the checkpoint was trained on")
    p.add_argument("--reindex", choices=("p5", "random"), default="p5",
                   help="random: the benchmark's seeded re-indexed copy (beauty_cpu.py --reindex random)")
    p.add_argument("--task", choices=("sequential", "direct"), default="sequential")
    p.add_argument("--baselines", default="popularity,sequential-prior,direct-prior",
                   help=f"comma-separated, from {', '.join(BASELINES)}")
    p.add_argument("--eval-users", type=int, help="the benchmark's seeded test users (default: all)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", help="JSON report")
    args = p.parse_args(argv)
    names = args.baselines.split(",")
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        p.error(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    torch.set_num_threads(args.threads)
    try:
        dataset = load_p5(args.data)
    except DataError as e:
        p.error(str(e))
    if args.reindex == "random":
        dataset = reindex(dataset, "random", seed=0)
    users = sample_users(dataset, args.eval_users, seed=0)  # the benchmark's test users
    try:
        rec = Recommender.from_pretrained(args.checkpoint, device="cpu")
        rec.check_dataset(dataset.fingerprint())  # e.g. a --reindex other than the training one
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    t0 = time.time()
    ranks = evaluate(rec, dataset, args.task, "test", users=users, progress=False).ranks
    report = {"checkpoint": args.checkpoint, "data": args.data, "reindex": args.reindex, "task": args.task,
              "machine": machine_info(), "argv": sys.argv[1:] if argv is None else argv,
              "date": time.strftime("%Y-%m-%d %H:%M"), "eval_s": time.time() - t0, "against": {}}
    for name in names:
        base = evaluate(BASELINES[name](dataset), dataset, args.task, "test", users=users, progress=False).ranks
        row = report["against"][name] = paired(ranks, base, args.k)
        print(f"{args.task} vs {name}: HR@{args.k} {row[f'hr@{args.k}_a']:.4f} vs {row[f'hr@{args.k}_b']:.4f} "
              f"(hits only here {row['only_a_hits']}, only there {row['only_b_hits']}, McNemar p "
              f"{row['mcnemar_p']:.3g}); NDCG@{args.k} difference {row[f'ndcg@{args.k}_diff']:+.4f} "
              f"+- {row[f'ndcg@{args.k}_diff_se']:.4f}", flush=True)
    if args.output:
        atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
