"""Comparing runs and the demo report: the files (PNGs, summary tables, report.md).

    compare_runs(["runs/ms", "runs/o2o"], "runs/compare")   # PNGs + summary.{json,md}
    run_demo("runs/demo", epochs=6)                          # data, two trainings, report.md

Runs are read by `msdetr_lite.runs` (config.json, metrics.jsonl, eval.json); every figure is
drawn by `msdetr_lite.viz`, in the suite's palette; this module only chooses and writes them.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

from . import viz
from .runs import Run, load_run

AP_KEYS = ("AP", "AP50", "AP75")


def _label(run: Run) -> str:
    sup = run.supervision
    return f"{run.name} ({sup})" if sup and sup not in run.name else run.name


def _fmt(v, scale=100.0, digits=1) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or v < 0)):
        return "-"
    return f"{scale * v:.{digits}f}"


def _by_label(runs: Sequence[Run]) -> dict[str, Run]:
    """{legend label: run}, labels made unique (two runs may share a folder name)."""
    out: dict[str, Run] = {}
    for run in runs:
        label = _label(run)
        out[label if label not in out else f"{label} #{len(out) + 1}"] = run
    return out


# the loss panels of a comparison: each branch's total, then the final layer's o2o terms (Fig. 2)
LOSS_PANELS = (("o2o", None, None), ("o2m", None, None), ("enc", None, None),
               ("o2o", "cls", -1), ("o2o", "bbox", -1), ("o2o", "giou", -1))


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


def summary_table(summaries: Sequence[dict]) -> str:
    """Markdown table of `summarize_run` results: AP x100 (final layer and per layer), time, memory."""
    n_layers = max((len(s["AP_per_layer"]) for s in summaries), default=0)
    layer_cols = [f"AP L{l + 1}" for l in range(n_layers)]
    rows = []
    for s in summaries:
        layers = [_fmt(v) for v in s["AP_per_layer"]] + ["-"] * (n_layers - len(s["AP_per_layer"]))
        rows.append({"model": s["label"], **{k: _fmt(s[k]) for k in AP_KEYS}, **dict(zip(layer_cols, layers)),
                     "s / epoch": _fmt(s["time_per_epoch_s"], 1.0, 1), "peak mem (MB)": _fmt(s["peak_mem_mb"], 1.0, 0)})
    columns = ["model", *AP_KEYS, *layer_cols, "s / epoch", "peak mem (MB)"]
    return viz.markdown_table(rows, columns) + "\n"


def candidate_table(stats_by_model: dict) -> str:
    """Markdown table of the final decoder layer's candidate statistics, one row per model."""
    rows = []
    for name, st in stats_by_model.items():
        c = st["layers"][-1]
        rows.append({"model": name, "best IoU per GT": f"{c['best_iou']:.3f}",
                     "best IoU, top-20": f"{c['best_iou_topk']:.3f}",
                     "queries IoU>=0.5 per GT": f"{c['num_iou50']:.2f}",
                     "recall@0.5, top-20": f"{c['recall50_topk']:.3f}", "duplicates / image": f"{c['duplicates']:.2f}"})
    return viz.markdown_table(rows) + "\n"


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
    by_label = _by_label(runs)
    viz.save_figure(viz.plot_loss_curves(by_label, panels=LOSS_PANELS, x="epoch", steps_behind=True,
                                         title="training losses (weighted, as optimised)"), files[0])
    viz.save_figure(viz.plot_ap_curves(by_label, metrics=("AP",), per_layer=True), files[1])
    viz.save_figure(viz.plot_ap_per_layer(by_label, metrics=("AP",)), files[2])
    summaries = [summarize_run(r) for r in runs]
    (out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (out / "summary.md").write_text("AP values x100 (COCO), final decoder layer unless noted.\n\n"
                                    + summary_table(summaries))
    files += [out / "summary.json", out / "summary.md"]
    return {"summaries": summaries, "files": [str(f) for f in files]}


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
    viz.save_figure(viz.plot_candidate_quality(cand), out / "candidates.png")
    viz.save_figure(viz.plot_detection_grid(models, val, device=device), out / "detections.png")

    s = cmp["summaries"]
    ms_ap, o2o_ap = s[0]["AP"] or 0.0, s[1]["AP"] or 0.0
    elapsed = time.perf_counter() - t0
    tc = cfg.train
    report = f"""# MS-DETR vs the o2o baseline on synthetic shapes

Both detectors: preset `{preset_name}`, {tc.epochs} epochs, total batch {tc.batch_size},
lr {tc.lr:g} (backbone {tc.lr_backbone:g}), lr drop after epoch {tc.lr_drop}, seed {seed}, device
`{device}`. The only difference is `model.supervision`: `ms` adds one-to-many supervision to the
same queries of the same decoder (training only); `o2o` is the Deformable-DETR++ baseline.
Inference is identical (primary queries, top-100, no NMS). Total demo time {elapsed / 60:.1f} min.

## Results (COCO AP x100 on the val split)

{summary_table(s)}
MS-DETR minus baseline: **{100 * (ms_ap - o2o_ap):+.1f} AP** at the final layer. On a run this
small the difference is noisy (try `bench/convergence.py` for several seeds).

## Candidate quality, final decoder layer (the paper's Fig. 1 statistics)

{candidate_table(cand)}
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
