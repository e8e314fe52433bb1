"""ple.cgc -- generated from book/ple2_progressive_layered_extraction.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['CGCOutput', 'CGC', 'PLE']

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ple.checks import (
    HyperparameterError,
    ShapeError,
    check_dropout,
    check_features,
    check_int,
    check_widths,
)
from ple.layers import MLP, StackedMLP
from ple.mmoe import per_task_out_dims


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
        self.input_dim = check_int("input_dim", input_dim, 1)
        self.num_tasks = check_int("num_tasks", num_tasks, 1)
        self.num_task_experts = num_task_experts = check_int("num_task_experts", num_task_experts, 0)
        self.num_shared_experts = num_shared_experts = check_int("num_shared_experts", num_shared_experts, 0)
        if num_task_experts + num_shared_experts < 1:
            raise HyperparameterError(
                "a task gate needs at least one expert: num_task_experts + num_shared_experts "
                f"= {num_task_experts} + {num_shared_experts}; expected >= 1"
            )
        if shared_gate and num_shared_experts < 1:
            raise HyperparameterError(
                "shared_gate=True feeds the next level's shared experts; it needs "
                f"num_shared_experts >= 1, got {num_shared_experts}"
            )
        expert_dims = check_widths("expert_dims", expert_dims)
        if not expert_dims:
            raise HyperparameterError("expert_dims must name at least one width; got ()")
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
                raise ShapeError(
                    f"features has shape {list(x.shape)}; expected [B, {self.input_dim}] "
                    f"(input_dim) or [B, {self.num_tasks}, {self.input_dim}] (num_tasks, input_dim)"
                )
            task_x = list(x.unbind(1))
            for k, t in enumerate(task_x):
                check_features(t, self.input_dim, f"features[:, {k}]", "input_dim")
            if shared_x is None:
                if needs_shared:
                    raise ShapeError(
                        "shared_x is None; a level with shared experts or a shared gate that "
                        f"reads per-task inputs [B, K, D] needs shared_x [B, {self.input_dim}]"
                    )
                return task_x, None
        check_features(shared_x, self.input_dim, "shared_x", "input_dim")
        if shared_x.shape[0] != x.shape[0]:
            raise ShapeError(
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
        self.input_dim = check_int("input_dim", input_dim, 1)
        self.num_tasks = num_tasks = check_int("num_tasks", num_tasks, 1)
        self.num_levels = num_levels = check_int("num_levels", num_levels, 1)
        expert_dims = check_widths("expert_dims", expert_dims)
        if not expert_dims:
            raise HyperparameterError("expert_dims must name at least one width; got ()")
        tower_dims = check_widths("tower_dims", tower_dims)
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
