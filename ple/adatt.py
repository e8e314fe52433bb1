"""ple.adatt -- generated from book/adatt2_task_affinity.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['EXTRACTION_METHODS', 'gradient_cosines', 'ema_update', 'task_loss_vector', 'TaskAffinityComputer', 'AffinityAggregate']

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from ple import checks
from ple.checks import HyperparameterError, InputTypeError, NonFiniteError, ShapeError, TaskError
from ple.checks import check_choice, check_float, check_int
from ple.fit import WeightedSum

EXTRACTION_METHODS = ("auto", "batched", "loop")


def gradient_cosines(grads: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """All task-pair gradient cosines as one Gram matrix (eq-adatt-cosine).

    grads: G [n, d], one flattened task gradient per row -> C [n, n],
    C_ij = g_i . g_j / (max(||g_i||, eps) max(||g_j||, eps)). A zero row (a task whose loss
    does not reach the parameters) has cosine 0 with every task, itself included.
    """
    checks.check_tensor(grads, "grads", ["n", "d"], "one flattened gradient per task")
    eps = check_float("eps", eps, 0.0, low_open=True)
    unit = grads / grads.norm(dim=1, keepdim=True).clamp_min(eps)
    return unit @ unit.T


def ema_update(affinity: torch.Tensor, cosines: torch.Tensor, update_count: torch.Tensor,
               ema_decay: float) -> torch.Tensor:
    """One step of eq-adatt-ema: A_t = alpha A_{t-1} + (1 - alpha) C_t, A_0 = C_0, clamped to [-1, 1].

    affinity, cosines: [n, n]; update_count: updates so far (a 0-d tensor, read on the device:
    no host sync). Pairs whose cosine is not finite keep their previous value. Returns the new A.
    The update is elementwise, so any shape works as long as the two agree; shapes and ema_decay
    in [0, 1) are checked on the host (free).
    """
    if not isinstance(affinity, torch.Tensor):
        raise checks.InputTypeError(f"affinity must be a torch.Tensor [n, n]; got {type(affinity).__name__}")
    if not isinstance(cosines, torch.Tensor) or cosines.shape != affinity.shape:
        got = list(cosines.shape) if isinstance(cosines, torch.Tensor) else type(cosines).__name__
        raise ShapeError(f"cosines has shape {got}; expected {list(affinity.shape)} (the shape of affinity)")
    if not isinstance(update_count, torch.Tensor) or update_count.dim() != 0:
        got = list(update_count.shape) if isinstance(update_count, torch.Tensor) else type(update_count).__name__
        raise ShapeError(f"update_count has shape {got}; expected a 0-d tensor (the number of updates so far)")
    ema_decay = check_float("ema_decay", ema_decay, 0.0, 1.0, high_open=True)
    first = update_count == 0
    blended = torch.where(first, cosines, ema_decay * affinity + (1.0 - ema_decay) * cosines)
    return torch.where(torch.isfinite(cosines), blended, affinity).clamp(-1.0, 1.0)


def _as_parameters(shared_parameters) -> tuple[torch.Tensor, ...]:
    if isinstance(shared_parameters, nn.Module):
        params = tuple(shared_parameters.parameters())
    elif isinstance(shared_parameters, torch.Tensor):
        params = (shared_parameters,)
    elif isinstance(shared_parameters, Iterable):
        params = tuple(shared_parameters)
    else:
        raise InputTypeError("shared_parameters must be an nn.Module or an iterable of tensors; "
                             f"got {type(shared_parameters).__name__}")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise InputTypeError(f"shared_parameters[{i}] is a {type(p).__name__}; expected a tensor")
    params = tuple(p for p in params if p.requires_grad)
    if not params:
        raise HyperparameterError(
            "shared_parameters holds no tensor that requires grad; expected the shared experts' "
            "parameters (e.g. system.pool)")
    return params


def task_loss_vector(losses: Mapping[str, torch.Tensor], task_names: Sequence[str]) -> torch.Tensor:
    """L [n]: the scalar losses {task: []} in the order of `task_names`, float32 (float64 kept).

    The one check of a per-task loss mapping (ADATT-2 and ADATT-3): a mapping with exactly these
    tasks, each a scalar tensor; the error names the task and what it got."""
    if not isinstance(losses, Mapping):
        raise InputTypeError(f"losses must be a mapping {{task: scalar loss}}; got {type(losses).__name__}")
    checks.check_unique("task_names", task_names)
    missing = [t for t in task_names if t not in losses]
    unknown = [t for t in losses if t not in task_names]
    if missing or unknown:
        raise TaskError(f"losses has tasks {sorted(losses)}; expected exactly {list(task_names)} "
                        f"(missing {missing}, unknown {unknown})")
    for t in task_names:
        x = losses[t]
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"losses[{t!r}] must be a tensor; got {type(x).__name__}")
        if x.dim() != 0:
            raise ShapeError(f"losses[{t!r}] has shape {list(x.shape)}; expected a scalar [] "
                             "(the task's mean loss)")
    return torch.stack([losses[t] if losses[t].dtype == torch.float64 else losses[t].float() for t in task_names])


class TaskAffinityComputer(nn.Module):
    """The task-affinity matrix of adaTT: EMA of the task-gradient cosines on the shared-expert
    parameters (ADATT-2).

        g_k = vec(dL_k / d theta_shared), None -> zeros                      (eq-adatt-grad)
        C = G_hat G_hat^T, rows normalised, norms clamped at eps             (eq-adatt-cosine)
        A_0 = C_0,  A_t = clamp(alpha A_{t-1} + (1 - alpha) C_t, -1, 1)      (eq-adatt-ema)

    task_names: the n tasks, in the order of A's rows and columns. shared_parameters: the
    parameters compared (an nn.Module such as `system.pool`, or an iterable of tensors); only
    those that require grad count; kept as references, outside this module's state.
    ema_decay: alpha in [0, 1). grad_interval: `due(step)` is true every grad_interval-th step
    (the posts' `adatt_grad_interval`, 10). method: "batched" (one backward with n one-hot
    cotangents, `autograd.grad(is_grads_batched=True)`), "loop" (n backward passes, as the posts)
    or "auto" (batched, falling back to the loop for good where a layer has no vmap batching
    rule; `method_used` says which ran). eps: the norm clamp.

    Buffers: `affinity` [n, n] (identity until the first update), `update_count` (int64, 0-d).
    `last_cosines` holds the latest C [n, n]. `module(losses)` with {task: scalar loss} (graphs
    alive) extracts, updates and returns A. While `ple.checks` validation is on, non-finite
    gradients raise NonFiniteError naming the tasks (a host sync); with it off their pairs keep
    the previous value, without a sync (in one batched backward a NaN can reach every row, as
    0 * NaN = NaN: then the whole update is skipped).
    """

    def __init__(self, task_names: Sequence[str], shared_parameters, *, ema_decay: float = 0.9,
                 grad_interval: int = 10, method: str = "auto", eps: float = 1e-8) -> None:
        super().__init__()
        if isinstance(task_names, str) or not isinstance(task_names, Sequence) or not task_names:
            raise TaskError(f"task_names must be a non-empty sequence of task names; got {task_names!r}")
        names = tuple(task_names)
        if len(set(names)) != len(names) or not all(isinstance(t, str) and t for t in names):
            raise TaskError(f"task_names must be distinct non-empty strings; got {names!r}")
        self.task_names = names
        self.ema_decay = check_float("ema_decay", ema_decay, 0.0, 1.0, high_open=True)
        self.grad_interval = check_int("grad_interval", grad_interval, 1)
        self.method = check_choice("method", method, EXTRACTION_METHODS)
        self.eps = check_float("eps", eps, 0.0, low_open=True)
        self._shared = _as_parameters(shared_parameters)  # a tuple: not registered, not saved
        self.register_buffer("affinity", torch.eye(len(names)))
        self.register_buffer("update_count", torch.zeros((), dtype=torch.int64))
        self.last_cosines: torch.Tensor | None = None
        self.method_used: str | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def shared_parameters(self) -> tuple[torch.Tensor, ...]:
        return self._shared

    @property
    def num_shared(self) -> int:
        """d: the number of shared parameter entries, the length of each g_k."""
        return sum(p.numel() for p in self._shared)

    def due(self, step: int) -> bool:
        """Whether training step `step` (0-based) measures: every grad_interval-th step."""
        return step % self.grad_interval == 0

    def _stack_losses(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        L = task_loss_vector(losses, self.task_names)
        if not any(losses[t].requires_grad for t in self.task_names):
            raise TaskError("no loss requires grad: compute the losses with autograd on (the graph is needed)")
        return L

    def _loop(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        rows = []
        for t in self.task_names:  # the posts' form: one backward per task, from its own loss
            if losses[t].requires_grad:
                grads = torch.autograd.grad(losses[t], self._shared, retain_graph=True, allow_unused=True)
            else:
                grads = (None,) * len(self._shared)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                   for g, p in zip(grads, self._shared)]))
        return torch.stack(rows)

    def _batched(self, L: torch.Tensor) -> torch.Tensor:
        n = L.shape[0]
        eye = torch.eye(n, device=L.device, dtype=L.dtype)  # cotangent e_k -> row k
        grads = torch.autograd.grad(L, self._shared, grad_outputs=eye, retain_graph=True,
                                    allow_unused=True, is_grads_batched=True)
        return torch.cat([(p.new_zeros(n, p.numel()) if g is None else g.reshape(n, -1))
                          for g, p in zip(grads, self._shared)], dim=1)

    @torch.compiler.disable
    def task_gradients(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """G [n, d] (eq-adatt-grad): row k is task k's gradient on the shared parameters,
        flattened, zeros where task k does not reach a parameter. The graphs are retained for
        the training step's own backward."""
        L = self._stack_losses(losses)
        if self.method == "loop" or (self.method == "auto" and self.method_used == "loop"):
            self.method_used = "loop"
            return self._loop(losses)
        try:
            G = self._batched(L)
        except RuntimeError as err:
            # a layer without a vmap batching rule, or with an in-place write vmap cannot batch
            if self.method == "batched" or not ("atching rule" in str(err) or "vmap" in str(err)):
                raise
            self.method_used = "loop"  # a layer without a vmap batching rule: the loop from now on
            return self._loop(losses)
        self.method_used = "batched"
        return G

    @torch.no_grad()
    def update(self, cosines: torch.Tensor) -> torch.Tensor:
        """Fold one cosine matrix C [n, n] into A (eq-adatt-ema); returns A."""
        n = self.num_tasks
        if not isinstance(cosines, torch.Tensor) or cosines.shape != (n, n):
            got = list(cosines.shape) if isinstance(cosines, torch.Tensor) else type(cosines).__name__
            raise ShapeError(f"cosines has shape {got}; expected [{n}, {n}] (num_tasks)")
        C = cosines.to(self.affinity.dtype)
        self.affinity.copy_(ema_update(self.affinity, C, self.update_count, self.ema_decay))
        self.update_count.add_(1)
        return self.affinity

    def _check_finite(self, G: torch.Tensor, losses: Mapping[str, torch.Tensor]) -> None:
        if not checks.validation_enabled():
            return
        bad = ~torch.isfinite(G).all(dim=1)
        if bool(bad.any()):
            if self.method_used == "batched":  # 0 * NaN spreads across rows in one backward: ask each task
                bad = ~torch.isfinite(self._loop(losses)).all(dim=1)
            names = [t for t, b in zip(self.task_names, bad.tolist()) if b]
            raise NonFiniteError(f"losses: the gradients of task(s) {names} on the shared parameters contain NaN or inf")

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Measure: losses {task: scalar with its graph} -> A [n, n] after folding in this C."""
        G = self.task_gradients(losses)
        self._check_finite(G, losses)
        with checks.validation(False):
            C = gradient_cosines(G.detach(), self.eps)
        self.last_cosines = C
        return self.update(C)

    def extra_repr(self) -> str:
        return (f"num_tasks={self.num_tasks}, num_shared={self.num_shared}, ema_decay={self.ema_decay}, "
                f"grad_interval={self.grad_interval}, method={self.method!r}")


class AffinityAggregate(nn.Module):
    """`ple.fit`'s aggregation hook with adaTT's Measure step in front of it.

    On the training steps that `computer.due(state.step)` selects (and only while autograd is on),
    the per-task losses, graphs alive, go to the `TaskAffinityComputer`; the step's loss is then
    `inner(losses, state)` (default `ple.fit.WeightedSum()`; e.g. a system's `aggregator()`). The
    computer is also left in `state.extra["adatt_affinity"]` for an `inner` that reads A (the
    transfer loss of ADATT-3). `enabled = False` skips the measurement.
    """

    def __init__(self, computer: TaskAffinityComputer, inner=None) -> None:
        super().__init__()
        if not isinstance(computer, TaskAffinityComputer):
            raise InputTypeError(f"computer must be a TaskAffinityComputer; got {type(computer).__name__}")
        if inner is not None and not callable(inner):
            raise InputTypeError(f"inner must be callable (losses, state) -> loss; got {type(inner).__name__}")
        self.computer = computer
        self.inner = inner if inner is not None else WeightedSum()
        self.enabled = True

    def forward(self, losses: Mapping[str, torch.Tensor], state=None) -> torch.Tensor:
        step = 0 if state is None else state.step
        if state is not None:
            state.extra["adatt_affinity"] = self.computer
        if self.enabled and torch.is_grad_enabled() and self.computer.due(step):
            self.computer({t: losses[t] for t in self.computer.task_names})
        return self.inner(losses, state)
