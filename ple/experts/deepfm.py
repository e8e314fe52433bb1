"""ple.experts.deepfm -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['fm_interaction', 'DeepFMExpert']

import math
from collections.abc import Sequence

import torch
from torch import nn

from ple.experts.base import SharedExpert, check_tensor
from ple.layers import MLP


def fm_interaction(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Second-order FM term per factor, in O(n k) (eq-fm-identity).

    ``0.5 * ((x @ v) ** 2 - (x ** 2) @ (v ** 2))``: entry f is
    ``sum_{i<j} v[i, f] v[j, f] x_i x_j``, so summing over f gives the pairwise FM term (eq-fm).

    Args:
        x: inputs `[B, n]`.
        v: factor matrix `[n, k]` (row i is the embedding of input i).

    Returns:
        `[B, k]`.
    """
    s = x @ v
    return 0.5 * (s * s - (x * x) @ (v * v))


class DeepFMExpert(SharedExpert):
    """DeepFM expert (eq-fm): FM over the 644 normalised features, in parallel with a deep MLP.

    ``out = W [w0 + <w, x> || fm_interaction(x, V) || MLP(x)] + b``

    Shapes: `x` `[B, input_dim]` -> `[B, out_dim]`.

    Args:
        input_dim: number of input features n (644 in the posts).
        embed_dim: FM factor dimension k.
        hidden_dims: widths of the deep part.
        out_dim: output width (64 in the posts).
        dropout: dropout of the deep part.
    """

    def __init__(
        self,
        input_dim: int = 644,
        embed_dim: int = 16,
        hidden_dims: Sequence[int] = (192, 96),
        out_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dim, self.embed_dim, self.out_dim = input_dim, embed_dim, out_dim
        # factor scale 1/sqrt(n): each factor coordinate of x @ V starts at unit variance
        self.v = nn.Parameter(torch.randn(input_dim, embed_dim) / math.sqrt(input_dim))
        self.linear = nn.Linear(input_dim, 1)  # w0 + sum_i w_i x_i
        self.deep = MLP(input_dim, hidden_dims, dropout=dropout)
        self.proj = nn.Linear(1 + embed_dim + self.deep.out_features, out_dim)

    def fm_score(self, x: torch.Tensor) -> torch.Tensor:
        """The scalar FM prediction of eq-fm: w0 + <w, x> + sum_{i<j} <v_i, v_j> x_i x_j. `[B]`."""
        check_tensor(x, "features", ("B", self.input_dim), "input_dim")
        return self.linear(x).squeeze(-1) + fm_interaction(x, self.v).sum(-1)

    def forward(self, x: torch.Tensor | None, *, batch_size: int | None = None) -> torch.Tensor:
        """`x` `[B, input_dim]` or None -> `[B, out_dim]` (zeros when `x` is None)."""
        if x is None:
            return self.absent(batch_size)
        check_tensor(x, "features", ("B", self.input_dim), "input_dim")
        wide = torch.cat([self.linear(x), fm_interaction(x, self.v)], dim=-1)
        return self.proj(torch.cat([wide, self.deep(x)], dim=-1))
