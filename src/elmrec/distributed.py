"""Data parallelism under ``torchrun`` (torch.distributed: NCCL on GPUs, gloo on CPUs).

Every rank builds the same model (same seed; rank 0's weights are broadcast anyway) and draws the
same global batches from the same seeded stream, then trains on its own share of each one. Each
rank weights its loss by its tokens over the batch's tokens, so the gradients summed over ranks
(one all-reduce of the flat gradient per step) are the single-process batch's gradients. No
``DistributedDataParallel`` wrapper: a step runs one task, so most steps leave some parameters
(other tasks' soft prompts, the graph or the position table) without gradients, and micro-batches
run several backward passes per step; one explicit reduction after them is exact and simple.
Decisions (budget stop, early stopping) use numbers that are identical on every rank (reduced
sums, or rank 0's clock broadcast), so no rank waits for a collective that another skips.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_S = float(os.environ.get("ELMREC_DIST_TIMEOUT", 600))
_started_here = False  # from_env started the process group, so shutdown ends it


@dataclass(frozen=True)
class Context:
    """This process's place in the job; ``Context()`` is a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # --- collectives (no-ops for one process) ---------------------------------------------
    def all_reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag`` on every rank."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def all_reduce_grads(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient over ranks, in one flat buffer. A parameter that no rank
        used keeps ``grad None``, as in one process: AdamW then leaves it alone (no weight decay)."""
        if not self.active:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        used = [float(p.grad is not None) for p in params]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flag = params[0].grad.new_tensor(used)
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [flag])
        dist.all_reduce(flat)
        offset = 0
        for p, n_used in zip(params, flat[-len(params) :].tolist()):
            n = p.numel()
            if n_used:
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            else:
                p.grad = None
            offset += n

    def broadcast_model(self, model: torch.nn.Module) -> None:
        if self.active:
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, 0)

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def from_env() -> Context:
    """The job torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...),
    with its process group started; one process without them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    ctx = Context(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():  # NCCL for CUDA tensors, gloo for a --device cpu run on a GPU machine
            torch.cuda.set_device(ctx.local_rank)
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
        global _started_here
        _started_here = True
    return ctx


def device_for(ctx: Context, requested: str) -> str:
    """Each rank on its own GPU: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` under torchrun."""
    if ctx.active and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return requested


def shutdown(clean: bool) -> None:
    """End the process group that ``from_env`` started. After a clean run every rank first waits
    for the others, so none tears its connections down while a peer still works, then the
    process ends at once with code 0: gloo's threads could abort the interpreter's own teardown
    ("terminate called without an active exception", seen in about 1 of 50 two-rank runs on two
    busy cores) after all output was written; atexit handlers do not run then, and a script that
    calls ``cli.main`` under torchrun ends with it. After an error it neither waits nor exits
    (torchrun stops the other ranks; the error and its code go out as usual)."""
    global _started_here
    if not (_started_here and dist.is_initialized()):
        return
    if clean:
        dist.barrier()
    dist.destroy_process_group()
    _started_here = False
    if clean:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


__all__ = ["Context", "from_env", "device_for", "shutdown", "TIMEOUT_S"]
