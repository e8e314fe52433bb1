"""ple.data.mmoe_synthetic: Ma et al.'s two-task generator with task correlation p."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ple.data.mmoe_synthetic import (
    MMoESynthetic,
    make_mmoe_synthetic,
    orthonormal_pair,
    sinusoid_labels,
    task_weights,
)


def test_shapes_dtypes_and_defaults():
    data = make_mmoe_synthetic(50, 0.7)
    assert isinstance(data, MMoESynthetic)
    assert data.x.shape == (50, 100) and data.x.dtype == np.float32
    assert data.y.shape == (50, 2) and data.y.dtype == np.float32
    assert data.w1.shape == data.w2.shape == (100,) and data.w1.dtype == np.float64
    assert data.correlation == 0.7 and data.seed == 0
    assert data.alphas.tolist() == list(range(1, 11))
    assert data.betas.tolist() == [j * j for j in range(1, 11)]


@pytest.mark.parametrize("p", [-1.0, -0.3, 0.0, 0.5, 0.9, 1.0])
def test_weight_cosine_is_p(p):
    data = make_mmoe_synthetic(10, p, input_dim=30, seed=4)
    cos = data.w1 @ data.w2 / (np.linalg.norm(data.w1) * np.linalg.norm(data.w2))
    assert abs(cos - p) < 1e-12
    assert abs(np.linalg.norm(data.w1) - 1) < 1e-12 and abs(np.linalg.norm(data.w2) - 1) < 1e-12


def test_orthonormal_pair():
    u1, u2 = orthonormal_pair(64, np.random.default_rng(1))
    assert abs(u1 @ u2) < 1e-14
    assert abs(np.linalg.norm(u1) - 1) < 1e-14 and abs(np.linalg.norm(u2) - 1) < 1e-14


def test_scale_scales_both_weights():
    u1, u2 = orthonormal_pair(8, np.random.default_rng(0))
    w1, w2 = task_weights(u1, u2, 0.3, scale=2.5)
    assert math.isclose(np.linalg.norm(w1), 2.5) and math.isclose(np.linalg.norm(w2), 2.5)


def test_labels_follow_the_formula():
    data = make_mmoe_synthetic(200, 0.4, input_dim=6, noise_std=0.0, num_sin=3, seed=2)
    x = data.x.astype(np.float64)
    for i, w in enumerate((data.w1, data.w2)):
        z = x @ w
        ref = z + sum(np.sin(j * z + j * j) for j in (1, 2, 3))
        assert np.allclose(data.y[:, i], ref, atol=1e-5)
        assert np.allclose(sinusoid_labels(x, w, data.alphas, data.betas), ref, atol=1e-12)


def test_noise_has_the_requested_std():
    clean = make_mmoe_synthetic(20000, 0.5, input_dim=4, noise_std=0.0, seed=1)
    noisy = make_mmoe_synthetic(20000, 0.5, input_dim=4, noise_std=0.01, seed=1)
    assert np.array_equal(clean.x, noisy.x)
    assert abs(float(np.std(noisy.y.astype(np.float64) - clean.y)) - 0.01) < 1e-3


def test_reproducible_by_seed_and_different_across_seeds():
    a = make_mmoe_synthetic(100, 0.5, input_dim=10, seed=7)
    b = make_mmoe_synthetic(100, 0.5, input_dim=10, seed=7)
    c = make_mmoe_synthetic(100, 0.5, input_dim=10, seed=8)
    for field in ("x", "y", "w1", "w2"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
        assert not np.array_equal(getattr(a, field), getattr(c, field))


def test_changing_p_changes_only_w2_and_y2():
    a = make_mmoe_synthetic(300, 0.2, input_dim=10, seed=3)
    b = make_mmoe_synthetic(300, 0.8, input_dim=10, seed=3)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.w1, b.w1)
    assert np.array_equal(a.y[:, 0], b.y[:, 0])
    assert not np.array_equal(a.y[:, 1], b.y[:, 1])


def test_label_correlation_rises_with_p():
    corr = [make_mmoe_synthetic(4000, p, input_dim=20, seed=0).label_correlation() for p in (0.0, 0.5, 0.9, 1.0)]
    assert all(np.diff(corr) > 0)
    assert corr[-1] > 0.999


@pytest.mark.parametrize("p", [1.5, -1.01, float("nan"), float("inf")])
def test_invalid_correlation(p):
    with pytest.raises(ValueError, match="correlation must be"):
        make_mmoe_synthetic(10, p)


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_invalid_n_samples(n):
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        make_mmoe_synthetic(n, 0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_dim": 1}, "input_dim must be an int >= 2"),
        ({"scale": 0.0}, "scale must be > 0"),
        ({"scale": float("nan")}, "scale must be finite"),
        ({"num_sin": -1}, "num_sin must be an int >= 0"),
        ({"noise_std": -0.1}, "noise_std must be >= 0"),
        ({"seed": -1}, "seed must be an int >= 0"),
    ],
)
def test_invalid_keywords(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_mmoe_synthetic(10, 0.5, **kwargs)


def test_correlation_must_be_a_number():
    with pytest.raises(ValueError, match="correlation must be a real number"):
        make_mmoe_synthetic(10, "0.5")
