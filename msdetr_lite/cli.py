"""The `msdetr` command (also `python -m msdetr_lite`).

    msdetr data shapes --out data/shapes [--overwrite]        # the synthetic dataset
    msdetr data shapes --variant dense --out data/shapes_dense   # a harder variant (data/README.md)
    msdetr train --preset tiny model.supervision=o2o train.epochs=3 [--resume | --overwrite]
    torchrun --nproc_per_node 2 -m msdetr_lite train --preset r50 data.root=/data/coco
    msdetr eval --checkpoint runs/tiny/final.pth [--out FILE] [--nms 0.7]   # -> runs/tiny/eval-final.json
    msdetr compare runs/ms runs/o2o --out runs/compare
    msdetr demo [--out runs/demo] [--epochs N]
    msdetr ... --debug                                        # a failure shows its traceback

Overrides are `section.field=value` (sections: model, matcher, loss, data, train); see
msdetr_lite/config.py for every field. The whole config is checked before anything runs.

Nothing is lost (`msdetr_lite.outputs`): no command replaces a file it did not write, unless
--overwrite is given (`train`: --resume continues the run it finds); outputs are checked
before any work.

Exit codes (`errors.guarded`, which `main` runs every command in, is the one boundary;
`errors.user_problems` says what is the user's to fix):
0 done; 1 training stopped on a non-finite loss; 2 a user error (bad option or config, missing or
unreadable file, bad data, a run folder or output that cannot be used as asked, no space left,
out of memory, ...), one line per problem; 3 an internal error (a bug: one line, the traceback
with --debug); 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from msdetr_lite.config import Config, apply_overrides, preset
from msdetr_lite.errors import UsageError, guarded, short_path
from msdetr_lite.shapes_knobs import add_knob_arguments, knobs_from_args

__all__ = ["main", "guarded", "build_parser", "parse_args", "UsageError", "COMMANDS"]


def _config(args, base: Optional[Config] = None) -> Config:
    """The run's config: --config json, or --preset, or `base`; then the overrides; then every
    field checked (ConfigError lists all problems)."""
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise UsageError(f"--config {short_path(path)}: no such file")
        try:
            cfg = Config.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"--config {short_path(path)} is not valid JSON ({e})") from None
    elif getattr(args, "preset", None) or base is None:
        cfg = preset(args.preset or "tiny")
    else:
        cfg = base
    return apply_overrides(cfg, args.overrides)


def _iou(text: str) -> float:
    """argparse type: an IoU threshold in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IoU in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected an IoU in (0, 1], got {value}")
    return value


def _count(minimum: int):
    """argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _add_config_args(p: argparse.ArgumentParser, default_preset: Optional[str]) -> None:
    p.add_argument("--preset", default=default_preset, choices=["tiny", "r50"],
                   help=f"starting configuration (default: {default_preset or 'the checkpoint config'})")
    p.add_argument("--config", help="start from a config.json written by a run instead of a preset")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="config overrides, e.g. model.supervision=o2o train.epochs=3")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported in one line (as every user error is) instead of the
    usage text followed by the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="msdetr", description="MS-DETR (mixed supervision for DETR), compact edition.",
        epilog="Overrides are section.field=value; sections: model, matcher, loss, data, train.")
    # every command: --debug (the traceback of a failure, instead of its one line)
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of a failure (also MSDETR_DEBUG=1)")
    replace = _Parser(add_help=False)
    replace.add_argument("--overwrite", action="store_true",
                         help="replace files at --out that this command did not write (without it they are kept "
                              "and the command stops before any work)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="generate a dataset")
    data_sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    s = data_sub.add_parser("shapes", help="the synthetic shapes set (COCO layout)", parents=[common, replace])
    s.add_argument("--out", default="data/shapes",
                   help="output folder (default data/shapes); a dataset this command wrote there is replaced")
    s.add_argument("--n-train", type=_count(1), default=1200, help="training images (default 1200)")
    s.add_argument("--n-val", type=_count(1), default=200, help="validation images (default 200)")
    s.add_argument("--seed", type=_count(0), default=0, help="random seed (default 0)")
    add_knob_arguments(s)                       # --variant, --image-size / --size, --aspect-jitter, ...

    p = sub.add_parser("train", help="train a detector (torchrun for several GPUs / nodes)", parents=[common])
    _add_config_args(p, "tiny")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from train.output_dir/checkpoint.pth (after its last completed epoch); "
                            "changed non-model fields (e.g. train.lr, train.epochs) apply from the next epoch")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in train.output_dir (without this or --resume, a directory "
                            "that holds a run is left alone)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--find-unused-parameters", action="store_true",
                   help="DDP find_unused_parameters (only if a model variant leaves parameters unused)")

    p = sub.add_parser("eval", help="AP per decoder layer and candidate quality of a checkpoint",
                       parents=[common, replace])
    p.add_argument("--checkpoint", required=True, help="final.pth or checkpoint.pth of a run")
    _add_config_args(p, None)
    p.add_argument("--out", help="output json (default: eval-<checkpoint name>.json next to the checkpoint, "
                                 "so the run's own eval.json is kept)")
    p.add_argument("--nms", type=_iou, metavar="IOU",
                   help="also score every layer after class-wise NMS at this IoU in (0, 1] (default: NMS-free only)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_count(0), default=0, help="default: the config's train.batch_size")
    p.add_argument("--topk", type=_count(1), default=20, help="top-k queries for the candidate statistics")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("compare", help="plot and tabulate runs side by side", parents=[common, replace])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="folder for the plots and summary")
    p.add_argument("--labels", nargs="+", help="names of the runs in the plots (default: folder names)")

    p = sub.add_parser("demo", help="data + MS-DETR vs o2o at tiny size + report.md", parents=[common, replace])
    p.add_argument("--out", default="runs/demo",
                   help="folder of the two runs and the report (default runs/demo); what an earlier demo wrote "
                        "there is reused or replaced, anything else is kept unless --overwrite")
    # 4 epochs of each model is what fits the demo's 15-minute budget on a 2-core CPU
    p.add_argument("--epochs", type=_count(1), default=4, help="epochs per model (lr drops 10x before the last)")
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
    return args


# ---------------------------------------------------------------- commands
def cmd_data(args) -> int:
    from msdetr_lite.data.synthetic import generate
    knobs = knobs_from_args(args)               # the variant and the knob flags, checked (UsageError)
    s = generate(args.out, n_train=args.n_train, n_val=args.n_val, seed=args.seed, progress=True,
                 overwrite=args.overwrite, **knobs)
    print(f"wrote {s['images']['train']} train / {s['images']['val']} val images "
          f"({s['annotations']['train']} / {s['annotations']['val']} boxes) to {s['out_dir']} "
          f"in {s['seconds']:.1f} s")
    return 0


def cmd_train(args) -> int:
    from msdetr_lite import threads
    from msdetr_lite.engine import NonFiniteLossError, train
    cfg = _config(args)
    if cfg.train.device != "cuda":
        threads.configure()                      # half the cores: a busy neighbour costs little (threads.py)
    try:
        summary = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                        find_unused_parameters=args.find_unused_parameters)
    except NonFiniteLossError as e:
        print(f"msdetr train: stopped: {e}", file=sys.stderr)
        return 1
    summary.pop("model", None)
    if summary.get("eval"):
        from msdetr_lite.evaluation import format_metrics
        print("final:", format_metrics(summary["eval"]["final"]))
    return 0


def eval_output_path(checkpoint: Path, out: Optional[str]) -> Path:
    """--out, or eval-<checkpoint stem>.json next to the checkpoint (the run's eval.json, written
    by training, stays as it is)."""
    return Path(out) if out else checkpoint.with_name(f"eval-{checkpoint.stem}.json")


def cmd_eval(args) -> int:
    import torch

    from msdetr_lite import analysis, viz
    from msdetr_lite.checkpoint import (build_model_from_config, config_from_checkpoint, load_checkpoint,
                                        load_weights, resolve_device)
    from msdetr_lite.data import build_dataset, build_val_loader
    from msdetr_lite.data.coco import check_same_categories
    from msdetr_lite.evaluation import evaluate, format_metrics
    from msdetr_lite.outputs import check_replace, record

    ckpt_path = Path(args.checkpoint)
    out = eval_output_path(ckpt_path, args.out)
    plot_path = out.with_name(out.stem + "_candidates.png")
    written = [out.name, plot_path.name]
    # before the evaluation: an output that cannot be written must not cost the whole evaluation
    check_replace(out.parent, written, "eval", args.overwrite,
                  how="pass --overwrite to replace them, or choose another --out")
    ckpt = load_checkpoint(ckpt_path)
    saved = config_from_checkpoint(ckpt, ckpt_path)
    cfg = _config(args, base=saved)
    cfg.model.num_classes = saved.model.num_classes
    device = resolve_device(args.device)
    if "model" not in ckpt:
        raise UsageError(f"{ckpt_path} holds no model weights")
    model = load_weights(build_model_from_config(cfg, device), ckpt["model"], ckpt_path).eval()
    trained_on = ckpt.get("categories")
    del ckpt

    val = build_dataset(cfg.data, "val")
    if trained_on is not None:
        check_same_categories(trained_on, f"{ckpt_path} (its training set)", val.categories, str(val.ann_file))
    elif val.num_classes != cfg.model.num_classes:
        raise UsageError(f"the val set of data.root={cfg.data.root} has {val.num_classes} classes, "
                         f"the checkpoint {cfg.model.num_classes}")
    loader = build_val_loader(cfg, val, args.batch_size or cfg.train.batch_size)
    progress = not args.no_progress
    with torch.no_grad():
        result = evaluate(model, loader, device, layers="all", progress=progress, nms_iou=args.nms)
        cand = analysis.candidate_quality_over_loader(model, loader, device, topk=args.topk, progress=progress)
    label = f"{cfg.model.supervision} ({ckpt_path.parent.name})"
    viz.save_figure(viz.plot_candidate_quality({label: cand}), plot_path, dpi=120)
    result = {**result, "candidates": cand, "checkpoint": str(ckpt_path),
              "supervision": cfg.model.supervision, "candidates_plot": str(plot_path)}
    analysis.save_json(result, out)
    record(out.parent, written, "eval")
    for l, m in zip(result.get("layer_ids", range(len(result["layers"]))), result["layers"]):
        print(f"layer {l + 1}: {format_metrics(m)}")
    print(f"final:   {format_metrics(result['final'])}")
    if result.get("nms"):
        print(f"final after NMS at IoU {result['nms']['iou']}: {format_metrics(result['nms']['final'])}")
    print(f"wrote {out} and {plot_path}")
    return 0


def cmd_compare(args) -> int:
    from msdetr_lite.report import compare_runs
    if args.labels and len(args.labels) != len(args.runs):
        raise UsageError(f"--labels names {len(args.labels)} runs, {len(args.runs)} run folders were given")
    res = compare_runs(args.runs, args.out, labels=args.labels, overwrite=args.overwrite)
    print(Path(args.out, "summary.md").read_text())
    print("wrote", ", ".join(res["files"]))
    return 0


def cmd_demo(args) -> int:
    from msdetr_lite.report import run_demo
    apply_overrides(preset(args.preset), list(args.overrides))       # every problem before any training
    run_demo(args.out, epochs=args.epochs, data_root=args.data, preset_name=args.preset, seed=args.seed,
             overrides=args.overrides, progress=not args.no_progress, overwrite=args.overwrite)
    return 0


COMMANDS = {"data": cmd_data, "train": cmd_train, "eval": cmd_eval, "compare": cmd_compare, "demo": cmd_demo}


# ---------------------------------------------------------------- the boundary
# `guarded` (errors.py, so that `python -m msdetr_lite.data.synthetic` shares it without importing
# this module) runs every command: one line per user error and exit 2, Ctrl-C 130, a bug 3.


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    prog = " ".join(["msdetr", args.command] + ([args.dataset] if args.command == "data" else []))
    return guarded(prog, lambda: COMMANDS[args.command](args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
