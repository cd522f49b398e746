"""Does ELMRec compute on a GPU what it computes on the CPU?

The GPU path differs from the CPU one in several places: LightGCN propagates with torch's sparse
product instead of SciPy's, attention's softmax and its gradient are not computed in place,
dropout uses PyTorch's kernel, and bf16 autocast is the GPU's. This script trains a tiny model on
synthetic data on the device for a few steps (so that scores are not all alike), copies it to
the CPU, and compares the two on the same inputs:

- training: loss and every parameter's gradient for one batch of each task, fp32 (dropout off),
  the same batch in micro-batches on the device, and bf16 autocast against fp32 (on the device
  and on the CPU: bf16 gradients of a trained model are far off fp32 on both);
- inference: sequential beam search (top 10 items and their scores), direct scores of every
  candidate, the same in bf16 (``eval_amp``), explanations, and a checkpoint saved from the
  device and loaded on the CPU.

It prints one row per check with its limit and exits 1 if any check fails. ``--device cpu``
compares the CPU with itself (the test suite does this so that the script cannot rot).

    python benchmarks/gpu_check.py --device cuda --output gpu_check.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

from elmrec import tasks as T
from elmrec.batching import make_batch
from elmrec.config import Config, load_config, positive_int
from elmrec.data import Dataset
from elmrec.io import atomic_write_text
from elmrec.model import ELMRec
from elmrec.recommender import Recommender
from elmrec.runtime import machine_info, resolve_device
from elmrec.synthetic import make_synthetic
from elmrec.training import forward_backward, fresh_model

# (check, limit): relative differences for fp32, looser ones for bf16 (8-bit mantissa). A model's
# bf16 gradients drift from its fp32 ones as it trains (1-6% after 150 steps, 12-45% after 300, on
# a CPU with bf16 units as on a GPU), so they are judged against the CPU's bf16 ones
LIMITS = {
    "loss fp32": 1e-4, "gradients fp32": 1e-3, "gradients micro-batches": 1e-3,
    "loss bf16": 3e-2, "gradients bf16": 3.0, "direct scores fp32": 1e-4, "direct scores bf16": 2e-2,
    "sequential scores fp32": 1e-4,
}
# (check, minimum share): rankings may differ only where two scores tie within float noise
AGREEMENT = {"direct ranking fp32": 0.99, "sequential top 10 fp32": 0.95, "direct top 1 bf16": 0.9,
             "explanations fp32": 0.9, "checkpoint weights": 1.0}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||a|| (0 when both are 0): one figure per tensor, insensitive to its scale."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    norm = float(a.norm())
    return float((a - b).norm()) / norm if norm else float(b.norm())


def batches(dataset: Dataset, cfg: Config, tokenizer, size: int, seed: int) -> dict[str, tuple]:
    """One (samples, templates) batch of every task, the same for both devices."""
    rng = np.random.default_rng(seed)
    users = rng.choice(dataset.users, size, replace=False)
    samples = {t: T.train_samples(t, dataset, users, rng, cfg.train.max_history, cfg.train.n_negatives)[:size]
               for t in (T.SEQUENTIAL, T.DIRECT, T.EXPLANATION)}
    return {t: (s, rng.integers(4, size=len(s)).tolist()) for t, s in samples.items() if s}


def loss_and_gradients(model: ELMRec, batch, cfg: Config, micro: int | None = None, amp: bool = False):
    """One batch's loss and gradients with dropout off (the two devices draw different masks)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)  # noqa: E731
    with torch.enable_grad():  # each device chunks the batch as its training does (4 groups on a CPU, 1 on CUDA)
        loss = forward_backward(model, batch, micro, autocast, cfg.train.length_groups)
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


def worst_gradient(a: dict, b: dict) -> tuple[float, str]:
    """The largest relative difference over parameters, and which parameter it is."""
    if a.keys() != b.keys():
        return float("inf"), f"different parameters received gradients: {sorted(a.keys() ^ b.keys())[:3]}"
    return max((relative(a[n], b[n]), n) for n in a)


def whole_gradient(a: dict, b: dict) -> tuple[float, str]:
    """The relative difference of all gradients as one vector: bf16 moves some small gradients
    (e.g. of an attention key) by more than their size, which says little about the update."""
    if a.keys() != b.keys():
        return worst_gradient(a, b)
    if not all(torch.isfinite(g).all() for g in b.values()):
        return float("inf"), "non-finite gradients"
    value = relative(torch.cat([a[n].flatten() for n in a]), torch.cat([b[n].flatten() for n in a]))
    worst, name = worst_gradient(a, b)
    return value, f"worst parameter {name} ({worst:.3g})"


def check_training(cpu: ELMRec, dev: ELMRec, dataset: Dataset, cfg: Config, tokenizer, size: int) -> list[dict]:
    rows = []
    for task, (samples, templates) in batches(dataset, cfg, tokenizer, size, seed=7).items():
        b_cpu = make_batch(samples, templates, tokenizer, dataset.n_users, cfg, torch.device("cpu"))
        b_dev = make_batch(samples, templates, tokenizer, dataset.n_users, cfg, next(dev.parameters()).device)
        loss_c, grad_c = loss_and_gradients(cpu, b_cpu, cfg)
        loss_d, grad_d = loss_and_gradients(dev, b_dev, cfg)
        loss_m, grad_m = loss_and_gradients(dev, b_dev, cfg, micro=max(1, size // 4))
        loss_b, grad_b = loss_and_gradients(dev, b_dev, cfg, amp=True)
        _, grad_cb = loss_and_gradients(cpu, b_cpu, cfg, amp=True)
        off_dev, off_cpu = whole_gradient(grad_d, grad_b)[0], whole_gradient(grad_c, grad_cb)[0]
        rows += [
            {"check": "loss fp32", "task": task, "value": abs(loss_c - loss_d) / abs(loss_c),
             "detail": f"cpu {loss_c:.6f} device {loss_d:.6f}"},
            {"check": "gradients fp32", "task": task, **dict(zip(("value", "detail"), worst_gradient(grad_c, grad_d)))},
            {"check": "gradients micro-batches", "task": task,
             **dict(zip(("value", "detail"), worst_gradient(grad_d, grad_m))), "loss": loss_m},
            {"check": "loss bf16", "task": task, "value": abs(loss_d - loss_b) / abs(loss_d),
             "detail": f"fp32 {loss_d:.6f} bf16 {loss_b:.6f}"},
            {"check": "gradients bf16", "task": task, "value": off_dev / max(off_cpu, 1e-3),
             "detail": f"device bf16 off its fp32 by {off_dev:.3g}, CPU bf16 by {off_cpu:.3g}"},
        ]
    return rows


def top_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of a row's items (0 = none) that the other row holds too."""
    return float(np.mean([len(set(x[x > 0]) & set(y[y > 0])) / max(1, (x > 0).sum()) for x, y in zip(a, b)]))


def check_inference(cpu: ELMRec, dev: ELMRec, dataset: Dataset, cfg: Config, tokenizer, n_users: int) -> list[dict]:
    make = lambda m, c=cfg: Recommender(m, tokenizer, c, dataset.offsets, dataset.items, dataset.summary())  # noqa: E731
    rec_c, rec_d = make(cpu), make(dev)
    rec_b = make(dev, replace(cfg, eval=replace(cfg.eval, eval_amp=True)))
    users = np.random.default_rng(3).choice(dataset.users, min(n_users, len(dataset.users)), replace=False)
    hist = [dataset.split_history(int(u), "test") for u in users]
    cands = np.concatenate([dataset.targets("test")[users][:, None], dataset.negatives[users]], 1)
    rows = []

    items_c, scores_c, _ = rec_c.generate_sequential(users, hist)
    items_d, scores_d, _ = rec_d.generate_sequential(users, hist)
    same = np.all(items_c == items_d, axis=1)
    rows.append({"check": "sequential top 10 fp32", "value": top_overlap(items_c, items_d),
                 "detail": f"{same.mean():.3f} of users get the same list in the same order"})
    rows.append({"check": "sequential scores fp32",  # no agreeing list: nothing to compare, a failure
                 "value": relative(torch.as_tensor(scores_c[same]), torch.as_tensor(scores_d[same]))
                 if same.any() else float("inf"), "detail": f"the {same.sum()} users whose lists agree"})

    direct_c = rec_c.score_candidates(users, hist, cands)
    direct_d = rec_d.score_candidates(users, hist, cands)
    direct_b = rec_b.score_candidates(users, hist, cands)
    rows.append({"check": "direct scores fp32", "value": relative(torch.as_tensor(direct_c), torch.as_tensor(direct_d)),
                 "detail": f"max abs difference {np.abs(direct_c - direct_d).max():.2e}"})
    rank_c, rank_d = np.argsort(-direct_c, 1, kind="stable"), np.argsort(-direct_d, 1, kind="stable")
    rows.append({"check": "direct ranking fp32", "value": float((rank_c == rank_d).mean()),
                 "detail": "share of (user, rank) positions holding the same candidate"})
    rows.append({"check": "direct scores bf16", "value": relative(torch.as_tensor(direct_d), torch.as_tensor(direct_b)),
                 "detail": f"max abs difference {np.abs(direct_d - direct_b).max():.2e}"})
    rows.append({"check": "direct top 1 bf16", "value": float((direct_d.argmax(1) == direct_b.argmax(1)).mean()),
                 "detail": "same best candidate in bf16 and fp32"})

    if dataset.has_explanations and T.EXPLANATION in cfg.train.tasks:
        pairs = [(int(u), int(h[-1])) for u, h in zip(users[:16], hist[:16])]
        text_c, text_d = rec_c.explain_batch(pairs), rec_d.explain_batch(pairs)
        rows.append({"check": "explanations fp32", "value": float(np.mean([a == b for a, b in zip(text_c, text_d)])),
                     "detail": f"e.g. {text_d[0]!r}"})

    with tempfile.TemporaryDirectory() as tmp:
        dev.save_pretrained(tmp + "/ck", tokenizer)
        loaded, _ = ELMRec.from_pretrained(tmp + "/ck", "cpu")
        a, b = cpu.state_dict(), loaded.state_dict()
        equal = [bool(torch.equal(a[k].cpu(), b[k])) for k in a]
        rows.append({"check": "checkpoint weights", "value": float(np.mean(equal)),
                     "detail": "saved from the device, loaded on the CPU, equal to the CPU copy"})
    return rows


def judge(rows: list[dict]) -> list[dict]:
    """Mark each row ok or not against its limit (differences) or minimum (agreements)."""
    for r in rows:
        if r["check"] in LIMITS:
            r["limit"], r["ok"] = f"<= {LIMITS[r['check']]:g}", bool(r["value"] <= LIMITS[r["check"]])
        else:
            r["limit"], r["ok"] = f">= {AGREEMENT[r['check']]:g}", bool(r["value"] >= AGREEMENT[r["check"]])
    return rows


def train_briefly(model: ELMRec, dataset: Dataset, cfg: Config, tokenizer, steps: int) -> float:
    """A few AdamW steps on the device (tasks in rotation), so that scores differ between items."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    device = next(model.parameters()).device
    rng = np.random.default_rng(0)
    model.train()
    loss = float("nan")
    for step in range(steps):
        task = cfg.train.tasks[step % len(cfg.train.tasks)]
        users = rng.choice(dataset.users, cfg.train.batch_size)
        samples = T.train_samples(task, dataset, users, rng, cfg.train.max_history,
                                  cfg.train.n_negatives)[: cfg.train.batch_size]
        batch = make_batch(samples, rng.integers(4, size=len(samples)).tolist(), tokenizer, dataset.n_users, cfg,
                           device)
        opt.zero_grad(set_to_none=True)
        loss = float(forward_backward(model, batch, None, length_groups=cfg.train.length_groups))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return loss


def setup(size: str) -> tuple[Dataset, Config]:
    """The synthetic data (planted transitions, explanations) and config compared on."""
    dataset = make_synthetic(n_users=600, n_items=40, n_communities=4, p_successor=0.9, min_len=4, max_len=8,
                             n_negatives=19, seed=0)
    # the digits scheme: its beam search and prefix-tree scoring are the GPU paths with custom kernels
    cfg = load_config(overrides=dict(size=size, id_tokens="digits", graph_alpha=3.0, seq_alpha=0.1, lr=3e-3,
                                     batch_size=32, n_negatives=19, tasks=["explanation", "sequential", "direct"],
                                     seed=0))
    return dataset, cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="the device to compare with the CPU (cuda, cuda:1, cpu)")
    p.add_argument("--size", default="tiny", choices=("tiny", "cpu", "small"))
    p.add_argument("--train-steps", type=positive_int, default=150, help="steps on the device before comparing")
    p.add_argument("--batch-size", type=positive_int, default=16, help="samples per compared training batch")
    p.add_argument("--users", type=positive_int, default=64, help="users for the inference checks")
    p.add_argument("--output", help="JSON report")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        p.error(str(e))
    torch.manual_seed(0)
    dataset, cfg = setup(args.size)
    t0 = time.time()
    dev, tokenizer = fresh_model(cfg, dataset)
    dev = dev.to(device)
    loss = train_briefly(dev, dataset, cfg, tokenizer, args.train_steps)
    cpu = copy.deepcopy(dev).to("cpu")
    cpu._torch_adjacency = None  # the CPU copy propagates with SciPy, as CPU training does
    print(f"trained {args.train_steps} steps on {device} (last loss {loss:.3f}) in {time.time() - t0:.1f} s",
          flush=True)
    rows = judge(check_training(cpu, dev, dataset, cfg, tokenizer, args.batch_size)
                 + check_inference(cpu, dev, dataset, cfg, tokenizer, args.users))
    for r in rows:
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']:26s} {r.get('task', ''):12s} {r['value']:.3g} "
              f"({r['limit']})  {r['detail']}", flush=True)
    failed = [r for r in rows if not r["ok"]]
    print(f"gpu_check: {len(rows) - len(failed)} of {len(rows)} checks within their limits")
    if args.output:
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        report = {"device": str(device), "gpu": gpu, "size": args.size, "train_steps": args.train_steps,
                  "last_train_loss": loss, "checks": rows, "machine": machine_info(),
                  "argv": sys.argv[1:] if argv is None else argv, "date": time.strftime("%Y-%m-%d %H:%M")}
        atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
