"""Speed of a training step with the input checks on and off (ple.checks' validation switch).

The step is PLE-5's task side on the 16 active tasks (group task experts with soft cluster
routing, logit transfer in Kahn order, the towers), the per-task losses of `ple.losses.task_loss`
with label masks, their sum, backward and an AdamW step. With validation on, every boundary also
runs its device-syncing value checks (NaN / inf scans, label ranges, masks, probability rows);
with it off (what `ple.fit.fit` does inside its step) only the host-side type and shape checks
remain. Rounds alternate on / off so that load drifts hit both; one JSON line per setting with
the median step time over rounds, then one line with their ratio.

    python benchmarks/bench_checks.py                      # CPU, batch 512
    python benchmarks/bench_checks.py --threads 1 --clock process   # shared CPU machine
    python benchmarks/bench_checks.py --device cuda --batch 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(batch: int, input_dim: int, device: torch.device, seed: int):
    from ple.tasks import TRANSFER_EDGES, active_tasks
    from ple.towers import TaskSide

    torch.manual_seed(seed)
    tasks = active_tasks()
    names = {t.name for t in tasks}
    edges = [e for e in TRANSFER_EDGES if e[0] in names and e[1] in names]
    side = TaskSide(tasks, input_dim=input_dim, transfer_edges=edges).to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, len(tasks), input_dim, generator=g).to(device)
    clusters = torch.softmax(2 * torch.randn(batch, 20, generator=g), dim=1).to(device)
    targets, masks = {}, {}
    for t in tasks:
        if t.task_type == "binary":
            y = (torch.rand(batch, generator=g) < 0.3).float()
        elif t.task_type in ("multiclass", "contrastive"):
            y = torch.randint(0, t.num_classes, (batch,), generator=g)
        else:
            y = torch.randn(batch, generator=g) if t.output_dim == 1 else torch.randn(batch, t.output_dim, generator=g)
        targets[t.name] = y.to(device)
        masks[t.name] = (torch.rand(batch, generator=g) < 0.8).float().to(device)  # 0 / 1: 20 % unlabelled
    opt = torch.optim.AdamW(side.parameters(), lr=1e-3)
    return side, opt, x, clusters, targets, masks


def step(side, opt, x, clusters, targets, masks) -> None:
    preds = side(x, clusters)
    loss = sum(side.task_losses(preds, targets, masks).values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def timed(n_steps: int, enabled: bool, args, device, clock=time.perf_counter) -> float:
    from ple.checks import validation

    with validation(enabled):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        for _ in range(n_steps):
            step(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (clock() - t0) / n_steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--input-dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="process: this process's CPU seconds, steadier on a shared CPU machine")
    a = ap.parse_args(argv)
    clock = time.process_time if a.clock == "process" else time.perf_counter
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    import ple

    args = build(a.batch, a.input_dim, device, a.seed)
    timed(2, True, args, device)  # warm-up, both paths
    timed(2, False, args, device)
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(a.rounds):
        for enabled in ((True, False) if r % 2 == 0 else (False, True)):
            times[enabled].append(timed(a.steps, enabled, args, device, clock))
    common = dict(benchmark="training_step_checks", model="TaskSide(16 active tasks)", batch=a.batch,
                  input_dim=a.input_dim, device=str(device),
                  device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  threads=a.threads, steps_per_round=a.steps, rounds=a.rounds, clock=a.clock,
                  ple_version=ple.__version__)
    med = {}
    for enabled in (True, False):
        med[enabled] = statistics.median(times[enabled])
        print(json.dumps({**common, "validation": enabled, "step_ms_median": round(1e3 * med[enabled], 3),
                          "step_ms_min": round(1e3 * min(times[enabled]), 3),
                          "samples_per_s": round(a.batch / med[enabled])}))
    print(json.dumps({**common, "ratio_on_over_off": round(med[True] / med[False], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
