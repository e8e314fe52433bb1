"""ple.adatt_transfer: transfer weights, the clamped transfer loss, the group prior, the schedule."""

from __future__ import annotations

import math

import pytest
import torch

from ple import checks
from ple.adatt import AffinityAggregate, TaskAffinityComputer
from ple.adatt_transfer import (
    GROUP_INTRA_STRENGTH,
    INTER_GROUP_STRENGTH,
    PHASES,
    AdaTT,
    blend,
    group_prior,
    prior_ratio,
    transfer_enhanced_losses,
    transfer_weights,
)
from ple.checks import HyperparameterError, InputTypeError, NonFiniteError, ShapeError, TaskError
from ple.fit import Batch, Callback, FitState, Task, TensorData, fit
from ple.mmoe import SharedBottom
from ple.tasks import ACTIVE_TASK_NAMES, get_task

NAMES = ("ctr", "cvr", "churn", "ltv")


def _random_case(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = torch.rand(n, n, generator=g, dtype=torch.float64) * 2 - 1
    return R, A


def _adatt(**kw):
    torch.manual_seed(0)
    model = SharedBottom(6, len(NAMES), (8,), (4,))
    comp = TaskAffinityComputer(NAMES, model.bottom, grad_interval=1)
    return model, comp, AdaTT(comp, **kw)


# --- transfer weights (eq-adatt-weights) -------------------------------------------------------

def test_weights_exact_zeros_and_rows_sum_to_one_over_the_unmasked_set():
    R, A = _random_case(6)
    A[0, 2] = A[2, 0] = -0.5  # blocked
    mask = torch.tensor([1, 1, 1, 0, 1, 1])
    w = transfer_weights(R, A, neg_threshold=-0.1, loss_mask=mask)
    assert torch.all(w.diagonal() == 0)
    assert torch.all(w[:, 3] == 0) and torch.all(w[3] == 0)  # unlabelled: neither gives nor receives
    blocked = (A < -0.1) & ~torch.eye(6, dtype=torch.bool)
    assert torch.all(w[blocked] == 0)
    rows = [i for i in range(6) if i != 3]
    allowed = (~blocked) & ~torch.eye(6, dtype=torch.bool) & (mask[None, :] > 0)
    for i in rows:
        assert math.isclose(float(w[i].sum()), 1.0, abs_tol=1e-12)
        # the softmax over the allowed set, renormalised
        e = torch.exp(R[i]) * allowed[i]
        assert torch.allclose(w[i], e / e.sum(), atol=1e-14)


def test_weights_row_without_allowed_partner_is_zero_not_nan():
    R, A = _random_case(3)
    A[:] = -0.9
    w = transfer_weights(R, A, neg_threshold=-0.1)
    assert torch.equal(w, torch.zeros(3, 3, dtype=torch.float64))
    w1 = transfer_weights(torch.zeros(1, 1), torch.ones(1, 1))
    assert torch.equal(w1, torch.zeros(1, 1))


def test_weights_blocking_off_and_threshold_boundary():
    R, A = _random_case(4)
    A[0, 1] = -0.1  # exactly the threshold: allowed (A >= tau)
    A[0, 2] = -0.1000001
    w = transfer_weights(R, A, neg_threshold=-0.1)
    assert w[0, 1] > 0 and w[0, 2] == 0
    w_off = transfer_weights(R, A, neg_threshold=None)
    assert torch.all(w_off[~torch.eye(4, dtype=torch.bool)] > 0)


def test_weights_temperature_limits():
    R, A = _random_case(5, seed=3)
    A = A.abs()  # nothing blocked
    off = ~torch.eye(5, dtype=torch.bool)
    cold = transfer_weights(R, A, temperature=1e-4)
    for i in range(5):
        j = int(torch.where(off[i], R[i], -math.inf).argmax())
        assert math.isclose(float(cold[i, j]), 1.0, abs_tol=1e-9)
    hot = transfer_weights(R, A, temperature=1e6)
    assert torch.allclose(hot[off], torch.full((20,), 0.25, dtype=torch.float64), atol=1e-5)


def test_weights_gradient_is_zero_on_masked_entries():
    R, A = _random_case(4)
    R.requires_grad_(True)
    A[1, 3] = -0.5
    w = transfer_weights(R, A, neg_threshold=-0.1)
    (w * torch.arange(16, dtype=torch.float64).reshape(4, 4)).sum().backward()
    assert R.grad[1, 3] == 0 and torch.all(R.grad.diagonal() == 0)
    assert torch.isfinite(R.grad).all()


# --- the clamped transfer loss (eq-adatt-loss) -------------------------------------------------

def test_clamp_value_and_zero_gradient_when_binding():
    L = torch.tensor([3.0, 1.0, 0.001], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]], dtype=torch.float64)
    out, binds = transfer_enhanced_losses(L, w, transfer_lambda=0.1, max_transfer_ratio=0.5)
    assert binds.tolist() == [False, False, True]
    assert math.isclose(float(out[2].detach()), 0.001 * 1.5, rel_tol=1e-12)
    assert math.isclose(float(out[0].detach()), 3.0 + 0.1 * 0.5 * (1.0 + 0.001), rel_tol=1e-12)
    (g,) = torch.autograd.grad(out[2], L, retain_graph=True)
    assert g.tolist() == [0.0, 0.0, 1.0]  # the transfer term is a constant
    (g_sum,) = torch.autograd.grad(out.sum(), L)
    expected = 1 + 0.1 * (w * (~binds)[:, None]).sum(0)  # eq-adatt-reweight
    assert torch.allclose(g_sum, expected, atol=1e-15)


def test_no_transfer_at_lambda_zero():
    L = torch.tensor([1.0, 2.0])
    w = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    out, binds = transfer_enhanced_losses(L, w, transfer_lambda=0.0)
    assert torch.equal(out, L) and not binds.any()


# --- the group prior (eq-adatt-prior) ----------------------------------------------------------

def test_group_prior_matches_the_table():
    P = group_prior(ACTIVE_TASK_NAMES)
    assert P.shape == (16, 16)
    assert torch.allclose(P.sum(1), torch.ones(16)) and torch.all(P.diagonal() == 0)
    names = list(ACTIVE_TASK_NAMES)
    i = names.index("ctr")
    raw = torch.tensor([0.0 if t == "ctr" else (GROUP_INTRA_STRENGTH["engagement"] if get_task(t).group == "engagement"
                                                else INTER_GROUP_STRENGTH) for t in names])
    assert torch.allclose(P[i], raw / raw.sum(), atol=1e-7)


def test_group_prior_fallback_single_task_and_bad_names():
    P = group_prior(("ctr", "cvr", "churn"), intra={"engagement": 0.8})  # lifecycle falls back, but churn is alone
    assert torch.allclose(P.sum(1), torch.ones(3))
    assert torch.equal(group_prior(("ctr",)), torch.zeros(1, 1))
    with pytest.raises(TaskError, match="unknown task"):
        group_prior(("ctr", "not_a_task"))
    with pytest.raises(TaskError, match="duplicates"):
        group_prior(("ctr", "ctr"))
    with pytest.raises(TaskError, match="unknown group"):
        group_prior(("ctr", "cvr"), intra={"nope": 0.5})
    with pytest.raises(HyperparameterError, match="inter"):
        group_prior(("ctr", "cvr"), inter=-1.0)


def test_prior_ratio_schedule():
    assert prior_ratio(0, 10, 28) == 0.5 and prior_ratio(10, 10, 28) == 0.5
    assert math.isclose(prior_ratio(19, 10, 28), 0.3, abs_tol=1e-12)
    assert math.isclose(prior_ratio(28, 10, 28), 0.1, abs_tol=1e-12) and prior_ratio(100, 10, 28) == prior_ratio(28, 10, 28)


def test_blend():
    W, A, P = torch.ones(2, 2), torch.full((2, 2), 2.0), torch.full((2, 2), 10.0)
    assert torch.allclose(blend(W, A, P, 0.25), torch.full((2, 2), 3.0 * 0.75 + 2.5))


# --- the module and the schedule ---------------------------------------------------------------

def test_phase_boundaries_and_error_naming_the_values():
    _, _, ada = _adatt(warmup_epochs=2, freeze_epoch=5)
    assert [ada.phase_of(e) for e in range(7)] == ["warmup"] * 2 + ["dynamic"] * 3 + ["frozen"] * 2
    _, comp, _ = _adatt()
    with pytest.raises(HyperparameterError, match=r"freeze_epoch=3.*warmup_epochs=3"):
        AdaTT(comp, warmup_epochs=3, freeze_epoch=3)
    with pytest.raises(HyperparameterError, match=r"freeze_epoch=2.*warmup_epochs=4"):
        AdaTT(comp, warmup_epochs=4, freeze_epoch=2)


def test_on_epoch_end_updates_buffers_in_place_and_state_dict_round_trip():
    _, comp, ada = _adatt(warmup_epochs=1, freeze_epoch=3)
    buffers = {k: v.data_ptr() for k, v in ada.named_buffers()}
    hook = ada.hook()
    assert hook.enabled and ada.phase_name == "warmup"
    for expected in ("dynamic", "dynamic", "frozen"):
        ada.on_epoch_end(None)
        assert ada.phase_name == expected and PHASES[int(ada.phase)] == expected
    assert not hook.enabled  # no measurement in the frozen phase
    assert {k: v.data_ptr() for k, v in ada.named_buffers()} == buffers  # filled in place, still registered
    state = ada.state_dict()
    assert set(state) == {"transfer_matrix", "prior", "epoch", "phase", "prior_ratio"}
    _, comp2, other = _adatt(warmup_epochs=1, freeze_epoch=3)
    other.load_state_dict(state)
    assert other.phase_name == "frozen" and int(other.epoch) == 3 and math.isclose(float(other.prior_ratio), 0.1, rel_tol=1e-6)
    assert set(hook.state_dict()) >= {"computer.affinity", "inner.transfer_matrix", "inner.phase"}


def test_warmup_is_plain_sum_dynamic_trains_w_frozen_detaches():
    _, comp, ada = _adatt(warmup_epochs=1, freeze_epoch=2)
    L = {t: torch.tensor(float(k + 1), requires_grad=True) for k, t in enumerate(NAMES)}
    assert float(ada(L).detach()) == 10.0 and ada.last_weights is None
    ada.on_epoch_end(None)  # dynamic
    out = ada(L)
    assert float(out.detach()) > 10.0
    (gW,) = torch.autograd.grad(out, ada.transfer_matrix)
    assert gW.abs().sum() > 0
    ada.on_epoch_end(None)  # frozen
    out = ada(L)
    assert float(out.detach()) > 10.0 and out.grad_fn is not None
    assert torch.autograd.grad(out, ada.transfer_matrix, allow_unused=True)[0] is None


def test_loss_mask_from_the_engine_batch():
    _, comp, ada = _adatt(warmup_epochs=0, freeze_epoch=2)
    state = FitState(model=torch.nn.Linear(1, 1), tasks=(), optimizer=None, scheduler=None,
                     device=torch.device("cpu"), history=None)
    state.batch = Batch((torch.zeros(3, 1),), {t: torch.zeros(3) for t in NAMES},
                        {"cvr": torch.tensor([0, 0, 0]), "ltv": torch.tensor([1, 0, 1])})
    assert ada.loss_mask(state).tolist() == [True, False, True, True]
    L = {t: torch.tensor(1.0 + k) for k, t in enumerate(NAMES)}
    ada(L, state)
    w = ada.last_weights
    assert torch.all(w[:, 1] == 0) and torch.all(w[1] == 0)
    assert torch.allclose(w[[0, 2, 3]].sum(1), torch.ones(3))


def test_detect_negative_transfer():
    _, comp, ada = _adatt()
    comp.affinity.copy_(torch.tensor([[1.0, -0.2, 0.0, 0.3], [-0.2, 1.0, -0.05, -0.5],
                                      [0.0, -0.05, 1.0, 0.1], [0.3, -0.5, 0.1, 1.0]]))
    assert ada.detect_negative_transfer() == {"ctr": ["cvr"], "cvr": ["ctr", "ltv"], "ltv": ["cvr"]}
    _, comp, off = _adatt(neg_threshold=None)
    comp.affinity.fill_(-1.0)
    assert off.detect_negative_transfer() == {}


def test_fit_runs_through_the_three_phases():
    model, comp, ada = _adatt(warmup_epochs=1, freeze_epoch=2)
    x, y = torch.randn(64, 6), torch.randn(64, len(NAMES))
    data = TensorData(x, {t: y[:, k] for k, t in enumerate(NAMES)})
    seen = []

    class Log(Callback):
        def on_step_end(self, state):
            seen.append((ada.phase_name, int(comp.update_count)))

    fit(model, data, None, tasks=[Task(t, "regression") for t in NAMES], epochs=3, batch_size=32,
        aggregate=ada.hook(), callbacks=[Log(), ada])
    assert [p for p, _ in seen] == ["warmup"] * 2 + ["dynamic"] * 2 + ["frozen"] * 2
    assert [c for _, c in seen] == [1, 2, 3, 4, 4, 4]
    assert ada.transfer_matrix.abs().sum() > 0  # W joined the optimizer and trained
    assert isinstance(ada.hook(), AffinityAggregate)


# --- bad input ---------------------------------------------------------------------------------

def test_bad_prior_shape_type_and_values():
    _, comp, _ = _adatt()
    with pytest.raises(ShapeError, match=r"prior has shape \[3, 3\]; expected \[4, 4\]"):
        AdaTT(comp, prior=torch.zeros(3, 3))
    with pytest.raises(InputTypeError, match="prior"):
        AdaTT(comp, prior=[[0.0] * 4] * 4)
    bad = torch.zeros(4, 4)
    bad[0, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="prior"):
        AdaTT(comp, prior=bad)


def test_bad_hyperparameters_and_computer():
    _, comp, _ = _adatt()
    with pytest.raises(HyperparameterError, match="temperature"):
        AdaTT(comp, temperature=0.0)
    with pytest.raises(HyperparameterError, match="transfer_lambda"):
        AdaTT(comp, transfer_lambda=-0.1)
    with pytest.raises(InputTypeError, match="computer"):
        AdaTT("not a computer")


def test_unknown_and_missing_task_names_in_losses():
    _, _, ada = _adatt()
    L = {t: torch.tensor(1.0) for t in NAMES}
    with pytest.raises(TaskError, match=r"unknown \['nope'\]"):
        ada({**L, "nope": torch.tensor(1.0)})
    with pytest.raises(TaskError, match=r"missing \['ltv'\]"):
        ada({t: v for t, v in L.items() if t != "ltv"})
    with pytest.raises(ShapeError, match="losses\\['ctr'\\]"):
        ada({**L, "ctr": torch.ones(3)})


def test_nan_losses_named_in_the_error():
    _, _, ada = _adatt()
    L = {t: torch.tensor(1.0) for t in NAMES}
    L["churn"] = torch.tensor(float("nan"))
    L["ltv"] = torch.tensor(float("inf"))
    with pytest.raises(NonFiniteError, match=r"\['churn', 'ltv'\]"):
        ada(L)
    with checks.validation(False):  # inside fit's step: no host sync, no check
        ada(L)
