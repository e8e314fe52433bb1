"""Census-Income (KDD) at full size: single-task, MMoE, CGC and PLE, as in Tang et al. 2020, Table 5.

Tasks: income > 50K and never married; metric: test AUC (``ple.metrics``), each task's at its
best validation epoch. Every model reads learned embeddings of the categorical columns plus the
standardised numerical columns (``ple.baselines.TabularEmbedding``); bodies are parameter-matched
by ``ple.baselines.build_model`` (single-task: one network and one embedding per task); training
is ``ple.fit.fit``, the engine of the book, with the run written as in the chapter
book/ple2_progressive_layered_extraction.ipynb. Two feature sets: the papers' (``paper``) and
``leak_free`` (household columns that spell out marital status dropped). ``best_epochs`` are
0-based epoch indices.

Prints one JSON line per model x task x feature set with the mean and sample standard deviation
of the test AUC over seeds. Runs are independent; ``--workers`` runs them in parallel processes
(one torch thread each)::

    python benchmarks/census_table.py                       # full size, 3 seeds
    python benchmarks/census_table.py --seeds 5 --workers 16 --out results.jsonl
    python benchmarks/census_table.py --subsample 8000 --seeds 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

MODELS = ("single_task", "mmoe", "cgc", "ple")
VARIANTS = ("paper", "leak_free")
TASKS = ("income", "never_married")


def _save_splits(splits, path: Path) -> None:
    arrays = {
        "cat_cardinalities": np.asarray(splits.cat_cardinalities, dtype=np.int64),
        "cat_columns": np.asarray(splits.cat_columns),
        "num_columns": np.asarray(splits.num_columns),
        "leak_free": np.asarray(splits.leak_free),
    }
    for part in ("train", "val", "test"):
        d = getattr(splits, part)
        arrays[f"{part}_categorical"] = d.categorical.astype(np.int32)
        arrays[f"{part}_numerical"] = d.numerical
        arrays[f"{part}_weight"] = d.weight
        for task, y in d.labels.items():
            arrays[f"{part}_label_{task}"] = y.astype(np.uint8)
    np.savez_compressed(path, **arrays)


def _load_saved_splits(path: Path):
    from ple.data.census import CensusData, CensusSplits

    z = np.load(path)
    parts = {}
    for part in ("train", "val", "test"):
        labels = {
            k[len(f"{part}_label_") :]: z[k].astype(np.float32)
            for k in z.files
            if k.startswith(f"{part}_label_")
        }
        parts[part] = CensusData(
            categorical=z[f"{part}_categorical"].astype(np.int64),
            numerical=z[f"{part}_numerical"],
            labels=labels,
            weight=z[f"{part}_weight"],
        )
    return CensusSplits(
        **parts,
        cat_cardinalities=[int(c) for c in z["cat_cardinalities"]],
        cat_columns=[str(c) for c in z["cat_columns"]],
        num_columns=[str(c) for c in z["num_columns"]],
        leak_free=bool(z["leak_free"]),
    )


@lru_cache(maxsize=2)
def _splits(variant: str, subsample: int | None, data_seed: int, cache_dir: str | None):
    """Census splits of one feature set, read once per process (from cache_dir when given)."""
    from ple.data.census import load_census

    if cache_dir is not None:
        path = Path(cache_dir) / f"census_{variant}_{subsample or 'full'}_{data_seed}.npz"
        if path.exists():
            return _load_saved_splits(path)
    splits = load_census(subsample=subsample, seed=data_seed, leak_free=(variant == "leak_free"))
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        _save_splits(splits, path)
    return splits


def _run(job: tuple) -> dict:
    variant, model_name, seed, opts = job
    import torch

    import ple
    from ple.baselines import (
        CENSUS_PAPER_TASKS,
        ScoreEachEpoch,
        at_best_epoch,
        build_model,
        census_encoder,
        census_tensor_data,
    )
    from ple.fit import Task, fit
    from ple.layers import count_parameters

    assert tuple(TASKS) == CENSUS_PAPER_TASKS
    torch.set_num_threads(opts["threads"])
    splits = _splits(variant, opts["subsample"], opts["data_seed"], opts["cache_dir"])
    train, val, test = (census_tensor_data(getattr(splits, part), TASKS) for part in ("train", "val", "test"))
    encoder = census_encoder(splits, embedding_dim=opts["embedding_dim"])
    tasks = [Task(t, "binary") for t in TASKS]
    input_dim = encoder().out_features  # before seeding: the model's initialisation starts at the seed
    ple.seed_everything(seed)
    model = build_model(
        model_name,
        input_dim,
        len(tasks),
        encoder=encoder,
        num_task_experts=opts["num_task_experts"],
        num_shared_experts=opts["num_shared_experts"],
        expert_dim=opts["expert_dim"],
        tower_dims=(16,),
        num_levels=2,
    )
    history = fit(model, train, val, tasks=tasks, epochs=opts["epochs"], batch_size=opts["batch_size"],
                  lr=opts["lr"], seed=seed, callbacks=[ScoreEachEpoch(test)])
    auc = at_best_epoch(history)
    return dict(
        variant=variant,
        model=model_name,
        seed=seed,
        test=[auc[t] for t in TASKS],
        best_epoch=[history.best_epoch[t] - 1 for t in TASKS],  # 0-based, as stored
        num_parameters=count_parameters(model),
        seconds=float(history.seconds().sum()),
        train_rows=len(splits.train.numerical),
        test_rows=len(splits.test.numerical),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--subsample", type=int, default=None, help="training rows (default: all)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the val/test split")
    p.add_argument("--embedding-dim", type=int, default=4)
    p.add_argument("--num-task-experts", type=int, default=2, help="per task (CGC, PLE)")
    p.add_argument("--num-shared-experts", type=int, default=2, help="(CGC, PLE)")
    p.add_argument("--expert-dim", type=int, default=32, help="MMoE's expert width; others matched")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--cache-dir", default=None, help="keep the preprocessed splits here (.npz)")
    p.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")

    opts = dict(
        subsample=args.subsample,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        data_seed=args.data_seed,
        threads=args.threads,
        cache_dir=args.cache_dir,
        embedding_dim=args.embedding_dim,
        num_task_experts=args.num_task_experts,
        num_shared_experts=args.num_shared_experts,
        expert_dim=args.expert_dim,
    )
    if args.cache_dir is not None:  # preprocess once, before the workers start
        for v in args.variants:
            _splits(v, args.subsample, args.data_seed, args.cache_dir)
    jobs = [(v, m, s, opts) for v in args.variants for m in args.models for s in range(args.seeds)]
    t0 = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            runs = list(pool.map(_run, jobs))
    else:
        runs = [_run(j) for j in jobs]
    wall = time.perf_counter() - t0

    command = "python benchmarks/census_table.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = []
    for v in args.variants:
        for m in args.models:
            mine = sorted((r for r in runs if r["variant"] == v and r["model"] == m), key=lambda r: r["seed"])
            for k, task in enumerate(TASKS):
                aucs = [r["test"][k] for r in mine]
                row = dict(
                    benchmark="census_table",
                    variant=v,
                    model=m,
                    task=task,
                    auc_mean=float(np.mean(aucs)),
                    auc_std=float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
                    aucs=[round(a, 6) for a in aucs],
                    n_seeds=len(aucs),
                    best_epochs=[r["best_epoch"][k] for r in mine],
                    num_parameters=mine[0]["num_parameters"],
                    seconds_per_run=float(np.mean([r["seconds"] for r in mine])),
                    train_rows=mine[0]["train_rows"],
                    test_rows=mine[0]["test_rows"],
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    expert_dim=args.expert_dim,
                    num_task_experts=args.num_task_experts,
                    num_shared_experts=args.num_shared_experts,
                    embedding_dim=args.embedding_dim,
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
