"""Learning-free baselines (popularity, id-shortcut) on P5-format data: every task and split asked
for, one table, one JSON file. The floor any trained model must clear, and a measure of how much
the item ids alone give away (compare a P5 directory with its randomly re-indexed copy).

    python benchmarks/baselines.py ../shared/data/beauty /tmp/beauty_random --output baselines.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

from elmrec.baselines import BASELINES
from elmrec.evaluation import TASKS, evaluate, format_table
from elmrec.formats import load_p5
from elmrec.io import atomic_write_text
from elmrec.runtime import machine_info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", help="P5-format directories")
    parser.add_argument("--models", nargs="+", choices=sorted(BASELINES), default=list(BASELINES))
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--splits", nargs="+", choices=("valid", "test"), default=["test"])
    parser.add_argument("--output", help="JSON file for all results")
    args = parser.parse_args(argv)

    results, records = {}, []
    start_all = time.perf_counter()
    for path in args.data:
        t0 = time.perf_counter()
        dataset = load_p5(path)
        load_s = time.perf_counter() - t0
        for model in args.models:
            scorer = BASELINES[model](dataset)
            for task in args.tasks:
                for split in args.splits:
                    t0 = time.perf_counter()
                    r = evaluate(scorer, dataset, task, split, progress=False)
                    seconds = time.perf_counter() - t0
                    results[f"{dataset.name}/{model}/{task}/{split}"] = r
                    records.append(
                        {
                            "data": path,
                            "model": model,
                            **r.to_dict(),
                            "seconds": round(seconds, 2),
                            "load_s": load_s,
                        }
                    )
    total = time.perf_counter() - start_all
    print(format_table(results))
    print(f"total {total:.1f} s (loading included)")
    if args.output:
        record = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "total_seconds": round(total, 2),
            "results": records,
        }
        atomic_write_text(args.output, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
