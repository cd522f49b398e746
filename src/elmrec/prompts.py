"""Prompt templates and rendering with id spans.

Rendering a sample writes ``user_123`` / ``item_4567`` and records, for every id, its character
span and its whole-word index, so tokenisation can assign whole-word indices from offsets in one
vectorised step instead of re-scanning token strings:

- graph-aware indices (direct, explanation): user u -> u, item i -> n_users + i;
- incremental indices (sequential): the user -> 1, then history items oldest to newest -> 2, 3, ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .tasks import DIRECT, EXPLANATION, SEQUENTIAL, Sample

# Paraphrases sampled in training; the terse template (index 0) is also used for evaluation.
TEMPLATES: dict[str, list[str]] = {
    SEQUENTIAL: [
        "{user} {history}",
        "{user} has bought {history} in this order . what will the user buy next ?",
        "here is the purchase history of {user} : {history} . predict the next item .",
        "{user} interacted with {history} . which item comes next ?",
    ],
    DIRECT: [
        "{user} {candidates}",
        "which of these items should we recommend to {user} ? {candidates}",
        "{user} is choosing among {candidates} . pick the item the user will like most .",
        "from {candidates}, select one item for {user} .",
    ],
    EXPLANATION: [
        "{user} {item}",
        "explain why {user} likes {item} .",
        "write the short review that {user} would give {item} .",
        "what would {user} say about {item} ?",
    ],
}
EVAL_TEMPLATE = 0
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Prompt:
    text: str
    spans: np.ndarray  # (n_ids, 3): char start, char end (exclusive), whole-word index


def render(sample: Sample, template: int, n_users: int, incremental: bool, sequential_user: bool = True) -> Prompt:
    """Write the sample into a template, recording the span and whole-word index of every id.
    ``sequential_user`` False: a sequential prompt names ``user_0`` (the unseen user)."""
    if sample.task == SEQUENTIAL:
        user = sample.user if sequential_user else 0
        fields = {"user": [("user", user)], "history": [("item", i) for i in sample.items]}
    elif sample.task == DIRECT:
        fields = {"user": [("user", sample.user)], "candidates": [("item", i) for i in sample.items]}
    else:
        fields = {"user": [("user", sample.user)], "item": [("item", sample.items[0])]}
    use_incremental = incremental and sample.task == SEQUENTIAL
    parts: list[str] = []
    spans: list[tuple[int, int, int]] = []
    pos = 0
    for k, piece in enumerate(_FIELD.split(TEMPLATES[sample.task][template])):
        if k % 2 == 0:  # literal text
            parts.append(piece)
            pos += len(piece)
            continue
        for j, (kind, ident) in enumerate(fields[piece]):
            if j:  # lists are space-separated in every template: a comma per id would add 100
                parts.append(" ")  # tokens (a quarter) to a direct prompt and carries nothing
                pos += 1
            word = f"{kind}_{ident}"
            if use_incremental:  # the user first, then the k-th history item (oldest first) -> k + 1
                ww = 1 if kind == "user" else j + 2
            elif kind == "user":  # a user outside the training graph has no graph node
                ww = ident if ident <= n_users else 0
            else:
                ww = n_users + ident
            spans.append((pos, pos + len(word), ww))
            parts.append(word)
            pos += len(word)
    return Prompt("".join(parts), np.asarray(spans, dtype=np.int64).reshape(-1, 3))


def item_text(item: int, id_tokens: str) -> str:
    """An item as the model generates it: the bare number ("4567", ``digits``) or its own token
    ("item_4567", ``item``)."""
    return f"item_{item}" if id_tokens == "item" else str(item)


def target_text(sample: Sample, id_tokens: str = "digits") -> str:
    """The decoder's target: the item (then its continuation, if any), or the explanation's words."""
    if sample.task == EXPLANATION:
        return str(sample.target)
    items = (*sample.items[1:], sample.target) if sample.prefixes else (sample.target, *sample.continuation)
    return " ".join(item_text(int(i), id_tokens) for i in items)


def corpus() -> list[str]:
    """Template words, for building the package's own tokenizer."""
    return [_FIELD.sub("", t) for ts in TEMPLATES.values() for t in ts]
