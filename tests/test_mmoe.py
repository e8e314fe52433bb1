"""ple.mmoe: Shared-Bottom, MMoE and OMoE — shapes, gates, errors, gradients."""

from __future__ import annotations

import pytest
import torch

from ple import seed_everything
from ple.layers import MLP, count_parameters
from ple.mmoe import MMoE, OMoE, SharedBottom

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
