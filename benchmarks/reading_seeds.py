"""Candidate reading of the test suite's quick model over several seeds.

Trains the tiny model of ``tests/conftest.py`` (``QUICK_DATA``/``QUICK_TRAIN``: planted
transitions, about a minute per seed on this CPU) once per seed and reports, per seed, the share of
(listed, unlisted) item pairs of a direct prompt in which the listed item gets the higher
likelihood (``diagnose.candidate_reading``; 0.5 = the list is ignored) and the best validation
loss. Run it at two commits to compare a change to the prompts or the model on what the Beauty
models lack: reading their candidate list.

    python benchmarks/reading_seeds.py --seeds 0,1,2 --users 300 --output reading.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fixture's settings, not a copy of them

from conftest import QUICK_DATA, QUICK_TRAIN  # noqa: E402
from diagnose import candidate_reading  # noqa: E402

import elmrec  # noqa: E402
from elmrec.cli import positive_int  # noqa: E402
from elmrec.config import load_config  # noqa: E402
from elmrec.io import atomic_write_text  # noqa: E402
from elmrec.recommender import Recommender  # noqa: E402
from elmrec.runtime import machine_info  # noqa: E402
from elmrec.synthetic import make_synthetic  # noqa: E402
from elmrec.training import train  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--users", type=positive_int, default=300, help="users whose direct prompts are read")
    p.add_argument("--epochs", type=positive_int, help="override QUICK_TRAIN's epochs (the smoke test uses 1)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--output")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    torch.set_num_threads(args.threads)
    dataset = make_synthetic(**QUICK_DATA)
    if args.users > len(dataset.users):
        p.error(f"--users: at most {len(dataset.users)}, got {args.users}")
    users = np.random.default_rng(0).choice(dataset.users, args.users, replace=False)
    overrides = {**QUICK_TRAIN, **({"epochs": args.epochs} if args.epochs else {})}
    source = Path(elmrec.__file__).resolve().parents[2]  # the checkout whose elmrec runs (PYTHONPATH)
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            t0 = time.perf_counter()
            run = Path(tmp) / f"seed{seed}"
            train(load_config(overrides={**overrides, "seed": seed}), dataset, run, progress=False, echo=lambda s: None)
            rec = Recommender.from_pretrained(run / "best", device="cpu")
            log = [json.loads(line) for line in (run / "log.jsonl").open()]
            rows[seed] = {**candidate_reading(rec, dataset, users),
                          "best_valid_loss": min(e["valid_loss"]["mean"] for e in log),
                          "seconds": time.perf_counter() - t0}
            print(f"seed {seed}: listed wins {rows[seed]['listed_wins']:.3f}, log-likelihood gap "
                  f"{rows[seed]['log_likelihood_gap']:+.3f}, best valid loss {rows[seed]['best_valid_loss']:.3f}",
                  flush=True)
    wins = [r["listed_wins"] for r in rows.values()]
    print(f"mean listed wins {np.mean(wins):.3f} over {len(wins)} seeds")
    if args.output:
        report = {"commit": commit, "elmrec": str(source), "date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
                  "argv": sys.argv[1:] if argv is None else argv, "train": overrides, "seeds": rows,
                  "mean_listed_wins": float(np.mean(wins))}
        atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
