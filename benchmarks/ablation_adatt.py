"""The ADATT-4 ablation: does adaTT help on the customer world, and is it more than re-weighting?

The full `PLESystem` (``ci`` preset by default) is trained by `ple.train.Trainer` on the customer
world with the planted synergy / conflict pairs on and off, with each loss weighting: equal, the
posts' fixed weights, uncertainty weighting, GradNorm, DWA, adaTT, uncertainty weighting + adaTT
(the posts' system) and adaTT's static twin (fixed weights equal to adaTT's mean effective loss
coefficients in the run with the same seed, ADATT-3). One JSON line per (planted, method, seed):

``{"bench": "ablation_adatt", "planted": bool, "method": ..., "seed": ..., "gap": {task: normalised
oracle gap on the validation split}, "mean_gap": ..., "cpu_s_per_epoch": ..., "wall_s_per_epoch": ...,
"customers": ..., "epochs": ..., "tasks": [...], "command": ...}``

The chapter (book/adatt4_training_loop.ipynb) reads the stored lines and forms the paired
differences against equal weighting with their 95 % intervals.

Usage::

    python benchmarks/ablation_adatt.py --out benchmarks/results/ablation_adatt.jsonl
    python benchmarks/ablation_adatt.py --customers 20000 --epochs 10 --seeds 10 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from ple import metrics as M
from ple.data import world as W
from ple.data.pipeline import PipelineConfig, prepare_world
from ple.losses import FixedWeighting
from ple.system import PLESystem, preset
from ple.train import TrainConfig, Trainer

PLANTED = (("engagement", "spending_bucket", 1), ("ltv", "balance_util", -1))
TASKS = ("engagement", "spending_bucket", "ltv", "balance_util", "ctr", "churn")
METHODS = ("equal", "fixed", "uncertainty", "gradnorm", "dwa", "adatt", "uncertainty+adatt", "adatt static")


def world_data(n: int, seed: int, planted: bool):
    world = W.generate(n, seed=seed, profile="ci", planted_pairs=PLANTED if planted else ())
    splits = dict(zip(("train", "val", "test"), np.split(np.arange(n), [int(0.6 * n), int(0.8 * n)])))
    data = prepare_world(world, PipelineConfig(seed=seed, lightgcn_epochs=5, hmm_iter=3, hmm_fit_sequences=100,
                                               gmm_fit_rows=1000), splits=splits)
    orc = W.oracle(world, TASKS)
    val = data.tensor_data("val", TASKS)
    ref = {}
    for t in TASKS:
        y = val.targets[t].numpy()
        ref[t] = (M.task_metric(t, y, orc[t][data.splits["val"]]), M.task_chance(t, y))
    return data, data.tensor_data("train", TASKS), val, ref


def run(method, s, args, data, train, val, ref, device, coeffs=None):
    weighting = {"fixed": "fixed", "uncertainty": "uncertainty", "uncertainty+adatt": "uncertainty"}.get(method, "equal")
    torch.manual_seed(s)
    system = PLESystem(preset(args.preset, tasks=TASKS, transfer_edges=(), loss_weighting=weighting, **data.dims)).to(device)
    cfg = TrainConfig(phase1_epochs=args.epochs, phase2_epochs=0, batch_size=args.batch, eval_batch_size=4096,
                      lr=args.lr, warmup_epochs=0, adatt_warmup_epochs=0, adatt_freeze_epoch=args.epochs,
                      adatt_grad_interval=args.grad_interval, progress="off", patience=0, seed=s,
                      adatt=method in ("adatt", "uncertainty+adatt"),
                      weighting={"gradnorm": "gradnorm", "dwa": "dwa"}.get(method, "system"))
    if method == "adatt static":
        tr = Trainer(system.for_fit(), system.fit_tasks(), train, val, cfg, module=system,
                     aggregate=FixedWeighting(TASKS, dict(zip(TASKS, coeffs))), attention=system.stage2,
                     returns_aux=True)
    else:
        tr = Trainer.for_system(system, train, val, cfg)
    steps = []
    if tr.adatt is not None:
        def coeff(state, ad=tr.adatt):
            if ad.last_weights is not None:
                steps.append(1 + ad.transfer_lambda * (ad.last_weights * (~ad.last_binds)[:, None]).sum(0))
        tr.step_hooks.append(coeff)
    c0, w0 = time.process_time(), time.perf_counter()
    rec = tr.run()
    cpu, wall = (time.process_time() - c0) / len(rec), (time.perf_counter() - w0) / len(rec)
    gap = {t: M.oracle_gap(rec[-1]["val_metric"][t], *ref[t], M.task_kind(t)) for t in TASKS}
    return dict(gap=gap, mean_gap=float(np.mean(list(gap.values()))), cpu_s_per_epoch=cpu, wall_s_per_epoch=wall,
                coeffs=torch.stack(steps).mean(0).tolist() if steps else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--grad-interval", type=int, default=2)
    p.add_argument("--preset", default="ci")
    p.add_argument("--planted", default="on,off")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = open(args.out, "a", encoding="utf-8") if args.out else None
    command = "python benchmarks/ablation_adatt.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for planted in [x == "on" for x in args.planted.split(",")]:
        data, train, val, ref = world_data(args.customers, 0, planted)
        if device.type != "cpu":
            train, val = train.to(device), val.to(device)
        for s in range(args.seeds):
            coeffs = None
            for method in METHODS:
                r = run(method, s, args, data, train, val, ref, device, coeffs)
                if method == "adatt":
                    coeffs = r["coeffs"]
                line = dict(bench="ablation_adatt", planted=planted, method=method, seed=s, **r,
                            customers=args.customers, epochs=args.epochs, batch=args.batch, lr=args.lr,
                            tasks=list(TASKS), device=str(device), command=command)
                text = json.dumps(line)
                print(text, flush=True)
                if out:
                    out.write(text + "\n")
                    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
