"""Validated interaction datasets with the leave-one-out split of P5 / POD / ELMRec, their
re-indexing and fixed negatives (reading and writing files: ``formats.py``).

Internal ids are those of the P5 files: users 1..n_users, items 1..n_items (0 is never an id, so
it can serve as padding everywhere downstream). A user's history is chronological; the last item
is the test target, the second to last the validation target, the rest is training data.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

MIN_INTERACTIONS = 3  # one for training, one for validation, one for test

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file does not have the expected form; the message names file, line and expectation."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Dataset:
    """Users' chronological histories plus optional candidates, id maps and explanations.

    Histories are stored flat (CSR): items of user u are ``items[offsets[u]:offsets[u + 1]]``;
    row 0 is an empty placeholder so that user ids index directly.
    """

    name: str
    offsets: np.ndarray  # (n_users + 2,)
    items: np.ndarray  # (n_interactions,)
    n_items: int
    negatives: np.ndarray | None = None  # (n_users + 1, n_neg); row 0 unused
    user_names: tuple[str, ...] | None = None  # index = internal id; entry 0 is ""
    item_names: tuple[str, ...] | None = None
    explanations: dict[str, list[tuple[int, int, str]]] | None = None  # split -> (user, item, text)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "offsets", _frozen(np.asarray(self.offsets, dtype=np.int64)))
        object.__setattr__(self, "items", _frozen(np.asarray(self.items, dtype=np.int64)))
        if self.negatives is not None:
            object.__setattr__(self, "negatives", _frozen(np.asarray(self.negatives, dtype=np.int64)))

    @classmethod
    def from_histories(
        cls,
        histories: Sequence[Sequence[int]],
        n_items: int | None = None,
        name: str = "dataset",
        **optional,
    ) -> Dataset:
        """Build from per-user item lists (``histories[0]`` is user 1), checking the id ranges.

        ``optional`` passes negatives, user_names, item_names and explanations through.
        """
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        items = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if len(histories) else []
        items = np.asarray(items, dtype=np.int64)
        n_items = int(items.max(initial=0)) if n_items is None else n_items
        if len(items) == 0 or items.min() < 1 or items.max() > n_items:
            raise DataError(name, None, f"item ids must lie in 1..{n_items} and histories must not be empty")
        if lengths.min() < MIN_INTERACTIONS:
            user = int(np.argmin(lengths)) + 1
            message = f"user {user} has {lengths.min()} interactions; at least {MIN_INTERACTIONS} are needed"
            raise DataError(name, None, message)
        offsets = np.concatenate([[0, 0], np.cumsum(lengths)])
        return cls(name=name, offsets=offsets, items=items, n_items=n_items, **optional)

    # --- sizes -------------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.offsets) - 2

    @property
    def n_interactions(self) -> int:
        return len(self.items)

    @property
    def users(self) -> np.ndarray:
        return np.arange(1, self.n_users + 1)

    @property
    def has_explanations(self) -> bool:
        return bool(self.explanations and self.explanations.get("train"))

    # --- histories and split ------------------------------------------------------------------
    def history(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def split_history(self, user: int, split: str) -> np.ndarray:
        """Items a model may see before predicting ``split``'s target of ``user``.

        train: everything but the last two; valid: the same (its target is the second to last);
        test: everything but the last.
        """
        h = self.history(user)
        if split in ("train", "valid"):
            return h[:-2]
        if split == "test":
            return h[:-1]
        raise ValueError(f"unknown split {split!r}; expected train, valid or test")

    def targets(self, split: str) -> np.ndarray:
        """Held-out item of every user for ``split`` (index = user id, entry 0 unused)."""
        if split == "valid":
            idx = self.offsets[2:] - 2
        elif split == "test":
            idx = self.offsets[2:] - 1
        else:
            raise ValueError(f"unknown split {split!r}; expected valid or test")
        return np.concatenate([[0], self.items[idx]])

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) of every TRAINING interaction: nothing of the last two items per user."""
        if "train_pairs" not in self._cache:
            lengths = np.diff(self.offsets)[1:]
            users = np.repeat(np.arange(1, self.n_users + 1), lengths)
            pos = np.arange(len(self.items)) - np.repeat(self.offsets[1:-1], lengths)
            keep = pos < np.repeat(lengths - 2, lengths)
            self._cache["train_pairs"] = (_frozen(users[keep]), _frozen(self.items[keep]))
        return self._cache["train_pairs"]

    def item_counts(self) -> np.ndarray:
        """Training interaction count of every item (index = item id)."""
        return np.bincount(self.train_pairs()[1], minlength=self.n_items + 1)

    def fingerprint(self) -> str:
        """Content hash of histories and candidates: identifies the exact data a model saw."""
        if "fingerprint" not in self._cache:
            h = hashlib.sha256()
            for a in (self.offsets, self.items):
                h.update(a.tobytes())
            h.update(str(self.n_items).encode())
            if self.negatives is not None:
                h.update(self.negatives.tobytes())
            self._cache["fingerprint"] = h.hexdigest()[:16]
        return self._cache["fingerprint"]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "has_negatives": self.negatives is not None,
            "has_explanations": self.has_explanations,
            "fingerprint": self.fingerprint(),
        }


# --- P5-format directories ------------------------------------------------------------------


def explanation_leaks(dataset: Dataset) -> int:
    """Training explanations whose (user, item) is not a training interaction of that user.

    P5's review splits are not the leave-one-out split, so a "train" review can describe a user's
    validation or test item; training on it would leak the held-out item. Filter such records.
    """
    if not dataset.explanations or not dataset.explanations.get("train"):
        return 0
    users, items = dataset.train_pairs()
    train = set(zip(users.tolist(), items.tolist()))
    return sum((u, i) not in train for u, i, _ in dataset.explanations["train"])


# --- interaction tables (CSV / TSV / Parquet, RecBole .inter) -------------------------------

def reindex(dataset: Dataset, order: str = "sequential", seed: int = 0) -> Dataset:
    """New item ids; histories, negatives, item names and explanations are mapped consistently.

    ``sequential``: ids by first appearance, scanning users in id order and each history oldest
    first, as in the P5 files (consecutive ids then tend to share a user, which a text model can
    exploit). ``random``: a seeded permutation, which removes that shortcut. Items that appear
    only among negatives or in the id map come last (sequential) or take their permuted id.
    """
    n = dataset.n_items
    if order == "sequential":
        first_seen = pd.unique(dataset.items)
        rest = np.setdiff1d(np.arange(1, n + 1), first_seen)
        old_of_new = np.concatenate([[0], first_seen, rest])
    elif order == "random":
        old_of_new = np.concatenate([[0], np.random.default_rng(seed).permutation(n) + 1])
    else:
        raise ValueError(f"unknown order {order!r}; expected 'sequential' or 'random'")
    new_of_old = np.empty(n + 1, dtype=np.int64)
    new_of_old[old_of_new] = np.arange(n + 1)
    # keep the original ids findable even when the input had no names
    names = dataset.item_names or ("",) + tuple(str(i) for i in range(1, n + 1))
    explanations = None
    if dataset.explanations is not None:
        explanations = {
            split: [(u, int(new_of_old[i]), text) for u, i, text in rows]
            for split, rows in dataset.explanations.items()
        }
    return Dataset(
        name=dataset.name,
        offsets=dataset.offsets,
        items=new_of_old[dataset.items],
        n_items=n,
        negatives=None if dataset.negatives is None else new_of_old[dataset.negatives],
        user_names=dataset.user_names,
        item_names=tuple(names[o] for o in old_of_new),
        explanations=explanations,
    )


def sample_negatives(dataset: Dataset, n: int = 99, seed: int = 2024) -> Dataset:
    """A copy with fixed evaluation candidates: per user ``n`` distinct items the user never
    interacted with (in any split), uniform without replacement.

    Sampled once and stored so that every later evaluation ranks the same candidates. If some user
    has fewer than ``n`` untouched items, every user gets that smaller number (a warning is logged).
    """
    rng = np.random.default_rng(seed)
    touched = [np.unique(dataset.history(u)) for u in dataset.users]
    available = dataset.n_items - np.array([len(t) for t in touched])
    width = int(min(n, available.min()))
    if width < 1:
        user = int(np.argmin(available)) + 1
        raise DataError(dataset.name, None, f"user {user} interacted with every item; no negatives possible")
    if width < n:
        log.warning("%s: only %d negatives per user possible (asked for %d)", dataset.name, width, n)
    out = np.zeros((dataset.n_users + 1, width), dtype=np.int64)
    for u, excluded in enumerate(touched, 1):
        # sample ranks among the allowed items, then map rank r to the r-th allowed id: it lies
        # r + 1 + (number of excluded ids below it) and excluded[j] is below iff excluded[j] - j <= r + 1
        ranks = rng.choice(dataset.n_items - len(excluded), size=width, replace=False)
        shift = np.searchsorted(excluded - np.arange(len(excluded)), ranks + 1, side="right")
        out[u] = ranks + 1 + shift
    return Dataset(
        name=dataset.name,
        offsets=dataset.offsets,
        items=dataset.items,
        n_items=dataset.n_items,
        negatives=out,
        user_names=dataset.user_names,
        item_names=dataset.item_names,
        explanations=dataset.explanations,
    )


def describe(dataset: Dataset) -> dict:
    """:meth:`Dataset.summary` plus history lengths, candidates and how much the item ids leak.

    ``test_target_is_max_plus_one`` is the share of users whose test item id is one above their
    largest earlier id: near 0 for random ids, large for P5's sequential indexing.
    """
    lengths = np.diff(dataset.offsets)[1:]
    before_test = dataset.items.copy()
    before_test[dataset.offsets[2:] - 1] = 0  # hide each user's test item
    seen_max = np.maximum.reduceat(before_test, dataset.offsets[1:-1])
    test = dataset.targets("test")[1:]
    out = dataset.summary()
    out.update(
        history_min=int(lengths.min()),
        history_median=float(np.median(lengths)),
        history_mean=round(float(lengths.mean()), 2),
        history_max=int(lengths.max()),
        density=float(dataset.n_interactions / (dataset.n_users * dataset.n_items)),
        negatives_per_user=None if dataset.negatives is None else int(dataset.negatives.shape[1]),
        explanations={k: len(v) for k, v in (dataset.explanations or {}).items()},
        test_target_is_max_plus_one=round(float(np.mean(test == seen_max + 1)), 4),
    )
    return out
