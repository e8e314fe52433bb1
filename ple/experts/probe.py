"""ple.experts.probe -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['KINDS', 'LinearHeads', 'PoolProbe', 'target_loss', 'fit_probe', 'predict', 'BestEpochPredictions', 'embed', 'score']

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from ple.experts.pool import ExpertInputs, ExpertPool

KINDS = ("regression", "binary", "multiclass")


class LinearHeads(nn.Module):
    """One linear head per target: ``out_k = W_k h + b_k``. h `[B, in_dim]` -> {target: `[B, head_dim]`}."""

    def __init__(self, in_dim: int, head_dims: dict[str, int]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({k: nn.Linear(in_dim, d) for k, d in head_dims.items()})

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: head(h) for k, head in self.heads.items()}


class PoolProbe(nn.Module):
    """Experts (an ExpertPool, any subset) and one linear head per target.

    ``out_k = W_k h_shared + b_k`` with h_shared the pool's concatenation `[B, pool.output_dim]`.

    Args:
        pool: the experts.
        head_dims: target name -> head width (1 for regression and binary, C for C classes).
    """

    def __init__(self, pool: ExpertPool, head_dims: dict[str, int]) -> None:
        super().__init__()
        self.pool = pool
        self.heads = LinearHeads(pool.output_dim, head_dims)

    def forward(self, inputs: ExpertInputs) -> dict[str, torch.Tensor]:
        """inputs (batch of B) -> {target: `[B, head_dim]`}."""
        return self.heads(self.pool(inputs).shared)


def target_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE (regression, y `[B]` float), BCE with logits (binary, y `[B]` in {0, 1}), or softmax
    cross-entropy (multiclass, y `[B]` int). out `[B, head_dim]`."""
    if kind == "regression":
        return F.mse_loss(out.squeeze(-1), y)
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(out.squeeze(-1), y)
    if kind == "multiclass":
        return F.cross_entropy(out, y)
    raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")


def _total_loss(model: PoolProbe, inputs: ExpertInputs, targets: dict[str, torch.Tensor],
                kinds: dict[str, str], b: torch.Tensor) -> torch.Tensor:
    out = model(inputs.index(b))
    return sum(target_loss(kinds[k], out[k], y[b]) for k, y in targets.items())


def fit_probe(
    model: PoolProbe,
    inputs: ExpertInputs,
    targets: dict[str, torch.Tensor],
    kinds: dict[str, str],
    train_idx: np.ndarray,
    *,
    val_idx: np.ndarray | None = None,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    regularizer_weight: float = 1.0,
    seed: int = 0,
    on_epoch: Callable[[PoolProbe, int], None] | None = None,
) -> dict[str, list[float]]:
    """Train `model` on the rows `train_idx` with AdamW.

    The loss is the sum over targets of `target_loss`, plus `regularizer_weight` times the pool's
    regulariser (the Causal expert's NOTEARS term when it is present). With `val_idx`, the
    parameters of the epoch with the lowest validation loss are kept (early stopping).
    `on_epoch(model, epoch)` is called after every epoch (in eval mode), e.g. to keep each target's
    predictions from its own best epoch.

    Returns:
        {"train": mean training loss per epoch, "val": validation loss per epoch (if val_idx)}.
    """
    unknown = set(targets) - set(model.heads.heads)
    if unknown:
        raise ValueError(f"targets {sorted(unknown)} have no head; heads are {sorted(model.heads.heads)}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    idx = torch.as_tensor(np.asarray(train_idx), dtype=torch.long)
    history: dict[str, list[float]] = {"train": [], "val": []}
    best, best_state = float("inf"), None
    for _ in range(epochs):
        model.train()
        perm = idx[torch.randperm(len(idx), generator=gen)]
        total, batches = 0.0, 0
        for start in range(0, len(perm), batch_size):
            loss = _total_loss(model, inputs, targets, kinds, perm[start : start + batch_size])
            if regularizer_weight:
                loss = loss + regularizer_weight * model.pool.regularizer()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, batches = total + float(loss.detach()), batches + 1
        history["train"].append(total / batches)
        if on_epoch is not None:
            model.eval()
            on_epoch(model, len(history["train"]) - 1)
        if val_idx is not None:
            model.eval()
            with torch.no_grad():
                v = torch.as_tensor(np.asarray(val_idx), dtype=torch.long)
                val = float(_total_loss(model, inputs, targets, kinds, v))
            history["val"].append(val)
            if val < best:
                best, best_state = val, {k: t.clone() for k, t in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


@torch.no_grad()
def predict(model: PoolProbe, inputs: ExpertInputs, idx: np.ndarray, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Head outputs for the rows `idx`: {target: `[n, head_dim]`} as float64 arrays."""
    model.eval()
    idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in model.heads.heads}
    for start in range(0, len(idx_t), batch_size):
        out = model(inputs.index(idx_t[start : start + batch_size]))
        for k, v in out.items():
            parts[k].append(v)
    return {k: torch.cat(v).double().numpy() for k, v in parts.items()}


class BestEpochPredictions:
    """An `on_epoch` callback: for every target, the test predictions of the epoch whose
    validation score (`score`) is best for that target — early stopping target by target."""

    def __init__(self, inputs: ExpertInputs, targets: dict[str, torch.Tensor], kinds: dict[str, str],
                 val_idx: np.ndarray, test_idx: np.ndarray) -> None:
        self.inputs, self.kinds, self.val_idx, self.test_idx = inputs, kinds, val_idx, test_idx
        self.y_val = {k: t.numpy()[val_idx] for k, t in targets.items()}
        self.best_score: dict[str, float] = {}
        self.best_epoch: dict[str, int] = {}
        self.test_pred: dict[str, np.ndarray] = {}

    def __call__(self, model: PoolProbe, epoch: int) -> None:
        val = predict(model, self.inputs, self.val_idx)
        test = None
        for k, y in self.y_val.items():
            s = score(self.kinds[k], val[k], y)
            if k not in self.best_score or s > self.best_score[k]:
                test = predict(model, self.inputs, self.test_idx) if test is None else test
                self.best_score[k], self.best_epoch[k], self.test_pred[k] = s, epoch, test[k]


@torch.no_grad()
def embed(pool: ExpertPool, inputs: ExpertInputs, batch_size: int = 1024) -> torch.Tensor:
    """The pool's shared concatenation for every row of `inputs`: `[N, pool.output_dim]`."""
    pool.eval()
    n = inputs.batch_size
    return torch.cat([pool(inputs.index(slice(s, s + batch_size))).shared for s in range(0, n, batch_size)])


def score(kind: str, pred: np.ndarray, y: np.ndarray) -> float:
    """R² (regression; pred `[n]` or `[n, 1]`), ROC AUC (binary; any monotone score `[n]`), or
    accuracy (multiclass; scores or probabilities `[n, C]`)."""
    y = np.asarray(y)
    pred = np.asarray(pred, dtype=np.float64)
    if kind == "regression":
        p = pred.reshape(len(y))
        return float(1 - np.mean((y - p) ** 2) / np.var(y))
    if kind == "binary":
        return float(roc_auc_score(y, pred.reshape(len(y))))
    if kind == "multiclass":
        return float(np.mean(pred.argmax(-1) == y))
    raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
