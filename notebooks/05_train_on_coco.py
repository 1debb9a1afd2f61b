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
# # 05 · Training on COCO
#
# The tiny runs of the other notebooks use the very code path of the real thing. This
# notebook is the recipe for COCO 2017 with the paper's configuration (`r50` preset), and,
# in fast mode or without COCO at hand, runs the same commands on the embedded data.
#
# ## 1. Data layout
# The standard COCO 2017 layout, read with pycocotools:
#
# ```
# /path/to/coco/
#   train2017/            000000000009.jpg ...
#   val2017/              000000000139.jpg ...
#   annotations/
#     instances_train2017.json
#     instances_val2017.json
# ```
#
# Point `data.root` at it and name the splits: `data.train_split=train2017
# data.val_split=val2017`. Categories are mapped to contiguous labels (0..79) and back for
# COCOeval. The embedded `data/shapes` uses the same layout with splits `train` / `val`.

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

COCO_ROOT = None                        # e.g. "/data/coco": run on COCO (needs a GPU for the r50 preset)
PRESET = "tiny"                         # "r50" on COCO
OUTPUT_DIR = str(zoo.zoo_root() / ("fast" if FAST else "full") / "coco_recipe")

# %% [markdown]
# ## 2. The `r50` preset: the paper's configuration
# ResNet-50 (frozen BatchNorm), 6 + 6 layers of width 256, 300 queries, K = 6, tau = 0.4,
# alpha = 0.3, AdamW 2e-4 (backbone 2e-5), batch 16, 12 epochs with a 10x drop after 11.
# Where `tiny` differs:

# %%
import dataclasses
from msdetr_lite.config import preset

r50, tiny = preset("r50"), preset("tiny")
rows = []
for section in ("model", "matcher", "loss", "data", "train"):
    a, b = getattr(r50, section), getattr(tiny, section)
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        rows.append({"field": f"{section}.{f.name}", "r50": va, "tiny": vb if vb != va else "="})
display(Markdown(viz.markdown_table([r for r in rows if r["tiny"] != "="] +
                                    [r for r in rows if r["field"].startswith("matcher.")])))

# %% [markdown]
# ## 3. The commands
# **Pretrained backbone.** Nothing is downloaded: save torchvision's ImageNet ResNet-50 weights
# once (`torch.save(torchvision.models.resnet50(weights="IMAGENET1K_V1").state_dict(), "r50.pth")`
# on a machine with internet) and pass `model.pretrained=r50.pth`.
#
# **One GPU** (`train.batch_size` is the total batch; lower it and the lr together if memory is short):
# ```bash
# msdetr train --preset r50 data.root=/path/to/coco data.train_split=train2017 data.val_split=val2017 \
#     model.pretrained=r50.pth train.output_dir=runs/r50_ms
# # the o2o baseline, H-DETR, Group-DETR: add model.supervision=o2o | hybrid | group
# # bf16 autocast: train.amp=true; continue an interrupted run: the same command plus --resume
# ```
# **Several GPUs** (one process per GPU; the same batch 16 in total):
# ```bash
# torchrun --nproc_per_node 8 -m msdetr_lite train --preset r50 data.root=/path/to/coco \
#     data.train_split=train2017 data.val_split=val2017 model.pretrained=r50.pth train.output_dir=runs/r50_ms
# ```
# **Several nodes** (run on every node, `--node_rank` 0..N-1, node 0's address as rendezvous):
# ```bash
# torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr node0 --master_port 29500 \
#     -m msdetr_lite train --preset r50 data.root=/path/to/coco data.train_split=train2017 \
#     data.val_split=val2017 model.pretrained=r50.pth train.output_dir=runs/r50_ms
# ```
# **Evaluation** (COCOeval box AP of every decoder layer, candidate statistics):
# ```bash
# msdetr eval --checkpoint runs/r50_ms/final.pth data.root=/path/to/coco data.val_split=val2017
# msdetr compare runs/r50_ms runs/r50_o2o --out runs/compare
# ```
# A run folder holds `config.json`, `metrics.jsonl` (losses per step, AP per epoch),
# `checkpoint.pth` (resume), `final.pth` (weights + config) and `eval.json`.

# %% [markdown]
# ## 4. The same commands, here
# Without `COCO_ROOT` this trains the `tiny` preset on the embedded data for 40 steps (2 epochs
# of 20 and their evaluations: about a minute on a 2-core CPU; fast mode 2 steps), through the
# very CLI above (`python -m msdetr_lite` is `msdetr`). With `COCO_ROOT` it is the preset's full
# schedule: days on a CPU, hours on GPUs.

# %%
import shlex
import subprocess

from msdetr_lite.lab import relative          # the command runs in the project root: its paths are relative to it

if COCO_ROOT:
    data_args = [f"data.root={COCO_ROOT}", "data.train_split=train2017", "data.val_split=val2017"]
else:
    data_args = [f"data.root={relative(zoo.ensure_data())}"]
schedule = (["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=2", "data.max_images=4"] if FAST
            else ["train.epochs=2", "train.max_steps_per_epoch=20", "data.max_images=200"])
if COCO_ROOT and not FAST:
    schedule = []                       # the preset's full schedule
device = [] if torch.cuda.is_available() else ["train.device=cpu", "data.num_workers=0"]
# --overwrite: this cell retrains from scratch each time it runs (a folder that holds a run is
# otherwise left alone; --resume would continue it instead)
cmd = [sys.executable, "-m", "msdetr_lite", "train", "--preset", PRESET, "--no-progress", "--overwrite", *data_args,
       *schedule, *device, f"train.output_dir={relative(OUTPUT_DIR)}"]
print("$ msdetr", shlex.join(cmd[3:]))
t0 = time.perf_counter()
env = dict(os.environ, OMP_NUM_THREADS=str(zoo.default_threads()))
result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=zoo.PROJECT_ROOT)
print(result.stdout[-3000:], result.stderr[-3000:])
assert result.returncode == 0, f"training failed with exit code {result.returncode}"
print(f"trained in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## 5. Evaluation with COCOeval, in Python
# `msdetr eval` calls `msdetr_lite.evaluation.evaluate`: the model's o2o predictions become
# COCO result dicts (`[x, y, w, h]` in the original image's pixels, dataset category ids),
# pycocotools' `COCOeval` scores them, once per decoder layer.

# %%
from torch.utils.data import DataLoader
from msdetr_lite.data import build_dataset, collate
from msdetr_lite.engine import load_model_from_checkpoint
from msdetr_lite.evaluation import evaluate, format_metrics
from msdetr_lite.models import postprocess
from msdetr_lite.evaluation import detections_to_coco

model, run_cfg = load_model_from_checkpoint(Path(OUTPUT_DIR) / "final.pth", device="cpu")
val_ds = build_dataset(run_cfg.data, "val")
loader = DataLoader(val_ds, batch_size=run_cfg.train.batch_size, collate_fn=collate)   # as in training
ev = evaluate(model, loader, "cpu", layers="all", progress=False, per_class=True, nms_iou=0.7)
print(f"{ev['num_images']} images")
if FAST:
    display(Markdown(report.FAST_NOTICE))
for layer_id, metrics in zip(ev["layer_ids"], ev["layers"]):
    print(f"decoder layer {layer_id + 1}:", format_metrics(metrics))
print("per class AP (final layer):", {val_ds.class_names[val_ds.cat_id_to_label[c]]: round(100 * ap, 1)
                                      for c, ap in ev["final"]["per_class"].items()})

img, t = val_ds[0]
dets = postprocess(widgets.run_model(model, img, aux=False), t["orig_size"][None], k=3)[0]
print("COCO results format:", detections_to_coco(dets, t["image_id"], val_ds.label_to_cat_id))
display(Markdown(viz.markdown_table(report.nms_rows({"this run": ev}))))
display(Markdown("`evaluate(..., nms_iou=0.7)` also scores every layer after class-wise NMS (the authors' "
                 "`--nms_iou_threshold`; `msdetr eval --nms 0.7`): the detector runs NMS-free, the difference "
                 "says how much AP its duplicates cost."))

# %%
from msdetr_lite.lab import readings
from msdetr_lite.runs import load_run

title, caption = readings.plumbing_caption(ev, load_run(OUTPUT_DIR))
fig = viz.plot_ap_per_layer({"this run": ev}, ylim=(0, 100), title=title)
display(Markdown(caption))
if SAVE_THUMBNAIL:
    viz.save_thumbnail(fig, THUMBNAILS / "05_train_on_coco.png")
fig

# %% [markdown]
# ## Check yourself
# You train `r50` on 8 GPUs with `train.batch_size=16`. How many images does each GPU see per
# step, and which two numbers would you report to compare MS-DETR with the baseline honestly?
#
# <details><summary>Answer</summary>
#
# `train.batch_size` is the total batch, so 2 images per GPU (the engine divides it by the
# world size). Report the final layer's AP NMS-free, as the detector runs, and the same AP with
# NMS (`msdetr eval --nms 0.7`): the first is the headline, the gap between the two says how
# much the model loses to duplicates. Over at least two seeds, with the spread.
# </details>
