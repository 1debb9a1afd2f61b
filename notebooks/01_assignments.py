# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · One-to-one vs one-to-many assignment
#
# Training a DETR means deciding, for every image, **which query learns from which
# ground-truth box (GT)**. Two matchers, both without gradients, one image at a time:
#
# * **one-to-one (o2o)**: Hungarian matching on
#   `cost = 2 · focal_class_cost + 5 · L1 + 2 · (−GIoU)`; every GT gets exactly one query,
#   all other queries learn "no object". The model learns to predict each object *once*.
# * **one-to-many (o2m)**, MS-DETR's matcher, with K = 6, tau = 0.4, alpha = 0.3:
#   1. score every (GT, query) pair: `S[g, q] = alpha · p(q, class_g) + (1 − alpha) · IoU(q, g)`;
#   2. a query is *positive* if its best GT scores `S ≥ tau`;
#   3. each GT's best query is positive too;
#   4. at most 25 % of the queries stay positive (a random subset);
#   5. a GT with `c_g` positives gets the top `min(c_g, K)` queries of its row of S;
#   6. a query paired with two GTs takes its class target from the better pair.
#
# Here we run both on the real outputs of the MS-DETR model trained in `00_tour`.

# %%
# %matplotlib inline
import os
import sys
import time
from pathlib import Path

import torch
from IPython.display import Markdown, display

import msdetr_lite
from msdetr_lite import viz, widgets, zoo

torch.set_num_threads(zoo.default_threads())    # one thread per process on a small shared CPU
THUMBNAILS = zoo.PROJECT_ROOT / "docs" / "images"

# %% tags=["parameters"]
# Parameters (papermill can override them). FAST: env MSDETR_FAST=1, as in CI: tiny step
# counts and few images, so every cell runs in seconds; the pictures are then of an almost
# untrained model. Leave it unset for the real (short, CPU-sized) schedules.
FAST = zoo.fast_mode()
N_IMAGES = 4 if FAST else 16            # validation images offered by the widgets
SAVE_THUMBNAIL = os.environ.get("MSDETR_THUMBNAILS") == "1"   # write docs/images/*.png

IMAGE = 0                               # validation image of the walkthrough
LAYER = -1                              # decoder layer (-1 = last)

# %% [markdown]
# ## 1. The model and its training checkpoints
# The zoo keeps a snapshot per epoch (`init` = the initialisation), so we can watch the
# assignment change as the queries learn.

# %%
from msdetr_lite.data import build_dataset

checkpoints = zoo.list_checkpoints("ms", fast=FAST)
model, run_cfg = zoo.load_model("ms", fast=FAST, quiet=True)
val_ds = build_dataset(run_cfg.data, "val")
print("checkpoints:", [label for label, _ in checkpoints])
print(val_ds)

# %% [markdown]
# ## 2. Both matchers, step by step, on one image
# In eval mode the model skips the training-only o2m branch; `aux_branches=True` (what
# `widgets.run_model` passes) computes it anyway, so we see exactly what the loss sees.

# %%
from msdetr_lite import matching

image, target = val_ds[IMAGE]
out = widgets.run_model(model, image)
o2m_logits, o2m_boxes = widgets.branch_predictions(out, "o2m", LAYER)
o2o_logits, o2o_boxes = widgets.branch_predictions(out, "o2o", LAYER)
labels, gt_boxes = target["labels"], target["boxes"]
m = run_cfg.matcher

S = matching.match_scores(o2m_logits, o2m_boxes, labels, gt_boxes, alpha=m.alpha)          # step 1
best_gt, positive = matching.select_positives(S, tau=m.tau, max_pos=int(m.max_pos_fraction * len(S[0])),
                                              generator=torch.Generator().manual_seed(0))  # steps 2-4
q_o2m, g_o2m = matching.topk_per_gt(S, best_gt, positive, k=m.k)                           # step 5
q_cls, g_cls = matching.o2m_class_targets(q_o2m, g_o2m, S)                                 # step 6
q_o2o, g_o2o = matching.one_to_one(o2o_logits, o2o_boxes, labels, gt_boxes)

print(f"S: {tuple(S.shape)} (GTs x queries), {int(positive.sum())} positive queries, "
      f"{len(q_o2m)} o2m pairs ({len(q_cls)} distinct queries), {len(q_o2o)} o2o pairs")
rows = []
for g in range(len(labels)):
    mine = g_o2m == g
    rows.append({"GT": g, "class": val_ds.class_names[int(labels[g])],
                 "o2o query": int(q_o2o[g_o2o == g][0]) if (g_o2o == g).any() else None,
                 "positives c_g": int((best_gt[positive] == g).sum()),
                 "o2m queries (S)": ", ".join(f"{int(q)} ({float(S[g, q]):.2f})" for q in q_o2m[mine]),
                 "best S": round(float(S[g].max()), 3)})
display(Markdown(viz.markdown_table(rows)))

# %%
a = widgets.compute_assignment(out, target, layer=LAYER, k=m.k, tau=m.tau, alpha=m.alpha, matcher=m)
fig = viz.plot_assignment(image, a, class_names=val_ds.class_names, size=target["size"].tolist())
if SAVE_THUMBNAIL:
    viz.save_thumbnail(fig, THUMBNAILS / "01_assignments.png")
fig

# %% [markdown]
# ## 3. Explore
# * **K**: at most K o2m queries per GT. A GT only gets `min(c_g, K)`, so K matters once the
#   queries are good enough for several of them to pass tau (hollow circles: the row's
#   top-K that were *not* taken).
# * **tau**: the score a query needs to count as positive; lower it and more GTs reach K.
# * **alpha**: how much the class probability counts against the IoU in S.
# * **decoder layer** and **checkpoint**: early layers and early epochs have scattered,
#   low-scoring candidates; training concentrates several good queries on every object.

# %%
panel = widgets.assignment_panel(dict(checkpoints), val_ds, indices=range(N_IMAGES), matcher=run_cfg.matcher)
panel

# %% [markdown]
# How many o2m pairs does K buy on this image, per decoder layer?

# %%
ks = list(range(1, 13))
fig, axes = viz.new_figure(1, 1, (6.0, 3.2))
ax = axes[0, 0]
n_layers = len(out["o2o"])
for layer in range(n_layers):
    n_pairs = [len(widgets.compute_assignment(out, target, layer=layer, k=k, tau=m.tau, alpha=m.alpha)["o2m"][0])
               for k in ks]
    ax.plot(ks, n_pairs, marker="o", color=viz.O2M_COLOR, alpha=0.35 + 0.65 * (layer + 1) / n_layers,
            label=f"layer {layer + 1}")
ax.axhline(len(labels), color=viz.O2O_COLOR, linestyle="--", label="o2o: one per GT")
ax.set_xlabel("K")
ax.set_ylabel("positive (query, GT) pairs")
ax.set_title(f"image {IMAGE}: o2m positives vs K (tau = {m.tau})", fontsize=10)
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
fig

# %% [markdown]
# ## 4. Why o2m helps, and why inference stays o2o
# **Why it helps.** With o2o, each object trains one query as positive and pushes *all
# others* towards "no object", even those whose box is nearly as good. The o2m branch tells
# the top-K of them "you are right too": many more positive gradients per image, and the
# decoder's candidate boxes gather tightly around each object (notebook 04 measures it).
#
# **Why inference stays o2o.** The o2m branch is trained to fire several times per object:
# its output would need NMS. In MS-DETR the o2m tap sits *before* the self-attention of
# each layer, and the o2o branch at the end of the layer, after the self-attention has let
# the queries see each other and settle which one speaks for an object. At inference only
# the o2o output is used, so the detector stays NMS-free. The duplicate counts make it
# concrete: confident queries that land on a GT another, higher-scored query already
# claimed.

# %%
from msdetr_lite.analysis import candidate_quality
from msdetr_lite.data import collate

images, masks, targets = collate([val_ds[i] for i in range(min(N_IMAGES, len(val_ds)))])
with torch.no_grad():
    out_b = model.eval()(images, masks, aux_branches=True)
rows = []
for branch in ("o2o", "o2m"):
    for thresh in (0.1, 0.3):
        st = candidate_quality(out_b, targets, topk=20, score_thresh=thresh, branch=branch)["layers"][-1]
        rows.append({"branch": branch, "score threshold": thresh,
                     "duplicates / image": round(st["duplicates"], 2),
                     "queries with IoU>=0.5 per GT": round(st["num_iou50"], 2),
                     "recall@0.5 of top-20": round(st["recall50_topk"], 3)})
display(Markdown(viz.markdown_table(rows)))

# %% [markdown]
# The o2m branch has more well-placed queries per GT *and* more duplicates; the o2o branch
# keeps duplicates low. MS-DETR trains both on the same queries: the dense o2m signal
# improves the candidates, the o2o head turns them into one detection per object.
