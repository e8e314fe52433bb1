"""ple.mmoe: Shared-Bottom, MMoE and OMoE — shapes, gates, errors, gradients, the trainer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ple import seed_everything
from ple.layers import MLP, count_parameters
from ple.mmoe import MMoE, OMoE, SharedBottom, fit_regression, fit_regression_replicas

D, K, E, B = 12, 3, 4, 16
MODELS = {
    "shared_bottom": lambda **kw: SharedBottom(D, K, bottom_dims=(8,), tower_dims=(4,), **kw),
    "mmoe": lambda **kw: MMoE(D, K, num_experts=E, expert_dims=(8,), tower_dims=(4,), **kw),
    "omoe": lambda **kw: OMoE(D, K, num_experts=E, expert_dims=(8,), tower_dims=(4,), **kw),
}


@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Models this small train fastest on one thread, and are then immune to oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_one_tensor_per_task(name):
    outputs = MODELS[name]()(torch.randn(B, D))
    assert isinstance(outputs, list) and len(outputs) == K
    assert all(o.shape == (B, 1) for o in outputs)


@pytest.mark.parametrize("name", MODELS)
def test_task_out_dims_per_task(name):
    model = MODELS[name](task_out_dims=(1, 3, 2))
    assert [o.shape for o in model(torch.randn(B, D))] == [(B, 1), (B, 3), (B, 2)]
    assert model.task_out_dims == (1, 3, 2)
    assert all(isinstance(t, MLP) for t in model.towers)
    assert [o.shape[1] for o in MODELS[name](task_out_dims=5)(torch.randn(2, D))] == [5] * K


@pytest.mark.parametrize("name", MODELS)
def test_bad_task_out_dims(name):
    with pytest.raises(ValueError, match=r"task_out_dims has 2 entries; expected one per task \(num_tasks=3\)"):
        MODELS[name](task_out_dims=(1, 2))
    with pytest.raises(ValueError, match=r"task_out_dims\[1\] must be an int >= 1"):
        MODELS[name](task_out_dims=(1, 0, 2))


@pytest.mark.parametrize("name", MODELS)
def test_wrong_feature_dim_and_nan_are_named(name):
    model = MODELS[name]()
    with pytest.raises(ValueError, match=r"x has shape \[16, 11\]; expected \[B, 12\] \(input_dim\)"):
        model(torch.randn(B, D - 1))
    with pytest.raises(ValueError, match=r"x has shape \[12\]; expected \[B, 12\]"):
        model(torch.randn(D))
    x = torch.randn(B, D)
    x[3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(1 NaN"):
        model(x)


@pytest.mark.parametrize("name", ["mmoe", "omoe"])
def test_return_gates_on_the_simplex(name):
    model = MODELS[name]()
    outputs, gates = model(torch.randn(B, D) * 3, return_gates=True)
    assert len(outputs) == K and gates.shape == (B, K, E)
    assert (gates >= 0).all()
    assert torch.allclose(gates.sum(-1), torch.ones(B, K), atol=1e-6)


def test_mmoe_gates_differ_per_task_omoe_share_one():
    x = torch.randn(B, D)
    _, g_multi = MODELS["mmoe"]()(x, return_gates=True)
    _, g_one = MODELS["omoe"]()(x, return_gates=True)
    assert not torch.allclose(g_multi[:, 0], g_multi[:, 1])
    assert torch.equal(g_one[:, 0], g_one[:, 1]) and torch.equal(g_one[:, 1], g_one[:, 2])
    assert len(MODELS["mmoe"]().gates) == K and len(MODELS["omoe"]().gates) == 1


def test_gates_are_linear_plus_softmax():
    model = MODELS["mmoe"]()  # the paper's gate: softmax(W_k x), no bias
    assert all(isinstance(g, torch.nn.Linear) and g.bias is None for g in model.gates)
    x = torch.randn(B, D)
    _, gates = model(x, return_gates=True)
    assert torch.allclose(gates[:, 1], torch.softmax(x @ model.gates[1].weight.T, -1), atol=1e-6)
    _, extreme = model(x * 1e4, return_gates=True)  # huge logits: no overflow
    assert torch.isfinite(extreme).all()
    assert torch.allclose(extreme[:, 0], torch.softmax(model.gates[0](x * 1e4), -1), atol=1e-6)
    biased = MMoE(D, K, num_experts=E, expert_dims=(8,), gate_bias=True)  # softmax(W_k x + b_k)
    assert all(g.bias is not None for g in biased.gates)
    _, gates = biased(x, return_gates=True)
    assert torch.allclose(gates[:, 2], torch.softmax(biased.gates[2](x), -1), atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter_and_are_finite(name):
    model = MODELS[name]()
    loss = sum(o.pow(2).mean() for o in model(torch.randn(B, D)))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_one_expert_mmoe_is_a_shared_bottom():
    """With n = 1 the gate is identically 1 and MMoE reduces to eq-shared-bottom."""
    model = MMoE(D, K, num_experts=1, expert_dims=(8,), tower_dims=(4,))
    x = torch.randn(B, D)
    outputs, gates = model(x, return_gates=True)
    assert torch.equal(gates, torch.ones(B, K, 1))
    h = model.experts.member(0)(x)
    for k in range(K):
        assert torch.allclose(outputs[k], model.towers[k](h), atol=1e-6)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_experts must be an int >= 1"):
        MMoE(D, K, num_experts=0)
    with pytest.raises(ValueError, match="input_dim must be an int >= 1"):
        SharedBottom(0, K)
    with pytest.raises(ValueError, match="num_tasks must be an int >= 1"):
        OMoE(D, 0)


def test_parameter_counts_add_up():
    model = MMoE(D, 2, num_experts=E, expert_dims=(8,), tower_dims=(4,))
    experts = E * (D * 8 + 8 + 2 * 8)
    gates = 2 * E * D  # no gate bias by default
    towers = 2 * ((8 * 4 + 4 + 2 * 4) + 4 + 1)
    assert count_parameters(model) == experts + gates + towers


def test_fit_regression_learns_and_records():
    x = torch.randn(256, 4)
    y = torch.stack([x[:, 0], x[:, 1] - x[:, 2]], dim=1)
    model = MMoE(4, 2, num_experts=2, expert_dims=(8,), tower_dims=(4,))
    seen = []
    hist = fit_regression(model, x, y, x, y, steps=50, lr=1e-2, batch_size=64, eval_every=20,
                          callback=lambda step, m: seen.append((step, m.training)))
    assert hist["step"].tolist() == [0, 20, 40, 50] and [s for s, _ in seen] == [0, 20, 40, 50]
    assert not any(training for _, training in seen)  # callbacks see eval mode
    assert hist["test_mse"].shape == (4, 2) and np.isfinite(hist["test_mse"]).all()
    assert hist["test_mse"][-1].sum() < hist["test_mse"][0].sum()


def test_fit_regression_rejects_bad_data():
    x, y = torch.randn(32, 4), torch.randn(32, 2)
    model = SharedBottom(4, 2, bottom_dims=(8,), tower_dims=(4,))
    with pytest.raises(ValueError, match=r"y_train \[32\]; expected \[N, D\] and \[N, K\]"):
        fit_regression(model, x, y[:, 0], x, y, steps=1)
    bad = y.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="y_test contains NaN or inf"):
        fit_regression(model, x, y, x, bad, steps=1)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        fit_regression(model, x, y, x, y, steps=0)
    with pytest.raises(ValueError, match=r"x has shape \[32, 4\]; expected \[B, 5\]"):
        fit_regression(SharedBottom(5, 2), x, y, x, y, steps=1, batch_size=8)


def test_fit_regression_is_reproducible_by_seed():
    x = torch.randn(128, 4)
    y = torch.stack([x[:, 0], x[:, 1]], dim=1)
    runs = []
    for _ in range(2):
        seed_everything(3)
        model = SharedBottom(4, 2, bottom_dims=(8,), tower_dims=(4,))
        runs.append(fit_regression(model, x, y, x, y, steps=20, batch_size=32, seed=5, eval_every=10))
    assert np.array_equal(runs[0]["test_mse"], runs[1]["test_mse"])


@pytest.mark.parametrize("name", MODELS)
def test_replicas_follow_fit_regression_step_for_step(name):
    """Training R replicas under vmap equals training each one alone (float64)."""
    R, N = 3, 96
    models = [MODELS[name]().double() for _ in range(R)]
    alone = [copy.deepcopy(m) for m in models]
    x = torch.randn(R, N, D, dtype=torch.float64)
    y = torch.randn(R, N, K, dtype=torch.float64)
    kw = dict(steps=15, lr=1e-2, batch_size=16, seed=4, eval_every=5)
    hist = fit_regression_replicas(models, x[:, :64], y[:, :64], x[:, 64:], y[:, 64:],
                                   record_gates=name != "shared_bottom", **kw)
    assert hist["test_mse"].shape == (4, R, K) and hist["step"].tolist() == [0, 5, 10, 15]
    for r in range(R):
        ref = fit_regression(alone[r], x[r, :64], y[r, :64], x[r, 64:], y[r, 64:], **kw)
        assert np.allclose(hist["test_mse"][:, r], ref["test_mse"], rtol=1e-10, atol=1e-12)
        for (pname, a), b in zip(models[r].named_parameters(), alone[r].parameters()):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), pname  # weights copied back
    if name != "shared_bottom":
        assert hist["gate_mean"].shape == (4, R, K, E) and hist["gate_entropy"].shape == (4, R, K)
        assert np.allclose(hist["gate_mean"].sum(-1), 1.0)
        assert ((hist["gate_entropy"] >= 0) & (hist["gate_entropy"] <= 1 + 1e-12)).all()


def test_replicas_reject_mismatched_inputs():
    models = [MODELS["mmoe"]() for _ in range(2)]
    x, y = torch.randn(2, 20, D), torch.randn(2, 20, K)
    with pytest.raises(ValueError, match="got 2 models for 3 training"):
        fit_regression_replicas(models, torch.randn(3, 20, D), torch.randn(3, 20, K), x, y, steps=1)
    with pytest.raises(ValueError, match=r"x_test rows has shape \[40, 11\]; expected \[B, 12\]"):
        fit_regression_replicas(models, x, y, torch.randn(2, 20, D - 1), y, steps=1)
