"""ple.mmoe -- generated from book/ple1_mtl_to_mmoe.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['per_task_out_dims', 'SharedBottom', 'MixtureOfExperts', 'MMoE', 'OMoE']

from collections.abc import Sequence

import torch
from torch import nn

from ple.checks import HyperparameterError, check_features, check_int
from ple.layers import MLP, StackedMLP


def per_task_out_dims(task_out_dims: int | Sequence[int], num_tasks: int) -> tuple[int, ...]:
    """One output width per task from an int (shared by all tasks) or a per-task sequence."""
    if isinstance(task_out_dims, int) and not isinstance(task_out_dims, bool):
        return (check_int("task_out_dims", task_out_dims),) * num_tasks
    dims = tuple(task_out_dims)
    if len(dims) != num_tasks:
        raise HyperparameterError(
            f"task_out_dims has {len(dims)} entries; expected one per task (num_tasks={num_tasks})"
        )
    return tuple(check_int(f"task_out_dims[{k}]", d) for k, d in enumerate(dims))


class SharedBottom(nn.Module):
    """Shared-Bottom multi-task model (eq-shared-bottom): h = f(x), y_k = t_k(h).

    f is `MLP(input_dim, bottom_dims)`, tower t_k is `MLP(bottom_dims[-1], tower_dims,
    task_out_dims[k])`. x: [B, input_dim] -> list of num_tasks tensors [B, out_k].
    """

    def __init__(
        self,
        input_dim: int,
        num_tasks: int,
        bottom_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        task_out_dims: int | Sequence[int] = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.num_tasks = check_int("num_tasks", num_tasks)
        self.task_out_dims = per_task_out_dims(task_out_dims, num_tasks)
        self.bottom = MLP(input_dim, bottom_dims, dropout=dropout)
        self.towers = nn.ModuleList(
            MLP(self.bottom.out_features, tower_dims, out_k, dropout=dropout)
            for out_k in self.task_out_dims
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_features(x, self.input_dim, "x", "input_dim")
        h = self.bottom(x)  # [B, H]
        return [tower(h) for tower in self.towers]


class MixtureOfExperts(nn.Module):
    """Experts shared by all tasks, softmax gates, one tower per task (eq-mmoe-gate,
    eq-mmoe-mixture): the common body of `MMoE` (one gate per task) and `OMoE` (one gate for
    all tasks, `one_gate = True`).

    Experts: `StackedMLP(num_experts, input_dim, expert_dims)`, all evaluated in one einsum.
    Gate g: a single `nn.Linear(input_dim, num_experts, bias=gate_bias)` + softmax (no hidden
    layer, no norm). The paper's gate has no bias, hence the default; gate_bias=True adds b_k.
    Tower k: `MLP(expert_dims[-1], tower_dims, task_out_dims[k])`.

    forward(x [B, input_dim]) -> list of num_tasks tensors [B, out_k]; with
    return_gates=True -> (outputs, gates [B, num_tasks, num_experts]), each row on the simplex.
    """

    one_gate = False  # True: one gate serves every task (OMoE)

    def __init__(
        self,
        input_dim: int,
        num_tasks: int,
        num_experts: int = 8,
        expert_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        task_out_dims: int | Sequence[int] = 1,
        dropout: float = 0.0,
        *,
        gate_bias: bool = False,
    ):
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.num_tasks = check_int("num_tasks", num_tasks)
        self.num_experts = check_int("num_experts", num_experts)
        num_gates = 1 if self.one_gate else num_tasks
        self.task_out_dims = per_task_out_dims(task_out_dims, num_tasks)
        self.experts = StackedMLP(num_experts, input_dim, expert_dims, dropout=dropout)
        self.gates = nn.ModuleList(
            nn.Linear(input_dim, num_experts, bias=gate_bias) for _ in range(num_gates)
        )
        self.towers = nn.ModuleList(
            MLP(self.experts.out_features, tower_dims, out_k, dropout=dropout)
            for out_k in self.task_out_dims
        )

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """g_k(x) = softmax(W_k x [+ b_k]) for every gate at once (eq-mmoe-gate): [B, G, E]."""
        weight = torch.stack([gate.weight for gate in self.gates])  # [G, E, D]
        logits = torch.einsum("bd,ged->bge", x, weight)
        if self.gates[0].bias is not None:
            logits = logits + torch.stack([gate.bias for gate in self.gates])
        # softmax written out: for a handful of experts torch.softmax's CPU kernel is several
        # times slower than this. Shifting by the (detached) max changes nothing but overflow.
        weights = (logits - logits.amax(dim=-1, keepdim=True).detach()).exp()
        return weights / weights.sum(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        check_features(x, self.input_dim, "x", "input_dim")
        experts = self.experts(x)  # f_i(x): [B, E, H]
        gates = self.gate_weights(x)  # [B, G, E]
        gates = gates.expand(-1, self.num_tasks, -1)  # OMoE: one gate row serves every task
        mixed = torch.einsum("bke,beh->bkh", gates, experts)  # h_k = sum_i g_ki f_i (eq-mmoe-mixture)
        outputs = [tower(mixed[:, k]) for k, tower in enumerate(self.towers)]
        return (outputs, gates) if return_gates else outputs


class MMoE(MixtureOfExperts):
    """Multi-gate Mixture-of-Experts (Ma et al. 2018): one softmax gate per task.

    h_k = sum_i g_{k,i}(x) f_i(x), g_k = softmax(W_k x [+ b_k])  (eq-mmoe-gate, eq-mmoe-mixture).
    Arguments as `MixtureOfExperts`. x: [B, input_dim] -> list of num_tasks tensors [B, out_k]
    (and gates [B, K, E] when return_gates=True).
    """


class OMoE(MixtureOfExperts):
    """One-gate Mixture-of-Experts (eq-omoe): every task reads the same mixture.

    h = sum_i g_i(x) f_i(x), g = softmax(W x [+ b]); y_k = t_k(h). Same arguments and outputs as
    `MMoE`; the returned gates [B, K, E] have K identical rows.
    """

    one_gate = True
