"""Constrained generation, reranking and exact candidate scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elmrec.config import ModelConfig
from elmrec.generation import (
    beam_search,
    build_trie,
    candidate_log_likelihood,
    candidate_tokens,
    item_token_ids,
    prefix_tree,
    rerank,
    top_columns,
)
from elmrec.model import build_model
from elmrec.prompts import EVAL_TEMPLATE, render
from elmrec.tasks import DIRECT, SEQUENTIAL, Sample
from elmrec.tokenization import build_tokenizer, encode_prompts

N_USERS, N_ITEMS = 30, 150  # ids of 1 to 3 digits: tokenised lengths differ


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = build_tokenizer()
    users = np.arange(1, N_USERS + 1).repeat(3)
    items = (users * 7) % N_ITEMS + 1
    cfg = ModelConfig(size="tiny", id_tokens="digits", dropout=0.0)
    model = build_model(cfg, N_USERS, N_ITEMS, users, items, len(tok), 0)
    model.eval()
    return model, tok


def _encode(model, tok, task, samples):
    batch = encode_prompts(tok, [render(s, EVAL_TEMPLATE, N_USERS, True) for s in samples])
    with torch.no_grad():
        return model.encode(task, **batch)


def _exhaustive(model, tok, hidden, mask, items):
    cands = np.tile(items, (hidden.shape[0], 1))
    return candidate_log_likelihood(model, hidden, mask, candidate_tokens(tok, cands, "cpu")).numpy()


def test_trie_accepts_exactly_the_item_ids(setup):
    _, tok = setup
    items = np.array([3, 30, 33, 149])
    trie = build_trie(tok, [items])
    reached = set()
    for item, seq in zip(items, item_token_ids(tok, items)):
        node = int(trie.roots[0])
        for t in seq:
            sym = int((trie.sym_tokens == t).nonzero()[0, 0])
            node = int(trie.next_node[node, sym])
            assert node != 0, f"item {item} left the trie"
        reached.add(int(trie.item_of_node[node]))
    assert reached == set(items.tolist())
    assert int((trie.item_of_node > 0).sum()) == len(items)


def test_every_generated_id_is_a_real_item(setup):
    model, tok = setup
    samples = [Sample(SEQUENTIAL, u, tuple(int(i) for i in np.arange(u, u + 5) % N_ITEMS + 1), 1)
               for u in range(1, N_USERS + 1)]
    hidden, mask = _encode(model, tok, SEQUENTIAL, samples)
    trie = build_trie(tok, [np.arange(1, N_ITEMS + 1)])
    items, scores = beam_search(model, hidden, mask, trie, trie.roots[[0] * len(samples)], beams=20, n_return=20)
    assert items.shape == (N_USERS, 20)
    assert ((items >= 1) & (items <= N_ITEMS)).all()
    assert torch.isfinite(scores).all()
    assert all(len(set(row.tolist())) == 20 for row in items)  # no duplicates
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first


def test_beam_search_with_as_many_beams_as_items_is_exhaustive(setup):
    model, tok = setup
    items = np.array([2, 7, 19, 20, 88, 101, 120, 5, 64])
    samples = [Sample(SEQUENTIAL, 4, (3, 9), 1), Sample(SEQUENTIAL, 11, (40, 41, 42), 1)]
    hidden, mask = _encode(model, tok, SEQUENTIAL, samples)
    trie = build_trie(tok, [items])
    got, got_scores = beam_search(model, hidden, mask, trie, trie.roots[[0, 0]], len(items), len(items))
    exact = _exhaustive(model, tok, hidden, mask, items)
    for r in range(2):
        np.testing.assert_array_equal(got[r].numpy(), items[np.argsort(-exact[r], kind="stable")])
        np.testing.assert_allclose(got_scores[r].numpy(), np.sort(exact[r])[::-1], rtol=1e-4, atol=1e-4)


def test_fewer_valid_ids_than_requested_are_padded_not_invented(setup):
    model, tok = setup
    hidden, mask = _encode(model, tok, SEQUENTIAL, [Sample(SEQUENTIAL, 1, (2,), 1)])
    trie = build_trie(tok, [np.array([5, 6, 7])])
    items, scores = beam_search(model, hidden, mask, trie, trie.roots[[0]], beams=6, n_return=6)
    assert sorted(items[0, :3].tolist()) == [5, 6, 7]
    assert items[0, 3:].eq(0).all() and torch.isinf(scores[0, 3:]).all()


def test_exact_candidate_scoring_equals_brute_force(setup):
    model, tok = setup
    # 140 and 150 share their first digit chunk within a row and occur for both users: the
    # per-prefix softmax must share within a user and never across users
    cands = np.array([[4, 17, 150, 99, 1, 140], [23, 8, 140, 66, 12, 150]])
    samples = [Sample(DIRECT, u + 1, tuple(c), int(c[0])) for u, c in enumerate(cands)]
    hidden, mask = _encode(model, tok, DIRECT, samples)
    fast = candidate_log_likelihood(model, hidden, mask, candidate_tokens(tok, cands, "cpu")).numpy()
    for r in range(len(cands)):
        for c, item in enumerate(cands[r]):
            labels = torch.tensor([item_token_ids(tok, [item])[0]])
            with torch.no_grad():
                logits = model.t5(encoder_outputs=(hidden[r : r + 1],), attention_mask=mask[r : r + 1],
                                  labels=labels).logits
            brute = logits.log_softmax(-1).gather(-1, labels[..., None]).sum().item()
            assert fast[r, c] == pytest.approx(brute, abs=1e-4)


def test_prefix_tree_has_one_node_per_distinct_prefix_of_each_user():
    """Shared prefixes are decoded once per user, never shared across users, and every
    candidate's tokens are predicted from the node of exactly its own prefix."""
    start, pad = 7, 0
    tokens = torch.tensor([[[3, 4, 1, 0], [3, 5, 1, 0], [3, 4, 6, 1]],   # user 0: 3 4 shared
                           [[3, 4, 1, 0], [8, 1, 0, 0], [8, 1, 0, 0]]])  # user 1: a duplicate
    tree = prefix_tree(tokens, start, pad)
    for b in range(2):
        inputs = [[start, *[t for t in row.tolist() if t != pad][:-1]] for row in tokens[b]]
        prefixes = {tuple(seq[: p + 1]) for seq in inputs for p in range(len(seq))}
        n = int((tree.tokens[b] != pad).sum())
        assert n == len(prefixes)
        # a node's prefix: the tokens of its ancestors, in depth order
        path = {i: tuple(tree.tokens[b, tree.ancestors[b, i]].tolist()) for i in range(n)}
        assert set(path.values()) == prefixes
        assert all(tree.depth[b, i] == len(path[i]) - 1 for i in range(n))
        for c, seq in enumerate(inputs):
            for p in range(len(seq)):
                assert path[int(tree.node[b, c, p])] == tuple(seq[: p + 1])


def test_candidate_scores_never_read_uninitialised_memory(setup, monkeypatch):
    """Ids of different token lengths leave padding positions; a fresh tensor full of NaN (what
    torch.empty may hand back) must not reach any score."""
    model, tok = setup
    cands = np.array([[4, 150, 99, 1, 140, 7]])  # one- and two-chunk ids: padding in the short ones
    hidden, mask = _encode(model, tok, DIRECT, [Sample(DIRECT, 1, tuple(cands[0]), 4)])
    expected = candidate_log_likelihood(model, hidden, mask, candidate_tokens(tok, cands, "cpu"))
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(float("nan")))
    got = candidate_log_likelihood(model, hidden, mask, candidate_tokens(tok, cands, "cpu"))
    assert torch.isfinite(got).all() and torch.equal(got, expected)


def test_rerank_drops_history_and_fills_top_n():
    items = np.array([[5, 1, 9, 2, 7, 8, 3], [4, 4, 0, 0, 0, 0, 0]])
    scores = -np.arange(7, dtype=float)[None].repeat(2, 0)
    out, out_scores, dropped = rerank(items, scores, [np.array([1, 2, 3]), np.array([4])], top_n=4)
    np.testing.assert_array_equal(out[0], [5, 9, 7, 8])
    np.testing.assert_array_equal(out_scores[0], [0, -2, -4, -5])
    assert dropped.tolist() == [3, 2]
    np.testing.assert_array_equal(out[1], [0, 0, 0, 0])
    assert np.isinf(out_scores[1]).all()


def test_top_columns_is_a_stable_descending_sort_cut_to_k():
    """Ties (including -inf: column 0, dropped history) keep the lower column first, as the full
    stable sort that it replaces did; k beyond the row and empty batches are handled."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, m = int(rng.integers(0, 5)), int(rng.integers(1, 25))
        scores = rng.integers(-3, 3, size=(n, m)).astype(np.float64)  # many ties
        scores[rng.random((n, m)) < 0.2] = -np.inf
        for k in (1, 2, m // 2 + 1, m, m + 3):
            expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            np.testing.assert_array_equal(top_columns(scores, k), expected)
    np.testing.assert_array_equal(top_columns(np.array([[0.5, 2.0, 2.0, -np.inf]]), 2), [[1, 2]])
    scores = np.array([[0.5, np.nan, 2.0, 1.0], [3.0, 1.0, 2.0, 0.0]], dtype=np.float32)  # NaN last, as argsort
    for k in (0, 2, 3):
        np.testing.assert_array_equal(top_columns(scores, k), np.argsort(-scores, axis=1, kind="stable")[:, :k])
    assert top_columns(scores[1:], 2).tolist() == [[0, 2]]  # float32 without NaN: the topk path
