import numpy as np
import pytest

from elmrec.data import describe, explanation_leaks
from elmrec.synthetic import make_synthetic


def test_deterministic():
    a, b = make_synthetic(seed=5), make_synthetic(seed=5)
    assert a.fingerprint() == b.fingerprint() and a.explanations == b.explanations
    assert make_synthetic(seed=6).fingerprint() != a.fingerprint()


def test_shape_and_validity():
    ds = make_synthetic()
    assert (ds.n_users, ds.n_items) == (300, 200)
    lengths = np.diff(ds.offsets)[1:]
    assert lengths.min() >= 5 and lengths.max() <= 20
    assert ds.negatives.shape == (301, 99)
    for u in ds.users:
        h = ds.history(u).tolist()
        assert len(set(h)) == len(h)  # no repeats
        assert not set(ds.negatives[u].tolist()) & set(h)
        assert len(set(ds.negatives[u].tolist())) == 99
    assert len(ds.item_names) == 201 and len(ds.user_names) == 301


def test_few_items_give_fewer_negatives():
    ds = make_synthetic(n_users=20, n_items=30, n_communities=2, max_len=10)
    assert ds.negatives.shape[1] == 20


def test_explanations_follow_the_leave_one_out_split(synthetic_dataset):
    ds = synthetic_dataset
    exp = ds.explanations
    assert [(u, i) for u, i, _ in exp["test"]] == [(u, ds.targets("test")[u]) for u in ds.users]
    assert [(u, i) for u, i, _ in exp["valid"]] == [(u, ds.targets("valid")[u]) for u in ds.users]
    train = {(u, i) for u, i, _ in exp["train"]}
    assert train == set(zip(*(a.tolist() for a in ds.train_pairs())))
    assert all(text for _, _, text in exp["train"])
    assert explanation_leaks(ds) == 0
    assert make_synthetic(n_users=10, with_explanations=False).explanations is None


def test_planted_structure_and_random_ids():
    ds = make_synthetic()
    # transitions: the most frequent successor of an item follows it far more often than chance
    users, items = ds.train_pairs()
    prev, nxt = items[:-1][users[:-1] == users[1:]], items[1:][users[:-1] == users[1:]]
    pairs = np.zeros((ds.n_items + 1, ds.n_items + 1), dtype=int)
    np.add.at(pairs, (prev, nxt), 1)
    top_share = pairs.max(axis=1).sum() / pairs.sum()
    assert top_share > 0.4
    # random ids by default: new items are not max + 1; sequential order plants that shortcut
    assert describe(ds)["test_target_is_max_plus_one"] < 0.02
    assert describe(make_synthetic(item_order="sequential"))["test_target_is_max_plus_one"] > 0.04


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_synthetic(n_items=10, max_len=20)
