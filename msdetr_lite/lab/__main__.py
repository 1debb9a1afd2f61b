"""`python -m msdetr_lite.lab train|build|render|list`: the notebooks' models and their rendering.

    python -m msdetr_lite.lab build              # `make zoo`: the four models the notebooks load (shipped, else trained)
    python -m msdetr_lite.lab build --train      # `make zoo-train`: trained here, every epoch's snapshot
    python -m msdetr_lite.lab ship               # pack the runs trained here into weights/ (lab/shipped.py)
    python -m msdetr_lite.lab render             # `make render`: every notebook -> docs/notebooks, docs/images
    python -m msdetr_lite.lab train ms --mode fast
    python -m msdetr_lite.lab list

(`python -m msdetr_lite.zoo ...`, the older name, runs the same.)
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..config import SUPERVISIONS
from .render import render
from .zoo import BUILD_SCHEMES, build, list_runs, ship, train_run


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msdetr_lite.lab",
                                     description="Train (or list) the notebooks' cached checkpoints; render the notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one run into the zoo (replacing a cached one)")
    t.add_argument("supervision", choices=SUPERVISIONS)
    t.add_argument("--mode", choices=("fast", "full"), default="fast")
    t.add_argument("--override", action="append", default=[], help="section.field=value (repeatable)")
    b = sub.add_parser("build", help="train every scheme the notebooks use, once (reuses current runs)")
    b.add_argument("--mode", choices=("fast", "full"), default="full")
    b.add_argument("--schemes", nargs="+", choices=SUPERVISIONS, default=list(BUILD_SCHEMES))
    b.add_argument("--train", action="store_true", help="train here even where a shipped model fits")
    sp = sub.add_parser("ship", help="pack the full-mode runs trained here into weights/ (fp16, verified)")
    sp.add_argument("--schemes", nargs="+", choices=SUPERVISIONS, default=list(BUILD_SCHEMES))
    r = sub.add_parser("render", help="execute the notebooks, write HTML exports and README thumbnails")
    r.add_argument("--mode", choices=("fast", "full"), default="full")
    r.add_argument("--html-dir", default=None, help="default: docs/notebooks (full), runs/notebooks/fast/render (fast)")
    r.add_argument("--image-dir", default=None, help="default: docs/images (full), runs/notebooks/fast/render (fast)")
    r.add_argument("notebooks", nargs="*", help="names like 00_tour (default: all)")
    sub.add_parser("list", help="list cached runs")
    args = parser.parse_args(argv)
    if args.command == "train":
        train_run(args.supervision, args.mode, args.override)
    elif args.command == "build":
        build(args.schemes, fast=args.mode == "fast", train=args.train)
    elif args.command == "ship":
        ship(args.schemes)
    elif args.command == "render":
        res = render(fast=args.mode == "fast", html_dir=args.html_dir, image_dir=args.image_dir, names=args.notebooks)
        print(f"render: {len(res['html'])} notebooks in {res['total_s'] / 60:.1f} min ({res['mode']} mode): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in res["seconds"].items()))
    else:
        for info in list_runs():
            print(f"{info['dir']}: {info['supervision']} ({info['mode']}), epochs "
                  f"{sorted(map(int, info['snapshots']))}, {info['wall_time']:.0f} s, {info['finished']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
