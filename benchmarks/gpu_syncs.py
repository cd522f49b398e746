"""Where does a training step make the host wait for the GPU?

A host sync (``.item()``, ``int(tensor)``, a copy to the CPU, a Python ``if`` on a GPU tensor)
stops the CPU from queueing the next kernels until the GPU has caught up. This script runs one
training step of each task (after a warm-up step) with torch's sync debug mode on and prints how
often each Python line synchronised. CUDA only.

    python benchmarks/gpu_syncs.py --data ../shared/data/beauty --size small --amp
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections import Counter

import numpy as np
import torch

from elmrec import tasks as T
from elmrec.config import load_config
from elmrec.data import DataError, load_p5
from elmrec.model import T5_SIZES, build_model
from elmrec.tokenization import build_tokenizer, item_token_start
from elmrec.training import forward_backward, make_batch


def step_syncs(model, batch, autocast) -> Counter:
    """file:line -> number of synchronising calls in one forward and backward of ``batch``."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            forward_backward(model, batch, None, autocast)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a P5-format directory")
    p.add_argument("--size", default="small", choices=sorted(T5_SIZES))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--amp", action="store_true", help="bf16 autocast, as train --amp")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device (torch's sync debug mode is CUDA only)")
    try:
        dataset = load_p5(args.data)
    except DataError as e:
        p.error(str(e))
    cfg = load_config(preset="beauty", overrides={"size": args.size, "batch_size": args.batch_size})
    tokenizer = build_tokenizer(id_tokens=cfg.model.id_tokens, n_users=dataset.n_users, n_items=dataset.n_items)
    device = torch.device("cuda")
    model = build_model(cfg.model, dataset.n_users, dataset.n_items, *dataset.train_pairs(), len(tokenizer), 0,
                        item_token_start(tokenizer, dataset.n_items))
    model = model.to(device).train()
    rng = np.random.default_rng(0)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()

    for task in (T.SEQUENTIAL, T.DIRECT):
        users = rng.choice(dataset.users, args.batch_size)
        samples = T.train_samples(task, dataset, users, rng, cfg.train.max_history, cfg.train.n_negatives)
        batch = make_batch(samples, [0] * len(samples), tokenizer, dataset.n_users, cfg, device)
        forward_backward(model, batch, None, autocast)  # warm-up: one-time set-up syncs as well
        syncs = step_syncs(model, batch, autocast)
        print(f"{task}: {sum(syncs.values())} synchronising calls in one forward and backward")
        for where, n in syncs.most_common():
            print(f"  {n:4d}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
