"""ple.clusters -- generated from book/ple5_group_experts_transfer_towers.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['NUM_CLUSTERS', 'CLUSTER_DIM', 'GMMClusterRouter', 'hard_routing', 'ClusterEmbedding']

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch import nn

NUM_CLUSTERS = 20
CLUSTER_DIM = 32


def _shape(t) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


class GMMClusterRouter:
    """Offline GMM over customer features; its posteriors route customers to clusters (eq-gmm-posterior).

    p_c(x) = pi_c N(x | mu_c, Sigma_c) / sum_j pi_j N(x | mu_j, Sigma_j), fitted by EM
    (scikit-learn `GaussianMixture`). Inputs are standardised with the training mean / std
    first (stored). x: [N, D] -> posteriors [N, num_clusters] float32, rows summing to 1.
    """

    def __init__(
        self,
        num_clusters: int = NUM_CLUSTERS,
        covariance_type: str = "full",
        reg_covar: float = 1e-4,
        max_iter: int = 200,
        n_init: int = 1,
        seed: int = 0,
    ):
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1; got {num_clusters}")
        if covariance_type not in ("full", "tied", "diag", "spherical"):
            raise ValueError(f"covariance_type must be full / tied / diag / spherical; got {covariance_type!r}")
        self.num_clusters = int(num_clusters)
        self.gmm = GaussianMixture(
            n_components=num_clusters, covariance_type=covariance_type, reg_covar=reg_covar,
            max_iter=max_iter, n_init=n_init, random_state=seed,
        )
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    def _check(self, x, fitted: bool = True) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"x has shape {_shape(x)}; expected [N, D]")
        if not np.isfinite(x).all():
            raise ValueError("x contains NaN or inf")
        if fitted:
            if self.mean_ is None:
                raise ValueError("GMMClusterRouter is not fitted: call fit(x) first")
            if x.shape[1] != self.mean_.shape[0]:
                raise ValueError(f"x has shape {_shape(x)}; expected [N, {self.mean_.shape[0]}] (fitted D)")
        return x

    def standardize(self, x) -> np.ndarray:
        """(x - mean) / std with the training statistics, float64 [N, D]."""
        x = self._check(x)
        return (x - self.mean_) / self.scale_

    def fit(self, x) -> GMMClusterRouter:
        """Fit the standardiser and the GMM (EM) on x [N, D]."""
        x = self._check(x, fitted=False)
        if x.shape[0] < self.num_clusters:
            raise ValueError(f"x has {x.shape[0]} rows; need at least num_clusters = {self.num_clusters}")
        self.mean_ = x.mean(axis=0)
        self.scale_ = x.std(axis=0) + 1e-8
        self.gmm.fit(self.standardize(x))
        return self

    def predict_proba(self, x) -> np.ndarray:
        """GMM posteriors p(c | x), float32 [N, num_clusters]."""
        return self.gmm.predict_proba(self.standardize(x)).astype(np.float32)

    def predict(self, x) -> np.ndarray:
        """Hard assignment argmax_c p(c | x), int64 [N] (the legacy routing)."""
        return self.gmm.predict(self.standardize(x)).astype(np.int64)


def hard_routing(cluster_probs: torch.Tensor) -> torch.Tensor:
    """One-hot of the argmax cluster, [B, C] -> [B, C] (same dtype)."""
    idx = cluster_probs.argmax(dim=1)
    return torch.nn.functional.one_hot(idx, cluster_probs.shape[1]).to(cluster_probs.dtype)


class ClusterEmbedding(nn.Module):
    """Soft cluster embedding (eq-soft-cluster): e_cluster = sum_c p_c E_c = p @ E.

    `weight` E: [num_clusters, cluster_dim] trainable. forward(cluster_probs [B, C] float, rows
    on the simplex) -> [B, cluster_dim]; integer ids [B] give the table lookup E[c] (one-hot p).
    """

    def __init__(self, num_clusters: int = NUM_CLUSTERS, cluster_dim: int = CLUSTER_DIM):
        super().__init__()
        self.num_clusters = int(num_clusters)
        self.cluster_dim = int(cluster_dim)
        self.weight = nn.Parameter(torch.randn(num_clusters, cluster_dim) * cluster_dim**-0.5)

    def forward(self, cluster_probs: torch.Tensor) -> torch.Tensor:
        if not cluster_probs.is_floating_point():
            ids = cluster_probs
            if ids.dim() != 1:
                raise ValueError(f"cluster ids have shape {_shape(ids)}; expected [B]")
            if ((ids < 0) | (ids >= self.num_clusters)).any():
                raise ValueError(f"cluster ids must lie in [0, {self.num_clusters})")
            return self.weight[ids]
        if cluster_probs.dim() != 2 or cluster_probs.shape[1] != self.num_clusters:
            raise ValueError(
                f"cluster_probs has shape {_shape(cluster_probs)}; expected [B, {self.num_clusters}] (num_clusters)"
            )
        if not torch.isfinite(cluster_probs).all():
            raise ValueError("cluster_probs contains NaN or inf")
        if (cluster_probs < 0).any() or ((cluster_probs.sum(1) - 1).abs() > 1e-3).any():
            raise ValueError("cluster_probs rows must be probability vectors (non-negative, summing to 1)")
        return cluster_probs.to(self.weight.dtype) @ self.weight
