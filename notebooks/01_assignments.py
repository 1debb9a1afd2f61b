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
# **The question.** A DETR predicts a fixed set of boxes, one per *query*, and nothing says
# which query should become which object. So, for every training image, a *matcher* decides
# **which query learns from which ground-truth box (GT)**. DETR's matcher is one-to-one (o2o):
# each GT gets exactly one query, all the others learn "no object". MS-DETR adds a one-to-many
# (o2m) matcher on the same queries: each GT also gets its top-K best queries. How do the two
# answers differ on the same predictions, and why does the detector still run without NMS?
#
# First a toy small enough to check every number by hand, then the trained model, then the
# formulas and the library code.

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
from msdetr_lite.lab import readings, samples

torch.set_num_threads(zoo.default_threads())    # one thread per process on a small shared CPU
THUMBNAILS = zoo.thumbnail_dir()              # docs/images, or $MSDETR_THUMBNAIL_DIR

# %% tags=["parameters"]
# Parameters (papermill can override them). FAST: env MSDETR_FAST=1, as in CI: tiny step
# counts and few images, so every cell runs in seconds; the pictures are then of an almost
# untrained model. Leave it unset for the real (short, CPU-sized) schedules.
FAST = zoo.fast_mode()
N_IMAGES = 4 if FAST else 16            # validation images offered by the widgets
SAVE_THUMBNAIL = os.environ.get("MSDETR_THUMBNAILS") == "1"   # write THUMBNAILS/NN_name.png

IMAGE = 0                               # validation image of the walkthrough
LAYER = -1                              # decoder layer (-1 = last)

# %%
display(Markdown(report.fast_notice(FAST) or "Full mode: the zoo's trained MS-DETR."))

# %% [markdown]
# ## 1. A toy you can check by hand: 2 GTs, 6 queries
# Two objects, GT 0 and GT 1, and six queries, each with a box and a class probability p. The
# o2m matcher scores every (GT, query) pair with
#
# $$S = \alpha\, p + (1 - \alpha)\, \mathrm{IoU}, \qquad \alpha = 0.3$$
#
# Check a row: q1 is GT 0 moved right by a quarter of its width, so they overlap on 30 x 40 of
# 40 x 40 and IoU = 1200 / (1600 + 1600 - 1200) = 0.6; with p = 0.5, S = 0.15 + 0.42 = 0.57.

# %%
display(Markdown(viz.markdown_table(samples.toy_rows(alpha=0.3))))

# %% [markdown]
# **The two matchers on the toy.** o2o (Hungarian) gives each GT one query (blue squares). o2m,
# with K = 6 and tau = 0.4, first marks a query *positive* if its best GT scores S >= tau (or it
# is a GT's best query); a GT with c positives then gets the top min(c, K) queries of its row of
# S (orange dots). Here every number on the right is a value of the table above.

# %%
toy_model, toy_data = samples.ToyModel(), samples.ToyDataset()
toy_image, toy_target = toy_data[0]
toy_out = widgets.run_model(toy_model, toy_image)
toy = {cap: widgets.compute_assignment(toy_out, toy_target, k=6, tau=0.4, alpha=0.3, max_pos_fraction=cap)
       for cap in (1.0, 0.25)}
display(viz.plot_assignment(toy_image, toy[1.0], class_names=toy_data.class_names, size=(100, 100)))
display(Markdown(readings.describe_assignment(toy[1.0])))

# %% [markdown]
# **The positive cap.** One more rule: at most 25 % of the queries may stay positive
# (`max_pos_fraction`); when more pass, a random subset is kept. With 6 queries that is 1.5, so
# one positive survives, and a GT whose positives were all dropped gets **no o2m target at all**.
# Note also *which* query the surviving GT gets: c only says how many, the row of S says which.

# %%
display(viz.plot_assignment(toy_image, toy[0.25], class_names=toy_data.class_names, size=(100, 100)))
display(Markdown(readings.describe_cap(toy[0.25], toy[1.0])))

# %% [markdown]
# Move K, tau, alpha and the cap on the toy (the image and layer sliders have one choice here):

# %%
toy_panel = widgets.assignment_panel({"toy": toy_model}, toy_data, max_queries=6, image=0)
toy_panel

# %% [markdown]
# ## 2. The trained model
# The MS-DETR model trained in `00_tour`. The zoo keeps a snapshot per epoch (`init` = the
# initialisation), so we can watch the assignment change as the queries learn.

# %%
from msdetr_lite.data import build_dataset

checkpoints = zoo.list_checkpoints("ms", fast=FAST)
model, run_cfg = zoo.load_model("ms", fast=FAST, quiet=True)
val_ds = build_dataset(run_cfg.data, "val")
print("checkpoints:", [label for label, _ in checkpoints])
print(val_ds)

# %% [markdown]
# **Both matchers on one validation image**, the same figure as the toy's: the GTs dashed green,
# each GT's o2o query blue, its o2m queries orange, and S on the right for the queries that
# matter. In eval mode the model skips the training-only o2m branch; `aux_branches=True` (what
# `widgets.run_model` passes) computes it anyway, so we see exactly what the loss sees.

# %%
image, target = val_ds[IMAGE]
out = widgets.run_model(model, image)
m = run_cfg.matcher
labels = target["labels"]
a = widgets.compute_assignment(out, target, layer=LAYER, k=m.k, tau=m.tau, alpha=m.alpha, matcher=m)
fig = viz.plot_assignment(image, a, class_names=val_ds.class_names, size=target["size"].tolist())
if SAVE_THUMBNAIL:
    viz.save_thumbnail(fig, THUMBNAILS / "01_assignments.png")
display(fig)
display(Markdown(readings.describe_assignment(a)))

# %% [markdown]
# **The cap on the real model.** With 100 queries the cap keeps 25 positives. Once the queries
# are good, many more than 25 pass tau on a crowded image, and the random 25 that stay decide
# which objects get o2m targets at all:

# %%
uncapped = widgets.compute_assignment(out, target, layer=LAYER, k=m.k, tau=m.tau, alpha=m.alpha,
                                      max_pos_fraction=1.0, matcher=m)
display(Markdown(("(Fast mode: an untrained model, few queries pass tau.) " if FAST else "")
                 + readings.describe_cap(a, uncapped)))

# %% [markdown]
# ## 3. Explore
# * **K**: at most K o2m queries per GT. A GT only gets `min(c_g, K)`, so K matters once the
#   queries are good enough for several of them to pass tau (hollow circles: the row's
#   top-K that were *not* taken).
# * **tau**: the score a query needs to count as positive; lower it and more GTs reach K.
# * **alpha**: how much the class probability counts against the IoU in S.
# * **positive cap**: at most this fraction of the queries stays positive (MS-DETR: 0.25).
# * **decoder layer** and **checkpoint**: compare early layers and epochs with late ones: how
#   many o2m pairs does each GT get, and how high are their scores?
#
# The panel opens on the first image where K = 6 -> 7 adds pairs (a GT with more than six
# positives), so moving K right changes the assignment; it says so when no image has one.

# %%
panel = widgets.assignment_panel(dict(checkpoints), val_ds, indices=range(N_IMAGES), matcher=run_cfg.matcher)
panel

# %% [markdown]
# The panel needs a running kernel; a reader of the rendered page sees it at four settings here
# instead: K = 1 against the paper's K = 6 at the last decoder layer, and the first layer against
# the last at K = 6 (the other controls as the panel opened).

# %%
last = panel.controls["layer"].max
views = [{"K": 1, "layer": last}, {"K": 6, "layer": last}, {"K": 6, "layer": 1}]
if len(checkpoints) > 1:
    views.append({"K": 6, "layer": last, "checkpoint": checkpoints[0][0]})
panel.small_multiples(views)

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
ax.legend(fontsize=9)
fig

# %% [markdown]
# ## 4. The formulas, and where they live in the code
# **One-to-one.** Hungarian matching (scipy's `linear_sum_assignment`) picks the permutation
# $\sigma$ of queries that minimises, summed over the GTs $g$,
#
# $$C(g, q) = 2\,\big[\mathcal{L}_{\text{focal}}(p_{q,c_g}, 1) - \mathcal{L}_{\text{focal}}(p_{q,c_g}, 0)\big]
#   + 5\,\lVert b_q - b_g \rVert_1 - 2\,\mathrm{GIoU}(b_q, b_g)$$
#
# with $p_{q,c}$ the query's sigmoid probability of class $c$ and boxes $b$ in normalised
# $(c_x, c_y, w, h)$. Every GT gets exactly one query, all other queries learn "no object":
# the model learns to predict each object *once*.
#
# **One-to-many**, MS-DETR's matcher, K = 6, $\tau$ = 0.4, $\alpha$ = 0.3, on the matching score
#
# $$S(g, q) = \alpha\, p_{q, c_g} + (1 - \alpha)\, \mathrm{IoU}(b_q, b_g)$$
#
# in six steps: (1) score every (GT, query) pair; (2) a query is *positive* if its best GT
# scores $S \ge \tau$; (3) each GT's best query is positive too; (4) at most 25 % of the
# queries stay positive (a random subset); (5) a GT with $c_g$ positives gets the top
# $\min(c_g, K)$ queries of its row of S; (6) a query paired with two GTs takes its class
# target from the better pair.
#
# **The losses.** Each branch gets a sigmoid focal loss over all queries $q$ and classes $c$
# (targets $t_{q,c} \in \{0, 1\}$, $\alpha_f$ = 0.25, $\gamma$ = 2) and L1 + GIoU on its matched
# pairs $M$, all divided by the number of GTs $N$:
#
# $$\mathcal{L}_{\text{focal}} = \frac{1}{N}\sum_{q,c} -\alpha_t (1 - p_t)^{\gamma} \log p_t,\quad
#   p_t = \begin{cases} p_{q,c} & t_{q,c} = 1 \\ 1 - p_{q,c} & t_{q,c} = 0 \end{cases}$$
#
# $$\mathcal{L}_{\text{branch}} = \lambda_{\text{cls}} \mathcal{L}_{\text{focal}}
#   + \frac{1}{N}\sum_{(q, g) \in M} \Big(5\,\lVert b_q - b_g\rVert_1 + 2\,\big(1 - \mathrm{GIoU}(b_q, b_g)\big)\Big)$$
#
# with $\lambda_{\text{cls}}$ = 1 for o2o and 2 for o2m, and $M$ the o2o pairs or the o2m pairs.
# MS-DETR's training loss sums both branches over every decoder layer (plus the encoder's
# proposals): $\mathcal{L} = \sum_{l} \big(\mathcal{L}^{l}_{\text{o2o}} + \mathcal{L}^{l}_{\text{o2m}}\big) + \mathcal{L}_{\text{enc}}$.
# The o2m term is divided by the same $N$ although it has up to K pairs per GT.
#
# <details><summary>Where each step lives in the library (msdetr_lite/matching/reference.py)</summary>
#
# | step | function |
# |---|---|
# | o2o: Hungarian on the cost above | `matching.one_to_one` |
# | 1: the score S | `matching.match_scores` |
# | 2-4: positives (tau, each GT's best, the 25 % cap) | `matching.select_positives` |
# | 5: top-min(c_g, K) per GT | `matching.topk_per_gt` |
# | 6: one class target per query | `matching.o2m_class_targets` |
# | all six at once | `matching.one_to_many` |
#
# Training runs the batched versions (`msdetr_lite/matching/batched.py`); the tests check that
# they agree with these. The losses are `msdetr_lite/losses/criterion.py` (`SetCriterion`).
# </details>
#
# The six steps called one by one on the image of section 2 (what `compute_assignment` does in
# one call), with each GT's positives $c_g$ and its o2m queries:

# %%
from msdetr_lite import matching

o2m_logits, o2m_boxes = widgets.branch_predictions(out, "o2m", LAYER)
o2o_logits, o2o_boxes = widgets.branch_predictions(out, "o2o", LAYER)
gt_boxes = target["boxes"]

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

# %% [markdown]
# ## 5. Why o2m helps, and why inference stays o2o
# **Why it helps.** With o2o, each object trains one query as positive and pushes *all
# others* towards "no object", even those whose box is nearly as good. The o2m branch tells
# the top-K of them "you are right too": many more positive gradients per image, and the
# decoder's candidate boxes gather tightly around each object (notebook 04 measures it).
#
# **Why inference stays o2o.** The o2m branch is trained to fire several times per object:
# its output would need NMS. In MS-DETR the o2m tap sits *before* the self-attention of
# each layer, and the o2o branch at the end of the layer, after the self-attention has let
# the queries see each other and settle which one speaks for an object. At inference only
# the o2o output is used, so the detector stays NMS-free, *if* the o2o branch has learned to
# suppress the extra confident queries the o2m branch creates. The duplicate counts measure
# that: confident queries that land on a GT another, higher-scored query already claimed.
# Below, both heads of the last decoder layer on a few validation images, at two score
# thresholds: the duplicates, the candidates (a layer's top 20 queries by score, as in 03 and
# 04) and, the second view, every query whatever its score.

# %%
from msdetr_lite.analysis import candidate_quality
from msdetr_lite.data import collate

images, masks, targets = collate([val_ds[i] for i in range(min(N_IMAGES, len(val_ds)))])
with torch.no_grad():
    out_b = model.eval()(images, masks, aux_branches=True)
stats = {thresh: {branch: candidate_quality(out_b, targets, topk=20, score_thresh=thresh, branch=branch)["layers"][-1]
                  for branch in ("o2o", "o2m")} for thresh in (0.1, 0.3)}
display(Markdown(viz.markdown_table(readings.branch_rows(stats))))
display(Markdown(readings.describe_branches(stats, fast=FAST)
                 + " MS-DETR trains both heads on the same queries: the dense o2m signal is meant to improve "
                 "the candidates, the o2o head to turn them into one detection per object. Notebooks 03 and 04 "
                 "measure whether it does on this data."))

# %% [markdown]
# ## Check yourself
# A GT has $c_g$ = 3 positive queries (three queries whose best GT it is with $S \ge \tau$). How many
# o2m pairs does it get with K = 6? With K = 2? And if $\tau$ is raised so far that no query
# reaches it?
#
# <details><summary>Answer</summary>
#
# $\min(c_g, K)$: 3 pairs with K = 6 (K is only a cap), 2 with K = 2. With no query above $\tau$,
# step 3 still makes each GT's best query positive, so $c_g$ = 1 and the GT gets one pair,
# like o2o (but without the Hungarian constraint: one query may be the best of two GTs).
# That is why K does nothing on a young model: few queries pass $\tau$, so $c_g < K$.
# </details>
