"""The package's own offline tokenizer, and prompts -> tensors with whole-word indices.

The tokenizer mimics how T5's SentencePiece treats ids: ``user_123`` becomes ``▁user``, ``_``,
``12``, ``3`` (a word piece, the underscore, and digit chunks of at most two digits), so distinct
ids share pieces - the "spurious relatedness" that whole-word embeddings exist to fix. It is a
plain ``tokenizers`` pipeline saved as ``tokenizer.json``, so
``transformers.AutoTokenizer.from_pretrained(checkpoint_dir)`` loads it.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .prompts import Prompt, corpus

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2 as in T5 (decoding starts from <pad>)
_DIGIT_CHUNKS = [str(i) for i in range(10)] + [f"{i:02d}" for i in range(100)]


def build_tokenizer(texts: Iterable[str] = (), vocab_size: int = 8000) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on the template words plus ``texts`` (e.g. review sentences).

    Every one- and two-digit chunk is guaranteed to be a single token, so any id tokenises into
    word piece + ``_`` + digit chunks whatever the training text was.
    """
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
    return out


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
    ends = offsets[..., 1]
    real = (ends > offsets[..., 0]) & (enc["attention_mask"] > 0)  # skips </s>, padding
    pos = (ends - 1) + (np.arange(B) * stride)[:, None]  # last character of each token
    k = np.searchsorted(spans[:, 0], pos, side="right") - 1
    inside = real & (k >= 0) & (pos < spans[np.maximum(k, 0), 1])
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
