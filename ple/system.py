"""ple.system -- generated from book/ple6_full_system.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['LOSS_WEIGHTINGS', 'HMM_INPUT_FIELDS', 'EXPERT_INPUT_FIELDS', 'INPUT_FIELDS', 'SystemConfig', 'PRESETS', 'preset', 'SystemInputs', 'SystemOutput', 'dependency_waves', 'activation', 'logit_loss', 'PLESystem', 'SystemLoss', 'POSTS_BUDGET', 'BUDGET_NOTES', 'PoolCGC', 'synthetic_system_inputs']

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ple import checks
from ple.checks import HyperparameterError, ShapeError, TaskError, check_choice, check_dropout, check_float, check_int
from ple.experts.pool import POSTS_PARAMETER_ESTIMATES, ExpertInputs, ExpertPool, ExpertPoolConfig
from ple.fit import Task
from ple.gates import CGCAttention, CGCLayer, domain_prior_mask, entropy_regularizer
from ple.hmm import HMM_FEATURE_DIM, HMM_PROJECTION_DIM, HMMTripleMode
from ple.layers import StackedMLP, count_parameters
from ple.losses import FixedWeighting, UncertaintyWeighting
from ple.tasks import ACTIVE_TASK_NAMES, EXPERT_NAMES, HMM_MODES, TRANSFER_EDGES, TRANSFER_STRENGTH, TaskSpec, check_transfer_edges, select_tasks
from ple.towers import ClusterTaskExpertBasket, GroupTaskExpertBasket, TaskTower
from ple.transfer import LogitTransfer

LOSS_WEIGHTINGS = ("uncertainty", "fixed", "equal")
HMM_INPUT_FIELDS = tuple(f"hmm_{m}" for m in HMM_MODES)
EXPERT_INPUT_FIELDS = tuple(f.name for f in fields(ExpertInputs))
# the order in which `SystemInputs.as_tuple` lays the inputs out (what `ple.fit` passes to the model)
INPUT_FIELDS: tuple[str, ...] = (*EXPERT_INPUT_FIELDS, *HMM_INPUT_FIELDS, "cluster_probs")


def _widths(name: str, value: object) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise HyperparameterError(f"SystemConfig.{name} must be a tuple of ints >= 1; got {value!r}")
    return tuple(check_int(f"SystemConfig.{name}[{i}]", v) for i, v in enumerate(value))


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise HyperparameterError(f"SystemConfig.{name} must be a bool; got {value!r}")
    return value


@dataclass(frozen=True)
class SystemConfig:
    """Everything that builds a `PLESystem`, with the posts' numbers as defaults (frozen).

    Blocks and their switches (every ablation in the book is one flag):

    * shared experts `experts` (PLE-3), input sizes, `expert_overrides` ((expert, ((kwarg, value),
      ...)), ...) for the experts' internal sizes;
    * task-private experts: `num_task_experts` MLPs per task reading h_shared, width
      `task_expert_dim` (0 experts: Stage 1 gates the shared experts only);
    * Stage 1 `CGCLayer` always; Stage 2 `CGCAttention` when `two_stage_gate` (`dim_normalize`,
      `domain_prior` with `bias_high` / `bias_low`, `entropy_lambda`);
    * `use_hmm`: HMM triple-mode projections (PLE-4);
    * task basket: `use_group_encoder` (GroupTaskExpertBasket, soft GMM cluster embedding), else
      `legacy_basket` (the per-cluster ClusterTaskExpertBasket), else none (towers read the gate
      output directly);
    * `use_transfer`: logit transfer along `transfer_edges` with `transfer_strength`;
    * towers `tower_hidden_dims`, `tower_dropout`;
    * `loss_weighting`: "uncertainty" (Kendall et al., the posts), "fixed" (the registry's task
      weights) or "equal"; `causal_regularizer`: add the Causal expert's DAG term.

    Bad values raise `ple.checks.HyperparameterError` naming the field.
    """

    tasks: tuple[str, ...] = ACTIVE_TASK_NAMES
    experts: tuple[str, ...] = EXPERT_NAMES
    feature_dim: int = 644
    collaborative_dim: int = 64
    hierarchy_dim: int = 47
    poincare_dim: int = 20
    txn_dim: int = 16
    session_dim: int = 8
    diagram_channels: int = 8
    expert_overrides: tuple = ()
    num_task_experts: int = 1
    task_expert_dim: int = 64
    task_expert_hidden: tuple[int, ...] = ()
    two_stage_gate: bool = True
    dim_normalize: bool = True
    domain_prior: bool = True
    bias_high: float = 1.0
    bias_low: float = -1.0
    entropy_lambda: float = 0.01
    use_hmm: bool = True
    use_group_encoder: bool = True
    legacy_basket: bool = False
    group_dims: tuple[int, ...] = (128, 64)
    legacy_hidden_dims: tuple[int, ...] = (16,)
    expert_dim: int = 32
    num_clusters: int = 20
    cluster_dim: int = 32
    basket_dropout: float = 0.0
    use_transfer: bool = True
    transfer_edges: tuple[tuple[str, str, str], ...] = tuple(tuple(e) for e in TRANSFER_EDGES)
    transfer_strength: float = TRANSFER_STRENGTH
    tower_hidden_dims: tuple[int, ...] = (64, 32)
    tower_dropout: float = 0.2
    loss_weighting: str = "uncertainty"
    causal_regularizer: bool = True

    def __post_init__(self) -> None:
        def fix(name, value):
            object.__setattr__(self, name, value)

        if isinstance(self.tasks, str) or not self.tasks:
            raise HyperparameterError(f"SystemConfig.tasks must be a non-empty tuple of task names; got {self.tasks!r}")
        try:
            select_tasks(tuple(self.tasks))
        except ValueError as err:
            raise HyperparameterError(f"SystemConfig.tasks: {err}") from None
        fix("tasks", tuple(self.tasks))
        unknown = [e for e in self.experts if e not in EXPERT_NAMES]
        if isinstance(self.experts, str) or not self.experts or unknown or len(set(self.experts)) != len(self.experts):
            raise HyperparameterError(
                f"SystemConfig.experts must be distinct names from {EXPERT_NAMES}; got {self.experts!r}")
        fix("experts", tuple(self.experts))
        for name in ("feature_dim", "collaborative_dim", "hierarchy_dim", "txn_dim", "session_dim",
                     "diagram_channels", "task_expert_dim", "expert_dim", "num_clusters", "cluster_dim"):
            check_int(f"SystemConfig.{name}", getattr(self, name), 1)
        check_int("SystemConfig.poincare_dim", self.poincare_dim, 0, self.hierarchy_dim)
        check_int("SystemConfig.num_task_experts", self.num_task_experts, 0)
        for name in ("task_expert_hidden", "group_dims", "legacy_hidden_dims", "tower_hidden_dims"):
            fix(name, _widths(name, getattr(self, name)))
        if not self.group_dims:
            raise HyperparameterError("SystemConfig.group_dims must name at least one width; got ()")
        for name in ("two_stage_gate", "dim_normalize", "domain_prior", "use_hmm", "use_group_encoder",
                     "legacy_basket", "use_transfer", "causal_regularizer"):
            _flag(name, getattr(self, name))
        if self.use_group_encoder and self.legacy_basket:
            raise HyperparameterError(
                "SystemConfig.legacy_basket=True needs use_group_encoder=False (they are two task baskets)")
        check_float("SystemConfig.bias_high", self.bias_high)
        check_float("SystemConfig.bias_low", self.bias_low)
        check_float("SystemConfig.entropy_lambda", self.entropy_lambda, 0.0)
        check_float("SystemConfig.transfer_strength", self.transfer_strength, 0.0)
        check_dropout(self.basket_dropout, "SystemConfig.basket_dropout")
        check_dropout(self.tower_dropout, "SystemConfig.tower_dropout")
        check_choice("SystemConfig.loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        edges = tuple(tuple(e) for e in self.transfer_edges)
        try:
            check_transfer_edges(edges, select_tasks(self.tasks))
            LogitTransfer(self.tasks, edges, {t.name: t.output_dim for t in select_tasks(self.tasks)})
        except ValueError as err:
            raise HyperparameterError(f"SystemConfig.transfer_edges: {err}") from None
        fix("transfer_edges", edges)
        over = tuple((str(e), tuple((str(k), v) for k, v in dict(kw).items()))
                     for e, kw in dict(self.expert_overrides).items())
        bad = [e for e, _ in over if e not in self.experts]
        if bad:
            raise HyperparameterError(
                f"SystemConfig.expert_overrides names expert(s) {bad} not in experts {self.experts}")
        fix("expert_overrides", over)

    def replace(self, **changes: Any) -> SystemConfig:
        """A copy with `changes` applied (validated again); unknown fields raise naming them."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise HyperparameterError(f"SystemConfig has no field(s) {unknown}; known: {sorted(known)}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-friendly: tuples become lists); `SystemConfig.from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SystemConfig:
        def tup(v):
            return tuple(tup(x) for x in v) if isinstance(v, (list, tuple)) else v

        return cls(**{k: tup(v) for k, v in d.items()})

    def pool_config(self) -> ExpertPoolConfig:
        """The `ExpertPoolConfig` of the shared experts."""
        return ExpertPoolConfig(
            feature_dim=self.feature_dim, collaborative_dim=self.collaborative_dim,
            hierarchy_dim=self.hierarchy_dim, poincare_dim=self.poincare_dim, txn_dim=self.txn_dim,
            session_dim=self.session_dim, diagram_channels=self.diagram_channels,
            overrides={e: dict(kw) for e, kw in self.expert_overrides})


# Internal sizes of the experts and the task side per preset; the interfaces (expert output widths
# 64 / 128, the 32-wide task experts, 20 clusters, the 16 tasks, the transfer DAG) never change.
_CI_EXPERTS = {
    "deepfm": {"hidden_dims": (64, 32)},
    "hgcn": {"hidden_dims": (64,)},
    "temporal": {"d_model": 16, "ltc_hidden": 16, "ff_dim": 32, "fusion_dim": 64, "n_heads": 2},
    "perslay": {"hidden_dims": (32,)},
    "causal": {"n_vars": 16, "hidden_dim": 64},
    "optimal_transport": {"n_prototypes": 8, "hidden_dims": (32,)},
}
PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(expert_overrides=tuple(_CI_EXPERTS.items()),
               group_dims=(64, 32), tower_hidden_dims=(32, 16)),
    "default": {},
    "full": dict(expert_overrides=(("temporal", {"d_model": 64, "ltc_hidden": 64, "ff_dim": 128}),)),
}


def preset(name: str = "default", **overrides: Any) -> SystemConfig:
    """The `SystemConfig` of a named size ("ci", "default" = the posts, "full") with `overrides`.

    "ci" shrinks the experts' and the task side's internal widths (not their interfaces) so a
    chapter trains in seconds on a CPU; "full" takes the original code's larger Temporal expert.
    """
    check_choice("preset name", name, tuple(PRESETS))
    base = dict(PRESETS[name])
    return SystemConfig().replace(**{**base, **overrides})


@dataclass
class SystemInputs:
    """One batch of everything the system reads (None = missing; a missing input gives zeros).

    * experts: `ExpertInputs` of the seven shared experts (PLE-3); a missing field makes its
      expert output zeros `[B, d_i]`, as the posts specify;
    * hmm: {mode: x [B, 16]} the offline HMM features (PLE-4); a missing mode, or an all-zero
      row, takes the projector's learnt default embedding;
    * cluster_probs: [B, num_clusters] GMM posteriors (PLE-5); missing = the uniform posterior.
    """

    experts: ExpertInputs
    hmm: dict[str, torch.Tensor] | None = None
    cluster_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:  # types, modes and batch sizes: host only, free
        if not isinstance(self.experts, ExpertInputs):
            raise checks.InputTypeError(f"experts must be an ExpertInputs; got {type(self.experts).__name__}")
        if self.hmm is not None:
            if not isinstance(self.hmm, Mapping):
                raise checks.InputTypeError(f"hmm must be a dict {{mode: [B, 16]}}; got {type(self.hmm).__name__}")
            unknown = sorted(set(self.hmm) - set(HMM_MODES))
            if unknown:
                raise HyperparameterError(f"hmm has unknown mode(s) {unknown}; expected modes from {HMM_MODES}")
        rows: dict[str, int] = {}
        for name, x in self._tensors().items():
            if x is None:
                continue
            if not isinstance(x, torch.Tensor):
                raise checks.InputTypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
            if x.dim() == 0:
                raise ShapeError(f"{name} is a 0-d tensor; expected batch first [B, ...]")
            rows[name] = int(x.shape[0])
        if len(set(rows.values())) > 1:
            first = next(iter(rows))
            bad = next(n for n, r in rows.items() if r != rows[first])
            raise ShapeError(f"{bad} has {rows[bad]} rows; expected {rows[first]} (the batch size of {first})")

    @property
    def batch_size(self) -> int:
        for v in (*self._tensors().values(),):
            if v is not None:
                return int(v.shape[0])
        raise ShapeError("every input is None: the batch size is unknown")

    def _tensors(self) -> dict[str, torch.Tensor | None]:
        out = {f: getattr(self.experts, f) for f in EXPERT_INPUT_FIELDS}
        out.update({f"hmm_{m}": (self.hmm or {}).get(m) for m in HMM_MODES})
        out["cluster_probs"] = self.cluster_probs
        return out

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        """The inputs as a tuple in `INPUT_FIELDS` order (what a `ple.fit.Batch` carries)."""
        t = self._tensors()
        missing = [k for k in INPUT_FIELDS if t[k] is None]
        if missing:
            raise ShapeError(f"as_tuple needs every input; missing {missing}")
        return tuple(t[k] for k in INPUT_FIELDS)

    @classmethod
    def from_tuple(cls, tensors: Sequence[torch.Tensor | None]) -> SystemInputs:
        """Inverse of `as_tuple` (entries may be None)."""
        if len(tensors) != len(INPUT_FIELDS):
            raise ShapeError(f"got {len(tensors)} input tensors; expected {len(INPUT_FIELDS)}: {INPUT_FIELDS}")
        d = dict(zip(INPUT_FIELDS, tensors))
        return cls(ExpertInputs(**{f: d[f] for f in EXPERT_INPUT_FIELDS}),
                   {m: d[f"hmm_{m}"] for m in HMM_MODES if d[f"hmm_{m}"] is not None},
                   d["cluster_probs"])

    def index(self, idx) -> SystemInputs:
        """The rows `idx` of every present input."""
        t = self._tensors()
        return SystemInputs.from_tuple(tuple(None if t[k] is None else t[k][idx] for k in INPUT_FIELDS))

    def to(self, device, dtype: torch.dtype | None = None) -> SystemInputs:
        """Every present input on `device` (floating inputs also cast to `dtype` if given)."""
        def move(x):
            if x is None:
                return None
            return x.to(device, dtype) if dtype is not None and x.is_floating_point() else x.to(device)
        t = self._tensors()
        return SystemInputs.from_tuple(tuple(move(t[k]) for k in INPUT_FIELDS))

    def without(self, *names: str) -> SystemInputs:
        """A copy with the named inputs (names from `INPUT_FIELDS`) set to None."""
        bad = [n for n in names if n not in INPUT_FIELDS]
        if bad:
            raise ValueError(f"unknown input(s) {bad}; expected names from {INPUT_FIELDS}")
        t = self._tensors()
        return SystemInputs.from_tuple(tuple(None if k in names else t[k] for k in INPUT_FIELDS))


@dataclass
class SystemOutput:
    """What `PLESystem.run` returns. logits: {task: [B, output_dim]} (the towers' raw outputs);
    gates1 [B, K, num_task_experts + E] (Stage 1), gates2 [B, K, E] (Stage 2, None when off);
    aux: {"entropy", "causal"} regularisers (scalars; only those that are on); hidden:
    {task: h_tower [B, tower_input_dim]}; shared: h_shared [B, D], the experts' concat;
    side: {head name: its outputs} of the heads in `PLESystem.side_heads` ({} when there are none)."""

    logits: dict[str, torch.Tensor]
    gates1: torch.Tensor
    gates2: torch.Tensor | None
    aux: dict[str, torch.Tensor]
    hidden: dict[str, torch.Tensor]
    shared: torch.Tensor | None = None
    side: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def aux_loss(self) -> torch.Tensor | None:
        """The sum of the regularisers (None if there are none)."""
        vals = list(self.aux.values())
        return torch.stack(vals).sum() if vals else None


def dependency_waves(tasks: Sequence[str], edges: Sequence[Sequence[str]]) -> list[list[str]]:
    """Tasks grouped by depth in the transfer DAG (eq-waves): wave 0 has no incoming edge, a task
    in wave l has its deepest source in wave l - 1. Within a wave, tasks keep `tasks`' order.
    With the posts' five edges: 13 tasks, then cvr / retention / spending_category, then ltv /
    brand_prediction."""
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
        raise TaskError(f"tasks must be a non-empty sequence of task names; got {tasks!r}")
    checks.check_unique("tasks", tasks)
    if isinstance(edges, str) or not isinstance(edges, Sequence):
        raise TaskError(f"edges must be a sequence of (source, target, mode) triples; got {edges!r}")
    order = LogitTransfer(tasks, edges, dict.fromkeys(tasks, 1)).order if edges else list(tasks)
    level: dict[str, int] = {}
    for t in order:
        level[t] = 1 + max((level[s] for s, d, *_ in edges if d == t), default=-1)
    n = 1 + max(level.values())
    return [[t for t in tasks if level[t] == lvl] for lvl in range(n)]


def _check_logits(spec: object, logits: object) -> int:
    """Host-only checks of one task's logits [B, output_dim]; returns B."""
    if not isinstance(spec, TaskSpec):
        raise checks.InputTypeError(f"spec must be a TaskSpec (ple.tasks.get_task(name)); got {type(spec).__name__}")
    if not isinstance(logits, torch.Tensor):
        raise checks.InputTypeError(f"logits must be a torch.Tensor; got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[1] != spec.output_dim:
        raise ShapeError(f"logits has shape {list(logits.shape)}; expected [B, {spec.output_dim}] "
                         f"(output_dim of task {spec.name!r})")
    if not logits.is_floating_point():
        raise checks.InputTypeError(f"logits must be floating point; got dtype {logits.dtype}")
    return int(logits.shape[0])


def activation(spec: TaskSpec, logits: torch.Tensor) -> torch.Tensor:
    """The tower's activation for reporting and for sequential / inverse transfer: sigmoid
    (binary), softmax (multiclass), identity otherwise. logits: [B, output_dim]."""
    _check_logits(spec, logits)
    if spec.task_type == "binary":
        return torch.sigmoid(logits)
    if spec.task_type == "multiclass":
        return torch.softmax(logits, dim=-1)
    return logits


def logit_loss(spec: TaskSpec, logits: torch.Tensor, target: torch.Tensor,
               keys: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample loss of one registry task from its tower's LOGITS (eq-system-losses), [B].

    focal: -[y a (1-p)^g log p + (1-y)(1-a) p^g log(1-p)] with log p = logsigmoid(z), no clamp
    (PLE-5's eq-focal-logit); nll: cross-entropy of the logits (the NLL of their softmax);
    mse / huber: mean over output columns; infonce: cross-entropy of cosine similarities to
    `keys` [C, D] over tau. Computed in float32 or wider. Shapes are checked on the host; the
    values (finite logits, labels in range) only while validation is on: no host sync in the step.
    """
    B = _check_logits(spec, logits)
    checks.check_finite(logits, "logits")
    if not isinstance(target, torch.Tensor):
        raise checks.InputTypeError(f"target must be a torch.Tensor; got {type(target).__name__}")
    per_row = spec.output_dim if spec.loss in ("mse", "huber") else 1
    if target.dim() == 0 or target.shape[0] != B or target.numel() != B * per_row:
        want = f"[{B}]" if per_row == 1 else f"[{B}, {per_row}]"
        raise ShapeError(f"target has shape {list(target.shape)}; expected {want} (task {spec.name!r}, batch of logits)")
    if spec.loss == "focal":
        checks.check_range(target, "target", 0.0, 1.0, what="binary labels")
    elif spec.loss in ("nll", "infonce"):
        n_classes = spec.output_dim if spec.loss == "nll" else (None if keys is None else keys.shape[0])
        if n_classes is not None:
            checks.check_range(target, "target", 0, n_classes - 1, what=f"class indices of {n_classes} classes")
    else:
        checks.check_finite(target, "target")
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    B = z.shape[0]
    if spec.loss == "focal":
        z = z.reshape(B)
        y = target.reshape(B).to(z.dtype)
        a, g = spec.focal_alpha, spec.focal_gamma
        log_p, log_q = F.logsigmoid(z), F.logsigmoid(-z)
        return -(y * a * torch.exp(g * log_q) * log_p + (1 - y) * (1 - a) * torch.exp(g * log_p) * log_q)
    if spec.loss == "nll":
        return F.cross_entropy(z, target.reshape(B).long(), reduction="none")
    if spec.loss in ("mse", "huber"):
        y = target.reshape(B, -1).to(z.dtype)
        z = z.reshape(B, -1)
        if spec.loss == "mse":
            return (z - y).square().mean(dim=1)
        return F.huber_loss(z, y, reduction="none", delta=spec.huber_delta).mean(dim=1)
    if spec.loss == "infonce":
        if keys is None:
            raise TaskError(f"task {spec.name!r} uses InfoNCE: pass keys [C, D]")
        sim = F.normalize(z, dim=1) @ F.normalize(keys.to(z.dtype), dim=1).T / spec.infonce_tau
        return F.cross_entropy(sim, target.reshape(B).long(), reduction="none")
    raise TaskError(f"task {spec.name!r} has unknown loss {spec.loss!r}")


class _LogitTasks(nn.Module):
    """What every model of this chapter shares on the task side: the registry tasks, the
    contrastive item table, the loss weighting, and the `ple.fit` plumbing (losses from logits)."""

    def _build_tasks(self, cfg: SystemConfig) -> None:
        self.specs: dict[str, TaskSpec] = {s.name: s for s in select_tasks(cfg.tasks)}
        self.task_names = tuple(cfg.tasks)
        self.item_embeddings = nn.ParameterDict({
            n: nn.Parameter(torch.randn(s.num_classes, s.output_dim) * s.output_dim ** -0.5)
            for n, s in self.specs.items() if s.task_type == "contrastive"})
        weights = {n: s.weight for n, s in self.specs.items()}
        if cfg.loss_weighting == "uncertainty":
            self.weighting: nn.Module = UncertaintyWeighting(self.task_names, weights)
        else:
            self.weighting = FixedWeighting(self.task_names, weights if cfg.loss_weighting == "fixed" else None)

    def _as_inputs(self, inputs: tuple) -> SystemInputs:
        if len(inputs) == 1 and isinstance(inputs[0], SystemInputs):
            return inputs[0]
        if len(inputs) != len(INPUT_FIELDS):
            got = ", ".join(type(x).__name__ for x in inputs)
            raise checks.InputTypeError(f"inputs must be one SystemInputs or the {len(INPUT_FIELDS)} tensors of "
                                        f"SystemInputs.as_tuple() (INPUT_FIELDS); got {len(inputs)} argument(s): {got}")
        return SystemInputs.from_tuple(inputs)

    def check_inputs(self, inputs: SystemInputs) -> None:
        """Every present input against the config: shapes and dtypes (host only, always), and while
        validation is on NaN / inf and cluster_probs being probability vectors; errors name the field."""
        cfg = self.config
        if not isinstance(inputs, SystemInputs):
            raise checks.InputTypeError(f"inputs must be a SystemInputs; got {type(inputs).__name__}")
        B = inputs.batch_size
        want = {
            "features": [B, cfg.feature_dim], "collaborative": [B, cfg.collaborative_dim],
            "hierarchy": [B, cfg.hierarchy_dim], "hierarchy_neighbors": [B, "K", cfg.hierarchy_dim],
            "hierarchy_mask": [B, "K"], "txn_seq": [B, "T", cfg.txn_dim],
            "session_seq": [B, "T", cfg.session_dim], "diagrams": [B, "P", 3], "diagram_mask": [B, "P"],
            **{f"hmm_{m}": [B, HMM_FEATURE_DIM] for m in HMM_MODES},
            "cluster_probs": [B, cfg.num_clusters],
        }
        p = next(self.towers.parameters(), None)
        dtype = torch.float32 if p is None else p.dtype  # the towers' dtype: the system's
        for name, x in inputs._tensors().items():
            if x is not None:
                checks.check_tensor(x, name, want[name], "batch first, as SystemConfig says")
                if x.is_floating_point():
                    checks.check_dtype(x, name, dtype)
        if inputs.cluster_probs is not None:
            checks.check_probabilities(inputs.cluster_probs, "cluster_probs", dim=1)

    def predict_proba(self, inputs: SystemInputs) -> dict[str, torch.Tensor]:
        """Reporting outputs: probabilities (binary [B], multiclass [B, C]), regression values,
        and for contrastive tasks the cosine scores against the item table [B, C]."""
        out = {}
        for t, z in self(inputs).items():
            spec = self.specs[t]
            if spec.task_type == "contrastive":
                out[t] = F.normalize(z, dim=1) @ F.normalize(self.item_embeddings[t], dim=1).T
            else:
                p = activation(spec, z)
                out[t] = p[:, 0] if spec.task_type != "multiclass" and p.shape[1] == 1 else p
        return out

    # ---------------------------------------------------------------- training
    def task_loss(self, name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss [B] of task `name` from its logits (`logit_loss`)."""
        keys = self.item_embeddings[name] if name in self.item_embeddings else None
        return logit_loss(self.specs[name], logits, target, keys)

    def fit_tasks(self) -> tuple[Task, ...]:
        """The tasks for `ple.fit.fit`: losses from logits, metrics from `ple.metrics`."""
        out = []
        for name, spec in self.specs.items():
            def loss(pred, target, _n=name):
                return self.task_loss(_n, pred, target)
            output = None
            if spec.task_type == "contrastive":
                def output(pred, _n=name):
                    return F.normalize(pred, dim=1) @ F.normalize(self.item_embeddings[_n].detach(), dim=1).T
            elif spec.task_type == "regression" and spec.output_dim == 1:
                def output(pred):
                    return pred[:, 0]
            out.append(Task(name, spec.task_type, loss=loss, output=output))
        return tuple(out)

    def for_fit(self) -> nn.Module:
        """This system as `ple.fit.fit` drives it (`returns_aux=True`): (logits, regularisers)."""
        return _FitView(self)

    def aggregator(self) -> nn.Module:
        """The loss aggregation for `ple.fit.fit` (`aggregate=`): this system's weighting."""
        return SystemLoss(self)



class PLESystem(_LogitTasks):
    """The whole model of the posts from one `SystemConfig` (eq-system).

        h_shared = [e_1 || ... || e_7]                                   shared experts (PLE-3)
        t_k = task-private experts of task k, read h_shared              [B, K, n_t, 64]
        s1_k = CGCLayer(h_shared, t_k)                                   Stage 1 (PLE-4)
        s2_k = CGCAttention(h_shared)_k  (dim norm, domain prior)        Stage 2 (PLE-4)
        x_k  = [s2_k || s1_k || HMM_{mode(k)}]                           512 + 64 + 32 = 608
        h_k  = GroupTaskExpertBasket(x, p_cluster)_k                     (PLE-5)
        h_tower_k = h_k + alpha sum_{s -> k} SiLU(LN(Linear(u_s)))      logit transfer (PLE-5)
        z_k = TaskTower_k(h_tower_k)                                     logits

    The task side reads both gate stages (Stage 2 for the re-weighted heterogeneous blocks,
    Stage 1 for the task-private experts that only it mixes in). Switched-off blocks drop their
    part of x_k. `forward(*inputs)` takes the tensors of `SystemInputs.as_tuple()` (or one
    `SystemInputs`) and returns {task: logits}; `run` returns the full `SystemOutput`.
    The forward is batched: Stage-2 scaling folded into the group encoders' first Linear
    (no [B, K, 512] copy), the three HMM projectors in one einsum, the towers in dependency
    waves with stacked weights, no host sync; `reference_forward` is the clear composition.
    The heads in `side_heads` (next chapter: SAE, evidential) run after the towers on
    (h_shared, hidden); `run` returns h_shared and their outputs (`SystemOutput.shared`, `.side`).
    """

    def __init__(self, config: SystemConfig | None = None) -> None:
        super().__init__()
        cfg = SystemConfig() if config is None else config
        if not isinstance(cfg, SystemConfig):
            raise HyperparameterError(f"config must be a SystemConfig; got {type(cfg).__name__}")
        self.config = cfg
        self._build_tasks(cfg)
        K = len(self.task_names)
        self.pool = ExpertPool(cfg.pool_config(), names=cfg.experts)
        self.expert_dims = tuple(self.pool.expert_dims[n] for n in cfg.experts)
        D = self.pool.output_dim
        n_te, d1 = cfg.num_task_experts, cfg.task_expert_dim
        self.task_experts = (StackedMLP(K * n_te, D, (*cfg.task_expert_hidden, d1)) if n_te else None)
        self.stage1 = CGCLayer(K, self.expert_dims, d1, n_te)
        self.stage2 = None
        if cfg.two_stage_gate:
            prior = domain_prior_mask(self.task_names, cfg.experts) if cfg.domain_prior else None
            self.stage2 = CGCAttention(K, self.expert_dims, dim_normalize=cfg.dim_normalize, prior_mask=prior,
                                       bias_high=cfg.bias_high, bias_low=cfg.bias_low,
                                       entropy_lambda=cfg.entropy_lambda)
        self.hmm = HMMTripleMode(self.task_names) if cfg.use_hmm else None
        self.task_input_dim = (D if cfg.two_stage_gate else 0) + d1 + (HMM_PROJECTION_DIM if cfg.use_hmm else 0)
        groups: dict[str, list[str]] = {}
        for s in self.specs.values():
            groups.setdefault(s.group, []).append(s.name)
        self.basket: nn.Module | None = None
        if cfg.use_group_encoder:
            self.basket = GroupTaskExpertBasket(groups, self.task_input_dim, cfg.group_dims, cfg.expert_dim,
                                                cfg.num_clusters, cfg.cluster_dim, "encoder",
                                                cfg.basket_dropout, task_names=self.task_names)
        elif cfg.legacy_basket:
            self.basket = ClusterTaskExpertBasket(self.task_names, self.task_input_dim, cfg.legacy_hidden_dims,
                                                  cfg.expert_dim, cfg.num_clusters, cfg.basket_dropout)
        self.tower_input_dim = cfg.expert_dim if self.basket is not None else self.task_input_dim
        self.edges = cfg.transfer_edges if cfg.use_transfer else ()
        self.transfer = LogitTransfer(self.task_names, self.edges, {n: s.output_dim for n, s in self.specs.items()},
                                      self.tower_input_dim, cfg.transfer_strength)
        self.towers = nn.ModuleDict({
            n: TaskTower.from_spec(s, in_dim=self.tower_input_dim, hidden_dims=cfg.tower_hidden_dims,
                                   dropout=cfg.tower_dropout) for n, s in self.specs.items()})
        self.side_heads = nn.ModuleDict()  # heads beside the prediction path, run on (h_shared, hidden): the next chapter
        # index tensors of the batched paths (buffers: they follow .to(device))
        self.waves = dependency_waves(self.task_names, self.edges)
        pos = {t: k for k, t in enumerate(self.task_names)}
        for i, wave in enumerate(self.waves):
            self.register_buffer(f"_wave{i}", torch.tensor([pos[t] for t in wave]), persistent=False)
        if self.hmm is not None:
            modes = list(self.hmm.modes)
            self.register_buffer("_task_mode", torch.tensor([modes.index(m) for m in self.hmm.task_modes]),
                                 persistent=False)
        if isinstance(self.basket, GroupTaskExpertBasket):
            self._groups = [(g, [pos[t] for t in groups[g]]) for g in self.basket.group_names]
            for g, rows in self._groups:
                self.register_buffer(f"_rows_{g}", torch.tensor(rows), persistent=False)
            perm = [k for _, rows in self._groups for k in rows]
            self.register_buffer("_unperm", torch.argsort(torch.tensor(perm)), persistent=False)
        self._prob_sources = sorted({s for s, _, m in self.edges if m != "feature"})

    # ---------------------------------------------------------------- inputs
    # ---------------------------------------------------------------- pieces
    def _stage1(self, h: torch.Tensor, te: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """eq-cgc-stage1 with CGCLayer's parameters, without its input checks."""
        st = self.stage1
        blocks = torch.split(h, st.shared_dims, dim=-1)
        shared = torch.stack([a(b) for a, b in zip(st.align, blocks)], dim=1)  # [B, S, d]
        K = len(self.task_names)
        every = torch.cat([te, shared.unsqueeze(1).expand(-1, K, -1, -1)], dim=2)  # [B, K, N, d]
        g = st.gates(h)
        return torch.einsum("bkn,bknd->bkd", g, every), g

    def _hmm_features(self, hmm: Mapping[str, torch.Tensor] | None, like: torch.Tensor) -> torch.Tensor:
        """eq-hmm-projector for the three modes in one einsum, then each task's mode: [B, K, 32]."""
        B = like.shape[0]
        projs = [self.hmm.projectors[m] for m in self.hmm.modes]
        hmm = hmm or {}
        X = torch.stack([hmm[m].to(like.dtype) if hmm.get(m) is not None else like.new_zeros(B, HMM_FEATURE_DIM)
                         for m in self.hmm.modes], dim=1)  # [B, M, 16]
        W = torch.stack([p.linear.weight for p in projs])  # [M, 32, 16]
        z = torch.einsum("bmi,moi->bmo", X, W) + torch.stack([p.linear.bias for p in projs])
        z = F.layer_norm(z, z.shape[-1:], eps=projs[0].norm.eps)
        z = F.silu(z * torch.stack([p.norm.weight for p in projs]) + torch.stack([p.norm.bias for p in projs]))
        has_data = (X != 0).any(dim=-1, keepdim=True)  # an all-zero row is "no data" (PLE-4)
        z = torch.where(has_data, z, torch.stack([p.default_embedding for p in projs]).to(z.dtype))
        return z.index_select(1, self._task_mode)

    def _cluster_probs(self, inputs: SystemInputs, like: torch.Tensor) -> torch.Tensor:
        if inputs.cluster_probs is not None:
            return inputs.cluster_probs.to(like.dtype)
        C = self.config.num_clusters
        return like.new_full((like.shape[0], C), 1.0 / C)

    def _group_basket(self, h, g2, s1, hmm, cp) -> torch.Tensor:
        """eq-group-encoder with the Stage-2 scaling folded into each encoder's first Linear:
        W [s2_k || rest_k] = sum_i (s_i w_ki) (W_i h_i) + W_rest rest_k, so the [B, K, 512]
        tensor of eq-cgc-attention is never built. -> h_expert [B, K, expert_dim]."""
        basket = self.basket
        B, K = h.shape[0], len(self.task_names)
        e = cp @ basket.cluster_embedding.weight.to(cp.dtype)  # eq-soft-cluster, [B, cd]
        rest = torch.cat([s1, *([hmm] if hmm is not None else []), e.unsqueeze(1).expand(B, K, -1)], dim=2)
        D = sum(self.expert_dims) if g2 is not None else 0
        firsts = [basket.encoders[g][0][0] for g, _ in self._groups]  # MLPBlock -> its Linear
        H = firsts[0].out_features
        if g2 is not None:
            W_sh = torch.cat([lin.weight[:, :D] for lin in firsts], dim=0)  # [G*H, D]
            blocks = torch.split(h, self.expert_dims, dim=1)
            cols = torch.split(W_sh, self.expert_dims, dim=1)
            P = torch.stack([b @ c.T for b, c in zip(blocks, cols)], dim=1)  # [B, E, G*H]: W_i h_i
            sw = g2 * self.stage2.scales.to(g2.dtype)  # [B, K, E]: s_i w_ki
        outs = []
        for j, (g, _) in enumerate(self._groups):
            rows = getattr(self, f"_rows_{g}")
            lin = firsts[j]
            a = torch.einsum("bki,hi->bkh", rest.index_select(1, rows), lin.weight[:, D:]) + lin.bias
            if g2 is not None:
                a = a + torch.einsum("bke,beh->bkh", sw.index_select(1, rows), P[:, :, j * H:(j + 1) * H])
            enc = basket.encoders[g]
            z = enc[0][3](enc[0][2](enc[0][1](a)))  # LayerNorm, SiLU, Dropout of the first block
            if len(enc) > 1:
                z = z.reshape(-1, z.shape[-1])
                for layer in list(enc)[1:]:
                    z = layer(z)
                z = z.reshape(B, len(rows), -1)
            outs.append(z)
        z = torch.cat(outs, dim=1).index_select(1, self._unperm)
        return basket.heads(z)

    def _task_input(self, h, g2, s1, hmm) -> torch.Tensor:
        """x_k = [s2_k || s1_k || hmm_k] built explicitly, [B, K, task_input_dim]."""
        parts = []
        if g2 is not None:
            st = self.stage2
            scale = (g2 * st.scales.to(g2.dtype)) @ st.block_matrix.to(g2.dtype)  # [B, K, D]
            parts.append(scale * h.unsqueeze(1))
        parts.append(s1)
        if hmm is not None:
            parts.append(hmm)
        return torch.cat(parts, dim=2)

    def _tower_wave(self, names: Sequence[str], x: torch.Tensor) -> list[torch.Tensor]:
        """eq-task-tower for the towers `names` at once: x [B, n, in] -> n logits [B, out_k]."""
        mlps = [self.towers[t].mlp for t in names]
        h = x
        for i in range(len(mlps[0]) - 1):  # the MLPBlocks: Linear -> LayerNorm -> SiLU -> Dropout
            blk = [m[i] for m in mlps]
            h = torch.einsum("bni,noi->bno", h, torch.stack([b[0].weight for b in blk])) + torch.stack([b[0].bias for b in blk])
            h = F.layer_norm(h, h.shape[-1:], eps=blk[0][1].eps)
            h = F.silu(h * torch.stack([b[1].weight for b in blk]) + torch.stack([b[1].bias for b in blk]))
            h = F.dropout(h, blk[0][3].p, self.training)
        last = [m[-1] for m in mlps]
        out = max(lin.out_features for lin in last)
        W = torch.stack([F.pad(lin.weight, (0, 0, 0, out - lin.out_features)) for lin in last])
        b = torch.stack([F.pad(lin.bias, (0, out - lin.out_features)) for lin in last])
        z = torch.einsum("bni,noi->bno", h, W) + b
        return [z[:, j, :lin.out_features] for j, lin in enumerate(last)]

    def _task_side(self, h_expert: torch.Tensor) -> tuple[dict, dict]:
        """Transfer and towers in dependency waves (eq-waves): one stacked tower call per wave."""
        logits: dict[str, torch.Tensor] = {}
        probs: dict[str, torch.Tensor] = {}
        hidden: dict[str, torch.Tensor] = {}
        for i, wave in enumerate(self.waves):
            x = h_expert.index_select(1, getattr(self, f"_wave{i}"))
            if i > 0:  # residuals of the edges into this wave (eq-logit-transfer)
                res = []
                for t in wave:
                    r = x.new_zeros(x.shape[0], x.shape[2])
                    for s, mode in self.transfer.sources(t):
                        r = r + self.transfer.residual(s, t, self.transfer.transfer_input(s, mode, probs, hidden))
                    res.append(r)
                x = x + torch.stack(res, dim=1)
            for j, t in enumerate(wave):
                hidden[t] = x[:, j]
            for t, z in zip(wave, self._tower_wave(wave, x)):
                logits[t] = z
                if t in self._prob_sources:
                    probs[t] = activation(self.specs[t], z)
        return {t: logits[t] for t in self.task_names}, hidden

    # ---------------------------------------------------------------- forward
    def run(self, inputs: SystemInputs) -> SystemOutput:
        """The forward pass (eq-system) with everything it computes; see `SystemOutput`."""
        self.check_inputs(inputs)  # shapes and dtypes always (free); values only while validating
        h = self.pool(inputs.experts).shared  # [B, D]
        B, K = h.shape[0], len(self.task_names)
        n_te, d1 = self.config.num_task_experts, self.config.task_expert_dim
        te = (self.task_experts(h).reshape(B, K, n_te, d1) if self.task_experts is not None
              else h.new_zeros(B, K, 0, d1))
        s1, g1 = self._stage1(h, te)
        g2 = self.stage2.gates(h) if self.stage2 is not None else None
        hmm = self._hmm_features(inputs.hmm, h) if self.hmm is not None else None
        cp = self._cluster_probs(inputs, h)
        if isinstance(self.basket, GroupTaskExpertBasket):
            h_expert = self._group_basket(h, g2, s1, hmm, cp)
        else:
            x = self._task_input(h, g2, s1, hmm)
            h_expert = x if self.basket is None else self.basket(x, cp)
        logits, hidden = self._task_side(h_expert)
        aux: dict[str, torch.Tensor] = {}
        if g2 is not None and self.training and self.stage2.entropy_lambda > 0:
            on = (~self.stage2.frozen).to(g2.dtype)  # a tensor, not bool(): no host sync
            aux["entropy"] = on * entropy_regularizer(g2, self.stage2.entropy_lambda)
        if self.config.causal_regularizer and "causal" in self.pool.experts:
            aux["causal"] = self.pool.regularizer()
        side = {name: head(h, hidden) for name, head in self.side_heads.items()}  # after the logits: they stay as they are
        return SystemOutput(logits, g1, g2, aux, hidden, h, side)

    def forward(self, *inputs) -> dict[str, torch.Tensor]:
        """inputs: the tensors of `SystemInputs.as_tuple()` (or one SystemInputs) -> {task: logits}."""
        return self.run(self._as_inputs(inputs)).logits

    # ---------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Write config and state_dict to `path` (`PLESystem.load` rebuilds the system)."""
        torch.save({"config": self.config.to_dict(), "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path, map_location="cpu") -> PLESystem:
        blob = torch.load(path, map_location=map_location, weights_only=False)
        system = cls(SystemConfig.from_dict(blob["config"]))
        system.load_state_dict(blob["state_dict"])
        return system

    def parameter_table(self) -> list[dict[str, Any]]:
        """Parameters per block against the posts' budget (`POSTS_BUDGET`); see `summary`."""
        rows = [dict(block=f"expert: {n}", parameters=count_parameters(self.pool.experts[n]),
                     budget=POSTS_PARAMETER_ESTIMATES.get(n)) for n in self.pool.names]
        blocks = {
            "task-private experts": self.task_experts, "Stage-1 gate (CGCLayer)": self.stage1,
            "Stage-2 gate (CGCAttention)": self.stage2, "HMM projectors": self.hmm,
            "task basket": self.basket, "logit transfer": self.transfer, "task towers": self.towers,
            "contrastive item table": self.item_embeddings, "loss weighting": self.weighting,
        }
        for name, mod in blocks.items():
            if mod is not None:
                rows.append(dict(block=name, parameters=count_parameters(mod), budget=POSTS_BUDGET.get(name)))
        rows.append(dict(block="total", parameters=count_parameters(self), budget=POSTS_BUDGET["total"]))
        for r in rows:
            r["note"] = BUDGET_NOTES.get(r["block"], "")
        return rows

    def summary(self) -> str:
        """The parameter table as text: block, parameters, the posts' budget, and why they differ."""
        lines = [f"{'block':30s} {'parameters':>11s} {'posts':>11s}  note"]
        for r in self.parameter_table():
            budget = "" if r["budget"] is None else f"~{r['budget']:,}"
            lines.append(f"{r['block']:30s} {r['parameters']:>11,} {budget:>11s}  {r['note']}")
        return "\n".join(lines)


class _FitView(nn.Module):
    """A PLESystem as `ple.fit` calls it: model(*tensors) -> (logits, summed regularisers)."""

    def __init__(self, system: nn.Module) -> None:
        super().__init__()
        self.system = system

    def forward(self, *inputs):
        out = self.system.run(self.system._as_inputs(inputs))
        aux = out.aux_loss
        return out.logits, (aux if aux is not None else out.gates1.new_zeros(()))


class SystemLoss(nn.Module):
    """L = sum_k [task k labelled in the batch] * term_k  (eq-system-loss), no host sync.

    term_k = w_k (exp(-s_k) L_k + s_k) under uncertainty weighting: PLE-5's eq-uncertainty, computed
    by the system's `ple.losses.UncertaintyWeighting` itself (its masks are this rule; its value
    checks run only while validating); w_k L_k under fixed / equal weighting, summed as one
    stacked reduction (`FixedWeighting` adds term by term and knows no masks).
    A task with no labelled sample in the batch contributes exactly 0 (also through s_k, whose
    +s_k term would otherwise pull its log-variance down on every unlabelled batch).
    losses: {task: scalar}; state: `ple.fit.FitState` (its batch's masks) or None.
    """

    def __init__(self, system: _LogitTasks) -> None:
        super().__init__()
        if not isinstance(system, _LogitTasks):
            raise checks.InputTypeError(f"system must be a PLESystem or PoolCGC; got {type(system).__name__}")
        self.weighting = system.weighting
        self.task_names = system.task_names

    def forward(self, losses: Mapping[str, torch.Tensor], state=None) -> torch.Tensor:
        missing = [t for t in self.task_names if t not in losses]
        if missing:
            raise TaskError(f"losses lacks task(s) {missing}")
        for t in self.task_names:
            if not isinstance(losses[t], torch.Tensor) or losses[t].dim() != 0:
                got = list(losses[t].shape) if isinstance(losses[t], torch.Tensor) else type(losses[t]).__name__
                raise ShapeError(f"losses[{t!r}] has shape {got}; expected a scalar [] (the task's mean loss)")
        if isinstance(self.weighting, UncertaintyWeighting):  # eq-uncertainty, PLE-5's one implementation
            return self.weighting({t: losses[t] for t in self.task_names}, state)
        L = torch.stack([losses[t].float() if losses[t].dtype != torch.float64 else losses[t]
                         for t in self.task_names])
        terms = self.weighting.task_weights.to(L.dtype) * L
        masks = {} if state is None or state.batch is None else (state.batch.masks or {})
        if masks:
            present = torch.stack([(masks[t] > 0).any() if t in masks else torch.ones((), dtype=torch.bool, device=L.device)
                                   for t in self.task_names])
            terms = torch.where(present, terms, torch.zeros_like(terms))
        return terms.sum()


POSTS_BUDGET: dict[str, int] = {
    "Stage-2 gate (CGCAttention)": 75_000, "HMM projectors": 5_000, "task basket": 362_000,
    "task towers": 80_000, "total": 1_700_000,
}
BUDGET_NOTES: dict[str, str] = {
    "Stage-2 gate (CGCAttention)": "PDF counts 16 x Linear(576 -> 8) (8 experts); the posts' 7 over 512 give 16 x 3,591",
    "HMM projectors": "3 x (Linear 16->32 + LayerNorm + default 32) = 3 x 640; the 5K is not derivable from the posts' shapes",
    "task basket": "GroupTaskExpertBasket: 4 GroupEncoders (608+32 -> 128 -> 64) + heads; posts: 544+32 input",
    "task towers": "16 x (32->64->32->out) with LayerNorm; brand's 128-wide output",
    "Stage-1 gate (CGCLayer)": "not in the posts' budget (the original code kept Stage 1 off the budget)",
    "task-private experts": "the posts give no size; one MLPBlock 512 -> 64 per task (the original extraction_dim)",
    "total": "posts: 1.7M without SAE; our experts are leaner than the PDF's estimates (PLE-3)",
}


class PoolCGC(_LogitTasks):
    """The paper's CGC {cite}`tang2020ple` with one extraction level, on the heterogeneous pool:

        z_k = Tower_k(CGCLayer(h_shared, t_k)_k)                       (eq-cgc-stage1, eq-task-tower)

    and no other block of the system. With `num_task_experts = 0` in the config it is MMoE on the
    pool (one softmax gate per task over the shared experts only); with one task it is a gated
    single-task model. Built from a `SystemConfig` (pool, task experts, towers, tasks, weighting;
    the other fields are ignored). `PLESystem` with every block switched off is this model: its
    state_dict loads here unchanged.
    """

    def __init__(self, config: SystemConfig | None = None) -> None:
        super().__init__()
        cfg = SystemConfig() if config is None else config
        if not isinstance(cfg, SystemConfig):
            raise HyperparameterError(f"config must be a SystemConfig; got {type(cfg).__name__}")
        self.config = cfg
        self._build_tasks(cfg)
        K, n_te, d1 = len(self.task_names), cfg.num_task_experts, cfg.task_expert_dim
        self.pool = ExpertPool(cfg.pool_config(), names=cfg.experts)
        dims = tuple(self.pool.expert_dims[n] for n in cfg.experts)
        self.task_experts = StackedMLP(K * n_te, self.pool.output_dim, (*cfg.task_expert_hidden, d1)) if n_te else None
        self.stage1 = CGCLayer(K, dims, d1, n_te)
        self.towers = nn.ModuleDict({
            n: TaskTower.from_spec(s, in_dim=d1, hidden_dims=cfg.tower_hidden_dims, dropout=cfg.tower_dropout)
            for n, s in self.specs.items()})

    def run(self, inputs: SystemInputs) -> SystemOutput:
        self.check_inputs(inputs)
        h = self.pool(inputs.experts).shared
        B, K = h.shape[0], len(self.task_names)
        n_te, d1 = self.config.num_task_experts, self.config.task_expert_dim
        te = self.task_experts(h).reshape(B, K, n_te, d1) if self.task_experts is not None else h.new_zeros(B, K, 0, d1)
        s1, g1 = self.stage1(h, te, return_gates=True)
        logits = {t: self.towers[t].logits(s1[:, k]) for k, t in enumerate(self.task_names)}
        aux = {}
        if self.config.causal_regularizer and "causal" in self.pool.experts:
            aux["causal"] = self.pool.regularizer()
        return SystemOutput(logits, g1, None, aux, {}, h)

    def forward(self, *inputs) -> dict[str, torch.Tensor]:
        """inputs: the tensors of `SystemInputs.as_tuple()` (or one SystemInputs) -> {task: logits}."""
        return self.run(self._as_inputs(inputs)).logits


def reference_forward(system: PLESystem, inputs: SystemInputs) -> dict[str, torch.Tensor]:
    """The clear composition of the chapter modules' own forwards (eq-system), task by task in
    Kahn order: ExpertPool -> task experts -> CGCLayer, CGCAttention -> HMMTripleMode.for_tasks
    -> basket -> LogitTransfer + TaskTower. For checking `PLESystem.forward`; not fast."""
    h = system.pool(inputs.experts).shared
    B, K = h.shape[0], len(system.task_names)
    n_te, d1 = system.config.num_task_experts, system.config.task_expert_dim
    te = system.task_experts(h).reshape(B, K, n_te, d1) if system.task_experts is not None else h.new_zeros(B, K, 0, d1)
    parts = []
    if system.stage2 is not None:
        parts.append(system.stage2(h))
    parts.append(system.stage1(h, te))
    if system.hmm is not None:
        hmm = inputs.hmm or {}
        parts.append(system.hmm.for_tasks({m: hmm[m] if hmm.get(m) is not None else h.new_zeros(B, HMM_FEATURE_DIM)
                                           for m in system.hmm.modes}))
    x = torch.cat(parts, dim=2)
    C = system.config.num_clusters
    cp = inputs.cluster_probs if inputs.cluster_probs is not None else h.new_full((B, C), 1.0 / C)
    h_expert = x if system.basket is None else system.basket(x, cp)
    preds, hiddens, logits = {}, {}, {}
    for t in system.transfer.order:
        hiddens[t] = system.transfer(t, h_expert[:, system.task_names.index(t)], preds, hiddens)
        logits[t] = system.towers[t].logits(hiddens[t])
        preds[t] = system.towers[t](hiddens[t])
    return {t: logits[t] for t in system.task_names}


def synthetic_system_inputs(config: SystemConfig, batch_size: int, *, seq_len: int = 30, n_neighbors: int = 4,
                            n_points: int = 8, seed: int = 0, dtype: torch.dtype = torch.float32) -> SystemInputs:
    """A random batch with every input the system reads (values carry no signal; for checks,
    tests and timing): PLE-3's `synthetic_expert_inputs` plus hierarchy neighbours, HMM
    features (one all-zero journey row, the "no data" marker) and softmax cluster posteriors."""
    from ple.experts.pool import synthetic_expert_inputs

    if not isinstance(config, SystemConfig):
        raise HyperparameterError(f"config must be a SystemConfig (e.g. ple.system.preset('ci')); got {type(config).__name__}")
    B = check_int("batch_size", batch_size)
    g = torch.Generator().manual_seed(seed)
    ei = synthetic_expert_inputs(B, config.pool_config(), txn_len=seq_len, session_len=max(seq_len // 2, 1),
                                 n_points=n_points, seed=seed)
    ei.hierarchy_neighbors = 0.1 * torch.randn(B, n_neighbors, config.hierarchy_dim, generator=g)
    ei.hierarchy_mask = torch.rand(B, n_neighbors, generator=g) > 0.3
    hmm = {m: torch.rand(B, HMM_FEATURE_DIM, generator=g) for m in HMM_MODES}
    hmm["journey"][0] = 0.0
    cp = torch.softmax(2.0 * torch.randn(B, config.num_clusters, generator=g), dim=1)
    return SystemInputs(ei, hmm, cp).to("cpu", dtype)
