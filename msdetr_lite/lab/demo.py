"""`make demo` (`msdetr demo`): the synthetic data, MS-DETR and the o2o baseline trained with the same
budget and seed, both evaluated (NMS-free and with NMS, candidate quality), and out/report.md.

    run_demo("runs/demo", epochs=6)          # returns {"report", "summaries", "candidates", "nms", "seconds"}

The two trainings run side by side, one `msdetr train` subprocess with one thread each (a progress
bar per run, each run's output in out/<name>.log; lab/side_by_side.py): on a 2-core CPU that is
both cores busy and no thread waiting on a descheduled partner (msdetr_lite/threads.py).
A finished run of the same configuration is reused, an interrupted one resumed; the demo replaces
only what it wrote in `out` (`msdetr_lite.outputs`), anything else stops it before any work. The figures come from `msdetr_lite.viz`, the
tables and sentences from `msdetr_lite.lab.readings`, the comparison files from `lab.compare`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

from .. import viz
from ..outputs import OutputError, check_replace, record
from .compare import COMPARE_FILES, compare_runs
from .side_by_side import train_side_by_side
from .readings import NMS_IOU, candidate_table, describe_nms_comparison, nms_rows, summary_table


DEMO_FILES = ("eval_nms.json", "ap_nms.png", "candidates.json", "candidates.png", "detections.png", "report.md")
DEMO_LOGS = ("ms.log", "o2o.log")                 # each training's output (lab/side_by_side.py)


def run_demo(out: str | Path = "runs/demo", epochs: Optional[int] = None, data_root: str = "data/shapes",
             preset_name: str = "tiny", seed: int = 42, overrides: Sequence[str] = (),
             progress: bool = True, overwrite: bool = False) -> dict:
    """Generate the shapes data if missing, train MS-DETR (`ms`) and the `o2o` baseline with the
    same budget and seed, evaluate both, and write out/report.md with plots.

    out is the demo's own folder (`msdetr_lite.outputs`): runs it trained there are reused (same
    configuration), resumed (interrupted) or replaced (another configuration), as are its report
    files; anything else there (a run or file the demo did not write, or changed since) stops the
    demo before any work (OutputError, every problem listed) unless `overwrite`."""
    from msdetr_lite import analysis
    from msdetr_lite.config import apply_overrides, preset
    from msdetr_lite.data import build_dataset, resolve_root
    from msdetr_lite.data.synthetic import generate
    from msdetr_lite.engine import build_val_loader, load_model_from_checkpoint, resolve_device
    from msdetr_lite.evaluation import evaluate
    from msdetr_lite.rundir import plan_run, run_files

    t0 = time.perf_counter()
    out = Path(out)
    root = resolve_root(data_root)
    runs, cfgs, plans, problems, opts_of = {}, {}, {}, [], {}
    for sup in ("ms", "o2o"):
        opts = [f"data.root={root}", f"model.supervision={sup}", f"train.seed={seed}",
                f"train.output_dir={out / sup}", *overrides]
        if epochs is not None:
            opts += [f"train.epochs={epochs}", f"train.lr_drop={max(1, epochs - 1)}"]
        cfgs[sup], runs[sup], opts_of[sup] = apply_overrides(preset(preset_name), opts), out / sup, opts
        plans[sup], refused = plan_run(runs[sup], cfgs[sup], "demo", overwrite)
        problems += refused
    try:
        check_replace(out, COMPARE_FILES + DEMO_FILES + DEMO_LOGS, "demo", overwrite,
                      how="pass --overwrite to replace them, or choose another --out")
    except OutputError as e:
        problems += e.problems
    if problems:                                   # before any work: nothing of the user's is touched
        raise OutputError(*problems)
    out.mkdir(parents=True, exist_ok=True)
    if not (root / "annotations" / "instances_train.json").exists():
        print(f"demo: generating the synthetic shapes dataset into {data_root}")
        generate(data_root)

    todo = {}
    for sup, cfg in cfgs.items():
        if plans[sup] == "reuse":
            print(f"demo: {sup} already trained with this configuration in {runs[sup]}, reused")
            continue
        flag = {"resume": ["--resume"], "replace": ["--overwrite"]}.get(plans[sup], [])
        todo[sup] = [*flag, *opts_of[sup]]
    if todo:
        tc = cfgs[next(iter(todo))].train
        steps = tc.epochs * (tc.max_steps_per_epoch or len(build_dataset(cfgs["ms"].data, "train")) // tc.batch_size)
        print(f"demo: training {' and '.join(todo)} side by side, one thread each ({tc.epochs} epochs, {steps} steps "
              f"each, an evaluation per epoch; logs in {out}/<name>.log)")
        try:
            walls = train_side_by_side(todo, {s: steps for s in todo}, out, {s: runs[s] for s in todo},
                                       preset=preset_name, threads=1, progress=progress)
        finally:                                  # the logs are the demo's, finished or not
            record(out, [f"{s}.log" for s in todo], "demo")
        for sup, wall in walls.items():
            print(f"demo: {sup} trained in {wall / 60:.1f} min")
            record(runs[sup], run_files(cfgs[sup].train), "demo")
    cmp = compare_runs([runs["ms"], runs["o2o"]], out, labels=["MS-DETR (ms)", "baseline (o2o)"],
                       overwrite=overwrite, owner="demo")

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
    record(out, DEMO_FILES, "demo")
    print(f"demo: wrote {out / 'report.md'} ({elapsed / 60:.1f} min)")
    return {"report": str(out / "report.md"), "summaries": s, "candidates": cand, "nms": nms, "seconds": elapsed}
