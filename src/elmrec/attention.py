"""T5 attention for ELMRec: the same results as transformers' reference (eager) attention, with
fewer passes over the (batch, heads, L, L) score tensor, which is what a direct prompt of 100
candidates (about 430 tokens) spends its time on.

- Training: a hand-written backward. T5's relative position bias is learned, so PyTorch's fused
  CPU kernels cannot take it; autograd through "scores + bias, masked_fill, softmax" costs a copy
  and a masked fill of the score gradient per layer, which the softmax gradient (zero wherever
  the probability is zero) makes unnecessary. The padding mask is one additive row, and softmax
  and its gradient overwrite their input.
- Inference: SDPA's fused kernel, given the smallest mask that is exact: cross-attention has no
  position bias (T5's is all zeros there), so it gets the padding mask alone instead of a
  (batch, heads, L, S) bias tensor; and candidate scoring (``generation.candidate_log_likelihood``)
  decodes the prefix tree of 100 ids as one sequence, each node attending to its ancestors.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "elmrec"


def _fill_mask(scores: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor | None:
    """Mask scores in place; returns the boolean "may attend" mask, or None if nothing is masked."""
    if mask is None and causal and scores.shape[-2] > 1:
        q, k = scores.shape[-2:]
        mask = torch.arange(q, device=scores.device)[:, None] + (k - q) >= torch.arange(k, device=scores.device)
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        if mask.shape[-2] == 1 < scores.shape[-2]:  # padding only: an additive row is 3x cheaper
            scores.add_(torch.zeros(mask.shape, dtype=scores.dtype, device=mask.device)
                        .masked_fill_(~mask, torch.finfo(scores.dtype).min))
        else:
            scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
        return mask
    scores.add_(mask)  # additive float mask
    return mask > torch.finfo(scores.dtype).min / 2


class _BiasedAttention(torch.autograd.Function):
    """softmax(Q K^T * scaling + bias, masked) V with a backward that skips the mask: where the
    softmax output is 0 its gradient is 0 as well, so masked scores get none."""

    @staticmethod
    def forward(ctx, query, key, value, bias, mask, scaling: float, causal: bool):
        scores = torch.matmul(query, key.transpose(-1, -2))
        if scaling != 1.0:
            scores.mul_(scaling)
        if bias is not None:
            scores.add_(bias)
        allowed = _fill_mask(scores, mask, causal)
        device = query.device.type
        if device == "cpu" and not torch.is_autocast_enabled(device):  # in place: one (B, H, L, L)
            probs = torch.ops.aten._softmax.out(scores, -1, False, out=scores)  # tensor fewer per layer
        else:  # autocast picks the dtype; in-place kernels are checked on the CPU only (tests)
            probs = torch.softmax(scores, dim=-1)
        del scores
        # a row with no allowed key gets uniform weights (as in the reference); its gradient must
        # still not reach the masked scores, so keep the mask only where such rows exist (on a GPU
        # a host sync per layer, which was still faster than always masking; docs/gpu.md)
        blocked = None
        if allowed is not None and not allowed.any(-1).all():
            blocked = ~allowed
        ctx.save_for_backward(query, key, value, probs, blocked)
        ctx.scaling, ctx.bias_shape = scaling, None if bias is None else bias.shape
        # the backward runs under the forward's autocast (as custom_bwd does)
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return torch.matmul(probs, value)

    @staticmethod
    def backward(ctx, grad_out):
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _BiasedAttention._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        query, key, value, probs, blocked = ctx.saved_tensors
        grad_value = torch.matmul(probs.transpose(-1, -2), grad_out)
        grad_probs = torch.matmul(grad_out, value.transpose(-1, -2)).to(probs.dtype)
        if grad_probs.device.type == "cpu":  # in place
            grad_scores = torch.ops.aten._softmax_backward_data.out(grad_probs, probs, -1, probs.dtype,
                                                                    grad_input=grad_probs)
        else:
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del grad_probs
        if blocked is not None:
            grad_scores.masked_fill_(blocked, 0.0)
        grad_bias = None
        if ctx.bias_shape is not None and ctx.needs_input_grad[3]:
            grad_bias = grad_scores.sum_to_size(ctx.bias_shape)
        if ctx.scaling != 1.0:
            grad_scores.mul_(ctx.scaling)
        grad_query = torch.matmul(grad_scores, key) if ctx.needs_input_grad[0] else None
        grad_key = torch.matmul(grad_scores.transpose(-1, -2), query) if ctx.needs_input_grad[1] else None
        return grad_query, grad_key, grad_value, grad_bias, None, None, None


def _dropout_attention(module, query, key, value, mask, scaling, dropout, position_bias):
    """Plain autograd, for training with attention dropout (off by default, see ModelConfig)."""
    scores = torch.matmul(query, key.transpose(-1, -2))
    if scaling != 1.0:
        scores.mul_(scaling)
    if position_bias is not None:
        scores.add_(position_bias)
    _fill_mask(scores, mask, getattr(module, "is_causal", False))
    probs = F.dropout(torch.softmax(scores, dim=-1), p=dropout, training=module.training)
    return torch.matmul(probs, value)


def _tree_attention(query, key, value, position_bias, tree, scaling: float) -> torch.Tensor:
    """Candidate scoring's self-attention over a prefix tree (``generation.PrefixTree``): each
    node attends to itself and its ancestors, with the bias of their distance in depth, which is
    what it would see decoded alone. T5's bias depends only on the distance j - i, so row L - 1 of
    the packed sequence's bias holds it for every distance 0..L-1 (T >= L: a node at depth L - 1
    has L - 1 ancestors)."""
    depth, ancestors = tree
    L = int(depth.max()) + 1
    table = position_bias[0, :, L - 1, L - 1 - torch.arange(L, device=depth.device)]  # (H, L) by distance
    distance = (depth[:, :, None] - depth[:, None, :]).clamp_(0, L - 1)  # (B, T, T)
    bias = table[:, distance].transpose(0, 1).to(query.dtype)  # (B, H, T, T)
    bias.masked_fill_(~ancestors[:, None], torch.finfo(bias.dtype).min)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scaling)


def _padding_only(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A bidirectional boolean mask depends on the key alone: keep one query row (a view)."""
    return mask[:, :, :1, :] if mask is not None and mask.dtype == torch.bool else mask


def _inference_attention(module, query, key, value, mask, scaling, position_bias, kwargs):
    tree = kwargs.get("candidate_tree")
    if module.is_causal and tree is not None and query.shape[-2] == key.shape[-2]:
        out = _tree_attention(query, key, value, position_bias, tree, scaling)
        return out.transpose(1, 2).contiguous(), None
    if not module.is_causal and (mask is None or mask.dtype == torch.bool):
        mask = _padding_only(mask)
        if module.is_decoder:  # cross-attention: T5's position bias is all zeros here
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
            return out.transpose(1, 2).contiguous(), None
        if mask is not None and position_bias is not None:  # encoder: bias + padding, one broadcast add
            zero = torch.zeros((), dtype=position_bias.dtype, device=position_bias.device)
            mask = position_bias + torch.where(mask, zero, torch.finfo(position_bias.dtype).min)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
            return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, mask, scaling=scaling, position_bias=position_bias,
                                  **kwargs)


def biased_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None,
                     **kwargs):
    """The attention function registered as ``"elmrec"`` (see the module docstring)."""
    scaling = 1.0 if scaling is None else scaling
    if not torch.is_grad_enabled():
        return _inference_attention(module, query, key, value, attention_mask, scaling, position_bias, kwargs)
    if kwargs.get("candidate_tree") is not None:  # the training path does not keep candidates apart
        raise ValueError("candidate scoring (candidate_tree) runs without gradients")
    if dropout and module.training:
        out = _dropout_attention(module, query, key, value, attention_mask, scaling, dropout, position_bias)
    else:
        causal = getattr(module, "is_causal", False)
        mask = attention_mask if causal else _padding_only(attention_mask)
        out = _BiasedAttention.apply(query, key, value, position_bias, mask, scaling, causal)
    return out.transpose(1, 2).contiguous(), None


def _bool_mask(*args, **kwargs):
    """Boolean masks; None only for a padding-free bidirectional batch (causality is applied above)."""
    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False, "allow_is_bidirectional_skip": True})


AttentionInterface.register(NAME, biased_attention)
AttentionMaskInterface.register(NAME, _bool_mask)
