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
import sys
import time

import numpy as np
from scipy.stats import binomtest

from elmrec.baselines import BASELINES
from elmrec.evaluation import evaluate, sample_users

from checkpoint_args import add_common_args, load_checkpoint, load_data, positive_int, write_report


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
    add_common_args(p)
    p.add_argument("--task", choices=("sequential", "direct"), default="sequential")
    p.add_argument("--baselines", default="popularity,sequential-prior,direct-prior",
                   help=f"comma-separated, from {', '.join(BASELINES)}")
    p.add_argument("--eval-users", type=positive_int, help="the benchmark's seeded test users (default: all)")
    p.add_argument("--k", type=positive_int, default=10)
    args = p.parse_args(argv)
    names = args.baselines.split(",")
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        p.error(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    dataset = load_data(p, args)
    users = sample_users(dataset, args.eval_users, seed=0)  # the benchmark's test users
    rec = load_checkpoint(p, args.checkpoint, dataset)
    t0 = time.time()
    ranks = evaluate(rec, dataset, args.task, "test", users=users, progress=False).ranks
    report = {"checkpoint": args.checkpoint, "data": args.data, "reindex": args.reindex, "task": args.task,
              "eval_s": time.time() - t0, "against": {}}
    for name in names:
        base = evaluate(BASELINES[name](dataset), dataset, args.task, "test", users=users, progress=False).ranks
        row = report["against"][name] = paired(ranks, base, args.k)
        print(f"{args.task} vs {name}: HR@{args.k} {row[f'hr@{args.k}_a']:.4f} vs {row[f'hr@{args.k}_b']:.4f} "
              f"(hits only here {row['only_a_hits']}, only there {row['only_b_hits']}, McNemar p "
              f"{row['mcnemar_p']:.3g}); NDCG@{args.k} difference {row[f'ndcg@{args.k}_diff']:+.4f} "
              f"+- {row[f'ndcg@{args.k}_diff_se']:.4f}", flush=True)
    write_report(args.output, report, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
