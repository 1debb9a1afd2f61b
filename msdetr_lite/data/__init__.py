"""Data: COCO-format datasets, DETR-style transforms, batching, the synthetic shapes set.

    from msdetr_lite.data import build_dataset, collate
    train = build_dataset(cfg.data, "train")          # root/train_split + annotations json
    loader = DataLoader(train, batch_size=8, shuffle=True, collate_fn=collate)
    images, masks, targets = next(iter(loader))       # [B, 3, H, W], [B, H, W] (True = pad), list[dict]
    val_loader = build_val_loader(cfg, build_dataset(cfg.data, "val"), batch_size=8)   # in order
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from .coco import PROJECT_ROOT, CocoDetection, check_same_categories, coco_from_dict
from .loaders import build_train_loader, build_val_loader, collate
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, check_resizable, denormalize, make_transforms
from .validation import DataError, ValidationReport, inspect_image, load_coco_json, to_rgb

__all__ = [
    "CocoDetection", "build_dataset", "collate", "resolve_root", "split_paths", "base_dataset",
    "make_transforms", "build_transforms", "denormalize", "load_coco_json", "coco_from_dict",
    "IMAGENET_MEAN", "IMAGENET_STD", "build_train_loader", "build_val_loader", "DataError", "ValidationReport",
    "to_rgb", "inspect_image", "check_same_categories",
]

_GENERATE_HINT = ("generate the embedded dataset with `python -m msdetr_lite data shapes --out data/shapes` "
                  "(or `python -m msdetr_lite.data.synthetic --out data/shapes`), or point data.root at a "
                  "COCO-format folder (see data/README.md)")


def resolve_root(root: str | Path) -> Path:
    """`root` as given if it exists (or is absolute); a relative root that is missing from the
    working directory is also looked up under the repository root (so "data/shapes" works from
    notebooks/ too)."""
    p = Path(root).expanduser()
    if p.exists() or p.is_absolute():
        return p
    alt = PROJECT_ROOT / p
    return alt if alt.exists() else p


def split_paths(data_cfg, split: str) -> tuple[Path, Path]:
    """(image folder, annotation json) of `split` ("train" / "val") in the COCO 2017 layout:
    root/{split_name}/ and root/annotations/instances_{split_name}.json."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    name = data_cfg.train_split if split == "train" else data_cfg.val_split
    root = resolve_root(data_cfg.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {data_cfg.root!r} not found; {_GENERATE_HINT}")
    return root / name, root / "annotations" / f"instances_{name}.json"


def build_dataset(data_cfg, split: str, transforms="default") -> CocoDetection:
    """The dataset of `split` described by a `DataConfig` (root, train_split / val_split,
    train_scales, val_size, max_size, random_crop, max_images, allow_outside_paths).
    transforms="default" builds the split's pipeline from the config (and checks that every
    image can be resized by it); pass None or another callable to override."""
    img_folder, ann_file = split_paths(data_cfg, split)
    default = isinstance(transforms, str) and transforms == "default"
    if default:
        transforms = build_transforms(data_cfg, split)
    ds = CocoDetection(img_folder, ann_file, transforms=transforms, max_images=data_cfg.max_images,
                       allow_outside_paths=getattr(data_cfg, "allow_outside_paths", False))
    if default:
        check_resizable(ds, data_cfg, split)
    return ds


def base_dataset(dataset: Dataset) -> Dataset:
    """The underlying dataset of (possibly nested) `torch.utils.data.Subset`s."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset

