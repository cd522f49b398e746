"""The user-item graph of TRAINING interactions and LightGCN propagation over it, and the
item-item graph of training sequences (``cooccurrence_embedding``).

Node indices match the graph-aware whole-word indices: user u -> u, item i -> n_users + i, and
node 0 is an isolated padding node.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh


def normalized_adjacency(n_users: int, n_items: int, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    """A_hat = D^-1/2 A D^-1/2 of the symmetric bipartite graph (float32 CSR).

    ``users``/``items`` must be training interactions only (Dataset.train_pairs); repeated pairs
    count once.
    """
    n = n_users + n_items + 1
    pairs = np.unique(np.stack([np.asarray(users), np.asarray(items)], axis=1), axis=0)
    u, i = pairs[:, 0], n_users + pairs[:, 1]
    rows, cols = np.concatenate([u, i]), np.concatenate([i, u])
    degree = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = np.zeros(n)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    values = (inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32)
    return sp.csr_matrix((values, (rows, cols)), shape=(n, n))


def without_edges(adjacency: sp.csr_matrix, a: np.ndarray, b: np.ndarray) -> sp.csr_matrix:
    """The A_hat of the same graph with the edges (a[k], b[k]) (node indices, both directions)
    taken out and the degrees renormalised; pairs that are not edges change nothing."""
    binary = adjacency.copy()
    binary.data = np.ones_like(binary.data)
    a, b = np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)  # own copies: scipy indexes in place
    present = np.asarray(binary[a, b]).ravel() > 0  # setting only existing entries keeps the structure
    binary[a[present], b[present]] = 0
    binary[b[present], a[present]] = 0
    binary.eliminate_zeros()
    degree = np.asarray(binary.sum(1)).ravel()
    inv_sqrt = np.zeros(len(degree), dtype=np.float32)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    return sp.csr_matrix(sp.diags(inv_sqrt) @ binary @ sp.diags(inv_sqrt), dtype=np.float32)


def _propagate_numpy(adjacency: sp.csr_matrix, x: np.ndarray, layers: int, self_weight: float) -> np.ndarray:
    out = x * np.float32(self_weight)
    h = x
    for _ in range(layers):
        h = adjacency @ h
        out += h
    out *= 1.0 / (layers + self_weight)
    return out


class _LightGCN(torch.autograd.Function):
    """E = P E0 with P = (wI + A + ... + A^L) / (w + L) on the CPU. A is symmetric, so P is too and the
    gradient is P G: the same propagation. SciPy's CSR product is 2-4x faster than torch's CPU
    sparse kernels, and this runs in every direct/explanation training step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, adjacency: sp.csr_matrix, layers: int, self_weight: float) -> torch.Tensor:
        ctx.adjacency, ctx.layers, ctx.self_weight = adjacency, layers, self_weight
        return torch.from_numpy(_propagate_numpy(adjacency, x.detach().numpy(), layers, self_weight))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = _propagate_numpy(ctx.adjacency, grad.contiguous().numpy(), ctx.layers, ctx.self_weight)
        return torch.from_numpy(g), None, None, None


def to_torch_sparse(adjacency: sp.csr_matrix, device, dtype) -> torch.Tensor:
    """The adjacency as a torch sparse tensor, for propagation on a GPU (build it once)."""
    coo = adjacency.tocoo()
    return torch.sparse_coo_tensor(
        torch.as_tensor(np.stack([coo.row, coo.col]), dtype=torch.long), torch.as_tensor(coo.data),
        adjacency.shape, device=device, dtype=dtype, check_invariants=True,
    ).coalesce()


def lightgcn(
    adjacency: sp.csr_matrix | torch.Tensor, features: torch.Tensor, layers: int, self_weight: float = 1.0
) -> torch.Tensor:
    """(w E0 + A_hat E0 + ... + A_hat^L E0) / (w + L): no weights, no non-linearity; differentiable
    in E0.

    ``self_weight`` w = 1 is LightGCN's mean (the paper). With random E0, a node's own row dominates that mean (its norm
    is several times the propagated layers'), so w < 1 is offered as a departure that lets the
    graph speak louder. ``adjacency`` is the SciPy matrix (CPU, float32: the fast path) or a torch
    sparse tensor on the features' device (see :func:`to_torch_sparse`)."""
    if isinstance(adjacency, sp.spmatrix):
        if features.device.type == "cpu" and features.dtype == torch.float32:
            return _LightGCN.apply(features, adjacency, layers, self_weight)
        adjacency = to_torch_sparse(adjacency, features.device, features.dtype)
    out, h = features * self_weight, features
    for _ in range(layers):
        h = torch.sparse.mm(adjacency, h)
        out = out + h
    return out / (layers + self_weight)


def cooccurrence_embedding(
    users: np.ndarray, items: np.ndarray, n_items: int, dim: int, window: int = 3, seed: int = 0
) -> np.ndarray:
    """(n_items + 1, dim) float32 spectral item vectors of the training sequences: rows 1..n_items
    are V sqrt(L) for the ``dim`` largest eigenpairs of D^-1/2 C D^-1/2, where C[a, b] sums 1/k
    over the pairs of a user's training sequence k <= ``window`` steps apart; so e_a . e_b
    approximates the normalised co-occurrence of a and b. Scaled to a mean square of 1 per entry
    (T5's initial token scale); row 0 and items without a neighbour are zero rows. Each connected
    group of items owns an eigenvalue of 1, so with more such groups than ``dim`` the vectors
    mostly say which group an item is in (Beauty's sequences form far fewer).
    ``users``/``items``: training interactions, users ascending, each user's oldest first
    (``Dataset.train_pairs``)."""
    users, items = np.asarray(users), np.asarray(items)
    n = n_items + 1
    rows, cols, weights = [], [], []
    for k in range(1, window + 1):
        pair = (users[:-k] == users[k:]) & (items[:-k] != items[k:]) if len(items) > k else np.zeros(0, bool)
        a, b = items[:-k][pair], items[k:][pair]
        rows += [a, b]
        cols += [b, a]
        weights.append(np.full(2 * len(a), 1.0 / k))
    c = sp.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    if c.nnz == 0:  # no two items ever share a sequence: nothing to start from
        return np.zeros((n, dim), dtype=np.float32)
    degree = np.asarray(c.sum(1)).ravel()
    inv_sqrt = np.zeros(n)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    a_hat = sp.diags(inv_sqrt) @ c @ sp.diags(inv_sqrt)
    if n <= max(2 * dim, 500):  # small: the dense solver (also when dim >= n - 1)
        values, vectors = np.linalg.eigh(a_hat.toarray())
        values, vectors = values[::-1][: min(dim, n)], vectors[:, ::-1][:, : min(dim, n)]
    else:  # n > 2 dim, so k = dim < n as eigsh requires
        v0 = np.random.default_rng(seed).standard_normal(n)  # Lanczos' start: seeded, so reproducible
        values, vectors = eigsh(a_hat, k=dim, which="LA", v0=v0)
    out = np.zeros((n, dim), dtype=np.float64)
    out[:, : len(values)] = vectors * np.sqrt(np.clip(values, 0, None))
    out[degree == 0] = 0.0
    scale = np.sqrt(np.mean(out[degree > 0] ** 2)) if (degree > 0).any() else 0.0
    return (out / scale if scale > 0 else out).astype(np.float32)
