"""ple.mmoe -- generated from book/ple1_mtl_to_mmoe.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['SharedBottom', 'MixtureOfExperts', 'MMoE', 'OMoE', 'fit_regression']

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ple.layers import MLP, StackedMLP, check_features, check_positive_int


def _task_out_dims(task_out_dims: int | Sequence[int], num_tasks: int) -> tuple[int, ...]:
    """One output width per task from an int (shared by all tasks) or a per-task sequence."""
    if isinstance(task_out_dims, int) and not isinstance(task_out_dims, bool):
        return (check_positive_int("task_out_dims", task_out_dims),) * num_tasks
    dims = tuple(task_out_dims)
    if len(dims) != num_tasks:
        raise ValueError(
            f"task_out_dims has {len(dims)} entries; expected one per task (num_tasks={num_tasks})"
        )
    return tuple(check_positive_int(f"task_out_dims[{k}]", d) for k, d in enumerate(dims))


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
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.task_out_dims = _task_out_dims(task_out_dims, num_tasks)
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
    eq-mmoe-mixture). `MMoE` has one gate per task, `OMoE` one gate for all tasks.

    Experts: `StackedMLP(num_experts, input_dim, expert_dims)`, all evaluated in one einsum.
    Gate g: a single `nn.Linear(input_dim, num_experts, bias=gate_bias)` + softmax (no hidden
    layer, no norm); the paper's gate has no bias, so `gate_bias` defaults to False.
    Tower k: `MLP(expert_dims[-1], tower_dims, task_out_dims[k])`.

    forward(x [B, input_dim]) -> list of num_tasks tensors [B, out_k]; with
    return_gates=True -> (outputs, gates [B, num_tasks, num_experts]), each row on the simplex.
    """

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
        num_gates: int,
        gate_bias: bool = False,
    ):
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.num_experts = check_positive_int("num_experts", num_experts)
        if num_gates not in (1, num_tasks):
            raise ValueError(f"num_gates must be 1 or num_tasks={num_tasks}; got {num_gates}")
        self.task_out_dims = _task_out_dims(task_out_dims, num_tasks)
        self.experts = StackedMLP(num_experts, input_dim, expert_dims, dropout=dropout)
        self.gates = nn.ModuleList(
            nn.Linear(input_dim, num_experts, bias=gate_bias) for _ in range(num_gates)
        )
        self.towers = nn.ModuleList(
            MLP(self.experts.out_features, tower_dims, out_k, dropout=dropout)
            for out_k in self.task_out_dims
        )

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """g_k(x) = softmax(W_k x (+ b_k)) for every gate at once (eq-mmoe-gate): [B, G, E]."""
        weight = torch.stack([gate.weight for gate in self.gates])  # [G, E, D]
        logits = torch.einsum("bd,ged->bge", x, weight)
        if self.gates[0].bias is not None:
            logits = logits + torch.stack([gate.bias for gate in self.gates])
        return torch.softmax(logits, dim=-1)

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

    h_k = sum_i g_{k,i}(x) f_i(x), g_k = softmax(W_k x)  (eq-mmoe-gate, eq-mmoe-mixture).
    x: [B, input_dim] -> list of num_tasks tensors [B, out_k] (and gates [B, K, E] when
    return_gates=True).
    """

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
        super().__init__(
            input_dim, num_tasks, num_experts, expert_dims, tower_dims, task_out_dims, dropout,
            num_gates=num_tasks, gate_bias=gate_bias,
        )


class OMoE(MixtureOfExperts):
    """One-gate Mixture-of-Experts (eq-omoe): every task reads the same mixture.

    h = sum_i g_i(x) f_i(x), g = softmax(W x); y_k = t_k(h). Same arguments and outputs as
    `MMoE`; the returned gates [B, K, E] have K identical rows.
    """

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
        super().__init__(
            input_dim, num_tasks, num_experts, expert_dims, tower_dims, task_out_dims, dropout,
            num_gates=1, gate_bias=gate_bias,
        )


def fit_regression(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    steps: int,
    lr: float = 3e-3,
    batch_size: int = 256,
    seed: int = 0,
    eval_every: int = 20,
    callback=None,
) -> dict[str, np.ndarray]:
    """Train a multi-task regressor on eq-mtl-objective with w_k = 1: sum_k MSE_k, Adam.

    model(x) must return a list of K tensors [B, 1]. x_train: [N, D], y_train: [N, K] (and the
    same for the test split). Mini-batches of `batch_size` rows are drawn with replacement from
    a generator seeded with `seed`. Every `eval_every` steps and after the last one the test MSE
    of each task is recorded, and `callback(step, model)` is called (in eval mode, no grad).
    Returns {"step": int64 [T], "test_mse": float64 [T, K], "train_loss": float64 [T]}
    (train_loss: the objective on the last mini-batch before each evaluation).
    """
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    eval_every = check_positive_int("eval_every", eval_every)
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if y.dim() != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y_{name} has shape {list(y.shape)}; expected [{x.shape[0]}, K] (one row per x_{name} row)"
            )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: dict[str, list] = {"step": [], "test_mse": [], "train_loss": []}
    for step in range(1, steps + 1):
        model.train()
        rows = torch.randint(0, x_train.shape[0], (batch_size,), generator=generator)
        rows = rows.to(x_train.device)
        preds = torch.cat(model(x_train[rows]), dim=1)  # [B, K]
        loss = ((preds - y_train[rows]) ** 2).mean(dim=0).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                test_preds = torch.cat(model(x_test), dim=1)
                mse = ((test_preds - y_test) ** 2).mean(dim=0)
                history["step"].append(step)
                history["test_mse"].append(mse.double().cpu().numpy())
                history["train_loss"].append(float(loss))
                if callback is not None:
                    callback(step, model)
    return {
        "step": np.asarray(history["step"], dtype=np.int64),
        "test_mse": np.stack(history["test_mse"]),
        "train_loss": np.asarray(history["train_loss"], dtype=np.float64),
    }
