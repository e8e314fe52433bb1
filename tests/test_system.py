"""Contract tests of ple.system: config, switches, batched forward, losses, save / load, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ple.checks import HyperparameterError, ShapeError
from ple.fit import TensorData, fit
from ple.system import (
    INPUT_FIELDS,
    PLESystem,
    PoolCGC,
    SystemConfig,
    SystemInputs,
    dependency_waves,
    preset,
    reference_forward,
    synthetic_system_inputs,
)
from ple.tasks import ACTIVE_TASK_NAMES, EXPERT_NAMES, TRANSFER_EDGES, get_task

torch.set_num_threads(1)
CI = preset("ci")


def inputs(batch=6, seed=0, dtype=torch.float32, config=CI):
    return synthetic_system_inputs(config, batch, seq_len=8, n_points=4, seed=seed, dtype=dtype)


def labels(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in ACTIVE_TASK_NAMES:
        spec = get_task(t)
        if spec.task_type in ("multiclass", "contrastive"):
            out[t] = torch.randint(0, spec.num_classes, (batch,), generator=g)
        elif spec.task_type == "binary":
            out[t] = (torch.rand(batch, generator=g) < 0.5).float()
        else:
            out[t] = torch.randn(batch, generator=g)
    return out


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(tasks=("ctr", "nope")), "tasks"),
        (dict(tasks=("uplift",)), "tasks"),
        (dict(experts=("deepfm", "bert")), "experts"),
        (dict(group_dims=(128, 0)), "group_dims[1]"),
        (dict(tower_hidden_dims="64"), "tower_hidden_dims"),
        (dict(entropy_lambda=-0.1), "entropy_lambda"),
        (dict(tower_dropout=1.0), "tower_dropout"),
        (dict(num_task_experts=-1), "num_task_experts"),
        (dict(expert_dim=0), "expert_dim"),
        (dict(use_hmm=1), "use_hmm"),
        (dict(loss_weighting="max"), "loss_weighting"),
        (dict(transfer_edges=(("ctr", "cvr", "sequential"), ("cvr", "ctr", "feature"))), "transfer_edges"),
        (dict(transfer_edges=(("ctr", "cvr", "teleport"),)), "transfer_edges"),
        (dict(legacy_basket=True), "legacy_basket"),
        (dict(expert_overrides=(("bert", {"x": 1}),)), "expert_overrides"),
        (dict(poincare_dim=99), "poincare_dim"),
    ],
)
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(HyperparameterError, match=field.replace("[", r"\[").replace("]", r"\]")):
        SystemConfig().replace(**changes)


def test_config_unknown_field_and_preset():
    with pytest.raises(HyperparameterError, match="no_such_flag"):
        SystemConfig().replace(no_such_flag=True)
    with pytest.raises(HyperparameterError, match="preset name"):
        preset("huge")
    with pytest.raises(HyperparameterError, match="config"):
        PLESystem({"use_hmm": False})


def test_config_is_frozen_and_roundtrips():
    cfg = preset("ci", use_hmm=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.use_hmm = True
    assert SystemConfig.from_dict(cfg.to_dict()) == cfg
    assert SystemConfig().tasks == ACTIVE_TASK_NAMES and SystemConfig().experts == EXPERT_NAMES


SWITCHES = {
    "full": {},
    "no_stage2": dict(two_stage_gate=False),
    "no_hmm": dict(use_hmm=False),
    "no_group_encoder": dict(use_group_encoder=False),
    "legacy_basket": dict(use_group_encoder=False, legacy_basket=True),
    "no_transfer": dict(use_transfer=False),
    "no_dim_norm": dict(dim_normalize=False),
    "no_prior": dict(domain_prior=False),
    "no_task_experts": dict(num_task_experts=0),
    "fixed_weights": dict(loss_weighting="fixed"),
    "few_tasks": dict(tasks=("ctr", "cvr", "churn", "nba"), transfer_edges=(("ctr", "cvr", "sequential"),)),
}


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_switch_builds_runs_and_equals_the_composition(name):
    torch.manual_seed(0)
    cfg = CI.replace(**SWITCHES[name])
    model = PLESystem(cfg).double().eval()
    assert (model.stage2 is None) == (not cfg.two_stage_gate)
    assert (model.hmm is None) == (not cfg.use_hmm)
    assert (model.basket is None) == (not cfg.use_group_encoder and not cfg.legacy_basket)
    assert len(model.transfer.edges) == (len(cfg.transfer_edges) if cfg.use_transfer else 0)
    expected_in = (512 if cfg.two_stage_gate else 0) + 64 + (32 if cfg.use_hmm else 0)
    assert model.task_input_dim == expected_in
    x = inputs(dtype=torch.float64)
    with torch.no_grad():
        if model.stage2 is not None:
            model.stage2.weight.normal_(0, 0.05)
        out, ref = model(x), reference_forward(model, x)
    assert list(out) == list(cfg.tasks)
    for t in cfg.tasks:
        assert out[t].shape == (6, get_task(t).output_dim)
        torch.testing.assert_close(out[t], ref[t], rtol=0, atol=1e-12)


def test_all_switches_off_is_pool_cgc():
    cfg = CI.replace(two_stage_gate=False, use_hmm=False, use_group_encoder=False, use_transfer=False)
    system, cgc = PLESystem(cfg).double().eval(), PoolCGC(cfg).double().eval()
    cgc.load_state_dict(system.state_dict(), strict=True)
    x = inputs(dtype=torch.float64)
    with torch.no_grad():
        a, b = system(x), cgc(x)
    for t in a:
        torch.testing.assert_close(a[t], b[t], rtol=0, atol=1e-12)


def test_tuple_roundtrip_and_forward_from_tensors():
    x = inputs()
    t = x.as_tuple()
    assert len(t) == len(INPUT_FIELDS)
    back = SystemInputs.from_tuple(t)
    model = PLESystem(CI).eval()
    with torch.no_grad():
        a, b = model(x), model(*back.as_tuple())
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ShapeError, match="as_tuple needs every input"):
        x.without("txn_seq").as_tuple()


def test_dependency_waves_respect_every_edge():
    waves = dependency_waves(ACTIVE_TASK_NAMES, TRANSFER_EDGES)
    level = {t: i for i, w in enumerate(waves) for t in w}
    assert sorted(level) == sorted(ACTIVE_TASK_NAMES)
    assert all(level[s] < level[d] for s, d, _ in TRANSFER_EDGES)
    assert len(waves) == 3
    assert dependency_waves(ACTIVE_TASK_NAMES, ()) == [list(ACTIVE_TASK_NAMES)]


def test_missing_expert_input_gives_zeros():
    model = PLESystem(CI).eval()
    x = inputs()
    with torch.no_grad():
        h = model.pool(x.without("txn_seq", "session_seq", "features").experts).shared
        out = model(x.without("txn_seq", "session_seq", "features", "hmm_lifecycle", "cluster_probs"))
    dims = model.expert_dims
    for name in ("temporal", "deepfm", "causal", "optimal_transport"):
        i = EXPERT_NAMES.index(name)
        assert torch.count_nonzero(h[:, sum(dims[:i]):sum(dims[:i + 1])]) == 0, name
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize(
    "field, bad",
    [
        ("features", lambda x: torch.zeros(x.shape[0], 600)),
        ("txn_seq", lambda x: torch.zeros(x.shape[0], 8, 12)),
        ("hmm_journey", lambda x: torch.zeros(x.shape[0], 10)),
        ("cluster_probs", lambda x: torch.zeros(x.shape[0], 7)),
        ("diagrams", lambda x: torch.zeros(x.shape[0], 4, 2)),
    ],
)
def test_wrong_shape_names_the_field(field, bad):
    x = inputs()
    t = dict(zip(INPUT_FIELDS, x.as_tuple()))
    t[field] = bad(x.as_tuple()[0])
    with pytest.raises(ShapeError, match=field):
        PLESystem(CI)(SystemInputs.from_tuple(tuple(t[k] for k in INPUT_FIELDS)))


def _train(model, n=24, epochs=1, masks=None):
    x = inputs(n, seed=1)
    data = TensorData(x.as_tuple(), labels(n), masks)
    return fit(model.for_fit(), data, tasks=model.fit_tasks(), epochs=epochs, batch_size=8, lr=1e-3,
               weight_decay=0.0, aggregate=model.aggregator(), returns_aux=True, seed=0)


def test_save_load_of_a_trained_system_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = PLESystem(CI.replace(use_hmm=False))
    _train(model)
    model.stage2.freeze()
    path = tmp_path / "system.pt"
    model.save(path)
    loaded = PLESystem.load(path)
    assert loaded.config == model.config and bool(loaded.stage2.frozen)
    x = inputs(seed=3)
    model.eval(), loaded.eval()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_all_masked_task_gets_no_update_through_fit():
    torch.manual_seed(0)
    model = PLESystem(CI)
    k = model.task_names.index("timing")
    masks = {t: torch.ones(24, dtype=torch.bool) for t in ACTIVE_TASK_NAMES}
    masks["timing"][:] = False
    s_before = model.weighting.task_log_vars.detach().clone()
    tower_before = [p.detach().clone() for p in model.towers["timing"].parameters()]
    history = _train(model, masks=masks)
    assert history.records[0]["train_loss"]["timing"] == 0.0
    assert model.weighting.task_log_vars[k].item() == s_before[k].item()
    assert not torch.equal(model.weighting.task_log_vars, s_before)  # the other tasks moved
    assert all(torch.equal(a, b) for a, b in zip(tower_before, model.towers["timing"].parameters()))


def test_parameter_table_adds_up_and_names_blocks():
    model = PLESystem(CI)
    rows = model.parameter_table()
    total = [r for r in rows if r["block"] == "total"][0]["parameters"]
    assert sum(r["parameters"] for r in rows if r["block"] != "total") == total
    assert "Stage-2 gate (CGCAttention)" in model.summary()


def test_shapes_and_dtypes_are_checked_in_the_training_step_values_only_while_validating():
    from ple.checks import InputTypeError, validation

    model = PLESystem(CI).eval()
    x = inputs(4)
    with validation(False):  # what ple.fit's training step runs under
        with pytest.raises(ShapeError, match=r"features has shape \[4, 600\]"):
            model(SystemInputs(dataclasses.replace(x.experts, features=torch.rand(4, 600)), x.hmm, x.cluster_probs))
        with pytest.raises(InputTypeError, match="features has dtype torch.float64"):
            model(inputs(4, dtype=torch.float64))
        x_bad = inputs(4)
        x_bad.cluster_probs = x_bad.cluster_probs + 1.0  # not posteriors: only a value check sees it
        with torch.no_grad():
            model(x_bad)  # no device read while validation is off
    with pytest.raises(ValueError, match="cluster_probs must hold probability vectors"):
        model(x_bad)


def test_system_inputs_agree_on_the_batch_size():
    x = inputs(4)
    with pytest.raises(ShapeError, match=r"cluster_probs has 3 rows; expected 4"):
        SystemInputs(x.experts, x.hmm, x.cluster_probs[:3])
