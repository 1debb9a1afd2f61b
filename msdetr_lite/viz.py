"""Drawing for the notebooks: one palette, plain functions that return matplotlib Figures.

Every function builds a bare `matplotlib.figure.Figure` (not registered with pyplot, so
scripts and widget callbacks leak nothing); a notebook cell that ends with the figure shows it
(after `%matplotlib inline`), `fig_to_png` gives its bytes, `save_thumbnail` writes a PNG of a
fixed width for the README.

Colours are defined once here and used across the suite:

    GT  green        o2o (one-to-one, Hungarian) blue        o2m (one-to-many, top-K) orange

and, when several trained models are compared, one colour and line style per supervision
scheme (`SCHEME_COLORS`, `SCHEME_STYLES`): the o2o baseline is blue and dashed (as in the
paper's Fig. 2), MS-DETR red and solid.

Boxes follow docs/design.md: model outputs and targets are normalised (cx, cy, w, h); drawing
functions take them as such together with the image they belong to, and convert to pixels.
Drawn box patches carry a `gid` ("gt", "o2o", "o2m", "candidate", "detection", ...) so tests
and callers can count what a figure shows (`count_boxes`).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from torchvision.ops import box_convert

from .runs import LOSS_TERMS, Run, as_run

RunLike = Union[Run, Sequence[Mapping]]       # a run, or its metrics.jsonl records

# ---------------------------------------------------------------- the palette
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
LOSS_TITLES = {"cls": "classification (focal)", "bbox": "box L1", "giou": "GIoU"}

__all__ = [
    "GT_COLOR", "O2O_COLOR", "O2M_COLOR", "ENC_COLOR", "REF_COLOR", "BRANCH_COLORS", "SCHEMES",
    "SCHEME_COLORS", "SCHEME_STYLES", "SCHEME_LABELS", "LEVEL_COLORS", "scheme_color", "scheme_label", "class_name",
    "to_numpy_image", "boxes_to_pixels", "new_figure", "show_image", "draw_boxes", "count_boxes",
    "draw_boxes_tv", "plot_samples", "plot_detections", "plot_assignment", "plot_score_matrix",
    "plot_deformable_attention", "plot_attention_layers", "attention_heatmap", "plot_candidates", "plot_topk_comparison",
    "plot_topk_per_layer", "plot_loss_curves", "plot_total_loss", "plot_ap_curves",
    "plot_ap_per_layer", "plot_backend_timings", "recolor_by_scheme", "markdown_table", "fig_to_png", "save_thumbnail",
]


def scheme_color(name: str) -> str:
    """Colour of a supervision scheme (or of any other model name: a stable tab10 colour)."""
    if name in SCHEME_COLORS:
        return SCHEME_COLORS[name]
    tab = colormaps["tab10"]
    return tab(sum(map(ord, str(name))) % 10)


def scheme_label(name: str) -> str:
    return SCHEME_LABELS.get(name, str(name))


def _scheme_style(name: str) -> str:
    return SCHEME_STYLES.get(name, "-")


# ---------------------------------------------------------------- images and boxes
def to_numpy_image(image, size: Optional[Sequence[int]] = None, normalized: Optional[bool] = None) -> np.ndarray:
    """An image as float numpy [H, W, 3] in [0, 1], ready for `imshow`.

    image: torch [3, H, W] (float ImageNet-normalised as the datasets give them, float [0, 1]
        or uint8), numpy [H, W, 3] (uint8 or float [0, 1]) or a PIL image.
    size: (h, w) of the unpadded image: crops away batch padding.
    normalized: whether a float tensor is ImageNet-normalised; None guesses from its range
        (normalised images have values outside [0, 1]).
    """
    if torch.is_tensor(image):
        img = image.detach().cpu()
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"expected an image tensor [3, H, W], got {tuple(img.shape)}")
        if img.dtype == torch.uint8:
            img = img.float() / 255.0
        else:
            img = img.float()
            if normalized is None:
                normalized = bool(img.min() < 0 or img.max() > 1)
            if normalized:
                from msdetr_lite.data.transforms import denormalize
                img = denormalize(img)
        arr = img.clamp(0, 1).permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        arr = arr[..., :3]
        arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    if size is not None:
        h, w = int(size[0]), int(size[1])
        arr = arr[:h, :w]
    return np.clip(arr, 0.0, 1.0)


def boxes_to_pixels(boxes, size: Sequence[int]) -> torch.Tensor:
    """Normalised (cx, cy, w, h) [N, 4] -> absolute (x1, y1, x2, y2) pixels of an image of size (h, w)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).cpu()
    h, w = float(size[0]), float(size[1])
    return box_convert(boxes, "cxcywh", "xyxy") * torch.tensor([w, h, w, h])


def new_figure(nrows: int = 1, ncols: int = 1, panel: Sequence[float] = (4.0, 4.0),
               extra_height: float = 0.0, **subplot_kw):
    """A constrained-layout Figure of nrows x ncols panels of `panel` inches; returns (fig, axes[nrows, ncols])."""
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + extra_height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def show_image(ax, image, title: Optional[str] = None, size=None, normalized=None) -> np.ndarray:
    """imshow an image (see `to_numpy_image`) without axes; returns the numpy image."""
    arr = to_numpy_image(image, size, normalized)
    ax.imshow(arr, interpolation="nearest")
    ax.set_xlim(-0.5, arr.shape[1] - 0.5)
    ax.set_ylim(arr.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    return arr


def draw_boxes(ax, boxes_xyxy, color, *, gid: Optional[str] = None, label: Optional[str] = None,
               texts: Optional[Sequence[str]] = None, alpha: Union[float, Sequence[float]] = 1.0,
               linewidth: Union[float, Sequence[float]] = 1.6, linestyle: str = "-", zorder: float = 3,
               fontsize: float = 7) -> list:
    """Draw (x1, y1, x2, y2) pixel boxes as rectangles on `ax`; returns the patches.

    color: one colour, or one per box. alpha / linewidth: a value or one per box.
    label: legend entry (put on the first box only). texts: a caption per box (top-left corner).
    gid: tag set on every patch (see `count_boxes`).
    """
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4).tolist()
    n = len(boxes)
    colors = list(color) if (isinstance(color, (list, tuple)) and len(color) == n and n and
                             not isinstance(color[0], (int, float))) else [color] * n
    alphas = list(alpha) if isinstance(alpha, (list, tuple, np.ndarray)) else [alpha] * n
    widths = list(linewidth) if isinstance(linewidth, (list, tuple, np.ndarray)) else [linewidth] * n
    patches = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        rect = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=to_rgba(colors[i], float(alphas[i])),
                         linewidth=float(widths[i]), linestyle=linestyle, zorder=zorder,
                         label=label if i == 0 else None)
        if gid:
            rect.set_gid(gid)
        ax.add_patch(rect)
        patches.append(rect)
        if texts is not None and i < len(texts) and texts[i]:
            ax.text(x1, y1, texts[i], fontsize=fontsize, color="white", va="bottom", ha="left", zorder=zorder + 1,
                    bbox=dict(facecolor=colors[i], alpha=0.75, pad=0.8, edgecolor="none"), clip_on=True)
    return patches


def count_boxes(fig_or_ax, gid: Optional[str] = None) -> int:
    """Number of box patches (with tag `gid`, or all Rectangles with any tag) on a figure or axes."""
    axes = fig_or_ax.axes if isinstance(fig_or_ax, Figure) else [fig_or_ax]
    n = 0
    for ax in axes:
        for p in ax.patches:
            if isinstance(p, Rectangle) and p.get_gid() is not None and (gid is None or p.get_gid() == gid):
                n += 1
    return n


def draw_boxes_tv(image, boxes_cxcywh, colors=GT_COLOR, labels: Optional[Sequence[str]] = None,
                  width: int = 2, scale: int = 1, size=None) -> torch.Tensor:
    """A uint8 [3, H, W] copy of `image` with boxes burnt in by torchvision.utils.draw_bounding_boxes.

    Handy for quick grids and files (no matplotlib). scale: upsample the image first (nearest)
    so thin lines stay visible on small images. Boxes are normalised cxcywh.
    """
    from torchvision.utils import draw_bounding_boxes

    arr = to_numpy_image(image, size)
    img = torch.from_numpy((arr * 255).round().astype(np.uint8)).permute(2, 0, 1).contiguous()
    if scale > 1:
        img = img.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    h, w = img.shape[1:]
    xyxy = boxes_to_pixels(boxes_cxcywh, (h, w))
    if xyxy.numel() == 0:
        return img
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w - 1)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h - 1)
    return draw_bounding_boxes(img, xyxy, labels=list(labels) if labels is not None else None,
                               colors=colors, width=width)


def _legend(ax, handles=None, **kw):
    kw.setdefault("fontsize", 7)
    kw.setdefault("loc", "upper right")
    kw.setdefault("framealpha", 0.8)
    if handles is not None:
        return ax.legend(handles=handles, **kw)
    if ax.get_legend_handles_labels()[0]:
        return ax.legend(**kw)
    return None


def _box_handle(color, label, linestyle="-", linewidth=2.0):
    return Line2D([], [], color=color, linestyle=linestyle, linewidth=linewidth, label=label)


def class_name(class_names, label) -> str:
    if class_names is None:
        return str(int(label))
    return str(class_names[int(label)]) if int(label) < len(class_names) else str(int(label))


# ---------------------------------------------------------------- data and detections
def plot_samples(dataset, indices: Sequence[int], ncols: int = 4, class_names=None, panel: float = 2.6) -> Figure:
    """A grid of dataset images with their ground-truth boxes and class names."""
    indices = list(indices)
    class_names = class_names if class_names is not None else getattr(dataset, "class_names", None)
    ncols = max(1, min(ncols, len(indices)))
    nrows = math.ceil(len(indices) / ncols)
    fig, axes = new_figure(nrows, ncols, (panel, panel), extra_height=0.3)
    for ax in axes.flat[len(indices):]:
        ax.set_visible(False)
    for ax, idx in zip(axes.flat, indices):
        image, target = dataset[idx]
        size = target["size"].tolist()
        show_image(ax, image, f"image {idx}: {len(target['labels'])} objects", size=size)
        draw_boxes(ax, boxes_to_pixels(target["boxes"], size), GT_COLOR, gid="gt",
                   texts=[class_name(class_names, l) for l in target["labels"].tolist()])
    fig.suptitle("The data: images with their ground-truth boxes (green)")
    return fig


def plot_detections(image, detections: Mapping, gt_boxes=None, class_names=None, score_thresh: float = 0.3,
                    size=None, title: Optional[str] = None, ax=None, color=O2O_COLOR,
                    max_dets: Optional[int] = None) -> Figure:
    """Detections of one image (a `postprocess` dict: scores [k], labels [k], boxes [k, 4] xyxy
    pixels of `image`) above `score_thresh` (at most the `max_dets` best), with the GT boxes
    (normalised cxcywh) if given."""
    if ax is None:
        fig, axes = new_figure(1, 1, (5, 5))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    arr = show_image(ax, image, size=size)
    hw = arr.shape[:2]
    handles = []
    if gt_boxes is not None:
        draw_boxes(ax, boxes_to_pixels(gt_boxes, hw), GT_COLOR, gid="gt", linestyle="--", linewidth=1.4)
        handles.append(_box_handle(GT_COLOR, f"ground truth ({len(gt_boxes)})", "--"))
    scores = detections["scores"].detach().cpu()
    keep = scores >= score_thresh
    if max_dets is not None and int(keep.sum()) > max_dets:
        order = scores.argsort(descending=True)
        keep = torch.zeros_like(keep)
        keep[order[:max_dets]] = True
    texts = [f"{class_name(class_names, l)} {s:.2f}"
             for l, s in zip(detections["labels"][keep].tolist(), scores[keep].tolist())]
    draw_boxes(ax, detections["boxes"][keep].detach().cpu(), color, gid="detection", texts=texts,
               linewidth=1.8)
    top = f", top {max_dets}" if max_dets is not None else ""
    handles.append(_box_handle(color, f"detections, score >= {score_thresh:.2f}{top} ({int(keep.sum())})"))
    _legend(ax, handles, loc="lower right")
    ax.set_title(title or f"{int(keep.sum())} detections above {score_thresh:.2f}", fontsize=10)
    return fig


# ---------------------------------------------------------------- one-to-one vs one-to-many
def plot_score_matrix(ax, scores, o2o=None, o2m=None, candidates=None, tau: Optional[float] = None,
                      gt_labels=None, class_names=None, max_queries: int = 40, colorbar: bool = True):
    """Heatmap of the match-score matrix S [G, Q] with the selected pairs marked.

    Shows the `max_queries` most relevant query columns (every query in a pair first, then the
    highest scores), ordered by their best GT. o2o pairs: blue squares; o2m pairs: orange dots;
    top-K candidates not selected (`candidates` minus `o2m`): hollow orange circles. Cells with
    S >= tau get a thin white outline. Returns the list of query ids shown (the columns).
    """
    S = torch.as_tensor(scores, dtype=torch.float32).cpu()
    G, Q = S.shape
    ax.set_title("match score S = alpha * p_cls + (1 - alpha) * IoU", fontsize=9)
    if G == 0 or Q == 0:
        ax.text(0.5, 0.5, "no ground truth in this image", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return []
    pairs = {name: (torch.as_tensor(p[0]).cpu().long(), torch.as_tensor(p[1]).cpu().long())
             for name, p in (("o2o", o2o), ("o2m", o2m), ("cand", candidates)) if p is not None}
    must = []
    for name in ("o2o", "o2m", "cand"):
        if name in pairs:
            must += pairs[name][0].tolist()
    best = S.max(dim=0)
    order = best.values.argsort(descending=True).tolist()
    cols: list[int] = []
    for q in must + order:
        if q not in cols:
            cols.append(q)
        if len(cols) >= max(max_queries, len(set(must))):
            break
    cols = sorted(cols, key=lambda q: (int(best.indices[q]), -float(best.values[q])))
    col_of = {q: i for i, q in enumerate(cols)}
    im = ax.imshow(S[:, cols].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    if tau is not None:
        gs, qs = torch.nonzero(S[:, cols] >= tau, as_tuple=True)
        for g, c in zip(gs.tolist(), qs.tolist()):
            ax.add_patch(Rectangle((c - 0.5, g - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=0.6, zorder=2))
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([str(q) for q in cols], fontsize=6, rotation=90)
    ax.set_xlabel(f"query id ({len(cols)} of {Q} shown)", fontsize=8)
    ylabels = [f"GT {g}" + (f" {class_name(class_names, gt_labels[g])}" if gt_labels is not None else "")
               for g in range(G)]
    ax.set_yticks(range(G))
    ax.set_yticklabels(ylabels, fontsize=7)
    handles = []
    if "cand" in pairs:
        sel = set(zip(*[t.tolist() for t in pairs["o2m"]])) if "o2m" in pairs else set()
        xs, ys = [], []
        for q, g in zip(*[t.tolist() for t in pairs["cand"]]):
            if (q, g) not in sel and q in col_of:
                xs.append(col_of[q])
                ys.append(g)
        ax.scatter(xs, ys, s=42, facecolors="none", edgecolors=O2M_COLOR, linewidths=1.2, zorder=3, gid="candidate")
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor=O2M_COLOR,
                              label="top-K of the row, not taken"))
    if "o2m" in pairs:
        q, g = pairs["o2m"]
        ax.scatter([col_of[i] for i in q.tolist()], g.tolist(), s=30, color=O2M_COLOR, edgecolors="black",
                   linewidths=0.5, zorder=4, gid="o2m")
        handles.append(Line2D([], [], marker="o", linestyle="", color=O2M_COLOR, markeredgecolor="black",
                              label=f"o2m pair ({len(q)})"))
    if "o2o" in pairs:
        q, g = pairs["o2o"]
        ax.scatter([col_of[i] for i in q.tolist()], g.tolist(), s=95, marker="s", facecolors="none",
                   edgecolors=O2O_COLOR, linewidths=2.0, zorder=5, gid="o2o")
        handles.append(Line2D([], [], marker="s", linestyle="", markerfacecolor="none", markeredgecolor=O2O_COLOR,
                              markeredgewidth=2, label=f"o2o pair ({len(q)})"))
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.04, pad=0.01).set_label("S", fontsize=8)
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3,
                  frameon=False)
    return cols


def plot_assignment(image, assignment: Mapping, class_names=None, size=None, max_queries: int = 40) -> Figure:
    """The o2o and o2m assignments of one image and decoder layer, side by side with S.

    assignment: the dict of `msdetr_lite.widgets.compute_assignment` (GT boxes, predicted
    boxes, o2o pairs, o2m pairs with their scores, S, the top-K candidates, K / tau / alpha).
    Left: the image with GT (green, dashed), the o2o-matched query boxes (blue) and the
    o2m-matched query boxes (orange, opacity = match score). Right: S with the pairs marked.
    """
    a = assignment
    fig = Figure(figsize=(12.5, 5.0), layout="constrained")
    ax_img, ax_s = fig.subplots(1, 2, width_ratios=[1.0, 1.45])
    arr = show_image(ax_img, image, size=size)
    hw = arr.shape[:2]
    gt = a["gt_boxes"]
    draw_boxes(ax_img, boxes_to_pixels(gt, hw), GT_COLOR, gid="gt", linestyle="--", linewidth=2.0,
               texts=[f"GT {g}" for g in range(len(gt))])
    q2m, g2m = a["o2m"]
    s2m = a["o2m_scores"]
    if len(q2m):
        lo = float(s2m.min())
        span = max(float(s2m.max()) - lo, 1e-6)
        alphas = [0.35 + 0.65 * (float(s) - lo) / span for s in s2m]
        draw_boxes(ax_img, boxes_to_pixels(a["o2m_boxes"][q2m], hw), O2M_COLOR, gid="o2m", alpha=alphas,
                   linewidth=[1.0 + 1.5 * (x - 0.35) / 0.65 for x in alphas])
    q1, g1 = a["o2o"]
    draw_boxes(ax_img, boxes_to_pixels(a["o2o_boxes"][q1], hw), O2O_COLOR, gid="o2o", linewidth=2.2,
               texts=[f"q{q}" for q in q1.tolist()])
    handles = [_box_handle(GT_COLOR, f"ground truth ({len(gt)})", "--"),
               _box_handle(O2O_COLOR, f"o2o match, 1 per GT ({len(q1)})"),
               _box_handle(O2M_COLOR, f"o2m matches, <= K per GT ({len(q2m)})")]
    _legend(ax_img, handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=1, frameon=False)
    ax_img.set_title(f"decoder layer {a['layer'] + 1}: o2o (Hungarian) vs o2m (top-K)", fontsize=10)
    plot_score_matrix(ax_s, a["scores"], o2o=a["o2o"], o2m=a["o2m"], candidates=a.get("candidates"),
                      tau=a["tau"], gt_labels=a.get("gt_labels"), class_names=class_names, max_queries=max_queries)
    per_gt = torch.bincount(torch.as_tensor(g2m).long(), minlength=len(gt)).tolist() if len(gt) else []
    fig.suptitle(f"K={a['k']}, tau={a['tau']:.2f}, alpha={a['alpha']:.2f}: {len(q2m)} o2m pairs, "
                 f"{int(a['positive'].sum())} positive queries (S >= tau, or a GT's best)\n"
                 f"o2m pairs per GT: {per_gt}" + (f"   [{a['note']}]" if a.get("note") else ""), fontsize=10)
    return fig


# ---------------------------------------------------------------- deformable attention
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
        handles.append(_box_handle(REF_COLOR, "reference box / point", "--"))
    if pred_box is not None:
        draw_boxes(ax_pts, boxes_to_pixels(pred_box, (h, w)), O2O_COLOR, gid="prediction", linewidth=2.0)
        handles.append(_box_handle(O2O_COLOR, "this layer's predicted box"))
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
    _legend(ax_pts, handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, frameon=False)

    heat = attention_heatmap(loc, wts, (h, w), cell=max(1, round(max(h, w) / 64)))
    ax_heat.imshow(arr.mean(axis=2), cmap="gray", vmin=0, vmax=1, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    masked = np.ma.masked_where(heat <= 0, heat)
    him = ax_heat.imshow(masked, cmap="magma", alpha=0.85, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                         interpolation="nearest")
    fig.colorbar(him, ax=ax_heat, fraction=0.04, pad=0.01).set_label("summed attention weight", fontsize=8)
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
    handles = [_box_handle(REF_COLOR, "reference box", "--"), _box_handle(O2O_COLOR, "predicted box")]
    handles += [Line2D([], [], marker="o", linestyle="", color=LEVEL_COLORS[l], markeredgecolor="black",
                       label=f"level {l} (stride {LEVEL_STRIDES[l]})") for l in range(min(4, loc.shape[1]))]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.suptitle(title or "One query through the decoder layers", fontsize=10)
    return fig


# ---------------------------------------------------------------- candidate quality (Fig. 1)
def plot_candidates(ax, image, boxes, scores, gt_boxes=None, k: int = 20, color=O2O_COLOR,
                    title: Optional[str] = None, size=None, legend: bool = False) -> list:
    """The boxes of the top-k scoring queries (normalised cxcywh `boxes` [Q, 4], `scores` [Q]),
    opacity by rank, with the GT boxes dashed green. Returns the drawn candidate patches."""
    arr = show_image(ax, image, size=size)
    hw = arr.shape[:2]
    scores = torch.as_tensor(scores, dtype=torch.float32).cpu()
    k = min(k, scores.numel())
    top = scores.topk(k).indices
    if gt_boxes is not None:
        draw_boxes(ax, boxes_to_pixels(gt_boxes, hw), GT_COLOR, gid="gt", linestyle="--", linewidth=1.4)
    alphas = [1.0 - 0.7 * i / max(k - 1, 1) for i in range(k)]
    patches = draw_boxes(ax, boxes_to_pixels(torch.as_tensor(boxes)[top], hw), color, gid="candidate",
                         alpha=alphas, linewidth=1.3)
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        _legend(ax, [_box_handle(GT_COLOR, "ground truth", "--"),
                     _box_handle(color, f"top-{k} queries (fainter = lower score)")], loc="lower right")
    return patches


def plot_topk_comparison(images: Sequence, gt_boxes: Sequence, predictions: Mapping[str, Sequence[tuple]],
                         k: int = 20, sizes: Optional[Sequence] = None, layer_name: str = "last decoder layer",
                         panel: float = 3.2, models_as_rows: bool = False) -> Figure:
    """The paper's Fig. 1: rows = images, columns = models (or the transpose with
    `models_as_rows`); each panel the top-k query boxes of one model on one image.

    predictions: {model name: [(boxes [Q, 4] cxcywh, scores [Q]) per image]}.
    """
    names = list(predictions)
    shape = (len(names), len(images)) if models_as_rows else (len(images), len(names))
    fig, axes = new_figure(*shape, (panel, panel), extra_height=0.4)
    for r, image in enumerate(images):
        for c, name in enumerate(names):
            boxes, scores = predictions[name][r]
            ax = axes[c, r] if models_as_rows else axes[r, c]
            plot_candidates(ax, image, boxes, scores, gt_boxes[r], k=k, color=scheme_color(name),
                            size=sizes[r] if sizes is not None else None,
                            title=scheme_label(name) if (models_as_rows or r == 0) else None)
    fig.suptitle(f"Top-{k} query boxes ({layer_name}); ground truth dashed green", fontsize=10)
    return fig


def plot_topk_per_layer(image, gt_boxes, per_model_layers: Mapping[str, Sequence[tuple]], k: int = 20,
                        size=None, panel: float = 2.6) -> Figure:
    """One image, rows = models, columns = decoder layers; each panel the top-k query boxes.

    per_model_layers: {model name: [(boxes [Q, 4], scores [Q]) per decoder layer]}.
    """
    names = list(per_model_layers)
    n_layers = max(len(v) for v in per_model_layers.values())
    fig, axes = new_figure(len(names), n_layers, (panel, panel), extra_height=0.4)
    for r, name in enumerate(names):
        for l in range(n_layers):
            ax = axes[r, l]
            if l >= len(per_model_layers[name]):
                ax.set_visible(False)
                continue
            boxes, scores = per_model_layers[name][l]
            plot_candidates(ax, image, boxes, scores, gt_boxes, k=k, color=scheme_color(name), size=size,
                            title=f"{name}: layer {l + 1}")
    fig.suptitle(f"Top-{k} query boxes per decoder layer; ground truth dashed green", fontsize=10)
    return fig


# ---------------------------------------------------------------- training curves
def _layer_name(layer: Optional[int]) -> str:
    if layer is None:
        return "all layers"
    if layer == -1:
        return "final layer"
    return f"layer {layer + 1}" if layer >= 0 else f"layer {layer} from the end"


def _smooth(ys: Sequence[float], window: int) -> list[float]:
    if window <= 1 or len(ys) < 3:
        return list(ys)
    out, acc = [], []
    for y in ys:
        acc.append(y)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_loss_curves(histories: Mapping[str, RunLike], branches: Sequence[str] = ("o2o", "o2m"),
                     terms: Sequence[str] = LOSS_TERMS, layer: Optional[int] = -1, x: str = "step",
                     smooth: int = 5, title: Optional[str] = None) -> Figure:
    """Loss curves per branch (rows) and term (columns), one line per model (colour and line style
    of its scheme: the o2o baseline dashed, MS-DETR solid, as in the paper's Fig. 2).

    histories: {scheme name: a `runs.Run` (or its metrics.jsonl records)}. Losses are the
    weighted terms the engine logs. layer: decoder layer (-1 = final, None = all layers summed).
    x: "step" (logged steps) or "epoch" (epoch means). For `hybrid` / `group` the o2m row holds
    their extra queries' (one-to-one) losses.
    """
    fig, axes = new_figure(len(branches), len(terms), (3.6, 2.7), extra_height=0.4)
    for r, branch in enumerate(branches):
        for c, term in enumerate(terms):
            ax = axes[r, c]
            drawn = 0
            for name, run in histories.items():
                xs, ys = as_run(run, name).loss(branch, term, layer, per=x)
                if not xs:
                    continue
                ax.plot(xs, _smooth(ys, smooth if x == "step" else 1), color=scheme_color(name),
                        linestyle=_scheme_style(name), linewidth=1.6, label=name,
                        marker="o" if len(xs) < 8 else None, markersize=3)
                drawn += 1
            where = _layer_name(layer) if branch != "enc" else ""
            ax.set_title(f"{branch} branch: {LOSS_TITLES.get(term, term)}" + (f" ({where})" if where else ""),
                         fontsize=9, color=BRANCH_COLORS.get(branch, "black"))
            ax.set_xlabel(x)
            ax.grid(alpha=0.3)
            if drawn:
                _legend(ax)
            else:
                ax.text(0.5, 0.5, f"no {branch} losses\n(o2o-only models have none)", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8, color="grey")
    fig.suptitle(title or "Training losses per branch: o2o baseline dashed, MS-DETR solid", fontsize=10)
    return fig


def plot_total_loss(run: RunLike, name: str = "ms", smooth: int = 5) -> Figure:
    """The summed training loss and the final layer's o2o / o2m terms of one run, per step."""
    run = as_run(run, name)
    fig, axes = new_figure(1, 2, (4.6, 3.0), extra_height=0.3)
    xs, ys = run.loss()
    axes[0, 0].plot(xs, _smooth(ys, smooth), color=scheme_color(name), marker="o" if len(xs) < 8 else None)
    axes[0, 0].set_title("total loss (all branches and layers)", fontsize=9)
    for branch in ("o2o", "o2m"):
        for term, style in (("cls", "-"), ("giou", ":")):
            bx, by = run.loss(branch, term, -1)
            if bx:
                axes[0, 1].plot(bx, _smooth(by, smooth), color=BRANCH_COLORS[branch], linestyle=style,
                                label=f"{branch} {term}")
    axes[0, 1].set_title("final decoder layer, per branch", fontsize=9)
    _legend(axes[0, 1])
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training of {scheme_label(name)}", fontsize=10)
    return fig


def plot_ap_curves(histories: Mapping[str, RunLike], metrics: Sequence[str] = ("AP", "AP50")) -> Figure:
    """COCO AP (x100) of the final decoder layer per epoch, one line per model ({name: `runs.Run`
    or its records})."""
    fig, axes = new_figure(1, len(metrics), (4.2, 3.0), extra_height=0.3)
    for ax, metric in zip(axes[0], metrics):
        for name, run in histories.items():
            ev = as_run(run, name).epoch_evals()
            if ev:
                ax.plot([e for e, _ in ev], [100 * m["final"][metric] for _, m in ev], color=scheme_color(name),
                        linestyle=_scheme_style(name), marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} (x100)")
        ax.set_title(f"val {metric} per epoch (final decoder layer)", fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        _legend(ax, loc="lower right")
    fig.suptitle("Convergence: AP per epoch", fontsize=10)
    return fig


def plot_ap_per_layer(evals: Mapping[str, Mapping], metrics: Sequence[str] = ("AP", "AP50")) -> Figure:
    """AP (x100) of every decoder layer's o2o predictions, one line per model.

    evals: {name: an `evaluation.evaluate` result (or eval.json) with "layers" and "layer_ids"}."""
    fig, axes = new_figure(1, len(metrics), (4.2, 3.0), extra_height=0.3)
    for ax, metric in zip(axes[0], metrics):
        for name, ev in evals.items():
            layers = ev.get("layers") or []
            ids = ev.get("layer_ids") or list(range(len(layers)))
            ax.plot([i + 1 for i in ids], [100 * m[metric] for m in layers], color=scheme_color(name),
                    linestyle=_scheme_style(name), marker="o", label=name)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel(f"{metric} (x100)")
        ax.set_title(f"{metric} per decoder layer", fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        _legend(ax, loc="lower right")
    fig.suptitle("Every decoder layer is a detector: AP per layer", fontsize=10)
    return fig


def plot_backend_timings(rows: Sequence[Mapping], keys: Sequence[str] = ("forward_ms", "backward_ms")) -> Figure:
    """Bar chart of deformable-attention backend timings: rows [{"backend", "forward_ms", ...}]."""
    fig, axes = new_figure(1, 1, (5.5, 3.0), extra_height=0.3)
    ax = axes[0, 0]
    names = [r["backend"] for r in rows]
    width = 0.8 / max(len(keys), 1)
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c")
    for i, key in enumerate(keys):
        vals = [r.get(key) if r.get(key) is not None else float("nan") for r in rows]
        ax.bar([j + i * width for j in range(len(rows))], vals, width, label=key.replace("_ms", " (ms)"),
               color=colors[i % len(colors)])
    ax.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(rows))])
    ax.set_xticklabels(names)
    ax.set_ylabel("milliseconds per call")
    ax.grid(alpha=0.3, axis="y")
    _legend(ax, loc="upper left")
    ax.set_title("ms_deform_attn backends: time per call (lower is better)", fontsize=9)
    return fig


def recolor_by_scheme(fig: Figure) -> Figure:
    """Give every line whose label is a scheme name ("o2o", "ms", ...) that scheme's colour and
    line style, and redraw the legends: for figures drawn elsewhere (e.g.
    `analysis.plot_candidate_quality`) so they match the rest of the suite."""
    for ax in fig.axes:
        changed = False
        for line in ax.get_lines():
            label = line.get_label()
            if label in SCHEME_COLORS:
                line.set_color(SCHEME_COLORS[label])
                line.set_markerfacecolor(SCHEME_COLORS[label])
                line.set_markeredgecolor(SCHEME_COLORS[label])
                line.set_linestyle(SCHEME_STYLES[label])
                changed = True
        if changed and ax.get_legend() is not None:
            ax.legend(fontsize=ax.get_legend().get_texts()[0].get_fontsize() if ax.get_legend().get_texts() else 7)
    return fig


# ---------------------------------------------------------------- tables and files
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


def fig_to_png(fig: Figure, dpi: float = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def save_thumbnail(fig: Figure, path: Union[str, Path], width: int = 600) -> Path:
    """Save `fig` as a PNG exactly `width` pixels wide (README thumbnails); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dpi = width / fig.get_figwidth()
    fig.savefig(path, format="png", dpi=dpi, facecolor="white")
    return path
