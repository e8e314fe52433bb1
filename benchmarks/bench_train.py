"""Training-step benchmark of the full system: samples/s of forward + backward + optimizer step.

One training step of `ple.system.PLESystem` (all 16 tasks, the seven experts, the registry's task
losses on synthetic targets, the system's uncertainty-weighted loss, AdamW) is timed in a fresh
process per configuration (so each peak resident set is its own), and prints one JSON line per
figure (``--out`` also appends them to a file):

* ``step``: the batched system against the clear reference (`ple.system.reference_forward`: the
  chapter modules' own forwards, task by task in Kahn order) **in the same process**, one after the
  other, at each batch size and precision (fp32; bf16 autocast). Both run the seven experts one
  after the other (they are different networks); the reference also loops over the 16 tasks for
  the gates, baskets, transfer and towers. ``samples_per_s`` (wall) and ``samples_per_cpu_s``
  (process CPU time, which a shared machine inflates less), the medians of ``--reps`` steps after
  ``--warmup``; ``speedup`` = batched / reference; ``peak_rss_mb`` after the batched steps (CPU) or
  ``peak_gpu_mb`` (CUDA).
* ``compile``: `torch.compile` of the system's training step at one batch size: the time of the
  first (compiling) step and the steady-state samples/s beside eager, or ``finished: false`` when
  compiling takes longer than ``--compile-timeout`` seconds (the process is stopped).
* ``adatt``: the step with adaTT's gradient extraction (ADATT-2's `TaskAffinityComputer` on the
  shared experts, through `AffinityAggregate`) every step and every 10th step, against none;
  ``overhead`` = time / plain time - 1 averaged over ``--adatt-steps`` steps.
* ``tasks``: time per step as the number of tasks grows (the first K active tasks, the transfer
  edges among them).
* ``batch``: time per step and samples/s as the batch grows.

Usage::

    python benchmarks/bench_train.py --out benchmarks/results/bench_train.jsonl     # 1 CPU thread
    python benchmarks/bench_train.py --device cuda --batch-sizes 4096 16384 --precisions fp32 bf16 \\
        --compile --threads 8 --out benchmarks/results/bench_train.jsonl
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_system import _emit, _peak_rss_mb  # noqa: E402  (one definition of the peak resident set)


def synthetic_targets(system, batch_size: int, seed: int = 0) -> dict:
    """A target per task with the shape and range its loss expects (values carry no signal)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, spec in system.specs.items():
        if spec.loss == "focal":
            out[name] = (torch.rand(batch_size, generator=g) < 0.3).float()
        elif spec.loss == "nll":
            out[name] = torch.randint(spec.output_dim, (batch_size,), generator=g)
        elif spec.loss == "infonce":
            out[name] = torch.randint(spec.num_classes, (batch_size,), generator=g)
        else:
            y = torch.randn(batch_size, spec.output_dim, generator=g)
            out[name] = y[:, 0] if spec.output_dim == 1 else y
    return out


def _build(a: dict):
    import torch

    from ple.system import PLESystem, preset, synthetic_system_inputs
    from ple.tasks import ACTIVE_TASK_NAMES, TRANSFER_EDGES

    torch.set_num_threads(a["threads"])
    device = torch.device(a["device"])
    tasks = ACTIVE_TASK_NAMES[: a["tasks"]]
    edges = tuple(tuple(e) for e in TRANSFER_EDGES if e[0] in tasks and e[1] in tasks)
    cfg = preset(a["preset"], tasks=tasks, transfer_edges=edges)
    torch.manual_seed(0)
    system = PLESystem(cfg).to(device).train()
    x = synthetic_system_inputs(cfg, a["batch_size"], seq_len=a["seq_len"], n_points=16, seed=0).to(device)
    y = {k: v.to(device) for k, v in synthetic_targets(system, a["batch_size"]).items()}
    return torch, device, system, x, y


def _timer(torch, device, fn, warmup: int, reps: int) -> tuple[list, list]:
    walls, cpus = [], []
    for rep in range(warmup + reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if rep >= warmup:
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    return walls, cpus


def _median(v):
    v = sorted(v)
    return v[len(v) // 2]


def _step_fn(torch, system, x, y, forward, precision, device, aggregate=None, counter=None):
    """One training step: forward (`forward(system, x)` -> {task: logits}), the tasks' losses, the
    system's weighted loss (or `aggregate`), backward, AdamW."""
    from types import SimpleNamespace

    opt = torch.optim.AdamW(system.parameters(), lr=1e-4)
    loss_fn = aggregate if aggregate is not None else system.aggregator()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    state = SimpleNamespace(step=0, extra={}, batch=None)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = forward(system, x)
        losses = {t: system.task_loss(t, z, y[t]).mean() for t, z in logits.items()}
        loss = loss_fn(losses, state)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.step += 1

    return step


def _worker(a: dict, queue) -> None:
    try:
        queue.put(_measure(a))
    except Exception as err:  # reported as a line, never a crash of the whole benchmark
        queue.put({"error": f"{type(err).__name__}: {err}"})


def _measure(a: dict) -> dict:
    from ple import checks
    from ple.system import reference_forward

    torch, device, system, x, y = _build(a)
    B = a["batch_size"]

    def batched(s, inp):
        return s(inp)

    def clear(s, inp):
        return reference_forward(s, inp)

    res = {}
    with checks.validation(False):
        if a["kind"] in ("step", "tasks", "batch"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            walls, cpus = _timer(torch, device, _step_fn(torch, system, x, y, batched, a["precision"], device),
                                 a["warmup"], a["reps"])
            res.update(step_ms=1000 * _median(walls), step_cpu_ms=1000 * _median(cpus),
                       samples_per_s=B / _median(walls), samples_per_cpu_s=B / _median(cpus),
                       peak_rss_mb=_peak_rss_mb(),
                       peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None)
            if a["kind"] == "step":
                walls, cpus = _timer(torch, device, _step_fn(torch, system, x, y, clear, a["precision"], device),
                                     a["warmup"], a["reps"])
                res.update(reference_step_ms=1000 * _median(walls), reference_step_cpu_ms=1000 * _median(cpus),
                           reference_samples_per_s=B / _median(walls),
                           reference_samples_per_cpu_s=B / _median(cpus),
                           speedup=res["samples_per_s"] / (B / _median(walls)),
                           speedup_cpu=res["samples_per_cpu_s"] / (B / _median(cpus)))
        elif a["kind"] == "compile":
            eager = _step_fn(torch, system, x, y, batched, a["precision"], device)
            walls, cpus = _timer(torch, device, eager, 1, a["reps"])
            res.update(eager_samples_per_s=B / _median(walls), eager_samples_per_cpu_s=B / _median(cpus))
            compiled = torch.compile(system)
            step = _step_fn(torch, system, x, y, lambda s, inp: compiled(inp), a["precision"], device)
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            res.update(first_step_s=time.perf_counter() - w0, first_step_cpu_s=time.process_time() - c0)
            walls, cpus = _timer(torch, device, step, 1, a["reps"])
            res.update(compiled_samples_per_s=B / _median(walls), compiled_samples_per_cpu_s=B / _median(cpus),
                       speedup=B / _median(walls) / res["eager_samples_per_s"], finished=True)
        elif a["kind"] == "adatt":
            from ple.adatt import AffinityAggregate, TaskAffinityComputer

            n = a["adatt_steps"]
            times = {}
            for interval in (0, 1, 10):
                agg = None
                if interval:
                    comp = TaskAffinityComputer(system.task_names, system.pool, grad_interval=interval).to(device)
                    agg = AffinityAggregate(comp, system.aggregator())
                step = _step_fn(torch, system, x, y, batched, a["precision"], device, aggregate=agg)
                step()  # warm-up (the first extraction also picks the batched or the loop method)
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(n):
                    step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[interval] = ((time.perf_counter() - w0) / n, (time.process_time() - c0) / n)
                if interval:
                    res[f"method_interval_{interval}"] = comp.method_used
            base_w, base_c = times[0]
            res.update(step_ms=1000 * base_w, step_cpu_ms=1000 * base_c,
                       **{f"step_ms_interval_{i}": 1000 * times[i][0] for i in (1, 10)},
                       **{f"overhead_interval_{i}": times[i][0] / base_w - 1 for i in (1, 10)},
                       **{f"overhead_cpu_interval_{i}": times[i][1] / base_c - 1 for i in (1, 10)},
                       steps=n)
    res["parameters"] = sum(p.numel() for p in system.parameters())
    return res


def _run(a: dict, timeout: float | None = None) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(a, q))
    p.start()
    try:
        res = q.get(timeout=timeout)
    except Exception:  # queue.Empty: the configuration ran past its time limit
        p.terminate()
        p.join()
        return {"finished": False, "timeout_s": timeout}
    p.join()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default", help="ple.system preset (default: the posts' sizes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--seq-len", type=int, default=60, help="transaction steps of the synthetic batch")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tasks", type=int, nargs="+", default=[4, 8, 16], help="task counts of the growth figure")
    ap.add_argument("--growth-batch", type=int, default=512, help="batch of the task-growth and adaTT figures")
    ap.add_argument("--batch-growth", type=int, nargs="+", default=[256, 1024, 2048],
                    help="extra batch sizes of the batch-growth figure (the --batch-sizes fp32 lines join them)")
    ap.add_argument("--adatt-steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (compile time and steady state)")
    ap.add_argument("--compile-batch", type=int, default=256)
    ap.add_argument("--compile-timeout", type=float, default=600.0)
    ap.add_argument("--parts", nargs="+", default=["step", "tasks", "batch", "adatt", "compile"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    command = "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    base = dict(preset=a.preset, device=a.device, threads=a.threads, seq_len=a.seq_len, warmup=a.warmup, reps=a.reps,
                tasks=16, precision="fp32", adatt_steps=a.adatt_steps)
    meta = dict(preset=a.preset, device=a.device, threads=a.threads, seq_len=a.seq_len, machine=platform.machine(),
                cpus=os.cpu_count(), command=command.strip())

    def emit(figure, cfg, res):
        _emit(dict(bench="bench_train", figure=figure, **{k: cfg[k] for k in ("batch_size", "precision", "tasks")},
                   **res, load_average=os.getloadavg()[0], **meta), a.out)

    if "step" in a.parts:
        for B in a.batch_sizes:
            for prec in a.precisions:
                cfg = dict(base, kind="step", batch_size=B, precision=prec)
                emit("step", cfg, _run(cfg))
    if "tasks" in a.parts:
        for K in a.tasks:
            cfg = dict(base, kind="tasks", batch_size=a.growth_batch, tasks=K)
            emit("tasks", cfg, _run(cfg))
    if "batch" in a.parts:
        for B in a.batch_growth:
            cfg = dict(base, kind="batch", batch_size=B)
            emit("batch", cfg, _run(cfg))
    if "adatt" in a.parts:
        cfg = dict(base, kind="adatt", batch_size=a.growth_batch)
        emit("adatt", cfg, _run(cfg))
    if "compile" in a.parts and a.compile:
        cfg = dict(base, kind="compile", batch_size=a.compile_batch, reps=a.reps)
        emit("compile", cfg, _run(cfg, timeout=a.compile_timeout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
