"""Typed run configuration with the paper's defaults, dataset presets (Table 9), YAML/JSON loading
and command-line overrides.

Field names are unique across sections so that every field is one flat flag (``--graph-alpha 9``);
``--alpha`` / ``--sigma`` set both whole-word tables at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

SIZES = ("tiny", "cpu", "small")
TASKS = ("explanation", "sequential", "direct")


@dataclass
class ModelConfig:
    size: str = "small"  # tiny | cpu | small (the t5-small architecture); ignored with a backbone
    backbone: str | None = None  # pretrained T5: hub name or local directory (its tokenizer is used)
    # how ids are tokenised: "digits" (the paper's: word piece + digit chunks) or "item" (one token
    # per user and per item, a departure that a randomly initialised T5 learns far faster; see
    # docs). None: "item" for the built-in random backbones, "digits" with a pretrained backbone
    id_tokens: typing.Literal["digits", "item"] | None = None
    graph_alpha: float = 9.0  # scale of graph-aware whole-word embeddings (direct, explanation)
    graph_sigma: float = 6.0  # std of the random node features E0
    graph_layers: int = 4  # LightGCN propagation depth L
    # weight w of E0 in the layer mean (w E0 + A E0 + ... + A^L E0) / (w + L): 1 is the paper's
    # LightGCN mean; w < 1 (e.g. 0) departs from it so that the graph, not the random row, dominates
    graph_self_weight: float = 1.0
    seq_alpha: float = 6.0  # scale of incremental whole-word embeddings (sequential)
    seq_sigma: float = 6.0
    n_positions: int = 512  # rows of the incremental table
    n_soft_prompts: int = 3  # trainable prompt vectors per task
    use_graph: bool = True  # False: plain learned whole-word ids (no propagation)
    use_incremental: bool = True  # False: sequential prompts use the id-based whole-word embeddings
    use_soft_prompts: bool = True
    # departure (item scheme): in sequential prompts a history item sees only the items before it
    # (and the words and user before the history), so one training prompt trains the next item of
    # every prefix of its history at once, as SASRec does; the decoder's first step at prefix k
    # reads the encoder up to item k. Inference reads the whole history, as without it
    causal_history: bool = False
    # the direct task's training softmax (item scheme): over every item, as generation's (the
    # paper's), or over the prompt's candidates only, the ranking that evaluation reads (a departure)
    direct_loss: typing.Literal["items", "candidates"] = "items"
    # False (a departure): sequential prompts name user_0, the unseen user, instead of the user, so
    # the model reads the history alone and cannot memorise a user's training items in the user's
    # own id (which every-prefix training otherwise does, while the held-out item is new)
    sequential_user: bool = True
    # departure (item scheme): an item's output row is its token embedding plus its graph-aware
    # whole-word embedding (the input's, tied as T5 ties token embeddings), so a user's graph
    # vector scores items by the training graph from the first step
    graph_head: bool = False
    # departure (causal_history): the decoder's first input for a sequential prompt is the token of
    # the history's latest item instead of T5's start token, so the step that predicts the next
    # item knows which item came last (T5's cross-attention has no positions to find it by)
    last_item_start: bool = False
    # departure (item scheme), "random" = T5's init: "cooccurrence" starts the item tokens (input
    # rows and tied output rows) from spectral vectors of the training sequences' item
    # co-occurrence (graph.cooccurrence_embedding), so a fresh model need not discover which items
    # go together before it can learn what comes next
    item_init: typing.Literal["random", "cooccurrence"] = "random"
    # departure, "random" = the paper's N(0, sigma^2) features: "cooccurrence" starts the graph
    # table E0's item rows from the same spectral vectors (times graph_sigma) and its user rows at
    # zero, so LightGCN makes a user's graph vector the mix of its training items' vectors and a
    # user and the items it would pick are close from the first step (random features propagated
    # over Beauty's graph rank the direct candidates below popularity: docs/findings.md)
    graph_init: typing.Literal["random", "cooccurrence"] = "random"
    # departure (item scheme): the decoder's first input for a direct prompt is the user's own
    # input embedding (its token plus its graph-aware whole-word embedding) instead of T5's start
    # token, so the one step that scores the candidates starts from who is asking (the direct
    # twin of last_item_start; T5's cross-attention has no positions to find the user by)
    user_start: bool = False
    # departure: a direct training prompt's graph-aware embeddings are propagated over the training
    # graph without its own (user, positive) edges, as evaluation's held-out items are never in
    # the graph; the paper's propagation keeps them, so a model can learn to pick the candidate
    # that is its user's neighbour, which no held-out candidate is
    hide_direct_edges: bool = False
    dropout: float = 0.1  # T5 hidden-state dropout
    # dropout on attention probabilities (T5 ties it to `dropout`); 0 keeps a (B, H, L, L) mask
    # per layer out of training (docs/performance.md)
    attention_dropout: float = 0.0

    def __post_init__(self):
        if self.id_tokens is None:  # resolved at once, so a run's config says which scheme it used
            self.id_tokens = "digits" if self.backbone else "item"


@dataclass
class TrainConfig:
    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # explanation only if data has it
    batch_size: int = 64
    # forward/backward a batch in chunks of this many samples: the same gradients (the loss is
    # weighted by label tokens), a fraction of the activation memory, e.g. for large direct prompts
    micro_batch_size: int | None = None
    # run a batch sorted by prompt length in this many groups, each padded to its own longest: the
    # same gradients, less padding. None: 4 on a CPU (time grows with padding), 1 on a GPU (each pass
    # has a fixed cost); docs/performance.md
    length_groups: int | None = None
    # processes that render and tokenise the next batches while the model trains on this one.
    # None: 0 on a CPU (the cores are better spent on the model), 2 on a GPU; docs/gpu.md
    loader_workers: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    # constant after warm-up, or linear decay to 0 at the end of `epochs` (plan epochs to fit a
    # budget: a run stopped by the budget never reaches the low learning rates)
    lr_schedule: typing.Literal["constant", "linear"] = "constant"
    # departure, off by default: validation, best/ and the trained model use an exponential moving
    # average of the weights (this decay per step), which smooths a constant learning rate's noise
    # without knowing when a budget will stop the run (docs/training.md)
    ema_decay: float | None = None
    # departure, 0 = off: training targets put this share of their probability evenly on every
    # output (label smoothing), against an overconfident softmax; validation loss stays plain
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    epochs: int = 100
    patience: int = 5
    # which epoch is best/ (and what patience waits for): the lowest mean validation loss, or
    # (a departure) the highest mean NDCG@10 of the trained ranking tasks on the validation users,
    # which keeps improving after the loss has turned (overconfident misses; docs/training.md)
    select_by: typing.Literal["loss", "ndcg"] = "loss"
    steps_per_epoch: int | None = None  # batches per task per epoch; None = one sample per user
    # batches of a task per turn of the rotation (default 1 each, the paper's rotation); e.g.
    # sequential=2 spends more of a budget on the cheaper task. CLI: --task-repeats sequential=2
    task_repeats: dict[str, int] = field(default_factory=dict)
    valid_users: int | None = 2000  # users in the validation-loss subset; None = all
    budget_minutes: float | None = None  # stop training (and keep the best checkpoint) after this
    n_negatives: int = 99
    # departure, off by default: direct training prompts list n_negatives_start negatives in the
    # first epoch, growing linearly to n_negatives at epoch curriculum_epochs + 1 (docs/training.md)
    n_negatives_start: int | None = None
    curriculum_epochs: int = 1
    max_history: int = 20
    # departure, 1 = the paper: a sequential training prompt's decoder target is its next item
    # followed by up to seq_targets - 1 items that came after it (teacher-forced), so one prompt
    # trains several next-item predictions; evaluation reads only the first
    seq_targets: int = 1
    max_explanation_tokens: int = 20
    seed: int = 2024
    # draws the validation users (and their direct negatives); None: ``seed``. Fixing it while
    # ``seed`` changes measures run-to-run variance on the same users
    valid_seed: int | None = None
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # bf16 autocast (GPU, or a CPU with AMX / avx512_bf16)
    threads: int | None = None  # torch intra-op threads on CPU


@dataclass
class EvalConfig:
    beams: int = 30  # sequential beam width
    top_n: int = 10
    extra_candidates: int = 15  # N: candidates beyond top_n that reranking may drop
    rerank: bool = True
    # score (exact likelihood of every candidate) | beam (paper) | sequential (a departure, item
    # scheme: the candidates read from the sequential prompt's row, i.e. from the user's history)
    direct_decode: str = "score"
    direct_beams: int = 20
    explanation_beams: int = 4
    eval_batch_size: int = 16
    # bf16 autocast for evaluation and recommendations (GPU, or a CPU with AMX / avx512_bf16); the
    # vocabulary head and all scores stay fp32
    eval_amp: bool = False

    def with_top_n(self, top_n: int) -> EvalConfig:
        """These settings returning ``top_n`` items: beams widen to top_n + N where they are fewer,
        so that reranking still has its N extra candidates."""
        return dataclasses.replace(self, top_n=top_n, beams=max(self.beams, top_n + self.extra_candidates))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    preset: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


# Table 9 of the paper: (alpha, sigma, N, L) for the direct and the sequential model.
PRESETS: dict[str, dict] = {
    "sports": dict(graph_alpha=5, graph_sigma=5, graph_layers=4, seq_alpha=1, seq_sigma=5, extra_candidates=10),
    "beauty": dict(graph_alpha=9, graph_sigma=6, graph_layers=4, seq_alpha=6, seq_sigma=6, extra_candidates=15),
    "toys": dict(graph_alpha=11, graph_sigma=5, graph_layers=4, seq_alpha=9, seq_sigma=5, extra_candidates=10),
}

_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}
_ALIASES = {"alpha": ("graph_alpha", "seq_alpha"), "sigma": ("graph_sigma", "seq_sigma")}


def _section_of(name: str) -> str:
    for section, cls in _SECTIONS.items():
        if name in {f.name for f in fields(cls)}:
            return section
    raise KeyError(name)


def _validate(data: dict) -> Config:
    try:
        cfg = TypeAdapter(Config).validate_python(data)
    except ValidationError as e:
        raise ValueError(f"invalid configuration:\n{e}") from None
    problems = []
    if cfg.model.size not in SIZES and not cfg.model.backbone:
        problems.append(f"model.size must be one of {SIZES}, got {cfg.model.size!r}")
    if unknown := set(cfg.train.tasks) - set(TASKS):
        problems.append(f"train.tasks: unknown task(s) {sorted(unknown)}; expected {TASKS}")
    if unknown := set(cfg.train.task_repeats) - set(TASKS):
        problems.append(f"train.task_repeats: unknown task(s) {sorted(unknown)}; expected {TASKS}")
    if bad := {t: n for t, n in cfg.train.task_repeats.items() if n < 1}:
        problems.append(f"train.task_repeats must be >= 1, got {bad}")
    if cfg.eval.direct_decode not in ("score", "beam", "sequential"):
        problems.append("eval.direct_decode must be 'score', 'beam' or 'sequential'")
    if cfg.train.seq_targets > 1 and cfg.model.id_tokens != "item":  # digit pieces would need </s> per item
        problems.append("train.seq_targets > 1 needs model.id_tokens 'item': in the digits scheme the items of a "
                        "continuation run together and the model would learn that </s> rarely follows an item")
    if cfg.model.causal_history and (cfg.model.id_tokens != "item" or cfg.train.seq_targets > 1):
        problems.append("model.causal_history needs model.id_tokens 'item' (one decoder step per prefix) and "
                        "train.seq_targets 1 (it trains every prefix's next item already)")
    if cfg.model.item_init != "random" and cfg.model.id_tokens != "item":
        problems.append(f"model.item_init {cfg.model.item_init!r} needs model.id_tokens 'item' (one token per item)")
    if cfg.model.last_item_start and not cfg.model.causal_history:
        problems.append("model.last_item_start needs model.causal_history (the path that trains it)")
    if cfg.model.hide_direct_edges and cfg.model.id_tokens != "item":
        problems.append("model.hide_direct_edges needs model.id_tokens 'item' (a direct label is one item token)")
    if cfg.model.user_start and cfg.model.id_tokens != "item":
        problems.append("model.user_start needs model.id_tokens 'item' (direct scoring in one decoder step)")
    if cfg.model.graph_head and cfg.model.id_tokens != "item":
        problems.append("model.graph_head needs model.id_tokens 'item' (one output row per item)")
    if cfg.model.direct_loss == "candidates" and cfg.model.id_tokens != "item":
        problems.append("model.direct_loss 'candidates' needs model.id_tokens 'item' (one output row per item)")
    if cfg.eval.direct_decode == "sequential" and cfg.model.id_tokens != "item":
        problems.append("eval.direct_decode 'sequential' needs model.id_tokens 'item' (one row scores every item)")
    if cfg.eval.direct_decode == "sequential" and "sequential" not in cfg.train.tasks:
        problems.append("eval.direct_decode 'sequential' needs a model trained on the sequential task "
                        "(it reads the sequential prompt's row)")
    if cfg.eval.direct_decode == "beam" and cfg.model.id_tokens == "item":
        problems.append("eval.direct_decode 'beam' needs model.id_tokens 'digits': with one token per item the "
                        "exact scores of all candidates are one softmax row ('score')")
    if cfg.train.select_by == "ndcg" and not {"sequential", "direct"} & set(cfg.train.tasks):
        problems.append("train.select_by 'ndcg' needs a ranking task (sequential or direct) in train.tasks")
    if cfg.train.device not in ("auto", "cpu", "cuda") and not cfg.train.device.startswith("cuda:"):
        problems.append("train.device must be auto, cpu or cuda")
    if cfg.eval.beams < cfg.eval.top_n:
        problems.append("eval.beams must be >= eval.top_n")
    positive = {
        "train.batch_size": cfg.train.batch_size, "train.epochs": cfg.train.epochs,
        "train.max_history": cfg.train.max_history, "train.n_negatives": cfg.train.n_negatives,
        "train.patience": cfg.train.patience, "train.seq_targets": cfg.train.seq_targets,
        "eval.beams": cfg.eval.beams, "eval.top_n": cfg.eval.top_n,
        "eval.eval_batch_size": cfg.eval.eval_batch_size, "eval.direct_beams": cfg.eval.direct_beams,
        "eval.explanation_beams": cfg.eval.explanation_beams, "model.n_soft_prompts": cfg.model.n_soft_prompts,
    }
    for name, value in positive.items():
        if value < 1:
            problems.append(f"{name} must be >= 1, got {value}")
    for name, value in {"train.valid_users": cfg.train.valid_users, "train.steps_per_epoch": cfg.train.steps_per_epoch,
                        "train.micro_batch_size": cfg.train.micro_batch_size,
                        "train.threads": cfg.train.threads, "train.length_groups": cfg.train.length_groups}.items():
        if value is not None and value < 1:
            problems.append(f"{name} must be >= 1 (or unset), got {value}")
    if cfg.train.loader_workers is not None and cfg.train.loader_workers < 0:
        problems.append(f"train.loader_workers must be >= 0 (or unset), got {cfg.train.loader_workers}")
    if cfg.train.n_negatives_start is not None and not 1 <= cfg.train.n_negatives_start <= cfg.train.n_negatives:
        problems.append(f"train.n_negatives_start must be between 1 and train.n_negatives = {cfg.train.n_negatives} "
                        f"(or unset), got {cfg.train.n_negatives_start}")
    if cfg.train.curriculum_epochs < 1:
        problems.append(f"train.curriculum_epochs must be >= 1, got {cfg.train.curriculum_epochs}")
    for name in ("seed", "valid_seed"):  # numpy's generators take non-negative seeds only
        if (getattr(cfg.train, name) or 0) < 0:
            problems.append(f"train.{name} must be >= 0, got {getattr(cfg.train, name)}")
    if not 0 <= cfg.train.label_smoothing < 1:
        problems.append(f"train.label_smoothing must be in [0, 1), got {cfg.train.label_smoothing}")
    if cfg.train.ema_decay is not None and not 0 < cfg.train.ema_decay < 1:
        problems.append(f"train.ema_decay must be between 0 and 1 (or unset), got {cfg.train.ema_decay}")
    if cfg.train.budget_minutes is not None and cfg.train.budget_minutes <= 0:
        problems.append("train.budget_minutes must be > 0 (or unset)")
    if cfg.eval.extra_candidates < 0 or cfg.model.graph_layers < 0:
        problems.append("eval.extra_candidates and model.graph_layers must be >= 0")
    if cfg.model.graph_self_weight < 0 or cfg.model.graph_self_weight + cfg.model.graph_layers == 0:
        problems.append(f"model.graph_self_weight must be >= 0, and > 0 when model.graph_layers is 0; got "
                        f"{cfg.model.graph_self_weight} with graph_layers {cfg.model.graph_layers}")
    if cfg.model.n_positions < cfg.train.max_history + 2:
        problems.append(f"model.n_positions must be >= train.max_history + 2 = {cfg.train.max_history + 2}")
    if cfg.preset is not None and cfg.preset not in PRESETS:
        problems.append(f"unknown preset {cfg.preset!r}; expected one of {sorted(PRESETS)}")
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))
    return cfg


_MAPPINGS = {"task_repeats"}  # dict fields, written KEY=N,KEY=N on the command line
_LISTS = {"tasks"}  # list fields, written A,B on the command line


def _parse_mapping(name: str, text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{name}: expected KEY=N[,KEY=N...], got {text!r}")
        out[key.strip()] = value.strip()
    return out


def positive_int(text: str) -> int:
    """argparse type for counts, of the CLI and the benchmark scripts: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def load_config(
    path: str | Path | None = None, preset: str | None = None, overrides: dict | None = None
) -> Config:
    """Layered configuration: defaults < preset < file (YAML or JSON) < overrides (flat field names)."""
    data: dict = {"model": {}, "train": {}, "eval": {}}
    if path is not None:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ValueError(f"{p}: configuration file not found") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML/JSON: {e}") from None
        if not isinstance(raw, dict) or set(raw) - {"model", "train", "eval", "preset"}:
            raise ValueError(f"{p}: expected a mapping with sections model, train, eval (and preset)")
        preset = preset or raw.get("preset")
        for s in _SECTIONS:
            data[s].update(raw.get(s) or {})
    flat: dict = {}
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        flat.update(PRESETS[preset])
    for s in _SECTIONS:  # file values win over the preset
        flat.update(data[s])
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, str) and key in _MAPPINGS:
            value = _parse_mapping(key, value)
        elif isinstance(value, str) and key in _LISTS:
            value = [x.strip() for x in value.split(",") if x.strip()]
        for name in _ALIASES.get(key, (key,)):
            flat[name] = value
    nested: dict = {"model": {}, "train": {}, "eval": {}, "preset": preset}
    for name, value in flat.items():
        try:
            nested[_section_of(name)][name] = value
        except KeyError:
            raise ValueError(f"unknown configuration field {name!r}") from None
    return _validate(nested)


def _flag_type(tp) -> tuple[typing.Callable, dict]:
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        tp, origin = args[0], typing.get_origin(args[0])
        args = list(typing.get_args(tp))  # e.g. the choices of an optional Literal
    if tp is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return None, {"choices": list(args)}
    if origin is list:
        return None, {"type": lambda s: [x for x in s.split(",") if x]}
    if origin is dict:
        return None, {"metavar": "KEY=N,..."}  # parsed by load_config
    return tp, {}


# fields whose unset value means "depends on the device"
_HELP = {"length_groups": "default: 4 on a CPU, 1 on a CUDA GPU",
         "id_tokens": "default: item for the built-in sizes, digits with --backbone",
         "loader_workers": "default: 0 on a CPU, 2 on a CUDA GPU"}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (``--graph-alpha``, ``--no-use-graph``) plus ``--alpha``/``--sigma``."""
    parser.add_argument("--config", help="YAML or JSON file with model/train/eval sections")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="hyper-parameters of the paper's Table 9")
    parser.add_argument("--alpha", type=float, help="set graph_alpha and seq_alpha")
    parser.add_argument("--sigma", type=float, help="set graph_sigma and seq_sigma")
    hints = {}
    for cls in _SECTIONS.values():
        hints.update(typing.get_type_hints(cls))
    for section, cls in _SECTIONS.items():
        group = parser.add_argument_group(f"{section} configuration")
        for f in fields(cls):
            conv, extra = _flag_type(hints[f.name])
            kwargs = {"dest": f"cfg_{f.name}", "default": None, **extra}
            if conv is not None and "type" not in kwargs:
                kwargs["type"] = conv
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            group.add_argument("--" + f.name.replace("_", "-"), help=_HELP.get(f.name, f"default: {default}"),
                               **kwargs)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    overrides["alpha"], overrides["sigma"] = args.alpha, args.sigma
    return load_config(args.config, args.preset, overrides)


def config_from_dict(data: dict) -> Config:
    return _validate(data)
