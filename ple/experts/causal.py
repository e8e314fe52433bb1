"""ple.experts.causal -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['notears_h', 'CausalExpert']

import torch
from torch import nn

from ple.checks import check_float, check_int, check_tensor
from ple.experts.base import SharedExpert
from ple.layers import MLP


def notears_h(W: torch.Tensor) -> torch.Tensor:
    """NOTEARS acyclicity (eq-notears): ``h(W) = tr(exp(W * W)) - d``; zero iff W is a DAG.

    W: `[d, d]` -> scalar. Its gradient is ``exp(W * W)^T * 2 W`` (eq-notears-grad).
    """
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W has shape {list(W.shape)}; expected [d, d]")
    return torch.linalg.matrix_exp(W * W).diagonal().sum() - W.shape[0]


class CausalExpert(SharedExpert):
    """Causal expert: NOTEARS-regularised linear SEM over d learned variables (eq-sem, eq-notears).

    ``z = LN(enc(x))`` `[B, d]`;  ``eps = z - z W`` (exogenous part);  ``out = MLP([z || eps])``.
    W `[d, d]` has a zero diagonal. `regularizer()` returns
    ``lambda_h h(W) + lambda_l1 |W|_1 + lambda_rec mean_b |z_b - z_b W|^2`` for the last batch.

    Shapes: `x` `[B, input_dim]` -> `[B, out_dim]`.
    """

    def __init__(
        self,
        input_dim: int = 644,
        n_vars: int = 32,
        hidden_dim: int = 128,
        out_dim: int = 64,
        lambda_h: float = 1.0,
        lambda_l1: float = 1e-3,
        lambda_rec: float = 0.1,
    ) -> None:
        super().__init__()
        input_dim, n_vars = check_int("input_dim", input_dim), check_int("n_vars", n_vars)
        hidden_dim, out_dim = check_int("hidden_dim", hidden_dim), check_int("out_dim", out_dim)
        lambda_h, lambda_l1 = check_float("lambda_h", lambda_h, 0.0), check_float("lambda_l1", lambda_l1, 0.0)
        lambda_rec = check_float("lambda_rec", lambda_rec, 0.0)
        self.input_dim, self.n_vars, self.out_dim = input_dim, n_vars, out_dim
        self.lambda_h, self.lambda_l1, self.lambda_rec = lambda_h, lambda_l1, lambda_rec
        self.encoder = MLP(input_dim, (hidden_dim,), out_dim=n_vars)
        self.var_norm = nn.LayerNorm(n_vars, elementwise_affine=False)
        self.W = nn.Parameter(0.01 * torch.randn(n_vars, n_vars))
        self.register_buffer("off_diagonal", 1 - torch.eye(n_vars))
        self.head = MLP(2 * n_vars, (hidden_dim,), out_dim=out_dim)
        self._last_residual: torch.Tensor | None = None

    @property
    def adjacency(self) -> torch.Tensor:
        """W with its diagonal forced to zero. `[n_vars, n_vars]`."""
        return self.W * self.off_diagonal

    def variables(self, x: torch.Tensor) -> torch.Tensor:
        """The causal variables z = LN(enc(x)). `[B, input_dim]` -> `[B, n_vars]`."""
        check_tensor(x, "features", ("B", self.input_dim), "input_dim")
        return self.var_norm(self.encoder(x))

    def forward(self, x: torch.Tensor | None, *, batch_size: int | None = None) -> torch.Tensor:
        """`x` `[B, input_dim]` or None -> `[B, out_dim]`."""
        if x is None:
            self._last_residual = None
            return self.absent(batch_size)
        z = self.variables(x)
        eps = z - z @ self.adjacency
        self._last_residual = eps
        return self.head(torch.cat([z, eps], dim=-1))

    def regularizer(self) -> torch.Tensor:
        """lambda_h h(W) + lambda_l1 |W|_1 + lambda_rec * mean squared SEM residual (last batch)."""
        W = self.adjacency
        reg = self.lambda_h * notears_h(W) + self.lambda_l1 * W.abs().sum()
        if self._last_residual is not None:
            reg = reg + self.lambda_rec * self._last_residual.pow(2).sum(-1).mean()
        return reg
