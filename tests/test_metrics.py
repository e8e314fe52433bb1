"""ple.metrics: one metric API per task kind, chance levels and the normalised oracle gap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, mean_squared_error, roc_auc_score, top_k_accuracy_score

from ple import metrics as M
from ple.checks import HyperparameterError, InputTypeError, NonFiniteError, ShapeError, TaskError
from ple.tasks import ACTIVE_TASK_NAMES, get_task

RNG = np.random.default_rng(0)
N, C = 200, 12
Y_BIN = RNG.integers(0, 2, N)
S_BIN = RNG.integers(0, 10, N) / 10.0            # ties on purpose
Y_CLS = RNG.integers(0, C, N)
S_CLS = RNG.standard_normal((N, C))
Y_REG, P_REG = RNG.standard_normal(N), RNG.standard_normal(N)


def test_names_and_directions():
    assert M.METRICS == {"binary": "auc", "multiclass": "accuracy", "regression": "rmse",
                         "contrastive": "hit@10"}
    assert [M.metric_name(k) for k in M.METRICS] == ["auc", "accuracy", "rmse", "hit@10"]
    assert M.metric_name("contrastive", k=5) == "hit@5"
    assert [M.higher_is_better(k) for k in M.METRICS] == [True, True, False, True]
    assert M.task_kind("brand_prediction") == "contrastive" and M.task_kind("ltv") == "regression"


def test_against_sklearn():
    assert M.metric("binary", Y_BIN, S_BIN) == pytest.approx(roc_auc_score(Y_BIN, S_BIN), abs=1e-15)
    assert M.metric("multiclass", Y_CLS, S_CLS) == accuracy_score(Y_CLS, S_CLS.argmax(1))
    for k in (1, 3, 10):
        assert M.metric("contrastive", Y_CLS, S_CLS, k=k) == pytest.approx(
            top_k_accuracy_score(Y_CLS, S_CLS, k=k, labels=np.arange(C)), abs=1e-15)
    assert M.metric("regression", Y_REG, P_REG) == pytest.approx(
        np.sqrt(mean_squared_error(Y_REG, P_REG)), rel=1e-12)


def test_hand_computed_cases():
    # AUC: 3 positives x 2 negatives; pairs (0.9, 0.1) (0.9, 0.4) (0.4, 0.1) (0.4, 0.4 tie) (0.2, 0.1)
    # (0.2, 0.4) -> 1 + 1 + 1 + 0.5 + 1 + 0 = 4.5 of 6
    assert M.metric("binary", [1, 1, 1, 0, 0], [0.9, 0.4, 0.2, 0.1, 0.4]) == 0.75
    assert M.metric("binary", [0, 1, 1, 0], [0.1, 0.9, 0.8, 0.2]) == 1.0
    probs = np.full((2, 128), 0.001)
    probs[0, 5] = 0.5
    probs[1, :10] = 0.05                             # brand 127 is not among the top ten
    assert M.task_metric("brand_prediction", [5, 127], probs) == 0.5
    assert M.metric("multiclass", [2, 0], [[0.1, 0.2, 0.7], [0.1, 0.8, 0.1]]) == 0.5
    assert M.metric("regression", [0.0, 0.0], [3.0, 4.0]) == pytest.approx(np.sqrt(12.5))
    assert M.metric("regression", np.zeros((2, 3)), np.ones((2, 3))) == 1.0     # [N, D] outputs
    assert M.metric("contrastive", [0, 1], np.eye(3)[[2, 2]], k=3) == 1.0    # k >= C: every hit
    # ties broken at random, in expectation: a constant score hits k / C
    assert M.metric("contrastive", Y_CLS, np.zeros((N, C)), k=3) == pytest.approx(3 / C)
    assert M.metric("contrastive", [0], [[1.0, 1.0, 0.0, 2.0]], k=2) == 0.5   # 1 above, 1 tied
    assert M.metric("contrastive", [0], [[1.0, 1.0, 1.0, 2.0]], k=2) == pytest.approx(1 / 3)


def test_hit_at_k_loop_and_binary_column_shapes():
    for k in (1, 2, 5):
        ref = np.mean([(S_CLS[i] > S_CLS[i, Y_CLS[i]]).sum() < k for i in range(N)])
        assert M.metric("contrastive", Y_CLS, S_CLS, k=k) == ref
    assert M.metric("binary", Y_BIN[:, None], S_BIN[:, None]) == M.metric("binary", Y_BIN, S_BIN)
    assert M.metric("regression", Y_REG, P_REG[:, None]) == M.metric("regression", Y_REG, P_REG)


def test_torch_inputs_any_dtype_and_device():
    ref = M.metric("binary", Y_BIN, S_BIN)
    assert M.metric("binary", torch.tensor(Y_BIN), torch.tensor(S_BIN)) == ref
    logits = torch.tensor(S_CLS, requires_grad=True) * 2.0         # a tensor that needs grad
    assert M.metric("multiclass", torch.tensor(Y_CLS), logits) == M.metric("multiclass", Y_CLS, S_CLS)
    half = torch.tensor(S_BIN, dtype=torch.bfloat16)
    assert M.metric("binary", Y_BIN, half) == pytest.approx(ref, abs=1e-12)   # 0.1 steps survive bf16
    labels = {"ctr": torch.tensor(Y_BIN, dtype=torch.float32)}
    assert M.evaluate(labels, {"ctr": torch.tensor(S_BIN)}) == {"ctr": ref}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors():
    dev = torch.device("cuda")
    y, s = torch.tensor(Y_CLS, device=dev), torch.tensor(S_CLS, device=dev)
    assert M.metric("contrastive", y, s) == M.metric("contrastive", Y_CLS, S_CLS)
    assert M.task_metric("nba", y, s) == M.metric("multiclass", Y_CLS, S_CLS)
    assert M.task_chance("nba", y) == M.chance("multiclass", Y_CLS, C)


def test_chance_is_the_best_constant():
    assert M.chance("binary", Y_BIN) == 0.5 == M.metric("binary", Y_BIN, np.zeros(N))
    best = max(np.mean(Y_CLS == c) for c in range(C))
    assert M.chance("multiclass", Y_CLS) == best
    best3 = max(np.isin(Y_CLS, top).mean() for top in itertools.combinations(range(C), 3))
    assert M.chance("contrastive", Y_CLS, C, k=3) == pytest.approx(best3, abs=1e-15)
    assert M.chance("regression", Y_REG) == pytest.approx(Y_REG.std(), rel=1e-12)
    y2 = np.stack([Y_REG, 10 + 3 * P_REG], axis=1)                 # per-output means
    assert M.chance("regression", y2) == pytest.approx(
        M.metric("regression", y2, np.broadcast_to(y2.mean(0), y2.shape)), rel=1e-12)
    assert M.task_chance("nba", np.array([1, 1, 2, 3])) == 0.5


def test_oracle_gap():
    assert M.oracle_gap(0.8, 0.8, 0.5, "binary") == 0.0
    assert M.oracle_gap(0.5, 0.8, 0.5, "binary") == 1.0
    assert M.oracle_gap(0.65, 0.8, 0.5, "binary") == pytest.approx(0.5)
    assert M.oracle_gap(1.5, 1.0, 2.0, "regression") == pytest.approx(0.5)  # lower is better
    assert M.oracle_gap(2.5, 1.0, 2.0, "regression") == pytest.approx(1.5)  # worse than chance
    np.testing.assert_allclose(M.oracle_gap(np.array([0.8, 0.5]), 0.8, 0.5, "binary"), [0.0, 1.0])
    with pytest.raises(ValueError, match="strictly better than chance"):
        M.oracle_gap(0.6, 0.5, 0.5, "binary")
    with pytest.raises(ValueError, match="strictly better than chance"):
        M.oracle_gap(1.0, 2.0, 1.0, "regression")               # oracle worse than chance


def test_task_api_and_evaluate():
    labels = {"ctr": Y_BIN.astype(np.float32), "nba": Y_CLS, "engagement": Y_REG}
    preds = {"ctr": S_BIN, "nba": S_CLS, "engagement": P_REG}
    out = M.evaluate(labels, preds)
    assert out == {"ctr": M.metric("binary", Y_BIN, S_BIN), "nba": M.metric("multiclass", Y_CLS, S_CLS),
                   "engagement": M.metric("regression", Y_REG, P_REG)}
    idx = np.arange(0, N, 2)
    assert M.evaluate(labels, preds, idx)["nba"] == M.metric("multiclass", Y_CLS[idx], S_CLS[idx])
    for t in ACTIVE_TASK_NAMES:
        assert M.task_kind(t) == get_task(t).task_type


@pytest.mark.parametrize("call, exc, match", [
    (lambda: M.metric("ranking", Y_BIN, S_BIN), HyperparameterError,
     r"kind must be one of 'binary', 'multiclass', 'regression', 'contrastive'; got 'ranking'"),
    (lambda: M.metric("binary", Y_BIN, S_BIN[:-1]), ShapeError, r"y_pred has 199 rows and y_true 200"),
    (lambda: M.metric("binary", Y_BIN, np.stack([S_BIN, S_BIN], 1)), ShapeError, r"y_pred has shape \[200, 2\]"),
    (lambda: M.metric("binary", Y_BIN + 1, S_BIN), ValueError, "values other than 0 and 1"),
    (lambda: M.metric("binary", np.ones(4), np.arange(4.0)), ValueError, "only the class 1; AUC needs both"),
    (lambda: M.metric("binary", Y_BIN, np.where(Y_BIN, np.nan, 0.0)), NonFiniteError, "y_pred holds .* NaN or inf"),
    (lambda: M.metric("multiclass", Y_CLS, S_CLS[:, :5]), ValueError, r"label 11; expected labels in \[0, 5\)"),
    (lambda: M.metric("multiclass", Y_CLS + 0.5, S_CLS), ValueError, "non-integer"),
    (lambda: M.metric("multiclass", Y_CLS, S_CLS[:, 0]), ShapeError, r"expected class scores \[N, C\]"),
    (lambda: M.metric("contrastive", Y_CLS, S_CLS, k=0), HyperparameterError, "k must be an int >= 1; got 0"),
    (lambda: M.metric("regression", Y_REG, np.zeros((N, 2))), ShapeError, r"expected the shape of y_true \[200\]"),
    (lambda: M.metric("regression", [], []), ShapeError, "y_true is empty"),
    (lambda: M.task_metric("nba", Y_CLS, np.zeros((N, 8))), ShapeError,
     r"expected \[N, 12\] \(12 classes of task 'nba'\)"),
    (lambda: M.task_metric("clicks", Y_BIN, S_BIN), ValueError, "unknown task 'clicks'"),
    (lambda: M.chance("multiclass", Y_CLS, 5), ValueError, r"label 11; expected labels in \[0, 5\)"),
    (lambda: M.task_chance("nba", np.array([-1, 2])), ValueError, "label -1"),
    (lambda: M.chance("multiclass", Y_CLS, 0), HyperparameterError, "num_classes must be an int >= 1; got 0"),
    (lambda: M.evaluate({"ctr": Y_BIN}, {"cvr": S_BIN}), TaskError, r"task\(s\) \['cvr'\] that labels lacks"),
    (lambda: M.metric("binary", np.array(["a", "b"]), [0.1, 0.2]), InputTypeError, "dtype <U1; expected numbers"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
