"""ple.train -- generated from book/adatt4_training_loop.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['PRECISIONS', 'WEIGHTINGS', 'TrainConfig', 'warm_restart_schedule', 'lr_closed_form', 'resolve_precision', 'parameter_groups', 'CheckpointError', 'CHECKPOINT_VERSION', 'save_checkpoint', 'load_checkpoint', 'checkpoints', 'Trainer', 'run_config', 'main']

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

from ple import checks, seed_everything
from ple.adatt import TaskAffinityComputer
from ple.adatt_transfer import AdaTT
from ple.checks import HyperparameterError, check_choice, check_float, check_int
from ple.fit import Callback, FitState, Task, TensorData, WeightedSum, fit
from ple.weighting import DWA_TEMPERATURE, GRADNORM_ALPHA, DWA, GradNorm


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WEIGHTINGS = ("system", "gradnorm", "dwa")


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
    config), "gradnorm" (`gradnorm_alpha`) or "dwa" (`dwa_temperature`); `adatt` with its
    `adatt_*` settings and `transfer_lambda`. `precision`: "auto" (bf16 on a GPU that has it,
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
    adatt_warmup_epochs: int = 10
    adatt_freeze_epoch: int = 28
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
    cosine = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=restart_period, T_mult=restart_mult,
                                                                  eta_min=min_lr)
    if warmup_epochs == 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=start_factor, end_factor=1.0,
                                               total_iters=warmup_epochs)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup_epochs])


def lr_closed_form(epoch: int, base_lr: float, warmup_epochs: int, *, start_factor: float = 0.1,
                   restart_period: int = 10, restart_mult: int = 2, min_lr: float = 0.0) -> float:
    """eq-lr-schedule in closed form: the lr of 0-based epoch `epoch`.

        e < W:  lr = base (f + (1 - f) e / W)
        e >= W: t = e - W; cycle i = the largest with T_0 (m^i - 1)/(m - 1) <= t (i = floor(t / T_0) when m = 1),
                t_i = t - T_0 (m^i - 1)/(m - 1), T_i = T_0 m^i,
                lr = min + (base - min) (1 + cos(pi t_i / T_i)) / 2
    """
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


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (truncated, corrupt, or not a checkpoint of this trainer)."""


CHECKPOINT_VERSION = 1


def save_checkpoint(blob: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `blob` to `path` atomically: a temporary file in the same folder, flushed and synced,
    then `os.replace` (a reader sees the old file or the new one, never half of one)."""
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
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is truncated "
                              "or corrupt: delete it to resume from the previous checkpoint") from err
    if not isinstance(blob, dict) or blob.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a ple.train checkpoint of version {CHECKPOINT_VERSION}")
    return blob


def checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoints in `folder`, oldest first (names ckpt-PPP-SSSSSSSS.pt: phase, step)."""
    return sorted(Path(folder).glob("ckpt-*.pt"))


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
        if self.trainer.config.skip_nonfinite and not bool(torch.isfinite(state.loss.detach())):  # the posts' isfinite
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
    `PLESystem`.
    """

    def __init__(self, model: nn.Module, tasks: Sequence[Task], train, val=None, config: TrainConfig | None = None, *,
                 module: nn.Module | None = None, aggregate: Any = None, adatt: Any = None,
                 attention: nn.Module | None = None, returns_aux: bool = False, output_dir=None,
                 resume: bool = True, callbacks: Sequence[Callback] = (), device=None) -> None:
        self.config = config if config is not None else TrainConfig()
        if not isinstance(self.config, TrainConfig):
            raise checks.InputTypeError(f"config must be a TrainConfig; got {type(self.config).__name__}")
        self.model, self.module, self.tasks = model, module if module is not None else model, tuple(tasks)
        self.train_data, self.val_data = train, val
        self.aggregate = aggregate if aggregate is not None else WeightedSum()
        self.adatt, self.attention, self.returns_aux = adatt, attention, returns_aux
        if adatt is not None and adatt.inner is not self.aggregate:
            raise HyperparameterError("adatt.inner must be the trainer's aggregate (adaTT re-weights its losses)")
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
        else:
            aggregate = system.aggregator()
        adatt = None
        if cfg.adatt:
            comp = TaskAffinityComputer(names, system.pool, grad_interval=cfg.adatt_grad_interval)
            adatt = AdaTT(comp, warmup_epochs=cfg.adatt_warmup_epochs, freeze_epoch=cfg.adatt_freeze_epoch,
                          transfer_lambda=cfg.transfer_lambda, inner=aggregate)
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
        cbs += [*self.callbacks, _Keeper(self)]
        self.phase_optimizer = self.optimizer(phase)
        fit(self.model, self.train_data, self.val_data, tasks=self.tasks, epochs=epochs, batch_size=c.batch_size,
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
        if self.adatt is not None:
            line["adatt_phase"] = self.epoch_adatt_phase  # the phase this epoch trained in
            w = self.adatt.last_weights
            line["transfer_weights"] = None if w is None else w.detach().cpu().tolist()
        line = _jsonable(line)
        self.records.append(line)
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")

    def _rewrite_metrics(self) -> None:
        if self.output_dir is None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        tmp = self.output_dir / "metrics.jsonl.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.output_dir / "metrics.jsonl")

    def open_bar(self, state: FitState) -> None:
        mode = self.config.progress
        on = mode == "on" or (mode == "auto" and sys.stderr.isatty())
        if not on:
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
        if self.output_dir is None:
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

    spec = dict(spec)
    unknown = sorted(set(spec) - {"output_dir", "world", "pipeline", "system", "train", "device", "resume"})
    if unknown:
        raise HyperparameterError(f"config has unknown section(s) {unknown}; expected output_dir, world, pipeline, "
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
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    seed_everything(train_cfg.seed)
    system = PLESystem(cfg).to(device)
    train, val = data.tensor_data("train", cfg.tasks), data.tensor_data("val", cfg.tasks)
    if device.type != "cpu":
        train, val = train.to(device), val.to(device)
    trainer = Trainer.for_system(system, train, val, train_cfg, output_dir=spec["output_dir"],
                                 resume=bool(spec.get("resume", True)), device=device)
    records = trainer.run()
    system.save(Path(spec["output_dir"]) / "system.pt")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ple.train --config CONFIG.json`: one run (see `run_config`)."""
    parser = argparse.ArgumentParser(prog="python -m ple.train", description="Train the PLE system (ple.train).")
    parser.add_argument("--config", required=True, help="a JSON file: output_dir, world, pipeline, system, train")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        spec = json.load(f)
    records = run_config(spec)
    last = records[-1] if records else {}
    print(json.dumps({"epochs": len(records), "last": {k: last.get(k) for k in ("phase", "epoch", "val_loss")}}))
    return 0


if __name__ == "__main__" and "ipykernel" not in sys.modules:  # `python -m ple.train`, not the chapter's kernel
    raise SystemExit(main())
