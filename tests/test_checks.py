"""ple.checks: the validators, their exception types and the validation switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ple import checks
from ple.checks import (
    HyperparameterError,
    InputTypeError,
    NonFiniteError,
    ShapeError,
    check_choice,
    check_dropout,
    check_features,
    check_finite,
    check_float,
    check_int,
    check_tensor,
    check_widths,
    validation,
    validation_enabled,
)


def test_exception_types_are_value_errors():
    for exc in (HyperparameterError, InputTypeError, NonFiniteError, ShapeError, checks.TaskError):
        assert issubclass(exc, ValueError)
    assert issubclass(InputTypeError, TypeError)


def test_check_int_accepts_ints_and_names_the_argument():
    assert check_int("n", 3) == 3
    assert check_int("n", np.int64(4)) == 4 and type(check_int("n", np.int64(4))) is int
    assert check_int("k", 0, minimum=0) == 0
    assert check_int("k", -5, minimum=None) == -5
    for bad in (0, -2, 2.7, 2.0, True, "3", None):
        with pytest.raises(HyperparameterError, match=r"^n must be an int >= 1; got "):
            check_int("n", bad)
    with pytest.raises(HyperparameterError, match=r"k must be an int >= 0 and <= 3; got 4"):
        check_int("k", 4, 0, 3)


def test_check_float_ranges_and_finiteness():
    assert check_float("lr", 1) == 1.0 and isinstance(check_float("lr", 1), float)
    assert check_float("p", -1.0, -1.0, 1.0) == -1.0
    with pytest.raises(HyperparameterError, match=r"lr must be > 0.0; got 0.0"):
        check_float("lr", 0.0, 0.0, low_open=True)
    with pytest.raises(HyperparameterError, match=r"p must be >= -1.0 and <= 1.0; got 1.5"):
        check_float("p", 1.5, -1.0, 1.0)
    with pytest.raises(HyperparameterError, match=r"p must be < 1.0"):
        check_float("p", 1.0, high=1.0, high_open=True)
    with pytest.raises(HyperparameterError, match="scale must be finite; got nan"):
        check_float("scale", float("nan"))
    for bad in ("1e-3", True, None):
        with pytest.raises(HyperparameterError, match="lr must be a real number"):
            check_float("lr", bad)


def test_check_dropout_widths_choice():
    assert check_dropout(0) == 0.0 and check_dropout(0.5) == 0.5
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(HyperparameterError, match=r"dropout must be a float in \[0, 1\)"):
            check_dropout(bad)
    with pytest.raises(HyperparameterError, match=r"^p_drop must be"):
        check_dropout(2, "p_drop")
    assert check_widths("dims", [4, np.int32(2)]) == (4, 2)
    with pytest.raises(HyperparameterError, match=r"dims\[1\] must be an int >= 1; got 0"):
        check_widths("dims", (4, 0))
    with pytest.raises(HyperparameterError, match="dims must be a sequence of ints"):
        check_widths("dims", 4)
    assert check_choice("kind", "a", ("a", "b")) == "a"
    with pytest.raises(HyperparameterError, match="kind must be one of 'a', 'b'; got 'c'"):
        check_choice("kind", "c", ("a", "b"))


def test_check_tensor_messages_match_the_expert_guard():
    check_tensor(torch.zeros(2, 3, 16), "txn_seq", ("B", "T", 16))
    with pytest.raises(ShapeError, match=r"^txn_seq has shape \[32, 180, 12\]; expected \[B, T, 16\] \(txn_dim\)$"):
        check_tensor(torch.zeros(32, 180, 12), "txn_seq", ("B", "T", 16), "txn_dim")
    with pytest.raises(ValueError, match="x must be a torch.Tensor; got list"):
        check_tensor([1.0], "x", ("B",))
    with pytest.raises(NonFiniteError, match="x contains NaN"):
        check_tensor(torch.tensor([1.0, float("nan")]), "x", ("B",))
    with pytest.raises(NonFiniteError, match="x contains inf"):
        check_tensor(torch.tensor([1.0, float("inf")]), "x", ("B",))
    check_tensor(torch.tensor([1, 2]), "ids", ("B",))  # integers are not scanned


def test_check_features_types_shapes_values():
    check_features(torch.randn(4, 7), 7)
    with pytest.raises(ShapeError, match=r"features has shape \[32, 600\]; expected \[B, 644\] \(input_dim\)"):
        check_features(torch.zeros(32, 600), 644, dim_name="input_dim")
    x = torch.zeros(4, 7)
    x[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"features contains NaN or inf \(1 NaN, 0 inf entries\)"):
        check_features(x, 7)
    with pytest.raises(InputTypeError, match="floating-point tensor; got dtype torch.int64"):
        check_features(torch.zeros(4, 7, dtype=torch.int64), 7)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        check_features([[0.0] * 7], 7)


def test_validation_switch_skips_only_the_syncing_checks():
    bad = torch.full((3, 4), float("nan"))
    assert validation_enabled()
    with validation(False):
        assert not validation_enabled()
        check_features(bad, 4)  # the NaN scan is off
        check_tensor(bad, "x", ("B", 4))
        check_finite(bad, "x")
        with pytest.raises(ShapeError):  # shapes are still checked
            check_features(bad, 5)
        with validation(True):
            with pytest.raises(NonFiniteError):
                check_finite(bad, "x")
        assert not validation_enabled()
    assert validation_enabled()
    with pytest.raises(RuntimeError), validation(False):  # restored after an exception
        raise RuntimeError
    assert validation_enabled()
    with pytest.raises(HyperparameterError, match="enabled must be a bool"):
        with validation(0):
            pass


# ---------------------------------------------------------------- ranges, dtypes, arrays, duplicates
def test_check_range_tensor_and_array():
    from ple.checks import check_range, validation

    check_range(torch.tensor([0.0, 1.0]), "p", 0, 1)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\] \(a probability\); got values from 0 to 2"):
        check_range(torch.tensor([0.0, 2.0]), "p", 0, 1, what="a probability")
    with pytest.raises(ValueError, match=r"dt must lie in \(0, inf\]; got values from -1 to 1"):
        check_range(np.array([-1.0, 1.0]), "dt", 0, low_open=True)
    with pytest.raises(ValueError, match="got NaN"):
        check_range(np.array([0.5, np.nan]), "p", 0, 1)
    with validation(False):  # a tensor's extremes need a device sync: skipped
        check_range(torch.tensor([5.0]), "p", 0, 1)
    with pytest.raises(ValueError, match="got NaN"):  # host data: always checked
        with validation(False):
            check_range(np.array([np.nan]), "p", 0, 1)


def test_check_dtype_probabilities_unique_array():
    from ple.checks import check_array, check_dtype, check_probabilities, check_unique

    with pytest.raises(InputTypeError, match=r"x has dtype torch.float64; expected torch.float32"):
        check_dtype(torch.zeros(2, dtype=torch.float64), "x", torch.float32)
    with pytest.raises(ValueError, match="q must hold probability vectors along dim -1"):
        check_probabilities(torch.tensor([[0.5, 0.6]]), "q")
    check_probabilities(torch.tensor([[0.5, 0.5]]).bfloat16(), "q")
    with pytest.raises(HyperparameterError, match=r"names has duplicates: \['a'\]"):
        check_unique("names", ["a", "b", "a"])
    with pytest.raises(InputTypeError, match="x must"):
        check_array(["a", "b"], "x")
    with pytest.raises(ShapeError, match=r"x has shape \[3\]; expected 2 axes"):
        check_array([1, 2, 3], "x", 2)
    with pytest.raises(NonFiniteError, match="x contains NaN or inf"):
        check_array([1.0, np.inf], "x")
