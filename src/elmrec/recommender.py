"""A trained checkpoint as a recommender: the evaluation ``Scorer`` interface, and
``recommend`` / ``explain`` for people.

``digits`` scheme (ids of several tokens). Sequential: constrained beam search returns top_n + N
ids, reranking drops what the user already interacted with and keeps top_n. Direct: the exact
log-likelihood of every candidate (or the paper's constrained beam search over the candidates
with ``direct_decode="beam"``).

``item`` scheme (one token per item): one decoder step gives the log-probability of every item,
an exact ranking. Sequential: reranking drops the user's items from that row and keeps top_n (the
items it dropped from the first top_n + N are counted, as with beams). Direct: the direct
prompt's row read at the candidates, or with ``direct_decode="sequential"`` the sequential
prompt's row (the user's history decides, as for a next-item model).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .config import Config, EvalConfig, config_from_dict
from .generation import (
    ItemTrie,
    beam_search,
    build_trie,
    candidate_log_likelihood,
    candidate_tokens,
    generate_text,
    item_log_probs,
    rerank,
    top_columns,
)
from .model import ELMRec
from .prompts import EVAL_TEMPLATE, render
from .runtime import resolve_device
from .tasks import DIRECT, EXPLANATION, SEQUENTIAL, Sample
from .tokenization import encode_prompts


@dataclass
class Recommendation:
    item: int
    item_name: str | None
    score: float

    def to_dict(self) -> dict:
        return {"item": self.item, "item_name": self.item_name, "score": self.score}


class Recommender:
    def __init__(
        self, model: ELMRec, tokenizer, run: Config, offsets: np.ndarray, items: np.ndarray,
        dataset_info: dict, user_names: dict[int, str] | None = None, item_names: dict[int, str] | None = None,
        directory: Path | None = None,
    ):
        """Usually built by ``from_pretrained``; direct construction serves in-memory models
        (validation metrics during training)."""
        self.model, self.tokenizer, self.directory = model, tokenizer, directory
        self.run, self.eval = run, run.eval
        self.max_history = run.train.max_history
        self.max_explanation_tokens = run.train.max_explanation_tokens
        self.device = next(model.parameters()).device
        self.offsets, self.items = np.asarray(offsets), np.asarray(items)
        self.dataset_info = dataset_info
        tasks = set(run.train.tasks)
        self.trained_tasks = tasks if dataset_info.get("has_explanations") else tasks - {EXPLANATION}
        self.user_names, self.item_names = user_names, item_names
        self._user_index = {v: k for k, v in (user_names or {}).items()}
        self._item_index = {v: k for k, v in (item_names or {}).items()}
        self._trie: ItemTrie | None = None
        self._stats = {"generated": 0, "invalid": 0, "dropped_by_rerank": 0, "users": 0}
        # Raw beam outputs keyed by (user, history). Set the same dict on two Recommenders over one
        # checkpoint (e.g. with and without reranking) and the second reuses the first one's
        # search: the beam width is the same, so its top n is the first n of the longer list.
        self.beam_memo: dict | None = None

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "auto", **eval_overrides) -> Recommender:
        """Load a checkpoint directory; ``eval_overrides`` change EvalConfig fields (beams, top_n...)."""
        d = Path(directory)
        model, tokenizer = ELMRec.from_pretrained(d, resolve_device(device))
        run = checkpoint.read_run_config(d)
        unknown = set(eval_overrides) - set(EvalConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown evaluation setting(s): {sorted(unknown)}")
        run.eval = replace(run.eval, **{k: v for k, v in eval_overrides.items() if v is not None})
        run = config_from_dict(run.to_dict())  # validates the overridden settings
        data = checkpoint.read_run_data(d)
        return cls(model, tokenizer, run, data.offsets, data.items, data.info, data.user_names, data.item_names, d)

    # --- helpers ------------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return self.model.n_users

    @property
    def n_items(self) -> int:
        return self.model.n_items

    @property
    def id_tokens(self) -> str:
        return self.model.config.id_tokens

    def check_dataset(self, fingerprint: str) -> None:
        """A checkpoint only makes sense on the dataset (ids, split) it was trained on."""
        if fingerprint != self.dataset_info["fingerprint"]:
            raise ValueError(
                f"{self.directory or 'the model'} was trained on dataset {self.dataset_info['name']!r} "
                f"(fingerprint {self.dataset_info['fingerprint']}), not on this one ({fingerprint})"
            )

    def trie(self) -> ItemTrie:
        if self._trie is None:
            self._trie = build_trie(self.tokenizer, [np.arange(1, self.n_items + 1)]).to(self.device)
        return self._trie

    def _encode(self, samples: list[Sample], with_start: bool = False):
        """Encoder states and mask of the samples' prompts (one task); ``with_start``: also the first
        decoder inputs of a direct prompt (``ELMRec.user_start``; None without ``user_start``)."""
        prompts = [render(s, EVAL_TEMPLATE, self.n_users, self.model.config.use_incremental,
                          self.model.config.sequential_user) for s in samples]
        batch = encode_prompts(self.tokenizer, prompts, self.device)
        with torch.no_grad():
            hidden, mask = self.model.encode(samples[0].task, **batch)
            if not with_start:
                return hidden, mask
            start = None
            if self.model.config.user_start and samples[0].task == DIRECT:
                start = self.model.user_start(batch["input_ids"], batch["whole_word"])
            return hidden, mask, start

    def _autocast(self):
        """bf16 autocast of ``eval_amp`` around the encoder and decoder. The heads of our own
        decoding stay fp32; explanations use transformers' generate, whose head runs in bf16."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.eval.eval_amp)

    def _batches(self, samples: list[Sample]) -> list[np.ndarray]:
        """Row indices in batches of ``eval_batch_size``, prompts of similar length together: a
        batch pads to its longest prompt, and one of equal lengths needs no padding mask at all.
        Every result goes back to its own row, so the order changes nothing but the speed."""
        order = np.argsort([_prompt_tokens(s, self.id_tokens) for s in samples], kind="stable")
        bs = self.eval.eval_batch_size
        return [order[k : k + bs] for k in range(0, len(order), bs)]

    def reset_stats(self) -> None:
        self._stats = dict.fromkeys(self._stats, 0)

    def stats(self) -> dict:
        """Reported with evaluation results: invalid generations must be 0 with constraints."""
        s = dict(self._stats)
        s["invalid_share"] = s["invalid"] / s["generated"] if s["generated"] else 0.0
        s.update(beams=self.eval.beams, top_n=self.eval.top_n, extra_candidates=self.eval.extra_candidates,
                 rerank=self.eval.rerank, direct_decode=self.eval.direct_decode, eval_amp=self.eval.eval_amp)
        return s

    # --- sequential ---------------------------------------------------------------------------
    def _sequential_samples(self, users: np.ndarray, histories: list[np.ndarray]) -> list[Sample]:
        """Sequential prompts of the users' histories (their last ``max_history`` items), checked."""
        for h in histories:
            self._check_items(h)
        return [Sample(SEQUENTIAL, int(u), tuple(int(i) for i in h[-self.max_history:]), 0)
                for u, h in zip(users, histories)]

    @torch.no_grad()
    def item_log_likelihood(
        self, hidden: torch.Tensor, mask: torch.Tensor, items: np.ndarray, start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exact log P(item | prompt) of (B, C) item ids for encoded prompts, in either id scheme:
        the first decoder step's row (``item``) or the prefix-tree pass over their pieces (``digits``).
        ``start``: the first decoder inputs (``ELMRec.decoder_start``) or their embeddings
        (``ELMRec.user_start``); T5's start token if None, which is right for every prompt but a
        ``last_item_start`` model's sequential ones and a ``user_start`` model's direct ones."""
        if self.id_tokens == "item":
            columns = torch.as_tensor(np.asarray(items) - 1, device=self.device)
            return item_log_probs(self.model, hidden, mask, start).gather(1, columns)
        if start is not None:
            raise ValueError("a decoder start per prompt needs the item scheme")
        tokens = candidate_tokens(self.tokenizer, np.asarray(items), self.device)
        return candidate_log_likelihood(self.model, hidden, mask, tokens)

    def _next_item_scores(self, samples: list[Sample]) -> np.ndarray:
        """Item scheme: log P(item | prompt) of every item (column k = item k, column 0 -inf); one
        decoder step per batch."""
        out = np.full((len(samples), self.n_items + 1), -np.inf)
        for rows in self._batches(samples):
            with self._autocast():
                hidden, mask = self._encode([samples[r] for r in rows])
                last = torch.tensor([samples[r].items[-1] if samples[r].items else 0 for r in rows], device=self.device)
                start = self.model.decoder_start(SEQUENTIAL, last)
                out[rows, 1:] = item_log_probs(self.model, hidden, mask, start).cpu().numpy()
        return out

    def _n_generated(self) -> int:
        """top_n, plus the N extra candidates that reranking may drop."""
        return self.eval.top_n + (self.eval.extra_candidates if self.eval.rerank else 0)

    def _check_items(self, items) -> None:
        """Item ids from callers (histories, candidates) must be items of this checkpoint."""
        items = np.asarray(items)
        if items.size and (items.min() < 1 or items.max() > self.n_items):
            bad = items[(items < 1) | (items > self.n_items)].ravel()[:5].tolist()
            raise ValueError(f"unknown item id(s) {bad}: this checkpoint has items 1..{self.n_items}")

    def _ranked_row(self, users: np.ndarray, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Item scheme: every item's score, the user's own items at -inf when reranking (the
        exact version of what beams + N extra candidates approximate), and per user how many of
        the first top_n + N that dropped."""
        scores = self._next_item_scores(self._sequential_samples(users, histories))
        n_gen = self._n_generated()
        self._stats["generated"] += len(users) * min(n_gen, self.n_items)
        self._stats["users"] += len(users)
        dropped = np.zeros(len(users), dtype=np.int64)
        if self.eval.rerank:
            top = top_columns(scores, n_gen)
            for r, h in enumerate(histories):
                dropped[r] = int(np.isin(top[r], h).sum())
                scores[r, np.asarray(h, dtype=np.int64)] = -np.inf
            self._stats["dropped_by_rerank"] += int(dropped.sum())
        return scores, dropped

    def generate_sequential(self, users: np.ndarray, histories: list[np.ndarray]):
        """Top items per user after reranking: (items, scores, dropped), each row top_n long."""
        if self.id_tokens == "item":
            scores, dropped = self._ranked_row(users, histories)
            items = top_columns(scores, self.eval.top_n)
            top = np.take_along_axis(scores, items, 1)
            return np.where(top > -np.inf, items, 0), top, dropped
        n_gen = self._n_generated()
        beams = max(self.eval.beams, n_gen)
        samples = self._sequential_samples(users, histories)
        items, scores = self._search(samples, beams, n_gen)
        valid = (items >= 1) & (items <= self.n_items)
        self._stats["generated"] += int((scores > -np.inf).sum())
        self._stats["invalid"] += int(((scores > -np.inf) & ~valid).sum())
        if self.eval.rerank:
            items, scores, dropped = rerank(items, scores, histories, self.eval.top_n)
        else:
            items, scores = items[:, : self.eval.top_n], scores[:, : self.eval.top_n]
            dropped = np.zeros(len(items), dtype=np.int64)
        self._stats["dropped_by_rerank"] += int(dropped.sum())
        self._stats["users"] += len(users)
        return items, scores, dropped

    def _search(self, samples: list[Sample], beams: int, n_gen: int) -> tuple[np.ndarray, np.ndarray]:
        memo = self.beam_memo
        keys = [(s.user, s.items, beams, self.eval.eval_amp) for s in samples]
        if memo is not None and all(k in memo and memo[k][0].shape[0] >= n_gen for k in keys):
            return np.stack([memo[k][0][:n_gen] for k in keys]), np.stack([memo[k][1][:n_gen] for k in keys])
        if not samples:
            return np.zeros((0, n_gen), np.int64), np.zeros((0, n_gen), np.float32)
        items = scores = None
        trie = self.trie()
        for rows in self._batches(samples):
            with self._autocast():
                hidden, mask = self._encode([samples[r] for r in rows])
                roots = trie.roots[torch.zeros(hidden.shape[0], dtype=torch.long, device=self.device)]
                it, sc = beam_search(self.model, hidden, mask, trie, roots, beams, n_gen)
            it, sc = it.cpu().numpy(), sc.cpu().numpy()
            if items is None:
                items = np.empty((len(samples), it.shape[1]), it.dtype)
                scores = np.empty((len(samples), sc.shape[1]), sc.dtype)
            items[rows], scores[rows] = it, sc
        if memo is not None:
            memo.update({k: (i, s) for k, i, s in zip(keys, items, scores)})
        return items, scores

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        if self.id_tokens == "item":  # an exact score for every item, not only the top n
            return self._ranked_row(users, histories)[0]
        items, scores, _ = self.generate_sequential(users, histories)
        out = np.full((len(users), self.n_items + 1), -np.inf)
        rows = np.repeat(np.arange(len(users)), items.shape[1])
        keep = items.reshape(-1) > 0
        out[rows[keep], items.reshape(-1)[keep]] = scores.reshape(-1)[keep]
        return out

    # --- direct -------------------------------------------------------------------------------
    def score_candidates(self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """Exact: log P(candidate id | prompt listing the candidates). Beam: the paper's decoding;
        candidates it does not return get -inf. Sequential: log P(candidate | the user's history),
        the sequential prompt's row read at the candidates (as a next-item model such as SASRec
        scores them)."""
        candidates = np.asarray(candidates)
        self._check_items(candidates)
        if self.eval.direct_decode == "sequential":
            if self.id_tokens != "item" or SEQUENTIAL not in self.trained_tasks:  # eval replaced after loading
                raise ValueError("direct_decode 'sequential' needs an item-scheme checkpoint trained on the "
                                 "sequential task (it reads the sequential prompt's row)")
            rows = self._next_item_scores(self._sequential_samples(np.asarray(users), histories))
            self._stats["users"] += len(users)
            return np.take_along_axis(rows, candidates, 1)
        if self.eval.direct_decode == "beam" and self.id_tokens == "item":  # eval replaced after loading
            raise ValueError("direct_decode 'beam' needs a digits-scheme checkpoint; this one has one token per item")
        # the prompt lists each user's candidates in a fixed shuffled order (target position hidden)
        order = np.stack([np.random.default_rng([0, int(u)]).permutation(candidates.shape[1]) for u in users])
        shown = np.take_along_axis(candidates, order, 1)
        samples = [Sample(DIRECT, int(u), tuple(int(i) for i in c), 0) for u, c in zip(users, shown)]
        out = np.empty(candidates.shape)
        for rows in self._batches(samples):
            with self._autocast():
                hidden, mask, start = self._encode([samples[r] for r in rows], with_start=True)
                if self.eval.direct_decode == "score":
                    out[rows] = self.item_log_likelihood(hidden, mask, candidates[rows], start).cpu().numpy()
                else:
                    out[rows] = self._beam_scores(hidden, mask, candidates[rows])
        self._stats["users"] += len(users)
        return out

    def _beam_scores(self, hidden: torch.Tensor, mask: torch.Tensor, candidates: np.ndarray) -> np.ndarray:
        """The paper's direct decoding: beam search over the candidates' trie; the candidates it
        does not return get -inf."""
        trie = build_trie(self.tokenizer, list(candidates)).to(self.device)
        it, sc = beam_search(self.model, hidden, mask, trie, trie.roots, self.eval.direct_beams, self.eval.top_n)
        it, sc = it.cpu().numpy(), sc.cpu().numpy()
        self._stats["generated"] += int((sc > -np.inf).sum())
        out = np.full(candidates.shape, -np.inf)
        for r, row in enumerate(candidates):
            found = dict(zip(it[r].tolist(), sc[r].tolist()))
            out[r] = [found.get(int(c), -np.inf) for c in row]
        return out

    # --- for people -------------------------------------------------------------------------------
    @staticmethod
    def _resolve(kind: str, value: str | int, index: dict[str, int], n: int) -> int:
        """Internal id from an original (datamaps) id, or an internal id 1..n. Original ids win
        where both read the same; ``#5`` always means internal id 5."""
        s = str(value)
        if s in index and not s.startswith("#"):
            return index[s]
        s = s.removeprefix("#")
        if s.isdigit() and 1 <= int(s) <= n:
            return int(s)
        raise KeyError(f"unknown {kind} {value!r}: not an original id in datamaps nor an id in 1..{n}")

    def resolve_user(self, user: str | int) -> int:
        return self._resolve("user", user, self._user_index, self.n_users)

    def resolve_item(self, item: str | int) -> int:
        return self._resolve("item", item, self._item_index, self.n_items)

    def user_history(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def item_name(self, item: int) -> str | None:
        return self.item_names.get(int(item)) if self.item_names else None

    def recommend(self, user: str | int | None = None, history: list | None = None, top_n: int | None = None
                  ) -> list[Recommendation]:
        """Next items for a known user (their whole history is the input) or for a new user given
        by ``history`` (item ids, oldest first). Items in the history are never recommended."""
        if (user is None) == (history is None):
            raise ValueError("give either a user or a history")
        if history is not None:
            if len(history) == 0:
                raise ValueError("the history is empty: give at least one item")
            hist = np.array([self.resolve_item(i) for i in history], dtype=np.int64)
            uid = 0  # "a user never seen": no graph node (and the incremental index is 1 anyway)
        else:
            uid = self.resolve_user(user)
            hist = self.user_history(uid)
        return self.recommend_batch([uid], [hist], top_n)[0]

    def recommend_batch(self, users: list[int], histories: list[np.ndarray], top_n: int | None = None
                        ) -> list[list[Recommendation]]:
        """``recommend`` for internal ids (0 = a new user), one model call per ``eval_batch_size``."""
        old = self.eval
        if top_n is not None:
            self.eval = old.with_top_n(top_n)
        try:
            items, scores, _ = self.generate_sequential(np.asarray(users, dtype=np.int64), histories)
        finally:
            self.eval = old
        return [[Recommendation(int(i), self.item_name(i), float(s)) for i, s in zip(its, scs) if i > 0]
                for its, scs in zip(items, scores)]

    def explain(self, user: str | int, item: str | int) -> str:
        """A generated review-like sentence for (user, item); needs a model trained on explanations."""
        return self.explain_batch([(self.resolve_user(user), self.resolve_item(item))])[0]

    def explain_batch(self, pairs: list[tuple[int, int]]) -> list[str]:
        """Explanations for internal (user, item) ids, batched."""
        if EXPLANATION not in self.trained_tasks:
            raise ValueError(f"{self.directory or 'the model'} was not trained on explanations (no review data)")
        samples = [Sample(EXPLANATION, int(u), (int(i),), "") for u, i in pairs]
        texts = [""] * len(samples)
        for rows in self._batches(samples):
            with self._autocast():
                hidden, mask = self._encode([samples[r] for r in rows])
                batch = generate_text(self.model, hidden, mask, self.tokenizer, self.eval.explanation_beams,
                                      self.max_explanation_tokens)
            for r, text in zip(rows, batch):
                texts[r] = text
        return texts


def _prompt_tokens(sample: Sample, id_tokens: str) -> int:
    """The id tokens of a sample's prompt (one per id, or as the tokenizer splits ids: word piece,
    ``_``, digit chunks of two): what its length differs by from other prompts of the same template."""
    ids = np.asarray([sample.user, *sample.items], dtype=np.int64)
    if id_tokens == "item":
        return len(ids)
    digits = np.floor(np.log10(np.maximum(ids, 1))).astype(np.int64) + 1
    return int((2 + (digits + 1) // 2).sum())


__all__ = ["Recommender", "Recommendation"]
