"""ple.tasks -- generated from book/00_customer_world.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['HMM_MODES', 'EXPERT_NAMES', 'EXPERT_DIMS', 'TASK_TYPES', 'LOSSES', 'TRANSFER_MODES', 'TRANSFER_STRENGTH', 'GROUP_NAMES', 'TaskSpec', 'TASKS', 'TASK_NAMES', 'ACTIVE_TASK_NAMES', 'TASK_GROUPS', 'TRANSFER_EDGES', 'check_unique_names', 'get_task', 'active_tasks', 'select_tasks', 'check_transfer_edges', 'tasks_by_hmm_mode']

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ple.checks import check_float, check_int, check_unique

HMM_MODES: tuple[str, ...] = ("journey", "lifecycle", "behavior")
EXPERT_NAMES: tuple[str, ...] = (
    "deepfm", "lightgcn", "hgcn", "temporal", "perslay", "causal", "optimal_transport",
)
EXPERT_DIMS: dict[str, int] = {name: (128 if name == "hgcn" else 64) for name in EXPERT_NAMES}
TASK_TYPES: tuple[str, ...] = ("binary", "multiclass", "regression", "contrastive")
LOSSES: tuple[str, ...] = ("focal", "nll", "mse", "huber", "infonce")
TRANSFER_MODES: tuple[str, ...] = ("sequential", "feature", "inverse")
TRANSFER_STRENGTH: float = 0.5  # alpha of every logit-transfer edge (PLE-5)
GROUP_NAMES: tuple[str, ...] = ("engagement", "lifecycle", "value", "consumption")


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task of the system (the posts' PLE-6 task table).

    `output_dim` is the width of the task tower's output: 1 for binary and scalar regression,
    the number of classes for multiclass, the number of outputs of a vector regression, and the
    embedding width for contrastive tasks. `num_classes` is the number of classes (multiclass) or
    of items to retrieve (contrastive); None otherwise. Loss parameters that do not apply are None.
    """

    name: str
    task_type: str
    output_dim: int
    loss: str
    weight: float
    group: str
    hmm_mode: str
    domain_experts: tuple[str, ...]
    active: bool = True
    num_classes: int | None = None
    focal_alpha: float | None = None
    focal_gamma: float | None = None
    huber_delta: float | None = None
    infonce_tau: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string; got {self.name!r}")
        check_int(f"task {self.name!r}: output_dim", self.output_dim, 1)
        check_float(f"task {self.name!r}: weight", self.weight, 0.0)
        if not isinstance(self.active, bool):
            raise ValueError(f"task {self.name!r}: active must be a bool; got {self.active!r}")
        if self.num_classes is not None:
            check_int(f"task {self.name!r}: num_classes", self.num_classes, 2)
        if self.focal_alpha is not None:
            check_float(f"task {self.name!r}: focal_alpha", self.focal_alpha, 0.0, 1.0)
        if self.focal_gamma is not None:
            check_float(f"task {self.name!r}: focal_gamma", self.focal_gamma, 0.0)
        if self.huber_delta is not None:
            check_float(f"task {self.name!r}: huber_delta", self.huber_delta, 0.0, low_open=True)
        if self.infonce_tau is not None:
            check_float(f"task {self.name!r}: infonce_tau", self.infonce_tau, 0.0, low_open=True)
        if isinstance(self.domain_experts, str) or not isinstance(self.domain_experts, tuple):
            raise ValueError(f"task {self.name!r}: domain_experts must be a tuple of expert names; got {self.domain_experts!r}")
        check_unique(f"task {self.name!r}: domain_experts", self.domain_experts)
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task {self.name!r}: task_type {self.task_type!r} not in {TASK_TYPES}")
        if self.loss not in LOSSES:
            raise ValueError(f"task {self.name!r}: loss {self.loss!r} not in {LOSSES}")
        if self.group not in GROUP_NAMES:
            raise ValueError(f"task {self.name!r}: group {self.group!r} not in {GROUP_NAMES}")
        if self.hmm_mode not in HMM_MODES:
            raise ValueError(f"task {self.name!r}: hmm_mode {self.hmm_mode!r} not in {HMM_MODES}")
        unknown = [e for e in self.domain_experts if e not in EXPERT_NAMES]
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown domain experts {unknown}; expected {EXPERT_NAMES}")
        if self.output_dim < 1:
            raise ValueError(f"task {self.name!r}: output_dim must be >= 1; got {self.output_dim}")
        if self.task_type in ("multiclass", "contrastive") and not self.num_classes:
            raise ValueError(f"task {self.name!r}: a {self.task_type} task needs num_classes")
        if self.task_type == "multiclass" and self.num_classes != self.output_dim:
            raise ValueError(f"task {self.name!r}: a multiclass tower outputs one score per class, so "
                             f"output_dim must equal num_classes; got output_dim {self.output_dim}, "
                             f"num_classes {self.num_classes}")
        if self.task_type == "binary" and self.output_dim != 1:
            raise ValueError(f"task {self.name!r}: a binary task has output_dim 1; got {self.output_dim}")
        if self.loss == "focal" and (self.focal_alpha is None or self.focal_gamma is None):
            raise ValueError(f"task {self.name!r}: focal loss needs focal_alpha and focal_gamma")
        if self.loss == "huber" and self.huber_delta is None:
            raise ValueError(f"task {self.name!r}: Huber loss needs huber_delta")
        if self.loss == "infonce" and self.infonce_tau is None:
            raise ValueError(f"task {self.name!r}: InfoNCE loss needs infonce_tau")


def _binary(name, alpha, weight, group, mode, experts):
    return TaskSpec(name, "binary", 1, "focal", weight, group, mode, experts,
                    focal_alpha=alpha, focal_gamma=2.0)


def _multiclass(name, classes, weight, group, mode, experts):
    return TaskSpec(name, "multiclass", classes, "nll", weight, group, mode, experts,
                    num_classes=classes)


def _regression(name, loss, weight, group, mode, experts, dim=1, active=True):
    return TaskSpec(name, "regression", dim, loss, weight, group, mode, experts, active=active,
                    huber_delta=1.0 if loss == "huber" else None)


# The 18 tasks in the order of the PLE-6 table; domain-prior experts from the PLE-4 table
# (uplift and category_uplift are not in that table: no prior).
TASKS: tuple[TaskSpec, ...] = (
    _binary("ctr", 0.25, 1.0, "engagement", "journey", ("hgcn", "temporal", "perslay")),
    _binary("cvr", 0.20, 1.5, "engagement", "journey", ("hgcn", "temporal", "perslay")),
    _regression("engagement", "mse", 0.8, "engagement", "journey", ("temporal",)),
    _regression("uplift", "mse", 1.0, "engagement", "journey", (), active=False),
    _binary("churn", 0.60, 1.2, "lifecycle", "lifecycle", ("temporal", "perslay")),
    _binary("retention", 0.20, 1.0, "lifecycle", "lifecycle", ("temporal", "perslay")),
    _multiclass("life_stage", 6, 0.8, "lifecycle", "lifecycle", ("temporal", "perslay")),
    _regression("ltv", "huber", 1.5, "lifecycle", "lifecycle", ("deepfm", "temporal")),
    _regression("balance_util", "huber", 1.0, "value", "behavior", ("temporal",)),
    _multiclass("channel", 3, 0.8, "value", "behavior", ("temporal",)),
    _multiclass("timing", 28, 0.8, "value", "behavior", ("temporal",)),
    _multiclass("nba", 12, 2.0, "consumption", "behavior", ("lightgcn", "hgcn", "perslay")),
    _multiclass("spending_category", 12, 1.2, "consumption", "behavior", ("hgcn", "perslay")),
    _multiclass("consumption_cycle", 7, 0.8, "consumption", "behavior", ("temporal",)),
    _regression("spending_bucket", "huber", 0.8, "consumption", "behavior", ("deepfm",)),
    _regression("category_uplift", "mse", 1.5, "consumption", "behavior", (), dim=12, active=False),
    TaskSpec("brand_prediction", "contrastive", 128, "infonce", 2.0, "consumption", "behavior",
             ("hgcn",), num_classes=128, infonce_tau=0.07),
    _regression("merchant_affinity", "huber", 1.0, "consumption", "behavior", ("hgcn", "temporal")),
)

TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
ACTIVE_TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS if t.active)
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    g: tuple(t.name for t in TASKS if t.group == g) for g in GROUP_NAMES
}
# Logit-transfer DAG of PLE-5: (source, target, mode), strength TRANSFER_STRENGTH.
TRANSFER_EDGES: list[tuple[str, str, str]] = [
    ("ctr", "cvr", "sequential"),
    ("cvr", "ltv", "feature"),
    ("churn", "retention", "inverse"),
    ("nba", "spending_category", "feature"),
    ("spending_category", "brand_prediction", "feature"),
]


def check_unique_names(tasks: Iterable[TaskSpec]) -> None:
    """Raise ValueError naming every task name that occurs more than once."""
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate task names: {dup}")


def get_task(name: str, tasks: Sequence[TaskSpec] = TASKS) -> TaskSpec:
    """The TaskSpec called `name`; ValueError naming it if there is none."""
    for t in tasks:
        if t.name == name:
            return t
    raise ValueError(f"unknown task {name!r}; known tasks: {[t.name for t in tasks]}")


def _check_specs(tasks: object) -> Sequence[TaskSpec]:
    """`tasks` as a sequence of TaskSpecs; else TypeError naming it."""
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
        raise TypeError(f"tasks must be a sequence of TaskSpecs; got {tasks!r}")
    tasks = tuple(tasks)
    bad = [type(t).__name__ for t in tasks if not isinstance(t, TaskSpec)]
    if bad:
        raise TypeError(f"tasks must be a sequence of TaskSpecs; got entries of type {sorted(set(bad))}")
    return tasks


def active_tasks(tasks: Sequence[TaskSpec] = TASKS) -> list[TaskSpec]:
    """The active tasks (16 of the 18 in the registry), in registry order."""
    return [t for t in _check_specs(tasks) if t.active]


def select_tasks(names: Sequence[str], *, allow_inactive: bool = False,
                 tasks: Sequence[TaskSpec] = TASKS) -> list[TaskSpec]:
    """TaskSpecs for `names`, in the order given.

    ValueError for an unknown name, a name given twice, or an inactive task (unless
    `allow_inactive`), naming the offending tasks.
    """
    if isinstance(names, str):
        raise ValueError(f"names must be a sequence of task names, not the string {names!r}")
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise ValueError(f"duplicate task names: {dup}")
    specs = [get_task(n, tasks) for n in names]
    inactive = [t.name for t in specs if not t.active]
    if inactive and not allow_inactive:
        raise ValueError(f"inactive tasks requested: {inactive} (pass allow_inactive=True to use them)")
    return specs


def check_transfer_edges(edges: Iterable[tuple[str, str, str]],
                         tasks: Sequence[TaskSpec] = TASKS) -> None:
    """Validate logit-transfer edges against a task list.

    ValueError naming the edge for: an unknown or inactive source/target, an unknown mode,
    a self-loop, or the same (source, target) pair twice. Cycles are left to the topological
    sort of the transfer module.
    """
    by_name = {t.name: t for t in tasks}
    seen = set()
    for edge in edges:
        if len(edge) != 3:
            raise ValueError(f"transfer edge {edge!r} is not (source, target, mode)")
        src, dst, mode = edge
        for end in (src, dst):
            if end not in by_name:
                raise ValueError(f"transfer edge {edge!r}: unknown task {end!r}")
            if not by_name[end].active:
                raise ValueError(f"transfer edge {edge!r}: task {end!r} is inactive")
        if mode not in TRANSFER_MODES:
            raise ValueError(f"transfer edge {edge!r}: unknown mode {mode!r}; expected {TRANSFER_MODES}")
        if src == dst:
            raise ValueError(f"transfer edge {edge!r}: a task cannot transfer to itself")
        if (src, dst) in seen:
            raise ValueError(f"transfer edge {edge!r}: ({src!r}, {dst!r}) appears twice")
        if mode == "inverse" and by_name[src].task_type != "binary":
            raise ValueError(f"transfer edge {edge!r}: an inverse edge feeds 1 - p, so its source must be "
                             f"a binary task; {src!r} is {by_name[src].task_type}")
        seen.add((src, dst))


def tasks_by_hmm_mode(tasks: Sequence[TaskSpec] | None = None) -> dict[str, tuple[str, ...]]:
    """HMM mode -> names of the (active, by default) tasks routed to it (PLE-4 table)."""
    tasks = active_tasks() if tasks is None else _check_specs(tasks)
    return {m: tuple(t.name for t in tasks if t.hmm_mode == m) for m in HMM_MODES}


check_unique_names(TASKS)
check_transfer_edges(TRANSFER_EDGES)
