"""ple.experts.base -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['SharedExpert']

import torch
from torch import nn


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
