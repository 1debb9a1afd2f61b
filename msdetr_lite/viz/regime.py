"""The regime study's figure (msdetr_lite.regime): where mixed supervision beats o2o, and where not."""
from __future__ import annotations

from typing import Sequence

from .figures import new_figure
from .palette import scheme_color, scheme_label

GOAL_AP = 2.0          # the study's bar: a scheme at least 2 AP above o2o


def plot_regime(summary: Sequence[dict], nms_iou: float, schemes: Sequence[str] = ("ms", "hybrid")):
    """Two panels, NMS-free (as the detector runs) and with class-wise NMS at `nms_iou`: each
    scheme's AP minus o2o's (x100) per cell of `regime.summarize`, bars at the mean over seeds,
    whiskers over the seeds' range, dashed goal line at +2 AP. Returns the Figure."""
    names = [e["cell"] for e in summary]
    fig, axes = new_figure(1, 2, panel=(max(4.5, 0.75 * len(names) + 1.5), 4.2), sharey=True)
    width = 0.8 / max(len(schemes), 1)
    titles = ("NMS-free (as the detector runs)", f"with NMS at IoU {nms_iou}")
    for ax, key, title in zip(axes[0], ("AP", "AP_nms"), titles):
        for j, scheme in enumerate(schemes):
            cols = [(i, e["delta"][scheme][key]) for i, e in enumerate(summary) if scheme in e["delta"]]
            if not cols:
                continue
            xs = [i + (j - (len(schemes) - 1) / 2) * width for i, _ in cols]
            half = [50 * d["spread"] for _, d in cols]
            ax.bar(xs, [100 * d["mean"] for _, d in cols], width, yerr=[half, half], capsize=3,
                   label=scheme_label(scheme), color=scheme_color(scheme))
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(GOAL_AP, color="grey", lw=0.8, ls="--")
        ax.set_title(title, fontsize=11)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=9)
        ax.tick_params(axis="y", labelsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("AP minus o2o AP (x100)", fontsize=10)
    axes[0, 0].legend(fontsize=9)
    return fig
