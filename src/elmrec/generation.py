"""Turning encoder states into item ids and text (SPEC section 4).

- ``ItemTrie``: a prefix trie over the tokenised item ids, held as tensors, so the allowed next
  tokens of every beam are one gather, not a Python callback;
- ``beam_search``: constrained beam search, batched over users and beams; the encoder runs once,
  its cross-attention keys/values are computed once per user and shared by that user's beams,
  and the self-attention key/value cache is reordered as beams move;
- ``candidate_log_likelihood``: the exact log-likelihood of every candidate id in ONE decoder
  pass per batch: the candidates of a user are packed side by side into one decoder sequence with
  a block-diagonal causal mask (one mask for the batch, not one per user), so cross-attention
  over the prompt is shared and never copied; the vocabulary softmax runs once per distinct prefix.
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
def candidate_log_likelihood(
    model: ELMRec, hidden: torch.Tensor, mask: torch.Tensor, candidate_tokens: torch.Tensor
) -> torch.Tensor:
    """log P(id tokens | prompt) of every candidate: (B, C, L) token ids (pad = 0 after </s>)
    -> (B, C). All C candidates of a user are decoded in one sequence: the decoder inputs every
    candidate shares (the start token and the id's word piece) once, then each candidate's own
    inputs. Self-attention never crosses candidates (``elmrec.attention``), so they are as
    independent as in separate decoding, and T5's relative position bias sees the same distances.
    The vocabulary softmax runs once per distinct prefix: all candidates share their first
    positions and many the first digit chunk."""
    B, C, L = candidate_tokens.shape
    t5, dev = model.t5, hidden.device
    start = t5.config.decoder_start_token_id
    inputs = torch.cat([torch.full_like(candidate_tokens[..., :1], start), candidate_tokens[..., :-1]], -1)
    if t5.config._attn_implementation != attention.NAME:  # another attention would mix the candidates
        raise ValueError(f"candidate scoring needs the {attention.NAME!r} attention, not "
                         f"{t5.config._attn_implementation!r}")
    same = (inputs == inputs[:, :1]).all(1).all(0)  # positions where every candidate has the same input
    P = min(int(same.long().cumprod(0).sum()), L - 1)  # >= 1: the start token; one position left per candidate
    packed = torch.cat([inputs[:, 0, :P], inputs[:, :, P:].reshape(B, C * (L - P))], 1)
    states = t5.decoder(
        input_ids=packed, encoder_hidden_states=hidden, encoder_attention_mask=mask,
        use_cache=False, candidate_block=(P, L - P),
    ).last_hidden_state
    states = torch.cat([states[:, None, :P].expand(B, C, P, states.shape[-1]),
                        states[:, P:].reshape(B, C, L - P, -1)], 2)
    # the vocabulary head in fp32 also under autocast (see ELMRec.vocabulary_logits): 100
    # candidates' scores must not tie at bf16 resolution
    with torch.autocast(dev.type, enabled=False):
        return _candidate_scores(model, model.head_states(states.reshape(B * C, L, -1)), inputs, candidate_tokens)


def _candidate_scores(model: ELMRec, states: torch.Tensor, inputs: torch.Tensor, candidate_tokens: torch.Tensor):
    """log P(id tokens) of every candidate from the decoder's fp32 head states."""
    B, C, L = candidate_tokens.shape
    t5, dev = model.t5, states.device
    weight = t5.lm_head.weight.float()
    target = candidate_tokens.reshape(B * C, L)
    real = target != t5.config.pad_token_id
    # the state at position p depends only on (user, inputs[:p+1]): one softmax per distinct prefix
    group = torch.arange(B, device=dev).repeat_interleave(C)  # (user, prefix) class of each row
    lse = torch.zeros(B * C, L, device=dev)  # padding positions stay 0: garbage there made NaN scores
    for p in range(L):
        group = torch.unique(group * len(weight) + inputs.view(B * C, L)[:, p], return_inverse=True)[1]
        keep = real[:, p].nonzero().squeeze(1)
        uniq, inverse = torch.unique(group[keep], return_inverse=True)
        first = torch.full((len(uniq),), len(keep), device=dev).scatter_reduce(
            0, inverse, torch.arange(len(keep), device=dev), "amin")
        lse[keep, p] = (states[keep[first], p] @ weight.T).logsumexp(-1)[inverse]
    tok_lp = (states * weight[target.clamp(min=0)]).sum(-1) - lse
    return (tok_lp * real).sum(-1).view(B, C)


def candidate_tokens(tokenizer: PreTrainedTokenizerBase, candidates: np.ndarray, device) -> torch.Tensor:
    """(B, C) item ids -> (B, C, L) padded token ids."""
    seqs = item_token_ids(tokenizer, candidates.reshape(-1))
    L = max(len(s) for s in seqs)
    arr = np.full((len(seqs), L), tokenizer.pad_token_id, dtype=np.int64)
    for k, s in enumerate(seqs):
        arr[k, : len(s)] = s
    return torch.as_tensor(arr, device=device).view(*candidates.shape, L)


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
