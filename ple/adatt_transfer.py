"""ple.adatt_transfer -- generated from book/adatt3_transfer_loss_schedule.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['GROUP_INTRA_STRENGTH', 'INTER_GROUP_STRENGTH', 'FALLBACK_INTRA_STRENGTH', 'PHASES', 'group_prior', 'prior_ratio', 'blend', 'transfer_weights', 'transfer_enhanced_losses', 'AdaTT']

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ple import checks
from ple.adatt import AffinityAggregate, TaskAffinityComputer, task_loss_vector
from ple.checks import HyperparameterError, InputTypeError, NonFiniteError, ShapeError, TaskError
from ple.checks import check_float, check_int
from ple.fit import Callback, WeightedSum
from ple.tasks import GROUP_NAMES, TASK_NAMES, get_task

GROUP_INTRA_STRENGTH: dict[str, float] = {"engagement": 0.8, "lifecycle": 0.7, "value": 0.6, "consumption": 0.7}
INTER_GROUP_STRENGTH: float = 0.3
FALLBACK_INTRA_STRENGTH: float = 0.5  # the original code's strength for a group without one
PHASES: tuple[str, ...] = ("warmup", "dynamic", "frozen")


def group_prior(task_names: Sequence[str], intra: Mapping[str, float] | None = None,
                inter: float = INTER_GROUP_STRENGTH, fallback: float = FALLBACK_INTRA_STRENGTH) -> torch.Tensor:
    """The group prior P [n, n] (eq-adatt-prior) over `task_names`, groups from `ple.tasks`.

    P~_ij = intra[group(i)] if tasks i != j share a group, else `inter`; P~_ii = 0; P = P~ with
    each row divided by its sum (rows sum to 1; one task alone gives a zero row). intra: {group:
    strength} (default GROUP_INTRA_STRENGTH: engagement 0.8, lifecycle 0.7, value 0.6,
    consumption 0.7; a group not named gets `fallback`). Unknown task names raise TaskError.
    """
    if isinstance(task_names, str) or not isinstance(task_names, Sequence) or not task_names:
        raise TaskError(f"task_names must be a non-empty sequence of task names; got {task_names!r}")
    names = tuple(task_names)
    unknown = [t for t in names if t not in TASK_NAMES]
    if unknown:
        raise TaskError(f"task_names has unknown task(s) {unknown}; the registry (ple.tasks) has {list(TASK_NAMES)}")
    if len(set(names)) != len(names):
        raise TaskError(f"task_names has duplicates: {sorted({t for t in names if names.count(t) > 1})}")
    strengths = dict(GROUP_INTRA_STRENGTH if intra is None else intra)
    bad = [g for g in strengths if g not in GROUP_NAMES]
    if bad:
        raise TaskError(f"intra names unknown group(s) {bad}; the groups are {list(GROUP_NAMES)}")
    strengths = {g: check_float(f"intra[{g!r}]", s, 0.0) for g, s in strengths.items()}
    inter = check_float("inter", inter, 0.0)
    fallback = check_float("fallback", fallback, 0.0)
    groups = [get_task(t).group for t in names]
    raw = torch.tensor([[0.0 if i == j else (strengths.get(gi, fallback) if gi == gj else inter)
                         for j, gj in enumerate(groups)] for i, gi in enumerate(groups)], dtype=torch.float64)
    total = raw.sum(dim=1, keepdim=True)
    return torch.where(total > 0, raw / torch.where(total > 0, total, 1.0), 0.0).float()


def prior_ratio(epoch: int, warmup_epochs: int, freeze_epoch: int, start: float = 0.5, end: float = 0.1) -> float:
    """r(e) of eq-adatt-anneal: r_s - (r_s - r_e) min(max(e - e_warm, 0) / (e_freeze - e_warm), 1).

    epoch: epochs completed (the 0-based index of the coming epoch); r = r_s until warmup ends,
    r_e from freeze_epoch on. Needs 0 <= warmup_epochs < freeze_epoch and r_s, r_e in [0, 1].
    """
    epoch = check_int("epoch", epoch, 0)
    warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
    freeze_epoch = check_int("freeze_epoch", freeze_epoch, warmup_epochs + 1)
    start, end = check_float("start", start, 0.0, 1.0), check_float("end", end, 0.0, 1.0)
    progress = min(max(epoch - warmup_epochs, 0) / (freeze_epoch - warmup_epochs), 1.0)
    return start - (start - end) * progress


def _square(x: object, name: str, n: int | None = None) -> int:
    """The size n of a square tensor [n, n] (= n when given); ShapeError naming `name` otherwise."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor [n, n]; got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] != x.shape[1] or (n is not None and x.shape[0] != n):
        want = "[n, n]" if n is None else f"[{n}, {n}]"
        raise ShapeError(f"{name} has shape {list(x.shape)}; expected {want} (one row and column per task)")
    return int(x.shape[0])


def blend(transfer_matrix: torch.Tensor, affinity: torch.Tensor, prior: torch.Tensor, ratio) -> torch.Tensor:
    """R = (W + A)(1 - r) + P r (eq-adatt-blend). W, A, P: [n, n]; ratio r: a float or 0-d tensor
    in [0, 1] (a tensor's value is read only while validation is on)."""
    n = _square(transfer_matrix, "transfer_matrix")
    _square(affinity, "affinity", n)
    _square(prior, "prior", n)
    if isinstance(ratio, torch.Tensor):
        if ratio.dim() != 0:
            raise ShapeError(f"ratio has shape {list(ratio.shape)}; expected a 0-d tensor or a float")
        checks.check_range(ratio, "ratio", 0.0, 1.0)
    else:
        ratio = check_float("ratio", ratio, 0.0, 1.0)
    return (transfer_matrix + affinity) * (1.0 - ratio) + prior * ratio


def transfer_weights(R: torch.Tensor, affinity: torch.Tensor, *, temperature: float = 1.0,
                     neg_threshold: float | None = -0.1, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """w [n, n] of eq-adatt-weights: a softmax of R_ij / T over the allowed j, exactly 0 elsewhere.

    R, affinity: [n, n]. j is allowed for row i if j != i, A_ij >= neg_threshold (None: no
    blocking) and tasks i and j are both labelled in the batch (loss_mask [n], bool or 0/1;
    None: all are). Entries not allowed get a -inf logit, hence weight exactly 0; each row sums
    to 1 over its allowed set; a row with no allowed entry is all 0. No host sync.
    """
    n = _square(R, "R")
    _square(affinity, "affinity", n)
    temperature = check_float("temperature", temperature, 0.0, low_open=True)
    if neg_threshold is not None:
        neg_threshold = check_float("neg_threshold", neg_threshold)
    if loss_mask is not None and (not isinstance(loss_mask, torch.Tensor) or loss_mask.shape != (n,)):
        got = list(loss_mask.shape) if isinstance(loss_mask, torch.Tensor) else type(loss_mask).__name__
        raise ShapeError(f"loss_mask has shape {got}; expected [{n}] (one entry per task)")
    allowed = ~torch.eye(n, dtype=torch.bool, device=R.device)
    if neg_threshold is not None:
        allowed = allowed & (affinity >= neg_threshold)
    if loss_mask is not None:
        present = loss_mask.to(R.device) > 0
        allowed = allowed & present[None, :] & present[:, None]
    logits = torch.where(allowed, R / temperature, float("-inf"))
    any_allowed = allowed.any(dim=1, keepdim=True)  # an all -inf row would give NaN
    w = torch.softmax(torch.where(any_allowed, logits, 0.0), dim=1)
    return torch.where(allowed, w, 0.0)


def transfer_enhanced_losses(losses: torch.Tensor, weights: torch.Tensor, transfer_lambda: float = 0.1,
                             max_transfer_ratio: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """L_i^adaTT = L_i + min(lambda sum_j w_ij L_j, rho sg(L_i)) (eq-adatt-loss, the G-01 clamp).

    losses: L [n]; weights: w [n, n]. Returns (L^adaTT [n], binds [n] bool). Where the clamp
    binds the transfer term is the detached rho L_i: it passes no gradient.
    """
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
        got = list(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ShapeError(f"losses has shape {got}; expected [n] (one loss per task)")
    _square(weights, "weights", losses.shape[0])
    transfer_lambda = check_float("transfer_lambda", transfer_lambda, 0.0)
    max_transfer_ratio = check_float("max_transfer_ratio", max_transfer_ratio, 0.0)
    transfer = transfer_lambda * (weights @ losses)
    cap = max_transfer_ratio * losses.detach()
    return losses + torch.minimum(transfer, cap), cap < transfer


class AdaTT(nn.Module, Callback):
    """adaTT's Select and Regulate steps (ADATT-3): the transfer-enhanced loss as a `ple.fit`
    aggregation hook and the three-phase schedule as a `ple.fit.Callback`.

        R = (W + A)(1 - r) + P r                                             (eq-adatt-blend)
        w_ij = softmax over allowed j of R_ij / T; 0 if blocked, i = j, unlabelled (eq-adatt-weights)
        L_i^adaTT = L_i + min(lambda sum_j w_ij L_j, rho sg(L_i))            (eq-adatt-loss)
        loss = inner({task: L_i^adaTT}, state)

    computer: ADATT-2's `TaskAffinityComputer` (its tasks are this module's tasks; A is read from
    it). prior: P [n, n] (default `group_prior(task_names)`). transfer_lambda: lambda (0.1);
    temperature: T (1.0); neg_threshold: tau_neg (-0.1; None: no blocking); max_transfer_ratio:
    rho of the G-01 clamp (0.5); warmup_epochs, freeze_epoch: the phases (freeze > warmup);
    prior_blend_start, prior_blend_end: r_s, r_e of eq-adatt-anneal; inner: the aggregation of
    the enhanced losses (default `ple.fit.WeightedSum()`; e.g. a system's `aggregator()`).

    Phases by epochs completed e: warmup (e < warmup_epochs: A measured, no transfer), dynamic
    (A measured, transfer on, W trained, r annealed), frozen (e >= freeze_epoch: no measurement,
    transfer with detached weights). Use `fit(aggregate=adatt.hook(), callbacks=[adatt, ...])`.
    Buffers: `prior`, `epoch`, `phase` (index into PHASES), `prior_ratio`; parameter:
    `transfer_matrix` W [n, n] (zeros). `last_weights` [n, n] and `last_binds` [n] hold the
    latest step's w and clamp pattern, on the device (None in warmup).
    """

    def __init__(self, computer: TaskAffinityComputer, *, prior: torch.Tensor | None = None,
                 transfer_lambda: float = 0.1, temperature: float = 1.0, neg_threshold: float | None = -0.1,
                 max_transfer_ratio: float = 0.5, warmup_epochs: int = 0, freeze_epoch: int = 1,
                 prior_blend_start: float = 0.5, prior_blend_end: float = 0.1, inner=None) -> None:
        super().__init__()
        if not isinstance(computer, TaskAffinityComputer):
            raise InputTypeError(f"computer must be a TaskAffinityComputer; got {type(computer).__name__}")
        if inner is not None and not callable(inner):
            raise InputTypeError(f"inner must be callable (losses, state) -> loss; got {type(inner).__name__}")
        self.task_names = computer.task_names
        n = len(self.task_names)
        self.transfer_lambda = check_float("transfer_lambda", transfer_lambda, 0.0)
        self.temperature = check_float("temperature", temperature, 0.0, low_open=True)
        self.neg_threshold = None if neg_threshold is None else check_float("neg_threshold", neg_threshold, -1.0, 1.0)
        self.max_transfer_ratio = check_float("max_transfer_ratio", max_transfer_ratio, 0.0)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
        self.freeze_epoch = check_int("freeze_epoch", freeze_epoch, 0)
        if not self.freeze_epoch > self.warmup_epochs:
            raise HyperparameterError(
                f"freeze_epoch must be greater than warmup_epochs; got freeze_epoch={self.freeze_epoch}, "
                f"warmup_epochs={self.warmup_epochs}")
        self.prior_blend_start = check_float("prior_blend_start", prior_blend_start, 0.0, 1.0)
        self.prior_blend_end = check_float("prior_blend_end", prior_blend_end, 0.0, 1.0)
        if prior is None:
            P = group_prior(self.task_names)
        else:
            if not isinstance(prior, torch.Tensor):
                raise InputTypeError(f"prior must be a tensor [n, n]; got {type(prior).__name__}")
            if prior.shape != (n, n):
                raise ShapeError(f"prior has shape {list(prior.shape)}; expected [{n}, {n}] (num_tasks: "
                                 f"{list(self.task_names)})")
            if not bool(torch.isfinite(prior).all()):  # once, at construction
                raise NonFiniteError("prior contains NaN or inf")
            P = prior.detach().float().clone()
        self._computer = (computer,)  # a tuple: the hook owns the computer, not this module's state
        self.inner = inner if inner is not None else WeightedSum()
        self.transfer_matrix = nn.Parameter(torch.zeros(n, n))
        self.register_buffer("prior", P)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.int64))
        self.register_buffer("phase", torch.zeros((), dtype=torch.int64))
        self.register_buffer("prior_ratio", torch.tensor(float(self.prior_blend_start)))
        self._hook: list[AffinityAggregate] = []
        self._epoch, self._phase = 0, "warmup"
        self.last_weights: torch.Tensor | None = None
        self.last_binds: torch.Tensor | None = None
        self.set_epoch(0)

    @property
    def computer(self) -> TaskAffinityComputer:
        return self._computer[0]

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def phase_name(self) -> str:
        """The current phase, "warmup", "dynamic" or "frozen" (a host copy of the `phase` buffer)."""
        return self._phase

    def phase_of(self, epoch: int) -> str:
        """The phase of the epoch with 0-based index `epoch` (= epochs completed before it)."""
        if epoch < self.warmup_epochs:
            return "warmup"
        return "dynamic" if epoch < self.freeze_epoch else "frozen"

    def hook(self) -> AffinityAggregate:
        """The aggregation hook for `fit(aggregate=...)`: ADATT-2's Measure step, then this module."""
        if not self._hook:
            self._hook.append(AffinityAggregate(self.computer, self))
            self._sync_hook()
        return self._hook[0]

    def _sync_hook(self) -> None:
        if self._hook:
            self._hook[0].enabled = self._phase != "frozen"

    @torch.no_grad()
    def set_epoch(self, epoch: int) -> None:
        """Enter the epoch with 0-based index `epoch`: its phase and r(e), buffers filled in place."""
        epoch = check_int("epoch", epoch, 0)
        self._epoch, self._phase = epoch, self.phase_of(epoch)
        self.epoch.fill_(epoch)
        self.phase.fill_(PHASES.index(self._phase))
        self.prior_ratio.fill_(prior_ratio(epoch, self.warmup_epochs, self.freeze_epoch,
                                           self.prior_blend_start, self.prior_blend_end))
        self._sync_hook()

    def on_fit_start(self, state) -> None:
        self.set_epoch(self._epoch)  # a resumed run (state_dict loaded) continues from its buffers

    def on_epoch_end(self, state) -> None:
        self.set_epoch(self._epoch + 1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.set_epoch(int(self.epoch))  # the host copies follow the loaded buffers
        return out

    def _loss_vector(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        L = task_loss_vector(losses, self.task_names)  # ADATT-2's check of a per-task loss mapping
        if checks.validation_enabled() and not bool(torch.isfinite(L).all()):  # a host sync: off in fit's step
            bad = [t for t, ok in zip(self.task_names, torch.isfinite(L).tolist()) if not ok]
            raise NonFiniteError(f"the loss(es) of task(s) {bad} are NaN or inf")
        return L

    def loss_mask(self, state=None, device: torch.device | None = None) -> torch.Tensor | None:
        """m [n] bool: task i has a labelled sample in the engine's batch (None: no masks)."""
        masks = None if state is None or getattr(state, "batch", None) is None else state.batch.masks
        if not masks:
            return None
        device = self.prior.device if device is None else device
        one = torch.ones((), dtype=torch.bool, device=device)
        return torch.stack([(masks[t] > 0).any().to(device) if t in masks else one for t in self.task_names])

    def weights(self, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """w [n, n] at the current A, W, P and r (eq-adatt-blend, eq-adatt-weights)."""
        A = self.computer.affinity.to(self.prior.dtype)
        R = blend(self.transfer_matrix, A, self.prior, self.prior_ratio)
        return transfer_weights(R, A, temperature=self.temperature, neg_threshold=self.neg_threshold,
                                loss_mask=loss_mask)

    def enhanced_losses(self, losses: Mapping[str, torch.Tensor], state=None) -> dict[str, torch.Tensor]:
        """{task: L_i^adaTT} in the current phase (the plain L_i in warmup)."""
        L = self._loss_vector(losses)
        if self._phase == "warmup":
            self.last_weights, self.last_binds = None, None
            return {t: losses[t] for t in self.task_names}
        mask = self.loss_mask(state, L.device)
        if self._phase == "frozen":
            with torch.no_grad():
                w = self.weights(mask)
        else:
            w = self.weights(mask)
        L_ada, binds = transfer_enhanced_losses(L, w.to(L.dtype), self.transfer_lambda, self.max_transfer_ratio)
        self.last_weights, self.last_binds = w.detach(), binds
        return dict(zip(self.task_names, L_ada.unbind(0)))

    def forward(self, losses: Mapping[str, torch.Tensor], state=None) -> torch.Tensor:
        """The step's loss: inner({task: L_i^adaTT}, state)."""
        return self.inner(self.enhanced_losses(losses, state), state)

    @torch.no_grad()
    def detect_negative_transfer(self) -> dict[str, list[str]]:
        """{task: [partners j with A_ij < neg_threshold]}, the blocked pairs ({} without blocking)."""
        if self.neg_threshold is None:
            return {}
        A = self.computer.affinity.detach().cpu().tolist()
        out = {}
        for i, t in enumerate(self.task_names):
            blocked = [u for j, u in enumerate(self.task_names) if j != i and A[i][j] < self.neg_threshold]
            if blocked:
                out[t] = blocked
        return out

    def extra_repr(self) -> str:
        return (f"num_tasks={self.num_tasks}, transfer_lambda={self.transfer_lambda}, temperature={self.temperature}, "
                f"neg_threshold={self.neg_threshold}, max_transfer_ratio={self.max_transfer_ratio}, "
                f"warmup_epochs={self.warmup_epochs}, freeze_epoch={self.freeze_epoch}, phase={self._phase!r}")
