"""Images with boxes: dataset samples with their ground truth, and detections (one image, or a
grid of models x images)."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch
from matplotlib.figure import Figure

from .figures import add_legend, box_handle, boxes_to_pixels, class_name, draw_boxes, new_figure, show_image
from .palette import GT_COLOR, O2O_COLOR, scheme_color


def _show_sample(ax, dataset, idx: int, class_names=None, texts: bool = True, linewidth: float = 1.6) -> int:
    """Image `idx` of `dataset` with its ground-truth boxes (and class names) on `ax`; returns the box count."""
    image, target = dataset[idx]
    size = target["size"].tolist()
    show_image(ax, image, size=size)
    names = [class_name(class_names, l) for l in target["labels"].tolist()] if texts else None
    draw_boxes(ax, boxes_to_pixels(target["boxes"], size), GT_COLOR, gid="gt", texts=names, linewidth=linewidth)
    return len(target["labels"])


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
        n = _show_sample(ax, dataset, idx, class_names)
        ax.set_title(f"image {idx}: {n} objects", fontsize=10)
    fig.suptitle("The data: images with their ground-truth boxes (green)")
    return fig


def plot_dataset_rows(datasets: Mapping[str, object], indices: Sequence[int] = (0, 1, 2, 3),
                      panel: float = 2.0) -> Figure:
    """One row per dataset ({row name: dataset}): the same `indices` of each, with their
    ground-truth boxes (no class names: crowded images stay readable)."""
    indices = list(indices)
    fig, axes = new_figure(len(datasets), len(indices), (panel, panel), extra_height=0.3)
    for row, (name, dataset) in zip(axes, datasets.items()):
        for ax, idx in zip(row, indices):
            n = _show_sample(ax, dataset, idx, texts=False, linewidth=0.8)
            ax.set_title(f"{n} objects", fontsize=8)
        row[0].set_ylabel(name, fontsize=10)
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
        handles.append(box_handle(GT_COLOR, f"ground truth ({len(gt_boxes)})", "--"))
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
    handles.append(box_handle(color, f"detections, score >= {score_thresh:.2f}{top} ({int(keep.sum())})"))
    add_legend(ax, handles, loc="lower right")
    ax.set_title(title or f"{int(keep.sum())} detections above {score_thresh:.2f}", fontsize=10)
    return fig


def plot_detection_grid(models: Mapping[str, torch.nn.Module], dataset, indices: Sequence[int] = (0, 1, 2, 3),
                        score_thresh: float = 0.3, max_dets: int = 20, min_shown: int = 3, device="cpu",
                        panel: float = 3.2) -> Figure:
    """Rows: models ({name: model in eval mode}, drawn in their scheme's colour); columns: dataset
    images. Each panel shows the detections with score >= score_thresh (at most max_dets; a
    weak model that reaches none shows its best `min_shown` anyway) and the GT dashed green."""
    from msdetr_lite.data import collate
    from msdetr_lite.models import postprocess

    indices = [i for i in indices if i < len(dataset)]
    fig, axes = new_figure(len(models), len(indices), (panel, panel), extra_height=0.4)
    names = getattr(dataset, "class_names", None)
    for col, idx in enumerate(indices):
        image, target = dataset[idx]
        images, masks, _ = collate([(image, target)])
        for row, (model_name, model) in enumerate(models.items()):
            with torch.no_grad():
                outputs = model(images.to(device), masks.to(device))
            det = {k: v.cpu() for k, v in postprocess(outputs, target["size"][None].to(device), k=max_dets)[0].items()}
            n_above = int((det["scores"] >= score_thresh).sum())
            thresh, note = score_thresh, f"{n_above} dets"
            if n_above == 0:                      # a weak model: show its best few anyway
                thresh, note = 0.0, f"top-{min_shown}, all < {score_thresh}"
            ax = axes[row, col]
            plot_detections(image, det, gt_boxes=target["boxes"], class_names=names, score_thresh=thresh,
                            size=target["size"].tolist(), ax=ax, color=scheme_color(model_name),
                            max_dets=max_dets if n_above else min_shown,
                            title=f"image {int(target['image_id'])}: {note}")
            if col == 0:
                ax.set_ylabel(model_name)
    fig.suptitle(f"detections with score >= {score_thresh} (ground truth dashed green)", fontsize=10)
    return fig
