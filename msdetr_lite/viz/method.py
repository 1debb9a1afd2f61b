"""The method on the page: the paper's Fig. 4, where the o2m branch taps a decoder layer.

A Deformable-DETR decoder layer is self-attention (SA), cross-attention (CA), FFN. The o2m
predictions of MS-DETR read the query at one point of that layer (`ModelConfig.o2m_tap`):

    None       no o2m branch (the o2o baseline)
    after_ca   the released MS-DETR: the layer reordered CA -> SA -> FFN, o2m read right after
               CA, before SA has let the queries see each other (the paper's Fig. 4(c))
    after_sa   the usual SA -> CA -> FFN order, o2m read after SA (Fig. 4(d))
    output     both branches read the layer's output (Fig. 4(a)); o2m needs its own class heads
"""
from __future__ import annotations

from typing import Optional, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .figures import new_figure
from .palette import O2M_COLOR, O2O_COLOR

TAPS = (None, "after_ca", "after_sa", "output")
# per tap: the order of the layer's blocks, and after which block (index) o2m reads the query
TAP_LAYOUTS = {None: (("SA", "CA", "FFN"), None), "after_ca": (("CA", "SA", "FFN"), 0),
               "after_sa": (("SA", "CA", "FFN"), 0), "output": (("SA", "CA", "FFN"), 2)}
TAP_TITLES = {None: "None: o2o only (baseline)", "after_ca": "after_ca: Fig. 4(c), MS-DETR",
              "after_sa": "after_sa: Fig. 4(d)", "output": "output: Fig. 4(a)"}
BLOCK_NAMES = {"SA": "self-attention", "CA": "cross-attention", "FFN": "FFN"}


def _block(ax, x: float, y: float, text: str, color: str = "#e8e8e8", w: float = 0.52, h: float = 0.13):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.01,rounding_size=0.03",
                                facecolor=color, edgecolor="black", linewidth=1.0))
    ax.text(x, y, text, ha="center", va="center", fontsize=9)


def _arrow(ax, start, end, color="black", lw=1.2, ls="-"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=color, linewidth=lw,
                                 linestyle=ls, shrinkA=0, shrinkB=0))


def draw_tap(ax, tap: Optional[str], highlight: bool = False) -> None:
    """One decoder layer with its o2m tap on `ax` (bottom: the query in; top: the o2o stream on
    to the next layer and its o2o heads; orange side arrow: the o2m predictions)."""
    if tap not in TAP_LAYOUTS:
        raise ValueError(f"o2m_tap={tap!r}; expected one of {list(TAP_LAYOUTS)}")
    order, tap_after = TAP_LAYOUTS[tap]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    ys = (0.28, 0.50, 0.72)
    ax.text(0.34, 0.05, "query in", ha="center", va="center", fontsize=9)
    _arrow(ax, (0.34, 0.09), (0.34, ys[0] - 0.065))
    for i, (block, y) in enumerate(zip(order, ys)):
        _block(ax, 0.34, y, BLOCK_NAMES[block])
        if i + 1 < len(ys):
            _arrow(ax, (0.34, y + 0.065), (0.34, ys[i + 1] - 0.065))
    _arrow(ax, (0.34, ys[-1] + 0.065), (0.34, 0.92), color=O2O_COLOR, lw=1.8)
    ax.text(0.34, 0.96, "o2o heads, next layer", ha="center", va="center", fontsize=9, color=O2O_COLOR)
    if tap_after is not None:
        y = ys[tap_after] + 0.11 if tap_after < len(ys) - 1 else ys[-1] + 0.11
        _arrow(ax, (0.34, y), (0.70, y), color=O2M_COLOR, lw=1.8)
        ax.text(0.72, y, "o2m\nheads", ha="left", va="center", fontsize=9, color=O2M_COLOR)
    ax.set_title(TAP_TITLES[tap], fontsize=10, fontweight="bold" if highlight else "normal")
    if highlight:
        ax.add_patch(FancyBboxPatch((0.02, 0.01), 0.96, 0.98, boxstyle="round,pad=0.0,rounding_size=0.02",
                                    facecolor="none", edgecolor=O2M_COLOR, linewidth=2.0,
                                    transform=ax.transAxes))


def plot_tap_placements(selected: Optional[str] = "after_ca", taps: Sequence[Optional[str]] = TAPS) -> Figure:
    """The paper's Fig. 4 as a schematic: one decoder layer per o2m tap placement (`taps`), the
    model's own `selected` tap framed in orange. Only the o2o stream continues to the next layer."""
    fig, axes = new_figure(1, len(taps), (2.9, 3.4))
    for ax, tap in zip(axes[0], taps):
        draw_tap(ax, tap, highlight=tap == selected)
    fig.suptitle("Where the o2m branch reads the decoder layer (model.o2m_tap)", fontsize=11)
    return fig
