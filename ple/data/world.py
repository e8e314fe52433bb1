"""ple.data.world -- generated from book/00_customer_world.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['FEATURE_DIM', 'NUM_CATEGORIES', 'NUM_BRANDS', 'BLOCK_SIZE', 'FEATURE_BLOCKS', 'SIGNAL_BLOCKS', 'SEGMENT_DIMS', 'LINEAR_BLOCK', 'STATE_NAMES', 'TXN_CHANNELS', 'SESSION_CHANNELS', 'PROFILES', 'PROFILE_SIZES', 'WorldConfig', 'MAX_SEPARATION', 'MAX_STRENGTH', 'make_config', 'PLANTABLE_TASKS', 'check_planted_pairs', 'sample_markov_chain', 'gaussian_state_loglik', 'hmm_filter', 'h0_persistence', 'count_prominent_peaks', 'HMM_INIT', 'HMM_TRANS', 'SIGNAL_INFO', 'signal_tasks', 'WorldParams', 'causal_mechanism', 'interaction_aggregates', 'histogram_probabilities', 'raw_signals', 'segment_posterior', 'regime_loglik', 'regime_posteriors', 'brand_within_category', 'label_distributions', 'plant_pairs', 'make_params', 'CustomerWorld', 'generate', 'load_world', 'observed_signals', 'posteriors', 'oracle', 'tabular_inputs']

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from ple.checks import InputTypeError, NonFiniteError, ShapeError, check_array, check_float, check_int, check_range
from ple.tasks import ACTIVE_TASK_NAMES, EXPERT_NAMES, HMM_MODES, TASK_NAMES, get_task

FEATURE_DIM: int = 644
NUM_CATEGORIES: int = 12
NUM_BRANDS: int = 128
BLOCK_SIZE: int = 1024  # customers per random-number block: the unit of reproducibility

# The posts' index layout of the 644-D normalised feature vector (PLE-3), sub-block by sub-block.
_LAYOUT: tuple[tuple[str, int], ...] = (
    ("rfm", 34), ("category", 64), ("txn_stats", 80), ("temporal", 60),
    ("deposit", 20), ("membership", 15), ("investment", 18), ("credit", 12), ("digital", 14),
    ("product", 12),
    ("tda_short", 24), ("tda_long", 36), ("phase_transition", 10), ("gmm", 22), ("mamba", 50),
    ("income_decomposition", 8), ("financial_behaviour", 9),
    ("chemical", 6), ("epidemic", 5), ("interference", 8), ("crime", 5),
    ("bandit", 4), ("hmm_summary", 5), ("lnn", 18),
    ("insurance", 25), ("consultation", 18), ("campaign", 12), ("overseas", 6),
    ("other_channel", 23),
    ("mcc_l1", 4), ("mcc_l2", 4), ("brand", 8), ("merchant_stats", 4), ("radius", 1),
)


def _layout_blocks() -> dict[str, slice]:
    blocks, start = {}, 0
    for name, size in _LAYOUT:
        blocks[name] = slice(start, start + size)
        start += size
    assert start == FEATURE_DIM
    groups = {"base": (0, 238), "multi_source": (238, 329), "domain": (329, 488),
              "multidisciplinary": (488, 512), "model_derived": (512, 539),
              "extended_source": (539, 623), "merchant_hierarchy": (623, 644)}
    blocks.update({g: slice(a, b) for g, (a, b) in groups.items()})
    # Where this world plants three of its signals (sub-ranges of the posts' blocks).
    blocks["amount_histogram"] = slice(98, 130)    # OT: first 32 dims of txn_stats
    blocks["causal_pairs"] = slice(471, 487)       # causal: income decomposition + fin. behaviour
    blocks["feature_crosses"] = slice(488, 512)    # DeepFM: the multidisciplinary block
    return blocks


FEATURE_BLOCKS: dict[str, slice] = _layout_blocks()
SIGNAL_BLOCKS: tuple[str, ...] = ("amount_histogram", "causal_pairs", "feature_crosses")
# Every dimension outside the three signal blocks carries the segment shift.
SEGMENT_DIMS: np.ndarray = np.setdiff1d(
    np.arange(FEATURE_DIM),
    np.concatenate([np.arange(FEATURE_DIM)[FEATURE_BLOCKS[b]] for b in SIGNAL_BLOCKS]))
LINEAR_BLOCK: str = "rfm"  # the dims every label reads linearly

STATE_NAMES: dict[str, tuple[str, ...]] = {
    "journey": ("aware", "browsing", "considering", "purchasing", "loyal"),
    "lifecycle": ("new", "growing", "mature", "declining", "dormant"),
    "behavior": ("routine", "splurge", "saver", "traveller", "family", "inactive"),
}
# Channels of the sequences that each regime chain is emitted into.
TXN_CHANNELS: dict[str, slice] = {"behavior": slice(0, 4), "temporal": slice(4, 8),
                                  "lifecycle": slice(8, 12), "noise": slice(12, 16)}
SESSION_CHANNELS: dict[str, slice] = {"journey": slice(0, 4), "noise": slice(4, 8)}

PROFILES: dict[str, dict[str, float | int]] = {
    "ci": dict(t_txn=60, t_sess=30, t_balance=60, n_merchants=400, mean_interactions=12,
               n_hist_txn=40),
    "default": dict(t_txn=180, t_sess=90, t_balance=90, n_merchants=2000, mean_interactions=20,
                    n_hist_txn=60),
    "full": dict(t_txn=180, t_sess=90, t_balance=90, n_merchants=5000, mean_interactions=20,
                 n_hist_txn=60),
}
PROFILE_SIZES: dict[str, int] = {"ci": 4000, "default": 100_000, "full": 2_000_000}


@dataclass(frozen=True)
class WorldConfig:
    """Dimensions and knobs of the customer world (`make_config` fills them from a profile)."""

    t_txn: int = 180                 # transaction-sequence steps (daily)
    t_sess: int = 90                 # session-sequence steps (daily; the journey chain)
    t_balance: int = 90              # balance-series steps (PersLay's input)
    n_months: int = 12               # months of the lifecycle and behaviour chains
    n_merchants: int = 2000
    mean_interactions: float = 20.0  # mean customer-merchant interactions per customer
    n_hist_txn: int = 60             # transactions behind the amount histogram
    n_segments: int = 20
    segment_rank: int = 8            # dimension of the subspace the segment means span
    segment_separation: float = 6.0  # smallest distance between two segment means (noise sd)
    regime_separation: float = 2.0   # smallest distance between two state means (noise sd)
    n_communities: int = 8           # latent merchant communities of the interaction graph
    community_strength: float = 0.6  # P(an interaction goes to the customer's community)
    subcategories_per_category: int = 4
    perslay_max_peaks: int = 5
    perslay_threshold: float = 0.25  # persistence above which a peak counts
    signal_strength: float = 1.0     # 0 makes every label independent of every input
    segment_decision_shift: float = 0.0  # > 0 lets the segment move the decision function
    task_correlation: float = 0.7    # cosine of a task's linear weights with its group's
    planted_pairs: tuple = ()        # ((task_a, task_b, sign), ...): a shared direction, sign +1 / -1
    planted_strength: float = 1.0    # its loading, relative to each task's linear weights' norm

    @property
    def steps_per_month(self) -> int:
        return self.t_txn // self.n_months

    def n_states(self, mode: str) -> int:
        return len(STATE_NAMES[mode])

    def chain_length(self, mode: str) -> int:
        return self.t_sess if mode == "journey" else self.n_months


# The largest knob values a WorldConfig accepts: beyond them float32 inputs or labels overflow
# (the LTV label first; checked in tests/test_world.py at these limits).
MAX_SEPARATION = 100.0  # segment_separation, regime_separation (noise sds)
MAX_STRENGTH = 5.0  # signal_strength, segment_decision_shift, planted_strength


def make_config(profile: str = "ci", **overrides) -> WorldConfig:
    """WorldConfig of `profile` ("ci", "default", "full") with `overrides` applied.

    ValueError for an unknown profile or field, and for inconsistent dimensions.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {tuple(PROFILES)}")
    names = {f.name for f in fields(WorldConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown world option(s) {unknown}; expected some of {sorted(names)}")
    cfg = replace(WorldConfig(), **{**PROFILES[profile], **overrides})
    for name in ("t_txn", "t_sess", "t_balance", "n_months", "n_merchants", "n_hist_txn",
                 "n_segments", "segment_rank", "n_communities", "subcategories_per_category",
                 "perslay_max_peaks"):
        check_int(name, getattr(cfg, name), 1)
    if cfg.t_txn % cfg.n_months:
        raise ValueError(f"t_txn={cfg.t_txn} is not a multiple of n_months={cfg.n_months}: "
                         "each month must cover the same number of transaction steps")
    if cfg.n_segments < 2 or cfg.segment_rank > cfg.n_segments:
        raise ValueError(f"need 2 <= n_segments and segment_rank <= n_segments; got "
                         f"n_segments={cfg.n_segments}, segment_rank={cfg.segment_rank}")
    if cfg.n_merchants < cfg.n_communities * NUM_CATEGORIES:
        raise ValueError(f"n_merchants={cfg.n_merchants} is too small: every (community, category) "
                         f"cell needs a merchant, so n_merchants >= {cfg.n_communities * NUM_CATEGORIES}")
    if cfg.t_balance < 8 * cfg.perslay_max_peaks:
        raise ValueError(f"t_balance={cfg.t_balance} is too short for {cfg.perslay_max_peaks} "
                         f"separated peaks; need t_balance >= {8 * cfg.perslay_max_peaks}")
    check_float("mean_interactions", cfg.mean_interactions, 3.0)
    # beyond MAX_SEPARATION / MAX_STRENGTH the float32 inputs or the labels overflow (inf
    # features, NaN labels), so larger values are an error
    for name in ("segment_separation", "regime_separation"):
        check_float(name, getattr(cfg, name), 0.0, MAX_SEPARATION, low_open=True)
    for name in ("community_strength", "task_correlation"):
        check_float(name, getattr(cfg, name), 0.0, 1.0)
    for name in ("signal_strength", "segment_decision_shift"):
        check_float(name, getattr(cfg, name), 0.0, MAX_STRENGTH)
    check_float("perslay_threshold", cfg.perslay_threshold, 0.1, 0.4, low_open=True, high_open=True)
    return replace(cfg, planted_pairs=check_planted_pairs(cfg.planted_pairs, cfg.planted_strength))


# Tasks whose label is monotone in one scalar score: task -> (score, sign of the label in it).
# Retention falls with the lapse score; CVR rises with the conversion score (and with CTR's).
PLANTABLE_TASKS: dict[str, tuple[str, int]] = {
    "ctr": ("ctr", 1), "cvr": ("conversion", 1), "engagement": ("engagement", 1), "uplift": ("uplift", 1),
    "churn": ("churn", 1), "retention": ("lapse", -1), "ltv": ("ltv", 1), "balance_util": ("balance_util", 1),
    "spending_bucket": ("spending_bucket", 1), "merchant_affinity": ("merchant_affinity", 1),
}


def check_planted_pairs(pairs, strength: float = 1.0) -> tuple[tuple[str, str, int], ...]:
    """`planted_pairs` as a tuple of (task_a, task_b, sign) with sign +1 (synergy) or -1
    (conflict), tasks from PLANTABLE_TASKS, a != b, each pair at most once; ValueError naming
    the bad entry otherwise (lists, e.g. from JSON, are accepted)."""
    if not (isinstance(strength, (int, float)) and not isinstance(strength, bool) and math.isfinite(strength)
            and 0 <= strength <= MAX_STRENGTH):
        raise ValueError(f"planted_strength must be a finite number in [0, {MAX_STRENGTH:g}]; got {strength!r}")
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, (tuple, list)):
        raise ValueError(f"planted_pairs must be a tuple of (task_a, task_b, sign); got {pairs!r}")
    out, seen = [], set()
    for i, p in enumerate(pairs):
        ok = isinstance(p, (tuple, list)) and len(p) == 3
        if ok:
            a, b, s = p
            ok = (a in PLANTABLE_TASKS and b in PLANTABLE_TASKS and a != b and s in (1, -1)
                  and not isinstance(s, bool))
        if not ok:
            raise ValueError(f"planted_pairs[{i}] = {p!r}; expected (task_a, task_b, sign) with two different "
                             f"tasks of {sorted(PLANTABLE_TASKS)} and sign +1 (synergy) or -1 (conflict)")
        if frozenset((a, b)) in seen:
            raise ValueError(f"planted_pairs[{i}] = {p!r} repeats the pair ({a}, {b})")
        seen.add(frozenset((a, b)))
        out.append((str(a), str(b), int(s)))
    return tuple(out)


def sample_markov_chain(u: np.ndarray, init: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """States int64 [N, T] of a Markov chain (eq-world-chain) driven by uniforms `u` [N, T].

    z_0 = F_init^{-1}(u_0), z_t = F_{trans[z_{t-1}]}^{-1}(u_t): inverse-CDF sampling, so the
    states are a deterministic function of the uniforms. init [K], trans [K, K] (rows sum to 1).
    """
    u = check_array(u, "u", 2)
    check_range(u, "u", 0.0, 1.0, what="uniforms")
    init, trans = _check_markov(init, trans)
    n_states = init.shape[0]
    cum_init, cum_trans = np.cumsum(init), np.cumsum(trans, axis=1)
    z = np.empty(u.shape, dtype=np.int64)
    z[:, 0] = np.minimum(np.searchsorted(cum_init, u[:, 0], side="right"), n_states - 1)
    for t in range(1, u.shape[1]):
        z[:, t] = np.minimum((u[:, t, None] >= cum_trans[z[:, t - 1]]).sum(axis=1), n_states - 1)
    return z


def _check_markov(init, trans) -> tuple[np.ndarray, np.ndarray]:
    """init [K] and trans [K, K] as float64 probability vectors / row-stochastic; else ValueError."""
    init, trans = check_array(init, "init", 1), check_array(trans, "trans", 2)
    k = init.shape[0]
    if trans.shape != (k, k):
        raise ShapeError(f"trans has shape {list(trans.shape)}; expected [{k}, {k}] (K = init.shape[0])")
    for name, p in (("init", init), ("trans", trans)):
        if p.size and (p.min() < 0 or np.abs(p.sum(-1) - 1.0).max() > 1e-6):
            raise ValueError(f"{name} must hold probabilities (>= 0, rows summing to 1); got sums "
                             f"from {p.sum(-1).min():g} to {p.sum(-1).max():g}")
    return init, trans


def gaussian_state_loglik(x: np.ndarray, means: np.ndarray, steps_per_state: int = 1) -> np.ndarray:
    """log N(x_t | means[k], I) summed over the `steps_per_state` consecutive steps that share a
    state: x [N, T, D], means [K, D] -> [N, T // steps_per_state, K] (float64)."""
    steps_per_state = check_int("steps_per_state", steps_per_state, 1)
    x, means = check_array(x, "x", 3), check_array(means, "means", 2)
    if means.shape[1] != x.shape[2]:
        raise ShapeError(f"means has shape {list(means.shape)}; expected [K, {x.shape[2]}] (D = x.shape[2])")
    n, t, d = x.shape
    if t % steps_per_state:
        raise ValueError(f"x has {t} steps; expected a multiple of steps_per_state={steps_per_state}")
    x = x.astype(np.float64).reshape(n, t // steps_per_state, steps_per_state, d)
    sq = (x ** 2).sum(axis=(2, 3))[..., None]                       # [N, M, 1]
    cross = x.sum(axis=2) @ means.T                                  # [N, M, K]
    mm = steps_per_state * (means ** 2).sum(axis=1)                  # [K]
    return -0.5 * (sq - 2.0 * cross + mm) - 0.5 * steps_per_state * d * math.log(2 * math.pi)


def hmm_filter(loglik: np.ndarray, init: np.ndarray, trans: np.ndarray, *,
               return_all: bool = False) -> np.ndarray:
    """Forward filtering of a hidden Markov chain in log space (eq-world-forward), vectorised
    over sequences.

    loglik [N, T, K] = log p(x_t | z_t = k), init [K] = P(z_1 = k), trans [K, K] =
    P(z_t = k | z_{t-1} = j) (rows sum to 1; zeros allowed):
    log a_1 = log pi + l_1,  log a_t = logsumexp_j(log a_{t-1, j} + log A_{jk}) + l_{t, k},
    normalised at every step. Returns P(z_T = k | x_{1..T}) [N, K], or with `return_all` every
    filtered P(z_t = k | x_{1..t}) [N, T, K]; float64.
    """
    loglik = check_array(loglik, "loglik", finite=False)
    if np.isnan(loglik).any() or np.isposinf(loglik).any():
        raise NonFiniteError("loglik contains NaN or +inf (-inf, an impossible observation, is allowed)")
    init, trans = np.asarray(init, dtype=np.float64), np.asarray(trans, dtype=np.float64)
    if loglik.ndim == 3 and init.shape == (loglik.shape[2],):
        init, trans = _check_markov(init, trans)
    if loglik.ndim != 3 or loglik.shape[1] < 1:
        raise ValueError(f"loglik has shape {list(loglik.shape)}; expected [N, T, K] with T >= 1")
    k = loglik.shape[2]
    if init.shape != (k,) or trans.shape != (k, k):
        raise ValueError(f"init has shape {list(init.shape)} and trans {list(trans.shape)}; "
                         f"expected [{k}] and [{k}, {k}] (K = loglik.shape[2])")
    with np.errstate(divide="ignore"):
        log_init, log_trans = np.log(init), np.log(trans)
    la = log_init[None, :] + loglik[:, 0, :]
    la = la - logsumexp(la, axis=1, keepdims=True)
    out = [la] if return_all else None
    for t in range(1, loglik.shape[1]):
        la = logsumexp(la[:, :, None] + log_trans[None, :, :], axis=1) + loglik[:, t, :]
        la = la - logsumexp(la, axis=1, keepdims=True)
        if return_all:
            out.append(la)
    return np.exp(np.stack(out, axis=1)) if return_all else np.exp(la)


def h0_persistence(series: np.ndarray, *, sublevel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """0-dimensional persistence of the superlevel-set filtration of each row of `series` [N, T].

    Sweeping the level down from +inf, a component is born at a local maximum and dies when it
    merges into a component with a higher peak (elder rule, eq-world-h0); the component of the
    global maximum dies at the series' minimum. Vectorised over rows: components of a 1-D series
    are intervals, so we keep each interval's other end and birth value at its two ends.
    Returns (births, deaths), float64 [N, T], NaN where a row has fewer than T pairs, sorted by
    persistence |birth - death| in decreasing order (ties in series order). With `sublevel` the
    filtration sweeps up from -inf instead: births at local minima, deaths at the merging level,
    the essential pair (global minimum, global maximum) -- the superlevel pairs of -series, negated.
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"series has shape {list(x.shape)}; expected [N, T] with T >= 1")
    if not np.isfinite(x).all():
        raise ValueError("series contains NaN or inf")
    if sublevel:
        births, deaths = h0_persistence(-x)
        return -births, -deaths
    n, t = x.shape
    rows = np.arange(n)
    order = np.argsort(-x, axis=1, kind="stable")
    active = np.zeros((n, t + 2), dtype=bool)        # padded: position i lives at i + 1
    other = np.zeros((n, t + 2), dtype=np.int64)     # other end of the interval ending here
    birth = np.zeros((n, t + 2))
    births = np.full((n, t + 1), np.nan)             # column t: the essential class
    deaths = np.full((n, t + 1), np.nan)
    for r in range(t):
        i = order[:, r] + 1
        v = x[rows, i - 1]
        left, right = active[rows, i - 1], active[rows, i + 1]
        active[rows, i] = True
        new = ~left & ~right
        rn = rows[new]
        other[rn, i[new]] = i[new]
        birth[rn, i[new]] = v[new]
        lo = left & ~right
        rl, il = rows[lo], i[lo]
        a = other[rl, il - 1]
        other[rl, a], other[rl, il], birth[rl, il] = il, a, birth[rl, a]
        ro = right & ~left
        rr, ir = rows[ro], i[ro]
        b = other[rr, ir + 1]
        other[rr, b], other[rr, ir], birth[rr, ir] = ir, b, birth[rr, b]
        both = left & right
        rb, ib = rows[both], i[both]
        a, b = other[rb, ib - 1], other[rb, ib + 1]
        bl, br = birth[rb, a], birth[rb, b]
        births[rb, r] = np.minimum(bl, br)           # the younger component dies here
        deaths[rb, r] = v[both]
        other[rb, a], other[rb, b] = b, a
        birth[rb, a] = birth[rb, b] = np.maximum(bl, br)
    births[:, t] = x.max(axis=1)
    deaths[:, t] = x.min(axis=1)
    pers = np.where(np.isnan(births), -np.inf, births - deaths)
    idx = np.argsort(-pers, axis=1, kind="stable")[:, :t]  # at most T pairs exist
    return np.take_along_axis(births, idx, 1), np.take_along_axis(deaths, idx, 1)


def count_prominent_peaks(series: np.ndarray, threshold: float) -> np.ndarray:
    """Number of H0 persistence pairs with birth - death > threshold, int64 [N] (PersLay's
    planted signal: peaks a mean cannot see)."""
    threshold = check_float("threshold", threshold, 0.0)
    b, d = h0_persistence(series)
    return np.nansum((b - d) > threshold, axis=1).astype(np.int64)


# Hidden Markov chains of the three HMM modes (PLE-4): initial distributions and transition
# matrices (journey: per day, lifecycle and behaviour: per month).
HMM_INIT: dict[str, tuple[float, ...]] = {
    "journey": (0.35, 0.25, 0.20, 0.10, 0.10),
    "lifecycle": (0.25, 0.25, 0.30, 0.12, 0.08),
    "behavior": (0.25, 0.15, 0.15, 0.15, 0.15, 0.15),
}
HMM_TRANS: dict[str, tuple[tuple[float, ...], ...]] = {
    "journey": ((0.86, 0.10, 0.02, 0.01, 0.01),
                (0.06, 0.80, 0.10, 0.02, 0.02),
                (0.03, 0.07, 0.78, 0.10, 0.02),
                (0.03, 0.04, 0.05, 0.78, 0.10),
                (0.04, 0.02, 0.02, 0.04, 0.88)),
    "lifecycle": ((0.60, 0.30, 0.05, 0.03, 0.02),
                  (0.00, 0.75, 0.20, 0.04, 0.01),
                  (0.00, 0.04, 0.84, 0.10, 0.02),
                  (0.00, 0.05, 0.15, 0.65, 0.15),
                  (0.00, 0.02, 0.03, 0.10, 0.85)),
    "behavior": tuple(tuple(0.70 if i == j else 0.06 for j in range(6)) for i in range(6)),
}

# What each expert's planted signal is (documentation; the tasks that read it are in the recipes).
SIGNAL_INFO: dict[str, tuple[str, str]] = {
    "deepfm": ("features['feature_crosses'] (24 dims)",
               "sum of 12 products x_a x_b of independent N(0,1) dims: zero mean and zero "
               "correlation with every single dim"),
    "lightgcn": ("interactions (customer-merchant graph)",
                 "mean value of the latent communities of the customer's merchants; communities "
                 "are not in the hierarchy and show only through co-visits"),
    "hgcn": ("interactions + merchant hierarchy",
             "category-level concentration (Herfindahl index) of the customer's merchants"),
    "temporal": ("txn_seq channels 4-7",
                 "lag-1 autocorrelation of an AR(1) process with N(0,1) marginals: no per-step "
                 "statistic sees it"),
    "perslay": ("balance_seq",
                "number of peaks with H0 persistence above the threshold; the series' mean does "
                "not depend on it"),
    "causal": ("features['causal_pairs'] (8 cause-effect pairs)",
               "exogenous noise e - g(c) of each effect under the true mechanism c -> e, summed"),
    "optimal_transport": ("features['amount_histogram'] (32 bins)",
                          "W1 distance of the amount histogram to a point mass at its own mean; "
                          "every shape has the same mean"),
}


# The recipes of the scores and the generator's constants (internal: the chapter documents them).
# Scalar scores: (HMM mode, group, linear coefficient, {signal: coefficient}, effect of the
# final regime state, noise sd or None). "conversion" is P(convert | click) (CVR = CTR x it),
# "lapse" is P(lapse | no churn) (retention = no churn and no lapse).
SCALAR_RECIPES: dict[str, tuple] = {
    "ctr": ("journey", "engagement", 0.5, {"deepfm": 0.7, "lightgcn": 0.5},
            (-1.0, -0.3, 0.4, 1.0, 0.6), None),
    "conversion": ("journey", "engagement", 0.4, {"hgcn": 0.6, "optimal_transport": 0.6},
                   (-0.8, -0.4, 0.3, 1.2, 0.5), None),
    "engagement": ("journey", "engagement", 0.5, {"temporal": 0.7, "deepfm": 0.4},
                   (-0.8, 0.0, 0.3, 0.8, 1.0), 0.6),
    "uplift": ("journey", "engagement", 0.3, {"causal": 0.8}, (0.2, 0.5, 0.8, -0.2, -0.5), 0.6),
    "churn": ("lifecycle", "lifecycle", 0.4, {"temporal": 0.5, "perslay": 0.6},
              (-0.3, -0.8, -0.6, 0.8, 1.8), None),
    "lapse": ("lifecycle", "lifecycle", 0.3, {"causal": 0.7}, (0.5, -0.5, -0.6, 0.5, 1.0), None),
    "ltv": ("lifecycle", "lifecycle", 0.3, {"optimal_transport": 0.4, "causal": 0.3},
            (0.2, 0.6, 0.9, 0.1, -1.0), 0.5),
    "balance_util": ("behavior", "value", 0.5, {"perslay": 0.7},
                     (0.0, 1.0, -1.0, 0.5, 0.3, -1.2), 0.08),
    "spending_bucket": ("behavior", "consumption", 0.2, {"optimal_transport": 0.4},
                        (0.0, 0.6, -0.5, 0.5, 0.2, -0.6), 0.4),
    "merchant_affinity": ("behavior", "consumption", 0.3, {"lightgcn": 0.6, "hgcn": 0.5},
                          (0.2, 0.6, -0.4, 0.3, 0.1, -0.8), 0.5),
}
# Vector scores (softmax logits, or a 12-D regression): (HMM mode, outputs, linear scale,
# {signal: scale}, regime scale, noise sd or None); coefficients drawn per output.
VECTOR_RECIPES: dict[str, tuple] = {
    "life_stage": ("lifecycle", 6, 0.8, {"perslay": 0.6}, 1.2, None),
    "channel": ("behavior", 3, 0.6, {"deepfm": 0.6}, 1.0, None),
    "timing": ("behavior", 28, 0.5, {"temporal": 0.8}, 0.8, None),
    "nba": ("behavior", 12, 0.6, {"lightgcn": 0.8}, 1.0, None),
    "spending_category": ("behavior", 12, 0.4, {"hgcn": 0.4}, 0.8, None),
    "consumption_cycle": ("behavior", 7, 0.5, {"temporal": 0.8}, 0.8, None),
    "category_uplift": ("behavior", 12, 0.4, {}, 0.5, 0.5),
}
SCORE_TASKS: dict[str, tuple[str, ...]] = {"conversion": ("cvr",), "lapse": ("retention",)}
SPENDING_SHARE_WEIGHT: float = 3.0  # category shares of the customer's merchants -> category logits
NBA_TRANSFER: float = 1.5           # P(NBA = a) -> logit of spending category a
LTV_TRANSFER: float = 0.4           # standardised log P(cvr) -> log LTV
BRAND_SHARE_WEIGHT: float = 3.0     # brand shares of the customer's merchants -> brand logits
BUCKET_MEAN_WEIGHT: float = 0.8     # mean of the amount histogram -> spending bucket
RATE_TARGETS: dict[str, float] = {"ctr": 0.05, "cvr": 0.015, "churn": 0.10, "retention": 0.88}
PILOT_SIZE: int = 2048              # customers simulated to fix standardisations and intercepts
HIST_BINS: int = 32
OT_SPREAD: float = 0.18             # half-distance of the two modes of a bimodal amount profile
BALANCE_NOISE: float = 0.05         # amplitude of the balance series' uniform noise


def signal_tasks() -> dict[str, tuple[str, ...]]:
    """Signal -> the tasks whose label depends on it (from the recipes)."""
    out: dict[str, list[str]] = {e: [] for e in EXPERT_NAMES}
    for score, rec in SCALAR_RECIPES.items():
        for e in rec[3]:
            out[e].extend(SCORE_TASKS.get(score, (score,)))
    for task, rec in VECTOR_RECIPES.items():
        for e in rec[3]:
            out[e].append(task)
    out["hgcn"].extend(["spending_category", "brand_prediction"])  # through category/brand shares
    return {e: tuple(t for t in TASK_NAMES if t in v) for e, v in out.items()}


def _spread_points(rng: np.random.Generator, n: int, dim: int, min_dist: float) -> np.ndarray:
    """n points in R^dim chosen by farthest-point sampling from Gaussian candidates, scaled so the
    closest two are `min_dist` apart."""
    cand = rng.standard_normal((max(50 * n, 200), dim))
    chosen = [0]
    d = np.linalg.norm(cand - cand[0], axis=1)
    for _ in range(n - 1):
        j = int(np.argmax(d))
        chosen.append(j)
        d = np.minimum(d, np.linalg.norm(cand - cand[j], axis=1))
    pts = cand[chosen]
    pd = np.linalg.norm(pts[:, None] - pts[None], axis=2) + np.eye(n) * 1e9
    return pts * (min_dist / pd.min())


@dataclass
class WorldParams:
    """The true generating parameters of a world (drawn from `seed` by `make_params`).

    The oracle reads only these and the observed inputs. Segment means live on SEGMENT_DIMS;
    `scalar` / `vector` hold each score's coefficients (keys lin, sig, reg, seg, bias, noise);
    `signal_mean` / `signal_std` standardise the raw signals; `logpcvr_mean` / `logpcvr_std`
    standardise log P(cvr) for the CVR -> LTV dependence. `planted_directions` holds the
    direction of each planted task pair (`WorldConfig.planted_pairs`).
    """

    config: WorldConfig
    seg_weights: np.ndarray        # [S]
    seg_means: np.ndarray          # [S, len(SEGMENT_DIMS)]
    seg_means_full: np.ndarray     # float32 [S, 644]: seg_means placed on SEGMENT_DIMS, 0 elsewhere
    hmm_init: dict[str, np.ndarray]
    hmm_trans: dict[str, np.ndarray]
    hmm_means: dict[str, np.ndarray]  # [K, 4] emission means per mode
    merchant_category: np.ndarray  # [M]
    merchant_subcategory: np.ndarray
    merchant_brand: np.ndarray
    merchant_community: np.ndarray  # not an input: shows only through co-visits; the oracle reads it
    cell_merchants: np.ndarray     # merchant ids sorted by (community, category) cell
    cell_start: np.ndarray         # [C * 12]
    cell_count: np.ndarray
    brand_category: np.ndarray     # [128]
    brand_popularity: np.ndarray   # [128]
    community_value: np.ndarray    # [C]
    deepfm_pairs: np.ndarray       # [12, 2] dims of the feature_crosses block
    causal_scale: np.ndarray       # [8]: g_j(c) = scale_j * tanh(rate_j * c)
    causal_rate: np.ndarray
    scalar: dict[str, dict]
    vector: dict[str, dict]
    signal_mean: dict[str, float]
    signal_std: dict[str, float]
    hist_mean_mean: float = 0.5
    hist_mean_std: float = 1.0
    logpcvr_mean: float = 0.0
    logpcvr_std: float = 1.0
    planted_directions: dict | None = None  # (task_a, task_b) -> unit direction d [34] (eq-world-planted)


def _structural_params(cfg: WorldConfig, seed: int) -> WorldParams:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n_seg = cfg.n_segments
    seg_weights = rng.dirichlet(np.full(n_seg, 8.0))
    centres = _spread_points(rng, n_seg, cfg.segment_rank, cfg.segment_separation)
    basis, _ = np.linalg.qr(rng.standard_normal((SEGMENT_DIMS.size, cfg.segment_rank)))
    seg_means = centres @ basis.T                                    # [S, D_seg]
    seg_means_full = np.zeros((n_seg, FEATURE_DIM), dtype=np.float32)
    seg_means_full[:, SEGMENT_DIMS] = seg_means
    hmm_means = {m: _spread_points(rng, len(STATE_NAMES[m]), 4, cfg.regime_separation)
                 for m in HMM_MODES}
    # merchant hierarchy: (community, category) cells, each with at least one merchant
    n_comm, n_cells = cfg.n_communities, cfg.n_communities * NUM_CATEGORIES
    cell = np.concatenate([np.arange(n_cells), rng.integers(0, n_cells, cfg.n_merchants - n_cells)])
    cell = np.sort(cell)
    ids = rng.permutation(cfg.n_merchants)          # merchant ids carry no cell information
    category, community = np.empty_like(ids), np.empty_like(ids)
    category[ids], community[ids] = cell % NUM_CATEGORIES, cell // NUM_CATEGORIES
    subcategory = category * cfg.subcategories_per_category + rng.integers(
        0, cfg.subcategories_per_category, cfg.n_merchants)
    brand_category = np.arange(NUM_BRANDS) % NUM_CATEGORIES
    brand = np.empty_like(ids)
    for k in range(NUM_CATEGORIES):
        members = np.flatnonzero(category == k)
        brand[members] = rng.choice(np.flatnonzero(brand_category == k), members.size)
    cell_count = np.bincount(cell, minlength=n_cells)
    cell_start = np.concatenate([[0], np.cumsum(cell_count)[:-1]])
    # label recipes
    group_dirs = {g: rng.standard_normal(34) for g in ("engagement", "lifecycle", "value", "consumption")}
    rho = cfg.task_correlation
    scalar = {}
    for name, (mode, group, lin, sig, reg, noise) in SCALAR_RECIPES.items():
        g = group_dirs[group] / np.linalg.norm(group_dirs[group])
        u = rng.standard_normal(34)
        u /= np.linalg.norm(u)
        w = rho * g + math.sqrt(1 - rho ** 2) * u
        scalar[name] = dict(mode=mode, lin=lin * w / np.linalg.norm(w), sig=dict(sig),
                            reg=np.asarray(reg, float), seg=rng.standard_normal(n_seg),
                            bias=0.0, noise=noise)
    vector = {}
    for name, (mode, n_out, lin, sig, reg, noise) in VECTOR_RECIPES.items():
        k = len(STATE_NAMES[mode])
        vector[name] = dict(mode=mode, lin=rng.standard_normal((n_out, 34)) * lin / math.sqrt(34),
                            sig={e: rng.standard_normal(n_out) * c for e, c in sig.items()},
                            reg=rng.standard_normal((k, n_out)) * reg,
                            seg=rng.standard_normal((n_seg, n_out)),
                            bias=rng.normal(0.0, 0.5, n_out), noise=noise)
    return WorldParams(
        config=cfg, seg_weights=seg_weights, seg_means=seg_means, seg_means_full=seg_means_full,
        hmm_init={m: np.asarray(HMM_INIT[m], float) for m in HMM_MODES},
        hmm_trans={m: np.asarray(HMM_TRANS[m], float) for m in HMM_MODES}, hmm_means=hmm_means,
        merchant_category=category, merchant_subcategory=subcategory, merchant_brand=brand,
        merchant_community=community, cell_merchants=ids, cell_start=cell_start,
        cell_count=cell_count, brand_category=brand_category,
        brand_popularity=rng.normal(0.0, 0.7, NUM_BRANDS),
        community_value=np.linspace(-1.0, 1.0, n_comm),
        deepfm_pairs=rng.permutation(24).reshape(12, 2),
        causal_scale=rng.uniform(1.0, 2.0, 8), causal_rate=rng.uniform(0.8, 1.6, 8),
        scalar=scalar, vector=vector,
        signal_mean={e: 0.0 for e in EXPERT_NAMES}, signal_std={e: 1.0 for e in EXPERT_NAMES})


_LABEL_UNIFORMS = ("click", "conversion", "churn", "lapse", "life_stage", "channel", "timing",
                   "nba", "spending_category", "consumption_cycle", "brand")
_LABEL_NORMALS = ("engagement", "uplift", "ltv", "balance_util", "spending_bucket",
                  "merchant_affinity") + tuple(f"category_uplift_{i}" for i in range(12))


def _draw(rngs: list[np.random.Generator], cfg: WorldConfig) -> dict[str, np.ndarray]:
    """Every random number of len(rngs) blocks of BLOCK_SIZE customers. Block i's numbers come
    from rngs[i] only, always drawn in the same order, so they do not depend on the chunking."""
    b, kmax, n = BLOCK_SIZE, cfg.perslay_max_peaks, BLOCK_SIZE * len(rngs)
    f32 = np.float32
    normal = {"feat": (FEATURE_DIM,), "sess": (cfg.t_sess, 8), "txn": (cfg.t_txn, 16),
              "level": (), "hist_z": (cfg.n_hist_txn,), "cause": (8,),
              "label_z": (len(_LABEL_NORMALS),)}
    uniform = {"segment_u": (), "journey_u": (cfg.t_sess,), "lifecycle_u": (cfg.n_months,),
               "behavior_u": (cfg.n_months,), "rho_u": (), "peaks_u": (2,),
               "peak_jitter": (kmax,), "peak_height": (kmax,), "balance_u": (cfg.t_balance,),
               "ot_u": (2,), "hist_u": (cfg.n_hist_txn,), "cause_u": (8,), "graph_u": (2,),
               "label_u": (len(_LABEL_UNIFORMS),)}
    d = {k: np.empty((n, *s), dtype=f32 if k in ("feat", "sess", "txn") else np.float64)
         for k, s in normal.items()}
    d.update({k: np.empty((n, *s)) for k, s in uniform.items()})
    d["focus"], d["n_int"] = np.empty(n), np.empty(n, dtype=np.int64)
    edges = []
    for i, rng in enumerate(rngs):
        sl = slice(i * b, (i + 1) * b)
        for k in normal:
            rng.standard_normal(dtype=d[k].dtype, out=d[k][sl])
        for k in uniform:
            rng.random(out=d[k][sl])
        d["focus"][sl] = rng.beta(1.2, 1.2, b)
        d["n_int"][sl] = 2 + rng.poisson(cfg.mean_interactions - 2, b)
        edges.append(rng.random((int(d["n_int"][sl].sum()), 5)))
    d["edge_u"] = np.concatenate(edges)
    return d


def causal_mechanism(c: np.ndarray, params: WorldParams) -> np.ndarray:
    """g_j(c_j) = scale_j tanh(rate_j c_j), the true mechanism of each cause -> effect pair [.., 8]."""
    return params.causal_scale * np.tanh(params.causal_rate * c)


def _simulate(d: dict[str, np.ndarray], prm: WorldParams) -> dict:
    """Latents and observed inputs of the customers whose random numbers are `d`
    (eq-world-joint), vectorised."""
    cfg = prm.config
    cat = d.__getitem__
    n = d["feat"].shape[0]
    seg = np.minimum(np.searchsorted(np.cumsum(prm.seg_weights), cat("segment_u"), side="right"),
                     cfg.n_segments - 1)
    regimes = {m: sample_markov_chain(cat(f"{m}_u"), prm.hmm_init[m], prm.hmm_trans[m])
               for m in HMM_MODES}
    # 644-D features: N(mu_segment, I) on SEGMENT_DIMS, N(0, I) in the signal blocks
    x = cat("feat")
    x += prm.seg_means_full[seg]
    c = cat("cause")
    effect = causal_mechanism(c, prm) + math.sqrt(3.0) * (2.0 * cat("cause_u") - 1.0)
    blk = np.empty((n, 16))
    blk[:, 0::2], blk[:, 1::2] = c, effect
    x[:, FEATURE_BLOCKS["causal_pairs"]] = blk
    # amount histogram: n_hist_txn amounts from a unimodal / bimodal mixture with mean m
    ot_u = cat("ot_u")
    m, w = 0.35 + 0.3 * ot_u[:, 0], ot_u[:, 1]
    u, z = cat("hist_u"), cat("hist_z")
    side = np.where(u < 1.0 - w[:, None], 0.0, np.where(u < 1.0 - w[:, None] / 2, -1.0, 1.0))
    amount = m[:, None] + side * OT_SPREAD + z * np.where(side == 0.0, 0.06, 0.05)
    bins = np.clip((amount * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)
    counts = np.bincount((np.arange(n)[:, None] * HIST_BINS + bins).ravel(),
                         minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    x[:, FEATURE_BLOCKS["amount_histogram"]] = (counts * (HIST_BINS / cfg.n_hist_txn) - 1.0) / 2.0
    # sequences: regime emissions, the AR(1) channels, noise
    sess = cat("sess")
    means32 = {m: v.astype(np.float32) for m, v in prm.hmm_means.items()}
    sess[:, :, SESSION_CHANNELS["journey"]] += means32["journey"][regimes["journey"]]
    txn = cat("txn")
    spm = cfg.steps_per_month
    for mode in ("behavior", "lifecycle"):
        emit = means32[mode][regimes[mode]]                                  # [n, M, 4]
        view = txn[:, :, TXN_CHANNELS[mode]].reshape(n, cfg.n_months, spm, 4)
        view += emit[:, :, None, :]
        txn[:, :, TXN_CHANNELS[mode]] = view.reshape(n, cfg.t_txn, 4)
    rho = -0.8 + 1.6 * cat("rho_u")
    ar = txn[:, :, TXN_CHANNELS["temporal"]]            # AR(1) in place, N(0, 1) marginals
    r32, scale = rho.astype(np.float32)[:, None], np.sqrt(1.0 - rho ** 2).astype(np.float32)[:, None]
    for t in range(1, cfg.t_txn):
        ar[:, t] = r32 * ar[:, t - 1] + scale * ar[:, t]
    # balance series: k separated peaks whose total mass does not depend on k
    kmax, tb = cfg.perslay_max_peaks, cfg.t_balance
    pu = cat("peaks_u")
    k = 1 + np.minimum((pu[:, 0] * kmax).astype(np.int64), kmax - 1)
    amp = 0.7 + 0.6 * pu[:, 1]
    j = np.arange(kmax)
    on = j[None, :] < k[:, None]
    hu = np.where(on, 0.9 + 0.2 * cat("peak_height"), 0.0)
    heights = amp[:, None] * (kmax / k)[:, None] * hu * (k / hu.sum(axis=1))[:, None]
    centres = (j[None, :] + 0.5 + 0.2 * (cat("peak_jitter") - 0.5)) * (tb / k)[:, None]
    width = max(1.0, tb / (10.0 * kmax))
    tt = np.arange(tb)
    bumps = heights[:, :, None] * np.exp(-0.5 * ((tt[None, None, :] - centres[:, :, None]) / width) ** 2)
    balance = (0.5 * cat("level")[:, None] + bumps.sum(axis=1)
               + BALANCE_NOISE * (2.0 * cat("balance_u") - 1.0))
    # customer-merchant interactions
    gu = cat("graph_u")
    community = (gu[:, 0] * cfg.n_communities).astype(np.int64)
    focus_cat = (gu[:, 1] * NUM_CATEGORIES).astype(np.int64)
    focus = cat("focus")
    n_int = cat("n_int")
    cust = np.repeat(np.arange(n), n_int)
    eu = cat("edge_u")
    e_cat = np.where(eu[:, 0] < focus[cust], focus_cat[cust],
                     (eu[:, 1] * NUM_CATEGORIES).astype(np.int64))
    e_comm = np.where(eu[:, 2] < cfg.community_strength, community[cust],
                      (eu[:, 3] * cfg.n_communities).astype(np.int64))
    cell = e_comm * NUM_CATEGORIES + e_cat
    local = prm.cell_start[cell] + (eu[:, 4] * prm.cell_count[cell]).astype(np.int64)
    merchant = prm.cell_merchants[local]
    return dict(
        n=n, features=x, txn_seq=txn, session_seq=sess, balance_seq=balance.astype(np.float32),
        customer=cust, merchant=merchant, n_interactions=n_int, segments=seg, regimes=regimes,
        latents=dict(community=community, focus_category=focus_cat,
                     focus_strength=focus.astype(np.float32), ar_rho=rho.astype(np.float32),
                     n_peaks=k, balance_amplitude=amp.astype(np.float32),
                     ot_mean=m.astype(np.float32), ot_shape=w.astype(np.float32)),
        label_u=cat("label_u"), label_z=cat("label_z"))


def interaction_aggregates(customer: np.ndarray, merchant: np.ndarray, n_customers: int,
                           params: WorldParams) -> dict[str, np.ndarray]:
    """Per-customer summaries of the interaction graph over the observed hierarchy (and, for the
    LightGCN signal, the true latent communities): counts [N], category shares [N, 12],
    brand shares [N, 128], category Herfindahl index [N], mean community value [N]."""
    counts = np.bincount(customer, minlength=n_customers)
    denom = np.maximum(counts, 1)[:, None].astype(np.float64)
    cat_counts = np.bincount(customer * NUM_CATEGORIES + params.merchant_category[merchant],
                             minlength=n_customers * NUM_CATEGORIES).reshape(n_customers, -1)
    brand_counts = np.bincount(customer * NUM_BRANDS + params.merchant_brand[merchant],
                               minlength=n_customers * NUM_BRANDS).reshape(n_customers, -1)
    value = params.community_value[params.merchant_community[merchant]]
    shares = cat_counts / denom
    return dict(counts=counts, category_shares=shares, brand_shares=brand_counts / denom,
                herfindahl=(shares ** 2).sum(axis=1),
                community_mean=np.bincount(customer, weights=value, minlength=n_customers) / denom[:, 0])


def histogram_probabilities(features: np.ndarray) -> np.ndarray:
    """The amount histogram (probabilities over HIST_BINS bins) read back from the features."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
        raise ShapeError(f"features has shape {list(features.shape)}; expected [N, {FEATURE_DIM}] (FEATURE_DIM)")
    return (features[:, FEATURE_BLOCKS["amount_histogram"]].astype(np.float64) * 2.0 + 1.0) / HIST_BINS


def raw_signals(features: np.ndarray, txn_seq: np.ndarray, balance_seq: np.ndarray,
                agg: dict[str, np.ndarray], params: WorldParams,
                n_peaks: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The seven planted signals before standardisation, each from one expert's input only
    (SIGNAL_INFO). `n_peaks` short-cuts the persistence computation when the count is known."""
    ar = txn_seq[:, :, TXN_CHANNELS["temporal"]].astype(np.float64)
    temporal = ((ar[:, 1:] * ar[:, :-1]).sum(axis=1) / (ar ** 2).sum(axis=1)).mean(axis=1)
    if n_peaks is None:
        n_peaks = count_prominent_peaks(balance_seq, params.config.perslay_threshold)
    pairs = features[:, FEATURE_BLOCKS["causal_pairs"]].astype(np.float64)
    causal = (pairs[:, 1::2] - causal_mechanism(pairs[:, 0::2], params)).sum(axis=1) / math.sqrt(8)
    p = histogram_probabilities(features)
    centres = (np.arange(HIST_BINS) + 0.5) / HIST_BINS
    mean = p @ centres
    w1 = (p * np.abs(centres[None, :] - mean[:, None])).sum(axis=1)
    cross = features[:, FEATURE_BLOCKS["feature_crosses"]].astype(np.float64)
    deepfm = (cross[:, params.deepfm_pairs[:, 0]] * cross[:, params.deepfm_pairs[:, 1]]).sum(axis=1)
    return dict(deepfm=deepfm / math.sqrt(len(params.deepfm_pairs)),
                lightgcn=agg["community_mean"], hgcn=agg["herfindahl"], temporal=temporal,
                perslay=np.asarray(n_peaks, dtype=np.float64), causal=causal,
                optimal_transport=w1)


def _observed_terms(sim: dict, prm: WorldParams, n_peaks: np.ndarray | None = None) -> dict:
    """Everything the labels read from the observed inputs: the linear block, the standardised
    signals, category and brand shares, the histogram mean."""
    n = sim["features"].shape[0]
    agg = interaction_aggregates(sim["customer"], sim["merchant"], n, prm)
    raw = raw_signals(sim["features"], sim["txn_seq"], sim["balance_seq"], agg, prm, n_peaks)
    sig = {e: (raw[e] - prm.signal_mean[e]) / prm.signal_std[e] for e in EXPERT_NAMES}
    hist_mean = histogram_probabilities(sim["features"]) @ ((np.arange(HIST_BINS) + 0.5) / HIST_BINS)
    return dict(n=n, x_lin=sim["features"][:, FEATURE_BLOCKS[LINEAR_BLOCK]].astype(np.float64),
                raw=raw, signals=sig, agg=agg,
                hist_mean=(hist_mean - prm.hist_mean_mean) / prm.hist_mean_std)


def segment_posterior(features: np.ndarray, params: WorldParams) -> np.ndarray:
    """P(segment = s | x) [N, S] of the Gaussian mixture on SEGMENT_DIMS (eq-world-segpost):
    softmax_s(log pi_s - ||x - mu_s||^2 / 2) with unit covariance."""
    xs = features[:, SEGMENT_DIMS].astype(np.float64)
    mu = params.seg_means
    logit = np.log(params.seg_weights)[None, :] + xs @ mu.T - 0.5 * (mu ** 2).sum(axis=1)[None, :]
    logit -= logit.max(axis=1, keepdims=True)
    p = np.exp(logit)
    return p / p.sum(axis=1, keepdims=True)


def regime_loglik(txn_seq: np.ndarray, session_seq: np.ndarray, params: WorldParams,
                  mode: str) -> np.ndarray:
    """Per-step emission log-likelihoods [N, T_mode, K] of one HMM mode."""
    if mode == "journey":
        return gaussian_state_loglik(session_seq[:, :, SESSION_CHANNELS["journey"]],
                                     params.hmm_means["journey"])
    if mode not in ("lifecycle", "behavior"):
        raise ValueError(f"unknown HMM mode {mode!r}; expected one of {HMM_MODES}")
    return gaussian_state_loglik(txn_seq[:, :, TXN_CHANNELS[mode]], params.hmm_means[mode],
                                 params.config.steps_per_month)


def regime_posteriors(txn_seq: np.ndarray, session_seq: np.ndarray,
                      params: WorldParams) -> dict[str, np.ndarray]:
    """Filtered P(z_T | emissions) [N, K] of each HMM mode's final state (eq-world-forward)."""
    return {m: hmm_filter(regime_loglik(txn_seq, session_seq, params, m), params.hmm_init[m],
                          params.hmm_trans[m]) for m in HMM_MODES}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _grid(latent: dict[str, np.ndarray], modes: tuple[str, ...], use_segment: bool,
          truth: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weights [N, G] over the joint grid of the latents a score depends on, and each latent's
    value at every grid point ([1, G], or [N, 1] for the true latents)."""
    names = (("segment",) if use_segment else ()) + modes
    if truth:
        n = latent[modes[0]].shape[0]
        return np.ones((n, 1)), {k: latent[k][:, None] for k in names}
    post = [latent[k] for k in names]
    w = post[0]
    for p in post[1:]:
        w = (w[:, :, None] * p[:, None, :]).reshape(w.shape[0], -1)
    idx = np.indices([p.shape[1] for p in post]).reshape(len(post), -1)
    return w, {k: idx[i][None, :] for i, k in enumerate(names)}


def _observed_score(name: str, obs: dict, prm: WorldParams) -> np.ndarray:
    """bias + alpha * (linear + signal terms) of one score: [N] (scalar) or [N, C] (vector)."""
    a = prm.config.signal_strength
    if name in prm.scalar:
        r = prm.scalar[name]
        s = obs["x_lin"] @ r["lin"]
        s = s + sum(c * obs["signals"][e] for e, c in r["sig"].items())
        if name == "spending_bucket":
            s = s + BUCKET_MEAN_WEIGHT * obs["hist_mean"]
        return r["bias"] + a * s
    r = prm.vector[name]
    s = obs["x_lin"] @ r["lin"].T
    for e, c in r["sig"].items():
        s = s + obs["signals"][e][:, None] * c[None, :]
    if name == "spending_category":
        s = s + SPENDING_SHARE_WEIGHT * obs["agg"]["category_shares"]
    return r["bias"][None, :] + a * s


def _latent_score(name: str, obs_score: np.ndarray, idx: dict[str, np.ndarray],
                  prm: WorldParams) -> np.ndarray:
    """Add alpha * (regime effect + segment shift) on the grid: [N, G] or [N, G, C]."""
    cfg = prm.config
    r = prm.scalar.get(name) or prm.vector[name]
    lat = r["reg"][idx[r["mode"]]]
    if "segment" in idx:
        lat = lat + cfg.segment_decision_shift * r["seg"][idx["segment"]]
    if lat.ndim == 2:
        return obs_score[:, None] + cfg.signal_strength * lat
    return obs_score[:, None, :] + cfg.signal_strength * lat


def brand_within_category(obs: dict, prm: WorldParams) -> np.ndarray:
    """P(brand = b | category = cat(b), observed) [N, 128]: softmax over the brands of each
    category of popularity + alpha * BRAND_SHARE_WEIGHT * the customer's brand share."""
    logits = prm.brand_popularity[None, :] + prm.config.signal_strength * BRAND_SHARE_WEIGHT \
        * obs["agg"]["brand_shares"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    onehot = np.eye(NUM_CATEGORIES)[prm.brand_category]          # [128, 12]
    return e / (e @ onehot)[:, prm.brand_category]


def label_distributions(obs: dict, latent: dict[str, np.ndarray], prm: WorldParams,
                        truth: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Conditional label distributions given the observed inputs (eq-world-oracle).

    With `truth`, `latent` holds the true segment and final regime states (int [N]) and the
    result is P(y | observed, latents), from which the labels are drawn. Otherwise `latent` holds
    posteriors ([N, S] segment, [N, K] per mode) and the result is the posterior expectation of
    the same quantity: the Bayes-optimal prediction. Binary -> P(y = 1) [N]; multiclass and
    brand -> probabilities [N, C]; regression -> conditional mean [N] ([N, 12]). The second dict
    holds the component probabilities that the funnels are sampled from (meaningful with truth).
    """
    use_seg = prm.config.segment_decision_shift > 0
    obs_scores = {k: _observed_score(k, obs, prm) for k in (*prm.scalar, *prm.vector)}
    grids = {modes: _grid(latent, modes, use_seg, truth)
             for modes in (("journey",), ("lifecycle",), ("behavior",), ("lifecycle", "journey"))}

    def score(name, modes):
        return _latent_score(name, obs_scores[name], grids[modes][1], prm)

    def expect(values, modes):
        w = grids[modes][0]
        return (w[:, :, None] * values).sum(axis=1) if values.ndim == 3 else (w * values).sum(axis=1)

    out, parts = {}, {}
    j, l, b, lj = ("journey",), ("lifecycle",), ("behavior",), ("lifecycle", "journey")
    p_click, p_conv = _sigmoid(score("ctr", j)), _sigmoid(score("conversion", j))
    out["ctr"], out["cvr"] = expect(p_click, j), expect(p_click * p_conv, j)
    out["engagement"], out["uplift"] = expect(score("engagement", j), j), expect(score("uplift", j), j)
    p_churn, p_lapse = _sigmoid(score("churn", l)), _sigmoid(score("lapse", l))
    out["churn"], out["retention"] = expect(p_churn, l), expect((1 - p_churn) * (1 - p_lapse), l)
    out["life_stage"] = expect(_softmax(score("life_stage", l)), l)
    # LTV: log-normal around a score that reads CVR's latent probability (CVR -> LTV)
    log_pcvr = np.log(_sigmoid(score("ctr", lj))) + np.log(_sigmoid(score("conversion", lj)))
    m = score("ltv", lj) + prm.config.signal_strength * LTV_TRANSFER * (
        log_pcvr - prm.logpcvr_mean) / prm.logpcvr_std
    out["ltv"] = expect(np.exp(m + 0.5 * prm.scalar["ltv"]["noise"] ** 2), lj)
    out["balance_util"] = expect(_sigmoid(score("balance_util", b)), b)
    for name in ("spending_bucket", "merchant_affinity"):
        out[name] = expect(score(name, b), b)
    for name in ("channel", "timing", "consumption_cycle"):
        out[name] = expect(_softmax(score(name, b)), b)
    p_nba = _softmax(score("nba", b))
    out["nba"] = expect(p_nba, b)
    sc_logits = score("spending_category", b) + prm.config.signal_strength * NBA_TRANSFER * p_nba
    out["spending_category"] = expect(_softmax(sc_logits), b)
    out["category_uplift"] = expect(score("category_uplift", b), b)
    out["brand_prediction"] = out["spending_category"][:, prm.brand_category] * brand_within_category(obs, prm)
    if truth:
        parts = dict(click=p_click[:, 0], conversion=p_conv[:, 0], churn=p_churn[:, 0],
                     lapse=p_lapse[:, 0])
    return out, parts


def _inverse_cdf(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categorical draws [N] from probabilities p [N, C] with uniforms u [N]."""
    return np.minimum((u[:, None] >= np.cumsum(p, axis=1)).sum(axis=1), p.shape[1] - 1)


def _sample_labels(sim: dict, obs: dict, prm: WorldParams) -> tuple[dict, dict]:
    """All 18 labels of the simulated customers, drawn from their true conditionals."""
    truth = {"segment": sim["segments"], **{m: sim["regimes"][m][:, -1] for m in HMM_MODES}}
    dist, parts = label_distributions(obs, truth, prm, truth=True)
    u = dict(zip(_LABEL_UNIFORMS, sim["label_u"].T))
    z = dict(zip(_LABEL_NORMALS, sim["label_z"].T))
    y = {}
    click = u["click"] < parts["click"]
    y["ctr"] = click.astype(np.float32)
    y["cvr"] = (click & (u["conversion"] < parts["conversion"])).astype(np.float32)
    churn = u["churn"] < parts["churn"]
    y["churn"] = churn.astype(np.float32)
    y["retention"] = (~churn & (u["lapse"] >= parts["lapse"])).astype(np.float32)
    for name in ("life_stage", "channel", "timing", "nba", "spending_category", "consumption_cycle"):
        y[name] = _inverse_cdf(dist[name], u[name])
    # brand: inside the drawn spending category (P(b | obs) = sum_k P(k | obs) P(b | k, obs))
    within = brand_within_category(obs, prm)
    mask = prm.brand_category[None, :] == y["spending_category"][:, None]
    y["brand_prediction"] = _inverse_cdf(within * mask, u["brand"])
    for name in ("engagement", "uplift", "spending_bucket", "merchant_affinity", "balance_util"):
        y[name] = (dist[name] + prm.scalar[name]["noise"] * z[name]).astype(np.float32)
    s = prm.scalar["ltv"]["noise"]
    y["ltv"] = (dist["ltv"] * np.exp(s * z["ltv"] - 0.5 * s ** 2)).astype(np.float32)
    zc = np.stack([z[f"category_uplift_{i}"] for i in range(12)], axis=1)
    y["category_uplift"] = (dist["category_uplift"] + prm.vector["category_uplift"]["noise"] * zc
                            ).astype(np.float32)
    return {k: y[k] for k in TASK_NAMES}, dist


def _solve_bias(rate, target: float, lo: float = -30.0, hi: float = 30.0) -> float:
    """Bias b with rate(b) = target for a monotone rate(b), by bisection."""
    up = rate(hi) > rate(lo)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if (rate(mid) < target) == up:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _sd(x: np.ndarray) -> float:
    sd = float(x.std())
    return sd if sd > 1e-12 else 1.0


def plant_pairs(prm: WorldParams, seed: int) -> dict[tuple[str, str], np.ndarray]:
    """Add the planted task pairs to the linear weights, in place (eq-world-planted):
    w_a += lambda ||w_a|| c_a d and w_b += lambda ||w_b|| c_b s d, with d a unit direction of the
    RFM block drawn per pair from its own seed stream (nothing else drawn changes), s the pair's
    sign and c the sign of each label in its score (PLANTABLE_TASKS). Returns {(a, b): d}."""
    cfg = prm.config
    dirs = {}
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    for a, b, s in cfg.planted_pairs:
        d = rng.standard_normal(prm.scalar["ctr"]["lin"].shape[0])
        d /= np.linalg.norm(d)
        for task, sign in ((a, 1), (b, s)):
            score, c = PLANTABLE_TASKS[task]
            w = prm.scalar[score]["lin"]
            prm.scalar[score]["lin"] = w + cfg.planted_strength * np.linalg.norm(w) * c * sign * d
        dirs[(a, b)] = d
    prm.planted_directions = dirs
    return dirs


def make_params(config: WorldConfig, seed: int) -> WorldParams:
    """True parameters of the world: structural draws from `seed`, then standardisations and
    funnel intercepts fixed on PILOT_SIZE customers simulated from their own seed stream (so they
    do not depend on N or on chunking)."""
    if not isinstance(config, WorldConfig):
        raise InputTypeError(f"config must be a WorldConfig (from make_config); got {type(config).__name__}")
    seed = check_int("seed", seed, 0)
    prm = _structural_params(config, seed)
    plant_pairs(prm, seed)
    rngs = [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, i)))
            for i in range(PILOT_SIZE // BLOCK_SIZE)]
    sim = _simulate(_draw(rngs, config), prm)
    obs = _observed_terms(sim, prm, n_peaks=sim["latents"]["n_peaks"])
    for e in EXPERT_NAMES:
        prm.signal_mean[e] = float(obs["raw"][e].mean())
        prm.signal_std[e] = _sd(obs["raw"][e])
    hm = histogram_probabilities(sim["features"]) @ ((np.arange(HIST_BINS) + 0.5) / HIST_BINS)
    prm.hist_mean_mean, prm.hist_mean_std = float(hm.mean()), _sd(hm)
    obs = _observed_terms(sim, prm, n_peaks=sim["latents"]["n_peaks"])
    truth = {"segment": sim["segments"], **{m: sim["regimes"][m][:, -1] for m in HMM_MODES}}
    use_seg = config.segment_decision_shift > 0

    def rest(name):  # the score without its bias, at the true latents
        mode = prm.scalar[name]["mode"]
        _, idx = _grid(truth, (mode,), use_seg, True)
        return _latent_score(name, _observed_score(name, obs, prm) - prm.scalar[name]["bias"],
                             idx, prm)[:, 0]

    r = {k: rest(k) for k in ("ctr", "conversion", "churn", "lapse")}
    sc = prm.scalar
    sc["ctr"]["bias"] = _solve_bias(lambda b: _sigmoid(b + r["ctr"]).mean(), RATE_TARGETS["ctr"])
    p_click = _sigmoid(sc["ctr"]["bias"] + r["ctr"])
    sc["conversion"]["bias"] = _solve_bias(
        lambda b: (p_click * _sigmoid(b + r["conversion"])).mean(), RATE_TARGETS["cvr"])
    sc["churn"]["bias"] = _solve_bias(lambda b: _sigmoid(b + r["churn"]).mean(), RATE_TARGETS["churn"])
    p_stay = 1.0 - _sigmoid(sc["churn"]["bias"] + r["churn"])
    sc["lapse"]["bias"] = _solve_bias(
        lambda b: (p_stay * (1.0 - _sigmoid(b + r["lapse"]))).mean(), RATE_TARGETS["retention"])
    lp = np.log(p_click) + np.log(_sigmoid(sc["conversion"]["bias"] + r["conversion"]))
    prm.logpcvr_mean, prm.logpcvr_std = float(lp.mean()), _sd(lp)
    return prm


@dataclass
class CustomerWorld:
    """A generated world: the observed inputs, the labels, and the planted truth.

    Observed: `features` float32 [N, 644] (FEATURE_BLOCKS), `txn_seq` float32 [N, T_txn, 16]
    (TXN_CHANNELS), `session_seq` float32 [N, T_sess, 8] (SESSION_CHANNELS), `balance_seq` float32
    [N, T_balance] (PersLay's input), `interactions` int64 [E, 2] (customer, merchant) sorted by
    customer with `interaction_offsets` int64 [N + 1], and the merchant hierarchy
    (`merchant_category`, `merchant_subcategory`, `merchant_brand` [M]; `brand_category` [128]).
    Truth: `segments` int64 [N], `regimes` mode -> int8 [N, T_mode], `signals` expert -> float32
    [N], `latents` (the remaining latent draws), `params` (every generating parameter).
    Labels: `labels` task -> [N] (float32 binary / regression, int64 class or brand index;
    category_uplift float32 [N, 12]).
    """

    config: WorldConfig
    seed: int
    params: WorldParams
    features: np.ndarray
    txn_seq: np.ndarray
    session_seq: np.ndarray
    balance_seq: np.ndarray
    interactions: np.ndarray
    interaction_offsets: np.ndarray
    merchant_category: np.ndarray
    merchant_subcategory: np.ndarray
    merchant_brand: np.ndarray
    brand_category: np.ndarray
    segments: np.ndarray
    regimes: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    signals: dict[str, np.ndarray]
    latents: dict[str, np.ndarray]
    out_dir: str | None = None

    @property
    def n_customers(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_merchants(self) -> int:
        return int(self.merchant_category.shape[0])

    def customer_interactions(self, start: int, stop: int) -> np.ndarray:
        """Interactions [E', 2] of customers start..stop-1 (customer ids unchanged)."""
        return np.asarray(self.interactions[self.interaction_offsets[start]:self.interaction_offsets[stop]])

    def take(self, index: np.ndarray | slice) -> CustomerWorld:
        """The sub-world of the customers `index` (in memory; customer ids renumbered 0..n-1)."""
        idx = np.arange(self.n_customers)[index] if isinstance(index, slice) else np.asarray(index)
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= self.n_customers)):
            raise ValueError(f"index must be 1-D customer ids in [0, {self.n_customers}); "
                             f"got shape {list(idx.shape)}")
        lo, hi = self.interaction_offsets[idx], self.interaction_offsets[idx + 1]
        lengths = hi - lo
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        edge = np.repeat(lo - offsets[:-1], lengths) + np.arange(offsets[-1])
        inter = np.asarray(self.interactions)[edge].copy()
        inter[:, 0] = np.repeat(np.arange(idx.size), lengths)

        def sub(d):
            return {k: np.asarray(v[idx]) for k, v in d.items()}

        return replace(self, features=np.asarray(self.features[idx]),
                       txn_seq=np.asarray(self.txn_seq[idx]),
                       session_seq=np.asarray(self.session_seq[idx]),
                       balance_seq=np.asarray(self.balance_seq[idx]), interactions=inter,
                       interaction_offsets=offsets, segments=np.asarray(self.segments[idx]),
                       regimes=sub(self.regimes), labels=sub(self.labels),
                       signals=sub(self.signals), latents=sub(self.latents), out_dir=None)


def _npy_header(dtype, shape: tuple[int, ...], total: int = 128) -> bytes:
    """A fixed-length .npy (v1.0) header, so a file can be appended to and its shape fixed later."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    d = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body = d.ljust(total - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + (total - 10).to_bytes(2, "little") + body.encode("latin1")


class _Appender:
    """A .npy file written front to back, one chunk of rows at a time (the shape is known up
    front, or fixed at `close` for the interaction list); only the chunk is ever in memory."""

    def __init__(self, path: Path, shape: tuple[int, ...] | None, row_shape: tuple[int, ...], dtype):
        self.path, self.shape, self.row_shape, self.dtype = path, shape, row_shape, np.dtype(dtype)
        self.rows = 0
        self.file = open(path, "wb")
        self.file.write(_npy_header(self.dtype, shape or (0, *row_shape)))

    def __setitem__(self, key, value) -> None:
        start = key if isinstance(key, int) else key.start
        if start != self.rows:
            raise ValueError(f"{self.path.name}: rows must be written in order; got row {start}, "
                             f"expected {self.rows}")
        value = np.ascontiguousarray(value, dtype=self.dtype).reshape(-1, *self.row_shape)
        self.file.write(value.tobytes())
        self.rows += value.shape[0]

    def close(self) -> np.ndarray:
        if self.shape is None:
            self.file.seek(0)
            self.file.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        elif self.rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: wrote {self.rows} rows; expected {self.shape[0]}")
        self.file.close()
        return np.load(self.path, mmap_mode="r")


class _Sink:
    """Destination of the generated arrays: memory, or .npy files in `out_dir` written chunk by
    chunk and reopened as read-only memmaps."""

    def __init__(self, out_dir: str | None):
        self.dir = None if out_dir is None else Path(out_dir)
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.arrays: dict[str, np.ndarray | _Appender] = {}

    def array(self, name: str, shape: tuple[int, ...] | None, dtype, row_shape: tuple[int, ...] = ()):
        """A [shape] array to fill in row order (shape None: rows of `row_shape`, count unknown)."""
        if self.dir is None:
            a = np.empty(shape, dtype=dtype) if shape is not None else []
        else:
            a = _Appender(self.dir / f"{name}.npy", shape, shape[1:] if shape else row_shape, dtype)
        self.arrays[name] = a
        return a

    def finish(self) -> dict[str, np.ndarray]:
        """Every array, complete (memmaps when streaming)."""
        out = {}
        for name, a in self.arrays.items():
            if isinstance(a, _Appender):
                out[name] = a.close()
            elif isinstance(a, list):
                out[name] = np.concatenate(a) if a else np.zeros((0, 2), np.int64)
            else:
                out[name] = a
        return out


def _label_spec(task: str, n: int) -> tuple[tuple[int, ...], type]:
    spec = get_task(task)
    if spec.task_type in ("multiclass", "contrastive"):
        return (n,), np.int64
    return ((n, spec.output_dim) if spec.output_dim > 1 else (n,)), np.float32


def _trim(sim: dict, n: int) -> dict:
    """The first n customers of a simulated chunk (interactions are sorted by customer)."""
    if n == sim["n"]:
        return sim
    n_edges = int(sim["n_interactions"][:n].sum())
    out = {k: (v[:n] if isinstance(v, np.ndarray) else v) for k, v in sim.items()}
    out.update(n=n, customer=sim["customer"][:n_edges], merchant=sim["merchant"][:n_edges],
               regimes={m: z[:n] for m, z in sim["regimes"].items()},
               latents={k: v[:n] for k, v in sim["latents"].items()})
    return out


def generate(n_customers: int, seed: int = 0, profile: str = "ci", *, out_dir: str | None = None,
             chunk_size: int = 8192, **overrides) -> CustomerWorld:
    """Generate a customer world of `n_customers` (eq-world-joint).

    Same (n_customers, seed, profile, overrides) -> identical arrays, whatever `chunk_size` (the
    random numbers come in blocks of BLOCK_SIZE customers, each from its own SeedSequence child;
    `chunk_size` is rounded up to a multiple of BLOCK_SIZE and only sets how many customers are
    vectorised at once). A world of N customers is the prefix of any larger world with the same
    seed. With `out_dir` every array is streamed to `out_dir/<name>.npy` and returned as a memmap
    (`load_world(out_dir)` opens it again). `overrides` are WorldConfig fields.
    """
    n = check_int("n_customers", n_customers, 1)
    seed = check_int("seed", seed, 0)
    chunk = check_int("chunk_size", chunk_size, 1)
    chunk = -(-chunk // BLOCK_SIZE) * BLOCK_SIZE
    cfg = make_config(profile, **overrides)
    prm = make_params(cfg, seed)
    sink = _Sink(out_dir)
    f32 = np.float32
    features = sink.array("features", (n, FEATURE_DIM), f32)
    txn = sink.array("txn_seq", (n, cfg.t_txn, 16), f32)
    sess = sink.array("session_seq", (n, cfg.t_sess, 8), f32)
    bal = sink.array("balance_seq", (n, cfg.t_balance), f32)
    offsets = sink.array("interaction_offsets", (n + 1,), np.int64)
    segments = sink.array("segments", (n,), np.int64)
    regimes = {m: sink.array(f"regime_{m}", (n, cfg.chain_length(m)), np.int8) for m in HMM_MODES}
    labels = {t: sink.array(f"label_{t}", *_label_spec(t, n)) for t in TASK_NAMES}
    signals = {e: sink.array(f"signal_{e}", (n,), f32) for e in EXPERT_NAMES}
    edges = sink.array("interactions", None, np.int64, row_shape=(2,))
    latents: dict[str, np.ndarray] = {}
    offsets[0:1] = [0]
    n_edges = 0
    for start in range(0, n, chunk):
        n_take = min(chunk, n - start)
        n_blocks = -(-n_take // BLOCK_SIZE)
        rngs = [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, start // BLOCK_SIZE + i)))
                for i in range(n_blocks)]
        sim = _trim(_simulate(_draw(rngs, cfg), prm), n_take)
        obs = _observed_terms(sim, prm, n_peaks=sim["latents"]["n_peaks"])
        y, _ = _sample_labels(sim, obs, prm)
        _check_finite_world(sim, y, cfg)
        sl = slice(start, start + n_take)
        features[sl], txn[sl], sess[sl], bal[sl] = (sim["features"], sim["txn_seq"],
                                                    sim["session_seq"], sim["balance_seq"])
        segments[sl] = sim["segments"]
        for m in HMM_MODES:
            regimes[m][sl] = sim["regimes"][m]
        for t in TASK_NAMES:
            labels[t][sl] = y[t]
        for e in EXPERT_NAMES:
            signals[e][sl] = obs["signals"][e]
        for k, v in sim["latents"].items():
            if k not in latents:
                latents[k] = sink.array(f"latent_{k}", (n,), v.dtype)
            latents[k][sl] = v
        offsets[start + 1:start + n_take + 1] = n_edges + np.cumsum(sim["n_interactions"])
        n_edges += len(sim["customer"])
        pair = np.stack([sim["customer"] + start, sim["merchant"]], axis=1)
        if isinstance(edges, list):
            edges.append(pair)
        else:
            edges[n_edges - len(pair):n_edges] = pair
    arrays = sink.finish()
    features, txn, sess, bal, offsets, segments = (arrays[k] for k in (
        "features", "txn_seq", "session_seq", "balance_seq", "interaction_offsets", "segments"))
    interactions = arrays["interactions"]
    regimes = {m: arrays[f"regime_{m}"] for m in HMM_MODES}
    labels = {t: arrays[f"label_{t}"] for t in TASK_NAMES}
    signals = {e: arrays[f"signal_{e}"] for e in EXPERT_NAMES}
    latents = {k: arrays[f"latent_{k}"] for k in latents}
    if out_dir is not None:
        meta = dict(format=1, n_customers=n, seed=seed, config=asdict(cfg))
        (Path(out_dir) / "world.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return CustomerWorld(
        config=cfg, seed=seed, params=prm, features=features, txn_seq=txn, session_seq=sess,
        balance_seq=bal, interactions=interactions, interaction_offsets=offsets,
        merchant_category=prm.merchant_category.copy(),
        merchant_subcategory=prm.merchant_subcategory.copy(),
        merchant_brand=prm.merchant_brand.copy(), brand_category=prm.brand_category.copy(),
        segments=segments, regimes=regimes, labels=labels, signals=signals, latents=latents,
        out_dir=None if out_dir is None else str(out_dir))


def _check_finite_world(sim: dict, labels: dict, cfg: WorldConfig) -> None:
    """ValueError naming the knobs when a chunk's inputs or labels overflowed: never a silent NaN."""
    bad = [k for k in ("features", "txn_seq", "session_seq", "balance_seq") if not np.isfinite(sim[k]).all()]
    bad += [f"label {t}" for t, v in labels.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        knobs = {k: getattr(cfg, k) for k in ("signal_strength", "segment_decision_shift", "planted_strength",
                                               "segment_separation", "regime_separation")}
        raise ValueError(f"the world overflowed ({', '.join(bad)} not finite) at the knobs {knobs}; lower them")


def load_world(out_dir: str) -> CustomerWorld:
    """Open a world streamed by `generate(..., out_dir=out_dir)` (arrays as read-only memmaps;
    the parameters are re-derived from the stored seed and config)."""
    root = Path(out_dir)
    meta_path = root / "world.json"
    if not meta_path.is_file():
        raise ValueError(f"out_dir {str(out_dir)!r} holds no world.json; expected a directory written by generate")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    cfg = WorldConfig(**{**meta["config"], "planted_pairs": check_planted_pairs(
        meta["config"].get("planted_pairs", ()), meta["config"].get("planted_strength", 1.0))})
    prm = make_params(cfg, meta["seed"])

    def load(name):
        return np.load(root / f"{name}.npy", mmap_mode="r")

    latent_names = sorted(p.stem[len("latent_"):] for p in root.glob("latent_*.npy"))
    return CustomerWorld(
        config=cfg, seed=meta["seed"], params=prm, features=load("features"),
        txn_seq=load("txn_seq"), session_seq=load("session_seq"), balance_seq=load("balance_seq"),
        interactions=load("interactions"), interaction_offsets=load("interaction_offsets"),
        merchant_category=prm.merchant_category.copy(),
        merchant_subcategory=prm.merchant_subcategory.copy(),
        merchant_brand=prm.merchant_brand.copy(), brand_category=prm.brand_category.copy(),
        segments=load("segments"), regimes={m: load(f"regime_{m}") for m in HMM_MODES},
        labels={t: load(f"label_{t}") for t in TASK_NAMES},
        signals={e: load(f"signal_{e}") for e in EXPERT_NAMES},
        latents={k: load(f"latent_{k}") for k in latent_names}, out_dir=str(root))


def _check_world(world: object) -> None:
    if not isinstance(world, CustomerWorld):
        raise InputTypeError(f"world must be a CustomerWorld (from generate or load_world); got {type(world).__name__}")


def _chunk_inputs(world: CustomerWorld, start: int, stop: int) -> dict:
    edges = world.customer_interactions(start, stop)
    return dict(features=np.asarray(world.features[start:stop]),
                txn_seq=np.asarray(world.txn_seq[start:stop]),
                session_seq=np.asarray(world.session_seq[start:stop]),
                balance_seq=np.asarray(world.balance_seq[start:stop]),
                customer=edges[:, 0] - start, merchant=edges[:, 1])


def observed_signals(world: CustomerWorld, chunk_size: int = 8192) -> dict[str, np.ndarray]:
    """The seven standardised signals recomputed from the observed inputs and the world's
    parameters (PersLay's by H0 persistence of the balance series): equal to `world.signals`."""
    _check_world(world)
    chunk_size = check_int("chunk_size", chunk_size, 1)
    out = {e: [] for e in EXPERT_NAMES}
    for start in range(0, world.n_customers, chunk_size):
        stop = min(start + chunk_size, world.n_customers)
        obs = _observed_terms(_chunk_inputs(world, start, stop), world.params)
        for e in EXPERT_NAMES:
            out[e].append(obs["signals"][e].astype(np.float32))
    return {e: np.concatenate(v) for e, v in out.items()}


def posteriors(world: CustomerWorld, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Exact posteriors of the latents of customers start..stop-1 given their observed inputs:
    "segment" [n, S] and the final state of each HMM mode [n, K]."""
    _check_world(world)
    start = check_int("start", start, 0, world.n_customers)
    stop = world.n_customers if stop is None else check_int("stop", stop, start, world.n_customers)
    txn, sess = np.asarray(world.txn_seq[start:stop]), np.asarray(world.session_seq[start:stop])
    post = regime_posteriors(txn, sess, world.params)
    post["segment"] = segment_posterior(np.asarray(world.features[start:stop]), world.params)
    return post


def oracle(world: CustomerWorld, tasks: tuple[str, ...] | None = None,
           chunk_size: int = 8192) -> dict[str, np.ndarray]:
    """Bayes-optimal predictions from the observed inputs and the world's true parameters
    `world.params` (eq-world-oracle) for the active tasks (or `tasks`): binary -> P(y = 1) [N];
    multiclass and brand_prediction -> probabilities [N, C]; regression -> posterior mean [N].
    float32. The parameters include the merchant -> community map behind the LightGCN signal,
    which no input states (a graph model must infer it from co-visits)."""
    _check_world(world)
    chunk_size = check_int("chunk_size", chunk_size, 1)
    if isinstance(tasks, str):
        raise InputTypeError(f"tasks must be a tuple of task names; got the string {tasks!r}")
    names = ACTIVE_TASK_NAMES if tasks is None else tuple(tasks)
    for t in names:
        get_task(t)
    out = {t: [] for t in names}
    for start in range(0, world.n_customers, chunk_size):
        stop = min(start + chunk_size, world.n_customers)
        obs = _observed_terms(_chunk_inputs(world, start, stop), world.params)
        dist, _ = label_distributions(obs, posteriors(world, start, stop), world.params)
        for t in names:
            out[t].append(dist[t].astype(np.float32))
    return {t: np.concatenate(v) for t, v in out.items()}


def tabular_inputs(world: CustomerWorld, graph_dim: int = 16, feature_components: int = 16) -> np.ndarray:
    """A fixed tabular summary of every observed input, for tabular baselines: float32 [N, D].

    The linear block and the three signal blocks of the features as they are, the remaining
    segment-carrying feature dims compressed to their top `feature_components` principal
    components (fitted on this world); per channel of both sequences the mean, the lag-1 autocorrelation and the
    mean of the last month (txn) / last week (sessions); balance-series mean, sd, max, min and
    number of local maxima; the customer's category shares, Herfindahl index, interaction count
    and brand shares; and a `graph_dim`-D spectral embedding of the customer-merchant matrix
    (truncated SVD, computed on this world: the tabular stand-in for a graph model).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    _check_world(world)
    graph_dim = check_int("graph_dim", graph_dim, 1)
    feature_components = check_int("feature_components", feature_components, 1)
    n = world.n_customers
    feats = np.asarray(world.features, dtype=np.float64)
    keep = np.concatenate([np.arange(FEATURE_DIM)[FEATURE_BLOCKS[b]] for b in (LINEAR_BLOCK, *SIGNAL_BLOCKS)])
    rest = feats[:, np.setdiff1d(SEGMENT_DIMS, keep)]
    rest = rest - rest.mean(axis=0)
    _, _, vt = np.linalg.svd(rest[:min(n, 4096)], full_matrices=False)
    cols = [feats[:, keep], rest @ vt[:feature_components].T]
    for seq, last in ((world.txn_seq, world.config.steps_per_month), (world.session_seq, 7)):
        s = np.asarray(seq, dtype=np.float64)
        c = s - s.mean(axis=1, keepdims=True)
        ac = (c[:, 1:] * c[:, :-1]).sum(axis=1) / np.maximum((c ** 2).sum(axis=1), 1e-12)
        cols += [s.mean(axis=1), ac, s[:, -last:].mean(axis=1)]
    b = np.asarray(world.balance_seq, dtype=np.float64)
    peaks = ((b[:, 1:-1] > b[:, :-2]) & (b[:, 1:-1] > b[:, 2:])).sum(axis=1)
    cols.append(np.stack([b.mean(1), b.std(1), b.max(1), b.min(1), peaks], axis=1))
    edges = np.asarray(world.interactions)
    agg = interaction_aggregates(edges[:, 0], edges[:, 1], n, world.params)
    cols += [agg["category_shares"], agg["herfindahl"][:, None], agg["counts"][:, None],
             agg["brand_shares"]]
    mat = csr_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])),
                     shape=(n, world.n_merchants))
    row = np.asarray(mat.sum(axis=1)).ravel()
    mat = csr_matrix(mat.multiply(1.0 / np.sqrt(np.maximum(row, 1.0))[:, None]))
    k = min(graph_dim, min(mat.shape) - 1)
    u, s, _ = svds(mat, k=k, random_state=0)
    cols.append(u * s)
    return np.concatenate([np.asarray(c, dtype=np.float32).reshape(n, -1) for c in cols], axis=1)
