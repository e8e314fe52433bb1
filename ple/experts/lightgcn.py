"""ple.experts.lightgcn -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['normalized_adjacency', 'propagate', 'lightgcn_embeddings', 'LightGCNExpert']

import numpy as np
import torch
from torch import nn

from ple.checks import check_float, check_int, check_tensor
from ple.experts.base import SharedExpert
from ple.layers import MLP


def _edges(interactions: np.ndarray | torch.Tensor, n_customers: int, n_merchants: int) -> np.ndarray:
    e = np.asarray(interactions.cpu() if isinstance(interactions, torch.Tensor) else interactions)
    if e.ndim != 2 or e.shape[1] != 2:
        raise ValueError(f"interactions has shape {list(e.shape)}; expected [E, 2] (customer, merchant)")
    e = e.astype(np.int64)
    if e.size and (e[:, 0].min() < 0 or e[:, 0].max() >= n_customers):
        raise ValueError(f"interactions[:, 0] must lie in [0, {n_customers}) (n_customers)")
    if e.size and (e[:, 1].min() < 0 or e[:, 1].max() >= n_merchants):
        raise ValueError(f"interactions[:, 1] must lie in [0, {n_merchants}) (n_merchants)")
    return np.unique(e, axis=0)  # R is binary: repeated visits are one edge


def normalized_adjacency(
    interactions: np.ndarray | torch.Tensor, n_customers: int, n_merchants: int
) -> torch.Tensor:
    """Symmetric-normalised adjacency of the customer–merchant graph (eq-lightgcn-matrix).

    ``A = [[0, R], [R^T, 0]]`` over ``n = n_customers + n_merchants`` nodes (customers first),
    ``A_tilde = D^{-1/2} A D^{-1/2}``; a node without edges gets an all-zero row.

    Args:
        interactions: `[E, 2]` int pairs (customer, merchant); duplicates count once.

    Returns:
        sparse COO float32 `[n, n]`.
    """
    e = _edges(interactions, n_customers, n_merchants)
    u, m = e[:, 0], e[:, 1] + n_customers
    n = n_customers + n_merchants
    rows = np.concatenate([u, m])
    cols = np.concatenate([m, u])
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = np.zeros(n)
    inv_sqrt[deg > 0] = deg[deg > 0] ** -0.5
    vals = inv_sqrt[rows] * inv_sqrt[cols]
    idx = torch.from_numpy(np.stack([rows, cols]))
    return torch.sparse_coo_tensor(
        idx, torch.from_numpy(vals).float(), (n, n), check_invariants=False
    ).coalesce()


def propagate(
    adj: torch.Tensor, e0: torch.Tensor, num_layers: int = 3, layer_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """LightGCN propagation and layer combination (eq-lightgcn, eq-lightgcn-combine).

    ``E = sum_{l=0}^{L} alpha_l A_tilde^l E0`` with ``alpha_l = 1 / (L + 1)`` by default.

    Args:
        adj: `[n, n]` (sparse or dense) normalised adjacency.
        e0: `[n, d]` layer-0 embeddings.
        num_layers: L.
        layer_weights: `[L + 1]` alphas, or None for the uniform mean.

    Returns:
        `[n, d]`.
    """
    num_layers = check_int("num_layers", num_layers, 0)
    if e0.dim() != 2 or e0.shape[0] != adj.shape[0]:
        raise ValueError(f"e0 has shape {list(e0.shape)}; expected [{adj.shape[0]}, d] (num_nodes)")
    if layer_weights is None:
        layer_weights = torch.full((num_layers + 1,), 1.0 / (num_layers + 1), dtype=e0.dtype)
    out = layer_weights[0] * e0
    e = e0
    for layer in range(1, num_layers + 1):
        e = torch.sparse.mm(adj, e) if adj.is_sparse else adj @ e
        out = out + layer_weights[layer] * e
    return out


def lightgcn_embeddings(
    interactions: np.ndarray | torch.Tensor,
    n_customers: int,
    n_merchants: int,
    dim: int = 64,
    num_layers: int = 3,
    epochs: int = 30,
    batch_size: int = 4096,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Offline LightGCN: BPR-train E0 through the propagation, return the combined embeddings.

    Each epoch visits every (customer, merchant) edge once with one uniformly drawn negative
    merchant and minimises ``-log sigmoid(<e_u, e_i> - <e_u, e_j>) + weight_decay * ||E0_batch||^2``
    (He et al. 2020). ``epochs=0`` returns the propagation of the random initialisation.

    Returns:
        (customer embeddings `[n_customers, dim]`, merchant embeddings `[n_merchants, dim]`),
        float32, detached.
    """
    dim, num_layers = check_int("dim", dim), check_int("num_layers", num_layers, 0)
    epochs, batch_size = check_int("epochs", epochs), check_int("batch_size", batch_size)
    lr, weight_decay = check_float("lr", lr, 0.0, low_open=True), check_float("weight_decay", weight_decay, 0.0)
    e = _edges(interactions, n_customers, n_merchants)
    adj = normalized_adjacency(e, n_customers, n_merchants)
    gen = torch.Generator().manual_seed(seed)
    e0 = nn.Parameter(0.1 * torch.randn(n_customers + n_merchants, dim, generator=gen))
    opt = torch.optim.Adam([e0], lr=lr)
    edges = torch.from_numpy(e)
    for _ in range(epochs):
        perm = torch.randperm(len(edges), generator=gen)
        for start in range(0, len(edges), batch_size):
            batch = edges[perm[start : start + batch_size]]
            u, i = batch[:, 0], batch[:, 1] + n_customers
            j = torch.randint(0, n_merchants, (len(batch),), generator=gen) + n_customers
            emb = propagate(adj, e0, num_layers)
            pos = (emb[u] * emb[i]).sum(-1)
            neg = (emb[u] * emb[j]).sum(-1)
            reg = (e0[u].pow(2).sum() + e0[i].pow(2).sum() + e0[j].pow(2).sum()) / len(batch)
            loss = -torch.nn.functional.logsigmoid(pos - neg).mean() + weight_decay * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        emb = propagate(adj, e0.detach(), num_layers)
    return emb[:n_customers].clone(), emb[n_customers:].clone()


class LightGCNExpert(SharedExpert):
    """LightGCN expert: residual MLP refinement of the offline collaborative features.

    ``h = LN(x);  out = h + MLP(h)`` (the graph propagation itself, eq-lightgcn, is offline).

    Shapes: `x` `[B, input_dim]` -> `[B, out_dim]`.
    """

    def __init__(
        self, input_dim: int = 64, hidden_dim: int = 128, out_dim: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.input_dim, self.out_dim = input_dim, out_dim
        self.norm = nn.LayerNorm(input_dim)
        self.refine = MLP(input_dim, (hidden_dim,), out_dim=out_dim, dropout=dropout)
        self.skip = nn.Identity() if input_dim == out_dim else nn.Linear(input_dim, out_dim)

    def forward(self, x: torch.Tensor | None, *, batch_size: int | None = None) -> torch.Tensor:
        """`x` `[B, input_dim]` collaborative features or None -> `[B, out_dim]`."""
        if x is None:
            return self.absent(batch_size)
        check_tensor(x, "collaborative", ("B", self.input_dim), "collaborative_dim")
        h = self.norm(x)
        return self.skip(h) + self.refine(h)
