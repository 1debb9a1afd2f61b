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
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("circle", "square", "triangle", "cross")

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
_FILE_RE = re.compile(r"^\d{6}\.png$")


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


def _distractors(draw: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator, n: int) -> None:
    """Thin strokes, arcs and small dots: clutter that is *not* annotated."""
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
        else:                                       # dot, well below the 12 px object minimum
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1.0, 2.5)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


# --- objects -----------------------------------------------------------------------------------
def _rotate(points: np.ndarray, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return points @ np.array([[c, s], [-s, c]])


def _shape_outline(label: int, size: float, rng: np.random.Generator):
    """Geometry centred at the origin: ("ellipse", (rx, ry)) or ("polygon", [N, 2] points)."""
    if label == 0:                                  # circle (slightly elliptic)
        r = size / 2
        return "ellipse", (r, r * float(rng.uniform(0.88, 1.12)))
    if label == 1:                                  # square, mildly rotated (never a diamond)
        a = size / 2
        pts = np.array([[-a, -a], [a, -a], [a, a], [-a, a]])
        return "polygon", _rotate(pts, math.radians(float(rng.uniform(-15, 15))))
    if label == 2:                                  # equilateral triangle, any rotation
        r = size / math.sqrt(3) * 1.05
        ang = np.array([90.0, 210.0, 330.0]) * math.pi / 180
        pts = np.stack([r * np.cos(ang), -r * np.sin(ang)], 1)
        return "polygon", _rotate(pts, math.radians(float(rng.uniform(0, 360))))
    # cross ("plus"), arms of thickness ~1/3, mildly rotated
    a, t = size / 2, size * float(rng.uniform(0.15, 0.19))
    pts = np.array([[-t, -a], [t, -a], [t, -t], [a, -t], [a, t], [t, t], [t, a], [-t, a],
                    [-t, t], [-a, t], [-a, -t], [-t, -t]])
    return "polygon", _rotate(pts, math.radians(float(rng.uniform(-15, 15))))


def _draw_shape(draw: ImageDraw.ImageDraw, geom, cx: float, cy: float, fill: int) -> None:
    kind, g = geom
    if kind == "ellipse":
        rx, ry = g
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
    else:
        draw.polygon([(float(x + cx), float(y + cy)) for x, y in g], fill=fill)


def _geom_extent(geom) -> tuple[float, float]:
    kind, g = geom
    if kind == "ellipse":
        return g[0], g[1]
    return float(np.abs(g[:, 0]).max()), float(np.abs(g[:, 1]).max())


def _overlap_ok(box: tuple, boxes: list[tuple], max_iou: float = 0.35, max_cover: float = 0.35) -> bool:
    """New object (drawn on top) may touch/overlap others, but not hide most of one."""
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for bx0, by0, bx1, by1 in boxes:
        iw = min(x1, bx1) - max(x0, bx0)
        ih = min(y1, by1) - max(y0, by0)
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        barea = (bx1 - bx0) * (by1 - by0)
        if inter / (area + barea - inter) > max_iou or inter / barea > max_cover or inter / area > 0.5:
            return False
    return True


def render_image(rng: np.random.Generator, width: int, height: int,
                 min_objects: int = 3, max_objects: int = 10,
                 min_size: float = 12.0, max_size: float = 48.0):
    """Draw one scene. Returns (PIL "P" image [height, width], list of (label, [x, y, w, h]))
    with boxes tight around the drawn pixels (xywh, pixels, COCO convention)."""
    img = Image.new("P", (width, height), 0)
    img.putpalette(_palette_bytes())
    draw = ImageDraw.Draw(img)
    _background(draw, width, height, rng)
    _distractors(draw, width, height, rng, int(rng.integers(3, 9)))

    n_target = int(rng.integers(min_objects, max_objects + 1))
    placed_boxes: list[tuple] = []
    objects = []
    for _ in range(n_target):
        label = int(rng.integers(len(CLASS_NAMES)))
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
            if _overlap_ok(box, placed_boxes):
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
    _distractors(draw, width, height, rng, int(rng.integers(0, 3)))
    return img, objects


def _image_size(rng: np.random.Generator, image_size: int, aspect_jitter: float) -> tuple[int, int]:
    """(width, height): height fixed, width jittered by up to +-aspect_jitter, multiple of 8."""
    if aspect_jitter <= 0:
        return image_size, image_size
    w = image_size * float(rng.uniform(1 - aspect_jitter, 1 + aspect_jitter))
    return max(8, int(round(w / 8)) * 8), image_size


def generate_split(out_dir: str | Path, split: str, n: int, image_size: int = 128, seed: int = 0,
                   aspect_jitter: float = 0.125) -> dict:
    """Write `n` images to out_dir/split/ and return the COCO dict (not yet written)."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODE)}, got {split!r}")
    img_dir = Path(out_dir) / split
    img_dir.mkdir(parents=True, exist_ok=True)
    keep = {f"{i:06d}.png" for i in range(1, n + 1)}
    for p in img_dir.iterdir():                     # stale images of a larger earlier run
        if _FILE_RE.match(p.name) and p.name not in keep:
            p.unlink()

    images, annotations = [], []
    for i in range(1, n + 1):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        w, h = _image_size(rng, image_size, aspect_jitter)
        img, objects = render_image(rng, w, h)
        name = f"{i:06d}.png"
        img.save(img_dir / name, optimize=True)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        for label, (x, y, bw, bh) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label + 1,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    return {
        "info": {"description": "msdetr_lite synthetic shapes", "version": "1",
                 "seed": seed, "split": split, "image_size": image_size},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"}
                       for k, name in enumerate(CLASS_NAMES)],
    }


def generate(out_dir: str | Path = "data/shapes", n_train: int = 1200, n_val: int = 200,
             image_size: int = 128, seed: int = 0, aspect_jitter: float = 0.125,
             progress: bool = False) -> dict:
    """Generate the dataset into out_dir (COCO layout, split names "train" and "val").

    Returns a summary {"out_dir", "images": {split: n}, "annotations": {split: n}, "bytes", "seconds"}.
    """
    if n_train < 0 or n_val < 0:
        raise ValueError("n_train and n_val must be >= 0")
    if image_size < 48:
        raise ValueError(f"image_size={image_size} is too small for 12-48 px objects; use >= 48")
    t0 = time.perf_counter()
    out = Path(out_dir)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    summary = {"out_dir": str(out), "images": {}, "annotations": {}}
    for split, n in (("train", n_train), ("val", n_val)):
        if progress:
            print(f"generating {n} {split} images into {out / split}")
        coco = generate_split(out, split, n, image_size=image_size, seed=seed, aspect_jitter=aspect_jitter)
        with open(out / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump(coco, f, separators=(",", ":"))
        summary["images"][split] = len(coco["images"])
        summary["annotations"][split] = len(coco["annotations"])
    summary["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


# --- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", default="data/shapes", help="output folder (default: data/shapes)")
    parser.add_argument("--n-train", type=int, default=1200, help="training images (default 1200)")
    parser.add_argument("--n-val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--image-size", type=int, default=128, help="image height in px (default 128)")
    parser.add_argument("--aspect-jitter", type=float, default=0.125,
                        help="width varies by up to this fraction of the height (default 0.125)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def run(args: argparse.Namespace) -> dict:
    summary = generate(args.out, n_train=args.n_train, n_val=args.n_val, image_size=args.image_size,
                       seed=args.seed, aspect_jitter=args.aspect_jitter, progress=True)
    print(f"wrote {summary['images']['train']} train / {summary['images']['val']} val images "
          f"({summary['annotations']['train']} / {summary['annotations']['val']} boxes) to "
          f"{summary['out_dir']}: {summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msdetr_lite.data.synthetic",
                                     description="Generate the synthetic shapes dataset (COCO format).")
    run(add_arguments(parser).parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
