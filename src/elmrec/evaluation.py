"""Ranking metrics and the evaluation protocol of P5 / POD / ELMRec.

Sequential recommendation ranks ALL items for the held-out item; direct recommendation ranks the
held-out item among the user's fixed negatives. Ties count against the target (an item scored
equal to it ranks above it), so a scorer cannot gain from giving many items the same score: a
constant scorer gets HR@k = 0 whenever the other items outnumber k.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.stats import rankdata
from tqdm.auto import tqdm

from .data import DataError, Dataset
from .distributed import Context
from .tasks import DIRECT, EXPLANATION, SEQUENTIAL

DEFAULT_KS = (1, 5, 10)
SUMMED_STATS = ("generated", "invalid", "dropped_by_rerank", "users")  # scorer counts, added over ranks
TASKS = (SEQUENTIAL, DIRECT)  # the ranking tasks


class Scorer(Protocol):
    """What a model must offer to be evaluated; ``histories`` are what it may see
    (``dataset.split_history(u, split)``), oldest first."""

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """(B, n_items + 1) float scores over ALL items, column 0 ignored; -inf = not recommended."""
        ...

    def score_candidates(
        self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray
    ) -> np.ndarray:
        """(B, C) float scores for the given candidate item ids."""
        ...


# --- metrics -------------------------------------------------------------------------------


def rank_of_target(scores: np.ndarray, target_idx: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target column: the number of OTHER columns scored >= it.

    NaN counts as -inf, so a broken score can never put the target first.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(np.isnan(scores), -np.inf, scores)
    target = scores[np.arange(len(scores)), np.asarray(target_idx)]
    return (scores >= target[:, None]).sum(axis=1) - 1


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of users whose target is among the top k."""
    return float(np.mean(np.asarray(ranks) < k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 2) inside the top k, else 0; averaged."""
    ranks = np.asarray(ranks)
    return float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """``HR@k`` and ``NDCG@k`` for every k (HR first, then NDCG, each by increasing k)."""
    out = {f"HR@{k}": hit_rate(ranks, k) for k in ks}
    out.update({f"NDCG@{k}": ndcg(ranks, k) for k in ks})
    return out


# --- results -------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Metrics plus the exact protocol that produced them (so numbers are never compared blind).

    ``extra`` holds diagnostics (e.g. a scorer's ``stats()``); ``ranks`` the 0-based rank per
    evaluated user (in ``users`` order), for significance tests; neither array goes to JSON.
    """

    metrics: dict[str, float]
    protocol: dict
    extra: dict = field(default_factory=dict)
    users: np.ndarray | None = field(default=None, repr=False)
    ranks: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"metrics": self.metrics, "protocol": self.protocol, "extra": self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_jsonable)

    def format_table(self) -> str:
        p = self.protocol
        return format_table({f"{p['task']}/{p['split']}": self})


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def format_table(results: Mapping[str, EvalResult]) -> str:
    """One row per result (labelled by its key), one column per metric, plus the protocol."""
    metric_names = list(dict.fromkeys(m for r in results.values() for m in r.metrics))
    label_w = max([len("run")] + [len(k) for k in results])
    columns = "".join(f"{m:>9}" for m in metric_names)
    header = f"{'run'.ljust(label_w)}{columns}  users  candidates  excl.hist"
    lines = [header, "-" * len(header)]
    for label, r in results.items():
        p = r.protocol
        values = "".join(f"{r.metrics[m]:9.4f}" if m in r.metrics else " " * 9 for m in metric_names)
        # explanation results count (user, item) review pairs and rank nothing
        n = p.get("n_users", p.get("n_pairs"))
        lines.append(
            f"{label.ljust(label_w)}{values}  {n:>5}  {p.get('candidates', '-'):>10}  "
            f"{str(p.get('exclude_history', '-')):>9}"
        )
    return "\n".join(lines)


# --- protocol ------------------------------------------------------------------------------


def sample_users(dataset: Dataset, n: int | None, seed: int = 0) -> np.ndarray:
    """A fixed random subset of ``n`` user ids (sorted), or all users if ``n`` is None or too big;
    for quick validation during training."""
    if n is None or n >= dataset.n_users:
        return dataset.users
    return np.sort(np.random.default_rng(seed).choice(dataset.users, size=n, replace=False))


def _check_users(dataset: Dataset, users: np.ndarray | None) -> np.ndarray:
    if users is None:
        return dataset.users
    users = np.asarray(users, dtype=np.int64).ravel()
    if len(users) == 0 or users.min() < 1 or users.max() > dataset.n_users:
        raise ValueError(f"users must be a non-empty set of ids in 1..{dataset.n_users}")
    return users


def _check_shape(scores: np.ndarray, shape: tuple[int, int], method: str) -> np.ndarray:
    if scores.shape != shape:
        raise ValueError(f"{method} returned scores of shape {scores.shape}; expected {shape}")
    return scores


def _run(
    task: str,
    scorer: Scorer,
    dataset: Dataset,
    split: str,
    ks: Sequence[int],
    exclude_history: bool,
    batch_size: int,
    users: np.ndarray | None,
    progress: bool,
    ctx: Context | None = None,
) -> EvalResult:
    ctx = ctx or Context()
    if split not in ("valid", "test"):
        raise ValueError(f"unknown split {split!r}; expected valid or test")
    if task == DIRECT and dataset.negatives is None:
        raise DataError(
            dataset.name,
            None,
            "no negatives: direct evaluation needs negative.txt "
            "(create one with 'elmrec data prepare ... --negatives 99')",
        )
    all_users = _check_users(dataset, users)
    users = all_users[ctx.rank :: ctx.world]  # under torchrun each rank ranks its share
    targets = dataset.targets(split)
    ranks = np.empty(len(users), dtype=np.int64)
    repeats = 0  # users whose target is already in their visible history
    bar = tqdm(total=len(all_users), desc=f"{task}/{split}", unit="user", disable=not progress or not ctx.main)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        hist = [dataset.split_history(int(u), split) for u in batch]
        t = targets[batch]
        rows = np.repeat(np.arange(len(batch)), [len(h) for h in hist])
        cols = np.concatenate(hist)
        repeats += len(np.unique(rows[cols == t[rows]]))
        if task == SEQUENTIAL:
            # a copy in float64: we mask in place and drop column 0 (padding, never an item)
            shape = (len(batch), dataset.n_items + 1)
            scores = np.array(scorer.score_all(batch, hist), dtype=np.float64)
            scores = _check_shape(scores, shape, "score_all")[:, 1:]
            if exclude_history:
                own = scores[np.arange(len(batch)), t - 1].copy()
                scores[rows, cols - 1] = -np.inf
                scores[np.arange(len(batch)), t - 1] = own  # a repeated target stays rankable
            ranks[start : start + len(batch)] = rank_of_target(scores, t - 1)
        else:
            candidates = np.concatenate([t[:, None], dataset.negatives[batch]], axis=1)
            scores = np.asarray(scorer.score_candidates(batch, hist, candidates), dtype=np.float64)
            _check_shape(scores, candidates.shape, "score_candidates")
            ranks[start : start + len(batch)] = rank_of_target(scores, np.zeros(len(batch), dtype=np.int64))
        bar.update(len(batch) * ctx.world)
    bar.close()
    stats = getattr(scorer, "stats", None)
    stats = stats() if callable(stats) else {}
    if ctx.active:  # every rank's ranks back in user order, the counts summed
        shares = ctx.gather((ranks, repeats, stats))
        ranks = np.empty(len(all_users), dtype=np.int64)
        for r, (part, _, _) in enumerate(shares):
            ranks[r :: ctx.world] = part
        repeats = sum(p[1] for p in shares)
        stats = {k: sum(p[2][k] for p in shares) if k in SUMMED_STATS else v for k, v in stats.items()}
        if stats.get("generated"):
            stats["invalid_share"] = stats["invalid"] / stats["generated"]
    users = all_users

    protocol = {
        "task": task,
        "split": split,
        "ks": list(ks),
        "exclude_history": bool(exclude_history) if task == SEQUENTIAL else False,
        "n_users": len(users),
        "all_users": len(users) == dataset.n_users,
        "candidates": dataset.n_items if task == SEQUENTIAL else 1 + dataset.negatives.shape[1],
        "ties": "against target",
        "dataset": dataset.name,
        "fingerprint": dataset.fingerprint(),
    }
    extra: dict = {"target_in_history_users": repeats, **stats}
    return EvalResult(ranking_metrics(ranks, ks), protocol, extra, users=users, ranks=ranks)


def evaluate_sequential(
    scorer: Scorer,
    dataset: Dataset,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = True,
    batch_size: int = 256,
    users: np.ndarray | None = None,
    progress: bool = True,
    ctx: Context | None = None,
) -> EvalResult:
    """Rank all items for each user's ``split`` target.

    ``exclude_history`` sets the user's visible history to -inf (the usual protocol: do not
    recommend what was bought); a target that repeats a history item is left rankable, and such
    users are counted in ``extra['target_in_history_users']``. ``users`` restricts to a subset.
    """
    return _run(SEQUENTIAL, scorer, dataset, split, ks, exclude_history, batch_size, users, progress, ctx)


def evaluate_direct(
    scorer: Scorer,
    dataset: Dataset,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 256,
    users: np.ndarray | None = None,
    progress: bool = True,
    ctx: Context | None = None,
) -> EvalResult:
    """Rank the target among ``dataset.negatives[u]`` (target in column 0 of the candidates).

    The same negatives serve validation and test: they exclude every item the user touched.
    """
    return _run(DIRECT, scorer, dataset, split, ks, False, batch_size, users, progress, ctx)


def _row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (NaN for a constant row)."""
    ra, rb = (rankdata(np.nan_to_num(x, nan=-np.inf), axis=1) for x in (a, b))
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return np.divide((ra * rb).sum(1), den, out=np.full(len(a), np.nan), where=den > 0)


def user_dependence(
    scorer: Scorer, dataset: Dataset, split: str = "valid", users: np.ndarray | None = None,
    batch_size: int = 64, seed: int = 0, top_n: int = 10, progress: bool = False,
) -> dict[str, float]:
    """How much a scorer's output depends on whose prompt it reads.

    Each user's direct candidates are scored twice: as that user with that user's history, and as
    another (randomly paired) user with the other's history. ``direct_rank_correlation`` is the mean
    Spearman correlation of the two score rows, ``sequential_top_overlap`` the mean share of the
    top ``top_n`` items the two sequential rankings have in common (items of either history
    removed from both). A scorer that ignores the user
    (popularity) gives 1.0 on both; a trained model close to 1.0 has learned an item prior, not to
    read its prompt - a check that loss and HR/NDCG cannot make.
    """
    users = _check_users(dataset, users)
    if len(users) < 2:
        raise ValueError("user_dependence needs at least two users to pair")
    # one random cycle through the users: everyone reads the next one's prompt, never their own
    cycle = np.random.default_rng(seed).permutation(len(users))
    partners = np.empty_like(users)
    partners[cycle] = users[np.roll(cycle, -1)]
    rho, overlap = [], []
    bar = tqdm(total=len(users), desc=f"user dependence/{split}", unit="user", disable=not progress)
    for start in range(0, len(users), batch_size):
        own = users[start : start + batch_size]
        swap = partners[start : start + batch_size]
        hist_own = [dataset.split_history(int(u), split) for u in own]
        hist_swap = [dataset.split_history(int(u), split) for u in swap]
        if dataset.negatives is not None:
            cand = np.concatenate([dataset.targets(split)[own][:, None], dataset.negatives[own]], axis=1)
            a = np.asarray(scorer.score_candidates(own, hist_own, cand), dtype=np.float64)
            b = np.asarray(scorer.score_candidates(swap, hist_swap, cand), dtype=np.float64)
            rho.append(_row_spearman(a, b))
        # both users' histories leave both rankings, so reranking alone (each run drops the history
        # of the prompt's user) cannot make an item prior look personal
        rows = np.repeat(np.arange(len(own)), [len(a) + len(b) for a, b in zip(hist_own, hist_swap)])
        seen = np.concatenate([np.concatenate([a, b]) for a, b in zip(hist_own, hist_swap)])
        tops = []
        for u, h in ((own, hist_own), (swap, hist_swap)):
            s = np.array(scorer.score_all(u, h), dtype=np.float64)
            s[rows, seen] = -np.inf
            tops.append(np.argsort(-s[:, 1:], axis=1, kind="stable")[:, :top_n])
        overlap += [len(np.intersect1d(x, y)) / top_n for x, y in zip(*tops)]
        bar.update(len(own))
    bar.close()
    out = {"sequential_top_overlap": float(np.mean(overlap)), "users": len(users), "split": split}
    if rho:
        out["direct_rank_correlation"] = float(np.nanmean(np.concatenate(rho)))
    return out


def evaluate(scorer: Scorer, dataset: Dataset, task: str, split: str = "test", **kwargs) -> EvalResult:
    """:func:`evaluate_sequential` or :func:`evaluate_direct` by name; ``ctx`` (torchrun) shards the
    users over ranks and gathers their ranks: the same metrics as one process."""
    if task == SEQUENTIAL:
        return evaluate_sequential(scorer, dataset, split, **kwargs)
    if task == DIRECT:
        kwargs.pop("exclude_history", None)  # candidates never hold history items anyway
        return evaluate_direct(scorer, dataset, split, **kwargs)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


# --- explanation generation ------------------------------------------------------------------


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1/4 (NLTK, whitespace tokens) and mean ROUGE-1/2/L F1 (rouge-score), x100
    as in the P5/POD papers."""
    import warnings

    from nltk.translate.bleu_score import corpus_bleu
    from rouge_score import rouge_scorer

    hyps = [p.split() for p in predictions]
    refs = [[r.split()] for r in references]
    with warnings.catch_warnings():  # NLTK warns when a higher n-gram order has no match
        warnings.simplefilter("ignore")
        bleu1 = corpus_bleu(refs, hyps, weights=(1.0, 0, 0, 0))
        bleu4 = corpus_bleu(refs, hyps, weights=(0.25, 0.25, 0.25, 0.25))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
    out = {"BLEU-1": 100 * bleu1, "BLEU-4": 100 * bleu4}
    for key, name in (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L")):
        out[name] = 100 * float(np.mean([s[key].fmeasure for s in scores])) if scores else 0.0
    return out


def evaluate_explanation(
    generate, dataset: Dataset, split: str = "test", limit: int | None = None, batch_size: int = 32,
    progress: bool = True,
) -> EvalResult:
    """``generate(pairs) -> texts`` for (user, item) pairs of the ``split`` reviews, scored
    against the reference sentences."""
    key = "valid" if split == "valid" else split
    rows = (dataset.explanations or {}).get(key, [])
    if not rows:
        raise DataError(dataset.name, None, f"no {split} explanations: the dataset has no explanation.json")
    rows = rows[:limit] if limit else rows
    predictions: list[str] = []
    bar = tqdm(total=len(rows), desc=f"explanation/{split}", unit="pair", disable=not progress)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        predictions.extend(generate([(u, i) for u, i, _ in chunk]))
        bar.update(len(chunk))
    bar.close()
    metrics = text_metrics(predictions, [r[2] for r in rows])
    protocol = {"task": EXPLANATION, "split": split, "n_pairs": len(rows), "dataset": dataset.name,
                "fingerprint": dataset.fingerprint()}
    extra = {"examples": [{"user": u, "item": i, "reference": t, "generated": p}
                          for (u, i, t), p in list(zip(rows, predictions))[:5]]}
    return EvalResult(metrics, protocol, extra, users=np.array([r[0] for r in rows]), ranks=np.array([]))
