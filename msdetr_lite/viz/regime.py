"""The regime study's figure (msdetr_lite.regime): where mixed supervision beats o2o, and where not."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from matplotlib.ticker import MaxNLocator

from .figures import new_figure
from .palette import scheme_color, scheme_label, scheme_style

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


def plot_regime_epochs(gaps: Mapping[str, Sequence[dict]], nms_iou: float, scheme: str = "ms",
                       lr_drops: Optional[Mapping[str, int]] = None,
                       duplicates: Optional[Mapping[str, Mapping[str, Sequence[dict]]]] = None):
    """Two panels, NMS-free and with NMS at `nms_iou`: `scheme`'s AP minus o2o's (x100) after every
    epoch, one line per cell (`regime.gap_per_epoch` of each), the mean over seeds with the seeds'
    range shaded; a dotted vertical line where a cell's lr drops (`lr_drops`: {cell: train.lr_drop},
    the epochs after it run at a tenth of the lr). With `duplicates` ({cell: {scheme:
    regime.per_epoch(...)}}) a third panel: duplicates per image of each scheme after every epoch
    (o2o dashed, MS-DETR solid; one marker per cell). Returns the Figure."""
    lr_drops = lr_drops or {}
    fig, axes = new_figure(1, 3 if duplicates else 2, panel=(4.6, 3.6))
    axes[0, 1].sharey(axes[0, 0])
    styles = ("-", "--", ":", "-.")
    titles = ("NMS-free (as the detector runs)", f"with NMS at IoU {nms_iou}")
    for ax, key, title in zip(axes[0][:2], ("AP", "AP_nms"), titles):
        for i, (cell, gap) in enumerate(gaps.items()):
            pts = [(g["epoch"], g[key]) for g in gap if g.get(key) is not None]
            if not pts:
                continue
            xs = [e for e, _ in pts]
            mean = [100 * d["mean"] for _, d in pts]
            half = [50 * d["spread"] for _, d in pts]
            ax.plot(xs, mean, styles[i % len(styles)], marker="o", ms=4, color=scheme_color(scheme),
                    label=f"{cell} ({pts[0][1]['n']} seed{'s' if pts[0][1]['n'] != 1 else ''})")
            ax.fill_between(xs, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                            color=scheme_color(scheme), alpha=0.12)
        drops: dict[int, list[str]] = {}                  # cells sharing a drop share one line
        for cell in gaps:
            if cell in lr_drops:
                drops.setdefault(lr_drops[cell], []).append(cell)
        for drop, cells in drops.items():
            ax.axvline(drop + 0.5, color="grey", lw=0.9, ls=":")
            label = "lr drop" + (f" ({', '.join(cells)})" if len(drops) > 1 else "")
            ax.annotate(label, (drop + 0.5, 0.02), xycoords=("data", "axes fraction"), xytext=(-3, 0),
                        textcoords="offset points", rotation=90, ha="right", va="bottom", fontsize=8, color="grey")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(title, fontsize=11)
    axes[0, 0].set_ylabel(f"{scheme_label(scheme)} AP minus o2o AP (x100)", fontsize=10)
    axes[0, 0].legend(fontsize=9)
    if duplicates:
        ax = axes[0, 2]
        markers = ("o", "s", "^", "D")
        for i, (cell, by_scheme) in enumerate(duplicates.items()):
            for s, pts in by_scheme.items():
                ax.plot([p["epoch"] for p in pts], [p["mean"] for p in pts], scheme_style(s, s),
                        marker=markers[i % len(markers)], ms=4, color=scheme_color(s, s),
                        label=f"{s} ({cell})" if len(duplicates) > 1 else s)
        ax.set_title("duplicates per image, final layer", fontsize=11)
        ax.legend(fontsize=8)
    for ax in axes[0]:                                     # every panel: epochs on x
        ax.set_xlabel("epoch", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    return fig
