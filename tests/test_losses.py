"""ple.losses: focal (probability space), Huber, MSE, NLL, InfoNCE, masks, loss weighting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ple.losses import (
    FixedWeighting,
    UncertaintyWeighting,
    focal_loss,
    focal_loss_with_logits,
    huber_loss,
    info_nce_loss,
    inward_clamp,
    mse_loss,
    nll_loss,
    task_loss,
)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


# ---------------------------------------------------------------- focal
def test_focal_matches_logit_form_in_float64(gen):
    z = (torch.randn(200, generator=gen, dtype=torch.float64) * 6).clamp(-15, 15)  # clamp inactive
    y = (torch.rand(200, generator=gen) < 0.3).double()
    for alpha, gamma in [(0.25, 2.0), (0.6, 1.0), (0.2, 0.0)]:
        a = focal_loss(torch.sigmoid(z), y, alpha, gamma, reduction="none")
        b = focal_loss_with_logits(z, y, alpha, gamma, reduction="none")
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_focal_gamma0_alpha_half_is_half_bce(gen):
    p = torch.rand(64, generator=gen).clamp(0.01, 0.99)
    y = (torch.rand(64, generator=gen) < 0.5).float()
    fl = focal_loss(p, y, alpha=0.5, gamma=0.0)
    torch.testing.assert_close(fl, 0.5 * F.binary_cross_entropy(p, y))


def test_focal_extreme_probabilities_finite_with_finite_gradients():
    p = torch.tensor([0.0, 1.0, 0.0, 1.0], requires_grad=True)
    y = torch.tensor([0.0, 0.0, 1.0, 1.0])
    loss = focal_loss(p, y, reduction="none")
    assert torch.isfinite(loss).all()
    # confidently wrong predictions cost -log(eps) (up to alpha_t), right ones ~0
    assert loss[1] > 10 and loss[2] > 3 and loss[0] < 1e-6 and loss[3] < 1e-6
    loss.sum().backward()
    assert torch.isfinite(p.grad).all()


def test_focal_half_precision_is_promoted_to_fp32():
    p = torch.tensor([1.0, 0.0], dtype=torch.float16)
    y = torch.tensor([0.0, 1.0], dtype=torch.float16)
    loss = focal_loss(p, y, reduction="none")
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss).all()
    # the same clamp done in fp16 would not move p = 1 away from 1
    assert torch.tensor(1 - 1e-7, dtype=torch.float16) == 1


def test_focal_downweights_easy_examples():
    y = torch.ones(2)
    p = torch.tensor([0.9, 0.6])
    ratio = focal_loss(p, y, gamma=2.0, reduction="none") / focal_loss(p, y, gamma=0.0, reduction="none")
    torch.testing.assert_close(ratio, (1 - p) ** 2)


@pytest.mark.parametrize(
    "probs, target, match",
    [
        (torch.rand(4, 2), torch.zeros(4), r"probs has shape \[4, 2\]; expected \[B\] or \[B, 1\]"),
        (torch.rand(4), torch.zeros(5), r"target has shape \[5\]; expected \[4\]"),
        (torch.tensor([0.5, float("nan")]), torch.zeros(2), "probs contains NaN"),
        (torch.tensor([0.5, 1.5]), torch.zeros(2), r"probs must lie in \[0, 1\]"),
        (torch.rand(2), torch.tensor([0.0, 2.0]), r"target must lie in \[0, 1\]"),
    ],
)
def test_focal_bad_input(probs, target, match):
    with pytest.raises(ValueError, match=match):
        focal_loss(probs, target)


def test_focal_bad_parameters():
    with pytest.raises(ValueError, match=r"alpha must be >= 0.0 and <= 1.0; got 1.5"):
        focal_loss(torch.rand(3), torch.zeros(3), alpha=1.5)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        focal_loss(torch.rand(3), torch.zeros(3), gamma=-1)
    with pytest.raises(ValueError, match="eps must be > 0.0 and < 0.5; got 0.7"):  # the clamp bounds would cross
        focal_loss(torch.rand(3), torch.zeros(3), eps=0.7)
    with pytest.raises(ValueError, match="alpha must be finite"):
        focal_loss(torch.rand(3), torch.zeros(3), alpha=float("nan"))


# ---------------------------------------------------------------- regression / classification
def test_huber_matches_torch(gen):
    pred = torch.randn(100, 3, generator=gen) * 3
    target = torch.randn(100, 3, generator=gen)
    for delta in (0.5, 1.0, 2.0):
        torch.testing.assert_close(huber_loss(pred, target, delta), F.huber_loss(pred, target, delta=delta))


def test_huber_and_mse_accept_flat_inputs(gen):
    pred, target = torch.randn(10, generator=gen), torch.randn(10, generator=gen)
    torch.testing.assert_close(huber_loss(pred, target), huber_loss(pred[:, None], target[:, None]))
    torch.testing.assert_close(mse_loss(pred, target), F.mse_loss(pred, target))


def test_huber_bad_input():
    with pytest.raises(ValueError, match=r"target has shape \[4, 2\]; expected \[4, 1\]"):
        huber_loss(torch.zeros(4), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"pred contains NaN or inf \(0 NaN, 1 inf entries\)"):
        huber_loss(torch.tensor([1.0, float("inf")]), torch.zeros(2))
    with pytest.raises(ValueError, match="delta must be > 0"):
        huber_loss(torch.zeros(2), torch.zeros(2), delta=0.0)


def test_nll_on_softmax_equals_cross_entropy(gen):
    logits = torch.randn(50, 12, generator=gen) * 2
    target = torch.randint(0, 12, (50,), generator=gen)
    torch.testing.assert_close(nll_loss(torch.softmax(logits, 1), target), F.cross_entropy(logits, target))


def test_nll_extreme_probabilities_finite():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = nll_loss(probs, torch.tensor([1, 1]), reduction="none")
    assert torch.isfinite(loss).all() and loss[1] == 0
    torch.testing.assert_close(loss[0], torch.tensor(-math.log(1e-7)))


def test_nll_bad_input():
    with pytest.raises(ValueError, match="probability vectors"):
        nll_loss(torch.ones(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 4\)"):
        nll_loss(torch.full((3, 4), 0.25), torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="integer class ids"):
        nll_loss(torch.full((3, 4), 0.25), torch.zeros(3))


def test_info_nce_equals_cross_entropy_on_similarities(gen):
    q = torch.randn(16, 128, generator=gen)
    k = torch.randn(128, 128, generator=gen)
    y = torch.randint(0, 128, (16,), generator=gen)
    sims = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.07
    torch.testing.assert_close(info_nce_loss(q, k, y), F.cross_entropy(sims, y))
    raw = info_nce_loss(q, k, y, temperature=1.0, normalize=False)
    torch.testing.assert_close(raw, F.cross_entropy(q @ k.T, y))


def test_info_nce_bad_input():
    with pytest.raises(ValueError, match=r"keys has shape \[10, 8\]; expected \[C, 4\]"):
        info_nce_loss(torch.randn(2, 4), torch.randn(10, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce_loss(torch.randn(2, 4), torch.randn(10, 4), torch.zeros(2, dtype=torch.long), temperature=0)


# ---------------------------------------------------------------- masks
def test_masked_entries_contribute_nothing(gen):
    p = torch.rand(8, generator=gen)
    y = (torch.rand(8, generator=gen) < 0.5).float()
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    y_missing = y.clone()
    y_missing[~mask] = float("nan")  # missing labels may be NaN
    full = focal_loss(p[mask], y[mask])
    torch.testing.assert_close(focal_loss(p, y_missing, mask=mask), full)
    cls = torch.tensor([0, -1, 2, 1, -1, 0, -1, 2])  # -1 = missing class label
    probs = torch.softmax(torch.randn(8, 3, generator=gen), 1)
    torch.testing.assert_close(nll_loss(probs, cls, mask=mask), nll_loss(probs[mask], cls[mask]))


def test_all_masked_gives_zero_and_zero_gradient():
    p = torch.rand(5, requires_grad=True)
    y = torch.full((5,), float("nan"))
    loss = focal_loss(p, y, mask=torch.zeros(5, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(p.grad, torch.zeros(5))
    pred = torch.randn(5, requires_grad=True)
    loss = huber_loss(pred, torch.zeros(5), mask=torch.zeros(5))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_reductions_use_the_engines_masked_mean_and_errors():
    from ple.fit import masked_mean

    pred = torch.tensor([1.0, 2.0, 3.0])
    mask = torch.tensor([True, False, True])
    target = torch.tensor([0.0, float("nan"), 0.0])  # a missing label may be NaN
    assert mse_loss(pred, target, mask=mask, reduction="sum").item() == 10.0
    assert mse_loss(pred, target, mask=mask, reduction="mean").item() == 5.0
    assert mse_loss(pred, target, mask=mask, reduction="none").tolist() == [1.0, 0.0, 9.0]
    per = mse_loss(pred, target, mask=mask, reduction="none")
    assert mse_loss(pred, target, mask=mask).item() == masked_mean(per, mask).item()  # one masking equation
    with pytest.raises(ValueError, match=r"mask has shape \[2\]; expected \[3\]"):
        mse_loss(pred, target, mask=mask[:2])
    with pytest.raises(ValueError, match="reduction must be one of"):
        mse_loss(pred, target, mask=mask, reduction="max")


def test_value_checks_skip_device_syncs_when_validation_is_off():
    from ple.checks import validation

    bad = torch.tensor([0.5, 1.5])  # outside [0, 1]: caught only while validation is on
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        focal_loss(bad, torch.zeros(2))
    with validation(False):
        assert torch.isfinite(focal_loss(bad, torch.zeros(2)))
        with pytest.raises(ValueError, match=r"probs has shape \[2, 2\]"):  # shapes are still checked
            focal_loss(torch.rand(2, 2), torch.zeros(2))


# ---------------------------------------------------------------- weighting
def test_uncertainty_weighting_formula():
    uw = UncertaintyWeighting(["a", "b"], weights={"a": 2.0})
    with torch.no_grad():
        uw.task_log_vars.copy_(torch.tensor([0.5, -1.0]))
    la, lb = torch.tensor(3.0), torch.tensor(0.2)
    expected = 2.0 * (math.exp(-0.5) * 3.0 + 0.5) + 1.0 * (math.exp(1.0) * 0.2 - 1.0)
    torch.testing.assert_close(uw({"a": la, "b": lb}), torch.tensor(expected))


def test_inward_clamp_forward_is_the_clamp_and_gradient_points_inside():
    x = torch.tensor([-5.0, -5.0, 0.3, 5.0, 5.0], requires_grad=True)
    y = inward_clamp(x, -4.0, 4.0)
    assert y.tolist() == [-4.0, -4.0, 0.3000000119, 4.0, 4.0] or torch.equal(y, x.clamp(-4, 4))
    g = torch.tensor([-2.0, 2.0, 0.7, -3.0, 3.0])  # grads: inward, outward, inside, outward, inward
    (gx,) = torch.autograd.grad(y, x, g)
    assert gx.tolist() == pytest.approx([-2.0, 0.0, 0.7, 0.0, 3.0])


def test_uncertainty_log_var_outside_the_clamp_is_pulled_back():
    # the defect of the plain clamp: init 4.2, loss 0.01 -> gradient exactly 0 forever, weight
    # stuck at exp(-4) = 0.0183 although the (clamped) optimum is s = -4, weight e^4 = 54.6
    uw = UncertaintyWeighting(["a"], init_log_var=4.2)
    uw({"a": torch.tensor(0.01)}).backward()
    assert uw.task_log_vars.grad.item() == pytest.approx(1 - math.exp(-4) * 0.01)  # nonzero, points inside
    opt = torch.optim.Adam(uw.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        uw({"a": torch.tensor(0.01)}).backward()
        opt.step()
    assert uw.log_vars().item() == -4.0
    assert uw.effective_weights()["a"] == pytest.approx(math.exp(4.0), rel=1e-6)
    # an optimum inside the bounds is reached from outside (log 0.5 = -0.69 from -4.5)
    uw = UncertaintyWeighting(["a"], init_log_var=-4.5)
    opt = torch.optim.Adam(uw.parameters(), lr=0.05)
    for _ in range(800):
        opt.zero_grad()
        uw({"a": torch.tensor(0.5)}).backward()
        opt.step()
    assert abs(uw.log_vars().item() - math.log(0.5)) < 1e-2


def test_uncertainty_log_var_beyond_an_outside_optimum_is_held_not_pushed():
    uw = UncertaintyWeighting(["a"], init_log_var=-4.5)
    uw({"a": torch.tensor(0.01)}).backward()  # optimum log 0.01 = -4.6 < -4: the bound is the optimum
    assert uw.task_log_vars.grad.item() == 0.0


def test_uncertainty_weighting_clamps_log_vars():
    uw = UncertaintyWeighting(["a"])
    with torch.no_grad():
        uw.task_log_vars.fill_(10.0)
    assert uw.log_vars().item() == 4.0
    torch.testing.assert_close(uw({"a": torch.tensor(1.0)}), torch.tensor(math.exp(-4.0) + 4.0))


@pytest.mark.parametrize("L", [0.05, 0.7, 3.0, 20.0])
def test_uncertainty_optimum_is_log_loss(L):
    uw = UncertaintyWeighting(["a"], weights={"a": 1.5})
    opt = torch.optim.Adam(uw.parameters(), lr=0.1)
    for _ in range(600):
        opt.zero_grad()
        uw({"a": torch.tensor(L)}).backward()
        opt.step()
    assert abs(uw.log_vars().item() - math.log(L)) < 1e-2
    assert abs(uw.effective_weights()["a"] - 1.5 / L) < 0.02 * 1.5 / L


def test_uncertainty_gradients_finite_and_subset_of_tasks():
    uw = UncertaintyWeighting(["a", "b", "c"])
    total = uw({"b": torch.tensor(2.0, requires_grad=True)})
    total.backward()
    g = uw.task_log_vars.grad
    assert torch.isfinite(g).all() and g[0] == 0 and g[2] == 0 and g[1] != 0


def test_weighting_bad_input():
    uw = UncertaintyWeighting(["a", "b"])
    with pytest.raises(ValueError, match="unknown task 'z'"):
        uw({"z": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"losses\['a'\] contains NaN"):
        uw({"a": torch.tensor(float("nan"))})
    with pytest.raises(ValueError, match="must be a scalar tensor"):
        uw({"a": torch.ones(3)})
    with pytest.raises(ValueError, match="weights name unknown task"):
        UncertaintyWeighting(["a"], weights={"q": 1.0})
    with pytest.raises(ValueError, match="duplicates"):
        FixedWeighting(["a", "a"])
    with pytest.raises(ValueError, match="task_names must be a sequence of task names; got 'ab'"):
        FixedWeighting("ab")
    with pytest.raises(ValueError, match=r"weights\['a'\] must be finite; got nan"):
        FixedWeighting(["a"], {"a": float("nan")})
    with pytest.raises(ValueError, match=r"weights\['a'\] must be >= 0.0"):
        UncertaintyWeighting(["a"], {"a": -1.0})


def test_fixed_weighting():
    fw = FixedWeighting(["a", "b"], {"a": 2.0})
    out = fw({"a": torch.tensor(1.5), "b": torch.tensor(0.5)})
    assert out.item() == pytest.approx(3.5)
    assert FixedWeighting(["a", "b"])({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}).item() == 3.0


@pytest.mark.parametrize("kind", ["fixed", "uncertainty"])
def test_weightings_are_aggregation_hooks_of_the_engine(kind):
    from ple.fit import Task, TensorData, fit

    torch.manual_seed(0)
    x = torch.randn(64, 3)
    data = TensorData(x, {"a": x[:, :1] * 2, "b": x[:, 1:2] * 50})  # two losses 600x apart
    weigh = FixedWeighting(["a", "b"], {"b": 0.5}) if kind == "fixed" else UncertaintyWeighting(["a", "b"])
    model = torch.nn.Linear(3, 2)
    tasks = [Task("a", "regression", output=None), Task("b", "regression")]

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

        def forward(self, x):
            y = self.lin(x)
            return {"a": y[:, :1], "b": y[:, 1:]}

    before = weigh.task_log_vars.detach().clone() if kind == "uncertainty" else None
    hist = fit(Split(), data, tasks=tasks, epochs=3, batch_size=16, aggregate=weigh, lr=0.05)
    assert len(hist) == 3 and all(math.isfinite(v) for v in hist.train_loss().ravel())
    if kind == "uncertainty":  # the hook's parameters joined the optimizer and moved toward log L
        after = weigh.task_log_vars.detach()
        assert not torch.equal(before, after) and after[1] > after[0]


# ---------------------------------------------------------------- registry dispatch
def test_task_loss_dispatch_for_every_active_task(gen):
    from ple.tasks import active_tasks

    for spec in active_tasks():
        B = 6
        if spec.task_type == "binary":
            pred, y = torch.rand(B, 1, generator=gen), (torch.rand(B, generator=gen) < 0.5).float()
            expected = focal_loss(pred, y, spec.focal_alpha, spec.focal_gamma)
        elif spec.task_type == "multiclass":
            pred = torch.softmax(torch.randn(B, spec.output_dim, generator=gen), 1)
            y = torch.randint(0, spec.num_classes, (B,), generator=gen)
            expected = nll_loss(pred, y)
        elif spec.task_type == "contrastive":
            pred, y = torch.randn(B, spec.output_dim, generator=gen), torch.randint(0, spec.num_classes, (B,))
            keys = torch.randn(spec.num_classes, spec.output_dim, generator=gen)
            torch.testing.assert_close(task_loss(spec, pred, y, keys=keys), info_nce_loss(pred, keys, y, spec.infonce_tau))
            with pytest.raises(ValueError, match="pass keys"):
                task_loss(spec, pred, y)
            continue
        else:
            pred, y = torch.randn(B, 1, generator=gen), torch.randn(B, generator=gen)
            expected = huber_loss(pred, y, spec.huber_delta) if spec.loss == "huber" else mse_loss(pred, y)
        torch.testing.assert_close(task_loss(spec.name, pred, y), expected)


def test_task_loss_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        task_loss("nope", torch.rand(3), torch.zeros(3))


def test_empty_batch_gives_zero():
    assert focal_loss(torch.rand(0), torch.rand(0)).item() == 0.0
    assert nll_loss(torch.rand(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0
    assert huber_loss(torch.rand(0), torch.rand(0)).item() == 0.0


def test_uncertainty_hook_ignores_tasks_without_labels_in_the_batch():
    from types import SimpleNamespace

    from ple.fit import Batch

    uw = UncertaintyWeighting(["a", "b"])
    losses = {"a": torch.tensor(0.0), "b": torch.tensor(2.0)}  # a: masked mean of no labelled sample
    masks = {"a": torch.zeros(4, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)}
    state = SimpleNamespace(batch=Batch((torch.zeros(4, 1),), {}, masks))
    uw(losses, state).backward()
    assert uw.task_log_vars.grad[0] == 0.0 and uw.task_log_vars.grad[1] != 0.0
    uw.task_log_vars.grad = None
    uw(losses).backward()  # without the engine's state the +s term of task a still pulls s_a down
    assert uw.task_log_vars.grad[0] == 1.0


def test_fixed_weighting_keeps_its_weight_vector():
    fw = FixedWeighting(["a", "b", "c"], {"b": 2.0})
    assert fw.task_weights.tolist() == [1.0, 2.0, 1.0]


# ---------------------------------------------------------------- issue 18: input contract defects
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_info_nce_zero_query_has_a_bounded_gradient(dtype):
    q = torch.zeros(4, 8, dtype=dtype, requires_grad=True)
    keys = torch.randn(5, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    info_nce_loss(q, keys, torch.tensor([0, 1, 2, 3])).backward()
    assert torch.isfinite(q.grad.float()).all()
    assert q.grad.float().abs().max() < 1e5  # was ~1e13 (fp32, bf16) and inf (fp16)


def test_fractional_mask_is_an_error_not_a_label():
    p, y = torch.full((4,), 0.3), torch.ones(4)
    with pytest.raises(ValueError, match=r"mask must hold 0 / 1"):
        focal_loss(p, y, mask=torch.tensor([0.5, 1.0, 1.0, 0.0]))
    # 0 / 1 floats and bools are label indicators
    a = focal_loss(p, y, mask=torch.tensor([1.0, 1.0, 0.0, 0.0]))
    b = focal_loss(p, y, mask=torch.tensor([True, True, False, False]))
    assert torch.equal(a, b)


def test_task_loss_checks_the_prediction_width_against_the_task():
    with pytest.raises(ValueError, match=r"pred has shape \[4, 3\]; expected \[B, 6\] for task 'life_stage'"):
        task_loss("life_stage", torch.softmax(torch.randn(4, 3), 1), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"pred has shape \[4, 1\]; expected \[B, 12\] for task 'category_uplift'"):
        task_loss("category_uplift", torch.randn(4, 1), torch.randn(4, 1))
    with pytest.raises(TypeError, match="task must be a task name or a TaskSpec"):
        task_loss(3, torch.rand(4), torch.ones(4))
    assert torch.isfinite(task_loss("life_stage", torch.softmax(torch.randn(4, 6), 1), torch.tensor([0, 1, 5, 0])))


def test_uncertainty_weighting_returns_from_beyond_its_clamp():
    # init 4.2 is outside the clamp (-4, 4); with a small loss the optimum is inside: the gradient
    # must pull the log-variance back (a plain clamp's gradient is 0 there, forever)
    uw = UncertaintyWeighting(["a"], init_log_var=4.2)
    uw({"a": torch.tensor(0.01)}).backward()
    assert uw.task_log_vars.grad.item() > 0.5  # descent decreases s toward log(0.01)
