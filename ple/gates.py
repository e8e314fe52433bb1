"""ple.gates -- generated from book/ple4_two_stage_cgc_hmm_routing.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['DEFAULT_ENTROPY_LAMBDA', 'DEFAULT_BIAS_HIGH', 'DEFAULT_BIAS_LOW', 'registry_expert_dims', 'dim_normalization_scales', 'domain_prior_mask', 'domain_prior_bias', 'entropy_regularizer', 'CGCLayer', 'CGCAttention', 'TwoStageOutput', 'TwoStageCGC']

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ple.checks import (
    HyperparameterError, ShapeError, TaskError, check_float, check_int, check_probabilities, check_tensor,
    check_unique, check_widths,
)
from ple.layers import normalized_entropy
from ple.tasks import EXPERT_DIMS, EXPERT_NAMES, get_task

DEFAULT_ENTROPY_LAMBDA = 0.01  # cgc.entropy_lambda in the posts
DEFAULT_BIAS_HIGH = 1.0  # bias_high: a task's domain experts
DEFAULT_BIAS_LOW = -1.0  # bias_low: every other expert


def registry_expert_dims() -> tuple[int, ...]:
    """The shared experts' output widths in `EXPERT_NAMES` order (hgcn 128, the others 64)."""
    if isinstance(EXPERT_DIMS, Mapping):
        return tuple(int(EXPERT_DIMS[n]) for n in EXPERT_NAMES)
    return tuple(int(d) for d in EXPERT_DIMS)


def dim_normalization_scales(expert_dims: Sequence[int]) -> torch.Tensor:
    """Per-expert scale s_i = sqrt(d_bar / d_i), d_bar = mean_i d_i  (eq-dim-norm).

    With 7 experts of widths (64, 64, 128, 64, 64, 64, 64): d_bar = 512/7 = 73.14, so the
    128-wide block is scaled by 0.756 and the 64-wide ones by 1.069. Returns float32 [E].
    """
    dims = check_widths("expert_dims", expert_dims)
    if not dims:
        raise HyperparameterError("expert_dims is empty; expected one width per expert")
    d_bar = sum(dims) / len(dims)
    return torch.tensor([math.sqrt(d_bar / d) for d in dims], dtype=torch.float32)


def domain_prior_mask(
    task_names: Sequence[str], expert_names: Sequence[str] = EXPERT_NAMES
) -> torch.Tensor:
    """Bool [K, E]: True where expert e is one of task k's `domain_experts` in `ple.tasks`.

    Unknown task names raise ValueError (from `ple.tasks.get_task`); a domain expert that is not in
    `expert_names` raises HyperparameterError naming it.
    """
    if isinstance(task_names, str) or isinstance(expert_names, str):
        raise TaskError("task_names and expert_names must be sequences of names, not a string")
    check_unique("task_names", task_names)
    check_unique("expert_names", expert_names)
    index = {name: i for i, name in enumerate(expert_names)}
    mask = torch.zeros(len(task_names), len(expert_names), dtype=torch.bool)
    for k, task in enumerate(task_names):
        for expert in get_task(task).domain_experts:
            if expert not in index:
                raise HyperparameterError(
                    f"task {task!r} names domain expert {expert!r}, not one of {list(expert_names)}"
                )
            mask[k, index[expert]] = True
    return mask


def domain_prior_bias(
    prior_mask: torch.Tensor,
    bias_high: float = DEFAULT_BIAS_HIGH,
    bias_low: float = DEFAULT_BIAS_LOW,
) -> torch.Tensor:
    """Initial gate bias b_k  (eq-domain-prior): `bias_high` on a task's domain experts, else `bias_low`.

    prior_mask: bool [K, E]. Returns float32 [K, E]. With the gate weights at 0 the first softmax is
    w_{k,i} = e^{b_{k,i}} / sum_j e^{b_{k,j}}: e^2 = 7.4 times more weight on a domain expert.
    """
    bias_high, bias_low = check_float("bias_high", bias_high), check_float("bias_low", bias_low)
    if not isinstance(prior_mask, torch.Tensor) or prior_mask.dim() != 2 or prior_mask.dtype != torch.bool:
        got = f"shape {list(prior_mask.shape)} and dtype {prior_mask.dtype}" if isinstance(
            prior_mask, torch.Tensor) else type(prior_mask).__name__
        raise ShapeError(f"prior_mask has {got}; expected a bool [K, E] (num_tasks, num_experts)")
    return torch.where(prior_mask, bias_high, bias_low).to(torch.float32)


def entropy_regularizer(w: torch.Tensor, entropy_lambda: float = DEFAULT_ENTROPY_LAMBDA) -> torch.Tensor:
    """L_ent = lambda_ent * ( -mean_{b,k} H(w_{b,k}) )  (eq-entropy-reg).

    w: gate weights [B, K, E] (rows on the simplex). Minimising L_ent raises the gates' entropy.
    Returns a scalar; the mean runs over the batch and the K tasks. H is PLE-1's
    `ple.layers.normalized_entropy` times log E, on weights clamped at the smallest normal float:
    a saturated gate (a weight that underflowed to 0) then gets a finite gradient instead of the
    NaN of d(p log p)/dp at 0, and the value moves by less than 1e-36.
    """
    check_tensor(w, "w", ["B", "K", "E"], "gate weights")
    entropy_lambda = check_float("entropy_lambda", entropy_lambda, 0.0)
    check_probabilities(w, "w")  # a device sync: only while validation is on (off in the training step)
    tiny = torch.finfo(w.dtype).tiny
    entropy = normalized_entropy(w.clamp_min(tiny), dim=-1) * math.log(w.shape[-1])  # H(w_{b,k}) [B, K]
    return -entropy_lambda * entropy.mean()


class CGCLayer(nn.Module):
    """Stage 1: the paper's CGC gate, task and shared experts on one softmax axis  (eq-cgc-stage1).

        g_k = softmax(W^gate_k h_shared + b^gate_k) in R^{N},  N = num_task_experts + num_shared
        h_k = sum_i g_{k,i} h^all_{k,i},   h^all_k = [task experts of k || shared experts]

    The gate reads h_shared (the concat of the shared experts' outputs, [B, sum(shared_dims)]).
    The sum needs one width: shared experts whose width differs from `expert_dim` (hgcn's 128) are
    aligned by their own bias-free Linear(d_i -> expert_dim); the others enter unchanged.

    Args:
        num_tasks: K.
        shared_dims: output widths of the shared experts, in the order of h_shared's blocks.
        expert_dim: width of the task experts and of the output.
        num_task_experts: private experts per task.
    Shapes: h_shared [B, sum(shared_dims)], task_experts [B, K, num_task_experts, expert_dim]
        -> [B, K, expert_dim] (and gates [B, K, N] with `return_gates=True`).
    """

    def __init__(
        self,
        num_tasks: int,
        shared_dims: Sequence[int] | None = None,
        expert_dim: int = 64,
        num_task_experts: int = 1,
    ) -> None:
        super().__init__()
        dims = registry_expert_dims() if shared_dims is None else check_widths("shared_dims", shared_dims)
        if not dims:
            raise HyperparameterError("shared_dims is empty; expected at least one shared expert")
        num_tasks = check_int("num_tasks", num_tasks, 1)
        expert_dim = check_int("expert_dim", expert_dim, 1)
        num_task_experts = check_int("num_task_experts", num_task_experts, 0)
        self.num_tasks, self.expert_dim, self.num_task_experts = num_tasks, expert_dim, num_task_experts
        self.shared_dims = dims
        self.input_dim = sum(dims)
        self.num_gate_experts = num_task_experts + len(dims)
        self.align = nn.ModuleList(
            nn.Identity() if d == expert_dim else nn.Linear(d, expert_dim, bias=False) for d in dims
        )
        # One gate per task, stored as one [K, N, D] tensor so that all K gates are one einsum.
        bound = 1.0 / math.sqrt(self.input_dim)
        self.gate_weight = nn.Parameter(
            torch.empty(num_tasks, self.num_gate_experts, self.input_dim).uniform_(-bound, bound)
        )
        self.gate_bias = nn.Parameter(torch.zeros(num_tasks, self.num_gate_experts))

    def gates(self, h_shared: torch.Tensor) -> torch.Tensor:
        """g [B, K, N] = softmax over experts of W^gate_k h_shared + b^gate_k  (eq-cgc-stage1)."""
        logits = torch.einsum("bd,knd->bkn", h_shared, self.gate_weight) + self.gate_bias
        return torch.softmax(logits, dim=-1)

    def forward(
        self, h_shared: torch.Tensor, task_experts: torch.Tensor, return_gates: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_tensor(h_shared, "h_shared", ["B", self.input_dim], "sum of shared_dims")
        check_tensor(
            task_experts,
            "task_experts",
            [h_shared.shape[0], self.num_tasks, self.num_task_experts, self.expert_dim],
            "batch, num_tasks, num_task_experts, expert_dim",
        )
        blocks = torch.split(h_shared, self.shared_dims, dim=-1)
        shared = torch.stack([a(b) for a, b in zip(self.align, blocks)], dim=1)  # [B, S, d]
        every = torch.cat(
            [task_experts, shared.unsqueeze(1).expand(-1, self.num_tasks, -1, -1)], dim=2
        )  # [B, K, N, d]
        g = self.gates(h_shared)
        out = torch.einsum("bkn,bknd->bkd", g, every)
        return (out, g) if return_gates else out


class CGCAttention(nn.Module):
    """Stage 2: per-task block attention over the shared concat  (eq-cgc-attention, eq-dim-norm).

        w_k = softmax(W_k h_shared + b_k) in R^E
        h~_{k,i} = s_i w_{k,i} h_i,    h^cgc_k = [h~_{k,1} || ... || h~_{k,E}] in R^{sum d_i}

    s_i = sqrt(d_bar / d_i) when `dim_normalize` (else 1). The weights W_k start at 0 and the biases
    at the domain prior (eq-domain-prior) when `prior_mask` is given (else 0: a uniform gate).
    `entropy_loss(w)` is the regulariser (eq-entropy-reg); it is 0 in eval mode, when
    `entropy_lambda` is 0 and once the gate is frozen (`freeze()`; the `frozen` buffer is saved in
    the state_dict and restores `requires_grad=False` on load).

    Shapes: h_shared [B, sum(expert_dims)] -> h_cgc [B, K, sum(expert_dims)]
        (and w [B, K, E] with `return_gates=True`).
    """

    def __init__(
        self,
        num_tasks: int,
        expert_dims: Sequence[int] | None = None,
        *,
        dim_normalize: bool = True,
        prior_mask: torch.Tensor | None = None,
        bias_high: float = DEFAULT_BIAS_HIGH,
        bias_low: float = DEFAULT_BIAS_LOW,
        entropy_lambda: float = DEFAULT_ENTROPY_LAMBDA,
    ) -> None:
        super().__init__()
        dims = registry_expert_dims() if expert_dims is None else check_widths("expert_dims", expert_dims)
        num_tasks = check_int("num_tasks", num_tasks, 1)
        entropy_lambda = check_float("entropy_lambda", entropy_lambda, 0.0)
        bias_high, bias_low = check_float("bias_high", bias_high), check_float("bias_low", bias_low)
        scales = dim_normalization_scales(dims)
        self.num_tasks, self.expert_dims, self.num_experts = num_tasks, dims, len(dims)
        self.input_dim = sum(dims)
        self.dim_normalize, self.entropy_lambda = dim_normalize, float(entropy_lambda)
        self.weight = nn.Parameter(torch.zeros(num_tasks, self.num_experts, self.input_dim))
        if prior_mask is None:
            bias = torch.zeros(num_tasks, self.num_experts)
        else:
            if tuple(prior_mask.shape) != (num_tasks, self.num_experts):
                raise ShapeError(
                    f"prior_mask has shape {list(prior_mask.shape)}; expected "
                    f"[{num_tasks}, {self.num_experts}] (num_tasks, num_experts)"
                )
            bias = domain_prior_bias(prior_mask, bias_high, bias_low)
        self.bias = nn.Parameter(bias)
        self.register_buffer("scales", scales if dim_normalize else torch.ones_like(scales))
        # block_matrix[i, c] = 1 if coordinate c of h_shared belongs to expert i  [E, D]
        owner = torch.repeat_interleave(torch.arange(self.num_experts), torch.tensor(dims))
        self.register_buffer(
            "block_matrix", (owner.unsqueeze(0) == torch.arange(self.num_experts).unsqueeze(1)).float(),
            persistent=False,
        )
        self.register_buffer("frozen", torch.tensor(False))
        self._frozen = False  # host copy of `frozen`, read by entropy_loss without a device sync
        self.register_load_state_dict_post_hook(CGCAttention._sync_frozen)

    @classmethod
    def from_tasks(cls, task_names: Sequence[str], **kwargs) -> CGCAttention:
        """One gate per task in `task_names`, biases from the registry's domain experts."""
        mask = domain_prior_mask(task_names, EXPERT_NAMES)
        return cls(len(task_names), registry_expert_dims(), prior_mask=mask, **kwargs)

    def gates(self, h_shared: torch.Tensor) -> torch.Tensor:
        """w [B, K, E] = softmax(W_k h_shared + b_k), all K tasks in one einsum."""
        logits = torch.einsum("bd,ked->bke", h_shared, self.weight) + self.bias
        return torch.softmax(logits, dim=-1)

    def forward(
        self, h_shared: torch.Tensor, return_gates: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_tensor(h_shared, "h_shared", ["B", self.input_dim], "sum of expert_dims")
        w = self.gates(h_shared)
        coord_scale = (w * self.scales) @ self.block_matrix.to(w.dtype)  # [B, K, D]: s_i w_{k,i}
        out = coord_scale * h_shared.unsqueeze(1)
        return (out, w) if return_gates else out

    def entropy_loss(self, w: torch.Tensor) -> torch.Tensor:
        """lambda_ent * (-mean H(w)) in training while not frozen; a zero scalar otherwise."""
        if not self.training or self._frozen or self.entropy_lambda == 0.0:
            return w.new_zeros(())
        return entropy_regularizer(w, self.entropy_lambda)

    def freeze(self) -> None:
        """Stop the gate: no gradient to W_k, b_k and no entropy term (the adaTT freeze sync)."""
        self.frozen.fill_(True)
        self._sync_frozen(self, None)

    def unfreeze(self) -> None:
        """Train the gate again (gradient and entropy term back on)."""
        self.frozen.fill_(False)
        self._sync_frozen(self, None)

    @staticmethod
    def _sync_frozen(module: CGCAttention, incompatible_keys) -> None:
        module._frozen = bool(module.frozen)  # read once per freeze / load, never in the step
        trainable = not module._frozen
        module.weight.requires_grad_(trainable)
        module.bias.requires_grad_(trainable)

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, expert_dims={list(self.expert_dims)}, "
            f"dim_normalize={self.dim_normalize}, entropy_lambda={self.entropy_lambda}"
        )


@dataclass
class TwoStageOutput:
    """What `TwoStageCGC` hands downstream: both stages, and their gates for logging."""

    stage1: torch.Tensor  # [B, K, expert_dim]
    stage2: torch.Tensor  # [B, K, sum(expert_dims)]
    gates1: torch.Tensor  # [B, K, num_task_experts + E]
    gates2: torch.Tensor  # [B, K, E]

    @property
    def combined(self) -> torch.Tensor:
        """[B, K, sum(expert_dims) + expert_dim]: Stage 2 then Stage 1, the input of the task side."""
        return torch.cat([self.stage2, self.stage1], dim=-1)


class TwoStageCGC(nn.Module):
    """Stage 1 (`CGCLayer`) and Stage 2 (`CGCAttention`) side by side on one h_shared.

    Both outputs go downstream (`TwoStageOutput.combined`). Keyword arguments other than
    `expert_dim` and `num_task_experts` go to `CGCAttention`.
    Shapes: h_shared [B, sum(expert_dims)], task_experts [B, K, num_task_experts, expert_dim].
    """

    def __init__(
        self,
        num_tasks: int,
        expert_dims: Sequence[int] | None = None,
        expert_dim: int = 64,
        num_task_experts: int = 1,
        **attention_kwargs,
    ) -> None:
        super().__init__()
        dims = registry_expert_dims() if expert_dims is None else tuple(expert_dims)
        self.stage1 = CGCLayer(num_tasks, dims, expert_dim, num_task_experts)
        self.stage2 = CGCAttention(num_tasks, dims, **attention_kwargs)
        self.out_dim = sum(dims) + expert_dim

    def forward(self, h_shared: torch.Tensor, task_experts: torch.Tensor) -> TwoStageOutput:
        h1, g1 = self.stage1(h_shared, task_experts, return_gates=True)
        h2, g2 = self.stage2(h_shared, return_gates=True)
        return TwoStageOutput(h1, h2, g1, g2)

    def entropy_loss(self, out: TwoStageOutput) -> torch.Tensor:
        """The Stage-2 entropy regulariser (eq-entropy-reg) on `out.gates2`."""
        return self.stage2.entropy_loss(out.gates2)
