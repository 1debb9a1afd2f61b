"""Markdown tables of dict rows, for notebooks (IPython.display.Markdown) and reports."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence


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
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
