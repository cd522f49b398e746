"""Command-line set-up shared by the scripts that inspect a trained Beauty checkpoint
(diagnose.py, denormals.py): the same flags, the benchmark's two indexings, and the
same refusal of a checkpoint trained on other data. Not a benchmark itself."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from elmrec.config import positive_int
from elmrec.data import DataError, Dataset, reindex
from elmrec.formats import load_p5
from elmrec.io import atomic_write_text
from elmrec.recommender import Recommender
from elmrec.runtime import machine_info


def add_common_args(p: argparse.ArgumentParser) -> None:
    """--data, --reindex, --threads and --output, as every checkpoint script takes them."""
    p.add_argument("--data", required=True, help="the P5 directory the checkpoint was trained on")
    p.add_argument("--reindex", choices=("p5", "random"), default="p5",
                   help="random: the benchmark's seeded re-indexed copy (beauty_cpu.py --reindex random)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--output", help="JSON report")


def load_data(p: argparse.ArgumentParser, args: argparse.Namespace) -> Dataset:
    """Set the thread count and load the dataset as the benchmark indexed it; a bad directory is
    a usage error, not a traceback."""
    torch.set_num_threads(args.threads)
    try:
        dataset = load_p5(args.data)
    except DataError as e:
        p.error(str(e))
    return reindex(dataset, "random", seed=0) if args.reindex == "random" else dataset


def load_checkpoint(p: argparse.ArgumentParser, path: str, dataset: Dataset, device: str = "cpu") -> Recommender:
    """The checkpoint (on the CPU unless told), refused (usage error) when it was trained on other
    data, e.g. with a --reindex other than its own: its ids would silently mean other items."""
    try:
        rec = Recommender.from_pretrained(path, device=device)
        rec.check_dataset(dataset.fingerprint())
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    return rec


def write_report(path: str | None, report: dict, argv: list[str] | None) -> None:
    """Add the machine, the arguments and the date, and write atomically (nothing if no path)."""
    if path:
        report = {**report, "machine": machine_info(), "argv": sys.argv[1:] if argv is None else argv,
                  "date": time.strftime("%Y-%m-%d %H:%M")}
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
