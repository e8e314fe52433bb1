"""ple.clusters -- generated from book/ple5_group_experts_transfer_towers.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['NUM_CLUSTERS', 'FAR_RADIUS', 'CLUSTER_DIM', 'GMMClusterRouter', 'hard_routing', 'ClusterEmbedding']

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch import nn

from ple.checks import (
    InputTypeError,
    NonFiniteError,
    ShapeError,
    check_choice,
    check_finite,
    check_float,
    check_int,
    check_tensor,
    shape_str,
    validation_enabled,
)

NUM_CLUSTERS = 20
FAR_RADIUS = 1e6  # standardised inputs farther out are routed along their ray at this radius
CLUSTER_DIM = 32


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
        self.num_clusters = check_int("num_clusters", num_clusters, 1)
        check_choice("covariance_type", covariance_type, ("full", "tied", "diag", "spherical"))
        reg_covar = check_float("reg_covar", reg_covar, 0.0, low_open=True)
        max_iter, n_init = check_int("max_iter", max_iter, 1), check_int("n_init", n_init, 1)
        seed = check_int("seed", seed, 0)
        self.gmm = GaussianMixture(
            n_components=num_clusters, covariance_type=covariance_type, reg_covar=reg_covar,
            max_iter=max_iter, n_init=n_init, random_state=seed,
        )
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    def _check(self, x, fitted: bool = True) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ShapeError(f"x has shape {shape_str(x)}; expected [N, D]")
        if not np.isfinite(x).all():
            raise NonFiniteError(f"x contains NaN or inf ({int((~np.isfinite(x)).sum())} entries)")
        if fitted:
            if self.mean_ is None:
                raise ValueError("GMMClusterRouter is not fitted: call fit(x) first")
            if x.shape[1] != self.mean_.shape[0]:
                raise ShapeError(f"x has shape {shape_str(x)}; expected [N, {self.mean_.shape[0]}] (fitted D)")
        return x

    def standardize(self, x) -> np.ndarray:
        """(x - mean) / std with the training statistics, float64 [N, D]."""
        x = self._check(x)
        return (x - self.mean_) / self.scale_

    def _routable(self, x) -> np.ndarray:
        """Standardised x with every row farther than FAR_RADIUS from the origin pulled back along
        its ray to that radius. Beyond it the posterior is already one-hot (the squared Mahalanobis
        distances differ by ~1e12), and the squares of a far-away row would overflow to inf and give
        NaN posteriors."""
        with np.errstate(over="ignore", invalid="ignore"):
            z = (x - self.mean_) / self.scale_
            m = np.abs(z).max(axis=1, keepdims=True) if z.size else np.zeros((z.shape[0], 1))
            far = m[:, 0] > FAR_RADIUS
            if far.any():
                zf, mf = z[far], m[far]
                u = np.where(np.isinf(mf), np.where(np.isinf(zf), np.sign(zf), 0.0), zf / mf)  # max |u| = 1
                z[far] = u * (FAR_RADIUS / np.linalg.norm(u, axis=1, keepdims=True))
        return z

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
        """GMM posteriors p(c | x), float32 [N, num_clusters] (finite for every finite x)."""
        x = self._check(x)
        return self.gmm.predict_proba(self._routable(x)).astype(np.float32)

    def predict(self, x) -> np.ndarray:
        """Hard assignment argmax_c p(c | x), int64 [N] (the legacy routing)."""
        x = self._check(x)
        return self.gmm.predict(self._routable(x)).astype(np.int64)


def hard_routing(cluster_probs: torch.Tensor) -> torch.Tensor:
    """One-hot of the argmax cluster, [B, C] -> [B, C] (same dtype).

    NaN / inf posteriors raise NonFiniteError (argmax would send them to cluster 0); that scan
    reads the device, so it runs only while `ple.checks.validation_enabled()`.
    """
    check_tensor(cluster_probs, "cluster_probs", ["B", "C"], "GMM posteriors")
    if not cluster_probs.is_floating_point():
        raise InputTypeError(f"cluster_probs must be a floating-point tensor; got dtype {cluster_probs.dtype}")
    idx = cluster_probs.argmax(dim=1)
    return torch.nn.functional.one_hot(idx, cluster_probs.shape[1]).to(cluster_probs.dtype)


class ClusterEmbedding(nn.Module):
    """Soft cluster embedding (eq-soft-cluster): e_cluster = sum_c p_c E_c = p @ E.

    `weight` E: [num_clusters, cluster_dim] trainable. forward(cluster_probs [B, C] float, rows
    on the simplex) -> [B, cluster_dim]; integer ids [B] give the table lookup E[c] (one-hot p).
    """

    def __init__(self, num_clusters: int = NUM_CLUSTERS, cluster_dim: int = CLUSTER_DIM):
        super().__init__()
        self.num_clusters = check_int("num_clusters", num_clusters, 1)
        self.cluster_dim = check_int("cluster_dim", cluster_dim, 1)
        self.weight = nn.Parameter(torch.randn(num_clusters, cluster_dim) * cluster_dim**-0.5)

    def forward(self, cluster_probs: torch.Tensor) -> torch.Tensor:
        # the value checks (ids in range, finite rows on the simplex) read the device into Python:
        # they run only while ple.checks.validation_enabled() (off inside the engine's step)
        if not isinstance(cluster_probs, torch.Tensor):
            raise InputTypeError(f"cluster_probs must be a torch.Tensor; got {type(cluster_probs).__name__}")
        if not cluster_probs.is_floating_point():
            ids = cluster_probs
            if ids.dim() != 1:
                raise ShapeError(f"cluster ids have shape {shape_str(ids)}; expected [B]")
            if validation_enabled() and ids.numel() and bool((ids.amin() < 0) | (ids.amax() >= self.num_clusters)):
                raise ValueError(f"cluster ids must lie in [0, {self.num_clusters})")
            return self.weight[ids]
        if cluster_probs.dim() != 2 or cluster_probs.shape[1] != self.num_clusters:
            raise ShapeError(
                f"cluster_probs has shape {shape_str(cluster_probs)}; expected [B, {self.num_clusters}] (num_clusters)"
            )
        check_finite(cluster_probs, "cluster_probs")
        if validation_enabled() and cluster_probs.numel() and bool(
            (cluster_probs.amin() < 0) | ((cluster_probs.sum(1) - 1).abs().amax() > 1e-3)
        ):
            raise ValueError("cluster_probs rows must be probability vectors (non-negative, summing to 1)")
        return cluster_probs.to(self.weight.dtype) @ self.weight
