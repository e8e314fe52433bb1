"""Contract tests for ple.cgc: routing, shapes, gradient isolation, errors, public surface."""

from __future__ import annotations

import pytest
import torch

import ple
import ple.cgc
import ple.checks
from ple.cgc import CGC, PLE
from ple.checks import HyperparameterError, NonFiniteError, ShapeError

K, M_T, M_S, D_IN = 3, 2, 2, 7


pytestmark = pytest.mark.usefixtures("one_thread")


def _ple(num_levels: int = 2, **kw) -> PLE:
    ple.seed_everything(0)
    args = dict(
        input_dim=D_IN,
        num_tasks=K,
        num_levels=num_levels,
        num_task_experts=M_T,
        num_shared_experts=M_S,
        expert_dims=(6, 5),
        tower_dims=(4,),
    )
    args.update(kw)
    return PLE(**args).eval()


# ---------------------------------------------------------------- routing and gate widths


def test_gate_widths_and_inputs():
    model = _ple(num_levels=3)
    for l, level in enumerate(model.levels):
        in_dim = D_IN if l == 0 else 5
        assert len(level.task_gates) == K
        for gate in level.task_gates:  # task gate: own + shared experts
            assert (gate.in_features, gate.out_features) == (in_dim, M_T + M_S)
            assert gate.bias is None  # the paper's gate: softmax(W h)
        if l < 2:  # shared gate: every expert of the level
            assert (level.shared_gate.in_features, level.shared_gate.out_features) == (
                in_dim,
                K * M_T + M_S,
            )
        else:
            assert level.shared_gate is None
        assert len(level.task_experts) == K  # one bank per task ...
        assert all(bank.num_members == M_T and bank.in_features == in_dim for bank in level.task_experts)
        assert level.shared_experts.num_members == M_S  # ... and one shared bank


def test_gates_are_linear_plus_softmax():
    model = _ple()
    for level in model.levels:
        gates = [*level.task_gates] + ([level.shared_gate] if level.shared_gate is not None else [])
        assert all(type(g) is torch.nn.Linear for g in gates)
    _, gates = model(torch.randn(4, D_IN), return_gates=True)
    for task_g, shared_g in gates:
        assert (task_g >= 0).all() and torch.allclose(task_g.sum(-1), torch.ones(4, K))
        if shared_g is not None:
            assert torch.allclose(shared_g.sum(-1), torch.ones(4))


def test_gate_bias_option():
    model = _ple(gate_bias=True)  # softmax(W h + b)
    assert all(g.bias is not None for g in model.levels[0].task_gates)
    assert model.levels[0].shared_gate.bias is not None
    preds = model(torch.randn(3, D_IN))
    assert [tuple(p.shape) for p in preds] == [(3, 1)] * K


def test_next_level_reads_task_and_shared_outputs():
    """Level 2's task-k experts read level 1's task-k output; its shared experts read g^s."""
    model = _ple(num_levels=2)
    x = torch.randn(5, D_IN)
    seen: dict[str, torch.Tensor] = {}
    l2 = model.levels[1]
    hooks = [
        l2.task_experts[k].register_forward_hook(
            lambda m, inp, out, k=k: seen.__setitem__(f"task{k}", inp[0])
        )
        for k in range(K)
    ]
    hooks.append(
        l2.shared_experts.register_forward_hook(lambda m, inp, out: seen.__setitem__("s", inp[0]))
    )
    model(x)
    for h in hooks:
        h.remove()
    first = model.levels[0](x)
    for k in range(K):
        assert torch.equal(seen[f"task{k}"], first.task[:, k])
    assert torch.equal(seen["s"], first.shared)


def test_shared_gate_mixes_every_expert_task_gate_only_own_and_shared():
    model = _ple(num_levels=2)
    level = model.levels[0]
    out = level(torch.randn(8, D_IN))
    own = lambda k: list(level.task_experts[k].parameters())  # noqa: E731
    shared = list(level.shared_experts.parameters())
    # the shared mixture depends on every task's experts and on the shared ones
    for params in [own(k) for k in range(K)] + [shared]:
        grads = torch.autograd.grad(out.shared.sum(), params, retain_graph=True)
        assert all(g.abs().max() > 0 for g in grads)
    # task k's mixture depends on its own and the shared experts, never on task j's
    for k in range(K):
        for j in range(K):
            grads = torch.autograd.grad(
                out.task[:, k].sum(), own(j), retain_graph=True, allow_unused=True
            )
            nonzero = [g is not None and bool(g.abs().max() > 0) for g in grads]
            assert all(nonzero) if j == k else not any(nonzero)
        grads = torch.autograd.grad(out.task[:, k].sum(), shared, retain_graph=True)
        assert all(g.abs().max() > 0 for g in grads)


# ---------------------------------------------------------------- shapes, equivalences


@pytest.mark.parametrize("num_levels", [1, 2, 3])
def test_output_shapes(num_levels):
    model = _ple(num_levels=num_levels, task_out_dims=(1, 3, 2))
    preds, gates = model(torch.randn(6, D_IN), return_gates=True)
    assert [tuple(p.shape) for p in preds] == [(6, 1), (6, 3), (6, 2)]
    assert len(gates) == num_levels
    assert all(tuple(t.shape) == (6, K, M_T + M_S) for t, _ in gates)


def test_cgc_level_output_shapes_and_3d_input():
    level = CGC(D_IN, K, M_T, M_S, expert_dims=(6,), shared_gate=True)
    out = level(torch.randn(4, D_IN))
    assert tuple(out.task.shape) == (4, K, 6) and tuple(out.shared.shape) == (4, 6)
    assert tuple(out.shared_gate.shape) == (4, K * M_T + M_S)
    nxt = CGC(6, K, M_T, M_S, expert_dims=(5,))
    out2 = nxt(out.task, shared_x=out.shared)
    assert tuple(out2.task.shape) == (4, K, 5) and out2.shared is None


def test_one_level_equals_cgc_plus_towers():
    model = _ple(num_levels=1)
    x = torch.randn(5, D_IN)
    cgc = CGC(D_IN, K, M_T, M_S, expert_dims=(6, 5))
    cgc.load_state_dict(model.levels[0].state_dict())
    h = cgc(x).task
    expected = [model.towers[k](h[:, k]) for k in range(K)]
    for got, want in zip(model(x), expected):
        assert torch.equal(got, want)


def test_no_task_experts_gives_mmoe_style_gates():
    model = _ple(num_levels=2, num_task_experts=0)
    _, gates = model(torch.randn(3, D_IN), return_gates=True)
    assert tuple(gates[0][0].shape) == (3, K, M_S) and tuple(gates[0][1].shape) == (3, M_S)


def test_reproducible_by_seed_and_finite_gradients():
    x = torch.randn(16, D_IN)
    a, b = _ple()(x), _ple()(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    model = _ple().train()
    loss = sum(p.pow(2).mean() for p in model(x))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------- gradient isolation


@pytest.mark.parametrize("num_levels", [1, 2])
def test_top_level_private_experts_get_only_their_task_gradient(num_levels):
    model = _ple(num_levels=num_levels)
    top = model.levels[-1]
    preds = model(torch.randn(32, D_IN))
    for j in range(K):
        for k in range(K):
            params = [*top.task_experts[k].parameters(), *top.task_gates[k].parameters()]
            grads = torch.autograd.grad(
                preds[j].pow(2).mean(), params, retain_graph=True, allow_unused=True
            )
            zero = all(g is None or bool((g == 0).all()) for g in grads)
            assert zero == (j != k)


def test_lower_level_private_experts_reach_other_tasks_through_shared_gate():
    model = _ple(num_levels=2)
    preds = model(torch.randn(32, D_IN))
    params = list(model.levels[0].task_experts[1].parameters())
    grads = torch.autograd.grad(preds[0].pow(2).mean(), params, allow_unused=True)
    assert any(g is not None and bool(g.abs().max() > 0) for g in grads)


# ---------------------------------------------------------------- public surface


def test_cgc_module_holds_the_architecture_only():
    """ple.cgc is CGC and PLE; baselines, training and experiments live elsewhere."""
    assert sorted(ple.cgc.__all__) == ["CGC", "CGCOutput", "PLE"]
    for gone in ("masked_task_loss", "train_multitask", "run_census", "build_model", "evaluate", "predict"):
        assert not hasattr(ple.cgc, gone), gone


# ---------------------------------------------------------------- errors


def test_wrong_feature_dim_and_nan_raise():
    model = _ple()
    with pytest.raises(ShapeError, match=r"features has shape \[4, 6\]"):
        model(torch.randn(4, 6))
    bad = torch.randn(4, D_IN)
    bad[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        model(bad)
    with pytest.raises(ShapeError, match="features has shape"):
        model.levels[1](torch.randn(4, K + 1, 5), shared_x=torch.randn(4, 5))
    with pytest.raises(ShapeError, match="shared_x is None"):
        model.levels[1](torch.randn(4, K, 5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_levels=0), "num_levels"),
        (dict(num_tasks=0), "num_tasks"),
        (dict(num_task_experts=0, num_shared_experts=0), "at least one expert"),
        (dict(num_task_experts=-1), "num_task_experts"),
        (dict(expert_dims=()), "expert_dims"),
        (dict(dropout=1.0), "dropout"),
        (dict(task_out_dims=(1, 2)), "task_out_dims"),
        (dict(num_levels=1.5), "num_levels"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(HyperparameterError, match=match):
        _ple(**kwargs)


def test_shared_gate_needs_shared_experts():
    with pytest.raises(HyperparameterError, match="num_shared_experts >= 1"):
        CGC(D_IN, K, 2, 0, shared_gate=True)


def test_validation_off_skips_the_nan_scan_but_not_the_shape_check():
    """Inside fit's step (ple.checks.validation(False)) the device-syncing NaN scan is off."""
    model = _ple()
    bad = torch.randn(4, D_IN)
    bad[0, 0] = float("nan")
    with ple.checks.validation(False):
        preds = model(bad)  # no host sync, no error: NaN flows through
        with pytest.raises(ShapeError):
            model(torch.randn(4, D_IN + 1))
    assert torch.isnan(preds[0]).any()
