"""ple.experts.perslay -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['persistence_diagrams', 'PersLayExpert']

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ple.checks import check_float, check_int, check_tensor, validation_enabled
from ple.data.world import h0_persistence
from ple.experts.base import SharedExpert
from ple.layers import MLP


def persistence_diagrams(
    sequences: np.ndarray, max_points: int = 32, superlevel: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Padded H0 diagrams of every channel of `sequences`.

    Each channel is standardised per customer (so diagrams compare shapes, not scales); the H0
    pairs (eq-elder-rule, `ple.data.world.h0_persistence`) of the sublevel filtration of f and,
    if `superlevel`, of -f (peaks) are taken, giving channel ids
    0..C-1 and C..2C-1. Pairs with zero persistence are dropped; each customer keeps its
    `max_points` most persistent points.

    Args:
        sequences: `[N, T, C]` float.

    Returns:
        diagrams `[N, max_points, 3]` float32 (birth, death, channel id), mask `[N, max_points]` bool.
    """
    max_points = check_int("max_points", max_points)
    s = np.asarray(sequences, dtype=np.float64)
    if s.ndim != 3:
        raise ValueError(f"sequences has shape {list(s.shape)}; expected [N, T, C]")
    n, T, C = s.shape
    z = (s - s.mean(1, keepdims=True)) / (s.std(1, keepdims=True) + 1e-8)
    signs = (1.0, -1.0) if superlevel else (1.0,)
    b_all, d_all, c_all, v_all = [], [], [], []
    for si, sign in enumerate(signs):
        for c in range(C):
            # H0 of the sublevel filtration of f: chapter 00's superlevel H0 of -f, negated
            neg_b, neg_d = h0_persistence(-sign * z[:, :, c])
            v = ~np.isnan(neg_b)
            b, d = -np.nan_to_num(neg_b), -np.nan_to_num(neg_d)
            b_all.append(b)
            d_all.append(d)
            c_all.append(np.full_like(b, si * C + c))
            v_all.append(v & (d > b))
    b, d = np.concatenate(b_all, 1), np.concatenate(d_all, 1)
    ch, v = np.concatenate(c_all, 1), np.concatenate(v_all, 1)
    pers = np.where(v, d - b, -np.inf)
    top = np.argsort(-pers, axis=1, kind="stable")[:, :max_points]
    rows = np.arange(n)[:, None]
    diag = np.stack([b[rows, top], d[rows, top], ch[rows, top]], axis=-1).astype(np.float32)
    mask = v[rows, top]
    if top.shape[1] < max_points:
        pad = max_points - top.shape[1]
        diag = np.concatenate([diag, np.zeros((n, pad, 3), np.float32)], 1)
        mask = np.concatenate([mask, np.zeros((n, pad), bool)], 1)
    diag[~mask] = 0.0
    return diag, mask


class PersLayExpert(SharedExpert):
    """PersLay expert (Carrière et al. 2020): ``sum_{(b,d) in D} phi(b, d) psi(d - b)`` per channel.

    ``phi_q(b, d) = exp(-((b - mu_q)^2 + (d - nu_q)^2) / (2 sigma_q^2))`` (q = 1..Q learned centres),
    ``psi(p) = softplus(w0 + w1 p) * p`` (so a zero-persistence point weighs 0), the sum runs over
    the points of each channel that the mask keeps (eq-perslay), and an MLP maps the
    `[n_channels * Q]` vector to `out_dim`.

    Shapes: diagrams `[B, P, 3]` (birth, death, integer channel id), mask `[B, P]` -> `[B, out_dim]`.
    """

    def __init__(
        self,
        n_channels: int = 8,
        n_centres: int = 16,
        hidden_dims: Sequence[int] = (128,),
        out_dim: int = 64,
        extent: tuple[float, float] = (-3.0, 3.0),
    ) -> None:
        super().__init__()
        n_channels, n_centres = check_int("n_channels", n_channels), check_int("n_centres", n_centres)
        out_dim = check_int("out_dim", out_dim)
        if len(extent) != 2 or not check_float("extent[0]", extent[0]) < check_float("extent[1]", extent[1]):
            raise ValueError(f"extent must be (low, high) with low < high; got {extent!r}")
        self.n_channels, self.n_centres, self.out_dim = n_channels, n_centres, out_dim
        g = torch.linspace(extent[0], extent[1], n_centres)
        self.mu = nn.Parameter(g[torch.randperm(n_centres)].clone())
        self.nu = nn.Parameter(g.clone())
        self.log_sigma = nn.Parameter(torch.zeros(n_centres))
        self.psi = nn.Parameter(torch.tensor([0.5, 0.0]))
        self.rho = MLP(n_channels * n_centres, hidden_dims, out_dim=out_dim)

    def vectorize(self, diagrams: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The permutation-invariant sum (eq-perslay) per channel: `[B, n_channels, Q]`."""
        b, d = diagrams[..., 0], diagrams[..., 1]
        ch = diagrams[..., 2].round().long().clamp(0, self.n_channels - 1)
        sigma2 = torch.exp(2 * self.log_sigma)
        phi = torch.exp(-((b.unsqueeze(-1) - self.mu) ** 2 + (d.unsqueeze(-1) - self.nu) ** 2) / (2 * sigma2))
        pers = d - b
        psi = F.softplus(self.psi[0] + self.psi[1] * pers) * pers
        w = torch.where(mask, psi, torch.zeros_like(psi))  # padded points contribute exactly 0
        onehot = F.one_hot(ch, self.n_channels).to(diagrams.dtype)  # [B, P, C]
        return torch.einsum("bp,bpq,bpc->bcq", w, phi, onehot)

    def forward(
        self,
        diagrams: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """diagrams `[B, P, 3]`, mask `[B, P]` bool (None = all points real) -> `[B, out_dim]`."""
        if diagrams is None:
            return self.absent(batch_size)
        if not isinstance(diagrams, torch.Tensor):
            raise ValueError(f"diagrams must be a torch.Tensor; got {type(diagrams).__name__}")
        if diagrams.dim() != 3 or diagrams.shape[-1] != 3:
            raise ValueError(
                f"diagrams has shape {list(diagrams.shape)}; expected [B, P, 3] (birth, death, channel)"
            )
        if mask is None:
            mask = torch.ones(diagrams.shape[:2], dtype=torch.bool, device=diagrams.device)
        check_tensor(mask, "diagram_mask", tuple(diagrams.shape[:2]))
        mask = mask.bool()
        # padded rows may hold anything; only the real points must be finite
        diagrams = torch.where(mask.unsqueeze(-1), diagrams, torch.zeros_like(diagrams))
        check_tensor(diagrams, "diagrams", ("B", "P", 3), "birth, death, channel")
        if validation_enabled():  # value checks read the device: off inside the engine's training step
            ch = diagrams[..., 2][mask]
            if ch.numel() and bool((ch.min() < 0) | (ch.max() > self.n_channels - 1)):
                raise ValueError(f"diagram channel ids must lie in [0, {self.n_channels - 1}] (n_channels)")
            pers = (diagrams[..., 1] - diagrams[..., 0])[mask]
            if pers.numel() and bool(pers.min() < 0):
                raise ValueError(f"diagrams must have death >= birth (points of a sublevel diagram; a superlevel "
                                 f"one is stored negated); got death - birth = {pers.min().item():g}")
        v = self.vectorize(diagrams, mask)
        return self.rho(v.flatten(1))
