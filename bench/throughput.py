"""Step throughput: seconds and GFLOP/s of the tiny training step, per variant, side by side.

    python bench/throughput.py                       # 1 thread and 2 threads, each variant, 20 steps
    python bench/throughput.py --threads 1 --steps 40

One step = forward + loss + backward + clip + AdamW on real shapes batches (bench/step_worker.py),
each variant in a fresh process, the variants alternating over --repeats rounds. FLOP come from
torch.utils.flop_counter (matmuls and convolutions, forward and backward, averaged over the
multi-scale batches); the deformable sampling and elementwise work are not counted, so GFLOP/s is a
lower bound on what the cores do and a fair ratio between variants with the same FLOP.

Variants: `default` (the engine today), `channels_last` (the model and images in NHWC, which
oneDNN's CPU convolutions prefer), `frozen_trunk` (model.train_backbone=false: no trunk backward;
a different recipe, listed for its cost only). Writes --json (default docs/results/throughput.json).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from step_worker import launch, write_report  # noqa: E402

VARIANTS = {"default": [], "channels_last": ["--channels-last"], "frozen_trunk": ["model.train_backbone=false"]}


def run(variant: str, threads: int, steps: int) -> dict:
    return launch(["--threads", str(threads), "--steps", str(steps), "--flops", *VARIANTS[variant]])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--json", default=str(REPO / "docs" / "results" / "throughput.json"))
    args = p.parse_args(argv)
    raw = {}
    t0 = time.perf_counter()
    for r in range(args.repeats):
        for threads in args.threads:
            for v in args.variants:
                out = run(v, threads, args.steps)
                raw.setdefault(f"{v}|{threads}", []).append(out)
                print(f"round {r + 1}: {v:14s} {threads} thread(s): {out['step_s']:.3f} s/step, "
                      f"{out['flops'] / 1e9:.1f} GFLOP, {out['gflops_per_s']:.1f} GFLOP/s", flush=True)
    rows = []
    for threads in args.threads:
        base = sorted(x["step_s"] for x in raw[f"default|{threads}"])[args.repeats // 2]
        for v in args.variants:
            xs = sorted(raw[f"{v}|{threads}"], key=lambda x: x["step_s"])
            m = xs[len(xs) // 2]
            rows.append({"variant": v, "threads": threads, "s/step": round(m["step_s"], 3),
                         "GFLOP/step": round(m["flops"] / 1e9, 1), "GFLOP/s": round(m["gflops_per_s"], 1),
                         "vs default": round(m["step_s"] / base, 2)})
    write_report(args.json, rows, raw, t0, steps=args.steps, repeats=args.repeats,
                 openmp="libgomp defaults (no OMP_* / GOMP_* set)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
