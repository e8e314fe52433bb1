"""ple.experts.optimal_transport -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['sinkhorn_log', 'OptimalTransportExpert']

from collections.abc import Sequence

import torch
from torch import nn

from ple.experts.base import SharedExpert, check_tensor
from ple.layers import MLP


def sinkhorn_log(
    a: torch.Tensor, b: torch.Tensor, C: torch.Tensor, eps: float, n_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropic OT by log-domain Sinkhorn iterations (eq-sinkhorn-log).

    ``f_i = eps log a_i - eps LSE_j((g_j - C_ij) / eps)``,
    ``g_j = eps log b_j - eps LSE_i((f_i - C_ij) / eps)``,
    ``P_ij = exp((f_i + g_j - C_ij) / eps)``; the last update is g, so the column marginals
    are exact and the row marginals converge.

    Args:
        a: source weights `[..., n]` (sum 1), b: target weights `[..., m]` (sum 1).
        C: cost `[..., n, m]` (broadcast against the leading axes of a and b).
        eps: entropic regularisation (> 0).

    Returns:
        (transport cost <P, C> `[...]`, plan P `[..., n, m]`).
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0; got {eps}")
    tiny = torch.finfo(a.dtype).tiny
    log_a = a.clamp_min(tiny).log().unsqueeze(-1)  # [..., n, 1]
    log_b = b.clamp_min(tiny).log().unsqueeze(-2)  # [..., 1, m]
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(n_iter):
        f = eps * log_a - eps * torch.logsumexp((g - C) / eps, dim=-1, keepdim=True)
        g = eps * log_b - eps * torch.logsumexp((f - C) / eps, dim=-2, keepdim=True)
    P = torch.exp((f + g - C) / eps)
    return (P * C).sum((-2, -1)), P


class OptimalTransportExpert(SharedExpert):
    """Optimal-transport expert: Sinkhorn distances to learned prototype distributions (eq-ot).

    ``a = softmax(enc(x))`` `[B, K]` (the customer as a histogram over K support points y_k);
    ``C_kl = |y_k - y_l|_1 / mean(C)``; prototypes ``b_p = softmax(beta_p)`` `[P, K]`;
    ``D_bp = <P*_bp, C>`` from `sinkhorn_log` with `eps`, `n_iter`; ``out = MLP(D)``.

    Shapes: `x` `[B, input_dim]` -> `[B, out_dim]`.
    """

    def __init__(
        self,
        input_dim: int = 644,
        n_bins: int = 16,
        support_dim: int = 4,
        n_prototypes: int = 16,
        eps: float = 0.1,
        n_iter: int = 10,
        hidden_dims: Sequence[int] = (128,),
        out_dim: int = 64,
    ) -> None:
        super().__init__()
        self.input_dim, self.out_dim, self.eps, self.n_iter = input_dim, out_dim, eps, n_iter
        self.encoder = MLP(input_dim, (128,), out_dim=n_bins)
        self.support = nn.Parameter(torch.randn(n_bins, support_dim))
        self.prototype_logits = nn.Parameter(torch.randn(n_prototypes, n_bins))
        self.head = MLP(n_prototypes, hidden_dims, out_dim=out_dim)

    def ground_cost(self) -> torch.Tensor:
        """l1 cost between support points, normalised to mean 1. `[K, K]`."""
        C = (self.support.unsqueeze(1) - self.support.unsqueeze(0)).abs().sum(-1)
        return C / C.mean().clamp_min(1e-6)

    def histogram(self, x: torch.Tensor) -> torch.Tensor:
        """The customer's distribution over the support. `[B, input_dim]` -> `[B, K]`."""
        check_tensor(x, "features", ("B", self.input_dim), "input_dim")
        return torch.softmax(self.encoder(x), dim=-1)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Entropic OT cost from each customer to each prototype. `[B, input_dim]` -> `[B, P]`."""
        a = self.histogram(x).unsqueeze(1)  # [B, 1, K]
        b = torch.softmax(self.prototype_logits, dim=-1).unsqueeze(0)  # [1, P, K]
        cost, _ = sinkhorn_log(a, b, self.ground_cost(), self.eps, self.n_iter)
        return cost

    def forward(self, x: torch.Tensor | None, *, batch_size: int | None = None) -> torch.Tensor:
        """`x` `[B, input_dim]` or None -> `[B, out_dim]`."""
        if x is None:
            return self.absent(batch_size)
        return self.head(self.distances(x))
