"""Dropout with a cheaper mask on the CPU.

On a CPU PyTorch's dropout draws its mask with ``bernoulli_``, about twice the cost of a
``torch.rand`` of the same size. This one keeps an element where a uniform draw is >= p: the same
distribution (to float32 resolution) from another random stream, with a float32 saved mask (a
bool one was as slow as ``bernoulli_``). Other devices keep PyTorch's fused kernel
(docs/performance.md).
"""

from __future__ import annotations

import torch
from torch import nn


class _CpuDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        # the mask holds 0 or 1/(1-p) in float32 whatever x's dtype (bf16 would round 1/0.9 to
        # 1.109); a bf16 x is multiplied in float32 and rounded once
        scale = torch.rand(x.shape, device=x.device).ge_(p).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(scale)
        return (x * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return (grad * scale).to(grad.dtype), None


class Dropout(nn.Dropout):
    """``nn.Dropout`` that draws its CPU mask with ``torch.rand`` (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.p >= 1.0:
            return super().forward(x)
        return _CpuDropout.apply(x, self.p)


def replace_dropout(module: nn.Module) -> None:
    """Swap every ``nn.Dropout`` inside ``module`` for ``Dropout`` (same rate; no weights change)."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, Dropout(child.p, inplace=child.inplace))
        else:
            replace_dropout(child)
