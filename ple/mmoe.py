"""ple.mmoe -- generated from book/ple1_mtl_to_mmoe.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['per_task_out_dims', 'SharedBottom', 'MixtureOfExperts', 'MMoE', 'OMoE', 'fit_regression', 'fit_regression_replicas']

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ple.checks import check_features, check_int
from ple.layers import MLP, StackedMLP, normalized_entropy


def per_task_out_dims(task_out_dims: int | Sequence[int], num_tasks: int) -> tuple[int, ...]:
    """One output width per task from an int (shared by all tasks) or a per-task sequence."""
    if isinstance(task_out_dims, int) and not isinstance(task_out_dims, bool):
        return (check_int("task_out_dims", task_out_dims),) * num_tasks
    dims = tuple(task_out_dims)
    if len(dims) != num_tasks:
        raise ValueError(
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
        self.validate_inputs = True  # False skips check_features (e.g. under torch.func.vmap)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.validate_inputs:
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
        self.validate_inputs = True  # False skips check_features (e.g. under torch.func.vmap)

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
        if self.validate_inputs:
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


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam; the fused kernel where torch has one (CPU, CUDA), which matters for small models."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def _check_xy(x: torch.Tensor, y: torch.Tensor, name: str, batch_dims: int) -> None:
    """x: [*R, N, D] and y: [*R, N, K] with len(R) = batch_dims - 2 and matching leading dims."""
    if x.dim() != batch_dims or y.dim() != batch_dims or x.shape[:-1] != y.shape[:-1]:
        lead = "[R, N, " if batch_dims == 3 else "[N, "
        raise ValueError(
            f"x_{name} has shape {list(x.shape)} and y_{name} {list(y.shape)}; expected "
            f"{lead}D] and {lead}K] with the same leading dims"
        )
    for t, what in ((x, "x"), (y, "y")):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what}_{name} contains NaN or inf")


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
    """Train a multi-task regressor on eq-mtl-objective with w_k = 1 (sum of the K MSEs), Adam.

    model(x) returns a list of K tensors [B, 1]; x_train: [N, D], y_train: [N, K] (the test split
    likewise). Mini-batches of `batch_size` rows are drawn with replacement from a generator
    seeded with `seed`. Every `eval_every` steps and after the last one, the test MSE of each task
    is recorded and `callback(step, model)` is called (eval mode, no grad); so is step 0, before
    any update. Returns {"step": int64 [T], "test_mse": float64 [T, K]}.
    """
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    eval_every = check_int("eval_every", eval_every)
    _check_xy(x_train, y_train, "train", 2)
    _check_xy(x_test, y_test, "test", 2)
    generator = torch.Generator().manual_seed(seed)
    optimizer = _adam(list(model.parameters()), lr)
    history: dict[str, list] = {"step": [], "test_mse": []}
    for step in range(steps + 1):
        if step > 0:
            model.train()
            rows = torch.randint(0, x_train.shape[0], (batch_size,), generator=generator)
            rows = rows.to(x_train.device)
            preds = torch.cat(model(x_train[rows]), dim=-1)  # [B, K]
            loss = ((preds - y_train[rows]) ** 2).mean(dim=0).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if step % eval_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                mse = ((torch.cat(model(x_test), dim=-1) - y_test) ** 2).mean(dim=0)
                history["step"].append(step)
                history["test_mse"].append(mse.double().cpu().numpy())
                if callback is not None:
                    callback(step, model)
    return {
        "step": np.asarray(history["step"], dtype=np.int64),
        "test_mse": np.stack(history["test_mse"]),
    }


def fit_regression_replicas(
    models: Sequence[nn.Module],
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
    record_gates: bool = False,
) -> dict[str, np.ndarray]:
    """`fit_regression` for R replicas of one architecture at once (torch.func.vmap).

    models: R modules of identical structure (different initialisations), no buffers updated in
    training (no BatchNorm). x_train: [R, N, D], y_train: [R, N, K]; x_test: [R, M, D],
    y_test: [R, M, K] — replica r trains on its own data. Each step uses the same row indices
    for every replica (drawn as in `fit_regression`, so replica r follows exactly the run
    `fit_regression(models[r], x_train[r], ...)` would). The trained weights are copied back
    into `models`. Returns {"step": [T], "test_mse": float64 [T, R, K]} (step 0 included), and
    with record_gates=True (MMoE / OMoE) also "gate_mean": float64 [T, R, K, E] (gate weight
    per expert averaged over the test inputs) and "gate_entropy": float64 [T, R, K] (mean
    normalised entropy of the per-input gates, eq-gate-entropy).
    """
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    eval_every = check_int("eval_every", eval_every)
    models = list(models)
    if not models or len(models) != x_train.shape[0] or len(models) != x_test.shape[0]:
        raise ValueError(
            f"got {len(models)} models for {x_train.shape[0]} training and {x_test.shape[0]} "
            "test replicas; expected one model per replica (x_train: [R, N, D])"
        )
    _check_xy(x_train, y_train, "train", 3)
    _check_xy(x_test, y_test, "test", 3)
    for x, name in ((x_train, "x_train"), (x_test, "x_test")):  # checked here once, not under vmap
        check_features(x.reshape(-1, x.shape[-1]), models[0].input_dim, f"{name} rows", "input_dim")
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    base.validate_inputs = False

    def run(p, b, x, gates: bool):
        return torch.func.functional_call(base, (p, b), (x,), {"return_gates": True} if gates else {})

    def predict(p, b, x):
        return torch.cat(run(p, b, x, False), dim=-1)

    def predict_with_gates(p, b, x):
        outputs, g = run(p, b, x, True)
        return torch.cat(outputs, dim=-1), g

    batched = torch.func.vmap(predict, randomness="different")
    batched_gates = torch.func.vmap(predict_with_gates, randomness="different")
    generator = torch.Generator().manual_seed(seed)
    optimizer = _adam(list(params.values()), lr)
    history: dict[str, list] = {k: [] for k in ("step", "test_mse", "gate_mean", "gate_entropy")}
    for step in range(steps + 1):
        if step > 0:
            base.train()
            rows = torch.randint(0, x_train.shape[1], (batch_size,), generator=generator)
            rows = rows.to(x_train.device)
            preds = batched(params, buffers, x_train[:, rows])  # [R, B, K]
            loss = ((preds - y_train[:, rows]) ** 2).mean(dim=1).sum()  # sum over replicas, tasks
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if step % eval_every == 0 or step == steps:
            base.eval()
            with torch.no_grad():
                if record_gates:
                    test_preds, gates = batched_gates(params, buffers, x_test)  # gates [R, M, K, E]
                    history["gate_mean"].append(gates.mean(dim=1).double().cpu().numpy())
                    history["gate_entropy"].append(
                        normalized_entropy(gates).mean(dim=1).double().cpu().numpy()
                    )
                else:
                    test_preds = batched(params, buffers, x_test)
                mse = ((test_preds - y_test) ** 2).mean(dim=1)  # [R, K]
            history["step"].append(step)
            history["test_mse"].append(mse.double().cpu().numpy())
    with torch.no_grad():
        for r, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][r])
    out = {"step": np.asarray(history["step"], dtype=np.int64), "test_mse": np.stack(history["test_mse"])}
    if record_gates:
        out["gate_mean"] = np.stack(history["gate_mean"])
        out["gate_entropy"] = np.stack(history["gate_entropy"])
    return out
