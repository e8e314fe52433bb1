"""ple.experts.base -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['check_tensor', 'SharedExpert']

from collections.abc import Sequence

import torch
from torch import nn


def check_tensor(
    x: object, name: str, expected: Sequence[int | str], what: str | None = None
) -> None:
    """Raise ValueError unless `x` is a tensor of shape `expected` with finite entries.

    `expected` lists one entry per axis: an int fixes the size, a str (``"B"``, ``"T"``) names a
    free axis. The message names the argument, the shape received and the shape expected, e.g.
    ``txn_seq has shape [32, 180, 12]; expected [B, T, 16] (txn_dim)``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    want = "[" + ", ".join(str(e) for e in expected) + "]"
    ok = x.dim() == len(expected) and all(
        isinstance(e, str) or s == e for s, e in zip(x.shape, expected)
    )
    if not ok:
        hint = f" ({what})" if what else ""
        raise ValueError(f"{name} has shape {list(x.shape)}; expected {want}{hint}")
    if x.is_floating_point():
        if torch.isnan(x).any():
            raise ValueError(f"{name} contains NaN")
        if torch.isinf(x).any():
            raise ValueError(f"{name} contains inf")


class SharedExpert(nn.Module):
    """Base class of the seven shared experts.

    Subclasses set `out_dim` and call `absent(batch_size)` when their input is None: the posts
    specify that a missing input gives a zero output `[B, out_dim]` (the gate then learns to
    down-weight the expert).
    """

    out_dim: int

    def absent(self, batch_size: int | None) -> torch.Tensor:
        """Zeros `[batch_size, out_dim]` on the module's device and dtype."""
        if batch_size is None:
            raise ValueError(
                f"{type(self).__name__}: input is None and batch_size was not given; "
                f"pass batch_size=B to get zeros [B, {self.out_dim}]"
            )
        if not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"batch_size must be a non-negative int; got {batch_size!r}")
        p = next(self.parameters())
        return p.new_zeros(batch_size, self.out_dim)
