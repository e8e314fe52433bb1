#!/usr/bin/env python3
"""Tag the setup and plotting cells of the book's chapters `hide-input` (Jupyter Book 1.x).

Usage (from the repository root; standard library only)::

    python tools/hide_input.py [NB ...]            # dry run: list what would be tagged, and why
    python tools/hide_input.py --write [NB ...]    # add the tags (idempotent)
    python tools/hide_input.py --check [NB ...]    # exit 1 if a setup/plot cell lacks the tag
    options: --tag remove-input   (instead of hide-input)
             --include-mixed      (also tag cells that compute *and* plot; default: only listed)

With no NB, every chapter in book/ but the training one (which keeps its outputs and is tagged by
hand). Files are written in the format of `tools/nbtools.py strip` (indent 1, UTF-8, final
newline), so `nbtools.py check` stays clean and the diff is the tags only.

Classes of code cell (the first that applies):
  ships   `#| export` / `#| exporti` cell: the code that ships -- never hidden
  setup   a code cell before the chapter's first H2 heading (parameters, imports, default_exp)
  check   contains `assert`: a check the reader must see -- never hidden
  plot    draws a figure (plt / fig / ax calls) and at least PLOT_SHARE of its statement lines
          are drawing lines -- hidden
  mixed   draws a figure but mostly computes -- listed; split the figure into its own cell, or
          pass --include-mixed
  tail    after the "## Summary" heading and only glue()/print() -- hidden (chapter timing)
  other   left alone
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path.cwd()
BOOK = ROOT / "book"
PLOT_SHARE = 0.5
EXPORT = re.compile(r"^#\|\s*(export|exporti)\b", re.M)
DRAWS = re.compile(r"\b(plt\.|fig\b|fig\.|figs?\b|axes\b|ax\b|ax_\w+\b|ax\.|axs?\[|\.subplots\()")
DRAW_LINE = re.compile(
    r"(\bplt\.|\bfig\w*\b|\bax\w*\b|\.set_\w+\(|\.legend\(|\.colorbar\(|\.imshow\(|\.plot\(|"
    r"\.bar[h]?\(|\.scatter\(|\.hist\(|\.fill_between\(|\.errorbar\(|\.text\(|\.annotate\(|"
    r"\.axhline\(|\.axvline\(|\.tight_layout\(|\.savefig\(|styles?\[|colors?\[|\bcmap\b|"
    r"\blabel=|\bmarker=|\bcolor=)"
)
TAIL_LINE = re.compile(r"^\s*(glue\(|print\(|display\(|#|$)")


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _statement_lines(src: str) -> list[str]:
    return [ln for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def classify(nb: dict) -> list[tuple[int, str, str]]:
    """(cell index, class, reason) for every code cell."""
    out = []
    seen_h2 = False
    in_summary = False
    for i, cell in enumerate(nb["cells"]):
        src = _src(cell)
        if cell["cell_type"] == "markdown":
            for ln in src.splitlines():
                if ln.startswith("## "):
                    seen_h2 = True
                    in_summary = ln[3:].strip().lower().startswith("summary")
            continue
        if cell["cell_type"] != "code":
            continue
        lines = _statement_lines(src)
        if EXPORT.search(src):
            out.append((i, "ships", "exported code"))
        elif not seen_h2:
            out.append((i, "setup", "before the first H2 heading"))
        elif re.search(r"^\s*assert\b", src, re.M):
            out.append((i, "check", "has an assert" + (" (also draws)" if DRAWS.search(src) else "")))
        elif DRAWS.search(src):
            share = sum(bool(DRAW_LINE.search(ln)) for ln in lines) / max(len(lines), 1)
            kind = "plot" if share >= PLOT_SHARE else "mixed"
            out.append((i, kind, f"{share:.0%} of {len(lines)} lines draw"))
        elif in_summary and lines and all(TAIL_LINE.match(ln) for ln in lines):
            out.append((i, "tail", "glue/print after the Summary heading"))
        else:
            out.append((i, "other", ""))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--tag", default="hide-input", choices=("hide-input", "remove-input"))
    ap.add_argument("--include-mixed", action="store_true")
    args = ap.parse_args(argv)
    hide = {"setup", "plot", "tail"} | ({"mixed"} if args.include_mixed else set())
    paths = args.notebooks or [
        p for p in sorted(BOOK.glob("*.ipynb")) if not p.name.startswith("training")
    ]
    missing = 0
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        changed = False
        print(f"== {path.name}")
        for i, kind, why in classify(nb):
            cell = nb["cells"][i]
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            first = next((ln for ln in _src(cell).splitlines() if ln.strip()), "")[:60]
            has = args.tag in tags
            if kind in hide and not has:
                missing += 1
                if args.write:
                    tags.append(args.tag)
                    changed = True
                    has = True
            if not tags:
                del cell["metadata"]["tags"]
            if kind != "other":
                mark = "tagged " if has else ("TAG    " if kind in hide else "       ")
                print(f"  {mark} cell {i:3d} {kind:6s} {why:32s} {first!r}")
        if changed:
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.check and missing and not args.write:
        print(f"{missing} setup/plot cells lack {args.tag!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
