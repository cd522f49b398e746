"""Multi-task training (SPEC section 3): batches rotate explanation -> sequential -> direct, AdamW,
early stopping on the mean validation loss, atomic checkpoints and exact resume.

Every epoch draws its samples from a generator seeded by (seed, epoch) and reseeds torch (dropout)
the same way, so a run resumed from the last completed epoch continues exactly as an
uninterrupted one. Under torchrun (``distributed.Context``) every rank draws the same global
batches and trains on its share of each; gradients are summed over ranks so that N ranks follow the
single-process run; only rank 0 logs, shows progress and saves.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from . import checkpoint
from . import tasks as T
from .batching import Batch, chunks, default_length_groups, default_loader_workers, make_batch, prepared_batches
from .config import Config, TrainConfig
from .data import Dataset
from .distributed import Context, device_for
from .evaluation import evaluate
from .io import atomic_write_text
from .model import ELMRec, build_model
from .prompts import EVAL_TEMPLATE, TEMPLATES, item_text
from .recommender import Recommender
from .runtime import resolve_device, tune_cpu
from .tokenization import add_id_tokens, build_tokenizer, item_token_start

BEST, LAST, LOG_FILE = "best", "last", "log.jsonl"
RESUMABLE = ("epochs", "patience", "budget_minutes", "device", "threads", "micro_batch_size", "length_groups",
             "loader_workers")


def active_tasks(cfg: Config, dataset: Dataset) -> list[str]:
    """Tasks in rotation order; explanation only where the data has review sentences."""
    order = [t for t in T.TASK_IDS if t in cfg.train.tasks]
    return [t for t in order if t != T.EXPLANATION or dataset.has_explanations]


def item_prior_loss(
    batches: list[Batch], tokenizer: PreTrainedTokenizerBase, item_counts: np.ndarray, id_tokens: str = "digits",
    direct_candidates: bool = False,
) -> dict[str, float]:
    """The validation loss, per item task, of a model that ignores its prompt and draws the item
    by training frequency (+1): what the model's own validation loss has to go below before it can
    be said to read its prompt. Same batches and averaging as ``validation_loss`` (token mean per
    batch, weighted by samples); each token's probability is the frequency mass of the items that
    continue the prefix. Going below it is necessary, not sufficient: on direct prompts a model
    that reads only its candidate list (not the user) already goes far below it.
    ``direct_candidates`` (``ModelConfig.direct_loss`` "candidates"): a direct prompt's softmax runs
    over its candidates, so the prior's does too."""
    counts = np.asarray(item_counts, dtype=np.float64)[1:] + 1.0
    ids = tokenizer([item_text(i, id_tokens) for i in range(1, len(counts) + 1)])["input_ids"]
    mass: dict[tuple[int, ...], float] = {}
    for seq, c in zip(ids, counts):
        for k in range(len(seq) + 1):
            prefix = tuple(seq[:k])
            mass[prefix] = mass.get(prefix, 0.0) + c
    totals: dict[str, list[float]] = {}
    for b in batches:
        if b.task == T.EXPLANATION:
            continue
        nats = tokens = 0
        if direct_candidates and b.task == T.DIRECT:  # one item token per label, item k at start + k - 1
            start = item_token_start(tokenizer, len(counts))
            for prompt, row in zip(b.inputs["input_ids"].tolist(), b.labels.tolist()):
                listed = {t - start for t in prompt if start <= t < start + len(counts)}
                (target,) = (t - start for t in row if t != -100)
                nats += math.log(counts[sorted(listed)].sum() / counts[target])
                tokens += 1
            total = totals.setdefault(b.task, [0.0, 0])
            total[0] += nats / tokens * b.size
            total[1] += b.size
            continue
        for row in b.labels.tolist():
            seq = tuple(t for t in row if t != -100)
            nats += sum(math.log(mass[seq[:k]] / mass[seq[: k + 1]]) for k in range(len(seq)))
            tokens += len(seq)
        total = totals.setdefault(b.task, [0.0, 0])
        total[0] += nats / tokens * b.size
        total[1] += b.size
    return {task: s / n for task, (s, n) in totals.items()}


def forward_backward(
    model: ELMRec, batch: Batch, micro_batch_size: int | None = None, autocast=contextlib.nullcontext,
    length_groups: int | None = None, n_tokens: int | None = None, smoothing: float = 0.0,
) -> torch.Tensor:
    """Gradients of the batch's mean token loss, in chunks (see ``chunks``); returns the loss. Each
    chunk's mean is weighted by its share of the batch's label tokens, so the gradients are those of
    the whole batch while activations are held for one chunk at a time. The graph embeddings are
    propagated once per batch, not once per chunk. ``length_groups`` None: the device's default.
    ``n_tokens``: the label tokens of the whole global batch when ``batch`` is one rank's share.
    ``smoothing``: train.label_smoothing (training only; validation losses stay plain)."""
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if length_groups is None:
        length_groups = default_length_groups(batch.labels.device)
    n_tokens = n_tokens or (batch.labels != -100).sum()
    if not n_tokens:
        raise ValueError(f"a {batch.task} batch without target tokens")
    parts = list(chunks(batch, micro_batch_size, length_groups))
    graph = shared = None
    if len(parts) > 1 and model.needs_graph(batch.task):
        graph = model.graph_embeddings(model.training_edges(batch.task, batch.inputs["whole_word"], batch.labels))
        shared = graph.detach().requires_grad_(graph.requires_grad)
    total = torch.zeros((), device=batch.labels.device)
    for inputs, labels in parts:
        with autocast():
            loss = model(batch.task, **inputs, labels=labels, graph=shared, smoothing=smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {batch.task} loss")
        weighted = loss * ((labels != -100).sum() / n_tokens)
        weighted.backward()
        total += weighted.detach()
    if shared is not None and shared.grad is not None:
        graph.backward(shared.grad)
    return total


def direct_negatives(cfg: TrainConfig, epoch: int) -> int:
    """Negatives per direct training prompt in ``epoch`` (0-based): n_negatives, or the linear
    curriculum from n_negatives_start, which reaches n_negatives after curriculum_epochs epochs."""
    if cfg.n_negatives_start is None:
        return cfg.n_negatives
    share = min(1.0, epoch / cfg.curriculum_epochs)
    return round(cfg.n_negatives_start + share * (cfg.n_negatives - cfg.n_negatives_start))


def fresh_model(cfg: Config, dataset: Dataset, tokenizer_dir: Path | None = None) -> tuple[ELMRec, object]:
    """A new ELMRec for ``dataset`` (its training graph) and its tokenizer: the package's own
    (template words and training reviews, plus one token per id in the item scheme), the
    backbone's, or a resumed run's (``tokenizer_dir``)."""
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    elif cfg.model.backbone:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.backbone)
        if cfg.model.id_tokens == "item":
            add_id_tokens(tokenizer, dataset.n_users, dataset.n_items)
    else:  # only reviews the model may train on shape the vocabulary
        tokenizer = build_tokenizer([s.target for s in T.explanation_samples(dataset, "train")],
                                    id_tokens=cfg.model.id_tokens, n_users=dataset.n_users, n_items=dataset.n_items)
    model = build_model(cfg.model, dataset.n_users, dataset.n_items, *dataset.train_pairs(), len(tokenizer),
                        cfg.train.seed, item_token_start(tokenizer, dataset.n_items))
    return model, tokenizer


def validation_metrics(dataset: Dataset, users: np.ndarray, cfg: Config, tasks=(T.SEQUENTIAL, T.DIRECT)):
    """A ``validate`` callback for ``train``: HR@10 and NDCG@10 per task on ``users``' validation
    split, read from the model being trained exactly as ``evaluate`` reads a checkpoint."""

    def run(model: ELMRec, tokenizer) -> dict:
        model.eval()
        rec = Recommender(model, tokenizer, cfg, dataset.offsets, dataset.items, dataset.summary())
        out = {}
        for task in tasks:
            res = evaluate(rec, dataset, task, "valid", users=users, progress=False)
            out[task] = {k: res.metrics[k] for k in ("HR@10", "NDCG@10")}
        model.train()
        return out

    return run


class _Training:
    """One run: its state, its steps and its loop (``fit``); ``train`` sets it up or resumes it."""

    def __init__(self, cfg: Config, dataset: Dataset, out_dir: Path, ctx: Context | None = None,
                 tokenizer_dir: Path | None = None):
        ctx = ctx or Context()
        self.device = resolve_device(device_for(ctx, cfg.train.device))
        # settings whose unset value depends on the device are resolved here, so the run's
        # config.json and checkpoints say what ran (a resume on another device resolves anew)
        groups, workers = cfg.train.length_groups, cfg.train.loader_workers
        cfg = replace(cfg, train=replace(
            cfg.train, length_groups=groups or default_length_groups(self.device),
            loader_workers=default_loader_workers(self.device) if workers is None else workers))
        self.cfg, self.data, self.out = cfg, dataset, out_dir
        self.ctx = ctx
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.tasks = active_tasks(cfg, dataset)
        self.ranking_tasks = [t for t in self.tasks if t in (T.SEQUENTIAL, T.DIRECT)]  # what select_by ndcg reads
        if not self.tasks:
            raise ValueError(f"no trainable task among {cfg.train.tasks} for this dataset")
        self.model, self.tokenizer = fresh_model(cfg, dataset, tokenizer_dir)
        self.model.to(self.device)
        ctx.broadcast_model(self.model)  # the same seed built the same weights; this makes sure
        self.optimizer = torch.optim.AdamW(  # fused: one pass over each parameter (16% of a CPU step)
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        warmup = max(1, cfg.train.warmup_steps)
        # linear: the number of steps is known up front (every epoch has the same batch count)
        total = cfg.train.epochs * sum(1 for _ in self.epoch_batches(0)) if cfg.train.lr_schedule == "linear" else 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)) if total else 1.0),
        )
        # train.ema_decay: a moving average of the weights is what validation reads and checkpoints
        # hold; the trained weights ride in last/'s training state (for resume)
        self.ema = None
        if cfg.train.ema_decay is not None:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay))
        # best: the selection value of best/ (loss: lower is better; ndcg: higher is better)
        self.epoch, self.bad_epochs, self.elapsed = 0, 0, 0.0
        self.best, self.best_epoch = (math.inf if cfg.train.select_by == "loss" else -math.inf), 0
        self.best_loss = math.inf  # the mean validation loss of best/
        self.valid_batches = self._validation_batches()

    # --- data ---------------------------------------------------------------------------------
    def _validation_batches(self) -> list[Batch]:
        cfg, data = self.cfg, self.data
        seed = cfg.train.seed if cfg.train.valid_seed is None else cfg.train.valid_seed
        rng = np.random.default_rng(seed)
        users = data.users
        if cfg.train.valid_users is not None and cfg.train.valid_users < len(users):
            users = np.sort(rng.choice(users, cfg.train.valid_users, replace=False))
        self.valid_users = users  # also the users of the ranking validation (select_by ndcg)
        samples = {
            T.SEQUENTIAL: T.sequential_eval_samples(data, users, "valid", cfg.train.max_history),
            T.DIRECT: T.direct_eval_samples(data, users, "valid", seed, cfg.train.n_negatives),
            T.EXPLANATION: T.explanation_samples(data, "valid", limit=cfg.train.valid_users),
        }
        batches = []
        bs = cfg.eval.eval_batch_size * 2
        for task in self.tasks:
            s = samples[task]
            for k in range(0, len(s), bs):
                chunk = s[k : k + bs]
                batches.append(make_batch(chunk, [EVAL_TEMPLATE] * len(chunk), self.tokenizer,
                                          data.n_users, cfg, self.device))
        return batches

    def epoch_batches(self, epoch: int) -> Iterator[tuple[list[T.Sample], list[int]]]:
        """This epoch's batches, one task each, rotating over the tasks."""
        cfg, data = self.cfg, self.data
        rng = np.random.default_rng([cfg.train.seed, epoch])
        users = rng.permutation(data.users)  # every rank draws the same global batches

        def fresh(task: str) -> list[T.Sample]:
            return T.train_samples(task, data, users, rng, cfg.train.max_history,
                                   direct_negatives(cfg.train, epoch), cfg.train.seq_targets,
                                   cfg.model.causal_history)

        bs = cfg.train.batch_size
        # every task gets the same number of batches: one sample per user (or steps_per_epoch),
        # times its task_repeats (that many passes of fresh samples)
        cap = cfg.train.steps_per_epoch or math.ceil(len(users) / bs)
        repeats = {task: cfg.train.task_repeats.get(task, 1) for task in self.tasks}
        queues = {}
        for task in self.tasks:
            s = [x for _ in range(repeats[task]) for x in fresh(task)]
            chunks = [s[k : k + bs] for k in range(0, len(s), bs)][: cap * repeats[task]]
            queues[task] = [(c, rng.integers(len(TEMPLATES[task]), size=len(c)).tolist()) for c in chunks]
        for turn in range(max(math.ceil(len(queues[t]) / repeats[t]) for t in self.tasks)):
            for task in self.tasks:
                yield from queues[task][turn * repeats[task] : (turn + 1) * repeats[task]]

    # --- steps --------------------------------------------------------------------------------
    def autocast(self):
        """bf16 autocast (weights and optimizer stay fp32): on a GPU, or a CPU with bf16 matrix units
        (AMX, avx512_bf16; docs/performance.md)."""
        if self.cfg.train.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_epoch(self, deadline: float | None, progress: bool) -> tuple[dict, bool]:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed * 1000 + self.epoch)
        self.model.train()
        stats = {t: {"loss": 0.0, "batches": 0, "samples": 0, "seconds": 0.0} for t in self.tasks}
        ctx = self.ctx
        # this rank's share of every global batch (rows rank, rank + world, ...); a batch with fewer
        # rows than ranks (at most the last of a task's epoch) is skipped by all ranks
        batches = [(s[ctx.rank :: ctx.world], t[ctx.rank :: ctx.world]) for s, t in self.epoch_batches(self.epoch)
                   if len(s) >= ctx.world]
        ready = prepared_batches(batches, self.tokenizer, self.data.n_users, cfg, self.device,
                                 cfg.train.loader_workers)
        bar = tqdm(ready, total=len(batches), desc=f"epoch {self.epoch + 1}", disable=not progress or not ctx.main,
                   unit="batch", dynamic_ncols=True)
        out_of_time = False
        t0 = time.perf_counter()  # a step's time includes waiting for its batch
        try:
            for batch in bar:
                loss, size = self.step(batch)
                s = stats[batch.task]
                s["loss"] += loss
                s["batches"] += 1
                s["samples"] += size
                s["seconds"] += time.perf_counter() - t0
                bar.set_postfix({t[:3]: f"{v['loss'] / max(v['batches'], 1):.3f}" for t, v in stats.items()})
                t0 = time.perf_counter()
                # rank 0's clock decides for every rank
                if deadline is not None and ctx.broadcast_flag(time.time() > deadline, self.device):
                    out_of_time = True
                    break
        finally:  # a budget stop or an error ends the loader's workers now, not when collected
            bar.close()
            ready.close()
        summary = {
            t: {"loss": v["loss"] / max(v["batches"], 1),
                "samples_per_s": v["samples"] / v["seconds"] if v["seconds"] else 0.0,
                "batches": v["batches"]}
            for t, v in stats.items()
        }
        if T.DIRECT in summary:
            summary[T.DIRECT]["negatives"] = direct_negatives(cfg.train, self.epoch)
        return summary, out_of_time

    def step(self, batch: Batch) -> tuple[float, int]:
        """One optimiser step on one (global) batch, of which ``batch`` is this rank's share;
        returns the batch's loss and size. Failures name the way out."""
        cfg, ctx = self.cfg, self.ctx
        self.optimizer.zero_grad(set_to_none=True)
        n_tokens, size = ctx.all_reduce_sum([float((batch.labels != -100).sum()), float(batch.size)], self.device)
        try:
            loss = forward_backward(self.model, batch, cfg.train.micro_batch_size, self.autocast,
                                    cfg.train.length_groups, n_tokens=int(n_tokens),
                                    smoothing=cfg.train.label_smoothing)
        except FloatingPointError as e:
            raise FloatingPointError(
                f"{e} in epoch {self.epoch + 1}; lower --lr or the whole-word scales (--alpha), or enable "
                f"gradient clipping (the last good state is in {self.out / LAST})"
            ) from None
        except torch.cuda.OutOfMemoryError:
            raise MemoryError(
                f"out of GPU memory in a {batch.task} batch of {batch.size} in epoch {self.epoch + 1}; set "
                f"--micro-batch-size (e.g. 16: the same gradients, a quarter of the activations) or a smaller "
                f"--batch-size (the last good state is in {self.out / LAST})"
            ) from None
        ctx.all_reduce_grads(self.model)
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        (loss,) = ctx.all_reduce_sum([loss.item()], self.device)
        return loss, int(size)

    def evaluated_model(self) -> ELMRec:
        """The weights validation measures and checkpoints hold: the moving average (ema_decay) or
        the trained weights themselves."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def validation_loss(self) -> dict[str, float]:
        """Mean loss per task; ranks take turns over the batches and sum, so every rank gets the
        same numbers (and so takes the same early-stopping decision)."""
        model = self.evaluated_model()
        model.eval()  # also drops the graph cache of weights that have changed since
        totals: dict[str, list[float]] = {t: [0.0, 0] for t in self.tasks}
        for b in self.valid_batches[self.ctx.rank :: self.ctx.world]:
            with self.autocast():
                loss = model(b.task, **b.inputs, labels=b.labels)
            totals[b.task][0] += loss.item() * b.size
            totals[b.task][1] += b.size
        sums = self.ctx.all_reduce_sum([v for t in self.tasks for v in totals[t]], self.device)
        totals = {t: sums[2 * k : 2 * k + 2] for k, t in enumerate(self.tasks)}
        losses = {t: s / n for t, (s, n) in totals.items() if n}
        losses["mean"] = float(np.mean(list(losses.values()))) if losses else math.inf
        return losses

    def selection_value(self, valid: dict[str, float], metrics: dict | None) -> float:
        """What best/ is chosen by: the mean validation loss, or the mean validation NDCG@10 of the
        ranking tasks (rank 0 computes it; every rank gets its value, so all stop alike)."""
        if self.cfg.train.select_by == "loss":
            return valid["mean"]
        value = 0.0
        if self.ctx.main:
            ranked = self.ranking_tasks
            try:
                value = float(np.mean([metrics[t]["NDCG@10"] for t in ranked]))
            except (KeyError, TypeError):
                raise ValueError(f"select_by 'ndcg' needs NDCG@10 of {ranked} from the validate callback, "
                                 f"got {metrics!r}") from None
        return self.ctx.all_reduce_sum([value], self.device)[0]

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, progress: bool, echo, validate=None) -> str:
        """Epochs until ``epochs``, early stopping or the budget (counted from now); after each:
        validation, checkpoints (best/ when it improved, last/ always), then the log line. Returns
        why it stopped."""
        cfg, ctx = self.cfg, self.ctx
        start = time.time() - self.elapsed
        budget = cfg.train.budget_minutes
        deadline = time.time() + 60 * budget if budget is not None else None
        if self.epoch >= cfg.train.epochs or self.bad_epochs >= cfg.train.patience:
            stop = "early_stopping" if self.bad_epochs >= cfg.train.patience else "max_epochs"
            echo(f"nothing to do: the run already ended ({stop} after epoch {self.epoch}); "
                 "raise --epochs or --patience")
            return stop
        while self.epoch < cfg.train.epochs:
            train_stats, out_of_time = self.train_epoch(deadline, progress)
            self.epoch += 1
            valid = self.validation_loss()
            metrics = validate(self.evaluated_model(), self.tokenizer) if validate is not None and ctx.main else None
            value = self.selection_value(valid, metrics)
            improved = value < self.best if cfg.train.select_by == "loss" else value > self.best
            if improved:
                self.best, self.best_epoch, self.best_loss, self.bad_epochs = value, self.epoch, valid["mean"], 0
            else:
                self.bad_epochs += 1
            self.elapsed = time.time() - start
            record = {"epoch": self.epoch, "train": train_stats, "valid_loss": valid, "best": self.best,
                      "best_epoch": self.best_epoch, "elapsed_s": round(self.elapsed, 2),
                      "lr": self.scheduler.get_last_lr()[0]}
            if metrics is not None:
                record["valid_metrics"] = metrics
            if improved:
                self.save(BEST, with_state=False)
            self.save(LAST, with_state=True)
            self.log(record)  # after the checkpoint: a logged epoch is always a resumable one
            ctx.barrier()  # no rank runs ahead of the checkpoint (a failure there stops the job here)
            ranking = f", NDCG@10 {value:.4f}" if cfg.train.select_by == "ndcg" else ""
            echo(f"epoch {self.epoch}: " + ", ".join(f"{t} {v['loss']:.4f}" for t, v in train_stats.items())
                 + " | valid " + ", ".join(f"{t} {v:.4f}" for t, v in valid.items()) + ranking
                 + (" *" if improved else ""))
            if self.bad_epochs >= cfg.train.patience:
                return "early_stopping"
            if out_of_time:
                return "budget"
        return "max_epochs"

    # --- persistence --------------------------------------------------------------------------
    def save(self, name: str, with_state: bool) -> None:
        if not self.ctx.main:
            return
        state = None
        if with_state:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch,
                     "best_loss": self.best_loss, "bad_epochs": self.bad_epochs, "elapsed": self.elapsed}
            if self.ema is not None:
                state["trained_weights"] = self.model.state_dict()
                state["ema_updates"] = int(self.ema.n_averaged)
        self.evaluated_model().save_pretrained(self.out / name, self.tokenizer,
                                               checkpoint.run_files(self.data, self.cfg, state))

    def restore(self, directory: Path) -> None:
        model, _ = ELMRec.from_pretrained(directory, self.device)
        state = checkpoint.read_training_state(directory, self.device)
        if self.ema is not None:
            if "trained_weights" not in state:
                raise ValueError(f"{directory} was saved by a run without ema_decay: resume it without one")
            self.ema.module.load_state_dict(model.state_dict())
            self.ema.n_averaged.fill_(state["ema_updates"])
            self.model.load_state_dict(state["trained_weights"])
        else:
            self.model.load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best = state["epoch"], state["best"]
        # runs before select_by chose by loss and did not store these
        self.best_epoch, self.best_loss = state.get("best_epoch", 0), state.get("best_loss", state["best"])
        self.bad_epochs, self.elapsed = state["bad_epochs"], state["elapsed"]

    def log(self, record: dict) -> None:
        if self.ctx.main:
            with open(self.out / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def train(
    cfg: Config, dataset: Dataset, out_dir: str | Path, resume: bool = False, progress: bool = True,
    ctx: Context | None = None, echo=print, validate=None,
) -> dict:
    """Train ELMRec on ``dataset`` into ``out_dir`` (``best/`` and ``last/`` checkpoints, ``log.jsonl``,
    ``config.json``). With ``resume``, continue from ``out_dir/last`` with the run's saved config.

    ``validate(model, tokenizer) -> dict``, if given, is called after every epoch and its result
    (e.g. ``validation_metrics``: HR/NDCG per task) is logged; ``select_by`` says whether the
    validation loss or its NDCG@10 chooses best/ (``validation_metrics`` on the validation-loss
    users unless ``validate`` is given).
    ``ctx``: this process's rank under torchrun (``distributed.from_env()``); None: one process."""
    tune_cpu()
    ctx = ctx or Context()
    if not ctx.main:
        echo = lambda *a, **k: None  # noqa: E731 - rank 0 speaks for the job
    out = Path(out_dir)
    if resume:
        last = out / LAST
        if not (last / checkpoint.STATE_FILE).is_file():
            raise FileNotFoundError(f"{out}: nothing to resume (no {LAST}/{checkpoint.STATE_FILE})")
        saved = checkpoint.read_run_config(last)
        # a resumed run keeps its model, data and sampling settings; only how long and where it
        # runs may change (e.g. more epochs or a larger budget)
        for name in RESUMABLE:
            setattr(saved.train, name, getattr(cfg.train, name))
        cfg = saved
        fingerprint = checkpoint.read_fingerprint(last)
        if fingerprint != dataset.fingerprint():
            raise ValueError(f"{out}: the run was trained on dataset {fingerprint}, not {dataset.fingerprint()}")
    elif (out / LAST).exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    run = _Training(cfg, dataset, out, ctx, tokenizer_dir=out / LAST if resume else None)
    if resume:
        run.restore(out / LAST)
        if (out / LOG_FILE).exists():  # drop log lines of an epoch that did not complete
            lines = (out / LOG_FILE).read_text().splitlines()
            kept = [ln for ln in lines if json.loads(ln)["epoch"] <= run.epoch]
            atomic_write_text(out / LOG_FILE, "".join(k + "\n" for k in kept))
        echo(f"resuming after epoch {run.epoch} (best validation {run.cfg.train.select_by} {run.best:.4f})")
    else:
        if ctx.main:
            run.cfg.save(out / "config.json")
            (out / LOG_FILE).unlink(missing_ok=True)
        prior = item_prior_loss(run.valid_batches, run.tokenizer, dataset.item_counts(), run.cfg.model.id_tokens,
                                run.cfg.model.direct_loss == "candidates")
        run.log({"epoch": 0, "valid_loss": run.validation_loss(), "item_prior_loss": prior, "elapsed_s": 0.0})
        if prior:
            echo("validation loss of an item prior (training frequencies, prompt ignored): "
                 + ", ".join(f"{t} {v:.4f}" for t, v in prior.items())
                 + "; a model has to go below it to show that it reads its prompt")
    if validate is None and run.cfg.train.select_by == "ndcg":
        validate = validation_metrics(dataset, run.valid_users, run.cfg, run.ranking_tasks)
    stop = run.fit(progress, echo, validate)
    if not (out / BEST).is_dir():
        raise ValueError(f"{out}: no epoch gave a finite validation {run.cfg.train.select_by}, so there is no "
                         "best checkpoint")
    ndcg = {"best_valid_ndcg": run.best} if run.cfg.train.select_by == "ndcg" else {}
    return {"epochs": run.epoch, "best_valid_loss": run.best_loss, **ndcg, "best_epoch": run.best_epoch,
            "stopped": stop,
            "checkpoint": str(out / BEST), "elapsed_s": run.elapsed}


__all__ = ["train", "validation_metrics", "fresh_model", "active_tasks", "item_prior_loss", "BEST", "LAST"]
