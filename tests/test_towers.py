"""ple.towers: TaskTower, GroupTaskExpertBasket, legacy ClusterTaskExpertBasket, TaskSide."""

from __future__ import annotations

import pytest
import torch

from ple.layers import count_parameters
from ple.tasks import TASK_GROUPS, TRANSFER_EDGES, active_tasks, get_task
from ple.towers import ClusterTaskExpertBasket, GroupTaskExpertBasket, TaskSide, TaskTower

ACTIVE = [t.name for t in active_tasks()]
GROUPS = {g: [t for t in ts if t in ACTIVE] for g, ts in TASK_GROUPS.items()}


def _probs(B, C=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(B, C, generator=g), dim=1)


# ---------------------------------------------------------------- TaskTower
@pytest.mark.parametrize("name", ACTIVE)
def test_tower_from_spec_shapes_and_activation(name):
    spec = get_task(name)
    tower = TaskTower.from_spec(spec).eval()
    h = torch.randn(7, 32)
    y = tower(h)
    assert y.shape == (7, spec.output_dim)
    if spec.task_type == "binary":
        assert ((y > 0) & (y < 1)).all()
        torch.testing.assert_close(y, torch.sigmoid(tower.logits(h)))
    elif spec.task_type == "multiclass":
        torch.testing.assert_close(y.sum(1), torch.ones(7))
    else:
        torch.testing.assert_close(y, tower.logits(h))


def test_tower_contrastive_embedding_is_128d():
    tower = TaskTower.from_spec(get_task("brand_prediction"))
    assert tower(torch.randn(3, 32)).shape == (3, 128)


def test_tower_structure_and_parameter_count():
    tower = TaskTower(12, "softmax")
    # Linear 32->64, LN 64, Linear 64->32, LN 32, Linear 32->12
    expected = (32 * 64 + 64) + 128 + (64 * 32 + 32) + 64 + (32 * 12 + 12)
    assert count_parameters(tower) == expected
    drops = [m.p for m in tower.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.2, 0.2]


def test_tower_dropout_only_in_training():
    torch.manual_seed(0)
    tower = TaskTower(1, None)
    h = torch.randn(64, 32)
    tower.eval()
    torch.testing.assert_close(tower(h), tower(h))
    tower.train()
    assert not torch.equal(tower(h), tower(h))


def test_tower_bad_input():
    with pytest.raises(ValueError, match="activation must be one of"):
        TaskTower(1, "relu")
    with pytest.raises(ValueError, match="softmax tower needs out_dim >= 2"):
        TaskTower(1, "softmax")
    tower = TaskTower(1, "sigmoid")
    with pytest.raises(ValueError, match=r"h_tower has shape"):
        tower(torch.randn(4, 16))
    with pytest.raises(ValueError, match="NaN"):
        tower(torch.full((4, 32), float("nan")))


# ---------------------------------------------------------------- baskets
def test_group_basket_parameter_count_matches_formula():
    basket = GroupTaskExpertBasket(GROUPS)
    G, K = 4, 16
    enc = (576 + 1) * 128 + 2 * 128 + (128 + 1) * 64 + 2 * 64
    assert count_parameters(basket) == G * enc + K * (64 + 1) * 32 + 20 * 32
    head = GroupTaskExpertBasket(GROUPS, cluster_input="head")
    enc_h = (544 + 1) * 128 + 2 * 128 + (128 + 1) * 64 + 2 * 64
    assert count_parameters(head) == G * enc_h + K * (96 + 1) * 32 + 20 * 32


def test_legacy_basket_parameter_count_matches_formula():
    basket = ClusterTaskExpertBasket(ACTIVE, hidden_dims=(16,))
    assert count_parameters(basket) == 16 * 20 * ((544 + 1) * 16 + 2 * 16 + (16 + 1) * 32)


@pytest.mark.parametrize("cluster_input", ["encoder", "head"])
def test_group_basket_shapes_and_gradients(cluster_input):
    basket = GroupTaskExpertBasket(GROUPS, input_dim=40, group_dims=(16, 8), cluster_input=cluster_input)
    x = torch.randn(5, 16, 40, requires_grad=True)
    out = basket(x, _probs(5))
    assert out.shape == (5, 16, 32)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in basket.parameters())


def test_group_basket_shares_encoder_within_a_group():
    torch.manual_seed(0)
    basket = GroupTaskExpertBasket(GROUPS, input_dim=12, group_dims=(8, 4)).eval()
    x = torch.randn(3, 1, 12).expand(3, 16, 12).contiguous()  # same input row for every task
    p = _probs(3)
    with torch.no_grad():
        basket.heads.weight.copy_(basket.heads.weight[:1].expand_as(basket.heads.weight))
        basket.heads.bias.copy_(basket.heads.bias[:1].expand_as(basket.heads.bias))
        out = basket(x, p)
    idx = {t: i for i, t in enumerate(basket.task_names)}
    for tasks in GROUPS.values():  # same encoder + same head + same input -> same output
        for t in tasks[1:]:
            torch.testing.assert_close(out[:, idx[t]], out[:, idx[tasks[0]]])
    assert not torch.allclose(out[:, idx["ctr"]], out[:, idx["churn"]])  # different groups


def test_group_basket_task_order_argument():
    order = list(reversed(ACTIVE))
    basket = GroupTaskExpertBasket(GROUPS, input_dim=8, group_dims=(4,), task_names=order)
    assert basket.task_names == tuple(order)
    with pytest.raises(ValueError, match="are not the tasks of task_groups"):
        GroupTaskExpertBasket(GROUPS, task_names=order[:-1])


def test_hard_routing_equals_one_hot_soft_routing():
    torch.manual_seed(0)
    basket = GroupTaskExpertBasket(GROUPS, input_dim=10, group_dims=(8,)).eval()
    x, p = torch.randn(4, 16, 10), _probs(4)
    ids = p.argmax(1)
    one_hot = torch.nn.functional.one_hot(ids, 20).float()
    torch.testing.assert_close(basket(x, ids), basket(x, one_hot))


def test_legacy_basket_routes_by_cluster():
    torch.manual_seed(0)
    basket = ClusterTaskExpertBasket(ACTIVE, input_dim=10, hidden_dims=(6,)).eval()
    x = torch.randn(1, 16, 10).expand(2, 16, 10)
    out = basket(x, torch.tensor([3, 7]))
    assert not torch.allclose(out[0], out[1])  # same input, different clusters
    torch.testing.assert_close(basket(x, torch.tensor([3, 3]))[1], out[0])
    p = _probs(2)
    torch.testing.assert_close(basket(x, p), basket(x, p.argmax(1)))


def test_basket_bad_input():
    basket = GroupTaskExpertBasket(GROUPS, input_dim=10, group_dims=(8,))
    with pytest.raises(ValueError, match=r"x has shape \[2, 16, 12\]; expected \[B, 16, 10\]"):
        basket(torch.randn(2, 16, 12), _probs(2))
    with pytest.raises(ValueError, match="contains NaN"):
        basket(torch.full((2, 16, 10), float("nan")), _probs(2))
    with pytest.raises(ValueError, match="probability vectors"):
        basket(torch.randn(2, 16, 10), torch.ones(2, 20))
    with pytest.raises(ValueError, match="cluster_input must be"):
        GroupTaskExpertBasket(GROUPS, cluster_input="gate")
    with pytest.raises(ValueError, match="a task appears in two groups"):
        GroupTaskExpertBasket({"a": ["ctr"], "b": ["ctr"]})
    legacy = ClusterTaskExpertBasket(ACTIVE, input_dim=10)
    with pytest.raises(ValueError, match=r"cluster ids must lie in \[0, 20\)"):
        legacy(torch.randn(2, 16, 10), torch.tensor([0, 25]))


# ---------------------------------------------------------------- TaskSide
def _targets(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in active_tasks():
        if s.task_type == "binary":
            out[s.name] = (torch.rand(B, generator=g) < 0.3).float()
        elif s.task_type in ("multiclass", "contrastive"):
            out[s.name] = torch.randint(0, s.num_classes, (B,), generator=g)
        else:
            out[s.name] = torch.randn(B, s.output_dim, generator=g)
    return out


@pytest.mark.parametrize("basket", ["group", "legacy"])
def test_task_side_end_to_end(basket):
    torch.manual_seed(0)
    side = TaskSide(active_tasks(), input_dim=24, basket=basket, group_dims=(16, 8), transfer_edges=TRANSFER_EDGES)
    x = torch.randn(6, 16, 24)
    preds, hiddens = side(x, _probs(6), return_hidden=True)
    assert set(preds) == set(ACTIVE) and set(hiddens) == set(ACTIVE)
    for s in active_tasks():
        assert preds[s.name].shape == (6, s.output_dim)
    losses = side.task_losses(preds, _targets(6))
    assert set(losses) == set(ACTIVE)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in side.parameters() if p.grad is not None)
    assert side.item_embeddings["brand_prediction"].shape == (128, 128)


def test_task_side_reproducible_by_seed():
    def run():
        torch.manual_seed(3)
        side = TaskSide(active_tasks(), input_dim=8, group_dims=(8,), transfer_edges=TRANSFER_EDGES).eval()
        return side(torch.ones(2, 16, 8), _probs(2))["cvr"]

    torch.testing.assert_close(run(), run())


def test_task_side_transfer_changes_only_targets():
    torch.manual_seed(0)
    on = TaskSide(active_tasks(), input_dim=8, group_dims=(8,), transfer_edges=TRANSFER_EDGES).eval()
    off = TaskSide(active_tasks(), input_dim=8, group_dims=(8,), transfer_edges=()).eval()
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("transfer.")})
    x, p = torch.randn(3, 16, 8), _probs(3)
    a, b = on(x, p), off(x, p)
    targets = {t for _, t, _ in TRANSFER_EDGES}
    for name in ACTIVE:
        assert torch.allclose(a[name], b[name]) == (name not in targets)


def test_task_side_bad_input():
    side = TaskSide(active_tasks(), input_dim=8, group_dims=(8,))
    with pytest.raises(ValueError, match=r"x has shape \[2, 15, 8\]"):
        side(torch.randn(2, 15, 8), _probs(2))
    preds = side(torch.randn(2, 16, 8), _probs(2))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        side.task_losses(preds, {"nope": torch.zeros(2)})
    with pytest.raises(ValueError, match="basket must be"):
        TaskSide(active_tasks(), basket="mlp")


def test_group_basket_fast_and_general_paths_agree():
    torch.manual_seed(0)
    grouped = GroupTaskExpertBasket(GROUPS, input_dim=10, group_dims=(8,)).eval()
    assert grouped._contiguous
    order = list(reversed(grouped.task_names))
    shuffled = GroupTaskExpertBasket(GROUPS, input_dim=10, group_dims=(8,), task_names=order).eval()
    assert not shuffled._contiguous
    shuffled.load_state_dict(grouped.state_dict())
    perm = [grouped.task_names.index(t) for t in order]
    with torch.no_grad():  # the heads follow the task order
        shuffled.heads.weight.copy_(grouped.heads.weight[perm])
        shuffled.heads.bias.copy_(grouped.heads.bias[perm])
    x, p = torch.randn(3, 16, 10), _probs(3)
    torch.testing.assert_close(shuffled(x[:, perm], p), grouped(x, p)[:, perm])


def test_legacy_basket_with_few_clusters_present_and_gradients():
    torch.manual_seed(0)
    basket = ClusterTaskExpertBasket(ACTIVE, input_dim=10, hidden_dims=(4,), num_clusters=20)
    x = torch.randn(5, 16, 10, requires_grad=True)
    ids = torch.tensor([3, 3, 17, 3, 17])  # two of twenty clusters present, unsorted
    out = basket(x, ids)
    for b in range(5):  # each sample equals the basket run on that sample alone
        torch.testing.assert_close(out[b], basket(x[b : b + 1], ids[b : b + 1])[0])
    out.sum().backward()
    g = basket.weights[0].grad
    assert g[:, [3, 17]].abs().sum() > 0 and g[:, [0, 1, 2, 4]].abs().sum() == 0


def test_task_side_fit_tasks_train_through_the_engine():
    from ple.fit import TensorData, fit, predict

    specs = [get_task(t) for t in ("ctr", "cvr", "life_stage", "ltv", "brand_prediction")]
    torch.manual_seed(0)
    side = TaskSide(specs, input_dim=8, group_dims=(8,), transfer_edges=[("ctr", "cvr", "sequential")])
    tasks = side.fit_tasks()
    assert [t.name for t in tasks] == [s.name for s in specs]
    assert [t.kind for t in tasks] == [s.task_type for s in specs]
    N = 64
    x, p = torch.randn(N, 5, 8), _probs(N)
    targets = {"ctr": (torch.rand(N) < 0.3).float(), "cvr": (torch.rand(N) < 0.2).float(),
               "life_stage": torch.randint(0, 6, (N,)), "ltv": torch.randn(N),
               "brand_prediction": torch.randint(0, 128, (N,))}
    data = TensorData((x, p), targets)
    hist = fit(side, data, data, tasks=tasks, epochs=2, batch_size=16)
    assert set(hist.records[-1]["val_metric"]) == set(targets)
    out = predict(side, (x, p), tasks=tasks)
    scores = tasks[-1].transform(out["brand_prediction"])
    assert scores.shape == (N, 128)  # hit@k reads the similarity to every item
    # the engine's per-sample loss is the task's loss with reduction "none"
    from ple.losses import task_loss

    per = tasks[0].per_sample_loss(out["ctr"], targets["ctr"])
    torch.testing.assert_close(per, task_loss("ctr", out["ctr"], targets["ctr"], reduction="none"))


# ---------------------------------------------------------------- issue 18: input contract defects
def test_group_basket_empty_batch_gives_an_empty_output():
    basket = GroupTaskExpertBasket(GROUPS, input_dim=8, group_dims=(8, 4), expert_dim=4)
    out = basket(torch.zeros(0, len(ACTIVE), 8), _probs(0))
    assert out.shape == (0, len(ACTIVE), 4)


def test_legacy_basket_rejects_nan_posteriors():
    basket = ClusterTaskExpertBasket(["a", "b"], input_dim=3, expert_dim=2, num_clusters=4)
    p = torch.full((2, 4), 0.25)
    p[0, 1] = float("nan")
    with pytest.raises(ValueError, match="clusters contains NaN"):
        basket(torch.randn(2, 2, 3), p)
