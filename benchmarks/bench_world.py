"""Generation time and peak memory of the customer world (ple.data.world.generate).

Prints one JSON line per world size. Each size runs in a fresh subprocess, so its peak memory is
its own; sizes above --stream-above are streamed to .npy memmaps in a temporary directory.

    python benchmarks/bench_world.py                       # 100,000 and 1,000,000 customers
    python benchmarks/bench_world.py --sizes 20000 --profile ci --oracle
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.npy"))


def run_one(n: int, profile: str, seed: int, stream: bool, chunk_size: int, with_oracle: bool) -> dict:
    from ple.data import world as W

    tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="world-") as tmp:
        t0 = time.perf_counter()
        w = W.generate(n, seed=seed, profile=profile, chunk_size=chunk_size,
                       out_dir=tmp if stream else None)
        seconds = time.perf_counter() - t0
        nbytes = _dir_bytes(Path(tmp)) if stream else sum(
            a.nbytes for a in (w.features, w.txn_seq, w.session_seq, w.balance_seq, w.interactions))
        out = dict(benchmark="world_generate", profile=profile, n_customers=n, seed=seed,
                   streamed=stream, chunk_size=chunk_size, seconds=round(seconds, 2),
                   customers_per_s=round(n / seconds), output_gb=round(nbytes / 1e9, 3),
                   peak_traced_mb=round(tracemalloc.get_traced_memory()[1] / 2**20, 1))
        if with_oracle:
            t0 = time.perf_counter()
            W.oracle(w, chunk_size=chunk_size)
            out["oracle_seconds"] = round(time.perf_counter() - t0, 2)
        del w
    tracemalloc.stop()
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-size", type=int, default=8192)
    ap.add_argument("--stream-above", type=int, default=200_000,
                    help="stream worlds larger than this to a temporary directory")
    ap.add_argument("--oracle", action="store_true", help="also time the oracle")
    ap.add_argument("--single", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.single is not None:
        res = run_one(args.single, args.profile, args.seed, args.single > args.stream_above,
                      args.chunk_size, args.oracle)
        print(json.dumps(res), flush=True)
        return 0
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--single", str(n), "--profile", args.profile,
               "--seed", str(args.seed), "--chunk-size", str(args.chunk_size),
               "--stream-above", str(args.stream_above)] + (["--oracle"] if args.oracle else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(json.dumps(dict(benchmark="world_generate", n_customers=n, error=proc.stderr[-2000:])))
            continue
        print(proc.stdout.strip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
