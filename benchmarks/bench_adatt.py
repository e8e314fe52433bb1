"""Time and memory overhead per training step of adaTT's gradient extraction (ADATT-2).

For `PLESystem` (PLE-6) with all 16 tasks, one training step — forward, per-task losses, backward —
is timed without extraction and with `ple.adatt.TaskAffinityComputer` extracting the 16 task
gradients on the shared-expert parameters, as the posts' loop (16 backward passes,
``retain_graph=True``) and as one batched backward (``is_grads_batched=True``). Prints one JSON line
per (model, method):

``{"bench": "adatt_extraction", "model": ..., "method": "none" | "loop" | "batched",
"batch_size": ..., "tasks": 16, "shared_parameters": ..., "step_ms": ..., "step_cpu_ms": ...,
"overhead_per_step": ...,
"overhead_interval_10": ..., "peak_mb": ..., "forward_peak_mb": ..., "peak_over_forward": ...,
"memory_overhead_mb": ..., "device": ..., "load_average": ..., "command": ...}``

``overhead_per_step`` is the step's time / the plain step's - 1 (extraction on every step; CPU
time of the process on CPU, ``step_cpu_ms``, which a shared machine inflates less than the wall
time ``step_ms``; wall time on CUDA);
``overhead_interval_10`` the same averaged over `grad_interval` = 10 steps. Memory: on CUDA the
peak allocated by torch (``max_memory_allocated``) during one step, and during the forward pass
alone; on CPU the growth of the process's peak resident set over the model and inputs, each method
measured in a fresh process (``--worker``). Two models: the system with all seven experts (the
batched backward has no vmap rule for the optimal-transport expert's Sinkhorn layer, so only the
loop runs there) and the system without that expert (both run).

Usage::

    python benchmarks/bench_adatt.py                                  # ci preset, batch 256, 1 CPU thread
    python benchmarks/bench_adatt.py --preset default --batch 1024 --device cuda
    python benchmarks/bench_adatt.py --out benchmarks/results/bench_adatt.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from ple import seed_everything
from ple.adatt import TaskAffinityComputer
from ple.system import PLESystem, preset, synthetic_system_inputs

MODELS = ("all seven experts", "without optimal transport")


def _device_name(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU ({model}), {threads} thread(s)"


def _config(preset_name: str, model: str):
    cfg = preset(preset_name)
    if model == "without optimal transport":
        cfg = cfg.replace(experts=tuple(e for e in cfg.experts if e != "optimal_transport"),
                          expert_overrides=tuple(o for o in cfg.expert_overrides if o[0] != "optimal_transport"))
    return cfg


def _targets(system: PLESystem, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, spec in system.specs.items():
        if spec.task_type == "binary":
            out[name] = torch.randint(0, 2, (batch,), generator=g).float()
        elif spec.task_type in ("multiclass", "contrastive"):
            out[name] = torch.randint(0, spec.num_classes, (batch,), generator=g)
        else:
            out[name] = torch.randn(batch, spec.output_dim, generator=g)
    return {k: v.to(device) for k, v in out.items()}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(preset_name: str, model: str, method: str, batch: int, reps: int, device: torch.device) -> dict:
    """Time `reps` steps with extraction by `method` ("none", "loop", "batched")."""
    seed_everything(0)
    cfg = _config(preset_name, model)
    system = PLESystem(cfg).to(device).train()
    inputs = synthetic_system_inputs(cfg, batch, seed=0).to(device)
    targets = _targets(system, batch, device)
    comp = None if method == "none" else TaskAffinityComputer(system.task_names, system.pool, method=method)

    def step():
        out = system(inputs)
        losses = {t: system.task_loss(t, out[t], targets[t]).mean() for t in system.task_names}
        if comp is not None:
            comp(losses)
        system.zero_grad(set_to_none=True)
        torch.stack(list(losses.values())).sum().backward()

    # forward-only peak (the graph is built: what retain_graph keeps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_mb()
    out = system(inputs)
    _ = sum(system.task_loss(t, out[t], targets[t]).mean() for t in system.task_names)
    if device.type == "cuda":
        forward_peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        forward_peak = _rss_mb() - base
    del out, _
    step()  # warm-up
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(reps):
        step()
    _sync(device)
    step_ms = 1e3 * (time.perf_counter() - start) / reps
    step_cpu_ms = 1e3 * (time.process_time() - start_cpu) / reps
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else _rss_mb() - base
    return dict(model=model, method=method, step_ms=step_ms, step_cpu_ms=step_cpu_ms, peak_mb=peak, forward_peak_mb=forward_peak,
                shared_parameters=sum(p.numel() for p in system.pool.parameters()),
                tasks=len(system.task_names), method_used=None if comp is None else comp.method_used)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ci", choices=("ci", "default", "full"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.worker:
        print(json.dumps(run_one(args.preset, args.worker[0], args.worker[1], args.batch, args.reps, device)))
        return
    command = "python benchmarks/bench_adatt.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                                                             if a != "--out" and not a.endswith(".jsonl"))
    lines = []
    for model in MODELS:
        methods = ("none", "loop") if model == "all seven experts" else ("none", "loop", "batched")
        rows = {}
        for method in methods:
            if device.type == "cpu":  # a fresh process per method: the peak resident set is its own
                cmd = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch), "--reps",
                       str(args.reps), "--threads", str(args.threads), "--device", args.device,
                       "--worker", model, method]
                res = subprocess.run(cmd, check=True, capture_output=True, text=True)
                rows[method] = json.loads(res.stdout.strip().splitlines()[-1])
            else:
                rows[method] = run_one(args.preset, model, method, args.batch, args.reps, device)
        key = "step_cpu_ms" if device.type == "cpu" else "step_ms"  # CPU time: robust on a shared machine
        plain = rows["none"][key]
        for r in rows.values():
            over = r[key] / plain - 1.0
            line = dict(bench="adatt_extraction", preset=args.preset, batch_size=args.batch, **r,
                        overhead_per_step=over, overhead_interval_10=over / 10,
                        peak_over_forward=r["peak_mb"] / r["forward_peak_mb"] if r["forward_peak_mb"] > 0 else None,
                        memory_overhead_mb=r["peak_mb"] - rows["none"]["peak_mb"],
                        device=_device_name(device, args.threads), torch=torch.__version__,
                        load_average=os.getloadavg()[0], command=command.strip())
            lines.append(line)
            print(json.dumps(line), flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
