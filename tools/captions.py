#!/usr/bin/env python3
"""Check that every figure of the book carries a caption and a name (myst-nb cell metadata).

Usage (from the repository root; standard library only)::

    python tools/captions.py [NB ...]            # list every figure cell with its name and caption
    python tools/captions.py --check [NB ...]    # exit 1 listing every figure cell that breaks a rule

With no NB, every chapter in book/ (the training chapter included). Names are compared across
the whole book (every notebook and page in book/, and the NBs given) whatever NBs are checked.

A figure is captioned through the cell's metadata, which myst-nb (1.x) reads when it renders the
cell: each display output of the cell becomes a figure with that caption and name::

    {"mystnb": {"figure": {"caption": "What is plotted, the axes, what to look for.",
                           "name": "fig-<chapter>-<slug>"}}}

A code cell *draws a figure* when, outside any function or class it defines, it calls pyplot's
figure makers or plotting functions (`plt.subplots`, `plt.figure`, `plt.plot`, ...), a plotting
method of any object (`ax.plot`, `df.plot`, `ax.imshow`, ...), seaborn, or a function defined in
the notebook that does one of these; and does not close the figure without showing it. A cell
committed with outputs (the training chapter) also draws a figure when an output is an image.

Rules for a figure cell (--check):
  caption  metadata mystnb.figure.caption is a non-empty string
  name     mystnb.figure.name is given, and reads `fig-<chapter>-<slug>` (lowercase, digits, -)
  unique   no other figure, `(target)=` or `:name:` in the book uses the name
  alone    the cell displays only its figure (myst-nb wraps *every* display output of the cell in
           the captioned figure): one figure per cell; no print(), display() or glue() that
           displays; the last statement is not a bare expression whose value would be shown
           (end with plt.show()). glue(..., display=False) is fine.
A code cell that carries mystnb.figure but draws no figure is listed too (a stale caption).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path.cwd()
BOOK = ROOT / "book"
NAME = re.compile(r"^fig-[a-z0-9]+(?:-[a-z0-9]+)+$")
# pyplot calls that make or draw on a figure (plt.show draws the current one)
PLT_DRAW = {
    "subplots", "figure", "subplot", "subplot_mosaic", "subplot2grid", "axes", "gcf", "gca",
    "plot", "scatter", "bar", "barh", "hist", "hist2d", "imshow", "matshow", "pcolormesh",
    "pcolor", "contour", "contourf", "errorbar", "fill_between", "fill_betweenx", "pie",
    "boxplot", "violinplot", "hexbin", "stackplot", "semilogx", "semilogy", "loglog", "show",
    "stairs", "quiver", "streamplot", "spy", "eventplot", "ecdf",
}  # fmt: skip
# methods that draw whatever object they are called on (Axes, DataFrame, Series)
METHOD_DRAW = {
    "plot", "scatter", "bar", "barh", "hist", "hist2d", "imshow", "matshow", "pcolormesh",
    "contour", "contourf", "errorbar", "fill_between", "fill_betweenx", "boxplot",
    "violinplot", "hexbin", "stackplot", "semilogx", "semilogy", "loglog", "heatmap",
    "subplots", "add_subplot", "stairs", "ecdf",
}  # fmt: skip
SNS_QUIET = {"set_theme", "set", "set_style", "set_context", "set_palette", "color_palette"}
FIGURE_MAKERS = {"subplots", "figure", "subplot_mosaic"}
GLUE_FIGURE = re.compile(
    r"^(`{3,}|:{3,})\{glue:figure\}[ \t]+(\S+)[ \t]*\n(.*?)^\1[ \t]*$", re.M | re.S
)
TARGET_MD = re.compile(r"^\(([^)\s]+)\)=\s*$|^\s*:name:\s*(\S+)\s*$", re.M)


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _parse(src: str) -> ast.Module | None:
    """The cell as Python, IPython magics and shell lines blanked; None if it does not parse."""
    lines = ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in src.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _top_level(tree: ast.AST):
    """Every node of the cell that runs when the cell runs: not inside a def, lambda or class."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _call_name(call: ast.Call) -> tuple[str | None, str | None]:
    """(object, attribute) for `obj.attr(...)`, (None, name) for `name(...)`."""
    f = call.func
    if isinstance(f, ast.Attribute):
        base = f.value.id if isinstance(f.value, ast.Name) else ""
        return base, f.attr
    if isinstance(f, ast.Name):
        return None, f.id
    return "", None


def _draw_calls(nodes, drawing_funcs: set[str]) -> list[str]:
    """The drawing calls among nodes, as `obj.attr` / `name` strings."""
    out = []
    for node in nodes:
        if not isinstance(node, ast.Call):
            continue
        base, attr = _call_name(node)
        if attr is None:
            continue
        if base == "plt" and attr in PLT_DRAW:
            out.append(f"plt.{attr}")
        elif base in ("sns", "seaborn") and attr not in SNS_QUIET:
            out.append(f"{base}.{attr}")
        elif base not in (None, "plt") and attr in METHOD_DRAW:
            out.append(f"{base or '...'}.{attr}")
        elif base is None and attr in drawing_funcs:
            out.append(attr)
    return out


def _makes_figure(call: ast.Call, figure_funcs: set[str]) -> bool:
    base, attr = _call_name(call)
    return (base == "plt" and attr in FIGURE_MAKERS) or (base is None and attr in figure_funcs)


def drawing_functions(trees: list[ast.Module]) -> tuple[set[str], set[str]]:
    """Names of the functions defined in the notebook that draw, and of those that make a figure
    of their own (directly or through another such function)."""
    bodies: dict[str, list[ast.AST]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                bodies[node.name] = [n for stmt in node.body for n in ast.walk(stmt)]
    draws: set[str] = set()
    makes: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, nodes in bodies.items():
            if name not in draws and _draw_calls(nodes, draws):
                draws.add(name)
                changed = True
            if name not in makes and any(
                isinstance(n, ast.Call) and _makes_figure(n, makes) for n in nodes
            ):
                makes.add(name)
                changed = True
    return draws, makes


def _closes_without_show(nodes: list[ast.AST]) -> bool:
    names = [_call_name(n) for n in nodes if isinstance(n, ast.Call)]
    closes = any(b == "plt" and a == "close" for b, a in names)
    shows = any(a == "show" for b, a in names) or any(
        b is None and a == "display" for b, a in names
    )
    return closes and not shows


def _extra_output(
    tree: ast.Module, src: str, drawing_funcs: set[str], figure_funcs: set[str]
) -> list[str]:
    """Why the cell would display more than its figure (empty if it displays only the figure)."""
    why = []
    nodes = list(_top_level(tree))
    calls = [n for n in nodes if isinstance(n, ast.Call)]
    makers = sum(1 for c in calls if _makes_figure(c, figure_funcs))
    in_loop = any(
        isinstance(n, (ast.For, ast.While, ast.ListComp, ast.GeneratorExp))
        and any(
            isinstance(c, ast.Call)
            and (_makes_figure(c, figure_funcs) or _call_name(c)[1] == "show")
            for c in _top_level(n)
        )
        for n in nodes
    )
    if makers > 1 or in_loop:
        why.append("draws more than one figure (one figure per cell)")
    for c in calls:
        base, attr = _call_name(c)
        if base is None and attr == "print":
            why.append("prints (print() output sits outside the figure; move it to another cell)")
        elif base is None and attr == "display":
            why.append("calls display() (every display output is wrapped in the figure)")
        elif base is None and attr == "glue":
            shown = next((k.value for k in c.keywords if k.arg == "display"), None)
            quiet = isinstance(shown, ast.Constant) and shown.value is False
            if not quiet and len(c.args) < 3:
                why.append("glue() displays its value (pass display=False or glue in another cell)")
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr) and not src.rstrip().endswith(";"):
        val = last.value
        ok = isinstance(val, ast.Call) and (
            _call_name(val)[1] in ("show", "display", "glue", "print")
            or (_call_name(val)[0] is None and _call_name(val)[1] in drawing_funcs)
        )
        if not (ok or (isinstance(val, ast.Constant) and val.value is None)):
            why.append("ends with an expression whose value is displayed (end with plt.show())")
    return sorted(set(why), key=why.index)


def _has_image_output(cell: dict) -> bool:
    return any(
        any(k.startswith("image/") for k in o.get("data", {}))
        for o in cell.get("outputs", [])
        if o.get("output_type") in ("display_data", "execute_result")
    )


def figure_cells(nb: dict) -> list[dict]:
    """One record per code cell that draws a figure or carries mystnb.figure metadata."""
    code = [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    trees = {i: _parse(_src(c)) for i, c in code}
    funcs, makers = drawing_functions([t for t in trees.values() if t is not None])
    out, glued = [], []
    for i, cell in code:
        src, tree = _src(cell), trees[i]
        if tree is None:
            draws = [] if not re.search(r"\bplt\.(subplots|figure|show)\(", src) else ["plt.*"]
            extra = []
        else:
            nodes = list(_top_level(tree))
            draws = sorted(set(_draw_calls(nodes, funcs)))
            if draws and _closes_without_show(nodes):
                glued += [(i, key) for key in _glued_figures(nodes, makers)]
                draws = []
            extra = _extra_output(tree, src, funcs, makers) if draws else []
        if not draws and _has_image_output(cell):
            draws = ["an image output"]
        fig = cell.get("metadata", {}).get("mystnb", {}).get("figure")
        if draws or fig is not None:
            out.append({"cell": i, "draws": draws, "figure": fig, "extra": extra})
    return out, glued


def _glued_figures(nodes: list[ast.AST], figure_funcs: set[str]) -> list[str]:
    """Keys of `glue(key, fig, ...)` calls whose value is a figure the cell made."""
    figs = set()
    for n in nodes:
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call):
            if _makes_figure(n.value, figure_funcs):
                for t in n.targets:
                    first = t.elts[0] if isinstance(t, ast.Tuple) and t.elts else t
                    if isinstance(first, ast.Name):
                        figs.add(first.id)
    keys = []
    for n in nodes:
        if isinstance(n, ast.Call) and _call_name(n) == (None, "glue") and len(n.args) >= 2:
            key, val = n.args[0], n.args[1]
            is_fig = isinstance(val, ast.Name) and (val.id in figs or val.id.startswith("fig"))
            if is_fig and isinstance(key, ast.Constant) and isinstance(key.value, str):
                keys.append(key.value)
    return keys


def glue_figures(nb: dict) -> dict[str, list[tuple[int, str, str]]]:
    """key -> [(markdown cell, caption, name)] for every `{glue:figure}` directive."""
    out: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for m in GLUE_FIGURE.finditer(_src(cell)):
            body = m.group(3).splitlines()
            opts = [ln.strip() for ln in body if re.match(r"^\s*:\w[\w-]*:", ln)]
            caption = "\n".join(ln for ln in body if not re.match(r"^\s*:\w[\w-]*:", ln)).strip()
            name = next(
                (o.split(None, 1)[1] for o in opts if o.startswith(":name:") and " " in o), ""
            )
            out[m.group(2).split(":")[-1]].append((i, caption, name.strip()))
    return out


def book_targets(paths: list[Path]) -> dict[str, list[str]]:
    """Every label the book defines: figure names, `(target)=` and `:name:` in markdown."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        if path.suffix == ".md":
            for m in TARGET_MD.finditer(path.read_text(encoding="utf-8")):
                where[(m.group(1) or m.group(2)).lower()].append(path.name)
            continue
        nb = json.loads(path.read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "markdown":
                for m in TARGET_MD.finditer(_src(cell)):
                    where[(m.group(1) or m.group(2)).lower()].append(f"{path.name} cell {i}")
            elif cell["cell_type"] == "code":
                fig = cell.get("metadata", {}).get("mystnb", {}).get("figure")
                if isinstance(fig, dict) and isinstance(fig.get("name"), str) and fig["name"]:
                    where[fig["name"].lower()].append(f"{path.name} cell {i}")
    return where


def _metadata_problems(head: str, fig: dict, targets: dict[str, list[str]], here: str) -> list[str]:
    """What is wrong with one cell's mystnb.figure: caption, name, and the name's uniqueness."""
    out = []
    cap, name = fig.get("caption"), fig.get("name")
    if not isinstance(cap, str) or not cap.strip():
        out.append(f"{head}: mystnb.figure.caption is {cap!r}; expected a non-empty string")
    if not isinstance(name, str) or not NAME.match(name):
        out.append(f"{head}: mystnb.figure.name is {name!r}; expected 'fig-<chapter>-<slug>'")
    if isinstance(name, str) and name:
        others = [w for w in targets.get(name.lower(), []) if w != here]
        if others:
            out.append(f"{head}: figure name {name!r} is also defined at {', '.join(others)}")
    return out


def problems(path: Path, nb: dict, targets: dict[str, list[str]]) -> list[str]:
    """One line per broken rule in one notebook (empty when its figures are all in order)."""
    out = []
    records, glued = figure_cells(nb)
    pasted = glue_figures(nb)
    for cell, key in glued:
        head = f"{path.name}: cell {cell}"
        if not pasted.get(key):
            out.append(
                f"{head} glues figure {key!r} but no {{glue:figure}} {key} directive pastes it"
            )
        for md, caption, _ in pasted.get(key, []):
            if not caption:
                out.append(f"{path.name}: cell {md}: {{glue:figure}} {key} has no caption")
    for rec in records:
        head = f"{path.name}: cell {rec['cell']}"
        fig = rec["figure"]
        if not rec["draws"]:
            out.append(f"{head} carries mystnb.figure but draws no figure (remove the metadata)")
            continue
        if isinstance(fig, dict):
            out += _metadata_problems(head, fig, targets, f"{path.name} cell {rec['cell']}")
        else:
            out.append(f"{head} draws a figure ({rec['draws'][0]}) without mystnb.figure metadata")
        for why in rec["extra"]:
            out.append(f"{head} {why}")
    return out


def default_paths() -> list[Path]:
    return sorted(BOOK.glob("*.ipynb"))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    paths = args.notebooks or default_paths()
    every = {p.resolve(): p for p in [*default_paths(), *sorted(BOOK.glob("*.md")), *paths]}
    targets = book_targets(list(every.values()))
    bad: list[str] = []
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        if not args.check:
            print(f"== {path.name}")
            records, glued = figure_cells(nb)
            pasted = glue_figures(nb)
            for cell, key in glued:
                for _, caption, name in pasted.get(key, [("-", "-", "-")]):
                    print(f"  cell {cell:3d} glue:figure {key} {name or '-'!s:28s} {caption!s:.70}")
            for rec in records:
                fig = rec["figure"] if isinstance(rec["figure"], dict) else {}
                print(
                    f"  cell {rec['cell']:3d} {fig.get('name', '-')!s:40s} {fig.get('caption', '-')!s:.70}"
                )
        bad += problems(path, nb, targets)
    if args.check:
        for line in bad:
            print(line)
        if bad:
            print(
                f"{len(bad)} figure problem(s): every figure cell carries "
                '{"mystnb": {"figure": {"caption": ..., "name": "fig-<chapter>-<slug>"}}} '
                "and displays only its figure (tools/captions.py)",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
