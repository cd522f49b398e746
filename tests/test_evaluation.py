import json
import math

import numpy as np
import pytest

from elmrec.data import DataError, Dataset
from elmrec.evaluation import (
    EvalResult,
    evaluate,
    evaluate_direct,
    evaluate_sequential,
    format_table,
    hit_rate,
    ndcg,
    rank_of_target,
    ranking_metrics,
    sample_users,
    user_dependence,
)

# --- metrics -------------------------------------------------------------------------------


def test_rank_of_target_counts_ties_against_the_target():
    scores = np.array([[0.1, 0.5, 0.3, 0.3], [1.0, 1.0, 1.0, 1.0], [0.0, -np.inf, 2.0, -np.inf]])
    assert rank_of_target(scores, np.array([2, 0, 1])).tolist() == [2, 3, 3]
    assert rank_of_target(scores, np.array([1, 3, 2])).tolist() == [0, 3, 0]


def test_nan_never_wins():
    scores = np.array([[np.nan, 0.0, 1.0], [np.nan, np.nan, 5.0]])
    assert rank_of_target(scores, np.array([0, 0])).tolist() == [2, 2]
    assert rank_of_target(scores, np.array([2, 2])).tolist() == [0, 0]


def test_hand_computed_metrics():
    ranks = np.array([0, 1, 4, 10])
    assert hit_rate(ranks, 1) == 0.25
    assert hit_rate(ranks, 5) == 0.75
    assert hit_rate(ranks, 10) == 0.75
    assert ndcg(ranks, 1) == 0.25
    assert ndcg(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert ndcg(ranks, 11) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(12)) / 4)
    m = ranking_metrics(ranks)
    assert list(m) == ["HR@1", "HR@5", "HR@10", "NDCG@1", "NDCG@5", "NDCG@10"]


# --- protocol ------------------------------------------------------------------------------


class Constant:
    def score_all(self, users, histories):
        return np.zeros((len(users), self.n + 1))

    def score_candidates(self, users, histories, candidates):
        return np.zeros(candidates.shape)

    def __init__(self, n):
        self.n = n


class Oracle:
    """Knows the target; optionally scores the visible history even higher."""

    def __init__(self, dataset, split, history_first=False):
        self.ds, self.targets, self.history_first = dataset, dataset.targets(split), history_first
        self.seen_candidates = []

    def score_all(self, users, histories):
        s = np.zeros((len(users), self.ds.n_items + 1), dtype=np.float32)
        s[np.arange(len(users)), self.targets[users]] = 1
        if self.history_first:
            for row, h in enumerate(histories):
                s[row, h] = 2
        return s

    def score_candidates(self, users, histories, candidates):
        self.seen_candidates.append(candidates.copy())
        return (candidates == self.targets[users][:, None]).astype(float)

    def stats(self):
        return {"oracle_calls": len(self.seen_candidates)}


def test_constant_scorer_scores_zero(synthetic_dataset):
    ds = synthetic_dataset
    for task in ("sequential", "direct"):
        r = evaluate(Constant(ds.n_items), ds, task, progress=False)
        assert all(v == 0 for v in r.metrics.values()), task


def test_oracle_and_history_exclusion(synthetic_dataset):
    ds = synthetic_dataset
    for split in ("valid", "test"):
        r = evaluate_sequential(Oracle(ds, split), ds, split, progress=False)
        assert r.metrics["HR@1"] == 1 and r.metrics["NDCG@10"] == 1
        # history scored above the target: masked, it does not matter; unmasked, it pushes the target down
        r = evaluate_sequential(
            Oracle(ds, split, history_first=True), ds, split, progress=False, batch_size=7
        )
        assert r.metrics["HR@1"] == 1
        r = evaluate_sequential(Oracle(ds, split, True), ds, split, exclude_history=False, progress=False)
        expected = [len(np.unique(ds.split_history(u, split))) for u in ds.users]
        assert r.ranks.tolist() == expected
        assert r.protocol["exclude_history"] is False


def test_repeated_target_is_not_masked():
    ds = Dataset.from_histories([[1, 2, 1], [2, 3, 4]], n_items=4)
    oracle = Oracle(ds, "test", history_first=True)
    r = evaluate_sequential(oracle, ds, "test", progress=False)
    # user 1: target 1 is also in the history [1, 2]; item 2 is masked, item 1 keeps its score
    assert r.ranks.tolist() == [0, 0]
    r = evaluate_sequential(oracle, ds, "test", exclude_history=False, progress=False)
    assert r.ranks.tolist() == [1, 2]  # unmasked, the history items tie with or beat the target
    assert r.extra["target_in_history_users"] == 1


def test_direct_candidates_are_target_then_negatives(synthetic_dataset):
    ds = synthetic_dataset
    oracle = Oracle(ds, "valid")
    r = evaluate_direct(oracle, ds, "valid", batch_size=30, progress=False)
    assert r.metrics["HR@1"] == 1
    cands = np.concatenate(oracle.seen_candidates)
    assert np.array_equal(cands[:, 0], ds.targets("valid")[1:])
    assert np.array_equal(cands[:, 1:], ds.negatives[1:])
    assert r.protocol["candidates"] == 1 + ds.negatives.shape[1]
    assert r.extra["oracle_calls"] == 4  # the stats() hook


def test_users_subset(synthetic_dataset):
    ds = synthetic_dataset
    users = sample_users(ds, 10, seed=1)
    assert len(users) == 10 and np.array_equal(users, sample_users(ds, 10, seed=1))
    r = evaluate_sequential(Oracle(ds, "test"), ds, users=users, progress=False)
    assert r.protocol["n_users"] == 10 and not r.protocol["all_users"]
    assert np.array_equal(r.users, users)
    with pytest.raises(ValueError, match="ids in 1..100"):
        evaluate_sequential(Oracle(ds, "test"), ds, users=[0], progress=False)


def test_bad_scorer_shapes_and_missing_negatives(synthetic_dataset):
    class Wrong(Constant):
        def score_all(self, users, histories):
            return np.zeros((len(users), self.n))

    with pytest.raises(ValueError, match="score_all returned scores of shape"):
        evaluate_sequential(Wrong(synthetic_dataset.n_items), synthetic_dataset, progress=False)
    plain = Dataset.from_histories([[1, 2, 3]])
    with pytest.raises(DataError, match="no negatives"):
        evaluate_direct(Constant(3), plain, progress=False)
    with pytest.raises(ValueError, match="unknown split"):
        evaluate_direct(Constant(3), plain, split="train", progress=False)


def test_result_serialisation(synthetic_dataset):
    r = evaluate(Oracle(synthetic_dataset, "test"), synthetic_dataset, "direct", progress=False)
    data = json.loads(r.to_json())
    assert data["metrics"]["HR@10"] == 1.0
    assert data["protocol"]["task"] == "direct" and "exclude_history" in data["protocol"]
    assert data["protocol"]["fingerprint"] == synthetic_dataset.fingerprint()
    table = r.format_table()
    assert "direct/test" in table and "NDCG@10" in table
    both = format_table({"a": r, "b": EvalResult({"HR@1": 0.5}, dict(r.protocol))})
    assert both.count("\n") == 3


class ByUser:
    """Scores item i for user u as -(i - c) ** 2 with c = 3u mod n_items: users prefer other items."""

    def __init__(self, n_items):
        self.n_items = n_items

    def score_candidates(self, users, histories, candidates):
        centre = 3 * np.asarray(users)[:, None] % self.n_items
        return -((np.asarray(candidates) - centre) ** 2).astype(float)

    def score_all(self, users, histories):
        return self.score_candidates(users, histories, np.arange(self.n_items + 1)[None, :])


def test_user_dependence_is_one_for_a_prior_and_lower_for_a_personal_scorer(synthetic_dataset):
    from elmrec.baselines import PopularityScorer

    ds = synthetic_dataset
    prior = user_dependence(PopularityScorer(ds), ds, "valid", batch_size=7)
    assert prior["direct_rank_correlation"] == pytest.approx(1.0)
    assert prior["sequential_top_overlap"] == 1.0 and prior["users"] == ds.n_users
    personal = user_dependence(ByUser(ds.n_items), ds, "valid", batch_size=7)
    assert personal["sequential_top_overlap"] < 0.5
    assert personal["direct_rank_correlation"] < 0.5


def test_user_dependence_hand_case():
    # two users, so each reads the other's prompt; ByUser: user 1 prefers items near 3, user 2 near 6
    negatives = np.array([[0, 0, 0], [5, 6, 7], [1, 2, 3]])
    ds = Dataset.from_histories([[1, 2, 3, 4], [11, 12, 13, 14]], n_items=20, negatives=negatives)
    out = user_dependence(ByUser(ds.n_items), ds, "test", top_n=2)
    # visible histories 1-3 and 11-13 leave both rankings; top 2 near 3: {4, 5}, near 6: {6, 5} (5 and
    # 7 tie, the lower id first): one of two in common, for both users
    assert out["sequential_top_overlap"] == 0.5
    # user 1, candidates [4, 5, 6, 7]: score ranks [4, 3, 2, 1] as itself, [1, 2.5, 4, 2.5] as user 2
    # -> Spearman -3 / sqrt(5 * 4.5); user 2, [14, 1, 2, 3]: ranks [1, 2, 3, 4] either way -> 1
    assert out["direct_rank_correlation"] == pytest.approx((1 - 3 / np.sqrt(22.5)) / 2)
