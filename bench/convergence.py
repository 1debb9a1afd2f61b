"""Convergence: AP per epoch of o2o vs ms (and hybrid, group with --all), same budget and seeds.

    python bench/convergence.py                       # tiny preset on data/shapes, seeds 0 and 1
    python bench/convergence.py --all --epochs 6 --seeds 0 1 2
    python bench/convergence.py train.max_steps_per_epoch=20     # any config override

Every (scheme, seed) is a normal training run (engine.train) under --runs/SCHEME_sSEED with
evaluation after every epoch; finished runs are reused unless --fresh. The table gives the
mean over seeds (and the spread, max - min) of AP per epoch, the final AP / AP50 and the time
per epoch. Writes bench/results/convergence.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_one(scheme: str, seed: int, args) -> dict:
    from msdetr_lite.config import apply_overrides, preset
    from msdetr_lite.engine import train
    from msdetr_lite.runs import load_run

    run_dir = Path(args.runs) / f"{scheme}_s{seed}"
    if args.fresh or not (run_dir / "eval.json").exists():
        opts = [f"model.supervision={scheme}", f"train.seed={seed}", f"train.output_dir={run_dir}",
                "train.eval_every=1", *args.overrides]
        if args.epochs:
            opts.append(f"train.epochs={args.epochs}")
        cfg = apply_overrides(preset(args.preset), opts)
        print(f"== {scheme}, seed {seed}: {cfg.train.epochs} epochs -> {run_dir}", file=sys.stderr, flush=True)
        # --fresh replaces a run; an interrupted one (a checkpoint, no eval.json) continues
        interrupted = (run_dir / "checkpoint.pth").is_file() and not args.fresh
        train(cfg, progress=not args.no_progress, overwrite=args.fresh or not interrupted, resume=interrupted)
    run = load_run(run_dir)
    evals = run.epoch_evals()
    return {"scheme": scheme, "seed": seed, "dir": str(run_dir),
            "epoch": [epoch for epoch, _ in evals],
            "AP": [ev["final"]["AP"] for _, ev in evals],
            "AP50": [ev["final"]["AP50"] for _, ev in evals],
            "AP_per_layer": [[l["AP"] for l in ev["layers"]] for _, ev in evals],
            "epoch_time_s": [r["epoch_time"] for r in run.epochs]}


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (max(values) - min(values)) if len(values) > 1 else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--epochs", type=int, default=0, help="default: the preset's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--schemes", nargs="+", default=["o2o", "ms"], choices=["o2o", "ms", "hybrid", "group"])
    p.add_argument("--all", action="store_true", help="also hybrid and group")
    p.add_argument("--runs", default=str(REPO / "bench" / "results" / "convergence"), help="run folders")
    p.add_argument("--fresh", action="store_true", help="retrain even if a finished run exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "convergence.json"))
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    args = p.parse_args(argv)
    schemes = ["o2o", "ms", "hybrid", "group"] if args.all else args.schemes

    runs = [run_one(s, seed, args) for s in schemes for seed in args.seeds]

    table = []
    for s in schemes:
        mine = [r for r in runs if r["scheme"] == s]
        n_ep = min(len(r["AP"]) for r in mine)
        per_epoch = [_mean_spread([r["AP"][e] for r in mine]) for e in range(n_ep)]
        table.append({
            "scheme": s, "seeds": [r["seed"] for r in mine], "epochs": n_ep,
            "AP_per_epoch": [m for m, _ in per_epoch], "AP_spread_per_epoch": [d for _, d in per_epoch],
            "AP50_per_epoch": [statistics.fmean(r["AP50"][e] for r in mine) for e in range(n_ep)],
            "final_AP": per_epoch[-1][0] if per_epoch else None,
            "final_AP50": statistics.fmean(r["AP50"][n_ep - 1] for r in mine) if n_ep else None,
            "final_AP_per_layer": [statistics.fmean(r["AP_per_layer"][n_ep - 1][l] for r in mine)
                                   for l in range(len(mine[0]["AP_per_layer"][n_ep - 1]))] if n_ep else [],
            "time_per_epoch_s": statistics.fmean(t for r in mine for t in r["epoch_time_s"]),
        })

    n_ep = max(t["epochs"] for t in table)
    print(f"\nAP x100 of the final decoder layer per epoch, mean over seeds {args.seeds} "
          f"(+- half the spread max-min); preset {args.preset}")
    head = f"{'scheme':8}" + "".join(f"{'ep ' + str(e + 1):>13}" for e in range(n_ep)) + \
        f"{'AP50':>8}{'s/epoch':>9}"
    print(head + "\n" + "-" * len(head))
    for t in table:
        cells = "".join(f"{100 * m:6.1f} +-{50 * d:4.1f}" for m, d in zip(t["AP_per_epoch"], t["AP_spread_per_epoch"]))
        cells += " " * 13 * (n_ep - t["epochs"])
        print(f"{t['scheme']:8}{cells}{100 * (t['final_AP50'] or 0):8.1f}{t['time_per_epoch_s']:9.1f}")
    print("\nfinal AP x100 per decoder layer:")
    for t in table:
        print(f"  {t['scheme']:8} " + "  ".join(f"L{l + 1} {100 * v:5.1f}" for l, v in enumerate(t["final_AP_per_layer"])))

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "schemes": table, "runs": runs}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
