"""The package's own offline tokenizer, the two id schemes, and prompts -> tensors with whole-word
indices.

- ``digits`` (the paper's): the tokenizer mimics how T5's SentencePiece treats ids: ``user_123``
  becomes ``▁user``, ``_``, ``12``, ``3`` (a word piece, the underscore, and digit chunks of at most
  two digits), so distinct ids share pieces - the "spurious relatedness" that whole-word embeddings
  exist to fix.
- ``item``: every user and item of the dataset is one added token (``user_123``, ``item_4567``;
  ``user_0`` stands for a user the model never saw). A randomly initialised T5 learns these far
  faster than ids composed of digit pieces (docs/training.md); template words stay word pieces.

Either way it is a plain ``tokenizers`` pipeline saved as ``tokenizer.json``, so
``transformers.AutoTokenizer.from_pretrained(checkpoint_dir)`` loads it.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .prompts import Prompt, corpus

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2 as in T5 (decoding starts from <pad>)
ID_SCHEMES = ("digits", "item")
_DIGIT_CHUNKS = [str(i) for i in range(10)] + [f"{i:02d}" for i in range(100)]


def build_tokenizer(
    texts: Iterable[str] = (), vocab_size: int = 8000, id_tokens: str = "digits", n_users: int = 0, n_items: int = 0,
) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on the template words plus ``texts`` (e.g. review sentences).

    Every one- and two-digit chunk is guaranteed to be a single token, so any id tokenises into
    word piece + ``_`` + digit chunks whatever the training text was; with ``id_tokens="item"`` the
    ``n_users`` users and ``n_items`` items get one token each on top (``add_id_tokens``).
    """
    if id_tokens not in ID_SCHEMES:
        raise ValueError(f"id_tokens must be one of {ID_SCHEMES}, got {id_tokens!r}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        pre_tokenizers.Split(Regex(r"\d{1,2}"), behavior="isolated"),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)

    def lines():
        # digit chunks repeated so their merges are learned first, then the ids' word pieces
        for _ in range(1000):
            yield " ".join(_DIGIT_CHUNKS) + " user_ item_"
        for _ in range(100):
            yield from corpus()
        yield from texts

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    tok.train_from_iterator(lines(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))]
    )
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    for piece in _DIGIT_CHUNKS:
        if out.tokenize(piece) != ["\u2581", piece]:
            raise RuntimeError(f"tokenizer failed to learn digit chunk {piece!r}")
    return add_id_tokens(out, n_users, n_items) if id_tokens == "item" else out


def add_id_tokens(tokenizer: PreTrainedTokenizerBase, n_users: int, n_items: int) -> PreTrainedTokenizerBase:
    """The ``item`` scheme: ``user_0`` .. ``user_{n_users}`` and ``item_1`` .. ``item_{n_items}`` as
    one token each. They match whole words only (``user_12`` never inside ``user_123``) and absorb
    the spaces around them, so a list of 100 ids is 100 tokens, not 200."""
    def token(text: str) -> AddedToken:
        return AddedToken(text, single_word=True, lstrip=True, rstrip=True, normalized=False)

    tokenizer.add_tokens([token(f"user_{u}") for u in range(n_users + 1)]
                         + [token(f"item_{i}") for i in range(1, n_items + 1)])
    return tokenizer


def id_scheme(tokenizer: PreTrainedTokenizerBase) -> str:
    """Which scheme a tokenizer writes ids in: ``item`` if ``item_1`` is one token of it."""
    return "item" if "item_1" in tokenizer.get_added_vocab() else "digits"


def item_vocab_ids(tokenizer: PreTrainedTokenizerBase, items: Sequence[int] | np.ndarray) -> np.ndarray:
    """``item`` scheme: the vocabulary id of each item's token (a clear error for an item the
    tokenizer has no token for)."""
    vocab = tokenizer.get_added_vocab()
    missing = [int(i) for i in items if f"item_{int(i)}" not in vocab]
    if missing:
        raise ValueError(f"the tokenizer has no token for item(s) {missing[:5]}: it was built for fewer items "
                         "(a checkpoint of another dataset?)")
    return np.array([vocab[f"item_{int(i)}"] for i in items], dtype=np.int64)


def item_token_start(tokenizer: PreTrainedTokenizerBase, n_items: int) -> int | None:
    """``item`` scheme: the vocabulary id of ``item_1``; items 1..n_items are consecutive from it
    (``add_id_tokens`` adds them in order), so the model's item outputs are one slice. None for a
    ``digits`` tokenizer."""
    if id_scheme(tokenizer) != "item":
        return None
    ids = item_vocab_ids(tokenizer, np.arange(1, n_items + 1))
    if not np.array_equal(ids, ids[0] + np.arange(n_items)):
        raise ValueError("the tokenizer's item tokens are not consecutive: build it with add_id_tokens")
    return int(ids[0])


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Tokenise prompts and give every token the whole-word index of the id span it falls in
    (0 for tokens outside ids), in one vectorised pass over the batch."""
    enc = tokenizer(
        [p.text for p in prompts], padding=True, return_offsets_mapping=True, return_tensors="np"
    )
    offsets = enc["offset_mapping"]  # (B, T, 2)
    B, T = enc["input_ids"].shape
    # One global coordinate system: sample b's characters live at b * stride + char.
    stride = max(len(p.text) for p in prompts) + 2
    spans = np.concatenate([p.spans + [b * stride, b * stride, 0] for b, p in enumerate(prompts)])
    starts, ends = offsets[..., 0], offsets[..., 1]
    real = (ends > starts) & (enc["attention_mask"] > 0)  # skips </s>, padding
    shift = (np.arange(B) * stride)[:, None]
    # the last id span that starts before the token ends; the token belongs to it if they overlap
    # (an ``item``-scheme token's characters include the spaces it absorbs)
    k = np.searchsorted(spans[:, 0], ends - 1 + shift, side="right") - 1
    inside = real & (k >= 0) & (starts + shift < spans[np.maximum(k, 0), 1])
    whole_word = np.where(inside, spans[np.maximum(k, 0), 2], 0)
    return {
        "input_ids": torch.as_tensor(enc["input_ids"], device=device),
        "attention_mask": torch.as_tensor(enc["attention_mask"], device=device),
        "whole_word": torch.as_tensor(whole_word, dtype=torch.long, device=device),
    }


def encode_targets(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Target token ids (ending in </s>), padded with -100 so padding is ignored by the loss."""
    enc = tokenizer(list(texts), padding=True, truncation=max_tokens is not None,
                    max_length=max_tokens, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return labels.to(device)
