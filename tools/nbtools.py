"""Notebook tooling for the book: export `ple` from the chapters, and keep chapters clean.

Usage (from the repository root)::

    python tools/nbtools.py export          # regenerate ple/ from the book's chapters
    python tools/nbtools.py check           # chapters: no outputs, kernelspec python3, one default_exp
    python tools/nbtools.py strip [NB ...]  # remove outputs / execution counts, set kernelspec python3
    python tools/nbtools.py noexec-config   # print _config.yml with execution off (reference check)

Directives (first lines of a code cell, nbdev style):

* ``#| default_exp data.world`` -- once per notebook: the module its ``#| export`` cells go to
  (``ple/data/world.py``); the cell holding it is not exported.
* ``#| export`` -- the cell (minus directive lines) is appended to the default module.
* ``#| export gates`` -- the cell goes to ``ple/gates.py`` instead.
* ``#| exporti`` (or ``#| exporti gates``) -- exported like ``#| export``, but its names stay out
  of the module's ``__all__``: internal helpers that other modules may import, a user should not.

A module is written by exactly one notebook; two notebooks exporting to one module is an error.
The training chapter (any notebook whose name starts with ``training``) keeps its outputs.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
PKG = ROOT / "ple"
DIRECTIVE = re.compile(r"^#\|\s*(\w+)\s*(.*?)\s*$")
KEEPS_OUTPUTS = ("training",)


def _cells(nb_path: Path) -> list[dict]:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    return nb["cells"]


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _split_directives(src: str) -> tuple[list[tuple[str, str]], str]:
    """Leading ``#| name args`` lines of a cell, and the rest of its source."""
    lines = src.splitlines()
    directives = []
    i = 0
    while i < len(lines):
        m = DIRECTIVE.match(lines[i])
        if m:
            directives.append((m.group(1), m.group(2)))
            i += 1
        elif not lines[i].strip() and directives:
            i += 1
        else:
            break
    return directives, "\n".join(lines[i:]).strip("\n")


def _public_names(code: str) -> list[str]:
    names: list[str] = []
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    names.append(t.id)
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def collect() -> dict[str, tuple[Path, list[tuple[str, bool]]]]:
    """Map module name -> (notebook, exported code blocks as (code, public))."""
    modules: dict[str, tuple[Path, list[tuple[str, bool]]]] = {}
    for nb_path in sorted(BOOK.glob("*.ipynb")):
        default = None
        blocks: dict[str, list[tuple[str, bool]]] = {}
        for cell in _cells(nb_path):
            if cell.get("cell_type") != "code":
                continue
            directives, body = _split_directives(_source(cell))
            for name, arg in directives:
                if name == "default_exp":
                    if default is not None:
                        raise SystemExit(f"{nb_path.name}: more than one '#| default_exp'")
                    default = arg
                elif name in ("export", "exporti"):
                    target = arg or default
                    if target is None:
                        raise SystemExit(
                            f"{nb_path.name}: '#| {name}' before '#| default_exp' names a module"
                        )
                    blocks.setdefault(target, []).append((body, name == "export"))
        for mod, code in blocks.items():
            if mod in modules:
                raise SystemExit(
                    f"module ple.{mod} is exported by both {modules[mod][0].name} and {nb_path.name}"
                )
            modules[mod] = (nb_path, code)
    return modules


def render(mod: str, nb_path: Path, blocks: list[tuple[str, bool]]) -> str:
    body = "\n\n\n".join(code for code, _ in blocks)
    try:
        ast.parse(body)
        public = "\n\n\n".join(code for code, is_public in blocks if is_public)
        names = _public_names(public)
    except SyntaxError as e:
        raise SystemExit(f"{nb_path.name} -> ple.{mod}: exported code does not parse: {e}") from e
    header = (
        f'"""ple.{mod} -- generated from book/{nb_path.name}.\n\n'
        f"Do not edit: change the chapter and run `make export`.\n"
        f'"""\n\n'
    )
    all_ = "__all__ = [" + ", ".join(repr(n) for n in names) + "]\n\n"
    # `from __future__` must come first in a module.
    future = [ln for ln in body.splitlines() if ln.startswith("from __future__")]
    body = "\n".join(ln for ln in body.splitlines() if not ln.startswith("from __future__"))
    head = header + ("\n".join(future) + "\n\n" if future else "")
    return head + all_ + body.strip("\n") + "\n"


def export() -> list[Path]:
    modules = collect()
    written: list[Path] = []
    expected = set()
    for mod, (nb_path, blocks) in sorted(modules.items()):
        parts = mod.split(".")
        path = PKG.joinpath(*parts[:-1], parts[-1] + ".py")
        expected.add(path)
        # sub-packages get an __init__ naming them; never overwrite a hand-written one
        for depth in range(1, len(parts)):
            init = PKG.joinpath(*parts[:depth], "__init__.py")
            init.parent.mkdir(parents=True, exist_ok=True)
            if not init.exists():
                init.write_text(f'"""ple.{".".join(parts[:depth])}."""\n', encoding="utf-8")
        text = render(mod, nb_path, blocks)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    # remove generated modules whose notebook no longer exports them
    for path in PKG.rglob("*.py"):
        if path.name == "__init__.py" or path in expected:
            continue
        if path.read_text(encoding="utf-8").startswith('"""ple.') and "generated from book/" in (
            path.read_text(encoding="utf-8").splitlines()[0]
        ):
            path.unlink()
    return written


def strip(paths: list[Path]) -> None:
    for p in paths:
        nb = json.loads(p.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if cell.get("cell_type") == "code":
                cell["outputs"] = []
                cell["execution_count"] = None
            cell.get("metadata", {}).pop("execution", None)
        meta = nb.setdefault("metadata", {})
        meta.pop("jupytext", None)
        meta.pop("widgets", None)
        meta["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        meta.setdefault("language_info", {"name": "python"})
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def check() -> int:
    problems = []
    for p in sorted(BOOK.glob("*.ipynb")):
        nb = json.loads(p.read_text(encoding="utf-8"))
        ks = nb.get("metadata", {}).get("kernelspec", {}).get("name")
        if ks != "python3":
            problems.append(f"{p.name}: kernelspec name is {ks!r}; expected 'python3'")
        if p.name.startswith(KEEPS_OUTPUTS):
            continue
        for i, cell in enumerate(nb["cells"]):
            if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count")):
                problems.append(
                    f"{p.name}: cell {i} is committed with outputs "
                    "(run `python tools/nbtools.py strip book/*.ipynb`)"
                )
                break
    for msg in problems:
        print(msg, file=sys.stderr)
    return 1 if problems else 0


def noexec_config() -> str:
    """`_config.yml` with execution off, for the build that checks references, citations and toc.

    Glue roles have no outputs to read from unexecuted chapters, so only their warnings are
    silenced; every other warning still fails the build.
    """
    text = (ROOT / "_config.yml").read_text(encoding="utf-8")
    text, n = re.subn(r"execute_notebooks:\s*\S+", 'execute_notebooks: "off"', text)
    if n != 1:
        raise SystemExit("_config.yml: expected exactly one 'execute_notebooks:' setting")
    text = text.replace("  config:\n", '  config:\n    suppress_warnings: ["mystnb.glue"]\n', 1)
    return text


def main(argv: list[str]) -> int:
    if argv and argv[0] == "noexec-config":
        print(noexec_config(), end="")
        return 0
    if not argv or argv[0] not in {"export", "check", "strip"}:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "export":
        for path in export():
            print(path.relative_to(ROOT))
        return 0
    if argv[0] == "check":
        return check()
    paths = [Path(a) for a in argv[1:]] or [
        p for p in sorted(BOOK.glob("*.ipynb")) if not p.name.startswith(KEEPS_OUTPUTS)
    ]
    strip(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
