"""The shapes variants for data/README.md: their statistics table and a thumbnail grid.

    python bench/shapes_variants.py          # every variant: prints the table, writes the grid
    python bench/shapes_variants.py --variants default dense --n 2 --figure /tmp/grid.png

The table is `python -m msdetr_lite.data.synthetic --stats VARIANT ...` (200 val images, seed 0);
the grid (docs/images/shapes_variants.png) shows the first --n val images of each variant with
their ground-truth boxes, one row per variant, drawn with viz.plot_dataset_rows. A few seconds
on one core; the PNG stays under 300 KB.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from msdetr_lite import viz  # noqa: E402
from msdetr_lite.data import synthetic  # noqa: E402
from msdetr_lite.data.coco import CocoDetection  # noqa: E402
from msdetr_lite.shapes_knobs import VARIANTS  # noqa: E402


def variants_figure(path: str | Path, variants=tuple(VARIANTS), n: int = 4, seed: int = 0,
                    width: int = 900) -> Path:
    """A PNG, `width` px wide, of the first `n` val images of each variant (one row each) with
    their ground-truth boxes."""
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {}
        for name in variants:
            root = Path(tmp) / name
            synthetic.generate(root, n_train=0, n_val=n, seed=seed, variant=name)
            datasets[name] = CocoDetection(root / "val", root / "annotations" / "instances_val.json")
        fig = viz.plot_dataset_rows(datasets, range(n))
        fig.suptitle("Synthetic shapes variants: validation images with their ground-truth boxes")
        return viz.save_thumbnail(fig, path, width=width)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--n", type=int, default=4, help="images per variant in the grid (default 4)")
    parser.add_argument("--n-stats", type=int, default=200, help="val images for the statistics (default 200)")
    parser.add_argument("--figure", default=str(REPO / "docs" / "images" / "shapes_variants.png"))
    args = parser.parse_args(argv)
    print(synthetic.statistics_table({v: synthetic.variant_statistics(v, args.n_stats) for v in args.variants}))
    print("wrote", variants_figure(args.figure, args.variants, args.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
