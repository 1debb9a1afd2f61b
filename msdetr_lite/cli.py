"""The `msdetr` command (also `python -m msdetr_lite`).

    msdetr data shapes --out data/shapes                      # the synthetic dataset
    msdetr train --preset tiny model.supervision=o2o train.epochs=3 [--resume]
    torchrun --nproc_per_node 2 -m msdetr_lite train --preset r50 data.root=/data/coco
    msdetr eval --checkpoint runs/tiny/final.pth [--out eval.json]
    msdetr compare runs/ms runs/o2o --out runs/compare
    msdetr demo [--out runs/demo] [--epochs N]

Overrides are `section.field=value` (sections: model, matcher, loss, data, train); see
msdetr_lite/config.py for every field.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from msdetr_lite.config import Config, apply_overrides, preset


def _config(args, base: Optional[Config] = None) -> Config:
    """The run's config: --config json, or --preset, or `base`; then the overrides.
    Mistakes (unknown field, bad value) end the command with one clear line."""
    try:
        if getattr(args, "config", None):
            cfg = Config.from_dict(json.loads(Path(args.config).read_text()))
        elif getattr(args, "preset", None) or base is None:
            cfg = preset(args.preset or "tiny")
        else:
            cfg = base
        return apply_overrides(cfg, args.overrides)
    except (ValueError, OSError) as e:
        args._parser.exit(2, f"msdetr {args.command}: config error: {e}\n")


def _add_config_args(p: argparse.ArgumentParser, default_preset: Optional[str]) -> None:
    p.add_argument("--preset", default=default_preset, choices=["tiny", "r50"],
                   help=f"starting configuration (default: {default_preset or 'the checkpoint config'})")
    p.add_argument("--config", help="start from a config.json written by a run instead of a preset")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="config overrides, e.g. model.supervision=o2o train.epochs=3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msdetr", description="MS-DETR (mixed supervision for DETR), compact edition.",
        epilog="Overrides are section.field=value; sections: model, matcher, loss, data, train.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="generate a dataset")
    data_sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    s = data_sub.add_parser("shapes", help="the synthetic shapes set (COCO layout)")
    s.add_argument("--out", default="data/shapes", help="output folder (default data/shapes)")
    s.add_argument("--n-train", type=int, default=1200, help="training images (default 1200)")
    s.add_argument("--n-val", type=int, default=200, help="validation images (default 200)")
    s.add_argument("--size", "--image-size", dest="size", type=int, default=128,
                   help="image height in px (default 128)")
    s.add_argument("--aspect-jitter", type=float, default=0.125,
                   help="width varies by up to this fraction of the height (default 0.125)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = sub.add_parser("train", help="train a detector (torchrun for several GPUs / nodes)")
    _add_config_args(p, "tiny")
    p.add_argument("--resume", action="store_true",
                   help="continue from train.output_dir/checkpoint.pth (after its last completed epoch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--find-unused-parameters", action="store_true",
                   help="DDP find_unused_parameters (only if a model variant leaves parameters unused)")

    p = sub.add_parser("eval", help="AP per decoder layer and candidate quality of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="final.pth or checkpoint.pth of a run")
    _add_config_args(p, None)
    p.add_argument("--out", help="output json (default: eval.json next to the checkpoint)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=0, help="default: the config's train.batch_size")
    p.add_argument("--topk", type=int, default=20, help="top-k queries for the candidate statistics")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("compare", help="plot and tabulate runs side by side")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="folder for the plots and summary")
    p.add_argument("--labels", nargs="+", help="names of the runs in the plots (default: folder names)")

    p = sub.add_parser("demo", help="data + MS-DETR vs o2o at tiny size + report.md")
    p.add_argument("--out", default="runs/demo")
    # 4 epochs of each model is what fits the demo's 15-minute budget on a 2-core CPU
    p.add_argument("--epochs", type=int, default=4, help="epochs per model (lr drops 10x before the last)")
    p.add_argument("--data", default="data/shapes", help="dataset folder (generated if missing)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "r50"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    # overrides may come before or after options (`train model.x=1 --resume train.y=2`)
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    args._parser = parser
    return args


# ---------------------------------------------------------------- commands
def cmd_data(args) -> int:
    from msdetr_lite.data.synthetic import generate
    s = generate(args.out, n_train=args.n_train, n_val=args.n_val, image_size=args.size, seed=args.seed,
                 aspect_jitter=args.aspect_jitter, progress=True)
    print(f"wrote {s['images']['train']} train / {s['images']['val']} val images "
          f"({s['annotations']['train']} / {s['annotations']['val']} boxes) to {s['out_dir']} "
          f"in {s['seconds']:.1f} s")
    return 0


def cmd_train(args) -> int:
    from msdetr_lite.engine import NonFiniteLossError, train
    cfg = _config(args)
    try:
        summary = train(cfg, resume=args.resume, progress=not args.no_progress,
                        find_unused_parameters=args.find_unused_parameters)
    except NonFiniteLossError as e:
        print(f"msdetr train: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    summary.pop("model", None)
    if summary.get("eval"):
        from msdetr_lite.evaluation import format_metrics
        print("final:", format_metrics(summary["eval"]["final"]))
    return 0


def cmd_eval(args) -> int:
    import torch

    from msdetr_lite import analysis
    from msdetr_lite.checkpoint import load_checkpoint
    from msdetr_lite.data import build_dataset
    from msdetr_lite.engine import build_val_loader, resolve_device
    from msdetr_lite.evaluation import evaluate, format_metrics
    from msdetr_lite.models import build_model

    ckpt_path = Path(args.checkpoint)
    if not ckpt_path.is_file():
        args._parser.error(f"checkpoint not found: {ckpt_path}")
    ckpt = load_checkpoint(ckpt_path)
    cfg = _config(args, base=Config.from_dict(ckpt["config"]))
    cfg.model.num_classes = ckpt["config"]["model"]["num_classes"]
    device = resolve_device(args.device)
    model = build_model(cfg.model).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    del ckpt

    val = build_dataset(cfg.data, "val")
    if val.num_classes != cfg.model.num_classes:
        args._parser.error(f"the val set has {val.num_classes} classes, the checkpoint {cfg.model.num_classes}")
    loader = build_val_loader(cfg, val, args.batch_size or cfg.train.batch_size)
    progress = not args.no_progress
    with torch.no_grad():
        result = evaluate(model, loader, device, layers="all", progress=progress)
        cand = analysis.candidate_quality_over_loader(model, loader, device, topk=args.topk, progress=progress)
    out = Path(args.out) if args.out else ckpt_path.with_name("eval.json")
    plot_path = out.with_name(out.stem + "_candidates.png")
    label = f"{cfg.model.supervision} ({ckpt_path.parent.name})"
    analysis.plot_candidate_quality({label: cand}, plot_path)
    result = {**result, "candidates": cand, "checkpoint": str(ckpt_path),
              "supervision": cfg.model.supervision, "candidates_plot": str(plot_path)}
    analysis.save_json(result, out)
    for l, m in zip(result.get("layer_ids", range(len(result["layers"]))), result["layers"]):
        print(f"layer {l + 1}: {format_metrics(m)}")
    print(f"final:   {format_metrics(result['final'])}\nwrote {out} and {plot_path}")
    return 0


def cmd_compare(args) -> int:
    from msdetr_lite.report import compare_runs
    res = compare_runs(args.runs, args.out, labels=args.labels)
    print(Path(args.out, "summary.md").read_text())
    print("wrote", ", ".join(res["files"]))
    return 0


def cmd_demo(args) -> int:
    from msdetr_lite.report import run_demo
    run_demo(args.out, epochs=args.epochs, data_root=args.data, preset_name=args.preset, seed=args.seed,
             overrides=args.overrides, progress=not args.no_progress)
    return 0


COMMANDS = {"data": cmd_data, "train": cmd_train, "eval": cmd_eval, "compare": cmd_compare, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FileNotFoundError as e:            # a missing dataset / run / checkpoint: one clear line
        args._parser.exit(2, f"msdetr {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
