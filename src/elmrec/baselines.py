"""Learning-free reference scorers: what any model must beat, and what the P5 id order gives away."""

from __future__ import annotations

import numpy as np

from .data import Dataset


class PopularityScorer:
    """Rank by the number of TRAINING interactions (no validation/test item is counted).

    Equal counts stay equal scores, and the protocol counts ties against the target, so this
    figure is the conservative one (no arbitrary tie-break that might favour some items).
    """

    name = "popularity"

    def __init__(self, dataset: Dataset):
        self.counts = dataset.item_counts().astype(np.float64)
        self.counts[0] = -np.inf

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(users), 1))

    def score_candidates(
        self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray
    ) -> np.ndarray:
        return self.counts[np.asarray(candidates)]


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


BASELINES = {"popularity": PopularityScorer, "id-shortcut": IdShortcutScorer}
