"""ple.experts.optimal_transport -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['sinkhorn_log', 'sinkhorn_potentials', 'sinkhorn_value', 'OptimalTransportExpert']

import math
from collections.abc import Sequence

import torch
from torch import nn

from ple.checks import check_float, check_int, check_tensor
from ple.experts.base import SharedExpert
from ple.layers import MLP


def sinkhorn_log(
    a: torch.Tensor, b: torch.Tensor, C: torch.Tensor, eps: float, n_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropic OT by plain log-domain Sinkhorn iterations (eq-sinkhorn-log): the clear form.

    ``f_i = eps log a_i - eps LSE_j((g_j - C_ij) / eps)``,
    ``g_j = eps log b_j - eps LSE_i((f_i - C_ij) / eps)``,
    ``P_ij = exp((f_i + g_j - C_ij) / eps)``; the last update is g, so the column marginals
    are exact and the row marginals converge. Differentiated by autograd through every iteration.

    Args:
        a: source weights `[..., n]` (sum 1), b: target weights `[..., m]` (sum 1).
        C: cost `[..., n, m]` (broadcast against the leading axes of a and b).
        eps: entropic regularisation (> 0).

    Returns:
        (transport cost <P, C> `[...]`, plan P `[..., n, m]`).
    """
    eps = check_float("eps", eps, 0.0, low_open=True)
    n_iter = check_int("n_iter", n_iter)  # zero iterations would return the initial guess, not a plan
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


def _lse_step(eps_log_w: torch.Tensor, pot: torch.Tensor, K: torch.Tensor, eps: float) -> torch.Tensor:
    # eps log w_i - eps LSE_j((pot_j - C_ij) / eps) for every row, as one [R, K] x [K, K] product:
    # the row maximum m of pot is taken out, so exp((pot - m) / eps) <= 1 and the sum is at
    # least exp(-max C / eps) > 0 (eq-sinkhorn-matmul). In place: it runs without autograd.
    m = pot.amax(-1, keepdim=True)
    s = (pot - m).div_(eps).exp_() @ K.transpose(0, 1)
    return s.log_().mul_(-eps).add_(eps_log_w).sub_(m)


@torch.no_grad()
def sinkhorn_potentials(
    a: torch.Tensor,
    b: torch.Tensor,
    C: torch.Tensor,
    eps: float,
    *,
    eps_start: float = 1.0,
    eps_decay: float = 0.5,
    iters_per_eps: int = 3,
    max_iter: int = 200,
    tol: float | None = 1e-4,
    check_every: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Converged dual potentials of entropic OT between every row of `a` and of `b` (eq-sinkhorn-log).

    Pairs (a_i, b_p) for all i, p share the cost C, so each half-step is one stabilised
    `[R, K] x [K, K]` product (R = rows x prototypes; eq-sinkhorn-matmul), in a's dtype. epsilon-scaling:
    `iters_per_eps` iterations at eps_start, eps_start * eps_decay, ... down to `eps`, then
    iterations at `eps` per pair: every `check_every` iterations the pairs whose row-marginal error
    ``|P 1 - a|_1`` is below `tol` stop (their rows leave the product), the others go on, up to
    `max_iter`. A batch costs what its pairs need, not what its slowest pair needs, and a pair's
    result does not depend on the other pairs in the batch. `tol=None` runs exactly `max_iter`
    iterations at `eps` for every pair, with no device-to-host read.

    Args:
        a: `[R, K]` source histograms; b: `[Q, K]` targets; C: `[K, K]` cost with max C <= 1.

    Returns:
        f `[R, Q, K]`, g `[R, Q, K]`, and the final row-marginal error per pair `[R, Q]`.
    """
    info = torch.finfo(a.dtype)
    min_eps = 1 / -math.log(info.tiny)  # exp(-max C / eps) must stay a normal number
    if not eps >= min_eps:
        raise ValueError(f"eps must be >= {min_eps:.4f} in {a.dtype} for a cost with max 1; got {eps}")
    R, Q, K = a.shape[0], b.shape[0], a.shape[1]
    Cd = C.detach()
    log_a = a.detach().clamp_min(info.tiny).log().unsqueeze(1).expand(R, Q, K).reshape(R * Q, K)
    log_b = b.detach().clamp_min(info.tiny).log().unsqueeze(0).expand(R, Q, K).reshape(R * Q, K)
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    schedule = []
    e = max(eps_start, eps)
    while e > eps:
        schedule += [e] * iters_per_eps
        e *= eps_decay
    for e in schedule:
        K_e = torch.exp(-Cd / e)
        f = _lse_step(e * log_a, g, K_e, e)
        g = _lse_step(e * log_b, f, K_e.transpose(0, 1), e)
    K_e, eps_log_a, eps_log_b, a_rows = torch.exp(-Cd / eps), eps * log_a, eps * log_b, log_a.exp()
    err = torch.full((R * Q,), float("inf"), dtype=f.dtype, device=f.device)
    f_out, g_out, err_out = torch.empty_like(f), torch.empty_like(g), torch.empty_like(err)
    active = torch.arange(R * Q, device=f.device)  # the pairs still iterating, in f_out's rows
    for it in range(1, max_iter + 1):
        f_new = _lse_step(eps_log_a, g, K_e, eps)
        check = it % check_every == 0 or it == max_iter
        if check:  # rows of the current plan: P 1 = a exp((f - f_new) / eps), so this is |P 1 - a|_1
            err = (a_rows * torch.expm1((f - f_new) / eps).abs()).sum(-1)
        f = f_new
        g = _lse_step(eps_log_b, f, K_e.transpose(0, 1), eps)
        if check and tol is not None:
            done = err < tol
            n_done = int(done.sum())
            if n_done == len(active):
                break
            if n_done:  # converged pairs are written out and leave the batch
                idx, keep = active[done], ~done
                f_out[idx], g_out[idx], err_out[idx] = f[done], g[done], err[done]
                active, f, g, err = active[keep], f[keep], g[keep], err[keep]
                eps_log_a, eps_log_b, a_rows = eps_log_a[keep], eps_log_b[keep], a_rows[keep]
    f_out[active], g_out[active], err_out[active] = f, g, err
    return f_out.reshape(R, Q, K), g_out.reshape(R, Q, K), err_out.reshape(R, Q)


class _SinkhornValue(torch.autograd.Function):
    """OT_eps(a_i, b_p) from converged potentials; gradients by the envelope theorem (eq-ot-envelope)."""

    @staticmethod
    def forward(ctx, a, b, C, eps, options):  # type: ignore[override]
        f, g, _ = sinkhorn_potentials(a, b, C, eps, **options)
        ctx.save_for_backward(f, g, C)
        ctx.eps = eps
        # dual value at the optimum: <f, a> + <g, b> - eps sum(P), and sum(P) = sum(b) after a g-step
        return (f * a.unsqueeze(1)).sum(-1) + (g * b.unsqueeze(0)).sum(-1) - eps * b.sum(-1)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        f, g, C = ctx.saved_tensors
        eps, w = ctx.eps, grad
        grad_a = (w.unsqueeze(-1) * f).sum(1)  # d OT / d a = f
        grad_b = (w.unsqueeze(-1) * (g - eps)).sum(0)  # d OT / d b = g - eps
        # d OT / d C = P = exp((f_i + g_j - C_ij) / eps); summed over pairs with weights w, as
        # K o (U^T diag(w e^{(m_f + m_g) / eps}) V) with U, V <= 1: a [K, R] x [R, K] product
        mf, mg = f.amax(-1, keepdim=True), g.amax(-1, keepdim=True)
        U = torch.exp((f - mf) / eps).flatten(0, 1)
        V = torch.exp((g - mg) / eps).flatten(0, 1)
        scale = (w.unsqueeze(-1) * torch.exp((mf + mg) / eps)).flatten(0, 1)
        grad_C = torch.exp(-C / eps) * ((U * scale).transpose(0, 1) @ V)
        return grad_a, grad_b, grad_C, None, None


def sinkhorn_value(
    a: torch.Tensor, b: torch.Tensor, C: torch.Tensor, eps: float, **options
) -> torch.Tensor:
    """Converged entropic OT value ``OT_eps(a_i, b_p) = min_P <P, C> - eps H(P)`` for every pair (eq-ot).

    a `[R, K]`, b `[Q, K]` (rows sum to 1), C `[K, K]` (max <= 1) -> `[R, Q]`. Forward:
    `sinkhorn_potentials` (epsilon-scaling, tolerance); backward: the converged potentials and
    plan (f, g, P), not the unrolled iterations. `options` go to `sinkhorn_potentials`.
    """
    check_tensor(a, "a", ("R", "K"), "histograms")
    check_tensor(b, "b", ("Q", a.shape[1]), "histograms over the same K points as a")
    check_tensor(C, "C", (a.shape[1], a.shape[1]), "cost between the K points")
    # the solver runs in float32 or wider whatever autocast says (log-domain sums and potentials
    # lose too many digits in bf16 / fp16); the value comes back in a's dtype
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.promote_types(C.dtype, torch.float32))
    with torch.autocast(a.device.type, enabled=False):
        value = _SinkhornValue.apply(a.to(dtype), b.to(dtype), C.to(dtype), eps, options)
    return value.to(a.dtype)


class OptimalTransportExpert(SharedExpert):
    """Optimal-transport expert: converged entropic OT values to learned prototype distributions (eq-ot).

    ``a = softmax(enc(x))`` `[B, K]` (the customer as a histogram over K support points y_k);
    ``C_kl = |y_k - y_l|_1 / max(C)``; prototypes ``b_p = softmax(beta_p)`` `[P, K]`;
    ``D_bp = OT_eps(a_b, b_p)`` from `sinkhorn_value`; ``out = MLP(D)``.

    Shapes: `x` `[B, input_dim]` -> `[B, out_dim]`.
    """

    def __init__(
        self,
        input_dim: int = 644,
        n_bins: int = 16,
        support_dim: int = 4,
        n_prototypes: int = 16,
        eps: float = 0.1,
        tol: float | None = 1e-4,
        max_iter: int = 200,
        hidden_dims: Sequence[int] = (128,),
        out_dim: int = 64,
    ) -> None:
        super().__init__()
        if not (isinstance(eps, (int, float)) and 0.02 <= eps <= 1):
            raise ValueError(f"eps must lie in [0.02, 1] (the cost is scaled to max 1); got {eps!r}")
        self.input_dim, self.out_dim, self.eps = input_dim, out_dim, float(eps)
        self.sinkhorn_options = {"tol": tol, "max_iter": max_iter}
        self.encoder = MLP(input_dim, (128,), out_dim=n_bins)
        self.support = nn.Parameter(torch.randn(n_bins, support_dim))
        self.prototype_logits = nn.Parameter(torch.randn(n_prototypes, n_bins))
        self.head = MLP(n_prototypes, hidden_dims, out_dim=out_dim)

    def ground_cost(self) -> torch.Tensor:
        """l1 cost between support points, scaled to max 1. `[K, K]`."""
        C = (self.support.unsqueeze(1) - self.support.unsqueeze(0)).abs().sum(-1)
        return C / C.amax().clamp_min(1e-6)

    def histogram(self, x: torch.Tensor) -> torch.Tensor:
        """The customer's distribution over the support. `[B, input_dim]` -> `[B, K]`."""
        check_tensor(x, "features", ("B", self.input_dim), "input_dim")
        return torch.softmax(self.encoder(x), dim=-1)

    def prototypes(self) -> torch.Tensor:
        """The learned prototype distributions. `[P, K]`."""
        return torch.softmax(self.prototype_logits, dim=-1)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Entropic OT value from each customer to each prototype. `[B, input_dim]` -> `[B, P]`."""
        return sinkhorn_value(self.histogram(x), self.prototypes(), self.ground_cost(), self.eps,
                              **self.sinkhorn_options)

    def forward(self, x: torch.Tensor | None, *, batch_size: int | None = None) -> torch.Tensor:
        """`x` `[B, input_dim]` or None -> `[B, out_dim]`."""
        if x is None:
            return self.absent(batch_size)
        return self.head(self.distances(x))
