"""How much denormal floats slow a trained model's training step on this CPU.

Times the forward and backward pass of one direct training batch, starting from a trained
checkpoint, with denormals kept and with them flushed to zero (``elmrec.runtime.tune_cpu``),
alternating kept / flushed / kept. Random weights do not show the effect: it grows as attention
sharpens during training.

    python benchmarks/denormals.py runs/beauty-d16/p5/elmrec/best --data ../shared/data/beauty
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from elmrec import tasks as T
from elmrec.batching import make_batch
from elmrec.config import load_config
from elmrec.runtime import tune_allocator
from elmrec.training import forward_backward

from checkpoint_args import add_common_args, load_checkpoint, load_data, positive_int, write_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a trained checkpoint directory (e.g. RUN/best)")
    add_common_args(p)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--repeats", type=positive_int, default=3, help="timed passes per setting (the fastest counts)")
    args = p.parse_args(argv)
    tune_allocator()
    dataset = load_data(p, args)
    rec = load_checkpoint(p, args.checkpoint, dataset)
    model, tokenizer = rec.model, rec.tokenizer
    model.train()
    cfg = load_config(overrides={"batch_size": args.batch_size})
    rng = np.random.default_rng(0)
    samples = T.direct_train_samples(dataset, rng.choice(dataset.users, args.batch_size), rng, cfg.train.n_negatives)
    batch = make_batch(samples, rng.integers(4, size=len(samples)).tolist(), tokenizer, dataset.n_users, cfg,
                       torch.device("cpu"))
    seconds = {}
    try:
        for label, flush in (("kept", False), ("flushed", True), ("kept again", False)):
            torch.set_flush_denormal(flush)
            forward_backward(model, batch, length_groups=1)  # untimed: the first pass after a switch
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                forward_backward(model, batch, length_groups=1)  # as measured in BENCHMARKS.md
                times.append(time.perf_counter() - t0)
            seconds[label] = min(times)
            print(f"denormals {label:10s}: {seconds[label]:.2f} s per direct batch of {args.batch_size}", flush=True)
    finally:
        torch.set_flush_denormal(True)
    print(f"flushing is {min(seconds['kept'], seconds['kept again']) / seconds['flushed']:.2f}x faster")
    write_report(args.output, {"checkpoint": args.checkpoint, "seconds": seconds, "batch_size": args.batch_size},
                 argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
