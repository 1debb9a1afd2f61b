"""Regime study: o2o, ms and hybrid over a grid of cells, two seeds each, NMS-free and with NMS.

    python bench/regime.py                                   # every cell of msdetr_lite.regime.CELLS
    python bench/regime.py --cells demo tap_after_sa --schemes o2o ms
    python bench/regime.py --report-only                     # table, JSON and plot of what has finished
    python bench/regime.py --jobs 4 train.device=cuda        # on a GPU: several runs at once

Each (cell, scheme, seed) is one `msdetr train --preset tiny` run (a subprocess, the demo's
recipe plus the cell's overrides) under --runs/CELL/SCHEME_sSEED; its eval.json holds the AP
with and without class-wise NMS (train.eval_nms_iou; runs trained without it are evaluated
again into eval_nms.json). Finished runs are kept and skipped,
an interrupted one continues with --resume: stop at any time and run the same command again.
Schemes a cell does not change reuse the `demo` cell's runs (e.g. o2m loss weights and o2o).

Cost on the 2-core CPU: about 5-6 min per run at the demo's recipe, so a cell of 3 schemes x 2
seeds is about 35 min and the whole default grid several sittings; run it by cells, most telling
first (CELLS is ordered that way). Writes --json (default bench/results/regime.json) and a plot
next to it; the table prints AP x100, mean over seeds +- half the spread.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from msdetr_lite import regime  # noqa: E402


def evaluate_run(run: Path, device: str) -> None:
    """eval_nms.json of a finished run: evaluate(nms_iou=NMS_IOU) of its final.pth on the val set."""
    from msdetr_lite.checkpoint import load_model_from_checkpoint
    from msdetr_lite.data import build_dataset, build_val_loader
    from msdetr_lite.evaluation import evaluate

    model, cfg = load_model_from_checkpoint(run / "final.pth", device=device)
    loader = build_val_loader(cfg, build_dataset(cfg.data, "val"), cfg.train.batch_size)
    result = evaluate(model, loader, next(model.parameters()).device, progress=False, nms_iou=regime.NMS_IOU)
    tmp = run / (regime.NMS_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(run / regime.NMS_FILE)


_DATA_LOCK = threading.Lock()


def ensure_data(root: Path, variant: str) -> None:
    """The shapes variant's data under `root`, generated once (the same 1200 train / 200 val images
    and seed as data/shapes); a folder without both annotation files is generated again."""
    with _DATA_LOCK:                                  # two runs of one cell must not both write it
        ann = root / "annotations"
        if (ann / "instances_train.json").is_file() and (ann / "instances_val.json").is_file():
            return
        from msdetr_lite.data.synthetic import generate
        tmp = root.with_name(root.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)                        # a generation this script began and never finished
        generate(tmp, variant=variant, progress=True)
        tmp.replace(root)


def ensure_trunk(out: Path) -> str:
    """The weights of msdetr_lite.trunk's default recipe under `out`, built once (about 10 min on
    one CPU thread; cached by recipe and code)."""
    from msdetr_lite import trunk
    with _DATA_LOCK:
        return trunk.build(out=out, progress=False)["path"]


def run_one(cell: str, scheme: str, seed: int, args) -> str:
    """Train (or continue) one run and evaluate it; returns a one-line status."""
    run = regime.run_dir(args.runs, regime.CELLS, cell, scheme, seed)
    if regime.run_record(run) is not None:
        return f"{run}: done"
    t0 = time.perf_counter()
    if not (run / "eval.json").is_file():
        source = regime.CELLS[regime.source_cell(regime.CELLS, cell, scheme)]
        if source.data:
            ensure_data(regime.data_root(args.runs, source.data), source.data)
        trunk_path = ensure_trunk(Path(args.runs).parent / "trunks") if source.trunk else None
        cmd = [sys.executable, "-m", "msdetr_lite", "train", "--preset", "tiny", "--no-progress",
               *regime.train_overrides(regime.CELLS, cell, scheme, seed, run, args.runs, trunk_path),
               *args.overrides]
        if (run / "checkpoint.pth").is_file():
            cmd.append("--resume")                 # an interrupted run continues
        elif run.exists():
            shutil.rmtree(run)                     # started but no epoch finished: nothing to keep
        run.parent.mkdir(parents=True, exist_ok=True)
        with open(run.parent / f"{run.name}.log", "a") as log:
            if subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                return f"{run}: training FAILED (see {run.parent / (run.name + '.log')})"
    if regime.run_record(run) is None:        # trained without train.eval_nms_iou: evaluate again
        code = subprocess.run([sys.executable, __file__, "--evaluate-run", str(run), "--device", args.device],
                              cwd=REPO).returncode
        if code != 0:
            return f"{run}: NMS evaluation FAILED"
    return f"{run}: trained and evaluated in {time.perf_counter() - t0:.0f} s"


def report(args) -> int:
    records = regime.collect(args.runs, regime.CELLS, args.cells, args.schemes, args.seeds)
    summary = regime.summarize(records)
    if not summary:
        print("no finished runs yet")
        return 0
    print(f"\nAP x100 of the final decoder layer, NMS-free and with class-wise NMS at IoU {regime.NMS_IOU}; "
          f"differences to o2o paired by seed (mean +- half the spread over seeds {args.seeds})\n")
    print(regime.format_table(summary))
    print()
    for name in dict.fromkeys(r["cell"] for r in records):
        print(f"  {name}: {regime.CELLS[name].question}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    cells = {n: {"overrides": list(regime.CELLS[n].overrides), "question": regime.CELLS[n].question,
                 "only": regime.CELLS[n].only} for n in args.cells}
    from msdetr_lite.kernel_bench import describe_machine
    out.write_text(json.dumps({"machine": describe_machine(), "date": time.strftime("%Y-%m-%d"),
                               "base_overrides": list(regime.BASE_OVERRIDES), "nms_iou": regime.NMS_IOU,
                               "cells": cells, "summary": summary, "runs": records}, indent=2) + "\n")
    plot = out.with_suffix(".png")
    regime.plot_study(summary, plot)
    written = [out, plot]
    from msdetr_lite import report as study_report, viz
    # demo and ep8, the schedule question: the gap and the duplicates epoch by epoch
    fig = study_report.regime_epochs_figure({"runs": records, "nms_iou": regime.NMS_IOU})
    if fig is not None:
        written.append(out.with_name(out.stem + "_epochs.png"))
        viz.save_figure(fig, written[-1])
    if args.probe:
        probes = probe_cells(args, records)
        if probes:
            data = json.loads(out.read_text())
            data["probe"] = {"max_images": args.probe_images, "cells": probes}
            out.write_text(json.dumps(data, indent=2) + "\n")
            for cell, by_scheme in probes.items():
                written.append(out.with_name(f"{out.stem}_probe_{cell}.png"))
                viz.save_figure(viz.plot_probe(by_scheme), written[-1])
    print("\nwrote " + ", ".join(map(str, written)))
    return 0


def probe_cells(args, records) -> dict:
    """{cell: {scheme: probe.mean_over_runs(...)}} of the --probe cells' finished runs that kept
    epoch snapshots (probe.probe_run, cached in each run folder)."""
    from msdetr_lite.probe import mean_over_runs, probe_run
    out = {}
    for cell in args.probe:
        by_scheme = {}
        for scheme in args.schemes:
            runs = [regime.run_dir(args.runs, regime.CELLS, cell, scheme, r["seed"]) for r in records
                    if r["cell"] == cell and r["scheme"] == scheme]
            runs = [r for r in runs if any(r.glob("epoch_*.pth"))]
            if runs:
                print(f"probe: {cell} {scheme} ({len(runs)} runs)", flush=True)
                by_scheme[scheme] = mean_over_runs([probe_run(r, args.probe_images) for r in runs])
        if by_scheme:
            out[cell] = by_scheme
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=list(regime.CELLS), choices=list(regime.CELLS))
    p.add_argument("--schemes", nargs="+", default=list(regime.SCHEMES), choices=["o2o", "ms", "hybrid", "group"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--runs", default=str(REPO / "bench" / "results" / "regime"), help="run folders")
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "regime.json"))
    p.add_argument("--jobs", type=int, default=1, help="runs at once (1 on a CPU; several on a GPU)")
    p.add_argument("--device", default="auto", help="device of the NMS evaluation")
    p.add_argument("--report-only", action="store_true", help="no training: table, JSON, plot")
    p.add_argument("--probe", nargs="*", default=[], metavar="CELL",
                   help="also run the mechanism probe (msdetr_lite.probe) on these cells' epoch snapshots")
    p.add_argument("--probe-images", type=int, default=100, help="val images per probed snapshot (0 = all)")
    p.add_argument("--evaluate-run", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="added to every run")
    args = p.parse_args(argv)
    if args.evaluate_run:
        evaluate_run(Path(args.evaluate_run), args.device)
        return 0
    if "o2o" not in args.schemes:
        p.error("--schemes must include o2o: every difference is to the o2o baseline")

    if not args.report_only:
        # o2o and ms of every cell first: the headline comparison; hybrid after them
        order = sorted(((c, s, seed) for c in args.cells for s in args.schemes for seed in args.seeds),
                       key=lambda t: (t[1] not in ("o2o", "ms"), args.cells.index(t[0]), t[2], t[1]))
        seen, todo = set(), []
        for c, s, seed in order:             # cells that reuse the demo's runs share them
            key = regime.run_dir(args.runs, regime.CELLS, c, s, seed)
            if key not in seen:
                seen.add(key)
                todo.append((c, s, seed))
        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            for line in pool.map(lambda t: run_one(*t, args), todo):
                print(line, flush=True)
    return report(args)


if __name__ == "__main__":
    raise SystemExit(main())
