"""Contract tests for ple.experts: the seven shared experts and the pool (book/ple3_seven_experts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ple
from ple.experts.causal import CausalExpert, notears_h
from ple.experts.deepfm import DeepFMExpert, fm_interaction
from ple.experts.hgcn import (
    HGCNExpert,
    conformal_factor,
    expmap,
    expmap0,
    logmap,
    logmap0,
    mobius_add,
    poincare_distance,
)
from ple.experts.lightgcn import (
    LightGCNExpert,
    lightgcn_embeddings,
    normalized_adjacency,
    propagate,
)
from ple.experts.optimal_transport import OptimalTransportExpert, sinkhorn_log
from ple.experts.perslay import PersLayExpert, persistence_diagrams
from ple.experts.pool import ExpertInputs, ExpertPool, ExpertPoolConfig, build_expert
from ple.experts.temporal import TemporalExpert
from ple.tasks import EXPERT_DIMS, EXPERT_NAMES

B = 4


def small_expert(name: str) -> torch.nn.Module:
    """Each expert at a small size (the contract does not depend on the size)."""
    kwargs = {
        "deepfm": {"input_dim": 30, "hidden_dims": (16,)},
        "lightgcn": {"input_dim": 12, "hidden_dim": 16},
        "hgcn": {"input_dim": 9, "poincare_dim": 4, "hidden_dims": (16,)},
        "temporal": {"txn_dim": 5, "session_dim": 3, "d_model": 8, "ltc_hidden": 6, "patch_len": 4,
                     "fusion_dim": 16},
        "perslay": {"n_channels": 3, "n_centres": 4, "hidden_dims": (16,)},
        "causal": {"input_dim": 30, "n_vars": 6, "hidden_dim": 16},
        "optimal_transport": {"input_dim": 30, "n_bins": 6, "n_prototypes": 4, "hidden_dims": (16,)},
    }[name]
    return build_expert(name, **kwargs)


def small_input(name: str, gen: torch.Generator, bsz: int = B) -> tuple:
    """Positional inputs of the small experts."""
    if name in ("deepfm", "causal", "optimal_transport"):
        return (torch.randn(bsz, 30, generator=gen),)
    if name == "lightgcn":
        return (torch.randn(bsz, 12, generator=gen),)
    if name == "hgcn":
        pts = expmap0(0.5 * torch.randn(bsz, 4, generator=gen), 1.0)
        return (torch.cat([pts, torch.randn(bsz, 5, generator=gen)], 1),)
    if name == "temporal":
        return torch.randn(bsz, 10, 5, generator=gen), torch.randn(bsz, 7, 3, generator=gen)
    if name == "perslay":
        pts = torch.randn(bsz, 6, 2, generator=gen).sort(-1).values
        ch = torch.randint(0, 3, (bsz, 6, 1), generator=gen).float()
        mask = torch.ones(bsz, 6, dtype=torch.bool)
        mask[:, -2:] = False
        return torch.cat([pts, ch], -1), mask
    raise AssertionError(name)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The experts run tiny tensors here: one thread avoids the thread pool's overhead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ---------------------------------------------------------------- contract of every expert


@pytest.mark.parametrize("name", EXPERT_NAMES)
def test_output_shape(name, gen):
    expert = small_expert(name)
    out = expert(*small_input(name, gen))
    assert out.shape == (B, EXPERT_DIMS[name])
    assert expert.out_dim == EXPERT_DIMS[name]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", EXPERT_NAMES)
def test_zero_output_on_missing_input(name):
    expert = small_expert(name)
    out = expert(None, batch_size=5)
    assert torch.equal(out, torch.zeros(5, EXPERT_DIMS[name]))
    with pytest.raises(ValueError, match="batch_size"):
        expert(None)


@pytest.mark.parametrize("name", EXPERT_NAMES)
def test_finite_gradients(name, gen):
    expert = small_expert(name)
    expert(*small_input(name, gen)).pow(2).mean().backward()
    grads = [p.grad for p in expert.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", EXPERT_NAMES)
def test_reproducible_by_seed(name, gen):
    inputs = small_input(name, gen)
    outs = []
    for _ in range(2):
        ple.seed_everything(3)
        outs.append(small_expert(name)(*inputs))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", EXPERT_NAMES)
def test_wrong_shape_is_rejected(name, gen):
    expert = small_expert(name)
    args = list(small_input(name, gen))
    args[0] = args[0][..., :-1]  # one feature too few
    with pytest.raises(ValueError, match="has shape"):
        expert(*args)


@pytest.mark.parametrize("name", EXPERT_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_rejected(name, bad, gen):
    expert = small_expert(name)
    args = list(small_input(name, gen))
    args[0] = args[0].clone()
    args[0][0, 0] = bad  # for PersLay: the birth of a real (unmasked) point
    with pytest.raises(ValueError, match="NaN" if bad != bad else "inf"):
        expert(*args)


def test_error_message_names_argument_and_shapes():
    expert = DeepFMExpert(input_dim=644)
    with pytest.raises(ValueError, match=r"features has shape \[32, 600\]; expected \[B, 644\]"):
        expert(torch.zeros(32, 600))
    temporal = TemporalExpert()
    with pytest.raises(ValueError, match=r"txn_seq has shape \[2, 30, 12\]; expected \[B, T, 16\]"):
        temporal(torch.zeros(2, 30, 12))


# ---------------------------------------------------------------- the pool


def test_pool_concat_is_512_and_missing_blocks_are_zero(gen):
    pool = ExpertPool()
    dg, mk = persistence_diagrams(np.random.default_rng(0).normal(size=(3, 20, 4)), 8)
    inputs = ExpertInputs(
        features=torch.randn(3, 644, generator=gen),
        collaborative=torch.randn(3, 64, generator=gen),
        hierarchy=torch.cat([expmap0(0.3 * torch.randn(3, 20, generator=gen), 1.0),
                             torch.randn(3, 27, generator=gen)], 1),
        txn_seq=torch.randn(3, 30, 16, generator=gen),
        session_seq=torch.randn(3, 12, 8, generator=gen),
        diagrams=torch.from_numpy(dg),
        diagram_mask=torch.from_numpy(mk),
    )
    out = pool(inputs)
    assert pool.output_dim == 512 and out.shared.shape == (3, 512)
    assert list(out.outputs) == list(EXPERT_NAMES)
    assert torch.equal(out.shared, torch.cat([out.outputs[n] for n in EXPERT_NAMES], -1))
    partial = pool(inputs.without("features"))
    for name in ("deepfm", "causal", "optimal_transport"):
        assert torch.equal(partial.outputs[name], torch.zeros(3, 64))
    assert torch.equal(partial.outputs["hgcn"], out.outputs["hgcn"])
    assert inputs.index(slice(0, 2)).batch_size == 2
    reg = pool.regularizer()
    assert reg.dim() == 0 and torch.isfinite(reg)


def test_pool_rejects_unknown_expert():
    with pytest.raises(ValueError, match="unknown expert"):
        ExpertPool(names=("deepfm", "gat"))
    with pytest.raises(ValueError, match="every input is None"):
        _ = ExpertInputs().batch_size


def test_pool_config_overrides():
    pool = ExpertPool(ExpertPoolConfig(overrides={"temporal": {"d_model": 16}}), names=("temporal",))
    assert pool.experts["temporal"].d_model == 16 and pool.output_dim == 64


# ---------------------------------------------------------------- numerical identities, fast form


def test_fm_identity_matches_pairwise_sum(gen):
    x = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    v = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    pairwise = torch.stack([
        sum((v[i] @ v[j]) * x[b, i] * x[b, j] for i in range(7) for j in range(i + 1, 7))
        for b in range(3)
    ])
    assert torch.allclose(fm_interaction(x, v).sum(-1), pairwise, atol=1e-12)


def test_sparse_adjacency_matches_dense(gen):
    edges = np.array([[0, 0], [0, 1], [1, 1], [2, 0], [2, 0], [3, 2]])
    adj = normalized_adjacency(edges, 5, 3).to(torch.float64)  # customer 4 has no edge
    A = np.zeros((8, 8))
    for u, i in edges:
        A[u, 5 + i] = A[5 + i, u] = 1
    d = A.sum(1)
    s = np.where(d > 0, d, 1) ** -0.5 * (d > 0)
    dense = torch.from_numpy(s[:, None] * A * s[None, :])
    e0 = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    assert torch.allclose(torch.sparse.mm(adj, e0), dense @ e0, atol=1e-12)
    assert torch.allclose(propagate(adj, e0, 2), (e0 + dense @ e0 + dense @ dense @ e0) / 3, atol=1e-12)
    with pytest.raises(ValueError, match="n_merchants"):
        normalized_adjacency(np.array([[0, 3]]), 5, 3)


def test_lightgcn_embeddings_shapes_and_seed():
    edges = np.array([[u, (u * 7 + k) % 11] for u in range(20) for k in range(3)])
    cu, me = lightgcn_embeddings(edges, 20, 11, dim=8, num_layers=2, epochs=2, seed=1)
    cu2, _ = lightgcn_embeddings(edges, 20, 11, dim=8, num_layers=2, epochs=2, seed=1)
    assert cu.shape == (20, 8) and me.shape == (11, 8) and torch.equal(cu, cu2)


def test_poincare_maps_and_distance(gen):
    for c in (0.5, 2.0):
        x = expmap0(0.4 * torch.randn(16, 3, generator=gen, dtype=torch.float64), c)
        y = expmap0(0.6 * torch.randn(16, 3, generator=gen, dtype=torch.float64), c)
        v = torch.randn(16, 3, generator=gen, dtype=torch.float64) / conformal_factor(x, c)
        assert torch.allclose(logmap(x, expmap(x, v, c), c), v, atol=1e-10)
        assert torch.allclose(logmap0(expmap0(v, c), c), v, atol=1e-10)
        nx, ny = x.pow(2).sum(-1), y.pow(2).sum(-1)
        arcosh = torch.acosh(1 + 2 * c * (x - y).pow(2).sum(-1) / ((1 - c * nx) * (1 - c * ny))) / c**0.5
        assert torch.allclose(poincare_distance(x, y, c), arcosh, atol=1e-9)
        far = expmap0(1e4 * torch.randn(16, 3, generator=gen), c)
        assert (far.norm(dim=-1) < c**-0.5).all()
        assert torch.allclose(mobius_add(torch.zeros_like(x), x, c), x, atol=1e-12)


def test_poincare_gradients_finite_at_boundary():
    x = torch.tensor([[1 - 1e-7, 0.0, 0.0]], requires_grad=True)
    (poincare_distance(x, torch.zeros(1, 3), 1.0) + logmap0(x, 1.0).sum()).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_hgcn_curvature_is_learnable_and_neighbors_are_masked(gen):
    expert = HGCNExpert(input_dim=9, poincare_dim=4, hidden_dims=(16,), out_dim=8)
    x = small_input("hgcn", gen)[0]
    nb = small_input("hgcn", gen, bsz=B * 3)[0].reshape(B, 3, 9)
    mask = torch.tensor([[True, True, False]] * B)
    out = expert(x, nb, mask)
    nb2 = nb.clone()
    nb2[:, 2] = small_input("hgcn", gen)[0]  # change only the masked neighbour
    assert torch.allclose(expert(x, nb2, mask), out, atol=1e-6)
    out.pow(2).sum().backward()
    assert expert.rho.grad is not None and expert.rho.grad.abs().sum() > 0
    assert (expert.curvatures > 0).all()
    with pytest.raises(ValueError, match="unit ball"):
        expert(torch.cat([torch.full((2, 4), 0.9), torch.zeros(2, 5)], 1))


def test_temporal_is_causal(gen):
    expert = TemporalExpert(txn_dim=5, session_dim=3, d_model=8, ltc_hidden=6, patch_len=4).double()
    txn = torch.randn(2, 12, 5, generator=gen, dtype=torch.float64)
    sess = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)
    base = expert.sequence_outputs(txn, sess)
    txn2, sess2 = txn.clone(), sess.clone()
    txn2[:, 8:] += 5.0
    sess2[:, 3:] += 5.0
    new = expert.sequence_outputs(txn2, sess2)
    assert torch.allclose(new["ssm"][:, :8], base["ssm"][:, :8], atol=1e-12)
    assert not torch.allclose(new["ssm"][:, 8:], base["ssm"][:, 8:])
    assert torch.allclose(new["ltc"][:, :3], base["ltc"][:, :3], atol=1e-12)
    assert torch.allclose(new["attention"][:, :2], base["attention"][:, :2], atol=1e-12)
    # one missing sequence: the other branch still runs
    assert expert(txn, None).shape == (2, 64)


def _h0_bruteforce(f):
    parent, birth, pairs = {}, {}, []

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in sorted(range(len(f)), key=lambda j: (f[j], j)):
        parent[i], birth[i] = i, f[i]
        for j in (i - 1, i + 1):
            if j in parent and find(i) != find(j):
                ri, rj = find(i), find(j)
                young, old = (ri, rj) if (birth[ri], ri) > (birth[rj], rj) else (rj, ri)
                pairs.append((birth[young], f[i]))
                parent[young] = old
    pairs.append((min(f), max(f)))
    return sorted(p for p in pairs if p[1] > p[0])


def test_persistence_diagrams_hold_the_bruteforce_pairs():
    sig = np.round(np.random.default_rng(1).normal(size=(25, 11)), 1)
    dg, mk = persistence_diagrams(sig[:, :, None], max_points=11, superlevel=False)
    sig = (sig - sig.mean(1, keepdims=True)) / (sig.std(1, keepdims=True) + 1e-8)  # as the diagrams see it
    for i in range(len(sig)):
        got = sorted(map(tuple, dg[i, mk[i], :2].astype(np.float64).round(4)))
        assert got == [tuple(np.round(p, 4)) for p in _h0_bruteforce(sig[i])]
    with pytest.raises(ValueError, match="NaN"):
        persistence_diagrams(np.array([[[0.0], [np.nan]]]))


def test_persistence_diagrams_shapes():
    seq = np.random.default_rng(0).normal(size=(5, 30, 2))
    dg, mk = persistence_diagrams(seq, max_points=8)
    assert dg.shape == (5, 8, 3) and mk.shape == (5, 8) and mk.any(1).all()
    assert set(np.unique(dg[..., 2][mk])) <= {0.0, 1.0, 2.0, 3.0}  # 2 channels x (sub, super)
    assert (dg[..., 1][mk] > dg[..., 0][mk]).all() and (dg[~mk] == 0).all()


def test_perslay_permutation_invariant_and_padding_inert(gen):
    expert = PersLayExpert(n_channels=3, n_centres=4, hidden_dims=(16,)).double()
    dg, mask = small_input("perslay", gen)
    dg = dg.double()
    out = expert(dg, mask)
    perm = torch.randperm(6, generator=gen)
    assert torch.allclose(expert(dg[:, perm], mask[:, perm]), out, atol=1e-12)
    junk = dg.clone()
    junk[~mask] = torch.tensor([float("nan"), 50.0, 1.0], dtype=torch.float64)
    assert torch.allclose(expert(junk, mask), out, atol=1e-12)
    with pytest.raises(ValueError, match="channel ids"):
        bad = dg.clone()
        bad[0, 0, 2] = 7
        expert(bad, mask)


def test_notears_h_dag_cycle_and_gradient(gen):
    W = torch.triu(torch.randn(5, 5, generator=gen, dtype=torch.float64), 1)
    assert abs(float(notears_h(W))) < 1e-12
    Wc = W.clone()
    Wc[4, 0] = 0.3
    assert float(notears_h(Wc)) > 0
    Wg = Wc.clone().requires_grad_(True)
    notears_h(Wg).backward()
    assert torch.allclose(Wg.grad, torch.linalg.matrix_exp(Wc * Wc).T * 2 * Wc, atol=1e-10)
    e = torch.zeros_like(Wc)
    e[4, 0] = 1e-6
    fd = (notears_h(Wc + e) - notears_h(Wc - e)) / 2e-6
    assert abs(float(fd) - float(Wg.grad[4, 0])) < 1e-7


def test_causal_regularizer(gen):
    expert = CausalExpert(input_dim=30, n_vars=6, hidden_dim=16, lambda_h=1.0, lambda_l1=0.0, lambda_rec=0.0)
    expert(torch.randn(4, 30, generator=gen))
    assert torch.allclose(expert.regularizer(), notears_h(expert.adjacency))
    assert torch.equal(expert.adjacency.diagonal(), torch.zeros(6))


def test_sinkhorn_marginals_and_lp_gap():
    from scipy.optimize import linprog

    rng = np.random.default_rng(2)
    a, b = rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(3))
    C = rng.uniform(size=(4, 3))
    A_eq = np.vstack([np.kron(np.eye(4), np.ones(3)), np.kron(np.ones(4), np.eye(3))])
    exact = linprog(C.ravel(), A_eq=A_eq, b_eq=np.r_[a, b], bounds=(0, None), method="highs").fun
    gaps = []
    for eps in (0.5, 0.05, 0.005):
        cost, P = sinkhorn_log(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(C), eps, 500)
        assert torch.allclose(P.sum(1), torch.from_numpy(a), atol=1e-8)
        assert torch.allclose(P.sum(0), torch.from_numpy(b), atol=1e-10)
        gaps.append(float(cost) - exact)
    assert gaps[0] > gaps[1] > gaps[2] > -1e-9 and gaps[2] < 1e-3
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_log(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(C), 0.0)


def test_ot_values_are_bounded(gen):
    expert = OptimalTransportExpert(input_dim=30, n_bins=6, n_prototypes=4, hidden_dims=(16,))
    dist = expert.distances(torch.randn(5, 30, generator=gen))
    # OT_eps = <P, C> - eps H(P) with H(P) in [1, 1 + 2 log K] and <P, C> in [0, max C = 1]
    low, high = -expert.eps * (1 + 2 * np.log(6)), 1.0 - expert.eps
    assert dist.shape == (5, 4) and (dist >= low).all() and (dist <= high).all()
    assert torch.allclose(expert.ground_cost().diagonal(), torch.zeros(6))
    assert float(expert.ground_cost().detach().max()) == pytest.approx(1.0)


def test_lightgcn_expert_residual(gen):
    expert = LightGCNExpert(input_dim=12, hidden_dim=16, out_dim=12)
    assert isinstance(expert.skip, torch.nn.Identity)
    assert LightGCNExpert(input_dim=12, out_dim=64)(torch.randn(2, 12, generator=gen)).shape == (2, 64)


# ---------------------------------------------------------------- offline inputs from the world


def test_poincare_hierarchy_embedding_keeps_the_tree():
    from ple.experts.hgcn import poincare_distance, poincare_hierarchy_embedding

    cat = np.repeat(np.arange(3), 8)
    sub = np.repeat(np.arange(6), 4)
    brand = np.repeat(np.arange(12), 2)
    pts = torch.from_numpy(poincare_hierarchy_embedding(cat, sub, brand, dim=8)).double()
    assert pts.shape == (24, 8) and (pts.norm(dim=1) < 1).all()
    d = poincare_distance(pts[:, None], pts[None, :], 1.0)
    same_brand = d[0, 1]
    same_cat_other_sub = d[0, 4:8].mean()
    other_cat = d[0, 8:].mean()
    assert same_brand < same_cat_other_sub < other_cat
    with pytest.raises(ValueError, match="one length"):
        poincare_hierarchy_embedding(cat, sub[:-1], brand)


def test_customer_hierarchy_inputs():
    from ple.experts.hgcn import customer_hierarchy_inputs

    pts = np.array([[0.5, 0.0], [0.0, 0.5], [-0.3, 0.3]], dtype=np.float32)
    inter = np.array([[0, 1], [0, 1], [1, 0], [1, 1], [1, 2], [1, 0]])
    own, nbr, mask = customer_hierarchy_inputs(inter, pts, n_customers=3, max_neighbors=2)
    assert np.allclose(own[0], pts[1], atol=1e-6)  # one merchant: the customer sits on it
    assert np.allclose(own[2], 0) and not mask[2].any()  # no interactions: the origin
    assert mask[1].all() and np.allclose(nbr[1, 0], pts[0])  # most visited first
    assert (np.linalg.norm(own, axis=1) < 1).all()


def test_world_expert_inputs_feed_the_pool():
    from ple.data.world import generate
    from ple.experts.pool import world_expert_inputs

    world = generate(60, seed=0, profile="ci")
    inputs, config = world_expert_inputs(world, lightgcn_epochs=1, diagram_points=8, max_neighbors=4)
    assert inputs.batch_size == 60 and inputs.collaborative.shape == (60, 64)
    assert inputs.hierarchy.shape == (60, config.hierarchy_dim)
    assert inputs.hierarchy_neighbors.shape == (60, 4, config.hierarchy_dim)
    assert inputs.diagrams.shape == (60, 8, 3)
    config.overrides = {"temporal": {"d_model": 8, "d_state": 2, "ltc_hidden": 4}}
    out = ExpertPool(config)(inputs.index(slice(0, 5)))
    assert out.shared.shape == (5, 512) and torch.isfinite(out.shared).all()


def test_benchmark_rows():
    from ple.experts.pool import benchmark_experts, synthetic_expert_inputs

    cfg = ExpertPoolConfig(overrides={"temporal": {"d_model": 8, "d_state": 2, "ltc_hidden": 4}})
    pool = ExpertPool(cfg, names=("lightgcn", "temporal"))
    rows = benchmark_experts(synthetic_expert_inputs(4, cfg, txn_len=12, session_len=6, n_points=4),
                             pool, reps=1, warmup=0)
    assert [r["expert"] for r in rows] == ["lightgcn", "temporal"]
    assert all(r["fwd_bwd_ms"] > 0 and r["parameters"] > 0 and r["batch_size"] == 4 for r in rows)
