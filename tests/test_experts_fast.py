"""The fast forms of PLE-3's experts against clear references and libraries: the chunked selective
scan (values, gradients, memory), the closed-form liquid cell, the converged Sinkhorn layer (POT),
the HGCN layer (a float64 loop, geoopt), DeepFM's shared field embeddings, H0 pairs (gudhi)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ple.checks import validation
from ple.experts.deepfm import POSTS_FIELD_SIZES, DeepFMExpert, fm_interaction
from ple.experts.hgcn import (
    HGCNExpert,
    HGCNLayer,
    conformal_factor,
    expmap,
    expmap0,
    logmap,
    logmap0,
    mobius_add,
    mobius_matvec,
    poincare_distance,
)
from ple.experts.optimal_transport import (
    OptimalTransportExpert,
    sinkhorn_potentials,
    sinkhorn_value,
)
from ple.experts.perslay import persistence_diagrams
from ple.experts.temporal import (
    LiquidCell,
    SelectiveSSM,
    TemporalExpert,
    _CausalConvSiLU,
    _LinearRecurrence,
    _LiquidSteps,
    selective_scan,
    ssd_scan,
)

f64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ---------------------------------------------------------------- the selective scan (eq-ssm)


def sequential_scan(u, delta, A, B, C, D=None, h0=None):
    """eq-ssm step by step: h_t = exp(delta_t a) h_{t-1} + delta_t u_t B_t^T, y_t = h_t C_t + D u_t."""
    bsz, T, H, P = u.shape
    h = torch.zeros(bsz, H, P, B.shape[-1], dtype=u.dtype) if h0 is None else h0.clone()
    ys = []
    for t in range(T):
        decay = torch.exp(delta[:, t] * A)[:, :, None, None]
        h = decay * h + (delta[:, t, :, None] * u[:, t])[..., None] * B[:, t, None, None, :]
        ys.append((h * C[:, t, None, None, :]).sum(-1))
    y = torch.stack(ys, 1)
    return y if D is None else y + u * D[:, None]


def scan_inputs(gen, bsz=2, T=23, H=3, P=2, N=4, dtype=f64):
    u = torch.randn(bsz, T, H, P, generator=gen, dtype=dtype)
    delta = 0.05 + torch.rand(bsz, T, H, generator=gen, dtype=dtype)
    A = -3 * torch.rand(H, generator=gen, dtype=dtype) - 0.1
    B = torch.randn(bsz, T, N, generator=gen, dtype=dtype)
    C = torch.randn(bsz, T, N, generator=gen, dtype=dtype)
    D = torch.randn(H, generator=gen, dtype=dtype)
    h0 = torch.randn(bsz, H, P, N, generator=gen, dtype=dtype)
    return u, delta, A, B, C, D, h0


@pytest.mark.parametrize("chunk_len", [1, 4, 5, 7, 23, 64])
def test_chunked_scan_equals_sequential_recurrence(gen, chunk_len):
    u, delta, A, B, C, D, h0 = scan_inputs(gen)
    fast = selective_scan(u, delta, A, B, C, D, h0, chunk_len=chunk_len)
    assert torch.allclose(fast, sequential_scan(u, delta, A, B, C, D, h0), atol=1e-12, rtol=0)


def test_chunked_scan_last_state(gen):
    u, delta, A, B, C, _, h0 = scan_inputs(gen, T=11)
    _, h_last = ssd_scan(u, delta * A, B, C, scale=delta, h0=h0, chunk_len=4)
    h = h0.clone()
    for t in range(11):
        h = torch.exp(delta[:, t] * A)[:, :, None, None] * h + (
            delta[:, t, :, None] * u[:, t])[..., None] * B[:, t, None, None, :]
    assert torch.allclose(h_last, h, atol=1e-12)


def test_chunked_scan_gradcheck(gen):
    args = [t.requires_grad_(True) for t in scan_inputs(gen, bsz=1, T=9, H=2, P=2, N=3)]
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk_len=4), args, eps=1e-6, atol=1e-8)


def test_chunked_scan_is_finite_for_extreme_decays(gen):
    # decays exp(-delta |a|) down to e^-3000: a cumulative product would underflow and divide by 0
    u, delta, A, B, C, D, _ = scan_inputs(gen, dtype=torch.float32)
    delta = delta * 1000
    y = selective_scan(u, delta, A, B, C, D, chunk_len=8)
    assert torch.isfinite(y).all()
    ref = sequential_scan(*(t.double() for t in (u, delta, A, B, C, D)))
    assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-4)


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of fn()."""
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()  # a view counts with its whole base
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def test_chunked_scan_memory_is_bounded(gen):
    bsz, T, H, P, N, L = 4, 256, 1, 64, 16, 16
    u = torch.randn(bsz, T, H, P, generator=gen, requires_grad=True)
    delta = (0.01 + torch.rand(bsz, T, H, generator=gen)).requires_grad_(True)
    A = -torch.ones(H, requires_grad=True)
    B = torch.randn(bsz, T, N, generator=gen, requires_grad=True)
    C = torch.randn(bsz, T, N, generator=gen, requires_grad=True)
    got = saved_bytes(lambda: selective_scan(u, delta, A, B, C, chunk_len=L))
    all_states = 4 * bsz * T * H * P * N  # what a scan that keeps h_t for every step would hold
    # the bound of ssd_scan's docstring, with a constant: O(B T (H P + H L + N) + B (T / L) H P N)
    bound = 4 * (bsz * T * (H * P + H * L + N) + bsz * (T // L + 1) * H * P * N)
    assert got <= 8 * bound, (got, bound)
    assert got < all_states / 2, (got, all_states)


def test_temporal_batch_slices_change_no_value(gen):
    torch.manual_seed(0)
    expert = TemporalExpert(txn_dim=5, session_dim=3, d_model=8, ltc_hidden=6, patch_len=4, batch_slice=3).double()
    txn = torch.randn(7, 12, 5, generator=gen, dtype=f64)
    sess = torch.randn(7, 6, 3, generator=gen, dtype=f64)
    sliced = expert(txn, sess)
    grads = torch.autograd.grad(sliced.square().sum(), list(expert.parameters()))
    expert.batch_slice = 100  # the whole batch at once
    whole = expert(txn, sess)
    assert torch.allclose(sliced, whole, atol=1e-12)
    for g_s, g_w in zip(grads, torch.autograd.grad(whole.square().sum(), list(expert.parameters()))):
        assert torch.allclose(g_s, g_w, atol=1e-10)
    assert torch.allclose(expert(txn, None), TemporalExpert.forward(expert, txn, None), atol=0)
    with pytest.raises(ValueError, match="batch_slice"):
        TemporalExpert(batch_slice=0)


def test_temporal_saved_tensors_do_not_grow_with_the_batch(gen):
    # the largest tensor kept for the backward pass is a slice's, however many customers come in
    expert = TemporalExpert(txn_dim=4, session_dim=3, d_model=8, ltc_hidden=4, patch_len=5, batch_slice=8)

    def largest_saved(bsz: int) -> int:
        txn = torch.randn(bsz, 30, 4, generator=gen)
        sess = torch.randn(bsz, 10, 3, generator=gen)
        inputs = {txn.untyped_storage().data_ptr(), sess.untyped_storage().data_ptr()}
        sizes = [0]

        def pack(t):
            if t.untyped_storage().data_ptr() not in inputs:
                sizes.append(t.untyped_storage().nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            expert(txn, sess)
        return max(sizes)

    assert largest_saved(64) == largest_saved(8)


def test_selective_ssm_block_is_causal(gen):
    ssm = SelectiveSSM(8, d_state=4, expand=2, n_heads=2, chunk_len=5).double()
    x = torch.randn(2, 17, 8, generator=gen, dtype=f64)
    x2 = x.clone()
    x2[:, 9:] += torch.randn(2, 8, 8, generator=gen, dtype=f64)
    y, y2 = ssm(x), ssm(x2)
    assert torch.allclose(y[:, :9], y2[:, :9], atol=1e-12) and not torch.allclose(y[:, 9:], y2[:, 9:])



@pytest.mark.parametrize("T", [1, 2, 3, 11])
def test_causal_conv_silu_is_the_depthwise_conv1d(gen, T):
    # the block's shifted multiply-adds against torch's depthwise conv1d, cut to its causal part
    C, K = 5, 4
    conv = torch.nn.Conv1d(C, C, K, groups=C, padding=K - 1).double()
    u = torch.randn(3, T, C, generator=gen, dtype=f64, requires_grad=True)
    want = F.silu(conv(u.transpose(1, 2))[..., :T].transpose(1, 2))
    got = _CausalConvSiLU.apply(u, conv.weight.squeeze(1), conv.bias)
    assert torch.allclose(got, want, atol=1e-13)
    w = conv.weight.detach().squeeze(1).clone().requires_grad_(True)
    b = conv.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(_CausalConvSiLU.apply, (u, w, b))


def test_selective_ssm_inputs_match_the_conv1d_block(gen):
    ssm = SelectiveSSM(8, d_state=4, expand=2, n_heads=2).double()
    x = torch.randn(2, 9, 8, generator=gen, dtype=f64)
    u, z = ssm.in_proj(x).chunk(2, dim=-1)  # the block as written: one projection, then conv1d
    u = F.silu(ssm.conv(u.transpose(1, 2))[..., :9].transpose(1, 2))
    p = ssm.ssm_inputs(x)
    assert torch.allclose(p["u"].flatten(2), u, atol=1e-13) and torch.allclose(p["z"].flatten(2), z)


def test_linear_recurrence_matches_a_loop_and_gradcheck(gen):
    a = torch.rand(2, 7, 3, generator=gen, dtype=f64, requires_grad=True)
    b = torch.randn(2, 7, 3, generator=gen, dtype=f64, requires_grad=True)
    x, xs = torch.zeros(2, 3, dtype=f64), []
    for t in range(7):
        x = a[:, t] * x + b[:, t]
        xs.append(x)
    b_before = b.detach().clone()
    assert torch.allclose(_LinearRecurrence.apply(a, b), torch.stack(xs, 1), atol=1e-14)
    one = b.detach()[:, :1].clone()  # T = 1: already contiguous time-major, must not be filled in place
    assert torch.equal(_LinearRecurrence.apply(a.detach()[:, :1], one), one)
    assert torch.equal(b.detach(), b_before)
    assert torch.autograd.gradcheck(_LinearRecurrence.apply, (a, b))
    assert torch.autograd.gradcheck(_LinearRecurrence.apply, (a[:, :1], b[:, :1]))


# ---------------------------------------------------------------- the liquid cell (eq-cfc)


@pytest.mark.parametrize("with_dt", [False, True])
def test_liquid_steps_equal_autograd_through_the_step_terms(gen, with_dt):
    # the hand-written derivatives of _LiquidSteps against autograd through step_terms and the recurrence
    cell = LiquidCell(3, 4).double()
    inputs = torch.randn(2, 7, 3, generator=gen, dtype=f64)
    dt = (0.2 + torch.rand(2, 7, generator=gen, dtype=f64)).requires_grad_(True) if with_dt else None
    weight = torch.randn(2, 7, 4, generator=gen, dtype=f64)
    params = list(cell.parameters()) + ([dt] if with_dt else [])
    fast = cell.recur(inputs, dt)
    slow = _LinearRecurrence.apply(*cell.step_terms(inputs, dt))
    assert torch.allclose(fast, slow, atol=1e-14)
    for g_f, g_s in zip(torch.autograd.grad((fast * weight).sum(), params),
                        torch.autograd.grad((slow * weight).sum(), params)):
        assert torch.allclose(g_f, g_s, atol=1e-12)
    pre = cell.w_in(inputs).detach().requires_grad_(True)
    inv_tau = torch.rand(4, generator=gen, dtype=f64).add(0.5).requires_grad_(True)
    A = torch.randn(4, generator=gen, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(_LiquidSteps.apply, (pre, inv_tau, A, dt))



def test_liquid_cell_is_the_exact_solution_of_the_ltc_ode(gen):
    from scipy.integrate import solve_ivp

    cell = LiquidCell(3, 4).double()
    inputs = torch.randn(2, 6, 3, generator=gen, dtype=f64)
    dt = 0.2 + torch.rand(2, 6, generator=gen, dtype=f64)
    states = cell(inputs, dt).detach().numpy()
    f = torch.sigmoid(cell.w_in(inputs)).detach().numpy()
    inv_tau = (1 / (F.softplus(cell.tau_raw) + 1e-3)).detach().numpy()
    A = cell.A.detach().numpy()
    for b in range(2):
        x = np.zeros(4)
        for t in range(6):  # dx/ds = -(1/tau + f_t) x + f_t A, input held over the step
            ft = f[b, t]
            sol = solve_ivp(lambda s, z, ft=ft: -(inv_tau + ft) * z + ft * A, (0, float(dt[b, t])), x,
                            rtol=1e-11, atol=1e-13)
            x = sol.y[:, -1]
            assert np.allclose(states[b, t], x, atol=1e-8), (b, t)


def test_liquid_cell_gradcheck(gen):
    cell = LiquidCell(3, 2).double()
    inputs = torch.randn(1, 5, 3, generator=gen, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i: cell(i), (inputs,))


# ---------------------------------------------------------------- optimal transport (eq-ot)


def ot_problem(gen, R=40, Q=6, K=8):
    a = torch.softmax(2 * torch.randn(R, K, generator=gen, dtype=f64), -1)
    b = torch.softmax(2 * torch.randn(Q, K, generator=gen, dtype=f64), -1)
    y = torch.randn(K, 3, generator=gen, dtype=f64)
    C = (y[:, None] - y[None]).abs().sum(-1)
    return a, b, C / C.max()


def test_sinkhorn_value_matches_pot_at_the_expert_settings(gen):
    ot = pytest.importorskip("ot")
    expert = OptimalTransportExpert(input_dim=5)
    eps, opts = expert.eps, expert.sinkhorn_options
    a, b, C = ot_problem(gen)
    value = sinkhorn_value(a, b, C, eps, **opts)
    f, g, err = sinkhorn_potentials(a, b, C, eps, **opts)
    assert float(err.max()) < opts["tol"]
    P = torch.exp((f[..., :, None] + g[..., None, :] - C) / eps)  # [R, Q, K, K]
    assert torch.allclose(P.sum(-2), b.expand_as(P.sum(-2)), atol=1e-12)  # columns: exact
    worst = 0.0
    for i in range(len(a)):
        for p in range(len(b)):
            Pp = ot.sinkhorn(a[i].numpy(), b[p].numpy(), C.numpy(), eps, method="sinkhorn_log",
                             numItermax=100000, stopThr=1e-14)
            v = (Pp * C.numpy()).sum() + eps * (Pp * np.log(np.maximum(Pp, 1e-300))).sum() - eps
            worst = max(worst, abs(v - float(value[i, p])))
    assert worst < 1e-6, worst



def test_sinkhorn_stops_each_pair_at_the_tolerance(gen):
    # pairs stop one by one: every pair meets the tolerance, and a pair's potentials are those it
    # gets alone, whatever else is in the batch
    a, b, C = ot_problem(gen, R=64, Q=6)
    a = torch.cat([a, torch.softmax(8 * torch.randn(8, 8, generator=gen, dtype=f64), -1)])  # slow pairs
    f, g, err = sinkhorn_potentials(a, b, C, 0.1, tol=1e-6, max_iter=2000)
    assert float(err.max()) < 1e-6
    for i in (0, 5, 70):
        f1, g1, _ = sinkhorn_potentials(a[i : i + 1], b, C, 0.1, tol=1e-6, max_iter=2000)
        assert torch.allclose(f1[0], f[i], atol=1e-12) and torch.allclose(g1[0], g[i], atol=1e-12)
    # without a tolerance every pair runs max_iter iterations
    _, _, err_fixed = sinkhorn_potentials(a, b, C, 0.1, tol=None, max_iter=7)
    assert torch.isfinite(err_fixed).all() and float(err_fixed.max()) > 1e-6


def test_sinkhorn_cost_against_exact_ot(gen):
    ot = pytest.importorskip("ot")
    a, b, C = ot_problem(gen, R=10, Q=3)
    eps = 0.1
    f, g, _ = sinkhorn_potentials(a, b, C, eps, tol=1e-10, max_iter=5000)
    P = torch.exp((f[..., :, None] + g[..., None, :] - C) / eps)
    cost = (P * C).sum((-2, -1))
    for i in range(10):
        for p in range(3):
            exact = ot.emd2(a[i].numpy(), b[p].numpy(), C.numpy())
            # 0 <= <P_eps, C> - OT <= eps (H(P_eps) - H(P*)) <= eps log(K^2)
            assert -1e-9 <= float(cost[i, p]) - exact <= eps * math.log(C.shape[0] ** 2)


def test_sinkhorn_value_gradients_from_converged_potentials(gen):
    a, b, C = ot_problem(gen, R=3, Q=2, K=5)
    la, lb = a.log().requires_grad_(True), b.log().requires_grad_(True)
    Cp = C.clone().requires_grad_(True)

    def fn(x, y, c):
        return sinkhorn_value(x.softmax(-1), y.softmax(-1), c, 0.1, tol=1e-13, max_iter=20000)

    assert torch.autograd.gradcheck(fn, (la, lb, Cp), eps=1e-6, atol=1e-7)


def test_sinkhorn_keeps_only_the_potentials_for_backward(gen):
    expert = OptimalTransportExpert(input_dim=20, n_bins=16, n_prototypes=16)
    a = expert.histogram(torch.randn(64, 20, generator=gen)).detach().requires_grad_(True)
    b, C = expert.prototypes(), expert.ground_cost()
    got = saved_bytes(lambda: sinkhorn_value(a, b, C, expert.eps, **expert.sinkhorn_options))
    potentials = 2 * 4 * 64 * 16 * 16  # f and g, [B, P, K] each
    assert got <= potentials + 4 * 16 * 16, got  # and C; no [B, P, K, K] plan, no iterations
    assert torch.isfinite(torch.autograd.grad(expert.head(sinkhorn_value(
        a, b, C, expert.eps, **expert.sinkhorn_options)).sum(), a)[0]).all()


def test_sinkhorn_rejects_eps_below_the_dtype_range():
    a = torch.full((1, 4), 0.25)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_potentials(a, a, torch.ones(4, 4), 0.005)
    with pytest.raises(ValueError, match="eps"):
        OptimalTransportExpert(eps=0.0)


# ---------------------------------------------------------------- HGCN (eq-hgcn-layer)


def np_mobius_add(x, y, c):
    xy, x2, y2 = x @ y, x @ x, y @ y
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c**2 * x2 * y2)


def np_exp(x, v, c):
    lam, n = 2 / (1 - c * (x @ x)), np.linalg.norm(v)
    if n == 0:
        return x
    return np_mobius_add(x, np.tanh(np.sqrt(c) * lam * n / 2) * v / (np.sqrt(c) * n), c)


def np_log(x, y, c):
    w = np_mobius_add(-x, y, c)
    lam, n = 2 / (1 - c * (x @ x)), np.linalg.norm(w)
    if n == 0:
        return np.zeros_like(w)
    return 2 / (np.sqrt(c) * lam) * np.arctanh(np.sqrt(c) * n) * w / n


def test_hgcn_layer_matches_a_loop_over_chami_equations(gen):
    layer = HGCNLayer(5, 4).double()
    with torch.no_grad():
        layer.bias.copy_(0.3 * torch.randn(4, generator=gen, dtype=f64))
    c_in, c_out = torch.tensor(0.7, dtype=f64), torch.tensor(1.6, dtype=f64)
    x = expmap0(0.6 * torch.randn(3, 4, 5, generator=gen, dtype=f64), c_in)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1], [1, 0, 0, 0]], dtype=f64)
    out = layer(x, mask, c_in, c_out).detach().numpy()
    W, bias, ci, co = layer.weight.detach().numpy(), layer.bias.detach().numpy(), 0.7, 1.6
    zero = np.zeros(5)
    for i in range(3):
        h = []
        for j in range(4):  # h_j = (W (x)_c x_j) (+)_c exp0(b)
            hj = np_exp(np.zeros(4), W @ np_log(zero, x[i, j].numpy(), ci), ci)
            h.append(np_mobius_add(hj, np_exp(np.zeros(4), bias, ci), ci))
        nbrs = [j for j in range(4) if mask[i, j] > 0]
        mean = sum(np_log(h[0], h[j], ci) for j in nbrs) / len(nbrs)
        a = np_exp(h[0], mean, ci)
        t = np_log(np.zeros(4), a, ci)
        expect = np_exp(np.zeros(4), t / (1 + np.exp(-t)), co)  # SiLU, then exp0 at c_out
        assert np.allclose(out[i], expect, atol=1e-10), (i, out[i], expect)


def test_distance_along_the_exponential_map_is_the_riemannian_length(gen):
    for c in (0.4, 1.0, 2.5):
        x = expmap0(0.3 * torch.randn(16, 6, generator=gen, dtype=f64) / math.sqrt(c), c)
        v = 0.3 * torch.randn(16, 6, generator=gen, dtype=f64) / math.sqrt(c)  # lambda_x |v|: a few units
        d = poincare_distance(x, expmap(x, v, c), c)
        assert torch.allclose(d, conformal_factor(x, c).squeeze(-1) * v.norm(dim=-1), atol=1e-10)


def test_manifold_ops_match_geoopt(gen):
    geoopt = pytest.importorskip("geoopt")
    for c in (0.3, 1.0, 2.2):
        ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=f64))
        x = expmap0(0.5 * torch.randn(32, 5, generator=gen, dtype=f64), c)
        y = expmap0(0.7 * torch.randn(32, 5, generator=gen, dtype=f64), c)
        v = 0.4 * torch.randn(32, 5, generator=gen, dtype=f64)
        W = torch.randn(3, 5, generator=gen, dtype=f64)
        pairs = [
            (mobius_add(x, y, c), ball.mobius_add(x, y)),
            (expmap(x, v, c), ball.expmap(x, v)),
            (logmap(x, y, c), ball.logmap(x, y)),
            (expmap0(v, c), ball.expmap0(v)),
            (logmap0(y, c), ball.logmap0(y)),
            (poincare_distance(x, y, c), ball.dist(x, y)),
            (conformal_factor(x, c), ball.lambda_x(x, keepdim=True)),
            (mobius_matvec(W, x, c), ball.mobius_matvec(W, x)),
        ]
        for ours, theirs in pairs:
            assert torch.allclose(ours, theirs, atol=1e-10), (c, (ours - theirs).abs().max())


def test_hgcn_forward_reads_no_device_value(gen, monkeypatch):
    expert = HGCNExpert(input_dim=9, poincare_dim=4, hidden_dims=(16,))
    x = torch.cat([expmap0(0.5 * torch.randn(5, 4, generator=gen), 1.0), torch.randn(5, 5, generator=gen)], 1)

    def refuse(*_args, **_kwargs):
        raise AssertionError("a device value was read into Python")

    for name in ("__bool__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with validation(False):
        out = expert(x, torch.zeros(5, 2, 9), torch.ones(5, 2))
    monkeypatch.undo()
    assert out.shape == (5, 128) and torch.isfinite(out).all()


def test_curvatures_stay_positive():
    expert = HGCNExpert(input_dim=9, poincare_dim=4, hidden_dims=(16,))
    with torch.no_grad():
        expert.rho.fill_(-50.0)
    assert (expert.curvatures > 0).all()
    with pytest.raises(ValueError, match="curvature"):
        expmap0(torch.zeros(2), -1.0)


# ---------------------------------------------------------------- DeepFM (Guo et al. 2017)


def test_deepfm_fields_follow_the_posts_layout():
    from ple.data.world import FEATURE_BLOCKS

    layout = sorted((s.start, s.stop) for n, s in FEATURE_BLOCKS.items()
                    if n not in ("base", "multi_source", "domain", "multidisciplinary", "model_derived",
                                 "extended_source", "merchant_hierarchy", "amount_histogram",
                                 "causal_pairs", "feature_crosses"))
    assert tuple(b - a for a, b in layout) == POSTS_FIELD_SIZES
    assert DeepFMExpert().deep[0][0].in_features == len(POSTS_FIELD_SIZES) * 16


def test_deepfm_deep_part_reads_the_fm_embeddings(gen):
    expert = DeepFMExpert(input_dim=7, embed_dim=3, field_sizes=(2, 4, 1), hidden_dims=(5,)).double()
    x = torch.randn(4, 7, generator=gen, dtype=f64)
    e = expert.field_embeddings(x)
    V = expert.v.detach()
    for f, (lo, hi) in enumerate([(0, 2), (2, 6), (6, 7)]):  # e_f = sum_{i in f} x_i v_i
        assert torch.allclose(e[:, f], x[:, lo:hi] @ V[lo:hi], atol=1e-12)
    assert torch.allclose(e.sum(1), x @ V, atol=1e-12)  # the FM's x V is the sum of the fields
    # the output depends on V through the deep part too: with the FM and linear paths cut, a
    # change of V still changes the output
    with torch.no_grad():
        expert.proj.weight[:, : 1 + 3] = 0
        before = expert(x)
        expert.v.add_(0.1)
    assert not torch.allclose(expert(x), before)
    assert torch.allclose(fm_interaction(x, expert.v), 0.5 * (expert.field_embeddings(x).sum(1) ** 2
                          - (x * x) @ (expert.v * expert.v)), atol=1e-12)
    with pytest.raises(ValueError, match="field_sizes"):
        DeepFMExpert(input_dim=7, field_sizes=(3, 3))


# ---------------------------------------------------------------- H0 persistence against gudhi


def test_h0_pairs_match_gudhi_lower_star():
    gudhi = pytest.importorskip("gudhi")
    rng = np.random.default_rng(3)
    signals = np.round(rng.normal(size=(30, 25)), 1)  # ties included
    dg, mk = persistence_diagrams(signals[:, :, None], max_points=25, superlevel=False)
    signals = (signals - signals.mean(1, keepdims=True)) / (signals.std(1, keepdims=True) + 1e-8)
    for s, f in enumerate(signals):
        st = gudhi.SimplexTree()
        for i, v in enumerate(f):
            st.insert([i], filtration=float(v))
        for i in range(len(f) - 1):
            st.insert([i, i + 1], filtration=float(max(f[i], f[i + 1])))
        st.compute_persistence(persistence_dim_max=True)
        pairs = st.persistence_intervals_in_dimension(0)
        finite = [(float(b), float(d)) for b, d in pairs if np.isfinite(d) and d > b]
        essential = [float(b) for b, d in pairs if not np.isfinite(d)]
        assert essential == [f.min()]
        # ours reports the essential class as (min f, max f), gudhi as (min f, inf)
        theirs = sorted(finite + [(f.min(), f.max())])
        ours = sorted(map(tuple, dg[s, mk[s], :2].astype(np.float64)))
        assert np.allclose(ours, theirs, atol=1e-6), (s, ours, theirs)


def test_causal_conv_backward_batches_under_vmap():
    """adaTT's per-task extraction runs the backward under vmap (is_grads_batched)."""
    from ple.experts.temporal import _CausalConvSiLU

    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    y = _CausalConvSiLU.apply(u, w, b)
    v = torch.randn(5, *y.shape, generator=g, dtype=torch.float64)
    batched = torch.autograd.grad(y, (u, w, b), v, is_grads_batched=True, retain_graph=True)
    for i in range(v.shape[0]):
        one = torch.autograd.grad(y, (u, w, b), v[i], retain_graph=True)
        for gb, go in zip(batched, one):
            assert torch.allclose(gb[i], go, atol=1e-12)


def test_ot_expert_trains_under_bf16_autocast():
    from ple.experts.optimal_transport import OptimalTransportExpert

    torch.manual_seed(0)
    expert = OptimalTransportExpert(input_dim=20, n_bins=16, n_prototypes=16)
    x = torch.randn(32, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = expert(x)
    out.float().square().mean().backward()
    grads = [p.grad for p in expert.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the solver itself ran in float32: the same value as without autocast, to bf16's precision
    with torch.no_grad():
        ref = expert.distances(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = expert.distances(x)
    assert torch.allclose(low.float(), ref.float(), rtol=2e-2, atol=2e-2)


def _grads_close(grads, ref, rel=0.1, floor=1e-3):
    """Every parameter's gradient within `rel` of the fp32 one in norm, plus `floor` times the norm of the
    whole fp32 gradient (a parameter whose gradient is ~0 is only held to that)."""
    assert grads.keys() == ref.keys()
    total = torch.sqrt(sum(g.square().sum() for g in ref.values()))
    for k, g in grads.items():
        assert torch.isfinite(g).all(), k
        assert (g.float() - ref[k]).norm() <= rel * ref[k].norm() + floor * total, k


def _fwd_bwd(module, inputs, dtype):
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = module(*inputs)
    shared = getattr(out, "shared", out)
    shared.float().square().mean().backward()
    return out, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_temporal_expert_runs_under_cpu_autocast(gen, dtype):
    # the scan, the convolution and the liquid steps run in float32 inside whatever autocast says (their
    # fused products need one dtype; the cumulative log-decays need the digits); the result stays within
    # bf16's rounding of the fp32 one: outputs to 3e-2 (about 8 bf16 steps at 1), each parameter's
    # gradient to 10% in norm (+ 1e-3 of the whole gradient's norm, for gradients that are ~0)
    torch.manual_seed(0)
    expert = TemporalExpert(txn_dim=5, session_dim=3, d_model=16, ltc_hidden=8, patch_len=4, session_dt_index=0)
    inputs = (torch.randn(6, 40, 5, generator=gen), torch.randn(6, 12, 3, generator=gen))
    ref, g_ref = _fwd_bwd(expert, inputs, None)
    low, g_low = _fwd_bwd(expert, inputs, dtype)
    assert low.dtype == dtype and torch.isfinite(low).all()
    assert torch.allclose(low.float(), ref, rtol=3e-2, atol=3e-2)
    _grads_close(g_low, g_ref)
    # the backward may run under autocast too
    with torch.autocast("cpu", dtype=dtype):
        expert(*inputs).float().sum().backward()
    # the scan itself: y and the last state in x's dtype, computed in float32
    u, delta, A, B, C = scan_inputs(gen, dtype=torch.float32)[:5]
    x, log_a, B, C = (t.to(dtype) for t in (u, delta * A, B, C))
    y, h = ssd_scan(x, log_a, B, C)
    y32, h32 = ssd_scan(*(t.float() for t in (x, log_a, B, C)))
    assert y.dtype == h.dtype == dtype and torch.equal(y, y32.to(dtype)) and torch.equal(h, h32.to(dtype))


def test_expert_pool_runs_under_cpu_bf16_autocast():
    # all seven experts, forward and backward under CPU bf16 autocast: finite, and within bf16's
    # rounding of the fp32 run (tolerances as for the temporal expert)
    from ple.experts.pool import ExpertPool, synthetic_expert_inputs

    torch.manual_seed(0)
    pool = ExpertPool()
    inputs = synthetic_expert_inputs(6, txn_len=30, session_len=12, n_points=8)
    ref, g_ref = _fwd_bwd(pool, (inputs,), None)
    low, g_low = _fwd_bwd(pool, (inputs,), torch.bfloat16)
    for name, out in low.outputs.items():
        assert torch.isfinite(out).all() and torch.allclose(out.float(), ref.outputs[name], rtol=3e-2, atol=3e-2), name
    _grads_close(g_low, g_ref)
