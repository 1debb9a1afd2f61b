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
# All schemes infer with the primary 100 queries only. The paper claims that o2m on the
# primary decoder gives better candidates and faster convergence (lower o2o losses, higher AP
# per epoch) at a few percent extra cost, far less than extra queries cost. This notebook
# measures each claim on this data and says in generated text what the numbers show, also
# where MS-DETR loses.
#
# On a CPU with minutes per model the schedules are tiny (the paper trains 12 epochs on COCO
# with 8 GPUs) and one seed moves AP by a few points; `MSDETR_FAST=1` trains two steps just to
# exercise the code.

# %%
# %matplotlib inline
import os
import sys
import time
from pathlib import Path

import torch
from IPython.display import Markdown, display

import msdetr_lite
from msdetr_lite import regime, report, viz, widgets, zoo

torch.set_num_threads(zoo.default_threads())    # one thread per process on a small shared CPU
THUMBNAILS = zoo.thumbnail_dir()              # docs/images, or $MSDETR_THUMBNAIL_DIR

# %% tags=["parameters"]
# Parameters (papermill can override them). FAST: env MSDETR_FAST=1, as in CI: tiny step
# counts and few images, so every cell runs in seconds; the pictures are then of an almost
# untrained model. Leave it unset for the real (short, CPU-sized) schedules.
FAST = zoo.fast_mode()
N_IMAGES = 4 if FAST else 16            # validation images offered by the widgets
SAVE_THUMBNAIL = os.environ.get("MSDETR_THUMBNAILS") == "1"   # write THUMBNAILS/NN_name.png

SCHEMES = ["o2o", "ms", "hybrid", "group"]
O2M_TAP = "after_ca"                    # where ms's o2m branch reads the decoder layer (Fig. 4):
                                        # "after_ca" (MS-DETR), "after_sa" or "output"
NMS_IOU = 0.7                           # the NMS-aware numbers: class-wise NMS at this IoU

# %%
display(Markdown(report.fast_notice(FAST) or "Full mode: the zoo's trained models (`make zoo`)."))
# a tap other than the default trains its own ms run (a separate zoo folder)
OVERRIDES = {"ms": [] if O2M_TAP == "after_ca" else [f"model.o2m_tap={O2M_TAP}"]}

# %% [markdown]
# ## 0. Where the o2m branch taps the decoder (the paper's Fig. 4)
# A decoder layer is self-attention (the queries look at each other), cross-attention (each
# query looks at the image) and an FFN. MS-DETR reads its o2m predictions *inside* the layer;
# only the o2o stream goes on to the next layer. The released model reorders the layer to
# cross-attention first and taps right after it (`after_ca`): the o2m heads see each query
# before self-attention has let the queries compare notes, the o2o heads after. Change
# `O2M_TAP` in the parameters cell to train and compare another placement.

# %%
viz.plot_tap_placements(O2M_TAP)

# %% [markdown]
# ## 1. The four runs
# This notebook reads training records only (metrics per step and per epoch, evaluations), so it
# opens on the records that ship for all four schemes (`weights/`). A scheme with extra overrides,
# or fast mode, trains once (a subprocess per run, saying first what and for how long) and is
# cached under `runs/notebooks/`; rerunning the notebook only reads the results.

# %%
for scheme in SCHEMES:
    t0 = time.perf_counter()
    zoo.ensure_run(scheme, fast=FAST, overrides=OVERRIDES.get(scheme, ()))
    print(f"{scheme}: ready ({time.perf_counter() - t0:.0f} s)")
histories = {s: zoo.history(s, fast=FAST, overrides=OVERRIDES.get(s, ())) for s in SCHEMES}
evals = {s: zoo.evaluation(s, fast=FAST, overrides=OVERRIDES.get(s, ())) for s in SCHEMES}

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
viz.plot_loss_curves(histories, branches=("o2o", "o2m"), x="step", smooth=1 if FAST else 5)

# %% [markdown]
# **The paper's Fig. 2**: the o2o classification and box losses per epoch, the baseline dashed
# and MS-DETR solid. These are the losses of the branch used at inference, weighted and
# normalised the same way in both models, so they can be compared directly.

# %%
fig2 = viz.plot_o2o_losses({s: histories[s] for s in ("o2o", "ms")})
fig2


# %%
def final_epoch_loss(run, term):
    xs, ys = run.loss("o2o", term, -1, per="epoch")
    return ys[-1] if ys else float("nan")


parts = []
for term, title in (("cls", "classification"), ("bbox", "L1"), ("giou", "GIoU")):
    m, b = final_epoch_loss(histories["ms"], term), final_epoch_loss(histories["o2o"], term)
    parts.append(f"{title} {m:.3f} vs {b:.3f} ({'lower' if m < b else 'higher'} for MS-DETR)")
display(Markdown(("(Fast mode: 2-step models, these numbers mean nothing.) " if FAST else "")
                 + "Final-epoch o2o losses of the last decoder layer, MS-DETR vs baseline: " + "; ".join(parts) + "."))

# %% [markdown]
# ## 3. Convergence per decoder layer
# Every decoder layer has its own o2o head, so every layer is a detector, and every run is
# scored after every epoch. The paper expects mixed supervision to speed up convergence and to
# help the early layers most: their candidates are trained by K positives per object instead
# of one. The figure shows both axes at once, a decoder layer x epoch grid for the baseline and
# for MS-DETR, with their difference on the right (green: MS-DETR better), three times:
#
# * **AP NMS-free**: the detector as it runs;
# * **AP with NMS**: the same predictions after class-wise NMS (IoU 0.7), which removes the
#   duplicates for free, so it scores the candidates (section 4 explains the pair);
# * **duplicates per image**: confident queries (score > 0.3) on an object a higher-scored
#   query already claimed, what NMS removes and the o2o branch must learn to suppress.
#
# The sentences under the figure are read off the same grids.

# %%
from msdetr_lite.lab import readings

convergence = {s: histories[s].convergence() for s in ("o2o", "ms")}
display(viz.plot_convergence(convergence))
display(Markdown(readings.describe_convergence(convergence, fast=FAST)))

# %% [markdown]
# All four schemes: the final layer's AP after every epoch, and every layer's AP at the end.

# %%
viz.plot_ap_curves(histories)

# %%
viz.plot_ap_per_layer(evals)

# %% [markdown]
# ## 4. NMS-free and with NMS: candidates vs de-duplication
# The detector is meant to run without NMS: its o2o branch must put one confident query on
# each object. Scoring the same predictions again after class-wise NMS (IoU 0.7, the authors'
# `--nms_iou_threshold` option) separates the two halves of MS-DETR's claim: AP *with* NMS
# measures the candidates (duplicates removed for free), AP *without* NMS also charges every
# duplicate the o2o branch failed to suppress. Duplicates: confident queries (score > 0.3) on
# an object a higher-scored query already claimed, per image.

# %%
nms_evals = {s: zoo.nms_evaluation(s, fast=FAST, nms_iou=NMS_IOU, overrides=OVERRIDES.get(s, ())) for s in SCHEMES}
display(Markdown(viz.markdown_table(report.nms_rows(nms_evals))))
display(Markdown(report.describe_nms_comparison(nms_evals, "ms", "o2o", fast=FAST)))
fig = viz.plot_nms_ap_per_layer({s: nms_evals[s] for s in ("o2o", "ms")})
if SAVE_THUMBNAIL:                      # the notebook's main finding: candidates vs de-duplication
    viz.save_thumbnail(fig, THUMBNAILS / "03_mixed_supervision_training.png")
fig

# %% [markdown]
# ## 5. Where does mixed supervision win? The regime map
# The question: MS-DETR's candidates are better here (the NMS numbers above), so why does it not
# *also* win NMS-free, as on COCO (+1.8 AP)? The regime study (`bench/regime.py`, `make regime`)
# changes one thing of this recipe at a time — where and how the o2m branch supervises, the
# schedule, the decoder, the queries, the data — trains o2o and MS-DETR with two seeds each,
# and scores every run with and without NMS. Each row of the map is one change; the dot is
# MS-DETR's AP minus o2o's, paired by seed (whiskers: the seeds' range). A filled dot right of
# the dashed line would be the paper's effect: MS-DETR ahead NMS-free by at least 2 AP. A hollow
# dot far right of a filled one means better candidates whose duplicates survive.

# %%
study = report.load_regime()
if study is None:
    display(Markdown(f"**No regime study yet**: `{report.REGIME_JSON.relative_to(zoo.PROJECT_ROOT)}` is missing. "
                     "Run `make regime` (several hours on a 2-core CPU, resumable: finished runs are kept), "
                     "then rerun this cell."))
else:
    rows = regime.map_rows(study["summary"])
    display(Markdown(f"From `{Path(study['path']).relative_to(zoo.PROJECT_ROOT)}`, measured on "
                     f"{study.get('machine', 'a machine the file does not name')}. " + regime.describe_map(rows)))
    display(viz.plot_regime_map(rows, study["nms_iou"]))
    switched_off = report.describe_o2m_switched_off(study)
    if switched_off:
        display(Markdown(switched_off))

# %% [markdown]
# ### Why: does the decoder separate an object's candidates?
# A DETR without NMS must learn, in its decoder's self-attention, to let one query per object
# score high and push the others down. The mechanism probe (`msdetr_lite.probe`) looks inside
# the trained checkpoints of every epoch, without training: for each object, its *candidates*
# are the queries whose box overlaps it at IoU >= 0.5, ranked by their score for the object's
# class. (a) If the decoder de-duplicates, the **second-best** candidate's score falls through
# the layers while the best one stays. (b) If self-attention is what separates them, the two
# best candidates' content vectors are less alike after it than before. (c) When the duplicates
# appear, epoch by epoch. (d) What the o2m matcher sees at the final layer: how often the 25%
# positive cap binds, how often o2o's Hungarian pick is also o2m's top-1 query, how well placed
# the weakest o2m target is.

# %%
probes = (study or {}).get("probe", {}).get("cells", {})
if not probes:
    display(Markdown("This study has no probe yet: `python bench/regime.py --report-only --probe demo` "
                     "runs it on the demo cell's epoch snapshots (a minute per snapshot)."))
for cell, by_scheme in probes.items():
    label = (regime.CELLS[cell].label if cell in regime.CELLS else "") or "the demo's recipe"
    display(Markdown(f"**{label}** (`{cell}`, {study['probe']['max_images']} val images per snapshot)"))
    display(viz.plot_probe(by_scheme))
    display(Markdown(regime.describe_probe(by_scheme)))

# %% [markdown]
# Is it a matter of time? The paper trains 12 COCO epochs with the lr dropped tenfold after 11;
# the demo trains 4 with the drop after 3. Below, the same differences to o2o after *every*
# epoch (each run evaluates after each epoch), for the demo's cell and, where the study has run
# it, for `ep8` (8 epochs, the drop after 6). Vertical lines: where each cell's lr drops. Right:
# the duplicates per image behind the NMS-free numbers. The sentences under the figure read its
# numbers: in which epochs MS-DETR leads NMS-free, the duplicates, and what each scheme gains
# once the lr drops.

# %%
if study is not None:
    gaps = report.regime_epoch_gaps(study)
    if gaps:
        display(report.regime_epochs_figure(study))
        for cell in gaps:
            display(Markdown(report.describe_epoch_gap(study, cell)))
    else:
        display(Markdown("This study's JSON has no per-epoch records (it was written before `bench/regime.py` kept "
                         "them): `python bench/regime.py --report-only` rewrites it from the run folders."))
    display(Markdown(report.describe_schedule(study) or
                     "No `ep8` runs in this study yet: `python bench/regime.py --cells ep8 --schemes o2o ms` runs "
                     "them (four 8-epoch trainings)."))

# %% [markdown]
# ## 6. What it costs: time and memory
# The paper's point: MS-DETR adds a few percent (one more set of head evaluations and a
# matcher), H-DETR and Group-DETR pay for their extra queries in every decoder layer. Step
# times come from `bench/overhead.py` (`make bench`: each scheme in a fresh process, the same
# fixed batch, median after warm-up), not from these notebook trainings.

# %%
costs = report.benchmark_costs()
if costs is not None:
    display(Markdown(costs["caption"]))
    display(Markdown(viz.markdown_table(costs["rows"])))
else:
    display(Markdown("**No benchmark file**: neither `bench/results/overhead.json` (yours: `python bench/overhead.py` "
                     "writes it) nor the committed `docs/results/overhead.json` is there. Below, the zoo trainings' own logs"
                     + (": **not meaningful in fast mode** (two steps, all warm-up), shown only so the cell runs."
                        if FAST else " (one run per scheme on a shared CPU: read the ratios, not the decimals).")))
    rows = zoo.efficiency_rows(SCHEMES, fast=FAST)
    if FAST:
        rows = [{k: v for k, v in r.items() if k in ("scheme", "trainable params (M)", "peak memory (MiB)")}
                for r in rows]
    display(Markdown(viz.markdown_table(rows)))

# %% [markdown]
# For reference, the paper (ResNet-50, 12 epochs, COCO val2017): Deformable-DETR++ 47.0 AP,
# H-DETR 48.7, MS-DETR 48.8 with 300 queries (50.0 with 900), at a small fraction of
# H-DETR's extra training cost. Its regime (6 decoder layers of width 256, 300 queries, 12
# COCO epochs) is far from this notebook's; section 5 shows which knobs move the result here.

# %% [markdown]
# ## Check yourself
# Suppose a model's AP with NMS is well above the baseline's but its NMS-free AP is below.
# Which half of MS-DETR's claim holds for it, which fails, and which number in section 4
# should be high?
#
# <details><summary>Answer</summary>
#
# The candidates half holds: with duplicates removed by NMS its boxes score better, so it has
# more and better-placed queries per object. The de-duplication half fails: its o2o branch
# still lets several confident queries fire on one object, and without NMS each extra one is
# a false positive. Its duplicates per image should be high (higher than the baseline's).
# </details>
