"""ple.transfer: Kahn order over the task DAG, cycle errors, the residual logit transfer."""

from __future__ import annotations

import pytest
import torch

from ple.tasks import TASK_NAMES, TASKS, TRANSFER_EDGES
from ple.transfer import LogitTransfer, find_cycle, topological_order

SOURCE_DIMS = {t.name: t.output_dim for t in TASKS}


def test_registry_order_respects_every_edge():
    order = topological_order(TASK_NAMES, TRANSFER_EDGES)
    assert sorted(order) == sorted(TASK_NAMES)
    pos = {t: i for i, t in enumerate(order)}
    for s, t, _ in TRANSFER_EDGES:
        assert pos[s] < pos[t]


def test_order_is_deterministic_and_keeps_registry_order_without_edges():
    assert topological_order(["c", "a", "b"], []) == ["c", "a", "b"]
    assert topological_order(["a", "b", "c"], [("c", "a", "feature")]) == ["b", "c", "a"]


@pytest.mark.parametrize("seed", range(5))
def test_random_dags(seed):
    g = torch.Generator().manual_seed(seed)
    n = 10
    perm = torch.randperm(n, generator=g).tolist()
    edges = [
        (f"t{perm[i]}", f"t{perm[j]}", "sequential")
        for i in range(n)
        for j in range(i + 1, n)
        if torch.rand(1, generator=g).item() < 0.3
    ]
    order = topological_order([f"t{i}" for i in range(n)], edges)
    assert all(order.index(s) < order.index(t) for s, t, _ in edges)


def test_cycle_error_names_the_cycle_only():
    edges = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "b"), ("d", "e"), ("x", "a")]
    with pytest.raises(ValueError, match=r"cycle: b -> c -> d -> b$"):
        topological_order(["x", "a", "b", "c", "d", "e"], edges)
    assert find_cycle(["a", "b"], [("a", "b")]) is None


def test_self_loop_is_a_cycle():
    with pytest.raises(ValueError, match=r"cycle: ctr -> ctr"):
        topological_order(TASK_NAMES, [("ctr", "ctr", "sequential")])


def test_registry_cycle():
    bad = [*TRANSFER_EDGES, ("ltv", "ctr", "feature")]
    with pytest.raises(ValueError, match="ctr -> cvr -> ltv -> ctr"):
        topological_order(TASK_NAMES, bad)


@pytest.mark.parametrize(
    "edges, match",
    [
        ([("ctr", "nope", "sequential")], "unknown task 'nope'"),
        ([("ctr", "cvr", "sideways")], "unknown mode 'sideways'"),
        ([("ctr", "cvr"), ("ctr", "cvr")], "given twice"),
        ([("ctr",)], "must be"),
    ],
)
def test_bad_edges(edges, match):
    with pytest.raises(ValueError, match=match):
        topological_order(TASK_NAMES, edges)


def _inputs(B=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    preds = {t: torch.rand(B, d, generator=g) for t, d in SOURCE_DIMS.items()}
    hiddens = {t: torch.randn(B, 32, generator=g) for t in SOURCE_DIMS}
    return preds, hiddens, torch.randn(B, 32, generator=g)


def test_transfer_shapes_order_and_gradients():
    tr = LogitTransfer(TASK_NAMES, TRANSFER_EDGES, SOURCE_DIMS)
    assert tr.order == topological_order(TASK_NAMES, TRANSFER_EDGES)
    preds, hiddens, h = _inputs()
    for p in preds.values():
        p.requires_grad_(True)
    out = tr("cvr", h, preds, hiddens)
    assert out.shape == (8, 32)
    out.sum().backward()
    assert torch.isfinite(preds["ctr"].grad).all() and preds["ctr"].grad.abs().sum() > 0
    # a task without incoming edges is passed through unchanged
    assert torch.equal(tr("engagement", h, preds, hiddens), h)


def test_zero_projection_leaves_input_unchanged():
    tr = LogitTransfer(TASK_NAMES, TRANSFER_EDGES, SOURCE_DIMS)
    preds, hiddens, h = _inputs()
    with torch.no_grad():
        for proj in tr.projections.values():
            proj[0].weight.zero_()
            proj[0].bias.zero_()
    for target in ("cvr", "ltv", "retention", "spending_category", "brand_prediction"):
        assert torch.equal(tr(target, h, preds, hiddens), h)


def test_layernorm_scale_invariance_of_the_residual():
    tr = LogitTransfer(TASK_NAMES, TRANSFER_EDGES, SOURCE_DIMS)
    preds, hiddens, _ = _inputs()
    x = tr.transfer_input("cvr", "feature", preds, hiddens)
    r1 = tr.residual("cvr", "ltv", x)
    with torch.no_grad():
        proj = tr.projections[tr.key("cvr", "ltv")][0]
        proj.weight.mul_(10.0)
        proj.bias.mul_(10.0)
    torch.testing.assert_close(tr.residual("cvr", "ltv", x), r1, rtol=1e-3, atol=1e-3)


def test_modes_inputs():
    tr = LogitTransfer(TASK_NAMES, TRANSFER_EDGES, SOURCE_DIMS)
    preds, hiddens, _ = _inputs()
    torch.testing.assert_close(tr.transfer_input("churn", "inverse", preds, hiddens), 1 - preds["churn"])
    assert tr.transfer_input("ctr", "sequential", preds, hiddens) is preds["ctr"]
    assert tr.transfer_input("nba", "feature", preds, hiddens) is hiddens["nba"]


def test_transfer_strength_scales_residual():
    preds, hiddens, h = _inputs()
    torch.manual_seed(0)
    a = LogitTransfer(TASK_NAMES, TRANSFER_EDGES, SOURCE_DIMS, transfer_strength=0.5)
    torch.manual_seed(0)
    b = LogitTransfer(TASK_NAMES, TRANSFER_EDGES, SOURCE_DIMS, transfer_strength=1.0)
    torch.testing.assert_close(b("cvr", h, preds, hiddens) - h, 2 * (a("cvr", h, preds, hiddens) - h))


def test_transfer_bad_input():
    tr = LogitTransfer(TASK_NAMES, TRANSFER_EDGES, SOURCE_DIMS)
    preds, hiddens, h = _inputs()
    with pytest.raises(ValueError, match=r"h_expert has shape \[8, 16\]; expected \[B, 32\]"):
        tr("cvr", h[:, :16], preds, hiddens)
    with pytest.raises(ValueError, match="prediction of source task 'ctr' is missing"):
        tr("cvr", h, {}, hiddens)
    with pytest.raises(ValueError, match="inverse transfer needs a binary source"):
        LogitTransfer(TASK_NAMES, [("nba", "churn", "inverse")], SOURCE_DIMS)
    with pytest.raises(ValueError, match="source_dims lacks"):
        LogitTransfer(TASK_NAMES, [("ctr", "cvr", "sequential")], {})
    with pytest.raises(ValueError, match="cycle"):
        LogitTransfer(TASK_NAMES, [("ctr", "cvr", "sequential"), ("cvr", "ctr", "sequential")], SOURCE_DIMS)


# ---------------------------------------------------------------- issue 18: input contract defects
def test_topological_order_rejects_a_string_of_task_names():
    with pytest.raises(TypeError, match="tasks must be a sequence of task names; got 'ctr'"):
        topological_order("ctr", [])
    with pytest.raises(ValueError, match="tasks must be non-empty strings"):
        topological_order(["ctr", ""], [])


def test_transfer_rejects_names_whose_projection_keys_would_collide():
    # ("a__b", "c") and ("a", "b__c") would both use the key "a__b__c"
    with pytest.raises(ValueError, match="must not contain '__'"):
        LogitTransfer(["a__b", "c", "a", "b__c"], [("a__b", "c", "feature"), ("a", "b__c", "feature")], {})


def test_transfer_unknown_target_and_inverse_edge_out_of_range():
    lt = LogitTransfer(["churn", "retention"], [("churn", "retention", "inverse")], {"churn": 1}, expert_dim=4)
    h = torch.randn(3, 4)
    with pytest.raises(ValueError, match="target 'nope' is not a task of this transfer"):
        lt("nope", h, {})
    with pytest.raises(ValueError, match=r"preds\['churn'\] feeds an inverse edge and must lie in \[0, 1\]"):
        lt("retention", h, {"churn": torch.full((3, 1), 2.0)})
    assert lt("retention", h, {"churn": torch.full((3, 1), 0.5)}).shape == (3, 4)
