"""ple.clusters: GMM router posteriors, hard routing, the soft cluster embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ple.clusters import ClusterEmbedding, GMMClusterRouter, hard_routing


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centers = 12.0 * np.eye(4, 3) - 6.0  # four well separated centres
    x = np.concatenate([c + rng.normal(size=(150, 3)) for c in centers])
    return x.astype(np.float32)


def test_router_posteriors(blobs):
    r = GMMClusterRouter(num_clusters=4, seed=0).fit(blobs)
    p = r.predict_proba(blobs)
    assert p.shape == (600, 4) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert (r.predict(blobs) == p.argmax(1)).all()
    # well separated blobs: almost every customer is confidently in one cluster
    assert (p.max(1) > 0.99).mean() > 0.95


def test_router_is_reproducible(blobs):
    a = GMMClusterRouter(num_clusters=4, seed=3).fit(blobs).predict_proba(blobs)
    b = GMMClusterRouter(num_clusters=4, seed=3).fit(blobs).predict_proba(blobs)
    np.testing.assert_array_equal(a, b)


def test_router_standardises_with_training_statistics(blobs):
    r = GMMClusterRouter(num_clusters=4, seed=0).fit(blobs)
    z = r.standardize(blobs)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-6)
    # posteriors do not depend on the units of the features
    r2 = GMMClusterRouter(num_clusters=4, seed=0).fit(blobs * 100.0)
    np.testing.assert_allclose(r2.predict_proba(blobs * 100.0), r.predict_proba(blobs), atol=1e-4)


def test_router_bad_input(blobs):
    r = GMMClusterRouter(num_clusters=4)
    with pytest.raises(ValueError, match="not fitted"):
        r.predict_proba(blobs)
    with pytest.raises(ValueError, match=r"x has shape \[600\]; expected \[N, D\]"):
        r.fit(blobs[:, 0])
    bad = blobs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        r.fit(bad)
    r.fit(blobs)
    with pytest.raises(ValueError, match=r"x has shape \[600, 2\]; expected \[N, 3\]"):
        r.predict_proba(blobs[:, :2])
    with pytest.raises(ValueError, match="covariance_type"):
        GMMClusterRouter(covariance_type="banana")
    with pytest.raises(ValueError, match="need at least num_clusters"):
        GMMClusterRouter(num_clusters=20).fit(blobs[:10])


def test_embedding_soft_hard_and_gradients():
    torch.manual_seed(0)
    emb = ClusterEmbedding(20, 32)
    p = torch.softmax(torch.randn(5, 20), dim=1)
    e = emb(p)
    assert e.shape == (5, 32)
    torch.testing.assert_close(e, sum(p[:, c : c + 1] * emb.weight[c] for c in range(20)))
    ids = p.argmax(1)
    torch.testing.assert_close(emb(ids), emb(hard_routing(p)))
    e.sum().backward()
    torch.testing.assert_close(emb.weight.grad, p.sum(0)[:, None].expand(20, 32))


def test_embedding_is_continuous_in_the_posterior():
    torch.manual_seed(0)
    emb = ClusterEmbedding(3, 4)
    p = torch.tensor([[0.5, 0.5, 0.0]])
    q = torch.tensor([[0.5 + 1e-4, 0.5 - 1e-4, 0.0]])
    assert (emb(p) - emb(q)).norm() < 1e-3
    # the arg-max lookup jumps from one row to the other
    q2 = torch.tensor([[0.5 - 1e-4, 0.5 + 1e-4, 0.0]])
    jump = (emb(hard_routing(q)) - emb(hard_routing(q2))).norm()
    torch.testing.assert_close(jump, (emb.weight[0] - emb.weight[1]).norm())


def test_embedding_bad_input():
    emb = ClusterEmbedding(20, 32)
    with pytest.raises(ValueError, match=r"cluster_probs has shape \[4, 10\]; expected \[B, 20\]"):
        emb(torch.full((4, 10), 0.1))
    with pytest.raises(ValueError, match="probability vectors"):
        emb(torch.ones(4, 20))
    with pytest.raises(ValueError, match="NaN"):
        emb(torch.full((4, 20), float("nan")))
    with pytest.raises(ValueError, match=r"cluster ids must lie in \[0, 20\)"):
        emb(torch.tensor([0, 20]))


# ---------------------------------------------------------------- issue 18: input contract defects
def test_hard_routing_rejects_nan_posteriors():
    p = torch.tensor([[float("nan"), 0.5], [0.2, 0.8]])
    with pytest.raises(ValueError, match="cluster_probs contains NaN"):
        hard_routing(p)
    with pytest.raises(ValueError, match=r"cluster_probs has shape \[2\]"):
        hard_routing(torch.tensor([0.2, 0.8]))


def test_router_far_away_input_gets_finite_posteriors(blobs):
    r = GMMClusterRouter(num_clusters=4, seed=0).fit(blobs)
    far = np.full((2, 3), 1e160)
    far[1] *= -1
    p = r.predict_proba(far)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert (r.predict(far) == p.argmax(1)).all()
    # inside the radius nothing changes: scikit-learn's posteriors on the standardised input
    np.testing.assert_allclose(r.predict_proba(blobs), r.gmm.predict_proba(r.standardize(blobs)), atol=1e-6)
