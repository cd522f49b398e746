"""ELMRec against learning-free baselines and a SASRec trained under the same CPU budget, on a P5 dataset.

Every trained row (SASRec, ELMRec and its ablations) gets the same wall-clock training budget and
thread count; checkpoints are chosen on validation users (the test split is used for nothing but
the final figures), then evaluated on the test split of all users: sequential (full ranking, the
user's history excluded) and direct (the target among the 99 fixed negatives of negative.txt).
Rows: popularity, co-occurrence and id-shortcut (learning-free), SASRec (``sasrec.py``), ELMRec
(one token per id) and its ablations: no graph-aware / no incremental whole-word embeddings, no
soft prompts, no reranking (the ELMRec checkpoint without it, evaluated with the history kept, so
that reranking's work shows) and the paper's digit-piece ids (``digits``). ``--reindex both``
repeats everything on a copy with randomly permuted item ids, where the P5 id-order shortcut is
worthless; ``--parallel`` runs the two copies side by side, one process each. ``--eval-tasks``
evaluates the trained rows on some tasks only: one model per task, as the paper trains them, runs
as one invocation per task, and ``render.py`` merges their reports into one table.

    python benchmarks/beauty_cpu.py --budget-minutes 20 --reindex both --parallel --out runs/beauty-cpu
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from elmrec.baselines import BASELINES
from elmrec.config import load_config
from elmrec.data import reindex
from elmrec.evaluation import evaluate, sample_users, user_dependence
from elmrec.formats import load_p5
from elmrec.io import atomic_write_text
from elmrec.recommender import Recommender
from elmrec.runtime import machine_info, release_free_memory, resolve_device
from elmrec.training import LOG_FILE, train

from sasrec import SASRecConfig, train_sasrec

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("sequential", "direct")
ABLATIONS = {
    "elmrec": {},
    "no-graph": {"use_graph": False},
    "no-incremental": {"use_incremental": False},
    "no-soft-prompts": {"use_soft_prompts": False},
    # the paper's digit-piece ids; the options built on one token per id (continuations, one decoder
    # step per history prefix, the latest item as the decoder's first input, item tokens started
    # from co-occurrence) are switched off
    "digits": {"id_tokens": "digits", "seq_targets": 1, "causal_history": False, "last_item_start": False,
               "item_init": "random"},
}
BASELINE_ROWS = ("popularity", "cooccurrence", "id-shortcut")
# rows that re-evaluate the elmrec checkpoint: without reranking; direct read from the sequential prompt
# rows read from the elmrec row's checkpoint, and the one task each is evaluated on
DERIVED_ROWS = {"no-rerank": "sequential", "seq-direct": "direct"}


def commit(root: Path = ROOT) -> str:
    """HEAD's short hash, with "+dirty" when tracked files differ from it: a report then says that
    its figures came from code no commit holds."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_reset() -> None:
    """Zero the process's peak resident memory (Linux), so each evaluation reports its own peak;
    first hand back what the allocator kept from training (see ``elmrec.runtime``)."""
    release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_gb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def evaluate_row(results: dict, label: str, scorer, dataset, users, name: str, progress: bool,
                 tasks=TASKS, wall=None, exclude_history: bool = True) -> None:
    """Test-split metrics of one row, printed and stored in ``results[label]``: the metrics, the
    wall time and peak memory of each task's evaluation and the number of users."""
    row = results.setdefault(label, {})
    row["wall_s"] = wall
    if hasattr(scorer, "reset_stats"):  # the counts of this evaluation only (not of a probe before it)
        scorer.reset_stats()
    row["exclude_history"] = exclude_history
    for task in tasks:
        peak_reset()
        t0 = time.time()
        res = evaluate(scorer, dataset, task, "test", users=users, progress=progress, exclude_history=exclude_history)
        row[task] = res.metrics
        row[f"{task}_eval_s"] = time.time() - t0
        row[f"{task}_peak_gb"] = peak_gb()
        row[f"{task}_users"] = res.protocol["n_users"]
        if hasattr(scorer, "reset_stats"):  # an ELMRec recommender's counts (dropped, invalid)
            row[f"{task}_stats"] = scorer.stats()
            scorer.reset_stats()
        print(f"[{name}] {label} {task}: NDCG@10 {res.metrics['NDCG@10']:.4f} HR@10 {res.metrics['HR@10']:.4f}"
              f" ({row[f'{task}_eval_s']:.0f} s)", flush=True)


def probe_row(results: dict, label: str, scorer, dataset, users, name: str) -> None:
    """Does the row's output depend on whose prompt it reads? On VALIDATION users (a diagnostic,
    never a choice): 1.0 means an item prior that ignores the user (see ``user_dependence``)."""
    t0 = time.time()
    dep = user_dependence(scorer, dataset, "valid", users=users)
    dep["eval_s"] = time.time() - t0
    results.setdefault(label, {})["user_dependence"] = dep
    print(f"[{name}] {label} user dependence (valid): direct rank correlation "
          f"{dep.get('direct_rank_correlation', float('nan')):.4f}, sequential top-10 overlap "
          f"{dep['sequential_top_overlap']:.4f} ({dep['eval_s']:.0f} s)", flush=True)


def valid_against_prior(run_dir: Path) -> dict:
    """The best checkpoint's validation loss per item task next to the item prior's (logged before
    epoch 1, ``elmrec.training.item_prior_loss``): at or above it, the row has learned item
    frequencies and not the user."""
    log = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]
    # the epoch of best/ (runs before best_epoch was logged chose by the lowest loss)
    best = next((r for r in log[1:] if r["epoch"] == log[-1].get("best_epoch")), None) or \
        min(log[1:], key=lambda r: r["valid_loss"]["mean"])
    return {task: {"best": best["valid_loss"][task], "item_prior": prior}
            for task, prior in log[0].get("item_prior_loss", {}).items()}


def reads_graph(cfg) -> bool:
    """Whether a model of this configuration reads its graph-aware embeddings in training: direct
    and explanation prompts do, sequential prompts only without incremental embeddings, and the
    graph-aware output head does."""
    tasks = set(cfg.train.tasks)
    return bool(tasks - {"sequential"}) or not cfg.model.use_incremental or cfg.model.graph_head


def row_overrides(args: argparse.Namespace) -> dict:
    """The configuration fields every ELMRec row gets from the command line (over --config)."""
    overrides = dict(size=args.size, budget_minutes=args.budget_minutes, valid_users=args.valid_users,
                     threads=args.threads, device=args.device, seed=args.seed)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    for item in args.set or []:
        key, _, value = item.partition("=")
        overrides[key] = value
    return overrides


def run(args: argparse.Namespace, save) -> dict:
    base = load_p5(args.data)
    variants = {"p5": base, "random": reindex(base, "random", seed=0)}
    wanted = ["p5", "random"] if args.reindex == "both" else [args.reindex]
    rows = args.rows.split(",")
    overrides = row_overrides(args)
    out = Path(args.out)
    report = {"commit": commit(), "data": args.data, "machine": machine_info(),
              "threads": args.threads, "device": args.device, "date": time.strftime("%Y-%m-%d %H:%M"),
              "budget_minutes": args.budget_minutes,
              "preset": args.preset, "config": args.config, "overrides": overrides, "argv": args.argv, "results": {}}
    eval_tasks = tuple(t for t in TASKS if t in args.eval_tasks.split(","))
    report["eval_tasks"] = list(eval_tasks)
    for name in wanted:
        dataset = variants[name]
        users = sample_users(dataset, args.eval_users, seed=0)
        probe_users = sample_users(dataset, args.probe_users, seed=1)
        results = report["results"][name] = {}

        def score(label, scorer, tasks=TASKS, wall=None, exclude_history=True, _results=results, _dataset=dataset,
                  _users=users, _name=name):
            evaluate_row(_results, label, scorer, _dataset, _users, _name, args.progress, tasks, wall, exclude_history)
            save(report)

        def probe(label, scorer, _results=results, _dataset=dataset, _users=probe_users, _name=name):
            if args.probe_users:
                probe_row(_results, label, scorer, _dataset, _users, _name)
                save(report)

        for baseline in BASELINE_ROWS:
            score(baseline, BASELINES[baseline](dataset))
            probe(baseline, BASELINES[baseline](dataset))
        for row in rows:
            if row in DERIVED_ROWS:
                continue
            t0 = time.time()
            if row == "sasrec":
                sasrec = train_sasrec(dataset, SASRecConfig(), args.budget_minutes, args.seed, args.threads,
                                      args.valid_users, progress=args.progress)
                results["sasrec (train)"] = sasrec.stats()
                score(row, sasrec, tasks=eval_tasks, wall=time.time() - t0)
                probe(row, sasrec)
                continue
            cfg = load_config(args.config, preset=args.preset, overrides={**overrides, **ABLATIONS[row]})
            if row == "no-graph" and not reads_graph(cfg):
                print(f"[{name}] no-graph: skipped, this configuration never reads the graph-aware embeddings "
                      "(sequential prompts take the incremental ones), so it would train the elmrec row again",
                      flush=True)
                continue
            run_dir = out / name / row
            summary = train(cfg, dataset, run_dir, progress=args.progress, echo=lambda s: None)
            wall = time.time() - t0
            results[f"{row} (train)"] = {**summary, "valid_vs_prior": valid_against_prior(run_dir),
                                         "config": json.loads((run_dir / "config.json").read_text())}
            best = Recommender.from_pretrained(run_dir / "best", device=args.device)
            probe(row, best)
            score(row, best, tasks=eval_tasks, wall=wall)
            if row == "elmrec" and "no-rerank" in rows and "sequential" in eval_tasks:
                # the same checkpoint without reranking, evaluated on its raw output (history kept):
                # with reranking the model's own list never holds the history, so the two compare
                plain = Recommender.from_pretrained(run_dir / "best", device=args.device, rerank=False,
                                                    extra_candidates=0)
                score("no-rerank", plain, tasks=("sequential",), exclude_history=False)
            if row == "elmrec" and "seq-direct" in rows:
                # the same checkpoint on the direct protocol, its candidates read from the
                # sequential prompt's row (the user's history), as SASRec's direct row is
                if best.id_tokens == "item" and "sequential" in best.trained_tasks:
                    seq = Recommender.from_pretrained(run_dir / "best", device=args.device,
                                                      direct_decode="sequential")
                    score("seq-direct", seq, tasks=("direct",))
                    probe("seq-direct", seq)
                else:
                    print(f"[{name}] seq-direct skipped: the elmrec row needs one token per id and the "
                          "sequential task", flush=True)
    return report


def table(report: dict) -> str:
    """One markdown table: a line per row, NDCG@10 / HR@10 of both tasks for each indexing."""
    names = list(report["results"])
    head = "| row | " + " | ".join(f"{n} {t} NDCG@10 | {n} {t} HR@10" for n in names for t in TASKS) + " |"
    lines = [head, "|---" * (1 + 2 * len(TASKS) * len(names)) + "|"]
    labels = dict.fromkeys(k for n in names for k in report["results"][n] if not k.endswith("(train)"))
    for label in labels:
        cells = []
        for n in names:
            row = report["results"][n].get(label, {})
            for t in TASKS:
                m = row.get(t)
                if m is None and label == "no-rerank":  # reranking leaves direct results as they are
                    m = report["results"][n].get("elmrec", {}).get(t)
                cells += [f"{m['NDCG@10']:.4f}", f"{m['HR@10']:.4f}"] if m else ["-", "-"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    probed = [k for k in labels if any("user_dependence" in report["results"][n].get(k, {}) for n in names)]
    if probed:  # a second table: does each row's output depend on the user? (1.0 = no)
        lines += ["", "| user dependence (validation) | " + " | ".join(
            f"{n} direct rank correlation | {n} sequential top-10 overlap" for n in names) + " |",
            "|---" * (1 + 2 * len(names)) + "|"]
        for label in probed:
            cells = []
            for n in names:
                dep = report["results"][n].get(label, {}).get("user_dependence", {})
                cells += [f"{dep[k]:.4f}" if k in dep else "-"
                          for k in ("direct_rank_correlation", "sequential_top_overlap")]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    trained = [k[: -len(" (train)")] for n in names for k, v in report["results"][n].items()
               if k.endswith(" (train)") and "valid_vs_prior" in v]  # ELMRec rows (not SASRec)
    if trained:  # a third table: is the validation loss below what an item prior scores?
        lines += ["", "| validation loss of the best checkpoint (item prior) | " + " | ".join(
            f"{n} {t}" for n in names for t in TASKS) + " |", "|---" * (1 + len(TASKS) * len(names)) + "|"]
        for label in dict.fromkeys(trained):
            cells = []
            for n in names:
                losses = report["results"][n].get(f"{label} (train)", {}).get("valid_vs_prior", {})
                cells += [f"{losses[t]['best']:.4f} ({losses[t]['item_prior']:.4f})" if t in losses else "-"
                          for t in TASKS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_parallel(args: argparse.Namespace, argv: list[str], save) -> dict:
    """Each indexing in its own process with ``--threads`` threads, side by side (two 1-thread
    runs use two cores better than one 2-thread run); the reports are merged."""
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--reindex", "--output"):
            skip = True
        elif a != "--parallel" and not a.startswith(("--reindex=", "--output=")):
            keep.append(a)
    out = Path(args.out)
    for name in ("p5", "random"):  # never merge a report left by an earlier run
        (out / f"report-{name}.json").unlink(missing_ok=True)
    procs = {name: subprocess.Popen([sys.executable, __file__, *keep, "--reindex", name, "--threads", str(args.threads),
                                     "--output", str(out / f"report-{name}.json")]) for name in ("p5", "random")}
    failed = [name for name, proc in procs.items() if proc.wait() != 0]
    report: dict = {"results": {}}
    for name in procs:
        path = out / f"report-{name}.json"
        if path.exists():
            part = json.loads(path.read_text())
            part.pop("complete", None)
            report = {**part, "results": {**report["results"], **part["results"]}}
    report.update(argv=argv, parallel=True, failed=failed)
    save(report)
    if failed:
        raise SystemExit(f"indexing(s) {failed} failed; partial reports are in {out}")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "beauty"))
    p.add_argument("--out", default="runs/beauty-cpu")
    p.add_argument("--size", default="cpu")
    p.add_argument("--preset", default="beauty")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="training budget per ELMRec row")
    p.add_argument("--epochs", type=int, help="epoch cap of the ELMRec rows (default: the configuration's)")
    p.add_argument("--reindex", choices=("p5", "random", "both"), default="both")
    p.add_argument("--parallel", action="store_true",
                   help="with --reindex both: run the two indexings at once, one process each")
    p.add_argument("--rows",
                   default="sasrec,elmrec,no-graph,no-incremental,no-rerank,seq-direct,no-soft-prompts,digits")
    p.add_argument("--seed", type=int, default=2024, help="seed of every trained row")
    p.add_argument("--valid-users", type=int, default=2000)
    p.add_argument("--eval-users", type=int, help="evaluate a fixed random subset (default: all users)")
    p.add_argument("--probe-users", type=int, default=500,
                   help="validation users for the user-dependence check of each row (0: skip)")
    p.add_argument("--threads", type=int, help="torch threads per process (default 2, or 1 with --parallel)")
    p.add_argument("--eval-tasks", default="sequential,direct",
                   help="the tasks each trained row is evaluated on (the baselines: always both)")
    p.add_argument("--config", help="a YAML/JSON configuration of the ELMRec rows (e.g. configs/*.yaml); "
                   "the flags above and --set win over it")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any other config field, e.g. seq_alpha=0.1")
    p.add_argument("--device", default="cpu",
                   help="cpu (default) | cuda | auto: where every ELMRec row trains and is evaluated")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--output", help="JSON report (default: OUT/report.json), rewritten after every row")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.threads is None:
        args.threads = 1 if args.parallel and args.reindex == "both" else 2
    try:
        resolve_device(args.device)
    except ValueError as e:
        p.error(str(e))
    if not args.eval_tasks or set(args.eval_tasks.split(",")) - set(TASKS):
        p.error(f"--eval-tasks: a comma-separated subset of {TASKS}, got {args.eval_tasks!r}")
    unknown = set(args.rows.split(",")) - set(ABLATIONS) - {*DERIVED_ROWS, "sasrec"}
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {sorted(ABLATIONS) + [*DERIVED_ROWS, 'sasrec']}")
    try:  # every trained row's configuration, checked before an hour of baselines and training
        for row in set(args.rows.split(",")) & set(ABLATIONS):
            load_config(args.config, preset=args.preset, overrides={**row_overrides(args), **ABLATIONS[row]})
    except ValueError as e:
        p.error(str(e))
    path = Path(args.output or Path(args.out) / "report.json")
    t0 = time.time()

    def save(report: dict) -> None:
        report["wall_s"] = time.time() - t0
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")

    if args.parallel and args.reindex == "both":
        report = run_parallel(args, argv, save)
    else:
        report = run(args, save)
    report["complete"] = True
    save(report)
    text = table(report)
    atomic_write_text(path.with_suffix(".md"), text + "\n")
    print(text)
    print(f"wrote {path} and {path.with_suffix('.md')} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
