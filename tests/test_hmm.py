"""ple.hmm: filtered posteriors, generator, 16-dim features, projectors, missing data, routing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hmmlearn.hmm import GaussianHMM

from ple import seed_everything
from ple.checks import HyperparameterError, NonFiniteError, ShapeError, TaskError, validation
from ple.data.world import hmm_filter
from ple.hmm import (
    DEFAULT_MODE,
    HMM_FEATURE_DIM,
    HMM_PROJECTION_DIM,
    NUM_STATE_DIMS,
    HMMProjector,
    HMMTripleMode,
    ModeHMM,
    dynamics_summary,
    filtered_posteriors,
    generator_from_transmat,
    is_generator,
    match_states,
    missing_rows,
    pad_posteriors,
    stationary_distribution,
    task_hmm_mode,
)
from ple.tasks import HMM_MODES, active_tasks, get_task

STAY = 0.9


def _sample(n=120, t=30, s=3, d=2, seed=0):
    rng = np.random.default_rng(seed)
    P = np.full((s, s), (1 - STAY) / (s - 1))
    np.fill_diagonal(P, STAY)
    mu = 3.0 * np.arange(s)[:, None] * np.ones((1, d))
    z = np.zeros((n, t), dtype=int)
    z[:, 0] = rng.integers(0, s, n)
    for k in range(1, t):
        z[:, k] = (rng.random(n)[:, None] > P[z[:, k - 1]].cumsum(1)).sum(1)
    return mu[z] + rng.normal(size=(n, t, d)), z, P


@pytest.fixture(scope="module")
def fitted():
    obs, z, P = _sample()
    return ModeHMM("journey", 3, n_iter=15, seed=0).fit(obs), obs, z, P


def test_filter_matches_hmmlearn_last_step(fitted):
    model, obs, _, _ = fitted
    post = filtered_posteriors(model.model_, obs)
    assert post.shape == obs.shape[:2] + (3,)
    assert np.allclose(post.sum(-1), 1.0)
    for i in range(5):
        assert np.allclose(post[i, -1], model.model_.predict_proba(obs[i])[-1], atol=1e-8)
        # filtered at t = smoothed at t on the prefix o_1..o_t
        assert np.allclose(post[i, 9], model.model_.predict_proba(obs[i, :10])[-1], atol=1e-8)
    assert np.allclose(filtered_posteriors(model.model_, obs, return_all=False), post[:, -1])
    assert np.allclose(model.posteriors(obs), post)


def test_filter_is_the_worlds_with_this_models_emissions(fitted):
    model, obs, _, _ = fitted
    hmm = model.model_
    var = np.diagonal(hmm.covars_, axis1=-2, axis2=-1)
    log_b = np.stack([  # log N(o; mu_s, diag var_s), one state at a time
        -0.5 * (np.log(2 * np.pi * var[s]).sum() + ((obs - hmm.means_[s]) ** 2 / var[s]).sum(-1))
        for s in range(3)], axis=-1)
    ref = hmm_filter(log_b, hmm.startprob_, hmm.transmat_, return_all=True)
    assert np.allclose(filtered_posteriors(hmm, obs), ref, atol=1e-12)


def test_restarts_keep_the_most_likely_fit():
    obs, _, _ = _sample(n=60, seed=3)
    single = [ModeHMM("journey", 3, n_iter=10, seed=s).fit(obs).log_likelihood_ for s in range(3)]
    best = ModeHMM("journey", 3, n_iter=10, seed=0, n_restarts=3).fit(obs)
    assert best.log_likelihood_ == pytest.approx(max(single), rel=1e-12)
    with pytest.raises(HyperparameterError, match="n_restarts must be an int >= 1; got 0"):
        ModeHMM("journey", 3, n_restarts=0)


def test_recovers_planted_states(fitted):
    model, obs, z, _ = fitted
    acc, mapping = match_states(z, model.posteriors(obs).argmax(-1))
    assert acc > 0.9
    assert sorted(mapping.tolist()) == [0, 1, 2]


def test_features_shape_padding_and_missing(fitted):
    model, obs, _, _ = fitted
    valid = np.ones(len(obs), dtype=bool)
    valid[:4] = False
    x = model.transform(obs, valid)
    assert x.shape == (len(obs), HMM_FEATURE_DIM) and x.dtype == np.float32
    assert (x[:4] == 0).all()
    assert np.allclose(x[4:, :3].sum(1), 1.0, atol=1e-5)
    assert (x[:, 3:NUM_STATE_DIMS] == 0).all()  # 3 states: slots 3..9 are padding
    assert np.isfinite(x).all()


def test_states_sorted_by_score(fitted):
    model, _, _, _ = fitted
    assert np.all(np.diff(model.state_score_) >= 0)
    assert model.state_score_[0] == 0.0 and model.state_score_[-1] == 1.0


def test_generator_exact_for_embeddable_chain():
    Q = np.array([[-0.3, 0.2, 0.1], [0.05, -0.1, 0.05], [0.2, 0.2, -0.4]])
    P = scipy.linalg.expm(Q * 2.0)
    gen = generator_from_transmat(P, 2.0)
    assert gen.method == "logm" and gen.residual < 1e-10
    assert np.allclose(gen.Q, Q, atol=1e-9)


def test_generator_repair_and_fallback():
    flip = np.array([[0.1, 0.9], [0.9, 0.1]])  # det < 0: no real generator exists
    gen = generator_from_transmat(flip, 1.0)
    assert gen.method == "logm-repaired" and is_generator(gen.Q)
    singular = np.array([[0.5, 0.5], [0.5, 0.5]])
    gen = generator_from_transmat(singular, 1.0)
    assert gen.method == "first-order" and is_generator(gen.Q)
    assert np.allclose(gen.Q, singular - np.eye(2))
    with pytest.raises(ValueError, match="rows summing to 1"):
        generator_from_transmat(np.array([[0.5, 0.6], [0.5, 0.5]]), 1.0)
    with pytest.raises(ValueError, match="dt must be > 0"):
        generator_from_transmat(flip, 0.0)


def test_dynamics_summary_formulas():
    Q = np.array([[-0.5, 0.5, 0.0], [0.1, -0.3, 0.2], [0.0, 0.4, -0.4]])
    f = np.array([0.0, 0.5, 1.0])
    p = np.array([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3]])
    dyn = dynamics_summary(p, Q, f, dt=1.0, horizon_steps=2.0)
    assert dyn.shape == (2, 6)
    assert dyn[0, 0] == pytest.approx(np.log1p(1 / 0.5))  # holding time 1/q_0 = 2 days
    assert dyn[0, 1] == pytest.approx(1 - np.exp(-0.5))
    assert dyn[0, 2] == pytest.approx(0.0)  # state 0 can only jump to state 1
    eps = 1e-6
    fd = (p[1] @ scipy.linalg.expm(Q * eps) @ f - p[1] @ f) / eps
    assert dyn[1, 3] == pytest.approx(fd, rel=1e-4)
    pi = stationary_distribution(Q)
    assert np.allclose(pi @ Q, 0.0, atol=1e-12)
    assert dyn[1, 5] == pytest.approx(0.5 * np.abs(p[1] - pi).sum())


def test_pad_and_match_errors():
    with pytest.raises(ValueError, match="at most 10"):
        pad_posteriors(np.ones((2, 11)) / 11)
    acc, mapping = match_states(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
    assert acc == 1.0 and mapping.tolist() == [1, 0]


def test_mode_errors():
    with pytest.raises(HyperparameterError, match="mode must be one of 'journey', 'lifecycle', 'behavior'; got 'weekly'"):
        ModeHMM("weekly", 3)
    with pytest.raises(HyperparameterError, match="n_states must be an int >= 2 and <= 10; got 11"):
        ModeHMM("journey", 11)
    with pytest.raises(HyperparameterError, match="n_iter must be an int >= 1; got 0"):
        ModeHMM("journey", 3, n_iter=0)
    with pytest.raises(HyperparameterError, match="not fitted"):
        ModeHMM("journey", 3).transform(np.zeros((2, 5, 2)))
    model = GaussianHMM(2, "diag")
    model.n_features = 2
    model.startprob_, model.transmat_ = np.array([0.5, 0.5]), np.eye(2)
    model.means_, model.covars_ = np.zeros((2, 2)), np.ones((2, 2))
    with pytest.raises(ShapeError, match=r"obs has shape \[3, 4, 5\]; expected \[N, T, 2\]"):
        filtered_posteriors(model, np.zeros((3, 4, 5)))
    bad = np.zeros((3, 4, 2))
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="NaN"):
        filtered_posteriors(model, bad)
    assert np.allclose(filtered_posteriors(model, np.zeros((3, 4, 2))), 0.5)  # equal states stay equal


def test_projector_shapes_and_missing_embedding():
    seed_everything(0)
    proj = HMMProjector()
    x = torch.rand(5, HMM_FEATURE_DIM)
    x[1] = 0.0  # no data
    out = proj(x)
    assert out.shape == (5, HMM_PROJECTION_DIM)
    assert torch.equal(out[1], torch.zeros(HMM_PROJECTION_DIM))  # default starts at zero
    with torch.no_grad():
        proj.default_embedding.fill_(0.7)
    out = proj(x)
    assert torch.allclose(out[1], torch.full((HMM_PROJECTION_DIM,), 0.7))
    assert missing_rows(x).tolist() == [False, True, False, False, False]
    # "all probabilities zero" with a summary is data, not the default embedding
    probs_zero = x[2:3].clone()
    probs_zero[:, :NUM_STATE_DIMS] = 0.0
    assert not torch.allclose(proj(probs_zero), proj.default_embedding)
    # the all-zero row under an explicit valid mask goes through the projector
    forced = proj(x[1:2], valid=torch.tensor([True]))
    ln_silu = torch.nn.functional.silu(proj.norm(proj.linear(torch.zeros(1, HMM_FEATURE_DIM))))
    assert torch.allclose(forced, ln_silu)


def test_default_embedding_gradient_only_from_missing_rows():
    proj = HMMProjector()
    x = torch.rand(4, HMM_FEATURE_DIM)
    proj(x).sum().backward()
    assert proj.default_embedding.grad is None or proj.default_embedding.grad.abs().sum() == 0
    x[0] = 0.0
    proj.zero_grad()
    proj(x).sum().backward()
    assert torch.allclose(proj.default_embedding.grad, torch.ones(HMM_PROJECTION_DIM))


def test_projector_errors():
    proj = HMMProjector()
    with pytest.raises(ShapeError, match=r"x has shape \[2, 15\]; expected \[B, 16\]"):
        proj(torch.zeros(2, 15))
    with pytest.raises(NonFiniteError, match="x contains NaN"):
        proj(torch.full((2, 16), float("nan")))
    with pytest.raises(ShapeError, match=r"valid has shape \[3\] and dtype torch.bool; expected bool \[2\]"):
        proj(torch.zeros(2, 16), valid=torch.ones(3, dtype=torch.bool))


def test_projector_rows_without_data_are_isolated():
    seed_everything(0)
    proj = HMMProjector()
    x = torch.rand(3, HMM_FEATURE_DIM)
    x[1] = float("nan")  # garbage in a row marked as missing never reaches the output or a gradient
    valid = torch.tensor([True, False, True])
    with validation(False):  # the NaN scan is off, as inside a training step
        out = proj(x, valid)
    assert torch.equal(out[1], proj.default_embedding.detach())
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in proj.parameters())
    assert torch.allclose(out[[0, 2]], proj(x[[0, 2]]))


def test_triple_mode_projectors_distinct_and_routed():
    seed_everything(0)
    names = [t.name for t in active_tasks()]
    triple = HMMTripleMode(names)
    params = [set(map(id, triple.projectors[m].parameters())) for m in HMM_MODES]
    assert all(not (params[i] & params[j]) for i in range(3) for j in range(i + 1, 3))
    x = torch.rand(3, HMM_FEATURE_DIM)
    inputs = {m: x for m in HMM_MODES}  # the same input through each mode's projector
    h = triple(inputs)
    assert not torch.allclose(h["journey"], h["lifecycle"])
    per_task = triple.for_tasks(inputs)
    assert per_task.shape == (3, len(names), HMM_PROJECTION_DIM)
    for k, name in enumerate(names):
        assert torch.equal(per_task[:, k], h[task_hmm_mode(name)])
        mode = getattr(get_task(name), "hmm_mode", None) or DEFAULT_MODE
        assert task_hmm_mode(name) == mode


def test_triple_mode_errors():
    triple = HMMTripleMode(["ctr"])
    x = torch.rand(2, HMM_FEATURE_DIM)
    with pytest.raises(TaskError, match="unknown HMM mode"):
        triple({"journey": x, "lifecycle": x, "behavior": x, "weekly": x})
    with pytest.raises(TaskError, match="lack HMM mode"):
        triple({"journey": x})
    with pytest.raises(ValueError, match="no_such_task"):
        HMMTripleMode(["no_such_task"])
    with pytest.raises(HyperparameterError, match=r"modes\[1\] must be one of .*; got 'weekly'"):
        HMMTripleMode(["ctr"], modes=("journey", "weekly"))
    with pytest.raises(TaskError, match="routes to mode 'journey', which is not in modes"):
        HMMTripleMode(["ctr"], modes=("lifecycle",))


# ---------------------------------------------------------------- issue 18: input contract defects
def test_dynamics_summary_rejects_a_posterior_that_is_not_a_distribution_and_a_bad_step():
    from ple.hmm import dynamics_summary

    Q = np.array([[-1.0, 1.0], [2.0, -2.0]])
    with pytest.raises(ValueError, match="posterior rows must be probability vectors"):
        dynamics_summary(np.array([[1.5, 1.5]]), Q, np.zeros(2), 1.0)
    with pytest.raises(ValueError, match=r"dt must be > 0"):
        dynamics_summary(np.array([[0.5, 0.5]]), Q, np.zeros(2), -1.0)
    with pytest.raises(ValueError, match="Q must be a generator"):
        dynamics_summary(np.array([[0.5, 0.5]]), -Q, np.zeros(2), 1.0)


def test_match_states_rejects_negative_labels():
    from ple.hmm import ModeHMM, match_states

    with pytest.raises(ValueError, match="pred_states must hold non-negative integer labels"):
        match_states(np.array([0, 1]), np.array([-1, 0]))
    with pytest.raises(HyperparameterError, match="n_iter must be an int >= 1; got 0"):
        ModeHMM("journey", 3, n_iter=0)
