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
# # 03 · Mixed supervision in training: o2o vs MS-DETR vs H-DETR vs Group-DETR
#
# Four ways to train the same tiny Deformable-DETR++ on the embedded data, side by side:
#
# | scheme | extra supervision | extra queries in training |
# |---|---|---|
# | `o2o` | none (the baseline) | none |
# | `ms` (MS-DETR) | one-to-many on the **same** queries, tapped inside each decoder layer | none |
# | `hybrid` (H-DETR) | a second query set trained one-to-one on the GTs repeated K times | 150 |
# | `group` (Group-DETR) | more query groups, each trained one-to-one | 2 x 100 |
#
# All schemes infer with the primary 100 queries only. The paper's claims to look for:
# o2m on the primary decoder converges faster (lower o2o losses, higher AP per epoch, better
# early decoder layers) at a few percent extra cost, far less than extra queries cost.
#
# On a CPU with minutes per model the schedules are tiny (the paper trains 12 epochs on COCO
# with 8 GPUs), so read the trends, not the decimals; `MSDETR_FAST=1` trains a handful of
# steps just to exercise the code.

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

SCHEMES = ["o2o", "ms", "hybrid", "group"]

# %% [markdown]
# ## 1. Train (or reuse) the four runs
# Each run trains once (a subprocess per run, so its peak memory is its own) and is cached
# under `runs/notebooks/`; rerunning the notebook only reads the results.

# %%
for scheme in SCHEMES:
    t0 = time.perf_counter()
    zoo.get_checkpoint(scheme, fast=FAST)
    print(f"{scheme}: ready ({time.perf_counter() - t0:.0f} s)")
histories = {s: zoo.history(s, fast=FAST) for s in SCHEMES}
evals = {s: zoo.evaluation(s, fast=FAST) for s in SCHEMES}

# %% [markdown]
# ## 2. Loss curves per branch
# Top row: the o2o losses of the final decoder layer, the ones that matter at inference.
# Bottom row: the o2m branch (MS-DETR: the same queries at the o2m tap; H-DETR and
# Group-DETR: their extra queries). As in the paper's Fig. 2, the baseline is dashed and
# MS-DETR solid. The logged terms are already weighted (cls x1 / x2, L1 x5, GIoU x2).
#
# Do not read the o2m row like the o2o row: the o2m terms are summed over *all* o2m pairs and
# divided by the number of GTs. As the queries improve, more of them pass tau, each GT gets
# up to K pairs instead of one, and the o2m losses can *rise* while the detector gets better.

# %%
fig = viz.plot_loss_curves(histories, branches=("o2o", "o2m"), x="step", smooth=1 if FAST else 5)
if SAVE_THUMBNAIL:
    viz.save_thumbnail(fig, THUMBNAILS / "03_mixed_supervision_training.png")
fig

# %%
viz.plot_loss_curves({s: histories[s] for s in ("o2o", "ms") if s in histories}, branches=("o2o",),
                     x="epoch", title="Fig. 2 style: o2o losses per epoch, baseline dashed vs MS-DETR solid")

# %% [markdown]
# ## 3. AP per epoch and per decoder layer
# Every decoder layer has its own o2o head, so every layer is a detector. Mixed supervision
# is expected to help the early layers most: their candidates are trained by K positives
# per object instead of one.

# %%
viz.plot_ap_curves(histories)

# %%
viz.plot_ap_per_layer(evals)

# %% [markdown]
# ## 4. What it costs: time and memory
# Median seconds per training step (after warm-up) and the training process's peak memory
# (resident set size on CPU, CUDA max allocated on a GPU), measured by the engine. On a shared
# CPU the times are noisy; what matters is the ratio to the baseline. The paper's point:
# MS-DETR adds a few percent (one more set of head evaluations and a matcher), H-DETR and
# Group-DETR pay for their extra queries in every decoder layer.

# %%
rows = zoo.efficiency_rows(SCHEMES, fast=FAST)
base = next((r for r in rows if r["scheme"] == "o2o"), rows[0])
for r in rows:
    if r["s / step (median)"] and base["s / step (median)"]:
        r["time vs o2o"] = f"{r['s / step (median)'] / base['s / step (median)']:.2f}x"
    r["memory vs o2o"] = f"{r['peak memory (MiB)'] / max(base['peak memory (MiB)'], 1):.2f}x"
display(Markdown(viz.markdown_table(rows)))

# %% [markdown]
# For reference, the paper (ResNet-50, 12 epochs, COCO val2017): Deformable-DETR++ 47.0 AP,
# H-DETR 48.7, MS-DETR 48.8 with 300 queries (50.0 with 900), at a small fraction of
# H-DETR's extra training cost.
