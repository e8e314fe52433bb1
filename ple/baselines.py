"""ple.baselines -- generated from book/ple2_progressive_layered_extraction.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['SingleTaskModels', 'TabularEmbedding', 'EncodedModel', 'MODEL_NAMES', 'build_model', 'ScoreEachEpoch', 'at_best_epoch', 'SYNTHETIC_TASKS', 'mmoe_synthetic_splits', 'CENSUS_PAPER_TASKS', 'census_tensor_data', 'census_encoder']

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ple import checks
from ple.cgc import PLE
from ple.checks import (
    InputTypeError,
    ShapeError,
    TaskError,
    check_choice,
    check_dropout,
    check_features,
    check_int,
    check_widths,
)
from ple.fit import Callback, FitState, History, TensorData, evaluate
from ple.layers import MLP, count_parameters
from ple.mmoe import MMoE, SharedBottom, per_task_out_dims


class SingleTaskModels(nn.Module):
    """The single-task baseline: K independent networks, no parameter shared between tasks.

    Net k is ``MLP(input_dim, (*hidden_dims, *tower_dims), out_k)``. Trained on the summed loss
    its parameters get task k's gradient only, so joint training equals K separate runs
    (Adam's update is per parameter). ``encoder``: None, or a factory called once per task
    (e.g. ``lambda: TabularEmbedding(...)``, output width ``input_dim``); net k then reads its
    own encoder, so not even the embedding is shared.
    forward(x [B, input_dim]), or forward(*encoder inputs) -> list of K tensors [B, out_k].
    """

    def __init__(
        self,
        input_dim: int,
        num_tasks: int,
        hidden_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        task_out_dims: int | Sequence[int] = 1,
        dropout: float = 0.0,
        encoder: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim, 1)
        self.num_tasks = num_tasks = check_int("num_tasks", num_tasks, 1)
        self.hidden_dims = check_widths("hidden_dims", hidden_dims)
        tower_dims = check_widths("tower_dims", tower_dims)
        self.task_out_dims = per_task_out_dims(task_out_dims, num_tasks)
        dropout = check_dropout(dropout)
        self.encoders = None
        if encoder is not None:
            self.encoders = nn.ModuleList(encoder() for _ in range(num_tasks))
            width = getattr(self.encoders[0], "out_features", self.input_dim)
            if width != self.input_dim:
                raise ShapeError(f"encoder() has out_features {width}; expected {self.input_dim} (input_dim)")
        self.nets = nn.ModuleList(
            MLP(self.input_dim, (*self.hidden_dims, *tower_dims), out_dim=out, dropout=dropout)
            for out in self.task_out_dims
        )

    def forward(self, *inputs: Tensor) -> list[Tensor]:
        if self.encoders is not None:
            return [net(enc(*inputs)) for enc, net in zip(self.encoders, self.nets)]
        if len(inputs) != 1:
            raise InputTypeError(f"forward takes one tensor x [B, {self.input_dim}]; got {len(inputs)} inputs")
        check_features(inputs[0], self.input_dim, "features", "input_dim")
        return [net(inputs[0]) for net in self.nets]


class TabularEmbedding(nn.Module):
    """Categorical codes -> learned embeddings, concatenated with the numerical features.

    categorical [B, C] int64 (column c in 0..cat_cardinalities[c]-1), numerical [B, M] float
    -> [B, C * embedding_dim + M]. ``out_features`` is that width. The range check of the codes
    reads a device value, so it is skipped while ``ple.checks.validation(False)`` is active
    (inside `ple.fit.fit`'s training step).
    """

    def __init__(self, cat_cardinalities: Sequence[int], num_numerical: int, embedding_dim: int = 4) -> None:
        super().__init__()
        self.cat_cardinalities = check_widths("cat_cardinalities", cat_cardinalities)
        self.num_numerical = check_int("num_numerical", num_numerical, 0)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        # one table for all columns; column c's codes start at offsets[c] (one lookup per batch)
        self.embedding = nn.Embedding(max(sum(self.cat_cardinalities), 1), self.embedding_dim)
        offsets = np.concatenate([[0], np.cumsum(self.cat_cardinalities)[:-1]]).astype(np.int64)
        self.register_buffer("offsets", torch.as_tensor(offsets[: len(self.cat_cardinalities)]))
        self.register_buffer("cardinalities", torch.as_tensor(self.cat_cardinalities, dtype=torch.long))
        self.out_features = len(self.cat_cardinalities) * self.embedding_dim + self.num_numerical

    def forward(self, categorical: Tensor, numerical: Tensor) -> Tensor:
        C = len(self.cat_cardinalities)
        if not isinstance(categorical, Tensor) or categorical.dtype != torch.long:
            raise InputTypeError(
                f"categorical must be a torch.int64 tensor; got {getattr(categorical, 'dtype', type(categorical).__name__)}"
            )
        if categorical.dim() != 2 or categorical.shape[1] != C:
            raise ShapeError(f"categorical has shape {list(categorical.shape)}; expected [B, {C}] (cat columns)")
        if C and checks.validation_enabled():
            if bool((categorical < 0).any()) or bool((categorical >= self.cardinalities).any()):
                raise ValueError("categorical has a code outside 0..cardinality-1 of its column")
        check_features(numerical, self.num_numerical, "numerical", "num_numerical")
        if numerical.shape[0] != categorical.shape[0]:
            raise ShapeError(
                f"numerical has shape {list(numerical.shape)}; expected "
                f"[{categorical.shape[0]}, {self.num_numerical}] (rows of categorical)"
            )
        emb = self.embedding(categorical + self.offsets).flatten(1)  # [B, C * embedding_dim]
        return torch.cat([emb, numerical], dim=1)


class EncodedModel(nn.Module):
    """``body(encoder(*inputs))``: an input encoder (e.g. TabularEmbedding) under a multi-task body.

    forward(*inputs, return_gates=False) passes ``return_gates`` on to bodies that take it.
    """

    def __init__(self, encoder: nn.Module, body: nn.Module) -> None:
        super().__init__()
        for name, m in (("encoder", encoder), ("body", body)):
            if not isinstance(m, nn.Module):
                raise InputTypeError(f"{name} must be a torch.nn.Module; got {type(m).__name__}")
        self.encoder = encoder
        self.body = body

    def forward(self, *inputs: Tensor, return_gates: bool = False):
        z = self.encoder(*inputs)
        return self.body(z, return_gates=True) if return_gates else self.body(z)


MODEL_NAMES = ("single_task", "shared_bottom", "mmoe", "cgc", "ple")


def _match_width(factory: Callable[[int], nn.Module], target: int) -> int:
    """The width w whose count_parameters(factory(w)) is nearest target (counts grow with w)."""
    hi = 1
    while count_parameters(factory(hi)) < target:  # doubling, then bisection
        hi *= 2
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:  # first width whose count reaches the target
        mid = (lo + hi) // 2
        if count_parameters(factory(mid)) < target:
            lo = mid + 1
        else:
            hi = mid
    cands = [w for w in (lo - 1, lo) if w >= 1]
    return min(cands, key=lambda w: abs(count_parameters(factory(w)) - target))


def build_model(
    name: str,
    input_dim: int,
    num_tasks: int,
    *,
    num_task_experts: int = 2,
    num_shared_experts: int = 2,
    expert_dim: int = 32,
    tower_dims: Sequence[int] = (16,),
    num_levels: int = 2,
    task_out_dims: int | Sequence[int] = 1,
    dropout: float = 0.0,
    gate_bias: bool = False,
    match_parameters: bool = True,
    encoder: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """One of MODEL_NAMES with a parameter count matched to the reference MMoE.

    The reference is ``MMoE`` with ``num_tasks * num_task_experts + num_shared_experts`` experts of
    width ``expert_dim`` (the same number of experts CGC has). With ``match_parameters`` the width of
    every other model (single-task hidden width, Shared-Bottom bottom width, CGC / PLE expert
    width) is the one whose count is nearest the reference's; towers are the same everywhere, and
    MMoE, CGC and PLE share the gate form (``gate_bias``).
    encoder: None, or a factory () -> nn.Module with output width ``input_dim`` (e.g.
    ``lambda: TabularEmbedding(...)``): the model is then ``EncodedModel(encoder(), body)`` (the
    encoder is built first), and single-task gets one encoder per task. Counts are matched on
    the bodies.
    forward(x [B, input_dim]) (or the encoder's inputs) -> list of K tensors [B, out_k].
    """
    check_choice("name", name, MODEL_NAMES)
    num_experts = num_tasks * num_task_experts + num_shared_experts
    kw = dict(tower_dims=tuple(tower_dims), task_out_dims=task_out_dims, dropout=dropout)
    gated = dict(kw, gate_bias=gate_bias)  # the same gate form for MMoE, CGC and PLE
    factories: dict[str, Callable[[int], nn.Module]] = {
        "single_task": lambda w: SingleTaskModels(input_dim, num_tasks, hidden_dims=(w,), **kw),
        "shared_bottom": lambda w: SharedBottom(input_dim, num_tasks, bottom_dims=(w,), **kw),
        "mmoe": lambda w: MMoE(input_dim, num_tasks, num_experts=num_experts, expert_dims=(w,), **gated),
        "cgc": lambda w: PLE(input_dim, num_tasks, 1, num_task_experts, num_shared_experts, (w,), **gated),
        "ple": lambda w: PLE(input_dim, num_tasks, num_levels, num_task_experts, num_shared_experts, (w,), **gated),
    }
    shared_encoder = encoder() if encoder is not None and name != "single_task" else None
    width = expert_dim
    if match_parameters and name != "mmoe":
        width = _match_width(factories[name], count_parameters(factories["mmoe"](expert_dim)))
    if name == "single_task" and encoder is not None:
        return SingleTaskModels(input_dim, num_tasks, hidden_dims=(width,), encoder=encoder, **kw)
    body = factories[name](width)
    return body if shared_encoder is None else EncodedModel(shared_encoder, body)


class ScoreEachEpoch(Callback):
    """A `ple.fit` callback: after each epoch's validation, score the model on `data` too.

    Writes ``state.record[key] = ple.fit.evaluate(model, data, tasks)`` ({task: metric}, the
    tasks' own metrics, labelled samples only), so the `History` holds the score of every epoch;
    `at_best_epoch` reads it at each task's best validation epoch. data: a `TensorData` (or any
    iterable of `Batch`) with a target for every task.
    """

    def __init__(self, data: TensorData, key: str = "test_metric", batch_size: int = 4096) -> None:
        if not isinstance(key, str) or key in ("epoch", "seconds", "train_loss", "train_total", "val_loss",
                                               "val_metric", "val_total"):
            raise TaskError(f"key must be a str that is not one of fit's own record keys; got {key!r}")
        if not isinstance(data, TensorData):
            raise InputTypeError(f"data must be a ple.fit.TensorData; got {type(data).__name__}")
        self.data, self.key = data, key
        self.batch_size = check_int("batch_size", batch_size, 1)

    def on_epoch_end(self, state: FitState) -> None:
        state.record[self.key] = evaluate(
            state.model, self.data, state.tasks, batch_size=self.batch_size, device=state.device
        )


def at_best_epoch(history: History, key: str = "test_metric") -> dict[str, float]:
    """{task: record[key][task] at the task's best validation epoch} (``history.best_epoch``).

    key: what a `ScoreEachEpoch` callback wrote (default "test_metric"), or "val_metric".
    """
    if not isinstance(history, History):
        raise InputTypeError(f"history must be the ple.fit.History that fit returned; got {type(history).__name__}")
    missing = [t for t in history.tasks if t not in history.best_epoch]
    if missing:
        raise TaskError(f"history has no best validation epoch for tasks {missing}; fit with val= data")
    by_epoch = {r["epoch"]: r for r in history.records}
    if any(key not in by_epoch[e] for e in history.best_epoch.values()):
        raise TaskError(f"history records have no {key!r}; pass ScoreEachEpoch(data, key={key!r}) to fit")
    return {t: float(by_epoch[history.best_epoch[t]][key][t]) for t in history.tasks}


SYNTHETIC_TASKS = ("task_1", "task_2")


def mmoe_synthetic_splits(
    n_train: int, correlation: float, seed: int = 0
) -> tuple[TensorData, TensorData, TensorData]:
    """Train / validation / test `TensorData` from ``ple.data.mmoe_synthetic`` (one fresh draw per
    seed; validation and test have n_train // 3 rows each). inputs x float32 [N, 100]; targets
    {"task_1": [N], "task_2": [N]} (SYNTHETIC_TASKS, regression)."""
    from ple.data.mmoe_synthetic import make_mmoe_synthetic

    n_train = check_int("n_train", n_train, 3)
    n_eval = n_train // 3
    data = make_mmoe_synthetic(n_train + 2 * n_eval, correlation, seed=seed)
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.y)
    bounds = [(0, n_train), (n_train, n_train + n_eval), (n_train + n_eval, n_train + 2 * n_eval)]
    return tuple(
        TensorData(x[a:b], {t: y[a:b, k] for k, t in enumerate(SYNTHETIC_TASKS)}) for a, b in bounds
    )


CENSUS_PAPER_TASKS = ("income", "never_married")


def census_tensor_data(data, tasks: Sequence[str] = CENSUS_PAPER_TASKS) -> TensorData:
    """A ``ple.data.census.CensusData`` split as a `TensorData`: inputs (categorical int64
    [N, C], numerical float32 [N, M]), targets {task: float32 0/1 [N]}."""
    if not all(hasattr(data, a) for a in ("categorical", "numerical", "labels")):
        raise InputTypeError(f"data must be a ple.data.census.CensusData split; got {type(data).__name__}")
    missing = [t for t in tasks if t not in data.labels]
    if missing:
        raise TaskError(f"tasks {missing} are not Census labels; expected from {sorted(data.labels)}")
    return TensorData(
        (
            torch.as_tensor(np.asarray(data.categorical), dtype=torch.long),
            torch.as_tensor(np.asarray(data.numerical), dtype=torch.float32),
        ),
        {t: torch.as_tensor(np.asarray(data.labels[t]), dtype=torch.float32) for t in tasks},
    )


def census_encoder(splits, embedding_dim: int = 4) -> Callable[[], TabularEmbedding]:
    """A factory of the Census input encoder: ``TabularEmbedding(cat_cardinalities, number of
    numerical columns, embedding_dim)`` for ``ple.data.census.CensusSplits`` (for `build_model`)."""
    if not all(hasattr(splits, a) for a in ("cat_cardinalities", "train")):
        raise InputTypeError(f"splits must be a ple.data.census.CensusSplits; got {type(splits).__name__}")
    cards, num = list(splits.cat_cardinalities), int(np.asarray(splits.train.numerical).shape[1])
    embedding_dim = check_int("embedding_dim", embedding_dim, 1)
    return lambda: TabularEmbedding(cards, num, embedding_dim)
