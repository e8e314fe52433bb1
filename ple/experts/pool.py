"""ple.experts.pool -- generated from book/ple3_seven_experts.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['EXPERT_CLASSES', 'ExpertInputs', 'ExpertPoolConfig', 'build_expert', 'run_expert', 'ExpertPoolOutput', 'ExpertPool', 'POSTS_PARAMETER_ESTIMATES', 'synthetic_expert_inputs', 'benchmark_experts', 'world_expert_inputs']

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from torch import nn

from ple.checks import InputTypeError, ShapeError, check_int, check_unique
from ple.experts.causal import CausalExpert
from ple.experts.deepfm import DeepFMExpert
from ple.experts.hgcn import (
    HGCNExpert,
    customer_hierarchy_inputs,
    expmap0,
    poincare_hierarchy_embedding,
)
from ple.experts.lightgcn import LightGCNExpert, lightgcn_embeddings
from ple.experts.optimal_transport import OptimalTransportExpert
from ple.experts.perslay import PersLayExpert, persistence_diagrams
from ple.experts.temporal import TemporalExpert
from ple.tasks import EXPERT_DIMS, EXPERT_NAMES

EXPERT_CLASSES: dict[str, type[nn.Module]] = {
    "deepfm": DeepFMExpert,
    "lightgcn": LightGCNExpert,
    "hgcn": HGCNExpert,
    "temporal": TemporalExpert,
    "perslay": PersLayExpert,
    "causal": CausalExpert,
    "optimal_transport": OptimalTransportExpert,
}


@dataclass
class ExpertInputs:
    """Every input the seven experts read, for one batch of B customers (None = missing).

    * features `[B, 644]` — DeepFM, Causal, Optimal Transport
    * collaborative `[B, 64]` — LightGCN (offline graph propagation)
    * hierarchy `[B, H]` — HGCN (Poincaré coordinates first), with optional
      hierarchy_neighbors `[B, K, H]` and hierarchy_mask `[B, K]`
    * txn_seq `[B, T1, 16]`, session_seq `[B, T2, 8]` — Temporal
    * diagrams `[B, P, 3]`, diagram_mask `[B, P]` — PersLay
    """

    features: torch.Tensor | None = None
    collaborative: torch.Tensor | None = None
    hierarchy: torch.Tensor | None = None
    hierarchy_neighbors: torch.Tensor | None = None
    hierarchy_mask: torch.Tensor | None = None
    txn_seq: torch.Tensor | None = None
    session_seq: torch.Tensor | None = None
    diagrams: torch.Tensor | None = None
    diagram_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # every present field a tensor, all with one batch size (free: shapes live on the host)
        first = None
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if not isinstance(v, torch.Tensor) or v.dim() == 0:
                got = "a 0-d tensor" if isinstance(v, torch.Tensor) else type(v).__name__
                raise InputTypeError(f"{f.name} must be a torch.Tensor [B, ...] or None; got {got}")
            if first is None:
                first = (f.name, v.shape[0])
            elif v.shape[0] != first[1]:
                raise ShapeError(f"{f.name} has {v.shape[0]} rows; expected {first[1]} (the batch size of {first[0]})")

    @property
    def batch_size(self) -> int:
        """B, from the first input that is present."""
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                return int(v.shape[0])
        raise ValueError("every input is None: the batch size is unknown")

    def index(self, idx: torch.Tensor | slice) -> ExpertInputs:
        """The rows `idx` of every present input."""
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)
                                if getattr(self, f.name) is not None})

    def to(self, device: torch.device | str) -> ExpertInputs:
        """Every present input moved to `device`."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def without(self, *names: str) -> ExpertInputs:
        """A copy with the named inputs set to None (to simulate a missing input)."""
        return replace(self, **{n: None for n in names})


@dataclass
class ExpertPoolConfig:
    """Input sizes of the pool and per-expert keyword overrides (``{"temporal": {"d_model": 64}}``)."""

    feature_dim: int = 644
    collaborative_dim: int = 64
    hierarchy_dim: int = 47
    poincare_dim: int = 20
    txn_dim: int = 16
    session_dim: int = 8
    diagram_channels: int = 8
    overrides: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "overrides":
                check_int(f.name, getattr(self, f.name), 0 if f.name == "poincare_dim" else 1)
        unknown = sorted(set(self.overrides) - set(EXPERT_CLASSES))
        if unknown:
            raise ValueError(f"overrides names unknown expert(s) {unknown}; expected names from {list(EXPERT_CLASSES)}")


def build_expert(name: str, config: ExpertPoolConfig | None = None, **kwargs) -> nn.Module:
    """One shared expert by name, sized from `config` (output dims from ple.tasks.EXPERT_DIMS)."""
    if name not in EXPERT_CLASSES:
        raise ValueError(f"unknown expert {name!r}; expected one of {list(EXPERT_CLASSES)}")
    cfg = config or ExpertPoolConfig()
    base: dict[str, dict] = {
        "deepfm": {"input_dim": cfg.feature_dim},
        "lightgcn": {"input_dim": cfg.collaborative_dim},
        "hgcn": {"input_dim": cfg.hierarchy_dim, "poincare_dim": cfg.poincare_dim},
        "temporal": {"txn_dim": cfg.txn_dim, "session_dim": cfg.session_dim},
        "perslay": {"n_channels": cfg.diagram_channels},
        "causal": {"input_dim": cfg.feature_dim},
        "optimal_transport": {"input_dim": cfg.feature_dim},
    }
    args = {**base[name], "out_dim": EXPERT_DIMS[name], **cfg.overrides.get(name, {}), **kwargs}
    return EXPERT_CLASSES[name](**args)


def run_expert(expert: nn.Module, name: str, inputs: ExpertInputs) -> torch.Tensor:
    """Call expert `name` on its own inputs from `inputs`. -> `[B, out_dim]`."""
    if name not in EXPERT_CLASSES:
        raise ValueError(f"unknown expert name {name!r}; expected one of {list(EXPERT_CLASSES)}")
    if not isinstance(inputs, ExpertInputs):
        raise InputTypeError(f"inputs must be an ExpertInputs; got {type(inputs).__name__}")
    bsz = inputs.batch_size
    if name in ("deepfm", "causal", "optimal_transport"):
        return expert(inputs.features, batch_size=bsz)
    if name == "lightgcn":
        return expert(inputs.collaborative, batch_size=bsz)
    if name == "hgcn":
        return expert(inputs.hierarchy, inputs.hierarchy_neighbors, inputs.hierarchy_mask, batch_size=bsz)
    if name == "temporal":
        return expert(inputs.txn_seq, inputs.session_seq, batch_size=bsz)
    if name == "perslay":
        return expert(inputs.diagrams, inputs.diagram_mask, batch_size=bsz)
    raise ValueError(f"unknown expert {name!r}")


@dataclass
class ExpertPoolOutput:
    """shared `[B, 512]` (the concatenation in EXPERT_NAMES order) and each expert's block."""

    shared: torch.Tensor
    outputs: dict[str, torch.Tensor]


class ExpertPool(nn.Module):
    """The seven heterogeneous shared experts of PLE-3, run side by side.

    ``h_shared = [e_deepfm || e_lightgcn || e_hgcn || e_temporal || e_perslay || e_causal || e_ot]``,
    6 x 64 + 128 = 512 dimensions with the posts' sizes.

    Args:
        config: input sizes and per-expert overrides.
        names: which experts to build (default: all of ple.tasks.EXPERT_NAMES, in that order).
    """

    def __init__(self, config: ExpertPoolConfig | None = None, names: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.config = config or ExpertPoolConfig()
        if isinstance(names, str):
            raise InputTypeError(f"names must be a tuple of expert names; got the string {names!r}")
        # a name given twice would be built once but concatenated twice (output_dim would lie)
        self.names = tuple(EXPERT_NAMES) if names is None else check_unique("names", names)
        unknown = [n for n in self.names if n not in EXPERT_CLASSES]
        if unknown:
            raise ValueError(f"unknown expert(s) {unknown}; expected names from {list(EXPERT_CLASSES)}")
        self.experts = nn.ModuleDict({n: build_expert(n, self.config) for n in self.names})

    @property
    def expert_dims(self) -> dict[str, int]:
        """Output width of each expert."""
        return {n: self.experts[n].out_dim for n in self.names}

    @property
    def output_dim(self) -> int:
        """Width of the shared concatenation (512 for the seven with the posts' sizes)."""
        return sum(self.expert_dims.values())

    def forward(self, inputs: ExpertInputs) -> ExpertPoolOutput:
        """inputs (batch of B) -> ExpertPoolOutput(shared `[B, output_dim]`, outputs {name: `[B, d_i]`})."""
        outputs = {n: run_expert(self.experts[n], n, inputs) for n in self.names}
        return ExpertPoolOutput(torch.cat([outputs[n] for n in self.names], dim=-1), outputs)

    def regularizer(self) -> torch.Tensor:
        """The auxiliary loss the system adds: the Causal expert's NOTEARS term (0 without it)."""
        if "causal" in self.experts:
            return self.experts["causal"].regularizer()
        return next(self.parameters()).new_zeros(())


# the parameter estimates of the original system (PDF), for comparison with the built experts
POSTS_PARAMETER_ESTIMATES: dict[str, int] = {
    "deepfm": 169_000, "lightgcn": 20_000, "hgcn": 200_000, "temporal": 500_000,
    "perslay": 50_000, "causal": 100_000, "optimal_transport": 100_000,
}


def synthetic_expert_inputs(
    batch_size: int,
    config: ExpertPoolConfig | None = None,
    txn_len: int = 180,
    session_len: int = 90,
    n_points: int = 32,
    seed: int = 0,
) -> ExpertInputs:
    """A random batch with the posts' input shapes (values carry no signal; for tests and timing).

    Diagrams are real H0 diagrams of the random transaction channels (first diagram_channels / 2
    channels, sublevel and superlevel).
    """
    batch_size, seed = check_int("batch_size", batch_size), check_int("seed", seed, 0)
    txn_len, session_len = check_int("txn_len", txn_len), check_int("session_len", session_len)
    n_points = check_int("n_points", n_points)
    cfg = config or ExpertPoolConfig()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    pts = expmap0(0.3 * torch.randn(batch_size, cfg.poincare_dim, generator=gen), 1.0)
    txn = torch.randn(batch_size, txn_len, cfg.txn_dim, generator=gen)
    diag, mask = persistence_diagrams(rng.normal(size=(batch_size, txn_len, max(cfg.diagram_channels // 2, 1))),
                                      n_points)
    return ExpertInputs(
        features=torch.randn(batch_size, cfg.feature_dim, generator=gen),
        collaborative=torch.randn(batch_size, cfg.collaborative_dim, generator=gen),
        hierarchy=torch.cat(
            [pts, torch.randn(batch_size, cfg.hierarchy_dim - cfg.poincare_dim, generator=gen)], 1),
        txn_seq=txn,
        session_seq=torch.randn(batch_size, session_len, cfg.session_dim, generator=gen),
        diagrams=torch.from_numpy(diag),
        diagram_mask=torch.from_numpy(mask),
    )


def benchmark_experts(
    inputs: ExpertInputs,
    pool: ExpertPool | None = None,
    reps: int = 3,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict]:
    """Forward + backward time of each expert on `inputs` (median of `reps`, after `warmup`).

    `clock` is wall time by default; `time.process_time` (this process's CPU seconds) is steadier
    on a machine shared with other jobs. Returns one dict per expert: name, parameters,
    posts_estimate, batch_size, fwd_bwd_ms.
    """
    reps, warmup = check_int("reps", reps), check_int("warmup", warmup, 0)
    if not isinstance(inputs, ExpertInputs):
        raise InputTypeError(f"inputs must be an ExpertInputs; got {type(inputs).__name__}")
    pool = pool or ExpertPool()
    device = next(pool.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for name in pool.names:
        expert = pool.experts[name]
        times = []
        for rep in range(warmup + reps):
            expert.zero_grad(set_to_none=True)
            sync()
            start = clock()
            run_expert(expert, name, inputs).square().mean().backward()
            sync()  # GPU kernels run asynchronously: wait for them before reading the clock
            if rep >= warmup:
                times.append(clock() - start)
        rows.append({
            "expert": name,
            "parameters": sum(p.numel() for p in expert.parameters() if p.requires_grad),
            "posts_estimate": POSTS_PARAMETER_ESTIMATES.get(name),
            "batch_size": inputs.batch_size,
            "fwd_bwd_ms": 1000 * float(np.median(times)),
        })
    return rows


def world_expert_inputs(
    world: object,
    *,
    lightgcn_dim: int = 64,
    lightgcn_layers: int = 3,
    lightgcn_epochs: int = 30,
    poincare_dim: int = 20,
    max_neighbors: int = 8,
    diagram_points: int = 32,
    merchant_block: slice = slice(623, 644),
    seed: int = 0,
) -> tuple[ExpertInputs, ExpertPoolConfig]:
    """Every expert's input for all customers of a customer world (ple.data.world), as tensors.

    Reads `features` [N, 644], `txn_seq`, `session_seq`, `interactions` [E, 2], the merchant
    hierarchy (`merchant_category`, `merchant_subcategory`, `merchant_brand`) and, if present,
    `balance_seq` [N, T] (PersLay's series; else the transaction sequence's channels).

    Returns:
        (ExpertInputs with N rows, the matching ExpertPoolConfig).
    """
    missing = [a for a in ("features", "txn_seq", "session_seq", "interactions", "merchant_category")
               if not hasattr(world, a)]
    if missing:
        raise InputTypeError(f"world must be a customer world (ple.data.world.generate); "
                             f"a {type(world).__name__} lacks {missing}")
    for name, v in (("lightgcn_dim", lightgcn_dim), ("lightgcn_layers", lightgcn_layers),
                    ("lightgcn_epochs", lightgcn_epochs), ("max_neighbors", max_neighbors),
                    ("diagram_points", diagram_points)):
        check_int(name, v)
    feats = np.asarray(world.features, dtype=np.float32)
    n = feats.shape[0]
    n_merchants = int(np.asarray(world.merchant_category).shape[0])
    collab, _ = lightgcn_embeddings(world.interactions, n, n_merchants, dim=lightgcn_dim,
                                    num_layers=lightgcn_layers, epochs=lightgcn_epochs, seed=seed)
    mpts = poincare_hierarchy_embedding(world.merchant_category, world.merchant_subcategory,
                                        world.merchant_brand, dim=poincare_dim, seed=seed)
    pts, nbr, nmask = customer_hierarchy_inputs(world.interactions, mpts, n, max_neighbors)
    merchant_feats = feats[:, merchant_block]
    hierarchy = np.concatenate([pts, merchant_feats], 1)
    nbr = np.concatenate([nbr, np.zeros((n, max_neighbors, merchant_feats.shape[1]), np.float32)], 2)
    series = getattr(world, "balance_seq", None)
    series = np.asarray(series)[:, :, None] if series is not None else np.asarray(world.txn_seq)
    diag, dmask = persistence_diagrams(series, diagram_points)
    txn, sess = np.asarray(world.txn_seq, np.float32), np.asarray(world.session_seq, np.float32)
    inputs = ExpertInputs(
        features=torch.from_numpy(feats),
        collaborative=collab,
        hierarchy=torch.from_numpy(hierarchy),
        hierarchy_neighbors=torch.from_numpy(nbr),
        hierarchy_mask=torch.from_numpy(nmask),
        txn_seq=torch.from_numpy(txn),
        session_seq=torch.from_numpy(sess),
        diagrams=torch.from_numpy(diag),
        diagram_mask=torch.from_numpy(dmask),
    )
    config = ExpertPoolConfig(
        feature_dim=feats.shape[1], collaborative_dim=lightgcn_dim, hierarchy_dim=hierarchy.shape[1],
        poincare_dim=poincare_dim, txn_dim=txn.shape[2], session_dim=sess.shape[2],
        diagram_channels=2 * series.shape[2],
    )
    return inputs, config
