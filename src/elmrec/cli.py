"""Command line: ``elmrec data prepare|synthetic|info``, ``train``, ``evaluate``, ``recommend``,
``explain`` and ``demo``.

Thin by design: each command parses flags and calls the library; bad input ends as
``error: <message>`` with exit code 2, never a traceback (``--traceback`` shows one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from . import __version__, distributed
from .baselines import BASELINES
from .config import EvalConfig, add_config_arguments, config_from_args, positive_int
from .data import DataError, Dataset, describe, reindex, sample_negatives
from .evaluation import DEFAULT_KS, Scorer, evaluate, evaluate_explanation, sample_users, user_dependence
from .formats import FORMATS, load_dataset, load_p5, write_p5
from .io import atomic_write_text
from .runtime import tune_cpu
from .synthetic import make_synthetic

log = logging.getLogger("elmrec")


# --- data ----------------------------------------------------------------------------------


def cmd_data_prepare(args: argparse.Namespace) -> int:
    ds = load_dataset(
        args.input,
        format=args.format,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col or None,
        sep=args.sep,
        min_user=args.min_user,
        min_item=args.min_item,
        name=Path(args.out).name,
    )
    meta = {
        "elmrec_version": __version__,
        "source": str(args.input),
        "source_fingerprint": ds.fingerprint(),
        "format": args.format,
        "min_user": args.min_user,
        "min_item": args.min_item,
        "reindex": args.reindex,
        "seed": args.seed,
    }
    if args.reindex:
        ds = reindex(ds, args.reindex, seed=args.seed)
    if ds.negatives is not None:
        meta["negatives"] = "carried over from the input"
    elif args.negatives > 0:
        ds = sample_negatives(ds, n=args.negatives, seed=args.negative_seed)
        meta["negatives"] = f"sampled: {ds.negatives.shape[1]} per user, seed {args.negative_seed}"
    write_p5(ds, args.out, overwrite=args.overwrite, meta=meta)
    print(f"wrote {args.out}: {_one_line(ds)}")
    return 0


def cmd_data_synthetic(args: argparse.Namespace) -> int:
    ds = make_synthetic(
        n_users=args.users,
        n_items=args.items,
        n_communities=args.communities,
        seed=args.seed,
        item_order=args.item_order,
        with_explanations=not args.no_explanations,
        name=Path(args.out).name,
    )
    meta = {"elmrec_version": __version__, "synthetic": {k: v for k, v in vars(args).items() if k != "func"}}
    write_p5(ds, args.out, overwrite=args.overwrite, meta=meta)
    print(f"wrote {args.out}: {_one_line(ds)}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    info = describe(load_p5(args.dir))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key.ljust(width)}  {value}")
    return 0


def _one_line(ds: Dataset) -> str:
    negs = "no negatives" if ds.negatives is None else f"{ds.negatives.shape[1]} negatives/user"
    return f"{ds.n_users} users, {ds.n_items} items, {ds.n_interactions} interactions, {negs}"


# --- evaluate ------------------------------------------------------------------------------


def build_scorer(args: argparse.Namespace, dataset: Dataset) -> tuple[str, Scorer]:
    """The scorer named on the command line, with a name for the results file."""
    if args.model:
        return args.model, BASELINES[args.model](dataset)
    rec = _load_recommender(args)
    rec.check_dataset(dataset.fingerprint())
    k = max(args.ks)
    if rec.eval.top_n < k:  # HR@k needs k returned items, not the checkpoint's default top_n
        rec.eval = rec.eval.with_top_n(k)
    return f"elmrec:{args.checkpoint}", rec


def _load_recommender(args: argparse.Namespace):
    from .recommender import Recommender

    overrides = {f.name: getattr(args, f.name, None) for f in fields(EvalConfig)}  # flags named as fields
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    return Recommender.from_pretrained(args.checkpoint, device=args.device, **overrides)


def cmd_evaluate(args: argparse.Namespace) -> int:
    ctx = distributed.from_env()
    if ctx.active and (args.task == "explanation" or args.user_dependence):
        raise ValueError("under torchrun, evaluate shards the ranking tasks only; run explanation and "
                         "--user-dependence as one process")
    args.device = distributed.device_for(ctx, args.device)
    dataset = load_p5(args.data)
    name, scorer = build_scorer(args, dataset)
    users = sample_users(dataset, args.users, seed=args.seed) if args.users else None
    if args.task == "explanation":
        if args.model:
            raise ValueError("explanation generation needs a trained --checkpoint, not a baseline")
        result = evaluate_explanation(scorer.explain_batch, dataset, args.split, limit=args.users,
                                      batch_size=scorer.eval.eval_batch_size, progress=not args.no_progress)
        result.extra["eval_amp"] = scorer.eval.eval_amp
    else:
        result = evaluate(
            scorer,
            dataset,
            args.task,
            args.split,
            ks=args.ks,
            exclude_history=not args.no_exclude_history,
            batch_size=args.batch_size,
            users=users,
            progress=not args.no_progress,
            ctx=ctx,
        )
    if not ctx.main:  # rank 0 reports for the job
        return 0
    dependence = None
    if args.user_dependence:
        if args.task == "explanation":
            raise ValueError("--user-dependence applies to the ranking tasks, not to explanation")
        dependence = user_dependence(scorer, dataset, args.split, users=users, seed=args.seed,
                                     progress=not args.no_progress)
    print(f"{name} on {args.data}")
    print(result.format_table())
    if dependence is not None:
        print(f"user dependence ({dependence['split']}, {dependence['users']} users; 1.0 = ignores the user): "
              f"direct rank correlation {dependence.get('direct_rank_correlation', float('nan')):.4f}, "
              f"sequential top-10 overlap {dependence['sequential_top_overlap']:.4f}")
    shown = ("beams", "top_n", "extra_candidates", "rerank", "direct_decode", "eval_amp", "invalid_share",
             "dropped_by_rerank")
    settings = {k: result.extra[k] for k in shown if k in result.extra}
    if settings:
        print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())
              + f", exclude_history={result.protocol.get('exclude_history')}")
    if args.output:
        record = {
            "model": name,
            "data": str(args.data),
            "dataset": dataset.summary(),
            **result.to_dict(),
            **({"user_dependence": dependence} if dependence is not None else {}),
            "elmrec_version": __version__,
        }
        atomic_write_text(args.output, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


# --- train / recommend / explain / demo ------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    dataset = load_p5(args.data)
    cfg = config_from_args(args)
    ctx = distributed.from_env()
    result = train(cfg, dataset, args.out, resume=args.resume, progress=not args.no_progress, ctx=ctx)
    if ctx.main:
        print(json.dumps(result, indent=2))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    rec = _load_recommender(args)
    history = [h for h in args.history.split(",") if h] if args.history is not None else None
    recs = rec.recommend(user=args.user, history=history, top_n=args.top_n)
    if args.json:
        print(json.dumps([r.to_dict() for r in recs], indent=2))
        return 0
    who = f"user {args.user}" if args.user is not None else f"a new user with history {args.history}"
    print(f"top {len(recs)} for {who}:")
    print(f"{'rank':>4}  {'item':>8}  {'original id':<16} {'log-prob':>9}")
    for k, r in enumerate(recs, 1):
        print(f"{k:>4}  {r.item:>8}  {r.item_name or '-':<16} {r.score:>9.3f}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    rec = _load_recommender(args)
    print(rec.explain(args.user, args.item))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve import serve
    except ImportError as e:
        raise ValueError(f"elmrec serve needs the serve extra ({e.name} is missing): "
                         "pip install 'elmrec[serve]'") from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, max_batch=args.max_batch,
          max_wait_ms=args.max_wait_ms, max_top_n=args.max_top_n, log_level=args.log_level)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, minutes=args.minutes, seed=args.seed, progress=not args.no_progress, overwrite=args.overwrite)
    return 0


# --- parser --------------------------------------------------------------------------------


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError("cut-offs must be positive")
    return ks


def _generation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (checkpoints; defaults from the checkpoint's config)")
    g.add_argument("--beams", type=int, help="sequential beam width")
    g.add_argument("--top-n", type=int, help="items returned per user")
    g.add_argument("--extra-candidates", type=int, help="N: extra beam outputs that reranking may drop")
    g.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                   help="drop already-interacted items from the generated list")
    # the names of the EvalConfig fields, as `train` spells them; --decode and --amp: older names
    g.add_argument("--direct-decode", "--decode", dest="direct_decode", choices=("score", "beam", "sequential"),
                   help="direct: exact scoring, beam search, or the candidates read from the sequential prompt")
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--eval-amp", "--amp", dest="eval_amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (GPU, or a CPU with AMX); the vocabulary head and scores stay fp32")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's, one per core)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elmrec", description="ELMRec: LLM-based recommendation.")
    parser.add_argument("--version", action="version", version=f"elmrec {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="prepare and inspect datasets").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser(
        "prepare",
        help="convert a P5 directory, table or RecBole .inter file into a validated P5 directory",
        description="Validate INPUT, optionally filter (k-core) and re-index items, add fixed "
        "negatives if it has none, and write a P5-format directory.",
    )
    p.add_argument("input", help="P5 directory, .csv/.tsv/.parquet table or RecBole .inter file")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--user-col", help="user column (default: user, or user_id for .inter)")
    p.add_argument("--item-col", help="item column (default: item, or item_id for .inter)")
    p.add_argument("--time-col", default="timestamp", help="time column; '' keeps file order")
    p.add_argument("--sep", help="field separator of a table (default by suffix)")
    p.add_argument("--min-user", type=int, default=0, help="k-core: interactions per user (3 at least)")
    p.add_argument("--min-item", type=int, default=0, help="k-core: interactions per item")
    p.add_argument("--reindex", choices=("sequential", "random"), help="re-assign item ids")
    p.add_argument("--seed", type=int, default=0, help="seed of random re-indexing")
    p.add_argument("--negatives", type=int, default=99, help="negatives to sample if the input has none")
    p.add_argument("--negative-seed", type=int, default=2024)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=cmd_data_prepare)

    p = data.add_parser("synthetic", help="write a small dataset with planted structure")
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--communities", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--item-order", choices=("random", "sequential"), default="random")
    p.add_argument("--no-explanations", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_data_synthetic)

    p = data.add_parser("info", help="summarise a P5-format directory")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_info)

    p = commands.add_parser("train", help="train ELMRec on a P5-format directory")
    p.add_argument("--data", required=True, help="P5-format directory")
    p.add_argument("--out", required=True, help="run directory: best/, last/, log.jsonl, config.json")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--no-progress", action="store_true")
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("evaluate", help="evaluate a baseline or a checkpoint with the P5 protocol")
    which = p.add_argument_group("what to evaluate").add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=sorted(BASELINES), help="a learning-free baseline")
    which.add_argument("--checkpoint", help="a trained ELMRec checkpoint directory (e.g. RUN/best)")
    p.add_argument("--data", required=True, help="P5-format directory")
    p.add_argument("--task", choices=("sequential", "direct", "explanation"), default="sequential")
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--no-exclude-history", action="store_true", help="sequential: keep history items")
    p.add_argument("--ks", type=_ks, default=DEFAULT_KS, help="cut-offs, e.g. 1,5,10")
    p.add_argument("--users", type=int, help="evaluate a random subset of this many users")
    p.add_argument("--seed", type=int, default=0, help="seed of the user subset")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output", help="write metrics and protocol to this JSON file")
    p.add_argument("--user-dependence", action="store_true",
                   help="also score every user's prompt as another user's and report how much the "
                        "scores change (1.0 = the model ignores who asks; see README)")
    _generation_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("recommend", help="top-N items for a user or a new history")
    p.add_argument("--checkpoint", required=True)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id (internal or original id from datamaps)")
    who.add_argument("--history", help="comma-separated item ids, oldest first, for an unseen user")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _generation_arguments(p)
    p.set_defaults(func=cmd_recommend)

    p = commands.add_parser("explain", help="generate an explanation for (user, item)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--item", required=True)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_explain)

    p = commands.add_parser("serve", help="an HTTP recommendation service (FastAPI + uvicorn)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. RUN/best)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=positive_int, help="CPU threads of the model (default: torch's)")
    p.add_argument("--max-batch", type=positive_int, default=64, help="most requests in one model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first queued request waits for others to join its batch")
    p.add_argument("--max-top-n", type=positive_int, default=100, help="largest top_n a request may ask for")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("demo", help="the whole product on built-in synthetic data, in minutes")
    p.add_argument("--out", default="demo", help="output directory (data, run, plot)")
    p.add_argument("--minutes", type=float, default=None,
                   help="optional cap on training time; without it the demo trains its fixed 12 epochs (about 1 "
                        "minute on 2 cores), so a seed gives the same figures on every machine")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out that is not a demo folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    tune_cpu()
    clean = False
    try:
        code = args.func(args)
        clean = code == 0
        return code
    except (DataError, OSError, ValueError, KeyError, FloatingPointError, MemoryError) as e:
        if args.traceback:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        rank = f" (rank {os.environ.get('RANK')})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"error{rank}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(clean)


if __name__ == "__main__":
    sys.exit(main())
