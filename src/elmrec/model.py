"""ELMRec: a T5 encoder-decoder whose input embeddings carry whole-word embeddings (SPEC section 2).

    input_embedding(token) = token_embedding(token) + alpha * whole_word_embedding(id_of(token))

- graph-aware whole-word embeddings (direct, explanation): LightGCN propagation of a trainable
  random table E0 over the training user-item graph, recomputed every training step;
- incremental whole-word embeddings (sequential): the k-th id of the prompt gets row k of its own
  table, so recency is visible;
- per-task soft prompts prepended to the encoder input.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.models.t5.modeling_t5 import T5Attention

from . import attention
from .checkpoint import GRAPH_FILE, MODEL_CONFIG_FILE, WEIGHTS_FILE, stored_model_config
from .config import ModelConfig
from .dropout import replace_dropout
from .graph import cooccurrence_embedding, lightgcn, normalized_adjacency, to_torch_sparse, without_edges
from .io import atomic_directory
from .tasks import DIRECT, EXPLANATION, SEQUENTIAL, TASK_IDS
from .tokenization import id_scheme, item_token_start

# Named backbone sizes. "tiny" and "small" match SPEC section 7; "cpu" is the size we train on a
# 2-core machine; "small" is the t5-small architecture.
T5_SIZES = {
    "tiny": dict(d_model=128, d_ff=512, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=32),
    "cpu": dict(d_model=256, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4, d_kv=64),
    "small": dict(d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64),
}
AFTER = 1 << 30  # history rank of the tokens after a sequential prompt's last item (causal_history)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Q, K) "may attend" -> (B, 1, Q, K) additive mask, which T5 passes to attention as is."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # (B, T, vocabulary), fp32
    cache: object  # transformers' EncoderDecoderCache, for the next step


def build_backbone(config: ModelConfig, vocab_size: int, seed: int) -> T5ForConditionalGeneration:
    """A randomly initialised T5 of a named size, or a pretrained one (hub name or directory) whose
    vocabulary grows to ``vocab_size`` when the ``item`` scheme added id tokens to its tokenizer."""
    if config.backbone:
        t5 = T5ForConditionalGeneration.from_pretrained(config.backbone)
        if vocab_size > t5.get_input_embeddings().num_embeddings:
            torch.manual_seed(seed)
            t5.resize_token_embeddings(vocab_size)
        return t5
    torch.manual_seed(seed)
    t5_config = T5Config(
        vocab_size=vocab_size, dropout_rate=config.dropout, feed_forward_proj="relu",
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **T5_SIZES[config.size],
    )
    return T5ForConditionalGeneration(t5_config)


class ELMRec(nn.Module):
    def __init__(
        self, config: ModelConfig, t5: T5ForConditionalGeneration, n_users: int, n_items: int,
        adjacency: sp.csr_matrix, item_token_start: int | None = None,
    ):
        super().__init__()
        if config.id_tokens == "item" and item_token_start is None:
            raise ValueError("the item id scheme needs the vocabulary id of item_1 (item_token_start)")
        # item scheme: items 1..n_items are the vocabulary ids item_token_start + 0..n_items - 1
        self.item_token_start = item_token_start if config.id_tokens == "item" else None
        if self.item_token_start is not None:  # the output rows of an item task: </s>, then items 1..n
            rows = torch.cat([torch.tensor([t5.config.eos_token_id]),
                              torch.arange(self.item_token_start, self.item_token_start + n_items)])
            self.register_buffer("item_rows", rows, persistent=False)  # follows the model's device
        self.config, self.t5 = config, t5
        t5.set_attn_implementation(attention.NAME)
        replace_dropout(t5)
        for module in t5.modules():
            if isinstance(module, T5Attention):
                module.dropout = config.attention_dropout
        self.n_users, self.n_items = n_users, n_items
        self.adjacency = adjacency  # training interactions only; see graph.py
        d = t5.config.d_model
        # E0: random node features N(0, sigma^2); row 0 is padding (tokens outside ids).
        self.graph_table = nn.Parameter(torch.randn(n_users + n_items + 1, d) * config.graph_sigma)
        self.position_table = nn.Parameter(torch.randn(config.n_positions, d) * config.seq_sigma)
        self.soft_prompts = nn.Parameter(torch.randn(len(TASK_IDS), config.n_soft_prompts, d) * 0.5)
        self._graph_cache: torch.Tensor | None = None
        self._torch_adjacency: tuple | None = None

    # --- whole-word embeddings ---------------------------------------------------------------
    def graph_embeddings(self, hidden_edges: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
        """E = LightGCN(E0), recomputed in training (gradients reach E0), cached for inference.
        ``hidden_edges``: (user nodes, item nodes) left out of the propagation (``training_edges``)."""
        if hidden_edges is not None:
            self._graph_cache = None
            return self._propagate(without_edges(self.adjacency, *hidden_edges))
        if self.training or torch.is_grad_enabled():
            self._graph_cache = None
            return self._propagate()
        if self._graph_cache is None:
            # detached: without propagation (ablation) this is graph_table itself, and assigning an
            # nn.Parameter would register the cache as a second parameter of the module
            self._graph_cache = self._propagate().detach()
        return self._graph_cache

    def _propagate(self, adjacency: sp.csr_matrix | None = None) -> torch.Tensor:
        if not self.config.use_graph:  # ablation: plain learned whole-word ids
            return self.graph_table
        table, layers, self_weight = self.graph_table, self.config.graph_layers, self.config.graph_self_weight
        if table.device.type == "cpu" and table.dtype == torch.float32:
            return lightgcn(self.adjacency if adjacency is None else adjacency, table, layers, self_weight)
        if adjacency is not None:  # a training batch's own graph (hide_direct_edges): copied each step
            sparse = to_torch_sparse(adjacency, table.device, table.dtype)
        else:  # GPU: copy the adjacency to the device once, not every step
            key = (table.device, table.dtype)
            if self._torch_adjacency is None or self._torch_adjacency[0] != key:
                self._torch_adjacency = (key, to_torch_sparse(self.adjacency, table.device, table.dtype))
            sparse = self._torch_adjacency[1]
        with torch.autocast(table.device.type, enabled=False):  # sparse products stay in the table's dtype
            return lightgcn(sparse, table, layers, self_weight)

    def train(self, mode: bool = True):
        self._graph_cache = None  # parameters are about to change
        return super().train(mode)

    def training_edges(self, task: str, whole_word: torch.Tensor, labels: torch.Tensor):
        """(user nodes, item nodes) of a direct training batch's (user, positive) pairs, which a
        ``hide_direct_edges`` model propagates without; None when nothing is hidden."""
        if not (self.training and self.config.hide_direct_edges and task == DIRECT and self.config.use_graph
                and self.item_token_start is not None):
            return None
        users = torch.where(self.is_user(whole_word), whole_word, 0).amax(1)
        items = self.n_users + labels[:, 0] - self.item_token_start + 1
        keep = (users > 0) & (labels[:, 0] >= self.item_token_start)
        return users[keep].cpu().numpy(), items[keep].cpu().numpy()

    def uses_graph(self, task: str) -> bool:
        """Whether the task's whole-word embeddings are the graph's (not the incremental ones)."""
        return not (task == SEQUENTIAL and self.config.use_incremental)

    def needs_graph(self, task: str) -> bool:
        """Whether a forward pass of the task reads the graph embeddings: its whole-word embeddings
        or, with ``graph_head``, its item outputs."""
        item_output = self.config.graph_head and self.item_token_start is not None and task != EXPLANATION
        return self.uses_graph(task) or item_output

    def whole_word(self, task: str, whole_word: torch.Tensor, graph: torch.Tensor | None = None) -> torch.Tensor:
        """alpha * whole-word embedding of every token; index 0 contributes nothing. ``graph``: the
        graph embeddings when the caller has propagated them already (one batch in chunks)."""
        if not self.uses_graph(task):
            idx = whole_word.clamp(max=self.config.n_positions - 1)
            table, alpha = self.position_table, self.config.seq_alpha
        else:
            table = self.graph_embeddings() if graph is None else graph
            idx, alpha = whole_word, self.config.graph_alpha
        # F.embedding: its CPU backward is deterministic, unlike advanced indexing's scatter-add
        emb = F.embedding(idx, table) * (idx > 0).unsqueeze(-1).to(table.dtype)
        return alpha * emb

    # --- encoder / decoder -------------------------------------------------------------------
    def encode(
        self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, whole_word: torch.Tensor,
        graph: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states and mask for a batch of one task's prompts (soft prompts prepended)."""
        x = self.t5.shared(input_ids) + self.whole_word(task, whole_word, graph).to(self.t5.dtype)
        if self.config.use_soft_prompts:
            prompts = self.soft_prompts[TASK_IDS[task]].to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([prompts, x], dim=1)
            ones = attention_mask.new_ones(x.shape[0], prompts.shape[1])
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        encoder_mask = attention_mask
        if self.config.causal_history and task == SEQUENTIAL:
            ranks = self.history_ranks(input_ids, attention_mask.shape[1])
            allowed = attention_mask.bool()[:, None, :] & (ranks[:, None, :] <= ranks[:, :, None])
            encoder_mask = _additive(allowed, x.dtype)
            # the decoder reads the history and what precedes it, never the words (or </s>) after
            # it, which see the whole history: so a prefix is read the same in training and alone
            attention_mask = attention_mask * (ranks != AFTER)
        hidden = self.t5.encoder(inputs_embeds=x, attention_mask=encoder_mask).last_hidden_state
        return hidden, attention_mask

    def decode(
        self, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor, decoder_input_ids: torch.Tensor,
        cache=None, use_cache: bool = False,
    ) -> DecoderOutput:
        """Decoder logits and cache; the encoder mask is passed so cross-attention never looks at
        padding."""
        out = self.t5.decoder(
            input_ids=decoder_input_ids, cache=cache, encoder_hidden_states=encoder_hidden,
            encoder_attention_mask=encoder_mask, use_cache=use_cache,
        )
        return DecoderOutput(self.vocabulary_logits(out.last_hidden_state), out.cache)

    def head_states(self, states: torch.Tensor) -> torch.Tensor:
        """Decoder states as T5's vocabulary head sees them (scaled when embeddings are tied), fp32."""
        states = states.float()
        if getattr(self.t5.config, "scale_decoder_outputs", self.t5.config.tie_word_embeddings):
            states = states * self.t5.model_dim**-0.5
        return states

    def vocabulary_logits(self, states: torch.Tensor) -> torch.Tensor:
        """The vocabulary head in fp32, also under bf16 autocast: beam scores add log-probabilities
        of ids that differ by less than bf16 resolves (8-bit mantissa: 0.125 at a logit of 20)."""
        with torch.autocast(states.device.type, enabled=False):
            return F.linear(self.head_states(states), self.t5.lm_head.weight.float())

    # --- causal history (item scheme, a departure): every prefix of a history trains at once ----
    def decoder_start(self, task: str, last_items: torch.Tensor) -> torch.Tensor:
        """(B,) the first decoder input: T5's start token or, for sequential prompts of a
        ``last_item_start`` model, the token of the history's latest item (``last_items``, 0: an
        empty history, which keeps the start token)."""
        start = torch.full_like(last_items, self.t5.config.decoder_start_token_id)
        if not (self.config.last_item_start and task == SEQUENTIAL):
            return start
        return torch.where(last_items > 0, last_items + self.item_token_start - 1, start)

    def user_start(self, input_ids: torch.Tensor, whole_word: torch.Tensor,
                   graph: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) first decoder inputs of direct prompts for a ``user_start`` model: the user's input
        embedding as the encoder sees it (token + alpha * graph-aware whole-word embedding); T5's
        start token for a prompt without a known user (user_0 has whole-word index 0)."""
        is_user = self.is_user(whole_word)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        at = is_user.int().argmax(1)
        user = self.t5.shared(input_ids[rows, at]) + self.whole_word(DIRECT, whole_word[rows, at, None], graph)[:, 0]
        # a constant: a gradient for this one row would cost a zero-filled gradient of the whole table
        start = self.t5.shared.weight[self.t5.config.decoder_start_token_id].detach().expand_as(user)
        return torch.where(is_user.any(1, keepdim=True), user.to(start.dtype), start)

    def is_user(self, whole_word: torch.Tensor) -> torch.Tensor:
        """Which tokens of a graph-aware prompt (direct, explanation) belong to a known user: graph
        indices 1..n_users (items follow them; user_0 and words have index 0)."""
        return (whole_word > 0) & (whole_word <= self.n_users)

    def is_item(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Item scheme: which prompt tokens are items (one token each, consecutive ids)."""
        return (input_ids >= self.item_token_start) & (input_ids < self.item_token_start + self.n_items)

    def history_ranks(self, input_ids: torch.Tensor, length: int) -> torch.Tensor:
        """(B, length) where each token of a sequential prompt sits in its history: k for the k-th
        history item, 0 before the first (soft prompts, words, the user), ``AFTER`` past the last
        (words, </s>, padding). ``length``: the prompt with its soft prompts (counted as 0)."""
        is_item = self.is_item(input_ids)
        count = is_item.cumsum(1)
        ranks = torch.where(~is_item & (count == count[:, -1:]) & (count > 0), AFTER, count)
        return F.pad(ranks, (length - ranks.shape[1], 0))

    def _prefix_loss(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
        graph: torch.Tensor | None = None, smoothing: float = 0.0,
    ) -> torch.Tensor:
        """Mean cross-entropy of the next item after every prefix of the history. The j-th of a
        row's t labels follows the prefix of n - t + 1 + j items (n: the row's history), so labels
        items[1:] + target train every prefix and a lone target trains (and validates) the whole
        history. Each label is one decoder step, alone (diagonal self-attention), whose
        cross-attention sees the encoder up to its prefix: what inference computes for that prefix."""
        ranks = self.history_ranks(input_ids, mask.shape[1])
        real = labels != -100
        b, t = labels.shape
        n = ranks.masked_fill(ranks == AFTER, 0).amax(1, keepdim=True)
        prefix = n - real.sum(1, keepdim=True) + 1 + torch.arange(t, device=labels.device)
        cross = _additive(mask.bool()[:, None, :] & (ranks[:, None, :] <= prefix[:, :, None]), hidden.dtype)
        alone = _additive(torch.eye(t, dtype=torch.bool, device=labels.device).expand(b, t, t), hidden.dtype)
        if self.config.last_item_start:  # step j reads its prefix's latest item
            is_item = self.is_item(input_ids)
            items = torch.where(is_item, input_ids - self.item_token_start + 1, 0)  # item ids, 0: no item
            by_rank = input_ids.new_zeros(b, input_ids.shape[1] + 1)  # column k: the k-th history item
            by_rank.scatter_(1, torch.where(is_item, is_item.cumsum(1), 0), items)
            latest = by_rank.gather(1, prefix.clamp(0, by_rank.shape[1] - 1))
            steps = self.t5.shared(self.decoder_start(SEQUENTIAL, latest))
        else:  # every step reads the start token; its embedding row enters as a constant (a
            # gradient for one row would cost a zero-filled gradient of the whole token table)
            steps = self.t5.shared.weight[self.t5.config.decoder_start_token_id].detach().expand(b, t, -1)
        states = self.t5.decoder(inputs_embeds=steps, attention_mask=alone,
                                 encoder_hidden_states=hidden, encoder_attention_mask=cross,
                                 use_cache=False).last_hidden_state
        return F.cross_entropy(self.item_logits(states[real], graph), labels[real] - self.item_token_start + 1,
                               label_smoothing=smoothing)

    # --- item scheme: the output is an item (or </s>) --------------------------------------------
    def item_logits(self, states: torch.Tensor, graph: torch.Tensor | None = None) -> torch.Tensor:
        """(.., 1 + n_items) fp32 logits of </s> and every item: the softmax of an item task runs
        over what it can output (a vocabulary of users, words and items is 3.5x larger on Beauty),
        which is constrained decoding and the cheaper half of the training step. With
        ``graph_head`` an item's output row is its whole input embedding, token plus graph-aware
        whole-word part (``graph``: the propagated table, when the caller has it)."""
        with torch.autocast(states.device.type, enabled=False):
            weight = self.t5.lm_head.weight[self.item_rows].float()
            if self.config.graph_head:
                table = self.graph_embeddings() if graph is None else graph
                items = table[self.n_users + 1 : self.n_users + self.n_items + 1].float()
                weight = weight + self.config.graph_alpha * F.pad(items, (0, 0, 1, 0))  # </s>: none
            return F.linear(self.head_states(states), weight)

    def _item_task_loss(
        self, task: str, input_ids: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
        graph: torch.Tensor | None = None, smoothing: float = 0.0, start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        steps = self.t5.shared(self.t5._shift_right(labels))
        if start is not None:  # (B, d) the first decoder input (user_start)
            steps = torch.cat([start[:, None].to(steps.dtype), steps[:, 1:]], dim=1)
        states = self.t5.decoder(
            inputs_embeds=steps, encoder_hidden_states=hidden, encoder_attention_mask=mask, use_cache=False,
        ).last_hidden_state
        # logits at real target positions only (a batch's targets are padded to its longest); the
        # vocabulary id -> output row: </s> -> 0, item k -> k
        real = labels != -100
        target = torch.where(labels == self.t5.config.eos_token_id, 0, labels - self.item_token_start + 1)
        logits = self.item_logits(states[real], graph)
        if task == DIRECT and self.config.direct_loss == "candidates":
            listed = self.listed_items(input_ids)
            logits = logits.masked_fill(~listed[:, None].expand(-1, labels.shape[1], -1)[real], float("-inf"))
            if smoothing:  # spread over the candidates: F.cross_entropy's would reach the -inf columns
                logp = logits.log_softmax(-1)
                finite = torch.isfinite(logits)
                spread = -logp.masked_fill(~finite, 0).sum(-1) / finite.sum(-1)
                nll = -logp.gather(1, target[real][:, None]).squeeze(1)
                return ((1 - smoothing) * nll + smoothing * spread).mean()
        return F.cross_entropy(logits, target[real], label_smoothing=smoothing)

    def listed_items(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, 1 + n_items) bool: the items a prompt names, in ``item_logits``' columns."""
        is_item = self.is_item(input_ids)
        columns = torch.where(is_item, input_ids - self.item_token_start + 1, 0)
        listed = torch.zeros(input_ids.shape[0], self.n_items + 1, dtype=torch.bool, device=input_ids.device)
        listed.scatter_(1, columns, True)
        listed[:, 0] = False
        return listed

    def forward(
        self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, whole_word: torch.Tensor,
        labels: torch.Tensor, graph: torch.Tensor | None = None, smoothing: float = 0.0,
    ) -> torch.Tensor:
        """Mean token cross-entropy of the targets (labels padded with -100); in the item scheme an
        item task's softmax runs over </s> and the items only (``item_logits``). ``smoothing``:
        label smoothing over what the softmax can output (the listed items with the candidate softmax)."""
        if graph is None and self.needs_graph(task):  # propagated once for the input and the output
            graph = self.graph_embeddings(self.training_edges(task, whole_word, labels))
        hidden, mask = self.encode(task, input_ids, attention_mask, whole_word, graph)
        if self.config.causal_history and task == SEQUENTIAL:
            return self._prefix_loss(input_ids, hidden, mask, labels, graph, smoothing)
        if self.item_token_start is not None and task != EXPLANATION:
            start = self.user_start(input_ids, whole_word, graph) if self.config.user_start and task == DIRECT else None
            return self._item_task_loss(task, input_ids, hidden, mask, labels, graph, smoothing, start)
        logits = self.t5(encoder_outputs=(hidden,), attention_mask=mask,
                         decoder_input_ids=self.t5._shift_right(labels)).logits
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=smoothing)

    @torch.no_grad()
    def init_item_tokens(self, vectors: torch.Tensor) -> None:
        """Item scheme: item k's token embedding := ``vectors[k - 1]``, in the input table and the
        output head (the same tensor unless the backbone unties them); all-zero rows (items without
        co-occurrence) keep their start. ``vectors`` have T5's initial scale (mean square 1); a
        pretrained backbone's tables get them at their own scale (root mean square)."""
        items = slice(self.item_token_start, self.item_token_start + self.n_items)
        keep = vectors.abs().sum(1) > 0
        for table in {id(w): w for w in (self.t5.shared.weight, self.t5.lm_head.weight)}.values():
            rows = vectors.to(table)
            if self.config.backbone:
                rows = rows * table.pow(2).mean().sqrt()
            table[items][keep] = rows[keep]

    @torch.no_grad()
    def init_graph_table(self, vectors: torch.Tensor) -> None:
        """E0's item rows := ``graph_sigma * vectors`` (mean square 1, so the random features'
        scale), its user rows := 0: after propagation a user's vector is its items' mix. Items
        without a co-occurring pair (zero vectors) start at zero too and take their users'
        propagated vectors."""
        self.graph_table.zero_()
        self.graph_table[self.n_users + 1 :] = vectors.to(self.graph_table) * self.config.graph_sigma

    # --- checkpoints ---------------------------------------------------------------------------
    def save_pretrained(
        self, directory: str | Path, tokenizer: PreTrainedTokenizerBase,
        extra_files: dict[str, str | bytes] | None = None,
    ) -> Path:
        """Write config, safetensors weights, graph, tokenizer (and e.g. id maps) atomically."""
        with atomic_directory(directory) as tmp:
            self.t5.config.save_pretrained(tmp)
            meta = {"model": asdict(self.config), "n_users": self.n_users, "n_items": self.n_items,
                    "item_token_start": self.item_token_start}
            (tmp / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            # T5 ties shared/encoder/decoder embeddings and lm_head: store the one tensor once
            for k in ("t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight", "t5.lm_head.weight"):
                if k in state and state[k].data_ptr() == state["t5.shared.weight"].data_ptr():
                    del state[k]
            save_file(state, str(tmp / WEIGHTS_FILE))
            adj = self.adjacency
            save_file(
                {"indptr": torch.as_tensor(adj.indptr.astype(np.int64)),
                 "indices": torch.as_tensor(adj.indices.astype(np.int64)),
                 "data": torch.as_tensor(adj.data)},
                str(tmp / GRAPH_FILE),
            )
            tokenizer.save_pretrained(tmp)
            for name, content in (extra_files or {}).items():
                if isinstance(content, bytes):
                    (tmp / name).write_bytes(content)
                else:
                    (tmp / name).write_text(content)
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> tuple[ELMRec, PreTrainedTokenizerBase]:
        d = Path(directory)
        if not (d / MODEL_CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{d}: not an elmrec checkpoint (missing {MODEL_CONFIG_FILE} or {WEIGHTS_FILE})")
        try:
            meta = json.loads((d / MODEL_CONFIG_FILE).read_text())
            config = ModelConfig(**stored_model_config(meta["model"]))
            t5 = T5ForConditionalGeneration(T5Config.from_pretrained(d))
            g = load_file(str(d / GRAPH_FILE))
            n = meta["n_users"] + meta["n_items"] + 1
            adj = sp.csr_matrix((g["data"].numpy(), g["indices"].numpy(), g["indptr"].numpy()), shape=(n, n))
            model = cls(config, t5, meta["n_users"], meta["n_items"], adj, meta.get("item_token_start"))
            state = load_file(str(d / WEIGHTS_FILE))
            missing, unexpected = model.load_state_dict(state, strict=False)
        except (SafetensorError, TypeError, RuntimeError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{d}: damaged or incompatible checkpoint ({type(e).__name__}: {e})") from None
        tied = {"t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight", "t5.lm_head.weight"}
        if unexpected or set(missing) - tied:
            raise ValueError(f"{d}: weights do not match the config (missing {missing}, unexpected {unexpected})")
        if t5.config.tie_word_embeddings is not False:
            t5.tie_weights()
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(d)
        scheme = id_scheme(tokenizer)
        if scheme != config.id_tokens or (scheme == "item" and item_token_start(tokenizer, model.n_items)
                                          != model.item_token_start):  # never read ids in another scheme
            raise ValueError(f"{d}: the model was trained with id_tokens {config.id_tokens!r} but its tokenizer "
                             f"writes ids as {scheme!r} (or numbers them otherwise): damaged or mixed checkpoint")
        return model.to(device), tokenizer


def build_model(
    config: ModelConfig, n_users: int, n_items: int, train_users: np.ndarray, train_items: np.ndarray,
    vocab_size: int, seed: int, item_token_start: int | None = None,
) -> ELMRec:
    """A fresh ELMRec over the graph of the given (training) interactions; ``item_token_start``
    (item scheme): the vocabulary id of ``item_1`` (``tokenization.item_token_start``)."""
    t5 = build_backbone(config, vocab_size, seed)
    adjacency = normalized_adjacency(n_users, n_items, train_users, train_items)
    torch.manual_seed(seed + 1)
    model = ELMRec(config, t5, n_users, n_items, adjacency, item_token_start)
    if "cooccurrence" in (config.item_init, config.graph_init):
        vectors = torch.from_numpy(
            cooccurrence_embedding(train_users, train_items, n_items, t5.config.d_model, seed=seed)[1:])
        if config.item_init == "cooccurrence":
            model.init_item_tokens(vectors)
        if config.graph_init == "cooccurrence":
            model.init_graph_table(vectors)
    return model


__all__ = ["ELMRec", "build_model", "T5_SIZES", "SEQUENTIAL", "DIRECT", "EXPLANATION"]
