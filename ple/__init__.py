"""ple -- Progressive Layered Extraction and adaTT, as derived in the PLE / adaTT reference book.

Every module but this one is generated from a chapter of the book (`make export`); the module's
header names the notebook to edit.

The entry points a user needs are importable from here (``from ple import Task, TensorData, CGC``;
the engine itself is ``from ple.fit import fit``):
the training engine, the models, the customer world and the metrics. They load on first use, so
``import ple`` stays cheap; every other name lives in its module (``ple.gates``, ``ple.losses``,
...), listed in that module's ``__all__``.
"""

from __future__ import annotations

import os
import random

# The one place for the version: pyproject.toml reads it (setuptools dynamic metadata);
# tests/test_packaging.py checks CITATION.cff and CHANGELOG.md against it.
__version__ = "0.1.0"

# name -> module that defines it (loaded on first attribute access, PEP 562)
_ENTRY_POINTS: dict[str, str] = {
    # the training engine (PLE-1); its function is `ple.fit.fit` (`ple.fit` is the module)
    "Task": "ple.fit", "TensorData": "ple.fit", "Batch": "ple.fit",
    "Callback": "ple.fit", "History": "ple.fit", "predict": "ple.fit", "evaluate": "ple.fit",
    # the models
    "SharedBottom": "ple.mmoe", "MMoE": "ple.mmoe", "OMoE": "ple.mmoe",
    "CGC": "ple.cgc", "PLE": "ple.cgc",
    "PLESystem": "ple.system", "SystemConfig": "ple.system",
    "TaskAffinityComputer": "ple.adatt", "AdaTT": "ple.adatt_transfer",
    # the customer world and the metrics (chapter 00)
    "TaskSpec": "ple.tasks", "generate": "ple.data.world", "load_world": "ple.data.world",
    "oracle": "ple.data.world", "metric": "ple.metrics", "oracle_gap": "ple.metrics",
}
__all__ = ["seed_everything", "__version__", *_ENTRY_POINTS]


def __getattr__(name: str):
    module = _ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ple' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ENTRY_POINTS))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and every GPU) with `seed`.

    Experiments in the book call this once per run; data generators take their own `seed`
    argument and never read the global state.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    import numpy as np
    import torch

    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
