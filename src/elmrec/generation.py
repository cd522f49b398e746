"""Turning encoder states into item ids and text (SPEC section 4).

- ``ItemTrie``: a prefix trie over the tokenised item ids, held as tensors, so the allowed next
  tokens of every beam are one gather, not a Python callback;
- ``beam_search``: constrained beam search, batched over users and beams; the encoder runs once,
  its cross-attention keys/values are computed once per user and shared by that user's beams,
  and the self-attention key/value cache is reordered as beams move;
- ``candidate_log_likelihood``: the exact log-likelihood of every candidate id in ONE decoder
  pass per batch: a user's candidates are merged into their prefix tree, one decoder position
  per distinct prefix, attending to its ancestors only; cross-attention over the prompt is
  shared and never copied, and the vocabulary softmax runs once per tree node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from . import attention
from .model import ELMRec

DEAD, ROOT = 0, 1  # node 0 absorbs invalid moves; node 1 is the root of the first trie


@dataclass
class ItemTrie:
    next_node: torch.Tensor  # (n_nodes, n_sym) child node per symbol, DEAD if not allowed
    sym_tokens: torch.Tensor  # (n_sym,) vocabulary id of each symbol
    item_of_node: torch.Tensor  # (n_nodes,) item id reached after </s>, 0 elsewhere
    roots: torch.Tensor  # (n_tries,) root node of each trie (one per user for candidate sets)
    stay_sym: int  # symbol that keeps a finished beam where it is (the pad token)
    depth: int  # longest tokenised id, </s> included

    def to(self, device) -> ItemTrie:
        return ItemTrie(self.next_node.to(device), self.sym_tokens.to(device), self.item_of_node.to(device),
                        self.roots.to(device), self.stay_sym, self.depth)


def item_token_ids(tokenizer: PreTrainedTokenizerBase, items: np.ndarray) -> list[list[int]]:
    """Token ids of each item as the model generates it ("4567" -> ▁ 45 67 </s>)."""
    return tokenizer([str(int(i)) for i in items], add_special_tokens=True)["input_ids"]


def build_trie(tokenizer: PreTrainedTokenizerBase, item_sets: list[np.ndarray]) -> ItemTrie:
    """One trie per item set (all items for sequential; each user's candidates for direct beam)."""
    flat = np.unique(np.concatenate(item_sets))
    tokens = dict(zip(flat.tolist(), item_token_ids(tokenizer, flat)))
    pad = tokenizer.pad_token_id
    vocab = sorted({t for seq in tokens.values() for t in seq} | {pad})
    sym = {t: k for k, t in enumerate(vocab)}
    children: list[dict[int, int]] = [{}]  # DEAD
    item_of = [0]
    roots = []
    for items in item_sets:
        roots.append(len(children))
        children.append({})
        item_of.append(0)
        for item in items.tolist():
            node = roots[-1]
            for t in tokens[item]:
                s = sym[t]
                if s not in children[node]:
                    children[node][s] = len(children)
                    children.append({})
                    item_of.append(0)
                node = children[node][s]
            item_of[node] = item
            children[node][sym[pad]] = node  # finished: may only stay
    next_node = np.zeros((len(children), len(vocab)), dtype=np.int64)
    for n, ch in enumerate(children):
        for s, c in ch.items():
            next_node[n, s] = c
    return ItemTrie(
        torch.as_tensor(next_node), torch.as_tensor(vocab), torch.as_tensor(item_of),
        torch.as_tensor(roots), sym[pad], max(len(t) for t in tokens.values()),
    )


def _start(batch: int, device, tokenizer_pad: int) -> torch.Tensor:
    return torch.full((batch, 1), tokenizer_pad, dtype=torch.long, device=device)


@torch.no_grad()
def beam_search(
    model: ELMRec, hidden: torch.Tensor, mask: torch.Tensor, trie: ItemTrie, roots: torch.Tensor,
    beams: int, n_return: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Constrained beam search. Returns (items, scores), each (B, n_return), best first; a row
    holds 0 / -inf where fewer than n_return valid ids exist. Scores are summed log-probabilities,
    so with beams >= number of items the result is the exhaustive ranking."""
    B, K, dev = hidden.shape[0], beams, hidden.device
    start = model.t5.config.decoder_start_token_id
    out = model.decode(hidden, mask, _start(B, dev, start), use_cache=True)
    cache = out.cache
    logp = out.logits[:, -1].log_softmax(-1)[:, trie.sym_tokens]  # (B, n_sym); logits are fp32
    nodes = trie.next_node[roots]  # (B, n_sym)
    logp = logp.masked_fill(nodes == DEAD, float("-inf"))
    k0 = min(K, logp.shape[1])
    score, sym = logp.topk(k0, dim=1)
    node = nodes.gather(1, sym)
    if k0 < K:  # fill the beam with dead entries
        score = torch.cat([score, score.new_full((B, K - k0), float("-inf"))], 1)
        node = torch.cat([node, node.new_full((B, K - k0), DEAD)], 1)
        sym = torch.cat([sym, sym.new_full((B, K - k0), trie.stay_sym)], 1)
    # Every beam of a user shares that user's cross-attention keys/values (copied once here).
    cache.batch_repeat_interleave(K)
    hidden_k = hidden.repeat_interleave(K, 0)
    mask_k = mask.repeat_interleave(K, 0)
    n_sym = trie.sym_tokens.shape[0]
    offsets = (torch.arange(B, device=dev) * K)[:, None]
    for _ in range(trie.depth - 1):
        if bool((trie.item_of_node[node] > 0).logical_or(score == float("-inf")).all()):
            break
        tokens = trie.sym_tokens[sym].reshape(B * K, 1)
        out = model.decode(hidden_k, mask_k, tokens, cache=cache, use_cache=True)
        cache = out.cache
        logp = out.logits[:, -1].log_softmax(-1)[:, trie.sym_tokens].view(B, K, n_sym)
        nxt = trie.next_node[node]  # (B, K, n_sym)
        finished = (trie.item_of_node[node] > 0).unsqueeze(-1)
        logp = torch.where(finished, torch.zeros_like(logp), logp)  # staying costs nothing
        logp = logp.masked_fill(nxt == DEAD, float("-inf"))
        total = (score.unsqueeze(-1) + logp).view(B, K * n_sym)
        score, flat = total.topk(K, dim=1)
        origin, sym = flat // n_sym, flat % n_sym
        node = nxt.view(B, K * n_sym).gather(1, flat)
        cache.self_attention_cache.reorder_cache((origin + offsets).view(-1))
    items = trie.item_of_node[node].masked_fill(score == float("-inf"), 0)
    score = score.masked_fill(items == 0, float("-inf"))
    return items[:, :n_return], score[:, :n_return]


@torch.no_grad()
def item_log_probs(
    model: ELMRec, hidden: torch.Tensor, mask: torch.Tensor, start: torch.Tensor | None = None
) -> torch.Tensor:
    """Item scheme: (B, n_items) fp32 log P(item k + 1 | prompt) of the first decoded token, over the
    outputs the model trains on (``ELMRec.item_logits``): the exact ranking of all items, and of any
    candidates, in one decoder step. ``start``: (B,) first decoder inputs (``ELMRec.decoder_start``;
    default T5's start token) or (B, d) their embeddings (``ELMRec.user_start``)."""
    if start is None:
        start = _start(hidden.shape[0], hidden.device, model.t5.config.decoder_start_token_id)
    elif start.dim() == 1:
        start = start[:, None]
    embeds = start[:, None] if start.is_floating_point() else model.t5.shared(start)
    states = model.t5.decoder(inputs_embeds=embeds, encoder_hidden_states=hidden, encoder_attention_mask=mask,
                              use_cache=False).last_hidden_state
    return model.item_logits(states[:, -1]).log_softmax(-1)[:, 1:]


@dataclass(frozen=True)
class PrefixTree:
    """The decoder inputs of a user's candidates merged where they agree: one decoder position per
    distinct prefix, so a prefix that many candidates share (the start token, the id's word piece,
    a first digit chunk) is decoded once. Nodes of a user are in order of depth, parents first."""

    tokens: torch.Tensor  # (B, T) input token of each node; pad beyond a user's last node
    depth: torch.Tensor  # (B, T) position of the node in its own decoding (0: the start token)
    ancestors: torch.Tensor  # (B, T, T) bool: node j is node i or one of its ancestors
    node: torch.Tensor  # (B, C, L) the node whose state predicts token p of candidate c (0 at padding)


def prefix_tree(candidate_tokens: torch.Tensor, start: int, pad: int) -> PrefixTree:
    """Merge the decoder inputs (start token, then the id's tokens but the last) of (B, C, L)
    candidates into one prefix tree per user."""
    B, C, L = candidate_tokens.shape
    dev = candidate_tokens.device
    inputs = torch.cat([torch.full_like(candidate_tokens[..., :1], start), candidate_tokens[..., :-1]], -1)
    inputs, real = inputs.reshape(B * C, L), (candidate_tokens != pad).reshape(B * C, L)
    vocab = int(inputs.max()) + 1
    user = torch.arange(B, device=dev).repeat_interleave(C)
    prev = user.clone()  # a row's node at p - 1 (global id); at p = 0 the user, so users never share nodes
    node_of = torch.zeros(B * C, L, dtype=torch.long, device=dev)
    owner, depth, token, parent = [], [], [], []
    n_nodes = 0
    for p in range(L):  # real positions are a prefix of each row (padding follows </s>)
        rows = real[:, p].nonzero().squeeze(1)
        uniq, inverse = torch.unique(prev[rows] * vocab + inputs[rows, p], return_inverse=True)
        first = rows[torch.full((len(uniq),), len(rows), device=dev).scatter_reduce(
            0, inverse, torch.arange(len(rows), device=dev), "amin")]  # a row that has the node
        owner.append(user[first])
        depth.append(torch.full_like(first, p))
        token.append(inputs[first, p])
        parent.append(prev[first] if p else torch.full_like(first, -1))
        node_of[rows, p] = prev[rows] = n_nodes + inverse
        n_nodes += len(uniq)
    owner, depth, token, parent = (torch.cat(t) for t in (owner, depth, token, parent))
    order = torch.argsort(owner, stable=True)  # by user; within a user, by depth as created
    counts = torch.bincount(owner, minlength=B)
    local = torch.empty_like(owner)
    local[order] = torch.arange(n_nodes, device=dev) - (torch.cumsum(counts, 0) - counts)[owner[order]]
    T = int(counts.max())
    packed = torch.full((B, T), pad, dtype=torch.long, device=dev)
    packed[owner, local] = token
    node_depth = torch.zeros(B, T, dtype=torch.long, device=dev)
    node_depth[owner, local] = depth
    up = torch.arange(T, device=dev).repeat(B, 1)  # parent of each node; the roots and padding: itself
    has_parent = parent >= 0
    up[owner[has_parent], local[has_parent]] = local[parent[has_parent]]
    ancestors = torch.eye(T, dtype=torch.bool, device=dev).repeat(B, 1, 1)
    walk = up.clone()
    for _ in range(L - 1):
        ancestors.scatter_(2, walk[..., None], True)
        walk = up.gather(1, walk)
    return PrefixTree(packed, node_depth, ancestors, (local[node_of] * real).view(B, C, L))


@torch.no_grad()
def candidate_log_likelihood(
    model: ELMRec, hidden: torch.Tensor, mask: torch.Tensor, candidate_tokens: torch.Tensor
) -> torch.Tensor:
    """log P(id tokens | prompt) of every candidate: (B, C, L) token ids (pad = 0 after </s>)
    -> (B, C). A user's candidates are decoded together as their prefix tree (``PrefixTree``):
    each node attends to its ancestors only, with T5's relative position bias of their distance in
    depth (``elmrec.attention``), so its state is exactly that of decoding its prefix alone, and
    the vocabulary softmax runs once per node. For 100 Beauty ids (4-5 tokens) that is about 190
    decoder positions per user instead of 500."""
    B, C, L = candidate_tokens.shape
    t5 = model.t5
    if t5.config._attn_implementation != attention.NAME:  # another attention would mix the candidates
        raise ValueError(f"candidate scoring needs the {attention.NAME!r} attention, not "
                         f"{t5.config._attn_implementation!r}")
    pad = t5.config.pad_token_id
    tree = prefix_tree(candidate_tokens, t5.config.decoder_start_token_id, pad)
    states = t5.decoder(
        input_ids=tree.tokens, encoder_hidden_states=hidden, encoder_attention_mask=mask,
        use_cache=False, candidate_tree=(tree.depth, tree.ancestors),
    ).last_hidden_state
    # the vocabulary head in fp32 also under autocast (see ELMRec.vocabulary_logits): 100
    # candidates' scores must not tie at bf16 resolution
    log_probs = model.vocabulary_logits(states).log_softmax(-1)  # (B, T, V)
    V = log_probs.shape[-1]
    target = candidate_tokens.clamp(min=0)
    token_lp = log_probs.view(B, -1).gather(1, (tree.node * V + target).view(B, C * L)).view(B, C, L)
    return (token_lp * (candidate_tokens != pad)).sum(-1)


def candidate_tokens(tokenizer: PreTrainedTokenizerBase, candidates: np.ndarray, device) -> torch.Tensor:
    """(B, C) item ids -> (B, C, L) padded token ids."""
    seqs = item_token_ids(tokenizer, candidates.reshape(-1))
    L = max(len(s) for s in seqs)
    arr = np.full((len(seqs), L), tokenizer.pad_token_id, dtype=np.int64)
    for k, s in enumerate(seqs):
        arr[k, : len(s)] = s
    return torch.as_tensor(arr, device=device).view(*candidates.shape, L)


def top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, k) the columns of each row's k highest scores, highest first, ties by lower column:
    ``np.argsort(-scores, axis=1, kind="stable")[:, :k]`` without sorting whole rows (a full sort
    of 12,000 items per user was half the time of ranking them)."""
    n, m = scores.shape
    k = max(0, min(k, m))
    if k in (0, m) or not n or np.isnan(scores).any():  # (topk would rank NaN first, argsort last)
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    kth = torch.topk(torch.from_numpy(scores), k, dim=1).values[:, -1].numpy()  # 20x np.argpartition
    rows, cols = np.nonzero(scores >= kth[:, None])  # >= k per row (ties at the k-th), columns ascending
    order = np.lexsort((cols, -scores[rows, cols], rows))  # by row, score descending, then column
    rows, cols = rows[order], cols[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n))[rows]
    return cols[rank < k].reshape(n, k)


def rerank(items: np.ndarray, scores: np.ndarray, histories: list[np.ndarray], top_n: int):
    """ELMRec's reranking: drop generated items the user already interacted with, keep the first
    top_n. Returns (items, scores, dropped count per user); short rows are padded with 0/-inf."""
    out_items = np.zeros((len(items), top_n), dtype=np.int64)
    out_scores = np.full((len(items), top_n), -np.inf)
    dropped = np.zeros(len(items), dtype=np.int64)
    for r, (row, sc, h) in enumerate(zip(items, scores, histories)):
        keep = (row > 0) & ~np.isin(row, h)
        dropped[r] = int(((row > 0) & ~keep).sum())
        kept, ks = row[keep][:top_n], sc[keep][:top_n]
        out_items[r, : len(kept)], out_scores[r, : len(kept)] = kept, ks
    return out_items, out_scores, dropped


@torch.no_grad()
def generate_text(
    model: ELMRec, hidden: torch.Tensor, mask: torch.Tensor, tokenizer: PreTrainedTokenizerBase,
    beams: int = 4, max_tokens: int = 20,
) -> list[str]:
    """Explanations: ordinary (unconstrained) beam search with a length limit."""
    from transformers.modeling_outputs import BaseModelOutput

    ids = model.t5.generate(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask,
        num_beams=beams, max_new_tokens=max_tokens + 1, do_sample=False,
    )
    return tokenizer.batch_decode(ids, skip_special_tokens=True)
