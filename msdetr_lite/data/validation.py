"""Checking a COCO-format dataset once, when it is built: the json, the boxes, the image files.

    data = load_coco_json("annotations/instances_val.json")     # structure checked (DataError)
    cleaned, report = clean_annotations(data, img_ids, "val")    # boxes dropped / clipped, counted
    report.summary()                                             # "val: dropped 3 boxes (2 zero-size, 1 NaN), clipped 5"
    check = inspect_image(path, width, height)                   # header check: ImageCheck(problem, rotate, note)
    rgb = to_rgb(Image.open(path))

Everything is checked once, when the dataset is built, and training and evaluation see the same
result:

* The json (`load_coco_json`): missing / corrupt file, missing or mistyped fields, annotations
  pointing at unknown images or categories raise DataError / FileNotFoundError naming the file
  and the entry.
* The boxes (`clean_annotations`): boxes with a NaN / inf / null coordinate, with width or height
  <= 0, or with nothing left inside the image are dropped; boxes reaching outside the image are
  clipped to it; a repeated annotation (same id, same content) is dropped; an id shared by
  different annotations, or the id 0 (which COCOeval takes for "unmatched"), gets a fresh id.
  The cleaned annotations are the training targets *and* the COCOeval ground truth
  (`dataset.coco`), so a perfect detector scores AP 1.0. Crowd boxes (iscrowd=1) get the same
  rules, never enter the training targets, and stay in `dataset.coco` as COCO's "ignore" regions.
* The image files (`inspect_image`, a header check that decodes no pixels except for a JPEG not
  ending in its end-of-image marker; for a split of at most FULL_DECODE_PIXELS pixels in all,
  such as the shapes set, every file is also decoded fully, so a file damaged in the middle
  fails here and not mid-epoch; in a larger split such a file fails on load, naming it): missing,
  unreadable, truncated or damaged files, unsupported modes, a size differing from the json's and
  a file_name leading outside the image folder (`image_path`) raise ONE error listing the first
  few files and how many in all. Convertible modes are converted on load (`to_rgb`): palette / grey / LA / CMYK / RGBA
  to RGB, 16-bit grey ("I;16*", "I") scaled to 8 bits by 255 / 65535.
* EXIF orientation: boxes refer to the pixel array the json's width/height describe. A file whose
  orientation swaps the axes (5-8) and whose *rotated* size is the json's is rotated on load
  (`PIL.ImageOps.exif_transpose`, the annotation tool showed it upright); otherwise the stored
  pixels are used unrotated, as torchvision / DETR-family code reads COCO (for orientations
  2-4, where the size cannot tell, this is a choice: such images are counted in the report).

What was changed is counted in a `ValidationReport` (`dataset.report`). A bad data file (json
or image) raises `DataError` (a ValueError) naming the file and the entry, so the command line
reports it as a user error; a missing file raises FileNotFoundError.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from msdetr_lite.errors import UserError

__all__ = ["DataError", "load_coco_json", "ValidationReport", "clean_annotations", "ImageCheck", "to_rgb",
           "inspect_image", "check_image_files", "image_path", "FULL_DECODE_PIXELS"]

_IMAGE_FIELDS = ("id", "file_name", "width", "height")
_ANN_FIELDS = ("id", "image_id", "category_id", "bbox")
_SHOWN = 5                                       # bad files / entries listed in one error message

# modes PIL converts to RGB without loss of meaning (alpha is dropped)
_RGB_CONVERTIBLE = frozenset({"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA",
                              "CMYK", "YCbCr"})
# 16-bit grey as Pillow opens it (PNG / TIFF); "I" is 32-bit int holding 16-bit samples
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
FULL_DECODE_PIXELS = 100_000_000                 # splits up to this many pixels are decoded at build (~1 s)
_ORIENTATION_TAG = 0x0112                        # EXIF Orientation
_SWAPS_AXES = frozenset({5, 6, 7, 8})            # orientations that exchange width and height




class DataError(UserError, ValueError):
    """A data file (annotation json or image) that cannot be used; the message names the file."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# a bbox entry: a number, or null (JSON's spelling of NaN from JavaScript tools); exact types, so
# True / "3" are refused (and the check stays fast over COCO's 860k boxes)
_COORD_TYPES = frozenset({int, float, type(None)})


def _shown(items: list[str]) -> str:
    return "; ".join(items[:_SHOWN]) + ("; ..." if len(items) > _SHOWN else "")


# --- the json -------------------------------------------------------------------------------------
def _read_json(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {ann_file} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"annotation file {ann_file}: expected a JSON object with 'images', "
                         f"'annotations' and 'categories', got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DataError(f"annotation file {ann_file}: missing required field(s) "
                         f"{', '.join(repr(m) for m in missing)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DataError(f"annotation file {ann_file}: {key!r} must be a list")
    return data


def _check_fields(data: dict, ann_file: Path, key: str, fields: tuple) -> None:
    for i, item in enumerate(data[key]):
        if not isinstance(item, dict):
            raise DataError(f"annotation file {ann_file}: {key}[{i}] is not an object")
        lacking = [f for f in fields if f not in item]
        if lacking:
            raise DataError(f"annotation file {ann_file}: {key}[{i}] lacks required field(s) "
                             f"{', '.join(repr(f) for f in lacking)}")


def _check_images(data: dict, ann_file: Path) -> None:
    for i, im in enumerate(data["images"]):
        if not _is_int(im["id"]):
            raise DataError(f"annotation file {ann_file}: images[{i}] 'id' must be an integer, got {im['id']!r}")
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise DataError(f"annotation file {ann_file}: images[{i}] 'file_name' must be a non-empty "
                             f"string, got {im['file_name']!r}")
        for key in ("width", "height"):
            if not _is_int(im[key]) or im[key] <= 0:
                raise DataError(f"annotation file {ann_file}: images[{i}] ({im['file_name']}) {key!r} "
                                 f"must be a positive integer, got {im[key]!r}")
    img_ids = [im["id"] for im in data["images"]]
    if len(set(img_ids)) != len(img_ids):
        dup = sorted(k for k, n in Counter(img_ids).items() if n > 1)
        raise DataError(f"annotation file {ann_file}: duplicate image ids in 'images': {dup[:_SHOWN]}")


def _check_categories(data: dict, ann_file: Path) -> None:
    if not data["categories"]:
        raise DataError(f"annotation file {ann_file}: 'categories' is empty")
    for i, c in enumerate(data["categories"]):
        if not _is_int(c["id"]):
            raise DataError(f"annotation file {ann_file}: categories[{i}] 'id' must be an integer, "
                             f"got {c['id']!r}")
    cat_ids = [c["id"] for c in data["categories"]]
    if len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"annotation file {ann_file}: duplicate category ids in 'categories'")


def _check_annotations(data: dict, ann_file: Path) -> None:
    img_ids = {im["id"] for im in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        bbox = ann["bbox"]
        # unrolled: this loop runs over every box of the file
        if (type(bbox) is not list or len(bbox) != 4 or type(bbox[0]) not in _COORD_TYPES
                or type(bbox[1]) not in _COORD_TYPES or type(bbox[2]) not in _COORD_TYPES
                or type(bbox[3]) not in _COORD_TYPES):
            raise DataError(f"annotation file {ann_file}: annotations[{i}] 'bbox' must be "
                             f"[x, y, w, h] numbers, got {bbox!r}")
        if type(ann["id"]) is not int:
            raise DataError(f"annotation file {ann_file}: annotations[{i}] 'id' must be an integer, "
                             f"got {ann['id']!r}")
        if ann["image_id"] not in img_ids:
            raise DataError(f"annotation file {ann_file}: annotations[{i}] has image_id "
                             f"{ann['image_id']!r} that is not in 'images'")
        if ann["category_id"] not in cat_ids:
            raise DataError(f"annotation file {ann_file}: annotations[{i}] has category_id "
                             f"{ann['category_id']!r} that is not in 'categories'")
        if ann.setdefault("iscrowd", 0) not in (0, 1):        # True / False compare equal to 1 / 0
            raise DataError(f"annotation file {ann_file}: annotations[{i}] 'iscrowd' must be 0 or 1, "
                             f"got {ann['iscrowd']!r}")


def load_coco_json(ann_file: str | Path) -> dict:
    """Read and check the structure of a COCO instances json: required fields, their types,
    unique image / category ids, annotations pointing at known images and categories.
    Fills the optional `iscrowd` (= 0) and `area` (= w * h of the box, 0 where that is not a
    positive number) fields COCOeval needs. Box *values* (NaN, empty, outside the image,
    duplicate annotation ids) are left to `clean_annotations`.
    Raises FileNotFoundError / ValueError naming the file and the entry."""
    ann_file = Path(ann_file)
    data = _read_json(ann_file)
    _check_fields(data, ann_file, "images", _IMAGE_FIELDS)
    _check_fields(data, ann_file, "annotations", _ANN_FIELDS)
    _check_fields(data, ann_file, "categories", ("id", "name"))
    _check_images(data, ann_file)
    _check_categories(data, ann_file)
    _check_annotations(data, ann_file)
    for ann in data["annotations"]:
        if "area" not in ann:
            w, h = (math.nan if v is None else float(v) for v in ann["bbox"][2:])
            ann["area"] = w * h if w > 0 and h > 0 and math.isfinite(w * h) else 0.0    # NaN > 0 is False
    return data


# --- the boxes ------------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    """What building a dataset changed, for one summary line.

    dropped: reason -> boxes dropped ("NaN" (NaN / inf / null), "zero-size" (w or h <= 0),
        "outside the image" (nothing left after clipping), "duplicate" (a repeated entry)).
    clipped: kept boxes that reached outside their image.
    renumbered: annotations given a fresh id (an id shared with a different annotation, or 0).
    images: note -> images ("16-bit scaled to 8 bits", "EXIF-rotated", ...).
    """
    name: str
    num_boxes: int = 0
    dropped: Counter = field(default_factory=Counter)
    clipped: int = 0
    renumbered: int = 0
    images: Counter = field(default_factory=Counter)

    @property
    def changed(self) -> bool:
        return bool(sum(self.dropped.values()) or self.clipped or self.renumbered or self.images)

    def summary(self) -> str:
        """e.g. "val: dropped 3 boxes (2 zero-size, 1 NaN), clipped 5"."""
        n_drop = sum(self.dropped.values())
        if not self.changed:
            return f"{self.name}: all {self.num_boxes} boxes valid"
        parts = []
        if n_drop:
            why = ", ".join(f"{n} {r}" for r, n in self.dropped.most_common())
            parts.append(f"dropped {n_drop} box{'es' if n_drop != 1 else ''} ({why})")
        if self.clipped:
            parts.append(f"clipped {self.clipped}")
        if self.renumbered:
            parts.append(f"gave {self.renumbered} annotation(s) a fresh id (shared or 0)")
        line = f"{self.name}: " + (", ".join(parts) if parts else f"all {self.num_boxes} boxes valid")
        if self.images:
            line += "; images: " + ", ".join(f"{n} {note}" for note, n in self.images.most_common())
        return line


def _box_arrays(anns: list[dict], sizes: dict[int, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """xywh float64 [N, 4] (null -> NaN) and the (w, h) of each box's image float64 [N, 2]."""
    xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    wh = np.array([sizes[a["image_id"]] for a in anns], dtype=np.float64).reshape(-1, 2)
    return xywh, wh


def _clip_and_classify(xywh: np.ndarray, wh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip xywh boxes [N, 4] to their images [N, 2] (w, h).

    Returns the clipped xyxy boxes [N, 4], the drop reason per box (object [N], None = kept) and
    whether a kept box was changed by clipping (bool [N])."""
    with np.errstate(invalid="ignore"):
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        clipped = np.stack([xyxy[:, 0].clip(0, wh[:, 0]), xyxy[:, 1].clip(0, wh[:, 1]),
                            xyxy[:, 2].clip(0, wh[:, 0]), xyxy[:, 3].clip(0, wh[:, 1])], axis=1)
        nonfinite = ~np.isfinite(xywh).all(axis=1)
        empty = ~nonfinite & ((xywh[:, 2] <= 0) | (xywh[:, 3] <= 0))
        outside = ~nonfinite & ~empty & ~((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]))
    reason = np.full(len(xywh), None, dtype=object)
    reason[nonfinite], reason[empty], reason[outside] = "NaN", "zero-size", "outside the image"
    was_clipped = (reason == None) & (clipped != xyxy).any(axis=1)      # noqa: E711 (elementwise)
    return clipped, reason, was_clipped


def _resolve_ids(anns: list[dict], reason: np.ndarray) -> list[Optional[int]]:
    """Per annotation: None (keep its id), -1 (a repeat of an earlier entry with the same id and
    content: drop) or 0 (needs a fresh id: its id is 0, which COCOeval's matching reads as
    "unmatched", or is shared by a different annotation). Only kept boxes (reason None) count."""
    out: list[Optional[int]] = [None] * len(anns)
    kept = [i for i, r in enumerate(reason.tolist()) if r is None]
    counts = Counter(anns[i]["id"] for i in kept)
    # contents are compared only for the (usually no) ids that occur twice
    seen: dict[int, set] = {}
    for i in kept:
        a = anns[i]
        if a["id"] == 0:
            out[i] = 0
        if counts[a["id"]] < 2:
            continue
        content = (a["image_id"], a["category_id"], tuple(a["bbox"]), int(a["iscrowd"]))
        contents = seen.setdefault(a["id"], set())
        if content in contents:
            out[i] = -1
        elif contents:
            out[i] = 0
        contents.add(content)
    return out


def clean_annotations(data: dict, img_ids: list[int], name: str) -> tuple[dict, ValidationReport]:
    """The annotations of the images `img_ids`, cleaned by the rules of the module docstring.

    data: a dict from `load_coco_json` (its annotation dicts are updated in place: bbox, area, id).
    Returns a COCO dict (the listed images in `img_ids` order, their kept annotations, all
    categories) for `coco_from_dict`, and the report of what changed. Kept boxes are xywh pixels
    inside their image with w, h > 0; `area` is kept where given and positive, but never larger
    than the (clipped) box, and is the box's area otherwise.
    """
    images = {im["id"]: im for im in data["images"]}
    wanted = set(img_ids)
    anns = [a for a in data["annotations"] if a["image_id"] in wanted]
    report = ValidationReport(name=name, num_boxes=len(anns))
    sizes = {i: (images[i]["width"], images[i]["height"]) for i in img_ids}
    xywh, wh = _box_arrays(anns, sizes)
    xyxy, reason, was_clipped = _clip_and_classify(xywh, wh)
    ids = _resolve_ids(anns, reason)

    next_id = max([a["id"] for a in data["annotations"]] + [0]) + 1
    kept = []
    # python lists: indexing numpy arrays element by element is slow over COCO's 860k boxes
    for a, why, new_id, box, clip in zip(anns, reason.tolist(), ids, xyxy.tolist(), was_clipped.tolist()):
        if why is None and new_id == -1:
            why = "duplicate"
        if why is not None:
            report.dropped[why] += 1
            continue
        report.clipped += clip
        if new_id == 0:
            a["id"], next_id = next_id, next_id + 1
            report.renumbered += 1
        if clip:                        # unclipped boxes keep the json's exact numbers
            x1, y1, x2, y2 = box
            a["bbox"] = [x1, y1, x2 - x1, y2 - y1]
        box_area = float(a["bbox"][2]) * float(a["bbox"][3])
        area = a.get("area")
        ok_area = type(area) in (int, float) and math.isfinite(area) and area > 0
        a["area"] = min(float(area), box_area) if ok_area else box_area
        kept.append(a)
    cleaned = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    cleaned["images"] = [images[i] for i in img_ids]
    cleaned["annotations"] = kept
    return cleaned, report


# --- the image files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageCheck:
    """Result of `inspect_image`: problem (None = usable), rotate (apply the EXIF orientation on
    load), note (a conversion worth counting in the report, or None)."""
    problem: Optional[str] = None
    rotate: bool = False
    note: Optional[str] = None


def to_rgb(im: Image.Image) -> Image.Image:
    """An RGB copy of `im`: 16-bit grey ("I;16*", and "I" holding 16-bit samples, as Pillow opens
    16-bit PNG / TIFF) scaled by 255 / 65535 with rounding (values outside 0..65535 clipped);
    palette / grey / LA / RGBA / CMYK / YCbCr by PIL's conversion (alpha dropped).
    Raises ValueError for other modes (e.g. "F" float, whose range is unknown)."""
    if im.mode in _SIXTEEN_BIT:
        a = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if im.mode in _RGB_CONVERTIBLE:
        return im.convert("RGB")
    raise DataError(f"image mode {im.mode!r} is not supported; convert the file to 8-bit RGB "
                     f"(supported: {', '.join(sorted(_RGB_CONVERTIBLE | _SIXTEEN_BIT))})")


def _exif_orientation(im: Image.Image) -> int:
    """EXIF orientation 1-8 from the header, without decoding pixels (1 when absent)."""
    # PngImageFile.getexif() decodes the whole image when no eXIf chunk precedes the pixels:
    # only ask when the header had one (an eXIf after IDAT is not looked at, here or on load)
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:                   # a corrupt EXIF block: the pixels are still fine
        return 1
    return orientation if orientation in range(1, 9) else 1


def _jpeg_is_complete(path: Path) -> bool:
    """A JPEG ends with its end-of-image marker FF D9 (zero / whitespace padding allowed)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64))
        return f.read().rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


def _decode_error(path: Path, full: bool = False) -> Optional[str]:
    """Decode the file (a JPEG at 1/8 scale unless `full`: all its data is still read) -> the
    error, or None."""
    try:
        with Image.open(path) as im:
            if not full:
                im.draft(im.mode, (1, 1))
            im.load()
    except Exception as e:              # PIL raises OSError, SyntaxError, EOFError, ... for bad data
        return f"{type(e).__name__}: {e}"
    return None


def _size_decision(stored: tuple[int, int], orientation: int, json_size: tuple[int, int]) -> ImageCheck:
    """Which pixel array the json's (width, height) describes: stored, or EXIF-rotated."""
    rotated = stored[::-1] if orientation in _SWAPS_AXES else stored
    if json_size == stored:
        note = None if orientation == 1 else "with an EXIF orientation left unapplied (json size = stored size)"
        return ImageCheck(note=note)
    if json_size == rotated:
        return ImageCheck(rotate=True, note="EXIF-rotated to the json's width/height")
    exif = f" (EXIF orientation {orientation}: {rotated[0]}x{rotated[1]} rotated)" if orientation != 1 else ""
    return ImageCheck(problem=f"is {stored[0]}x{stored[1]} (w x h){exif} but the json says "
                              f"{json_size[0]}x{json_size[1]}")


def inspect_image(path: Path, width: int, height: int, decode: bool = False) -> ImageCheck:
    """Header check of one image file against the json's `width` x `height`: exists, PIL reads
    its header, mode convertible by `to_rgb`, size (after EXIF rotation where that is what the
    json describes), not truncated (PNG: chunk CRCs up to IEND via `verify`; JPEG: the
    end-of-image marker, with a full decode only when it is missing). No pixels are decoded on
    the normal path; `decode=True` also decodes the whole file (damage in the middle)."""
    if not path.is_file():
        return ImageCheck(problem="missing")
    try:
        with Image.open(path) as im:
            fmt, mode, stored = im.format, im.mode, im.size
            orientation = _exif_orientation(im)
            if fmt != "JPEG":
                im.verify()             # PNG: reads every chunk and checks its CRC; no decoding
    except Image.DecompressionBombError as e:
        return ImageCheck(problem=f"too many pixels ({e})")
    except Exception as e:              # UnidentifiedImageError, SyntaxError, OSError, EOFError, ...
        return ImageCheck(problem=f"unreadable or truncated ({type(e).__name__}: {e})")
    if fmt == "JPEG" and not _jpeg_is_complete(path):
        err = _decode_error(path)       # trailing bytes after the marker are harmless; truncation is not
        if err is not None:
            return ImageCheck(problem=f"truncated ({err})")
    if mode not in _RGB_CONVERTIBLE and mode not in _SIXTEEN_BIT:
        return ImageCheck(problem=f"mode {mode!r} is not supported (convert it to 8-bit RGB)")
    check = _size_decision(stored, orientation, (width, height))
    if check.problem is None and decode:
        err = _decode_error(path, full=True)
        if err is not None:
            return ImageCheck(problem=f"damaged ({err})")
    if check.problem is None and mode in _SIXTEEN_BIT:
        notes = [n for n in (check.note, "16-bit scaled to 8 bits") if n]
        check = ImageCheck(rotate=check.rotate, note=" and ".join(notes))
    return check


def image_path(img_folder: Path, file_name: str, allow_outside: bool = False) -> Path:
    """img_folder / file_name. A file_name that is absolute or leads outside img_folder (through
    "..") is a DataError unless `allow_outside` (data.allow_outside_paths): an annotation file must
    not make the library read files elsewhere. Symbolic links inside the folder are followed."""
    joined = os.path.normpath(os.path.join(img_folder, file_name))
    inside = os.path.normpath(img_folder)
    if not allow_outside and (os.path.isabs(file_name) or not joined.startswith(inside.rstrip(os.sep) + os.sep)):
        raise DataError(f"file_name {file_name!r} leads outside the image folder {img_folder}; only paths "
                         f"inside it are read (data.allow_outside_paths=true allows others)")
    return Path(joined)


def check_image_files(img_folder: Path, ann_file: Path, infos: list[dict], report: ValidationReport,
                      allow_outside: bool = False) -> frozenset[int]:
    """`inspect_image` on every image (json entries `infos`: id, file_name, width, height; a
    split of at most FULL_DECODE_PIXELS pixels is decoded fully); raises one error listing the
    bad files (FileNotFoundError if all are missing, else DataError). Returns the ids of the
    images to EXIF-rotate on load; conversions are counted in `report`."""
    if not img_folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {img_folder} (annotations: {ann_file})")
    decode = sum(info["width"] * info["height"] for info in infos) <= FULL_DECODE_PIXELS
    bad: list[tuple[str, str]] = []
    rotate = set()
    for info in infos:
        try:
            path = image_path(img_folder, info["file_name"], allow_outside)
        except DataError:
            bad.append((info["file_name"], "outside the image folder (data.allow_outside_paths=true allows it)"))
            continue
        check = inspect_image(path, info["width"], info["height"], decode=decode)
        if check.problem is not None:
            bad.append((info["file_name"], check.problem))
            continue
        if check.rotate:
            rotate.add(info["id"])
        if check.note:
            report.images[check.note] += 1
    if bad:
        raise _bad_files_error(bad, len(infos), img_folder, ann_file)
    return frozenset(rotate)


def _bad_files_error(bad: list[tuple[str, str]], n_images: int, img_folder: Path, ann_file: Path) -> Exception:
    if all(problem == "missing" for _, problem in bad):
        shown = ", ".join(name for name, _ in bad[:_SHOWN]) + (", ..." if len(bad) > _SHOWN else "")
        return FileNotFoundError(f"{len(bad)} of {n_images} image files listed in {ann_file} "
                                 f"are missing from {img_folder}: {shown}")
    return DataError(f"{len(bad)} of {n_images} images listed in {ann_file} cannot be used "
                     f"(folder {img_folder}): {_shown([f'{name}: {problem}' for name, problem in bad])}")
