"""ple.experts.temporal -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['selective_scan', 'SelectiveSSM', 'LiquidCell', 'PatchCausalTransformer', 'TemporalExpert']

import math

import torch
import torch.nn.functional as F
from torch import nn

from ple.experts.base import SharedExpert, check_tensor
from ple.layers import MLP


class _SelectiveScan(torch.autograd.Function):
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
            _, H = _SelectiveScan._chunk(ut[s:e], dt[s:e], A, Bt[s:e], h)
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
            dA, H = _SelectiveScan._chunk(ut[s:e], dt[s:e], A, Bt[s:e], starts[ci])
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
    y, _ = _SelectiveScan.apply(u, delta, A, B, C, h0, chunk_len)
    return y if D is None else y + u * D


class SelectiveSSM(nn.Module):
    """A Mamba block (Gu & Dao 2023) around `selective_scan` (eq-ssm).

    ``[u, z] = W_in x;  u = SiLU(causal_conv(u));  delta = softplus(W_dt W_x u);  B_t, C_t = W_x u;``
    ``y = selective_scan(u, delta, A, B, C, D) * SiLU(z);  out = W_out y``.

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
        p = self.ssm_inputs(x)
        y = selective_scan(p["u"], p["delta"], p["A"], p["B"], p["C"], p["D"], chunk_len=self.chunk_len)
        return self.out_proj(y * F.silu(p["z"]))


class LiquidCell(nn.Module):
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
        self.patch_len, self.max_patches = patch_len, max_patches
        self.embed = nn.Linear(patch_len * d_model, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(max_patches, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, ff_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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

    * transaction sequence `[B, T1, txn_dim]` -> linear embedding -> (a) a Mamba block
      (eq-ssm), summary = last step and mean over steps; (b) a patch Transformer with causal mask
      (eq-causal-attention), summary = last patch;
    * session sequence `[B, T2, session_dim]` -> liquid time-constant cell (eq-ltc), summary = last
      state (column `session_dt_index` of the sessions, if given, is the step dt);
    * ``out = MLP([ssm_last || ssm_mean || attention || ltc])`` -> `[B, out_dim]`. A missing sequence gives zero
      summaries for its branches; both missing gives zeros `[B, out_dim]`.
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
    ) -> None:
        super().__init__()
        self.txn_dim, self.session_dim, self.out_dim = txn_dim, session_dim, out_dim
        self.d_model, self.ltc_hidden, self.session_dt_index = d_model, ltc_hidden, session_dt_index
        self.txn_embed = nn.Linear(txn_dim, d_model)
        self.ssm_norm = nn.LayerNorm(d_model)
        self.ssm = SelectiveSSM(d_model, d_state, expand, chunk_len=chunk_len)
        self.ssm_out = nn.LayerNorm(d_model)
        self.attention = PatchCausalTransformer(d_model, patch_len, n_heads, ff_dim)
        self.ltc = LiquidCell(session_dim, ltc_hidden)
        self.fuse = MLP(3 * d_model + ltc_hidden, (fusion_dim,), out_dim=out_dim)

    def sequence_outputs(
        self, txn_seq: torch.Tensor | None, session_seq: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-step outputs of each branch (all causal): ``ssm`` `[B, T1, d_model]`,
        ``attention`` `[B, ceil(T1 / patch_len), d_model]`, ``ltc`` `[B, T2, ltc_hidden]`."""
        out: dict[str, torch.Tensor] = {}
        if txn_seq is not None:
            check_tensor(txn_seq, "txn_seq", ("B", "T", self.txn_dim), "txn_dim")
            e = self.txn_embed(txn_seq)
            out["ssm"] = self.ssm_out(e + self.ssm(self.ssm_norm(e)))
            out["attention"] = self.attention(e)
        if session_seq is not None:
            check_tensor(session_seq, "session_seq", ("B", "T", self.session_dim), "session_dim")
            dt = None
            if self.session_dt_index is not None:
                dt = session_seq[..., self.session_dt_index].clamp_min(0)
            out["ltc"] = self.ltc(session_seq, dt)
        if txn_seq is not None and session_seq is not None and txn_seq.shape[0] != session_seq.shape[0]:
            raise ValueError(
                f"txn_seq has batch {txn_seq.shape[0]} but session_seq has batch {session_seq.shape[0]}"
            )
        return out

    def forward(
        self,
        txn_seq: torch.Tensor | None,
        session_seq: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """txn_seq `[B, T1, txn_dim]`, session_seq `[B, T2, session_dim]` (either may be None) -> `[B, out_dim]`."""
        if txn_seq is None and session_seq is None:
            return self.absent(batch_size)
        seq = self.sequence_outputs(txn_seq, session_seq)
        bsz = (txn_seq if txn_seq is not None else session_seq).shape[0]
        zeros = self.txn_embed.weight.new_zeros
        parts = [
            seq["ssm"][:, -1] if "ssm" in seq else zeros(bsz, self.d_model),
            seq["ssm"].mean(1) if "ssm" in seq else zeros(bsz, self.d_model),
            seq["attention"][:, -1] if "attention" in seq else zeros(bsz, self.d_model),
            seq["ltc"][:, -1] if "ltc" in seq else zeros(bsz, self.ltc_hidden),
        ]
        return self.fuse(torch.cat(parts, dim=-1))
