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
    mse_loss,
    nll_loss,
    reduce_masked,
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
    with pytest.raises(ValueError, match="alpha must lie"):
        focal_loss(torch.rand(3), torch.zeros(3), alpha=1.5)
    with pytest.raises(ValueError, match="gamma must be"):
        focal_loss(torch.rand(3), torch.zeros(3), gamma=-1)


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
    with pytest.raises(ValueError, match="pred contains inf"):
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


def test_reduce_masked_reductions_and_errors():
    loss = torch.tensor([1.0, float("nan"), 3.0])
    mask = torch.tensor([True, False, True])
    assert reduce_masked(loss, mask, "sum").item() == 4.0
    assert reduce_masked(loss, mask, "mean").item() == 2.0
    assert reduce_masked(loss, mask, "none").tolist() == [1.0, 0.0, 3.0]
    with pytest.raises(ValueError, match=r"mask has shape \[2\]; expected \[3\]"):
        reduce_masked(loss, mask[:2])
    with pytest.raises(ValueError, match="reduction must be one of"):
        reduce_masked(loss, mask, "max")


# ---------------------------------------------------------------- weighting
def test_uncertainty_weighting_formula():
    uw = UncertaintyWeighting(["a", "b"], weights={"a": 2.0})
    with torch.no_grad():
        uw.task_log_vars.copy_(torch.tensor([0.5, -1.0]))
    la, lb = torch.tensor(3.0), torch.tensor(0.2)
    expected = 2.0 * (math.exp(-0.5) * 3.0 + 0.5) + 1.0 * (math.exp(1.0) * 0.2 - 1.0)
    torch.testing.assert_close(uw({"a": la, "b": lb}), torch.tensor(expected))


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
    with pytest.raises(ValueError, match="loss of task 'a' is nan"):
        uw({"a": torch.tensor(float("nan"))})
    with pytest.raises(ValueError, match="must be a scalar tensor"):
        uw({"a": torch.ones(3)})
    with pytest.raises(ValueError, match="weights name unknown task"):
        UncertaintyWeighting(["a"], weights={"q": 1.0})
    with pytest.raises(ValueError, match="duplicates"):
        FixedWeighting(["a", "a"])


def test_fixed_weighting():
    fw = FixedWeighting(["a", "b"], {"a": 2.0})
    out = fw({"a": torch.tensor(1.5), "b": torch.tensor(0.5)})
    assert out.item() == pytest.approx(3.5)
    assert FixedWeighting(["a", "b"])({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}).item() == 3.0


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
