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
# # 02 · Multi-scale deformable attention
#
# **The question.** Where in the image does a decoder query look, at which scale, and what does
# training change about it? The pictures come first (section 1: one query, then every query's
# weight per feature level, at initialisation and trained); the formula is here for reference:
#
# Every decoder query attends to the image through **deformable cross-attention**
# (Deformable DETR): instead of comparing itself with all H·W feature-map positions, each
# query predicts, per head *m*, level *l* and point *p*, a small **offset** from its
# **reference box** and a **weight**, samples the feature map bilinearly there and sums:
#
# $$\mathrm{out}(q) = \sum_{m=1}^{M} W_m \sum_{l=1}^{L} \sum_{p=1}^{P} A_{mlp}(q)\; V_l\big(r_q + \Delta_{mlp}(q)\big),
#   \qquad \sum_{l,p} A_{mlp}(q) = 1 \text{ per head } m$$
#
# with $r_q$ the query's reference point, $\Delta$ the predicted offsets, $A$ the predicted
# weights (a softmax over levels and points), $V_l$ the value map of level $l$ sampled
# bilinearly and $W_m$ the output projection of head $m$.
#
# With box references the offsets are relative to the box (at most half its size). 8 heads x
# 4 levels x 4 points = 128 samples per query, whatever the image size. This notebook shows
# them on the trained model, then compares the three implementations of the sampling op.

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

IMAGE = 0                               # validation image of the static figures
BENCH_REPEATS = 2 if FAST else 10       # timing repetitions per backend

# %%
display(Markdown(report.fast_notice(FAST) or "Full mode: the zoo's trained MS-DETR."))

# %%
from msdetr_lite.data import build_dataset

model, run_cfg = zoo.load_model("ms", fast=FAST, quiet=True)
val_ds = build_dataset(run_cfg.data, "val")
image, target = val_ds[IMAGE]
out = widgets.run_model(model, image, attention=True, aux=False)
att = out["attention"][-1]
print("sampling_locations", tuple(att["sampling_locations"].shape), "= [batch, queries, heads, levels, points, xy]")
print("attention_weights ", tuple(att["attention_weights"].shape))
print("feature levels (H, W):", out["spatial_shapes"].tolist())

# %% [markdown]
# ## 1. One query's view
# The most confident query of the last decoder layer: its reference box (the previous
# layer's refined box, dashed pink), its prediction (blue), its sampling points coloured by
# feature level (yellow = stride 8, fine; purple = stride 64, coarse), sized by weight; and
# on the right the attention mass those weights put on the image.

# %%
q = int(widgets.query_order(out)[0])
qa = widgets.query_attention(out, q, layer=-1)
fig = viz.plot_deformable_attention(image, qa["sampling_locations"], qa["attention_weights"],
                                    ref_box=qa["reference"], pred_box=qa["box"], size=target["size"].tolist(),
                                    title=f"query {q}: {val_ds.class_names[qa['label']]} {qa['score']:.2f}, last decoder layer")
if SAVE_THUMBNAIL:
    viz.save_thumbnail(fig, THUMBNAILS / "02_deformable_attention.png")
fig

# %% [markdown]
# The same query through the decoder: the reference box is refined layer by layer and the
# sampling points follow it.

# %%
per_layer = [widgets.query_attention(out, q, layer=l) for l in range(len(out["o2o"]))]
viz.plot_attention_layers(image, per_layer, size=target["size"].tolist(),
                          title=f"query {q} through the decoder layers")

# %% [markdown]
# **Which feature levels does the model read?** The legend of the first figure gives the
# weight per level of one query. Below, the same for every query of this image, layer by layer,
# at initialisation and after training, and, for comparison, the encoder's self-attention from
# the tokens of the finest level. The text under the figure reads its numbers.

# %%
import statistics

from msdetr_lite.lab import readings, samples

init_model, _ = zoo.load_model("ms", fast=FAST, epoch=0, quiet=True)
levels = {"init (epoch 0)": samples.attention_levels(init_model, image), "trained": samples.attention_levels(model, image)}
sides = [float((b[2] * t["size"][1] * b[3] * t["size"][0]).sqrt()) for t in (val_ds[i][1] for i in range(min(50, len(val_ds))))
         for b in t["boxes"]]
object_px = statistics.median(sides) if sides else None
display(viz.plot_level_shares(levels))
display(Markdown(("(Fast mode: a 2-step model has barely moved from its initialisation.) " if FAST else "")
                 + (f"A typical object here is {object_px:.0f} px wide (median square root of the GT areas, "
                    f"{len(sides)} objects). " if object_px else "")
                 + readings.describe_levels(*levels.values(), object_px=object_px)))

# %% [markdown]
# ## 2. Explore
# Pick a query by score rank (0 = the most confident), a decoder layer, a head (or all) and a
# training checkpoint (`init` = the initialisation, as in 01 and 04).
# Low-ranked queries usually sit on background or duplicate a better one.

# %%
panel = widgets.attention_panel(dict(zoo.list_checkpoints("ms", fast=FAST)), val_ds, indices=range(N_IMAGES))
panel

# %% [markdown]
# For a reader of the rendered page (the panel needs a running kernel): the most confident query
# at the first and the last decoder layer, trained and at its initialisation.

# %%
last = panel.controls["layer"].max
labels = list(panel.controls["checkpoint"].options) if "checkpoint" in panel.controls else []
views = [{"layer": 1, "query": 0}, {"layer": last, "query": 0}]
views += [{**v, "checkpoint": labels[0]} for v in views] if len(labels) > 1 else []
panel.small_multiples(views)

# %% [markdown]
# ## 3. Three backends, one op
# `msdetr_lite.ops.ms_deform_attn(..., backend=...)` has three implementations behind one
# signature:
#
# * `torch`: `F.grid_sample` per level, the readable reference (any device, autograd for free);
# * `numba`: hand-written CPU kernels (forward and backward);
# * `cuda`: our CUDA extension, built on first use (GPU only).
#
# They must agree to float32 rounding, in the output and in all three gradients. Timings
# are for the shapes of this model's decoder on 128-px images (2 images x 100 queries);
# the first call includes numba's compilation (or the CUDA build).

# %%
from msdetr_lite import ops

backends = ops.available_backends("cpu")
n_heads = run_cfg.model.nheads
shape_kw = dict(n_heads=n_heads, head_dim=run_cfg.model.d_model // n_heads,
                n_levels=run_cfg.model.num_feature_levels, n_points=run_cfg.model.n_points,
                n_queries=run_cfg.model.num_queries)
rows = widgets.compare_backends(backends, repeats=BENCH_REPEATS, **shape_kw)
if torch.cuda.is_available():
    rows += widgets.compare_backends(ops.available_backends("cuda"), repeats=BENCH_REPEATS, device="cuda", **shape_kw)
if FAST:
    display(Markdown(f"**Fast mode: {BENCH_REPEATS} repetitions per backend on a shared CPU; the times below are "
                     "not meaningful, only the agreement columns are.** `bench/kernels.py` measures them properly."))
display(Markdown(viz.markdown_table(rows)))
viz.plot_backend_timings([r for r in rows if "forward_ms" in r])

# %% [markdown]
# And the whole model, on one image, with each CPU backend swapped in:

# %%
display(Markdown(viz.markdown_table(widgets.model_backend_agreement(model, image, backends), floatfmt=".2g")))

# %% [markdown]
# ## Check yourself
# A query of this model samples 8 heads x 4 levels x 4 points. How many feature-map values
# does one deformable cross-attention read per query, and how does that change if the image
# grows from 128 to 800 pixels a side? What would plain (dense) cross-attention read?
#
# <details><summary>Answer</summary>
#
# 128 sampling points, each a bilinear read of 4 neighbours: 512 values per head channel,
# whatever the image size. Dense attention compares the query with every position of every
# level: about (128/8)^2 + (128/16)^2 + ... = 340 positions at 128 px, about 13 000 at 800 px
# (it grows with the image area); that cost, in the encoder, is what made the original DETR
# slow to train at high resolution.
# </details>
