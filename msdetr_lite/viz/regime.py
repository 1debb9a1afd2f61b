"""The regime study's figure (msdetr_lite.regime): where mixed supervision beats o2o, and where not."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from matplotlib.ticker import MaxNLocator

from .figures import new_figure
from .palette import scheme_color, scheme_label, scheme_style

GOAL_AP = 2.0          # the study's bar: a scheme at least 2 AP above o2o


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


def plot_regime_map(rows: Sequence[dict], nms_iou: float, scheme: str = "ms"):
    """The regime map: one row per change to the demo's recipe, grouped under a header per regime
    axis (method, schedule, decoder, queries, data, trunk), `scheme`'s AP minus o2o's (x100) on x:
    a filled dot NMS-free (as the detector runs), a hollow one with class-wise NMS at `nms_iou`,
    whiskers over the seeds' range; the demo on top as the reference; the +2 AP goal dashed.

    rows: [{"axis", "label", "seeds": n, "AP": {mean, min, max}, "AP_nms": {mean, min, max}}] in
    display order (`regime.map_rows`). Returns the Figure."""
    lines: list[tuple[str, Optional[dict]]] = []          # (text, row or None for a header)
    for row in rows:
        if row["axis"] != _last_axis(lines):
            lines.append((row["axis"], None))
        seeds = f"{row['seeds']} seed{'s' if row['seeds'] != 1 else ''}"
        lines.append((f"{row['label']}  ({seeds})", row))
    fig, axes = new_figure(1, 1, panel=(10.0, 0.34 * len(lines) + 1.5))
    ax = axes[0, 0]
    color = scheme_color(scheme)
    ys = list(range(len(lines)))[::-1]
    labels = {"AP": "NMS-free (as the detector runs)", "AP_nms": f"with class-wise NMS at IoU {nms_iou}"}
    for y, (text, row) in zip(ys, lines):
        if row is None:
            ax.axhline(y + 0.5, color="grey", lw=0.5, alpha=0.5)
            continue
        for key, face, dy in (("AP", color, 0.13), ("AP_nms", "white", -0.13)):
            d = row[key]
            ax.plot([100 * d["min"], 100 * d["max"]], [y + dy] * 2, color=color, lw=1.2)
            ax.plot(100 * d["mean"], y + dy, "o", ms=7, markerfacecolor=face, markeredgecolor=color,
                    label=labels.pop(key, None))
    ax.set_yticks(ys)
    ax.set_yticklabels([text for text, _ in lines], fontsize=9)
    for tick, (_, row) in zip(ax.get_yticklabels(), lines):
        if row is None:
            tick.set_fontweight("bold")
    ax.set_ylim(-0.7, len(lines) - 0.3)
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(GOAL_AP, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"{scheme_label(scheme)} AP minus o2o AP (x100), paired by seed; dashed: the +{GOAL_AP:g} goal",
                  fontsize=10)
    ax.tick_params(axis="x", labelsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=9, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, frameon=False)
    return fig


def _last_axis(lines) -> Optional[str]:
    """The regime axis of the last header in the map's lines."""
    return next((text for text, row in reversed(lines) if row is None), None)
