"""COCO-format detection dataset (pycocotools), targets in the project's format.

    ds = CocoDetection("data/shapes/val", "data/shapes/annotations/instances_val.json",
                       transforms=make_transforms("val", val_size=128))
    image, target = ds[0]     # image float [3, H, W]; target as in docs/design.md

Target of one image (docs/design.md, "Batch in"):
    labels    int64 [G]      contiguous 0..C-1 (category ids sorted ascending)
    boxes     float32 [G, 4] normalised (cx, cy, w, h) relative to the transformed, unpadded image
    image_id  int            the COCO image id (for evaluation)
    orig_size int64 [2]      (h, w) of the file
    size      int64 [2]      (h, w) after the transforms, before padding

Bad data fails at construction, with the file and the field named: missing / corrupt json,
missing required fields, annotations pointing at unknown images or categories, missing image
files (the first few are listed). Boxes reaching outside the image are clipped; boxes that are
empty after clipping are dropped, with one warning that counts them. Crowd boxes (iscrowd=1)
never enter the training targets (COCOeval still sees them through `dataset.coco`, where they
mark regions in which detections are neither rewarded nor punished). Images without
annotations stay in the dataset as negatives.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as F

# the repository root (msdetr_lite/data/coco.py -> ../../..): relative data roots such as the
# default "data/shapes" are also looked up here, so notebooks can run from any folder
PROJECT_ROOT = Path(__file__).resolve().parents[2]

_IMAGE_FIELDS = ("id", "file_name", "width", "height")
_ANN_FIELDS = ("id", "image_id", "category_id", "bbox")


def load_coco_json(ann_file: str | Path) -> dict:
    """Read and check a COCO instances json; fills the optional `area` (= w * h of the box) and
    `iscrowd` (= 0) fields COCOeval needs. Raises FileNotFoundError / ValueError naming the file."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"annotation file {ann_file} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"annotation file {ann_file}: expected a JSON object with 'images', "
                         f"'annotations' and 'categories', got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"annotation file {ann_file}: missing required field(s) "
                         f"{', '.join(repr(m) for m in missing)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise ValueError(f"annotation file {ann_file}: {key!r} must be a list")

    def check_fields(key: str, fields: tuple) -> None:
        for i, item in enumerate(data[key]):
            if not isinstance(item, dict):
                raise ValueError(f"annotation file {ann_file}: {key}[{i}] is not an object")
            lacking = [f for f in fields if f not in item]
            if lacking:
                raise ValueError(f"annotation file {ann_file}: {key}[{i}] lacks required field(s) "
                                 f"{', '.join(repr(f) for f in lacking)}")

    check_fields("images", _IMAGE_FIELDS)
    check_fields("annotations", _ANN_FIELDS)
    check_fields("categories", ("id", "name"))
    if not data["categories"]:
        raise ValueError(f"annotation file {ann_file}: 'categories' is empty")

    img_ids = [im["id"] for im in data["images"]]
    if len(set(img_ids)) != len(img_ids):
        raise ValueError(f"annotation file {ann_file}: duplicate image ids in 'images'")
    cat_ids = {c["id"] for c in data["categories"]}
    if len(cat_ids) != len(data["categories"]):
        raise ValueError(f"annotation file {ann_file}: duplicate category ids in 'categories'")
    img_id_set = set(img_ids)
    for i, ann in enumerate(data["annotations"]):
        bbox = ann["bbox"]
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise ValueError(f"annotation file {ann_file}: annotations[{i}] 'bbox' must be "
                             f"[x, y, w, h] numbers, got {bbox!r}")
        if ann["image_id"] not in img_id_set:
            raise ValueError(f"annotation file {ann_file}: annotations[{i}] has image_id "
                             f"{ann['image_id']!r} that is not in 'images'")
        if ann["category_id"] not in cat_ids:
            raise ValueError(f"annotation file {ann_file}: annotations[{i}] has category_id "
                             f"{ann['category_id']!r} that is not in 'categories'")
        ann.setdefault("area", float(max(bbox[2], 0) * max(bbox[3], 0)))
        ann.setdefault("iscrowd", 0)
    return data


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools COCO index over an already-loaded dict (its prints are swallowed)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """Images of `img_folder` annotated by the COCO json `ann_file`.

    transforms: a callable (image, {"boxes": BoundingBoxes XYXY, "labels": [G]}) -> same, e.g.
        `make_transforms(...)`; None gives the image as float [0, 1] without normalisation.
    max_images: > 0 keeps only the first max_images images (sorted by id).
    check_files: verify at construction that every image file exists.

    Attributes: coco (pycocotools COCO), ids (image ids, dataset order), num_classes,
    class_names, label_to_cat_id (list, label -> category id), cat_id_to_label (dict).
    """

    def __init__(self, img_folder: str | Path, ann_file: str | Path, transforms: Optional[Callable] = None,
                 max_images: int = 0, check_files: bool = True):
        self.img_folder = Path(img_folder)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.coco = coco_from_dict(load_coco_json(self.ann_file))

        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.label_to_cat_id: list[int] = [c["id"] for c in cats]
        self.cat_id_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.label_to_cat_id)}
        self.class_names: list[str] = [str(c["name"]) for c in cats]

        self.ids: list[int] = sorted(self.coco.imgs.keys())
        if max_images and max_images > 0:
            self.ids = self.ids[:max_images]
        if check_files:
            self._check_files()
        self._boxes, self._labels = self._prepare_targets()

    @property
    def num_classes(self) -> int:
        return len(self.label_to_cat_id)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"CocoDetection({len(self)} images, {self.num_classes} classes, "
                f"img_folder={str(self.img_folder)!r}, ann_file={str(self.ann_file)!r})")

    # --- construction-time checks ---------------------------------------------------------------
    def _check_files(self) -> None:
        if not self.img_folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.img_folder} "
                                    f"(annotations: {self.ann_file})")
        missing = [self.coco.imgs[i]["file_name"] for i in self.ids
                   if not (self.img_folder / self.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise FileNotFoundError(f"{len(missing)} of {len(self.ids)} image files listed in "
                                    f"{self.ann_file} are missing from {self.img_folder}: {shown}")

    def _prepare_targets(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per image: XYXY pixel boxes float32 [G, 4] clipped to the image, labels int64 [G]."""
        all_boxes, all_labels = [], []
        n_clipped = n_dropped = 0
        for img_id in self.ids:
            info = self.coco.imgs[img_id]
            w, h = float(info["width"]), float(info["height"])
            anns = [a for a in self.coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
            boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            labels = np.asarray([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
            xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
            clipped = xyxy.copy()
            clipped[:, 0::2] = clipped[:, 0::2].clip(0, w)
            clipped[:, 1::2] = clipped[:, 1::2].clip(0, h)
            keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
            n_clipped += int(((clipped != xyxy).any(axis=1) & keep).sum())
            n_dropped += int((~keep).sum())
            all_boxes.append(clipped[keep].astype(np.float32))
            all_labels.append(labels[keep])
        if n_clipped or n_dropped:
            warnings.warn(f"{self.ann_file}: {n_clipped} box(es) reaching outside their image were "
                          f"clipped and {n_dropped} box(es) with no area after clipping were dropped",
                          stacklevel=3)
        return all_boxes, all_labels

    # --- access ---------------------------------------------------------------------------------
    def image_info(self, index: int) -> dict:
        """The json's entry for image `index` (id, file_name, width, height, ...)."""
        return self.coco.imgs[self.ids[index]]

    def load_image(self, index: int) -> Image.Image:
        """The file of image `index` as an RGB PIL image (errors name the file)."""
        info = self.image_info(index)
        path = self.img_folder / info["file_name"]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {path}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise OSError(f"cannot read image {path}: {e}") from e
        if img.size != (info["width"], info["height"]):
            raise ValueError(f"image {path} is {img.size[0]}x{img.size[1]} (w x h) but {self.ann_file} "
                             f"says {info['width']}x{info['height']}; the boxes would not fit it")
        return img

    def raw_target(self, index: int) -> dict:
        """Training boxes of image `index` before transforms: {"boxes": float [G, 4] XYXY pixels of
        the file (clipped, no crowd), "labels": int64 [G]}."""
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
