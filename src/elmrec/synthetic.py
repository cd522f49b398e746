"""A small synthetic dataset with planted structure, for tests and quick end-to-end runs.

Users belong to communities; each community prefers one cluster of items (with a skewed
popularity inside the cluster), and inside a cluster every item has a fixed successor that often
comes next. A model that learns anything beats popularity here, one that learns the transitions
beats a bag-of-items model, and with random item ids (the default) the id-order shortcut of the P5
files is worth nothing. Small enough for a tiny transformer to fit in about a minute on a CPU.
"""

from __future__ import annotations

import numpy as np

from .data import Dataset, reindex, sample_negatives

# one phrase per item cluster, so explanations carry the cluster; clusters beyond these reuse them
_PHRASES = (
    "great scent and long lasting",
    "smooth texture and easy to apply",
    "vivid colour that stays on all day",
    "gentle on sensitive skin",
    "good value for the amount you get",
    "sturdy packaging and nice design",
    "light and not greasy at all",
    "works fast and looks natural",
    "leaves my hair soft and shiny",
    "pleasant smell but a bit strong",
)
_TEMPLATES = ("{}", "really {}", "{} , would buy again", "overall {}", "i like it : {}")


def make_synthetic(
    n_users: int = 300,
    n_items: int = 200,
    n_communities: int = 5,
    seed: int = 0,
    min_len: int = 5,
    max_len: int = 20,
    p_successor: float = 0.6,
    p_community: float = 0.9,
    n_negatives: int = 99,
    item_order: str = "random",
    with_explanations: bool = True,
    name: str = "synthetic",
) -> Dataset:
    """Generate the dataset; same arguments, same data.

    Each next item is the previous item's fixed successor with probability ``p_successor`` (if not
    yet seen), else a popularity-weighted draw from the user's cluster (``p_community``) or from
    all items; no item repeats within a history. ``item_order`` is passed to :func:`reindex`
    ("random" removes id-order shortcuts, "sequential" plants the P5 one). Negatives (up to
    ``n_negatives``, fewer if items are scarce) and, optionally, template explanations split like
    the leave-one-out items, come with it.
    """
    if not 1 <= n_communities <= n_items:
        raise ValueError("need 1 <= n_communities <= n_items")
    if not 3 <= min_len <= max_len <= n_items:
        raise ValueError("need 3 <= min_len <= max_len <= n_items")
    rng = np.random.default_rng(seed)
    cluster = rng.permutation(n_items) % n_communities  # generation id -> cluster
    members = [np.flatnonzero(cluster == c) for c in range(n_communities)]
    successor = np.empty(n_items, dtype=np.int64)
    popularity = np.empty(n_items)
    for m in members:
        cycle = rng.permutation(m)
        successor[cycle] = np.roll(cycle, -1)
        popularity[rng.permutation(m)] = 1.0 / np.arange(1, len(m) + 1) ** 0.8  # Zipf-like inside
    community = rng.integers(n_communities, size=n_users)
    lengths = rng.integers(min_len, max_len + 1, size=n_users)

    histories = []
    for u in range(n_users):
        seen = np.zeros(n_items, dtype=bool)
        h: list[int] = []
        for _ in range(lengths[u]):
            if h and rng.random() < p_successor and not seen[successor[h[-1]]]:
                nxt = int(successor[h[-1]])
            else:
                pool = members[community[u]] if rng.random() < p_community else np.arange(n_items)
                pool = pool[~seen[pool]]
                if len(pool) == 0:
                    pool = np.flatnonzero(~seen)
                w = popularity[pool]
                nxt = int(rng.choice(pool, p=w / w.sum()))
            seen[nxt] = True
            h.append(nxt)
        histories.append([i + 1 for i in h])

    explanations = None
    if with_explanations:
        explanations = {"train": [], "valid": [], "test": []}
        for u, h in enumerate(histories, 1):
            for pos, item in enumerate(h):
                split = "train" if pos < len(h) - 2 else ("valid" if pos == len(h) - 2 else "test")
                phrase = _PHRASES[cluster[item - 1] % len(_PHRASES)]
                text = _TEMPLATES[rng.integers(len(_TEMPLATES))].format(phrase)
                explanations[split].append((u, item, text))
    ds = Dataset.from_histories(
        histories,
        n_items=n_items,
        name=name,
        user_names=("",) + tuple(f"user{u:05d}" for u in range(1, n_users + 1)),
        item_names=("",) + tuple(f"item{i + 1:05d}" for i in range(n_items)),  # no cluster hint
        explanations=explanations,
    )
    ds = reindex(ds, item_order, seed=seed)
    width = min(n_negatives, n_items - int(lengths.max()))
    return sample_negatives(ds, n=width, seed=seed + 1)
