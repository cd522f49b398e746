"""Render the tables of one or more ``beauty_cpu.py`` reports, merged, as markdown.

One model per task (the paper trains its sequential and direct models apart) runs as one
``beauty_cpu.py --eval-tasks TASK`` invocation per task, side by side; this merges their reports
row by row and task by task, so that a table cell always comes from the report that evaluated it.
Rows that several reports hold for the same task (the learning-free baselines) must agree.

    python benchmarks/render.py runs/seq/report.json runs/direct/report.json --output runs/merged
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from beauty_cpu import DERIVED_ROWS, TASKS, table

from elmrec.io import atomic_write_text

# what a row's entry holds about each task (the rest: wall times, stats, are per report)
_DEPENDENCE = {"direct": "direct_rank_correlation", "sequential": "sequential_top_overlap"}


def _tasks_of(report: dict) -> tuple[str, ...]:
    return tuple(report.get("eval_tasks", TASKS))


def merge(reports: list[dict]) -> dict:
    """One report whose rows hold, per task, what the report that evaluated that task says."""
    merged: dict = {"results": {}, "sources": []}
    for report in reports:
        merged["sources"].append({k: report.get(k) for k in ("commit", "date", "argv", "eval_tasks", "budget_minutes")})
        for name, rows in report["results"].items():
            out = merged["results"].setdefault(name, {})
            for label, row in rows.items():
                trained = label.endswith(" (train)")
                base = label.removesuffix(" (train)")
                if base in ("popularity", "cooccurrence", "id-shortcut"):
                    tasks = TASKS
                elif base in DERIVED_ROWS:  # its one task, whatever its checkpoint's report evaluated
                    tasks = (DERIVED_ROWS[base],)
                else:
                    tasks = _tasks_of(report)
                target = out.setdefault(label, {})
                if trained:
                    if "valid_vs_prior" in row:  # ELMRec rows (not SASRec)
                        prior = {t: v for t, v in row["valid_vs_prior"].items() if t in tasks}
                        target.setdefault("valid_vs_prior", {}).update(prior)
                    target.setdefault("per_task", {}).update({t: {k: v for k, v in row.items() if k != "valid_vs_prior"}
                                                              for t in tasks})
                    continue
                for key, value in row.items():
                    task = next((t for t in TASKS if key == t or key.startswith(f"{t}_")), None)
                    if task is not None and task not in tasks:
                        continue
                    if key == "user_dependence":
                        dep = target.setdefault(key, {})
                        for t in tasks:
                            if _DEPENDENCE[t] in value:
                                dep[_DEPENDENCE[t]] = value[_DEPENDENCE[t]]
                        continue
                    measured = key == task or key == f"{task}_users"  # not wall times or memory
                    if measured and key in target and not _same(target[key], value):
                        raise ValueError(f"{name}/{label}: two reports disagree on {key}")
                    target.setdefault(key, value)
    return merged


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="report.json files of beauty_cpu.py")
    p.add_argument("--output", help="write OUTPUT.json (the merged report) and OUTPUT.md (the tables)")
    args = p.parse_args(argv)
    try:
        reports = [json.loads(Path(r).read_text()) for r in args.reports]
        merged = merge(reports)
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = table(merged)
    print(text)
    if args.output:
        atomic_write_text(f"{args.output}.json", json.dumps(merged, indent=2) + "\n")
        atomic_write_text(f"{args.output}.md", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
