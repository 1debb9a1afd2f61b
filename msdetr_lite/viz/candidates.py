"""Candidate quality, the paper's Fig. 1: the top-k query boxes of models side by side, per
decoder layer (faded by rank, or coloured by the object they hit so that duplicates can be
counted), and the `msdetr_lite.analysis` statistics per layer."""
from __future__ import annotations

import math
import textwrap
from typing import Mapping, Optional, Sequence, Union

import torch
from matplotlib.figure import Figure

from ..analysis import STAT_NAMES, STAT_TITLES, candidate_hits   # named and computed where they are measured
from .figures import add_legend, box_handle, boxes_to_pixels, draw_boxes, new_figure, show_image
from .palette import GT_COLOR, O2O_COLOR, object_color, scheme_color, scheme_label, scheme_style


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
        add_legend(ax, [box_handle(GT_COLOR, "ground truth", "--"),
                     box_handle(color, f"top-{k} queries (fainter = lower score)")], loc="lower right")
    return patches


def plot_candidate_hits(ax, image, boxes, scores, gt_boxes, k: int = 20, title: Optional[str] = None, size=None,
                        min_iou: float = 0.5, legend: bool = False) -> dict:
    """The top-k candidates (`analysis.candidate_hits`) drawn so that duplicates can be counted:
    each GT dashed in its own colour with its count ("GT 2: 3"), the candidates that hit it (IoU
    >= min_iou with it, more than with any other GT) solid in the same colour, candidates on no
    object thin grey; GTs no candidate hits say "missed", and the title lists them. Returns the hits."""
    arr = show_image(ax, image, size=size)
    hw = arr.shape[:2]
    hits = candidate_hits(scores, boxes, gt_boxes, topk=k, min_iou=min_iou)
    gt_px = boxes_to_pixels(gt_boxes, hw)
    top_px = boxes_to_pixels(torch.as_tensor(boxes)[hits["queries"]], hw)
    lost = hits["gt"] < 0
    if lost.any():
        draw_boxes(ax, top_px[lost], "#9a9a9a", gid="candidate", linewidth=0.8, alpha=0.7, linestyle=":")
    for g, n in enumerate(hits["per_gt"].tolist()):
        color = object_color(g)
        draw_boxes(ax, gt_px[g:g + 1], color, gid="gt", linestyle="--", linewidth=1.6,
                   texts=[f"GT {g}: {n}" if n else f"GT {g}: missed"], fontsize=9)
        mine = hits["gt"] == g
        if mine.any():
            draw_boxes(ax, top_px[mine], color, gid="candidate", linewidth=1.3)
    on = int((~lost).sum())
    missed = (f"missed {len(hits['missed'])} of {len(gt_px)} GTs: " + ", ".join(map(str, hits["missed"]))
              if hits["missed"] else "no GT missed")
    ax.set_title((f"{title}\n" if title else "") + f"{on} of top {len(lost)} on an object, {hits['extra']} extra\n"
                 + "\n".join(textwrap.wrap(missed, 40)), fontsize=9)
    if legend:
        add_legend(ax, [box_handle("black", "GT (dashed) and the candidates that hit it: one colour", "--"),
                        box_handle("#9a9a9a", "candidate on no object", ":")], loc="lower right")
    return hits


def plot_topk_comparison(images: Sequence, gt_boxes: Sequence, predictions: Mapping[str, Sequence[tuple]],
                         k: int = 20, sizes: Optional[Sequence] = None, layer_name: str = "last decoder layer",
                         panel: float = 3.2, models_as_rows: bool = False, by_gt: bool = False) -> Figure:
    """The paper's Fig. 1: rows = images, columns = models (or the transpose with
    `models_as_rows`); each panel the top-k query boxes of one model on one image.

    predictions: {model name: [(boxes [Q, 4] cxcywh, scores [Q]) per image]}.
    by_gt: draw each panel with `plot_candidate_hits` (coloured by the GT they hit, counted, misses
    listed) instead of in the model's colour faded by rank.
    """
    names = list(predictions)
    shape = (len(names), len(images)) if models_as_rows else (len(images), len(names))
    fig, axes = new_figure(*shape, (panel, panel), extra_height=0.4)
    for r, image in enumerate(images):
        for c, name in enumerate(names):
            boxes, scores = predictions[name][r]
            ax = axes[c, r] if models_as_rows else axes[r, c]
            _candidate_panel(ax, image, boxes, scores, gt_boxes[r], k, name, sizes[r] if sizes is not None else None,
                             scheme_label(name) if (models_as_rows or r == 0) else None, by_gt)
    fig.suptitle(f"Top-{k} query boxes ({layer_name}); " + _GT_KEY[by_gt], fontsize=10)
    return fig


_GT_KEY = {False: "ground truth dashed green",
           True: "each GT (dashed) and the candidates that hit it in one colour; grey: on no object"}


def _candidate_panel(ax, image, boxes, scores, gt_boxes, k, name, size, title, by_gt):
    if by_gt:
        plot_candidate_hits(ax, image, boxes, scores, gt_boxes, k=k, size=size, title=title)
    else:
        plot_candidates(ax, image, boxes, scores, gt_boxes, k=k, color=scheme_color(name), size=size, title=title)


def plot_topk_per_layer(image, gt_boxes, per_model_layers: Mapping[str, Sequence[tuple]], k: int = 20,
                        size=None, panel: float = 2.6, by_gt: bool = False) -> Figure:
    """One image, rows = models, columns = decoder layers; each panel the top-k query boxes.

    per_model_layers: {model name: [(boxes [Q, 4], scores [Q]) per decoder layer]}.
    by_gt: as in `plot_topk_comparison`.
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
            _candidate_panel(ax, image, boxes, scores, gt_boxes, k, name, size, f"{name}: layer {l + 1}", by_gt)
    fig.suptitle(f"Top-{k} query boxes per decoder layer; " + _GT_KEY[by_gt], fontsize=10)
    return fig


def plot_candidate_quality(stats_by_model: Mapping[str, Union[dict, Sequence[dict]]],
                           stats: Optional[Sequence[str]] = None,
                           title: Optional[str] = "Candidate quality per decoder layer") -> Figure:
    """One panel per statistic of `analysis.candidate_quality`, x = decoder layer (1-based), one
    line per model in its scheme's colour and style.

    stats_by_model: {model name: a `candidate_quality` result (or its "layers" list)}.
    stats: which statistics (default: all of `analysis.STAT_NAMES`).
    """
    if not stats_by_model:
        raise ValueError("stats_by_model is empty")
    stats = STAT_NAMES if stats is None else tuple(stats)
    unknown = [s for s in stats if s not in STAT_NAMES]
    if unknown:
        raise ValueError(f"unknown statistic(s) {unknown}; known: {list(STAT_NAMES)}")
    ncols = min(4, len(stats))
    nrows = math.ceil(len(stats) / ncols)
    fig, axes = new_figure(nrows, ncols, (3.4, 2.8), extra_height=0.4 if title else 0.0)
    for ax, name in zip(axes.flat, stats):
        for model_name, res in stats_by_model.items():
            layers = res["layers"] if isinstance(res, Mapping) else list(res)
            ax.plot(range(1, len(layers) + 1), [l[name] for l in layers], marker="o", label=str(model_name),
                    color=scheme_color(str(model_name)), linestyle=scheme_style(str(model_name)))
        ax.set_title(STAT_TITLES[name], fontsize=9)
        ax.set_xlabel("decoder layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        add_legend(ax, loc="best")
    for ax in axes.flat[len(stats):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig
