"""ple.experts.hgcn -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['MIN_NORM', 'project', 'mobius_add', 'conformal_factor', 'expmap0', 'logmap0', 'expmap', 'logmap', 'poincare_distance', 'mobius_matvec', 'HGCNLayer', 'HGCNExpert', 'poincare_hierarchy_embedding', 'customer_hierarchy_inputs']

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ple.checks import ShapeError, check_float, check_int, check_tensor, check_widths, shape_str, validation_enabled
from ple.experts.base import SharedExpert

MIN_NORM = 1e-15


def _ball_eps(dtype: torch.dtype) -> float:
    return 4e-3 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-5


def _sqrt_c(c: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # A number is checked here (on the host, free). A tensor curvature is taken as positive:
    # HGCNExpert makes it so by construction (softplus), and checking it in every manifold op
    # would read a device value into Python on every call.
    if not isinstance(c, torch.Tensor) and not c > 0:
        raise ValueError(f"curvature c must be > 0; got {c!r}")
    return torch.as_tensor(c, dtype=like.dtype, device=like.device).sqrt()


def _check_in_ball(x: torch.Tensor, name: str, c: float | torch.Tensor) -> None:
    """ValueError unless every point of x `[..., d]` lies in the ball of radius 1 / sqrt(c)
    (c |x|^2 <= 1 up to rounding: a point a few ulps from the edge is still a point, the maps
    clamp it). Reads the device, so it runs only while validation is enabled (off inside the
    engine's training step, where the points come from `project`)."""
    if not validation_enabled() or not isinstance(x, torch.Tensor) or x.numel() == 0:
        return
    r2 = torch.as_tensor(c, dtype=x.dtype, device=x.device) * x.detach().pow(2).sum(-1)
    limit = 1 + 16 * torch.finfo(x.dtype).eps if x.is_floating_point() else 1
    if bool((r2 > limit).any() | r2.isnan().any()):
        raise ValueError(f"{name} must lie inside the Poincaré ball (c |{name}|^2 < 1); got c |{name}|^2 up to "
                         f"{r2.max().item():g}")


def _norm(x: torch.Tensor) -> torch.Tensor:
    # sqrt of a clamped square sum: finite value and zero gradient at x = 0
    return x.pow(2).sum(-1, keepdim=True).clamp_min(MIN_NORM**2).sqrt()


def _artanh(z: torch.Tensor) -> torch.Tensor:
    z = z.clamp(-1 + 1e-7, 1 - 1e-7) if z.dtype == torch.float64 else z.clamp(-1 + 1e-6, 1 - 1e-6)
    return 0.5 * (torch.log1p(z) - torch.log1p(-z))


def project(x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Pull points back inside the ball of radius (1 - eps) / sqrt(c). `[..., d]` -> `[..., d]`."""
    sc = _sqrt_c(c, x)
    max_norm = (1 - _ball_eps(x.dtype)) / sc
    n = _norm(x)
    return torch.where(n > max_norm, x / n * max_norm, x)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Möbius addition on the Poincaré ball of curvature -c (eq-mobius-add). `[..., d]`.

    ``x (+)_c y = ((1 + 2c<x,y> + c|y|^2) x + (1 - c|x|^2) y) / (1 + 2c<x,y> + c^2 |x|^2 |y|^2)``
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape[-1] != y.shape[-1]:
        got = shape_str(y) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ShapeError(f"y has shape {got}; expected [..., {x.shape[-1]}] (the dimension of x)")
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    xy = (x * y).sum(-1, keepdim=True)
    x2 = x.pow(2).sum(-1, keepdim=True)
    y2 = y.pow(2).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    den = 1 + 2 * c * xy + c.pow(2) * x2 * y2
    return num / den.clamp_min(MIN_NORM)


def conformal_factor(x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """lambda_x^c = 2 / (1 - c |x|^2). `[..., d]` -> `[..., 1]`."""
    _check_in_ball(x, "x", c)
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return 2 / (1 - c * x.pow(2).sum(-1, keepdim=True)).clamp_min(MIN_NORM)


def expmap0(v: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Exponential map at the origin (eq-expmap with x = 0): tanh(sqrt(c)|v|) v / (sqrt(c)|v|)."""
    sc = _sqrt_c(c, v)
    n = _norm(v)
    return project(torch.tanh(sc * n) * v / (sc * n), c)


def logmap0(y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Logarithmic map at the origin (eq-logmap with x = 0): artanh(sqrt(c)|y|) y / (sqrt(c)|y|)."""
    sc = _sqrt_c(c, y)
    _check_in_ball(y, "y", c)
    n = _norm(y)
    return _artanh(sc * n) * y / (sc * n)


def expmap(x: torch.Tensor, v: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Exponential map at x (eq-expmap). x: point `[..., d]`, v: tangent vector `[..., d]`.

    ``exp_x^c(v) = x (+)_c ( tanh(sqrt(c) lambda_x |v| / 2) v / (sqrt(c) |v|) )``
    """
    sc = _sqrt_c(c, v)
    if x.shape[-1] != v.shape[-1]:
        raise ShapeError(f"v has shape {shape_str(v)}; expected [..., {x.shape[-1]}] (the dimension of x)")
    n = _norm(v)
    second = torch.tanh(sc * conformal_factor(x, c) * n / 2) * v / (sc * n)
    return project(mobius_add(x, second, c), c)


def logmap(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Logarithmic map at x (eq-logmap): the tangent vector at x pointing to y. `[..., d]`.

    ``log_x^c(y) = 2 / (sqrt(c) lambda_x) artanh(sqrt(c) |-x (+)_c y|) (-x (+)_c y) / |-x (+)_c y|``
    """
    sc = _sqrt_c(c, x)
    _check_in_ball(x, "x", c)
    _check_in_ball(y, "y", c)
    w = mobius_add(-x, y, c)
    n = _norm(w)
    return 2 / (sc * conformal_factor(x, c)) * _artanh(sc * n) * w / n


def poincare_distance(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Geodesic distance (eq-poincare-distance): (2 / sqrt(c)) artanh(sqrt(c) |-x (+)_c y|). `[...]`."""
    sc = _sqrt_c(c, x)
    _check_in_ball(x, "x", c)
    _check_in_ball(y, "y", c)
    return (2 / sc * _artanh(sc * _norm(mobius_add(-x, y, c)))).squeeze(-1)


def mobius_matvec(weight: torch.Tensor, x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Möbius matrix-vector product: exp0(W log0(x)). weight `[out, in]`, x `[..., in]` -> `[..., out]`."""
    check_tensor(weight, "weight", ("out", x.shape[-1]), "[out, in] with in = x.shape[-1]")
    return expmap0(logmap0(x, c) @ weight.transpose(0, 1), c)


def _curvature_param(c: float) -> float:
    return math.log(math.expm1(c))  # inverse softplus


class HGCNLayer(nn.Module):
    """One HGCN layer (eq-hgcn-layer), from curvature c_in to c_out.

    ``h = (W (x)_c x) (+)_c exp0(b)``;
    ``a_i = exp_{h_i}( sum_j w_ij log_{h_i}(h_j) )`` over the neighbours j of i (itself included);
    ``out = exp0^{c_out}( SiLU( log0^{c_in}(a) ) )``.

    Shapes: x `[B, K, in_dim]` points (index 0 = the node itself), mask `[B, K]` -> `[B, out_dim]`.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        in_dim, out_dim = check_int("in_dim", in_dim), check_int("out_dim", out_dim)
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.xavier_uniform_(self.weight)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, c_in: torch.Tensor, c_out: torch.Tensor
    ) -> torch.Tensor:
        h = mobius_matvec(self.weight, x, c_in)
        h = project(mobius_add(h, expmap0(self.bias, c_in), c_in), c_in)
        centre = h[:, :1]  # [B, 1, d]: aggregate in the tangent space at the node itself
        tangent = logmap(centre, h, c_in) * mask.unsqueeze(-1)
        mean = tangent.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        agg = expmap(centre.squeeze(1), mean, c_in)
        return expmap0(F.silu(logmap0(agg, c_in)), c_out)


class HGCNExpert(SharedExpert):
    """Unified HGCN expert on the Poincaré ball with learnable curvatures (Chami et al. 2019).

    The first `poincare_dim` input columns are points of the unit ball (curvature 1), the rest
    Euclidean; both are mapped to the tangent space at the origin, concatenated, divided by
    sqrt(input_dim) (so exp0 does not saturate), and sent to the ball of curvature c_0 with exp0. Each HGCN layer (eq-hgcn-layer) aggregates the node with its
    neighbours in the first layer (optional `neighbors` `[B, K, input_dim]` with `neighbor_mask`
    `[B, K]`, e.g. the customer's merchants); later layers see the node alone. The output is the tangent vector log0(h_L) at the last curvature.

    Curvatures ``c_l = softplus(rho_l)`` are parameters when `learn_curvature` (the posts' design).

    Shapes: `x` `[B, input_dim]` -> `[B, out_dim]` (128 in the posts).
    """

    def __init__(
        self,
        input_dim: int = 47,
        poincare_dim: int = 20,
        hidden_dims: Sequence[int] = (256, 256),
        out_dim: int = 128,
        learn_curvature: bool = True,
        init_curvature: float = 1.0,
        input_scale: float | None = None,
    ) -> None:
        super().__init__()
        input_dim, out_dim = check_int("input_dim", input_dim), check_int("out_dim", out_dim)
        poincare_dim = check_int("poincare_dim", poincare_dim, 0)
        hidden_dims = check_widths("hidden_dims", hidden_dims)
        init_curvature = check_float("init_curvature", init_curvature, 0.0, low_open=True)
        if input_scale is not None:
            input_scale = check_float("input_scale", input_scale, 0.0, low_open=True)
        if not 0 <= poincare_dim <= input_dim:
            raise ValueError(f"poincare_dim must lie in [0, {input_dim}]; got {poincare_dim}")
        self.input_dim, self.poincare_dim, self.out_dim = input_dim, poincare_dim, out_dim
        self.input_scale = 1 / math.sqrt(input_dim) if input_scale is None else input_scale
        dims = [input_dim, *hidden_dims, out_dim]
        self.layers = nn.ModuleList(HGCNLayer(a, b) for a, b in zip(dims[:-1], dims[1:]))
        rho = torch.full((len(dims),), _curvature_param(init_curvature))
        self.rho = nn.Parameter(rho, requires_grad=learn_curvature)

    @property
    def curvatures(self) -> torch.Tensor:
        """c_0 ... c_L, each > 0. `[num_layers + 1]`."""
        return F.softplus(self.rho)

    def _tangent_input(self, x: torch.Tensor) -> torch.Tensor:
        p, e = x[..., : self.poincare_dim], x[..., self.poincare_dim :]
        # the public boundary: one check per forward, off inside a training step (ple.checks.validation)
        if self.poincare_dim and validation_enabled() and bool((p.pow(2).sum(-1) >= 1).any()):
            raise ValueError("the first poincare_dim columns must be points of the unit ball (norm < 1)")
        parts = [logmap0(p, 1.0)] if self.poincare_dim else []
        # scale to unit expected norm, so exp0 does not saturate at the ball's edge
        return torch.cat([*parts, e], dim=-1) * self.input_scale

    def forward(
        self,
        x: torch.Tensor | None,
        neighbors: torch.Tensor | None = None,
        neighbor_mask: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """`x` `[B, input_dim]` (or None), `neighbors` `[B, K, input_dim]`, mask `[B, K]` -> `[B, out_dim]`."""
        if x is None:
            return self.absent(batch_size)
        check_tensor(x, "hierarchy", ("B", self.input_dim), "hierarchy_dim")
        nodes = x.unsqueeze(1)
        mask = x.new_ones(x.shape[0], 1)
        if neighbors is not None:
            check_tensor(neighbors, "neighbors", (x.shape[0], "K", self.input_dim), "hierarchy_dim")
            if neighbor_mask is None:
                neighbor_mask = x.new_ones(neighbors.shape[:2])
            check_tensor(neighbor_mask, "neighbor_mask", (x.shape[0], neighbors.shape[1]))
            # a mask weight of 2 would count that neighbour twice (a device sync: validation only)
            if validation_enabled() and neighbor_mask.dtype != torch.bool and neighbor_mask.numel() and bool(
                ((neighbor_mask != 0) & (neighbor_mask != 1)).any()
            ):
                raise ValueError("neighbor_mask must hold 0 / 1 or bool (1 = a real neighbour)")
            nodes = torch.cat([nodes, neighbors], dim=1)
            mask = torch.cat([mask, neighbor_mask.to(x.dtype)], dim=1)
        c = self.curvatures
        h = expmap0(self._tangent_input(nodes), c[0])  # [B, 1 + K, input_dim] on the ball
        # first layer: the node aggregates its neighbours; later layers: the node alone
        h = self.layers[0](h, mask, c[0], c[1])
        ones = mask.new_ones(x.shape[0], 1)
        for layer_idx in range(1, len(self.layers)):
            h = self.layers[layer_idx](h.unsqueeze(1), ones, c[layer_idx], c[layer_idx + 1])
        return logmap0(h, c[-1])


def poincare_hierarchy_embedding(
    category: np.ndarray,
    subcategory: np.ndarray,
    brand: np.ndarray,
    dim: int = 20,
    step: float = 0.6,
    spread: tuple[float, float, float] = (0.6, 0.4, 0.25),
    seed: int = 0,
) -> np.ndarray:
    """Points of the unit Poincaré ball (c = 1) for the merchants of a 4-level hierarchy.

    Level l (category 1, subcategory 2, brand 3, merchant 4) sits at ``exp0(step * l * u)``, where
    u is the parent's direction plus `spread[l - 2]` times a random direction, renormalised; the
    category directions are orthonormal when there are at most `dim` categories.

    Args:
        category, subcategory, brand: int arrays `[M]` (one entry per merchant).

    Returns:
        float32 `[M, dim]`, every row of norm < 1.
    """
    dim, seed = check_int("dim", dim), check_int("seed", seed, 0)
    step = check_float("step", step, 0.0, low_open=True)
    cat, sub, br = (np.asarray(a, dtype=np.int64) for a in (category, subcategory, brand))
    if not (cat.shape == sub.shape == br.shape) or cat.ndim != 1:
        raise ValueError(f"category, subcategory, brand must be 1-D of one length; got "
                         f"{list(cat.shape)}, {list(sub.shape)}, {list(br.shape)}")
    rng = np.random.default_rng(seed)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    n_cat = int(cat.max()) + 1
    u_cat = np.eye(dim)[:n_cat] if n_cat <= dim else unit(rng.standard_normal((n_cat, dim)))
    u_sub = unit(u_cat[cat] + spread[0] * unit(rng.standard_normal((int(sub.max()) + 1, dim)))[sub])
    u_br = unit(u_sub + spread[1] * unit(rng.standard_normal((int(br.max()) + 1, dim)))[br])
    u_m = unit(u_br + spread[2] * unit(rng.standard_normal((len(cat), dim))))
    r = np.tanh(4 * step)  # exp0 of a tangent vector of length 4 * step, at c = 1
    return (r * u_m).astype(np.float32)


def customer_hierarchy_inputs(
    interactions: np.ndarray, merchant_points: np.ndarray, n_customers: int, max_neighbors: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each customer's own Poincaré coordinates and its most visited merchants.

    The customer's point is ``exp0(mean_e log0(p_{m_e}))`` over its interactions e (the origin
    without any); the neighbours are its `max_neighbors` most visited merchants (ties: lower id).

    Args:
        interactions: `[E, 2]` int (customer, merchant).
        merchant_points: `[M, d]` points of the unit ball.

    Returns:
        points `[N, d]`, neighbors `[N, K, d]`, neighbor_mask `[N, K]` bool (float32 arrays).
    """
    n_customers, max_neighbors = check_int("n_customers", n_customers), check_int("max_neighbors", max_neighbors)
    e = np.asarray(interactions, dtype=np.int64)
    pts = np.asarray(merchant_points, dtype=np.float64)
    norm = np.linalg.norm(pts, axis=1, keepdims=True)
    tangent = np.arctanh(np.clip(norm, 0, 1 - 1e-7)) * pts / np.maximum(norm, 1e-15)  # log0, c = 1
    d = pts.shape[1]
    counts = np.bincount(e[:, 0], minlength=n_customers).astype(np.float64)
    mean = np.stack([np.bincount(e[:, 0], weights=tangent[e[:, 1], k], minlength=n_customers)
                     for k in range(d)], 1) / np.maximum(counts, 1)[:, None]
    mn = np.linalg.norm(mean, axis=1, keepdims=True)
    points = np.tanh(mn) * mean / np.maximum(mn, 1e-15)  # exp0, c = 1
    # most visited merchants: sort (customer, -visits, merchant)
    pair, visits = np.unique(e, axis=0, return_counts=True)
    order = np.lexsort((pair[:, 1], -visits, pair[:, 0]))
    pair = pair[order]
    start = np.searchsorted(pair[:, 0], np.arange(n_customers))
    rank = np.arange(len(pair)) - start[pair[:, 0]]
    keep = rank < max_neighbors
    neighbors = np.zeros((n_customers, max_neighbors, d), np.float32)
    mask = np.zeros((n_customers, max_neighbors), bool)
    neighbors[pair[keep, 0], rank[keep]] = pts[pair[keep, 1]]
    mask[pair[keep, 0], rank[keep]] = True
    return points.astype(np.float32), neighbors, mask
