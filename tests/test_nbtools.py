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
            cell["outputs"] = (
                [{"output_type": "stream", "name": "stdout", "text": "x"}] if outputs else []
            )
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


# tools/captions.py: every figure cell carries a caption and a unique name, and shows only its figure
_cspec = importlib.util.spec_from_file_location("captions", ROOT / "tools" / "captions.py")
captions = importlib.util.module_from_spec(_cspec)
_cspec.loader.exec_module(captions)

_PLOT = (
    "fig, ax = plt.subplots()\nax.plot([0, 1], [1, 0])\nax.set(xlabel='x', ylabel='y')\nplt.show()"
)


def _fig_meta(nb: dict, cell: int, caption: str | None, name: str | None) -> dict:
    fig = {k: v for k, v in (("caption", caption), ("name", name)) if v is not None}
    nb["cells"][cell]["metadata"]["mystnb"] = {"figure": fig}
    return nb


@pytest.fixture
def captioned_book(tmp_path, monkeypatch):
    (tmp_path / "book").mkdir()
    monkeypatch.setattr(captions, "BOOK", tmp_path / "book")
    return tmp_path / "book"


def _check(book: Path, *names: str) -> tuple[int, str]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = captions.main(["--check", *(str(book / n) for n in names)])
    return rc, buf.getvalue()


def test_captions_flags_a_figure_without_caption_or_name(captioned_book):
    (captioned_book / "ch1.ipynb").write_text(
        json.dumps(_nb([("markdown", "## Check"), ("code", _PLOT)]))
    )
    rc, out = _check(captioned_book, "ch1.ipynb")
    assert rc == 1 and "ch1.ipynb: cell 1 draws a figure" in out and "without mystnb.figure" in out
    nb = _fig_meta(_nb([("markdown", "## Check"), ("code", _PLOT)]), 1, "  ", "fig-ch1-line")
    (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
    rc, out = _check(captioned_book, "ch1.ipynb")
    assert rc == 1 and "caption is '  '; expected a non-empty string" in out
    nb = _fig_meta(_nb([("markdown", "## Check"), ("code", _PLOT)]), 1, "A line.", None)
    (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
    rc, out = _check(captioned_book, "ch1.ipynb")
    assert rc == 1 and "mystnb.figure.name is None" in out
    nb = _fig_meta(_nb([("markdown", "## Check"), ("code", _PLOT)]), 1, "A line.", "Figure 1")
    (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
    rc, out = _check(captioned_book, "ch1.ipynb")
    assert rc == 1 and "name is 'Figure 1'; expected 'fig-<chapter>-<slug>'" in out


def test_captions_passes_a_captioned_named_figure(captioned_book):
    nb = _nb([("markdown", "## Check"), ("code", _PLOT), ("code", "x = 1\nprint(x)")])
    _fig_meta(nb, 1, "A falling line: y against x.", "fig-ch1-line")
    (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
    assert _check(captioned_book, "ch1.ipynb") == (0, "")
    # with no NB the whole book is checked
    (captioned_book / "ch2.ipynb").write_text(json.dumps(_nb([("code", "y = 2")])))
    assert _check(captioned_book) == (0, "")


def test_captions_flags_duplicate_names_across_the_book(captioned_book):
    for ch in ("ch1", "ch2"):
        nb = _fig_meta(_nb([("code", _PLOT)]), 0, "A line.", "fig-book-line")
        (captioned_book / f"{ch}.ipynb").write_text(json.dumps(nb))
    rc, out = _check(captioned_book, "ch1.ipynb")  # ch2 is not checked but shares the name
    assert rc == 1 and "figure name 'fig-book-line' is also defined at ch2.ipynb cell 0" in out
    (captioned_book / "ch2.ipynb").write_text(
        json.dumps(_nb([("markdown", "(fig-book-line)=\n## A section"), ("code", "x = 1")]))
    )
    rc, out = _check(captioned_book, "ch1.ipynb")
    assert rc == 1 and "also defined at ch2.ipynb cell 0" in out


def test_captions_finds_figures_drawn_through_helpers_and_ignores_closed_ones(captioned_book):
    helper = "def show_line(xs):\n    fig, ax = plt.subplots()\n    ax.plot(xs)\n    plt.show()"
    closed = "fig, ax = plt.subplots()\nax.plot([1])\nplt.close(fig)"
    nb = _nb(
        [("code", helper), ("code", "show_line([1, 2])"), ("code", closed), ("code", "opt.step()")]
    )
    (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
    rc, out = _check(captioned_book, "ch1.ipynb")
    assert rc == 1 and "cell 1 draws a figure (show_line)" in out
    assert "cell 0" not in out and "cell 2" not in out and "cell 3" not in out


def test_captions_requires_a_plotting_cell_to_show_only_its_figure(captioned_book):
    cases = {
        _PLOT + "\nprint('done')": "prints",
        _PLOT + "\nglue('n', 3)": "glue() displays its value",
        _PLOT.replace("\nplt.show()", ""): "ends with an expression whose value is displayed",
        _PLOT + "\nfig2, ax2 = plt.subplots()\nax2.plot([1])\nplt.show()": "more than one figure",
    }
    for src, why in cases.items():
        nb = _fig_meta(_nb([("code", src)]), 0, "A line.", "fig-ch1-line")
        (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
        rc, out = _check(captioned_book, "ch1.ipynb")
        assert rc == 1 and why in out, (src, out)
    quiet = _PLOT.replace("plt.show()", "glue('n', 3, display=False)\nplt.show()")
    nb = _fig_meta(_nb([("code", quiet)]), 0, "A line.", "fig-ch1-line")
    (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
    assert _check(captioned_book, "ch1.ipynb") == (0, "")


def test_captions_glued_figure_needs_a_captioned_paste(captioned_book):
    glued = (
        "fig, ax = plt.subplots()\nax.plot([1])\nglue('fig_a', fig, display=False)\nplt.close(fig)"
    )
    nb = _nb([("code", glued), ("markdown", "```{glue:figure} fig_a\n:name: fig-ch1-a\n```")])
    (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
    rc, out = _check(captioned_book, "ch1.ipynb")
    assert rc == 1 and "{glue:figure} fig_a has no caption" in out
    nb["cells"][1]["source"] = "```{glue:figure} fig_a\n:name: fig-ch1-a\nA line.\n```"
    (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
    assert _check(captioned_book, "ch1.ipynb") == (0, "")
    nb["cells"][1]["source"] = "No paste."
    (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
    rc, out = _check(captioned_book, "ch1.ipynb")
    assert rc == 1 and "glues figure 'fig_a' but no {glue:figure} fig_a directive pastes it" in out


def test_captions_metadata_on_a_cell_without_figure_is_stale(captioned_book):
    nb = _fig_meta(_nb([("code", "x = 1")]), 0, "A line.", "fig-ch1-line")
    (captioned_book / "ch1.ipynb").write_text(json.dumps(nb))
    rc, out = _check(captioned_book, "ch1.ipynb")
    assert rc == 1 and "carries mystnb.figure but draws no figure" in out
