"""ple.experts.temporal -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['segment_sums', 'ssd_scan', 'selective_scan', 'SelectiveSSM', 'LiquidCell', 'PatchCausalTransformer', 'TemporalExpert']

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ple.checks import ShapeError, check_float, check_int, check_tensor, shape_str
from ple.experts.base import SharedExpert
from ple.layers import MLP


def segment_sums(cum: torch.Tensor) -> torch.Tensor:
    """Sums of log-decays between every pair of steps of a chunk (eq-ssd-mask).

    `cum` `[..., L]` holds the chunk-local cumulative log-decays; ``out[..., t, r] = cum_t - cum_r``
    (the log-decay from step r to step t) for r <= t and -inf for r > t, so ``exp(out)`` is the
    chunk's decay matrix with every entry in [0, 1]. `[..., L]` -> `[..., L, L]`.
    """
    if not isinstance(cum, torch.Tensor) or cum.dim() < 1:
        raise ShapeError(f"cum must be a tensor [..., L]; got {shape_str(cum) if isinstance(cum, torch.Tensor) else type(cum).__name__}")
    L = cum.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=cum.device).tril()
    return (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~causal, -math.inf)


def _no_autocast(*devices: str) -> contextlib.ExitStack:
    # autocast off on each of the device types inside; nothing at all where it is off already
    stack = contextlib.ExitStack()
    for device in devices:
        if torch.is_autocast_enabled(device):
            stack.enter_context(torch.autocast(device, enabled=False))
    return stack


def _autocast_off(fn):
    """`fn` with autocast off on the devices of its tensor arguments, so its products run in the
    dtypes they are given (autocast would turn some of a fused pair of products to bf16 / fp16 and
    leave the other: "Input dtypes must be the same"). For the forwards and backwards of the custom
    autograd Functions: a backward may run under autocast too (and may get no tensor at all, every
    output's gradient None: then autocast is off on the CPU and CUDA)."""

    @functools.wraps(fn)
    def run(*args):
        with _no_autocast(*({a.device.type for a in args if isinstance(a, torch.Tensor)} or ("cpu", "cuda"))):
            return fn(*args)

    return run


def _in_float32(fn):
    """`fn` run in float32 or wider, whatever autocast says: its floating tensor arguments in the widest
    of their dtypes and float32, autocast off; its floating tensor results come back in the first
    argument's dtype (as an autocast op's would). The scans' cumulative log-decays and the T-step
    recurrences lose too many digits in bf16 / fp16. With float32 or float64 arguments and autocast
    off nothing changes: ``.to`` of a tensor already in the dtype is the tensor itself."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        first = next(a for a in args if isinstance(a, torch.Tensor))
        dtype = torch.float32
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                dtype = torch.promote_types(dtype, a.dtype)

        def wide(a):
            return a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        def back(a):
            return a.to(first.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        with _no_autocast(first.device.type):
            out = fn(*map(wide, args), **{k: wide(v) for k, v in kwargs.items()})
        return tuple(map(back, out)) if isinstance(out, tuple) else back(out)

    return run


def _chunk_len(T: int, chunk_len: int) -> int:
    # the largest length in (chunk_len / 2, chunk_len] that divides T (no padding), else chunk_len
    return next((n for n in range(chunk_len, chunk_len // 2, -1) if T % n == 0), chunk_len)


class _ChunkProducts(torch.autograd.Function):
    """The products of eq-ssd-chunk that touch the inputs and the states, with their gradients written
    out (no copies to join views, no separate sum of x's two gradient paths):
    ``states = x^T W``, ``S = decay states (+ S0)``, ``y = M x + E S^T`` per chunk.

    x `[Z, L, P]`, M `[Z, L, L]`, E, W `[Z, L, N]`, decay `[G, c, c]` (Z = G c), S0 `[Z, P, N]` or None
    -> y `[Z, L, P]`, S (the state entering each chunk) and states (each chunk's own end state) `[Z, P, N]`."""

    @staticmethod
    @_autocast_off
    def forward(ctx, x, M, E, W, decay, S0):  # type: ignore[override]
        G, c = decay.shape[0], decay.shape[1]
        states = torch.bmm(x.transpose(1, 2), W)  # [Z, P, N]
        S = torch.bmm(decay, states.view(G, c, -1)).view(states.shape)
        if S0 is not None:
            S = S + S0
        y = torch.bmm(M, x).baddbmm_(E, S.transpose(1, 2))
        ctx.save_for_backward(x, M, E, W, decay, states, S)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a tensor of zeros
        return y, S, states

    @staticmethod
    @once_differentiable
    @_autocast_off
    def backward(ctx, gy, gS, gstates):  # type: ignore[override]
        x, M, E, W, decay, states, S = ctx.saved_tensors
        G, c = decay.shape[0], decay.shape[1]
        if gy is None:
            gy = torch.zeros_like(x.new_empty(M.shape[0], M.shape[1], x.shape[-1]))
        gS_all = torch.bmm(gy.transpose(1, 2), E)  # [Z, P, N]
        if gS is not None:
            gS_all = gS_all + gS
        g_decay = torch.bmm(gS_all.view(G, c, -1), states.view(G, c, -1).transpose(1, 2))
        g_states = torch.bmm(decay.transpose(1, 2), gS_all.view(G, c, -1)).view(states.shape)
        if gstates is not None:
            g_states = g_states + gstates
        gx = torch.bmm(M.transpose(1, 2), gy).baddbmm_(W, g_states.transpose(1, 2))
        return (gx, torch.bmm(gy, x.transpose(1, 2)), torch.bmm(gy, S), torch.bmm(x, g_states), g_decay,
                gS_all if ctx.needs_input_grad[5] else None)


@_in_float32
def ssd_scan(
    x: torch.Tensor,
    log_a: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    scale: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    chunk_len: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonal linear recurrence ``h_t = a_t h_{t-1} + s_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``
    in chunks (eq-ssd-chunk): inside every chunk of L steps the outputs are one masked [L, L]
    matrix product per head; across chunks, T / L sequential state passes. Decays enter only as
    ``exp`` of chunk-local sums of log-decays (each <= 0), never as a cumulative product that is
    divided by, so nothing underflows into a division.

    Args:
        x: inputs `[B, T, H, P]` (H heads of P channels).
        log_a: log-decays `[B, T, H]`, <= 0 (one scalar decay per head and step).
        B, C: input and output projections `[B, T, N]`, shared by the heads.
        scale: input scale s `[B, T, H]` (Mamba's delta) or None (1).
        D: skip `[H]` or None.
        h0: initial state `[B, H, P, N]` or None (zeros).
        chunk_len: steps per chunk (the largest divisor of T in (chunk_len / 2, chunk_len] is
            used if there is one; else the sequence is padded).

    Runs in float32 or wider whatever autocast says (the cumulative log-decays need the digits); y
    and the last state come back in x's dtype.

    Returns:
        y `[B, T, H, P]` and the last state `[B, H, P, N]`. With autograd, memory is
        O(B T (H P + H L + N) + B (T / L) H P N): the per-step states `[B, T, H, P, N]` are never formed.
    """
    bsz, T, H, P = x.shape
    N = B.shape[-1]
    L = _chunk_len(T, check_int("chunk_len", chunk_len))
    pad = (-T) % L
    if pad:  # padded steps: decay 1, input 0, so the state carries through unchanged
        x, log_a = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(log_a, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
        scale = None if scale is None else F.pad(scale, (0, 0, 0, pad))
    nc = (T + pad) // L
    xc = x.reshape(bsz, nc, L, H, P).permute(0, 3, 1, 2, 4)  # [B, H, c, L, P] (a view when H = 1)
    la = log_a.reshape(bsz, nc, L, H).permute(0, 3, 1, 2)  # [B, H, c, L]
    sc = None if scale is None else scale.reshape(bsz, nc, L, H).permute(0, 3, 1, 2)
    Bc, Cc = B.reshape(bsz, 1, nc, L, N), C.reshape(bsz, 1, nc, L, N)  # [B, 1, c, L, N]: views
    cum = la.cumsum(-1)  # log-decay from the chunk's start to each step: chunk-local, bounded
    # (1) inside the chunk: M_tr = (C_t . B_r) exp(cum_t - cum_r) s_r for r <= t (eq-ssd-mask)
    M = (Cc @ Bc.transpose(-1, -2)) * torch.exp(segment_sums(cum))  # [B, H, c, L, L]
    if sc is not None:
        M = M * sc.unsqueeze(-2)
    if D is not None:  # the skip D x_t sits on the diagonal
        M = M + torch.diag_embed(D.reshape(1, H, 1, 1).expand(bsz, H, nc, L))
    # (2) each chunk's own state at its end: sum_r exp(cum_L - cum_r) s_r x_r B_r^T
    w = torch.exp(cum[..., -1:] - cum)
    w = (w if sc is None else w * sc).unsqueeze(-1) * Bc  # [B, H, c, L, N]
    # states = x^T w, [B, H, c, P, N], is formed in (4)
    # (3) the state entering each chunk, all chunks at once: S_j = sum_{i < j} exp(tot_{i+1} + .. + tot_{j-1})
    # states_i (+ exp(tot_0 + .. + tot_{j-1}) h0), the sums of log-decays taken by a masked cumsum (never
    # as differences of long cumulative sums); tot_i is chunk i's total log-decay
    tot = cum[..., -1]  # [B, H, c]
    below = torch.ones(nc, nc, dtype=torch.bool, device=x.device).tril(-1)  # [j, i]: i < j
    seg = tot.unsqueeze(-1).expand(*tot.shape, nc).masked_fill(~below, 0).cumsum(-2)  # [j, i]: sum_{i<m<=j}
    # row j of the decay is row j - 1 of seg (the sum over i < m < j); the diagonal and above masked out
    decay = torch.exp(F.pad(seg[..., :-1, :], (0, 0, 1, 0)).masked_fill(~below, -math.inf))  # [B, H, c, c]
    # (4) y = M x + exp(cum_t) C_t . h_start, with the states of (2) and (3), in one function
    S0 = None
    if h0 is not None:
        S0 = torch.exp(F.pad(tot.cumsum(-1)[..., :-1], (1, 0))).unsqueeze(-1).unsqueeze(-1) * h0.unsqueeze(2)
        S0 = S0.reshape(-1, P, N)
    E = (torch.exp(cum).unsqueeze(-1) * Cc).reshape(-1, L, N)
    y, S, states = _ChunkProducts.apply(xc.reshape(-1, L, P), M.reshape(-1, L, L), E, w.reshape(-1, L, N),
                                        decay.reshape(-1, nc, nc), S0)
    S, states = S.view(bsz, H, nc, P, N), states.view(bsz, H, nc, P, N)
    h_last = torch.addcmul(states[:, :, -1], torch.exp(tot[..., -1]).unsqueeze(-1).unsqueeze(-1), S[:, :, -1])
    y = y.view(bsz, H, nc, L, P)
    y = y.permute(0, 2, 3, 1, 4).reshape(bsz, nc * L, H, P)
    return (y[:, :T] if pad else y), h_last


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    chunk_len: int = 16,
) -> torch.Tensor:
    """Selective state-space recurrence (eq-ssm), chunked and parallel over time (eq-ssd-chunk).

    ``h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t^T``, ``y_t = h_t C_t + D u_t`` per head, with
    one scalar decay per head (Mamba-2's A = a I); the heads' P channels share delta, B and C.

    Args:
        u: inputs `[B, T, H, P]`.
        delta: step sizes `[B, T, H]` (> 0).
        A: per-head state decay rates `[H]` (< 0).
        B, C: input and output projections `[B, T, N]`.
        D: skip `[H]` or None.
        h0: initial state `[B, H, P, N]` or None (zeros).
        chunk_len: steps per chunk.

    Returns:
        y `[B, T, H, P]`.
    """
    check_tensor(u, "u", ("B", "T", "H", "P"), "inputs per head")
    bsz, T, H, _ = u.shape
    check_tensor(delta, "delta", (bsz, T, H), "step sizes")
    check_tensor(A, "A", (H,), "decay rate per head")
    check_tensor(B, "B", (bsz, T, "N"), "input projection")
    check_tensor(C, "C", tuple(B.shape), "output projection, as B")
    y, _ = ssd_scan(u, delta * A, B, C, scale=delta, D=D, h0=h0, chunk_len=chunk_len)
    return y


class _CausalConvSiLU(torch.autograd.Function):
    """``SiLU(b + sum_k w_k u_{t-K+1+k})``: the block's causal depthwise convolution and activation,
    channels last. u `[B, T, C]`, w `[C, K]`, b `[C]` -> `[B, T, C]`.

    As K in-place multiply-adds of time-shifted views, forward and backward: the library's
    depthwise `conv1d` wants `[B, C, T]`, which costs two layout copies each way."""

    @staticmethod
    @_autocast_off
    def forward(ctx, u, w, b):  # type: ignore[override]
        K, T = w.shape[1], u.shape[1]
        taps = w.t().contiguous()  # [K, C]: each tap a contiguous row (a strided one halves the speed)
        a = torch.addcmul(b, u, taps[K - 1])  # tap K-1 reads the current step
        for k in range(K - 1):
            s = K - 1 - k  # tap k reads s steps back; the first s steps see the zero padding
            if s < T:
                a[:, s:].addcmul_(u[:, : T - s], taps[k])
        ctx.save_for_backward(u, taps, a)
        return F.silu(a)

    @staticmethod
    @once_differentiable
    @_autocast_off
    def backward(ctx, grad):  # type: ignore[override]
        u, taps, a = ctx.saved_tensors
        K, T = taps.shape[0], u.shape[1]
        ga = torch.ops.aten.silu_backward(grad, a)  # grad * SiLU'(a), SiLU'(a) = s (1 + a (1 - s)), s = sigmoid(a)
        gu = ga * taps[K - 1]
        rows = []  # the taps' gradients built out of place: the backward also runs under vmap
        for k in range(K):  # (adaTT's batched per-task extraction, ple.adatt)
            s = K - 1 - k
            if s < T:
                # s = 0 reads the whole sequence: no slice (a full slice is an alias, which vmap lacks)
                rows.append(((ga[:, s:] * u[:, : T - s]) if s else (ga * u)).sum((0, 1)))
                if s:
                    gu[:, : T - s].addcmul_(ga[:, s:], taps[k])
            else:
                rows.append(ga.new_zeros(ga.shape[-1]))
        return gu, torch.stack(rows, 1), ga.sum((0, 1))


_causal_conv_silu = _in_float32(_CausalConvSiLU.apply)  # u's dtype out, float32 or wider inside


class SelectiveSSM(nn.Module):
    """A Mamba-2 block (Dao & Gu 2024) around `selective_scan` (eq-ssm).

    ``[u, z] = W_in x;  u = SiLU(causal_conv(u));  [delta~, B_t, C_t] = W_x u;  delta = softplus(delta~ + b);``
    ``y = selective_scan(u, delta, A, B, C, D) * SiLU(z);  out = W_out y`` with `n_heads` heads of
    ``expand * d_model / n_heads`` channels.

    Shapes: `[B, T, d_model]` -> `[B, T, d_model]`; causal in time.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 8,
        expand: int = 2,
        n_heads: int = 1,
        conv_kernel: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        chunk_len: int = 16,
    ) -> None:
        super().__init__()
        d_model, d_state, expand = check_int("d_model", d_model), check_int("d_state", d_state), check_int("expand", expand)
        n_heads, conv_kernel = check_int("n_heads", n_heads), check_int("conv_kernel", conv_kernel)
        chunk_len = check_int("chunk_len", chunk_len)
        dt_min = check_float("dt_min", dt_min, 0.0, low_open=True)
        dt_max = check_float("dt_max", dt_max, dt_min, low_open=True)  # dt is drawn log-uniformly in [dt_min, dt_max)
        d_inner = expand * d_model
        if d_inner % n_heads:
            raise ValueError(f"n_heads must divide expand * d_model = {d_inner}; got {n_heads}")
        self.d_state, self.n_heads, self.chunk_len = d_state, n_heads, chunk_len
        self.head_dim = d_inner // n_heads
        self.in_proj = nn.Linear(d_model, 2 * d_inner)
        self.conv = nn.Conv1d(d_inner, d_inner, conv_kernel, groups=d_inner, padding=conv_kernel - 1)
        self.x_proj = nn.Linear(d_inner, n_heads + 2 * d_state, bias=False)
        dt = torch.exp(torch.rand(n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.A_log = nn.Parameter(torch.linspace(0.0, math.log(16.0), n_heads))  # A in [-16, -1]
        self.D = nn.Parameter(torch.ones(n_heads))
        self.out_proj = nn.Linear(d_inner, d_model)

    def ssm_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The selective parameters for input `x` `[B, T, d_model]`: u `[B, T, H, P]`, delta
        `[B, T, H]`, A `[H]`, B, C `[B, T, N]`, D `[H]`, gate z `[B, T, H, P]`."""
        bsz, T, _ = x.shape
        d_inner, W, b = self.conv.in_channels, self.in_proj.weight, self.in_proj.bias
        # u and z as two products: no [B, T, 2 d_inner] tensor to split and no copy to join its gradient
        u, z = F.linear(x, W[:d_inner], b[:d_inner]), F.linear(x, W[d_inner:], b[d_inner:])
        # causal (left context only) depthwise convolution + SiLU, channels last: no layout copies
        u = _causal_conv_silu(u, self.conv.weight.squeeze(1), self.conv.bias)
        dt, B, C = self.x_proj(u).split([self.n_heads, self.d_state, self.d_state], dim=-1)
        shape = (bsz, T, self.n_heads, self.head_dim)
        return {"u": u.reshape(shape), "delta": F.softplus(dt + self.dt_bias), "A": -torch.exp(self.A_log),
                "B": B, "C": C, "D": self.D, "z": z.reshape(shape)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", ("B", "T", self.in_proj.in_features), "d_model")
        return self.block(x)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` without the input check (for callers that validated `x`): `[B, T, d_model]` -> same."""
        p = self.ssm_inputs(x)
        # selective_scan's arithmetic without its checks: log-decay delta A, input scale delta
        y, _ = ssd_scan(p["u"], p["delta"] * p["A"], p["B"], p["C"], scale=p["delta"], D=p["D"], chunk_len=self.chunk_len)
        return self.out_proj((y * F.silu(p["z"])).flatten(2))


def _recur(at: torch.Tensor, xs: torch.Tensor) -> None:
    # x_t = a_t x_{t-1} + b_t in place, time-major: xs holds b [T, B, H] on entry, x on return
    for t in range(1, xs.shape[0]):
        xs[t].addcmul_(at[t], xs[t - 1])


def _recur_backward(at: torch.Tensor, xs: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # the reverse recurrence g_t = x'_t + a_{t+1} g_{t+1}; returns dL/db = g and dL/da_t = g_t x_{t-1},
    # both time-major (grad [B, T, H] batch-major)
    g = grad.transpose(0, 1).clone(memory_format=torch.contiguous_format)
    for t in range(g.shape[0] - 2, -1, -1):
        g[t].addcmul_(at[t + 1], g[t + 1])
    ga = torch.zeros_like(g)
    ga[1:] = g[1:] * xs[:-1]
    return g, ga


class _LinearRecurrence(torch.autograd.Function):
    """``x_t = a_t x_{t-1} + b_t`` (x_0 = b_0) with the reverse recurrence as its backward:
    ``g_t = x'_t + a_{t+1} g_{t+1}``, ``db_t = g_t``, ``da_t = g_t x_{t-1}``. a, b `[B, T, H]` -> `[B, T, H]`.

    Time-major inside, so each step is one in-place multiply-add on contiguous `[B, H]` rows, and
    autograd records one node instead of T."""

    @staticmethod
    @_autocast_off
    def forward(ctx, a, b):  # type: ignore[override]
        at = a.transpose(0, 1).contiguous()
        xs = b.transpose(0, 1).clone(memory_format=torch.contiguous_format)  # [T, B, H], filled in place
        _recur(at, xs)
        ctx.save_for_backward(at, xs)
        return xs.transpose(0, 1)

    @staticmethod
    @once_differentiable
    @_autocast_off
    def backward(ctx, grad):  # type: ignore[override]
        at, xs = ctx.saved_tensors
        g, ga = _recur_backward(at, xs, grad)
        return ga.transpose(0, 1), g.transpose(0, 1)


class _LiquidSteps(torch.autograd.Function):
    """eq-cfc for every step at once: ``f = sigmoid(pre)``, ``k = inv_tau + f``, ``a = exp(-k dt)``,
    ``x_t = a_t x_{t-1} + (1 - a_t) f_t A / k_t`` from x_0 = 0, with its derivatives written out (one
    autograd node, not one per gate, decay and drive). pre `[B, T, H]`, inv_tau, A `[H]`, dt `[B, T]`
    or None (unit steps) -> `[B, T, H]`."""

    @staticmethod
    @_autocast_off
    def forward(ctx, pre, inv_tau, A, dt):  # type: ignore[override]
        f = torch.sigmoid(pre)
        k = f + inv_tau
        la = -k if dt is None else k * (-dt).unsqueeze(-1)  # log a_t
        at = torch.empty_like(la.transpose(0, 1), memory_format=torch.contiguous_format)  # [T, B, H]
        torch.exp(la.transpose(0, 1), out=at)
        em = torch.expm1(la)  # a - 1 without cancellation
        nq = (f * A).div_(k).neg_()  # -x_eq
        xs = torch.empty_like(at)
        torch.mul(em.transpose(0, 1), nq.transpose(0, 1), out=xs)  # the drive (1 - a) x_eq
        _recur(at, xs)
        ctx.save_for_backward(f, k, em, nq, A, dt, at, xs)
        return xs.transpose(0, 1)

    @staticmethod
    @once_differentiable
    @_autocast_off
    def backward(ctx, grad):  # type: ignore[override]
        f, k, em, nq, A, dt, at, xs = ctx.saved_tensors
        g, ga = _recur_backward(at, xs, grad)
        g, ga, a = g.transpose(0, 1), ga.transpose(0, 1), at.transpose(0, 1)  # back to [B, T, H]
        g_la = torch.addcmul(ga, g, nq).mul_(a)  # a and em = a - 1 both have derivative a in log a
        r = (g * em).div_(k)  # dL/d(-x_eq) / k
        g_k = (r * nq).neg_()  # through -x_eq = -f A / k
        g_k = g_k.sub_(g_la) if dt is None else g_k.addcmul_(g_la, dt.unsqueeze(-1), value=-1)  # log a = -k dt
        g_f = torch.addcmul(g_k, r, A, value=-1)  # k = inv_tau + f, and -x_eq's own f
        g_dt = None if dt is None else -(g_la * k).sum(-1)
        return (torch.ops.aten.sigmoid_backward(g_f, f), g_k.sum((0, 1)), -(r * f).sum((0, 1)), g_dt)


_liquid_steps = _in_float32(_LiquidSteps.apply)  # pre's dtype out, float32 or wider inside


class LiquidCell(nn.Module):
    """Liquid time-constant cell in closed form (eq-cfc).

    ``f_t = sigmoid(W_in I_t + b)``, ``k_t = 1 / tau + f_t``, ``x_eq,t = f_t A / k_t``;
    ``x_t = exp(-k_t dt_t) x_{t-1} + (1 - exp(-k_t dt_t)) x_eq,t``: the exact solution of the LTC ODE
    over a step with the input held (Hasani et al. 2022). Everything but the last line is computed
    for all steps at once; the recurrence itself is one in-place multiply-add of a `[B, hidden_dim]`
    state per step, forward and (hand-written) backward (a scalar decay per unit: an [L, L] chunked
    form would do L times the work).

    Shapes: inputs `[B, T, input_dim]`, dt `[B, T]` or None (unit steps) -> states `[B, T, hidden_dim]`.
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        input_dim, hidden_dim = check_int("input_dim", input_dim), check_int("hidden_dim", hidden_dim)
        self.hidden_dim = hidden_dim
        self.w_in = nn.Linear(input_dim, hidden_dim)
        self.tau_raw = nn.Parameter(torch.zeros(hidden_dim))
        self.A = nn.Parameter(torch.empty(hidden_dim).uniform_(-1, 1))

    def step_terms(
        self, inputs: torch.Tensor, dt: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step decay ``exp(-k_t dt_t)`` and drive ``(1 - exp(-k_t dt_t)) x_eq,t``, each
        `[B, T, hidden_dim]`, for all steps at once."""
        f = torch.sigmoid(self.w_in(inputs))
        k = 1 / (F.softplus(self.tau_raw) + 1e-3) + f
        step = inputs.new_ones(inputs.shape[:2]) if dt is None else dt
        log_a = -k * step.unsqueeze(-1)
        return torch.exp(log_a), -torch.expm1(log_a) * f * self.A / k

    def forward(self, inputs: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor(inputs, "inputs", ("B", "T", self.w_in.in_features), "input_dim")
        if dt is not None:
            check_tensor(dt, "dt", tuple(inputs.shape[:2]), "one step per input")
        return self.recur(inputs, dt)

    def recur(self, inputs: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` without the input checks (for callers that validated the inputs): `step_terms`
        and the recurrence x_t = a_t x_{t-1} + b_t from x_0 = 0 in one function (`_LiquidSteps`)."""
        inv_tau = 1 / (F.softplus(self.tau_raw) + 1e-3)
        return _liquid_steps(self.w_in(inputs), inv_tau, self.A, dt)


class PatchCausalTransformer(nn.Module):
    """Small Transformer over patches of a sequence with a causal mask (eq-causal-attention).

    The sequence is left-padded to a multiple of `patch_len`, each patch of `patch_len` steps is a
    token (linear embedding + learned position), and token p attends to tokens <= p only.

    Shapes: `[B, T, d_model]` -> `[B, ceil(T / patch_len), d_model]`.
    """

    def __init__(
        self, d_model: int, patch_len: int = 15, n_heads: int = 4, ff_dim: int = 64,
        num_layers: int = 1, max_patches: int = 64,
    ) -> None:
        super().__init__()
        d_model, patch_len = check_int("d_model", d_model), check_int("patch_len", patch_len)
        n_heads, ff_dim = check_int("n_heads", n_heads), check_int("ff_dim", ff_dim)
        num_layers, max_patches = check_int("num_layers", num_layers), check_int("max_patches", max_patches)
        self.patch_len, self.max_patches = patch_len, max_patches
        self.embed = nn.Linear(patch_len * d_model, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(max_patches, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, ff_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", ("B", "T", self.pos.shape[1]), "d_model")
        if x.shape[1] == 0:
            raise ShapeError("x has 0 steps; expected at least 1")
        return self.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` without the input checks (for callers that validated `x`)."""
        bsz, T, d = x.shape
        pad = (-T) % self.patch_len
        x = F.pad(x, (0, 0, pad, 0))  # left pad: the last patch ends at the last step
        P = x.shape[1] // self.patch_len
        if P > self.max_patches:
            raise ValueError(f"sequence of {T} steps makes {P} patches; max_patches is {self.max_patches}")
        tokens = self.embed(x.reshape(bsz, P, self.patch_len * d)) + self.pos[:P]
        mask = torch.triu(torch.ones(P, P, dtype=torch.bool, device=x.device), diagonal=1)
        return self.norm(self.encoder(tokens, mask=mask, is_causal=True))


class TemporalExpert(SharedExpert):
    """Temporal expert: selective SSM + liquid cell + causal Transformer, fused (the posts' ensemble).

    * transaction sequence `[B, T1, txn_dim]` -> linear embedding -> (a) a Mamba-2 block
      (eq-ssm, run in chunks: eq-ssd-chunk), summary = last step and mean over steps; (b) a patch Transformer with causal mask
      (eq-causal-attention), summary = last patch;
    * session sequence `[B, T2, session_dim]` -> liquid time-constant cell in closed form (eq-cfc), summary = last
      state (column `session_dt_index` of the sessions, if given, is the step dt);
    * ``out = MLP([ssm_last || ssm_mean || attention || ltc])`` -> `[B, out_dim]`. A missing sequence gives zero
      summaries for its branches; both missing gives zeros `[B, out_dim]`.
    * the branches run on slices of `batch_slice` customers under one autograd graph (same values, small
      tensors at any batch size: tensors above glibc's 32 MB mmap threshold are mapped and page-faulted
      afresh on every allocation, which made large batches superlinear).
    """

    def __init__(
        self,
        txn_dim: int = 16,
        session_dim: int = 8,
        d_model: int = 32,
        d_state: int = 8,
        expand: int = 2,
        ltc_hidden: int = 32,
        n_heads: int = 4,
        patch_len: int = 15,
        ff_dim: int = 64,
        fusion_dim: int = 128,
        out_dim: int = 64,
        session_dt_index: int | None = None,
        chunk_len: int = 16,
        ssm_heads: int = 1,
        batch_slice: int = 128,
    ) -> None:
        super().__init__()
        self.batch_slice = check_int("batch_slice", batch_slice)
        self.txn_dim, self.session_dim, self.out_dim = txn_dim, session_dim, out_dim
        self.d_model, self.ltc_hidden, self.session_dt_index = d_model, ltc_hidden, session_dt_index
        self.txn_embed = nn.Linear(txn_dim, d_model)
        self.ssm_norm = nn.LayerNorm(d_model)
        self.ssm = SelectiveSSM(d_model, d_state, expand, ssm_heads, chunk_len=chunk_len)
        self.ssm_out = nn.LayerNorm(d_model)
        self.attention = PatchCausalTransformer(d_model, patch_len, n_heads, ff_dim)
        self.ltc = LiquidCell(session_dim, ltc_hidden)
        self.fuse = MLP(3 * d_model + ltc_hidden, (fusion_dim,), out_dim=out_dim)

    def _check(self, txn_seq: torch.Tensor | None, session_seq: torch.Tensor | None) -> None:
        # the public boundary: every check here, none inside the branches
        for name, seq in (("txn_seq", txn_seq), ("session_seq", session_seq)):
            if isinstance(seq, torch.Tensor) and seq.dim() == 3 and seq.shape[1] == 0:
                raise ShapeError(f"{name} has 0 steps; expected at least 1 (pass None for a missing sequence)")
        if txn_seq is not None:
            check_tensor(txn_seq, "txn_seq", ("B", "T", self.txn_dim), "txn_dim")
        if session_seq is not None:
            check_tensor(session_seq, "session_seq", ("B", "T", self.session_dim), "session_dim")
        if txn_seq is not None and session_seq is not None and txn_seq.shape[0] != session_seq.shape[0]:
            raise ValueError(
                f"txn_seq has batch {txn_seq.shape[0]} but session_seq has batch {session_seq.shape[0]}"
            )

    def _outputs(
        self, txn_seq: torch.Tensor | None, session_seq: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if txn_seq is not None:
            e = self.txn_embed(txn_seq)
            out["ssm"] = self.ssm_out(e + self.ssm.block(self.ssm_norm(e)))
            out["attention"] = self.attention.encode(e)
        if session_seq is not None:
            dt = None
            if self.session_dt_index is not None:
                dt = session_seq[..., self.session_dt_index].clamp_min(0)
            out["ltc"] = self.ltc.recur(session_seq, dt)
        return out

    def sequence_outputs(
        self, txn_seq: torch.Tensor | None, session_seq: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-step outputs of each branch (all causal): ``ssm`` `[B, T1, d_model]`,
        ``attention`` `[B, ceil(T1 / patch_len), d_model]`, ``ltc`` `[B, T2, ltc_hidden]`."""
        self._check(txn_seq, session_seq)
        return self._outputs(txn_seq, session_seq)

    def _summary(self, txn_seq: torch.Tensor | None, session_seq: torch.Tensor | None, bsz: int) -> torch.Tensor:
        seq = self._outputs(txn_seq, session_seq)
        zeros = self.txn_embed.weight.new_zeros
        parts = [
            seq["ssm"][:, -1] if "ssm" in seq else zeros(bsz, self.d_model),
            seq["ssm"].mean(1) if "ssm" in seq else zeros(bsz, self.d_model),
            seq["attention"][:, -1] if "attention" in seq else zeros(bsz, self.d_model),
            seq["ltc"][:, -1] if "ltc" in seq else zeros(bsz, self.ltc_hidden),
        ]
        return torch.cat(parts, dim=-1)

    def forward(
        self,
        txn_seq: torch.Tensor | None,
        session_seq: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """txn_seq `[B, T1, txn_dim]`, session_seq `[B, T2, session_dim]` (either may be None) -> `[B, out_dim]`.

        The branches run on slices of `batch_slice` customers (one autograd graph): every customer's
        summary depends on its own row only, so slicing changes no value, and it keeps each tensor
        small however large the batch."""
        if txn_seq is None and session_seq is None:
            return self.absent(batch_size)
        self._check(txn_seq, session_seq)
        bsz = (txn_seq if txn_seq is not None else session_seq).shape[0]
        step = self.batch_slice
        parts = [
            self._summary(None if txn_seq is None else txn_seq[i : i + step],
                          None if session_seq is None else session_seq[i : i + step], min(step, bsz - i))
            for i in range(0, bsz, step)
        ]
        return self.fuse(parts[0] if len(parts) == 1 else torch.cat(parts))
