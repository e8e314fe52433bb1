"""ple.weighting -- generated from book/adatt4_training_loop.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['GRADNORM_ALPHA', 'DWA_TEMPERATURE', 'GradNorm', 'dwa_weights', 'DWA', 'JD_AGGREGATORS', 'JacobianDescent']

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ple.adatt import TaskAffinityComputer
from ple.checks import InputTypeError, ShapeError, TaskError, check_choice, check_finite, check_float, check_unique
from ple.fit import Callback


GRADNORM_ALPHA = 1.5  # alpha of Chen et al. 2018, the posts' value
DWA_TEMPERATURE = 2.0  # T of Liu et al. 2019, the original code's value


class GradNorm(nn.Module, Callback):
    """GradNorm {cite}`chen2018gradnorm` as a `ple.fit` aggregation hook and callback.

        G_k = || d(w_k L_k) / dW || = w_k || dL_k / dW ||                     (eq-gradnorm-norm)
        Lt_k = L_k(t) / L_k(0),  r_k = Lt_k / mean_j Lt_j                     (eq-gradnorm-rate)
        L_grad = sum_k | G_k - sg(mean_j G_j * r_k^alpha) |                  (eq-gradnorm-loss)
        loss = sum_k sg(w_k) L_k + L_grad;  after the step w <- K w / sum_j w_j  (eq-gradnorm-renorm)

    The model's gradient comes from the first term only (the weights are constants there); the
    weights' gradient from L_grad only (the norms and targets are constants there), so one
    backward and one optimizer step update both. task_names: the K tasks; shared_parameters: W
    (e.g. `system.pool`; the paper takes the last shared layer); alpha: the restoring-force
    strength (1.5, the posts' value); method: how the K gradients are taken (ADATT-2's
    `TaskAffinityComputer` extraction: "batched", "loop" or "auto"); min_weight: the floor of a
    weight before renormalising. L_k(0) is each task's first finite, non-zero loss (buffer
    `initial_losses`). `enabled = False` (or W frozen) leaves the weights as they are.
    `last_norms`, `last_targets` [K]: the latest step's G_k and targets.
    """

    def __init__(self, task_names: Sequence[str], shared_parameters, *, alpha: float = GRADNORM_ALPHA,
                 method: str = "auto", min_weight: float = 1e-3) -> None:
        super().__init__()
        self._computer = (TaskAffinityComputer(task_names, shared_parameters, grad_interval=1, method=method),)
        self.task_names = self._computer[0].task_names
        n = len(self.task_names)
        self.alpha = check_float("alpha", alpha, 0.0)
        self.min_weight = check_float("min_weight", min_weight, 0.0, low_open=True)
        self.weights = nn.Parameter(torch.ones(n))
        self.register_buffer("initial_losses", torch.ones(n))
        self.register_buffer("has_initial", torch.zeros(n, dtype=torch.bool))
        self.enabled = True
        self.last_norms: torch.Tensor | None = None
        self.last_targets: torch.Tensor | None = None

    def _active(self) -> bool:
        return self.enabled and torch.is_grad_enabled() and any(p.requires_grad for p in self._computer[0].shared_parameters)

    def forward(self, losses: Mapping[str, torch.Tensor], state=None) -> torch.Tensor:
        missing = [t for t in self.task_names if t not in losses]
        if missing:
            raise TaskError(f"losses lacks task(s) {missing}; GradNorm weights {list(self.task_names)}")
        L = torch.stack([losses[t] if losses[t].dtype == torch.float64 else losses[t].float() for t in self.task_names])
        w = self.weights.to(L.dtype)
        model_loss = (w.detach() * L).sum()
        if not self._active():
            return model_loss
        with torch.no_grad():
            first = ~self.has_initial & torch.isfinite(L) & (L != 0)  # no host sync
            self.initial_losses.copy_(torch.where(first, L.detach().to(self.initial_losses.dtype), self.initial_losses))
            self.has_initial |= first
        norms = self._computer[0].task_gradients(losses).norm(dim=1).detach().to(L.dtype)  # ||dL_k/dW||
        G = w * norms                                                               # eq-gradnorm-norm
        rate = torch.where(self.has_initial, L.detach() / self.initial_losses.to(L.dtype), torch.ones_like(L))
        r = rate / rate.mean()                                                      # eq-gradnorm-rate
        target = (G.mean() * r.pow(self.alpha)).detach()
        self.last_norms, self.last_targets = G.detach(), target
        return model_loss + (G - target).abs().sum()                                # eq-gradnorm-loss

    @torch.no_grad()
    def renormalise(self) -> None:
        """w <- K w / sum_j w_j after a floor at min_weight (eq-gradnorm-renorm)."""
        self.weights.clamp_(min=self.min_weight)
        self.weights.mul_(len(self.task_names) / self.weights.sum())

    def on_step_end(self, state) -> None:
        self.renormalise()

    def task_weights(self) -> dict[str, float]:
        """{task: w_k} (a host copy, for records)."""
        return dict(zip(self.task_names, self.weights.detach().cpu().tolist()))


def dwa_weights(history: torch.Tensor, temperature: float = DWA_TEMPERATURE) -> torch.Tensor:
    """DWA's weights from the epoch-mean losses `history` [E, K] (rows: epochs, oldest first):

        r_k = Lbar_k(t-1) / Lbar_k(t-2),  w_k = K exp(r_k / T) / sum_j exp(r_j / T)   (eq-dwa)

    and w = 1 while fewer than two epochs are recorded. Returns [K] in history's dtype."""
    if not isinstance(history, torch.Tensor):
        raise InputTypeError(f"history must be a torch.Tensor [E, K]; got {type(history).__name__}")
    temperature = check_float("temperature", temperature, 0.0, low_open=True)
    if history.dim() != 2:
        raise ShapeError(f"history has shape {list(history.shape)}; expected [E, K] (epochs, tasks)")
    K = history.shape[1]
    check_finite(history, "history")  # once per epoch, not in the step
    if history.shape[0] < 2:
        return torch.ones(K, dtype=history.dtype, device=history.device)
    r = history[-1] / history[-2]
    return K * torch.softmax(r / temperature, dim=0)


class DWA(nn.Module, Callback):
    """Dynamic Weight Average {cite}`liu2019mtan` as a `ple.fit` aggregation hook and callback.

    loss = sum_k w_k L_k with w from `dwa_weights` over the epoch-mean training losses of the
    last two epochs (eq-dwa; w = 1 in the first two). task_names: the K tasks; temperature: T
    (2.0, the original code's value). `on_epoch_end` appends the epoch's mean losses (the
    engine's record) and recomputes w. Buffers: `history` [2, K] (the last two epochs' means),
    `epochs_seen` (int64), `task_weights_` [K]. No parameters: the weights are not learnt.
    """

    def __init__(self, task_names: Sequence[str], *, temperature: float = DWA_TEMPERATURE) -> None:
        super().__init__()
        if isinstance(task_names, str) or not task_names:
            raise TaskError(f"task_names must be a non-empty sequence of task names; got {task_names!r}")
        self.task_names = check_unique("task_names", task_names)
        n = len(self.task_names)
        self.temperature = check_float("temperature", temperature, 0.0, low_open=True)
        self.register_buffer("history", torch.ones(2, n, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("task_weights_", torch.ones(n))

    def forward(self, losses: Mapping[str, torch.Tensor], state=None) -> torch.Tensor:
        missing = [t for t in self.task_names if t not in losses]
        if missing:
            raise TaskError(f"losses lacks task(s) {missing}; DWA weights {list(self.task_names)}")
        L = torch.stack([losses[t] if losses[t].dtype == torch.float64 else losses[t].float() for t in self.task_names])
        return (self.task_weights_.to(L.dtype) * L).sum()

    @torch.no_grad()
    def record_epoch(self, mean_losses: Mapping[str, float]) -> torch.Tensor:
        """Append one epoch's mean losses {task: float}; returns the new w [K]."""
        row = torch.tensor([float(mean_losses[t]) for t in self.task_names], dtype=torch.float64)
        self.history.copy_(torch.stack([self.history[1], row.to(self.history.device)]))
        self.epochs_seen.add_(1)
        seen = int(self.epochs_seen)
        w = dwa_weights(self.history[2 - min(seen, 2):], self.temperature)
        self.task_weights_.copy_(w.to(self.task_weights_.dtype))
        return self.task_weights_

    def on_epoch_end(self, state) -> None:
        self.record_epoch(state.record["train_loss"])

    def task_weights(self) -> dict[str, float]:
        """{task: w_k} (a host copy, for records)."""
        return dict(zip(self.task_names, self.task_weights_.cpu().tolist()))


JD_AGGREGATORS = ("upgrad", "pcgrad")  # torchjd's aggregators offered by name


def _torchjd():
    try:
        from torchjd import aggregation, autojac
    except ImportError as err:  # torchjd is in the test extra, not a core dependency
        raise ImportError("JacobianDescent needs torchjd (pip install 'torchjd>=0.18,<0.19'; it is in "
                          "ple's [test] extra)") from err
    return aggregation, autojac


class JacobianDescent(nn.Module):
    """Jacobian descent on the shared experts through torchjd's `mtl_backward` {cite}`quinton2024jacobian`,
    as a `ple.fit` aggregator that takes the backward itself (`performs_backward = True`).

        J = [dL_1/dW; ...; dL_K/dW]  (K x |W|, W = the shared parameters)         (eq-jd-jacobian)
        dW = A(J) = J^T a(J J^T)     (UPGrad / PCGrad: weights from the Gramian)   (eq-jd-aggregate)

    The task-specific parameters (everything after the shared representation) get the plain sum of
    their task gradients; the shared ones get the aggregator's combination of the rows of J instead
    of their sum: UPGrad {cite}`quinton2024jacobian` projects each row onto the dual cone of the
    rows, PCGrad {cite}`yu2020pcgrad` removes, row by row in a random order, the component along
    any conflicting row. task_names: the K tasks; shared: the module whose output is the shared
    representation (e.g. `system.pool`, whose output's `.shared` [B, D] is taken through a forward
    hook; a module returning a tensor works too); aggregator: "upgrad", "pcgrad" or a torchjd
    `Aggregator`. The model's regulariser (`state.aux_loss`) is back-propagated as a plain
    gradient. With the shared parameters frozen (phase 2) the step is an ordinary summed
    backward. `last_weights` [K]: the Gramian weights of the latest step (`task_weights()`).
    """

    performs_backward = True

    def __init__(self, task_names: Sequence[str], shared: nn.Module, aggregator="upgrad") -> None:
        super().__init__()
        if isinstance(task_names, str) or not task_names:
            raise TaskError(f"task_names must be a non-empty sequence of task names; got {task_names!r}")
        self.task_names = tuple(task_names)
        if len(set(self.task_names)) != len(self.task_names):
            raise TaskError(f"task_names must be unique; got {list(self.task_names)}")
        if not isinstance(shared, nn.Module):
            raise InputTypeError(f"shared must be an nn.Module (the shared representation's module); "
                                 f"got {type(shared).__name__}")
        aggregation, _ = _torchjd()
        if isinstance(aggregator, str):
            check_choice("aggregator", aggregator, JD_AGGREGATORS)
            self.aggregator_name = aggregator
            aggregator = {"upgrad": aggregation.UPGrad, "pcgrad": aggregation.PCGrad}[aggregator]()
        elif isinstance(aggregator, aggregation.Aggregator):
            self.aggregator_name = type(aggregator).__name__
        else:
            raise InputTypeError(f"aggregator must be one of {JD_AGGREGATORS} or a torchjd Aggregator; "
                                 f"got {aggregator!r}")
        self.aggregator = aggregator
        self._shared = [shared]  # a plain list: not a submodule, its parameters stay the model's
        self._features: torch.Tensor | None = None
        self._hook = shared.register_forward_hook(self._capture)
        self.last_weights: torch.Tensor | None = None

    def _capture(self, module, inputs, output) -> None:
        self._features = output if isinstance(output, torch.Tensor) else getattr(output, "shared", None)

    def remove(self) -> None:
        """Detach the forward hook from the shared module (the aggregator is then unusable)."""
        self._hook.remove()

    def forward(self, losses: Mapping[str, torch.Tensor], state=None) -> torch.Tensor:
        """losses: {task: scalar}; back-propagates them (eq-jd-aggregate) and returns the detached
        step loss sum_k L_k (+ the regulariser) for the records."""
        _, autojac = _torchjd()
        missing = [t for t in self.task_names if t not in losses]
        if missing:
            raise TaskError(f"losses lacks task(s) {missing}; JacobianDescent combines {list(self.task_names)}")
        L = [losses[t] for t in self.task_names]
        aux = getattr(state, "aux_loss", None)
        scaler = getattr(state, "scaler", None)

        def scaled(x):
            return scaler.scale(x) if scaler is not None else x
        features, self._features = self._features, None
        total = torch.stack([x.detach().float() for x in L]).sum()
        if aux is not None:
            total = total + aux.detach().float()
        if features is None or not features.requires_grad:  # shared part frozen: a plain step
            plain = sum(L) + (aux if aux is not None else 0.0)
            if plain.requires_grad:
                scaled(plain).backward()
            return total
        if aux is not None and aux.requires_grad:  # the regulariser: a plain gradient, graph kept for J
            scaled(aux).backward(retain_graph=True)
        shared = [p for p in self._shared[0].parameters() if p.requires_grad]
        # the task heads share stacked parts of the graph (gates, tower waves): keep it for each row
        autojac.mtl_backward([scaled(x) for x in L], features=features, retain_graph=True)
        with_jac = [p for p in shared if getattr(p, "jac", None) is not None]
        weights = autojac.jac_to_grad(with_jac, self.aggregator)
        self.last_weights = None if weights is None else weights.detach()
        return total

    def task_weights(self) -> dict[str, float]:
        """{task: weight of its Jacobian row in the latest step} (a host copy; {} before the first)."""
        if self.last_weights is None:
            return {}
        return dict(zip(self.task_names, self.last_weights.float().cpu().tolist()))
