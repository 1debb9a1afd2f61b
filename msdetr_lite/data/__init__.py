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

from .coco import PROJECT_ROOT, CocoDetection, coco_from_dict
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, denormalize, make_transforms
from .validation import DataError, ValidationReport, inspect_image, load_coco_json, to_rgb

__all__ = [
    "CocoDetection", "build_dataset", "collate", "resolve_root", "split_paths", "base_dataset",
    "make_transforms", "build_transforms", "denormalize", "load_coco_json", "coco_from_dict",
    "IMAGENET_MEAN", "IMAGENET_STD", "build_train_loader", "build_val_loader", "DataError", "ValidationReport",
    "to_rgb", "inspect_image",
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
    train_scales, val_size, max_size, random_crop, max_images). transforms="default" builds
    the split's pipeline from the config; pass None or another callable to override."""
    img_folder, ann_file = split_paths(data_cfg, split)
    if isinstance(transforms, str) and transforms == "default":
        transforms = build_transforms(data_cfg, split)
    return CocoDetection(img_folder, ann_file, transforms=transforms, max_images=data_cfg.max_images)


def base_dataset(dataset: Dataset) -> Dataset:
    """The underlying dataset of (possibly nested) `torch.utils.data.Subset`s."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Batch (image [3, H_i, W_i], target) pairs.

    Returns images float [B, 3, H, W] (zero-padded at the bottom/right to the largest H and W;
    zero is the mean colour after normalisation), masks bool [B, H, W] (True on padding) and the
    list of targets unchanged (boxes stay relative to each image's unpadded size).
    """
    if len(batch) == 0:
        raise ValueError("collate got an empty batch")
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    if any(im.ndim != 3 or im.shape[0] != 3 for im in images):
        raise ValueError(f"expected images [3, H, W], got {[tuple(im.shape) for im in images]}")
    H = max(im.shape[1] for im in images)
    W = max(im.shape[2] for im in images)
    out = images[0].new_zeros((len(images), 3, H, W))
    masks = torch.ones((len(images), H, W), dtype=torch.bool)
    for i, im in enumerate(images):
        h, w = im.shape[1:]
        out[i, :, :h, :w] = im
        masks[i, :h, :w] = False
    return out, masks, targets


# after `collate`: the loaders batch with it
from .loaders import build_train_loader, build_val_loader  # noqa: E402
