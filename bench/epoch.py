"""Epoch time: one real epoch of `msdetr train` per scheme, each in a fresh process, side by side.

    python bench/epoch.py                                   # tiny preset, o2o and ms, a full epoch (300 steps)
    python bench/epoch.py --schemes o2o ms hybrid group --steps 100
    python bench/epoch.py train.device=cuda                 # on a GPU (issue 11's goal: <= 10 s per tiny epoch)

Unlike bench/overhead.py (the step alone, fixed inputs), this is everything a training epoch does:
data loading, the step, logging, the engine's one sync point per logged step. Each scheme trains
one epoch from scratch into a temporary run folder (`--overwrite`, no evaluation during the epoch);
the table gives the epoch time the engine measured, time per step and the ratio to o2o, and the
peak memory it logged. Writes --json (default bench/results/epoch.json), with the machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def time_epoch(scheme: str, args, root: Path) -> dict:
    from msdetr_lite.runs import load_run

    out = root / scheme
    cmd = [sys.executable, "-m", "msdetr_lite", "train", "--preset", args.preset, "--no-progress", "--overwrite",
           f"model.supervision={scheme}", "train.epochs=1", "train.eval_every=0", "train.eval_nms_iou=0",
           f"train.max_steps_per_epoch={args.steps}", f"train.output_dir={out}", *args.overrides]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{scheme}: msdetr train failed\n{res.stdout[-2000:]}{res.stderr[-3000:]}")
    [epoch] = load_run(out).epochs
    return {"scheme": scheme, "epoch_s": epoch["epoch_time"], "steps": epoch["steps"],
            "step_ms": 1000 * epoch["epoch_time"] / epoch["steps"], "peak_mem_mb": epoch.get("peak_mem_mb"),
            "peak_mem_kind": epoch.get("peak_mem_kind")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--schemes", nargs="+", default=["o2o", "ms"], choices=["o2o", "ms", "hybrid", "group"])
    p.add_argument("--steps", type=int, default=0, help="steps of the epoch (0: the whole epoch)")
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "epoch.json"))
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="added to every run")
    args = p.parse_args(argv)
    if "o2o" not in args.schemes:
        p.error("--schemes must include o2o: the ratios are to the o2o baseline")

    from msdetr_lite.kernel_bench import describe_machine

    with tempfile.TemporaryDirectory() as tmp:
        rows = [time_epoch(s, args, Path(tmp)) for s in args.schemes]
    base = next(r for r in rows if r["scheme"] == "o2o")
    for r in rows:
        r["time_ratio"] = r["epoch_s"] / base["epoch_s"]

    print(f"\none epoch of `msdetr train --preset {args.preset}` per scheme ({describe_machine()})")
    print(f"{'scheme':8}{'steps':>7}{'epoch s':>9}{'ms/step':>9}{'x o2o':>7}{'peak MB':>9}")
    for r in rows:
        mem = f"{r['peak_mem_mb']:9.0f}" if r["peak_mem_mb"] is not None else f"{'-':>9}"
        print(f"{r['scheme']:8}{r['steps']:7d}{r['epoch_s']:9.1f}{r['step_ms']:9.1f}{r['time_ratio']:7.2f}{mem}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": describe_machine(), "args": vars(args), "results": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
