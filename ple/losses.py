"""ple.losses -- generated from book/ple5_group_experts_transfer_towers.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['PROB_EPS', 'FOCAL_GAMMA', 'HUBER_DELTA', 'INFONCE_TEMPERATURE', 'LOG_VAR_BOUNDS', 'REDUCTIONS', 'reduce_masked', 'focal_loss', 'focal_loss_with_logits', 'huber_loss', 'mse_loss', 'nll_loss', 'info_nce_loss', 'task_loss', 'FixedWeighting', 'UncertaintyWeighting']

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ple.tasks import TaskSpec, get_task

PROB_EPS = 1e-7  # probabilities are clamped to [PROB_EPS, 1 - PROB_EPS] before any log
FOCAL_GAMMA = 2.0
HUBER_DELTA = 1.0
INFONCE_TEMPERATURE = 0.07
LOG_VAR_BOUNDS = (-4.0, 4.0)
REDUCTIONS = ("mean", "sum", "none")


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 at least: half / bfloat16 inputs are promoted, float64 stays float64."""
    return torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else torch.float32


def _check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN" if torch.isnan(t).any() else f"{name} contains inf")


def _outside(t: torch.Tensor, low: float, high: float, high_inclusive: bool = True) -> bool:
    """True if some entry of t is < low or > high (>= high when not high_inclusive)."""
    if t.numel() == 0:
        return False
    lo, hi = torch.aminmax(t)
    return bool(lo < low) or bool(hi > high if high_inclusive else hi >= high)


def _as_batch(t: torch.Tensor, name: str) -> torch.Tensor:
    """[B] or [B, 1] -> [B]."""
    if t.dim() == 2 and t.shape[1] == 1:
        return t[:, 0]
    if t.dim() != 1:
        raise ValueError(f"{name} has shape {_shape(t)}; expected [B] or [B, 1]")
    return t


def _prepare_mask(mask: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """Sample mask [B] as bool; None (every sample has a label) stays None."""
    if mask is None:
        return None
    mask = _as_batch(mask, "mask")
    if mask.shape[0] != batch:
        raise ValueError(f"mask has shape {_shape(mask)}; expected [{batch}] (one entry per sample)")
    return mask.to(device=device).bool() if mask.dtype == torch.bool else mask.to(device) != 0


def _fill_masked(target: torch.Tensor, mask: torch.Tensor | None, fill: float | int) -> torch.Tensor:
    """Replace the targets of masked samples (they may be NaN or -1) by a harmless value."""
    if mask is None:
        return target
    m = mask.view(-1, *([1] * (target.dim() - 1)))
    return torch.where(m, target, torch.as_tensor(fill, dtype=target.dtype, device=target.device))


def reduce_masked(loss: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Reduce per-sample losses `loss` [B] over the labelled samples (eq-masked-mean).

    L = sum_b m_b l_b / max(1, sum_b m_b). Masked samples contribute exactly zero (also when
    their l_b is NaN or inf: they are selected away with `torch.where`, never multiplied by 0),
    and a batch with no labelled sample gives 0, not NaN. reduction: "mean" | "sum" | "none"
    ("none" returns [B] with zeros at masked samples).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    mask = _prepare_mask(mask, loss.shape[0], loss.device)
    if mask is None:  # every sample labelled
        if reduction == "none":
            return loss
        return loss.sum() if reduction == "sum" else loss.sum() / max(loss.shape[0], 1)
    per_sample = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp_min(1).to(loss.dtype)


def _check_binary_inputs(pred: torch.Tensor, target: torch.Tensor, mask, pred_name: str):
    pred = _as_batch(pred, pred_name)
    target = _as_batch(target, "target")
    if target.shape[0] != pred.shape[0]:
        raise ValueError(
            f"target has shape {_shape(target)}; expected [{pred.shape[0]}] (same batch as {pred_name})"
        )
    _check_finite(pred, pred_name)
    mask = _prepare_mask(mask, pred.shape[0], pred.device)
    dtype = _compute_dtype(pred)
    target = _fill_masked(target.to(dtype), mask, 0.0)
    _check_finite(target, "target (labelled samples)")
    if _outside(target, 0.0, 1.0):
        raise ValueError("target must lie in [0, 1] for a binary task")
    return pred.to(dtype), target, mask


def _check_focal_params(alpha: float, gamma: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0; got {gamma}")


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
    1 - 1e-7 rounds to 1 and log(1 - p) becomes -inf).
    """
    _check_focal_params(alpha, gamma)
    probs, target, mask = _check_binary_inputs(probs, target, mask, "probs")
    if _outside(probs, 0.0, 1.0):
        raise ValueError("probs must lie in [0, 1] (a sigmoid output); got values outside")
    p = probs.clamp(eps, 1.0 - eps)
    pos = alpha * (1.0 - p).pow(gamma) * torch.log(p)
    neg = (1.0 - alpha) * p.pow(gamma) * torch.log1p(-p)
    return reduce_masked(-(target * pos + (1.0 - target) * neg), mask, reduction)


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
    _check_focal_params(alpha, gamma)
    z, target, mask = _check_binary_inputs(logits, target, mask, "logits")
    log_p, log_q = F.logsigmoid(z), F.logsigmoid(-z)
    pos = alpha * torch.exp(gamma * log_q) * log_p
    neg = (1.0 - alpha) * torch.exp(gamma * log_p) * log_q
    return reduce_masked(-(target * pos + (1.0 - target) * neg), mask, reduction)


def _check_regression_inputs(pred: torch.Tensor, target: torch.Tensor, mask):
    if pred.dim() == 1:
        pred = pred[:, None]
    if target.dim() == 1:
        target = target[:, None]
    if pred.dim() != 2 or target.shape != pred.shape:
        raise ValueError(f"target has shape {_shape(target)}; expected {_shape(pred)} (as pred)")
    _check_finite(pred, "pred")
    mask = _prepare_mask(mask, pred.shape[0], pred.device)
    dtype = _compute_dtype(pred)
    target = _fill_masked(target.to(dtype), mask, 0.0)
    _check_finite(target, "target (labelled samples)")
    return pred.to(dtype), target, mask


def huber_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    delta: float = HUBER_DELTA,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Huber loss (eq-huber): r = pred - target, 1/2 r^2 if |r| <= delta else delta (|r| - delta/2).

    pred, target: [B] or [B, D] (mean over D per sample); mask: [B].
    """
    if delta <= 0:
        raise ValueError(f"delta must be > 0; got {delta}")
    pred, target, mask = _check_regression_inputs(pred, target, mask)
    r = (pred - target).abs()
    per = torch.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))
    return reduce_masked(per.mean(dim=1), mask, reduction)


def mse_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Squared error (pred - target)^2, mean over D per sample. pred, target: [B] or [B, D]."""
    pred, target, mask = _check_regression_inputs(pred, target, mask)
    return reduce_masked((pred - target).pow(2).mean(dim=1), mask, reduction)


def _check_class_target(target: torch.Tensor, batch: int, num_classes: int, mask):
    target = _as_batch(target, "target")
    if target.shape[0] != batch:
        raise ValueError(f"target has shape {_shape(target)}; expected [{batch}]")
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class ids; got dtype {target.dtype}")
    mask = _prepare_mask(mask, batch, target.device)
    target = _fill_masked(target.long(), mask, 0)
    if _outside(target, 0, num_classes, high_inclusive=False):
        raise ValueError(f"target class ids must lie in [0, {num_classes}) for labelled samples")
    return target, mask


def nll_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    eps: float = PROB_EPS,
) -> torch.Tensor:
    """Negative log-likelihood of softmax outputs (eq-nll): -log max(p_{b, y_b}, eps).

    probs: [B, C] rows on the simplex (a softmax output); target: [B] int64 class ids;
    mask: [B]. Equals cross-entropy on the logits whenever p_{b, y_b} >= eps.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs has shape {_shape(probs)}; expected [B, C] (softmax output)")
    _check_finite(probs, "probs")
    probs = probs.to(_compute_dtype(probs))
    row_sum = probs.sum(dim=1)
    if (probs < 0).any() or ((row_sum - 1).abs() > 1e-3).any():
        raise ValueError("probs rows must be probability vectors (non-negative, summing to 1)")
    target, mask = _check_class_target(target, probs.shape[0], probs.shape[1], mask)
    p_y = probs.gather(1, target[:, None])[:, 0].clamp_min(eps)
    return reduce_masked(-torch.log(p_y), mask, reduction)


def info_nce_loss(
    query: torch.Tensor,
    keys: torch.Tensor,
    target: torch.Tensor,
    temperature: float = INFONCE_TEMPERATURE,
    normalize: bool = True,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE over a fixed candidate set (eq-infonce): -log softmax(q . k_i / tau)_{y}.

    query: [B, D] (the contrastive tower's embedding); keys: [C, D] (one embedding per brand,
    C = 128 in the world); target: [B] int64, the positive key of each query. With
    normalize=True both sides are L2-normalised first (cosine similarity), the usual setting
    for tau = 0.07.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if query.dim() != 2:
        raise ValueError(f"query has shape {_shape(query)}; expected [B, D]")
    if keys.dim() != 2 or keys.shape[1] != query.shape[1]:
        raise ValueError(f"keys has shape {_shape(keys)}; expected [C, {query.shape[1]}]")
    _check_finite(query, "query")
    _check_finite(keys, "keys")
    dtype = _compute_dtype(query)
    q, k = query.to(dtype), keys.to(dtype)
    if normalize:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    target, mask = _check_class_target(target, q.shape[0], k.shape[0], mask)
    logits = q @ k.T / temperature
    return reduce_masked(F.cross_entropy(logits, target, reduction="none"), mask, reduction)


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
    An unknown task name raises ValueError naming it.
    """
    spec = get_task(task) if isinstance(task, str) else task
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


def _check_task_losses(losses: Mapping[str, torch.Tensor], known: Sequence[str]) -> None:
    if not isinstance(losses, Mapping):
        raise ValueError(f"losses must be a mapping task name -> scalar tensor; got {type(losses).__name__}")
    for name, value in losses.items():
        if name not in known:
            raise ValueError(f"unknown task {name!r}; this weighting knows {list(known)}")
        if not torch.is_tensor(value) or value.dim() != 0:
            raise ValueError(f"loss of task {name!r} must be a scalar tensor")
        if not torch.isfinite(value):
            raise ValueError(f"loss of task {name!r} is {value.item()} (not finite)")


def _task_weight_vector(task_names: Sequence[str], weights: Mapping[str, float] | None) -> torch.Tensor:
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(task_names))
    if unknown:
        raise ValueError(f"weights name unknown task(s) {unknown}")
    if any(w < 0 for w in weights.values()):
        raise ValueError("task weights must be >= 0")
    return torch.tensor([float(weights.get(t, 1.0)) for t in task_names])


class FixedWeighting(nn.Module):
    """L = sum_k w_k L_k with fixed weights (missing weights default to 1; all-1 = equal)."""

    def __init__(self, task_names: Sequence[str], weights: Mapping[str, float] | None = None):
        super().__init__()
        self.task_names = tuple(task_names)
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"task_names has duplicates: {list(self.task_names)}")
        self.register_buffer("task_weights", _task_weight_vector(self.task_names, weights))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """losses: task name -> scalar loss (a subset of task_names) -> scalar total."""
        _check_task_losses(losses, self.task_names)
        total = torch.zeros((), dtype=torch.float32)
        for k, name in enumerate(self.task_names):
            if name in losses:
                total = total + self.task_weights[k] * losses[name].float()
        return total


class UncertaintyWeighting(nn.Module):
    """Homoscedastic uncertainty weighting (eq-uncertainty), the post's form.

    L = sum_k w_k (exp(-s_k) L_k + s_k),  s_k = clamp(task_log_vars[k], -4, 4) = log sigma_k^2.
    w_k: fixed task weights (default 1). For a fixed L_k the optimum is s_k* = log L_k (clamped),
    where the effective weight on L_k is w_k / L_k. `task_log_vars`: [K] trainable, init 0.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        weights: Mapping[str, float] | None = None,
        log_var_bounds: tuple[float, float] = LOG_VAR_BOUNDS,
        init_log_var: float = 0.0,
    ):
        super().__init__()
        self.task_names = tuple(task_names)
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"task_names has duplicates: {list(self.task_names)}")
        lo, hi = log_var_bounds
        if not lo < hi:
            raise ValueError(f"log_var_bounds must satisfy low < high; got {log_var_bounds}")
        self.log_var_bounds = (float(lo), float(hi))
        self.register_buffer("task_weights", _task_weight_vector(self.task_names, weights))
        self.task_log_vars = nn.Parameter(torch.full((len(self.task_names),), float(init_log_var)))

    def log_vars(self) -> torch.Tensor:
        """s_k clamped to log_var_bounds, [K]."""
        return self.task_log_vars.clamp(*self.log_var_bounds)

    def effective_weights(self) -> dict[str, float]:
        """w_k exp(-s_k): the multiplier each task's loss currently gets."""
        eff = (self.task_weights * torch.exp(-self.log_vars())).detach()
        return {t: float(v) for t, v in zip(self.task_names, eff)}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """losses: task name -> scalar loss (a subset of task_names) -> scalar total."""
        _check_task_losses(losses, self.task_names)
        s = self.log_vars()
        total = torch.zeros((), dtype=torch.float32, device=s.device)
        for k, name in enumerate(self.task_names):
            if name in losses:
                total = total + self.task_weights[k] * (torch.exp(-s[k]) * losses[name].float() + s[k])
        return total
