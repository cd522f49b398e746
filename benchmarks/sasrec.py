"""A compact SASRec (self-attentive sequential recommendation) as a trained reference model: what a
small ID-based transformer reaches on the same data, split and protocol as ELMRec.

Causal self-attention over the last ``max_len`` items of a user's TRAINING sequence, next-item
prediction at every position at once, full softmax cross-entropy over all items with the item
embedding tied to the output (stronger than the original binary loss with one sampled negative).
Epochs run until a wall-clock budget is spent; the weights of the epoch with the best sequential
validation NDCG@10 (full ranking, history excluded, a fixed subset of users) are kept.

    python benchmarks/sasrec.py --data ../shared/data/beauty --budget-minutes 10 --threads 1 --out sasrec.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from elmrec.data import DataError, Dataset
from elmrec.evaluation import TASKS, evaluate, format_table, sample_users
from elmrec.formats import load_p5
from elmrec.io import atomic_write_text
from elmrec.runtime import machine_info, tune_cpu


@dataclass
class SASRecConfig:
    """Model and optimisation settings; the defaults suit Beauty-sized data (12k items, short histories)."""

    dim: int = 64
    blocks: int = 2
    heads: int = 1
    ffn_dim: int = 64  # SASRec's point-wise feed-forward keeps the model width
    max_len: int = 50
    dropout: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    eval_batch_size: int = 512
    max_epochs: int | None = None  # None: until the budget runs out
    # stop after this many epochs without a better validation NDCG@10 (None: never); the budget is
    # an upper bound, as for ELMRec, whose runs stop early on validation loss as well
    patience: int | None = 10


class SASRec(nn.Module):
    """Item + learned position embeddings, pre-LN transformer blocks with causal attention.

    Sequences are left-padded with 0 and right-aligned, so position ``max_len - 1`` is always the
    latest item: a batch trimmed to its longest sequence computes exactly what the full window would.
    """

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.items = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        self.positions = nn.Embedding(cfg.max_len, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.ffn_dim, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.blocks, norm=nn.LayerNorm(cfg.dim),
                                             enable_nested_tensor=False)
        # small embeddings: with a tied output, N(0, 1) would start from huge, overconfident logits
        nn.init.normal_(self.items.weight, std=cfg.dim**-0.5)
        nn.init.normal_(self.positions.weight, std=cfg.dim**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item ids, L <= max_len -> (B, L, dim) states; state t predicts item t + 1."""
        b, length = seq.shape
        pos = torch.arange(self.cfg.max_len - length, self.cfg.max_len, device=seq.device)
        x = self.dropout(self.items(seq) * self.cfg.dim**0.5 + self.positions(pos))
        # a query sees earlier real items and itself; a padding query only itself (no all-masked rows)
        idx = torch.arange(length, device=seq.device)
        eye = idx[:, None] == idx[None, :]
        allowed = (idx[None, :] <= idx[:, None]) & ((seq != 0)[:, None, :] | eye)
        blocked = ~allowed.repeat_interleave(self.cfg.heads, dim=0)  # (B * heads, L, L)
        return self.encoder(x, mask=blocked)


def _left_pad(seqs: list[np.ndarray], width: int) -> np.ndarray:
    """(len(seqs), width) int64: the last ``width`` items of each sequence, right-aligned, 0-padded."""
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-width:]
        if len(s):
            out[r, width - len(s):] = s
    return out


def _first_real(batch: np.ndarray) -> int:
    """The first column that is not padding in every row (the last one if all are): the columns
    before it can be dropped without changing any result."""
    real = np.flatnonzero(batch.any(axis=0))
    return int(real[0]) if len(real) else batch.shape[1] - 1


class SASRecScorer:
    """The :class:`elmrec.evaluation.Scorer` of a trained :class:`SASRec`: the next-item logits
    after the last ``max_len`` visible items."""

    name = "sasrec"

    def __init__(self, model: SASRec, info: dict | None = None):
        self.model = model.eval()
        self.info = info or {}

    @torch.no_grad()
    def _states(self, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, dim) state after each history (an empty one reads only padding)."""
        self.model.eval()
        cfg = self.model.cfg
        out = []
        for start in range(0, len(histories), cfg.eval_batch_size):
            chunk = _left_pad([np.asarray(h) for h in histories[start:start + cfg.eval_batch_size]], cfg.max_len)
            out.append(self.model(torch.from_numpy(chunk[:, _first_real(chunk):]))[:, -1])
        return torch.cat(out)

    @torch.no_grad()
    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        scores = (self._states(histories) @ self.model.items.weight.T).double().numpy()
        scores[:, 0] = -np.inf  # padding, never an item
        return scores

    @torch.no_grad()
    def score_candidates(
        self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray
    ) -> np.ndarray:
        emb = self.model.items(torch.from_numpy(np.asarray(candidates, dtype=np.int64)))  # (B, C, dim)
        return torch.einsum("bcd,bd->bc", emb, self._states(histories)).double().numpy()

    def stats(self) -> dict:
        return dict(self.info)


def _training_sequences(dataset: Dataset, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each (users with >= 2 training items, max_len) left-padded: the last
    ``max_len`` transitions of each TRAINING sequence (validation and test items never enter)."""
    seqs = [dataset.split_history(int(u), "train") for u in dataset.users]
    seqs = [s[-(max_len + 1):] for s in seqs if len(s) >= 2]
    return _left_pad([s[:-1] for s in seqs], max_len), _left_pad([s[1:] for s in seqs], max_len)


def _length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 50) -> list:
    """Random batches of similar lengths: shuffle, sort each pool of ``pool`` batches by length, cut,
    shuffle the batches. Random batches would be padded to their longest sequence, 7x the mean on Beauty."""
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = order[start:start + batch_size * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train_sasrec(
    dataset: Dataset,
    cfg: SASRecConfig | None = None,
    budget_minutes: float = 10.0,
    seed: int = 0,
    threads: int = 1,
    valid_users: int | None = 2000,
    progress: bool = True,
) -> SASRecScorer:
    """Train epochs until ``budget_minutes`` (or ``cfg.max_epochs``) are spent; return the best epoch.

    An epoch starts only if the previous one's duration still fits in the budget, so the budget is
    the training wall time including validation. The run is a function of ``seed`` (and
    ``threads``: other thread counts sum in other orders); the budget only decides where it stops.
    Validation: sequential NDCG@10 on ``valid_users`` fixed validation users (all if None).
    """
    cfg = cfg or SASRecConfig()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SASRec(dataset.n_items, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    inputs, targets = _training_sequences(dataset, cfg.max_len)
    lengths = (targets != 0).sum(axis=1)
    per_batch = lengths.sum() / math.ceil(len(lengths) / cfg.batch_size)
    users = sample_users(dataset, valid_users, seed=0)
    scorer = SASRecScorer(model)
    best = {"NDCG@10": -1.0, "epoch": 0}
    best_state = copy.deepcopy(model.state_dict())
    history = []
    start = time.perf_counter()
    budget = budget_minutes * 60.0
    epoch, last_epoch_s = 0, 0.0
    while cfg.max_epochs is None or epoch < cfg.max_epochs:
        if epoch and time.perf_counter() - start + last_epoch_s > budget:
            break
        t0 = time.perf_counter()
        epoch += 1
        model.train()
        total, count = 0.0, 0
        for idx in _length_batches(lengths, cfg.batch_size, rng):
            first = _first_real(inputs[idx])  # inputs and targets are padded alike
            seq, tgt = torch.from_numpy(inputs[idx, first:]), torch.from_numpy(targets[idx, first:])
            real = tgt != 0
            states = model(seq)[real]  # only positions with a next item
            logits = states @ model.items.weight[1:].T  # (N, n_items): column k is item k + 1
            # summed, over the mean number of positions per batch: every position weighs the same
            # whichever batch it falls in (batches of long sequences hold more positions)
            loss = F.cross_entropy(logits, tgt[real] - 1, reduction="sum") / per_batch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * per_batch, count + int(real.sum())
        m = evaluate(scorer, dataset, "sequential", "valid", users=users, progress=False).metrics
        last_epoch_s = time.perf_counter() - t0
        record = {"epoch": epoch, "loss": total / count, "valid NDCG@10": m["NDCG@10"], "valid HR@10": m["HR@10"],
                  "seconds": round(last_epoch_s, 1)}
        history.append(record)
        if m["NDCG@10"] > best["NDCG@10"]:
            best = {"NDCG@10": m["NDCG@10"], "HR@10": m["HR@10"], "epoch": epoch}
            best_state = copy.deepcopy(model.state_dict())
        if progress:
            print(f"epoch {epoch:3d}  loss {record['loss']:.4f}  valid NDCG@10 {m['NDCG@10']:.4f}  "
                  f"HR@10 {m['HR@10']:.4f}  {last_epoch_s:.1f} s", flush=True)
        if cfg.patience is not None and epoch - best["epoch"] >= cfg.patience:
            break
    model.load_state_dict(best_state)
    info = {"epochs": epoch, "best_epoch": best["epoch"], "best_valid": best, "valid_users": len(users),
            "train_seconds": round(time.perf_counter() - start, 1), "history": history}
    return SASRecScorer(model.eval(), info)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="P5-format directory")
    p.add_argument("--budget-minutes", type=float, default=10.0, help="training wall time, validation included")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=1)
    p.add_argument("--valid-users", type=_positive_int, default=2000, help="validation users for model selection")
    p.add_argument("--max-epochs", type=_positive_int, help="stop after this many epochs (reproducible runs)")
    p.add_argument("--dropout", type=float, default=SASRecConfig.dropout)
    p.add_argument("--lr", type=float, default=SASRecConfig.lr)
    p.add_argument("--batch-size", type=_positive_int, default=SASRecConfig.batch_size)
    p.add_argument("--out", help="JSON file for the test metrics of both tasks")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    try:
        dataset = load_p5(args.data)
    except DataError as e:
        p.error(str(e))
    tune_cpu()
    cfg = SASRecConfig(dropout=args.dropout, lr=args.lr, batch_size=args.batch_size, max_epochs=args.max_epochs)
    t0 = time.perf_counter()
    scorer = train_sasrec(dataset, cfg, args.budget_minutes, args.seed, args.threads, args.valid_users, args.progress)
    train_s = time.perf_counter() - t0
    results, eval_s = {}, {}
    for task in TASKS if dataset.negatives is not None else ("sequential",):
        t0 = time.perf_counter()
        results[task] = evaluate(scorer, dataset, task, "test", progress=False)
        eval_s[task] = round(time.perf_counter() - t0, 1)
    print(format_table({f"sasrec/{task}/test": r for task, r in results.items()}))
    info = scorer.stats()
    print(f"training {train_s:.0f} s ({info['epochs']} epochs, best {info['best_epoch']}), "
          f"evaluation {sum(eval_s.values()):.0f} s")
    if args.out:
        report = {"model": "sasrec", "config": asdict(cfg), "seed": args.seed, "threads": args.threads,
                  "budget_minutes": args.budget_minutes, "train_seconds": round(train_s, 1),
                  "eval_seconds": eval_s, "training": info,
                  "results": {task: r.to_dict() for task, r in results.items()},
                  "machine": machine_info(), "argv": sys.argv[1:] if argv is None else argv,
                  "date": time.strftime("%Y-%m-%d %H:%M")}
        atomic_write_text(args.out, json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
