"""Parameter count and forward+backward time of each of the seven shared experts (PLE-3).

Prints one JSON line per expert and batch size:
``{"bench": "experts", "expert": ..., "variant": "package", "parameters": ..., "posts_estimate": ...,
"batch_size": ..., "fwd_bwd_ms": ..., "threads": ..., "device": ..., "clock": ..., "load_avg_1min": ...,
"command": ...}``, one line per batch for the whole pool (``"expert": "pool"``), and with
``--reference`` the speed-up lines (``"bench": "experts_speedup"``: reference / package, same run)
for the Temporal and OT experts, the scan and the liquid cell alone, and the pool.

Usage::

    python benchmarks/bench_experts.py                           # 4096 customers, CPU
    python benchmarks/bench_experts.py --batch 512 4096 --threads 2
    python benchmarks/bench_experts.py --batch 512 --threads 2 --reference
    python benchmarks/bench_experts.py --batch 512 --threads 1 --clock cpu --reference   # shared machine
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_experts.py --batch 512 --threads 2 --clock cpu --reference
    MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=4294967295 MALLOC_TOP_PAD_=1073741824 \
        python benchmarks/bench_experts.py --batch 512 4096 --threads 1 --clock cpu   # heap reuse
    python benchmarks/bench_experts.py --device cuda              # on a GPU (times include a synchronize)
    python benchmarks/bench_experts.py --out benchmarks/results/bench_experts.jsonl

``--reference`` also times the sequential forms the package replaced, in the same run: the Temporal
expert with the Mamba(-1) selective scan stepped through time (a Python loop with a hand-written
backward) and the liquid cell stepped with its recurrent fused solver, and the Optimal Transport
expert with 10 Sinkhorn iterations unrolled under autograd on `[B, P, K, K]`, each interleaved rep by
rep with the package form (the reference Temporal expert runs the whole batch at once, as the
replaced expert did; the package one runs slices of `batch_slice` customers); the reference pool is
the package pool with those two experts swapped for their reference forms. The scan alone is compared at the expert's default sizes (sequential:
64 channels x 8 states, a decay per channel and state; chunked: one head of 64 channels, 8 states).

The inputs have the posts' shapes (features 644, transaction sequence 180 x 16, sessions 90 x 8,
32-point diagrams); their values are random, which does not change the timing. The experts have
the modules' default sizes (the chapter's experiments use smaller Temporal, HGCN and OT experts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ple import seed_everything
from ple.experts.optimal_transport import OptimalTransportExpert
from ple.experts.pool import ExpertPool, benchmark_experts, run_expert, synthetic_expert_inputs
from ple.experts.temporal import TemporalExpert

# ---------------------------------------------------------------- the reference (sequential) forms

class _SequentialScan(torch.autograd.Function):
    """The recurrence of eq-ssm with a hand-written backward (the reverse recurrence, eq-ssm-adjoint).

    Forward keeps only the inputs and one state per chunk; backward recomputes each chunk's states
    from its starting state and runs ``g_t = C_t y'_t + A_bar_{t+1} g_{t+1}`` backwards in time.
    Inside a chunk the tensors are time-major `[L, B, d, N]`, so every step reads and writes
    contiguous memory.
    """

    @staticmethod
    def _chunk(u, delta, A, B, h):
        # u, delta [L, B, d]; B [L, B, N]; h [B, d, N] -> A_bar, H (states) [L, B, d, N]
        dA = torch.exp(delta.unsqueeze(-1) * A)  # A_bar_t = exp(delta_t A)
        H = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # B_bar_t u_t, overwritten by h_t below
        for t in range(H.shape[0]):
            h = H[t].addcmul_(dA[t], h)  # h_t = A_bar_t h_{t-1} + B_bar_t u_t
        return dA, H

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk_len):  # type: ignore[override]
        ut, dt, Bt, Ct = (x.transpose(0, 1).contiguous() for x in (u, delta, B, C))  # time-major
        T = ut.shape[0]
        ys, h, starts = [], h0, []
        for s in range(0, T, chunk_len):
            e = min(s + chunk_len, T)
            starts.append(h)
            _, H = _SequentialScan._chunk(ut[s:e], dt[s:e], A, Bt[s:e], h)
            h = H[-1]
            ys.append((H * Ct[s:e].unsqueeze(2)).sum(-1))  # y_t = C_t . h_t
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts))
        ctx.chunk_len = chunk_len
        return torch.cat(ys).transpose(0, 1), h.clone()

    @staticmethod
    def backward(ctx, gy, gh_last):  # type: ignore[override]
        u, delta, A, B, C, starts = ctx.saved_tensors
        ut, dt, Bt, Ct, gyt = (x.transpose(0, 1).contiguous() for x in (u, delta, B, C, gy))
        L, T = ctx.chunk_len, ut.shape[0]
        gu, gdelta, gB, gC = (torch.empty_like(x) for x in (ut, dt, Bt, Ct))
        gA = torch.zeros_like(A)
        # carry = A_bar_{t+1} g_{t+1}: the gradient reaching h_t from the future
        carry = torch.zeros_like(starts[0]) if gh_last is None else gh_last.clone()
        for ci, s in reversed(list(enumerate(range(0, T, L)))):
            e = min(s + L, T)
            dA, H = _SequentialScan._chunk(ut[s:e], dt[s:e], A, Bt[s:e], starts[ci])
            h_prev = torch.cat([starts[ci].unsqueeze(0), H[:-1]])
            gH = gyt[s:e].unsqueeze(-1) * Ct[s:e].unsqueeze(2)  # direct part C_t y'_t
            for t in reversed(range(e - s)):
                gH[t] += carry  # g_t = C_t y'_t + A_bar_{t+1} g_{t+1}
                carry = gH[t] * dA[t]
            g_log = gH * h_prev * dA  # dL / d(delta_t A)
            gdelta[s:e] = (g_log * A).sum(-1)
            gA += (g_log * dt[s:e].unsqueeze(-1)).sum((0, 1))
            g_du = (gH * Bt[s:e].unsqueeze(2)).sum(-1)  # dL / d(delta_t u_t)
            gdelta[s:e] += g_du * ut[s:e]
            gu[s:e] = g_du * dt[s:e]
            gB[s:e] = (gH * (dt[s:e] * ut[s:e]).unsqueeze(-1)).sum(2)
            gC[s:e] = (H * gyt[s:e].unsqueeze(-1)).sum(2)
        return (gu.transpose(0, 1), gdelta.transpose(0, 1), gA, gB.transpose(0, 1),
                gC.transpose(0, 1), carry, None)


def sequential_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    chunk_len: int = 16,
) -> torch.Tensor:
    """Selective state-space recurrence (eq-ssm), batched over batch, channels and states.

    ``h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t``,  ``y_t = C_t . h_t + D * u_t``
    (zero-order hold for A, Euler for B, as in Mamba), per channel d and state n. The backward
    pass is the reverse recurrence written out (eq-ssm-adjoint), recomputing the states chunk by
    chunk, so memory is O(B d N (T / chunk_len + chunk_len)) instead of O(B d N T).

    Args:
        u: inputs `[B, T, d]`.
        delta: step sizes `[B, T, d]` (> 0).
        A: diagonal state matrix `[d, N]` (negative entries).
        B, C: input and output projections `[B, T, N]`.
        D: skip `[d]` or None.
        h0: initial state `[B, d, N]` or None (zeros).
        chunk_len: time steps per recomputed chunk.

    Returns:
        y `[B, T, d]`.
    """
    bsz, T, d = u.shape
    if h0 is None:
        h0 = u.new_zeros(bsz, d, A.shape[1])
    y, _ = _SequentialScan.apply(u, delta, A, B, C, h0, chunk_len)
    return y if D is None else y + u * D


class SequentialSSM(nn.Module):
    """A Mamba block (Gu & Dao 2023) around `sequential_selective_scan` (eq-ssm).

    ``[u, z] = W_in x;  u = SiLU(causal_conv(u));  delta = softplus(W_dt W_x u);  B_t, C_t = W_x u;``
    ``y = sequential_selective_scan(u, delta, A, B, C, D) * SiLU(z);  out = W_out y``.

    Shapes: `[B, T, d_model]` -> `[B, T, d_model]`; causal in time.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 8,
        expand: int = 2,
        conv_kernel: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        chunk_len: int = 16,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.d_state, self.chunk_len = d_state, chunk_len
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner)
        self.conv = nn.Conv1d(d_inner, d_inner, conv_kernel, groups=d_inner, padding=conv_kernel - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model)

    def ssm_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The selective parameters for input `x` `[B, T, d_model]`: u, delta `[B, T, d_inner]`,
        A `[d_inner, N]`, B, C `[B, T, N]`, D `[d_inner]`, gate z `[B, T, d_inner]`."""
        T = x.shape[1]
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv(u.transpose(1, 2))[..., :T].transpose(1, 2))  # causal: left context only
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        return {"u": u, "delta": delta, "A": -torch.exp(self.A_log), "B": B, "C": C, "D": self.D, "z": z}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        p = self.ssm_inputs(x)
        y = sequential_selective_scan(p["u"], p["delta"], p["A"], p["B"], p["C"], p["D"], chunk_len=self.chunk_len)
        return self.out_proj(y * F.silu(p["z"]))


class SequentialLiquidCell(nn.Module):
    """Liquid time-constant cell (Hasani et al. 2021), fused solver step (eq-ltc).

    ``f_t = sigmoid(W_in I_t + W_rec x_t + b)``;
    ``x_{t+dt} = (x_t + dt f_t * A) / (1 + dt (1 / tau + f_t))``, ``tau = softplus(.) > 0``.

    Shapes: inputs `[B, T, input_dim]`, dt `[B, T]` or None (unit steps) -> states `[B, T, hidden_dim]`.
    """

    def __init__(self, input_dim: int, hidden_dim: int, ode_unfolds: int = 1) -> None:
        super().__init__()
        self.hidden_dim, self.ode_unfolds = hidden_dim, ode_unfolds
        self.w_in = nn.Linear(input_dim, hidden_dim)
        self.w_rec = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.tau_raw = nn.Parameter(torch.zeros(hidden_dim))
        self.A = nn.Parameter(torch.empty(hidden_dim).uniform_(-1, 1))

    def forward(self, inputs: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
        bsz, T, _ = inputs.shape
        pre = self.w_in(inputs)  # [B, T, H]
        inv_tau = 1 / (F.softplus(self.tau_raw) + 1e-3)
        x = inputs.new_zeros(bsz, self.hidden_dim)
        states = []
        for t in range(T):
            step = (inputs.new_ones(bsz, 1) if dt is None else dt[:, t : t + 1]) / self.ode_unfolds
            for _ in range(self.ode_unfolds):
                f = torch.sigmoid(pre[:, t] + self.w_rec(x))
                x = (x + step * f * self.A) / (1 + step * (inv_tau + f))
            states.append(x)
        return torch.stack(states, dim=1)

    recur = forward  # the expert calls its cells unchecked

class ReferenceTemporalExpert(TemporalExpert):
    """TemporalExpert with the sequential SSM and liquid cell that the chunked forms replaced, run
    on the whole batch at once as the replaced expert was (no batch slices)."""

    def __init__(self, d_model: int = 32, d_state: int = 8, expand: int = 2, ltc_hidden: int = 32,
                 session_dim: int = 8, chunk_len: int = 16, **kwargs) -> None:
        super().__init__(d_model=d_model, d_state=d_state, expand=expand, ltc_hidden=ltc_hidden,
                         session_dim=session_dim, chunk_len=chunk_len, batch_slice=2**31 - 1, **kwargs)
        self.ssm = SequentialSSM(d_model, d_state, expand, chunk_len=chunk_len)
        self.ltc = SequentialLiquidCell(session_dim, ltc_hidden)


def unrolled_sinkhorn_cost(a, b, C, eps, n_iter):
    """<P, C> after n_iter log-domain Sinkhorn iterations on [..., K, K], differentiated by autograd."""
    log_a, log_b = a.clamp_min(1e-30).log().unsqueeze(-1), b.clamp_min(1e-30).log().unsqueeze(-2)
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(n_iter):
        f = eps * log_a - eps * torch.logsumexp((g - C) / eps, dim=-1, keepdim=True)
        g = eps * log_b - eps * torch.logsumexp((f - C) / eps, dim=-2, keepdim=True)
    P = torch.exp((f + g - C) / eps)
    return (P * C).sum((-2, -1))


class ReferenceOptimalTransportExpert(OptimalTransportExpert):
    """OptimalTransportExpert with 10 unrolled Sinkhorn iterations at eps = 0.1 on [B, P, K, K]."""

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        a = self.histogram(x).unsqueeze(1)
        b = self.prototypes().unsqueeze(0)
        C = (self.support.unsqueeze(1) - self.support.unsqueeze(0)).abs().sum(-1)
        return unrolled_sinkhorn_cost(a, b, C / C.mean().clamp_min(1e-6), 0.1, 10)


REFERENCE_CLASSES = {"temporal": ReferenceTemporalExpert, "optimal_transport": ReferenceOptimalTransportExpert}


def time_against_reference(name: str, expert: nn.Module, inputs, reps: int, warmup: int = 1,
                           clock=time.perf_counter) -> dict:
    """Forward + backward of expert `name` and of its reference form, interleaved rep by rep (so
    that load on a shared machine hits both alike); medians in ms."""
    reference = REFERENCE_CLASSES[name]().to(next(expert.parameters()).device)
    sync = torch.cuda.synchronize if next(expert.parameters()).is_cuda else (lambda: None)
    times: dict[str, list[float]] = {"package": [], "reference": []}
    for rep in range(warmup + reps):
        for variant, module in (("package", expert), ("reference", reference)):
            module.zero_grad(set_to_none=True)
            sync()
            start = clock()
            run_expert(module, name, inputs).square().mean().backward()
            sync()
            if rep >= warmup:
                times[variant].append(1000 * (clock() - start))
    return {k: float(np.median(v)) for k, v in times.items()}


def time_components(batch: int, txn_len: int, session_len: int, reps: int, clock, device) -> dict:
    """The two recurrences alone, fwd + bwd, at the Temporal expert's default sizes: the
    sequential Mamba scan (d_inner 64, a decay per channel and state) against the chunked one
    (one head of 64 channels, state size 8), and the recurrent liquid cell against the closed form."""
    from ple.experts.temporal import LiquidCell, selective_scan

    gen = torch.Generator().manual_seed(0)
    d, n = 64, 8

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_(True)

    u, Bm, Cm = rnd(batch, txn_len, d), rnd(batch, txn_len, n), rnd(batch, txn_len, n)
    delta = (0.01 + 0.1 * torch.rand(batch, txn_len, d, generator=gen)).to(device).requires_grad_(True)
    A_seq = -torch.rand(d, n, generator=gen).to(device).requires_grad_(True)
    A_one = -torch.rand(1, generator=gen).to(device).requires_grad_(True)
    sessions = torch.randn(batch, session_len, 8, generator=gen).to(device)
    cells = {"reference": SequentialLiquidCell(8, 32).to(device), "package": LiquidCell(8, 32).to(device)}
    work = {
        "selective_scan": {
            "reference": lambda: sequential_selective_scan(u, delta, A_seq, Bm, Cm),
            "package": lambda: selective_scan(u.unsqueeze(2), delta[..., :1], A_one, Bm, Cm),
        },
        "liquid_cell": {k: (lambda c=c: c(sessions)) for k, c in cells.items()},
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {}
    for name, pair in work.items():
        times: dict[str, list[float]] = {"package": [], "reference": []}
        for rep in range(1 + reps):
            for variant, fn in pair.items():
                sync()
                start = clock()
                fn().square().mean().backward()
                sync()
                if rep >= 1:
                    times[variant].append(1000 * (clock() - start))
        out[name] = {k: float(np.median(v)) for k, v in times.items()}
    return out


# ---------------------------------------------------------------- the measurement


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
    parser.add_argument("--batch", type=int, nargs="+", default=[4096], help="customers per batch")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--txn-len", type=int, default=180)
    parser.add_argument("--session-len", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (steadier on a shared machine)")
    parser.add_argument("--reference", action="store_true",
                        help="also time the sequential scan and the unrolled Sinkhorn, with speed-ups")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    pool = ExpertPool().to(device)
    given = list(argv if argv is not None else sys.argv[1:])
    if "--out" in given:  # where the lines are written is not part of the measurement
        i = given.index("--out")
        del given[i : i + 2]
    common = {
        "threads": torch.get_num_threads(),
        "device": describe_device(device),
        "torch": torch.__version__,
        "txn_len": args.txn_len,
        "session_len": args.session_len,
        "clock": args.clock,
        # glibc's allocator settings, if any: with the defaults, tensors above 32 MB are mapped
        # afresh (and page-faulted) on every allocation, which makes large batches superlinear
        **({"malloc_env": malloc} if (malloc := {k: v for k, v in os.environ.items()
                                                 if k.startswith("MALLOC_")}) else {}),
        # OpenMP's wait policy, if set: with more than one thread on a loaded machine, the default
        # (spinning) burns CPU time while a thread waits for one that is not scheduled
        **({"omp_env": omp} if (omp := {k: v for k, v in os.environ.items()
                                        if k.startswith(("OMP_", "GOMP_"))}) else {}),
        "command": ("python benchmarks/bench_experts.py " + " ".join(given)).strip(),
    }
    lines = []

    def emit(row: dict) -> None:
        # the machine's 1-minute load average when the line was written: on a shared machine,
        # a load above the core count means the times are inflated (ratios in one run less so)
        load = {"load_avg_1min": round(os.getloadavg()[0], 2)} if hasattr(os, "getloadavg") else {}
        lines.append(json.dumps({**row, **common, **load}, sort_keys=True))
        print(lines[-1], flush=True)

    for batch in args.batch:
        inputs = synthetic_expert_inputs(
            batch, txn_len=args.txn_len, session_len=args.session_len, seed=args.seed
        ).to(device)
        rows = benchmark_experts(inputs, pool, reps=args.reps, clock=clock)
        for row in rows:
            emit({"bench": "experts", "variant": "package", **row})
        total = sum(r["fwd_bwd_ms"] for r in rows)
        emit({"bench": "experts", "variant": "package", "expert": "pool", "batch_size": batch,
              "fwd_bwd_ms": total, "parameters": sum(r["parameters"] for r in rows)})
        if args.reference:
            pair = {n: time_against_reference(n, pool.experts[n], inputs, args.reps, clock=clock)
                    for n in REFERENCE_CLASSES}
            for name, t in pair.items():
                emit({"bench": "experts_speedup", "expert": name, "batch_size": batch,
                      "reference_ms": t["reference"], "package_ms": t["package"],
                      "speedup": t["reference"] / t["package"]})
            parts = time_components(batch, args.txn_len, args.session_len, args.reps, clock, device)
            for name, t in parts.items():
                emit({"bench": "experts_speedup", "expert": name, "batch_size": batch,
                      "reference_ms": t["reference"], "package_ms": t["package"],
                      "speedup": t["reference"] / t["package"]})
            # the reference pool: the same five other experts, the two reference forms
            others = sum(r["fwd_bwd_ms"] for r in rows if r["expert"] not in pair)
            ref_total = others + sum(t["reference"] for t in pair.values())
            pkg_total = others + sum(t["package"] for t in pair.values())
            emit({"bench": "experts_speedup", "expert": "pool", "batch_size": batch,
                  "reference_ms": ref_total, "package_ms": pkg_total, "speedup": ref_total / pkg_total})
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
