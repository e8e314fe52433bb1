"""ple.evidential: Dirichlet / Beta / NIG losses, the heads, and their attachment to PLESystem."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from ple.checks import HyperparameterError, InputTypeError, ShapeError, TaskError
from ple.evidential import (
    NIG,
    EvidentialHeads,
    KLAnnealing,
    SideHeadSystem,
    dirichlet_kl_uniform,
    dirichlet_loss,
    dirichlet_mean,
    dirichlet_risk,
    dirichlet_uncertainty,
    evidence,
    evidential_kl,
    evidential_name,
    kl_annealing,
    nig_loss,
    nig_nll,
    nig_regularizer,
)
from ple.fit import TensorData, fit
from ple.interpret import SAEHead
from ple.system import PLESystem, preset, synthetic_system_inputs
from ple.tasks import select_tasks


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


# ---------------------------------------------------------------- Dirichlet / Beta
def test_uncertainty_and_mean():
    alpha = torch.tensor([[1.0, 1.0, 1.0], [8.0, 1.0, 1.0]])
    torch.testing.assert_close(dirichlet_uncertainty(alpha), torch.tensor([1.0, 0.3]))
    torch.testing.assert_close(dirichlet_mean(alpha)[1], torch.tensor([0.8, 0.1, 0.1]))


def test_kl_closed_form_matches_torch_distributions(gen):
    alpha = torch.rand(20, 5, generator=gen, dtype=torch.float64) * 10 + 0.05
    ref = torch.distributions.kl_divergence(torch.distributions.Dirichlet(alpha), torch.distributions.Dirichlet(torch.ones_like(alpha)))
    torch.testing.assert_close(dirichlet_kl_uniform(alpha), ref, rtol=1e-10, atol=1e-10)
    assert dirichlet_kl_uniform(torch.ones(1, 4, dtype=torch.float64)).abs().item() < 1e-12


def test_sensoy_kl_ignores_true_class_evidence_the_posts_does_not():
    alpha = torch.tensor([[50.0, 1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0])
    assert evidential_kl(alpha, y, "sensoy").abs().item() < 1e-12
    assert evidential_kl(alpha, y, "post").item() > 1.0
    wrong = torch.tensor([[1.0, 50.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(evidential_kl(wrong, y, "sensoy"), dirichlet_kl_uniform(wrong))


def test_expected_mse_against_monte_carlo():
    a = torch.tensor([[2.0, 0.5, 5.0]], dtype=torch.float64)
    p = torch.distributions.Dirichlet(a[0]).sample((200_000,))
    mc = ((torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - p) ** 2).sum(1)
    got = dirichlet_risk(a, torch.tensor([2]), "mse").item()
    assert abs(got - mc.mean().item()) < 4 * mc.std().item() / math.sqrt(len(mc))


def test_one_hot_targets_equal_indices():
    alpha = torch.tensor([[2.0, 3.0], [1.5, 9.0]])
    for risk in ("mse", "ce", "ml"):
        torch.testing.assert_close(dirichlet_risk(alpha, torch.tensor([1, 0]), risk),
                                   dirichlet_risk(alpha, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), risk))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [0.0, 1e6, 1e30])
def test_dirichlet_losses_finite_at_zero_and_huge_evidence(dtype, scale):
    alpha = (torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]]) * scale + 1).to(dtype)
    y = torch.tensor([0, 2])
    for risk in ("mse", "ce", "ml"):
        for form in ("sensoy", "post"):
            loss = dirichlet_loss(alpha, y, 0.01, risk=risk, form=form)
            assert loss.dtype == torch.float32 and torch.isfinite(loss).all(), (risk, form, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_evidence_is_finite_and_clamped(dtype):
    e = evidence(torch.tensor([-1e4, 0.0, 1e4, 3e38]).to(dtype))
    assert torch.isfinite(e).all() and (e >= 0).all() and e.max() <= 1e6


@pytest.mark.parametrize("bad, err, name", [
    (torch.ones(3), ShapeError, "alpha"), (torch.ones(3, 1), ShapeError, "alpha"), ([[1.0, 2.0]], InputTypeError, "alpha"),
])
def test_bad_alpha_is_named(bad, err, name):
    with pytest.raises(err, match=name):
        dirichlet_kl_uniform(bad)


def test_bad_target_and_choices_are_named():
    alpha = torch.ones(2, 3)
    with pytest.raises(ShapeError, match="y"):
        dirichlet_risk(alpha, torch.zeros(2, 3, 1))
    with pytest.raises(ShapeError, match="y"):
        dirichlet_risk(alpha, torch.zeros(2, 4))
    with pytest.raises(HyperparameterError, match="risk"):
        dirichlet_risk(alpha, torch.zeros(2, dtype=torch.long), "hinge")
    with pytest.raises(HyperparameterError, match="form"):
        evidential_kl(alpha, torch.zeros(2, dtype=torch.long), "alpha")


def test_kl_annealing_schedule():
    assert [kl_annealing(t) for t in (0, 5, 10, 20)] == [0.0, 0.005, 0.01, 0.01]
    with pytest.raises(HyperparameterError, match="epoch"):
        kl_annealing(-1)


# ---------------------------------------------------------------- NIG
def test_nig_nll_is_the_student_t(gen):
    g, nu, a, b = (torch.rand(10, 1, generator=gen, dtype=torch.float64) * s + o for s, o in ((4, -2), (5, 0.1), (5, 1.01), (3, 0.1)))
    y = torch.randn(10, 1, generator=gen, dtype=torch.float64) * 2
    nig = NIG(g, nu, a, b)
    loc, scale, df = nig.student_t()
    ref = -stats.t.logpdf(y.numpy(), df=df.numpy(), loc=loc.numpy(), scale=scale.numpy())[:, 0]
    torch.testing.assert_close(nig_nll(y, nig), torch.from_numpy(ref), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [0.0, 1e6, 1e30])
def test_nig_loss_finite_at_zero_and_huge_evidence(dtype, scale):
    raw = torch.full((3, 4, 1), scale).to(dtype)
    raw[:, 0] = 0.3
    nig = NIG.from_raw(raw)
    loss = nig_loss(torch.tensor([0.0, 1.0, -2.0]).to(dtype), nig)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    direct = NIG(*(torch.full((2, 1), v) for v in (0.0, max(scale, 1e-3), scale + 1, max(scale, 1e-3))))
    assert torch.isfinite(nig_loss(torch.tensor([0.5, -0.5]), direct)).all()


def test_nig_regularizer_gradient_signs_and_shapes():
    p = torch.tensor([[0.0, 2.0, 3.0, 1.0]], requires_grad=True)
    nig_regularizer(torch.tensor([1.5]), NIG(*(p[:, i:i + 1] for i in range(4)))).sum().backward()
    assert p.grad[0, 1] > 0 and p.grad[0, 2] > 0
    with pytest.raises(ShapeError, match="y"):
        nig_nll(torch.zeros(1, 2), NIG(*(torch.ones(1, 1) * 2 for _ in range(4))))
    with pytest.raises(ShapeError, match="raw"):
        NIG.from_raw(torch.zeros(2, 3, 1))


# ---------------------------------------------------------------- heads and the system hook
def _heads():
    return EvidentialHeads(select_tasks(("ctr", "nba", "ltv", "brand_prediction")), in_dim=8, hidden_dim=4)


def test_heads_shapes_and_batched_equals_clear(gen):
    heads = _heads()
    assert heads.task_names == ("ctr", "nba", "ltv")  # the contrastive task gets no head
    hidden = {t: torch.randn(5, 8, generator=gen) for t in heads.task_names}
    out = heads(None, hidden)
    assert out["evidential"]["ctr"].shape == (5, 2) and out["evidential"]["nba"].shape == (5, 12)
    assert out["evidential"]["ltv"].shape == (5, 4, 1)
    assert all(u.shape == (5,) for u in out["uncertainty"].values())
    assert (out["evidential"]["nba"] >= 1).all() and (out["uncertainty"]["nba"] <= 1).all()
    for t in heads.task_names:
        torch.testing.assert_close(heads.head(t, hidden[t]), out["evidential"][t])


def test_heads_bad_input_is_named(gen):
    heads = _heads()
    with pytest.raises(TaskError, match="ltv"):
        heads(None, {"ctr": torch.zeros(2, 8), "nba": torch.zeros(2, 8)})
    with pytest.raises(ShapeError, match="hidden"):
        heads(None, {t: torch.zeros(2, 7) for t in heads.task_names})
    with pytest.raises(HyperparameterError, match="risk"):
        EvidentialHeads(select_tasks(("ctr",)), 8, risk="hinge")
    with pytest.raises(TaskError):
        EvidentialHeads(select_tasks(("brand_prediction",)), 8)
    with pytest.raises(InputTypeError, match="heads"):
        KLAnnealing(object())


def test_heads_detach_and_annealing(gen):
    heads = _heads()
    x = torch.randn(4, 8, generator=gen, requires_grad=True)
    out = heads(None, {t: x for t in heads.task_names})
    sum(p.float().sum() for p in out["evidential"].values()).backward()
    assert x.grad is None
    heads.set_epoch(5)
    assert heads.kl_coef.item() == pytest.approx(0.005)


CI = preset("ci")


def test_system_with_heads_predicts_bit_identically_and_returns_them():
    torch.manual_seed(0)
    system = PLESystem(CI).eval()
    x = synthetic_system_inputs(CI, 6)
    with torch.no_grad():
        off = system.run(x).logits
    view = SideHeadSystem.attach(system, sae=SAEHead(system.pool.output_dim), evidential=EvidentialHeads.for_system(system))
    with torch.no_grad():
        res = view.run(x)
        logits = view(*x.as_tuple())
    assert all(torch.equal(off[t], res.system.logits[t]) and torch.equal(off[t], logits[t]) for t in off)
    assert res.sae_latent.shape == (6, 4 * system.pool.output_dim)
    assert set(res.uncertainty) == {t for t, s in system.specs.items() if s.task_type != "contrastive"}
    assert res.shared.shape == (6, system.pool.output_dim)
    # the system's own run computes the heads and returns h_shared: no hook on the pool
    with torch.no_grad():
        own = system.run(x)
    assert not system.pool._forward_hooks
    assert torch.equal(own.shared, res.shared) and set(own.side) == {"sae", "evidential"}
    assert torch.equal(own.side["sae"]["sae_latent"], res.sae_latent)


def test_sae_loss_leaves_expert_gradients_bit_identical():
    torch.manual_seed(0)
    system = PLESystem(CI)
    view = SideHeadSystem.attach(system, sae=SAEHead(system.pool.output_dim))
    x = synthetic_system_inputs(CI, 6)

    def grads(with_sae):
        torch.manual_seed(1)
        res = view.run(x)
        loss = sum(z.float().pow(2).mean() for z in res.system.logits.values())
        if with_sae:
            loss = loss + view.aux_losses(res)["sae"]
        system.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in system.pool.parameters() if p.grad is not None]

    a, b = grads(False), grads(True)
    assert a and all(torch.equal(u, v) for u, v in zip(a, b))


def test_fit_with_heads_leaves_the_system_as_without():
    n = 24
    x = synthetic_system_inputs(CI, n, seed=3)
    g = torch.Generator().manual_seed(0)
    targets = {t: (torch.randint(0, s.num_classes, (n,), generator=g) if s.task_type in ("multiclass", "contrastive")
                   else torch.rand(n, generator=g).round() if s.task_type == "binary" else torch.randn(n, generator=g))
               for t, s in {s.name: s for s in select_tasks(CI.tasks)}.items()}
    data = TensorData(x.as_tuple(), targets)
    kw = dict(epochs=1, batch_size=12, lr=1e-3, returns_aux=True, seed=0)
    torch.manual_seed(0)
    plain = PLESystem(CI)
    fit(plain.for_fit(), data, tasks=plain.fit_tasks(), aggregate=plain.aggregator(), **kw)
    torch.manual_seed(0)
    system = PLESystem(CI)
    heads = EvidentialHeads.for_system(system)
    view = SideHeadSystem.attach(system, sae=SAEHead(system.pool.output_dim), evidential=heads)
    h = fit(view.for_fit(), heads.targets(data), tasks=view.fit_tasks(), aggregate=view.aggregator(),
            callbacks=[KLAnnealing(heads)], **kw)
    assert evidential_name("nba") in h.records[0]["train_loss"]
    sd = {k: v for k, v in system.state_dict().items() if not k.startswith("side_heads.")}
    assert all(torch.equal(v, sd[k]) for k, v in plain.state_dict().items())


def test_attach_rejects_non_systems_and_non_modules():
    with pytest.raises(InputTypeError, match="side_heads"):
        SideHeadSystem(torch.nn.Linear(2, 2))
    with pytest.raises(InputTypeError, match="head 'x'"):
        SideHeadSystem.attach(PLESystem(CI), x=object())
