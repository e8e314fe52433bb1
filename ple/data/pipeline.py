"""ple.data.pipeline -- generated from book/ple6_full_system.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['SPLITS', 'DERIVED', 'PipelineConfig', 'release_pages', 'split_indices', 'fingerprint', 'OfflineFits', 'PreparedWorld', 'StreamingBatches', 'prepare_world']

import hashlib
import json
import mmap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ple import checks
from ple.checks import HyperparameterError, InputTypeError, ShapeError, check_float, check_int
from ple.clusters import GMMClusterRouter
from ple.experts.hgcn import customer_hierarchy_inputs, poincare_hierarchy_embedding
from ple.experts.lightgcn import lightgcn_embeddings
from ple.experts.perslay import persistence_diagrams
from ple.fit import Batch, TensorData
from ple.hmm import ModeHMM
from ple.tasks import HMM_MODES

SPLITS = ("train", "val", "test")
# what the pipeline writes per customer, with its row shape as a function of the settings
DERIVED = ("collaborative", "hierarchy", "hierarchy_neighbors", "hierarchy_mask", "diagrams", "diagram_mask",
           *(f"hmm_{m}" for m in HMM_MODES), "cluster_probs")


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of the offline steps (the posts' "Phase 0"), each fitted on the training split only.

    LightGCN (PLE-3): BPR-trained on the training customers' edges (at most
    `lightgcn_fit_customers` of them), `lightgcn_dim` x `lightgcn_layers`; every customer's
    collaborative vector is the mean of its merchants' embeddings, so train and test customers are
    embedded by one rule. HGCN: Poincaré points of the merchant hierarchy (no data statistics) and
    each customer's `max_neighbors` most visited merchants. PersLay: H0 diagrams of the balance
    series, `diagram_points` points. HMM (PLE-4): one `ModeHMM` per mode on at most
    `hmm_fit_sequences` training customers. GMM (PLE-5): `gmm_components` on the top `gmm_pcs`
    principal components of the segment dimensions, both fitted on at most `gmm_fit_rows` training
    customers. `chunk_size` customers are transformed at a time.
    """

    lightgcn_dim: int = 64
    lightgcn_layers: int = 3
    lightgcn_epochs: int = 30
    lightgcn_fit_customers: int = 20_000
    poincare_dim: int = 20
    max_neighbors: int = 8
    diagram_points: int = 32
    hmm_iter: int = 20
    hmm_fit_sequences: int = 300
    gmm_components: int = 20
    gmm_pcs: int = 8
    gmm_fit_rows: int = 5_000
    chunk_size: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            check_int(f"PipelineConfig.{k}", v, 0 if k == "seed" else 1)


def release_pages(arrays) -> None:
    """Flush and unmap the pages of memmapped arrays that this process has touched
    (`madvise(MADV_DONTNEED)`): the file stays in the OS page cache, but the process's resident
    set no longer grows with every chunk read or written, so it stays bounded by the chunk.
    Arrays that are not memmaps are left alone."""
    if isinstance(arrays, (str, bytes, np.ndarray)) or not isinstance(arrays, Iterable):
        raise InputTypeError(f"arrays must be an iterable of arrays (e.g. a list); got {type(arrays).__name__}")
    for a in arrays:
        mm = getattr(a, "_mmap", None)
        if isinstance(a, np.memmap) and mm is not None:
            if a.mode in ("r+", "w+"):
                a.flush()
            if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                mm.madvise(mmap.MADV_DONTNEED)


def split_indices(n_customers: int, seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict[str, np.ndarray]:
    """A seeded random split of 0..n-1 into train / val / test, each sorted: {split: int64 [n_s]}."""
    n = check_int("n_customers", n_customers, 3)
    seed = check_int("seed", seed, 0)
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Iterable) or len(tuple(fractions)) != 3:
        raise HyperparameterError(f"fractions must be three positive numbers summing to 1; got {fractions!r}")
    fractions = tuple(check_float(f"fractions[{i}]", f, 0.0, low_open=True) for i, f in enumerate(fractions))
    if abs(sum(fractions) - 1) > 1e-9:
        raise HyperparameterError(f"fractions must be three positive numbers summing to 1; got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    cut = np.cumsum([int(round(f * n)) for f in fractions[:2]])
    return {s: np.sort(p) for s, p in zip(SPLITS, np.split(perm, cut))}


def fingerprint(*parts: Any) -> str:
    """A short sha256 of the JSON of `parts` (arrays and tensors by their bytes): the cache key of
    a step. Parts are JSON values (numbers, strings, lists, dicts), arrays, tensors, NumPy scalars
    or paths; anything else (an object whose text may change between runs) raises InputTypeError."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            p = p.detach().cpu().numpy()
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=_json_part).encode())
    return h.hexdigest()[:16]


def _json_part(o: Any) -> Any:
    """`fingerprint`'s JSON encoder for values JSON lacks: every one by its content, never by repr."""
    if isinstance(o, torch.Tensor):
        o = o.detach().cpu().numpy()
    if isinstance(o, np.ndarray):
        return {"dtype": str(o.dtype), "shape": list(o.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(o).tobytes()).hexdigest()}
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=repr)
    raise InputTypeError(f"parts holds a {type(o).__name__}, which has no stable fingerprint; "
                         "expected numbers, strings, lists, dicts, arrays, tensors or paths")


def _world_id(world) -> dict:
    return {"seed": world.seed, "n": world.n_customers, "config": asdict(world.config)}


def _mode_obs(world, mode: str, rows) -> np.ndarray:
    """The observations one HMM mode reads (as PLE-4): journey = the session sequence's journey
    channels; lifecycle / behaviour = monthly means of their transaction channels. [n, T_m, 4]."""
    from ple.data import world as W

    if mode == "journey":
        return np.asarray(world.session_seq[rows][:, :, W.SESSION_CHANNELS["journey"]], dtype=np.float64)
    x = np.asarray(world.txn_seq[rows][:, :, W.TXN_CHANNELS[mode]], dtype=np.float64)
    spm = world.config.steps_per_month
    return x.reshape(len(x), -1, spm, x.shape[2]).mean(axis=2)


class OfflineFits:
    """The fitted offline state: merchant LightGCN embeddings, merchant Poincaré points, the three
    HMMs, the PCA basis and the GMM. `fit` reads the training customers only; `transform` maps
    any customers (a chunk) to the pipeline's per-customer arrays."""

    def __init__(self, config: PipelineConfig) -> None:
        if not isinstance(config, PipelineConfig):
            raise InputTypeError(f"config must be a PipelineConfig; got {type(config).__name__}")
        self.config = config

    def fit(self, world, train: np.ndarray) -> OfflineFits:
        from ple.data import world as W

        _check_world(world)
        cfg, rng = self.config, np.random.default_rng(self.config.seed)
        train = _check_ids(train, "train", world.n_customers)
        # LightGCN on the training customers' subgraph (a seeded subset of at most lightgcn_fit_customers)
        fit_ids = train if len(train) <= cfg.lightgcn_fit_customers else np.sort(
            rng.choice(train, cfg.lightgcn_fit_customers, replace=False))
        edges = _edges_of(world, fit_ids)
        local = np.searchsorted(fit_ids, edges[:, 0])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # parallel sparse reductions are not bitwise reproducible
        try:
            _, self.merchant_embedding = lightgcn_embeddings(
                np.stack([local, edges[:, 1]], 1), len(fit_ids), world.n_merchants, dim=cfg.lightgcn_dim,
                num_layers=cfg.lightgcn_layers, epochs=cfg.lightgcn_epochs, seed=cfg.seed)
        finally:
            torch.set_num_threads(threads)
        self.merchant_embedding = self.merchant_embedding.numpy()
        self.merchant_points = poincare_hierarchy_embedding(world.merchant_category, world.merchant_subcategory,
                                                            world.merchant_brand, dim=cfg.poincare_dim, seed=cfg.seed)
        self.hmms = {}
        for m in HMM_MODES:
            sub = train if len(train) <= cfg.hmm_fit_sequences else np.sort(rng.choice(train, cfg.hmm_fit_sequences, replace=False))
            self.hmms[m] = ModeHMM(m, len(W.STATE_NAMES[m]), n_iter=cfg.hmm_iter, seed=cfg.seed,
                                   max_fit_sequences=None).fit(_mode_obs(world, m, sub))
        sub = train if len(train) <= cfg.gmm_fit_rows else np.sort(rng.choice(train, cfg.gmm_fit_rows, replace=False))
        seg = np.asarray(world.features[sub], dtype=np.float64)[:, W.SEGMENT_DIMS]
        self.pca_mean = seg.mean(0)
        self.pca_basis = np.linalg.svd(seg - self.pca_mean, full_matrices=False)[2][:cfg.gmm_pcs]
        self.gmm = GMMClusterRouter(cfg.gmm_components, "full", seed=cfg.seed).fit((seg - self.pca_mean) @ self.pca_basis.T)
        return self

    def transform(self, world, start: int, stop: int) -> dict[str, np.ndarray]:
        """The derived arrays of customers start..stop-1 (float32 / bool)."""
        from ple.data import world as W

        cfg = self.config
        n = stop - start
        e = world.customer_interactions(start, stop).copy()
        e[:, 0] -= start
        counts = np.bincount(e[:, 0], minlength=n).astype(np.float64)
        collab = np.stack([np.bincount(e[:, 0], weights=self.merchant_embedding[e[:, 1], k], minlength=n)
                           for k in range(self.merchant_embedding.shape[1])], 1) / np.maximum(counts, 1)[:, None]
        pts, nbr, nmask = customer_hierarchy_inputs(e, self.merchant_points, n, cfg.max_neighbors)
        feats = np.asarray(world.features[start:stop], dtype=np.float32)
        merchant_feats = feats[:, W.FEATURE_BLOCKS["merchant_hierarchy"]]
        nbr = np.concatenate([nbr, np.zeros((n, cfg.max_neighbors, merchant_feats.shape[1]), np.float32)], 2)
        diag, dmask = persistence_diagrams(np.asarray(world.balance_seq[start:stop])[:, :, None], cfg.diagram_points)
        out = {"collaborative": collab.astype(np.float32),
               "hierarchy": np.concatenate([pts, merchant_feats], 1).astype(np.float32),
               "hierarchy_neighbors": nbr, "hierarchy_mask": nmask, "diagrams": diag, "diagram_mask": dmask}
        rows = slice(start, stop)
        for m in HMM_MODES:
            out[f"hmm_{m}"] = self.hmms[m].transform(_mode_obs(world, m, rows))
        seg = feats.astype(np.float64)[:, W.SEGMENT_DIMS]
        out["cluster_probs"] = self.gmm.predict_proba((seg - self.pca_mean) @ self.pca_basis.T)
        return out


def _check_world(world: object) -> None:
    from ple.data.world import CustomerWorld

    if not isinstance(world, CustomerWorld):
        raise InputTypeError(f"world must be a CustomerWorld (ple.data.world.generate / load_world); got {type(world).__name__}")


def _check_ids(ids: object, name: str, n: int, allow_empty: bool = False) -> np.ndarray:
    """Customer ids as sorted int64: integers in [0, n), no duplicates, at least one unless `allow_empty`."""
    a = checks.check_array(ids, name, 1, dtype=None)
    if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.all(a == np.round(a))):
        raise InputTypeError(f"{name} must hold integer customer ids; got dtype {a.dtype}")
    a = np.sort(a.astype(np.int64))
    if a.size == 0:
        if allow_empty:
            return a
        raise ShapeError(f"{name} is empty; expected at least one customer id")
    if a[0] < 0 or a[-1] >= n:
        raise ValueError(f"{name} must hold customer ids in [0, {n}); got ids from {a[0]} to {a[-1]}")
    dup = np.unique(a[1:][a[1:] == a[:-1]])
    if dup.size:
        raise ValueError(f"{name} has duplicate ids: {dup[:5].tolist()}")
    return a


def _world_arrays(world) -> list:
    return [world.features, world.txn_seq, world.session_seq, world.balance_seq, world.interactions,
            *world.labels.values()]


def _edges_of(world, ids: np.ndarray) -> np.ndarray:
    """Interactions [E, 2] of the customers `ids` (sorted), from the world's offsets."""
    off = np.asarray(world.interaction_offsets)
    lo, hi = off[ids], off[ids + 1]
    idx = np.repeat(lo - np.concatenate([[0], np.cumsum(hi - lo)[:-1]]), hi - lo) + np.arange(int((hi - lo).sum()))
    return np.asarray(world.interactions[idx])


class PreparedWorld:
    """A world and its pipeline outputs: per-customer arrays (memmaps when cached on disk), the
    splits, and batch iterators. Built by `prepare_world`; nothing here loads a whole world.

    arrays: {name: [N, ...]} for every input of `ple.system.INPUT_FIELDS` (the world's own
    features and sequences, and the derived ones); labels: {task: [N, ...]}; splits: {split: ids};
    dims: the input sizes for `ple.system.preset(...)` / `SystemConfig`.
    """

    def __init__(self, world, fits: OfflineFits, arrays: dict[str, np.ndarray], splits: dict[str, np.ndarray],
                 cache_dir: str | None, fingerprint: str) -> None:
        _check_world(world)
        if not isinstance(fits, OfflineFits):
            raise InputTypeError(f"fits must be an OfflineFits; got {type(fits).__name__}")
        if not isinstance(splits, Mapping) or set(splits) != set(SPLITS):
            raise HyperparameterError(f"splits must be a dict with the keys {SPLITS}; got {splits!r}")
        self.world, self.fits, self.splits = world, fits, splits
        self.cache_dir, self.fingerprint = cache_dir, fingerprint
        self.arrays = {"features": world.features, "txn_seq": world.txn_seq, "session_seq": world.session_seq, **arrays}
        self.labels = dict(world.labels)
        cfg = fits.config
        self.dims = dict(feature_dim=int(world.features.shape[1]), collaborative_dim=cfg.lightgcn_dim,
                         hierarchy_dim=int(arrays["hierarchy"].shape[1]), poincare_dim=cfg.poincare_dim,
                         txn_dim=int(world.txn_seq.shape[2]), session_dim=int(world.session_seq.shape[2]),
                         diagram_channels=2, num_clusters=cfg.gmm_components)

    def rows(self, ids: np.ndarray, tasks) -> Batch:
        """The batch of customers `ids` (any order): inputs in `ple.system.INPUT_FIELDS` order,
        targets of `tasks` (no masks: every customer of the world is labelled). Reads the rows
        in sorted order (sequential memmap access), returns them in the order of `ids`."""
        from ple.system import INPUT_FIELDS

        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ids, back = ids[order], np.argsort(order, kind="stable")

        def take(a):
            return torch.from_numpy(np.ascontiguousarray(np.asarray(a[sorted_ids])[back]))

        inputs = tuple(take(self.arrays[f]) for f in INPUT_FIELDS)
        return Batch(inputs, {t: take(self.labels[t]) for t in tasks}, None)

    def tensor_data(self, split: str, tasks=None) -> TensorData:
        """The whole split in memory as a `ple.fit.TensorData` (small worlds only)."""
        from ple.tasks import ACTIVE_TASK_NAMES

        b = self.rows(self.splits[split], tasks or ACTIVE_TASK_NAMES)
        return TensorData(b.inputs, b.targets)

    def stream(self, split: str, batch_size: int, *, tasks=None, shuffle: bool = True, seed: int = 0,
               chunk_size: int = 8192, num_replicas: int = 1, rank: int = 0, drop_last: bool = False) -> StreamingBatches:
        """A re-iterable stream of batches of `split` (see `StreamingBatches`)."""
        from ple.tasks import ACTIVE_TASK_NAMES

        return StreamingBatches(self, self.splits[split], tuple(tasks or ACTIVE_TASK_NAMES), batch_size,
                                shuffle=shuffle, seed=seed, chunk_size=chunk_size, num_replicas=num_replicas,
                                rank=rank, drop_last=drop_last)


class StreamingBatches:
    """Batches of a split streamed from the (memmapped) arrays in bounded memory.

    Each pass draws the epoch's order like `torch.utils.data.DistributedSampler`: a permutation of
    the split seeded by seed + epoch (or the split's order without `shuffle`), padded by wrapping
    to a multiple of `num_replicas`, then every `num_replicas`-th entry from `rank`. Batches are
    consecutive `batch_size` runs of that order; rows are read `chunk_size` customers at a time,
    so the batches do not depend on `chunk_size` (bit for bit). Iterating again advances the
    epoch (`set_epoch` fixes it, as with DistributedSampler). Yields `ple.fit.Batch`es.
    """

    def __init__(self, data: PreparedWorld, ids: np.ndarray, tasks: tuple[str, ...], batch_size: int, *,
                 shuffle: bool = True, seed: int = 0, chunk_size: int = 8192, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = False) -> None:
        if not isinstance(data, PreparedWorld):
            raise InputTypeError(f"data must be a PreparedWorld (prepare_world); got {type(data).__name__}")
        if isinstance(tasks, str) or not tasks or any(t not in data.labels for t in tasks):
            raise HyperparameterError(f"tasks must name tasks of the world's labels {sorted(data.labels)}; got {tasks!r}")
        _check_ids(ids, "ids", data.world.n_customers)  # the split's ids, kept in their order
        ids = np.asarray(ids, dtype=np.int64)
        self.data, self.ids, self.tasks = data, ids, tuple(tasks)
        self.batch_size = check_int("batch_size", batch_size)
        self.chunk_size = check_int("chunk_size", chunk_size)
        self.num_replicas = check_int("num_replicas", num_replicas)
        self.rank = check_int("rank", rank, 0, self.num_replicas - 1)
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int("epoch", epoch, 0)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """This replica's customer ids for `epoch`, in batch order."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.ids)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(n, generator=g).numpy()
        else:
            perm = np.arange(n)
        total = -(-n // self.num_replicas) * self.num_replicas
        perm = np.concatenate([perm, perm[: total - n]]) if total > n else perm
        return self.ids[perm[self.rank::self.num_replicas]]

    def __len__(self) -> int:
        m = len(self.order(0))
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self.order()
        self.epoch += 1
        n, bs = len(order), self.batch_size
        stop = n - n % bs if self.drop_last else n
        lo = hi = 0
        chunk = None
        for start in range(0, stop, bs):
            end = min(start + bs, n)
            if chunk is None or end > hi:
                lo, hi = start, min(n, max(end, start + self.chunk_size))
                chunk = self.data.rows(order[lo:hi], self.tasks)
                release_pages([*self.data.arrays.values(), *self.data.labels.values()])
            a, b = start - lo, end - lo
            yield Batch(tuple(x[a:b] for x in chunk.inputs), {k: v[a:b] for k, v in chunk.targets.items()}, None)


def prepare_world(world, config: PipelineConfig | None = None, *, splits: Mapping[str, np.ndarray] | None = None,
                  cache_dir: str | None = None, seed: int = 0) -> PreparedWorld:
    """Run the offline pipeline on `world` (eq-pipeline): fit on the training split only, transform
    every customer chunk by chunk, and return a `PreparedWorld`.

    splits: {split: ids} (default `split_indices(N, seed)`). cache_dir: where the derived arrays
    go as .npy memmaps (default: `<world.out_dir>/pipeline` for a world on disk; in memory for
    a world in memory). The outputs are cached under a fingerprint of the world (seed, size,
    config), the training ids and the settings: a second call with the same inputs loads them
    instead of refitting.
    """
    import pickle

    _check_world(world)
    if config is not None and not isinstance(config, PipelineConfig):
        raise InputTypeError(f"config must be a PipelineConfig; got {type(config).__name__}")
    cfg = config or PipelineConfig(seed=seed)
    if splits is not None and (not isinstance(splits, Mapping) or set(splits) != set(SPLITS)):
        raise HyperparameterError(f"splits must be a dict with the keys {SPLITS}; got {splits!r}")
    raw = splits or split_indices(world.n_customers, seed)
    splits = {k: _check_ids(raw[k], f"splits[{k!r}]", world.n_customers, allow_empty=k != "train") for k in SPLITS}
    both = np.intersect1d(splits["train"], np.concatenate([splits["val"], splits["test"]]))
    if both.size or np.intersect1d(splits["val"], splits["test"]).size:
        raise ValueError("splits must be disjoint (a customer in two splits leaks labels into the fit); "
                         f"got {both.size or np.intersect1d(splits['val'], splits['test']).size} shared ids, "
                         f"e.g. {(both if both.size else np.intersect1d(splits['val'], splits['test']))[:5].tolist()}")
    settings = {k: v for k, v in asdict(cfg).items() if k != "chunk_size"}  # chunking changes no value
    fp = fingerprint("pipeline-v1", _world_id(world), splits["train"], settings)
    if cache_dir is None and getattr(world, "out_dir", None):
        cache_dir = str(Path(world.out_dir) / "pipeline")
    root = None if cache_dir is None else Path(cache_dir) / fp
    if root is not None and (root / "done.json").is_file():
        with open(root / "fits.pkl", "rb") as f:
            fits = pickle.load(f)
        arrays = {k: np.load(root / f"{k}.npy", mmap_mode="r") for k in DERIVED}
        return PreparedWorld(world, fits, arrays, splits, str(root), fp)
    fits = OfflineFits(cfg).fit(world, splits["train"])
    n = world.n_customers
    arrays: dict[str, Any] = {}
    for start in range(0, n, cfg.chunk_size):
        stop = min(start + cfg.chunk_size, n)
        part = fits.transform(world, start, stop)
        for k, v in part.items():
            if k not in arrays:
                if root is None:
                    arrays[k] = np.empty((n, *v.shape[1:]), v.dtype)
                else:
                    root.mkdir(parents=True, exist_ok=True)
                    arrays[k] = np.lib.format.open_memmap(root / f"{k}.npy", "w+", v.dtype, (n, *v.shape[1:]))
            arrays[k][start:stop] = v
        release_pages([*arrays.values(), *_world_arrays(world)])
    if root is not None:
        for a in arrays.values():
            a.flush()
        with open(root / "fits.pkl", "wb") as f:
            pickle.dump(fits, f)
        (root / "done.json").write_text(json.dumps({"fingerprint": fp, "settings": asdict(cfg)}, indent=1))
        arrays = {k: np.load(root / f"{k}.npy", mmap_mode="r") for k in DERIVED}
    return PreparedWorld(world, fits, arrays, splits, None if root is None else str(root), fp)
