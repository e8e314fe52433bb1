"""The input contract of ple.train and ple.weighting (tests/test_contract.py's table for the rest).

Every callable in the two modules' ``__all__`` either appears in CASES, where it is fed a bad input
of one class (shape, dtype, nan, range, empty, hyper, dup) and must raise a ValueError or TypeError
naming the argument, raised from ple's own code, or in EXEMPT with the reason it takes no input to
check. A new public name without a row fails `test_every_public_callable_is_in_the_table`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import ple.train
import ple.weighting
from ple.fit import Task, TensorData

MODULES = (ple.train, ple.weighting)
CLASSES = ("shape", "dtype", "nan", "range", "empty", "hyper", "dup")


@dataclass(frozen=True)
class Case:
    entry: str
    kind: str
    arg: str
    call: Callable[[object], object]

    @property
    def id(self) -> str:
        return f"{self.entry}:{self.kind}:{self.arg}"


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


def _public() -> dict[str, object]:
    out = {}
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not isinstance(obj, (dict, tuple, list)):
                out[f"{module.__name__}.{name}"] = obj
    return out


def test_every_public_callable_is_in_the_table():
    public = _public()
    covered = {c.entry for c in CASES} | set(EXEMPT)
    missing = sorted(set(public) - covered)
    assert not missing, f"public entry points with no contract case and no exemption: {missing}"
    stale = sorted(covered - set(public))
    assert not stale, f"rows for names that are not public: {stale}"
    assert all(reason.strip() for reason in EXEMPT.values())
    assert {c.kind for c in CASES} <= set(CLASSES)


def _resolve(entry: str):
    module, name = entry.rsplit(".", 1)
    return getattr({m.__name__: m for m in MODULES}[module], name)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_an_error_naming_the_argument(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a case would write lands in a scratch folder
    f = _resolve(case.entry)
    with pytest.raises((ValueError, TypeError)) as err:
        case.call(f)
    assert case.arg in str(err.value), f"{case.entry} raised {type(err.value).__name__}: {err.value}"
    assert type(err.value).__module__.startswith(("ple", "builtins")), type(err.value)
    tb = err.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    origin = inspect.getmodule(tb.tb_frame)
    assert origin is not None and origin.__name__.startswith("ple"), (
        f"{case.entry}: the error was raised in {origin.__name__ if origin else '?'}, not by ple's checks"
    )
