"""Learning curve against the oracle: normalised oracle gap per task as the customer world grows,
for the full system, MMoE and single-task models trained the same way.

For each size N of --sizes a customer world of N customers is generated (seed --seed), run through
the offline pipeline (fitted on its 60 % training split), and three models are trained by
`ple.train.Trainer` with one `TrainConfig` (phase 1 then phase 2, the same epochs, batch and
learning rate):

* ``system``: `ple.system.PLESystem` (`Trainer.for_system`: uncertainty weighting and adaTT);
* ``mmoe``: `ple.system.PoolCGC` without task-private experts: one softmax gate per task over the
  same seven shared experts, then the towers (MMoE on the heterogeneous pool);
* ``single_task``: one `PoolCGC` per task with that task only (16 models, nothing shared).

One JSON line per (size, model): ``{"bench": "learning_curve", "customers", "model", "gap": {task:
normalised oracle gap on the test split (0 = the oracle, 1 = chance)}, "mean_gap", "metric",
"oracle", "chance", "cpu_s", "wall_s", "epochs", "batch_size", "lr", "preset", "world_profile",
"device", "command"}``. The training chapter (book/training_full_system.ipynb) reads the stored
lines.

Sizes: 2,000 to 10,000 customers fit a 2-core CPU (about ten minutes for the three sizes);
100,000 and 1,000,000 customers are GPU sizes::

    python benchmarks/learning_curve.py --out benchmarks/results/learning_curve.jsonl
    python benchmarks/learning_curve.py --sizes 100000 1000000 --device cuda --batch-size 4096 \\
        --preset default --world-profile default --out benchmarks/results/learning_curve.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ple
from ple import metrics as M
from ple.data import world as W
from ple.data.pipeline import PipelineConfig, prepare_world, split_indices
from ple.fit import TensorData, evaluate
from ple.system import PLESystem, PoolCGC, preset
from ple.train import TrainConfig, Trainer

MODELS = ("system", "mmoe", "single_task")


def _subset(data: TensorData, names) -> TensorData:
    """The same inputs with the targets of `names` only."""
    return TensorData(data.inputs, {t: data.targets[t] for t in names})


def _gap(task: str, value: float, oracle: float, chance: float) -> float | None:
    """eq-oracle-gap, or None where the oracle does not beat chance on this split (tiny worlds)."""
    try:
        return M.oracle_gap(value, oracle, chance, M.task_kind(task))
    except ValueError:
        return None


def train_and_score(model, names, train, val, test, cfg: TrainConfig, device, system: bool = False) -> dict:
    """Train `model` with `Trainer` (the system with `for_system`) and score it on `test`."""
    if system:
        tr = Trainer.for_system(model, train, val, cfg, device=device)
    else:
        tr = Trainer(model.for_fit(), model.fit_tasks(), train, val, cfg.replace(adatt=False), module=model,
                     aggregate=model.aggregator(), returns_aux=True, device=device)
    tr.run()
    return evaluate(model.for_fit(), test, model.fit_tasks(), batch_size=cfg.eval_batch_size, returns_aux=True)


def one_size(n: int, a, device, command: str, out) -> None:
    t0 = time.perf_counter()
    world = W.generate(n, seed=a.seed, profile=a.world_profile)
    data = prepare_world(world, PipelineConfig(seed=a.seed, lightgcn_epochs=a.lightgcn_epochs, hmm_iter=a.hmm_iter,
                                               hmm_fit_sequences=min(300, n // 10),
                                               gmm_fit_rows=min(5000, n // 2)),
                         splits=split_indices(n, a.seed))
    cfg = preset(a.preset, **data.dims)
    tasks = cfg.tasks
    train, val, test = (data.tensor_data(s, tasks) for s in ("train", "val", "test"))
    te = data.splits["test"]
    orc = W.oracle(world, tasks)
    y = {t: test.targets[t].numpy() for t in tasks}
    oracle = {t: M.task_metric(t, y[t], orc[t][te]) for t in tasks}
    chance = {t: M.task_chance(t, y[t]) for t in tasks}
    print(f"# {n} customers: world and pipeline {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if device.type != "cpu":
        train, val, test = train.to(device), val.to(device), test.to(device)
    tcfg = TrainConfig(phase1_epochs=a.epochs, phase2_epochs=a.phase2_epochs, batch_size=a.batch_size,
                       eval_batch_size=4096, lr=a.lr, warmup_epochs=0, phase2_warmup_epochs=0,
                       adatt_warmup_epochs=max(a.epochs // 4, 1) if a.epochs > 2 else 0,
                       adatt_freeze_epoch=max(a.epochs - 1, 1), adatt_grad_interval=a.grad_interval,
                       patience=0, seed=a.seed, progress="off")
    for name in a.models:
        c0, w0 = time.process_time(), time.perf_counter()
        ple.seed_everything(a.seed)
        if name == "system":
            metric = train_and_score(PLESystem(cfg).to(device), tasks, train, val, test, tcfg, device, system=True)
        elif name == "mmoe":
            model = PoolCGC(cfg.replace(num_task_experts=0)).to(device)
            metric = train_and_score(model, tasks, train, val, test, tcfg, device)
        else:
            metric = {}
            for t in tasks:
                ple.seed_everything(a.seed)
                model = PoolCGC(cfg.replace(tasks=(t,), num_task_experts=0, transfer_edges=())).to(device)
                metric.update(train_and_score(model, (t,), _subset(train, (t,)), _subset(val, (t,)),
                                              _subset(test, (t,)), tcfg, device))
        gap = {t: _gap(t, metric[t], oracle[t], chance[t]) for t in tasks}
        defined = [g for g in gap.values() if g is not None]
        line = dict(bench="learning_curve", customers=n, model=name, gap=gap, mean_gap=float(np.mean(defined)),
                    metric=metric, oracle=oracle, chance=chance, cpu_s=time.process_time() - c0,
                    wall_s=time.perf_counter() - w0, epochs=[a.epochs, a.phase2_epochs], batch_size=a.batch_size,
                    lr=a.lr, preset=a.preset, world_profile=a.world_profile, seed=a.seed, threads=a.threads,
                    device=str(device), torch=torch.__version__, command=command)
        text = json.dumps(line)
        print(text, flush=True)
        if out is not None:
            with open(out, "a", encoding="utf-8") as f:
                f.write(text + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000], help="customers per world")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--epochs", type=int, default=4, help="phase-1 epochs")
    p.add_argument("--phase2-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--grad-interval", type=int, default=10, help="adaTT's gradient-extraction interval (steps)")
    p.add_argument("--preset", default="ci", help="ple.system preset (ci: chapter-sized experts)")
    p.add_argument("--world-profile", default="ci")
    p.add_argument("--lightgcn-epochs", type=int, default=10)
    p.add_argument("--hmm-iter", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    command = "python benchmarks/learning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(a.out) if a.out else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    for n in a.sizes:
        one_size(n, a, torch.device(a.device), command.strip(), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
