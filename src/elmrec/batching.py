"""Training batches: task samples rendered, tokenised and stacked into tensors (``make_batch``),
prepared ahead in loader processes (``prepared_batches``), and cut into length-sorted chunks whose
gradients sum to the whole batch's (``chunks``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from . import tasks as T
from .config import Config
from .prompts import render, target_text
from .tokenization import encode_prompts, encode_targets


@dataclass
class Batch:
    task: str
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    size: int

    def to(self, device: torch.device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731 (non-blocking from pinned memory)
        return Batch(self.task, {k: move(v) for k, v in self.inputs.items()}, move(self.labels), self.size)

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True): page-locked memory copies to a GPU asynchronously."""
        return Batch(self.task, {k: v.pin_memory() for k, v in self.inputs.items()}, self.labels.pin_memory(),
                     self.size)


def make_batch(
    samples: list[T.Sample], templates: list[int], tokenizer: PreTrainedTokenizerBase, n_users: int,
    cfg: Config, device: torch.device,
) -> Batch:
    task = samples[0].task
    m = cfg.model
    prompts = [render(s, t, n_users, m.use_incremental, m.sequential_user) for s, t in zip(samples, templates)]
    max_tokens = cfg.train.max_explanation_tokens + 1 if task == T.EXPLANATION else None
    labels = encode_targets(tokenizer, [target_text(s, cfg.model.id_tokens) for s in samples], max_tokens, device)
    if cfg.model.id_tokens == "item" and task != T.EXPLANATION:
        # one token per item and only the first is ever read: no </s> to learn (a quarter of the
        # output positions); the losses are then nats per item
        labels = labels.masked_fill(labels == tokenizer.eos_token_id, -100)
    return Batch(task, encode_prompts(tokenizer, prompts, device), labels, len(samples))


class _BatchMaker(torch.utils.data.Dataset):
    """An epoch's batches, rendered and tokenised on the CPU when asked for (in loader workers)."""

    def __init__(self, batches: list[tuple[list[T.Sample], list[int]]], tokenizer, n_users: int, cfg: Config):
        self.batches, self.tokenizer, self.n_users, self.cfg = batches, tokenizer, n_users, cfg

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Batch:
        samples, templates = self.batches[k]
        return make_batch(samples, templates, self.tokenizer, self.n_users, self.cfg, torch.device("cpu"))


def prepared_batches(
    batches: list[tuple[list[T.Sample], list[int]]], tokenizer, n_users: int, cfg: Config, device: torch.device,
    workers: int,
) -> Iterator[Batch]:
    """The batches as tensors on ``device``, in order. With ``workers`` > 0, that many processes
    render and tokenise the next batches while the model trains on this one (the same tensors)."""
    if workers == 0:
        for samples, templates in batches:
            yield make_batch(samples, templates, tokenizer, n_users, cfg, device)
        return
    loader = torch.utils.data.DataLoader(
        _BatchMaker(batches, tokenizer, n_users, cfg), batch_size=None, shuffle=False, num_workers=workers,
        prefetch_factor=4, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # its worker seeds must not draw from the global stream (dropout)
    )
    # forked workers would each warn that the tokenizer's thread pool was used before the fork:
    # they go without it; the parent gets its setting back once they exist
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        ready = iter(loader)
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
    for batch in ready:
        yield batch.to(device)


def default_loader_workers(device: torch.device) -> int:
    """``train.loader_workers`` when unset: 2 on a CUDA GPU, 0 elsewhere (see TrainConfig)."""
    return 2 if device.type == "cuda" else 0


def _trim(t: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Drop the trailing columns where no row has a real entry (padding)."""
    width = int((real * torch.arange(1, real.shape[1] + 1, device=real.device)).amax())
    return t[:, :width].contiguous()


def chunks(batch: Batch, micro_batch_size: int | None = None, length_groups: int = 1) -> Iterator[tuple]:
    """The batch as (inputs, labels) chunks sorted by prompt length, each cut to its own longest
    prompt and target: ``micro_batch_size`` samples each, or ``length_groups`` groups where those
    are smaller and cut the padded tokens by a tenth or more (smaller products cost more per
    token). Padding is most of a random batch's sequential prompt (a few items padded to the
    longest history of 20), and the chunks change nothing in the batch's gradient."""
    mask = batch.inputs["attention_mask"]
    lengths = mask.sum(1).cpu()
    plain = min(micro_batch_size or batch.size, batch.size)  # chunks in batch order, as padded
    size = min(-(-batch.size // max(1, length_groups)), plain)
    order = torch.argsort(lengths, stable=True)

    def padded(rows: torch.Tensor, n: int) -> int:
        return sum(int(lengths[rows[k : k + n]].max()) * len(rows[k : k + n]) for k in range(0, len(rows), n))

    if size < plain and padded(order, size) > 0.9 * padded(torch.arange(batch.size), plain):
        size = plain
    if size == batch.size:
        order = torch.arange(batch.size)  # one chunk: the batch as it is
    for k in range(0, batch.size, size):
        rows = order[k : k + size].to(mask.device)
        real = mask[rows] > 0
        inputs = {n: _trim(t[rows], real) for n, t in batch.inputs.items()}
        labels = batch.labels[rows]
        yield inputs, _trim(labels, labels != -100)


def default_length_groups(device: torch.device) -> int:
    """``train.length_groups`` when unset: 1 on a CUDA GPU, 4 elsewhere (see TrainConfig)."""
    return 1 if device.type == "cuda" else 4
