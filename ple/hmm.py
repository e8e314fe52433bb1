"""ple.hmm -- generated from book/ple4_two_stage_cgc_hmm_routing.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['NUM_STATE_DIMS', 'NUM_DYNAMICS_DIMS', 'HMM_FEATURE_DIM', 'HMM_PROJECTION_DIM', 'DEFAULT_MODE', 'MODE_STEP_DAYS', 'DYNAMICS_NAMES', 'gaussian_log_emissions', 'filtered_posteriors', 'Generator', 'is_generator', 'generator_from_transmat', 'stationary_distribution', 'dynamics_summary', 'pad_posteriors', 'match_states', 'ModeHMM', 'fit_triple_mode', 'task_hmm_mode', 'missing_rows', 'HMMProjector', 'HMMTripleMode']

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from hmmlearn.hmm import GaussianHMM
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits
from torch import nn

from ple.checks import (
    HyperparameterError, NonFiniteError, ShapeError, TaskError, check_array, check_choice, check_float, check_int,
    check_tensor,
)
from ple.data.world import hmm_filter
from ple.tasks import HMM_MODES, get_task

NUM_STATE_DIMS = 10  # posterior slots per mode (fewer states are zero-padded)
NUM_DYNAMICS_DIMS = 6  # the continuous-time summary (eq-hmm-dynamics)
HMM_FEATURE_DIM = NUM_STATE_DIMS + NUM_DYNAMICS_DIMS  # 16 per mode
HMM_PROJECTION_DIM = 32  # projector output per mode
DEFAULT_MODE = "behavior"  # tasks that name no mode
MODE_STEP_DAYS = {"journey": 1.0, "lifecycle": 30.0, "behavior": 30.0}  # Delta t of each mode
DYNAMICS_NAMES = (
    "log_dwell_days",  # log(1 + E_p[1 / q_s]), q_s = -Q_ss
    "p_leave_step",  # 1 - E_p[exp(-q_s dt)]
    "jump_entropy",  # E_p[H(Q_s. / q_s)] / log(S - 1)
    "drift_step",  # p^T Q f dt
    "forecast_change",  # p^T (exp(Q h dt) - I) f
    "tv_to_stationary",  # 0.5 * ||p - pi||_1
)


def gaussian_log_emissions(model: GaussianHMM, obs: np.ndarray) -> np.ndarray:
    """log b_s(o_t) = log N(o_t; mu_s, diag(sigma_s^2)) for a diagonal-covariance GaussianHMM.

    obs: [N, T, D] -> [N, T, S], float64. (Chapter 00's `gaussian_state_loglik` is the world's
    emission with unit variances; a fitted HMM has a variance per state and feature.)
    """
    if model.covariance_type != "diag":
        raise HyperparameterError(f"covariance_type is {model.covariance_type!r}; expected 'diag'")
    x = check_array(obs, "obs", 3)
    if x.shape[-1] != model.means_.shape[1]:
        raise ShapeError(f"obs has shape {list(x.shape)}; expected [N, T, {model.means_.shape[1]}] (n_features)")
    x = x[..., None, :]  # [N, T, 1, D]
    mu = np.asarray(model.means_, dtype=np.float64)  # [S, D]
    var = np.diagonal(np.asarray(model.covars_, dtype=np.float64), axis1=-2, axis2=-1)  # [S, D]
    return -0.5 * (np.log(2 * np.pi * var).sum(-1) + ((x - mu) ** 2 / var).sum(-1))


def filtered_posteriors(model: GaussianHMM, obs: np.ndarray, *, return_all: bool = True) -> np.ndarray:
    """Filtered posteriors P(q_t = s | o_1..o_t) of a fitted GaussianHMM for N sequences at once
    (eq-hmm-forward).

    The forward recursion is chapter 00's `ple.data.world.hmm_filter` (log space, every step
    normalised), fed with this model's emissions, start and transition probabilities.
    obs: [N, T, D] -> [N, T, S], float64; with return_all=False only the last step, [N, S].
    """
    obs = np.asarray(obs, dtype=np.float64)
    n_features = model.means_.shape[1]
    if obs.ndim != 3 or obs.shape[-1] != n_features:
        raise ShapeError(f"obs has shape {list(obs.shape)}; expected [N, T, {n_features}] (n_features)")
    if not np.isfinite(obs).all():
        raise NonFiniteError("obs contains NaN or inf")
    log_b = gaussian_log_emissions(model, obs)
    return hmm_filter(log_b, model.startprob_, model.transmat_, return_all=return_all)


@dataclass
class Generator:
    """A continuous-time generator Q (rates per day) for a fitted transition matrix P over dt days."""

    Q: np.ndarray  # [S, S]; off-diagonal >= 0, rows sum to 0
    method: str  # "logm" (exact), "logm-repaired" or "first-order"
    residual: float  # max |expm(Q dt) - P|


def is_generator(Q: np.ndarray, atol: float = 1e-10) -> bool:
    """True if Q is a valid rate matrix: real, off-diagonals >= -atol, rows summing to 0."""
    Q = np.asarray(Q)
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ShapeError(f"Q has shape {list(Q.shape)}; expected [S, S] (a square matrix)")
    if np.iscomplexobj(Q):
        if np.abs(Q.imag).max() > atol:
            return False
        Q = Q.real
    off = Q - np.diag(np.diag(Q))
    return bool(off.min() >= -atol and np.abs(Q.sum(1)).max() <= max(atol, 1e-8))


def generator_from_transmat(P: np.ndarray, dt: float) -> Generator:
    """Q = log(P) / dt  (eq-ctmc-generator), repaired when the principal log is not a generator.

    1. L = principal matrix logarithm of P (scipy.linalg.logm). If L / dt is a valid generator,
       expm(Q dt) = P exactly: method "logm".
    2. Otherwise (negative off-diagonal rates, or a complex log): keep the real part, set negative
       off-diagonal rates to 0 and put minus the row sums on the diagonal (diagonal adjustment):
       method "logm-repaired"; `residual` says how far expm(Q dt) lands from P.
    3. If the log does not exist (a singular P) or is not finite: Q = (P - I) / dt, the first-order
       generator, valid by construction: method "first-order".
    """
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"P has shape {list(P.shape)}; expected [S, S] (a transition matrix)")
    if not np.isfinite(P).all() or P.min() < 0 or not np.allclose(P.sum(1), 1.0, atol=1e-6):
        raise ValueError("P must be finite, non-negative, with rows summing to 1")
    dt = check_float("dt", dt, 0.0, low_open=True)
    S = P.shape[0]
    method = "logm"
    L = None
    if abs(np.linalg.det(P)) > 1e-12:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            L = scipy.linalg.logm(P)
        if not np.all(np.isfinite(L)):
            L = None
    if L is None:
        Q, method = (P - np.eye(S)) / dt, "first-order"
    else:
        Q = np.real(L) / dt
        if not is_generator(L, atol=1e-9):
            off = np.clip(Q - np.diag(np.diag(Q)), 0.0, None)
            Q = off - np.diag(off.sum(1))
            method = "logm-repaired"
        else:
            Q = Q - np.diag(Q.sum(1))  # remove round-off from the row sums
    residual = float(np.abs(scipy.linalg.expm(Q * dt) - P).max())
    return Generator(Q=Q, method=method, residual=residual)


def stationary_distribution(Q: np.ndarray) -> np.ndarray:
    """pi with pi^T Q = 0, sum(pi) = 1 (least squares; unique for an irreducible chain). [S]."""
    Q = _check_generator(Q)
    S = Q.shape[0]
    A = np.vstack([Q.T, np.ones((1, S))])
    rhs = np.zeros(S + 1)
    rhs[-1] = 1.0
    pi = np.linalg.lstsq(A, rhs, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def _check_generator(Q: object) -> np.ndarray:
    """Q as float64 [S, S], a rate matrix (off-diagonals >= 0, rows summing to 0); else ValueError."""
    Q = check_array(Q, "Q", 2)
    if Q.shape[0] != Q.shape[1] or Q.shape[0] < 2:
        raise ShapeError(f"Q has shape {list(Q.shape)}; expected [S, S] with S >= 2 (a generator)")
    if not is_generator(Q, atol=1e-8):
        raise ValueError("Q must be a generator: off-diagonal rates >= 0 and rows summing to 0")
    return Q


def dynamics_summary(
    posterior: np.ndarray,
    Q: np.ndarray,
    state_score: np.ndarray,
    dt: float,
    horizon_steps: float = 3.0,
) -> np.ndarray:
    """The 6-dim continuous-time summary of a customer's current state  (eq-hmm-dynamics).

    posterior p: [N, S] (rows sum to 1); Q: generator [S, S] in rates per day; state_score f: [S];
    dt: the mode's step in days. Columns (`DYNAMICS_NAMES`):

    0. log(1 + E_p[1/q_s]): expected holding time in the current state, days (q_s = -Q_ss)
    1. 1 - E_p[exp(-q_s dt)]: probability of leaving the current state within one step
    2. E_p[H(J_s)] / log(S - 1): entropy of where the next jump goes, J_{s,j} = Q_sj / q_s
    3. p^T Q f dt: drift of the state score per step, d/dt E[f(X_t)] at t = 0
    4. p^T (expm(Q h dt) - I) f: expected change of the score over h = `horizon_steps` steps
    5. 0.5 ||p - pi||_1: total-variation distance to the stationary distribution
    Returns float64 [N, 6].
    """
    Q = _check_generator(Q)
    S = Q.shape[0]
    p = check_array(posterior, "posterior", 2)
    if p.shape[1] != S:
        raise ShapeError(f"posterior has shape {list(p.shape)}; expected [N, {S}] (the states of Q)")
    if p.size and (p.min() < 0 or np.abs(p.sum(1) - 1.0).max() > 1e-5):
        raise ValueError(f"posterior rows must be probability vectors (>= 0, summing to 1); got sums "
                         f"from {p.sum(1).min():g} to {p.sum(1).max():g}")
    dt = check_float("dt", dt, 0.0, low_open=True)
    horizon_steps = check_float("horizon_steps", horizon_steps, 0.0, low_open=True)
    if np.shape(state_score) != (S,):
        raise ShapeError(f"state_score has shape {list(np.shape(state_score))}; expected [{S}] (one score per state)")
    check_array(state_score, "state_score", 1)
    rates = np.clip(-np.diag(Q), 1e-12, None)  # exit rate of each state, per day
    dwell = p @ (1.0 / rates)
    p_leave = 1.0 - p @ np.exp(-rates * dt)
    jumps = np.clip(Q - np.diag(np.diag(Q)), 0.0, None) / rates[:, None]
    h_jump = -(jumps * np.log(np.where(jumps > 0, jumps, 1.0))).sum(1)
    jump_entropy = p @ h_jump / (math.log(S - 1) if S > 2 else 1.0)
    f = np.asarray(state_score, dtype=np.float64)
    drift = p @ (Q @ f) * dt
    forecast = p @ ((scipy.linalg.expm(Q * horizon_steps * dt) - np.eye(S)) @ f)
    tv = 0.5 * np.abs(p - stationary_distribution(Q)).sum(1)
    return np.stack([np.log1p(dwell), p_leave, jump_entropy, drift, forecast, tv], axis=1)


def pad_posteriors(posterior: np.ndarray, width: int = NUM_STATE_DIMS) -> np.ndarray:
    """Zero-pad [N, S] posteriors to [N, width]: slots S..width-1 are states the mode does not have."""
    posterior = check_array(posterior, "posterior", 2)
    width = check_int("width", width, 1)
    N, S = posterior.shape
    if S > width:
        raise ValueError(f"posterior has {S} states; at most {width} fit the feature vector")
    return np.concatenate([posterior, np.zeros((N, width - S))], axis=1)


def match_states(true_states: np.ndarray, pred_states: np.ndarray) -> tuple[float, np.ndarray]:
    """Accuracy after the best one-to-one relabelling of predicted states (Hungarian method).

    true_states, pred_states: int arrays of one shape. Returns (accuracy, mapping) with
    mapping[pred] = the true label it is matched to (-1 for a predicted state left unmatched).
    """
    t = check_array(true_states, "true_states", dtype=None).ravel()
    q = check_array(pred_states, "pred_states", dtype=None).ravel()
    if t.shape != q.shape:
        raise ShapeError(f"true_states {t.shape} and pred_states {q.shape} differ in size")
    for name, a in (("true_states", t), ("pred_states", q)):
        if a.dtype.kind not in "biu" or (a.size and a.min() < 0):
            raise ValueError(f"{name} must hold non-negative integer labels; got dtype {a.dtype}"
                             + (f", minimum {a.min()}" if a.size else ""))
    if t.size == 0:
        raise ValueError("true_states is empty; nothing to match")
    n_t, n_q = int(t.max()) + 1, int(q.max()) + 1
    counts = np.zeros((n_q, n_t))
    np.add.at(counts, (q, t), 1)
    rows, cols = linear_sum_assignment(-counts)
    mapping = np.full(n_q, -1)
    mapping[rows] = cols
    return float(counts[rows, cols].sum() / t.size), mapping


class ModeHMM:
    """One time scale's HMM, fitted offline, and its 16-dim per-customer feature  (eq-hmm-feature).

    x^m = [p_T (10 slots, zero-padded) || dynamics_summary(p_T) (6)], where p_T is the filtered
    posterior at the last step of the customer's sequence. After fitting, states are sorted by
    their score f (the fitted means projected on their first principal axis, scaled to [0, 1]), so
    slot 0 is the lowest-scoring state.

    Args:
        mode: one of `HMM_MODES`.
        n_states: hidden states (<= 10).
        step_days: the sequence's step in days (default `MODE_STEP_DAYS[mode]`).
        n_iter, seed: Baum-Welch iterations and random state for hmmlearn.
        n_restarts: Baum-Welch runs from k-means starts with random states seed, seed + 1, ...;
            the run with the highest log-likelihood is kept (EM finds a local maximum only).
    """

    def __init__(
        self,
        mode: str,
        n_states: int,
        step_days: float | None = None,
        n_iter: int = 30,
        seed: int = 0,
        horizon_steps: float = 3.0,
        max_fit_sequences: int | None = 400,
        n_restarts: int = 1,
    ) -> None:
        self.mode = check_choice("mode", mode, HMM_MODES)
        self.n_states = check_int("n_states", n_states, 2, NUM_STATE_DIMS)
        self.step_days = MODE_STEP_DAYS[mode] if step_days is None else check_float(
            "step_days", step_days, 0.0, low_open=True)
        self.n_iter, self.seed = check_int("n_iter", n_iter, 1), check_int("seed", seed, 0)
        self.horizon_steps = check_float("horizon_steps", horizon_steps, 0.0, low_open=True)
        self.max_fit_sequences = None if max_fit_sequences is None else check_int(
            "max_fit_sequences", max_fit_sequences, 1)
        self.n_restarts = check_int("n_restarts", n_restarts, 1)

    def fit(self, obs: np.ndarray, valid: np.ndarray | None = None) -> ModeHMM:
        """Baum-Welch (hmmlearn) on the valid customers' sequences. obs: [N, T, D]; valid: bool [N].

        At most `max_fit_sequences` customers (a seeded random subset) enter the fit; the
        parameters of a small chain are well determined by a few hundred sequences. Means and
        variances start from k-means clusters of the observations (hmmlearn's default starts the
        variances at the pooled covariance, which lets neighbouring states merge).
        """
        obs = np.asarray(obs, dtype=np.float64)
        if obs.ndim != 3:
            raise ShapeError(f"obs has shape {list(obs.shape)}; expected [N, T, D]")
        if not np.isfinite(obs).all():
            raise NonFiniteError("obs contains NaN or inf")
        rows = obs if valid is None else obs[np.asarray(valid, dtype=bool)]
        rng = np.random.default_rng(self.seed)
        if self.max_fit_sequences is not None and len(rows) > self.max_fit_sequences:
            rows = rows[np.sort(rng.choice(len(rows), self.max_fit_sequences, replace=False))]
        N, T, D = rows.shape
        X = rows.reshape(N * T, D)
        best, best_loglik = None, -np.inf
        # one BLAS / OpenMP thread: hmmlearn loops over short sequences, where threads only add overhead
        with threadpool_limits(limits=1):
            for state in range(self.seed, self.seed + self.n_restarts):
                model = GaussianHMM(
                    n_components=self.n_states, covariance_type="diag", n_iter=self.n_iter,
                    random_state=state, tol=1e-4, implementation="scaling", init_params="st",
                )
                km = KMeans(self.n_states, n_init=4, random_state=state).fit(X)
                model.means_ = km.cluster_centers_
                model.covars_ = np.stack(
                    [X[km.labels_ == s].var(0) if (km.labels_ == s).sum() > 1 else X.var(0)
                     for s in range(self.n_states)]
                ) + 1e-3
                model.fit(X, lengths=[T] * N)
                loglik = model.monitor_.history[-1]  # log P(O) at the last Baum-Welch step
                if loglik > best_loglik:
                    best, best_loglik = model, loglik
        self.log_likelihood_ = float(best_loglik)
        self.model_ = self._sorted(best)
        self.state_score_ = self._score(self.model_.means_)
        self.generator_ = generator_from_transmat(self.model_.transmat_, self.step_days)
        return self

    @staticmethod
    def _score(means: np.ndarray) -> np.ndarray:
        centred = means - means.mean(0)
        v = np.linalg.svd(centred, full_matrices=False)[2][0]
        v = v * (1.0 if v.sum() >= 0 else -1.0)
        f = centred @ v
        return (f - f.min()) / max(f.max() - f.min(), 1e-12)

    def _sorted(self, model: GaussianHMM) -> GaussianHMM:
        order = np.argsort(self._score(model.means_), kind="stable")
        covars = np.diagonal(model.covars_, axis1=-2, axis2=-1)[order].copy()  # diag: [S, D]
        model.startprob_ = model.startprob_[order]
        model.transmat_ = model.transmat_[np.ix_(order, order)]
        model.means_ = model.means_[order]
        model.covars_ = covars
        return model

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise HyperparameterError(f"ModeHMM({self.mode!r}) is not fitted; call fit(obs) first")

    def posteriors(self, obs: np.ndarray) -> np.ndarray:
        """Filtered posteriors [N, T, S] (eq-hmm-forward), `filtered_posteriors` of the fitted model."""
        self._check_fitted()
        return filtered_posteriors(self.model_, obs)

    def transform(self, obs: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """The 16-dim feature per customer, float32 [N, 16]; rows with valid=False are all zero."""
        self._check_fitted()
        p_last = filtered_posteriors(self.model_, obs, return_all=False)  # p_T [N, S]
        gen = self.generator_
        dyn = dynamics_summary(p_last, gen.Q, self.state_score_, self.step_days, self.horizon_steps)
        x = np.concatenate([pad_posteriors(p_last), dyn], axis=1).astype(np.float32)
        if valid is not None:
            x[~np.asarray(valid, dtype=bool)] = 0.0
        return x


def fit_triple_mode(
    sequences: Mapping[str, np.ndarray],
    n_states: Mapping[str, int] | int,
    seed: int = 0,
    n_iter: int = 30,
    valid: Mapping[str, np.ndarray] | None = None,
) -> dict[str, ModeHMM]:
    """Fit one `ModeHMM` per mode in `sequences` (mode -> obs [N, T_m, D_m])."""
    out = {}
    for mode, obs in sequences.items():
        k = n_states if isinstance(n_states, int) else n_states[mode]
        v = None if valid is None else valid.get(mode)
        out[mode] = ModeHMM(mode, k, n_iter=n_iter, seed=seed).fit(obs, v)
    return out


def task_hmm_mode(task_name: str) -> str:
    """The HMM mode that feeds a task: its registry entry's `hmm_mode`, else `DEFAULT_MODE`."""
    mode = getattr(get_task(task_name), "hmm_mode", None) or DEFAULT_MODE
    if mode not in HMM_MODES:
        raise TaskError(f"task {task_name!r} names unknown HMM mode {mode!r}; expected one of {list(HMM_MODES)}")
    return mode


def missing_rows(x: torch.Tensor) -> torch.Tensor:
    """bool [B]: rows of x [B, F] that are all zero, the "no data" marker."""
    check_tensor(x, "x", ["B", "F"], "HMM features")
    return (x == 0).all(dim=-1)


class HMMProjector(nn.Module):
    """One mode's projector  (eq-hmm-projector): h = SiLU(LN(Linear_{16->32}(x))) for rows with data,
    and a learnable default embedding e_m (initialised to 0) for rows without.

    A row has no data when `valid` says so, or (valid=None) when all 16 entries are 0. A row whose
    10 posterior slots are 0 but whose summary is not is projected like any other row.
    Every row is projected and `torch.where` picks e_m for the rows without data: no host sync,
    and no gradient reaches e_m from a row with data (nor the Linear from a row without).
    Shapes: x [B, 16], valid bool [B] or None -> [B, 32].
    """

    def __init__(self, in_dim: int = HMM_FEATURE_DIM, out_dim: int = HMM_PROJECTION_DIM) -> None:
        super().__init__()
        self.in_dim, self.out_dim = check_int("in_dim", in_dim), check_int("out_dim", out_dim)
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        self.default_embedding = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor(x, "x", ["B", self.in_dim], "HMM feature")
        if valid is None:
            valid = ~missing_rows(x)
        elif not isinstance(valid, torch.Tensor) or valid.shape != (x.shape[0],) or valid.dtype != torch.bool:
            got = f"shape {list(valid.shape)} and dtype {valid.dtype}" if isinstance(valid, torch.Tensor) else type(valid).__name__
            raise ShapeError(f"valid has {got}; expected bool [{x.shape[0]}]")
        keep = valid.unsqueeze(-1)  # [B, 1]
        x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
        h = nn.functional.silu(self.norm(self.linear(x)))  # eq-hmm-projector, rows with data
        return torch.where(keep, h, self.default_embedding.to(h.dtype).expand_as(h))


class HMMTripleMode(nn.Module):
    """Three projectors, one per mode (never shared), and the task -> mode routing of `ple.tasks`.

    forward(inputs) maps {mode: x [B, 16]} to {mode: [B, 32]}; `for_tasks(inputs)` returns
    [B, K, 32], row k from the mode of `task_names[k]` (`task_hmm_mode`).
    """

    def __init__(self, task_names: Sequence[str], modes: Sequence[str] = HMM_MODES) -> None:
        super().__init__()
        self.modes = tuple(check_choice(f"modes[{i}]", m, HMM_MODES) for i, m in enumerate(modes))
        self.projectors = nn.ModuleDict({m: HMMProjector() for m in self.modes})
        self.task_names = tuple(task_names)
        self.task_modes = tuple(task_hmm_mode(t) for t in self.task_names)
        for t, m in zip(self.task_names, self.task_modes):
            if m not in self.projectors:
                raise TaskError(f"task {t!r} routes to mode {m!r}, which is not in modes {list(self.modes)}")

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        valid: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        unknown = set(inputs) - set(self.modes)
        if unknown:
            raise TaskError(f"unknown HMM mode(s) {sorted(unknown)}; expected {list(self.modes)}")
        missing = set(self.modes) - set(inputs)
        if missing:
            raise TaskError(f"inputs lack HMM mode(s) {sorted(missing)}")
        return {
            m: self.projectors[m](inputs[m], None if valid is None else valid.get(m))
            for m in self.modes
        }

    def for_tasks(
        self,
        inputs: Mapping[str, torch.Tensor],
        valid: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """[B, K, 32]: each task gets the projection of its own mode."""
        h = self(inputs, valid)
        return torch.stack([h[m] for m in self.task_modes], dim=1)
