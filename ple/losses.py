"""ple.losses -- generated from book/ple5_group_experts_transfer_towers.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['PROB_EPS', 'FOCAL_GAMMA', 'HUBER_DELTA', 'INFONCE_TEMPERATURE', 'LOG_VAR_BOUNDS', 'REDUCTIONS', 'INFONCE_NORM_EPS', 'focal_loss', 'focal_loss_with_logits', 'huber_loss', 'mse_loss', 'nll_loss', 'info_nce_loss', 'task_loss', 'FixedWeighting', 'inward_clamp', 'UncertaintyWeighting']

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ple.checks import (
    InputTypeError,
    ShapeError,
    TaskError,
    check_choice,
    check_finite,
    check_float,
    shape_str,
    validation_enabled,
)
from ple.fit import FitState, WeightedSum, masked_mean, regression_loss
from ple.tasks import TaskSpec, get_task

PROB_EPS = 1e-7  # probabilities are clamped to [PROB_EPS, 1 - PROB_EPS] before any log
FOCAL_GAMMA = 2.0
HUBER_DELTA = 1.0
INFONCE_TEMPERATURE = 0.07
LOG_VAR_BOUNDS = (-4.0, 4.0)
REDUCTIONS = ("mean", "sum", "none")
INFONCE_NORM_EPS = 1e-3  # embeddings shorter than this are scaled by 1 / eps, not normalised


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 at least: half / bfloat16 inputs are promoted, float64 stays float64."""
    return torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else torch.float32


def _check_range(t: torch.Tensor, name: str, low: float, high: float, high_open: bool = False, what: str = "") -> None:
    """ValueError unless every entry of `t` lies in [low, high] ([low, high) if `high_open`).

    Reads the tensor's extremes into Python (a device sync), so it runs only while
    `ple.checks.validation_enabled()`; inside the engine's training step it is off.
    """
    if not validation_enabled() or t.numel() == 0:
        return
    lo, hi = torch.aminmax(t)
    if bool(lo < low) or bool(hi >= high if high_open else hi > high):
        interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}{what}; got values from {lo.item():g} to {hi.item():g}")


def _as_batch(t: torch.Tensor, name: str) -> torch.Tensor:
    """[B] or [B, 1] -> [B]."""
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dim() == 2 and t.shape[1] == 1:
        return t[:, 0]
    if t.dim() != 1:
        raise ShapeError(f"{name} has shape {shape_str(t)}; expected [B] or [B, 1]")
    return t


def _prepare_mask(mask: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """Sample mask [B] as bool: bool, or 0 / 1 (1 = labelled); None (every sample has a label) stays None.

    Any other value (0.5, NaN) raises ValueError: a fractional mask is not a label indicator
    (the check reads the device, so it runs only while validation is enabled).
    """
    if mask is None:
        return None
    mask = _as_batch(mask, "mask")
    if mask.shape[0] != batch:
        raise ShapeError(f"mask has shape {shape_str(mask)}; expected [{batch}] (one entry per sample)")
    if mask.dtype == torch.bool:
        return mask.to(device=device)
    if validation_enabled() and mask.numel() and bool(((mask != 0) & (mask != 1)).any()):
        bad = mask[(mask != 0) & (mask != 1)][:3].tolist()
        raise ValueError(f"mask must hold 0 / 1 or bool (1 = labelled); got values such as {bad}")
    return mask.to(device) != 0


def _fill_masked(target: torch.Tensor, mask: torch.Tensor | None, fill: float | int) -> torch.Tensor:
    """Replace the targets of masked samples (they may be NaN or -1) by a harmless value."""
    if mask is None:
        return target
    m = mask.view(-1, *([1] * (target.dim() - 1)))
    return torch.where(m, target, torch.as_tensor(fill, dtype=target.dtype, device=target.device))


def _reduce(per_sample: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Per-sample losses [B] -> the masked mean of PLE-1 (eq-masked-mean, the engine's
    `ple.fit.masked_mean`), the masked sum, or ("none") [B] with exact zeros at masked samples
    (what a `ple.fit.Task` loss returns; the engine then takes the masked mean itself).

    Masked samples are *selected* away with `torch.where`, so a NaN loss there changes nothing.
    An empty batch gives 0 with a zero gradient (the mean of nothing would be NaN).
    """
    if mask is not None:
        per_sample = torch.where(mask, per_sample, torch.zeros((), dtype=per_sample.dtype, device=per_sample.device))
    if reduction == "none":
        return per_sample
    if reduction == "sum" or per_sample.shape[0] == 0:
        return per_sample.sum()
    return masked_mean(per_sample, mask)


def _check_binary_inputs(pred: torch.Tensor, target: torch.Tensor, mask, pred_name: str, reduction: str):
    check_choice("reduction", reduction, REDUCTIONS)
    pred = _as_batch(pred, pred_name)
    target = _as_batch(target, "target")
    if target.shape[0] != pred.shape[0]:
        raise ShapeError(f"target has shape {shape_str(target)}; expected [{pred.shape[0]}] (same batch as {pred_name})")
    check_finite(pred, pred_name)
    mask = _prepare_mask(mask, pred.shape[0], pred.device)
    dtype = _compute_dtype(pred)
    target = _fill_masked(target.to(dtype), mask, 0.0)
    check_finite(target, "target (labelled samples)")
    _check_range(target, "target", 0.0, 1.0, what=" for a binary task")
    return pred.to(dtype), target, mask


def _check_focal_params(alpha: float, gamma: float) -> tuple[float, float]:
    return check_float("alpha", alpha, 0.0, 1.0), check_float("gamma", gamma, 0.0)


def focal_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = FOCAL_GAMMA,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    eps: float = PROB_EPS,
) -> torch.Tensor:
    """Binary focal loss on probabilities (eq-focal), computed in fp32 or wider.

    FL = -[y a (1-p)^g log p + (1-y)(1-a) p^g log(1-p)], p clamped to [eps, 1-eps]; for y in
    {0, 1} this is -a_t (1-p_t)^g log p_t. probs, target: [B] or [B, 1]; mask: [B] (False =
    missing label). Half-precision inputs are promoted to fp32 before the clamp (in fp16,
    1 - 1e-7 rounds to 1 and log(1 - p) becomes -inf). eps in (0, 0.5).
    """
    alpha, gamma = _check_focal_params(alpha, gamma)
    eps = check_float("eps", eps, 0.0, 0.5, low_open=True, high_open=True)
    probs, target, mask = _check_binary_inputs(probs, target, mask, "probs", reduction)
    _check_range(probs, "probs", 0.0, 1.0, what=" (a sigmoid output)")
    p = probs.clamp(eps, 1.0 - eps)
    pos = alpha * (1.0 - p).pow(gamma) * torch.log(p)
    neg = (1.0 - alpha) * p.pow(gamma) * torch.log1p(-p)
    return _reduce(-(target * pos + (1.0 - target) * neg), mask, reduction)


def focal_loss_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = FOCAL_GAMMA,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The same focal loss written on the pre-sigmoid value z (eq-focal-logit), no clamp.

    log p = logsigmoid(z), log(1-p) = logsigmoid(-z), (1-p)^g = exp(g logsigmoid(-z)):
    finite for every finite z. logits, target: [B] or [B, 1]; mask: [B].
    """
    alpha, gamma = _check_focal_params(alpha, gamma)
    z, target, mask = _check_binary_inputs(logits, target, mask, "logits", reduction)
    log_p, log_q = F.logsigmoid(z), F.logsigmoid(-z)
    pos = alpha * torch.exp(gamma * log_q) * log_p
    neg = (1.0 - alpha) * torch.exp(gamma * log_p) * log_q
    return _reduce(-(target * pos + (1.0 - target) * neg), mask, reduction)


def _check_regression_inputs(pred: torch.Tensor, target: torch.Tensor, mask, reduction: str):
    check_choice("reduction", reduction, REDUCTIONS)
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise InputTypeError(f"pred and target must be torch.Tensors; got {type(pred).__name__}, {type(target).__name__}")
    if pred.dim() == 1:
        pred = pred[:, None]
    if target.dim() == 1:
        target = target[:, None]
    if pred.dim() != 2 or target.shape != pred.shape:
        raise ShapeError(f"target has shape {shape_str(target)}; expected {shape_str(pred)} (as pred)")
    check_finite(pred, "pred")
    mask = _prepare_mask(mask, pred.shape[0], pred.device)
    dtype = _compute_dtype(pred)
    target = _fill_masked(target.to(dtype), mask, 0.0)
    check_finite(target, "target (labelled samples)")
    return pred.to(dtype), target, mask


def huber_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    delta: float = HUBER_DELTA,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Huber loss (eq-losses): r = pred - target, 1/2 r^2 if |r| <= delta else delta (|r| - delta/2).

    pred, target: [B] or [B, D] (mean over D per sample); mask: [B]; delta > 0.
    """
    delta = check_float("delta", delta, 0.0, low_open=True)
    pred, target, mask = _check_regression_inputs(pred, target, mask, reduction)
    r = (pred - target).abs()
    per = torch.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))
    return _reduce(per.mean(dim=1), mask, reduction)


def mse_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Squared error (pred - target)^2, mean over D per sample: the engine's
    `ple.fit.regression_loss` with this module's checks, masks and reductions.
    pred, target: [B] or [B, D]."""
    pred, target, mask = _check_regression_inputs(pred, target, mask, reduction)
    return _reduce(regression_loss(pred, target), mask, reduction)


def _check_class_target(target: torch.Tensor, batch: int, num_classes: int, mask):
    target = _as_batch(target, "target")
    if target.shape[0] != batch:
        raise ShapeError(f"target has shape {shape_str(target)}; expected [{batch}]")
    if target.is_floating_point():
        raise InputTypeError(f"target must hold integer class ids; got dtype {target.dtype}")
    mask = _prepare_mask(mask, batch, target.device)
    target = _fill_masked(target.long(), mask, 0)
    _check_range(target, "target class ids", 0, num_classes, high_open=True, what=" for labelled samples")
    return target, mask


def nll_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    eps: float = PROB_EPS,
) -> torch.Tensor:
    """Negative log-likelihood of softmax outputs (eq-losses): -log max(p_{b, y_b}, eps).

    probs: [B, C] rows on the simplex (a softmax output); target: [B] int64 class ids;
    mask: [B]. Equals cross-entropy on the logits whenever p_{b, y_b} >= eps.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    eps = check_float("eps", eps, 0.0, 1.0, low_open=True, high_open=True)
    if not isinstance(probs, torch.Tensor):
        raise InputTypeError(f"probs must be a torch.Tensor; got {type(probs).__name__}")
    if probs.dim() != 2:
        raise ShapeError(f"probs has shape {shape_str(probs)}; expected [B, C] (softmax output)")
    check_finite(probs, "probs")
    probs = probs.to(_compute_dtype(probs))
    if validation_enabled() and probs.numel() and bool((probs.amin() < 0) | ((probs.sum(dim=1) - 1).abs().amax() > 1e-3)):
        raise ValueError("probs rows must be probability vectors (non-negative, summing to 1)")
    target, mask = _check_class_target(target, probs.shape[0], probs.shape[1], mask)
    p_y = probs.gather(1, target[:, None])[:, 0].clamp_min(eps)
    return _reduce(-torch.log(p_y), mask, reduction)


def info_nce_loss(
    query: torch.Tensor,
    keys: torch.Tensor,
    target: torch.Tensor,
    temperature: float = INFONCE_TEMPERATURE,
    normalize: bool = True,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE over a fixed candidate set (eq-losses): -log softmax(q . k_i / tau)_{y}.

    query: [B, D] (the contrastive tower's embedding); keys: [C, D] (one embedding per brand,
    C = 128 in the world); target: [B] int64, the positive key of each query. With
    normalize=True both sides are L2-normalised first (cosine similarity), the usual setting
    for tau = 0.07; a vector shorter than INFONCE_NORM_EPS is divided by INFONCE_NORM_EPS
    instead, so the gradient at a zero query stays bounded (about 1 / (eps tau)), where the
    default eps of `F.normalize` (1e-12) gave ~1e13.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    temperature = check_float("temperature", temperature, 0.0, low_open=True)
    for name, t in (("query", query), ("keys", keys)):
        if not isinstance(t, torch.Tensor):
            raise InputTypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if query.dim() != 2:
        raise ShapeError(f"query has shape {shape_str(query)}; expected [B, D]")
    if keys.dim() != 2 or keys.shape[1] != query.shape[1]:
        raise ShapeError(f"keys has shape {shape_str(keys)}; expected [C, {query.shape[1]}]")
    check_finite(query, "query")
    check_finite(keys, "keys")
    dtype = _compute_dtype(query)
    q, k = query.to(dtype), keys.to(dtype)
    if normalize:
        q, k = F.normalize(q, dim=1, eps=INFONCE_NORM_EPS), F.normalize(k, dim=1, eps=INFONCE_NORM_EPS)
    target, mask = _check_class_target(target, q.shape[0], k.shape[0], mask)
    logits = q @ k.T / temperature
    return _reduce(F.cross_entropy(logits, target, reduction="none"), mask, reduction)


def task_loss(
    task: str | TaskSpec,
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The loss of one registry task, dispatched on `TaskSpec.loss` with its parameters.

    focal (focal_alpha, focal_gamma) on the sigmoid output, nll on the softmax output, mse, huber
    (huber_delta), infonce (infonce_tau) on the contrastive embedding against `keys` [C, D].
    reduction "none" gives the per-sample losses [B] a `ple.fit.Task` returns. An unknown task
    name raises ValueError naming it; a prediction whose width is not the task's (3 columns for
    the 6-class life_stage) raises ShapeError naming pred and the task.
    """
    if isinstance(task, str):
        spec = get_task(task)
    elif isinstance(task, TaskSpec):
        spec = task
    else:
        raise InputTypeError(f"task must be a task name or a TaskSpec; got {type(task).__name__}")
    _check_task_output(spec, pred, keys)
    if spec.loss == "focal":
        return focal_loss(pred, target, spec.focal_alpha, spec.focal_gamma, mask=mask, reduction=reduction)
    if spec.loss == "nll":
        return nll_loss(pred, target, mask=mask, reduction=reduction)
    if spec.loss == "mse":
        return mse_loss(pred, target, mask=mask, reduction=reduction)
    if spec.loss == "huber":
        return huber_loss(pred, target, spec.huber_delta, mask=mask, reduction=reduction)
    if spec.loss == "infonce":
        if keys is None:
            raise ValueError(f"task {spec.name!r} uses InfoNCE: pass keys [C, D] (one embedding per item)")
        return info_nce_loss(pred, keys, target, spec.infonce_tau, mask=mask, reduction=reduction)
    raise ValueError(f"task {spec.name!r} has unknown loss {spec.loss!r}")


def _check_task_output(spec: TaskSpec, pred: torch.Tensor, keys: torch.Tensor | None) -> None:
    """pred's width against the task: num_classes columns (nll), else output_dim ([B] when it is 1);
    keys [num_classes, D] for a contrastive task."""
    if not isinstance(pred, torch.Tensor):
        raise InputTypeError(f"pred must be a torch.Tensor; got {type(pred).__name__}")
    want = spec.num_classes if spec.loss == "nll" else spec.output_dim
    width = 1 if pred.dim() == 1 else pred.shape[-1]
    if pred.dim() not in (1, 2) or width != want:
        raise ShapeError(
            f"pred has shape {shape_str(pred)}; expected [B, {want}] for task {spec.name!r} "
            f"({spec.task_type}, {'num_classes' if spec.loss == 'nll' else 'output_dim'} {want})"
        )
    if spec.loss == "infonce" and isinstance(keys, torch.Tensor) and (keys.dim() != 2 or keys.shape[0] != spec.num_classes):
        raise ShapeError(f"keys has shape {shape_str(keys)}; expected [{spec.num_classes}, D] for task {spec.name!r} (num_classes)")


def _check_task_names(task_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(task_names, str) or not isinstance(task_names, Sequence):
        raise TaskError(f"task_names must be a sequence of task names; got {task_names!r}")
    names = tuple(task_names)
    if not names or not all(isinstance(t, str) and t for t in names):
        raise TaskError(f"task_names must be non-empty strings, at least one; got {list(names)}")
    dup = sorted({t for t in names if names.count(t) > 1})
    if dup:
        raise TaskError(f"task_names has duplicates: {dup}")
    return names


def _check_task_weights(task_names: Sequence[str], weights: Mapping[str, float] | None) -> dict[str, float]:
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(task_names))
    if unknown:
        raise TaskError(f"weights name unknown task(s) {unknown}; the tasks are {list(task_names)}")
    return {t: check_float(f"weights[{t!r}]", weights.get(t, 1.0), 0.0) for t in task_names}


def _check_task_losses(losses: Mapping[str, torch.Tensor], known: Sequence[str]) -> None:
    if not isinstance(losses, Mapping):
        raise InputTypeError(f"losses must be a mapping task name -> scalar tensor; got {type(losses).__name__}")
    for name, value in losses.items():
        if name not in known:
            raise TaskError(f"losses has unknown task {name!r}; this weighting knows {list(known)}")
        if not torch.is_tensor(value) or value.dim() != 0:
            got = shape_str(value) if torch.is_tensor(value) else type(value).__name__
            raise ShapeError(f"losses[{name!r}] must be a scalar tensor; got {got}")
        check_finite(value, f"losses[{name!r}]")  # a device sync: off inside the engine's step


class FixedWeighting(WeightedSum):
    """L = sum_k w_k L_k with fixed weights (eq-mtl-objective of PLE-1).

    The engine's `ple.fit.WeightedSum` for a known task list: a loss or a weight of an unknown
    task is an error, missing weights default to 1 (all 1 = equal weighting), weights must be
    finite and >= 0. An aggregation hook for `ple.fit.fit(aggregate=...)`, or called on its own:
    forward(losses {task: scalar}, state=None) -> scalar; a task left out of `losses` (no label
    in the batch) contributes nothing.
    """

    def __init__(self, task_names: Sequence[str], weights: Mapping[str, float] | None = None):
        names = _check_task_names(task_names)
        weights = _check_task_weights(names, weights)
        super().__init__(weights)
        self.task_names = names
        self.register_buffer("task_weights", torch.tensor([weights[t] for t in names]))  # [K], task order

    def forward(self, losses: Mapping[str, torch.Tensor], state: FitState | None = None) -> torch.Tensor:
        _check_task_losses(losses, self.task_names)
        if not losses:
            return torch.zeros(())
        return super().forward(losses, state)


class _InwardClamp(torch.autograd.Function):
    """clamp(x, low, high); backward keeps the gradient unless it would push x further outside."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        # a descent step moves x by -grad: below `low` only grad < 0 moves it up, above `high` only grad > 0
        outward = ((x < ctx.low) & (grad > 0)) | ((x > ctx.high) & (grad < 0))
        return torch.where(outward, torch.zeros_like(grad), grad), None, None


def inward_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """clip(x, low, high) whose gradient still pulls back inside (eq-uw-clamp).

    Forward: `x.clamp(low, high)`. Backward: the incoming gradient g where low <= x <= high
    (the plain clamp there); outside, g where a descent step (x -= lr g) moves x back toward
    [low, high], and 0 where it would push x further out. The plain clamp's gradient is 0
    everywhere outside, so a parameter that once crossed a bound could never return.
    """
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    low, high = check_float("low", low), check_float("high", high)
    if not low < high:
        raise ValueError(f"low must be < high; got low = {low}, high = {high}")
    return _InwardClamp.apply(x, low, high)


class UncertaintyWeighting(nn.Module):
    """Homoscedastic uncertainty weighting (eq-uncertainty), the post's form.

    L = sum_k w_k (exp(-s_k) L_k + s_k),  s_k = clip(task_log_vars[k], -4, 4) = log sigma_k^2,
    clipped with `inward_clamp` (eq-uw-clamp): a log-variance outside the bounds is pulled back
    when its optimum lies inside, and held at the bound when the optimum lies beyond it.
    w_k: fixed task weights (default 1, finite, >= 0). For a fixed L_k the optimum is
    s_k* = clip(log L_k, -4, 4), where the effective weight on L_k is w_k exp(-s_k*).
    `task_log_vars`: [K] trainable, init `init_log_var`.

    An aggregation hook for `ple.fit.fit(aggregate=...)` (the engine adds `task_log_vars` to the
    optimizer), or called on its own: forward(losses {task: scalar}, state=None) -> scalar; a task
    left out of `losses` contributes nothing. Given the engine's `state`, a task with no labelled
    sample in the batch (its mask all zero) contributes exactly 0 too: its +s_k term would
    otherwise pull its log-variance down on every batch without a label (no host sync).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        weights: Mapping[str, float] | None = None,
        log_var_bounds: tuple[float, float] = LOG_VAR_BOUNDS,
        init_log_var: float = 0.0,
    ):
        super().__init__()
        self.task_names = _check_task_names(task_names)
        if not isinstance(log_var_bounds, Sequence) or len(log_var_bounds) != 2:
            raise ValueError(f"log_var_bounds must be (low, high); got {log_var_bounds!r}")
        lo = check_float("log_var_bounds[0]", log_var_bounds[0])
        hi = check_float("log_var_bounds[1]", log_var_bounds[1])
        if not lo < hi:
            raise ValueError(f"log_var_bounds must satisfy low < high; got {tuple(log_var_bounds)}")
        self.log_var_bounds = (lo, hi)
        w = _check_task_weights(self.task_names, weights)
        self.register_buffer("task_weights", torch.tensor([w[t] for t in self.task_names]))
        init = check_float("init_log_var", init_log_var)
        self.task_log_vars = nn.Parameter(torch.full((len(self.task_names),), init))

    def log_vars(self) -> torch.Tensor:
        """s_k: the log-variances clipped to log_var_bounds (eq-uw-clamp), [K]."""
        return inward_clamp(self.task_log_vars, *self.log_var_bounds)

    def effective_weights(self) -> dict[str, float]:
        """w_k exp(-s_k): the multiplier each task's loss currently gets."""
        eff = (self.task_weights * torch.exp(-self.log_vars())).detach().cpu()
        return dict(zip(self.task_names, eff.tolist()))

    def forward(self, losses: Mapping[str, torch.Tensor], state: FitState | None = None) -> torch.Tensor:
        _check_task_losses(losses, self.task_names)
        s, w = self.log_vars(), self.task_weights
        if len(losses) < len(self.task_names):  # a subset: only the tasks present contribute
            present = [k for k, t in enumerate(self.task_names) if t in losses]
            index = torch.tensor(present, dtype=torch.long, device=s.device)
            s, w = s.index_select(0, index), w.index_select(0, index)
            names = [self.task_names[k] for k in present]
        else:
            names = self.task_names
        if not names:
            return s.sum()  # no task: 0
        L = torch.stack([losses[t] for t in names]).to(s.dtype)
        terms = w * (torch.exp(-s) * L + s)
        masks = getattr(getattr(state, "batch", None), "masks", None)
        if masks:  # tasks without a labelled sample in this batch contribute 0 (decided on the device)
            labelled = [(masks[t] > 0).any() if t in masks else None for t in names]
            if any(v is not None for v in labelled):
                one = torch.ones((), dtype=torch.bool, device=s.device)
                present = torch.stack([one if v is None else v.to(s.device) for v in labelled])
                terms = torch.where(present, terms, torch.zeros_like(terms))
        return terms.sum()
