"""Write the teaching notebooks (notebooks/*.ipynb) from the cell sources below.

    python notebooks/build_notebooks.py            # (re)write every notebook, without outputs
    python notebooks/build_notebooks.py --check    # exit 1 if a notebook differs from its source here

The notebooks are thin: the logic lives in msdetr_lite (viz, widgets, zoo, analysis, ...), the
cells call it and the markdown tells the story. Every notebook has a cell tagged `parameters`
(papermill) and a fast mode (env MSDETR_FAST=1: tiny step counts, few images) that CI runs.
Edit the sources here, not the .ipynb files, then rerun this script.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str, tags: tuple = ()):
    cell = new_code_cell(textwrap.dedent(text).strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


SETUP = """
%matplotlib inline
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
"""


def parameters(extra: str = "") -> object:
    body = """
    # Parameters (papermill can override them). FAST: env MSDETR_FAST=1, as in CI: tiny step
    # counts and few images, so every cell runs in seconds; the pictures are then of an almost
    # untrained model. Leave it unset for the real (short, CPU-sized) schedules.
    FAST = zoo.fast_mode()
    N_IMAGES = 4 if FAST else 16            # validation images offered by the widgets
    SAVE_THUMBNAIL = os.environ.get("MSDETR_THUMBNAILS") == "1"   # write docs/images/*.png
    """
    return code(textwrap.dedent(body) + textwrap.dedent(extra), tags=("parameters",))


# ================================================================================================
def nb_00_tour():
    return [
        md("""
        # 00 · A tour of msdetr_lite

        **MS-DETR** ("Efficient DETR Training with Mixed Supervision", CVPR 2024) trains the queries
        of a DETR detector with two kinds of supervision at once:

        * **one-to-one (o2o)**: Hungarian matching gives every ground-truth box (GT) exactly one
          query. That is what makes DETR NMS-free, but one positive per object is a weak signal.
        * **one-to-many (o2m)**: every GT *also* gets its top-K best-matching queries as positives,
          a dense signal that makes the candidate boxes better and training faster.

        The trick is *where*: the o2m loss sits on **the same queries of the same decoder**, tapped
        inside each decoder layer, so it costs almost nothing, and inference still uses the o2o
        output only (no NMS). This notebook walks through the project: install check, the data,
        the tiny model, a short training run, first detections, and where everything lives.

        Everything here runs on a laptop CPU with the embedded synthetic data. With `MSDETR_FAST=1`
        (as in CI) every training is a handful of steps, so expect meaningless detections then.
        """),
        code(SETUP),
        parameters("""
        SCORE_THRESH = 0.3                      # detections drawn: score at least this ...
        TOP_DETS = 10                           # ... and at most this many per image, best first
        """),
        md("""
        ## 1. Install check
        Versions, the device, and which backends of the multi-scale deformable attention
        (`msdetr_lite.ops.ms_deform_attn`) run here: `torch` (the readable reference) always,
        `numba` (CPU kernels) and `cuda` (our CUDA extension) where available.
        """),
        code("""
        import torchvision
        from msdetr_lite import ops

        rows = [
            {"item": "python", "value": sys.version.split()[0]},
            {"item": "torch", "value": torch.__version__},
            {"item": "torchvision", "value": torchvision.__version__},
            {"item": "msdetr_lite", "value": f"{msdetr_lite.__version__} ({Path(msdetr_lite.__file__).parent})"},
            {"item": "CUDA available", "value": torch.cuda.is_available()},
            {"item": "torch CPU threads", "value": torch.get_num_threads()},
            {"item": "deformable-attention backends (CPU)", "value": ", ".join(ops.available_backends("cpu"))},
            {"item": "fast mode (MSDETR_FAST)", "value": FAST},
        ]
        display(Markdown(viz.markdown_table(rows)))
        """),
        md("""
        ## 2. The data
        The embedded dataset is synthetic but honest: 128-px images of four shapes (circle, square,
        triangle, cross) told apart by shape only, random colours and sizes, some objects close
        together or overlapping, textured backgrounds and distracting strokes. It is written in the
        **COCO layout** (`data/shapes/{train,val}/` + `annotations/instances_{split}.json`), so the
        very same code reads COCO itself (notebook 05). `zoo.ensure_data()` generates it on first
        use (about 10 s).

        A sample is `(image, target)`: the image is ImageNet-normalised `float [3, H, W]`, the
        target holds `labels` (contiguous 0..C-1) and `boxes` as **normalised (cx, cy, w, h)**.
        """),
        code("""
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
        """),
        code("""
        viz.plot_samples(val_ds, range(8), ncols=4)
        """),
        md("""
        ## 3. The tiny model
        `preset("tiny")` is the paper's detector shrunk to CPU size: a ResNet-18 backbone, 3 encoder
        and 4 decoder layers of width 128, 100 queries, 4 feature levels (strides 8 to 64). It is
        **Deformable-DETR++**: two-stage (encoder proposals seed the queries' reference boxes),
        iterative box refinement, look-forward-twice. `model.supervision` switches the training
        scheme: `o2o` (the baseline), `ms` (MS-DETR), `hybrid` (H-DETR), `group` (Group-DETR).
        """),
        code("""
        from msdetr_lite.models import build_model

        cfg.model.num_classes = train_ds.num_classes
        model = build_model(cfg.model)
        parts = [{"part": name, "parameters (M)": round(sum(p.numel() for p in m.parameters()) / 1e6, 3)}
                 for name, m in model.named_children()]
        parts.append({"part": "total", "parameters (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)})
        display(Markdown(viz.markdown_table(parts)))
        print({k: getattr(cfg.model, k) for k in ("backbone", "d_model", "num_encoder_layers", "num_decoder_layers",
                                                  "num_queries", "supervision", "o2m_tap")})
        """),
        md("""
        In training mode the model returns, per decoder layer, the o2o predictions **and** the o2m
        predictions of the same 100 queries (tapped after the cross-attention, before the
        self-attention). The loss (`SetCriterion`) matches each branch its own way and sums
        focal + L1 + GIoU terms per branch and layer; their names say which is which.
        """),
        code("""
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
        """),
        md("""
        ## 4. A short training run
        `zoo.get_checkpoint("ms")` trains MS-DETR with `msdetr_lite.engine.train` (in a subprocess,
        one epoch at a time with a snapshot per epoch) and caches the run under
        `runs/notebooks/{fast|full}/ms/`; later notebooks reuse it instead of training again.
        """),
        code("""
        t0 = time.perf_counter()
        ckpt = zoo.get_checkpoint("ms", fast=FAST)
        print(f"checkpoint: {ckpt} ({time.perf_counter() - t0:.0f} s)")
        viz.plot_total_loss(zoo.history("ms", fast=FAST), "ms")
        """),
        code("""
        from msdetr_lite.evaluation import format_metrics

        ev = zoo.evaluation("ms", fast=FAST)
        print("final layer:", format_metrics(ev["final"]))
        for layer_id, metrics in zip(ev["layer_ids"], ev["layers"]):
            print(f"decoder layer {layer_id + 1}:", format_metrics(metrics, ("AP", "AP50", "AP75")))
        """),
        md("""
        ## 5. First detections
        Inference uses the **o2o** predictions of the last decoder layer only: the top-100
        (query, class) pairs by score, no NMS. Move the sliders: image, score threshold and how
        many of the best to draw. After a few minutes of CPU training the scores are still low
        and flat (around 0.2: lower the threshold) and the boxes rough; the paper trains 12 epochs
        of COCO on 8 GPUs (notebook 05). Below, each image gets as many detections as it has
        objects, the usual way to look at a young detector.
        """),
        code("""
        model, run_cfg = zoo.load_model("ms", fast=FAST, quiet=True)
        panel = widgets.detections_panel(model, val_ds, indices=range(N_IMAGES), score_thresh=SCORE_THRESH,
                                         top=TOP_DETS)
        panel
        """),
        code("""
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
        """),
        md("""
        ## 6. Where everything lives

        | path | what |
        |---|---|
        | `msdetr_lite/config.py` | presets `tiny` / `r50`, `section.field=value` overrides |
        | `msdetr_lite/models/` | backbone, deformable encoder / decoder with the o2m tap, `build_model` |
        | `msdetr_lite/matching.py` | `one_to_one` (Hungarian), `one_to_many` (MS-DETR's top-K), step by step |
        | `msdetr_lite/losses.py` | `SetCriterion`: focal / L1 / GIoU per branch and decoder layer |
        | `msdetr_lite/ops.py`, `kernels/` | `ms_deform_attn` with torch / numba / CUDA backends |
        | `msdetr_lite/engine.py` | training loop, checkpoints, resume, DDP |
        | `msdetr_lite/evaluation.py`, `analysis.py` | COCO AP per decoder layer, candidate quality |
        | `msdetr_lite/viz.py`, `widgets.py`, `zoo.py` | drawing, interactive panels, cached notebook runs |
        | `msdetr_lite/cli.py` | the `msdetr` command (`data`, `train`, `eval`, `compare`, `demo`) |
        | `runs/notebooks/` | the notebooks' trained runs (delete to retrain) |

        A run folder:
        """),
        code("""
        run = zoo.run_dir("ms", fast=FAST)
        rows = [{"file": p.name, "size (MB)": round(p.stat().st_size / 1e6, 2)} for p in sorted(run.iterdir())
                if p.is_file() and not p.name.startswith(".")]
        print(run)
        display(Markdown(viz.markdown_table(rows)))
        """),
        md("""
        **Next:** `01_assignments` (o2o vs o2m matching on these outputs), `02_deformable_attention`,
        `03_mixed_supervision_training` (o2o vs MS-DETR vs H-DETR vs Group-DETR),
        `04_candidate_quality` (the paper's Fig. 1), `05_train_on_coco` (the real workflow).
        """),
    ]


# ================================================================================================
def nb_01_assignments():
    return [
        md("""
        # 01 · One-to-one vs one-to-many assignment

        Training a DETR means deciding, for every image, **which query learns from which
        ground-truth box (GT)**. Two matchers, both without gradients, one image at a time:

        * **one-to-one (o2o)**: Hungarian matching on
          `cost = 2 · focal_class_cost + 5 · L1 + 2 · (−GIoU)`; every GT gets exactly one query,
          all other queries learn "no object". The model learns to predict each object *once*.
        * **one-to-many (o2m)**, MS-DETR's matcher, with K = 6, tau = 0.4, alpha = 0.3:
          1. score every (GT, query) pair: `S[g, q] = alpha · p(q, class_g) + (1 − alpha) · IoU(q, g)`;
          2. a query is *positive* if its best GT scores `S ≥ tau`;
          3. each GT's best query is positive too;
          4. at most 25 % of the queries stay positive (a random subset);
          5. a GT with `c_g` positives gets the top `min(c_g, K)` queries of its row of S;
          6. a query paired with two GTs takes its class target from the better pair.

        Here we run both on the real outputs of the MS-DETR model trained in `00_tour`.
        """),
        code(SETUP),
        parameters("""
        IMAGE = 0                               # validation image of the walkthrough
        LAYER = -1                              # decoder layer (-1 = last)
        """),
        md("""
        ## 1. The model and its training checkpoints
        The zoo keeps a snapshot per epoch (`init` = the initialisation), so we can watch the
        assignment change as the queries learn.
        """),
        code("""
        from msdetr_lite.data import build_dataset

        checkpoints = zoo.list_checkpoints("ms", fast=FAST)
        model, run_cfg = zoo.load_model("ms", fast=FAST, quiet=True)
        val_ds = build_dataset(run_cfg.data, "val")
        print("checkpoints:", [label for label, _ in checkpoints])
        print(val_ds)
        """),
        md("""
        ## 2. Both matchers, step by step, on one image
        In eval mode the model skips the training-only o2m branch; `aux_branches=True` (what
        `widgets.run_model` passes) computes it anyway, so we see exactly what the loss sees.
        """),
        code("""
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
        """),
        code("""
        a = widgets.compute_assignment(out, target, layer=LAYER, k=m.k, tau=m.tau, alpha=m.alpha, matcher=m)
        fig = viz.plot_assignment(image, a, class_names=val_ds.class_names, size=target["size"].tolist())
        if SAVE_THUMBNAIL:
            viz.save_thumbnail(fig, THUMBNAILS / "01_assignments.png")
        fig
        """),
        md("""
        ## 3. Explore
        * **K**: at most K o2m queries per GT. A GT only gets `min(c_g, K)`, so K matters once the
          queries are good enough for several of them to pass tau (hollow circles: the row's
          top-K that were *not* taken).
        * **tau**: the score a query needs to count as positive; lower it and more GTs reach K.
        * **alpha**: how much the class probability counts against the IoU in S.
        * **decoder layer** and **checkpoint**: early layers and early epochs have scattered,
          low-scoring candidates; training concentrates several good queries on every object.
        """),
        code("""
        panel = widgets.assignment_panel(dict(checkpoints), val_ds, indices=range(N_IMAGES), matcher=run_cfg.matcher)
        panel
        """),
        md("""
        How many o2m pairs does K buy on this image, per decoder layer?
        """),
        code("""
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
        """),
        md("""
        ## 4. Why o2m helps, and why inference stays o2o
        **Why it helps.** With o2o, each object trains one query as positive and pushes *all
        others* towards "no object", even those whose box is nearly as good. The o2m branch tells
        the top-K of them "you are right too": many more positive gradients per image, and the
        decoder's candidate boxes gather tightly around each object (notebook 04 measures it).

        **Why inference stays o2o.** The o2m branch is trained to fire several times per object:
        its output would need NMS. In MS-DETR the o2m tap sits *before* the self-attention of
        each layer, and the o2o branch at the end of the layer, after the self-attention has let
        the queries see each other and settle which one speaks for an object. At inference only
        the o2o output is used, so the detector stays NMS-free. The duplicate counts make it
        concrete: confident queries that land on a GT another, higher-scored query already
        claimed.
        """),
        code("""
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
        """),
        md("""
        The o2m branch has more well-placed queries per GT *and* more duplicates; the o2o branch
        keeps duplicates low. MS-DETR trains both on the same queries: the dense o2m signal
        improves the candidates, the o2o head turns them into one detection per object.
        """),
    ]


# ================================================================================================
def nb_02_deformable_attention():
    return [
        md("""
        # 02 · Multi-scale deformable attention

        Every decoder query attends to the image through **deformable cross-attention**
        (Deformable DETR): instead of comparing itself with all H·W feature-map positions, each
        query predicts, per head *m*, level *l* and point *p*, a small **offset** from its
        **reference box** and a **weight**, samples the feature map bilinearly there and sums:

        `out = Σ_m W_m Σ_l Σ_p A[m, l, p] · V_l(ref + Δ[m, l, p])`, with `Σ_{l,p} A[m, l, p] = 1` per head.

        With box references the offsets are relative to the box (at most half its size). 8 heads x
        4 levels x 4 points = 128 samples per query, whatever the image size. This notebook shows
        them on the trained model, then compares the three implementations of the sampling op.
        """),
        code(SETUP),
        parameters("""
        IMAGE = 0                               # validation image of the static figures
        BENCH_REPEATS = 2 if FAST else 10       # timing repetitions per backend
        """),
        code("""
        from msdetr_lite.data import build_dataset

        model, run_cfg = zoo.load_model("ms", fast=FAST, quiet=True)
        val_ds = build_dataset(run_cfg.data, "val")
        image, target = val_ds[IMAGE]
        out = widgets.run_model(model, image, attention=True, aux=False)
        att = out["attention"][-1]
        print("sampling_locations", tuple(att["sampling_locations"].shape), "= [batch, queries, heads, levels, points, xy]")
        print("attention_weights ", tuple(att["attention_weights"].shape))
        print("feature levels (H, W):", out["spatial_shapes"].tolist())
        """),
        md("""
        ## 1. One query's view
        The most confident query of the last decoder layer: its reference box (the previous
        layer's refined box, dashed pink), its prediction (blue), its sampling points coloured by
        feature level (yellow = stride 8, fine; purple = stride 64, coarse), sized by weight; and
        on the right the attention mass those weights put on the image.
        """),
        code("""
        q = int(widgets.query_order(out)[0])
        qa = widgets.query_attention(out, q, layer=-1)
        fig = viz.plot_deformable_attention(image, qa["sampling_locations"], qa["attention_weights"],
                                            ref_box=qa["reference"], pred_box=qa["box"], size=target["size"].tolist(),
                                            title=f"query {q}: {val_ds.class_names[qa['label']]} {qa['score']:.2f}, last decoder layer")
        if SAVE_THUMBNAIL:
            viz.save_thumbnail(fig, THUMBNAILS / "02_deformable_attention.png")
        fig
        """),
        md("""
        The same query through the decoder: the reference box is refined layer by layer and the
        sampling points follow it.
        """),
        code("""
        per_layer = [widgets.query_attention(out, q, layer=l) for l in range(len(out["o2o"]))]
        viz.plot_attention_layers(image, per_layer, size=target["size"].tolist(),
                                  title=f"query {q} through the decoder layers")
        """),
        md("""
        ## 2. Explore
        Pick a query by score rank (0 = the most confident), a decoder layer and a head (or all).
        Low-ranked queries usually sit on background or duplicate a better one.
        """),
        code("""
        panel = widgets.attention_panel(model, val_ds, indices=range(N_IMAGES))
        panel
        """),
        md("""
        ## 3. Three backends, one op
        `msdetr_lite.ops.ms_deform_attn(..., backend=...)` has three implementations behind one
        signature:

        * `torch`: `F.grid_sample` per level, the readable reference (any device, autograd for free);
        * `numba`: hand-written CPU kernels (forward and backward);
        * `cuda`: our CUDA extension, built on first use (GPU only).

        They must agree to float32 rounding, in the output and in all three gradients. Timings
        are for the shapes of this model's decoder on 128-px images (2 images x 100 queries);
        the first call includes numba's compilation (or the CUDA build).
        """),
        code("""
        from msdetr_lite import ops

        backends = ops.available_backends("cpu")
        n_heads = run_cfg.model.nheads
        shape_kw = dict(n_heads=n_heads, head_dim=run_cfg.model.d_model // n_heads,
                        n_levels=run_cfg.model.num_feature_levels, n_points=run_cfg.model.n_points,
                        n_queries=run_cfg.model.num_queries)
        rows = widgets.compare_backends(backends, repeats=BENCH_REPEATS, **shape_kw)
        if torch.cuda.is_available():
            rows += widgets.compare_backends(ops.available_backends("cuda"), repeats=BENCH_REPEATS, device="cuda", **shape_kw)
        display(Markdown(viz.markdown_table(rows)))
        viz.plot_backend_timings([r for r in rows if "forward_ms" in r])
        """),
        md("""
        And the whole model, on one image, with each CPU backend swapped in:
        """),
        code("""
        display(Markdown(viz.markdown_table(widgets.model_backend_agreement(model, image, backends), floatfmt=".2g")))
        """),
    ]


# ================================================================================================
def nb_03_training():
    return [
        md("""
        # 03 · Mixed supervision in training: o2o vs MS-DETR vs H-DETR vs Group-DETR

        Four ways to train the same tiny Deformable-DETR++ on the embedded data, side by side:

        | scheme | extra supervision | extra queries in training |
        |---|---|---|
        | `o2o` | none (the baseline) | none |
        | `ms` (MS-DETR) | one-to-many on the **same** queries, tapped inside each decoder layer | none |
        | `hybrid` (H-DETR) | a second query set trained one-to-one on the GTs repeated K times | 150 |
        | `group` (Group-DETR) | more query groups, each trained one-to-one | 2 x 100 |

        All schemes infer with the primary 100 queries only. The paper's claims to look for:
        o2m on the primary decoder converges faster (lower o2o losses, higher AP per epoch, better
        early decoder layers) at a few percent extra cost, far less than extra queries cost.

        On a CPU with minutes per model the schedules are tiny (the paper trains 12 epochs on COCO
        with 8 GPUs), so read the trends, not the decimals; `MSDETR_FAST=1` trains a handful of
        steps just to exercise the code.
        """),
        code(SETUP),
        parameters("""
        SCHEMES = ["o2o", "ms", "hybrid", "group"]
        """),
        md("""
        ## 1. Train (or reuse) the four runs
        Each run trains once (a subprocess per run, so its peak memory is its own) and is cached
        under `runs/notebooks/`; rerunning the notebook only reads the results.
        """),
        code("""
        for scheme in SCHEMES:
            t0 = time.perf_counter()
            zoo.get_checkpoint(scheme, fast=FAST)
            print(f"{scheme}: ready ({time.perf_counter() - t0:.0f} s)")
        histories = {s: zoo.history(s, fast=FAST) for s in SCHEMES}
        evals = {s: zoo.evaluation(s, fast=FAST) for s in SCHEMES}
        """),
        md("""
        ## 2. Loss curves per branch
        Top row: the o2o losses of the final decoder layer, the ones that matter at inference.
        Bottom row: the o2m branch (MS-DETR: the same queries at the o2m tap; H-DETR and
        Group-DETR: their extra queries). As in the paper's Fig. 2, the baseline is dashed and
        MS-DETR solid. The logged terms are already weighted (cls x1 / x2, L1 x5, GIoU x2).

        Do not read the o2m row like the o2o row: the o2m terms are summed over *all* o2m pairs and
        divided by the number of GTs. As the queries improve, more of them pass tau, each GT gets
        up to K pairs instead of one, and the o2m losses can *rise* while the detector gets better.
        """),
        code("""
        fig = viz.plot_loss_curves(histories, branches=("o2o", "o2m"), x="step", smooth=1 if FAST else 5)
        if SAVE_THUMBNAIL:
            viz.save_thumbnail(fig, THUMBNAILS / "03_mixed_supervision_training.png")
        fig
        """),
        code("""
        viz.plot_loss_curves({s: histories[s] for s in ("o2o", "ms") if s in histories}, branches=("o2o",),
                             x="epoch", title="Fig. 2 style: o2o losses per epoch, baseline dashed vs MS-DETR solid")
        """),
        md("""
        ## 3. AP per epoch and per decoder layer
        Every decoder layer has its own o2o head, so every layer is a detector. Mixed supervision
        is expected to help the early layers most: their candidates are trained by K positives
        per object instead of one.
        """),
        code("""
        viz.plot_ap_curves(histories)
        """),
        code("""
        viz.plot_ap_per_layer(evals)
        """),
        md("""
        ## 4. What it costs: time and memory
        Median seconds per training step (after warm-up) and the training process's peak memory
        (resident set size on CPU, CUDA max allocated on a GPU), measured by the engine. On a shared
        CPU the times are noisy; what matters is the ratio to the baseline. The paper's point:
        MS-DETR adds a few percent (one more set of head evaluations and a matcher), H-DETR and
        Group-DETR pay for their extra queries in every decoder layer.
        """),
        code("""
        rows = zoo.efficiency_rows(SCHEMES, fast=FAST)
        base = next((r for r in rows if r["scheme"] == "o2o"), rows[0])
        for r in rows:
            if r["s / step (median)"] and base["s / step (median)"]:
                r["time vs o2o"] = f"{r['s / step (median)'] / base['s / step (median)']:.2f}x"
            r["memory vs o2o"] = f"{r['peak memory (MiB)'] / max(base['peak memory (MiB)'], 1):.2f}x"
        display(Markdown(viz.markdown_table(rows)))
        """),
        md("""
        For reference, the paper (ResNet-50, 12 epochs, COCO val2017): Deformable-DETR++ 47.0 AP,
        H-DETR 48.7, MS-DETR 48.8 with 300 queries (50.0 with 900), at a small fraction of
        H-DETR's extra training cost.
        """),
    ]


# ================================================================================================
def nb_04_candidates():
    return [
        md("""
        # 04 · Candidate quality: the paper's Fig. 1

        MS-DETR's explanation of *why* mixed supervision works: the one-to-many loss trains
        several queries per object to be good, so the decoder's **candidates**, the boxes of its
        top-scoring queries, gather tightly around the objects, layer after layer. The o2o
        baseline keeps them scattered: only one query per object was ever told it was right.

        Fig. 1 of the paper draws the top-20 query boxes of both models. We do the same with the
        runs trained in notebook 03 (or trained here on first use), then measure it over the
        validation set with `msdetr_lite.analysis`.
        """),
        code(SETUP),
        parameters("""
        TOP_K = 20                              # candidates drawn per image (the paper's Fig. 1: 20)
        FIG_IMAGES = [0, 1, 2]                  # validation images of the static figure
        STAT_BATCHES = 1 if FAST else 25        # validation batches for the statistics (8 images each)
        """),
        code("""
        from msdetr_lite.data import build_dataset

        models = {}
        for scheme in ("o2o", "ms"):
            models[scheme], run_cfg = zoo.load_model(scheme, fast=FAST)
        val_ds = build_dataset(run_cfg.data, "val")
        print(val_ds)
        """),
        md("""
        ## 1. Top-20 query boxes, o2o baseline vs MS-DETR (last decoder layer)
        """),
        code("""
        samples = [val_ds[i] for i in FIG_IMAGES if i < len(val_ds)]
        predictions = {name: [widgets.topk_candidates(widgets.run_model(m, img, aux=False), layer=-1)
                              for img, _ in samples] for name, m in models.items()}
        fig = viz.plot_topk_comparison([img for img, _ in samples], [t["boxes"] for _, t in samples], predictions,
                                       k=TOP_K, sizes=[t["size"].tolist() for _, t in samples], models_as_rows=True)
        if SAVE_THUMBNAIL:
            viz.save_thumbnail(fig, THUMBNAILS / "04_candidate_quality.png")
        fig
        """),
        md("""
        ## 2. Layer by layer
        The same image through the four decoder layers: each layer refines the boxes of the one
        before. MS-DETR's candidates should tighten earlier.
        """),
        code("""
        img, t = samples[0]
        per_layer = {}
        for name, m in models.items():
            o = widgets.run_model(m, img, aux=False)
            per_layer[name] = [widgets.topk_candidates(o, layer=l) for l in range(len(o["o2o"]))]
        viz.plot_topk_per_layer(img, t["boxes"], per_layer, k=TOP_K, size=t["size"].tolist())
        """),
        md("""
        ## 3. Explore
        Image, decoder layer, model (or both side by side) and how many top queries to draw.
        """),
        code("""
        panel = widgets.candidates_panel(models, val_ds, indices=range(N_IMAGES), k=TOP_K)
        panel
        """),
        md("""
        ## 4. Candidate quality per decoder layer, over the validation set
        `analysis.candidate_quality_over_loader` measures, class-agnostically and per layer: the
        best IoU any query reaches per GT, how many queries overlap each GT at IoU 0.5 / 0.7, the
        recall of the top-20 queries, and the duplicates among confident queries. Expect MS-DETR
        higher on the first rows (more good candidates per object), while duplicates stay low:
        that is the o2o head's job, and it is still there.
        """),
        code("""
        from torch.utils.data import DataLoader
        from msdetr_lite import analysis
        from msdetr_lite.data import collate

        loader = DataLoader(val_ds, batch_size=8, collate_fn=collate)
        stats = {name: analysis.candidate_quality_over_loader(m, loader, "cpu", topk=TOP_K, max_batches=STAT_BATCHES,
                                                              progress=False)
                 for name, m in models.items()}
        viz.recolor_by_scheme(analysis.plot_candidate_quality(stats))
        """),
        code("""
        rows = [{"model": name, "layer": l + 1, **{k: round(v, 3) for k, v in layer.items()}}
                for name, st in stats.items() for l, layer in enumerate(st["layers"])]
        print(f"{stats['ms']['num_images']} images, {stats['ms']['num_gt']} GT boxes")
        display(Markdown(viz.markdown_table(rows)))
        """),
    ]


# ================================================================================================
def nb_05_coco():
    return [
        md("""
        # 05 · Training on COCO

        The tiny runs of the other notebooks use the very code path of the real thing. This
        notebook is the recipe for COCO 2017 with the paper's configuration (`r50` preset), and,
        in fast mode or without COCO at hand, runs the same commands on the embedded data.

        ## 1. Data layout
        The standard COCO 2017 layout, read with pycocotools:

        ```
        /path/to/coco/
          train2017/            000000000009.jpg ...
          val2017/              000000000139.jpg ...
          annotations/
            instances_train2017.json
            instances_val2017.json
        ```

        Point `data.root` at it and name the splits: `data.train_split=train2017
        data.val_split=val2017`. Categories are mapped to contiguous labels (0..79) and back for
        COCOeval. The embedded `data/shapes` uses the same layout with splits `train` / `val`.
        """),
        code(SETUP),
        parameters("""
        COCO_ROOT = None                        # e.g. "/data/coco": run on COCO (needs a GPU for the r50 preset)
        PRESET = "tiny"                         # "r50" on COCO
        OUTPUT_DIR = str(zoo.zoo_root() / ("fast" if FAST else "full") / "coco_recipe")
        """),
        md("""
        ## 2. The `r50` preset: the paper's configuration
        ResNet-50 (frozen BatchNorm), 6 + 6 layers of width 256, 300 queries, K = 6, tau = 0.4,
        alpha = 0.3, AdamW 2e-4 (backbone 2e-5), batch 16, 12 epochs with a 10x drop after 11.
        Where `tiny` differs:
        """),
        code("""
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
        """),
        md("""
        ## 3. The commands
        **Pretrained backbone.** Nothing is downloaded: save torchvision's ImageNet ResNet-50 weights
        once (`torch.save(torchvision.models.resnet50(weights="IMAGENET1K_V1").state_dict(), "r50.pth")`
        on a machine with internet) and pass `model.pretrained=r50.pth`.

        **One GPU** (`train.batch_size` is the total batch; lower it and the lr together if memory is short):
        ```bash
        msdetr train --preset r50 data.root=/path/to/coco data.train_split=train2017 data.val_split=val2017 \\
            model.pretrained=r50.pth train.output_dir=runs/r50_ms
        # the o2o baseline, H-DETR, Group-DETR: add model.supervision=o2o | hybrid | group
        # bf16 autocast: train.amp=true; continue an interrupted run: the same command plus --resume
        ```
        **Several GPUs** (one process per GPU; the same batch 16 in total):
        ```bash
        torchrun --nproc_per_node 8 -m msdetr_lite train --preset r50 data.root=/path/to/coco \\
            data.train_split=train2017 data.val_split=val2017 model.pretrained=r50.pth train.output_dir=runs/r50_ms
        ```
        **Several nodes** (run on every node, `--node_rank` 0..N-1, node 0's address as rendezvous):
        ```bash
        torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr node0 --master_port 29500 \\
            -m msdetr_lite train --preset r50 data.root=/path/to/coco data.train_split=train2017 \\
            data.val_split=val2017 model.pretrained=r50.pth train.output_dir=runs/r50_ms
        ```
        **Evaluation** (COCOeval box AP of every decoder layer, candidate statistics):
        ```bash
        msdetr eval --checkpoint runs/r50_ms/final.pth data.root=/path/to/coco data.val_split=val2017
        msdetr compare runs/r50_ms runs/r50_o2o --out runs/compare
        ```
        A run folder holds `config.json`, `metrics.jsonl` (losses per step, AP per epoch),
        `checkpoint.pth` (resume), `final.pth` (weights + config) and `eval.json`.
        """),
        md("""
        ## 4. The same commands, here
        Without `COCO_ROOT` this trains the `tiny` preset on the embedded data for a few steps,
        through the very CLI above (`python -m msdetr_lite` is `msdetr`).
        """),
        code("""
        import shlex
        import subprocess

        if COCO_ROOT:
            data_args = [f"data.root={COCO_ROOT}", "data.train_split=train2017", "data.val_split=val2017"]
        else:
            data_args = [f"data.root={zoo.ensure_data()}"]
        schedule = (["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=2", "data.max_images=4"] if FAST
                    else ["train.epochs=2", "train.max_steps_per_epoch=20", "data.max_images=200"])
        if COCO_ROOT and not FAST:
            schedule = []                       # the preset's full schedule
        device = [] if torch.cuda.is_available() else ["train.device=cpu", "data.num_workers=0"]
        cmd = [sys.executable, "-m", "msdetr_lite", "train", "--preset", PRESET, "--no-progress", *data_args,
               *schedule, *device, f"train.output_dir={OUTPUT_DIR}"]
        print("$ msdetr", shlex.join(cmd[3:]))
        t0 = time.perf_counter()
        env = dict(os.environ, OMP_NUM_THREADS=str(zoo.default_threads()))
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=zoo.PROJECT_ROOT)
        print(result.stdout[-3000:], result.stderr[-3000:])
        assert result.returncode == 0, f"training failed with exit code {result.returncode}"
        print(f"trained in {time.perf_counter() - t0:.0f} s")
        """),
        md("""
        ## 5. Evaluation with COCOeval, in Python
        `msdetr eval` calls `msdetr_lite.evaluation.evaluate`: the model's o2o predictions become
        COCO result dicts (`[x, y, w, h]` in the original image's pixels, dataset category ids),
        pycocotools' `COCOeval` scores them, once per decoder layer.
        """),
        code("""
        from torch.utils.data import DataLoader
        from msdetr_lite.data import build_dataset, collate
        from msdetr_lite.engine import load_model_from_checkpoint
        from msdetr_lite.evaluation import evaluate, format_metrics
        from msdetr_lite.models import postprocess
        from msdetr_lite.evaluation import detections_to_coco

        model, run_cfg = load_model_from_checkpoint(Path(OUTPUT_DIR) / "final.pth", device="cpu")
        val_ds = build_dataset(run_cfg.data, "val")
        loader = DataLoader(val_ds, batch_size=run_cfg.train.batch_size, collate_fn=collate)   # as in training
        ev = evaluate(model, loader, "cpu", layers="all", progress=False, per_class=True)
        print(f"{ev['num_images']} images")
        for layer_id, metrics in zip(ev["layer_ids"], ev["layers"]):
            print(f"decoder layer {layer_id + 1}:", format_metrics(metrics))
        print("per class AP (final layer):", {val_ds.class_names[val_ds.cat_id_to_label[c]]: round(100 * ap, 1)
                                              for c, ap in ev["final"]["per_class"].items()})

        img, t = val_ds[0]
        dets = postprocess(widgets.run_model(model, img, aux=False), t["orig_size"][None], k=3)[0]
        print("COCO results format:", detections_to_coco(dets, t["image_id"], val_ds.label_to_cat_id))
        """),
        code("""
        fig = viz.plot_ap_per_layer({"this run": ev})
        if SAVE_THUMBNAIL:
            viz.save_thumbnail(fig, THUMBNAILS / "05_train_on_coco.png")
        fig
        """),
    ]


NOTEBOOKS = {
    "00_tour": nb_00_tour,
    "01_assignments": nb_01_assignments,
    "02_deformable_attention": nb_02_deformable_attention,
    "03_mixed_supervision_training": nb_03_training,
    "04_candidate_quality": nb_04_candidates,
    "05_train_on_coco": nb_05_coco,
}


def build(name: str):
    nb = new_notebook(cells=NOTEBOOKS[name]())
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):          # stable ids: rebuilding gives identical files
        cell["id"] = f"{name[:2]}-{i:02d}"
    nbformat.validate(nb)
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the notebooks are up to date")
    parser.add_argument("names", nargs="*", help=f"notebooks to build (default: all of {list(NOTEBOOKS)})")
    args = parser.parse_args(argv)
    stale = []
    for name in args.names or NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(build(name)) + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print("out of date (run python notebooks/build_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
