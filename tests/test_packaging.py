"""The package as a user installs it: the wheel, its metadata, and the files around it.

The wheel is built from a copy of the sources in a temporary folder, so the test leaves no build
output in the working tree.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

import ple

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# SPDX `license = "..."` and `license-files` need setuptools 77 or newer.
MIN_SETUPTOOLS = (77,)

# import name -> distribution name, for the package's own dependencies
IMPORT_NAMES = {"sklearn": "scikit-learn"}


def _setuptools_version() -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "ple", src / "ple", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
    st = _setuptools_version()
    if st is not None and st >= MIN_SETUPTOOLS:
        cmd.insert(5, "--no-build-isolation")  # the environment's own setuptools is new enough
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"pip wheel failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}"
    )
    wheels = list(out.glob("ple-*.whl"))
    assert len(wheels) == 1, f"expected one ple wheel in {out}; got {wheels}"
    return wheels[0]


def _metadata(whl: Path) -> email.message.Message:
    with zipfile.ZipFile(whl) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(name).decode("utf-8"))


def test_wheel_ships_py_typed_and_every_module(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "ple/py.typed" in names, "the wheel lacks ple/py.typed (pyproject package-data)"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ple").rglob("*.py")}
    missing = modules - names
    assert not missing, f"the wheel lacks modules: {sorted(missing)}"
    assert not [n for n in names if n.startswith(("tests/", "book/", "tools/"))]


def test_wheel_license_metadata(wheel):
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "MIT", (
        f"License-Expression is {meta['License-Expression']!r}"
    )
    assert "LICENSE" in (meta.get_all("License-File") or []), meta.get_all("License-File")
    with zipfile.ZipFile(wheel) as zf:
        lic = [n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert lic, "the wheel does not carry the LICENSE file"
        assert zf.read(lic[0]) == (ROOT / "LICENSE").read_bytes()


def test_wheel_version_is_ple_version(wheel):
    meta = _metadata(wheel)
    assert meta["Version"] == ple.__version__
    assert wheel.name.startswith(f"ple-{ple.__version__}-")
    # one place for the version: pyproject does not repeat it
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]


def test_wheel_requires_exactly_the_core_dependencies(wheel):
    core = [r for r in (_metadata(wheel).get_all("Requires-Dist") or []) if "extra ==" not in r]
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in core}
    declared = {
        re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower()
        for r in PYPROJECT["project"]["dependencies"]
    }
    assert names == declared
    assert "matplotlib" not in names, "matplotlib is for the book's figures: the book/test extras"


def _guarded(node: ast.Try) -> bool:
    """A `try:` whose handlers catch ImportError: an optional import with a fallback."""
    names = set()
    for h in node.handlers:
        for t in h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]:
            if isinstance(t, ast.Name):
                names.add(t.id)
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _imported_top_level(path: Path) -> set[str]:
    """Top-level names of every import in the module, at any depth (a lazy import inside a
    function runs as surely as one at the top), except optional imports guarded by
    `except ImportError`."""
    found = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try) and _guarded(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def test_ple_imports_only_its_declared_dependencies():
    declared = {
        re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower()
        for r in PYPROJECT["project"]["dependencies"]
    }
    allowed = set(sys.stdlib_module_names) | {"ple"}
    offenders = {}
    for path in sorted((ROOT / "ple").rglob("*.py")):
        for mod in _imported_top_level(path) - allowed:
            if IMPORT_NAMES.get(mod, mod).lower() not in declared:
                offenders.setdefault(mod, []).append(path.relative_to(ROOT).as_posix())
    assert not offenders, (
        f"ple imports packages that pyproject's [project] dependencies do not declare: {offenders}"
    )


def test_citation_cff_is_complete_and_names_the_version():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):
        assert cff.get(key), f"CITATION.cff lacks the required key {key!r}"
    assert str(cff["version"]) == ple.__version__
    assert cff["license"] == "MIT"


def test_changelog_has_a_section_for_the_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{ple.__version__}]" in text, f"CHANGELOG.md has no section for {ple.__version__}"
