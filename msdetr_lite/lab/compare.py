"""`msdetr compare`: runs side by side, written as files.

    compare_runs(["runs/ms", "runs/o2o"], "runs/compare")   # loss / AP PNGs + summary.{json,md}

Runs are read by `msdetr_lite.runs` (config.json, metrics.jsonl, eval.json); every figure is drawn by
`msdetr_lite.viz`, in the suite's palette, every table by `msdetr_lite.lab.readings`; this module
only chooses and writes them. It replaces only the files it wrote there (`msdetr_lite.outputs`), or
any with `overwrite`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .. import viz
from ..outputs import check_replace, record
from ..runs import Run, load_run
from .readings import run_label, summarize_run, summary_table


def _by_label(runs: Sequence[Run]) -> dict[str, Run]:
    """{legend label: run}, labels made unique (two runs may share a folder name)."""
    out: dict[str, Run] = {}
    for run in runs:
        label = run_label(run)
        out[label if label not in out else f"{label} #{len(out) + 1}"] = run
    return out


# the loss panels of a comparison: each branch's total, then the final layer's o2o terms (Fig. 2)
LOSS_PANELS = (("o2o", None, None), ("o2m", None, None), ("enc", None, None),
               ("o2o", "cls", -1), ("o2o", "bbox", -1), ("o2o", "giou", -1))


COMPARE_FILES = ("loss_curves.png", "ap_per_epoch.png", "ap_per_layer.png", "o2o_losses.png", "summary.json",
                 "summary.md")


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path,
                 labels: Optional[Sequence[str]] = None, overwrite: bool = False, owner: str = "compare") -> dict:
    """Write COMPARE_FILES (loss_curves.png, ap_per_epoch.png, ap_per_layer.png, o2o_losses.png,
    summary.json, summary.md) comparing the runs side by side; returns {"summaries": [...],
    "files": [...]}. Files there that `owner` did not write are kept (OutputError) unless `overwrite`."""
    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    if labels and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    out = Path(out_dir)
    check_replace(out, COMPARE_FILES, owner, overwrite, how="pass --overwrite to replace them, or choose another --out")
    runs = [load_run(d, name=labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    out.mkdir(parents=True, exist_ok=True)
    files = [out / name for name in COMPARE_FILES[:4]]
    by_label = _by_label(runs)
    viz.save_figure(viz.plot_loss_curves(by_label, panels=LOSS_PANELS, x="epoch", steps_behind=True,
                                         title="training losses (weighted, as optimised)"), files[0])
    viz.save_figure(viz.plot_ap_curves(by_label, metrics=("AP",), per_layer=True), files[1])
    viz.save_figure(viz.plot_ap_per_layer(by_label, metrics=("AP",)), files[2])
    viz.save_figure(viz.plot_o2o_losses(by_label), files[3])          # the paper's Fig. 2
    summaries = [summarize_run(r) for r in runs]
    (out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (out / "summary.md").write_text("AP values x100 (COCO), final decoder layer unless noted.\n\n"
                                    + summary_table(summaries))
    files += [out / "summary.json", out / "summary.md"]
    record(out, COMPARE_FILES, owner)
    return {"summaries": summaries, "files": [str(f) for f in files]}
