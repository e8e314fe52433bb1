"""ple.experts.deepfm -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['fm_interaction', 'POSTS_FIELD_SIZES', 'DeepFMExpert']

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ple.checks import check_int, check_tensor
from ple.experts.base import SharedExpert
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
    check_tensor(x, "x", ("B", "n"), "inputs")
    check_tensor(v, "v", (x.shape[1], "k"), "one factor row per input")
    s = x @ v
    return 0.5 * (s * s - (x * x) @ (v * v))


# the posts' layout of the 644 normalised features: 34 fields (RFM 34, category 64, ..., radius 1)
POSTS_FIELD_SIZES: tuple[int, ...] = (
    34, 64, 80, 60,  # base
    20, 15, 18, 12, 14, 12,  # multi-source
    24, 36, 10, 22, 50, 8, 9,  # domain
    6, 5, 8, 5,  # multidisciplinary
    4, 5, 18,  # model-derived
    25, 18, 12, 6, 23,  # extended source
    4, 4, 8, 4, 1,  # merchant hierarchy
)


class DeepFMExpert(SharedExpert):
    """DeepFM expert (Guo et al. 2017, eq-fm, eq-deepfm): FM and a deep MLP sharing one embedding.

    Feature i has the factor ``v_i``; field f (a block of features) embeds as
    ``e_f = sum_{i in f} x_i v_i`` (eq-deepfm). The FM part reads the same factors,
    ``fm_interaction(x, V)``, with ``sum_f e_f = x V``; the deep part reads the field embeddings:
    ``out = W [w0 + <w, x> || fm_interaction(x, V) || MLP([e_1 || ... || e_F])] + b``.

    Shapes: `x` `[B, input_dim]` -> `[B, out_dim]`.

    Args:
        input_dim: number of input features n (644 in the posts).
        embed_dim: factor / field-embedding dimension k.
        field_sizes: sizes of the consecutive fields (sum = input_dim); None: the posts' 34
            fields when input_dim is 644, else one field per feature.
        hidden_dims: widths of the deep part.
        out_dim: output width (64 in the posts).
        dropout: dropout of the deep part.
    """

    def __init__(
        self,
        input_dim: int = 644,
        embed_dim: int = 16,
        field_sizes: Sequence[int] | None = None,
        hidden_dims: Sequence[int] = (192, 96),
        out_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        input_dim, embed_dim = check_int("input_dim", input_dim), check_int("embed_dim", embed_dim)
        out_dim = check_int("out_dim", out_dim)
        if field_sizes is None:
            field_sizes = POSTS_FIELD_SIZES if input_dim == sum(POSTS_FIELD_SIZES) else (1,) * input_dim
        field_sizes = tuple(int(s) for s in field_sizes)
        if sum(field_sizes) != input_dim or min(field_sizes) < 1:
            raise ValueError(f"field_sizes must be positive and sum to input_dim = {input_dim}; "
                             f"got {len(field_sizes)} fields summing to {sum(field_sizes)}")
        self.input_dim, self.embed_dim, self.out_dim = input_dim, embed_dim, out_dim
        self.field_sizes = field_sizes
        field_of = torch.repeat_interleave(torch.arange(len(field_sizes)), torch.tensor(field_sizes))
        self.register_buffer("field_onehot", F.one_hot(field_of, len(field_sizes)).float(), persistent=False)
        # factor scale 1/sqrt(n): each factor coordinate of x @ V starts at unit variance
        self.v = nn.Parameter(torch.randn(input_dim, embed_dim) / math.sqrt(input_dim))
        self.linear = nn.Linear(input_dim, 1)  # w0 + sum_i w_i x_i
        self.deep = MLP(len(field_sizes) * embed_dim, hidden_dims, dropout=dropout)
        self.proj = nn.Linear(1 + embed_dim + self.deep.out_features, out_dim)

    def field_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """``e_f = sum_{i in f} x_i v_i`` (eq-deepfm), as one product with a field-blocked V. `[B, F, k]`."""
        blocked = self.field_onehot.to(self.v.dtype).unsqueeze(-1) * self.v.unsqueeze(1)  # [n, F, k]
        return (x @ blocked.flatten(1)).unflatten(-1, (len(self.field_sizes), self.embed_dim))

    def fm_score(self, x: torch.Tensor) -> torch.Tensor:
        """The scalar FM prediction of eq-fm: w0 + <w, x> + sum_{i<j} <v_i, v_j> x_i x_j. `[B]`."""
        check_tensor(x, "features", ("B", self.input_dim), "input_dim")
        return self.linear(x).squeeze(-1) + fm_interaction(x, self.v).sum(-1)

    def forward(self, x: torch.Tensor | None, *, batch_size: int | None = None) -> torch.Tensor:
        """`x` `[B, input_dim]` or None -> `[B, out_dim]` (zeros when `x` is None)."""
        if x is None:
            return self.absent(batch_size)
        check_tensor(x, "features", ("B", self.input_dim), "input_dim")
        e = self.field_embeddings(x)  # [B, F, k], shared by both parts
        fm = 0.5 * (e.sum(1).square() - (x * x) @ (self.v * self.v))  # eq-fm-identity, x V = sum_f e_f
        return self.proj(torch.cat([self.linear(x), fm, self.deep(e.flatten(1))], dim=-1))
