"""The shapes' geometry: an outline per class, drawing it, its extent, and the overlap rule.

Split out of data/synthetic.py (which renders scenes and writes the dataset). Every outline is
centred at the origin, in pixels; randomness comes only from the generator passed in, in a fixed
order per class, so the embedded data/shapes stays byte-identical.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import ImageDraw

# --- objects -----------------------------------------------------------------------------------
def _rotate(points: np.ndarray, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return points @ np.array([[c, s], [-s, c]])


def _regular(n: int, r: float, start_deg: float = 90.0) -> np.ndarray:
    """n points on a circle of radius r (y down), the first at `start_deg`."""
    ang = (start_deg + 360.0 * np.arange(n) / n) * math.pi / 180
    return np.stack([r * np.cos(ang), -r * np.sin(ang)], 1)


def _any_angle(rng: np.random.Generator) -> float:
    return math.radians(float(rng.uniform(0, 360)))


def _mild_angle(rng: np.random.Generator) -> float:
    return math.radians(float(rng.uniform(-15, 15)))


def _shape_outline(label: int, size: float, rng: np.random.Generator):
    """Geometry centred at the origin: ("ellipse", (rx, ry)), ("ring", (rx, ry, width)) or
    ("polygons", [[N, 2] points, ...]) (a union of polygons). Labels index SHAPE_NAMES; the
    first four (the embedded set's) draw exactly as they always have."""
    a = size / 2
    if label == 0:                                  # circle (slightly elliptic)
        return "ellipse", (a, a * float(rng.uniform(0.88, 1.12)))
    if label == 1:                                  # square, mildly rotated (never a diamond)
        pts = np.array([[-a, -a], [a, -a], [a, a], [-a, a]])
        return "polygons", [_rotate(pts, math.radians(float(rng.uniform(-15, 15))))]
    if label == 2:                                  # equilateral triangle, any rotation
        pts = _regular(3, size / math.sqrt(3) * 1.05)
        return "polygons", [_rotate(pts, math.radians(float(rng.uniform(0, 360))))]
    if label == 3:                                  # cross ("plus"), arms of thickness ~1/3, mildly rotated
        t = size * float(rng.uniform(0.15, 0.19))
        pts = np.array([[-t, -a], [t, -a], [t, -t], [a, -t], [a, t], [t, t], [t, a], [-t, a],
                        [-t, t], [-a, t], [-a, -t], [-t, -t]])
        return "polygons", [_rotate(pts, math.radians(float(rng.uniform(-15, 15))))]
    # --- the shapes beyond the embedded four (variants with num_classes > 4) ---
    if label == 4:                                  # five-pointed star, any rotation
        pts = np.empty((10, 2))
        pts[0::2], pts[1::2] = _regular(5, a * 1.08), _regular(5, a * 0.5, 90.0 + 36.0)
        return "polygons", [_rotate(pts, _any_angle(rng))]
    if label == 5:                                  # ring: a disc with a hole showing the background
        return "ring", (a, a, max(2, int(round(size * 0.2))))
    if label == 6:                                  # diamond: a rhombus (never a square), mildly rotated
        pts = np.array([[0, -a], [0.58 * a, 0], [0, a], [-0.58 * a, 0]])
        return "polygons", [_rotate(pts, _mild_angle(rng))]
    if label == 7:                                  # "L", any rotation
        t = 0.38 * size
        pts = np.array([[-a, -a], [-a + t, -a], [-a + t, a - t], [a, a - t], [a, a], [-a, a]])
        return "polygons", [_rotate(pts, _any_angle(rng))]
    if label == 8:                                  # "T", any rotation
        t = 0.17 * size
        pts = np.array([[-a, -a], [a, -a], [a, -a + 2 * t], [t, -a + 2 * t], [t, a], [-t, a],
                        [-t, -a + 2 * t], [-a, -a + 2 * t]])
        return "polygons", [_rotate(pts, _any_angle(rng))]
    if label == 9:                                  # semicircle (half disc), any rotation
        ang = np.linspace(0, math.pi, 19)
        pts = np.stack([a * np.cos(ang), a / 2 - a * np.sin(ang)], 1)
        return "polygons", [_rotate(pts, _any_angle(rng))]
    if label == 10:                                 # arrow: shaft and a triangular head, any rotation
        t, hw, hl = 0.14 * size, 0.5 * size, 0.45 * size
        pts = np.array([[-a, -t], [a - hl, -t], [a - hl, -hw], [a, 0], [a - hl, hw], [a - hl, t], [-a, t]])
        return "polygons", [_rotate(pts, _any_angle(rng))]
    if label == 11:                                 # bar: a 3.3:1 rectangle, any rotation
        t = 0.15 * size
        return "polygons", [_rotate(np.array([[-a, -t], [a, -t], [a, t], [-a, t]]), _any_angle(rng))]
    if label == 12:                                 # crescent: a disc with an off-centre disc cut out
        d = 0.75 * a                                # centre distance; the crescent is d thick
        phi = math.acos(d / (2 * a))
        outer = np.linspace(phi, 2 * math.pi - phi, 25)
        inner = np.linspace(math.pi + phi, math.pi - phi, 15)
        pts = np.concatenate([np.stack([a * np.cos(outer), a * np.sin(outer)], 1),
                              np.stack([d + a * np.cos(inner), a * np.sin(inner)], 1)])
        pts[:, 0] -= (d / 2 - a) / 2                # centre the box
        return "polygons", [_rotate(pts, _any_angle(rng))]
    if label == 13:                                 # frame: a hollow square, mildly rotated
        t, theta = max(0.2 * size, 1.5), _mild_angle(rng)
        sides = [np.array([[-a, -a], [a, -a], [a, -a + t], [-a, -a + t]])]
        sides.append(np.array([[-a, a - t], [a, a - t], [a, a], [-a, a]]))
        sides.append(np.array([[-a, -a], [-a + t, -a], [-a + t, a], [-a, a]]))
        sides.append(np.array([[a - t, -a], [a, -a], [a, a], [a - t, a]]))
        return "polygons", [_rotate(p, theta) for p in sides]
    raise ValueError(f"label must be in 0..{len(SHAPE_NAMES) - 1}, got {label}")


def _draw_shape(draw: ImageDraw.ImageDraw, geom, cx: float, cy: float, fill: int) -> None:
    kind, g = geom
    if kind == "ellipse":
        rx, ry = g
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
    elif kind == "ring":
        rx, ry, width = g
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=fill, width=width)
    else:
        for pts in g:
            draw.polygon([(float(x + cx), float(y + cy)) for x, y in pts], fill=fill)


def _geom_extent(geom) -> tuple[float, float]:
    kind, g = geom
    if kind in ("ellipse", "ring"):
        return g[0], g[1]
    pts = np.concatenate(g)
    return float(np.abs(pts[:, 0]).max()), float(np.abs(pts[:, 1]).max())


def _overlap_ok(box: tuple, boxes: list[tuple], max_iou: float, max_cover: float, max_inside: float) -> bool:
    """New object (drawn on top) may touch/overlap others, but not hide more of one than the
    occlusion knobs allow (see Knobs: max_iou, max_cover, max_inside)."""
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for bx0, by0, bx1, by1 in boxes:
        iw = min(x1, bx1) - max(x0, bx0)
        ih = min(y1, by1) - max(y0, by0)
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        barea = (bx1 - bx0) * (by1 - by0)
        if inter / (area + barea - inter) > max_iou or inter / barea > max_cover or inter / area > max_inside:
            return False
    return True
