"""Parameter count and forward+backward time of each of the seven shared experts (PLE-3).

Prints one JSON line per expert:
``{"bench": "experts", "expert": ..., "parameters": ..., "posts_estimate": ..., "batch_size": ...,
"fwd_bwd_ms": ..., "threads": ..., "device": ..., "command": ...}``.

Usage::

    python benchmarks/bench_experts.py                  # 4096 customers, CPU, torch's default threads
    python benchmarks/bench_experts.py --batch 512 --reps 5 --threads 1
    python benchmarks/bench_experts.py --device cuda    # on a GPU (times include a synchronize)
    python benchmarks/bench_experts.py --out benchmarks/results/bench_experts.jsonl

The inputs have the posts' shapes (features 644, transaction sequence 180 x 16, sessions 90 x 8,
32-point diagrams); their values are random, which does not change the timing. The experts have
the modules' default sizes (the chapter's experiments use smaller Temporal, HGCN and OT experts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from ple import seed_everything
from ple.experts.pool import ExpertPool, benchmark_experts, synthetic_expert_inputs


def describe_device(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU threads and cores."""
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU ({model}), {torch.get_num_threads()} thread(s) on {usable} core(s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096, help="customers per batch")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--txn-len", type=int, default=180)
    parser.add_argument("--session-len", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = torch.device(args.device)
    pool = ExpertPool().to(device)
    inputs = synthetic_expert_inputs(
        args.batch, txn_len=args.txn_len, session_len=args.session_len, seed=args.seed
    ).to(device)
    rows = benchmark_experts(inputs, pool, reps=args.reps)
    given = list(argv if argv is not None else sys.argv[1:])
    if "--out" in given:  # where the lines are written is not part of the measurement
        i = given.index("--out")
        del given[i : i + 2]
    command = "python benchmarks/bench_experts.py " + " ".join(given)
    lines = []
    for row in rows:
        row.update({
            "bench": "experts",
            "threads": torch.get_num_threads(),
            "device": describe_device(device),
            "torch": torch.__version__,
            "txn_len": args.txn_len,
            "session_len": args.session_len,
            "command": command.strip(),
        })
        lines.append(json.dumps(row, sort_keys=True))
    print("\n".join(lines), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
