"""DETR-style augmentation with torchvision.transforms.v2 and tv_tensors.

A sample is `(image, target)` with `image` a `tv_tensors.Image` (uint8 [3, H, W]) and
`target = {"boxes": tv_tensors.BoundingBoxes [G, 4] XYXY pixels, "labels": int64 [G]}`;
v2 moves the boxes with the image (flip, resize, crop) and `SanitizeBoundingBoxes` drops the
boxes a crop cut away, together with their labels.

train:  flip(0.5) -> resize shorter side to a random scale (longer side <= max_size)
        [or, with random_crop, half the time: random crop of 60-100% per side, then resize]
        -> float [0, 1] -> ImageNet normalisation
val:    resize shorter side to val_size (longer side <= max_size) -> float -> normalisation
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_MIN = 0.6                 # random_crop keeps 60-100% of each side (DETR's RandomSizeCrop, in fractions)


class RandomSizeCrop(v2.Transform):
    """Crop a random window whose height and width are each a random fraction in
    [min_frac, max_frac] of the input's, at a random position (DETR's RandomSizeCrop, but in
    fractions so it suits any image size). Boxes are clipped to the window by v2; boxes that end
    up empty must be removed by a following `v2.SanitizeBoundingBoxes`."""

    def __init__(self, min_frac: float = 0.6, max_frac: float = 1.0):
        super().__init__()
        if not 0 < min_frac <= max_frac <= 1:
            raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
        self.min_frac, self.max_frac = min_frac, max_frac

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        fh, fw = (torch.empty(2).uniform_(self.min_frac, self.max_frac)).tolist()
        ch, cw = max(1, round(h * fh)), max(1, round(w * fw))
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt, params: dict):
        return F.crop(inpt, **params)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_size(v) -> bool:
    return _is_int(v) and v > 0


def _check_sizes(split: str, train_scales, val_size, max_size) -> tuple[tuple[int, ...], int, Optional[int]]:
    """Validated (train_scales, val_size, max_size); max_size None or <= 0 means no cap. Bad values
    raise ValueError here, naming the DataConfig field, instead of on the first image deep in
    torchvision."""
    if isinstance(train_scales, int):
        train_scales = (train_scales,)
    train_scales = tuple(train_scales)
    if len(train_scales) == 0:
        raise ValueError("train_scales (data.train_scales) is empty")
    if not all(_is_size(s) for s in train_scales):
        raise ValueError(f"train_scales (data.train_scales) must be positive integers (shorter side "
                         f"in pixels), got {list(train_scales)}")
    if not _is_size(val_size):
        raise ValueError(f"val_size (data.val_size) must be a positive integer, got {val_size!r}")
    if max_size is not None and not _is_int(max_size):
        raise ValueError(f"max_size (data.max_size) must be an integer (<= 0: no cap), got {max_size!r}")
    max_size = int(max_size) if max_size is not None and max_size > 0 else None
    if split == "val" and max_size is not None and max_size <= val_size:
        # torchvision's Resize refuses it; a capped evaluation size would be a silent surprise too
        raise ValueError(f"max_size (data.max_size) = {max_size} must be larger than val_size "
                         f"(data.val_size) = {val_size}")
    return tuple(int(s) for s in train_scales), int(val_size), max_size


def make_transforms(split: str, train_scales: Sequence[int] = (800,), val_size: int = 800,
                    max_size: int = 1333, random_crop: bool = False, normalize: bool = True) -> v2.Compose:
    """The v2 pipeline for `split` ("train" or "val"); see the module docstring.

    Input: (PIL image or tv_tensors.Image, {"boxes": BoundingBoxes XYXY, "labels": [G]}).
    Output: (tv_tensors.Image float [3, H', W'], the same dict with boxes in the new frame).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    train_scales, val_size, max_size = _check_sizes(split, train_scales, val_size, max_size)

    steps: list = [v2.ToImage()]
    if split == "train":
        resize = v2.RandomShortestSize(min_size=list(train_scales), max_size=max_size)
        steps.append(v2.RandomHorizontalFlip(p=0.5))
        if random_crop:
            # Half the samples are cropped first: objects get larger and partially cut, as in DETR.
            steps.append(v2.RandomChoice([resize, v2.Compose([RandomSizeCrop(CROP_MIN, 1.0), resize])]))
        else:
            steps.append(resize)
        # After a crop some boxes are empty (clipped to zero width); drop them with their labels.
        steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    else:
        steps.append(v2.Resize(val_size, max_size=max_size))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        steps.append(v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    return v2.Compose(steps)


def build_transforms(data_cfg, split: str) -> v2.Compose:
    """The pipeline for `split` from a `DataConfig` (train_scales, val_size, max_size, random_crop)."""
    return make_transforms(split, train_scales=tuple(data_cfg.train_scales), val_size=data_cfg.val_size,
                           max_size=data_cfg.max_size, random_crop=data_cfg.random_crop)


def check_resizable(dataset, data_cfg, split: str) -> None:
    """DataError listing the images of `dataset` (json width x height) whose shorter side the
    split's resize would make 0 px: the longer side is capped at data.max_size, so an image more
    than max_size times longer than wide (or wide than long; after a crop to CROP_MIN of its
    shorter side with data.random_crop) cannot be resized (torchvision: int(short * max_size / long))."""
    from .validation import DataError
    max_size = data_cfg.max_size
    if not max_size or max_size <= 0:
        return
    crop = CROP_MIN if split == "train" and data_cfg.random_crop else 1.0
    bad = []
    for i in range(len(dataset)):
        info = dataset.image_info(i)
        short, long = sorted((info["width"], info["height"]))
        if max(1, round(short * crop)) * max_size < long:
            bad.append(f"{info['file_name']} ({info['width']}x{info['height']})")
    if bad:
        raise DataError(f"{len(bad)} image(s) of {dataset.ann_file} are too elongated for data.max_size={max_size}"
                        f"{' with data.random_crop' if crop < 1 else ''}: their shorter side would be resized to "
                        f"0 px: {', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}; raise data.max_size or "
                        f"leave them out of the annotation file")


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: [..., 3, H, W] -> values in [0, 1] (for drawing).
    Padding (zeros after normalisation) comes out as the mean colour, not black."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(3, 1, 1)
    return (images * std + mean).clamp(0, 1)


def as_bounding_boxes(boxes_xyxy: torch.Tensor, height: int, width: int) -> tv_tensors.BoundingBoxes:
    """Wrap [G, 4] XYXY pixel boxes for v2 transforms."""
    return tv_tensors.BoundingBoxes(boxes_xyxy, format="XYXY", canvas_size=(height, width))
