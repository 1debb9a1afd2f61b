"""The suite's colours, defined once: every figure of the notebooks, widgets and reports uses them.

    GT  green        o2o (one-to-one, Hungarian) blue        o2m (one-to-many, top-K) orange

When trained models are compared, each supervision scheme has one colour and line style
(`SCHEME_COLORS`, `SCHEME_STYLES`): the o2o baseline blue and dashed (as in the paper's
Fig. 2), MS-DETR red and solid. Decoder layers shade from light to dark (`layer_color`),
deformable-attention feature levels from yellow (fine) to purple (coarse).
"""
from __future__ import annotations

import re
from typing import Optional

from matplotlib import colormaps

GT_COLOR = "#2ca02c"          # green
O2O_COLOR = "#1f77b4"         # blue
O2M_COLOR = "#ff7f0e"         # orange
ENC_COLOR = "#7f7f7f"         # grey: two-stage encoder proposals
REF_COLOR = "#e377c2"         # pink: reference boxes / points (deformable attention)
BRANCH_COLORS = {"gt": GT_COLOR, "o2o": O2O_COLOR, "o2m": O2M_COLOR, "enc": ENC_COLOR}

SCHEMES = ("o2o", "ms", "hybrid", "group")
SCHEME_COLORS = {"o2o": O2O_COLOR, "ms": "#d62728", "hybrid": "#9467bd", "group": "#8c564b"}
SCHEME_STYLES = {"o2o": "--", "ms": "-", "hybrid": "-.", "group": ":"}
SCHEME_LABELS = {"o2o": "o2o baseline (Deformable-DETR++)", "ms": "MS-DETR (o2o + o2m)",
                 "hybrid": "H-DETR (hybrid queries)", "group": "Group-DETR (query groups)"}
# feature levels of the deformable attention, fine (stride 8) to coarse (stride 64)
LEVEL_COLORS = ("#fde725", "#35b779", "#31688e", "#440154")
LEVEL_STRIDES = (8, 16, 32, 64)
# bars of a grouped bar chart (timings): neutral, not the branch colours
BAR_COLORS = ("#4c72b0", "#dd8452", "#55a868")


def scheme_of(name: str) -> Optional[str]:
    """The supervision scheme a model name stands for: the name itself ("ms"), or a trailing
    "(scheme)" as in "MS-DETR (ms)"; None for any other name."""
    m = re.search(r"\((\w+)\)\s*$", str(name))
    key = name if name in SCHEMES else m.group(1) if m else None
    return key if key in SCHEMES else None


def scheme_color(name: str, scheme: Optional[str] = None):
    """Colour of a model in comparisons: that of `scheme` (e.g. a run's model.supervision) or of
    the scheme its name stands for (`scheme_of`), else a stable tab10 colour of the name."""
    key = scheme if scheme in SCHEME_COLORS else scheme_of(name)
    if key is not None:
        return SCHEME_COLORS[key]
    return colormaps["tab10"](sum(map(ord, str(name))) % 10)


def scheme_style(name: str, scheme: Optional[str] = None) -> str:
    """Line style of a model (see `scheme_color`): the o2o baseline dashed, MS-DETR solid."""
    key = scheme if scheme in SCHEME_STYLES else scheme_of(name)
    return SCHEME_STYLES.get(key, "-")


def scheme_label(name: str) -> str:
    return SCHEME_LABELS.get(name, str(name))


def object_color(index: int):
    """Colour of ground-truth object `index` when each object gets its own (duplicates drawn by
    the object they hit): tab10 without its blue, orange and green (o2o, o2m and GT here)."""
    palette = colormaps["tab10"].colors
    return palette[(3, 4, 5, 6, 8, 9, 7)[index % 7]]


def layer_color(layer: int, n_layers: int):
    """Colour of decoder layer `layer` (0-based) of `n_layers`: viridis, dark (first layer) to light (last)."""
    return colormaps["viridis"](0.15 + 0.7 * layer / max(n_layers - 1, 1))
