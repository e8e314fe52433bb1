"""ple.evidential -- generated from book/ple6_interpretability_uncertainty.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['KL_LAMBDA', 'ANNEAL_EPOCHS', 'NIG_LAMBDA', 'EVIDENCE_MAX', 'RISKS', 'KL_FORMS', 'HEAD_TYPES', 'evidence', 'dirichlet_uncertainty', 'dirichlet_mean', 'dirichlet_kl_uniform', 'evidential_kl', 'dirichlet_risk', 'dirichlet_loss', 'kl_annealing', 'NIG', 'nig_nll', 'nig_regularizer', 'nig_loss', 'evidential_name', 'EvidentialHeads', 'KLAnnealing', 'SideOutput', 'SideHeadSystem']

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ple import checks
from ple.checks import HyperparameterError, InputTypeError, ShapeError, TaskError, check_choice, check_dtype, check_float, check_int, check_tensor
from ple.fit import Callback, FitState, Task, TensorData
from ple.layers import StackedLinear
from ple.tasks import TaskSpec

KL_LAMBDA = 0.01        # lambda of eq-evidential-objective (the posts)
ANNEAL_EPOCHS = 10      # annealing horizon of eq-kl-anneal (the posts, Sensoy et al.)
NIG_LAMBDA = 0.01       # weight of Amini et al.'s evidence regulariser (eq-nig-reg)
EVIDENCE_MAX = 1e6      # evidence is clamped here: a Dirichlet this concentrated is a point mass
RISKS = ("mse", "ce", "ml")
KL_FORMS = ("sensoy", "post")
HEAD_TYPES = ("binary", "multiclass", "regression")


def _dt(x: torch.Tensor) -> torch.dtype:
    """float32 at least: bf16 / fp16 are promoted, float64 stays."""
    return torch.promote_types(x.dtype, torch.float32)


def evidence(z: torch.Tensor, max_evidence: float = EVIDENCE_MAX) -> torch.Tensor:
    """Non-negative evidence from raw head outputs: softplus(z), clamped at `max_evidence` (> 0)."""
    if not isinstance(z, torch.Tensor):
        raise InputTypeError(f"z must be a torch.Tensor; got {type(z).__name__}")
    max_evidence = check_float("max_evidence", max_evidence, 0.0, low_open=True)
    return F.softplus(z.to(_dt(z))).clamp(max=max_evidence)


def _check_alpha(alpha: torch.Tensor, name: str = "alpha") -> None:
    check_tensor(alpha, name, ["B", "K"], "Dirichlet parameters, batch first")
    if alpha.shape[1] < 2:
        raise ShapeError(f"{name} has shape {list(alpha.shape)}; expected [B, K] with K >= 2 classes")
    checks.check_range(alpha, name, 0.0, low_open=True, what="Dirichlet parameters")  # a sync: only while validating


def _one_hot(y: torch.Tensor, K: int, name: str = "y", batch: int | None = None) -> torch.Tensor:
    """Class indices [B] (int) -> one-hot [B, K] float; a float [B, K] one-hot passes through.
    `batch`: the B that y must have (alpha's rows); indices outside [0, K) raise (while validating)."""
    if not isinstance(y, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor; got {type(y).__name__}")
    if batch is not None and (y.dim() == 0 or y.shape[0] != batch):
        raise ShapeError(f"{name} has shape {list(y.shape)}; expected {batch} rows (the batch of alpha)")
    if y.dim() == 2 and y.is_floating_point():
        if y.shape[1] != K:
            raise ShapeError(f"{name} has shape {list(y.shape)}; expected [B] class indices or [B, {K}] one-hot")
        checks.check_range(y, name, 0.0, 1.0, what="a one-hot target")
        return y
    if y.dim() != 1:
        raise ShapeError(f"{name} has shape {list(y.shape)}; expected [B] class indices or [B, {K}] one-hot")
    checks.check_range(y, name, 0, K - 1, what=f"class indices of {K} classes")
    return F.one_hot(y.long(), K).to(torch.float32)


def dirichlet_uncertainty(alpha: torch.Tensor) -> torch.Tensor:
    """eq-dirichlet: u = K / S, S = sum_k alpha_k; alpha [B, K] -> u [B] in (0, 1]."""
    _check_alpha(alpha)
    a = alpha.to(_dt(alpha))
    return a.shape[1] / a.sum(dim=1)


def dirichlet_mean(alpha: torch.Tensor) -> torch.Tensor:
    """eq-dirichlet: p_hat = alpha / S, [B, K]."""
    _check_alpha(alpha)
    a = alpha.to(_dt(alpha))
    return a / a.sum(dim=1, keepdim=True)


def dirichlet_kl_uniform(alpha: torch.Tensor) -> torch.Tensor:
    """eq-dirichlet-kl: KL(Dir(alpha) || Dir(1)) per sample, [B] (closed form, float32 or wider):

        log Gamma(S) - log Gamma(K) - sum_k log Gamma(alpha_k) + sum_k (alpha_k - 1)(psi(alpha_k) - psi(S)).
    """
    _check_alpha(alpha)
    a = alpha.to(_dt(alpha))
    K = a.shape[1]
    S = a.sum(dim=1)
    return (torch.lgamma(S) - math.lgamma(K) - torch.lgamma(a).sum(dim=1)
            + ((a - 1) * (torch.digamma(a) - torch.digamma(S).unsqueeze(1))).sum(dim=1))


def evidential_kl(alpha: torch.Tensor, y: torch.Tensor, form: str = "sensoy") -> torch.Tensor:
    """The evidence regulariser of eq-evidential-objective, [B].

    form "sensoy": KL(Dir(alpha_tilde) || Dir(1)) with alpha_tilde = y + (1 - y) * alpha: the
    target class's evidence is removed first, so only evidence for wrong classes is penalised
    (Sensoy et al. 2018). form "post": KL(Dir(alpha) || Dir(1)) as the posts write it, which
    also pulls the true class's evidence to zero. y: class indices [B] or one-hot [B, K].
    """
    check_choice("form", form, KL_FORMS)
    _check_alpha(alpha)
    if form == "post":
        return dirichlet_kl_uniform(alpha)
    y1 = _one_hot(y, alpha.shape[1], batch=alpha.shape[0]).to(_dt(alpha))
    return dirichlet_kl_uniform(y1 + (1 - y1) * alpha.to(y1.dtype))


def dirichlet_risk(alpha: torch.Tensor, y: torch.Tensor, risk: str = "mse") -> torch.Tensor:
    """The expected loss under p ~ Dir(alpha), [B] (eq-expected-mse):

    "mse": E||y - p||^2 = sum_j (y_j - p_hat_j)^2 + p_hat_j (1 - p_hat_j) / (S + 1);
    "ce":  E[-sum_j y_j log p_j] = sum_j y_j (psi(S) - psi(alpha_j));
    "ml":  -log E[p_y] = sum_j y_j (log S - log alpha_j)  (type-II maximum likelihood).
    """
    check_choice("risk", risk, RISKS)
    _check_alpha(alpha)
    a = alpha.to(_dt(alpha))
    y1 = _one_hot(y, a.shape[1], batch=a.shape[0]).to(a.dtype)
    S = a.sum(dim=1, keepdim=True)
    if risk == "mse":
        p = a / S
        return ((y1 - p).square() + p * (1 - p) / (S + 1)).sum(dim=1)
    if risk == "ce":
        return (y1 * (torch.digamma(S) - torch.digamma(a))).sum(dim=1)
    return (y1 * (torch.log(S) - torch.log(a))).sum(dim=1)


def dirichlet_loss(alpha: torch.Tensor, y: torch.Tensor, kl_coef: float | torch.Tensor = 0.0, *,
                   risk: str = "mse", form: str = "sensoy") -> torch.Tensor:
    """eq-evidential-objective per sample, [B]: risk(alpha, y) + kl_coef * KL (`evidential_kl`);
    kl_coef >= 0 (a float, or a 0-d tensor read only while validating)."""
    _check_coef(kl_coef, "kl_coef")
    return dirichlet_risk(alpha, y, risk) + kl_coef * evidential_kl(alpha, y, form)


def _check_coef(c: object, name: str) -> None:
    """A loss weight >= 0: a float (checked on the host) or a 0-d tensor (read only while validating)."""
    if isinstance(c, torch.Tensor):
        if c.dim() != 0:
            raise ShapeError(f"{name} has shape {list(c.shape)}; expected a float or a 0-d tensor")
        checks.check_range(c, name, 0.0)
    else:
        check_float(name, c, 0.0)


def kl_annealing(epoch: int, kl_lambda: float = KL_LAMBDA, anneal_epochs: int = ANNEAL_EPOCHS) -> float:
    """eq-kl-anneal: lambda_t = kl_lambda * min(1, t / anneal_epochs), t = epochs completed (0 first)."""
    t = check_int("epoch", epoch, 0)
    return check_float("kl_lambda", kl_lambda, 0.0) * min(1.0, t / check_int("anneal_epochs", anneal_epochs))


# ------------------------------------------------------------------------------ NIG (regression)
@dataclass
class NIG:
    """Normal-Inverse-Gamma parameters, each [B, d]: mean gamma, nu > 0, alpha > 1, beta > 0."""

    gamma: torch.Tensor
    nu: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor

    def __post_init__(self) -> None:  # types and shapes only (free); the ranges are checked where they are read
        for name in ("gamma", "nu", "alpha", "beta"):
            x = getattr(self, name)
            if not isinstance(x, torch.Tensor):
                raise InputTypeError(f"{name} must be a torch.Tensor [B, d]; got {type(x).__name__}")
            if x.dim() != 2 or x.shape != self.gamma.shape:
                raise ShapeError(f"{name} has shape {list(x.shape)}; expected [B, d] = {list(self.gamma.shape)} (the shape of gamma)")

    @classmethod
    def from_raw(cls, raw: torch.Tensor, max_evidence: float = EVIDENCE_MAX) -> NIG:
        """raw [B, 4, d] -> gamma = raw_0, nu = softplus, alpha = softplus + 1, beta = softplus."""
        check_tensor(raw, "raw", ["B", 4, "d"], "NIG head output: gamma, nu, alpha, beta")
        r = raw.to(_dt(raw))
        return cls(r[:, 0], evidence(r[:, 1], max_evidence), evidence(r[:, 2], max_evidence) + 1,
                   evidence(r[:, 3], max_evidence))

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> NIG:
        """Inverse of `as_tensor`: [B, 4, d] (gamma, nu, alpha, beta)."""
        check_tensor(t, "nig", ["B", 4, "d"], "gamma, nu, alpha, beta stacked on dim 1")
        return cls(t[:, 0], t[:, 1], t[:, 2], t[:, 3])

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([self.gamma, self.nu, self.alpha, self.beta], dim=1)

    def aleatoric(self) -> torch.Tensor:
        """E[sigma^2] = beta / (alpha - 1), [B, d]."""
        return self.beta / (self.alpha - 1)

    def epistemic(self) -> torch.Tensor:
        """Var[mu] = beta / (nu (alpha - 1)), [B, d]."""
        return self.beta / (self.nu * (self.alpha - 1))

    def student_t(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The marginal of y (eq-nig-student): St(loc = gamma, scale^2 = beta (1 + nu) / (nu alpha), df = 2 alpha)."""
        return self.gamma, torch.sqrt(self.beta * (1 + self.nu) / (self.nu * self.alpha)), 2 * self.alpha


def _y_like(y: torch.Tensor, ref: torch.Tensor, name: str = "y") -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor; got {type(y).__name__}")
    checks.check_finite(y, name)
    if y.shape != ref.shape:
        if y.dim() == 1 and ref.dim() == 2 and ref.shape[1] == 1 and y.shape[0] == ref.shape[0]:
            return y.unsqueeze(1).to(ref.dtype)
        raise ShapeError(f"{name} has shape {list(y.shape)}; expected {list(ref.shape)} (or [B] for one output)")
    return y.to(ref.dtype)


def _lgamma_ratio(a: torch.Tensor) -> torch.Tensor:
    """log Gamma(a) - log Gamma(a + 1/2), stable for huge a (asymptotic series past 1e4)."""
    big = a > 1e4
    safe = torch.where(big, torch.ones_like(a), a)
    exact = torch.lgamma(safe) - torch.lgamma(safe + 0.5)
    asym = -0.5 * torch.log(a) + 1 / (8 * a)
    return torch.where(big, asym, exact)


def _check_nig(nig: object) -> None:
    if not isinstance(nig, NIG):
        raise InputTypeError(f"nig must be a NIG (gamma, nu, alpha, beta); got {type(nig).__name__}")


def nig_nll(y: torch.Tensor, nig: NIG) -> torch.Tensor:
    """eq-nig-nll: the negative log marginal likelihood of y under NIG, summed over outputs, [B]:

        1/2 log(pi / nu) - alpha log Omega + (alpha + 1/2) log((y - gamma)^2 nu + Omega)
        + log Gamma(alpha) - log Gamma(alpha + 1/2),   Omega = 2 beta (1 + nu),

    evaluated as 1/2 log(pi / nu) + 1/2 log Omega + (alpha + 1/2) log1p((y - gamma)^2 nu / Omega) + ...
    (eq-nig-nll-stable), finite at huge evidence. Float32 or wider. Needs nu, alpha, beta > 0
    (checked while validating).
    """
    _check_nig(nig)
    for name in ("nu", "alpha", "beta"):
        checks.check_range(getattr(nig, name), name, 0.0, low_open=True, what="a NIG parameter")
    g = nig.gamma.to(_dt(nig.gamma))
    nu, a, b = nig.nu.to(g.dtype), nig.alpha.to(g.dtype), nig.beta.to(g.dtype)
    yy = _y_like(y, g)
    log_omega = math.log(2.0) + torch.log(b) + torch.log1p(nu)
    ratio = (yy - g).square() / (2 * b) * (nu / (1 + nu))  # (y - gamma)^2 nu / Omega
    out = 0.5 * (math.log(math.pi) - torch.log(nu)) + 0.5 * log_omega + (a + 0.5) * torch.log1p(ratio) + _lgamma_ratio(a)
    return out.sum(dim=1)


def nig_regularizer(y: torch.Tensor, nig: NIG) -> torch.Tensor:
    """eq-nig-reg: |y - gamma| (2 nu + alpha), summed over outputs, [B] (Amini et al. 2020)."""
    _check_nig(nig)
    g = nig.gamma.to(_dt(nig.gamma))
    yy = _y_like(y, g)
    return ((yy - g).abs() * (2 * nig.nu.to(g.dtype) + nig.alpha.to(g.dtype))).sum(dim=1)


def nig_loss(y: torch.Tensor, nig: NIG, reg_lambda: float | torch.Tensor = NIG_LAMBDA) -> torch.Tensor:
    """Amini et al.'s objective per sample, [B]: nig_nll + reg_lambda * nig_regularizer (reg_lambda >= 0)."""
    _check_coef(reg_lambda, "reg_lambda")
    return nig_nll(y, nig) + reg_lambda * nig_regularizer(y, nig)


# ------------------------------------------------------------------------------ heads
def evidential_name(task: str) -> str:
    """The name of task `task`'s evidential output in `ple.fit` (a task of its own): ``task/evidential``."""
    if not isinstance(task, str) or not task:
        raise TaskError(f"task must be a non-empty task name; got {task!r}")
    return f"{task}/evidential"


def _head_width(spec: TaskSpec) -> int:
    if spec.task_type == "binary":
        return 2
    if spec.task_type == "multiclass":
        return spec.output_dim
    return 4 * spec.output_dim


class EvidentialHeads(nn.Module):
    """One evidential head per task (eq-dirichlet, eq-nig), all tasks in one stacked MLP:

        binary      -> Beta = Dir(alpha_0, alpha_1), alpha = softplus(.) + 1  [B, 2] (class 0, class 1)
        multiclass  -> Dir(alpha), alpha = softplus(.) + 1                     [B, C]
        regression  -> NIG(gamma, nu, alpha, beta)                             [B, 4, d]

    Each head reads its task's tower input h_tower_k [B, in_dim] (`SystemOutput.hidden`),
    detached by default (`detach=True`): the heads sit beside the prediction path and never move
    the system. Head k: Linear(in_dim, hidden_dim) -> SiLU -> Linear(hidden_dim, P_k), the K
    heads as `ple.layers.StackedLinear` banks (outputs padded to the widest head).
    specs: the registry `TaskSpec`s (contrastive tasks get no head); forward(h_shared, hidden)
    -> {"evidential": {task: params}, "uncertainty": {task: u [B]}}; u = K / S for Dirichlet /
    Beta, the epistemic variance Var[mu] (mean over outputs) for NIG. `fit_tasks()` gives the
    `ple.fit.Task`s of the heads; `set_epoch` anneals the KL weight (eq-kl-anneal).
    """

    def __init__(self, specs: Sequence[TaskSpec], in_dim: int, hidden_dim: int = 32, *, risk: str = "mse",
                 kl_form: str = "sensoy", kl_lambda: float = KL_LAMBDA, anneal_epochs: int = ANNEAL_EPOCHS,
                 nig_lambda: float = NIG_LAMBDA, detach: bool = True) -> None:
        super().__init__()
        if isinstance(specs, (str, TaskSpec)) or not isinstance(specs, Sequence):
            raise InputTypeError(f"specs must be a sequence of TaskSpec; got {type(specs).__name__}")
        bad = [i for i, s in enumerate(specs) if not isinstance(s, TaskSpec)]
        if bad:
            raise InputTypeError(f"specs[{bad[0]}] must be a TaskSpec; got {type(specs[bad[0]]).__name__}")
        checks.check_unique("specs (task names)", [s.name for s in specs])
        self.specs = {s.name: s for s in specs if s.task_type in HEAD_TYPES}
        if not self.specs:
            raise TaskError(f"specs has no task of type {HEAD_TYPES}; got {[s.name for s in specs]}")
        self.task_names = tuple(self.specs)
        self.in_dim = check_int("in_dim", in_dim)
        self.hidden_dim = check_int("hidden_dim", hidden_dim)
        self.risk = check_choice("risk", risk, RISKS)
        self.kl_form = check_choice("kl_form", kl_form, KL_FORMS)
        self.kl_lambda = check_float("kl_lambda", kl_lambda, 0.0)
        self.anneal_epochs = check_int("anneal_epochs", anneal_epochs)
        self.nig_lambda = check_float("nig_lambda", nig_lambda, 0.0)
        if not isinstance(detach, bool):
            raise HyperparameterError(f"detach must be a bool; got {detach!r}")
        self.detach = detach
        self.widths = tuple(_head_width(s) for s in self.specs.values())
        K = len(self.task_names)
        self.layer1 = StackedLinear(K, self.in_dim, self.hidden_dim)
        self.layer2 = StackedLinear(K, self.hidden_dim, max(self.widths))
        self.register_buffer("kl_coef", torch.zeros(()), persistent=False)

    @classmethod
    def for_system(cls, system: nn.Module, **kwargs: Any) -> EvidentialHeads:
        """Heads for every non-contrastive task of a `PLESystem`, reading its tower inputs."""
        return cls(tuple(system.specs.values()), system.tower_input_dim, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """kl_coef = kl_annealing(epoch) (eq-kl-anneal), written in place (no host sync in the step)."""
        self.kl_coef.fill_(kl_annealing(epoch, self.kl_lambda, self.anneal_epochs))

    def _params(self, task: str, raw: torch.Tensor) -> torch.Tensor:
        """A head's raw output [B, P_k] -> its distribution's parameters (see the class doc)."""
        spec = self.specs[task]
        if spec.task_type == "regression":
            return NIG.from_raw(raw.reshape(raw.shape[0], 4, spec.output_dim)).as_tensor()
        return evidence(raw) + 1

    def head(self, task: str, x: torch.Tensor) -> torch.Tensor:
        """The clear form of one head (for checks): x [B, in_dim] -> its parameters."""
        k = self.task_names.index(task)
        h = F.silu(x @ self.layer1.weight[k] + self.layer1.bias[k])
        return self._params(task, (h @ self.layer2.weight[k] + self.layer2.bias[k])[:, :self.widths[k]])

    def uncertainty(self, task: str, params: torch.Tensor) -> torch.Tensor:
        """u [B]: K / S (Dirichlet, Beta) or Var[mu] averaged over outputs (NIG)."""
        if self.specs[task].task_type == "regression":
            return NIG.from_tensor(params).epistemic().mean(dim=1)
        return dirichlet_uncertainty(params)

    def forward(self, h_shared: torch.Tensor | None, hidden: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        missing = [t for t in self.task_names if t not in hidden]
        if missing:
            raise TaskError(f"hidden lacks task(s) {missing}; the heads read {list(self.task_names)}")
        x = torch.stack([hidden[t] for t in self.task_names], dim=1)  # [B, K, in_dim]
        check_tensor(x, "hidden (stacked)", ["B", len(self.task_names), self.in_dim], "tower inputs, in_dim")
        check_dtype(x, "hidden", self.layer1.weight.dtype)
        if self.detach:
            x = x.detach()
        z = self.layer2(F.silu(self.layer1(x)))  # [B, K, P_max]
        params = {t: self._params(t, z[:, k, :w]) for k, (t, w) in enumerate(zip(self.task_names, self.widths))}
        return {"evidential": params, "uncertainty": {t: self.uncertainty(t, p) for t, p in params.items()}}

    # ------------------------------------------------------------- training with ple.fit
    def task_loss(self, task: str, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample evidential loss [B] of `task`'s head: eq-evidential-objective (Dirichlet / Beta,
        with the annealed KL weight) or Amini's NIG objective."""
        spec = self.specs[task]
        if spec.task_type == "regression":
            return nig_loss(target.reshape(target.shape[0], -1), NIG.from_tensor(params), self.nig_lambda)
        y = target.reshape(target.shape[0]).long()
        return dirichlet_loss(params, y, self.kl_coef, risk=self.risk, form=self.kl_form)

    def fit_tasks(self) -> tuple[Task, ...]:
        """One `ple.fit.Task` per head, named `evidential_name(task)`, of the task's kind; its
        metric reads the head's own prediction (Beta / Dirichlet mean, NIG gamma)."""
        out = []
        for t, spec in self.specs.items():
            def loss(pred, target, _t=t):
                return self.task_loss(_t, pred, target)
            if spec.task_type == "binary":
                def output(pred):
                    return pred[:, 1] / pred.sum(dim=1)
            elif spec.task_type == "multiclass":
                def output(pred):
                    return pred / pred.sum(dim=1, keepdim=True)
            else:
                def output(pred):
                    g = pred[:, 0]
                    return g[:, 0] if g.shape[1] == 1 else g
            out.append(Task(evidential_name(t), spec.task_type, loss=loss, output=output))
        return tuple(out)

    def for_fit(self) -> nn.Module:
        """The heads alone as `ple.fit.fit` drives them on fixed tower inputs: model(x [B, K, in_dim])
        -> {evidential_name(task): params} (x = `stack_hidden(SystemOutput.hidden)`). The heads
        read detached inputs, so training them afterwards on a trained system's frozen tower inputs
        continues exactly the training they would get beside it."""
        return _HeadsFitView(self)

    def stack_hidden(self, hidden: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{task: [N, in_dim]} -> [N, K, in_dim] in the heads' task order (detached)."""
        missing = [t for t in self.task_names if t not in hidden]
        if missing:
            raise TaskError(f"hidden lacks task(s) {missing}; the heads read {list(self.task_names)}")
        return torch.stack([hidden[t].detach() for t in self.task_names], dim=1)

    def targets(self, data: TensorData) -> TensorData:
        """`data` with each head's target (its task's target, shared) under `evidential_name`."""
        missing = [t for t in self.task_names if t not in data.targets]
        if missing:
            raise TaskError(f"data has no targets for task(s) {missing}")
        masks = None if data.masks is None else {**data.masks, **{evidential_name(t): data.masks[t] for t in self.task_names if t in data.masks}}
        return TensorData(data.inputs, {**data.targets, **{evidential_name(t): data.targets[t] for t in self.task_names}}, masks)


class _HeadsFitView(nn.Module):
    def __init__(self, heads: EvidentialHeads) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_tensor(x, "x", ["B", len(self.heads.task_names), self.heads.in_dim], "stacked tower inputs")
        params = self.heads(None, {t: x[:, k] for k, t in enumerate(self.heads.task_names)})["evidential"]
        return {evidential_name(t): p for t, p in params.items()}


class KLAnnealing(Callback):
    """`ple.fit` callback: before each epoch, heads.set_epoch(offset + epochs completed)
    (eq-kl-anneal); `offset` = epochs the heads were trained before this run."""

    def __init__(self, heads: EvidentialHeads, offset: int = 0) -> None:
        if not isinstance(heads, EvidentialHeads):
            raise InputTypeError(f"heads must be an EvidentialHeads; got {type(heads).__name__}")
        self.heads = heads
        self.offset = check_int("offset", offset, 0)

    def on_epoch_start(self, state: FitState) -> None:
        self.heads.set_epoch(self.offset + state.epoch - 1)


# ------------------------------------------------------------------------------ the system hook
@dataclass
class SideOutput:
    """`SideHeadSystem.run`: the system's own `SystemOutput`, h_shared [B, D], and every side
    head's outputs by head name; `sae_latent` [B, M] and `uncertainty` {task: u [B]} when the
    SAE / evidential heads are attached (None otherwise)."""

    system: Any
    shared: torch.Tensor
    side: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def sae_latent(self) -> torch.Tensor | None:
        return next((o["sae_latent"] for o in self.side.values() if "sae_latent" in o), None)

    @property
    def uncertainty(self) -> dict[str, torch.Tensor] | None:
        return next((o["uncertainty"] for o in self.side.values() if "uncertainty" in o), None)

    @property
    def evidential(self) -> dict[str, torch.Tensor] | None:
        return next((o["evidential"] for o in self.side.values() if "evidential" in o), None)


class SideHeadSystem(nn.Module):
    """A `PLESystem` with the heads in its `side_heads` hook run beside the prediction path.

    Each head is called as head(h_shared [B, D], hidden {task: h_tower [B, d]}) -> dict by the
    system's own `run`, after its towers, so the logits are the system's, bit for bit; the run
    returns h_shared and the heads' outputs (`SystemOutput.shared`, `.side`). A head with an `aux_loss(h_shared, out)` method adds that scalar to the
    regularisers (`for_fit`). `attach(system, **heads)` puts heads into the hook.
    """

    def __init__(self, system: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(system, "side_heads", None), nn.ModuleDict):
            raise InputTypeError(f"system must have a side_heads ModuleDict (a PLESystem); got {type(system).__name__}")
        self.system = system

    @classmethod
    def attach(cls, system: nn.Module, **heads: nn.Module) -> SideHeadSystem:
        """Put `heads` (name -> module) into system.side_heads and wrap the system."""
        view = cls(system)
        for name, head in heads.items():
            if not isinstance(head, nn.Module):
                raise InputTypeError(f"head {name!r} must be an nn.Module; got {type(head).__name__}")
            system.side_heads[name] = head
        return view

    @property
    def heads(self) -> nn.ModuleDict:
        return self.system.side_heads

    def run(self, inputs) -> SideOutput:
        """The system's `run(inputs)`, which runs every side head on its h_shared and tower inputs."""
        out = self.system.run(inputs)
        return SideOutput(out, out.shared, out.side)

    def aux_losses(self, res: SideOutput) -> dict[str, torch.Tensor]:
        """{head name: aux_loss} of the heads that define one (taken from the system's aux when its
        run already computed it)."""
        return {n: res.system.aux[n] if n in res.system.aux else head.aux_loss(res.shared, res.side[n])
                for n, head in self.heads.items() if hasattr(head, "aux_loss")}

    def forward(self, *inputs) -> dict[str, torch.Tensor]:
        """inputs as `PLESystem.forward` -> {task: logits} (the system's predictions only)."""
        return self.run(self.system._as_inputs(inputs)).system.logits

    def evidential_heads(self) -> EvidentialHeads | None:
        return next((h for h in self.heads.values() if isinstance(h, EvidentialHeads)), None)

    def fit_tasks(self) -> tuple[Task, ...]:
        """The system's tasks, then one per evidential head (`evidential_name`)."""
        ev = self.evidential_heads()
        return (*self.system.fit_tasks(), *(ev.fit_tasks() if ev is not None else ()))

    def for_fit(self) -> nn.Module:
        """model(*tensors) -> ({task: logits, evidential_name(task): params}, system regularisers +
        heads' aux losses): what `ple.fit.fit(..., returns_aux=True)` trains."""
        return _SideFitView(self)

    def aggregator(self) -> nn.Module:
        """The system's loss aggregation plus the evidential heads' losses (weight 1 each)."""
        ev = self.evidential_heads()
        return _SideLoss(self.system.aggregator(), [evidential_name(t) for t in ev.task_names] if ev is not None else [])


class _SideFitView(nn.Module):
    def __init__(self, view: SideHeadSystem) -> None:
        super().__init__()
        self.view = view

    def forward(self, *inputs):
        res = self.view.run(self.view.system._as_inputs(inputs))
        out = dict(res.system.logits)
        if res.evidential is not None:
            out.update({evidential_name(t): p for t, p in res.evidential.items()})
        own = [v for k, v in res.system.aux.items() if k not in self.view.heads]
        terms = [*own, *self.view.aux_losses(res).values()]
        aux = torch.stack([t.float() for t in terms]).sum() if terms else res.shared.new_zeros(())
        return out, aux


class _SideLoss(nn.Module):
    def __init__(self, system_loss: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.system_loss, self.names = system_loss, tuple(names)

    def forward(self, losses, state=None):
        total = self.system_loss(losses, state)
        for n in self.names:
            total = total + losses[n]
        return total
