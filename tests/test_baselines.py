"""Contract tests for ple.baselines: comparison models, data adapters, the test-at-best-epoch reader."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ple
from ple.baselines import (
    CENSUS_PAPER_TASKS,
    MODEL_NAMES,
    SYNTHETIC_TASKS,
    EncodedModel,
    ScoreEachEpoch,
    SingleTaskModels,
    TabularEmbedding,
    at_best_epoch,
    build_model,
    census_encoder,
    census_tensor_data,
    mmoe_synthetic_splits,
)
from ple.cgc import PLE
from ple.checks import HyperparameterError, InputTypeError, ShapeError, TaskError, validation
from ple.fit import Task, TensorData, evaluate, fit
from ple.layers import count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- models


def test_tabular_embedding_shape_and_errors():
    enc = TabularEmbedding([3, 5, 2], num_numerical=4, embedding_dim=2)
    cat = torch.tensor([[0, 4, 1], [2, 0, 0]])
    out = enc(cat, torch.randn(2, 4))
    assert tuple(out.shape) == (2, enc.out_features) == (2, 3 * 2 + 4)
    # column c's code j uses its own row of the table
    assert not torch.equal(out[0, :2], enc(torch.tensor([[0, 0, 0]]), torch.zeros(1, 4))[0, 2:4])
    with pytest.raises(ValueError, match="outside"):
        enc(torch.tensor([[3, 0, 0]]), torch.randn(1, 4))
    with pytest.raises(ShapeError, match="categorical has shape"):
        enc(torch.tensor([[0, 0]]), torch.randn(1, 4))
    with pytest.raises(InputTypeError, match="int64"):
        enc(cat.float(), torch.randn(2, 4))
    with pytest.raises(HyperparameterError, match="embedding_dim"):
        TabularEmbedding([3], 1, embedding_dim=0)


def test_tabular_embedding_range_check_is_off_inside_the_training_step():
    """The code range check reads a device value; with validation off it is skipped."""
    enc = TabularEmbedding([3, 5], num_numerical=1)
    with validation(False), pytest.raises(IndexError):
        enc(torch.tensor([[0, 99]]), torch.randn(1, 1))  # the lookup itself fails, not the check


def test_build_model_matches_parameter_counts():
    counts = {n: count_parameters(build_model(n, 20, 2, expert_dim=8)) for n in MODEL_NAMES}
    ref = counts["mmoe"]
    assert all(abs(c - ref) / ref < 0.05 for c in counts.values()), counts
    assert isinstance(build_model("ple", 20, 2, expert_dim=8), PLE)
    with pytest.raises(HyperparameterError, match="name must be one of"):
        build_model("omoe2", 20, 2)


def test_build_model_is_reproducible_by_seed():
    x = torch.randn(3, 20)
    outs = []
    for _ in range(2):
        ple.seed_everything(3)
        outs.append(build_model("cgc", 20, 2, expert_dim=8)(x))
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_single_task_models_share_nothing():
    model = SingleTaskModels(6, 2, hidden_dims=(5,), tower_dims=(3,))
    preds = model(torch.randn(4, 6))
    grads = torch.autograd.grad(preds[0].sum(), list(model.nets[1].parameters()), allow_unused=True)
    assert all(g is None for g in grads)


def test_build_model_with_encoder():
    def encoder():
        return TabularEmbedding([3, 4], num_numerical=2, embedding_dim=2)

    width = encoder().out_features
    cat, num = torch.tensor([[0, 1], [2, 3]]), torch.randn(2, 2)
    shared = build_model("mmoe", width, 2, expert_dim=8, encoder=encoder)
    assert isinstance(shared, EncodedModel) and len(shared(cat, num)) == 2
    single = build_model("single_task", width, 2, expert_dim=8, encoder=encoder)
    assert isinstance(single, SingleTaskModels) and len(single.encoders) == 2  # one embedding per task
    preds = single(cat, num)
    grads = torch.autograd.grad(preds[0].sum(), list(single.encoders[1].parameters()), allow_unused=True)
    assert all(g is None for g in grads)  # task 0 never reaches task 1's embedding
    # counts are matched on the bodies: single-task's body matches MMoE's, plus its K encoders
    body = count_parameters(build_model("single_task", width, 2, expert_dim=8))
    assert count_parameters(single) == body + 2 * count_parameters(encoder())
    with pytest.raises(ShapeError, match="out_features"):
        SingleTaskModels(width + 1, 2, encoder=encoder)


# ---------------------------------------------------------------- data adapters


def test_mmoe_synthetic_splits():
    train, val, test = mmoe_synthetic_splits(30, 0.5, seed=1)
    assert (len(train), len(val), len(test)) == (30, 10, 10)
    assert set(train.targets) == set(SYNTHETIC_TASKS)
    assert train.inputs[0].shape == (30, 100) and train.targets["task_1"].shape == (30,)
    again = mmoe_synthetic_splits(30, 0.5, seed=1)[2]
    assert torch.equal(again.inputs[0], test.inputs[0])
    with pytest.raises(HyperparameterError, match="n_train"):
        mmoe_synthetic_splits(2, 0.5)


def _fake_census(n=12, seed=0):
    rng = np.random.default_rng(seed)
    part = lambda: SimpleNamespace(  # noqa: E731
        categorical=rng.integers(0, 3, size=(n, 2)),
        numerical=rng.standard_normal((n, 3)).astype(np.float32),
        labels={t: (rng.random(n) < 0.5).astype(np.float32) for t in ("income", "never_married", "education")},
    )
    return SimpleNamespace(train=part(), val=part(), test=part(), cat_cardinalities=[3, 3])


def test_census_adapters():
    splits = _fake_census()
    data = census_tensor_data(splits.train)
    assert isinstance(data, TensorData) and set(data.targets) == set(CENSUS_PAPER_TASKS)
    assert data.inputs[0].dtype == torch.long and data.inputs[1].dtype == torch.float32
    encoder = census_encoder(splits, embedding_dim=2)
    assert encoder().out_features == 2 * 2 + 3
    assert encoder()(*data.inputs).shape == (12, 7)
    with pytest.raises(TaskError, match="not Census labels"):
        census_tensor_data(splits.train, ("income", "spending"))


# ---------------------------------------------------------------- the test metric at the best epoch


def _regression_data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = {"a": 2.0 * x[:, 0], "b": x[:, 1] - x[:, 2]}
    labelled = torch.ones(n, dtype=torch.bool)
    labelled[::2] = False  # task b is labelled on every other row only, NaN elsewhere
    y["b"] = torch.where(labelled, y["b"], torch.full_like(y["b"], float("nan")))
    return TensorData(x, y, {"b": labelled})


def test_score_each_epoch_and_at_best_epoch():
    train, val, test = _regression_data(seed=0), _regression_data(seed=1), _regression_data(seed=2)
    tasks = [Task("a", "regression"), Task("b", "regression")]
    ple.seed_everything(0)
    model = PLE(5, 2, num_levels=2, expert_dims=(8,), tower_dims=(4,))
    score = ScoreEachEpoch(test)
    history = fit(model, train, val, tasks=tasks, epochs=5, batch_size=50, lr=1e-2, callbacks=[score])
    assert all("test_metric" in r for r in history.records)
    best = at_best_epoch(history)
    for t in ("a", "b"):  # the record of the task's best validation epoch, not the last one
        assert best[t] == history.records[history.best_epoch[t] - 1]["test_metric"][t]
    assert at_best_epoch(history, "val_metric") == history.best
    # the last record equals a fresh evaluation of the trained model (labelled rows only)
    last = evaluate(model, test, tasks)
    assert history.records[-1]["test_metric"] == pytest.approx(last)
    assert last["b"] < float(test.targets["b"][test.masks["b"]].std())  # it learned something
    with pytest.raises(TaskError, match="no 'other'"):
        at_best_epoch(history, "other")
    with pytest.raises(TaskError, match="key"):
        ScoreEachEpoch(test, key="val_metric")


def test_at_best_epoch_needs_validation():
    data = _regression_data()
    model = PLE(5, 2, num_levels=1, expert_dims=(4,), tower_dims=())
    history = fit(model, data, tasks=[Task("a", "regression"), Task("b", "regression")], epochs=1)
    with pytest.raises(TaskError, match="best validation epoch"):
        at_best_epoch(history)
