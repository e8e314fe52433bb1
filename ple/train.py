"""ple.train -- generated from book/adatt4_training_loop.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['PRECISIONS', 'WEIGHTINGS', 'TrainConfig', 'warm_restart_schedule', 'lr_closed_form', 'resolve_precision', 'parameter_groups', 'CheckpointError', 'CHECKPOINT_VERSION', 'save_checkpoint', 'load_checkpoint', 'checkpoints', 'init_distributed', 'Trainer', 'oracle_reference', 'run_config', 'main', 'ABLATION_TASKS', 'ABLATION_PLANTED', 'ABLATION_METHODS', 'ABLATION_PROFILES', 'ablation_profile', 'AblationWorld', 'ablation_world', 'ablation_run']

import argparse
import contextlib
import json
import math
import os
import random
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ple import checks, metrics, seed_everything
from ple.adatt import TaskAffinityComputer
from ple.adatt_transfer import AdaTT
from ple.checks import HyperparameterError, check_choice, check_float, check_int, check_unique
from ple.fit import Callback, FitState, Task, TensorData, WeightedSum, _as_batches, fit
from ple.layers import normalized_entropy
from ple.weighting import DWA_TEMPERATURE, GRADNORM_ALPHA, JD_AGGREGATORS, DWA, GradNorm, JacobianDescent


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WEIGHTINGS = ("system", "gradnorm", "dwa", "upgrad", "pcgrad")


@dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer reads, with the posts' numbers as defaults (frozen, JSON round trip).

    Phases: `phase1_epochs` (the posts' shared_expert_epochs, 15: everything trains, adaTT on),
    `phase2_epochs` (cluster_finetune_epochs, 8: the modules named in `phase2_freeze` frozen and
    out of the optimizer, adaTT off, CGC attention frozen). Optimizer: AdamW(`lr`, `weight_decay`),
    gradient norm clipped at `grad_clip`, one parameter group per shared expert with its lr scaled
    by `lr_scale` ((parameter-name prefix, factor), ...; HGCN slower). Schedule per epoch:
    LinearLR from `warmup_start_factor` over `warmup_epochs` (phase 2: `phase2_warmup_epochs`),
    then CosineAnnealingWarmRestarts(`restart_period` T_0, `restart_mult` T_mult, `min_lr`).
    Early stopping: `patience` epochs without a lower validation loss end a phase (reset at the
    boundary). `weighting`: "system" (the system's own: uncertainty / fixed / equal by its
    config), "gradnorm" (`gradnorm_alpha`), "dwa" (`dwa_temperature`), or Jacobian descent on the
    shared experts with torchjd's "upgrad" or "pcgrad" (`ple.weighting.JacobianDescent`; these
    combine gradients, not losses, so they need `adatt=False`); `adatt` with its
    `adatt_*` settings and `transfer_lambda` (adaTT's epochs count phase 1's: warmup 5 and freeze
    at 12 of its 15, so that the frozen stretch and the CGC-adaTT sync happen before phase 2). `precision`: "auto" (bf16 on a GPU that has it,
    fp16 + GradScaler on one that does not, fp32 on the CPU), "fp32", "bf16" or "fp16".
    `checkpoint_every`: steps between checkpoints (0: at epoch ends only); `keep_checkpoints`
    files are kept. `skip_nonfinite`: a non-finite loss drops its batch (one host read per step);
    `skip_oom`: a CUDA out-of-memory error drops its batch. `progress`: "auto" (a tqdm bar per
    epoch when stderr is a terminal), "on" or "off".
    """

    phase1_epochs: int = 15
    phase2_epochs: int = 8
    batch_size: int = 16384
    eval_batch_size: int = 16384
    lr: float = 5e-4
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    lr_scale: tuple = (("pool.experts.hgcn", 0.2),)
    warmup_epochs: int = 5
    phase2_warmup_epochs: int = 2
    warmup_start_factor: float = 0.1
    restart_period: int = 10
    restart_mult: int = 2
    min_lr: float = 0.0
    patience: int = 7
    phase2_freeze: tuple[str, ...] = ("pool", "task_experts", "stage1", "stage2", "hmm")
    weighting: str = "system"
    gradnorm_alpha: float = GRADNORM_ALPHA
    dwa_temperature: float = DWA_TEMPERATURE
    adatt: bool = True
    adatt_warmup_epochs: int = 5  # inside phase 1 (see the chapter: the posts' 10 / 28 exceed its 15 epochs)
    adatt_freeze_epoch: int = 12
    adatt_grad_interval: int = 10
    transfer_lambda: float = 0.1
    precision: str = "auto"
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    skip_nonfinite: bool = True
    skip_oom: bool = True
    progress: str = "auto"

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size", "restart_period", "restart_mult", "keep_checkpoints",
                     "adatt_grad_interval"):
            check_int(f"TrainConfig.{name}", getattr(self, name), 1)
        for name in ("phase1_epochs", "phase2_epochs", "warmup_epochs", "phase2_warmup_epochs", "patience",
                     "adatt_warmup_epochs", "adatt_freeze_epoch", "seed", "checkpoint_every"):
            check_int(f"TrainConfig.{name}", getattr(self, name), 0)
        if self.phase1_epochs + self.phase2_epochs == 0:
            raise HyperparameterError("TrainConfig: phase1_epochs + phase2_epochs must be >= 1; got 0 and 0")
        check_float("TrainConfig.lr", self.lr, 0.0, low_open=True)
        check_float("TrainConfig.weight_decay", self.weight_decay, 0.0)
        check_float("TrainConfig.grad_clip", self.grad_clip, 0.0, low_open=True)
        check_float("TrainConfig.warmup_start_factor", self.warmup_start_factor, 0.0, 1.0, low_open=True)
        check_float("TrainConfig.min_lr", self.min_lr, 0.0)
        check_float("TrainConfig.gradnorm_alpha", self.gradnorm_alpha, 0.0)
        check_float("TrainConfig.dwa_temperature", self.dwa_temperature, 0.0, low_open=True)
        check_float("TrainConfig.transfer_lambda", self.transfer_lambda, 0.0)
        check_choice("TrainConfig.weighting", self.weighting, WEIGHTINGS)
        if self.adatt and self.adatt_freeze_epoch <= self.adatt_warmup_epochs:
            raise HyperparameterError(f"TrainConfig.adatt_freeze_epoch must be greater than adatt_warmup_epochs; got "
                                      f"{self.adatt_freeze_epoch} and {self.adatt_warmup_epochs}")
        if self.weighting in JD_AGGREGATORS and self.adatt:
            raise HyperparameterError(f"TrainConfig.weighting={self.weighting!r} combines the per-task gradients "
                                      "itself and adaTT re-weights losses before a summed backward; set adatt=False")
        check_choice("TrainConfig.precision", self.precision, PRECISIONS)
        check_choice("TrainConfig.progress", self.progress, ("auto", "on", "off"))
        scales = tuple((str(p), check_float(f"TrainConfig.lr_scale[{p!r}]", f, 0.0, low_open=True))
                       for p, f in dict(self.lr_scale).items())
        object.__setattr__(self, "lr_scale", scales)
        object.__setattr__(self, "phase2_freeze", tuple(self.phase2_freeze))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` (validated again); unknown fields raise naming them."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise HyperparameterError(f"TrainConfig has no field(s) {unknown}; known: {sorted(known)}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HyperparameterError(f"TrainConfig has no field(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "lr_scale" in d:
            d["lr_scale"] = tuple(tuple(x) for x in (d["lr_scale"].items() if isinstance(d["lr_scale"], Mapping) else d["lr_scale"]))
        return cls(**d)


def warm_restart_schedule(optimizer: torch.optim.Optimizer, warmup_epochs: int, *, start_factor: float = 0.1,
                          restart_period: int = 10, restart_mult: int = 2, min_lr: float = 0.0):
    """SequentialLR(LinearLR -> CosineAnnealingWarmRestarts), stepped once per epoch (eq-lr-schedule).

    LinearLR ramps every group's lr from start_factor x lr to lr over `warmup_epochs`; then
    warm restarts with periods T_0, T_0 T_mult, ... (0 warmup epochs: the cosine alone)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise checks.InputTypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
    warmup_epochs, start_factor, restart_period, restart_mult, min_lr = _check_schedule(
        warmup_epochs, start_factor, restart_period, restart_mult, min_lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=restart_period, T_mult=restart_mult,
                                                                  eta_min=min_lr)
    if warmup_epochs == 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=start_factor, end_factor=1.0,
                                               total_iters=warmup_epochs)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup_epochs])


def _check_schedule(warmup_epochs, start_factor, restart_period, restart_mult, min_lr):
    return (check_int("warmup_epochs", warmup_epochs, 0),
            check_float("start_factor", start_factor, 0.0, 1.0, low_open=True),
            check_int("restart_period", restart_period, 1), check_int("restart_mult", restart_mult, 1),
            check_float("min_lr", min_lr, 0.0))


def lr_closed_form(epoch: int, base_lr: float, warmup_epochs: int, *, start_factor: float = 0.1,
                   restart_period: int = 10, restart_mult: int = 2, min_lr: float = 0.0) -> float:
    """eq-lr-schedule in closed form: the lr of 0-based epoch `epoch`.

        e < W:  lr = base (f + (1 - f) e / W)
        e >= W: t = e - W; cycle i = the largest with T_0 (m^i - 1)/(m - 1) <= t (i = floor(t / T_0) when m = 1),
                t_i = t - T_0 (m^i - 1)/(m - 1), T_i = T_0 m^i,
                lr = min + (base - min) (1 + cos(pi t_i / T_i)) / 2
    """
    epoch = check_int("epoch", epoch, 0)
    base_lr = check_float("base_lr", base_lr, 0.0, low_open=True)
    warmup_epochs, start_factor, restart_period, restart_mult, min_lr = _check_schedule(
        warmup_epochs, start_factor, restart_period, restart_mult, min_lr)
    if epoch < warmup_epochs:
        return base_lr * (start_factor + (1.0 - start_factor) * epoch / warmup_epochs)
    t = epoch - warmup_epochs
    if restart_mult == 1:
        i, start = t // restart_period, (t // restart_period) * restart_period
    else:
        i = 0
        while restart_period * (restart_mult ** (i + 1) - 1) // (restart_mult - 1) <= t:
            i += 1
        start = restart_period * (restart_mult ** i - 1) // (restart_mult - 1)
    period = restart_period * restart_mult ** i
    return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * (t - start) / period)) / 2.0


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed) for `precision` on `device`."""
    check_choice("precision", precision, PRECISIONS)
    if isinstance(device, str):
        device = torch.device(device)
    if not isinstance(device, torch.device):
        raise checks.InputTypeError(f"device must be a torch.device or a str such as 'cuda'; got {device!r}")
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def parameter_groups(module: nn.Module, lr: float, weight_decay: float, *, lr_scale: Mapping[str, float] = (),
                     exclude: Sequence[str] = (), split: str = "pool.experts") -> list[dict[str, Any]]:
    """AdamW parameter groups: one per child of `split` (each shared expert), one for the rest.

    A group whose name starts with a prefix in `lr_scale` gets lr x factor; parameters under a
    prefix in `exclude` are left out (frozen). Membership is by name, not by requires_grad, so a
    resumed run rebuilds the same groups. Each group carries its "name"."""
    if not isinstance(module, nn.Module):
        raise checks.InputTypeError(f"module must be an nn.Module; got {type(module).__name__}")
    lr = check_float("lr", lr, 0.0, low_open=True)
    weight_decay = check_float("weight_decay", weight_decay, 0.0)
    scales = dict(lr_scale)
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in module.named_parameters():
        if any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        key = ".".join(name.split(".")[:3]) if name.startswith(split + ".") else "rest"
        groups.setdefault(key, []).append(p)
    out = []
    for key, params in groups.items():
        factor = next((f for pre, f in scales.items() if key == pre or key.startswith(pre + ".")), 1.0)
        out.append({"params": params, "name": key, "lr": lr * factor, "weight_decay": weight_decay})
    return out


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint that cannot be read (truncated, corrupt, or not a checkpoint of this trainer)."""


CHECKPOINT_VERSION = 1


def save_checkpoint(blob: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `blob` to `path` atomically: a temporary file in the same folder, flushed and synced,
    then `os.replace` (a reader sees the old file or the new one, never half of one)."""
    if not isinstance(blob, Mapping):
        raise checks.InputTypeError(f"blob must be a mapping (a checkpoint's states by name); got {type(blob).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(blob, version=CHECKPOINT_VERSION), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; CheckpointError names the file and the
    reason when it is truncated, corrupt or of another kind."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a zip reader, unpickling or EOF error: the file is damaged
        raise CheckpointError(f"checkpoint {path} (path) cannot be read ({type(err).__name__}: {err}); it is truncated "
                              "or corrupt: delete it to resume from the previous checkpoint") from err
    if not isinstance(blob, dict) or blob.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a ple.train checkpoint of version {CHECKPOINT_VERSION}")
    return blob


def checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoints in `folder`, oldest first (names ckpt-PPP-SSSSSSSS.pt: phase, step)."""
    if not isinstance(folder, (str, os.PathLike)):
        raise checks.InputTypeError(f"folder must be a path (str or os.PathLike); got {type(folder).__name__}")
    return sorted(Path(folder).glob("ckpt-*.pt"))


def init_distributed(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group that `torchrun` describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL with one GPU per process when CUDA is there, gloo
    on the CPU (or `backend`). Returns (rank, world_size, device). Without torchrun's environment
    (or with WORLD_SIZE=1) no group is made: (0, 1, cuda or cpu)."""
    import torch.distributed as dist

    if backend is not None:
        check_choice("backend", backend, ("nccl", "gloo"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and backend != "gloo"
    if world <= 1:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return dist.get_rank(), dist.get_world_size(), device


def _world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_mean(t: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of `t` over the processes (in place; returned)."""
    import torch.distributed as dist

    dist.all_reduce(t)
    return t.div_(world)


class _DistributedModel(nn.Module):
    """What `fit` calls under DDP: the model wrapped in DistributedDataParallel while training (the
    wrapper rebuilt whenever the set of trainable parameters changes: phase 2, the CGC freeze), the
    bare model in evaluation (every process validates the whole validation set)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module = model
        self.device_ids = [device.index] if device.type == "cuda" else None
        self._ddp: list[Any] = []  # a plain list: not a second copy of the parameters in state_dict
        self._key: tuple[bool, ...] | None = None

    def forward(self, *inputs):
        if not self.training:
            return self.module(*inputs)
        key = tuple(p.requires_grad for p in self.module.parameters())
        if key != self._key:
            from torch.nn.parallel import DistributedDataParallel

            self._ddp[:] = [DistributedDataParallel(self.module, device_ids=self.device_ids)]
            self._key = key
        return self._ddp[0](*inputs)


class _DistributedSync(Callback):
    """Under DDP: gradients of the parameters outside the DDP model (a weighting's, adaTT's) are
    averaged; a non-finite loss on any process drops the step on every process; each epoch's
    training losses are averaged over the processes (the global batch's means)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def after_backward(self, state: FitState) -> None:
        tr = self.trainer
        inside = {id(p) for p in tr.model.parameters()}
        grads = [p.grad for g in state.optimizer.param_groups for p in g["params"]
                 if id(p) not in inside and p.grad is not None]
        for g in grads:
            _all_mean(g, tr.world_size)
        if tr.config.skip_nonfinite:
            bad = (~torch.isfinite(state.loss.detach())).float().reshape(1)
            _all_mean(bad, tr.world_size)
            state.extra["nonfinite_anywhere"] = bool(bad > 0)

    def on_epoch_end(self, state: FitState) -> None:
        rec = state.record
        names = list(rec["train_loss"])
        t = torch.tensor([*(rec["train_loss"][n] for n in names), rec["train_total"]], dtype=torch.float64,
                         device=state.device)
        t = _all_mean(t, self.trainer.world_size).tolist()
        rec["train_loss"], rec["train_total"] = dict(zip(names, t[:-1])), t[-1]


class _Resume(Callback):
    """First callback of a phase: restores a checkpoint (on_fit_start) and the interrupted epoch's
    shuffle, position and loss sums (on_epoch_start); sets the grad scaler."""

    def __init__(self, trainer: Trainer, blob: dict | None) -> None:
        self.trainer, self.blob = trainer, blob

    def on_fit_start(self, state: FitState) -> None:
        tr = self.trainer
        tr.state = state
        if tr.use_scaler:
            state.scaler = torch.amp.GradScaler(state.device.type)
        b = self.blob
        if b is None:
            return
        tr.restore(b, state)
        state.epoch = b["epoch"] - 1 if b["mid_epoch"] else b["epoch"]
        state.step, state.skipped_steps, state.oom_steps = b["step"], b["skipped_steps"], b["oom_steps"]
        if not b["mid_epoch"]:
            state.generator.set_state(b["rng"]["generator"])
            self.blob = None

    def on_epoch_start(self, state: FitState) -> None:
        b = self.blob
        if b is not None:  # the interrupted epoch: same order, skip what was trained
            state.generator.set_state(b["rng"]["generator"])
            state.skip_batches = b["batch_index"]
            state.epoch_sum.copy_(b["epoch_sum"].to(state.epoch_sum.device))
            state.epoch_batches = b["epoch_batches"]
            torch.set_rng_state(b["rng"]["torch"])
            self.blob = None
        self.trainer.epoch_generator = state.generator.get_state()
        data = self.trainer.train_data
        if hasattr(data, "set_epoch"):  # a stream's order is a function of the epoch: exact resume, same on every process
            offset = self.trainer.config.phase1_epochs if self.trainer.phase == 1 else 0
            data.set_epoch(offset + state.epoch - 1)
        self.trainer.sync_attention()
        adatt = self.trainer.adatt
        self.trainer.epoch_adatt_phase = adatt.phase_name if adatt is not None else None
        self.trainer.open_bar(state)


class _Keeper(Callback):
    """Last callback of a phase: drops non-finite steps, writes checkpoints, the CGC-adaTT sync,
    early stopping, JSON-lines metrics, the progress bar."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def after_backward(self, state: FitState) -> None:
        if self.trainer.config.skip_nonfinite and (not bool(torch.isfinite(state.loss.detach()))  # the posts' isfinite
                                                   or state.extra.get("nonfinite_anywhere", False)):  # DDP: any process
            state.skip_step = True

    def on_step_end(self, state: FitState) -> None:
        tr = self.trainer
        if tr.bar is not None:
            tr.bar.update(1)
        every = tr.config.checkpoint_every
        if every and state.step % every == 0:
            tr.checkpoint(state, mid_epoch=True)
        for cb in tr.step_hooks:
            cb(state)

    def on_epoch_end(self, state: FitState) -> None:
        tr = self.trainer
        tr.close_bar()
        tr.sync_attention()
        tr.log_epoch(state)
        tr.early_stopping(state)
        tr.checkpoint(state, mid_epoch=False)


class Trainer:
    """The system's trainer (ADATT-4), built on `ple.fit`: two phases, each one `fit` call.

    Phase 1 trains everything with adaTT on; phase 2 freezes `config.phase2_freeze` (the shared
    experts and the gates; out of the optimizer), freezes the CGC attention, turns adaTT off (and
    back on in a `finally`), and starts a new optimizer, scheduler, grad scaler and early stopping.

    model: what `fit` calls; module: the module whose parameter names define the groups and the
    frozen prefixes (default: model); tasks: the `ple.fit.Task`s; train / val: `TensorData` or
    re-iterable batches. aggregate: the loss weighting (default `WeightedSum()`); adatt: an
    `ple.adatt_transfer.AdaTT` whose inner is `aggregate` (None: no adaTT); attention: a
    `CGCAttention` frozen with adaTT (at its freeze epoch) and in phase 2; returns_aux: as in
    `fit`. output_dir: checkpoints (`ckpt-*.pt`) and `metrics.jsonl` (None: neither);
    resume: continue from the newest checkpoint in output_dir. callbacks: more `ple.fit`
    callbacks (run before the trainer's last one); `Trainer.for_system` builds all of it for a
    `PLESystem`. oracle: {task: (oracle metric, chance metric)} on the validation data (see
    `oracle_reference`): each epoch's line then holds the normalised oracle gap per task
    (`ple.metrics.oracle_gap`, 0 = oracle, 1 = chance) and their mean. gate_weights: a callable
    `(*inputs) -> [B, K, E]` gate weights (rows on the simplex); each epoch's line then holds the
    mean normalised gate entropy per task on the first validation batch (1 = uniform routing).
    """

    def __init__(self, model: nn.Module, tasks: Sequence[Task], train, val=None, config: TrainConfig | None = None, *,
                 module: nn.Module | None = None, aggregate: Any = None, adatt: Any = None,
                 attention: nn.Module | None = None, returns_aux: bool = False, output_dir=None,
                 resume: bool = True, callbacks: Sequence[Callback] = (), device=None,
                 oracle: Mapping[str, Sequence[float]] | None = None,
                 gate_weights: Callable[..., torch.Tensor] | None = None) -> None:
        self.config = config if config is not None else TrainConfig()
        if not isinstance(self.config, TrainConfig):
            raise checks.InputTypeError(f"config must be a TrainConfig; got {type(self.config).__name__}")
        if not isinstance(model, nn.Module):
            raise checks.InputTypeError(f"model must be an nn.Module; got {type(model).__name__}")
        self.model, self.module, self.tasks = model, module if module is not None else model, tuple(tasks)
        if not self.tasks or not all(isinstance(t, Task) for t in self.tasks):
            raise checks.TaskError(f"tasks must be a non-empty sequence of ple.fit.Task; got {tasks!r}")
        check_unique("tasks (names)", [t.name for t in self.tasks])
        self.train_data, self.val_data = train, val
        self.aggregate = aggregate if aggregate is not None else WeightedSum()
        self.adatt, self.attention, self.returns_aux = adatt, attention, returns_aux
        if adatt is not None and adatt.inner is not self.aggregate:
            raise HyperparameterError("adatt.inner must be the trainer's aggregate (adaTT re-weights its losses)")
        if adatt is not None and getattr(self.aggregate, "performs_backward", False):
            raise HyperparameterError(f"aggregate {type(self.aggregate).__name__} takes the backward itself; adaTT "
                                      "re-weights losses before a summed backward: pass adatt=None")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.resume, self.callbacks = resume, tuple(callbacks)
        p = next(iter(model.parameters()))
        self.device = torch.device(device) if device is not None else p.device
        self.autocast, self.use_scaler = resolve_precision(self.config.precision, self.device)
        self.phase, self.state, self.bar, self.epoch_generator = 0, None, None, None
        self.epoch_adatt_phase: str | None = None
        self.records: list[dict[str, Any]] = []
        self.best, self.wait = math.inf, 0
        self.step_hooks: list[Callable[[FitState], None]] = []
        self.oracle = _check_oracle(oracle, self.tasks)
        if gate_weights is not None and not callable(gate_weights):
            raise checks.InputTypeError(f"gate_weights must be a callable (*inputs) -> [B, K, E]; got "
                                        f"{type(gate_weights).__name__}")
        self.gate_weights = gate_weights
        self.rank, self.world_size = _world()
        self._fit_model = self.model
        if self.world_size > 1:  # under torchrun: DDP, rank-0-only files, adaTT's gradients averaged
            if isinstance(train, TensorData):
                raise checks.InputTypeError(
                    f"train is a TensorData, but this process is rank {self.rank} of {self.world_size}: pass this "
                    "process's shard, e.g. PreparedWorld.stream('train', batch_size // world_size, "
                    "num_replicas=world_size, rank=rank)")
            if getattr(self.aggregate, "performs_backward", False):
                raise HyperparameterError(f"aggregate {type(self.aggregate).__name__} takes the backward itself, "
                                          "which DistributedDataParallel cannot synchronise; use a loss weighting")
            self._fit_model = _DistributedModel(self.model, self.device)
            if adatt is not None:
                _average_task_gradients(adatt.computer, self.world_size)

    # ------------------------------------------------------------------ builders
    @classmethod
    def for_system(cls, system: nn.Module, train, val=None, config: TrainConfig | None = None, **kwargs) -> Trainer:
        """A Trainer for a `PLESystem`: its tasks, its loss weighting (or GradNorm / DWA on its
        shared experts), adaTT on its shared experts with the system's weighting inside, its
        CGC attention."""
        cfg = config if config is not None else TrainConfig()
        names = system.task_names
        if cfg.weighting == "gradnorm":
            aggregate = GradNorm(names, system.pool, alpha=cfg.gradnorm_alpha)
        elif cfg.weighting == "dwa":
            aggregate = DWA(names, temperature=cfg.dwa_temperature)
        elif cfg.weighting in JD_AGGREGATORS:
            aggregate = JacobianDescent(names, system.pool, cfg.weighting)
        else:
            aggregate = system.aggregator()
        adatt = None
        if cfg.adatt:
            comp = TaskAffinityComputer(names, system.pool, grad_interval=cfg.adatt_grad_interval)
            adatt = AdaTT(comp, warmup_epochs=cfg.adatt_warmup_epochs, freeze_epoch=cfg.adatt_freeze_epoch,
                          transfer_lambda=cfg.transfer_lambda, inner=aggregate)
        kwargs.setdefault("gate_weights", _system_gates(system))
        return cls(system.for_fit(), system.fit_tasks(), train, val, cfg, module=system, aggregate=aggregate,
                   adatt=adatt, attention=system.stage2, returns_aux=True, **kwargs)

    def optimizer(self, phase: int) -> torch.optim.Optimizer:
        """AdamW over the phase's parameter groups (+ the weighting's parameters, no decay)."""
        c = self.config
        exclude = c.phase2_freeze if phase == 1 else ()
        groups = parameter_groups(self.module, c.lr, c.weight_decay, lr_scale=dict(c.lr_scale), exclude=exclude)
        seen = {id(p) for g in groups for p in g["params"]}
        extra = [p for m in (self.aggregate, self.adatt if phase == 0 else None) if isinstance(m, nn.Module)
                 for p in m.parameters() if id(p) not in seen and not seen.add(id(p))]
        if extra:
            groups.append({"params": extra, "name": "loss weighting", "lr": c.lr, "weight_decay": 0.0})
        return torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)

    def scheduler(self, phase: int) -> Callable[[torch.optim.Optimizer], Any]:
        c = self.config
        warmup = c.warmup_epochs if phase == 0 else c.phase2_warmup_epochs
        return lambda opt: warm_restart_schedule(opt, warmup, start_factor=c.warmup_start_factor,
                                                 restart_period=c.restart_period, restart_mult=c.restart_mult,
                                                 min_lr=c.min_lr)

    # ------------------------------------------------------------------ phases
    def freeze_phase2(self) -> None:
        """Phase 2: the frozen prefixes stop training; the CGC attention freezes."""
        for name, p in self.module.named_parameters():
            if any(name == e or name.startswith(e + ".") for e in self.config.phase2_freeze):
                p.requires_grad_(False)
        if self.attention is not None:
            self.attention.freeze()

    def sync_attention(self) -> None:
        """CGC-adaTT sync: the attention freezes when adaTT enters its frozen phase."""
        if self.attention is not None and self.adatt is not None and self.phase == 0 \
                and self.adatt.phase_name == "frozen" and not self.attention._frozen:
            self.attention.freeze()

    @contextlib.contextmanager
    def adatt_off(self):
        """adaTT off for phase 2 (its shared-expert gradients would all be zero), restored in a
        `finally` whatever happens inside."""
        backup = self.adatt
        self.adatt = None
        try:
            yield
        finally:
            self.adatt = backup

    def run(self) -> list[dict[str, Any]]:
        """Train both phases (resuming from the newest checkpoint if asked); returns the records."""
        blob = self.latest() if self.resume else None
        if blob is not None:
            self.records = list(blob["records"])
            self._rewrite_metrics()
        start = blob["phase"] if blob is not None else 0
        if blob is not None and start == 1:
            self.phase = 1
        for phase in range(start, 2):
            epochs = (self.config.phase1_epochs, self.config.phase2_epochs)[phase]
            if epochs == 0:
                continue
            resume = blob if blob is not None and blob["phase"] == phase else None
            if phase == 1:
                with self.adatt_off():
                    self._phase(1, epochs, resume)
            else:
                self._phase(0, epochs, resume)
        return self.records

    def _phase(self, phase: int, epochs: int, blob: dict | None) -> None:
        self.phase = phase
        if phase == 1:
            self.freeze_phase2()
        if blob is None:
            self.best, self.wait = math.inf, 0
        c = self.config
        aggregate = self.adatt.hook() if self.adatt is not None else self.aggregate
        cbs: list[Callback] = [_Resume(self, blob)]
        if self.adatt is not None:
            cbs.append(self.adatt)
        if isinstance(self.aggregate, Callback):
            cbs.append(self.aggregate)
        cbs += [*self.callbacks, *([_DistributedSync(self)] if self.world_size > 1 else []), _Keeper(self)]
        self.phase_optimizer = self.optimizer(phase)
        fit(self._fit_model, self.train_data, self.val_data, tasks=self.tasks, epochs=epochs, batch_size=c.batch_size,
            optimizer=self.phase_optimizer, scheduler=self.scheduler(phase), scheduler_interval="epoch",
            aggregate=aggregate, callbacks=cbs, seed=c.seed + phase, device=self.device, grad_clip=c.grad_clip,
            returns_aux=self.returns_aux, autocast=self.autocast, eval_batch_size=c.eval_batch_size,
            skip_oom=c.skip_oom and self.device.type == "cuda")

    # ------------------------------------------------------------------ per epoch
    def early_stopping(self, state: FitState) -> None:
        rec = state.record
        value = rec.get("val_total", rec["train_total"])
        if value < self.best:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.config.patience and self.wait >= self.config.patience:
                state.stop = True

    def loss_weights(self) -> dict[str, float]:
        """The weighting's current task weights {task: float} (the uncertainty weighting's
        effective w_k exp(-s_k))."""
        agg = self.aggregate
        if hasattr(agg, "task_weights") and callable(agg.task_weights):
            return agg.task_weights()
        w = getattr(agg, "weighting", agg)
        tw = getattr(w, "task_weights", None)
        if isinstance(tw, torch.Tensor):
            eff = tw.detach().float()
            if hasattr(w, "log_vars"):
                eff = eff * torch.exp(-w.log_vars().detach().float())
            return dict(zip(w.task_names, eff.cpu().tolist()))
        return {}

    def log_epoch(self, state: FitState) -> None:
        rec = state.record
        offset = self.config.phase1_epochs if self.phase == 1 else 0
        line = {"phase": self.phase + 1, "epoch": offset + rec["epoch"], "step": state.step,
                "seconds": rec["seconds"], "train_loss": rec["train_loss"], "train_total": rec["train_total"],
                "val_loss": rec.get("val_loss"), "val_metric": rec.get("val_metric"),
                "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(state.optimizer.param_groups)},
                "loss_weights": self.loss_weights(), "skipped_steps": state.skipped_steps,
                "oom_steps": state.oom_steps, "attention_frozen": bool(self.attention._frozen) if self.attention is not None else None}
        line.update(self.diagnostics(rec))
        if self.adatt is not None:
            line["adatt_phase"] = self.epoch_adatt_phase  # the phase this epoch trained in
            w = self.adatt.last_weights
            line["transfer_weights"] = None if w is None else w.detach().cpu().tolist()
        line = _jsonable(line)
        self.records.append(line)
        if self.output_dir is not None and self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")

    def diagnostics(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The epoch line's oracle gaps (with `oracle`) and gate entropies (with `gate_weights`)."""
        out: dict[str, Any] = {}
        vm = record.get("val_metric")
        if self.oracle is not None and vm is not None:
            kinds = {t.name: t.kind for t in self.tasks}
            gaps = {t: float(metrics.oracle_gap(vm[t], o, c, kinds[t])) for t, (o, c) in self.oracle.items()}
            out["oracle_gap"] = gaps
            out["mean_oracle_gap"] = float(np.mean(list(gaps.values())))
        if self.gate_weights is not None and self.val_data is not None:
            batch = next(iter(_as_batches(self.val_data, self.config.eval_batch_size)))
            was = self.model.training
            self.model.eval()
            try:
                with torch.no_grad(), checks.validation(False):
                    w = self.gate_weights(*(x.to(self.device) for x in batch.inputs))
            finally:
                self.model.train(was)
            if w is not None:
                ent = normalized_entropy(w.float(), dim=-1).reshape(-1, w.shape[-2]).mean(0)  # [K]
                out["gate_entropy"] = dict(zip((t.name for t in self.tasks), ent.cpu().tolist()))
        return out

    def _rewrite_metrics(self) -> None:
        if self.output_dir is None or self.rank != 0:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        tmp = self.output_dir / "metrics.jsonl.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.output_dir / "metrics.jsonl")

    def open_bar(self, state: FitState) -> None:
        mode = self.config.progress
        on = mode == "on" or (mode == "auto" and sys.stderr.isatty())
        if not on or self.rank != 0:
            return
        from tqdm.auto import tqdm

        data = self.train_data
        n = math.ceil(len(data) / self.config.batch_size) if isinstance(data, TensorData) else (
            len(data) if hasattr(data, "__len__") else None)
        self.bar = tqdm(total=n, desc=f"phase {self.phase + 1} epoch {state.epoch}", unit="batch", leave=False)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self, state: FitState, mid_epoch: bool) -> dict[str, Any]:
        """Everything an exact resume needs (see the chapter's list)."""
        sd = lambda m: m.state_dict() if isinstance(m, nn.Module) else None  # noqa: E731
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
               "generator": self.epoch_generator if mid_epoch else state.generator.get_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        return {"phase": self.phase, "epoch": state.epoch, "mid_epoch": mid_epoch,
                "batch_index": state.batch_index if mid_epoch else 0, "step": state.step,
                "model": self.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
                "scaler": state.scaler.state_dict() if state.scaler is not None else None,
                "aggregate": sd(self.aggregate), "adatt": sd(self.adatt),
                "adatt_computer": sd(self.adatt.computer) if self.adatt is not None else None,
                "rng": rng, "epoch_sum": state.epoch_sum.detach().cpu(), "epoch_batches": state.epoch_batches,
                "skipped_steps": state.skipped_steps, "oom_steps": state.oom_steps,
                "early_stopping": {"best": self.best, "wait": self.wait}, "records": list(self.records),
                "config": self.config.to_dict()}

    def restore(self, b: dict[str, Any], state: FitState) -> None:
        """Load a checkpoint's states into the model, optimizer, scheduler, scaler, weighting, adaTT, RNGs."""
        self.model.load_state_dict(b["model"])
        state.optimizer.load_state_dict(b["optimizer"])
        if state.scheduler is not None and b["scheduler"] is not None:
            state.scheduler.load_state_dict(b["scheduler"])
        if state.scaler is not None and b["scaler"] is not None:
            state.scaler.load_state_dict(b["scaler"])
        if isinstance(self.aggregate, nn.Module) and b["aggregate"] is not None:
            self.aggregate.load_state_dict(b["aggregate"])
        if self.adatt is not None and b["adatt"] is not None:
            self.adatt.computer.load_state_dict(b["adatt_computer"])
            self.adatt.load_state_dict(b["adatt"])
        torch.set_rng_state(b["rng"]["torch"])
        np.random.set_state(b["rng"]["numpy"])
        random.setstate(b["rng"]["python"])
        if b["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(b["rng"]["cuda"])
        self.best, self.wait = b["early_stopping"]["best"], b["early_stopping"]["wait"]

    def checkpoint(self, state: FitState, mid_epoch: bool) -> Path | None:
        if self.output_dir is None or self.rank != 0:  # under DDP the processes hold the same states
            return None
        path = self.output_dir / f"ckpt-{self.phase:03d}-{state.step:08d}.pt"
        save_checkpoint(self.snapshot(state, mid_epoch), path)
        for old in checkpoints(self.output_dir)[:-self.config.keep_checkpoints]:
            old.unlink()
        return path

    def latest(self) -> dict[str, Any] | None:
        """The newest checkpoint in output_dir (None: none); a damaged newest one raises
        CheckpointError naming it and the previous one."""
        if self.output_dir is None:
            return None
        files = checkpoints(self.output_dir)
        if not files:
            return None
        try:
            return load_checkpoint(files[-1])
        except CheckpointError as err:
            prev = f"; the previous checkpoint {files[-2].name} is intact" if len(files) > 1 else ""
            raise CheckpointError(f"{err}{prev}") from err.__cause__


def _average_task_gradients(computer: TaskAffinityComputer, world: int) -> None:
    """adaTT under DDP: each process extracts the per-task gradients G [K, P] on its own shard
    (ADATT-2's extraction, unchanged), then G is averaged over the processes before the cosines
    (eq-adatt-ema) are taken: the mean of the shards' gradients is the global batch's gradient
    (equal shard sizes), so the affinity is the one a single process would measure."""
    extract = computer.task_gradients

    def task_gradients(losses):
        return _all_mean(extract(losses).contiguous(), world)
    computer.task_gradients = task_gradients


def _check_oracle(oracle, tasks: Sequence[Task]) -> dict[str, tuple[float, float]] | None:
    """oracle {task: (oracle metric, chance metric)} checked against the tasks and eq-oracle-gap."""
    if oracle is None:
        return None
    if not isinstance(oracle, Mapping) or not oracle:
        raise checks.InputTypeError(f"oracle must be a non-empty mapping {{task: (oracle, chance)}}; got {oracle!r}")
    kinds = {t.name: t.kind for t in tasks}
    unknown = sorted(set(oracle) - set(kinds))
    if unknown:
        raise checks.TaskError(f"oracle has task(s) {unknown} that the trainer lacks; its tasks are {sorted(kinds)}")
    out = {}
    for name, pair in oracle.items():
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise checks.InputTypeError(f"oracle[{name!r}] must be a pair (oracle metric, chance metric); got {pair!r}")
        o = check_float(f"oracle[{name!r}][0]", pair[0])
        c = check_float(f"oracle[{name!r}][1]", pair[1])
        metrics.oracle_gap(o, o, c, kinds[name])  # ValueError when the oracle is not better than chance
        out[name] = (o, c)
    return out


def _system_gates(system: nn.Module) -> Callable[..., torch.Tensor] | None:
    """A PLESystem's routing weights for the gate-entropy record: Stage 2's [B, K, E] (Stage 1's
    when there is no Stage 2)."""
    if not hasattr(system, "run"):
        return None

    def gates(*inputs):
        out = system.run(system._as_inputs(inputs))
        return out.gates2 if out.gates2 is not None else out.gates1
    return gates


def oracle_reference(world, data, tasks: Sequence[str], split: str = "val") -> dict[str, tuple[float, float]]:
    """{task: (oracle metric, chance metric)} of the registered `tasks` on `split` of a prepared
    world (`ple.data.pipeline.prepare_world`), for `Trainer(oracle=...)`: the Bayes-optimal
    prediction `world.oracle` scored on the split's labels, and the best input-blind score."""
    from ple.data import world as W

    check_choice("split", split, ("train", "val", "test"))
    if isinstance(tasks, str) or not tasks:
        raise checks.TaskError(f"tasks must be a non-empty sequence of task names; got {tasks!r}")
    tasks = check_unique("tasks", tasks)
    td = data.tensor_data(split, tuple(tasks))
    rows = data.splits[split]
    orc = W.oracle(world, tuple(tasks))
    ref = {}
    for t in tasks:
        mask = (td.masks or {}).get(t)
        y, p = td.targets[t].numpy(), np.asarray(orc[t])[rows]
        if mask is not None:
            keep = mask.numpy() > 0
            y, p = y[keep], p[keep]
        ref[t] = (metrics.task_metric(t, y, p), metrics.task_chance(t, y))
    return ref


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def run_config(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One run from a JSON-like spec (what `python -m ple.train --config` reads):

        {"output_dir": "runs/ci",                       # checkpoints + metrics.jsonl (required)
         "world": {"customers": 2000, "seed": 0, "profile": "ci", "planted_pairs": [], "planted_strength": 1.0},
         "pipeline": {...PipelineConfig fields...},
         "system": {"preset": "ci", ...SystemConfig overrides (e.g. "tasks")},
         "train": {...TrainConfig fields...},
         "device": "auto", "resume": true}

    Generates the world, runs the offline pipeline on its training split, builds the
    `PLESystem` and trains it with `Trainer.for_system`; returns the epoch records."""
    from ple.data import world as W
    from ple.data.pipeline import PipelineConfig, prepare_world, split_indices
    from ple.system import PLESystem, preset

    if not isinstance(spec, Mapping):
        raise checks.InputTypeError(f"spec must be a mapping (the config's sections); got {type(spec).__name__}")
    spec = dict(spec)
    unknown = sorted(set(spec) - {"output_dir", "world", "pipeline", "system", "train", "device", "resume"})
    if unknown:
        raise HyperparameterError(f"spec (the config) has unknown section(s) {unknown}; expected output_dir, world, pipeline, "
                                  "system, train, device, resume")
    if "output_dir" not in spec:
        raise HyperparameterError("config needs output_dir (where checkpoints and metrics.jsonl go)")
    w = dict(spec.get("world", {}))
    n = check_int("world.customers", w.pop("customers", 2000), 10)
    wseed = check_int("world.seed", w.pop("seed", 0), 0)
    pairs = tuple(tuple(p) for p in w.pop("planted_pairs", ()))
    world = W.generate(n, seed=wseed, profile=w.pop("profile", "ci"), planted_pairs=pairs, **w)
    data = prepare_world(world, PipelineConfig(**spec.get("pipeline", {})), splits=split_indices(n, wseed))
    sys_spec = dict(spec.get("system", {}))
    cfg = preset(sys_spec.pop("preset", "ci"), **{**data.dims, **{k: tuple(v) if isinstance(v, list) else v
                                                                  for k, v in sys_spec.items()}})
    train_cfg = TrainConfig.from_dict(spec.get("train", {}))
    device = spec.get("device", "auto")
    rank, world_size, dist_device = init_distributed()  # (0, 1, ...) without torchrun
    if world_size > 1:
        device = dist_device
    else:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    seed_everything(train_cfg.seed)
    system = PLESystem(cfg).to(device)
    val = data.tensor_data("val", cfg.tasks)
    if world_size > 1:  # this process's shard of every global batch (the pipeline's distributed split)
        if train_cfg.batch_size % world_size:
            raise HyperparameterError(f"train.batch_size {train_cfg.batch_size} must be a multiple of the "
                                      f"{world_size} processes (the global batch is split evenly)")
        train = data.stream("train", train_cfg.batch_size // world_size, tasks=cfg.tasks, seed=train_cfg.seed,
                            num_replicas=world_size, rank=rank)
    else:
        train = data.tensor_data("train", cfg.tasks)
        if device.type != "cpu":
            train = train.to(device)
    if device.type != "cpu":
        val = val.to(device)
    oracle = {}
    for t, (o, c) in oracle_reference(world, data, cfg.tasks).items():
        try:
            metrics.oracle_gap(o, o, c, metrics.task_kind(t))
            oracle[t] = (o, c)
        except ValueError:  # the oracle is not better than chance on this split: no gap for this task
            pass
    trainer = Trainer.for_system(system, train, val, train_cfg, output_dir=spec["output_dir"],
                                 resume=bool(spec.get("resume", True)), device=device, oracle=oracle or None)
    records = trainer.run()
    if rank == 0:
        system.save(Path(spec["output_dir"]) / "system.pt")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ple.train --config CONFIG.json`: one run (see `run_config`)."""
    parser = argparse.ArgumentParser(prog="python -m ple.train", description="Train the PLE system (ple.train).")
    parser.add_argument("--config", required=True, help="a JSON file: output_dir, world, pipeline, system, train")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        spec = json.load(f)
    rank = 0
    try:
        records = run_config(spec)
        rank = _world()[0]
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # under torchrun
            dist.destroy_process_group()
    if rank != 0:  # one summary line per run, not per process
        return 0
    last = records[-1] if records else {}
    print(json.dumps({"epochs": len(records), "last": {k: last.get(k) for k in ("phase", "epoch", "val_loss")}}))
    return 0


if __name__ == "__main__" and "ipykernel" not in sys.modules:  # `python -m ple.train`, not the chapter's kernel
    raise SystemExit(main())


ABLATION_TASKS = ("engagement", "spending_bucket", "ltv", "balance_util", "ctr", "churn")
ABLATION_PLANTED = (("engagement", "spending_bucket", 1), ("ltv", "balance_util", -1))  # synergy, conflict
ABLATION_METHODS = ("equal", "fixed", "uncertainty", "gradnorm", "dwa", "adatt", "uncertainty+adatt", "adatt static",
                    "upgrad", "pcgrad")
ABLATION_PROFILES = {
    # the chapter's default run (inside its 60 s budget on 2 cores)
    "small": dict(customers=800, epochs=2, seeds=2, batch_size=128, lr=3e-3, grad_interval=2),
    # the stored ablation (benchmarks/ablation_adatt.py), also a papermill parameter set of the chapter
    "full": dict(customers=2000, epochs=3, seeds=5, batch_size=256, lr=3e-3, grad_interval=2),
}


def ablation_profile(profile: str = "small", **overrides: Any) -> dict[str, Any]:
    """The sizes of an ablation profile ("small": the chapter's default, "full": the stored
    benchmark), with `overrides` (keys of the profile) applied and checked."""
    check_choice("profile", profile, tuple(ABLATION_PROFILES))
    out = dict(ABLATION_PROFILES[profile])
    unknown = sorted(set(overrides) - set(out))
    if unknown:
        raise HyperparameterError(f"ablation profile has no field(s) {unknown}; known: {sorted(out)}")
    out.update({k: v for k, v in overrides.items() if v is not None})
    for k in ("customers", "epochs", "seeds", "batch_size", "grad_interval"):
        out[k] = check_int(k, out[k], 100 if k == "customers" else 1)
    out["lr"] = check_float("lr", out["lr"], 0.0, low_open=True)
    return out


@dataclass
class AblationWorld:
    """One prepared world of the ablation: the world, its pipeline output, the train / val
    `TensorData` of `ABLATION_TASKS`, and their oracle references (`oracle_reference`)."""

    world: Any
    data: Any
    train: TensorData
    val: TensorData
    oracle: dict[str, tuple[float, float]]
    planted: bool


def ablation_world(customers: int, seed: int = 0, planted: bool = True) -> AblationWorld:
    """The customer world of the ablation (`ci` profile; the planted synergy / conflict pairs of
    ADATT-3 on or off), split 60 / 20 / 20 and run through the offline pipeline."""
    from ple.data import world as W
    from ple.data.pipeline import PipelineConfig, prepare_world

    customers = check_int("customers", customers, 100)
    seed = check_int("seed", seed, 0)
    if not isinstance(planted, bool):
        raise checks.InputTypeError(f"planted must be a bool; got {planted!r}")
    world = W.generate(customers, seed=seed, profile="ci", planted_pairs=ABLATION_PLANTED if planted else ())
    splits = dict(zip(("train", "val", "test"), np.split(np.arange(customers), [int(0.6 * customers),
                                                                                 int(0.8 * customers)])))
    data = prepare_world(world, PipelineConfig(seed=seed, lightgcn_epochs=5, hmm_iter=3,
                                               hmm_fit_sequences=min(100, customers // 10),
                                               gmm_fit_rows=min(1000, customers // 2)), splits=splits)
    return AblationWorld(world, data, data.tensor_data("train", ABLATION_TASKS), data.tensor_data("val", ABLATION_TASKS),
                         oracle_reference(world, data, ABLATION_TASKS), planted)


def ablation_run(method: str, seed: int, prepared: AblationWorld, *, epochs: int, batch_size: int, lr: float,
                 grad_interval: int = 2, coeffs: Sequence[float] | None = None, preset_name: str = "ci",
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """One cell of the ablation: `PLESystem` (preset `preset_name`, `ABLATION_TASKS`) trained by
    `Trainer` for `epochs` phase-1 epochs with `method` (one of `ABLATION_METHODS`), model and
    shuffle seeded by `seed`. "adatt static" needs `coeffs`: adaTT's mean effective loss
    coefficients of the "adatt" run with the same seed (its "coeffs"). Returns {gap: {task:
    normalised oracle gap on val}, mean_gap, cpu_s_per_epoch, wall_s_per_epoch, coeffs, records}."""
    import time

    from ple.losses import FixedWeighting
    from ple.system import PLESystem, preset

    check_choice("method", method, ABLATION_METHODS)
    seed = check_int("seed", seed, 0)
    if method == "adatt static" and coeffs is None:
        raise HyperparameterError("method 'adatt static' needs coeffs (the 'adatt' run's mean loss coefficients)")
    if coeffs is not None and len(coeffs) != len(ABLATION_TASKS):
        raise checks.ShapeError(f"coeffs has {len(coeffs)} entries; expected {len(ABLATION_TASKS)} (one per task)")
    if not isinstance(prepared, AblationWorld):
        raise checks.InputTypeError(f"prepared must be an AblationWorld (ablation_world); got {type(prepared).__name__}")
    device = torch.device(device)
    weighting = {"fixed": "fixed", "uncertainty": "uncertainty", "uncertainty+adatt": "uncertainty"}.get(method, "equal")
    torch.manual_seed(seed)
    system = PLESystem(preset(preset_name, tasks=ABLATION_TASKS, transfer_edges=(), loss_weighting=weighting,
                              **prepared.data.dims)).to(device)
    epochs = check_int("epochs", epochs, 1)
    cfg = TrainConfig(phase1_epochs=epochs, phase2_epochs=0, batch_size=batch_size, eval_batch_size=4096, lr=lr,
                      warmup_epochs=0, adatt_warmup_epochs=0, adatt_freeze_epoch=epochs,
                      adatt_grad_interval=grad_interval, progress="off", patience=0, seed=seed,
                      adatt=method in ("adatt", "uncertainty+adatt"),
                      weighting={"gradnorm": "gradnorm", "dwa": "dwa", "upgrad": "upgrad",
                                 "pcgrad": "pcgrad"}.get(method, "system"))
    train, val = prepared.train, prepared.val
    if device.type != "cpu":
        train, val = train.to(device), val.to(device)
    if method == "adatt static":
        tr = Trainer(system.for_fit(), system.fit_tasks(), train, val, cfg, module=system,
                     aggregate=FixedWeighting(ABLATION_TASKS, dict(zip(ABLATION_TASKS, coeffs))),
                     attention=system.stage2, returns_aux=True, oracle=prepared.oracle,
                     gate_weights=_system_gates(system))
    else:
        tr = Trainer.for_system(system, train, val, cfg, oracle=prepared.oracle)
    steps = []
    if tr.adatt is not None:
        def coeff(state, ad=tr.adatt):
            if ad.last_weights is not None:  # ADATT-3's effective coefficient 1 + lambda sum_j W_jk
                steps.append(1 + ad.transfer_lambda * (ad.last_weights * (~ad.last_binds)[:, None]).sum(0))
        tr.step_hooks.append(coeff)
    c0, w0 = time.process_time(), time.perf_counter()
    rec = tr.run()
    cpu, wall = (time.process_time() - c0) / len(rec), (time.perf_counter() - w0) / len(rec)
    if isinstance(tr.aggregate, JacobianDescent):
        tr.aggregate.remove()
    gap = rec[-1]["oracle_gap"]
    return dict(gap=gap, mean_gap=rec[-1]["mean_oracle_gap"], cpu_s_per_epoch=cpu, wall_s_per_epoch=wall,
                coeffs=torch.stack(steps).mean(0).tolist() if steps else None, records=rec)
