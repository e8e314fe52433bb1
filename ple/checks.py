"""ple.checks -- generated from book/ple1_mtl_to_mmoe.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['HyperparameterError', 'InputTypeError', 'ShapeError', 'NonFiniteError', 'TaskError', 'validation_enabled', 'validation', 'shape_str', 'check_int', 'check_float', 'check_dropout', 'check_widths', 'check_choice', 'check_finite', 'check_tensor', 'check_features', 'check_dtype', 'check_range', 'check_probabilities', 'check_unique', 'check_array']

import contextlib
import math
import numbers
from collections.abc import Iterator, Sequence

import numpy as np
import torch


class HyperparameterError(ValueError):
    """A configuration argument (a width, a count, a rate, a choice) has the wrong type or range."""


class InputTypeError(TypeError, ValueError):
    """An input is not a tensor, or has the wrong dtype. A TypeError and a ValueError at once."""


class ShapeError(ValueError):
    """A tensor has the wrong number of axes or the wrong size along one."""


class NonFiniteError(ValueError):
    """A tensor holds NaN or inf where finite values are required."""


class TaskError(ValueError):
    """Task names or outputs disagree between the model, the data and the task list."""


_VALIDATION = [True]  # the switch; a list so that the flag is shared by every importer


def validation_enabled() -> bool:
    """Whether the checks that read a device value into Python (NaN / inf scans) run now."""
    return _VALIDATION[0]


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Turn the device-syncing input checks on or off inside a `with` block.

    Off, `check_tensor`, `check_features` and `check_finite` still check types and shapes (free:
    shapes live on the host) but skip ``isfinite(x).all()``, which waits for the device. The
    training step of `ple.fit.fit` runs with validation off, after checking the data once.
    """
    if not isinstance(enabled, bool):
        raise HyperparameterError(f"enabled must be a bool; got {enabled!r}")
    previous = _VALIDATION[0]
    _VALIDATION[0] = enabled
    try:
        yield
    finally:
        _VALIDATION[0] = previous


def shape_str(x: torch.Tensor) -> str:
    """A tensor's (or an array's) shape as the error messages print it: ``[32, 600]``."""
    if not hasattr(x, "shape"):
        raise InputTypeError(f"x must be a tensor or an array; got {type(x).__name__}")
    return "[" + ", ".join(str(s) for s in x.shape) + "]"


def check_int(name: str, value: object, minimum: int | None = 1, maximum: int | None = None) -> int:
    """Return `value` as an int if it is an integer in [minimum, maximum] (bounds optional).

    Python and NumPy integers pass; bool, floats (even 3.0) and strings raise
    HyperparameterError naming the argument: ``num_experts must be an int >= 1; got 2.7``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise HyperparameterError(f"{name} must be an int{_bounds(minimum, maximum)}; got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise HyperparameterError(f"{name} must be an int{_bounds(minimum, maximum)}; got {value!r}")
    return int(value)


def _bounds(minimum: float | None, maximum: float | None, low_open: bool = False, high_open: bool = False) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if low_open else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"{'<' if high_open else '<='} {maximum}")
    return " " + " and ".join(parts) if parts else ""


def check_float(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return `value` as a float if it is a finite real number in the given range.

    `low` / `high` bound it (inclusive unless `low_open` / `high_open`). Ints pass, bools and
    strings do not. Messages name the argument: ``lr must be > 0; got -0.1``,
    ``scale must be finite; got nan``, ``lr must be a real number; got '1e-3'``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise HyperparameterError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise HyperparameterError(f"{name} must be finite; got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise HyperparameterError(f"{name} must be{_bounds(low, high, low_open, high_open)}; got {value!r}")
    return value


def check_dropout(dropout: object, name: str = "dropout") -> float:
    """Return a dropout probability as a float if it lies in [0, 1); else HyperparameterError."""
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise HyperparameterError(f"{name} must be a float in [0, 1); got {dropout!r}")
    return float(dropout)


def check_widths(name: str, values: object, minimum: int = 1) -> tuple[int, ...]:
    """A sequence of ints >= `minimum` (layer widths, per-task sizes) as a tuple; else
    HyperparameterError naming the argument, or ``name[i]`` for a bad entry."""
    if isinstance(values, (str, bytes, numbers.Number)) or not isinstance(values, Sequence):
        raise HyperparameterError(f"{name} must be a sequence of ints >= {minimum}; got {values!r}")
    return tuple(check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))


def check_choice(name: str, value: object, choices: Sequence[object]) -> object:
    """Return `value` if it is one of `choices`; else HyperparameterError listing them."""
    if value not in choices:
        raise HyperparameterError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_finite(x: torch.Tensor, name: str) -> None:
    """NonFiniteError if a floating tensor holds NaN or inf, with the counts of each.

    Reads a device value into Python, so it is skipped while `validation(False)` is active.
    """
    if not validation_enabled() or not x.is_floating_point():
        return
    if not bool(torch.isfinite(x).all()):
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise NonFiniteError(f"{name} contains NaN or inf ({n_nan} NaN, {n_inf} inf entries)")


def check_tensor(x: object, name: str, expected: Sequence[int | str], what: str | None = None) -> None:
    """Raise unless `x` is a tensor of shape `expected` with finite entries.

    `expected` lists one entry per axis: an int fixes the size, a str (``"B"``, ``"T"``) names a
    free axis. The message names the argument, the shape received and the shape expected, e.g.
    ``txn_seq has shape [32, 180, 12]; expected [B, T, 16] (txn_dim)`` (ShapeError); a non-tensor
    raises InputTypeError, NaN or inf NonFiniteError (``txn_seq contains NaN``), the latter
    only while validation is enabled.
    """
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    want = "[" + ", ".join(str(e) for e in expected) + "]"
    ok = x.dim() == len(expected) and all(isinstance(e, str) or s == e for s, e in zip(x.shape, expected))
    if not ok:
        hint = f" ({what})" if what else ""
        raise ShapeError(f"{name} has shape {list(x.shape)}; expected {want}{hint}")
    if x.is_floating_point() and validation_enabled():
        if torch.isnan(x).any():
            raise NonFiniteError(f"{name} contains NaN")
        if torch.isinf(x).any():
            raise NonFiniteError(f"{name} contains inf")


def check_features(x: object, expected_dim: int, name: str = "features", dim_name: str | None = None) -> None:
    """Raise unless `x` is a finite floating-point tensor of shape [B, expected_dim].

    The message names the argument, the shape received and the shape expected, e.g.
    ``features has shape [32, 600]; expected [B, 644] (input_dim)`` (the parenthesis is
    `dim_name`, when given), or ``features contains NaN or inf (3 NaN, 0 inf entries)``.
    Non-tensors and integer dtypes raise InputTypeError, wrong shapes ShapeError, NaN / inf
    NonFiniteError (checked only while validation is enabled).
    """
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != expected_dim:
        suffix = f" ({dim_name})" if dim_name else ""
        raise ShapeError(f"{name} has shape {shape_str(x)}; expected [B, {expected_dim}]{suffix}")
    if not x.is_floating_point():
        raise InputTypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    check_finite(x, name)


def check_dtype(x: torch.Tensor, name: str, expected: torch.dtype, what: str = "the module's parameters") -> None:
    """InputTypeError unless `x` has dtype `expected`: one clear message where torch would say
    ``mat1 and mat2 must have the same dtype``, e.g. ``x has dtype torch.float64; expected
    torch.float32 (the module's parameters): convert with x.to(torch.float32)``. Free (host only).
    Skipped under autocast on x's device, which mixes dtypes on purpose."""
    if x.dtype != expected and not torch.is_autocast_enabled(x.device.type):
        raise InputTypeError(f"{name} has dtype {x.dtype}; expected {expected} ({what}): convert with {name}.to({expected})")


def check_range(
    x: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> None:
    """ValueError unless every entry of a tensor or array `x` lies in the given range (NaN fails).

    ``probs must lie in [0, 1] (a sigmoid output); got values from -0.2 to 1`` (`what` is the
    parenthesis). For a tensor this reads its extremes into Python (a device sync), so it runs
    only while validation is enabled; a NumPy array lives on the host and is always checked.
    """
    if isinstance(x, torch.Tensor):
        if not validation_enabled() or x.numel() == 0:
            return
        t = x.detach() if x.is_floating_point() else x.detach().double()
        lo, hi = torch.aminmax(t)
        lo, hi, nan = torch.stack([lo.double(), hi.double(), torch.isnan(t).any().double()]).tolist()  # one sync
    else:
        a = check_array(x, name, finite=False)
        if a.size == 0:
            return
        nan = bool(np.isnan(a).any())
        lo, hi = (math.nan, math.nan) if nan else (float(a.min()), float(a.max()))
    bad_low = low is not None and (lo <= low if low_open else lo < low)
    bad_high = high is not None and (hi >= high if high_open else hi > high)
    if nan or bad_low or bad_high:
        interval = f"{'(' if low_open else '['}{'-inf' if low is None else f'{low:g}'}, " \
                   f"{'inf' if high is None else f'{high:g}'}{')' if high_open else ']'}"
        hint = f" ({what})" if what else ""
        got = "NaN" if nan else f"values from {lo:g} to {hi:g}"
        raise ValueError(f"{name} must lie in {interval}{hint}; got {got}")


def check_probabilities(p: torch.Tensor, name: str, dim: int = -1, atol: float = 1e-3) -> None:
    """ValueError unless `p` holds probability vectors along `dim` (entries >= 0, sums within
    `atol` of 1, no NaN): ``cluster_probs must hold probability vectors along dim -1 (>= 0,
    summing to 1); got entries from -0.1 to 0.9 and sums from 0.8 to 1``. A device sync: runs
    only while validation is enabled."""
    if not validation_enabled() or p.numel() == 0:
        return
    if p.is_floating_point():  # a low-precision softmax sums to 1 only within a few ulps
        atol = max(atol, 8 * torch.finfo(p.dtype).eps)
    sums = p.sum(dim)
    lo, dev = p.amin(), (sums - 1).abs().amax()
    if bool((lo < 0) | ~(dev <= atol)):
        raise ValueError(
            f"{name} must hold probability vectors along dim {dim} (>= 0, summing to 1); got entries "
            f"from {lo.item():g} to {p.amax().item():g} and sums from {sums.amin().item():g} to {sums.amax().item():g}"
        )


def check_unique(name: str, values: Sequence[object]) -> tuple:
    """`values` as a tuple; HyperparameterError naming every value that occurs twice:
    ``names has duplicates: ['deepfm']``."""
    values = tuple(values)
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    if dup:
        raise HyperparameterError(f"{name} has duplicates: {dup}")
    return values


def check_array(x: object, name: str, ndim: int | None = None, *, finite: bool = True, dtype: object = np.float64) -> np.ndarray:
    """`x` as a NumPy array of `dtype` (None keeps its own), with the checks of `check_tensor`:
    InputTypeError when it cannot be converted (``x must be an array of float64; got str``),
    ShapeError for the wrong number of axes, NonFiniteError for NaN / inf (host data: always)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise InputTypeError(f"{name} must be an array of {np.dtype(dtype) if dtype is not None else 'numbers'}; "
                             f"got {type(x).__name__} ({err})") from None
    if a.dtype.kind not in "biuf":
        raise InputTypeError(f"{name} must hold numbers; got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ShapeError(f"{name} has shape {list(a.shape)}; expected {ndim} axes")
    if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise NonFiniteError(f"{name} contains NaN or inf ({int(np.isnan(a).sum())} NaN, {int(np.isinf(a).sum())} inf entries)")
    return a
