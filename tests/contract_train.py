"""The input-contract rows of ple.train and ple.weighting.

tests/test_contract.py joins CASES and EXEMPT to its table: the same completeness test (every
callable of ``__all__`` has a row or a reasoned exemption) and the same bad-input test run on them.
"""

from __future__ import annotations

import torch
from contract import Case
from torch import nn

from ple.fit import Task, TensorData


def _opt():
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


def _model():
    return nn.Linear(2, 2)


def _trainer_args(**changes):
    data = TensorData(torch.zeros(4, 2), {"a": torch.zeros(4), "b": torch.zeros(4)})
    args = dict(model=_model(), tasks=(Task("a", "regression"), Task("b", "regression")), train=data)
    args.update(changes)
    return args


def _trainer(f, **changes):
    a = _trainer_args(**changes)
    return f(a.pop("model"), a.pop("tasks"), a.pop("train"), **a)


C = Case
T, W = "ple.train", "ple.weighting"
CASES: list[Case] = [
    C(f"{T}.TrainConfig", "hyper", "lr", lambda f: f(lr=-1.0)),
    C(f"{T}.TrainConfig", "range", "batch_size", lambda f: f(batch_size=0)),
    C(f"{T}.TrainConfig", "dtype", "phase1_epochs", lambda f: f(phase1_epochs=1.5)),
    C(f"{T}.TrainConfig", "hyper", "weighting", lambda f: f(weighting="softmax")),
    C(f"{T}.TrainConfig", "range", "adatt_freeze_epoch", lambda f: f(adatt_warmup_epochs=4, adatt_freeze_epoch=4)),
    C(f"{T}.TrainConfig", "nan", "lr", lambda f: f(lr=float("nan"))),
    C(f"{T}.warm_restart_schedule", "range", "warmup_epochs", lambda f: f(_opt(), -1)),
    C(f"{T}.warm_restart_schedule", "hyper", "start_factor", lambda f: f(_opt(), 2, start_factor=0.0)),
    C(f"{T}.warm_restart_schedule", "dtype", "optimizer", lambda f: f("adamw", 2)),
    C(f"{T}.warm_restart_schedule", "range", "restart_period", lambda f: f(_opt(), 2, restart_period=0)),
    C(f"{T}.lr_closed_form", "range", "epoch", lambda f: f(-1, 1e-3, 2)),
    C(f"{T}.lr_closed_form", "nan", "base_lr", lambda f: f(0, float("inf"), 2)),
    C(f"{T}.lr_closed_form", "range", "restart_mult", lambda f: f(3, 1e-3, 2, restart_mult=0)),
    C(f"{T}.resolve_precision", "hyper", "precision", lambda f: f("fp8", torch.device("cpu"))),
    C(f"{T}.resolve_precision", "dtype", "device", lambda f: f("fp32", 3)),
    C(f"{T}.parameter_groups", "dtype", "module", lambda f: f("model", 1e-3, 0.0)),
    C(f"{T}.parameter_groups", "hyper", "lr", lambda f: f(_model(), 0.0, 0.0)),
    C(f"{T}.parameter_groups", "range", "weight_decay", lambda f: f(_model(), 1e-3, -0.1)),
    C(f"{T}.save_checkpoint", "dtype", "blob", lambda f: f([1, 2], "x.pt")),
    C(f"{T}.load_checkpoint", "empty", "path", lambda f: f("/nonexistent/ckpt-000-00000000.pt")),
    C(f"{T}.checkpoints", "dtype", "folder", lambda f: f(3.5)),
    C(f"{T}.init_distributed", "hyper", "backend", lambda f: f("mpi")),
    C(f"{T}.Trainer", "dtype", "config", lambda f: _trainer(f, config={"lr": 1e-3})),
    C(f"{T}.Trainer", "empty", "tasks", lambda f: _trainer(f, tasks=())),
    C(f"{T}.Trainer", "dup", "tasks", lambda f: _trainer(f, tasks=(Task("a", "regression"), Task("a", "regression")))),
    C(f"{T}.Trainer", "dtype", "model", lambda f: _trainer(f, model="net")),
    C(f"{T}.Trainer", "range", "oracle", lambda f: _trainer(f, oracle={"zz": (0.5, 1.0)})),
    C(f"{T}.Trainer", "nan", "oracle", lambda f: _trainer(f, oracle={"a": (float("nan"), 1.0)})),
    C(f"{T}.Trainer", "dtype", "gate_weights", lambda f: _trainer(f, gate_weights=3)),
    C(f"{T}.oracle_reference", "hyper", "split", lambda f: f(None, None, ("ctr",), split="holdout")),
    C(f"{T}.oracle_reference", "dup", "tasks", lambda f: f(None, None, ("ctr", "ctr"))),
    C(f"{T}.oracle_reference", "empty", "tasks", lambda f: f(None, None, ())),
    C(f"{T}.run_config", "hyper", "spec", lambda f: f({"output_dir": "x", "optimiser": {}})),
    C(f"{T}.run_config", "dtype", "spec", lambda f: f(["output_dir"])),
    C(f"{T}.ablation_profile", "hyper", "profile", lambda f: f("huge")),
    C(f"{T}.ablation_profile", "range", "epochs", lambda f: f("small", epochs=0)),
    C(f"{T}.ablation_world", "range", "customers", lambda f: f(5)),
    C(f"{T}.ablation_world", "dtype", "planted", lambda f: f(200, planted="yes")),
    C(f"{T}.ablation_run", "hyper", "method", lambda f: f("mgda", 0, None, epochs=1, batch_size=8, lr=1e-3)),
    C(f"{T}.ablation_run", "empty", "coeffs", lambda f: f("adatt static", 0, None, epochs=1, batch_size=8, lr=1e-3)),
    C(f"{T}.ablation_run", "shape", "coeffs", lambda f: f("equal", 0, None, epochs=1, batch_size=8, lr=1e-3,
                                                        coeffs=[1.0, 1.0])),
    C(f"{T}.ablation_run", "dtype", "prepared", lambda f: f("equal", 0, None, epochs=1, batch_size=8, lr=1e-3)),
    C(f"{W}.GradNorm", "hyper", "alpha", lambda f: f(("a", "b"), _model(), alpha=-1.0)),
    C(f"{W}.GradNorm", "empty", "task_names", lambda f: f((), _model())),
    C(f"{W}.GradNorm", "dup", "task_names", lambda f: f(("a", "a"), _model())),
    C(f"{W}.dwa_weights", "shape", "history", lambda f: f(torch.ones(3))),
    C(f"{W}.dwa_weights", "nan", "history", lambda f: f(torch.tensor([[1.0, float("nan")], [1.0, 1.0]]))),
    C(f"{W}.dwa_weights", "hyper", "temperature", lambda f: f(torch.ones(2, 2), temperature=0.0)),
    C(f"{W}.dwa_weights", "dtype", "history", lambda f: f([[1.0, 1.0], [1.0, 1.0]])),
    C(f"{W}.DWA", "hyper", "temperature", lambda f: f(("a", "b"), temperature=-2.0)),
    C(f"{W}.DWA", "empty", "task_names", lambda f: f(())),
    C(f"{W}.DWA", "dup", "task_names", lambda f: f(("a", "b", "a"))),
    C(f"{W}.JacobianDescent", "hyper", "aggregator", lambda f: f(("a", "b"), _model(), "mgda-ish")),
    C(f"{W}.JacobianDescent", "dup", "task_names", lambda f: f(("a", "a"), _model())),
    C(f"{W}.JacobianDescent", "dtype", "shared", lambda f: f(("a", "b"), "pool")),
    C(f"{W}.JacobianDescent", "empty", "task_names", lambda f: f((), _model())),
]

EXEMPT: dict[str, str] = {
    f"{T}.CheckpointError": "an exception class; it is raised, not called with user input",
    f"{T}.main": "a command line: argparse reports a missing or unknown option and exits with status 2; the "
                 "file's contents go to run_config, whose rows are above",
    f"{T}.AblationWorld": "a record that ablation_world fills from its own checked outputs",
}
