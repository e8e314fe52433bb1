"""ple.fit -- generated from book/ple1_mtl_to_mmoe.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['Task', 'binary_loss', 'multiclass_loss', 'regression_loss', 'masked_mean', 'Batch', 'TensorData', 'Callback', 'FitState', 'WeightedSum', 'History', 'fit', 'predict', 'evaluate', 'replica_name', 'Replicas']

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ple import checks, metrics
from ple.checks import (
    HyperparameterError,
    InputTypeError,
    ShapeError,
    TaskError,
    check_choice,
    check_float,
    check_int,
    check_range,
    check_unique,
)
from ple.tasks import TASK_TYPES


def _default_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    return {"binary": binary_loss, "multiclass": multiclass_loss, "regression": regression_loss}.get(kind)


def _default_output(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if kind == "binary":
        return lambda pred: torch.sigmoid(pred.reshape(pred.shape[0], -1)[:, 0] if pred.dim() > 1 else pred)
    if kind == "multiclass":
        return lambda pred: torch.softmax(pred, dim=-1)
    return lambda pred: pred


@dataclass(frozen=True)
class Task:
    """One task of a multi-task run: its name, kind, loss, metric and output map.

    kind: one of `ple.tasks.TASK_TYPES` ("binary", "multiclass", "regression", "contrastive").
    loss(pred, target) -> per-sample loss [B]; default by kind from the model's raw output:
    `binary_loss` (BCE with logits), `multiclass_loss` (cross-entropy over logits [B, C], integer
    targets [B]), `regression_loss` (squared error, averaged over output columns). A contrastive
    task must bring its own loss.
    metric: None = `ple.metrics.metric(kind, ...)` (AUC / accuracy / RMSE / hit@10), or a callable
    (y_true, y_pred) -> float on CPU tensors; `higher_is_better` says which way it improves
    (None: `ple.metrics.higher_is_better(kind)` for the default metric, True for a callable).
    output(pred) maps the model's output to what the metric reads; default sigmoid (binary, [B]),
    softmax (multiclass), identity otherwise.
    """

    name: str
    kind: str
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    metric: Callable[[Any, Any], float] | None = None
    output: Callable[[torch.Tensor], torch.Tensor] | None = None
    higher_is_better: bool | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TaskError(f"Task.name must be a non-empty str; got {self.name!r}")
        check_choice(f"Task {self.name!r}: kind", self.kind, TASK_TYPES)
        if self.loss is None and _default_loss(self.kind) is None:
            raise TaskError(f"Task {self.name!r}: a {self.kind} task has no default loss; pass loss=")
        if self.metric is not None and not callable(self.metric):
            raise TaskError(f"Task {self.name!r}: metric must be None or a callable; got {self.metric!r}")

    def per_sample_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task's loss for each sample, [B]."""
        loss = (self.loss or _default_loss(self.kind))(pred, target)
        if loss.dim() != 1 or loss.shape[0] != pred.shape[0]:
            raise ShapeError(
                f"task {self.name!r}: loss returned shape {list(loss.shape)}; expected [B] with "
                f"B = {pred.shape[0]} (one loss per sample)"
            )
        return loss

    def transform(self, pred: torch.Tensor) -> torch.Tensor:
        """What the metric reads: `output(pred)`, or the default for the kind."""
        return (self.output or _default_output(self.kind))(pred)

    def score(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
        """The task's metric on CPU tensors (labelled samples only)."""
        if self.metric is not None:
            return float(self.metric(y_true, y_pred))
        return float(metrics.metric(self.kind, y_true, y_pred))

    @property
    def larger_is_better(self) -> bool:
        """Whether a larger metric value is better (for best-epoch selection)."""
        if self.higher_is_better is not None:
            return bool(self.higher_is_better)
        return True if self.metric is not None else metrics.higher_is_better(self.kind)


def _paired(pred: torch.Tensor, target: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """pred and target as [B, C] with equal shapes; [B] and [B, 1] are interchangeable."""
    p = pred.reshape(pred.shape[0], -1) if pred.dim() != 2 else pred
    t = target.reshape(target.shape[0], -1) if target.dim() != 2 else target
    if p.shape != t.shape:
        raise ShapeError(
            f"{task}: prediction has shape {list(pred.shape)} and target {list(target.shape)}; "
            "expected the same shape (or [B] against [B, 1])"
        )
    return p, t


def binary_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits per sample: pred (logits) and target in [0, 1], [B] or [B, 1] -> [B]."""
    p, t = _paired(pred, target, "binary loss")
    return F.binary_cross_entropy_with_logits(p, t.to(p.dtype), reduction="none").mean(dim=1)


def multiclass_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample: pred logits [B, C], target class indices [B] (int) -> [B]."""
    if pred.dim() != 2 or target.shape != pred.shape[:1]:
        raise ShapeError(
            f"multiclass loss: prediction has shape {list(pred.shape)} and target {list(target.shape)}; "
            "expected logits [B, C] and class indices [B]"
        )
    check_range(target, "target", 0, pred.shape[1], high_open=True, what="class indices")  # validation only
    return F.cross_entropy(pred, target.long(), reduction="none")


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error per sample, averaged over output columns: [B] / [B, D] -> [B]."""
    p, t = _paired(pred, target, "regression loss")
    return (p - t.to(p.dtype)).square().mean(dim=1)


def masked_mean(per_sample: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of `per_sample` [B] over the labelled samples: sum_i m_i l_i / sum_i m_i.

    mask: [B], bool or 0/1 (non-negative float weights also work), None = every sample labelled.
    Unlabelled entries are selected away (`torch.where`), so a NaN or inf loss there changes
    nothing; with no labelled sample the result is exactly 0 and so is every gradient. No
    host sync: the empty case is handled on the device.
    """
    if mask is None:  # an empty batch gives 0 here too (its mean would be NaN)
        return per_sample.mean() if per_sample.numel() else per_sample.sum()
    if mask.shape != per_sample.shape:
        raise ShapeError(f"mask has shape {list(mask.shape)}; expected {list(per_sample.shape)} (one entry per sample)")
    weight = mask.to(per_sample.dtype)
    labelled = weight > 0
    total = torch.where(labelled, per_sample, torch.zeros_like(per_sample)).mul(weight).sum()
    count = weight.sum()
    return total / torch.where(count > 0, count, torch.ones_like(count))


class Batch(NamedTuple):
    """One mini-batch: `model(*inputs)`; targets and (optional) masks keyed by task name.

    inputs: tuple of tensors, each [B, ...]; targets: {task: [B, ...]}; masks: {task: [B]}
    (bool or 0/1; a task without an entry is labelled for every sample) or None.
    """

    inputs: tuple[torch.Tensor, ...]
    targets: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | None = None

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """The batch with every tensor on `device`."""
        for name, group in (("inputs", self.inputs), ("targets", tuple(self.targets.values())),
                            ("masks", tuple((self.masks or {}).values()))):
            if not all(isinstance(t, torch.Tensor) for t in group):
                raise InputTypeError(f"{name} must hold torch.Tensors; got {[type(t).__name__ for t in group]}")

        def move(t):
            return t.to(device, non_blocking=non_blocking)
        masks = None if self.masks is None else {k: move(v) for k, v in self.masks.items()}
        return Batch(tuple(move(x) for x in self.inputs), {k: move(v) for k, v in self.targets.items()}, masks)


def _as_tuple(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


class TensorData:
    """A multi-task data set held as tensors: N samples, `model(*inputs)` per batch.

    inputs: a tensor or a tuple of tensors, each [N, ...]; targets: {task: [N, ...]};
    masks: {task: [N]} bool or 0/1, or None (every sample labelled for every task). All first
    dimensions must agree. `batches` yields `Batch`es; `subset` selects rows.
    """

    def __init__(
        self,
        inputs: torch.Tensor | Sequence[torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
    ):
        self.inputs = _as_tuple(inputs)
        self.targets = dict(targets)
        self.masks = None if masks is None else dict(masks)
        if not self.inputs:
            raise ShapeError("inputs is empty; expected at least one tensor [N, ...]")
        tensors = [(f"inputs[{i}]", x) for i, x in enumerate(self.inputs)]
        tensors += [(f"targets[{k!r}]", v) for k, v in self.targets.items()]
        tensors += [(f"masks[{k!r}]", v) for k, v in (self.masks or {}).items()]
        for name, t in tensors:
            if not isinstance(t, torch.Tensor):
                raise checks.InputTypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
            if t.dim() == 0:
                raise ShapeError(f"{name} is a scalar; expected [N, ...]")
        n = self.inputs[0].shape[0]
        for name, t in tensors:
            if t.shape[0] != n:
                raise ShapeError(f"{name} has {t.shape[0]} rows; expected {n} (the rows of inputs[0])")
        for k, m in (self.masks or {}).items():
            if k not in self.targets:
                raise TaskError(f"masks has task {k!r} that targets lacks; targets has {sorted(self.targets)}")
            if m.dim() != 1:
                raise ShapeError(f"masks[{k!r}] has shape {list(m.shape)}; expected [N]")

    def __len__(self) -> int:
        return self.inputs[0].shape[0]

    def subset(self, index: torch.Tensor | Sequence[int] | slice) -> TensorData:
        """The rows `index` (a slice, an index tensor or a bool mask [N]) as a new TensorData."""
        masks = None if self.masks is None else {k: v[index] for k, v in self.masks.items()}
        return TensorData(tuple(x[index] for x in self.inputs), {k: v[index] for k, v in self.targets.items()}, masks)

    def to(self, device: torch.device | str) -> TensorData:
        """The data set with every tensor on `device` (e.g. GPU-resident training data)."""
        b = Batch(self.inputs, self.targets, self.masks).to(device, non_blocking=False)
        return TensorData(b.inputs, b.targets, b.masks)

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[Batch]:
        """Mini-batches of `batch_size` rows, in order or shuffled with `generator` (a CPU
        `torch.Generator`; the permutation is drawn on the CPU and moved to the data's device).
        The last, smaller batch is kept unless `drop_last`."""
        batch_size = check_int("batch_size", batch_size, 1)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        if order is not None:
            order = order.to(self.inputs[0].device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            rows = slice(start, min(start + batch_size, n)) if order is None else order[start : start + batch_size]
            masks = None if self.masks is None else {k: v[rows] for k, v in self.masks.items()}
            yield Batch(tuple(x[rows] for x in self.inputs), {k: v[rows] for k, v in self.targets.items()}, masks)


class Callback:
    """Hooks into `fit`. Every hook receives the mutable `FitState` and may change it.

    Order per run: on_fit_start; per epoch: on_epoch_start, then per batch on_batch_start
    (state.batch is on the device), forward + loss, backward, after_backward (gradients are
    there: clip, project, inspect), the optimizer step, on_step_end; then validation and
    on_epoch_end (state.record holds the epoch's record; set state.stop = True to stop early);
    on_fit_end. A callback may replace state.optimizer or state.scheduler (phases).

    Resuming and skipping: in on_fit_start a callback may set state.epoch to the epochs already
    completed (the run continues with the next one); in on_epoch_start it may set
    state.skip_batches (the epoch's first batches are drawn but not trained: a mid-epoch resume),
    restore state.generator's state (the shuffle) and the epoch's loss sums; in after_backward it
    may set state.skip_step (no clip, no optimizer step, the gradients dropped, counted in
    state.skipped_steps; e.g. a non-finite loss). on_step_end runs only after a taken step.
    """

    def on_fit_start(self, state: FitState) -> None:
        """Before the first epoch (optimizer and scheduler built)."""

    def on_epoch_start(self, state: FitState) -> None:
        """Before the first batch of an epoch."""

    def on_batch_start(self, state: FitState) -> None:
        """Before the forward pass; state.batch is the batch on the device."""

    def after_backward(self, state: FitState) -> None:
        """After loss.backward(), before clipping and the optimizer step."""

    def on_step_end(self, state: FitState) -> None:
        """After the optimizer (and a per-step scheduler) step; state.step counts steps."""

    def on_epoch_end(self, state: FitState) -> None:
        """After validation; state.record is this epoch's record (set state.stop to stop)."""

    def on_fit_end(self, state: FitState) -> None:
        """After the last epoch (and after the best state was restored, if kept)."""


@dataclass
class FitState:
    """Everything a callback may read or change during `fit`.

    losses: the current batch's per-task losses {task: scalar tensor}; loss: their aggregate;
    aux: what a model returned beside its outputs (`returns_aux=True`); aggregate: the loss
    aggregation in use (replaceable by a callback, like optimizer); record: the last epoch's
    record; extra: free room for callbacks.
    generator: the shuffling generator (its state at an epoch's start fixes that epoch's order);
    scaler: a `torch.amp.GradScaler` or None (set it in on_fit_start: the engine then scales the
    loss, unscales before clipping and steps through it); batch_index: batches of this epoch
    drawn so far; skip_batches: batches to draw without training at the epoch's start (resume);
    skip_step: set in after_backward to drop this step; skipped_steps / oom_steps: steps dropped
    by a callback / by a CUDA out-of-memory error (`fit(skip_oom=True)`); epoch_sum [K + 1] and
    epoch_batches: the epoch's running loss sums (per task, then the total) and taken steps.
    aux_loss: the model's regulariser of the step (a scalar tensor or None), set for an aggregator
    that takes the backward itself (`performs_backward`, see `fit`).
    """

    model: nn.Module
    tasks: tuple[Task, ...]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    history: History
    epoch: int = 0
    step: int = 0
    batch: Batch | None = None
    outputs: dict[str, torch.Tensor] | None = None
    aux: Any = None
    aggregate: Any = None
    losses: dict[str, torch.Tensor] | None = None
    loss: torch.Tensor | None = None
    record: dict[str, Any] | None = None
    stop: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    generator: torch.Generator | None = None
    scaler: Any = None
    batch_index: int = 0
    skip_batches: int = 0
    skip_step: bool = False
    skipped_steps: int = 0
    oom_steps: int = 0
    epoch_sum: torch.Tensor | None = None
    epoch_batches: int = 0
    aux_loss: torch.Tensor | None = None


class WeightedSum(nn.Module):
    """The default loss aggregation: L = sum_k w_k L_k (eq-mtl-objective), w_k = 1 unless given.

    weights: {task: w_k} (tasks not named get 1). Fixed weights, no parameters; a learnt
    weighting (uncertainty weighting, GradNorm, adaTT) is an aggregator with parameters, which
    `fit` then adds to the optimizer.
    """

    def __init__(self, weights: Mapping[str, float] | None = None):
        super().__init__()
        self.weights = {k: check_float(f"weights[{k!r}]", w, 0.0) for k, w in (weights or {}).items()}

    def forward(self, losses: Mapping[str, torch.Tensor], state: FitState | None = None) -> torch.Tensor:
        """losses: {task: scalar} -> scalar sum_k w_k L_k."""
        total = None
        for name, loss in losses.items():
            term = loss * self.weights[name] if name in self.weights else loss
            total = term if total is None else total + term
        return total


@dataclass
class History:
    """What `fit` measured, one record per epoch, and the best epochs.

    records: list of {"epoch", "seconds", "train_loss": {task: float}, "train_total": float,
    "val_loss": {task: float}, "val_metric": {task: float}, "val_total": float} (val_* only
    with validation data). best_epoch / best: per task, the epoch with the best validation
    metric and its value; best_epoch_overall: the epoch that minimised `monitor`.
    best_state: the model's state_dict (CPU) at best_epoch_overall when `keep_best`.
    Arrays for plots: `train_loss()`, `val_metric()`, `val_loss()` ([E, K], tasks in order).
    """

    tasks: tuple[str, ...]
    records: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: dict[str, int] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    best_epoch_overall: int | None = None
    best_state: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def epochs(self) -> np.ndarray:
        """Epoch numbers (1-based) of the records, int64 [E]."""
        return np.array([r["epoch"] for r in self.records], dtype=np.int64)

    def _table(self, key: str) -> np.ndarray:
        return np.array([[r[key][t] for t in self.tasks] for r in self.records if key in r], dtype=np.float64)

    def train_loss(self) -> np.ndarray:
        """Mean training loss per epoch and task, float64 [E, K]."""
        return self._table("train_loss")

    def val_loss(self) -> np.ndarray:
        """Validation loss per epoch and task (masked mean over the validation set), [E, K]."""
        return self._table("val_loss")

    def val_metric(self) -> np.ndarray:
        """Validation metric per epoch and task, [E, K]."""
        return self._table("val_metric")

    def seconds(self) -> np.ndarray:
        """Wall seconds per epoch (training and validation), [E]."""
        return np.array([r["seconds"] for r in self.records], dtype=np.float64)


def _outputs_by_task(out: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """A model's output as {task: tensor}: a mapping (keys = task names), a list / tuple aligned
    with `names`, or one tensor for a single task."""
    if isinstance(out, Mapping):
        missing = [n for n in names if n not in out]
        if missing:
            raise TaskError(f"the model returned no output for tasks {missing}; it returned {sorted(out)}")
        return {n: out[n] for n in names}
    if isinstance(out, torch.Tensor):
        out = (out,)
    if isinstance(out, (list, tuple)):
        if len(out) != len(names):
            raise TaskError(
                f"the model returned {len(out)} outputs; expected one per task ({len(names)}: {list(names)})"
            )
        return dict(zip(names, out))
    raise TaskError(f"the model returned {type(out).__name__}; expected a dict, list or tuple of tensors")


def _check_task_keys(batch: Batch, names: Sequence[str]) -> None:
    unknown = [k for k in batch.targets if k not in names]
    if unknown:
        raise TaskError(f"targets has unknown tasks {unknown}; the tasks are {list(names)}")
    missing = [n for n in names if n not in batch.targets]
    if missing:
        raise TaskError(f"targets has no entry for tasks {missing}; give every task a target (and a mask)")
    unknown = [k for k in (batch.masks or {}) if k not in names]
    if unknown:
        raise TaskError(f"masks has unknown tasks {unknown}; the tasks are {list(names)}")


def _safe_target(target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Unlabelled targets replaced by 0, so that a NaN placeholder cannot reach a gradient."""
    if mask is None:
        return target
    keep = (mask > 0).reshape(mask.shape[0], *([1] * (target.dim() - 1)))
    return torch.where(keep, target, torch.zeros((), dtype=target.dtype, device=target.device))


def _task_losses(tasks: Sequence[Task], outputs: Mapping[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
    """{task: masked mean of its per-sample loss} for one batch (eq-mtl-objective's L_k)."""
    losses = {}
    masks = batch.masks or {}
    for task in tasks:
        mask = masks.get(task.name)
        pred = outputs[task.name].float() if outputs[task.name].dtype in (torch.float16, torch.bfloat16) else outputs[task.name]
        target = _safe_target(batch.targets[task.name], mask)
        losses[task.name] = masked_mean(task.per_sample_loss(pred, target), mask)
    return losses


def _as_batches(data: Any, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterable[Batch]:
    if isinstance(data, TensorData):
        return data.batches(batch_size, shuffle=shuffle, generator=generator)
    if isinstance(data, Batch):
        return (data,)
    if isinstance(data, Iterable):
        return data
    raise checks.InputTypeError(f"data must be a TensorData or an iterable of Batch; got {type(data).__name__}")


def _check_data(data: Any, names: Sequence[str], label: str) -> None:
    """The one boundary check of a data set: task names, and finite inputs / labelled targets."""
    if not isinstance(data, TensorData):
        return  # streamed batches are checked one by one (names always; values if validate_inputs)
    _check_task_keys(Batch(data.inputs, data.targets, data.masks), names)
    _check_batch_values(Batch(data.inputs, data.targets, data.masks), label)


def _check_batch_values(batch: Batch, label: str) -> None:
    for i, x in enumerate(batch.inputs):
        checks.check_finite(x, f"{label} inputs[{i}]")
    for k, t in batch.targets.items():
        mask = (batch.masks or {}).get(k)
        labelled = t if mask is None else t[mask > 0]
        checks.check_finite(labelled, f"{label} targets[{k!r}] (labelled entries)")


def _default_optimizer(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (Adam when weight_decay = 0); the fused kernel on CPU / CUDA float parameters."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _collect(model: nn.Module, data: Any, names: Sequence[str] | None, batch_size: int, device: torch.device,
             returns_aux: bool) -> tuple[dict[str, torch.Tensor], list[Batch]]:
    """Model outputs over `data` in eval mode, concatenated per task (on `device`), and the batches."""
    was_training = model.training
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    seen: list[Batch] = []
    try:
        for batch in _as_batches(data, batch_size):
            batch = batch.to(device)
            out = model(*batch.inputs)
            if returns_aux:
                out = out[0]
            keys = names if names is not None else (list(out) if isinstance(out, Mapping) else [str(i) for i in range(len(out))])
            for k, v in _outputs_by_task(out, keys).items():
                outs.setdefault(k, []).append(v)
            seen.append(batch)
    finally:
        model.train(was_training)
    return {k: torch.cat(v) for k, v in outs.items()}, seen


def _join(batches: list[Batch], names: Sequence[str]) -> Batch:
    targets = {n: torch.cat([b.targets[n] for b in batches]) for n in names}
    masks = {}
    for n in names:
        parts = [None if b.masks is None else b.masks.get(n) for b in batches]
        if any(p is not None for p in parts):
            masks[n] = torch.cat([p if p is not None else torch.ones(len(b.targets[n]), dtype=torch.bool, device=b.targets[n].device)
                                  for p, b in zip(parts, batches)])
    return Batch((), targets, masks or None)


def _validate(model, data, tasks, batch_size, device, returns_aux) -> tuple[dict[str, float], dict[str, float]]:
    """Per-task validation loss (masked mean) and metric (labelled samples, on CPU)."""
    names = [t.name for t in tasks]
    outputs, batches = _collect(model, data, names, batch_size, device, returns_aux)
    if not batches:
        raise ShapeError("the validation data yielded no batch")
    joined = _join(batches, names)
    for b in batches:
        _check_task_keys(b, names)
    with torch.no_grad():  # a loss may read parameters (e.g. item embeddings): no graph here
        losses = {k: float(v) for k, v in _task_losses(tasks, outputs, joined).items()}
    scores = {}
    for task in tasks:
        pred = task.transform(outputs[task.name].float()).cpu()
        target = joined.targets[task.name].cpu()
        mask = (joined.masks or {}).get(task.name)
        if mask is not None:
            keep = mask.cpu() > 0
            pred, target = pred[keep], target[keep]
        scores[task.name] = task.score(target, pred) if len(target) else float("nan")
    return losses, scores


def fit(
    model: nn.Module,
    train: TensorData | Iterable[Batch],
    val: TensorData | Iterable[Batch] | None = None,
    *,
    tasks: Sequence[Task],
    epochs: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: torch.optim.Optimizer | Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    scheduler_interval: str = "epoch",
    aggregate: Callable[[dict[str, torch.Tensor], FitState], torch.Tensor] | None = None,
    callbacks: Sequence[Callback] = (),
    seed: int = 0,
    device: torch.device | str | None = None,
    grad_clip: float | None = None,
    monitor: str | Callable[[dict[str, Any]], float] = "val_loss",
    keep_best: bool = False,
    validate_inputs: bool = False,
    returns_aux: bool = False,
    autocast: torch.dtype | None = None,
    eval_batch_size: int = 4096,
    progress: bool = False,
    skip_oom: bool = False,
) -> History:
    """Train `model` on `tasks` (eq-mtl-objective) and validate it after every epoch.

    Per step: `outputs = model(*batch.inputs)` (a dict {task: tensor}, or a list / tuple aligned
    with `tasks`); per task L_k = `masked_mean(task.per_sample_loss(output, target), mask)` (unlabelled
    samples contribute nothing); L = `aggregate(losses, state)` (default `WeightedSum()`:
    sum_k L_k; an nn.Module aggregator's parameters join the optimizer); backward;
    `after_backward` callbacks; clip the gradient norm to `grad_clip` if given; optimizer step.

    train / val: a `TensorData` (shuffled each epoch with a generator seeded by `seed`) or any
    iterable of `Batch` (streamed as given; re-iterated each epoch). Every task needs a target in
    every batch; masks mark the labelled samples.
    optimizer: a factory params -> optimizer (default AdamW(lr, weight_decay), fused where
    possible); scheduler: a factory optimizer -> scheduler, stepped per `scheduler_interval`
    ("epoch" or "step"). Callbacks may replace `state.optimizer` / `state.scheduler`.
    seed: the shuffling generator and torch's global RNG (dropout) inside the run; the global
    RNG is restored afterwards. device: where batches go (default: the model's device); the
    model is not moved. validate_inputs: False (default) turns off the device-syncing input
    checks (`ple.checks.validation`) inside the step; a `TensorData` is checked once up front.
    The step does no host sync: losses are accumulated on the device and read once per epoch.
    monitor: what picks `History.best_epoch_overall`, lower is better: "val_loss" (sum of the
    per-task validation losses; the training loss without val), a task name (its metric, in
    its direction) or a callable(record) -> float. keep_best: snapshot the model at that epoch
    and load it back at the end. returns_aux: the model returns (outputs, aux); aux goes to
    `state.aux` and is added to the loss if it is a tensor (a regulariser), or if it is a
    mapping, its "loss" entry (the other entries are diagnostics, e.g. gate weights). autocast: a dtype
    (e.g. torch.bfloat16) for the forward pass; losses are computed in float32.
    progress: a tqdm progress bar over epochs. skip_oom: a CUDA out-of-memory error in a step
    drops that batch (gradients cleared, cache emptied, counted in `state.oom_steps`) instead of
    ending the run. Callbacks can resume a run mid-epoch and drop steps (see `Callback`); with
    `state.scaler` set the step goes through the grad scaler.
    An aggregator with a true attribute `performs_backward` (e.g. Jacobian descent, which
    combines the per-task gradients rather than the losses) takes the backward itself: the
    engine clears the gradients first, sets `state.aux_loss` (the model's regulariser or None),
    calls it, and records what it returns (the step's loss, regulariser included) without
    calling backward; it must leave the gradients of the task losses and of `state.aux_loss` in
    the parameters' `.grad` (scaled by `state.scaler` if set). Returns the `History`.
    """
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
    seed = check_int("seed", seed, 0)
    lr = check_float("lr", lr, 0.0, low_open=True)
    weight_decay = check_float("weight_decay", weight_decay, 0.0)
    if grad_clip is not None:
        grad_clip = check_float("grad_clip", grad_clip, 0.0, low_open=True)
    check_choice("scheduler_interval", scheduler_interval, ("epoch", "step"))
    tasks = tuple(tasks)
    if not tasks or not all(isinstance(t, Task) for t in tasks):
        raise TaskError(f"tasks must be a non-empty sequence of Task; got {tasks!r}")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise TaskError(f"task names must be unique; got {names}")
    if isinstance(monitor, str) and monitor != "val_loss" and monitor not in names:
        raise HyperparameterError(f"monitor must be 'val_loss', a task name {names} or a callable; got {monitor!r}")
    device = torch.device(device) if device is not None else _model_device(model)
    _check_data(train, names, "train")
    if val is not None:
        _check_data(val, names, "val")
    aggregate = aggregate if aggregate is not None else WeightedSum()
    params = list(model.parameters())
    if isinstance(aggregate, nn.Module):
        ids = {id(p) for p in params}
        params += [p for p in aggregate.parameters() if id(p) not in ids]
    params = [p for p in params if p.requires_grad]
    if isinstance(optimizer, torch.optim.Optimizer):
        # a ready optimizer (its own parameter groups, e.g. a lower lr for one block); parameters
        # it lacks (an aggregator's) join as one more group with its defaults
        opt = optimizer
        owned = {id(p) for g in opt.param_groups for p in g["params"]}
        missing = [p for p in params if id(p) not in owned]
        if missing:
            opt.add_param_group({"params": missing})
    elif optimizer is not None:
        opt = optimizer(params)
    else:
        opt = _default_optimizer(params, lr, weight_decay)
    history = History(tuple(names))
    state = FitState(model=model, tasks=tasks, optimizer=opt, scheduler=None, device=device, history=history,
                     aggregate=aggregate)
    state.scheduler = scheduler(opt) if scheduler is not None else None
    generator = torch.Generator().manual_seed(seed)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    best_score = math.inf
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="fit", unit="epoch")
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        state.generator = generator
        for cb in callbacks:
            cb.on_fit_start(state)
        for epoch in range(state.epoch + 1, epochs + 1):  # a resumed run starts after state.epoch
            state.epoch = epoch
            start = time.perf_counter()
            state.epoch_sum = torch.zeros(len(tasks) + 1, dtype=acc_dtype, device=device)
            state.epoch_batches, state.batch_index = 0, 0
            for cb in callbacks:
                cb.on_epoch_start(state)
            model.train()
            for batch in _as_batches(train, batch_size, shuffle=True, generator=state.generator):
                if state.batch_index < state.skip_batches:  # resumed mid-epoch: drawn, not trained
                    state.batch_index += 1
                    continue
                if not isinstance(train, TensorData):
                    _check_task_keys(batch, names)
                    if validate_inputs:
                        _check_batch_values(batch, "train")
                state.batch = batch.to(device)
                state.skip_step = False
                for cb in callbacks:
                    cb.on_batch_start(state)
                try:
                    # the whole step (forward, task losses, aggregation) runs with the
                    # device-syncing checks off unless validate_inputs
                    with checks.validation(validate_inputs):
                        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                            out = model(*state.batch.inputs)
                        aux = None
                        if returns_aux:
                            out, aux = out
                        state.outputs, state.aux = _outputs_by_task(out, names), aux
                        state.losses = _task_losses(tasks, state.outputs, state.batch)
                        backward_done = bool(getattr(state.aggregate, "performs_backward", False))
                        if backward_done:  # the aggregator takes the backward itself (Jacobian descent)
                            state.optimizer.zero_grad(set_to_none=True)
                            aux_loss = aux.get("loss") if isinstance(aux, Mapping) else aux
                            state.aux_loss = aux_loss if isinstance(aux_loss, torch.Tensor) else None
                        loss = state.aggregate(state.losses, state)
                    if backward_done:  # its return value (regulariser included) is what is recorded
                        state.loss = loss
                    else:
                        aux_loss = aux.get("loss") if isinstance(aux, Mapping) else aux
                        if isinstance(aux_loss, torch.Tensor):
                            loss = loss + aux_loss
                        state.loss = loss
                        state.optimizer.zero_grad(set_to_none=True)
                        (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
                except torch.OutOfMemoryError:
                    if not skip_oom:
                        raise
                    state.optimizer.zero_grad(set_to_none=True)
                    state.outputs = state.aux = state.losses = state.loss = loss = out = aux = None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    state.oom_steps += 1
                    state.batch_index += 1
                    continue
                for cb in callbacks:
                    cb.after_backward(state)
                if state.skip_step:  # a callback dropped this step (e.g. a non-finite loss)
                    state.optimizer.zero_grad(set_to_none=True)
                    state.skipped_steps += 1
                    state.batch_index += 1
                    continue
                if grad_clip is not None:
                    if state.scaler is not None:
                        state.scaler.unscale_(state.optimizer)
                    nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
                if state.scaler is not None:
                    state.scaler.step(state.optimizer)
                    state.scaler.update()
                else:
                    state.optimizer.step()
                if state.scheduler is not None and scheduler_interval == "step":
                    state.scheduler.step()
                state.step += 1
                state.epoch_sum += torch.stack([*(state.losses[n].detach() for n in names), loss.detach()]).to(acc_dtype)
                state.epoch_batches += 1
                state.batch_index += 1
                for cb in callbacks:
                    cb.on_step_end(state)
            state.skip_batches = 0
            if state.batch_index == 0:
                raise ShapeError("the training data yielded no batch")
            if state.scheduler is not None and scheduler_interval == "epoch":
                state.scheduler.step()
            # the epoch's one host sync; NaN where every step of the epoch was dropped
            means = (state.epoch_sum / max(state.epoch_batches, 1)).tolist() if state.epoch_batches else [math.nan] * (len(tasks) + 1)
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": dict(zip(names, means[:-1])),
                "train_total": means[-1],
            }
            if val is not None:
                val_loss, val_metric = _validate(model, val, tasks, eval_batch_size, device, returns_aux)
                record.update(val_loss=val_loss, val_metric=val_metric, val_total=sum(val_loss.values()))
                for task in tasks:
                    value = val_metric[task.name]
                    old = history.best.get(task.name)
                    better = old is None or (value > old if task.larger_is_better else value < old)
                    if better and not math.isnan(value):
                        history.best[task.name], history.best_epoch[task.name] = value, epoch
            record["seconds"] = time.perf_counter() - start
            score = _monitor_score(monitor, record, tasks)
            if score < best_score:
                best_score, history.best_epoch_overall = score, epoch
                if keep_best:
                    history.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            history.records.append(record)
            state.record = record
            for cb in callbacks:
                cb.on_epoch_end(state)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_total']:.4g}")
            if state.stop:
                break
        if keep_best and history.best_state is not None:
            model.load_state_dict(history.best_state)
        for cb in callbacks:
            cb.on_fit_end(state)
    if bar is not None:
        bar.close()
    return history


def _monitor_score(monitor, record: dict[str, Any], tasks: Sequence[Task]) -> float:
    if callable(monitor):
        return float(monitor(record))
    if monitor == "val_loss":
        return float(record.get("val_total", record["train_total"]))
    if "val_metric" not in record:
        raise HyperparameterError(f"monitor={monitor!r} needs validation data; pass val= or monitor='val_loss'")
    task = next(t for t in tasks if t.name == monitor)
    value = record["val_metric"][monitor]
    return -value if task.larger_is_better else value


def predict(
    model: nn.Module,
    data: TensorData | Iterable[Batch] | torch.Tensor | Sequence[torch.Tensor],
    *,
    tasks: Sequence[Task | str] | None = None,
    batch_size: int = 4096,
    device: torch.device | str | None = None,
    returns_aux: bool = False,
) -> dict[str, torch.Tensor]:
    """The model's raw outputs over `data`, in eval mode without gradients, on the CPU.

    data: a `TensorData`, an iterable of `Batch`, or the inputs themselves (a tensor or a tuple
    of tensors [N, ...]). Returns {task: [N, ...]}; task names come from a dict output, else
    from `tasks` (aligned with a list output), else "0", "1", ...
    """
    batch_size = check_int("batch_size", batch_size, 1)
    if isinstance(data, torch.Tensor) or (isinstance(data, tuple) and data and isinstance(data[0], torch.Tensor)):
        data = TensorData(data, {})
    names = None if tasks is None else [t.name if isinstance(t, Task) else t for t in tasks]
    device = torch.device(device) if device is not None else _model_device(model)
    outputs, _ = _collect(model, data, names, batch_size, device, returns_aux)
    return {k: v.cpu() for k, v in outputs.items()}


def evaluate(
    model: nn.Module,
    data: TensorData | Iterable[Batch],
    tasks: Sequence[Task],
    *,
    batch_size: int = 4096,
    device: torch.device | str | None = None,
    returns_aux: bool = False,
) -> dict[str, float]:
    """Each task's metric on `data` (labelled samples only): {task: value}. CUDA-safe."""
    tasks = tuple(tasks)
    names = [t.name for t in tasks]
    _check_data(data, names, "data")
    device = torch.device(device) if device is not None else _model_device(model)
    return _validate(model, data, tasks, check_int("batch_size", batch_size, 1), device, returns_aux)[1]


def replica_name(task: str, r: int) -> str:
    """The name of task `task` of replica `r` in a `Replicas` model: ``"task@r"``."""
    if not isinstance(task, str) or not task:
        raise TaskError(f"task must be a non-empty task name; got {task!r}")
    return f"{task}@{check_int('r', r, 0)}"


class Replicas(nn.Module):
    """R models of one architecture trained as one model: parameters stacked, one `vmap`.

    A small model spends most of a step on per-operation overhead; R seeds or R data sets of it
    run almost as fast as one when their parameters are stacked along a new leading axis
    (`torch.func.stack_module_state`) and one `torch.func.vmap` evaluates all of them.
    models: R modules of identical structure (no buffers updated in training: no BatchNorm);
    task_names: the names of the models' K outputs (in order, for a list output).
    forward(*inputs), every input [B, R, ...] (replica r reads inputs[:, r]) ->
    {replica_name(task, r): [B, ...]}: R x K tasks for `fit` (`expand(tasks)`). Their losses add
    up, so each replica's gradient is its own; Adam is elementwise, so one optimizer over the
    stacked parameters is R independent ones. `call(*inputs, **kwargs)` returns the models' raw
    output structure with the replica axis at dim 1 (e.g. gates with ``return_gates=True``).
    `unstack()` copies the trained parameters back into the R models. Build it from models that
    are already on the training device (the stacked buffers, if any, stay where they were made).
    """

    def __init__(self, models: Sequence[nn.Module], task_names: Sequence[str]):
        super().__init__()
        self.models = list(models)  # a plain list: not submodules, their parameters stay out
        if not self.models:
            raise HyperparameterError("models is empty; expected at least one model")
        kinds = {type(m) for m in self.models}
        if len(kinds) != 1:
            raise HyperparameterError(f"models must share one architecture; got {sorted(k.__name__ for k in kinds)}")
        self.task_names = check_unique("task_names", task_names)
        params, buffers = torch.func.stack_module_state(self.models)
        self._names = list(params)
        self.stacked = nn.ParameterList(nn.Parameter(params[k].detach()) for k in self._names)
        self._buffers_stacked = buffers
        self._base = [copy.deepcopy(self.models[0]).to("meta")]  # structure only, outside the module tree

    @property
    def num_replicas(self) -> int:
        """R."""
        return len(self.models)

    def expand(self, tasks: Sequence[Task]) -> tuple[Task, ...]:
        """Each task once per replica, renamed `replica_name(task.name, r)`, replica-major."""
        return tuple(dataclasses.replace(t, name=replica_name(t.name, r)) for r in range(self.num_replicas) for t in tasks)

    def call(self, *inputs: torch.Tensor, **kwargs: Any) -> Any:
        """The models' outputs, every tensor [B, R, ...]; kwargs go to every model's forward."""
        base = self._base[0]
        base.train(self.training)
        params = dict(zip(self._names, self.stacked))

        def one(p, b, *xs):
            with checks.validation(False):  # data-dependent checks cannot run under vmap
                return torch.func.functional_call(base, (p, b), xs, kwargs)

        in_dims = (0, 0, *([1] * len(inputs)))
        return torch.func.vmap(one, in_dims=in_dims, out_dims=1, randomness="different")(
            params, self._buffers_stacked, *inputs
        )

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        out = _outputs_by_task(self.call(*inputs), self.task_names)
        return {replica_name(t, r): out[t][:, r] for r in range(self.num_replicas) for t in self.task_names}

    @torch.no_grad()
    def unstack(self) -> list[nn.Module]:
        """Copy the trained parameters back into the R models and return them."""
        stacked = dict(zip(self._names, self.stacked))
        for r, model in enumerate(self.models):
            for name, p in model.named_parameters():
                p.copy_(stacked[name][r])
        return self.models
