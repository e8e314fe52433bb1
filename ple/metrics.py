"""ple.metrics -- generated from book/00_customer_world.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['METRICS', 'metric_name', 'higher_is_better', 'metric', 'chance', 'oracle_gap', 'task_kind', 'task_metric', 'task_chance', 'evaluate']

from collections.abc import Mapping

import numpy as np
import torch

from ple.checks import InputTypeError, NonFiniteError, ShapeError, TaskError, check_choice, check_int
from ple.tasks import get_task

# The metric of each task kind (eq-metrics): AUC, accuracy, RMSE, hit@k (k = 10 by default).
METRICS: dict[str, str] = {"binary": "auc", "multiclass": "accuracy", "regression": "rmse",
                           "contrastive": "hit@10"}


def _check_kind(kind: str) -> str:
    return check_choice("kind", kind, tuple(METRICS))


def _check_k(k) -> int:
    return check_int("k", k, 1)


def metric_name(kind: str, *, k: int = 10) -> str:
    """Name of the metric of task kind `kind`: "auc", "accuracy", "rmse" or "hit@k"."""
    _check_kind(kind)
    return f"hit@{_check_k(k)}" if kind == "contrastive" else METRICS[kind]


def higher_is_better(kind: str) -> bool:
    """True for AUC, accuracy and hit@k; False for RMSE."""
    return _check_kind(kind) != "regression"


def _as_numpy(x, name: str) -> np.ndarray:
    """numpy view of `x` (numpy, list, or a torch tensor on any device, detached, moved to CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()                       # bf16 has no numpy dtype; fp16 is too coarse
        return x.numpy()
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise InputTypeError(f"{name} has dtype {x.dtype}; expected numbers")
    return x


def _labels(y: np.ndarray, name: str, num_classes: int | None) -> np.ndarray:
    """Integer class labels [N] in [0, num_classes) (num_classes None: any label >= 0)."""
    if y.ndim != 1:
        raise ShapeError(f"{name} has shape {list(y.shape)}; expected class indices [N]")
    if not np.isfinite(y).all() or (y != np.round(y)).any():
        raise ValueError(f"{name} holds non-integer values; expected class indices [N]")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"{name} holds the label {int(y.min())}; expected class indices >= 0")
    if num_classes is not None and y.size and y.max() >= num_classes:
        raise ValueError(f"{name} holds the label {int(y.max())}; expected labels in "
                         f"[0, {num_classes}) for {num_classes} classes")
    return y


def _binary_labels(y: np.ndarray, name: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ShapeError(f"{name} has shape {list(y.shape)}; expected binary labels [N]")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} holds values other than 0 and 1; expected binary labels [N]")
    return y.astype(np.int64)


def _finite(x: np.ndarray, name: str) -> np.ndarray:
    if x.size == 0:
        raise ShapeError(f"{name} is empty; expected at least one sample")
    if not np.isfinite(x).all():
        raise NonFiniteError(f"{name} holds {int((~np.isfinite(x)).sum())} NaN or inf value(s)")
    return x


def _hit_at_k(y: np.ndarray, scores: np.ndarray, k: int, chunk: int = 1 << 16) -> float:
    """hit@k of eq-metrics: per row min(1, max(0, (k - g) / (e + 1))), g the classes scoring
    above the true one, e the others tied with it (ties broken at random, in expectation)."""
    total = 0.0
    for a in range(0, len(y), chunk):                  # bounded memory: [chunk, C] at a time
        s, t = scores[a:a + chunk], y[a:a + chunk]
        true = np.take_along_axis(s, t[:, None], axis=1)
        above, tied = (s > true).sum(axis=1), (s == true).sum(axis=1) - 1
        total += np.clip((k - above) / (tied + 1.0), 0.0, 1.0).sum()
    return float(total / len(y))


def metric(kind: str, y_true, y_pred, *, k: int = 10) -> float:
    """The metric of task kind `kind` of predictions `y_pred` against labels `y_true` (eq-metrics).

    - "binary": ROC AUC (sklearn); y_true 0/1 [N], y_pred scores [N] or [N, 1] (probabilities
      or logits: only their order matters).
    - "multiclass": accuracy of the arg-max class (sklearn); y_true int [N] in [0, C),
      y_pred scores [N, C].
    - "contrastive": hit@k, the share of rows whose true class is among the k highest scores,
      ties broken at random in expectation (without ties, sklearn's top_k_accuracy_score; a
      constant prediction scores k / C); y_true int [N] in [0, C), y_pred scores [N, C].
    - "regression": RMSE over every entry; y_pred of the shape of y_true ([N] or [N, D]; [N, 1]
      against [N] is accepted).

    Inputs may be numpy arrays or torch tensors on any device. Errors name the argument:
    ShapeError for a wrong shape, length or number of classes, NonFiniteError for NaN or inf,
    InputTypeError for non-numbers, HyperparameterError for an unknown kind or a bad k, and
    ValueError for a label out of range or a binary y_true with one class only (AUC undefined).
    """
    from sklearn.metrics import accuracy_score, roc_auc_score

    _check_kind(kind)
    k = _check_k(k)
    yt = _finite(_as_numpy(y_true, "y_true"), "y_true")
    yp = _finite(_as_numpy(y_pred, "y_pred"), "y_pred")
    if yp.shape[0] != yt.shape[0]:
        raise ShapeError(f"y_pred has {yp.shape[0]} rows and y_true {yt.shape[0]}; expected "
                         "one prediction per label")
    if kind == "binary":
        yt = _binary_labels(yt, "y_true")
        if yp.ndim == 2 and yp.shape[1] == 1:
            yp = yp[:, 0]
        if yp.ndim != 1:
            raise ShapeError(f"y_pred has shape {list(yp.shape)}; expected scores [N] or [N, 1] "
                             "for a binary task")
        if yt.min() == yt.max():
            raise ValueError(f"y_true holds only the class {int(yt[0])}; AUC needs both classes")
        return float(roc_auc_score(yt, yp))
    if kind == "regression":
        yt, yp = yt.astype(np.float64, copy=False), yp.astype(np.float64, copy=False)
        if yp.shape != yt.shape and yp.shape == (*yt.shape, 1):
            yp = yp[..., 0]
        if yp.shape != yt.shape:
            raise ShapeError(f"y_pred has shape {list(yp.shape)}; expected the shape of y_true "
                             f"{list(yt.shape)} for a regression task")
        return float(np.sqrt(np.mean((yp - yt) ** 2)))
    if yp.ndim != 2:
        raise ShapeError(f"y_pred has shape {list(yp.shape)}; expected class scores [N, C] "
                         f"for a {kind} task")
    n_classes = yp.shape[1]
    yt = _labels(yt, "y_true", n_classes)
    if kind == "multiclass":
        return float(accuracy_score(yt, yp.argmax(axis=1)))
    return _hit_at_k(yt, yp, k)


def chance(kind: str, y_true, num_classes: int | None = None, *, k: int = 10) -> float:
    """The metric of the best prediction that ignores the inputs, on the labels `y_true`.

    AUC 0.5 (every constant); the largest class frequency (accuracy); the sum of the k largest
    class frequencies (hit@k); the RMSE of the per-output mean, i.e. the labels' standard
    deviation (regression). `num_classes` bounds the labels (ValueError for one out of range).
    """
    _check_kind(kind)
    k = _check_k(k)
    y = _finite(_as_numpy(y_true, "y_true"), "y_true")
    if kind == "binary":
        _binary_labels(y, "y_true")
        return 0.5
    if kind == "regression":
        y = y.astype(np.float64)
        return float(np.sqrt(np.mean((y - y.mean(axis=0)) ** 2)))
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, 1)
    y = _labels(y, "y_true", num_classes)
    freq = np.sort(np.bincount(y))[::-1] / y.size
    return float(freq[0] if kind == "multiclass" else freq[:k].sum())


def oracle_gap(value, oracle: float, chance: float, kind: str):
    """Normalised gap to the oracle: (oracle - value) / (oracle - chance) (eq-oracle-gap).

    0 at the oracle's metric, 1 at chance, whatever the metric's direction (for RMSE both the
    numerator and the denominator change sign); below 0 beats the oracle (sampling noise),
    above 1 is worse than chance. `value` may be a float (-> float) or an array (e.g. one
    value per seed). ValueError when the oracle is not strictly better than chance: the gap
    is then undefined.
    """
    sign = 1.0 if higher_is_better(kind) else -1.0
    oracle, chance = float(oracle), float(chance)
    if not (np.isfinite(oracle) and np.isfinite(chance)) or not sign * (oracle - chance) > 0:
        raise ValueError(f"oracle is {oracle!r} and chance {chance!r} for a {kind} task "
                         f"({METRICS[kind]}, {'higher' if sign > 0 else 'lower'} is better); "
                         "expected an oracle strictly better than chance")
    gap = (oracle - np.asarray(value, dtype=np.float64)) / (oracle - chance)
    return float(gap) if gap.ndim == 0 else gap


def task_kind(task: str) -> str:
    """The kind ("binary", "multiclass", "regression", "contrastive") of a registered task."""
    return get_task(task).task_type


def task_metric(task: str, y_true, y_pred, *, k: int = 10) -> float:
    """`metric` of a registered task (ple.tasks): its kind, and for class scores its number of
    classes (ValueError when y_pred has another)."""
    spec = get_task(task)
    if spec.task_type in ("multiclass", "contrastive"):
        shape = tuple(getattr(y_pred, "shape", np.shape(y_pred)))
        if len(shape) != 2 or shape[1] != spec.num_classes:
            raise ShapeError(f"y_pred has shape {list(shape)}; expected [N, {spec.num_classes}] "
                             f"({spec.num_classes} classes of task {task!r})")
    return metric(spec.task_type, y_true, y_pred, k=k)


def task_chance(task: str, y_true, *, k: int = 10) -> float:
    """`chance` of a registered task, labels bounded by its number of classes."""
    spec = get_task(task)
    return chance(spec.task_type, y_true, spec.num_classes, k=k)


def evaluate(labels: Mapping[str, object], predictions: Mapping[str, object],
             index=None) -> dict[str, float]:
    """task -> `task_metric` of `predictions[task]` against `labels[task]`, for every task of
    `predictions` (on the rows `index`, if given: an index array, a boolean mask or a slice)."""
    missing = sorted(set(predictions) - set(labels))
    if missing:
        raise TaskError(f"predictions has task(s) {missing} that labels lacks")
    sel = slice(None) if index is None else index
    return {t: task_metric(t, _as_numpy(labels[t], f"labels[{t!r}]")[sel],
                           _as_numpy(p, f"predictions[{t!r}]")[sel])
            for t, p in predictions.items()}
