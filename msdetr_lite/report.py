"""Comparing runs: loss curves, AP per epoch and per decoder layer, and the demo report.

    compare_runs(["runs/ms", "runs/o2o"], "runs/compare")   # PNGs + summary.{json,md}
    run_demo("runs/demo", epochs=6)                          # data, two trainings, report.md

Runs are read by `msdetr_lite.runs` (config.json, metrics.jsonl, eval.json).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

from .runs import Run, load_run, loss_value

AP_KEYS = ("AP", "AP50", "AP75")


def _label(run: Run) -> str:
    sup = run.supervision
    return f"{run.name} ({sup})" if sup and sup not in run.name else run.name


def _fmt(v, scale=100.0, digits=1) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or v < 0)):
        return "-"
    return f"{scale * v:.{digits}f}"


# ---------------------------------------------------------------- plots
def plot_loss_curves(runs: Sequence[Run], path: str | Path):
    """Panels: total o2o / o2m / encoder loss (all layers), and the final layer's o2o class, L1
    and GIoU losses (the paper's Fig. 2). Thin lines: logged steps; markers: epoch means."""
    from matplotlib.figure import Figure
    panels = [("o2o", None, None, "o2o, all layers"), ("o2m", None, None, "o2m, all layers"),
              ("enc", None, None, "encoder proposals"), ("o2o", -1, "cls", "o2o final layer: class"),
              ("o2o", -1, "bbox", "o2o final layer: L1"), ("o2o", -1, "giou", "o2o final layer: GIoU")]
    fig = Figure(figsize=(13, 6.5), layout="constrained")
    axes = fig.subplots(2, 3).flatten()
    for ax, (branch, layer, kind, title) in zip(axes, panels):
        for i, run in enumerate(runs):
            color = f"C{i}"
            xs, ys = [], []
            for x, r in zip(run.step_epochs(), run.steps):
                v = loss_value(r["losses"], branch, kind, layer)
                if v is not None:
                    xs.append(x), ys.append(v)
            if xs:
                ax.plot(xs, ys, color=color, alpha=0.35, linewidth=0.8)
            ex = [(r["epoch"], loss_value(r["losses"], branch, kind, layer)) for r in run.epochs]
            ex = [(e, v) for e, v in ex if v is not None]
            if ex:
                ax.plot(*zip(*ex), color=color, marker="o", label=_label(run))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no such loss in these runs", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    fig.suptitle("training losses (weighted, as optimised)")
    _save(fig, path)
    return fig


def plot_ap_per_epoch(runs: Sequence[Run], path: str | Path, key: str = "AP"):
    """One panel per run: `key` vs epoch for every decoder layer; a last panel overlays the
    final layer of all runs."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4 * (len(runs) + 1), 3.6), layout="constrained")
    axes = fig.subplots(1, len(runs) + 1, squeeze=False)[0]
    for i, (ax, run) in enumerate(zip(axes, runs)):
        evals = run.epoch_evals()
        n_layers = max((len(e["layers"]) for _, e in evals), default=0)
        for l in range(n_layers):
            pts = [(ep, 100 * e["layers"][l][key]) for ep, e in evals if l < len(e["layers"])]
            ax.plot(*zip(*pts), marker=".", label=f"layer {l + 1}", color=_layer_color(l, n_layers))
        final = [(ep, 100 * e["final"][key]) for ep, e in evals]
        if final:
            axes[-1].plot(*zip(*final), marker="o", color=f"C{i}", label=_label(run))
        ax.set_title(_label(run), fontsize=10)
        _ap_axes(ax, key)
    axes[-1].set_title(f"final layer, all runs", fontsize=10)
    _ap_axes(axes[-1], key)
    _save(fig, path)
    return fig


def plot_ap_per_layer(runs: Sequence[Run], path: str | Path, key: str = "AP"):
    """Final `key` of every decoder layer (from eval.json), one line per run."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5, 3.6), layout="constrained")
    ax = fig.subplots()
    for i, run in enumerate(runs):
        ev = run.final_eval()
        if not ev:
            continue
        ys = [100 * l[key] for l in ev["layers"]]
        ax.plot(range(1, len(ys) + 1), ys, marker="o", color=f"C{i}", label=_label(run))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(f"{key} (x100)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"final {key} per decoder layer", fontsize=10)
    _save(fig, path)
    return fig


def _layer_color(l: int, n: int):
    from matplotlib import colormaps
    return colormaps["viridis"](0.15 + 0.7 * l / max(n - 1, 1))


def _ap_axes(ax, key):
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{key} (x100)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- tables
def summarize_run(run: Run) -> dict:
    """Final APs (x1 fractions), AP per layer, time per epoch and peak memory of a run."""
    ev = run.final_eval() or {}
    times = [r["epoch_time"] for r in run.epochs]
    mems = [r.get("peak_mem_mb") for r in run.epochs if r.get("peak_mem_mb") is not None]
    final = ev.get("final", {})
    return {"name": run.name, "dir": str(run.dir), "label": _label(run), "supervision": run.supervision,
            "epochs": len(run.epochs), **{k: final.get(k) for k in AP_KEYS},
            "AP_per_layer": [l.get("AP") for l in ev.get("layers", [])],
            "time_per_epoch_s": sum(times) / len(times) if times else None,
            "peak_mem_mb": max(mems) if mems else None,
            "peak_mem_kind": run.epochs[-1].get("peak_mem_kind") if run.epochs else None}


def markdown_table(summaries: Sequence[dict]) -> str:
    n_layers = max((len(s["AP_per_layer"]) for s in summaries), default=0)
    head = (["model", "AP", "AP50", "AP75"] + [f"AP L{l + 1}" for l in range(n_layers)]
            + ["s / epoch", "peak mem (MB)"])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        layers = [_fmt(v) for v in s["AP_per_layer"]] + ["-"] * (n_layers - len(s["AP_per_layer"]))
        t = f"{s['time_per_epoch_s']:.1f}" if s["time_per_epoch_s"] is not None else "-"
        m = f"{s['peak_mem_mb']:.0f}" if s["peak_mem_mb"] is not None else "-"
        rows.append("| " + " | ".join([s["label"], *(_fmt(s[k]) for k in AP_KEYS), *layers, t, m]) + " |")
    return "\n".join(rows) + "\n"


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path,
                 labels: Optional[Sequence[str]] = None) -> dict:
    """Write loss_curves.png, ap_per_epoch.png, ap_per_layer.png, summary.json and summary.md
    comparing the runs side by side; returns {"summaries": [...], "files": [...]}."""
    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    if labels and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    runs = [load_run(d, name=labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "loss_curves.png", out / "ap_per_epoch.png", out / "ap_per_layer.png"]
    plot_loss_curves(runs, files[0])
    plot_ap_per_epoch(runs, files[1])
    plot_ap_per_layer(runs, files[2])
    summaries = [summarize_run(r) for r in runs]
    (out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (out / "summary.md").write_text("AP values x100 (COCO), final decoder layer unless noted.\n\n"
                                    + markdown_table(summaries))
    files += [out / "summary.json", out / "summary.md"]
    return {"summaries": summaries, "files": [str(f) for f in files]}


# ---------------------------------------------------------------- detections figure
def plot_detections(models: dict, dataset, path: str | Path, indices: Sequence[int] = (0, 1, 2, 3),
                    score_thresh: float = 0.3, max_dets: int = 20, min_shown: int = 3, device="cpu"):
    """Rows: models ({name: model in eval mode}); columns: val images. Boxes with score >=
    score_thresh (at most max_dets; the best `min_shown` if none reaches it) drawn with
    torchvision's draw_bounding_boxes; GT in white."""
    import torch
    from matplotlib.figure import Figure
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_bounding_boxes

    from msdetr_lite.data import collate
    from msdetr_lite.models import postprocess

    indices = [i for i in indices if i < len(dataset)]
    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]
    fig = Figure(figsize=(3.2 * len(indices), 3.3 * len(models)), layout="constrained")
    axes = fig.subplots(len(models), len(indices), squeeze=False)
    names = getattr(dataset, "class_names", None)
    for col, idx in enumerate(indices):
        image, target = dataset[idx]
        images, masks, targets = collate([(image, target)])
        raw = TF.pil_to_tensor(dataset.load_image(idx))           # uint8 [3, H, W] of the file
        gt = dataset.raw_target(idx)["boxes"]
        scale = max(1, 320 // min(raw.shape[-2:]))                 # small images: enlarge before drawing
        raw = raw.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        gt = gt * scale
        for row, (model_name, model) in enumerate(models.items()):
            with torch.no_grad():
                outputs = model(images.to(device), masks.to(device))
            det = postprocess(outputs, torch.stack([t["orig_size"] for t in targets]).to(device), k=max_dets)[0]
            keep = det["scores"] >= score_thresh
            note = f"{int(keep.sum())} dets"
            if not keep.any():                    # a weak model: show its best few anyway
                keep[:min_shown] = True
                note = f"top-{min_shown}, all < {score_thresh}"
            boxes, labels, scores = det["boxes"][keep].cpu() * scale, det["labels"][keep].cpu(), det["scores"][keep].cpu()
            canvas = draw_bounding_boxes(raw, gt, colors="white", width=1) if len(gt) else raw
            if len(boxes):
                text = [f"{names[l] if names else l} {s:.2f}" for l, s in zip(labels.tolist(), scores.tolist())]
                canvas = draw_bounding_boxes(canvas, boxes, labels=text, width=2,
                                             colors=[palette[l % len(palette)] for l in labels.tolist()])
            ax = axes[row, col]
            ax.imshow(canvas.permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(model_name)
            ax.set_title(f"image {int(target['image_id'])}: {note}", fontsize=8)
    fig.suptitle(f"detections with score >= {score_thresh} (white: ground truth)")
    _save(fig, path)
    return fig


# ---------------------------------------------------------------- the demo
def run_demo(out: str | Path = "runs/demo", epochs: Optional[int] = None, data_root: str = "data/shapes",
             preset_name: str = "tiny", seed: int = 42, overrides: Sequence[str] = (),
             progress: bool = True) -> dict:
    """Generate the shapes data if missing, train MS-DETR (`ms`) and the `o2o` baseline with the
    same budget and seed, evaluate both, and write out/report.md with plots."""
    from msdetr_lite import analysis
    from msdetr_lite.config import apply_overrides, preset
    from msdetr_lite.data import build_dataset, resolve_root
    from msdetr_lite.data.synthetic import generate
    from msdetr_lite.engine import build_val_loader, load_model_from_checkpoint, resolve_device, train

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = resolve_root(data_root)
    if not (root / "annotations" / "instances_train.json").exists():
        print(f"demo: generating the synthetic shapes dataset into {data_root}")
        generate(data_root)
        root = resolve_root(data_root)

    runs = {}
    for sup in ("ms", "o2o"):
        cfg = preset(preset_name)
        opts = [f"data.root={root}", f"model.supervision={sup}", f"train.seed={seed}",
                f"train.output_dir={out / sup}", *overrides]
        if epochs is not None:
            opts += [f"train.epochs={epochs}", f"train.lr_drop={max(1, epochs - 1)}"]
        cfg = apply_overrides(cfg, opts)
        print(f"demo: training {sup} ({cfg.train.epochs} epochs)")
        train(cfg, progress=progress)
        runs[sup] = out / sup
    cmp = compare_runs([runs["ms"], runs["o2o"]], out, labels=["MS-DETR (ms)", "baseline (o2o)"])

    # candidate quality and detections of both trained models on the val set
    device = resolve_device("auto")
    models, cfg = {}, None
    for name, run in (("MS-DETR (ms)", runs["ms"]), ("baseline (o2o)", runs["o2o"])):
        models[name], cfg = load_model_from_checkpoint(run / "final.pth", device=device)
    val = build_dataset(cfg.data, "val")
    loader = build_val_loader(cfg, val, cfg.train.batch_size)
    cand = {name: analysis.candidate_quality_over_loader(m, loader, device, progress=progress)
            for name, m in models.items()}
    analysis.save_json(cand, out / "candidates.json")
    analysis.plot_candidate_quality(cand, out / "candidates.png")
    plot_detections(models, val, out / "detections.png", device=device)

    s = cmp["summaries"]
    ms_ap, o2o_ap = s[0]["AP"] or 0.0, s[1]["AP"] or 0.0
    c_ms, c_o2o = cand["MS-DETR (ms)"]["layers"][-1], cand["baseline (o2o)"]["layers"][-1]
    elapsed = time.perf_counter() - t0
    tc = cfg.train
    report = f"""# MS-DETR vs the o2o baseline on synthetic shapes

Both detectors: preset `{preset_name}`, {tc.epochs} epochs, total batch {tc.batch_size},
lr {tc.lr:g} (backbone {tc.lr_backbone:g}), lr drop after epoch {tc.lr_drop}, seed {seed}, device
`{device}`. The only difference is `model.supervision`: `ms` adds one-to-many supervision to the
same queries of the same decoder (training only); `o2o` is the Deformable-DETR++ baseline.
Inference is identical (primary queries, top-100, no NMS). Total demo time {elapsed / 60:.1f} min.

## Results (COCO AP x100 on the val split)

{markdown_table(s)}
MS-DETR minus baseline: **{100 * (ms_ap - o2o_ap):+.1f} AP** at the final layer. On a run this
small the difference is noisy (try `bench/convergence.py` for several seeds).

## Candidate quality, final decoder layer (the paper's Fig. 1 statistics)

| model | best IoU per GT | best IoU, top-20 | queries IoU>=0.5 per GT | recall@0.5, top-20 | duplicates / image |
|---|---|---|---|---|---|
| MS-DETR (ms) | {c_ms['best_iou']:.3f} | {c_ms['best_iou_topk']:.3f} | {c_ms['num_iou50']:.2f} | {c_ms['recall50_topk']:.3f} | {c_ms['duplicates']:.2f} |
| baseline (o2o) | {c_o2o['best_iou']:.3f} | {c_o2o['best_iou_topk']:.3f} | {c_o2o['num_iou50']:.2f} | {c_o2o['recall50_topk']:.3f} | {c_o2o['duplicates']:.2f} |

![candidate quality](candidates.png)

## AP per epoch and per decoder layer

![AP per epoch](ap_per_epoch.png)

![AP per layer](ap_per_layer.png)

## Losses

![loss curves](loss_curves.png)

## Detections

![detections](detections.png)

Runs: `{runs['ms']}`, `{runs['o2o']}` (metrics.jsonl, eval.json, final.pth). Reproduce with
`msdetr demo --out {out} --epochs {tc.epochs}`; compare other runs with `msdetr compare RUN... --out DIR`.
"""
    (out / "report.md").write_text(report)
    print(f"demo: wrote {out / 'report.md'} ({elapsed / 60:.1f} min)")
    return {"report": str(out / "report.md"), "summaries": s, "candidates": cand, "seconds": elapsed}
