"""msdetr_lite.data: synthetic generator, CocoDetection, transforms, collate, bad-data errors."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from msdetr_lite.config import DataConfig, preset
from msdetr_lite.data import (CocoDetection, base_dataset, build_dataset, collate, denormalize,
                              make_transforms)
from msdetr_lite.data import synthetic


# --- helpers -----------------------------------------------------------------------------------
def write_coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict],
               split: str = "train", draw=None) -> tuple[Path, Path]:
    """Write a COCO-layout dataset: PNGs of the given sizes (grey, or `draw(img, info)`)."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for info in images:
        img = Image.new("RGB", (info["width"], info["height"]), (128, 128, 128))
        if draw is not None:
            draw(img, info)
        img.save(root / split / info["file_name"])
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root / split, ann_file


CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "bird"}]


def handmade(root: Path):
    images = [{"id": 10, "file_name": "a.png", "width": 100, "height": 80},
              {"id": 20, "file_name": "b.png", "width": 60, "height": 60},
              {"id": 30, "file_name": "c.png", "width": 50, "height": 40}]      # no annotations
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 10, 20, 30]},
        {"id": 2, "image_id": 10, "category_id": 12, "bbox": [90, 70, 20, 20]},  # clipped to 10 x 10
        {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 100, 80], "iscrowd": 1},
        {"id": 4, "image_id": 20, "category_id": 3, "bbox": [70, 5, 10, 10]},    # fully outside: dropped
        {"id": 5, "image_id": 20, "category_id": 12, "bbox": [5, 5, 0, 10]},     # zero width: dropped
        {"id": 6, "image_id": 20, "category_id": 3, "bbox": [5, 5, 30, 20]},
    ]
    return write_coco(root, images, anns, CATS)


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    synthetic.generate(out, n_train=12, n_val=4, image_size=128, seed=0)
    return out


# --- synthetic generator -----------------------------------------------------------------------
def test_generate_is_deterministic(tmp_path, shapes):
    synthetic.generate(tmp_path / "a", n_train=12, n_val=4, image_size=128, seed=0)
    assert tree_hash(tmp_path / "a") == tree_hash(shapes)
    synthetic.generate(tmp_path / "b", n_train=12, n_val=4, image_size=128, seed=1)
    assert tree_hash(tmp_path / "b") != tree_hash(shapes)


def test_generate_layout_and_annotations(shapes):
    for split in ("train", "val"):
        data = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
        assert [c["name"] for c in data["categories"]] == list(synthetic.CLASS_NAMES)
        assert len(data["images"]) == (12 if split == "train" else 4)
        counts = {im["id"]: 0 for im in data["images"]}
        for a in data["annotations"]:
            counts[a["image_id"]] += 1
            im = next(i for i in data["images"] if i["id"] == a["image_id"])
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
            assert min(w, h) >= 8 and max(w, h) >= 11, a       # clearly visible objects
        assert all(2 <= c <= 10 for c in counts.values()), counts
        for im in data["images"]:
            with Image.open(shapes / split / im["file_name"]) as f:
                assert f.size == (im["width"], im["height"]) and f.mode == "P"
            assert im["height"] == 128 and 112 <= im["width"] <= 144


def test_generate_removes_stale_images_and_cli(tmp_path):
    assert synthetic.main(["--out", str(tmp_path), "--n-train", "5", "--n-val", "2"]) == 0
    synthetic.main(["--out", str(tmp_path), "--n-train", "3", "--n-val", "2"])
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["000001.png", "000002.png", "000003.png"]


# --- CocoDetection on the synthetic set ----------------------------------------------------------
def test_val_item_format(shapes):
    ds = CocoDetection(shapes / "val", shapes / "annotations" / "instances_val.json",
                       transforms=make_transforms("val", val_size=96, max_size=200))
    assert ds.num_classes == 4 and ds.class_names == list(synthetic.CLASS_NAMES)
    assert ds.label_to_cat_id == [1, 2, 3, 4]
    image, t = ds[0]
    assert image.dtype == torch.float32 and image.shape[0] == 3 and type(image) is torch.Tensor
    assert min(image.shape[1:]) == 96
    assert t["labels"].dtype == torch.int64 and t["labels"].ndim == 1
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (len(t["labels"]), 4)
    assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
    assert t["image_id"] == ds.ids[0] and isinstance(t["image_id"], int)
    info = ds.image_info(0)
    assert t["orig_size"].tolist() == [info["height"], info["width"]]
    assert t["size"].tolist() == list(image.shape[1:])
    # normalised boxes are the file's boxes divided by the file's size (resizing is uniform)
    raw = ds.raw_target(0)["boxes"]
    h0, w0 = t["orig_size"].tolist()
    expect = torch.stack([(raw[:, 0] + raw[:, 2]) / 2 / w0, (raw[:, 1] + raw[:, 3]) / 2 / h0,
                          (raw[:, 2] - raw[:, 0]) / w0, (raw[:, 3] - raw[:, 1]) / h0], 1)
    assert torch.allclose(t["boxes"], expect, atol=1e-5)


def test_train_transforms_with_crop_keep_boxes_valid(shapes):
    ds = CocoDetection(shapes / "train", shapes / "annotations" / "instances_train.json",
                       transforms=make_transforms("train", train_scales=(96, 112), max_size=160, random_crop=True))
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, t = ds[i]
        assert min(image.shape[1:]) in (96, 112) or max(image.shape[1:]) == 160
        assert t["boxes"].shape == (len(t["labels"]), 4)
        assert ((t["boxes"] >= 0) & (t["boxes"] <= 1 + 1e-6)).all()
        assert (t["boxes"][:, 2:] > 0).all()


def test_flip_and_resize_move_boxes_with_pixels(tmp_path):
    """A red box on grey: after any train augmentation the box must still frame red pixels."""
    def draw(img, info):
        img.paste((255, 0, 0), (8, 20, 38, 50))                 # x 8..37, y 20..49
    images = [{"id": 1, "file_name": "r.png", "width": 96, "height": 64}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 20, 30, 30]}]
    folder, ann = write_coco(tmp_path, images, anns, [{"id": 1, "name": "red"}], draw=draw)
    ds = CocoDetection(folder, ann, transforms=make_transforms("train", train_scales=(48, 80), max_size=200))
    seen_flip = set()
    torch.manual_seed(0)
    for _ in range(12):
        image, t = ds[0]
        rgb = denormalize(image)
        H, W = image.shape[1:]
        cx, cy, w, h = (t["boxes"][0] * torch.tensor([W, H, W, H])).tolist()
        inside = rgb[:, int(cy - h / 2 + 2):int(cy + h / 2 - 2), int(cx - w / 2 + 2):int(cx + w / 2 - 2)]
        assert inside[0].mean() > 0.9 and inside[1].mean() < 0.1
        seen_flip.add(cx > W / 2)
    assert seen_flip == {True, False}                            # both flipped and not


def test_collate_pads_and_masks():
    a = (torch.ones(3, 4, 6), {"image_id": 1})
    b = (torch.full((3, 5, 3), 2.0), {"image_id": 2})
    images, masks, targets = collate([a, b])
    assert images.shape == (2, 3, 5, 6) and masks.shape == (2, 5, 6) and masks.dtype == torch.bool
    assert not masks[0, :4, :6].any() and masks[0, 4].all()
    assert not masks[1, :5, :3].any() and masks[1, :, 3:].all()
    assert (images[0, :, 4] == 0).all() and (images[1, :, :, 3:] == 0).all()
    assert (images[1, :, :5, :3] == 2).all()
    assert [t["image_id"] for t in targets] == [1, 2]


# --- hand-made COCO: ids, crowd, clipping, negatives ------------------------------------------------
def test_handmade_labels_crowd_clipping_negatives(tmp_path):
    folder, ann = handmade(tmp_path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = CocoDetection(folder, ann)
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1, msgs                                  # one summarising warning
    assert "1 box(es)" in msgs[0] and "clipped" in msgs[0] and "2 box(es)" in msgs[0] and "dropped" in msgs[0]
    assert ds.label_to_cat_id == [3, 7, 12] and ds.cat_id_to_label == {3: 0, 7: 1, 12: 2}
    assert ds.class_names == ["cat", "dog", "bird"] and len(ds) == 3

    _, t = ds[0]                                                  # image 10: crowd dropped, one clipped
    assert t["labels"].tolist() == [1, 2]
    assert torch.allclose(t["boxes"], torch.tensor([[20 / 100, 25 / 80, 20 / 100, 30 / 80],
                                                    [95 / 100, 75 / 80, 10 / 100, 10 / 80]]))
    _, t = ds[1]
    assert t["labels"].tolist() == [0]
    _, t = ds[2]                                                  # negative image kept
    assert t["labels"].shape == (0,) and t["boxes"].shape == (0, 4) and t["image_id"] == 30
    # crowd stays in the COCO ground truth for evaluation
    assert any(a["iscrowd"] for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[10])))


def test_negative_image_through_train_transforms(tmp_path):
    folder, ann = handmade(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(folder, ann, transforms=make_transforms("train", train_scales=(32,), random_crop=True))
    image, t = ds[2]
    assert min(image.shape[1:]) == 32 and t["boxes"].shape == (0, 4)


# --- bad data fails early and clearly ----------------------------------------------------------------
def test_missing_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_x.json"):
        CocoDetection(tmp_path, tmp_path / "instances_x.json")


def test_corrupt_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"bad\.json.*not valid JSON.*line 1"):
        CocoDetection(tmp_path, bad)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("annotations"), "'annotations'"),
    (lambda d: d.pop("images"), "'images'"),
    (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\].*'bbox'"),
    (lambda d: d["images"][1].pop("file_name"), r"images\[1\].*'file_name'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\] 'bbox'"),
    (lambda d: d["annotations"][0].update(category_id=99), "category_id 99"),
    (lambda d: d["annotations"][0].update(image_id=99), "image_id 99"),
])
def test_missing_or_bad_fields_are_named(tmp_path, mutate, field):
    folder, ann = handmade(tmp_path)
    data = json.loads(ann.read_text())
    mutate(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=field) as e:
        CocoDetection(folder, ann)
    assert str(ann) in str(e.value)


def test_missing_image_files_listed(tmp_path):
    folder, ann = handmade(tmp_path)
    (folder / "a.png").unlink()
    (folder / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 3 image files.*a\.png, c\.png"):
        CocoDetection(folder, ann)


def test_corrupt_image_names_file(tmp_path):
    folder, ann = handmade(tmp_path)
    (folder / "b.png").write_bytes(b"not a png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(folder, ann)
    with pytest.raises(OSError, match="b.png"):
        ds[1]


# --- build_dataset / config -------------------------------------------------------------------------
def test_build_dataset_from_config(shapes):
    cfg = preset("tiny").data
    cfg.root = str(shapes)
    cfg.max_images = 5
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 5 and len(val) == 4
    assert train.ann_file.name == "instances_train.json"
    image, t = val[0]
    assert min(image.shape[1:]) == cfg.val_size or max(image.shape[1:]) == cfg.max_size
    images, masks, targets = collate([train[i] for i in range(3)])
    assert images.shape[0] == 3 and len(targets) == 3
    assert base_dataset(Subset(Subset(train, [0, 1]), [0])) is train


def test_build_dataset_missing_root_hint(tmp_path):
    cfg = DataConfig(root=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="data shapes"):
        build_dataset(cfg, "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset(cfg, "test")


def test_coco2017_layout_names(tmp_path):
    folder, ann = handmade(tmp_path)
    folder.rename(tmp_path / "train2017")
    ann.rename(tmp_path / "annotations" / "instances_train2017.json")
    cfg = DataConfig(root=str(tmp_path), train_split="train2017", val_split="val2017")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = build_dataset(cfg, "train", transforms=None)
    assert len(ds) == 3 and ds.img_folder.name == "train2017"
    assert np.isclose(ds[0][0].max().item(), 128 / 255, atol=1e-6)      # transforms=None: [0, 1] float
