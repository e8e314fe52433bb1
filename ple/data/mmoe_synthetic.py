"""ple.data.mmoe_synthetic -- generated from book/ple1_mtl_to_mmoe.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['INPUT_DIM', 'SCALE', 'NUM_SIN', 'NOISE_STD', 'orthonormal_pair', 'task_weights', 'sinusoid_labels', 'MMoESynthetic', 'make_mmoe_synthetic']

import math
from dataclasses import dataclass

import numpy as np

from ple.checks import InputTypeError, ShapeError, check_array, check_float, check_int

INPUT_DIM = 100  # d
SCALE = 1.0  # c
NUM_SIN = 10  # m
NOISE_STD = 0.01  # std of epsilon


def orthonormal_pair(input_dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal vectors u1, u2 in R^input_dim: Gram–Schmidt of two Gaussian vectors.

    u1 = a / |a|;  u2 = (b - (u1.b) u1) / |b - (u1.b) u1|  (the projection is removed twice,
    so u1.u2 is zero to rounding). Returns float64 [input_dim] each.
    """
    input_dim = check_int("input_dim", input_dim, 2)  # two orthonormal vectors need two dimensions
    if not isinstance(rng, np.random.Generator):
        raise InputTypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    a, b = rng.standard_normal((2, input_dim))
    u1 = a / np.linalg.norm(a)
    u2 = b
    for _ in range(2):
        u2 = u2 - (u1 @ u2) * u1
    return u1, u2 / np.linalg.norm(u2)


def task_weights(
    u1: np.ndarray, u2: np.ndarray, correlation: float, scale: float = SCALE
) -> tuple[np.ndarray, np.ndarray]:
    """w1 = c u1,  w2 = c (p u1 + sqrt(1 - p^2) u2)  (eq-synthetic-weights).

    For orthonormal u1, u2: |w1| = |w2| = c and cos(w1, w2) = p.
    """
    p = check_float("correlation", correlation, -1.0, 1.0)
    scale = check_float("scale", scale)
    u1, u2 = check_array(u1, "u1", 1), check_array(u2, "u2", 1)
    if u1.shape != u2.shape:
        raise ShapeError(f"u2 has shape {list(u2.shape)}; expected {list(u1.shape)} (as u1)")
    return scale * u1, scale * (p * u1 + math.sqrt(max(0.0, 1.0 - p * p)) * u2)


def sinusoid_labels(
    x: np.ndarray, w: np.ndarray, alphas: np.ndarray, betas: np.ndarray
) -> np.ndarray:
    """Noise-free label w.x + sum_j sin(alpha_j w.x + beta_j) (eq-synthetic-labels).

    x: [N, d], w: [d], alphas, betas: [m] -> float64 [N].
    """
    z = np.asarray(x, dtype=np.float64) @ w  # [N]
    return z + np.sin(np.multiply.outer(z, alphas) + betas).sum(axis=1)


@dataclass(frozen=True)
class MMoESynthetic:
    """A draw of the two-task regression of Ma et al. (2018) with task correlation p.

    x: float32 [N, input_dim], y: float32 [N, 2] (labels of task 1 and task 2, computed in
    float64 from this x); w1, w2: float64 [input_dim] with cos(w1, w2) = correlation;
    alphas, betas: float64 [num_sin]; seed: the seed of the draw.
    """

    x: np.ndarray
    y: np.ndarray
    w1: np.ndarray
    w2: np.ndarray
    correlation: float
    alphas: np.ndarray
    betas: np.ndarray
    seed: int

    def label_correlation(self) -> float:
        """Empirical Pearson correlation of the two labels (not equal to `correlation`)."""
        return float(np.corrcoef(self.y[:, 0].astype(np.float64), self.y[:, 1])[0, 1])


def make_mmoe_synthetic(
    n_samples: int,
    correlation: float,
    *,
    input_dim: int = INPUT_DIM,
    scale: float = SCALE,
    num_sin: int = NUM_SIN,
    noise_std: float = NOISE_STD,
    seed: int = 0,
) -> MMoESynthetic:
    """Ma et al.'s synthetic two-task data with controllable task correlation (eq-synthetic-weights,
    eq-synthetic-labels).

    u1, u2 orthonormal; w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2); x ~ N(0, I_d);
    y_i = w_i.x + sum_{j=1..m} sin(alpha_j w_i.x + beta_j) + eps_i, eps_i ~ N(0, noise_std^2),
    with alpha_j = j and beta_j = j^2. The draws happen in a fixed order from one
    `numpy.random.default_rng(seed)` (u1 and u2, then x, then the noise), so for one seed and
    n_samples, changing `correlation` changes w2 and y[:, 1] and nothing else.
    Returns `MMoESynthetic` with x float32 [n_samples, input_dim] and y float32 [n_samples, 2].
    """
    n_samples = check_int("n_samples", n_samples, 1)
    p = check_float("correlation", correlation, -1.0, 1.0)
    input_dim = check_int("input_dim", input_dim, 2)
    scale = check_float("scale", scale, 0.0, low_open=True)
    num_sin = check_int("num_sin", num_sin, 0)
    noise_std = check_float("noise_std", noise_std, 0.0)
    seed = check_int("seed", seed, 0)

    rng = np.random.default_rng(seed)
    u1, u2 = orthonormal_pair(input_dim, rng)
    w1, w2 = task_weights(u1, u2, p, scale)
    x = rng.standard_normal((n_samples, input_dim), dtype=np.float32)
    noise = noise_std * rng.standard_normal((n_samples, 2))
    j = np.arange(1, num_sin + 1, dtype=np.float64)
    alphas, betas = j, j**2
    y = np.stack([sinusoid_labels(x, w, alphas, betas) for w in (w1, w2)], axis=1) + noise
    return MMoESynthetic(
        x=x, y=y.astype(np.float32), w1=w1, w2=w2, correlation=p,
        alphas=alphas, betas=betas, seed=seed,
    )
