"""elmrec.attention against plain autograd attention: values and every gradient."""

import pytest
import torch

from elmrec.attention import _BiasedAttention, _tree_attention


def _reference(query, key, value, bias, mask, scaling, causal):
    scores = query @ key.transpose(-1, -2) * scaling
    if bias is not None:
        scores = scores + bias
    if mask is None and causal:
        q, k = scores.shape[-2:]
        mask = torch.ones(q, k, dtype=torch.bool).tril(k - q)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool \
            else scores + mask
    return torch.softmax(scores, -1) @ value


def _inputs(B=3, H=2, q=5, k=7, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(B, H, n, D, generator=g, requires_grad=True) for n in (q, k, k)]
    bias = torch.randn(1, H, q, k, generator=g, requires_grad=True)
    return tensors, bias


def _grads(fn, tensors, bias, *args):
    out = fn(*tensors, bias, *args)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = [t.grad.clone() for t in (*tensors, bias)]
    for t in (*tensors, bias):
        t.grad = None
    return out.detach(), grads


padding = torch.ones(3, 1, 1, 7, dtype=torch.bool)
padding[1, ..., 5:] = False  # sample 1 has two padded keys
blocked_row = torch.ones(3, 1, 5, 7, dtype=torch.bool)
blocked_row[2, 0, 3] = False  # one query that may attend to nothing (uniform weights, no gradient)
additive = torch.zeros(3, 1, 1, 7).masked_fill(~padding, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("mask, scaling, causal", [
    (padding, 1.0, False), (blocked_row, 1.0, False), (additive, 0.5, False), (None, 1.0, True),
    (None, 1.0, False),
], ids=["padding", "row-blocked", "additive-scaled", "causal", "none"])
def test_hand_written_backward_matches_autograd(mask, scaling, causal):
    tensors, bias = _inputs()
    ours, ours_grads = _grads(_BiasedAttention.apply, tensors, bias, mask, scaling, causal)
    ref, ref_grads = _grads(_reference, tensors, bias, mask, scaling, causal)
    torch.testing.assert_close(ours, ref)
    for name, a, b in zip(("query", "key", "value", "bias"), ours_grads, ref_grads):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")


def test_hand_written_backward_under_bf16_autocast():
    """--amp: the backward runs in the forward's autocast and returns gradients in the inputs'
    dtypes, close to the fp32 ones at bf16 precision."""
    tensors, bias = _inputs()
    _, fp32 = _grads(_BiasedAttention.apply, tensors, bias, padding, 1.0, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _BiasedAttention.apply(*tensors, bias, padding, 1.0, False)
    assert out.dtype == torch.bfloat16
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    for t, ref in zip((*tensors, bias), fp32):
        assert t.grad.dtype == torch.float32
        torch.testing.assert_close(t.grad, ref, rtol=0.05, atol=0.05)


def test_tree_attention_decodes_each_node_as_if_alone():
    """Candidate scoring: every node of a prefix tree must see exactly its ancestors and itself,
    with the bias of their distance in its own decoding (depth), not in the packed sequence."""
    parents = [[0, 0, 1, 1, 0, 4], [0, 0, 1, 2, 3, 5]]  # a node's parent; the root (and padding): itself
    B, H, T, D = 2, 3, 6, 5
    up = torch.tensor(parents)
    depth = torch.zeros(B, T, dtype=torch.long)
    ancestors = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)
    for b in range(B):
        for i in range(T):
            j = i
            while up[b, j] != j:
                j = int(up[b, j])
                ancestors[b, i, j] = True
                depth[b, i] += 1
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    table = torch.randn(H, 2 * T + 1, generator=g)
    packed = torch.arange(T)
    packed_bias = table[:, packed[None, :] - packed[:, None] + T][None]  # what T5 computes, j - i
    got = _tree_attention(q, k, v, packed_bias, (depth, ancestors), 1.0)
    for b in range(B):
        for i in range(T):
            path = ancestors[b, i].nonzero().squeeze(1)  # parents first: depth order
            bias = table[:, depth[b, path] - depth[b, i] + T]  # (H, len(path))
            weights = torch.softmax(torch.einsum("hd,hjd->hj", q[b, :, i], k[b][:, path]) + bias, -1)
            torch.testing.assert_close(got[b, :, i], torch.einsum("hj,hjd->hd", weights, v[b][:, path]))


def test_candidate_trees_refuse_the_training_path():
    """Packed candidates must never reach the attention that does not keep them apart."""
    from types import SimpleNamespace

    from elmrec.attention import biased_attention

    (q, k, v), bias = _inputs(q=7)
    module = SimpleNamespace(is_causal=True, is_decoder=True, training=True)
    with pytest.raises(ValueError, match="without gradients"):
        biased_attention(module, q, k, v, None, position_bias=bias, candidate_tree=(None, None))
