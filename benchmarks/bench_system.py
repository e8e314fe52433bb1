"""Benchmark of ple.system: training throughput and peak memory of PLESystem, and peak RSS of the
streaming data pipeline over one epoch of a world too large to load whole.

Prints one JSON line per figure (and appends them to --out). Figures:

* ``train_throughput``: forward + backward samples/s of `PLESystem` (batched `run`) and of the clear
  composition (`reference_forward`, a per-task loop) at each batch size, with the process's peak
  RSS (each size measured in a fresh process); on a GPU also the peak allocated memory.
* ``system_experiment``: PLE-4's and PLE-5's stand-in experiments redone on `PLESystem` with the
  real experts (``--part experiments``): the Stage-2 gate with and without dimension
  normalisation (no domain prior, no entropy term: where does the weight go?), and uncertainty /
  fixed / equal loss weighting; per seed, the test metric and normalised oracle gap per task and
  the mean Stage-2 weight per (task, expert). The chapter reads these rows.
* ``pipeline_epoch``: generating a world of --customers to disk, the offline fits (training split
  only), and the peak RSS of one pass of `StreamingBatches` over the training split, next to the
  size the same arrays would take in memory.

Usage::

    python benchmarks/bench_system.py --part train --batch-sizes 512 4096
    python benchmarks/bench_system.py --part pipeline --customers 1000000 --world-dir /tmp/world_1m
    python benchmarks/bench_system.py --part experiments --out benchmarks/results/system_experiments.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    """This process's own peak resident set (VmHWM, reset at exec). ru_maxrss is not used where
    /proc exists: a spawned child inherits the parent's resident set size at fork in it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _emit(row: dict, out: str | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _train_one(args: dict, queue) -> None:
    import torch

    from ple.system import PLESystem, preset, reference_forward, synthetic_system_inputs

    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    torch.manual_seed(0)
    cfg = preset(args["preset"], use_hmm=True)
    model = PLESystem(cfg).to(device).train()
    x = synthetic_system_inputs(cfg, args["batch_size"], seq_len=args["seq_len"], n_points=16, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rows, cpu = {}, {}
    for name, fn in (("batched", lambda: model(x)), ("clear", lambda: reference_forward(model, x))):
        times, cpu_times = [], []
        for rep in range(args["warmup"] + args["reps"]):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            out = fn()
            loss = sum(v.float().square().mean() for v in out.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rep >= args["warmup"]:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
        times.sort()
        cpu_times.sort()
        rows[name] = args["batch_size"] / times[len(times) // 2]
        cpu[name] = args["batch_size"] / cpu_times[len(cpu_times) // 2]
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    # on a shared CPU the wall clock measures the neighbours too: samples per CPU-second beside it
    queue.put(dict(samples_per_s=rows["batched"], clear_samples_per_s=rows["clear"],
                   samples_per_cpu_s=cpu["batched"], clear_samples_per_cpu_s=cpu["clear"],
                   peak_rss_mb=_peak_rss_mb(), peak_gpu_mb=gpu_mb,
                   parameters=sum(p.numel() for p in model.parameters())))


def bench_train(a, out) -> None:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not a.cpu_only else [])
    ctx = mp.get_context("spawn")
    for device in devices:
        for bs in a.batch_sizes:
            q = ctx.Queue()
            args = dict(batch_size=bs, preset=a.preset, seq_len=a.seq_len, threads=a.threads, device=device,
                        warmup=a.warmup, reps=a.reps)
            p = ctx.Process(target=_train_one, args=(args, q))
            p.start()
            res = q.get()
            p.join()
            _emit(dict(figure="train_throughput", device=device, preset=a.preset, batch_size=bs,
                       seq_len=a.seq_len, threads=a.threads, **res), out)


def _iterate_epoch(args: dict, queue) -> None:
    import numpy as np
    import torch

    from ple.data import world as W
    from ple.data.pipeline import PipelineConfig, prepare_world

    torch.set_num_threads(args["threads"])
    world = W.load_world(args["world_dir"])
    rss_open = _peak_rss_mb()
    t0 = time.perf_counter()
    data = prepare_world(world, PipelineConfig(**args["pipeline"]))  # cached: loads
    t_prepare = time.perf_counter() - t0
    stream = data.stream("train", args["batch_size"], chunk_size=args["chunk_size"], seed=0)
    t0 = time.perf_counter()
    n = 0
    checksum = 0.0
    for batch in stream:
        n += batch.inputs[0].shape[0]
        checksum += float(batch.inputs[0][:, 0].sum())
    seconds = time.perf_counter() - t0
    in_memory = sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape)) for a in data.arrays.values())
    queue.put(dict(samples=n, seconds=seconds, samples_per_s=n / seconds, rss_after_open_mb=rss_open,
                   peak_rss_mb=_peak_rss_mb(), arrays_in_memory_mb=in_memory / 2**20,
                   load_seconds=t_prepare, checksum=checksum))


def bench_pipeline(a, out) -> None:
    from ple.data import world as W
    from ple.data.pipeline import PipelineConfig, prepare_world

    root = Path(a.world_dir)
    t0 = time.perf_counter()
    if not (root / "world.json").is_file():
        W.generate(a.customers, seed=0, profile=a.profile, out_dir=str(root), chunk_size=a.chunk_size)
    t_gen = time.perf_counter() - t0
    world = W.load_world(str(root))
    t0 = time.perf_counter()
    settings = dict(chunk_size=a.chunk_size, lightgcn_epochs=a.lightgcn_epochs,
                    lightgcn_fit_customers=a.lightgcn_fit_customers, seed=0)
    data = prepare_world(world, PipelineConfig(**settings))
    t_fit = time.perf_counter() - t0
    _emit(dict(figure="pipeline_offline", customers=world.n_customers, profile=a.profile,
               generate_seconds=t_gen, offline_seconds=t_fit, peak_rss_mb=_peak_rss_mb(),
               cache=data.cache_dir), out)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_iterate_epoch, args=(dict(world_dir=str(root), chunk_size=a.chunk_size, pipeline=settings,
                                                      batch_size=a.batch_size, threads=a.threads), q))
    p.start()
    res = q.get()
    p.join()
    _emit(dict(figure="pipeline_epoch", customers=world.n_customers, profile=a.profile, split="train",
               chunk_size=a.chunk_size, batch_size=a.batch_size, **res), out)


def bench_experiments(a, out) -> None:
    import numpy as np
    import torch

    import ple
    from ple import metrics as M
    from ple.data import world as W
    from ple.data.pipeline import PipelineConfig, prepare_world
    from ple.fit import evaluate, fit
    from ple.system import PLESystem, SystemInputs, preset

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    world = W.generate(a.exp_customers, seed=0, profile="ci")
    data = prepare_world(world, PipelineConfig(lightgcn_epochs=10, hmm_iter=10, seed=0), seed=0)
    base = preset("ci", **data.dims)
    tasks = list(base.tasks)
    te = data.splits["test"]
    y_test = {t: np.asarray(world.labels[t])[te] for t in tasks}
    oracle = W.oracle(world)
    oracle_metric = M.evaluate(y_test, {t: oracle[t][te] for t in tasks})
    chance = {t: M.task_chance(t, y_test[t]) for t in tasks}
    train, test = data.tensor_data("train"), data.tensor_data("test")
    x_test = SystemInputs.from_tuple(test.inputs)

    def run(cfg, seed):
        ple.seed_everything(seed)
        model = PLESystem(cfg)
        fit(model.for_fit(), train, tasks=model.fit_tasks(), epochs=a.exp_epochs, batch_size=256, lr=5e-3,
            weight_decay=0.01, grad_clip=5.0, aggregate=model.aggregator(), returns_aux=True, seed=seed)
        metric = evaluate(model.for_fit(), test, model.fit_tasks(), returns_aux=True)
        gap = {t: M.oracle_gap(metric[t], oracle_metric[t], chance[t], M.task_kind(t)) for t in tasks}
        model.eval()
        with torch.no_grad():
            g2 = model.run(x_test).gates2
        gates = None if g2 is None else g2.mean(0).tolist()
        return dict(metric=metric, gap=gap, mean_gap=float(np.mean(list(gap.values()))), gates=gates)

    common = dict(figure="system_experiment", customers=world.n_customers, epochs=a.exp_epochs, tasks=tasks,
                  oracle=oracle_metric, chance=chance)
    for seed in range(a.exp_seeds):
        for dn in (True, False):
            cfg = base.replace(dim_normalize=dn, domain_prior=False, entropy_lambda=0.0)
            _emit(dict(common, experiment="collapse", dim_normalize=dn, seed=seed, **run(cfg, seed)), out)
        for w in ("uncertainty", "fixed", "equal"):
            _emit(dict(common, experiment="weighting", weighting=w, seed=seed, **run(base.replace(loss_weighting=w), seed)), out)
    print(f"experiments: {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("train", "pipeline", "experiments", "all"), default="train")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--seq-len", type=int, default=60, help="transaction steps of the synthetic batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--profile", default="default", help="world profile of the pipeline run")
    ap.add_argument("--world-dir", default="/tmp/ple_bench_world")
    ap.add_argument("--chunk-size", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=4096, help="batch size of the pipeline epoch")
    ap.add_argument("--lightgcn-epochs", type=int, default=10)
    ap.add_argument("--lightgcn-fit-customers", type=int, default=10_000)
    ap.add_argument("--exp-customers", type=int, default=3000)
    ap.add_argument("--exp-epochs", type=int, default=4)
    ap.add_argument("--exp-seeds", type=int, default=2)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    a = ap.parse_args(argv)
    if a.part in ("train", "all"):
        bench_train(a, a.out)
    if a.part in ("pipeline", "all"):
        bench_pipeline(a, a.out)
    if a.part in ("experiments", "all"):
        bench_experiments(a, a.out)


if __name__ == "__main__":
    sys.exit(main())
