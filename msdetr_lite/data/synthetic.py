"""A deterministic synthetic detection dataset ("shapes") in COCO format.

    generate("data/shapes", n_train=1200, n_val=200, image_size=128, seed=0)
    python -m msdetr_lite.data.synthetic --out data/shapes

Layout written (the COCO 2017 layout with split names "train" / "val"):

    out/train/000001.png ...          out/annotations/instances_train.json
    out/val/000001.png ...            out/annotations/instances_val.json

Four classes told apart by *shape only* (circle, square, triangle, cross); colour, size and
position are random, so a detector cannot shortcut through colour. Each image has 3-10 objects
(12-48 px shapes; boxes up to ~60 px for rotated triangles), some of them close together or
overlapping, on a textured background with thin distractor strokes and dots that are not
objects. That makes it a small but honest detection
problem: localisation has to be precise and near-duplicate boxes on neighbouring objects have
to be suppressed, which is what the o2o / o2m comparison is about.

Determinism: every image draws from its own generator seeded by (seed, split, index), drawing
is integer-exact (PIL ImageDraw on a palette image) and the json is written with a fixed key
order, so the same arguments give the same bytes on every run and machine (for a given Pillow
/ zlib version; the annotations do not depend on those at all).

Size: palette ("P" mode) PNGs of 32 colours; 1200 + 200 images at 128 px are ~3.3 MB.

Harder variants: difficulty knobs (objects per image up to 40, up to 14 classes, sizes down to
6 px, image size, occlusion) and named variants of them live in msdetr_lite.shapes_knobs:

    generate("data/shapes_dense", variant="dense")                 # or any knob: max_objects=20, ...
    python -m msdetr_lite.data.synthetic --variant coco_like --out data/shapes_coco_like
    python -m msdetr_lite.data.synthetic --stats dense coco_like   # split_statistics, a markdown table

At the default knobs every image makes exactly the random draws it always made, so the
embedded data/shapes comes out byte for byte (tests/test_shapes_variants.py).

Nothing is lost: the dataset is drawn into a temporary folder and moved into place when complete;
only a dataset this generator wrote (recorded in out/.msdetr-outputs.json, unchanged since) is
replaced without `overwrite=True` (`--overwrite`), and sizes that cannot fit in memory or that
Pillow would not open are refused before drawing (data/shapes_output.py).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from msdetr_lite.shapes_knobs import VARIANTS  # noqa: F401 (re-exported: synthetic.VARIANTS)
from msdetr_lite.errors import guarded
from msdetr_lite.shapes_knobs import SHAPE_NAMES, Knobs, add_knob_arguments, knobs_from_args, variant_knobs

from .shapes_geometry import _draw_shape, _geom_extent, _overlap_ok, _shape_outline
from .shapes_output import OWNER, check_arguments, file_names, write_dataset  # noqa: F401 (OWNER re-exported)

CLASS_NAMES = SHAPE_NAMES[:4]            # the embedded set's classes (num_classes=4)

# --- palette: 8 muted background tones, 20 saturated object colours, 4 stroke shades ---------
# Background tones are close to each other (low-contrast texture); object colours are vivid so
# objects are clearly visible; strokes reuse object colours too, so "vivid" alone does not mean
# "object": the model has to look at the shape.
_BG = [(96, 96, 96), (110, 106, 98), (124, 124, 124), (138, 130, 118),
       (150, 150, 146), (116, 126, 132), (104, 116, 104), (160, 154, 142)]
_OBJ = [(230, 40, 40), (240, 120, 30), (245, 210, 40), (170, 220, 40), (40, 190, 60),
        (30, 200, 170), (40, 170, 240), (40, 80, 230), (120, 50, 220), (200, 50, 210),
        (240, 60, 140), (250, 250, 250), (20, 20, 20), (140, 30, 30), (20, 100, 60),
        (20, 40, 120), (255, 160, 180), (160, 240, 255), (90, 60, 30), (255, 255, 140)]
_STROKE = [(60, 60, 60), (200, 200, 200), (70, 80, 110), (180, 160, 120)]
PALETTE = _BG + _OBJ + _STROKE
BG_IDX = range(0, len(_BG))
OBJ_IDX = range(len(_BG), len(_BG) + len(_OBJ))
STROKE_IDX = range(len(_BG) + len(_OBJ), len(PALETTE))

_SPLIT_CODE = {"train": 0, "val": 1}


def _palette_bytes() -> list[int]:
    flat = [c for rgb in PALETTE for c in rgb]
    return flat + [0] * (3 * 256 - len(flat))


# --- background --------------------------------------------------------------------------------
def _background(draw: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator) -> None:
    """Low-contrast texture of 2-3 background tones: stripes, checker, blobs or bands."""
    tones = [int(t) for t in rng.choice(list(BG_IDX), size=3, replace=False)]
    draw.rectangle([0, 0, w, h], fill=tones[0])
    kind = int(rng.integers(4))
    if kind == 0:                                   # diagonal / straight stripes
        period = int(rng.integers(6, 17))
        width = max(1, period // 2 - int(rng.integers(0, 3)))
        slope = float(rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0]))
        for off in range(-w - h, w + h, period):
            if slope == 0.0:
                draw.line([(0, off), (w, off)], fill=tones[1], width=width)
            else:
                draw.line([(off, 0), (off + slope * h, h)], fill=tones[1], width=width)
    elif kind == 1:                                 # checker board
        tile = int(rng.integers(6, 21))
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                if ((x // tile) + (y // tile)) % 2:
                    draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=tones[1])
    elif kind == 2:                                 # soft blobs
        for _ in range(int(rng.integers(8, 20))):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            rx, ry = rng.uniform(6, 30), rng.uniform(6, 30)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=tones[1 + int(rng.integers(2))])
    else:                                           # horizontal bands of random height
        y = 0
        while y < h:
            bh = int(rng.integers(8, 33))
            draw.rectangle([0, y, w, y + bh], fill=tones[int(rng.integers(3))])
            y += bh


def _distractors(draw: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator, n: int,
                 dot_radius: float = 2.5) -> None:
    """Thin strokes, arcs and small dots (radius 1 to `dot_radius`): clutter that is *not* annotated."""
    colours = list(OBJ_IDX) + list(STROKE_IDX)
    for _ in range(n):
        fill = int(rng.choice(colours))
        kind = int(rng.integers(3))
        if kind == 0:                               # polyline
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h)))
                   for _ in range(int(rng.integers(2, 5)))]
            draw.line(pts, fill=fill, width=int(rng.integers(1, 3)))
        elif kind == 1:                             # open arc
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 40)
            start = float(rng.uniform(0, 360))
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + float(rng.uniform(40, 200)),
                     fill=fill, width=int(rng.integers(1, 3)))
        else:                                       # dot, well below the smallest object
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1.0, dot_radius)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


# --- objects: their geometry lives in data/shapes_geometry.py ---------------------------------
_DEFAULT = Knobs()


def render_image(rng: np.random.Generator, width: int, height: int,
                 min_objects: int = _DEFAULT.min_objects, max_objects: int = _DEFAULT.max_objects,
                 min_size: float = _DEFAULT.min_size, max_size: float = _DEFAULT.max_size,
                 num_classes: int = _DEFAULT.num_classes, max_iou: float = _DEFAULT.max_iou,
                 max_cover: float = _DEFAULT.max_cover, max_inside: float = _DEFAULT.max_inside):
    """Draw one scene. Returns (PIL "P" image [height, width], list of (label, [x, y, w, h]))
    with boxes tight around the drawn pixels (xywh, pixels, COCO convention).

    The knobs (see msdetr_lite.shapes_knobs.Knobs; defaults: the embedded set):
    min_objects / max_objects: objects drawn, uniform in that range (fewer land when they do not fit);
    min_size / max_size: shape size in px, log-uniform; num_classes: labels 0..num_classes-1 of
    SHAPE_NAMES; max_iou / max_cover / max_inside: how much a later object may overlap earlier ones.
    At the defaults the random draws are exactly those of the embedded data/shapes.
    """
    Knobs(image_size=height, min_objects=min_objects, max_objects=max_objects, num_classes=num_classes,
          min_size=min_size, max_size=max_size, max_iou=max_iou, max_cover=max_cover,
          max_inside=max_inside).check()
    img = Image.new("P", (width, height), 0)
    img.putpalette(_palette_bytes())
    draw = ImageDraw.Draw(img)
    _background(draw, width, height, rng)
    dot_radius = min(2.5, min_size / 4)             # 2.5 at the default 12 px minimum
    _distractors(draw, width, height, rng, int(rng.integers(3, 9)), dot_radius)

    n_target = int(rng.integers(min_objects, max_objects + 1))
    placed_boxes: list[tuple] = []
    objects = []
    for _ in range(n_target):
        label = int(rng.integers(num_classes))
        # log-uniform size: as many small as large objects
        size = float(math.exp(rng.uniform(math.log(min_size), math.log(max_size))))
        geom = _shape_outline(label, size, rng)
        ex, ey = _geom_extent(geom)
        if 2 * ex + 2 > width or 2 * ey + 2 > height:
            continue
        for _attempt in range(30):
            if placed_boxes and rng.random() < 0.4:
                # cluster: put it next to an existing object (crowded scenes)
                ox0, oy0, ox1, oy1 = placed_boxes[int(rng.integers(len(placed_boxes)))]
                cx = (ox0 + ox1) / 2 + rng.normal(0, 0.6) * (ox1 - ox0 + 2 * ex)
                cy = (oy0 + oy1) / 2 + rng.normal(0, 0.6) * (oy1 - oy0 + 2 * ey)
            else:
                cx, cy = rng.uniform(ex + 1, width - ex - 1), rng.uniform(ey + 1, height - ey - 1)
            cx = float(min(max(cx, ex + 1), width - ex - 1))
            cy = float(min(max(cy, ey + 1), height - ey - 1))
            box = (cx - ex, cy - ey, cx + ex, cy + ey)
            if _overlap_ok(box, placed_boxes, max_iou, max_cover, max_inside):
                break
        else:
            continue
        # tight box from the rasterised mask, so annotations match pixels exactly
        mask = Image.new("L", (width, height), 0)
        _draw_shape(ImageDraw.Draw(mask), geom, cx, cy, 255)
        bb = mask.getbbox()
        if bb is None:
            continue
        _draw_shape(draw, geom, cx, cy, int(rng.choice(list(OBJ_IDX))))
        placed_boxes.append(box)
        objects.append((label, [bb[0], bb[1], bb[2] - bb[0], bb[3] - bb[1]]))

    # a couple of thin strokes on top, so objects are sometimes crossed by clutter
    _distractors(draw, width, height, rng, int(rng.integers(0, 3)), dot_radius)
    return img, objects


def _image_size(rng: np.random.Generator, image_size: int, aspect_jitter: float) -> tuple[int, int]:
    """(width, height): height fixed, width jittered by up to +-aspect_jitter, multiple of 8."""
    if aspect_jitter <= 0:
        return image_size, image_size
    w = image_size * float(rng.uniform(1 - aspect_jitter, 1 + aspect_jitter))
    return max(8, int(round(w / 8)) * 8), image_size


def generate_split(out_dir: str | Path, split: str, n: int, image_size: Optional[int] = None, seed: int = 0,
                   aspect_jitter: Optional[float] = None, *, variant: str = "default", **knobs) -> dict:
    """Write `n` images to out_dir/split/ (replacing files of the same name) and return the COCO
    dict (not yet written). `generate` is the checked entry point, which writes nothing it may not.

    variant: a name of VARIANTS; image_size, aspect_jitter and `knobs` (any field of Knobs:
    min_objects, max_objects, num_classes, min_size, max_size, max_iou, max_cover, max_inside)
    override its values (None: the variant's). Bad values raise a ValueError naming the knob.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODE)}, got {split!r}")
    chosen = variant_knobs(variant, image_size=image_size, aspect_jitter=aspect_jitter, **knobs)
    img_dir = Path(out_dir) / split
    img_dir.mkdir(parents=True, exist_ok=True)
    return coco_split(split, n, seed, chosen, variant, img_dir)


def coco_split(split: str, n: int, seed: int = 0, knobs: Knobs = _DEFAULT, variant: str = "default",
               img_dir: Optional[Path] = None) -> dict:
    """The COCO dict of `n` images of `split` drawn with `knobs` (checked Knobs; `variant` is only
    recorded); the images are written to img_dir if given (else only the annotations are made).

    The "info" records the variant and every knob value, except for the default knobs, whose
    json stays byte-identical to the embedded data/shapes."""
    images, annotations = [], []
    scene = {k: v for k, v in knobs.as_dict().items() if k not in ("image_size", "aspect_jitter")}
    for i in range(1, n + 1):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        w, h = _image_size(rng, knobs.image_size, knobs.aspect_jitter)
        img, objects = render_image(rng, w, h, **scene)
        name = f"{i:06d}.png"
        if img_dir is not None:
            img.save(img_dir / name, optimize=True)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        for label, (x, y, bw, bh) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label + 1,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    info = {"description": "msdetr_lite synthetic shapes", "version": "1",
            "seed": seed, "split": split, "image_size": knobs.image_size}
    if not knobs.is_default():
        info.update(variant=variant, knobs=knobs.as_dict())
    return {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"}
                       for k, name in enumerate(SHAPE_NAMES[:knobs.num_classes])],
    }


def generate(out_dir: str | Path = "data/shapes", n_train: int = 1200, n_val: int = 200,
             image_size: Optional[int] = None, seed: int = 0, aspect_jitter: Optional[float] = None,
             progress: bool = False, overwrite: bool = False, *, variant: str = "default", **knobs) -> dict:
    """Generate the dataset into out_dir (COCO layout, split names "train" and "val").

    variant: a name of VARIANTS ("default": the embedded data/shapes, byte for byte); image_size,
    aspect_jitter and `knobs` (any field of Knobs: min_objects, max_objects, num_classes, min_size,
    max_size, max_iou, max_cover, max_inside) override the variant's values (None: the variant's).
    Bad values raise a UsageError (a ValueError) naming the knob, sizes that cannot be drawn or
    read one saying why, and a folder holding what this generator did not write an OutputError
    (unless `overwrite`), all before anything is drawn (data/shapes_output.py).

    Returns a summary {"out_dir", "images": {split: n}, "annotations": {split: n}, "bytes", "seconds"}.
    """
    chosen = variant_knobs(variant, image_size=image_size, aspect_jitter=aspect_jitter, **knobs)
    check_arguments(n_train, n_val, chosen, seed)
    knobs = chosen.as_dict()
    t0 = time.perf_counter()
    summary = {"out_dir": str(Path(out_dir)), "images": {}, "annotations": {}}

    def draw(tmp: Path) -> None:
        (tmp / "annotations").mkdir()
        for split, n in (("train", n_train), ("val", n_val)):
            if progress:
                print(f"generating {n} {split} images into {Path(out_dir) / split}")
            coco = generate_split(tmp, split, n, seed=seed, variant=variant, **knobs)
            with open(tmp / "annotations" / f"instances_{split}.json", "w") as f:
                json.dump(coco, f, separators=(",", ":"))
            summary["images"][split] = len(coco["images"])
            summary["annotations"][split] = len(coco["annotations"])

    out = write_dataset(out_dir, file_names(n_train, n_val), overwrite, draw)
    summary["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


# --- statistics --------------------------------------------------------------------------------
COCO_AREAS = (32 ** 2, 96 ** 2)     # COCOeval's small / medium / large bounds, in px^2 of the stored image
OCCLUDED_IOU = 0.1                   # a box "occluded" if it overlaps another one of its image at IoU above


def resized_size(height: int, width: int, size: int, max_size: Optional[int] = None) -> tuple[int, int]:
    """(height, width) after the val transform's resize: shorter side to `size`, longer side at
    most `max_size` (torchvision's Resize(size, max_size) arithmetic)."""
    short, long = min(height, width), max(height, width)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if height > width else (new_short, new_long)


def token_count(height: int, width: int, num_levels: int = 4) -> int:
    """Encoder tokens of an image as models/detector.py makes them: the ResNet maps at strides
    8 / 16 / 32 (the last `num_levels` of them; every stride-2 layer rounds up) and, with 4 levels,
    a stride-64 map made from the stride-32 one."""
    strides = [8, 16, 32][3 - min(num_levels, 3):] + ([64] if num_levels == 4 else [])
    return sum(-(-height // s) * -(-width // s) for s in strides)


def split_statistics(coco: dict, val_size: Optional[int] = None, max_size: Optional[int] = None,
                     num_queries: int = 100, num_levels: int = 4) -> dict:
    """What a COCO dict asks of a detector:

    objects per image (mean, min, max); classes and boxes per class; the small / medium / large
    share of the boxes by COCO's absolute area bounds (32^2, 96^2 px^2 of the image as stored, the
    bounds COCOeval's AP_small / AP_medium / AP_large use, not scaled by the image size); the
    occluded share (boxes overlapping another box of their image at IoU > 0.1); the encoder
    tokens per image at the evaluation size (`token_count` of each image resized to `val_size`,
    default the json's info.image_size or the images' median height, longer side <= `max_size`,
    default 1.5 x val_size as in the tiny preset) and `num_queries` as a share of them.
    """
    images = coco["images"]
    if not images:
        raise ValueError("the COCO dict lists no images")
    if val_size is None:
        val_size = coco.get("info", {}).get("image_size") or int(np.median([im["height"] for im in images]))
    max_size = int(1.5 * val_size) if max_size is None else max_size
    boxes: dict[int, list] = {im["id"]: [] for im in images}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_class = {name: 0 for name in names.values()}
    areas = []
    for a in coco["annotations"]:
        boxes[a["image_id"]].append(a["bbox"])
        per_class[names[a["category_id"]]] += 1
        areas.append(a["bbox"][2] * a["bbox"][3])
    counts = np.array([len(b) for b in boxes.values()])
    occluded = sum(int((_iou_matrix(np.array(b, float)) > OCCLUDED_IOU).any(1).sum()) for b in boxes.values() if b)
    areas = np.array(areas, float)
    n_boxes = max(len(areas), 1)
    tokens = np.array([token_count(*resized_size(im["height"], im["width"], val_size, max_size), num_levels)
                       for im in images])
    return {
        "images": len(images),
        "objects_per_image": {"mean": float(counts.mean()), "min": int(counts.min()), "max": int(counts.max())},
        "classes": len(names),
        "boxes_per_class": per_class,
        "area_share": {"small": float((areas < COCO_AREAS[0]).sum() / n_boxes),
                       "medium": float(((areas >= COCO_AREAS[0]) & (areas < COCO_AREAS[1])).sum() / n_boxes),
                       "large": float((areas >= COCO_AREAS[1]).sum() / n_boxes)},
        "occluded_share": occluded / n_boxes,
        "val_size": val_size, "max_size": max_size,
        "tokens_per_image": float(tokens.mean()),
        "num_queries": num_queries,
        "queries_per_token": num_queries / float(tokens.mean()),
    }


def _iou_matrix(xywh: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [N, 4] xywh boxes, the diagonal zeroed."""
    x0, y0 = xywh[:, 0], xywh[:, 1]
    x1, y1 = x0 + xywh[:, 2], y0 + xywh[:, 3]
    iw = np.clip(np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0), 0, None)
    ih = np.clip(np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0), 0, None)
    inter = iw * ih
    area = xywh[:, 2] * xywh[:, 3]
    iou = inter / (area[:, None] + area - inter)
    np.fill_diagonal(iou, 0.0)
    return iou


def variant_statistics(variant: str = "default", n: int = 200, seed: int = 0, **knobs) -> tuple[Knobs, dict]:
    """(the checked knobs, split_statistics) of `n` val images of `variant` with `knobs` overriding
    its values; drawn in memory, nothing is written."""
    chosen = variant_knobs(variant, **knobs)
    return chosen, split_statistics(coco_split("val", n, seed, chosen, variant))


def statistics_table(rows: dict[str, tuple[Knobs, dict]]) -> str:
    """A markdown table of {variant: (knobs, split_statistics)}: one row per variant."""
    lines = ["| variant | image px | classes | objects / image: mean (min-max) | sizes px | "
             "small / medium / large | occluded | tokens / image | 100 queries / tokens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, (k, st) in rows.items():
        o, a = st["objects_per_image"], st["area_share"]
        lines.append(f"| {name} | {k.image_size} | {st['classes']} | {o['mean']:.1f} ({o['min']}-{o['max']}) | "
                     f"{k.min_size:g}-{k.max_size:g} | {a['small']:.0%} / {a['medium']:.0%} / {a['large']:.0%} | "
                     f"{st['occluded_share']:.0%} | {st['tokens_per_image']:.0f} | {st['queries_per_token']:.0%} |")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", default="data/shapes", help="output folder (default: data/shapes)")
    parser.add_argument("--n-train", type=int, default=1200, help="training images (default 1200)")
    parser.add_argument("--n-val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out that this command did not write")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    return add_knob_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    summary = generate(args.out, n_train=args.n_train, n_val=args.n_val, seed=args.seed, progress=True,
                       overwrite=args.overwrite, **knobs_from_args(args))
    print(f"wrote {summary['images']['train']} train / {summary['images']['val']} val images "
          f"({summary['annotations']['train']} / {summary['annotations']['val']} boxes) to "
          f"{summary['out_dir']}: {summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msdetr_lite.data.synthetic",
                                     description="Generate the synthetic shapes dataset (COCO format).")
    add_arguments(parser)
    parser.add_argument("--stats", nargs="*", metavar="VARIANT",
                        help="print the statistics of --n-val val images of these variants (default: --variant) "
                             "with the knob flags applied, as a markdown table; writes nothing")
    args = parser.parse_args(argv)

    def command() -> int:
        knobs = knobs_from_args(args)              # a bad knob: UsageError, before anything is written
        if args.stats is None:
            run(args)
            return 0
        given = {k: v for k, v in knobs.items() if k != "variant"}
        print(statistics_table({name: variant_statistics(name, args.n_val, args.seed, **given)
                                for name in args.stats or [args.variant]}))
        return 0
    # one line per problem, exit 2, as `msdetr data shapes`
    return guarded(parser.prog, command, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
