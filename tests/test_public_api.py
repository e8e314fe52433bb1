"""The package's front door: every name ple/__init__.py promises resolves to its module's object."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import ple


@pytest.mark.parametrize("name", sorted(ple._ENTRY_POINTS))
def test_entry_point_is_the_modules_public_object(name):
    module = importlib.import_module(ple._ENTRY_POINTS[name])
    assert name in module.__all__, f"{name} is not in {module.__name__}.__all__"
    assert getattr(ple, name) is getattr(module, name)
    assert name in ple.__all__ and name in dir(ple)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ple.nope  # noqa: B018


def test_import_ple_loads_no_model_code():
    code = "import sys, ple; print(any(m.startswith('ple.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
