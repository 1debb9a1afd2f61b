"""One-to-one vs one-to-many assignment: the match-score matrix S and the matched query boxes."""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .figures import add_legend, box_handle, boxes_to_pixels, class_name, draw_boxes, show_image
from .palette import GT_COLOR, O2M_COLOR, O2O_COLOR


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
    if len(cols) * G <= 48:                   # a small S (the toy of notebook 01): write every value
        for (g, c), v in zip(((g, c) for g in range(G) for c in range(len(cols))), S[:, cols].flatten().tolist()):
            ax.text(c, g + 0.32, f"{v:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if v > 0.6 else "white", zorder=6)
    if tau is not None:
        gs, qs = torch.nonzero(S[:, cols] >= tau, as_tuple=True)
        for g, c in zip(gs.tolist(), qs.tolist()):
            ax.add_patch(Rectangle((c - 0.5, g - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=0.6, zorder=2))
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([str(q) for q in cols], fontsize=9, rotation=90)
    ax.set_xlabel(f"query id ({len(cols)} of {Q} shown)", fontsize=9)
    ylabels = [f"GT {g}" + (f" {class_name(class_names, gt_labels[g])}" if gt_labels is not None else "")
               for g in range(G)]
    ax.set_yticks(range(G))
    ax.set_yticklabels(ylabels, fontsize=9)
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
        ax.figure.colorbar(im, ax=ax, fraction=0.04, pad=0.01).set_label("S", fontsize=9)
    if handles:
        ax.legend(handles=handles, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3,
                  frameon=False)
    return cols


def plot_assignment(image, assignment: Mapping, class_names=None, size=None, max_queries: int = 40) -> Figure:
    """The o2o and o2m assignments of one image and decoder layer, side by side with S.

    assignment: the dict of `msdetr_lite.lab.samples.compute_assignment` (GT boxes, predicted
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
    handles = [box_handle(GT_COLOR, f"ground truth ({len(gt)})", "--"),
               box_handle(O2O_COLOR, f"o2o match, 1 per GT ({len(q1)})"),
               box_handle(O2M_COLOR, f"o2m matches, <= K per GT ({len(q2m)})")]
    add_legend(ax_img, handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=1, frameon=False)
    ax_img.set_title(f"decoder layer {a['layer'] + 1}: o2o (Hungarian) vs o2m (top-K)", fontsize=10)
    plot_score_matrix(ax_s, a["scores"], o2o=a["o2o"], o2m=a["o2m"], candidates=a.get("candidates"),
                      tau=a["tau"], gt_labels=a.get("gt_labels"), class_names=class_names, max_queries=max_queries)
    per_gt = torch.bincount(torch.as_tensor(g2m).long(), minlength=len(gt)).tolist() if len(gt) else []
    cap = f", cap {a['max_pos_fraction']:.2f}" if a.get("max_pos_fraction", 1.0) < 1.0 else ", no cap"
    fig.suptitle(f"K={a['k']}, tau={a['tau']:.2f}, alpha={a['alpha']:.2f}{cap}: {len(q2m)} o2m pairs, "
                 f"{int(a['positive'].sum())} positive queries (S >= tau, or a GT's best)\n"
                 f"o2m pairs per GT: {per_gt}" + (f"   [{a['note']}]" if a.get("note") else ""), fontsize=10)
    return fig
