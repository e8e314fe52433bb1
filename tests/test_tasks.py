"""ple.tasks: the 18-task registry of the posts' PLE-6 table."""

from __future__ import annotations

import dataclasses

import pytest

from ple import tasks as T


def test_registry_counts_and_order():
    assert len(T.TASKS) == 18
    assert len(T.active_tasks()) == 16
    assert T.TASK_NAMES[:4] == ("ctr", "cvr", "engagement", "uplift")
    assert T.TASK_NAMES[-2:] == ("brand_prediction", "merchant_affinity")
    inactive = {t.name for t in T.TASKS if not t.active}
    assert inactive == {"uplift", "category_uplift"}
    assert T.ACTIVE_TASK_NAMES == tuple(t.name for t in T.active_tasks())


def test_types_dims_and_losses():
    ctr = T.get_task("ctr")
    assert (ctr.task_type, ctr.output_dim, ctr.loss, ctr.focal_alpha, ctr.focal_gamma) == (
        "binary", 1, "focal", 0.25, 2.0)
    assert {t.name: t.focal_alpha for t in T.TASKS if t.loss == "focal"} == {
        "ctr": 0.25, "cvr": 0.20, "churn": 0.60, "retention": 0.20}
    assert {t.name: t.num_classes for t in T.TASKS if t.task_type == "multiclass"} == {
        "life_stage": 6, "channel": 3, "timing": 28, "nba": 12, "spending_category": 12,
        "consumption_cycle": 7}
    brand = T.get_task("brand_prediction")
    assert (brand.task_type, brand.loss, brand.infonce_tau, brand.num_classes) == (
        "contrastive", "infonce", 0.07, 128)
    assert T.get_task("category_uplift").output_dim == 12
    for t in T.TASKS:
        if t.loss == "huber":
            assert t.huber_delta == 1.0
    weights = {t.name: t.weight for t in T.TASKS}
    assert weights["nba"] == 2.0 and weights["brand_prediction"] == 2.0
    assert weights["cvr"] == 1.5 and weights["ltv"] == 1.5 and weights["churn"] == 1.2


def test_groups_modes_and_experts():
    assert set(T.TASK_GROUPS) == {"engagement", "lifecycle", "value", "consumption"}
    assert T.TASK_GROUPS["value"] == ("balance_util", "channel", "timing")
    assert sorted(n for g in T.TASK_GROUPS.values() for n in g) == sorted(T.TASK_NAMES)
    modes = T.tasks_by_hmm_mode()
    assert modes["journey"] == ("ctr", "cvr", "engagement")
    assert modes["lifecycle"] == ("churn", "retention", "life_stage", "ltv")
    assert len(modes["behavior"]) == 9
    assert T.HMM_MODES == ("journey", "lifecycle", "behavior")
    assert T.EXPERT_DIMS["hgcn"] == 128
    assert sum(T.EXPERT_DIMS.values()) == 512
    for t in T.TASKS:
        assert "causal" not in t.domain_experts and "optimal_transport" not in t.domain_experts
    assert T.get_task("brand_prediction").domain_experts == ("hgcn",)


def test_transfer_edges():
    assert ("ctr", "cvr", "sequential") in T.TRANSFER_EDGES
    assert ("churn", "retention", "inverse") in T.TRANSFER_EDGES
    assert {(s, d) for s, d, _ in T.TRANSFER_EDGES} == {
        ("ctr", "cvr"), ("cvr", "ltv"), ("churn", "retention"),
        ("nba", "spending_category"), ("spending_category", "brand_prediction")}
    T.check_transfer_edges(T.TRANSFER_EDGES)


@pytest.mark.parametrize("edge, match", [
    (("ctr", "nope", "feature"), "unknown task 'nope'"),
    (("ctr", "uplift", "feature"), "'uplift' is inactive"),
    (("ctr", "cvr", "sideways"), "unknown mode 'sideways'"),
    (("ctr", "ctr", "feature"), "cannot transfer to itself"),
])
def test_bad_edges(edge, match):
    with pytest.raises(ValueError, match=match):
        T.check_transfer_edges([edge])


def test_duplicate_edge():
    with pytest.raises(ValueError, match="appears twice"):
        T.check_transfer_edges([("ctr", "cvr", "sequential"), ("ctr", "cvr", "feature")])


def test_lookup_errors():
    with pytest.raises(ValueError, match="unknown task 'ctrr'"):
        T.get_task("ctrr")
    with pytest.raises(ValueError, match=r"duplicate task names: \['ctr'\]"):
        T.select_tasks(["ctr", "cvr", "ctr"])
    with pytest.raises(ValueError, match="inactive tasks requested: \\['uplift'\\]"):
        T.select_tasks(["ctr", "uplift"])
    assert [t.name for t in T.select_tasks(["uplift"], allow_inactive=True)] == ["uplift"]
    assert [t.name for t in T.select_tasks(["nba", "ctr"])] == ["nba", "ctr"]
    with pytest.raises(ValueError, match="duplicate task names: \\['ctr'\\]"):
        T.check_unique_names([T.get_task("ctr"), T.get_task("cvr"), T.get_task("ctr")])


def test_taskspec_validation():
    ctr = T.get_task("ctr")
    with pytest.raises(ValueError, match="task_type 'ordinal'"):
        dataclasses.replace(ctr, task_type="ordinal")
    with pytest.raises(ValueError, match="unknown domain experts \\['rawscale'\\]"):
        dataclasses.replace(ctr, domain_experts=("rawscale",))
    with pytest.raises(ValueError, match="hmm_mode 'weekly'"):
        dataclasses.replace(ctr, hmm_mode="weekly")
    with pytest.raises(ValueError, match="focal loss needs"):
        dataclasses.replace(ctr, focal_alpha=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctr.weight = 3.0  # type: ignore[misc]


# ---------------------------------------------------------------- issue 18: input contract defects
def _spec(**kw):
    from ple.tasks import TaskSpec

    base = dict(name="a", task_type="regression", output_dim=1, loss="mse", weight=1.0, group="engagement",
                hmm_mode="journey", domain_experts=())
    return TaskSpec(**{**base, **kw})


@pytest.mark.parametrize("kw, match", [
    (dict(name=""), "name must be a non-empty string"),
    (dict(task_type="multiclass", loss="nll", output_dim=3, num_classes=-3), "num_classes must be an int >= 2; got -3"),
    (dict(task_type="multiclass", loss="nll", output_dim=3, num_classes=4), "output_dim must equal num_classes"),
    (dict(weight=float("nan")), "weight must be finite; got nan"),
    (dict(task_type="binary", loss="focal", focal_alpha=5.0, focal_gamma=2.0), r"focal_alpha must be >= 0.0 and <= 1.0; got 5.0"),
    (dict(loss="huber", huber_delta=0.0), r"huber_delta must be > 0.0; got 0.0"),
    (dict(output_dim=2.7), "output_dim must be an int >= 1; got 2.7"),
    (dict(domain_experts=("hgcn", "hgcn")), r"domain_experts has duplicates: \['hgcn'\]"),
])
def test_task_spec_rejects_bad_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        _spec(**kw)


def test_inverse_transfer_edge_needs_a_binary_source():
    from ple.tasks import check_transfer_edges

    with pytest.raises(ValueError, match="an inverse edge feeds 1 - p, so its source must be a binary task; 'nba' is multiclass"):
        check_transfer_edges([("nba", "ctr", "inverse")])
    check_transfer_edges([("churn", "retention", "inverse")])
