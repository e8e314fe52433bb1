"""Contract tests of ple.data.pipeline: determinism, no leak, caching, bounded memory, replicas."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from ple.checks import HyperparameterError
from ple.data import pipeline as P
from ple.data import world as W
from ple.tasks import HMM_MODES

QUICK = P.PipelineConfig(lightgcn_epochs=1, hmm_iter=3, hmm_fit_sequences=60, gmm_fit_rows=400,
                         gmm_components=4, chunk_size=1000, seed=0)


@pytest.fixture(scope="module")
def world():
    return W.generate(1200, seed=3, profile="ci")


@pytest.fixture(scope="module")
def prepared(world):
    return P.prepare_world(world, QUICK, seed=0)


def test_splits_are_disjoint_and_cover_everyone():
    s = P.split_indices(1000, seed=1)
    ids = np.concatenate([s[k] for k in P.SPLITS])
    assert sorted(ids.tolist()) == list(range(1000)) and len(s["train"]) == 600
    with pytest.raises(HyperparameterError, match="fractions"):
        P.split_indices(10, fractions=(0.5, 0.5, 0.5))


def test_config_errors_name_the_field():
    with pytest.raises(HyperparameterError, match="PipelineConfig.gmm_components"):
        P.PipelineConfig(gmm_components=0)


def test_batches_are_bit_identical_for_chunk_sizes_1k_and_10k(prepared):
    a = list(prepared.stream("train", 96, chunk_size=1000, seed=5))
    b = list(prepared.stream("train", 96, chunk_size=10_000, seed=5))
    assert len(a) == len(b) == -(-len(prepared.splits["train"]) // 96)
    for x, y in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(x.inputs, y.inputs))
        assert all(torch.equal(x.targets[t], y.targets[t]) for t in x.targets)


def test_transform_does_not_depend_on_the_chunking(world, prepared):
    whole = prepared.fits.transform(world, 0, world.n_customers)
    for k in P.DERIVED:
        assert np.array_equal(whole[k], np.asarray(prepared.arrays[k])), k


def test_each_epoch_is_a_new_permutation_of_the_split(prepared):
    stream = prepared.stream("val", 50, seed=0)
    counts = [sum(b.inputs[0].shape[0] for b in stream) for _ in range(2)]
    assert counts == [len(prepared.splits["val"])] * 2
    o0, o1 = stream.order(0), stream.order(1)
    assert sorted(o0.tolist()) == sorted(o1.tolist()) == prepared.splits["val"].tolist()
    assert not np.array_equal(o0, o1)
    assert stream.epoch == 2  # iterating advanced the epoch twice


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_order_is_distributed_samplers(prepared, replicas):
    ids = prepared.splits["train"]
    seen = []
    for rank in range(replicas):
        st = prepared.stream("train", 64, seed=7, num_replicas=replicas, rank=rank)
        st.set_epoch(4)
        sampler = DistributedSampler(range(len(ids)), num_replicas=replicas, rank=rank, shuffle=True, seed=7)
        sampler.set_epoch(4)
        assert np.array_equal(st.order(), ids[list(sampler)])
        seen += st.order().tolist()
    assert set(seen) == set(ids.tolist())


def test_no_leak_refit_with_the_test_split_shuffled_changes_nothing(world, prepared):
    test = prepared.splits["test"]
    perm = np.arange(world.n_customers)
    perm[test] = np.random.default_rng(0).permutation(test)
    other = P.prepare_world(world.take(perm), QUICK, splits=prepared.splits)
    f1, f2 = prepared.fits, other.fits
    assert np.array_equal(f1.merchant_embedding, f2.merchant_embedding)
    assert np.array_equal(f1.pca_mean, f2.pca_mean) and np.array_equal(f1.gmm.gmm.means_, f2.gmm.gmm.means_)
    for m in HMM_MODES:
        assert np.array_equal(f1.hmms[m].model_.transmat_, f2.hmms[m].model_.transmat_)
    for k in P.DERIVED:
        assert np.array_equal(np.asarray(other.arrays[k]), np.asarray(prepared.arrays[k])[perm]), k


def test_cache_loads_instead_of_refitting(tmp_path, world, monkeypatch):
    first = P.prepare_world(world, QUICK, cache_dir=str(tmp_path), seed=0)
    assert first.cache_dir is not None and isinstance(first.arrays["collaborative"], np.memmap)

    def boom(*a, **k):
        raise AssertionError("refitted although the cache holds this fingerprint")

    monkeypatch.setattr(P.OfflineFits, "fit", boom)
    again = P.prepare_world(world, P.PipelineConfig(**{**QUICK.__dict__, "chunk_size": 333}), cache_dir=str(tmp_path), seed=0)
    assert again.fingerprint == first.fingerprint
    for k in P.DERIVED:
        assert np.array_equal(np.asarray(again.arrays[k]), np.asarray(first.arrays[k]))
    with pytest.raises(AssertionError, match="refitted"):  # other training ids: a new fingerprint
        P.prepare_world(world, QUICK, cache_dir=str(tmp_path), seed=1)


def test_streaming_memory_is_bounded_by_the_chunk(tmp_path):
    w = W.generate(6000, seed=1, profile="ci", out_dir=str(tmp_path / "world"))
    data = P.prepare_world(W.load_world(str(tmp_path / "world")), QUICK, seed=0)
    assert isinstance(data.arrays["txn_seq"], np.memmap) and isinstance(data.arrays["hierarchy"], np.memmap)
    row_bytes = sum(a.dtype.itemsize * int(np.prod(a.shape[1:])) for a in data.arrays.values())
    split_bytes = row_bytes * len(data.splits["train"])
    tracemalloc.start()
    n = 0
    for batch in data.stream("train", 50, chunk_size=250, seed=0):
        n += batch.inputs[0].shape[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == len(data.splits["train"]) and w.n_customers == 6000
    # a few copies of one chunk (the memmap read, the reorder), never the split
    assert peak < 4 * 250 * row_bytes < split_bytes / 3, (peak, row_bytes, split_bytes)


def test_splits_that_overlap_or_leave_the_world_are_rejected(world):
    n = world.n_customers
    with pytest.raises(ValueError, match="splits must be disjoint"):
        P.prepare_world(world, QUICK, splits={"train": np.arange(n // 2), "val": np.arange(n // 2 - 1, n - 5),
                                              "test": np.arange(n - 5, n)})
    with pytest.raises(ValueError, match=r"splits\['test'\] must hold customer ids in \[0, "):
        P.prepare_world(world, QUICK, splits={"train": np.arange(n // 2), "val": np.arange(n // 2, n - 5),
                                              "test": np.arange(n - 5, n + 1)})


def test_fingerprint_keys_tensors_and_nested_arrays_by_content():
    a = torch.arange(5000)
    b = a.clone()
    b[2500] = -1  # the middle of a tensor's printed form is elided: str() would key a and b alike
    assert P.fingerprint(a) != P.fingerprint(b)
    assert P.fingerprint({"x": a.numpy()}) != P.fingerprint({"x": b.numpy()})
    assert P.fingerprint(a) == P.fingerprint(a.numpy())
    with pytest.raises(TypeError, match="parts holds a object"):
        P.fingerprint(object())
