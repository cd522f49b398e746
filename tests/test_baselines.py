import numpy as np

from elmrec import tasks
from elmrec.baselines import (
    CooccurrenceScorer,
    DirectTargetPrior,
    IdShortcutScorer,
    PopularityScorer,
    SequentialTargetPrior,
    id_shortcut_scores,
)
from elmrec.data import Dataset
from elmrec.evaluation import evaluate
from elmrec.synthetic import make_synthetic


class Constant:
    def __init__(self, n):
        self.n = n

    def score_all(self, users, histories):
        return np.zeros((len(users), self.n + 1))

    def score_candidates(self, users, histories, candidates):
        return np.zeros(candidates.shape)


def test_popularity_counts_training_only():
    # item 4 is only ever a validation/test item (score 0); item 3 is counted for user 2's training only
    ds = Dataset.from_histories([[1, 2, 4, 4], [1, 3, 2, 4], [2, 1, 3, 3]], n_items=4)
    pop = PopularityScorer(ds)
    assert pop.score_all(np.array([1]), [ds.history(1)])[0, 1:].tolist() == [3, 2, 1, 0]
    assert pop.score_candidates(np.array([1, 2]), [], np.array([[4, 1], [2, 3]])).tolist() == [[0, 3], [2, 1]]


def test_popularity_beats_constant(synthetic_dataset):
    ds = synthetic_dataset
    for task in ("sequential", "direct"):
        pop = evaluate(PopularityScorer(ds), ds, task, progress=False).metrics
        const = evaluate(Constant(ds.n_items), ds, task, progress=False).metrics
        assert pop["HR@10"] > const["HR@10"] == 0, task
        assert pop["NDCG@10"] > 0


def test_id_shortcut_rule():
    # last = 5, top = 8, 10 items: 9, 10 first (above top), then 6, 7, 8, then 5, 4, ... 1
    scores = id_shortcut_scores(np.arange(1, 11)[None, :], np.array([[5]]), np.array([[8]]), 10)[0]
    assert (np.argsort(-scores) + 1).tolist() == [9, 10, 6, 7, 8, 5, 4, 3, 2, 1]
    scorer = IdShortcutScorer(Dataset.from_histories([[3, 8, 5]], n_items=10))
    full = scorer.score_all(np.array([1]), [np.array([3, 8, 5])])
    assert full[0, 0] == -np.inf and np.array_equal(full[0, 1:], scores)
    cands = scorer.score_candidates(np.array([1]), [np.array([3, 8, 5])], np.array([[2, 9, 7]]))
    assert cands.tolist() == [[scores[1], scores[8], scores[6]]]


def test_id_shortcut_needs_sequential_ids():
    args = dict(n_users=200, n_items=150, seed=1)
    seq, rnd = make_synthetic(item_order="sequential", **args), make_synthetic(item_order="random", **args)
    hr = {
        name: evaluate(IdShortcutScorer(ds), ds, "sequential", progress=False).metrics["HR@1"]
        for name, ds in (("sequential", seq), ("random", rnd))
    }
    assert hr["sequential"] > 0.03 and hr["random"] < 0.02
    assert hr["sequential"] > 3 * hr["random"]


def test_target_priors_are_the_training_samples_target_frequencies():
    # training parts (all but the last two): [1, 2, 3], [2, 3, 5], [3, 2, 1]
    ds = Dataset.from_histories([[1, 2, 3, 4, 5], [2, 3, 5, 4, 1], [3, 2, 1, 5, 4]], n_items=5)
    seq, direct = SequentialTargetPrior(ds), DirectTargetPrior(ds)
    # sequential: any training item but the first, equally likely -> u1 2, 3; u2 3, 5; u3 2, 1 (1/2 each)
    assert seq.counts[1:].tolist() == [0.5, 1.0, 1.0, 0.0, 0.5]
    assert np.allclose(direct.counts[1:], [2 / 3, 1, 1, 0, 1 / 3])  # any training item, 1/3 each
    assert seq.score_candidates(np.array([1]), [], np.array([[4, 2]])).tolist() == [[0.0, 1.0]]
    # and they are what tasks.py actually samples: target counts per round of one sample per user
    rng, rounds = np.random.default_rng(0), 3000
    freq = {"seq": np.zeros(6), "direct": np.zeros(6)}
    for _ in range(rounds):
        for s in tasks.sequential_train_samples(ds, ds.users, rng):
            freq["seq"][s.target] += 1 / rounds
        for s in tasks.direct_train_samples(ds, ds.users, rng, n_negatives=1):
            freq["direct"][s.target] += 1 / rounds
    assert np.allclose(freq["seq"][1:], seq.counts[1:], atol=0.05)
    assert np.allclose(freq["direct"][1:], direct.counts[1:], atol=0.05)


# training parts (all but the last two): [1, 2, 3], [2, 4], [4, 1]; 5 and 6 only ever held out
COOC_HISTORIES = [[1, 2, 3, 6, 5], [2, 4, 5, 6], [4, 1, 6, 5]]


def test_cooccurrence_scores_by_hand():
    ds = Dataset.from_histories(COOC_HISTORIES, n_items=6)
    cooc = CooccurrenceScorer(ds)  # forward 3, pair weight 1 / distance, history weight 1 / (1 + d)
    # C[a, b]: [1, 2, 3] gives C12 = 3, C21 = 1, C23 = 3, C32 = 1, C13 = 3/2, C31 = 1/2;
    # [2, 4] gives C24 = 3, C42 = 1; [4, 1] gives C41 = 3, C14 = 1
    # history [1, 2]: weight 1 for 2 (last), 1/2 for 1 -> score(j) = C[2, j] + C[1, j] / 2
    # tie-break: popularity (1: 2, 2: 2, 3: 1, 4: 2) / 3 * (1 / 50) * (1 / 2), below any one pair's share
    tie = np.array([0, 2, 2, 1, 2, 0, 0]) / 3 / 50 / 2
    expected = np.array([0, 1, 1.5, 3.75, 3.5, 0, 0]) + tie
    full = cooc.score_all(np.array([1]), [np.array([1, 2])])
    assert full[0, 0] == -np.inf and np.allclose(full[0, 1:], expected[1:], rtol=0, atol=1e-12)
    cands = cooc.score_candidates(np.array([1]), [np.array([1, 2])], np.array([[4, 6, 1]]))
    assert np.allclose(cands, [[expected[4], expected[6], expected[1]]], rtol=0, atol=1e-12)
    # history [3, 5]: 5 never co-occurs in training; 3 (weight 1/2) gives 2: 1/2 and 1: 1/4 (distance 2,
    # backward: the smallest share one pair can add here), which still beats the more popular 4 (none):
    # 2 > 1 > 4 (popularity 2) > 3 (popularity 1) > 5 = 6 (popularity 0, a tie the protocol counts against)
    s = cooc.score_all(np.array([1]), [np.array([3, 5])])[0]
    assert s[2] > s[1] > s[4] > s[3] > s[5] == s[6] > s[0]
    assert np.isclose(s[1], 0.25 + 2 / 3 / 50 / 2, rtol=0, atol=1e-12)
    # the plain rule: shared training sequences, summed over the history items (tie-break < 1)
    plain = CooccurrenceScorer(ds, forward=1, distance_power=0, recency_power=0)
    s = plain.score_all(np.array([1]), [np.array([1, 2])])[0]
    assert np.array_equal(np.floor(s[1:]), [1, 1, 2, 2, 0, 0])  # 1: with 2; 2: with 1; 3: 1 and 2; 4: 1 and 2
    assert s[3] < s[4] and s[1] == s[2]  # equal counts: the more popular first, equal popularity ties


def test_cooccurrence_never_reads_held_out_items():
    # the same training parts, other validation / test items: a statistic that read them would differ
    ds = Dataset.from_histories(COOC_HISTORIES, n_items=6)
    other = Dataset.from_histories([[1, 2, 3, 4, 1], [2, 4, 3, 1], [4, 1, 3, 2]], n_items=6)
    a, b = CooccurrenceScorer(ds), CooccurrenceScorer(other)
    assert (a.matrix != b.matrix).nnz == 0 and np.array_equal(a.prior, b.prior)
    for h in ([1, 2], [3], [4, 1, 6], []):
        assert np.array_equal(a.score_all(np.array([1]), [np.array(h, dtype=np.int64)]),
                              b.score_all(np.array([1]), [np.array(h, dtype=np.int64)]))
    # and a planted leak is seen: with the held-out items in the training parts the scores change
    leaky = Dataset.from_histories([h + [6, 6] for h in COOC_HISTORIES], n_items=6)
    assert (CooccurrenceScorer(leaky).matrix != a.matrix).nnz > 0


def test_cooccurrence_beats_popularity_on_planted_transitions():
    ds = make_synthetic(n_users=300, n_items=120, n_communities=4, seed=3)
    for task in ("sequential", "direct"):
        pop = evaluate(PopularityScorer(ds), ds, task, "valid", progress=False).metrics
        cooc = evaluate(CooccurrenceScorer(ds), ds, task, "valid", progress=False).metrics
        assert cooc["NDCG@10"] > 3 * pop["NDCG@10"] and cooc["HR@10"] > pop["HR@10"] + 0.3, task
