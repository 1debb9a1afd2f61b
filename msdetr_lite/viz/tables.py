"""Markdown tables of dict rows, for notebooks (IPython.display.Markdown) and reports."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence


def escape_cell(value) -> str:
    """Text that stays inside one markdown table cell: pipes escaped (an unescaped `|` splits
    the cell and the whole table renders as raw text), line breaks flattened."""
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table_renders(markdown: str) -> bool:
    """Whether every table in `markdown` has the same number of cells in each of its rows as in
    its header (what a GitHub-flavoured renderer needs to draw it instead of raw pipes)."""
    import re

    split = re.compile(r"(?<!\\)\|")
    block: list[int] = []
    for line in markdown.splitlines() + [""]:
        line = line.strip()
        if line.startswith("|") and line.endswith("|") and len(line) > 1:
            block.append(len(split.split(line[1:-1])))
        else:
            if block and len(set(block)) != 1:
                return False
            block = []
    return True


def markdown_table(rows: Sequence[Mapping], columns: Optional[Sequence[str]] = None, floatfmt: str = ".3g") -> str:
    """A GitHub-flavoured markdown table of dict rows (display with IPython.display.Markdown)."""
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return "-" if math.isnan(v) else format(v, floatfmt)
        return escape_cell(v)

    lines = ["| " + " | ".join(escape_cell(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
