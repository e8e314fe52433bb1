"""The seesaw on the MMoE synthetic data: single-task, Shared-Bottom, MMoE, CGC and PLE.

Two regression tasks from ``ple.data.mmoe_synthetic`` with a chosen correlation; parameter-matched
models from ``ple.baselines.build_model``; training by ``ple.fit.fit``, the engine of the book,
with the run written as in the chapter book/ple2_progressive_layered_extraction.ipynb: each seed
draws a fresh data set and a fresh initialisation, and each task's test metric is read at its best
validation epoch. Prints one JSON line per correlation x model x task: test MSE (the square of
``ple.metrics``' RMSE) and the change against the single-task baseline of the same seed (%), mean
and sample standard deviation over seeds::

    python benchmarks/seesaw_synthetic.py --correlations 0.2 0.5 --seeds 10 --workers 16
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

MODELS = ("single_task", "shared_bottom", "mmoe", "cgc", "ple")
# the chapter's architecture of Experiment 1 (parameters matched to this MMoE)
ARCH = dict(num_task_experts=1, num_shared_experts=2, expert_dim=32, tower_dims=(8,), num_levels=2)


def sd(a: np.ndarray) -> float:
    """Sample standard deviation over seeds (0 for one seed)."""
    return float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _run(job: tuple) -> dict:
    correlation, seed, opts = job
    import torch

    import ple
    from ple.baselines import (
        SYNTHETIC_TASKS,
        ScoreEachEpoch,
        at_best_epoch,
        build_model,
        mmoe_synthetic_splits,
    )
    from ple.fit import Task, fit
    from ple.layers import count_parameters

    torch.set_num_threads(opts["threads"])
    train, val, test = mmoe_synthetic_splits(opts["n_train"], correlation, seed=seed)
    tasks = [Task(t, "regression") for t in SYNTHETIC_TASKS]
    out = {}
    for model_name in MODELS:
        ple.seed_everything(seed)
        model = build_model(model_name, train.inputs[0].shape[1], len(tasks), **ARCH)
        history = fit(model, train, val, tasks=tasks, epochs=opts["epochs"], batch_size=opts["batch_size"],
                      lr=opts["lr"], seed=seed, callbacks=[ScoreEachEpoch(test)])
        rmse = at_best_epoch(history)
        out[model_name] = ([rmse[t] ** 2 for t in SYNTHETIC_TASKS], count_parameters(model))
    return dict(correlation=correlation, seed=seed, results=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--correlations", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--n-train", type=int, default=30000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    opts = dict(
        n_train=args.n_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        threads=args.threads,
    )
    jobs = [(c, s, opts) for c in args.correlations for s in range(args.seeds)]
    t0 = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            runs = list(pool.map(_run, jobs))
    else:
        runs = [_run(j) for j in jobs]
    wall = time.perf_counter() - t0
    command = "python benchmarks/seesaw_synthetic.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    lines = []
    for c in args.correlations:
        mine = sorted((r for r in runs if r["correlation"] == c), key=lambda r: r["seed"])
        base = np.array([r["results"]["single_task"][0] for r in mine])  # [seeds, tasks]
        for model in MODELS:
            mse = np.array([r["results"][model][0] for r in mine])
            rel = 100 * (mse / base - 1)
            for k in range(mse.shape[1]):
                row = dict(
                    benchmark="seesaw_synthetic",
                    correlation=c,
                    model=model,
                    task=k + 1,
                    mse_mean=float(mse[:, k].mean()),
                    mse_std=sd(mse[:, k]),
                    rel_mean=float(rel[:, k].mean()),
                    rel_std=sd(rel[:, k]),
                    n_seeds=len(mine),
                    num_parameters=mine[0]["results"][model][1],
                    n_train=args.n_train,
                    epochs=args.epochs,
                    command=command,
                    device=f"CPU, {args.workers} process(es) x {args.threads} thread(s), "
                    f"{os.cpu_count()} cores",
                    wall_seconds=round(wall, 1),
                )
                line = json.dumps(row)
                print(line, flush=True)
                lines.append(line)
    if args.out is not None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
