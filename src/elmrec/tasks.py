"""Task samples drawn from a dataset's leave-one-out split (SPEC section 3).

Training samples use only each user's training history (everything but the last two items);
validation and test samples are deterministic. A sample is data only: prompts.py turns it into text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TASKS
from .data import Dataset

EXPLANATION, SEQUENTIAL, DIRECT = TASKS  # the names, defined once in config
TASK_IDS = {EXPLANATION: 0, SEQUENTIAL: 1, DIRECT: 2}


@dataclass(frozen=True)
class Sample:
    task: str
    user: int
    items: tuple[int, ...]  # history (sequential), candidates (direct) or the item (explanation)
    target: int | str  # item id, or the review sentence for explanation
    # sequential training only: the items that followed the target, decoded after it (teacher-forced)
    # so one prompt trains several next-item predictions (``TrainConfig.seq_targets``)
    continuation: tuple[int, ...] = ()
    # sequential training of a causal_history model: the decoder targets are the next item of every
    # prefix of ``items`` (items[1:], then target), one decoder step each
    prefixes: bool = False


def _train_histories(dataset: Dataset, users: np.ndarray) -> list[np.ndarray]:
    return [dataset.split_history(int(u), "train") for u in users]


def sequential_train_samples(
    dataset: Dataset, users: np.ndarray, rng: np.random.Generator, max_history: int = 20, targets: int = 1,
    every_prefix: bool = False,
) -> list[Sample]:
    """A random contiguous segment (length >= 2) of each user's training history; its last item is
    the target and at most ``max_history`` items before it form the input. ``targets`` > 1 (a
    departure): up to ``targets - 1`` items that followed the target in the training history become
    its ``continuation``. ``every_prefix`` (causal_history models): the whole history, or a random
    window of ``max_history + 1`` items of a longer one, whose every prefix is trained."""
    out = []
    for u, h in zip(users, _train_histories(dataset, users)):
        if len(h) < 2:
            continue
        if every_prefix:
            end = len(h) if len(h) <= max_history + 1 else int(rng.integers(max_history + 1, len(h) + 1))
            window = [int(i) for i in h[end - 1 - min(max_history, end - 1) : end]]
            out.append(Sample(SEQUENTIAL, int(u), tuple(window[:-1]), window[-1], prefixes=True))
            continue
        end = int(rng.integers(2, len(h) + 1))  # exclusive end, segment holds >= 2 items
        start = int(rng.integers(0, end - 1))
        start = max(start, end - 1 - max_history)
        out.append(Sample(SEQUENTIAL, int(u), tuple(int(i) for i in h[start : end - 1]), int(h[end - 1]),
                          tuple(int(i) for i in h[end : end + targets - 1])))
    return out


def sample_negatives(
    n_items: int, exclude: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` distinct items from 1..n_items outside ``exclude`` (rejection sampling, vectorised)."""
    n = min(n, n_items - len(np.unique(exclude)))
    picked = np.empty(0, dtype=np.int64)
    while len(picked) < n:
        draw = rng.integers(1, n_items + 1, size=2 * (n - len(picked)) + 8)
        draw = draw[~np.isin(draw, exclude)]
        picked = np.concatenate([picked, draw])
        _, first = np.unique(picked, return_index=True)
        picked = picked[np.sort(first)]
    return picked[:n]


def direct_train_samples(
    dataset: Dataset, users: np.ndarray, rng: np.random.Generator, n_negatives: int = 99
) -> list[Sample]:
    """A random training item of each user among ``n_negatives`` fresh random items the user never
    interacted with in training, shuffled; the target is that positive item."""
    out = []
    for u, h in zip(users, _train_histories(dataset, users)):
        pos = int(h[rng.integers(len(h))])
        cands = np.concatenate([[pos], sample_negatives(dataset.n_items, h, n_negatives, rng)])
        rng.shuffle(cands)
        out.append(Sample(DIRECT, int(u), tuple(int(i) for i in cands), pos))
    return out


def explanation_samples(
    dataset: Dataset, split: str, rng: np.random.Generator | None = None, limit: int | None = None
) -> list[Sample]:
    """(user, item) -> review sentence. Training uses ``train`` reviews of training interactions
    only: P5's review splits are not leave-one-out, so a "train" review may describe a held-out
    item and would leak it."""
    rows = (dataset.explanations or {}).get(split, [])
    if split == "train":
        users, items = dataset.train_pairs()
        allowed = set(zip(users.tolist(), items.tolist()))
        rows = [r for r in rows if (r[0], r[1]) in allowed]
    order = np.arange(len(rows)) if rng is None else rng.permutation(len(rows))
    if limit is not None:
        order = order[:limit]
    return [Sample(EXPLANATION, rows[k][0], (rows[k][1],), rows[k][2]) for k in order]


def train_samples(
    task: str, dataset: Dataset, users: np.ndarray, rng: np.random.Generator, max_history: int = 20,
    n_negatives: int = 99, seq_targets: int = 1, every_prefix: bool = False,
) -> list[Sample]:
    """One pass of a task's training samples: one per user for sequential (users with fewer than two
    training items give none) and direct, every training review in a random order for explanation
    (``users`` unused)."""
    if task == SEQUENTIAL:
        return sequential_train_samples(dataset, users, rng, max_history, seq_targets, every_prefix)
    if task == DIRECT:
        return direct_train_samples(dataset, users, rng, n_negatives)
    if task == EXPLANATION:
        return explanation_samples(dataset, "train", rng)
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_IDS)}")


def sequential_eval_samples(
    dataset: Dataset, users: np.ndarray, split: str, max_history: int = 20
) -> list[Sample]:
    """The user's last ``max_history`` items before the held-out ``split`` target."""
    targets = dataset.targets(split)
    return [
        Sample(SEQUENTIAL, int(u), tuple(int(i) for i in dataset.split_history(int(u), split)[-max_history:]),
               int(targets[u]))
        for u in users
    ]


def direct_eval_candidates(
    dataset: Dataset, users: np.ndarray, split: str, n_negatives: int = 99, seed: int = 0
) -> np.ndarray:
    """(len(users), 1 + n_neg): the held-out target first, then the dataset's fixed negatives
    (or, without negative.txt, negatives sampled once from ``seed``)."""
    targets = dataset.targets(split)[users]
    if dataset.negatives is not None:
        negs = dataset.negatives[users]
    else:  # the same count for every user, so candidate lists stack
        n = min(n_negatives, dataset.n_items - int(np.diff(dataset.offsets).max()))
        if n < 1:
            raise ValueError(f"{dataset.name}: too few items to sample negatives for direct recommendation")
        rng = np.random.default_rng(seed)
        negs = np.stack([sample_negatives(dataset.n_items, dataset.history(int(u)), n, rng) for u in users])
    return np.concatenate([targets[:, None], negs], axis=1)


def direct_eval_samples(
    dataset: Dataset, users: np.ndarray, split: str, seed: int = 0, n_negatives: int = 99
) -> list[Sample]:
    """Validation/test direct samples; candidates are listed in a seeded shuffled order so the
    target's position in the prompt carries no signal."""
    cands = direct_eval_candidates(dataset, users, split, n_negatives, seed=seed)
    rng = np.random.default_rng(seed)
    return [
        Sample(DIRECT, int(u), tuple(int(i) for i in rng.permutation(c)), int(c[0]))
        for u, c in zip(users, cands)
    ]
