"""ple -- Progressive Layered Extraction and adaTT, as derived in the PLE / adaTT reference book.

Every module but this one is generated from a chapter of the book (`make export`); the module's
header names the notebook to edit.
"""

from __future__ import annotations

import os
import random

# The one place for the version: pyproject.toml reads it (setuptools dynamic metadata);
# tests/test_packaging.py checks CITATION.cff and CHANGELOG.md against it.
__version__ = "0.1.0"
__all__ = ["seed_everything", "__version__"]


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
