"""ple.gates: the two CGC stages, dim normalisation, domain-prior bias, entropy, freeze."""

from __future__ import annotations

import math

import pytest
import torch

from ple import seed_everything
from ple.checks import HyperparameterError, ShapeError, validation
from ple.gates import (
    CGCAttention,
    CGCLayer,
    TwoStageCGC,
    dim_normalization_scales,
    domain_prior_bias,
    domain_prior_mask,
    entropy_regularizer,
    registry_expert_dims,
)
from ple.tasks import EXPERT_NAMES, active_tasks, get_task

B = 6
TASKS = [t.name for t in active_tasks()]


@pytest.fixture
def h_shared() -> torch.Tensor:
    seed_everything(0)
    return torch.randn(B, sum(registry_expert_dims()))


def test_registry_dims_are_the_posts():
    dims = registry_expert_dims()
    assert len(dims) == len(EXPERT_NAMES) == 7
    assert sum(dims) == 512
    assert dims[EXPERT_NAMES.index("hgcn")] == 128


def test_normalisation_factors():
    s = dim_normalization_scales(registry_expert_dims())
    hgcn = EXPERT_NAMES.index("hgcn")
    assert s[hgcn].item() == pytest.approx(0.756, abs=5e-4)
    others = torch.cat([s[:hgcn], s[hgcn + 1 :]])
    assert torch.allclose(others, torch.full_like(others, 1.069), atol=5e-4)
    # sum_i s_i^2 d_i = sum_i d_i: the scaled concat keeps the total expected energy
    dims = torch.tensor(registry_expert_dims(), dtype=torch.float32)
    assert (s**2 * dims).sum().item() == pytest.approx(dims.sum().item(), rel=1e-6)


def test_normalisation_rejects_bad_dims():
    with pytest.raises(HyperparameterError, match=r"expert_dims\[1\] must be an int >= 1; got 0"):
        dim_normalization_scales([64, 0])
    with pytest.raises(HyperparameterError, match="expert_dims is empty"):
        dim_normalization_scales([])


def test_stage2_shapes_and_softmax(h_shared):
    gate = CGCAttention.from_tasks(TASKS)
    out, w = gate(h_shared, return_gates=True)
    assert out.shape == (B, len(TASKS), 512)
    assert w.shape == (B, len(TASKS), 7)
    assert torch.allclose(w.sum(-1), torch.ones(B, len(TASKS)), atol=1e-6)
    assert (w > 0).all()


def test_stage2_equals_per_task_block_formula(h_shared):
    gate = CGCAttention.from_tasks(TASKS[:3])
    with torch.no_grad():
        gate.weight.normal_(0, 0.05)
    out, w = gate(h_shared, return_gates=True)
    blocks = torch.split(h_shared, registry_expert_dims(), dim=-1)
    s = dim_normalization_scales(registry_expert_dims())
    for k in range(3):
        w_k = torch.softmax(h_shared @ gate.weight[k].T + gate.bias[k], dim=-1)
        ref = torch.cat([s[i] * w_k[:, i : i + 1] * blocks[i] for i in range(7)], dim=-1)
        assert torch.allclose(out[:, k], ref, atol=1e-6)
        assert torch.allclose(w[:, k], w_k, atol=1e-6)


def test_stage2_without_normalisation_is_plain_block_scaling(h_shared):
    gate = CGCAttention(2, registry_expert_dims(), dim_normalize=False)
    out = gate(h_shared)
    # zero weights, zero bias: a uniform gate, every coordinate times 1/7
    assert torch.allclose(out, h_shared.unsqueeze(1).expand(-1, 2, -1) / 7, atol=1e-6)


def test_domain_prior_bias_from_registry():
    gate = CGCAttention.from_tasks(TASKS)
    assert torch.count_nonzero(gate.weight) == 0
    for k, name in enumerate(TASKS):
        preferred = set(get_task(name).domain_experts)
        for i, expert in enumerate(EXPERT_NAMES):
            assert gate.bias[k, i].item() == (1.0 if expert in preferred else -1.0)


def test_domain_prior_bias_values():
    mask = torch.tensor([[True, False, False]])
    assert domain_prior_bias(mask, 2.0, -0.5).tolist() == [[2.0, -0.5, -0.5]]
    with pytest.raises(ShapeError, match=r"prior_mask has shape \[3\] and dtype torch.float32; expected a bool \[K, E\]"):
        domain_prior_bias(torch.ones(3))


def test_unknown_task_raises():
    with pytest.raises(ValueError, match="no_such_task"):
        domain_prior_mask(["ctr", "no_such_task"])


def test_stage1_shapes_and_mixture(h_shared):
    layer = CGCLayer(num_tasks=3, expert_dim=64, num_task_experts=2)
    task_experts = torch.randn(B, 3, 2, 64)
    out, g = layer(h_shared, task_experts, return_gates=True)
    assert out.shape == (B, 3, 64) and g.shape == (B, 3, 2 + 7)
    assert torch.allclose(g.sum(-1), torch.ones(B, 3), atol=1e-6)
    # per-task loop written from the formula
    blocks = torch.split(h_shared, registry_expert_dims(), dim=-1)
    shared = [a(b) for a, b in zip(layer.align, blocks)]
    for k in range(3):
        g_k = torch.softmax(h_shared @ layer.gate_weight[k].T + layer.gate_bias[k], dim=-1)
        experts = [task_experts[:, k, j] for j in range(2)] + shared
        ref = sum(g_k[:, i : i + 1] * e for i, e in enumerate(experts))
        assert torch.allclose(out[:, k], ref, atol=1e-5)


def test_two_stage_combined(h_shared):
    model = TwoStageCGC(4, expert_dim=32, num_task_experts=1)
    out = model(h_shared, torch.randn(B, 4, 1, 32))
    assert out.combined.shape == (B, 4, 512 + 32) == (B, 4, model.out_dim)
    loss = out.combined.pow(2).mean() + model.entropy_loss(out)
    loss.backward()
    assert model.stage1.gate_weight.grad is not None and model.stage2.weight.grad is not None


def test_input_errors(h_shared):
    gate = CGCAttention(2)
    with pytest.raises(ValueError, match=r"h_shared has shape \[6, 500\]; expected \[B, 512\]"):
        gate(torch.randn(B, 500))
    bad = h_shared.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="h_shared contains NaN"):
        gate(bad)
    bad[0, 3] = float("inf")
    with pytest.raises(ValueError, match="h_shared contains inf"):
        gate(bad)
    layer = CGCLayer(2, expert_dim=64)
    with pytest.raises(ValueError, match="task_experts has shape"):
        layer(h_shared, torch.randn(B, 3, 1, 64))
    with pytest.raises(ValueError, match="prior_mask has shape"):
        CGCAttention(2, prior_mask=torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(HyperparameterError, match="entropy_lambda must be >= 0.0; got -0.1"):
        CGCAttention(2, entropy_lambda=-0.1)
    with pytest.raises(HyperparameterError, match="num_tasks must be an int >= 1; got 0"):
        CGCLayer(0)
    with pytest.raises(HyperparameterError, match="num_task_experts must be an int >= 0; got 1.5"):
        CGCLayer(2, num_task_experts=1.5)
    with pytest.raises(HyperparameterError, match="shared_dims is empty"):
        CGCLayer(2, shared_dims=[])
    with pytest.raises(ShapeError, match=r"w has shape \[2, 7\]; expected \[B, K, E\]"):
        entropy_regularizer(torch.full((2, 7), 1 / 7))


def test_validation_off_skips_only_the_device_syncing_checks(h_shared):
    gate = CGCAttention(2)
    bad = h_shared.clone()
    bad[0, 3] = float("nan")
    with validation(False):
        out = gate(bad)  # no NaN scan (it would wait for the device); the shape is still checked
        assert torch.isnan(out[0]).any() and torch.isfinite(out[1:]).all()
        with pytest.raises(ShapeError, match="h_shared has shape"):
            gate(torch.randn(B, 500))


def test_entropy_values():
    E = 7
    uniform = torch.full((2, 3, E), 1.0 / E)
    assert entropy_regularizer(uniform, 0.01).item() == pytest.approx(-0.01 * math.log(E))
    one_hot = torch.zeros(1, 1, E)
    one_hot[..., 2] = 1.0
    assert abs(entropy_regularizer(one_hot, 1.0).item()) < 1e-30
    w = torch.softmax(torch.randn(4, 2, E, dtype=torch.float64), -1)
    H = -(w * w.log()).sum(-1)  # Shannon entropy, written out
    assert entropy_regularizer(w, 0.3).item() == pytest.approx(-0.3 * H.mean().item(), rel=1e-12)


def test_entropy_gradient_finite_at_a_saturated_gate():
    z = torch.tensor([[[0.0, 200.0, 1.0, -5.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    w = torch.softmax(z, -1)
    assert (w == 0).any()  # float32 underflow: the collapsed gate the regulariser fights
    (g,) = torch.autograd.grad(entropy_regularizer(w, 0.01), z)
    assert torch.isfinite(g).all()


def test_entropy_gradient_closed_form_and_finite_differences():
    seed_everything(1)
    z = torch.randn(3, 2, 7, dtype=torch.float64, requires_grad=True)
    lam = 0.05

    def loss(z):
        return entropy_regularizer(torch.softmax(z, -1), lam)

    assert torch.autograd.gradcheck(loss, (z,), eps=1e-6, atol=1e-7)
    (g,) = torch.autograd.grad(loss(z), z)
    w = torch.softmax(z, -1).detach()
    H = -(w * w.log()).sum(-1, keepdim=True)
    closed = lam / (3 * 2) * w * (torch.log(w) + H)
    assert torch.allclose(g, closed, atol=1e-12)


def test_entropy_loss_only_in_training_and_unfrozen(h_shared):
    gate = CGCAttention.from_tasks(TASKS[:2])
    _, w = gate(h_shared, return_gates=True)
    gate.train()
    assert gate.entropy_loss(w).item() < 0
    gate.eval()
    assert gate.entropy_loss(w).item() == 0.0
    gate.train()
    gate.freeze()
    assert gate.entropy_loss(w).item() == 0.0
    assert not gate.weight.requires_grad and not gate.bias.requires_grad
    gate.unfreeze()
    assert gate.weight.requires_grad and gate.entropy_loss(w).item() < 0
    assert not bool(gate.frozen)
    assert CGCAttention(2, entropy_lambda=0.0).train().entropy_loss(w).item() == 0.0


def test_freeze_survives_state_dict(h_shared):
    gate = CGCAttention.from_tasks(TASKS[:2])
    gate.freeze()
    state = gate.state_dict()
    assert bool(state["frozen"])
    fresh = CGCAttention.from_tasks(TASKS[:2])
    assert fresh.weight.requires_grad
    fresh.load_state_dict(state)
    assert bool(fresh.frozen) and not fresh.weight.requires_grad
    out = fresh(h_shared).sum()
    assert not out.requires_grad  # nothing in the frozen gate is trainable


def test_reproducible_by_seed(h_shared):
    seed_everything(3)
    a = CGCLayer(2)
    seed_everything(3)
    b = CGCLayer(2)
    te = torch.randn(B, 2, 1, 64)
    assert torch.equal(a(h_shared, te), b(h_shared, te))


def test_gradients_finite(h_shared):
    gate = CGCAttention.from_tasks(TASKS).train()
    out, w = gate(h_shared.requires_grad_(), return_gates=True)
    (out.pow(2).mean() + gate.entropy_loss(w)).backward()
    assert torch.isfinite(gate.weight.grad).all() and torch.isfinite(h_shared.grad).all()
    assert gate.weight.grad.abs().sum() > 0
