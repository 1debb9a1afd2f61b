"""`make demo` (`msdetr demo`): the synthetic data, MS-DETR and the o2o baseline trained with the same
budget and seed, both evaluated (NMS-free and with NMS, candidate quality), and out/report.md.

    run_demo("runs/demo", epochs=6)          # returns {"report", "summaries", "candidates", "nms", "seconds"}

A finished run of the same configuration is reused. The figures come from `msdetr_lite.viz`, the
tables and sentences from `msdetr_lite.lab.readings`, the comparison files from `lab.compare`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

from .. import viz
from .compare import compare_runs
from .readings import NMS_IOU, candidate_table, describe_nms_comparison, nms_rows, summary_table


def _finished_with(run_dir: Path, cfg) -> bool:
    """Whether run_dir holds a finished run (eval.json) trained with exactly `cfg`."""
    if not (run_dir / "eval.json").is_file() or not (run_dir / "config.json").is_file():
        return False
    return json.loads((run_dir / "config.json").read_text()) == json.loads(json.dumps(cfg.to_dict()))


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
    from msdetr_lite.evaluation import evaluate

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
        runs[sup] = out / sup
        if _finished_with(runs[sup], cfg):
            print(f"demo: {sup} already trained with this configuration in {runs[sup]}, reused")
            continue
        print(f"demo: training {sup} ({cfg.train.epochs} epochs)")
        # the demo owns its --out folder: a run there with another configuration is replaced
        train(cfg, progress=progress, overwrite=True)
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
    nms = {name: evaluate(m, loader, device, progress=progress, nms_iou=NMS_IOU) for name, m in models.items()}
    (out / "eval_nms.json").write_text(json.dumps(nms, indent=2) + "\n")
    viz.save_figure(viz.plot_nms_ap_per_layer({sup: nms[name] for sup, name in
                                               (("o2o", "baseline (o2o)"), ("ms", "MS-DETR (ms)"))}),
                    out / "ap_nms.png")
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
small the difference is noisy (one seed; `make regime` runs two per cell).

## NMS-free and with NMS: candidates vs de-duplication

The detector runs NMS-free; the same predictions scored after class-wise NMS at IoU {NMS_IOU:g}
measure the candidates alone (AP x100 per decoder layer, duplicates per image at the final layer).

{viz.markdown_table(nms_rows(nms))}

{describe_nms_comparison({"ms": nms["MS-DETR (ms)"], "o2o": nms["baseline (o2o)"]})}

![AP per layer, without and with NMS](ap_nms.png)

## Candidate quality, final decoder layer (the paper's Fig. 1 statistics)

{candidate_table(cand)}
![candidate quality](candidates.png)

## AP per epoch and per decoder layer

![AP per epoch](ap_per_epoch.png)

![AP per layer](ap_per_layer.png)

## Losses

The paper's Fig. 2: the o2o classification and box losses per epoch (final layer), the baseline
dashed and MS-DETR solid.

![o2o losses per epoch](o2o_losses.png)

All branches:

![loss curves](loss_curves.png)

## Detections

![detections](detections.png)

Runs: `{runs['ms']}`, `{runs['o2o']}` (metrics.jsonl, eval.json, final.pth). Reproduce with
`msdetr demo --out {out} --epochs {tc.epochs}`; compare other runs with `msdetr compare RUN... --out DIR`.
"""
    (out / "report.md").write_text(report)
    print(f"demo: wrote {out / 'report.md'} ({elapsed / 60:.1f} min)")
    return {"report": str(out / "report.md"), "summaries": s, "candidates": cand, "nms": nms, "seconds": elapsed}
