"""ple.data.world: the planted-truth customer world and its oracle."""

from __future__ import annotations

import numpy as np
import pytest

from ple.checks import HyperparameterError
from ple.data import world as W
from ple.metrics import oracle_gap, task_chance, task_kind, task_metric
from ple.tasks import ACTIVE_TASK_NAMES, EXPERT_NAMES, HMM_MODES, TASK_NAMES, get_task

N = 1500


@pytest.fixture(scope="module")
def world():
    return W.generate(N, seed=3)


@pytest.fixture(scope="module")
def pred(world):
    return W.oracle(world)


def test_shapes_and_dtypes(world):
    cfg = world.config
    assert world.features.shape == (N, W.FEATURE_DIM) == (N, 644)
    assert world.txn_seq.shape == (N, cfg.t_txn, 16)
    assert world.session_seq.shape == (N, cfg.t_sess, 8)
    assert world.balance_seq.shape == (N, cfg.t_balance)
    for a in (world.features, world.txn_seq, world.session_seq, world.balance_seq):
        assert a.dtype == np.float32 and np.isfinite(a).all()
    assert world.interactions.dtype == np.int64 and world.interactions.shape[1] == 2
    assert world.interaction_offsets.shape == (N + 1,)
    assert world.interaction_offsets[-1] == len(world.interactions)
    assert np.all(np.diff(world.interactions[:, 0]) >= 0)              # sorted by customer
    assert world.interactions[:, 1].max() < world.n_merchants
    assert world.merchant_category.max() == W.NUM_CATEGORIES - 1
    assert world.brand_category.shape == (W.NUM_BRANDS,) == (128,)
    assert set(np.unique(world.brand_category[world.merchant_brand[world.merchant_category == 3]])) == {3}
    assert world.segments.shape == (N,) and world.segments.max() < cfg.n_segments
    assert set(world.regimes) == set(HMM_MODES)
    assert world.regimes["journey"].shape == (N, cfg.t_sess)
    assert world.regimes["lifecycle"].shape == (N, cfg.n_months)
    assert set(world.labels) == set(TASK_NAMES) and len(TASK_NAMES) == 18
    assert set(world.signals) == set(EXPERT_NAMES)
    for s in world.signals.values():
        assert s.dtype == np.float32 and s.shape == (N,)
    for t, y in world.labels.items():
        spec = get_task(t)
        if spec.task_type in ("multiclass", "contrastive"):
            assert y.dtype == np.int64 and y.min() >= 0 and y.max() < spec.num_classes, t
        else:
            assert y.dtype == np.float32, t
    assert world.labels["category_uplift"].shape == (N, 12)


def test_feature_blocks():
    blocks = W.FEATURE_BLOCKS
    assert blocks["rfm"] == slice(0, 34) and blocks["radius"] == slice(643, 644)
    assert blocks["tda_short"] == slice(329, 353) and blocks["lnn"] == slice(521, 539)
    assert len(W.SEGMENT_DIMS) == 644 - 32 - 16 - 24


def test_reproducible_and_chunk_invariant(world):
    again = W.generate(N, seed=3, chunk_size=1024)     # other chunking, same numbers
    for name in ("features", "txn_seq", "session_seq", "balance_seq", "interactions", "segments"):
        np.testing.assert_array_equal(getattr(world, name), getattr(again, name))
    for t in TASK_NAMES:
        np.testing.assert_array_equal(world.labels[t], again.labels[t])
    other = W.generate(N, seed=4)
    assert not np.array_equal(world.features, other.features)


def test_prefix_property(world):
    small = W.generate(700, seed=3, chunk_size=2048)
    np.testing.assert_array_equal(small.features, world.features[:700])
    np.testing.assert_array_equal(small.labels["ctr"], world.labels["ctr"][:700])
    np.testing.assert_array_equal(small.interactions,
                                  world.interactions[:world.interaction_offsets[700]])


def test_label_rates_and_chains():
    w = W.generate(6000, seed=11)
    y = w.labels
    assert 0.03 <= y["ctr"].mean() <= 0.08
    assert 0.005 <= y["cvr"].mean() <= 0.03
    assert 0.05 <= y["churn"].mean() <= 0.15
    assert 0.85 <= y["retention"].mean() <= 0.95
    assert (y["cvr"] <= y["ctr"]).all()
    assert ((y["retention"] == 1) <= (y["churn"] == 0)).all()
    np.testing.assert_array_equal(w.brand_category[y["brand_prediction"]], y["spending_category"])


def test_signals_are_functions_of_the_inputs(world):
    recomputed = W.observed_signals(world, chunk_size=1000)
    for e in EXPERT_NAMES:
        np.testing.assert_array_equal(recomputed[e], world.signals[e])
    peaks = W.count_prominent_peaks(world.balance_seq, world.config.perslay_threshold)
    np.testing.assert_array_equal(peaks, world.latents["n_peaks"])


def test_oracle_outputs(world, pred):
    assert set(pred) == set(ACTIVE_TASK_NAMES) and len(pred) == 16
    for t, p in pred.items():
        spec = get_task(t)
        assert p.dtype == np.float32 and len(p) == N and np.isfinite(p).all()
        if spec.task_type == "binary":
            assert p.ndim == 1 and (p >= 0).all() and (p <= 1).all()
        elif spec.task_type in ("multiclass", "contrastive"):
            assert p.shape == (N, spec.num_classes)
            assert (p >= 0).all() and (p <= 1).all()
            np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (pred["cvr"] <= pred["ctr"] + 1e-7).all()


def test_oracle_beats_chance(world, pred):
    for t, p in pred.items():
        got, level = task_metric(t, world.labels[t], p), task_chance(t, world.labels[t])
        assert 0 <= oracle_gap(got, got, level, task_kind(t)), t    # raises unless got beats chance


def test_oracle_chunking_and_take(world, pred):
    again = W.oracle(world, chunk_size=500)
    for t in pred:
        np.testing.assert_allclose(again[t], pred[t], rtol=1e-6, atol=1e-7)
    idx = np.array([5, 17, 1200, 3])
    sub = world.take(idx)
    assert sub.n_customers == 4
    np.testing.assert_array_equal(sub.features, world.features[idx])
    for j, i in enumerate(idx):
        mine = sub.customer_interactions(j, j + 1)
        theirs = world.customer_interactions(i, i + 1)
        np.testing.assert_array_equal(mine[:, 1], theirs[:, 1])
        assert (mine[:, 0] == j).all()
    sub_pred = W.oracle(sub)
    for t in ("ctr", "ltv", "brand_prediction"):
        np.testing.assert_allclose(sub_pred[t], pred[t][idx], rtol=1e-5, atol=1e-7)


def test_signal_off_is_chance():
    w = W.generate(1200, seed=2, signal_strength=0.0)
    for t, p in W.oracle(w).items():
        assert np.ptp(p, axis=0).max() < 1e-6, t
    assert 0.03 <= w.labels["ctr"].mean() <= 0.08


def test_segment_shift_changes_oracle(world):
    shifted = W.generate(300, seed=3, segment_decision_shift=1.0)
    base = W.generate(300, seed=3)
    np.testing.assert_array_equal(shifted.features, base.features)   # inputs do not move
    p, q = W.oracle(shifted), W.oracle(base)
    assert np.abs(p["ctr"] - q["ctr"]).max() > 1e-3
    assert ((p["ctr"] >= 0) & (p["ctr"] <= 1)).all()


def test_forward_filter_matches_enumeration():
    rng = np.random.default_rng(0)
    k, t = 3, 4
    init = rng.dirichlet(np.ones(k))
    trans = rng.dirichlet(np.ones(k), size=k)
    ll = rng.normal(size=(2, t, k))
    got = W.hmm_filter(ll, init, trans)
    import itertools

    for i in range(2):
        mass = np.zeros(k)
        for path in itertools.product(range(k), repeat=t):
            p = init[path[0]] * np.exp(ll[i, 0, path[0]])
            for s in range(1, t):
                p *= trans[path[s - 1], path[s]] * np.exp(ll[i, s, path[s]])
            mass[path[-1]] += p
        np.testing.assert_allclose(got[i], mass / mass.sum(), atol=1e-12)


def test_h0_persistence_small_case():
    b, d = W.h0_persistence(np.array([[0.0, 3.0, 1.0, 2.0, 0.5]]))
    pers = (b - d)[0]
    np.testing.assert_allclose(pers[:2], [3.0, 1.0])        # essential (3 - 0) and the peak 2 -> 1
    assert np.isnan(pers[2:]).all()
    with pytest.raises(ValueError, match=r"series has shape \[5\]; expected \[N, T\]"):
        W.h0_persistence(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        W.h0_persistence(np.array([[0.0, np.nan]]))


def _h0_pairs_loop(f):
    """Superlevel H0 (birth, death) pairs by plain union-find; on equal peaks the later-born dies."""
    parent, peak, born, pairs = {}, {}, {}, []

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for rank, i in enumerate(sorted(range(len(f)), key=lambda i: (-f[i], i))):
        parent[i], peak[i], born[i] = i, f[i], rank
        for j in (i - 1, i + 1):
            if j in parent:
                a, b = find(i), find(j)
                if a != b:
                    young, old = sorted((a, b), key=lambda r: (peak[r], -born[r]))
                    if young != i:
                        pairs.append((peak[young], f[i]))
                    parent[young] = old
    pairs.append((max(f), min(f)))
    return sorted(pairs)


@pytest.mark.parametrize("sublevel", [False, True])
def test_h0_persistence_pairs_match_union_find(sublevel):
    rng = np.random.default_rng(1)
    series = np.concatenate([rng.normal(size=(40, 30)), rng.integers(0, 3, (40, 30)).astype(float)])
    b, d = W.h0_persistence(series, sublevel=sublevel)
    sign = -1.0 if sublevel else 1.0
    for i, f in enumerate(series):
        n = int((~np.isnan(b[i])).sum())
        assert np.isnan(d[i, n:]).all()
        pers = sign * (b[i, :n] - d[i, :n])
        assert (pers >= 0).all() and (np.diff(pers) <= 0).all()       # sorted by persistence
        got = sorted(zip(sign * b[i, :n], sign * d[i, :n]))
        assert got == _h0_pairs_loop(list(sign * f)), i


def test_hmm_filter_bad_shapes():
    with pytest.raises(ValueError, match=r"loglik has shape \[3, 4\]; expected \[N, T, K\]"):
        W.hmm_filter(np.zeros((3, 4)), np.ones(4) / 4, np.eye(4))
    with pytest.raises(ValueError, match=r"init has shape \[3\] and trans \[4, 4\]; expected \[4\]"):
        W.hmm_filter(np.zeros((2, 5, 4)), np.ones(3) / 3, np.eye(4))
    p = W.hmm_filter(np.zeros((2, 5, 4)), np.ones(4) / 4, np.eye(4), return_all=True)
    np.testing.assert_allclose(p, 0.25)


def test_streaming_and_load(tmp_path):
    out = tmp_path / "w"
    s = W.generate(1100, seed=7, out_dir=str(out), chunk_size=1024)
    m = W.generate(1100, seed=7)
    assert isinstance(s.features, np.memmap)
    loaded = W.load_world(str(out))
    for name in ("features", "txn_seq", "interactions", "interaction_offsets"):
        np.testing.assert_array_equal(np.asarray(getattr(loaded, name)), getattr(m, name))
    np.testing.assert_array_equal(np.asarray(loaded.labels["nba"]), m.labels["nba"])
    assert loaded.config == m.config
    with pytest.raises(ValueError, match="no world.json"):
        W.load_world(str(tmp_path))


@pytest.mark.parametrize("kwargs, match", [
    ({"n_customers": 0}, "n_customers must be an int >= 1; got 0"),
    ({"n_customers": -5}, "n_customers must be an int >= 1"),
    ({"n_customers": 2.5}, "n_customers must be an int >= 1"),
    ({"n_customers": 10, "seed": -1}, "seed must be an int >= 0"),
    ({"n_customers": 10, "profile": "huge"}, "unknown profile 'huge'"),
    ({"n_customers": 10, "t_txn": 50}, "t_txn=50 is not a multiple of n_months=12"),
    ({"n_customers": 10, "n_merchants": 10}, "n_merchants=10 is too small"),
    ({"n_customers": 10, "t_balance": 20}, "t_balance=20 is too short"),
    ({"n_customers": 10, "colour": "red"}, r"unknown world option\(s\) \['colour'\]"),
    ({"n_customers": 10, "task_correlation": 1.5}, r"task_correlation must be >= 0.0 and <= 1.0; got 1.5"),
    ({"n_customers": 10, "signal_strength": -1.0}, "signal_strength must be >= 0.0"),
    ({"n_customers": 10, "chunk_size": 0}, "chunk_size must be an int >= 1"),
    ({"n_customers": 10, "n_segments": 0}, "n_segments must be an int >= 1; got 0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        W.generate(**kwargs)


def test_count_arguments_raise_hyperparameter_error():
    with pytest.raises(HyperparameterError, match="n_customers must be an int >= 1; got True"):
        W.generate(True)


PLANTED = (("engagement", "spending_bucket", 1), ("ltv", "balance_util", -1))


def test_planted_pairs_off_is_the_default_world(world):
    off = W.generate(N, seed=3, planted_pairs=())
    for t in TASK_NAMES:
        np.testing.assert_array_equal(off.labels[t], world.labels[t])
    np.testing.assert_array_equal(off.features, world.features)
    assert off.params.planted_directions == {}


def test_planted_pairs_move_the_pairs_apart_or_together(world, pred):
    on = W.generate(N, seed=3, planted_pairs=PLANTED, planted_strength=2.0)
    p_on = W.oracle(on)
    for a, b, s in PLANTED:
        d = on.params.planted_directions[(a, b)]
        assert d.shape == (34,) and np.isclose(np.linalg.norm(d), 1.0)
        before = np.corrcoef(pred[a], pred[b])[0, 1]
        after = np.corrcoef(p_on[a], p_on[b])[0, 1]
        assert s * (after - before) > 0.2, (a, b, before, after)
        label_after = np.corrcoef(on.labels[a], on.labels[b])[0, 1]
        assert s * label_after > 0.1, (a, b, label_after)
    # the inputs and the tasks outside the pairs are untouched
    np.testing.assert_array_equal(on.features, world.features)
    np.testing.assert_array_equal(on.labels["nba"], world.labels["nba"])
    np.testing.assert_array_equal(on.labels["churn"], world.labels["churn"])


def test_planted_retention_uses_the_sign_of_its_score():
    on = W.generate(N, seed=3, planted_pairs=(("churn", "retention", -1),), planted_strength=2.0)
    base = W.generate(N, seed=3)
    # conflict: churn up means retention down; planted on top of the chain they already share
    c_on = np.corrcoef(W.oracle(on)["churn"], W.oracle(on)["retention"])[0, 1]
    assert c_on < -0.9 and W.PLANTABLE_TASKS["retention"] == ("lapse", -1)
    assert not np.array_equal(on.params.scalar["lapse"]["lin"], base.params.scalar["lapse"]["lin"])


def test_planted_pairs_survive_save_and_load(tmp_path):
    out = tmp_path / "p"
    W.generate(1100, seed=7, out_dir=str(out), planted_pairs=PLANTED)
    loaded = W.load_world(str(out))
    assert loaded.config.planted_pairs == PLANTED
    m = W.generate(1100, seed=7, planted_pairs=PLANTED)
    assert loaded.config == m.config


@pytest.mark.parametrize("pairs, match", [
    ((("ctr", "nba", 1),), r"planted_pairs\[0\] = \('ctr', 'nba', 1\); expected \(task_a, task_b, sign\)"),
    ((("ctr", "ctr", 1),), r"planted_pairs\[0\]"),
    ((("ctr", "churn", 0),), r"sign \+1 \(synergy\) or -1 \(conflict\)"),
    ((("ctr", "churn", 1), ("churn", "ctr", -1)), r"planted_pairs\[1\] = .* repeats the pair"),
    ("ctr", "planted_pairs must be a tuple"),
])
def test_planted_pairs_bad_values(pairs, match):
    with pytest.raises(ValueError, match=match):
        W.make_config("ci", planted_pairs=pairs)


def test_planted_strength_bad_value():
    with pytest.raises(ValueError, match=r"planted_strength must be a finite number in \[0, 5\]; got -1"):
        W.make_config("ci", planted_pairs=PLANTED, planted_strength=-1.0)


# ---------------------------------------------------------------- issue 18: input contract defects
@pytest.mark.parametrize("knob, value", [("regime_separation", float("inf")), ("segment_separation", 1e300),
                                         ("segment_decision_shift", float("inf")), ("signal_strength", float("nan"))])
def test_knobs_that_would_write_inf_features_or_nan_labels_are_errors(knob, value):
    with pytest.raises(ValueError, match=knob):
        W.generate(10, **{knob: value})


@pytest.mark.parametrize("knob", ["segment_separation", "regime_separation", "segment_decision_shift",
                                  "signal_strength", "planted_strength"])
def test_each_knob_at_its_largest_accepted_value_gives_a_finite_world(knob):
    top = W.MAX_SEPARATION if knob.endswith("separation") else W.MAX_STRENGTH
    extra = {"planted_pairs": (("ctr", "ltv", -1),)} if knob == "planted_strength" else {}
    w = W.generate(256, seed=1, **{knob: top}, **extra)
    assert np.isfinite(w.features).all() and np.isfinite(w.txn_seq).all()
    for t, y in w.labels.items():
        assert np.isfinite(np.asarray(y, dtype=np.float64)).all(), t


def test_knobs_that_overflow_together_raise_instead_of_writing_nan():
    # each knob is in range, together they push the log-normal LTV past float32
    with pytest.raises(ValueError, match=r"the world overflowed \(label ltv not finite\)"):
        W.generate(256, seed=1, segment_separation=W.MAX_SEPARATION, segment_decision_shift=W.MAX_STRENGTH,
                   signal_strength=W.MAX_STRENGTH)
