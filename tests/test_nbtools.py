"""The chapter exporter (tools/nbtools.py): directives, module layout, conflicts, output checks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("nbtools", ROOT / "tools" / "nbtools.py")
nbtools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nbtools)


def _nb(cells: list[tuple[str, str]], outputs: bool = False, kernel: str = "python3") -> dict:
    out = []
    for kind, src in cells:
        cell = {"cell_type": kind, "metadata": {}, "source": src}
        if kind == "code":
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x"}] if outputs else []
            cell["execution_count"] = 1 if outputs else None
        out.append(cell)
    return {
        "cells": out,
        "metadata": {"kernelspec": {"name": kernel, "display_name": "k", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@pytest.fixture
def book(tmp_path, monkeypatch):
    (tmp_path / "book").mkdir()
    (tmp_path / "ple").mkdir()
    (tmp_path / "ple" / "__init__.py").write_text('"""hand-written."""\n')
    monkeypatch.setattr(nbtools, "ROOT", tmp_path)
    monkeypatch.setattr(nbtools, "BOOK", tmp_path / "book")
    monkeypatch.setattr(nbtools, "PKG", tmp_path / "ple")
    return tmp_path


def _write(book: Path, name: str, nb: dict) -> None:
    (book / "book" / name).write_text(json.dumps(nb))


def test_export_default_and_named_modules(book):
    _write(
        book,
        "ch1.ipynb",
        _nb(
            [
                ("markdown", "# Title"),
                ("code", "#| default_exp gates\nimport math"),
                ("code", "#| export\nimport torch\n\ndef gate(x):\n    return x\n\n_private = 1"),
                ("code", "gate(1)  # not exported"),
                ("code", "#| export data.extra\nclass Extra:\n    pass\nLIMIT = 3"),
            ]
        ),
    )
    nbtools.export()
    gates = (book / "ple" / "gates.py").read_text()
    assert "generated from book/ch1.ipynb" in gates
    assert "__all__ = ['gate']" in gates
    assert "def gate(x)" in gates and "import math" not in gates and "gate(1)" not in gates
    extra = (book / "ple" / "data" / "extra.py").read_text()
    assert "__all__ = ['Extra', 'LIMIT']" in extra
    assert (book / "ple" / "data" / "__init__.py").exists()
    # the hand-written root __init__ is never touched
    assert (book / "ple" / "__init__.py").read_text() == '"""hand-written."""\n'


def test_exporti_ships_code_without_making_it_public(book):
    _write(
        book,
        "ch1.ipynb",
        _nb(
            [
                ("code", "#| default_exp a\n"),
                ("code", "#| export\ndef api():\n    return helper()"),
                ("code", "#| exporti\ndef helper():\n    return 1\nTABLE = 2"),
                ("code", "#| exporti b\nINTERNAL = 3"),
            ]
        ),
    )
    nbtools.export()
    a = (book / "ple" / "a.py").read_text()
    assert "__all__ = ['api']" in a
    assert "def helper():" in a and "TABLE = 2" in a
    b = (book / "ple" / "b.py").read_text()
    assert "__all__ = []" in b and "INTERNAL = 3" in b


def test_export_is_idempotent_and_removes_stale_modules(book):
    _write(book, "ch1.ipynb", _nb([("code", "#| default_exp a\n"), ("code", "#| export\nX = 1")]))
    nbtools.export()
    first = (book / "ple" / "a.py").read_text()
    nbtools.export()
    assert (book / "ple" / "a.py").read_text() == first
    _write(book, "ch1.ipynb", _nb([("code", "#| default_exp b\n"), ("code", "#| export\nX = 1")]))
    nbtools.export()
    assert not (book / "ple" / "a.py").exists()
    assert (book / "ple" / "b.py").exists()


def test_two_notebooks_cannot_write_one_module(book):
    _write(book, "ch1.ipynb", _nb([("code", "#| default_exp a\n"), ("code", "#| export\nX = 1")]))
    _write(book, "ch2.ipynb", _nb([("code", "#| default_exp a\n"), ("code", "#| export\nY = 1")]))
    with pytest.raises(SystemExit, match="exported by both ch1.ipynb and ch2.ipynb"):
        nbtools.export()


def test_export_without_module_name_is_an_error(book):
    _write(book, "ch1.ipynb", _nb([("code", "#| export\nX = 1")]))
    with pytest.raises(SystemExit, match="default_exp"):
        nbtools.export()


def test_check_flags_outputs_and_kernelspec(book, capsys):
    _write(book, "ch1.ipynb", _nb([("code", "x = 1")], outputs=True))
    _write(book, "ch2.ipynb", _nb([("code", "x = 1")], kernel="ir"))
    _write(book, "training_full.ipynb", _nb([("code", "x = 1")], outputs=True))
    assert nbtools.check() == 1
    err = capsys.readouterr().err
    assert "ch1.ipynb: cell 0 is committed with outputs" in err
    assert "ch2.ipynb: kernelspec name is 'ir'" in err
    assert "training_full" not in err


def test_strip_removes_outputs(book):
    _write(book, "ch1.ipynb", _nb([("code", "x = 1")], outputs=True, kernel="other"))
    nbtools.strip([book / "book" / "ch1.ipynb"])
    assert nbtools.check() == 0


def test_noexec_config_turns_execution_off():
    text = nbtools.noexec_config()
    assert 'execute_notebooks: "off"' in text
    assert "execute_notebooks: force" not in text
    assert "mystnb.glue" in text
