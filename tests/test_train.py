"""ple.train: phases, freezing, schedule, precision, non-finite skip, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ple.train as ple_train
from ple.checks import HyperparameterError
from ple.fit import TensorData
from ple.system import PLESystem, preset, synthetic_system_inputs
from ple.train import (
    CheckpointError,
    TrainConfig,
    Trainer,
    checkpoints,
    load_checkpoint,
    lr_closed_form,
    parameter_groups,
    resolve_precision,
    save_checkpoint,
    warm_restart_schedule,
)

TASKS = ("ctr", "churn", "ltv", "nba")
ROOT = Path(__file__).resolve().parents[1]


def tiny_system(seed: int = 0, **overrides) -> PLESystem:
    torch.manual_seed(seed)
    return PLESystem(preset("ci", tasks=TASKS, transfer_edges=(), num_clusters=4, diagram_channels=2, **overrides))


def tiny_data(system: PLESystem, n: int = 96, seed: int = 0) -> TensorData:
    x = synthetic_system_inputs(system.config, n, seq_len=6, n_points=4, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    targets = {}
    for name, spec in system.specs.items():
        if spec.task_type == "binary":
            targets[name] = (torch.rand(n, generator=g) < 0.3).float()
        elif spec.task_type == "multiclass":
            targets[name] = torch.randint(0, spec.num_classes, (n,), generator=g)
        else:
            shape = (n,) if spec.output_dim == 1 else (n, spec.output_dim)
            targets[name] = torch.randn(*shape, generator=g)
    return TensorData(x.as_tuple(), targets)


SMALL = dict(phase1_epochs=2, phase2_epochs=1, batch_size=32, eval_batch_size=96, warmup_epochs=1,
             phase2_warmup_epochs=1, adatt_warmup_epochs=0, adatt_freeze_epoch=1, adatt_grad_interval=2,
             progress="off", patience=0)


def make_trainer(tmp: Path | None, seed: int = 0, **changes) -> tuple[Trainer, PLESystem]:
    system = tiny_system(seed)
    data = tiny_data(tiny_system(0))
    cfg = TrainConfig(**{**SMALL, **changes})
    return Trainer.for_system(system, data, data, cfg, output_dir=tmp), system


def test_two_phases_freeze_and_restore(tmp_path):
    tr, system = make_trainer(tmp_path)
    records = tr.run()
    assert [r["phase"] for r in records] == [1, 1, 2] and [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["adatt_phase"] for r in records[:2]] == ["dynamic", "frozen"] and "adatt_phase" not in records[2]
    assert records[1]["attention_frozen"] and bool(system.stage2.frozen)  # CGC-adaTT sync at freeze_epoch
    assert tr.adatt is not None  # adaTT restored after phase 2
    assert not any(p.requires_grad for p in system.pool.parameters())
    names = {g["name"] for g in tr.phase_optimizer.param_groups}
    assert not any(n.startswith("pool") for n in names) and "rest" in names
    pool_ids = {id(p) for p in system.pool.parameters()}
    assert not any(id(p) in pool_ids for g in tr.phase_optimizer.param_groups for p in g["params"])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == records and set(lines[0]["loss_weights"]) == set(TASKS)


def test_adatt_restored_when_phase2_fails(tmp_path):
    tr, system = make_trainer(None)
    adatt = tr.adatt

    def boom(state):
        if tr.phase == 1:
            raise RuntimeError("stop")

    tr.step_hooks.append(boom)
    with pytest.raises(RuntimeError, match="stop"):
        tr.run()
    assert tr.adatt is adatt


def test_phase2_resets_early_stopping_optimizer_and_schedule():
    from types import SimpleNamespace

    tr, system = make_trainer(None, patience=2)
    for value, stop in ((1.0, False), (0.5, False), (0.7, False), (0.6, True)):
        st = SimpleNamespace(record={"val_total": value, "train_total": 0.0}, stop=False)
        tr.early_stopping(st)
        assert st.stop is stop
    seen = []

    def probe(state):
        seen.append((tr.phase, tr.best, tr.wait, id(state.optimizer), state.optimizer.param_groups[-1]["lr"]))

    tr.step_hooks.append(probe)
    tr.run()
    first2 = next(s for s in seen if s[0] == 1)
    last1 = [s for s in seen if s[0] == 0][-1]
    assert first2[3] != last1[3]  # a new optimizer
    assert first2[2] == 0 and (first2[1] == math.inf or first2[1] < 1e30)  # early stopping reset
    assert first2[4] == pytest.approx(tr.config.lr * tr.config.warmup_start_factor)  # the schedule restarted


def test_lr_trace_matches_closed_form():
    p = torch.nn.Parameter(torch.zeros(1))
    for warmup in (5, 2, 0):
        opt = torch.optim.AdamW([{"params": [p], "lr": 5e-4}])
        sched = warm_restart_schedule(opt, warmup)
        for e in range(80):
            assert opt.param_groups[0]["lr"] == pytest.approx(lr_closed_form(e, 5e-4, warmup), rel=1e-9, abs=1e-15)
            opt.step()
            sched.step()


def test_parameter_groups_per_expert_with_hgcn_slower():
    system = tiny_system()
    groups = parameter_groups(system, 5e-4, 0.01, lr_scale={"pool.experts.hgcn": 0.2})
    by = {g["name"]: g for g in groups}
    assert by["pool.experts.hgcn"]["lr"] == pytest.approx(1e-4) and by["pool.experts.deepfm"]["lr"] == 5e-4
    assert sum(len(g["params"]) for g in groups) == len(list(system.parameters()))
    frozen = parameter_groups(system, 5e-4, 0.01, exclude=("pool",))
    assert all(not g["name"].startswith("pool") for g in frozen)


def test_precision_choice():
    assert resolve_precision("auto", torch.device("cpu")) == (None, False)
    assert resolve_precision("fp16", torch.device("cpu")) == (torch.float16, True)
    assert resolve_precision("bf16", torch.device("cpu")) == (torch.bfloat16, False)
    with pytest.raises(HyperparameterError, match="precision"):
        TrainConfig(precision="fp8")


def test_bf16_autocast_run_keeps_fp32_losses(tmp_path):
    # the optimal-transport expert's Sinkhorn backward does not run under bf16 autocast yet: left out here
    experts = ("deepfm", "lightgcn", "hgcn", "temporal", "perslay", "causal")
    overrides = tuple(kv for kv in preset("ci").expert_overrides if kv[0] in experts)
    system = tiny_system(0, experts=experts, expert_overrides=overrides)
    data = tiny_data(tiny_system(0))
    cfg = TrainConfig(**{**SMALL, "precision": "bf16", "phase1_epochs": 1, "phase2_epochs": 0, "adatt": False})
    tr = Trainer.for_system(system, data, data, cfg)
    records = tr.run()
    assert all(math.isfinite(v) for v in records[0]["train_loss"].values())
    assert all(p.dtype == torch.float32 for p in system.parameters())


def test_non_finite_loss_skips_the_batch_and_counts_it():
    tr, system = make_trainer(None, phase1_epochs=1, phase2_epochs=0, adatt=False)
    calls = {"n": 0}
    inner = tr.aggregate

    def poisoned(losses, state):
        calls["n"] += 1
        loss = inner(losses, state)
        return loss * float("nan") if calls["n"] == 2 else loss

    tr.aggregate = poisoned
    records = tr.run()
    assert records[0]["skipped_steps"] == 1 and records[0]["step"] == 2
    assert all(torch.isfinite(p).all() for p in system.parameters())


def test_config_round_trip_and_errors():
    cfg = TrainConfig(lr_scale={"pool.experts.hgcn": 0.5})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(HyperparameterError, match="no field"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(HyperparameterError, match="TrainConfig.lr"):
        TrainConfig(lr=-1.0)


def test_checkpoint_is_atomic_and_a_damaged_one_names_itself(tmp_path):
    a = save_checkpoint({"x": torch.arange(3)}, tmp_path / "ckpt-000-00000001.pt")
    b = save_checkpoint({"x": torch.arange(4)}, tmp_path / "ckpt-000-00000002.pt")
    assert [p.name for p in checkpoints(tmp_path)] == [a.name, b.name] and not list(tmp_path.glob("*.tmp"))
    b.write_bytes(b.read_bytes()[: len(b.read_bytes()) // 2])  # truncated
    with pytest.raises(CheckpointError, match="ckpt-000-00000002.pt.*truncated or corrupt"):
        load_checkpoint(b)
    tr = Trainer.__new__(Trainer)
    tr.output_dir = tmp_path
    with pytest.raises(CheckpointError, match="previous checkpoint ckpt-000-00000001.pt is intact"):
        tr.latest()
    assert torch.equal(load_checkpoint(a)["x"], torch.arange(3))

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint({"x": Unsaveable()}, a)  # a failed write leaves the old file and no temp file
    assert torch.equal(load_checkpoint(a)["x"], torch.arange(3)) and not list(tmp_path.glob("*.tmp"))


CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_train import make_trainer
    from pathlib import Path
    kill_at = int(sys.argv[2])
    tr, system = make_trainer(Path(sys.argv[1]), seed=int(sys.argv[3]), checkpoint_every=1)
    if kill_at >= 0:
        def kill(state):
            if tr.phase == 0 and state.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        tr.step_hooks.append(kill)
    tr.run()
    torch.save(system.state_dict(), Path(sys.argv[1]) / "final.pt")
""")


def _child(tmp_path: Path, out: Path, kill_at: int, seed: int) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(script), str(out), str(kill_at), str(seed)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_killed_mid_epoch_and_resumed_ends_bit_identical(tmp_path):
    ref = _child(tmp_path, tmp_path / "ref", -1, 0)
    assert ref.returncode == 0, ref.stderr
    killed = _child(tmp_path, tmp_path / "run", 5, 0)  # 3 batches per epoch: step 5 is mid epoch 2
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "final.pt").exists()
    blob = load_checkpoint(checkpoints(tmp_path / "run")[-1])
    assert blob["mid_epoch"] and blob["epoch"] == 2 and blob["batch_index"] == 2
    resumed = _child(tmp_path, tmp_path / "run", -1, 7)  # another init: everything must come from the checkpoint
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "ref" / "final.pt")
    b = torch.load(tmp_path / "run" / "final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    run_lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in ref_lines]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in run_lines]


def test_command_line_run(tmp_path):
    spec = {"output_dir": str(tmp_path / "run"), "world": {"customers": 200, "seed": 0, "profile": "ci"},
            "pipeline": {"lightgcn_epochs": 1, "hmm_iter": 2, "hmm_fit_sequences": 30, "gmm_fit_rows": 100},
            "system": {"preset": "ci", "tasks": ["ctr", "churn"], "transfer_edges": []},
            "train": {"phase1_epochs": 1, "phase2_epochs": 1, "batch_size": 64, "warmup_epochs": 0,
                      "phase2_warmup_epochs": 0, "adatt_freeze_epoch": 1, "adatt_warmup_epochs": 0}}
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "ple.train", "--config", str(cfg)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["epochs"] == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["phase"] for x in lines] == [1, 2] and (tmp_path / "run" / "system.pt").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**spec, "trian": {}}))
    out = subprocess.run([sys.executable, "-m", "ple.train", "--config", str(bad)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode != 0 and "unknown section(s) ['trian']" in out.stderr


def test_epoch_lines_carry_oracle_gaps_and_gate_entropy(tmp_path):
    oracle = {"ctr": (0.8, 0.5), "ltv": (0.5, 1.5)}  # (oracle, chance): AUC up, RMSE down
    tr, system = make_trainer(tmp_path, phase1_epochs=1, phase2_epochs=0)
    tr.oracle = ple_train._check_oracle(oracle, tr.tasks)
    records = tr.run()
    line = records[-1]
    for t, (o, c) in oracle.items():
        assert line["oracle_gap"][t] == pytest.approx((o - line["val_metric"][t]) / (o - c), abs=1e-12)
    assert line["mean_oracle_gap"] == pytest.approx(sum(line["oracle_gap"].values()) / 2, abs=1e-12)
    assert set(line["gate_entropy"]) == set(TASKS) and all(0.0 <= h <= 1.0 for h in line["gate_entropy"].values())
    with pytest.raises(ValueError, match="oracle"):
        make_trainer(None)[0].__class__(system.for_fit(), system.fit_tasks(), tr.train_data, oracle={"ctr": (0.5, 0.8)})


def test_adatt_defaults_fit_inside_phase_one():
    c = TrainConfig()
    assert c.adatt_warmup_epochs < c.adatt_freeze_epoch < c.phase1_epochs
    with pytest.raises(HyperparameterError, match="adatt_freeze_epoch"):
        TrainConfig(adatt_warmup_epochs=6, adatt_freeze_epoch=6)


def test_jacobian_descent_weighting_trains_the_system():
    pytest.importorskip("torchjd")
    with pytest.raises(HyperparameterError, match="adatt=False"):
        TrainConfig(weighting="upgrad")
    tr, system = make_trainer(None, weighting="pcgrad", adatt=False)
    records = tr.run()
    assert [r["phase"] for r in records] == [1, 1, 2] and all(math.isfinite(r["train_total"]) for r in records)
    assert set(records[0]["loss_weights"]) == set(TASKS)
