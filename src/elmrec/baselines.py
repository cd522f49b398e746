"""Learning-free reference scorers: what any model must beat, and what the P5 id order gives away."""

from __future__ import annotations

import numpy as np

from .data import Dataset


class ItemPrior:
    """One fixed score per item, whoever asks: the scorers that ignore the user and the history."""

    name = "prior"

    def __init__(self, weights: np.ndarray):
        self.counts = np.asarray(weights, dtype=np.float64).copy()
        self.counts[0] = -np.inf  # padding, never an item

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(users), 1))

    def score_candidates(
        self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray
    ) -> np.ndarray:
        return self.counts[np.asarray(candidates)]


class PopularityScorer(ItemPrior):
    """Rank by the number of TRAINING interactions (no validation/test item is counted).

    Equal counts stay equal scores, and the protocol counts ties against the target, so this
    figure is the conservative one (no arbitrary tie-break that might favour some items).
    """

    name = "popularity"

    def __init__(self, dataset: Dataset):
        super().__init__(dataset.item_counts())


def _training_target_weights(dataset: Dataset, skip_first: bool) -> np.ndarray:
    """Expected count of each item among one training sample per user, each user's n training items
    equally likely (all n, or all but the first when ``skip_first``)."""
    w = np.zeros(dataset.n_items + 1)
    for u in dataset.users:
        h = dataset.split_history(int(u), "train")[1 if skip_first else 0 :]
        if len(h):
            np.add.at(w, h, 1.0 / len(h))
    return w


class SequentialTargetPrior(ItemPrior):
    """How often an item is the target of a sequential training sample (``tasks.py``: the end of a
    random segment of >= 2 items, so any training item but the first, equally likely). The best
    a model can score that learned the targets' distribution but does not read its prompt."""

    name = "sequential-prior"

    def __init__(self, dataset: Dataset):
        super().__init__(_training_target_weights(dataset, skip_first=True))


class DirectTargetPrior(ItemPrior):
    """How often an item is the positive of a direct training sample (any training item of the
    user, equally likely): the direct task's counterpart of :class:`SequentialTargetPrior`."""

    name = "direct-prior"

    def __init__(self, dataset: Dataset):
        super().__init__(_training_target_weights(dataset, skip_first=False))


def id_shortcut_scores(items: np.ndarray, last: np.ndarray, top: np.ndarray, n_items: int) -> np.ndarray:
    """Score of item ids ``items`` (B, C) for users whose last / largest visible ids are
    ``last`` / ``top`` (B, 1). Three tiers, each ordered by distance, no ties:

    1. ids above ``top``, nearest first: in P5's sequential indexing an item new to the dataset
       gets the next free id, so a user's next new item is often ``top + 1``;
    2. ids between ``last`` and ``top``, nearest to ``last`` first;
    3. ids at or below ``last``, nearest first.
    """
    n = n_items
    return np.where(
        items > top, 2 * n - (items - top), np.where(items > last, n - (items - last), -(last - items))
    ).astype(np.float64)


class IdShortcutScorer:
    """The id-order shortcut as a rule (see :func:`id_shortcut_scores`): it learns nothing, so
    whatever it scores on a dataset measures how much the item ids themselves leak. It should
    fall to chance level on randomly re-indexed items."""

    name = "id-shortcut"

    def __init__(self, dataset: Dataset):
        self.n_items = dataset.n_items

    @staticmethod
    def _last_and_top(histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        last = np.array([h[-1] if len(h) else 0 for h in histories], dtype=np.int64)[:, None]
        top = np.array([h.max() if len(h) else 0 for h in histories], dtype=np.int64)[:, None]
        return last, top

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        last, top = self._last_and_top(histories)
        scores = id_shortcut_scores(np.arange(self.n_items + 1)[None, :], last, top, self.n_items)
        scores[:, 0] = -np.inf
        return scores

    def score_candidates(
        self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray
    ) -> np.ndarray:
        last, top = self._last_and_top(histories)
        return id_shortcut_scores(np.asarray(candidates), last, top, self.n_items)


BASELINES = {"popularity": PopularityScorer, "id-shortcut": IdShortcutScorer,
             "sequential-prior": SequentialTargetPrior, "direct-prior": DirectTargetPrior}
