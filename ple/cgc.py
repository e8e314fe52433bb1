"""ple.cgc -- generated from book/ple2_progressive_layered_extraction.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['CGCOutput', 'CGC', 'PLE', 'masked_task_loss', 'SingleTaskModels', 'TabularEmbedding', 'EncodedModel', 'MODEL_NAMES', 'build_model', 'TASK_TYPES', 'MultiTaskData', 'TrainResult', 'predict', 'evaluate', 'train_multitask', 'CENSUS_PAPER_TASKS', 'census_multitask_data', 'run_census', 'mmoe_synthetic_splits', 'run_mmoe_synthetic']

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from ple import seed_everything
from ple.layers import MLP, StackedMLP, check_dropout, check_features, count_parameters
from ple.mmoe import per_task_out_dims


def _check_int(value: object, name: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return value


def _check_dims(dims: Sequence[int], name: str, allow_empty: bool) -> tuple[int, ...]:
    dims = tuple(dims)
    if not allow_empty and not dims:
        raise ValueError(f"{name} must name at least one width; got ()")
    for d in dims:
        _check_int(d, f"every entry of {name}", 1)
    return dims


class CGCOutput(NamedTuple):
    """What one extraction level returns (K tasks, m_t task experts each, m_s shared experts).

    task        [B, K, D_e]            g^k, the gated mixture for every task (eq-cgc-mix)
    shared      [B, D_e] or None       g^s, the shared gate's mixture (eq-ple-shared); None at
                                       the last level, which has no shared gate
    task_gates  [B, K, m_t + m_s]      w^k, own experts first, then the shared ones (eq-cgc-gate)
    shared_gate [B, K * m_t + m_s] or None   w^s over task 1's experts, ..., task K's, shared
    """

    task: Tensor
    shared: Tensor | None
    task_gates: Tensor
    shared_gate: Tensor | None


class CGC(nn.Module):
    """One extraction level: task-private experts, shared experts and per-task gates.

    Task k's gate is a softmax over its own experts and the shared experts only
    (eq-cgc-gate, eq-cgc-mix):

        w^k = softmax(W^k_g h_k)  in R^{m_t + m_s}      (+ b^k_g with gate_bias=True)
        g^k = sum_j w^k_j E_{k,j}(h_k) + sum_i w^k_{m_t+i} E_{s,i}(h_s)

    With ``shared_gate=True`` (every level of a multi-level PLE but the last) the level also
    returns the shared gate's mixture over *all* experts of the level (eq-ple-shared):

        w^s = softmax(W^s_g h_s)  in R^{K m_t + m_s}
        g^s = sum over every expert e of the level of w^s_e e(input of e)

    Inputs: at the first level every group reads the features ``x [B, input_dim]``; at level
    l > 1 task k's experts and gate read ``x[:, k]`` of ``x [B, K, input_dim]`` (task k's output
    of level l-1) and the shared experts and shared gate read ``shared_x [B, input_dim]``.
    Experts: one ``ple.layers.StackedMLP(m, input_dim, expert_dims)`` bank per group (task k's
    ``task_experts[k]``, ``shared_experts``); member j of a bank is the MLP E_{k,j}
    (``bank.member(j)`` returns it as a ``ple.layers.MLP``). Gates: ``nn.Linear`` + softmax,
    no hidden layer, no norm, and no bias unless ``gate_bias=True`` (the paper's gate is
    softmax(W h)).
    """

    def __init__(
        self,
        input_dim: int,
        num_tasks: int,
        num_task_experts: int = 1,
        num_shared_experts: int = 1,
        expert_dims: Sequence[int] = (64,),
        dropout: float = 0.0,
        shared_gate: bool = False,
        gate_bias: bool = False,
    ) -> None:
        super().__init__()
        self.input_dim = _check_int(input_dim, "input_dim", 1)
        self.num_tasks = _check_int(num_tasks, "num_tasks", 1)
        self.num_task_experts = _check_int(num_task_experts, "num_task_experts", 0)
        self.num_shared_experts = _check_int(num_shared_experts, "num_shared_experts", 0)
        if num_task_experts + num_shared_experts < 1:
            raise ValueError(
                "a task gate needs at least one expert: num_task_experts + num_shared_experts "
                f"= {num_task_experts} + {num_shared_experts}; expected >= 1"
            )
        if shared_gate and num_shared_experts < 1:
            raise ValueError(
                "shared_gate=True feeds the next level's shared experts; it needs "
                f"num_shared_experts >= 1, got {num_shared_experts}"
            )
        expert_dims = _check_dims(expert_dims, "expert_dims", allow_empty=False)
        dropout = check_dropout(dropout)
        self.expert_dim = expert_dims[-1]
        # one bank of stacked experts per group: task 1, ..., task K, shared
        self.task_experts = nn.ModuleList(
            StackedMLP(num_task_experts, input_dim, expert_dims, dropout)
            for _ in range(num_tasks if num_task_experts else 0)
        )
        self.shared_experts = (
            StackedMLP(num_shared_experts, input_dim, expert_dims, dropout)
            if num_shared_experts
            else None
        )
        # eq-cgc-gate: one Linear per task over (own + shared) experts
        self.task_gates = nn.ModuleList(
            nn.Linear(input_dim, num_task_experts + num_shared_experts, bias=gate_bias)
            for _ in range(num_tasks)
        )
        # eq-ple-shared: the shared gate mixes every expert of the level
        self.shared_gate = (
            nn.Linear(input_dim, num_tasks * num_task_experts + num_shared_experts, bias=gate_bias)
            if shared_gate
            else None
        )

    def _inputs(self, x: Tensor, shared_x: Tensor | None) -> tuple[list[Tensor], Tensor | None]:
        needs_shared = self.num_shared_experts > 0 or self.shared_gate is not None
        if x.dim() == 2:
            check_features(x, self.input_dim, "features", "input_dim")
            task_x = [x] * self.num_tasks
            if shared_x is None:
                return task_x, x
        else:
            if x.dim() != 3 or x.shape[1] != self.num_tasks or x.shape[2] != self.input_dim:
                raise ValueError(
                    f"features has shape {list(x.shape)}; expected [B, {self.input_dim}] "
                    f"(input_dim) or [B, {self.num_tasks}, {self.input_dim}] (num_tasks, input_dim)"
                )
            task_x = list(x.unbind(1))
            for k, t in enumerate(task_x):
                check_features(t, self.input_dim, f"features[:, {k}]", "input_dim")
            if shared_x is None:
                if needs_shared:
                    raise ValueError(
                        "shared_x is None; a level with shared experts or a shared gate that "
                        f"reads per-task inputs [B, K, D] needs shared_x [B, {self.input_dim}]"
                    )
                return task_x, None
        check_features(shared_x, self.input_dim, "shared_x", "input_dim")
        if shared_x.shape[0] != x.shape[0]:
            raise ValueError(
                f"shared_x has shape {list(shared_x.shape)}; expected "
                f"[{x.shape[0]}, {self.input_dim}] (the batch of features)"
            )
        return task_x, shared_x

    def forward(self, x: Tensor, shared_x: Tensor | None = None) -> CGCOutput:
        """x [B, input_dim] or [B, K, input_dim]; shared_x [B, input_dim] -> CGCOutput."""
        task_x, s_x = self._inputs(x, shared_x)
        B, K, D = x.shape[0], self.num_tasks, self.expert_dim
        m_s = self.num_shared_experts
        # experts, one stacked call per group: task [B, K, m_t, D], shared [B, m_s, D]
        if self.num_task_experts:
            task_e = torch.stack([bank(task_x[k]) for k, bank in enumerate(self.task_experts)], 1)
        else:
            task_e = x.new_zeros(B, K, 0, D)
        shared_e = self.shared_experts(s_x) if m_s else x.new_zeros(B, 0, D)
        # S^k = [E_{k,1..m_t}; E_{s,1..m_s}]: [B, K, m_t + m_s, D]
        S = torch.cat([task_e, shared_e.unsqueeze(1).expand(B, K, m_s, D)], dim=2)
        # eq-cgc-gate, all K task gates in one einsum: logits [B, K, m_t + m_s]
        W = torch.stack([gate.weight for gate in self.task_gates])  # [K, m_t + m_s, d]
        if x.dim() == 2:
            logits = torch.einsum("bd,knd->bkn", x, W)
        else:
            logits = torch.einsum("bkd,knd->bkn", x, W)
        if self.task_gates[0].bias is not None:
            logits = logits + torch.stack([gate.bias for gate in self.task_gates])
        task_gates = torch.softmax(logits, dim=-1)
        task_out = torch.einsum("bkn,bknd->bkd", task_gates, S)  # eq-cgc-mix
        shared_out = shared_gates = None
        if self.shared_gate is not None:
            # eq-ple-shared: every expert of the level, task 1's ... task K's, then shared
            S_all = torch.cat([task_e.flatten(1, 2), shared_e], dim=1)  # [B, K m_t + m_s, D]
            shared_gates = torch.softmax(self.shared_gate(s_x), dim=-1)
            shared_out = torch.einsum("bn,bnd->bd", shared_gates, S_all)
        return CGCOutput(task_out, shared_out, task_gates, shared_gates)


class PLE(nn.Module):
    """Progressive Layered Extraction: ``num_levels`` CGC levels, then one tower per task.

    Level 1 reads the features; at level l > 1 task k's experts and gate read task k's
    output of level l-1 and the shared experts read the shared gate's output of level l-1
    (eq-ple-level). Every level but the last has a shared gate over all its experts
    (eq-ple-shared). The towers read the last level (eq-ple-tower):

        y_k = t^k(g^{k,L})

    ``num_levels=1`` is the single-level CGC model of the paper.

    forward(x [B, input_dim]) -> list of K tensors [B, out_k]; with ``return_gates=True``
    also the list of per-level ``(task_gates [B, K, m_t + m_s], shared_gate [B, K m_t + m_s]
    or None)``.
    """

    def __init__(
        self,
        input_dim: int,
        num_tasks: int,
        num_levels: int = 2,
        num_task_experts: int = 1,
        num_shared_experts: int = 1,
        expert_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        task_out_dims: int | Sequence[int] = 1,
        dropout: float = 0.0,
        gate_bias: bool = False,
    ) -> None:
        super().__init__()
        self.input_dim = _check_int(input_dim, "input_dim", 1)
        self.num_tasks = _check_int(num_tasks, "num_tasks", 1)
        self.num_levels = _check_int(num_levels, "num_levels", 1)
        expert_dims = _check_dims(expert_dims, "expert_dims", allow_empty=False)
        tower_dims = _check_dims(tower_dims, "tower_dims", allow_empty=True)
        self.task_out_dims = per_task_out_dims(task_out_dims, num_tasks)
        levels = []
        for level in range(num_levels):
            last = level == num_levels - 1
            levels.append(
                CGC(
                    input_dim if level == 0 else expert_dims[-1],
                    num_tasks,
                    num_task_experts,
                    num_shared_experts,
                    expert_dims,
                    dropout,
                    shared_gate=(not last) and num_shared_experts > 0,
                    gate_bias=gate_bias,
                )
            )
        self.levels = nn.ModuleList(levels)
        self.towers = nn.ModuleList(
            MLP(expert_dims[-1], tower_dims, out_dim=out, dropout=dropout)
            for out in self.task_out_dims
        )

    def forward(
        self, x: Tensor, return_gates: bool = False
    ) -> list[Tensor] | tuple[list[Tensor], list[tuple[Tensor, Tensor | None]]]:
        check_features(x, self.input_dim, "features", "input_dim")
        out = self.levels[0](x)
        gates = [(out.task_gates, out.shared_gate)]
        for level in self.levels[1:]:
            # eq-ple-level: task k reads g^{k,l-1}, shared experts read g^{s,l-1}
            out = level(out.task, shared_x=out.shared)
            gates.append((out.task_gates, out.shared_gate))
        preds = [tower(out.task[:, k]) for k, tower in enumerate(self.towers)]  # eq-ple-tower
        return (preds, gates) if return_gates else preds


def masked_task_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    weight: Tensor | None = None,
) -> Tensor:
    """Task loss over the samples in the task's sample space only (eq-sample-space).

        L_k = sum_i delta_k^i w_i l_k(pred_i, y_i) / sum_i delta_k^i w_i

    pred [B, ...], target [B, ...] and mask [B] (bool or 0/1: delta_k^i, the label of sample i is
    defined for task k); weight [B] optional per-sample weights w_i (default 1). ``loss_fn`` is an
    unreduced loss (``reduction="none"``) returning [n] or [n, ...] per selected sample; extra
    dims are averaged. The masked-out rows never reach ``loss_fn`` (their targets may be NaN),
    and a batch with no defined label returns a 0 that is still attached to the graph, so its
    gradient is exactly zero rather than NaN.
    """
    if pred.dim() == 0 or target.shape[0] != pred.shape[0]:
        raise ValueError(
            f"target has shape {list(target.shape)}; expected [{pred.shape[0] if pred.dim() else 'B'}, ...] "
            f"(one row per row of pred {list(pred.shape)})"
        )
    if mask.shape != (pred.shape[0],):
        raise ValueError(f"mask has shape {list(mask.shape)}; expected [{pred.shape[0]}] (batch)")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be bool or 0/1")
        mask = mask.bool()
    if weight is not None:
        if weight.shape != (pred.shape[0],):
            raise ValueError(
                f"weight has shape {list(weight.shape)}; expected [{pred.shape[0]}] (batch)"
            )
        if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
            raise ValueError("weight must be finite and >= 0")
    sel_pred, sel_target = pred[mask], target[mask]
    losses = loss_fn(sel_pred, sel_target)
    if losses.dim() == 0 or losses.shape[0] != sel_pred.shape[0]:
        raise ValueError(
            f"loss_fn returned shape {list(losses.shape)}; expected [{sel_pred.shape[0]}, ...] "
            "(an unreduced per-sample loss, reduction='none')"
        )
    if losses.dim() > 1:
        losses = losses.flatten(1).mean(1)
    if weight is None:
        w = torch.ones_like(losses)
    else:
        w = weight[mask].to(losses.dtype)
    # all-masked batch: numerator is an empty sum (0, still on the graph), denominator clamped.
    return (w * losses).sum() / w.sum().clamp_min(torch.finfo(losses.dtype).tiny)


class SingleTaskModels(nn.Module):
    """The single-task baseline: K independent networks, no parameter shared between tasks.

    Net k is ``MLP(input_dim, (*hidden_dims, *tower_dims), out_k)``. Trained on the summed loss
    its parameters get task k's gradient only, so joint training equals K separate runs
    (Adam's update is per parameter). forward(x [B, input_dim]) -> list of K tensors [B, out_k].
    """

    def __init__(
        self,
        input_dim: int,
        num_tasks: int,
        hidden_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        task_out_dims: int | Sequence[int] = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dim = _check_int(input_dim, "input_dim", 1)
        self.num_tasks = _check_int(num_tasks, "num_tasks", 1)
        self.hidden_dims = _check_dims(hidden_dims, "hidden_dims", allow_empty=True)
        tower_dims = _check_dims(tower_dims, "tower_dims", allow_empty=True)
        self.task_out_dims = per_task_out_dims(task_out_dims, num_tasks)
        dropout = check_dropout(dropout)
        self.nets = nn.ModuleList(
            MLP(input_dim, (*self.hidden_dims, *tower_dims), out_dim=out, dropout=dropout)
            for out in self.task_out_dims
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        check_features(x, self.input_dim, "features", "input_dim")
        return [net(x) for net in self.nets]


class TabularEmbedding(nn.Module):
    """Categorical codes -> learned embeddings, concatenated with the numerical features.

    categorical [B, C] int64 (column c in 0..cat_cardinalities[c]-1), numerical [B, M] float
    -> [B, C * embedding_dim + M]. ``out_features`` is that width.
    """

    def __init__(
        self, cat_cardinalities: Sequence[int], num_numerical: int, embedding_dim: int = 4
    ) -> None:
        super().__init__()
        self.cat_cardinalities = _check_dims(cat_cardinalities, "cat_cardinalities", True)
        self.num_numerical = _check_int(num_numerical, "num_numerical", 0)
        _check_int(embedding_dim, "embedding_dim", 1)
        self.embedding_dim = embedding_dim
        # one table for all columns; column c's codes start at offsets[c] (one lookup per batch)
        self.embedding = nn.Embedding(max(sum(self.cat_cardinalities), 1), embedding_dim)
        offsets = np.concatenate([[0], np.cumsum(self.cat_cardinalities)[:-1]]).astype(np.int64)
        self.register_buffer("offsets", torch.as_tensor(offsets[: len(self.cat_cardinalities)]))
        self.register_buffer("cardinalities", torch.as_tensor(self.cat_cardinalities, dtype=torch.long))
        self.out_features = len(self.cat_cardinalities) * embedding_dim + self.num_numerical

    def forward(self, categorical: Tensor, numerical: Tensor) -> Tensor:
        C = len(self.cat_cardinalities)
        if categorical.dim() != 2 or categorical.shape[1] != C:
            raise ValueError(
                f"categorical has shape {list(categorical.shape)}; expected [B, {C}] (cat columns)"
            )
        if categorical.dtype != torch.long:
            raise ValueError(f"categorical has dtype {categorical.dtype}; expected torch.int64")
        if C and (bool((categorical < 0).any()) or bool((categorical >= self.cardinalities).any())):
            raise ValueError("categorical has a code outside 0..cardinality-1 of its column")
        check_features(numerical, self.num_numerical, "numerical", "num_numerical")
        if numerical.shape[0] != categorical.shape[0]:
            raise ValueError(
                f"numerical has shape {list(numerical.shape)}; expected "
                f"[{categorical.shape[0]}, {self.num_numerical}] (rows of categorical)"
            )
        emb = self.embedding(categorical + self.offsets).flatten(1)  # [B, C * embedding_dim]
        return torch.cat([emb, numerical], dim=1)


class EncodedModel(nn.Module):
    """``body(encoder(*inputs))``: an input encoder (e.g. TabularEmbedding) under a multi-task body.

    forward(*inputs, return_gates=False) passes ``return_gates`` on to bodies that take it.
    """

    def __init__(self, encoder: nn.Module, body: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.body = body

    def forward(self, *inputs: Tensor, return_gates: bool = False):
        z = self.encoder(*inputs)
        return self.body(z, return_gates=True) if return_gates else self.body(z)


MODEL_NAMES = ("single_task", "shared_bottom", "mmoe", "cgc", "ple")


def _match_width(factory: Callable[[int], nn.Module], target: int) -> int:
    """The width w whose count_parameters(factory(w)) is nearest target (counts grow with w)."""
    hi = 1
    while count_parameters(factory(hi)) < target:  # doubling, then bisection
        hi *= 2
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:  # first width whose count reaches the target
        mid = (lo + hi) // 2
        if count_parameters(factory(mid)) < target:
            lo = mid + 1
        else:
            hi = mid
    cands = [w for w in (lo - 1, lo) if w >= 1]
    return min(cands, key=lambda w: abs(count_parameters(factory(w)) - target))


def build_model(
    name: str,
    input_dim: int,
    num_tasks: int,
    *,
    num_task_experts: int = 2,
    num_shared_experts: int = 2,
    expert_dim: int = 32,
    tower_dims: Sequence[int] = (16,),
    num_levels: int = 2,
    task_out_dims: int | Sequence[int] = 1,
    dropout: float = 0.0,
    gate_bias: bool = False,
    match_parameters: bool = True,
) -> nn.Module:
    """One of MODEL_NAMES with a parameter count matched to the reference MMoE.

    The reference is ``MMoE`` with ``num_tasks * num_task_experts + num_shared_experts`` experts of
    width ``expert_dim`` (the same number of experts CGC has). With ``match_parameters`` the width of
    every other model (single-task hidden width, Shared-Bottom bottom width, CGC / PLE expert
    width) is the one whose count is nearest the reference's; towers are the same everywhere, and
    MMoE, CGC and PLE share the gate form (``gate_bias``).
    """
    from ple.mmoe import MMoE, SharedBottom

    if name not in MODEL_NAMES:
        raise ValueError(f"name must be one of {MODEL_NAMES}; got {name!r}")
    num_experts = num_tasks * num_task_experts + num_shared_experts
    kw = dict(tower_dims=tuple(tower_dims), task_out_dims=task_out_dims, dropout=dropout)
    gated = dict(kw, gate_bias=gate_bias)  # the same gate form for MMoE, CGC and PLE
    if name == "mmoe":
        return MMoE(input_dim, num_tasks, num_experts=num_experts, expert_dims=(expert_dim,), **gated)
    factories: dict[str, Callable[[int], nn.Module]] = {
        "single_task": lambda w: SingleTaskModels(input_dim, num_tasks, hidden_dims=(w,), **kw),
        "shared_bottom": lambda w: SharedBottom(input_dim, num_tasks, bottom_dims=(w,), **kw),
        "cgc": lambda w: PLE(
            input_dim, num_tasks, 1, num_task_experts, num_shared_experts, (w,), **gated
        ),
        "ple": lambda w: PLE(
            input_dim, num_tasks, num_levels, num_task_experts, num_shared_experts, (w,), **gated
        ),
    }
    width = expert_dim
    if match_parameters:
        reference = MMoE(
            input_dim, num_tasks, num_experts=num_experts, expert_dims=(expert_dim,), **gated
        )
        width = _match_width(factories[name], count_parameters(reference))
    return factories[name](width)


TASK_TYPES = ("binary", "regression")


@dataclass
class MultiTaskData:
    """A multi-task data set as tensors.

    inputs  tuple of tensors, each [N, ...] (what the model's forward takes, in order)
    targets [N, K] float (NaN allowed where ``mask`` is False)
    mask    [N, K] bool, True where task k's label of sample i is defined (None: all defined)
    """

    inputs: tuple[Tensor, ...]
    targets: Tensor
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.targets.dim() != 2:
            raise ValueError(f"targets has shape {list(self.targets.shape)}; expected [N, K]")
        n = self.targets.shape[0]
        for i, t in enumerate(self.inputs):
            if t.shape[0] != n:
                raise ValueError(f"inputs[{i}] has {t.shape[0]} rows; expected {n} (rows of targets)")
        if self.mask is None:
            self.mask = torch.ones_like(self.targets, dtype=torch.bool)
        elif self.mask.shape != self.targets.shape:
            raise ValueError(
                f"mask has shape {list(self.mask.shape)}; expected {list(self.targets.shape)}"
            )
        if bool(torch.isnan(self.targets[self.mask]).any()):
            raise ValueError("targets contains NaN where mask says the label is defined")

    def __len__(self) -> int:
        return self.targets.shape[0]

    @property
    def num_tasks(self) -> int:
        return self.targets.shape[1]

    def task(self, k: int) -> MultiTaskData:
        """The one-task data set of task k."""
        return MultiTaskData(self.inputs, self.targets[:, k : k + 1], self.mask[:, k : k + 1])


@dataclass
class TrainResult:
    """What ``train_multitask`` returns. Metrics are AUC (binary) or MSE (regression) per task.

    val_history, test_history [epochs, K]; best_epoch [K] the epoch of task k's best validation
    metric; val, test [K] the metrics at that epoch.
    """

    metric_names: list[str]
    train_loss: np.ndarray
    val_history: np.ndarray
    test_history: np.ndarray | None
    best_epoch: list[int]
    val: list[float]
    test: list[float] | None
    num_parameters: int
    seconds: float
    models: list[nn.Module] = field(default_factory=list)


@torch.no_grad()
def predict(model: nn.Module, data: MultiTaskData, batch_size: int = 8192) -> list[Tensor]:
    """Model outputs in eval mode, batch by batch -> list of K tensors [N, out_k]."""
    was_training = model.training
    model.eval()
    outs: list[list[Tensor]] = []
    for start in range(0, len(data), batch_size):
        outs.append(model(*(t[start : start + batch_size] for t in data.inputs)))
    model.train(was_training)
    return [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]


def evaluate(
    model: nn.Module, data: MultiTaskData, task_types: Sequence[str], batch_size: int = 8192
) -> list[float]:
    """Per task: ROC AUC of the logit (binary) or MSE (regression) over the defined labels."""
    preds = predict(model, data, batch_size)
    scores = []
    for k, kind in enumerate(task_types):
        m = data.mask[:, k]
        p, y = preds[k][m].squeeze(-1).double(), data.targets[m, k].double()
        if kind == "binary":
            scores.append(float(roc_auc_score(y.numpy(), p.numpy())))
        else:
            scores.append(float(((p - y) ** 2).mean()))
    return scores


def _task_loss(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    if kind == "binary":
        return lambda p, y: F.binary_cross_entropy_with_logits(p.squeeze(-1), y, reduction="none")
    return lambda p, y: F.mse_loss(p.squeeze(-1), y, reduction="none")


def train_multitask(
    model: nn.Module,
    train: MultiTaskData,
    val: MultiTaskData,
    test: MultiTaskData | None = None,
    *,
    task_types: Sequence[str],
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    loss_weights: Sequence[float] | None = None,
    seed: int = 0,
) -> TrainResult:
    """Adam on sum_k lambda_k L_k, every L_k a masked task loss (eq-sample-space); evaluate each epoch.

    Each task's reported metric is taken at the epoch where its validation metric is best (the
    same rule for every model). ``model(*inputs)`` must return a list of K tensors [B, 1].
    Shuffling uses its own generator seeded with ``seed``; seed the model's initialisation
    before building it (``ple.seed_everything``).
    """
    K = train.num_tasks
    task_types = tuple(task_types)
    if len(task_types) != K or any(t not in TASK_TYPES for t in task_types):
        raise ValueError(f"task_types must be {K} entries from {TASK_TYPES}; got {task_types}")
    _check_int(epochs, "epochs", 1)
    _check_int(batch_size, "batch_size", 1)
    lam = [1.0] * K if loss_weights is None else [float(w) for w in loss_weights]
    if len(lam) != K:
        raise ValueError(f"loss_weights has {len(lam)} entries; expected {K}")
    losses = [_task_loss(t) for t in task_types]
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    higher = np.array([t == "binary" for t in task_types])
    t0 = time.perf_counter()
    train_loss, val_hist, test_hist = [], [], []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        total, batches = 0.0, 0
        for start in range(0, len(train), batch_size):
            idx = perm[start : start + batch_size]
            preds = model(*(t[idx] for t in train.inputs))
            y, m = train.targets[idx], train.mask[idx]
            loss = sum(
                lam[k] * masked_task_loss(losses[k], preds[k], y[:, k], m[:, k]) for k in range(K)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        train_loss.append(total / batches)
        val_hist.append(evaluate(model, val, task_types))
        if test is not None:
            test_hist.append(evaluate(model, test, task_types))
    val_arr = np.asarray(val_hist)
    best = [int(np.argmax(val_arr[:, k]) if higher[k] else np.argmin(val_arr[:, k])) for k in range(K)]
    test_arr = np.asarray(test_hist) if test is not None else None
    return TrainResult(
        metric_names=["auc" if h else "mse" for h in higher],
        train_loss=np.asarray(train_loss),
        val_history=val_arr,
        test_history=test_arr,
        best_epoch=best,
        val=[float(val_arr[b, k]) for k, b in enumerate(best)],
        test=None if test_arr is None else [float(test_arr[b, k]) for k, b in enumerate(best)],
        num_parameters=count_parameters(model),
        seconds=time.perf_counter() - t0,
        models=[model],
    )


CENSUS_PAPER_TASKS = ("income", "never_married")


def census_multitask_data(data, tasks: Sequence[str] = CENSUS_PAPER_TASKS) -> MultiTaskData:
    """A ``ple.data.census.CensusData`` split as MultiTaskData: inputs (categorical, numerical)."""
    missing = [t for t in tasks if t not in data.labels]
    if missing:
        raise ValueError(f"tasks {missing} are not Census labels; expected from {sorted(data.labels)}")
    return MultiTaskData(
        inputs=(
            torch.as_tensor(np.asarray(data.categorical), dtype=torch.long),
            torch.as_tensor(np.asarray(data.numerical), dtype=torch.float32),
        ),
        targets=torch.stack(
            [torch.as_tensor(np.asarray(data.labels[t]), dtype=torch.float32) for t in tasks], 1
        ),
    )


def run_census(
    model_name: str,
    splits,
    *,
    tasks: Sequence[str] = CENSUS_PAPER_TASKS,
    seed: int = 0,
    epochs: int = 8,
    batch_size: int = 256,
    lr: float = 3e-3,
    embedding_dim: int = 4,
    num_task_experts: int = 2,
    num_shared_experts: int = 2,
    expert_dim: int = 32,
    tower_dims: Sequence[int] = (16,),
    num_levels: int = 2,
    dropout: float = 0.0,
) -> TrainResult:
    """Train one model of MODEL_NAMES on ``ple.data.census`` splits; test AUC per task.

    Every model reads TabularEmbedding(categorical codes, numerical features). The body is
    ``build_model(model_name, ...)`` (parameters matched to MMoE). ``single_task`` trains one
    network per task, each with its own embedding, on that task alone; its count is the sum.
    """
    train = census_multitask_data(splits.train, tasks)
    val = census_multitask_data(splits.val, tasks)
    test = census_multitask_data(splits.test, tasks)
    K = len(tasks)
    num_numerical = train.inputs[1].shape[1]

    def encoder() -> TabularEmbedding:
        return TabularEmbedding(splits.cat_cardinalities, num_numerical, embedding_dim)

    input_dim = encoder().out_features
    arch = dict(
        num_task_experts=num_task_experts,
        num_shared_experts=num_shared_experts,
        expert_dim=expert_dim,
        tower_dims=tower_dims,
        num_levels=num_levels,
        dropout=dropout,
    )
    fit = dict(task_types=["binary"] * K, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    if model_name != "single_task":
        seed_everything(seed)
        model = EncodedModel(encoder(), build_model(model_name, input_dim, K, **arch))
        return train_multitask(model, train, val, test, **fit)
    width = build_model("single_task", input_dim, K, **arch).hidden_dims
    runs = []
    for k in range(K):
        seed_everything(seed)
        body = SingleTaskModels(input_dim, 1, width, tuple(tower_dims), 1, dropout)
        fit_k = {**fit, "task_types": ["binary"]}
        runs.append(
            train_multitask(EncodedModel(encoder(), body), train.task(k), val.task(k), test.task(k), **fit_k)
        )
    return TrainResult(
        metric_names=["auc"] * K,
        train_loss=np.sum([r.train_loss for r in runs], axis=0),
        val_history=np.concatenate([r.val_history for r in runs], axis=1),
        test_history=np.concatenate([r.test_history for r in runs], axis=1),
        best_epoch=[r.best_epoch[0] for r in runs],
        val=[r.val[0] for r in runs],
        test=[r.test[0] for r in runs],
        num_parameters=sum(r.num_parameters for r in runs),
        seconds=sum(r.seconds for r in runs),
        models=[r.models[0] for r in runs],
    )


def mmoe_synthetic_splits(
    n_train: int, correlation: float, seed: int = 0
) -> tuple[MultiTaskData, MultiTaskData, MultiTaskData]:
    """Train / validation / test MultiTaskData from ``ple.data.mmoe_synthetic`` (one fresh draw
    per seed; validation and test have n_train // 3 rows each)."""
    from ple.data.mmoe_synthetic import make_mmoe_synthetic

    _check_int(n_train, "n_train", 3)
    n_eval = n_train // 3
    data = make_mmoe_synthetic(n_train + 2 * n_eval, correlation, seed=seed)
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.y)
    parts = np.split(np.arange(len(x)), [n_train, n_train + n_eval])
    return tuple(MultiTaskData((x[i],), y[i]) for i in parts)


def run_mmoe_synthetic(
    model_name: str,
    splits: tuple[MultiTaskData, MultiTaskData, MultiTaskData],
    *,
    seed: int = 0,
    epochs: int = 10,
    batch_size: int = 512,
    lr: float = 3e-3,
    num_task_experts: int = 1,
    num_shared_experts: int = 2,
    expert_dim: int = 32,
    tower_dims: Sequence[int] = (8,),
    num_levels: int = 2,
) -> TrainResult:
    """Train one model of MODEL_NAMES (parameters matched to MMoE) on the two regression tasks
    of the MMoE synthetic data; test MSE per task."""
    train, val, test = splits
    seed_everything(seed)
    model = build_model(
        model_name,
        train.inputs[0].shape[1],
        train.num_tasks,
        num_task_experts=num_task_experts,
        num_shared_experts=num_shared_experts,
        expert_dim=expert_dim,
        tower_dims=tower_dims,
        num_levels=num_levels,
    )
    return train_multitask(
        model, train, val, test, task_types=["regression"] * train.num_tasks,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
    )
