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
# # 00 · A tour of msdetr_lite
#
# **MS-DETR** ("Efficient DETR Training with Mixed Supervision", CVPR 2024) trains the queries
# of a DETR detector with two kinds of supervision at once:
#
# * **one-to-one (o2o)**: Hungarian matching gives every ground-truth box (GT) exactly one
#   query. That is what makes DETR NMS-free, but one positive per object is a weak signal.
# * **one-to-many (o2m)**: every GT *also* gets its top-K best-matching queries as positives,
#   a dense signal that makes the candidate boxes better and training faster.
#
# The trick is *where*: the o2m loss sits on **the same queries of the same decoder**, tapped
# inside each decoder layer, so it costs almost nothing, and inference still uses the o2o
# output only (no NMS). This notebook walks through the project: install check, the data,
# the tiny model, a short training run, first detections, and where everything lives.
#
# Everything here runs on a laptop CPU with the embedded synthetic data. With `MSDETR_FAST=1`
# (as in CI) every training is two steps and every number below is meaningless; the cell
# after the parameters says which mode this run is in.

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

SCORE_THRESH = None                     # detections drawn: score at least this (None: as many
                                        # as the first image has objects, from the model's scores) ...
TOP_DETS = 10                           # ... and at most this many per image, best first

# %%
display(Markdown(report.fast_notice(FAST) or "Full mode: the models below are the zoo's trained ones."))

# %% [markdown]
# ## 1. Install check
# Versions, the device, and which backends of the multi-scale deformable attention
# (`msdetr_lite.ops.ms_deform_attn`) run here: `torch` (the readable reference) always,
# `numba` (CPU kernels) and `cuda` (our CUDA extension) where available.

# %%
import torchvision
from msdetr_lite import ops
from msdetr_lite.lab import relative          # paths as printed here: relative to the project root

rows = [
    {"item": "python", "value": sys.version.split()[0]},
    {"item": "torch", "value": torch.__version__},
    {"item": "torchvision", "value": torchvision.__version__},
    {"item": "msdetr_lite", "value": f"{msdetr_lite.__version__} ({relative(Path(msdetr_lite.__file__).parent)}/)"},
    {"item": "CUDA available", "value": torch.cuda.is_available()},
    {"item": "torch CPU threads", "value": torch.get_num_threads()},
    {"item": "deformable-attention backends (CPU)", "value": ", ".join(ops.available_backends("cpu"))},
    {"item": "fast mode (MSDETR_FAST)", "value": FAST},
]
display(Markdown(viz.markdown_table(rows)))

# %% [markdown]
# ## 2. The data
# The embedded dataset is synthetic but honest: 128-px images of four shapes (circle, square,
# triangle, cross) told apart by shape only, random colours and sizes, some objects close
# together or overlapping, textured backgrounds and distracting strokes. It is written in the
# **COCO layout** (`data/shapes/{train,val}/` + `annotations/instances_{split}.json`), so the
# very same code reads COCO itself (notebook 05). `zoo.ensure_data()` generates it on first
# use (about 10 s).
#
# A sample is `(image, target)`: the image is ImageNet-normalised `float [3, H, W]`, the
# target holds `labels` (contiguous 0..C-1) and `boxes` as **normalised (cx, cy, w, h)**.

# %%
from msdetr_lite.config import preset
from msdetr_lite.data import build_dataset

cfg = preset("tiny")
cfg.data.root = str(zoo.ensure_data())
train_ds = build_dataset(cfg.data, "train")
val_ds = build_dataset(cfg.data, "val")
print(train_ds)
print(val_ds)
print("classes:", train_ds.class_names)
image, target = val_ds[0]
print("image", tuple(image.shape), image.dtype)
print({k: (tuple(v.shape) if torch.is_tensor(v) and v.dim() else v) for k, v in target.items()})

# %%
viz.plot_samples(val_ds, range(8), ncols=4)

# %% [markdown]
# ## 3. The tiny model
# `preset("tiny")` is the paper's detector shrunk to CPU size: a ResNet-18 backbone, 3 encoder
# and 4 decoder layers of width 128, 100 queries, 4 feature levels (strides 8 to 64). It is
# **Deformable-DETR++**; three DETR terms, one sentence each:
#
# * **queries**: a fixed set of 100 slots, each a learned vector plus a reference box; every
#   decoder layer lets each query look at the image and at the other queries, and each query
#   finally predicts one box and its class scores (or "no object").
# * **two-stage proposals**: the encoder first scores every feature-map position as a box
#   proposal; the 100 best proposals give the queries their starting reference boxes, so the
#   decoder starts from likely objects instead of learned fixed positions.
# * **look-forward-twice**: each decoder layer refines the box of the layer before
#   (iterative refinement), and the loss on layer *l*'s box also trains layer *l - 1*'s
#   prediction it was refined from, so a layer learns from the box its successor makes of it.
#
# `model.supervision` switches the training scheme: `o2o` (the baseline), `ms` (MS-DETR),
# `hybrid` (H-DETR), `group` (Group-DETR).

# %%
from msdetr_lite.models import build_model

cfg.model.num_classes = train_ds.num_classes
model = build_model(cfg.model)
parts = [{"part": name, "parameters (M)": round(sum(p.numel() for p in m.parameters()) / 1e6, 3)}
         for name, m in model.named_children()]
parts.append({"part": "total", "parameters (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)})
display(Markdown(viz.markdown_table(parts)))
print({k: getattr(cfg.model, k) for k in ("backbone", "d_model", "num_encoder_layers", "num_decoder_layers",
                                          "num_queries", "supervision", "o2m_tap")})

# %% [markdown]
# In training mode the model returns, per decoder layer, the o2o predictions **and** the o2m
# predictions of the same 100 queries (tapped after the cross-attention, before the
# self-attention). The loss (`SetCriterion`) matches each branch its own way and sums
# focal + L1 + GIoU terms per branch and layer; their names say which is which.

# %%
from msdetr_lite.data import collate
from msdetr_lite.losses import SetCriterion

images, masks, targets = collate([train_ds[i] for i in range(2)])
model.train()
outputs = model(images, masks)

def shape_of(x):
    if torch.is_tensor(x):
        return tuple(x.shape)
    if isinstance(x, dict):
        return {k: shape_of(v) for k, v in x.items()}
    if isinstance(x, list):
        return f"{len(x)} x {shape_of(x[0])}"
    return x

for key, value in outputs.items():
    print(f"{key:15s}", shape_of(value))

criterion = SetCriterion(cfg.model.num_classes, cfg.loss, cfg.matcher, cfg.model.supervision,
                         cfg.model.num_queries, cfg.model.group_num)
losses = criterion(outputs, targets)
last = cfg.model.num_decoder_layers - 1
display(Markdown(viz.markdown_table([{"term": k, "value": round(float(v.detach()), 4)} for k, v in losses.items()
                                     if k.endswith(f"_{last}") or k.endswith("_enc") or k == "loss"])))

# %% [markdown]
# ## 4. A trained model
# `zoo.get_checkpoint("ms")` opens the MS-DETR model that ships with the repository (`weights/`,
# trained at `make demo`'s recipe; its checksum, configuration and outputs are checked against
# today's code first) and lays it out under `runs/notebooks/full/ms/`. Where nothing fitting ships
# (fast mode, changed model code) it trains one with `msdetr_lite.engine.train` in a subprocess,
# saying first what and for about how long; later notebooks reuse the run.

# %%
t0 = time.perf_counter()
ckpt = zoo.get_checkpoint("ms", fast=FAST)
print(f"checkpoint: {relative(ckpt)} ({time.perf_counter() - t0:.0f} s)")
viz.plot_total_loss(zoo.history("ms", fast=FAST), "ms")

# %%
from msdetr_lite.evaluation import format_metrics

ev = zoo.evaluation("ms", fast=FAST)
print("final layer:", format_metrics(ev["final"]))
for layer_id, metrics in zip(ev["layer_ids"], ev["layers"]):
    print(f"decoder layer {layer_id + 1}:", format_metrics(metrics, ("AP", "AP50", "AP75")))
aps = [100 * m["AP"] for m in ev["layers"]]
best = max(range(len(aps)), key=aps.__getitem__)
display(Markdown(
    ("(Fast mode: a 2-step model, the numbers mean nothing.) " if FAST else "")
    + f"This MS-DETR reaches AP {100 * ev['final']['AP']:.1f} (AP50 {100 * ev['final']['AP50']:.1f}) at its last "
    f"decoder layer after {zoo.history('ms', fast=FAST).epochs[-1]['epoch']} epochs; its best layer is layer "
    f"{best + 1} ({aps[best]:.1f}), its first layer {aps[0]:.1f}. Notebook 03 sets it against the o2o baseline."))

# %% [markdown]
# ## 5. First detections
# Inference uses the **o2o** predictions of the last decoder layer only: the top-100
# (query, class) pairs by score, no NMS. Move the sliders: image, score threshold and how
# many of the best to draw. The default threshold is read off the model's own scores (it
# keeps as many detections on the first image as that image has objects), because what a
# score means depends on how far the model trained.

# %%
model, run_cfg = zoo.load_model("ms", fast=FAST, quiet=True)
panel = widgets.detections_panel(model, val_ds, indices=range(N_IMAGES), score_thresh=SCORE_THRESH,
                                 top=TOP_DETS)
thresh = panel.values()["score"]
display(Markdown(f"Default score threshold here: **{thresh:.2f}** ({'a 2-step model: scores near the prior' if FAST else 'this model'}); "
                 f"top score on the first image: {float(widgets.run_model(model, val_ds[0][0], aux=False)['o2o'][-1]['logits'].sigmoid().max()):.2f}."))
panel

# %%
from msdetr_lite.models import postprocess

fig, axes = viz.new_figure(1, 3, (4.0, 4.0), extra_height=0.3)
for ax, i in zip(axes[0], range(3)):
    img, t = val_ds[i]
    dets = postprocess(widgets.run_model(model, img, aux=False), t["size"][None])[0]
    n_gt = len(t["labels"])
    viz.plot_detections(img, dets, gt_boxes=t["boxes"], class_names=val_ds.class_names, score_thresh=0.0,
                        max_dets=n_gt, size=t["size"].tolist(), ax=ax,
                        title=f"val image {i}: the {n_gt} best detections")
fig.suptitle("MS-DETR (tiny): as many detections as there are objects, best first (blue); "
             "ground truth dashed green", fontsize=10)
if SAVE_THUMBNAIL:
    viz.save_thumbnail(fig, THUMBNAILS / "00_tour.png")
fig

# %% [markdown]
# ## 6. Where everything lives
#
# | path | what |
# |---|---|
# | `msdetr_lite/config.py` | presets `tiny` / `r50`, `section.field=value` overrides |
# | `msdetr_lite/models/` | backbone, deformable encoder / decoder with the o2m tap, `build_model` |
# | `msdetr_lite/matching/` | `one_to_one` (Hungarian), `one_to_many` (MS-DETR's top-K), step by step; the batched path training uses |
# | `msdetr_lite/losses/` | `SetCriterion`: focal / L1 / GIoU per branch and decoder layer |
# | `msdetr_lite/ops.py`, `kernels/` | `ms_deform_attn` with torch / numba / CUDA backends |
# | `msdetr_lite/engine.py` | the training loop; beside it `optim.py`, `distributed.py` (DDP), `rundir.py`, `checkpoint.py` |
# | `msdetr_lite/regime.py` | the regime study: where MS-DETR beats o2o, NMS-free and with NMS |
# | `msdetr_lite/evaluation.py`, `analysis.py` | COCO AP per decoder layer, candidate quality |
# | `msdetr_lite/viz/` | drawing: every figure, one palette |
# | `msdetr_lite/lab/` | what the notebooks use: `zoo` (cached trained runs), `widgets` (interactive panels), `readings` (sentences from the numbers), the demo |
# | `msdetr_lite/runs.py` | reading a run folder: config, losses per step and epoch, evaluations |
# | `msdetr_lite/cli.py` | the `msdetr` command (`data`, `train`, `eval`, `compare`, `demo`) |
# | `runs/notebooks/` | the notebooks' trained runs (delete to retrain) |
#
# A run folder:

# %%
run = zoo.run_dir("ms", fast=FAST)
rows = [{"file": p.name, "size (MB)": round(p.stat().st_size / 1e6, 2)} for p in sorted(run.iterdir())
        if p.is_file() and not p.name.startswith(".")]
print(relative(run))
display(Markdown(viz.markdown_table(rows)))

# %% [markdown]
# ## Check yourself
# At inference this detector returns 100 (query, class) pairs per image and runs no NMS. What
# in training makes one query, and not five, fire on each object? And what would the
# detections look like if you ran inference on the **o2m** predictions instead?
#
# <details><summary>Answer</summary>
#
# The o2o loss: Hungarian matching gives each object exactly one positive query and teaches
# all other queries "no object", so the o2o head learns to fire once per object (the queries'
# self-attention lets them agree which one). The o2m head is trained with up to K = 6 positives
# per object: its output would put several confident boxes on every object, i.e. it would need
# NMS. That is why MS-DETR uses o2m in training only.
# </details>

# %% [markdown]
# **Next:** `01_assignments` (o2o vs o2m matching on these outputs), `02_deformable_attention`,
# `03_mixed_supervision_training` (o2o vs MS-DETR vs H-DETR vs Group-DETR),
# `04_candidate_quality` (the paper's Fig. 1), `05_train_on_coco` (the real workflow).
