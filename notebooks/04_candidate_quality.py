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
# # 04 · Candidate quality: the paper's Fig. 1
#
# **The question.** Does mixed supervision give the decoder better candidates, boxes that sit
# tighter on more of the objects, and what do its duplicates do to them?
#
# MS-DETR's explanation of *why* mixed supervision works: the one-to-many loss trains
# several queries per object to be good, so the decoder's **candidates**, the boxes of its
# top-scoring queries, gather tightly around the objects, layer after layer. The o2o
# baseline keeps them scattered: only one query per object was ever told it was right.
#
# **A candidate**, here and in every notebook of this suite, is one of a decoder layer's
# **top 20 queries by score**: the boxes the paper's Fig. 1 draws. The same statistics over
# *all* 100 queries, whatever their score, are a second view; where the two disagree, this
# notebook says so and why.
#
# We draw the candidates of both models with the runs trained in notebook 03 (or trained here
# on first use), each coloured by the object it hits so that duplicates can be counted, then
# measure them over the validation set with `msdetr_lite.analysis`.

# %%
# %matplotlib inline
import os
import sys
import time
from pathlib import Path

import torch
from IPython.display import Markdown, display

import msdetr_lite
from msdetr_lite import report, viz, widgets, zoo

torch.set_num_threads(zoo.default_threads())    # one thread per process on a small shared CPU
THUMBNAILS = zoo.thumbnail_dir()              # docs/images, or $MSDETR_THUMBNAIL_DIR

# %% tags=["parameters"]
# Parameters (papermill can override them). FAST: env MSDETR_FAST=1, as in CI: tiny step
# counts and few images, so every cell runs in seconds; the pictures are then of an almost
# untrained model. Leave it unset for the real (short, CPU-sized) schedules.
FAST = zoo.fast_mode()
N_IMAGES = 4 if FAST else 16            # validation images offered by the widgets
SAVE_THUMBNAIL = os.environ.get("MSDETR_THUMBNAILS") == "1"   # write THUMBNAILS/NN_name.png

TOP_K = 20                              # candidates drawn per image (the paper's Fig. 1: 20)
FIG_IMAGES = [0, 1, 2]                  # validation images of the static figure
STAT_BATCHES = 1 if FAST else 25        # validation batches for the statistics (8 images each)
NMS_IOU = 0.7                           # the NMS-aware numbers: class-wise NMS at this IoU

# %%
display(Markdown(report.fast_notice(FAST) or "Full mode: the zoo's trained o2o and MS-DETR models."))

# %%
from msdetr_lite.data import build_dataset

models = {}
for scheme in ("o2o", "ms"):
    models[scheme], run_cfg = zoo.load_model(scheme, fast=FAST)
val_ds = build_dataset(run_cfg.data, "val")
print(val_ds)

# %% [markdown]
# ## 1. The candidates, o2o baseline vs MS-DETR (last decoder layer)
# Each ground-truth object is dashed in its own colour and labelled with how many candidates hit
# it (IoU >= 0.5, more than with any other object); the candidates that hit it are drawn solid in
# the same colour, the ones on no object thin grey. More than one candidate on an object is a
# duplicate *among the candidates*: it takes a place in the top 20 that a candidate for another
# object could have had. Objects no candidate hits say "missed", and each panel's title lists them.

# %%
samples = [val_ds[i] for i in FIG_IMAGES if i < len(val_ds)]
predictions = {name: [widgets.topk_candidates(widgets.run_model(m, img, aux=False), layer=-1)
                      for img, _ in samples] for name, m in models.items()}
fig = viz.plot_topk_comparison([img for img, _ in samples], [t["boxes"] for _, t in samples], predictions,
                               k=TOP_K, sizes=[t["size"].tolist() for _, t in samples], models_as_rows=True,
                               by_gt=True)
if SAVE_THUMBNAIL:
    viz.save_thumbnail(fig, THUMBNAILS / "04_candidate_quality.png")
fig

# %% [markdown]
# ## 2. Layer by layer
# The same image through the four decoder layers: each layer refines the boxes of the one
# before. The paper's claim to check: MS-DETR's candidates tighten earlier.

# %%
img, t = samples[0]
per_layer = {}
for name, m in models.items():
    o = widgets.run_model(m, img, aux=False)
    per_layer[name] = [widgets.topk_candidates(o, layer=l) for l in range(len(o["o2o"]))]
viz.plot_topk_per_layer(img, t["boxes"], per_layer, k=TOP_K, size=t["size"].tolist(), by_gt=True)

# %% [markdown]
# ## 3. Explore
# Image, decoder layer, model (or both side by side), how many top queries to draw, and the
# training checkpoint of both models (`init` = the initialisation, as in 01 and 02).

# %%
checkpoints = {s: dict(zoo.list_checkpoints(s, fast=FAST)) for s in models}
panel = widgets.candidates_panel(checkpoints, val_ds, indices=range(N_IMAGES), k=TOP_K)
panel

# %% [markdown]
# For a reader of the rendered page (the panel needs a running kernel): both models' top
# candidates at the first and the last decoder layer.

# %%
last = panel.controls["layer"].max
panel.small_multiples([{"layer": 1}, {"layer": last}], columns=1)

# %% [markdown]
# ## 4. Candidate quality per decoder layer, over the validation set
# `analysis.candidate_quality_over_loader` measures, class-agnostically and per layer:
#
# * **the candidates** (top 20): the best IoU they reach per GT, the fraction of GTs they find at
#   IoU 0.5 / 0.75, and how many of them land on an object another candidate already found;
# * **all queries**: the best IoU any query reaches per GT, how many queries overlap each GT at
#   IoU 0.5 / 0.7;
# * **the detector's duplicates**: confident queries (score > 0.3) on an object a higher-scored
#   query already claimed, what the o2o head must learn to suppress.
#
# The text under the table compares the two models in both views, from the table's last layer.

# %%
from torch.utils.data import DataLoader
from msdetr_lite import analysis
from msdetr_lite.data import collate

loader = DataLoader(val_ds, batch_size=8, collate_fn=collate)
stats = {name: analysis.candidate_quality_over_loader(m, loader, "cpu", topk=TOP_K, max_batches=STAT_BATCHES,
                                                      progress=False)
         for name, m in models.items()}
viz.plot_candidate_quality(stats)

# %%
rows = [{"model": viz.scheme_label(name), "decoder layer": l + 1,
         **{analysis.STAT_TITLES.get(k, k): round(v, 3) for k, v in layer.items()}}
        for name, st in stats.items() for l, layer in enumerate(st["layers"])]
print(f"{stats['ms']['num_images']} images, {stats['ms']['num_gt']} GT boxes")
display(Markdown(viz.markdown_table(rows)))


from msdetr_lite.lab import readings

display(Markdown(readings.describe_candidates(stats, fast=FAST)))

# %% [markdown]
# ## 5. What the candidates are worth: AP without and with NMS
# Better candidates help only if the o2o head keeps one per object. Scoring the final
# predictions with and without class-wise NMS (IoU 0.7) on the whole validation split says
# how much AP each model loses to its duplicates.

# %%
nms_evals = {s: zoo.nms_evaluation(s, fast=FAST, nms_iou=NMS_IOU) for s in ("o2o", "ms")}
display(Markdown(viz.markdown_table(report.nms_rows(nms_evals))))
display(Markdown(report.describe_nms_comparison(nms_evals, "ms", "o2o", fast=FAST)))

# %% [markdown]
# ## Check yourself
# `num_iou50` (queries with IoU >= 0.5 per GT) and `duplicates` both count queries on an
# object. Why can a model be good at the first and bad at the second, and which one does the
# o2m loss push up directly?
#
# <details><summary>Answer</summary>
#
# `num_iou50` counts every query with a good box, whatever its score; `duplicates` counts only
# the *confident* extra ones. The o2m loss trains up to K queries per object to have a good box
# **and** a high score, so it pushes both up; keeping the extra ones' scores low is the o2o
# loss's job (one positive per object, "no object" for the rest). A model can have many good
# boxes per object (good for the candidates) and still let several of them score high.
# </details>
