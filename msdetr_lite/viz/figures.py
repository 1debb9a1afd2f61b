"""Figure and image primitives the plotting modules share: bare Figures, images, boxes, files.

Every function of `msdetr_lite.viz` builds a bare `matplotlib.figure.Figure` (`new_figure`: not
registered with pyplot, so scripts and widget callbacks leak nothing); a notebook cell that ends
with the figure shows it (after `%matplotlib inline`), `fig_to_png` gives its bytes,
`save_figure` writes it, `save_thumbnail` writes a PNG of a fixed width for the README.

Boxes follow docs/design.md: model outputs and targets are normalised (cx, cy, w, h); drawing
functions take them as such together with the image they belong to and convert to pixels
(`boxes_to_pixels`). Drawn box patches carry a `gid` ("gt", "o2o", "o2m", "candidate",
"detection", ...) so tests and callers can count what a figure shows (`count_boxes`).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from torchvision.ops import box_convert


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
               fontsize: float = 9) -> list:
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


def add_legend(ax, handles=None, **kw):
    """The suite's small legend on `ax` (of `handles`, else of the labelled artists; none if there are none)."""
    kw.setdefault("fontsize", 9)
    kw.setdefault("loc", "upper right")
    kw.setdefault("framealpha", 0.8)
    if handles is not None:
        return ax.legend(handles=handles, **kw)
    if ax.get_legend_handles_labels()[0]:
        return ax.legend(**kw)
    return None


def box_handle(color, label, linestyle="-", linewidth=2.0):
    """A legend entry for boxes drawn in `color` / `linestyle`."""
    return Line2D([], [], color=color, linestyle=linestyle, linewidth=linewidth, label=label)


def class_name(class_names, label) -> str:
    """The name of class `label` (its number when there are no names or it is out of range)."""
    if class_names is None:
        return str(int(label))
    return str(class_names[int(label)]) if int(label) < len(class_names) else str(int(label))


# ---------------------------------------------------------------- files
def fig_to_png(fig: Figure, dpi: float = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def save_thumbnail(fig: Figure, path: Union[str, Path], width: int = 1000) -> Path:
    """Save `fig` as a PNG exactly `width` pixels wide (README thumbnails: at least 800 px, so
    that the labels stay readable); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dpi = width / fig.get_figwidth()
    fig.savefig(path, format="png", dpi=dpi, facecolor="white")
    return path


def save_figure(fig: Figure, path: Union[str, Path], dpi: float = 110) -> Path:
    """Write `fig` to `path` (format from the suffix: png, pdf, svg), creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path
