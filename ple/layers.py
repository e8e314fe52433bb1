"""ple.layers -- generated from book/ple1_mtl_to_mmoe.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['count_parameters', 'normalized_entropy', 'MLPBlock', 'MLP', 'StackedLinear', 'StackedMLPBlock', 'StackedMLP']

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ple.checks import (  # noqa: F401 (ple.cgc imports check_dropout and check_features from here)
    HyperparameterError,
    InputTypeError,
    ShapeError,
    check_dropout,
    check_dtype,
    check_features,
    check_int,
    check_probabilities,
    check_widths,
    shape_str,
)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters of `module` (only those with requires_grad by default)."""
    if not isinstance(module, nn.Module):
        raise InputTypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def normalized_entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """H(p) / log n along `dim`, with 0 log 0 = 0 (eq-gate-entropy).

    p: probabilities (non-negative, summing to 1 along `dim`; n = p.shape[dim] entries).
    Returns p's shape without `dim`, in [0, 1]: 1 for the uniform distribution, 0 for a one-hot.
    For n = 1 there is nothing to spread over and the result is 0. A `p` that is not a
    distribution (negative entries, sums off 1, NaN) raises ValueError while validation is on
    (a device sync; off inside the engine's training step).
    """
    if not isinstance(p, torch.Tensor):
        raise InputTypeError(f"p must be a torch.Tensor; got {type(p).__name__}")
    if p.dim() == 0:
        raise ShapeError("p has shape []; expected at least one axis (the distribution's)")
    check_probabilities(p, "p", dim)
    n = p.shape[dim]
    # p log p with the log's argument kept >= the smallest normal number: the value at p = 0 is
    # still exactly 0, and the gradient stays finite where a weight has underflowed to 0
    # (xlogy's gradient there is log 0 = -inf, which turns into NaN further back)
    tiny = torch.finfo(p.dtype).tiny if p.is_floating_point() else 1e-38
    entropy = -(p * torch.log(p.clamp_min(tiny))).sum(dim)
    if n < 2:
        return torch.zeros_like(entropy)
    return entropy / math.log(n)


class MLPBlock(nn.Sequential):
    """One block of eq-mlp-block: Dropout(SiLU(LayerNorm(x W + b))).

    x: [B, in_dim] -> [B, out_dim]. Children: ``0`` Linear, ``1`` LayerNorm, ``2`` SiLU,
    ``3`` Dropout (a no-op at p = 0).
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        in_dim, out_dim = check_int("in_dim", in_dim), check_int("out_dim", out_dim)
        super().__init__(
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(check_dropout(dropout)),
        )
        self.in_features, self.out_features = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_mlp_input(self, x)
        return super().forward(x)


def _check_mlp_input(module: nn.Module, x: object) -> None:
    """x [..., in_features] (at least [B, in_features]) in the module's dtype; host-side, free."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() < 2 or x.shape[-1] != module.in_features:
        raise ShapeError(f"x has shape {shape_str(x)}; expected [B, {module.in_features}] (in_dim)")
    check_dtype(x, "x", next(module.parameters()).dtype)


class MLP(nn.Sequential):
    """A stack of `MLPBlock`s (eq-mlp-block), one per entry of `hidden_dims`, then a plain
    Linear to `out_dim` when it is given (no norm or activation after it).

    x: [B, in_dim] -> [B, out_features], where out_features = out_dim if given, else
    hidden_dims[-1].
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int | None = None,
        dropout: float = 0.0,
    ):
        in_dim = check_int("in_dim", in_dim)
        hidden_dims = check_widths("hidden_dims", hidden_dims)
        if out_dim is not None:
            out_dim = check_int("out_dim", out_dim)
        if not hidden_dims and out_dim is None:
            raise HyperparameterError("an MLP needs at least one hidden dim or an out_dim")
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers.append(MLPBlock(width, hidden, dropout))
            width = hidden
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        super().__init__(*layers)
        self.in_features, self.out_features = in_dim, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_dim] (or [B, ..., in_dim]) -> [B, out_features]; 1-D input is a ShapeError."""
        _check_mlp_input(self, x)
        return super().forward(x)


class StackedLinear(nn.Module):
    """`num_members` independent affine maps evaluated in one einsum: y_m = x_m W_m + b_m.

    weight: [M, in_dim, out_dim], bias: [M, out_dim], initialised like `nn.Linear`
    (uniform in ±1/sqrt(in_dim)). x: [B, in_dim] (the same input for every member) or
    [B, M, in_dim] (one input per member) -> [B, M, out_dim].
    """

    def __init__(self, num_members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.num_members = check_int("num_members", num_members)
        self.in_features = check_int("in_dim", in_dim)
        self.out_features = check_int("out_dim", out_dim)
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(num_members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_members, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        check_dtype(x, "x", self.weight.dtype)
        if x.dim() == 2 and x.shape[1] == self.in_features:
            return torch.einsum("bi,mio->bmo", x, self.weight) + self.bias
        if x.dim() == 3 and tuple(x.shape[1:]) == (self.num_members, self.in_features):
            return torch.einsum("bmi,mio->bmo", x, self.weight) + self.bias
        raise ShapeError(
            f"x has shape {shape_str(x)}; expected [B, {self.in_features}] or "
            f"[B, {self.num_members}, {self.in_features}] (num_members, in_dim)"
        )


class StackedMLPBlock(nn.Module):
    """`num_members` independent `MLPBlock`s (eq-mlp-block) evaluated together.

    Each member has its own Linear and its own LayerNorm affine (norm_weight, norm_bias:
    [M, out_dim]). x: [B, in_dim] or [B, M, in_dim] -> [B, M, out_dim].
    """

    def __init__(self, num_members: int, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.linear = StackedLinear(num_members, in_dim, out_dim)
        self.norm_weight = nn.Parameter(torch.ones(num_members, out_dim))
        self.norm_bias = nn.Parameter(torch.zeros(num_members, out_dim))
        self.dropout = nn.Dropout(check_dropout(dropout))
        self.eps = 1e-5  # nn.LayerNorm's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)  # [B, M, out]
        h = F.layer_norm(h, h.shape[-1:], eps=self.eps) * self.norm_weight + self.norm_bias
        return self.dropout(F.silu(h))


class StackedMLP(nn.Sequential):
    """`num_members` independent MLPs of the same shape (eq-mlp-block), batched.

    The expert bank of a mixture of experts: member m is an `MLP(in_dim, hidden_dims)` with its
    own weights, and all members run in one einsum per layer instead of a Python loop.
    x: [B, in_dim] (shared input) or [B, M, in_dim] (per-member input) -> [B, M, hidden_dims[-1]].
    `member(m)` returns member m as a stand-alone `MLP` with a copy of its weights.
    """

    def __init__(
        self, num_members: int, in_dim: int, hidden_dims: Sequence[int], dropout: float = 0.0
    ):
        hidden_dims = check_widths("hidden_dims", hidden_dims)
        if not hidden_dims:
            raise HyperparameterError("hidden_dims must name at least one layer width")
        widths = (in_dim, *hidden_dims)
        super().__init__(
            *(
                StackedMLPBlock(num_members, widths[i], widths[i + 1], dropout)
                for i in range(len(hidden_dims))
            )
        )
        self.num_members = check_int("num_members", num_members)
        self.in_features, self.out_features = in_dim, hidden_dims[-1]
        self.hidden_dims = hidden_dims
        self.dropout_p = check_dropout(dropout)

    @torch.no_grad()
    def member(self, m: int) -> MLP:
        """Member `m` as a stand-alone `MLP` (a copy, on the same device and dtype)."""
        if not 0 <= m < self.num_members:
            raise HyperparameterError(f"m must be in [0, {self.num_members}); got {m}")
        mlp = MLP(self.in_features, self.hidden_dims, dropout=self.dropout_p)
        first = self[0].linear.weight
        mlp = mlp.to(device=first.device, dtype=first.dtype)
        for block, stacked in zip(mlp, self):
            block[0].weight.copy_(stacked.linear.weight[m].T)
            block[0].bias.copy_(stacked.linear.bias[m])
            block[1].weight.copy_(stacked.norm_weight[m])
            block[1].bias.copy_(stacked.norm_bias[m])
        return mlp
