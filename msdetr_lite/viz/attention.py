"""Multi-scale deformable attention: where a decoder query samples, per feature level and layer,
and how the backends of the sampling op compare in time."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .figures import add_legend, box_handle, boxes_to_pixels, draw_boxes, new_figure, show_image
from .palette import BAR_COLORS, LEVEL_COLORS, LEVEL_STRIDES, O2O_COLOR, REF_COLOR


def attention_heatmap(sampling_locations, attention_weights, size: Sequence[int], cell: int = 2) -> np.ndarray:
    """Splat attention weights onto an image grid: [M, L, P, 2] normalised (x, y) locations and
    [M, L, P] weights -> [ceil(h / cell), ceil(w / cell)] summed weight per cell (points outside
    the image are dropped: they sample zeros)."""
    loc = torch.as_tensor(sampling_locations, dtype=torch.float32).reshape(-1, 2).cpu().numpy()
    w = torch.as_tensor(attention_weights, dtype=torch.float32).reshape(-1).cpu().numpy()
    h, wd = int(size[0]), int(size[1])
    ny, nx = math.ceil(h / cell), math.ceil(wd / cell)
    heat, _, _ = np.histogram2d(loc[:, 1] * h, loc[:, 0] * wd, bins=[ny, nx], range=[[0, ny * cell], [0, nx * cell]],
                                weights=w)
    return heat


def plot_deformable_attention(image, sampling_locations, attention_weights, ref_box=None, pred_box=None,
                              size=None, title: Optional[str] = None, head: Optional[int] = None,
                              show_lines: bool = True) -> Figure:
    """Where one decoder query looks: its reference box / point, its sampling points per feature
    level (marker size = attention weight) and the attention mass over the image.

    sampling_locations [M, L, P, 2] normalised (x, y) in the (unpadded, single-image) frame;
    attention_weights [M, L, P] (softmax over L*P per head); ref_box / pred_box normalised cxcywh.
    head: draw one head only (None = all M heads).
    """
    loc = torch.as_tensor(sampling_locations, dtype=torch.float32).cpu()
    wts = torch.as_tensor(attention_weights, dtype=torch.float32).cpu()
    if head is not None:
        loc, wts = loc[head:head + 1], wts[head:head + 1]
    M, L, P, _ = loc.shape
    fig = Figure(figsize=(11, 5.2), layout="constrained")
    ax_pts, ax_heat = fig.subplots(1, 2)
    arr = show_image(ax_pts, image, size=size)
    h, w = arr.shape[:2]
    handles = []
    if ref_box is not None:
        rb = torch.as_tensor(ref_box, dtype=torch.float32).reshape(4)
        draw_boxes(ax_pts, boxes_to_pixels(rb, (h, w)), REF_COLOR, gid="reference", linestyle="--", linewidth=1.6)
        cx, cy = float(rb[0]) * w, float(rb[1]) * h
        ax_pts.plot([cx], [cy], marker="*", markersize=14, color=REF_COLOR, markeredgecolor="black", zorder=6)
        handles.append(box_handle(REF_COLOR, "reference box / point", "--"))
    if pred_box is not None:
        draw_boxes(ax_pts, boxes_to_pixels(pred_box, (h, w)), O2O_COLOR, gid="prediction", linewidth=2.0)
        handles.append(box_handle(O2O_COLOR, "this layer's predicted box"))
    wmax = max(float(wts.max()), 1e-6)
    for lvl in range(L):
        xy = loc[:, lvl].reshape(-1, 2).numpy() * np.array([w, h])
        ww = wts[:, lvl].reshape(-1).numpy()
        color = LEVEL_COLORS[lvl % len(LEVEL_COLORS)]
        if show_lines and ref_box is not None:
            for x, y in xy:
                ax_pts.plot([cx, x], [cy, y], color=color, linewidth=0.4, alpha=0.35, zorder=3)
        ax_pts.scatter(xy[:, 0], xy[:, 1], s=8 + 160 * ww / wmax, color=color, edgecolors="black",
                       linewidths=0.4, alpha=0.9, zorder=5, gid=f"level{lvl}")
        stride = LEVEL_STRIDES[lvl] if lvl < len(LEVEL_STRIDES) else "?"
        handles.append(Line2D([], [], marker="o", linestyle="", color=color, markeredgecolor="black",
                              label=f"level {lvl} (stride {stride}): {100 * ww.sum() / max(wts.sum().item(), 1e-9):.0f}%"))
    ax_pts.set_xlim(-0.5, w - 0.5)
    ax_pts.set_ylim(h - 0.5, -0.5)
    ax_pts.set_title(f"sampling points: {M} head(s) x {L} levels x {P} points (size = weight)", fontsize=9)
    add_legend(ax_pts, handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, frameon=False)

    heat = attention_heatmap(loc, wts, (h, w), cell=max(1, round(max(h, w) / 64)))
    ax_heat.imshow(arr.mean(axis=2), cmap="gray", vmin=0, vmax=1, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    masked = np.ma.masked_where(heat <= 0, heat)
    him = ax_heat.imshow(masked, cmap="magma", alpha=0.85, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                         interpolation="nearest")
    fig.colorbar(him, ax=ax_heat, fraction=0.04, pad=0.01).set_label("summed attention weight", fontsize=9)
    ax_heat.set_xticks([])
    ax_heat.set_yticks([])
    ax_heat.set_xlim(-0.5, w - 0.5)
    ax_heat.set_ylim(h - 0.5, -0.5)
    ax_heat.set_title(f"attention mass over the image (total {float(wts.sum()):.1f} = heads)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_attention_layers(image, per_layer: Sequence[Mapping], size=None, panel: float = 3.0,
                          title: Optional[str] = None) -> Figure:
    """One query through the decoder: a panel per layer with its reference box (dashed pink),
    predicted box (blue) and sampling points per level (size = weight).

    per_layer: `widgets.query_attention` dicts ("sampling_locations" [M, L, P, 2],
    "attention_weights" [M, L, P], "reference" [4], "box" [4]) of decoder layers 1..n.
    """
    n = len(per_layer)
    fig, axes = new_figure(1, n, (panel, panel), extra_height=0.5)
    for l, (ax, qa) in enumerate(zip(axes[0], per_layer)):
        arr = show_image(ax, image, size=size, title=f"layer {l + 1}")
        h, w = arr.shape[:2]
        draw_boxes(ax, boxes_to_pixels(qa["reference"], (h, w)), REF_COLOR, gid="reference", linestyle="--")
        draw_boxes(ax, boxes_to_pixels(qa["box"], (h, w)), O2O_COLOR, gid="prediction", linewidth=2.0)
        loc = torch.as_tensor(qa["sampling_locations"], dtype=torch.float32)
        wts = torch.as_tensor(qa["attention_weights"], dtype=torch.float32)
        wmax = max(float(wts.max()), 1e-6)
        for lvl in range(loc.shape[1]):
            xy = loc[:, lvl].reshape(-1, 2).numpy() * np.array([w, h])
            ax.scatter(xy[:, 0], xy[:, 1], s=4 + 80 * wts[:, lvl].reshape(-1).numpy() / wmax,
                       color=LEVEL_COLORS[lvl % len(LEVEL_COLORS)], edgecolors="black", linewidths=0.3, zorder=5)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
    handles = [box_handle(REF_COLOR, "reference box", "--"), box_handle(O2O_COLOR, "predicted box")]
    handles += [Line2D([], [], marker="o", linestyle="", color=LEVEL_COLORS[l], markeredgecolor="black",
                       label=f"level {l} (stride {LEVEL_STRIDES[l]})") for l in range(min(4, loc.shape[1]))]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(title or "One query through the decoder layers", fontsize=10)
    return fig


def plot_backend_timings(rows: Sequence[Mapping], keys: Sequence[str] = ("forward_ms", "backward_ms")) -> Figure:
    """Bar chart of deformable-attention backend timings: rows [{"backend", "forward_ms", ...}]."""
    fig, axes = new_figure(1, 1, (5.5, 3.0), extra_height=0.3)
    ax = axes[0, 0]
    names = [r["backend"] for r in rows]
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        vals = [r.get(key) if r.get(key) is not None else float("nan") for r in rows]
        ax.bar([j + i * width for j in range(len(rows))], vals, width, label=key.replace("_ms", " (ms)"),
               color=BAR_COLORS[i % len(BAR_COLORS)])
    ax.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(rows))])
    ax.set_xticklabels(names)
    ax.set_ylabel("milliseconds per call")
    ax.grid(alpha=0.3, axis="y")
    add_legend(ax, loc="upper left")
    ax.set_title("ms_deform_attn backends: time per call (lower is better)", fontsize=9)
    return fig


def plot_level_shares(levels: Mapping[str, Mapping]) -> Figure:
    """How much attention weight each feature level gets, one panel per model (e.g. "init",
    "trained"): a stacked bar per encoder layer (the level-0 tokens' self-attention) and per
    decoder layer (every query's cross-attention), coloured by level as the sampling points.

    levels: {label: `samples.attention_levels(model, image)`}."""
    fig, axes = new_figure(1, len(levels), (4.4, 3.0), extra_height=0.6)
    for ax, (label, lv) in zip(axes[0], levels.items()):
        rows = ([(f"encoder {i + 1}", s) for i, s in enumerate(lv["encoder"])]
                + [(f"decoder {i + 1}", s) for i, s in enumerate(lv["decoder"])])
        for y, (_, shares) in enumerate(rows):
            left = 0.0
            for lvl, share in enumerate(shares):
                ax.barh(y, 100 * share, left=left, color=LEVEL_COLORS[lvl % len(LEVEL_COLORS)], edgecolor="white",
                        linewidth=0.5)
                if share >= 0.12:
                    ax.text(left + 50 * share, y, f"{100 * share:.0f}%", ha="center", va="center", fontsize=9,
                            color="white" if lvl >= 2 else "black")
                left += 100 * share
        ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=9)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("share of the attention weight (%)", fontsize=9)
        ax.set_title(label, fontsize=9)
    shapes = next(iter(levels.values()))["spatial_shapes"]
    handles = [Line2D([], [], marker="s", linestyle="", color=LEVEL_COLORS[l % len(LEVEL_COLORS)],
                      label=f"level {l} (stride {LEVEL_STRIDES[l] if l < len(LEVEL_STRIDES) else '?'}, "
                            f"{h} x {w} cells)") for l, (h, w) in enumerate(shapes)]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle("Attention weight per feature level: encoder (level-0 tokens) and decoder (all queries)", fontsize=10)
    return fig
