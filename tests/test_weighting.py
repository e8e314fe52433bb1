"""ple.weighting: GradNorm and DWA as ple.fit aggregation hooks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ple.checks import ShapeError, TaskError
from ple.fit import Callback, Task, TensorData, fit
from ple.mmoe import SharedBottom
from ple.weighting import DWA, GradNorm, dwa_weights

NAMES = ("a", "b")


def data(n: int = 256) -> TensorData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    return TensorData(x, {"a": x[:, 0] * 3, "b": torch.sin(x[:, 1])})


def test_gradnorm_weights_stay_normalised_and_move():
    torch.manual_seed(0)
    model = SharedBottom(5, 2, (16,), (8,))
    gn = GradNorm(NAMES, model.bottom)
    fit(model, data(), tasks=[Task(n, "regression") for n in NAMES], epochs=2, batch_size=64, lr=1e-2,
        aggregate=gn, callbacks=[gn])
    w = gn.weights.detach()
    assert math.isclose(float(w.sum()), 2.0, rel_tol=1e-6) and not torch.allclose(w, torch.ones(2))
    assert bool(gn.has_initial.all()) and gn.last_targets is not None


def test_gradnorm_model_gradient_is_the_weighted_sum():
    torch.manual_seed(0)
    shared, head = nn.Linear(3, 4), nn.Linear(4, 2)
    x = torch.randn(16, 3)
    gn = GradNorm(NAMES, shared)
    with torch.no_grad():
        gn.weights.copy_(torch.tensor([0.5, 1.5]))

    def losses():
        out = head(torch.tanh(shared(x)))
        return {"a": out[:, 0].square().mean(), "b": (out[:, 1] - 1).square().mean()}

    gn(losses()).backward()
    got = shared.weight.grad.clone()
    shared.weight.grad = None
    L = losses()
    (0.5 * L["a"] + 1.5 * L["b"]).backward()
    torch.testing.assert_close(got, shared.weight.grad)


def test_gradnorm_off_when_frozen_or_disabled():
    shared = nn.Linear(3, 4)
    gn = GradNorm(NAMES, shared)
    L = {"a": shared(torch.randn(4, 3)).sum(), "b": shared(torch.randn(4, 3)).mean()}
    gn.enabled = False
    out = gn(L)
    out.backward()
    assert gn.weights.grad is None and gn.last_targets is None
    with pytest.raises(TaskError, match="lacks"):
        gn({"a": L["a"]})


def test_dwa_formula_and_first_two_epochs():
    dwa = DWA(("a", "b", "c"), temperature=2.0)
    assert torch.equal(dwa.record_epoch({"a": 1.0, "b": 2.0, "c": 3.0}), torch.ones(3))
    w = dwa.record_epoch({"a": 0.5, "b": 2.0, "c": 3.3})
    r = torch.tensor([0.5, 1.0, 1.1], dtype=torch.float64)
    expected = 3 * torch.exp(r / 2) / torch.exp(r / 2).sum()
    torch.testing.assert_close(w.double(), expected, rtol=1e-6, atol=1e-7)
    assert float(w.sum()) == pytest.approx(3.0)
    loss = dwa({"a": torch.tensor(1.0), "b": torch.tensor(1.0), "c": torch.tensor(1.0)})
    assert float(loss) == pytest.approx(3.0)
    fresh = DWA(("a", "b", "c"))
    fresh.load_state_dict(dwa.state_dict())
    assert torch.equal(fresh.task_weights_, dwa.task_weights_) and int(fresh.epochs_seen) == 2


def test_dwa_weights_errors():
    with pytest.raises(ShapeError, match=r"\[E, K\]"):
        dwa_weights(torch.ones(3))
    with pytest.raises(ValueError, match="temperature"):
        DWA(("a",), temperature=0.0)


def test_jacobian_descent_steps_through_the_engine():
    pytest.importorskip("torchjd")
    from ple.weighting import JacobianDescent

    torch.manual_seed(0)
    model = SharedBottom(4, 2, (8,), (8,))
    x = torch.randn(32, 4)
    data = TensorData(x, {"a": x[:, 0], "b": -x[:, 0]})  # opposite targets: conflicting tasks
    tasks = (Task("a", "regression"), Task("b", "regression"))
    seen = []

    class Grab(Callback):
        def on_step_end(self, state):
            seen.append((state.loss.item(), sum(v.item() for v in state.losses.values())))

    for name in ("upgrad", "pcgrad"):
        jd = JacobianDescent(("a", "b"), model.bottom, name)
        before = [p.detach().clone() for p in model.parameters()]
        fit(model, data, tasks=tasks, epochs=1, batch_size=16, aggregate=jd, callbacks=[Grab()])
        assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # every block trained
        assert set(jd.task_weights()) == {"a", "b"} and all(math.isfinite(w) for w in jd.task_weights().values())
        jd.remove()
    assert all(t == pytest.approx(s, rel=1e-6) for t, s in seen)  # the recorded loss is sum_k L_k


def test_jacobian_descent_rejects_bad_arguments():
    pytest.importorskip("torchjd")
    from ple.weighting import JacobianDescent

    with pytest.raises(ValueError, match="aggregator"):
        JacobianDescent(("a", "b"), nn.Linear(2, 2), "mgda")
    with pytest.raises(TaskError, match="losses lacks"):
        JacobianDescent(("a", "b"), nn.Linear(2, 2))({"a": torch.zeros(())})
