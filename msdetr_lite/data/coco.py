"""COCO-format detection dataset (pycocotools), targets in the project's format.

    ds = CocoDetection("data/shapes/val", "data/shapes/annotations/instances_val.json",
                       transforms=make_transforms("val", val_size=128))
    image, target = ds[0]     # image float [3, H, W]; target as in docs/design.md
    ds.report.summary()       # "val: dropped 3 boxes (2 zero-size, 1 NaN), clipped 5"
    check_same_categories(train.categories, "train", ds.categories, "val")   # else DataError naming both

Target of one image (docs/design.md, "Batch in"):
    labels    int64 [G]      contiguous 0..C-1 (category ids sorted ascending)
    boxes     float32 [G, 4] normalised (cx, cy, w, h) relative to the transformed, unpadded image
    image_id  int            the COCO image id (for evaluation)
    orig_size int64 [2]      (h, w) of the file (= the json's height, width)
    size      int64 [2]      (h, w) after the transforms, before padding

The json, the boxes and the image files are checked once, when the dataset is built, by the
rules of `msdetr_lite.data.validation` (bad files raise `DataError` naming the file); training and
evaluation see the same cleaned annotations. What was changed is counted in `dataset.report` and
announced in one warning line. Images without annotations stay in the dataset as negatives.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as F

from .validation import DataError, check_image_files, clean_annotations, image_path, load_coco_json, to_rgb

# the repository root (msdetr_lite/data/coco.py -> ../../..): relative data roots such as the
# default "data/shapes" are also looked up here, so notebooks can run from any folder
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools COCO index over an already-loaded dict (its prints are swallowed)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _listed(cats: list[dict]) -> str:
    shown = ", ".join(f"{c['id']} {c['name']}" for c in cats[:10])
    return f"[{shown}{f', ... ({len(cats)} in all)' if len(cats) > 10 else ''}]"


def check_same_categories(a: list[dict], a_name: str, b: list[dict], b_name: str) -> None:
    """DataError unless the category lists `a` and `b` ([{"id", "name"}] in label order, e.g.
    `dataset.categories`) are the same ids with the same names in the same order: labels are
    matched by position, so any difference would score one class as another."""
    pairs = [(c["id"], str(c["name"])) for c in a], [(c["id"], str(c["name"])) for c in b]
    if pairs[0] == pairs[1]:
        return
    at = next((i for i, (x, y) in enumerate(zip(*pairs)) if x != y), min(map(len, pairs)))
    raise DataError(f"the categories of {b_name} differ from those of {a_name} (labels are matched by "
                     f"position: the same ids, names and order are needed; first difference at label {at}): "
                     f"{a_name} lists {_listed(a)}, {b_name} lists {_listed(b)}")


def _split_name(ann_file: Path) -> str:
    """"instances_val2017.json" -> "val2017" (the name in the report line)."""
    stem = ann_file.stem
    return stem[len("instances_"):] if stem.startswith("instances_") and stem != "instances_" else stem


# --- the dataset ----------------------------------------------------------------------------------
def _shown(path) -> str:
    """A path as a repr shows it: relative to the working directory when it is near it (a notebook's
    printout must not carry the absolute path of the checkout it ran in), else as it is."""
    try:
        rel = os.path.relpath(path)
    except ValueError:                           # another drive (Windows)
        return str(path)
    return rel if rel.count(".." + os.sep) + (rel == "..") <= 2 else str(path)


class CocoDetection(Dataset):
    """Images of `img_folder` annotated by the COCO json `ann_file`, checked when built (see the
    module docstring).

    transforms: a callable (image, {"boxes": BoundingBoxes XYXY, "labels": [G]}) -> same, e.g.
        `make_transforms(...)`; None gives the image as float [0, 1] without normalisation.
    max_images: > 0 keeps only the first max_images images (sorted by id); only they are checked
        and only they are in `coco`.
    check_files: run `inspect_image` on every image at construction (errors then come on load,
        still naming the file; EXIF orientation is then never applied).
    allow_outside_paths: read file_names that are absolute or lead outside img_folder (otherwise
        a DataError, see `validation.image_path`).

    Attributes: coco (pycocotools COCO over the cleaned annotations of the dataset's images: the
    evaluation ground truth), ids (image ids, dataset order), num_classes, class_names,
    label_to_cat_id (list, label -> category id), cat_id_to_label (dict), report
    (ValidationReport).
    """

    def __init__(self, img_folder: str | Path, ann_file: str | Path, transforms: Optional[Callable] = None,
                 max_images: int = 0, check_files: bool = True, allow_outside_paths: bool = False):
        self.img_folder = Path(img_folder)
        self.allow_outside_paths = allow_outside_paths
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        data = load_coco_json(self.ann_file)

        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.label_to_cat_id: list[int] = [c["id"] for c in cats]
        self.cat_id_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.label_to_cat_id)}
        self.class_names: list[str] = [str(c["name"]) for c in cats]

        self.ids: list[int] = sorted(im["id"] for im in data["images"])
        if not self.ids:
            raise DataError(f"annotation file {self.ann_file} lists no images")
        if max_images and max_images > 0:
            self.ids = self.ids[:max_images]
        cleaned, self.report = clean_annotations(data, self.ids, _split_name(self.ann_file))
        self.coco = coco_from_dict(cleaned)
        infos = [self.coco.imgs[i] for i in self.ids]
        # the ids of the images to EXIF-rotate on load
        self._rotate = (check_image_files(self.img_folder, self.ann_file, infos, self.report, allow_outside_paths)
                        if check_files else frozenset())
        self._boxes, self._labels = self._training_targets()
        if self.report.changed:
            warnings.warn(self.report.summary(), stacklevel=2)

    @property
    def num_classes(self) -> int:
        return len(self.label_to_cat_id)

    @property
    def categories(self) -> list[dict]:
        """[{"id", "name"}] in label order (what `check_same_categories` compares)."""
        return [{"id": i, "name": n} for i, n in zip(self.label_to_cat_id, self.class_names)]

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"CocoDetection({len(self)} images, {self.num_classes} classes, "
                f"img_folder={_shown(self.img_folder)!r}, ann_file={_shown(self.ann_file)!r})")

    def _training_targets(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per image, from the cleaned `coco`: XYXY pixel boxes float32 [G, 4], labels int64 [G]
        (crowd regions left out)."""
        all_boxes, all_labels = [], []
        for img_id in self.ids:
            anns = [a for a in self.coco.imgToAnns.get(img_id, []) if not a["iscrowd"]]
            xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            all_boxes.append(xyxy.astype(np.float32))
            all_labels.append(np.asarray([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64))
        return all_boxes, all_labels

    # --- access ---------------------------------------------------------------------------------
    def image_info(self, index: int) -> dict:
        """The json's entry for image `index` (id, file_name, width, height, ...)."""
        return self.coco.imgs[self.ids[index]]

    def load_image(self, index: int) -> Image.Image:
        """The file of image `index` as an RGB PIL image of the json's width x height: EXIF-rotated
        where the build decided so, converted by `to_rgb`. Errors name the file."""
        info = self.image_info(index)
        path = image_path(self.img_folder, info["file_name"], self.allow_outside_paths)
        try:
            with Image.open(path) as im:
                im.load()
                img = to_rgb(ImageOps.exif_transpose(im) if info["id"] in self._rotate else im)
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {path}") from None
        except Exception as e:          # PIL raises OSError, SyntaxError, ValueError, ... for bad files
            raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
        if img.size != (info["width"], info["height"]):
            raise DataError(f"image {path} is {img.size[0]}x{img.size[1]} (w x h) but {self.ann_file} "
                             f"says {info['width']}x{info['height']}; the boxes would not fit it")
        return img

    def raw_target(self, index: int) -> dict:
        """Training boxes of image `index` before transforms: {"boxes": float [G, 4] XYXY pixels of
        the file (cleaned, no crowd), "labels": int64 [G]}."""
        return {"boxes": torch.from_numpy(self._boxes[index].copy()),
                "labels": torch.from_numpy(self._labels[index].copy())}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        img = self.load_image(index)
        w0, h0 = img.size
        raw = self.raw_target(index)
        target = {"boxes": tv_tensors.BoundingBoxes(raw["boxes"], format="XYXY", canvas_size=(h0, w0)),
                  "labels": raw["labels"]}
        if self.transforms is not None:
            image, target = self.transforms(img, target)
        else:
            image = F.to_dtype(F.to_image(img), torch.float32, scale=True)
        image = image.as_subclass(torch.Tensor)
        h, w = image.shape[-2:]
        boxes = box_convert(target["boxes"].as_subclass(torch.Tensor).float(), "xyxy", "cxcywh")
        boxes = boxes / torch.tensor([w, h, w, h], dtype=torch.float32)
        return image, {
            "labels": target["labels"].to(torch.int64),
            "boxes": boxes.reshape(-1, 4),
            "image_id": int(self.ids[index]),
            "orig_size": torch.tensor([h0, w0], dtype=torch.int64),
            "size": torch.tensor([h, w], dtype=torch.int64),
        }
