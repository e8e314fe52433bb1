"""ple.adatt: the task-affinity computer of adaTT (gradient cosines, EMA) and its ple.fit hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ple import checks
from ple.adatt import AffinityAggregate, TaskAffinityComputer, ema_update, gradient_cosines
from ple.checks import HyperparameterError, InputTypeError, NonFiniteError, ShapeError, TaskError
from ple.fit import Task, TensorData, WeightedSum, fit
from ple.mmoe import SharedBottom

NAMES = ("a", "b", "c")


def _model_and_losses(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = SharedBottom(6, 3, (8,), (4,)).to(dtype)
    x = torch.randn(16, 6, dtype=dtype)
    y = torch.randn(16, 3, dtype=dtype)

    def losses():
        out = model(x)
        return {t: ((out[k][:, 0] - y[:, k]) ** 2).mean() for k, t in enumerate(NAMES)}

    return model, losses


def test_shapes_and_initial_buffers():
    model, losses = _model_and_losses()
    comp = TaskAffinityComputer(NAMES, model.bottom)
    assert comp.affinity.shape == (3, 3) and torch.equal(comp.affinity, torch.eye(3))
    assert comp.update_count.dtype == torch.int64 and int(comp.update_count) == 0
    assert comp.num_shared == sum(p.numel() for p in model.bottom.parameters())
    G = comp.task_gradients(losses())
    assert G.shape == (3, comp.num_shared)
    A = comp(losses())
    assert A.shape == (3, 3) and int(comp.update_count) == 1
    assert torch.allclose(A.diagonal(), torch.ones(3))
    assert torch.allclose(A, A.T)


def test_buffers_state_dict_and_moves():
    model, losses = _model_and_losses()
    comp = TaskAffinityComputer(NAMES, model.bottom)
    comp(losses())
    comp(losses())
    state = comp.state_dict()
    assert set(state) == {"affinity", "update_count"}  # the shared parameters are not saved
    other = TaskAffinityComputer(NAMES, model.bottom)
    other.load_state_dict(state)
    assert torch.equal(other.affinity, comp.affinity) and int(other.update_count) == 2
    assert not list(comp.parameters())  # nothing for an optimizer
    moved = other.to(torch.float64)
    assert moved.affinity.dtype == torch.float64 and moved.update_count.dtype == torch.int64
    assert other.to("meta").affinity.device.type == "meta"


def test_ema_first_update_copies_then_blends():
    comp = TaskAffinityComputer(("a", "b"), nn.Parameter(torch.zeros(2)), ema_decay=0.8)
    C0 = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    C1 = torch.tensor([[1.0, -0.6], [-0.6, 1.0]])
    comp.update(C0)
    assert torch.equal(comp.affinity, C0)
    comp.update(C1)
    assert torch.allclose(comp.affinity, 0.8 * C0 + 0.2 * C1)
    # the function alone, with a count > 0
    out = ema_update(C0, C1, torch.tensor(5), 0.5)
    assert torch.allclose(out, 0.5 * C0 + 0.5 * C1)


def test_clamp_and_non_finite_pairs_keep_their_value():
    comp = TaskAffinityComputer(("a", "b"), nn.Parameter(torch.zeros(2)), ema_decay=0.0)
    comp.update(torch.tensor([[1.0 + 1e-5, 1.5], [1.5, 1.0]]))
    assert float(comp.affinity.max()) == 1.0 and float(comp.affinity.min()) >= -1.0
    comp.update(torch.tensor([[1.0, -0.3], [-0.3, 1.0]]))
    comp.update(torch.tensor([[1.0, float("nan")], [float("inf"), 1.0]]))
    assert torch.allclose(comp.affinity[0, 1], torch.tensor(-0.3))
    assert torch.allclose(comp.affinity[1, 0], torch.tensor(-0.3))


def test_gradient_cosines_match_pairwise_and_zero_rows():
    g = torch.randn(4, 30, dtype=torch.float64)
    g[2] = 0
    C = gradient_cosines(g)
    for i in range(4):
        for j in range(4):
            ni, nj = max(float(g[i].norm()), 1e-8), max(float(g[j].norm()), 1e-8)
            assert abs(float(C[i, j]) - float(g[i] @ g[j]) / (ni * nj)) < 1e-12
    assert float(C[2].abs().max()) == 0.0
    with pytest.raises(ShapeError, match=r"grads has shape \[30\]; expected \[n, d\]"):
        gradient_cosines(g[0])


def test_unused_parameters_give_zero_columns():
    model, losses = _model_and_losses()
    unused = nn.Parameter(torch.ones(5))
    for method in ("loop", "batched"):
        comp = TaskAffinityComputer(NAMES, [*model.bottom.parameters(), unused], method=method)
        G = comp.task_gradients(losses())
        assert torch.equal(G[:, -5:], torch.zeros(3, 5))


def test_a_task_that_does_not_reach_the_shared_parameters():
    model, losses = _model_and_losses()
    L = losses()
    L["c"] = model.towers[2](torch.ones(1, 8))[0, 0]  # reads no shared parameter
    comp = TaskAffinityComputer(NAMES, model.bottom, method="loop")
    A = comp(L)
    assert float(comp.last_cosines[2].abs().max()) == 0.0 and float(A[2, 2]) == 0.0


def test_batched_equals_loop_float64():
    model, losses = _model_and_losses(torch.float64)
    G_loop = TaskAffinityComputer(NAMES, model.bottom, method="loop").task_gradients(losses())
    G_batch = TaskAffinityComputer(NAMES, model.bottom, method="batched").task_gradients(losses())
    assert torch.allclose(G_loop, G_batch, atol=1e-13, rtol=0)
    auto = TaskAffinityComputer(NAMES, model.bottom, method="auto")
    auto.task_gradients(losses())
    assert auto.method_used == "batched"


def test_auto_falls_back_to_the_loop_when_batching_fails(monkeypatch):
    model, losses = _model_and_losses(torch.float64)
    comp = TaskAffinityComputer(NAMES, model.bottom, method="auto")

    def broken(L):
        raise RuntimeError("Batching rule not implemented for aten::flatten.using_ints")

    monkeypatch.setattr(comp, "_batched", broken)
    G = comp.task_gradients(losses())
    assert comp.method_used == "loop"
    G_loop = TaskAffinityComputer(NAMES, model.bottom, method="loop").task_gradients(losses())
    assert torch.allclose(G, G_loop)
    strict = TaskAffinityComputer(NAMES, model.bottom, method="batched")
    monkeypatch.setattr(strict, "_batched", broken)
    with pytest.raises(RuntimeError, match="Batching rule"):
        strict.task_gradients(losses())


def test_graphs_are_retained_for_the_training_backward():
    model, losses = _model_and_losses()
    L = losses()
    TaskAffinityComputer(NAMES, model.bottom, method="loop")(L)
    TaskAffinityComputer(NAMES, model.bottom, method="batched")(L)
    sum(L.values()).backward()  # would raise "backward through the graph a second time"
    assert all(p.grad is not None for p in model.bottom.parameters())


def test_non_scalar_losses_are_refused():
    model, losses = _model_and_losses()
    L = losses()
    L["b"] = L["b"].expand(4)
    with pytest.raises(ShapeError, match=r"losses\['b'\] has shape \[4\]; expected a scalar"):
        TaskAffinityComputer(NAMES, model.bottom)(L)


def test_missing_unknown_and_graphless_losses():
    model, losses = _model_and_losses()
    comp = TaskAffinityComputer(NAMES, model.bottom)
    L = losses()
    with pytest.raises(TaskError, match=r"missing \['c'\]"):
        comp({"a": L["a"], "b": L["b"]})
    with pytest.raises(TaskError, match=r"unknown \['z'\]"):
        comp({**L, "z": L["a"]})
    with pytest.raises(InputTypeError, match=r"losses\['a'\] must be a tensor; got float"):
        comp({**L, "a": 1.0})
    with pytest.raises(TaskError, match="no loss requires grad"):
        comp({t: v.detach() for t, v in L.items()})
    with pytest.raises(InputTypeError, match="losses must be a mapping"):
        comp([L["a"]])


def test_no_shared_parameters_is_refused():
    with pytest.raises(HyperparameterError, match="shared_parameters holds no tensor that requires grad"):
        TaskAffinityComputer(NAMES, [])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(HyperparameterError, match="shared_parameters holds no tensor"):
        TaskAffinityComputer(NAMES, frozen)
    with pytest.raises(InputTypeError, match=r"shared_parameters\[1\] is a str"):
        TaskAffinityComputer(NAMES, [nn.Parameter(torch.ones(1)), "w"])
    with pytest.raises(InputTypeError, match="shared_parameters must be an nn.Module"):
        TaskAffinityComputer(NAMES, 3)


def test_nan_gradients_are_named():
    w = nn.Parameter(torch.ones(3))
    L = {"a": w.sum(), "b": (w * float("nan")).sum(), "c": (w * float("inf")).sum()}
    for method in ("loop", "batched"):  # named precisely either way
        with pytest.raises(NonFiniteError, match=r"task\(s\) \['b', 'c'\]"):
            TaskAffinityComputer(NAMES, [w], method=method)(L)
    # with validation off: no host sync, the bad pairs keep their value
    for method in ("loop", "batched"):
        comp2 = TaskAffinityComputer(NAMES, [w], method=method)
        with checks.validation(False):
            A = comp2({"a": w.sum(), "b": (w * float("nan")).sum(), "c": (2 * w).sum()})
        assert torch.isfinite(A).all() and float(A[0, 1]) == 0.0  # kept from the identity
        # the loop keeps the finite pairs; one batched backward spreads 0 * NaN to every row
        assert float(A[0, 2]) == (pytest.approx(1.0) if method == "loop" else 0.0)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"ema_decay": 1.0}, HyperparameterError, "ema_decay must be >= 0.0 and < 1.0; got 1.0"),
    ({"ema_decay": -0.1}, HyperparameterError, "ema_decay must be"),
    ({"grad_interval": 0}, HyperparameterError, "grad_interval must be an int >= 1; got 0"),
    ({"method": "fast"}, HyperparameterError, "method must be one of 'auto', 'batched', 'loop'; got 'fast'"),
    ({"eps": 0.0}, HyperparameterError, "eps must be > 0.0"),
])
def test_bad_hyperparameters(kwargs, err, match):
    with pytest.raises(err, match=match):
        TaskAffinityComputer(NAMES, nn.Parameter(torch.ones(1)), **kwargs)


def test_bad_task_names():
    p = nn.Parameter(torch.ones(1))
    with pytest.raises(TaskError, match="task_names must be a non-empty sequence"):
        TaskAffinityComputer("abc", p)
    with pytest.raises(TaskError, match="distinct non-empty strings"):
        TaskAffinityComputer(("a", "a"), p)
    comp = TaskAffinityComputer(("a", "b"), p)
    with pytest.raises(ShapeError, match=r"cosines has shape \[3, 3\]; expected \[2, 2\]"):
        comp.update(torch.eye(3))


def test_due_every_grad_interval_steps():
    comp = TaskAffinityComputer(NAMES, nn.Parameter(torch.ones(1)), grad_interval=4)
    assert [s for s in range(12) if comp.due(s)] == [0, 4, 8]


def test_aggregate_hook_in_fit_measures_every_interval_and_returns_inner():
    torch.manual_seed(0)
    x, y = torch.randn(96, 6), torch.randn(96, 3)
    data = TensorData(x, {t: y[:, k] for k, t in enumerate(NAMES)})
    model = SharedBottom(6, 3, (8,), (4,))
    comp = TaskAffinityComputer(NAMES, model.bottom, grad_interval=3)
    hook = AffinityAggregate(comp, WeightedSum({"a": 2.0}))
    fit(model, data, None, tasks=[Task(t, "regression") for t in NAMES], epochs=2, batch_size=16, aggregate=hook)
    assert int(comp.update_count) == 4  # 12 steps, measured at 0, 3, 6, 9
    assert not torch.equal(comp.affinity, torch.eye(3))
    L = {t: torch.tensor(float(k + 1), requires_grad=True) for k, t in enumerate(NAMES)}
    hook.enabled = False
    assert float(hook(L).detach()) == 2.0 * 1 + 2 + 3
    with torch.no_grad():
        hook.enabled = True
        hook(L)  # no autograd: no measurement
    assert int(comp.update_count) == 4
    with pytest.raises(InputTypeError, match="computer must be a TaskAffinityComputer"):
        AffinityAggregate(WeightedSum())


def test_measuring_does_not_change_training():
    torch.manual_seed(1)
    x, y = torch.randn(64, 6), torch.randn(64, 3)
    data = TensorData(x, {t: y[:, k] for k, t in enumerate(NAMES)})
    final = []
    for measure in (False, True):
        torch.manual_seed(2)
        model = SharedBottom(6, 3, (8,), (4,))
        hook = AffinityAggregate(TaskAffinityComputer(NAMES, model.bottom, grad_interval=1)) if measure else None
        fit(model, data, None, tasks=[Task(t, "regression") for t in NAMES], epochs=2, batch_size=16, aggregate=hook)
        final.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(final[0], final[1])


def test_extraction_is_excluded_from_torch_compile():
    assert getattr(TaskAffinityComputer.task_gradients, "_torchdynamo_disable", False) is True
