"""Learning-free reference scorers: what any model must beat, and what the P5 id order gives away."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

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


class CooccurrenceScorer:
    """Items that followed (or preceded) the user's recent items in the TRAINING sequences.

    The rule, with defaults ``forward=3``, ``distance_power=1``, ``recency_power=1``,
    ``max_distance=50``:

    * every ordered pair of a training sequence (each user's history but its last two items),
      ``a`` at position p and ``b != a`` at position q, ``1 <= |q - p| <= max_distance``, adds
      ``w(a, b) = (forward if q > p else 1) / |q - p| ** distance_power`` to ``C[a, b]``: nearer
      pairs count more, and what came after ``a`` counts ``forward`` times what came before;
    * a visible history of length n weighs its item at distance d from the end (d = 0 for the last)
      ``r_d = 1 / (1 + d) ** recency_power``, so ``score(j) = sum_d r_d * C[h_d, j]``;
    * plus a tie-break ``popularity(j) / (max popularity + 1) * min_pair * r_(n-1)``, where
      ``min_pair = min(forward, 1) / max_distance ** distance_power`` is the smallest weight one
      pair can add: the tie-break stays below the smallest amount ONE co-occurrence can add to a
      row, so an item scoring at least that much higher is never overtaken, any co-occurrence
      beats none, and items without any are ranked by training popularity (equal popularity
      stays a tie, which the protocol counts against the target).

    ``forward=1, distance_power=0, recency_power=0`` is the plain rule: how often each item
    shares a training sequence with the history items, summed over them. The defaults were
    chosen on Beauty's validation split; the validation and test items never enter ``C`` or the
    popularity. ``max_distance`` bounds the pairs to ``max_distance`` per training interaction, so
    building costs O(interactions x max_distance) however long the histories are.
    """

    name = "cooccurrence"

    def __init__(self, dataset: Dataset, forward: float = 3.0, distance_power: float = 1.0,
                 recency_power: float = 1.0, max_distance: int = 50):
        if forward <= 0 or max_distance < 1 or distance_power < 0 or recency_power < 0:
            raise ValueError("need forward > 0, max_distance >= 1 and non-negative powers")
        self.n_items, self.recency_power = dataset.n_items, recency_power
        users, items = dataset.train_pairs()  # users ascending, each user's items oldest first
        rows, cols, weights = [], [], []
        for k in range(1, min(max_distance, len(items) - 1) + 1):
            same = users[:-k] == users[k:]
            if not same.any():
                break  # no sequence is longer than k, so none is longer than k + 1 either
            a, b = items[:-k], items[k:]
            keep = same & (a != b)
            a, b = a[keep], b[keep]
            w = 1.0 / k**distance_power
            rows += [a, b]
            cols += [b, a]
            weights += [np.full(len(a), forward * w), np.full(len(a), w)]
        n = self.n_items + 1
        if rows:  # coo -> csr sums the duplicate (a, b) entries
            self.matrix = sp.csr_matrix(
                (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
            )
        else:
            self.matrix = sp.csr_matrix((n, n))
        counts = dataset.item_counts().astype(np.float64)
        self.prior = counts / (counts.max() + 1) * min(forward, 1.0) / max_distance**distance_power

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        """(B, n_items + 1) co-occurrence score plus tie-break; column 0 is left as computed."""
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        rows = np.repeat(np.arange(len(histories)), lengths)
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories] + [np.zeros(0, np.int64)])
        # distance from the end: n - 1 ... 0 within each history
        ends = np.repeat(np.cumsum(lengths), lengths)
        dist = ends - np.arange(len(cols)) - 1
        recency = 1.0 / (1.0 + dist) ** self.recency_power
        hist = sp.csr_matrix((recency, (rows, cols)), shape=(len(histories), self.n_items + 1))
        oldest = 1.0 / np.maximum(lengths, 1).astype(np.float64) ** self.recency_power
        return (hist @ self.matrix).toarray() + oldest[:, None] * self.prior[None, :]

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        s = self.scores(histories)
        s[:, 0] = -np.inf  # padding, never an item
        return s

    def score_candidates(
        self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray
    ) -> np.ndarray:
        return np.take_along_axis(self.scores(histories), np.asarray(candidates), axis=1)


BASELINES = {"popularity": PopularityScorer, "id-shortcut": IdShortcutScorer,
             "sequential-prior": SequentialTargetPrior, "direct-prior": DirectTargetPrior,
             "cooccurrence": CooccurrenceScorer}
