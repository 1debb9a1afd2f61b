"""msdetr_lite.data: synthetic generator, CocoDetection, transforms, collate, bad-data errors."""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch.utils.data import Subset

from msdetr_lite.config import DataConfig, apply_overrides, preset
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
    assert msgs == ["train: dropped 2 boxes (1 outside the image, 1 zero-size), clipped 1"]
    assert ds.report.summary() == msgs[0]
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
    (lambda d: d["annotations"][0].update(bbox=[1, "2", 3, 4]), r"annotations\[0\] 'bbox'"),
    (lambda d: d["annotations"][0].update(bbox=[1, True, 3, 4]), r"annotations\[0\] 'bbox'"),
    (lambda d: d["annotations"][1].update(iscrowd=2), r"annotations\[1\] 'iscrowd'"),
    (lambda d: d["annotations"][1].update(id="a1"), r"annotations\[1\] 'id'"),
    (lambda d: d["images"][0].update(width=0), r"images\[0\] \(a\.png\) 'width'"),
    (lambda d: d["images"][2].update(height=40.5), r"images\[2\] \(c\.png\) 'height'"),
    (lambda d: d["images"][1].update(id=10), r"duplicate image ids.*\[10\]"),
    (lambda d: d.update(images=[], annotations=[]), "lists no images"),
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


def test_corrupt_image_fails_at_build_naming_the_file(tmp_path):
    folder, ann = handmade(tmp_path)
    (folder / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"1 of 3 images listed in .*instances_train\.json.*b\.png: unreadable"):
        CocoDetection(folder, ann)
    # without the build-time check the error still names the file, when the image is loaded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(folder, ann, check_files=False)
    with pytest.raises(ValueError, match=r"cannot read image .*b\.png"):
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


# --- issue 10: boxes are validated once, the same for training and evaluation ---------------------
def bad_boxes(root: Path):
    """Image 1 (100 x 80) carries every kind of bad box; image 2 (60 x 60) a clean one."""
    images = [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
              {"id": 2, "file_name": "b.png", "width": 60, "height": 60}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30]},              # fine
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [90, -5, 20, 25]},              # clipped
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [float("nan"), 5, 10, 10]},     # NaN
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [5, 5, None, 10]},              # null
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [50, 50, 0, 10]},               # zero width
        {"id": 6, "image_id": 1, "category_id": 3, "bbox": [50, 50, 10, -4]},              # negative
        {"id": 7, "image_id": 1, "category_id": 12, "bbox": [120, 10, 10, 10]},            # outside
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30]},              # repeat
        {"id": 1, "image_id": 1, "category_id": 12, "bbox": [40, 40, 20, 20]},             # shared id
        {"id": 0, "image_id": 2, "category_id": 12, "bbox": [5, 5, 20, 20]},               # id 0
        {"id": 8, "image_id": 1, "category_id": 3, "bbox": [60, 0, 50, 90], "iscrowd": 1},  # crowd, clipped
        {"id": 9, "image_id": 2, "category_id": 3, "bbox": [30, 30, 10, 10], "area": 1e6},  # area > box
    ]
    return write_coco(root, images, anns, CATS)


def test_bad_boxes_are_dropped_clipped_and_counted_in_one_line(tmp_path):
    folder, ann = bad_boxes(tmp_path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = CocoDetection(folder, ann)
    assert [str(w.message) for w in rec] == [
        "train: dropped 6 boxes (2 NaN, 2 zero-size, 1 outside the image, 1 duplicate), clipped 2, "
        "gave 2 annotation(s) a fresh id (shared or 0)"]
    assert ds.report.dropped == {"NaN": 2, "zero-size": 2, "outside the image": 1, "duplicate": 1}
    assert ds.report.num_boxes == 12 and ds.report.clipped == 2 and ds.report.renumbered == 2

    t = ds.raw_target(0)
    assert t["labels"].tolist() == [0, 1, 2]                          # cat, dog (clipped), bird (new id)
    assert t["boxes"].tolist() == [[10, 10, 30, 40], [90, 0, 100, 20], [40, 40, 60, 60]]
    # the COCOeval ground truth holds exactly the training boxes, plus the (clipped) crowd region
    gt = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[1]))
    assert sorted(a["bbox"] for a in gt if not a["iscrowd"]) == sorted(
        [x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in t["boxes"].tolist())
    assert [a["bbox"] for a in gt if a["iscrowd"]] == [[60, 0, 40, 80]]
    ids = [a["id"] for a in ds.coco.dataset["annotations"]]
    assert len(set(ids)) == len(ids) and 0 not in ids and len(ids) == 6
    assert ds.coco.anns[9]["area"] == 100                              # never larger than its box
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] for a in ds.coco.dataset["annotations"] if a["id"] != 9)


def test_max_images_limits_ground_truth_and_report(tmp_path):
    folder, ann = bad_boxes(tmp_path)
    (folder / "a.png").unlink()                                       # not in the first image: unchecked
    data = json.loads(ann.read_text())
    for im in data["images"]:
        im["id"] = 3 - im["id"]                                       # b.png first
    for a in data["annotations"]:
        a["image_id"] = 3 - a["image_id"]
    ann.write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = CocoDetection(folder, ann, max_images=1)
    assert [str(w.message) for w in rec] == ["train: gave 1 annotation(s) a fresh id (shared or 0)"]
    assert ds.coco.getImgIds() == [1] and len(ds.coco.dataset["annotations"]) == 2


def test_clean_file_reports_nothing(shapes):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoDetection(shapes / "val", shapes / "annotations" / "instances_val.json")
    assert not ds.report.changed and ds.report.summary().startswith("val: all ")


# --- issue 10: image files are checked when the dataset is built, modes are converted ---------------
def one_image_set(root: Path, img: Image.Image, name: str = "x.png", box=(2, 2, 8, 8), size=None,
                  **save_kw) -> tuple[Path, Path]:
    """A dataset of the single image `img` saved as `name`; the json says `size` (default img.size)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    img.save(root / "img" / name, **save_kw)
    w, h = size or img.size
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": name, "width": w, "height": h}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": list(box)}],
                               "categories": [{"id": 1, "name": "thing"}]}))
    return root / "img", ann


def loaded_rgb(folder: Path, ann: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(folder, ann)
    return np.asarray(ds.load_image(0))


def test_sixteen_bit_png_is_scaled_not_saturated(tmp_path):
    grey16 = np.linspace(0, 65535, 64 * 32).round().astype(np.uint16).reshape(32, 64)
    img = Image.fromarray(grey16)
    assert img.mode == "I;16"
    folder, ann = one_image_set(tmp_path, img)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = CocoDetection(folder, ann)
    assert "images: 1 16-bit scaled to 8 bits" in str(rec[0].message)
    rgb = np.asarray(ds.load_image(0))
    assert rgb.shape == (32, 64, 3) and rgb.dtype == np.uint8
    expect = np.round(grey16.astype(np.float64) * 255 / 65535)
    assert np.array_equal(rgb[..., 0], expect) and (rgb[..., 0] == rgb[..., 2]).all()
    assert (rgb == 255).mean() < 0.01                                  # was 99.6% with convert("RGB")


def test_to_rgb_modes():
    from msdetr_lite.data import to_rgb
    i32 = Image.fromarray(np.array([[-5, 0, 257, 65535, 70000]], dtype=np.int32))
    assert i32.mode == "I" and np.asarray(to_rgb(i32))[0, :, 0].tolist() == [0, 0, 1, 255, 255]
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    pal.putpixel((1, 0), 1)
    assert np.asarray(to_rgb(pal))[0].tolist() == [[0, 0, 0], [200, 30, 40]]
    assert np.asarray(to_rgb(Image.new("LA", (1, 1), (90, 0))))[0, 0].tolist() == [90, 90, 90]
    assert np.asarray(to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0))))[0, 0].tolist() == [255, 0, 0]
    assert np.asarray(to_rgb(Image.new("1", (1, 1), 1)))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="mode 'F' is not supported"):
        to_rgb(Image.new("F", (1, 1)))


@pytest.mark.parametrize("mode, colour, fmt", [("P", None, "PNG"), ("LA", (150, 255), "PNG"),
                                               ("L", 150, "PNG"), ("CMYK", (0, 255, 255, 0), "JPEG"),
                                               ("RGBA", (200, 30, 40, 0), "PNG")])
def test_palette_grey_cmyk_alpha_files_load_as_rgb(tmp_path, mode, colour, fmt):
    if mode == "P":
        img = Image.new("P", (16, 12), 1)
        img.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
        expect = [200, 30, 40]
    else:
        img = Image.new(mode, (16, 12), colour)
        expect = np.asarray(img.convert("RGB"))[0, 0].tolist()
    folder, ann = one_image_set(tmp_path, img, name="x." + fmt.lower(), format=fmt)
    rgb = loaded_rgb(folder, ann)
    assert rgb.shape == (12, 16, 3)
    assert np.abs(rgb.reshape(-1, 3).mean(0) - expect).max() < 3      # JPEG: near, not exact


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def noisy(w: int, h: int, seed: int = 0) -> Image.Image:
    """Random pixels, so a JPEG has plenty of entropy-coded data to cut."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_truncated_files_fail_at_build_not_mid_epoch(tmp_path):
    folder, ann = one_image_set(tmp_path, noisy(64, 48), name="cut.jpg", format="JPEG")
    data = (folder / "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=r"1 of 1 images .*cut\.jpg: truncated"):
        CocoDetection(folder, ann)
    # bytes after the end-of-image marker (some cameras append data) are not truncation
    (folder / "cut.jpg").write_bytes(data + b"trailing camera data" * 10)
    assert loaded_rgb(folder, ann).shape == (48, 64, 3)

    folder, ann = one_image_set(tmp_path / "png", noisy(64, 48), name="cut.png")
    data = (folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png: unreadable or truncated"):
        CocoDetection(folder, ann)


def test_one_error_lists_the_first_bad_files_and_the_count(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 20, "height": 10} for i in range(1, 10)]
    folder, ann = write_coco(tmp_path, images, [], [{"id": 1, "name": "thing"}])
    for i in range(2, 7):
        (folder / f"{i}.png").write_bytes(b"garbage")
    Image.new("RGB", (10, 20)).save(folder / "7.png")                 # transposed size
    Image.new("F", (20, 10)).save(folder / "8.tif")
    (folder / "8.tif").rename(folder / "8.png")                        # float mode (PIL reads by content)
    (folder / "9.png").unlink()
    with pytest.raises(ValueError) as e:
        CocoDetection(folder, ann)
    msg = str(e.value)
    assert msg.startswith(f"8 of 9 images listed in {ann} cannot be used")
    assert "2.png: unreadable" in msg and "6.png: unreadable" in msg and msg.endswith("; ...")
    assert "7.png" not in msg                                          # only the first 5 are listed
    with pytest.raises(ValueError, match=r"7\.png: is 10x20 \(w x h\) but the json says 20x10.*"
                                         r"8\.png: mode 'F' is not supported.*9\.png: missing"):
        only_images(folder, ann, [7, 8, 9])


def only_images(folder: Path, ann: Path, ids: list[int]) -> CocoDetection:
    """CocoDetection over the images `ids` of the json `ann` (written next to it as sub.json)."""
    data = json.loads(ann.read_text())
    data["images"] = [im for im in data["images"] if im["id"] in ids]
    sub = ann.with_name("sub.json")
    sub.write_text(json.dumps(data))
    return CocoDetection(folder, sub)


def red_box_jpeg(w: int, h: int, box: tuple, orientation: int) -> bytes:
    """A grey w x h JPEG (stored pixels) with a red box x1, y1, x2, y2 and an EXIF orientation."""
    img = Image.new("RGB", (w, h), (128, 128, 128))
    img.paste((255, 0, 0), box)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(img, exif=exif.tobytes())


def red_inside(rgb: np.ndarray, xywh: list) -> bool:
    x, y, w, h = (int(v) for v in xywh)
    inner = rgb[y + 2:y + h - 2, x + 2:x + w - 2].reshape(-1, 3).astype(float)
    return inner[:, 0].mean() > 200 and inner[:, 1].mean() < 60


@pytest.mark.parametrize("orientation, json_frame", [(6, "displayed"), (6, "stored"), (8, "displayed"),
                                                     (3, "stored")])
def test_exif_orientation_follows_the_json_size(tmp_path, orientation, json_frame):
    """The json's width/height say which frame the boxes are in: rotated (the tool applied the
    EXIF orientation) or stored. Orientation 3 keeps the size: the stored pixels are used."""
    data = red_box_jpeg(60, 40, (5, 5, 25, 15), orientation)
    stored = Image.open(io.BytesIO(data))
    frame = ImageOps.exif_transpose(stored) if json_frame == "displayed" else stored.convert("RGB")
    x1, y1, x2, y2 = Image.fromarray((np.asarray(frame)[..., 0] > 200).astype(np.uint8) * 255).getbbox()
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "r.jpg").write_bytes(data)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "r.jpg", "width": frame.width, "height": frame.height}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                                "bbox": [x1, y1, x2 - x1, y2 - y1]}],
                               "categories": [{"id": 1, "name": "red"}]}))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = CocoDetection(tmp_path / "img", ann)
    note = "EXIF-rotated" if json_frame == "displayed" else "EXIF orientation left unapplied"
    assert note in str(rec[0].message)
    image, t = ds[0]
    assert t["orig_size"].tolist() == [frame.height, frame.width]
    cx, cy, w, h = (t["boxes"][0] * torch.tensor([frame.width, frame.height] * 2)).tolist()
    assert red_inside(np.asarray(ds.load_image(0)), [cx - w / 2, cy - h / 2, w, h])
    assert red_inside((image.permute(1, 2, 0).numpy() * 255), [cx - w / 2, cy - h / 2, w, h])


def test_exif_size_fitting_neither_frame_is_an_error(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "r.jpg").write_bytes(red_box_jpeg(60, 40, (5, 5, 25, 15), 6))
    folder, ann = tmp_path / "img", tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "r.jpg", "width": 50, "height": 50}],
                               "annotations": [], "categories": [{"id": 1, "name": "red"}]}))
    with pytest.raises(ValueError, match=r"r\.jpg: is 60x40 \(w x h\) \(EXIF orientation 6: 40x60 rotated\) "
                                         r"but the json says 50x50"):
        CocoDetection(folder, ann)


def test_file_replaced_after_build_is_named_on_load(tmp_path):
    folder, ann = one_image_set(tmp_path, Image.new("RGB", (16, 12)))
    ds = CocoDetection(folder, ann)
    Image.new("RGB", (12, 16)).save(folder / "x.png")
    with pytest.raises(ValueError, match=r"x\.png is 12x16 \(w x h\) but .*ann\.json says 16x12"):
        ds[0]
    (folder / "x.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"x\.png"):
        ds[0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val", val_size=0), r"val_size \(data\.val_size\) must be a positive integer, got 0"),
    (dict(split="val", val_size=96.5), r"val_size .* got 96\.5"),
    (dict(split="train", train_scales=(-3, 64)), r"train_scales \(data\.train_scales\) must be positive integers.*\[-3, 64\]"),
    (dict(split="train", train_scales=("a",)), r"train_scales .* \['a'\]"),
    (dict(split="train", train_scales=()), r"train_scales \(data\.train_scales\) is empty"),
    (dict(split="val", val_size=800, max_size=600), r"max_size \(data\.max_size\) = 600 must be larger than val_size"),
])
def test_bad_transform_sizes_fail_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_transforms(**kwargs)


def test_transform_sizes_accept_numpy_ints_and_no_cap():
    t = make_transforms("val", val_size=np.int64(32), max_size=0)
    image, _ = t(Image.new("RGB", (64, 48)), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    assert tuple(image.shape) == (3, 32, 42)


# --- issue 23: damage in the middle, paths outside the folder, categories, elongated images ---------
def test_damage_in_the_middle_fails_at_build_where_decoding_is_cheap(tmp_path, monkeypatch):
    from msdetr_lite.data import validation
    folder, ann = one_image_set(tmp_path, noisy(64, 48), name="mid.jpg", format="JPEG", quality=95)
    raw = bytearray((folder / "mid.jpg").read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 200):          # header and end-of-image marker intact
        raw[i] = 0xFF if i % 7 == 0 else raw[i] ^ 0x55
    (folder / "mid.jpg").write_bytes(bytes(raw))
    assert validation.inspect_image(folder / "mid.jpg", 64, 48).problem is None      # the header check alone
    with pytest.raises(ValueError, match=r"mid\.jpg: damaged \(OSError"):
        CocoDetection(folder, ann)
    # a split too large to decode at build: the header check, and the load names the file
    monkeypatch.setattr(validation, "FULL_DECODE_PIXELS", 64 * 48 - 1)
    ds = CocoDetection(folder, ann)
    with pytest.raises(ValueError, match=r"cannot read image .*mid\.jpg"):
        ds[0]


@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "/etc/hostname"])
def test_file_names_leading_outside_the_folder_are_refused(tmp_path, name):
    from msdetr_lite.data.validation import image_path
    folder, ann = one_image_set(tmp_path, Image.new("RGB", (16, 12)))
    Image.new("RGB", (16, 12)).save(tmp_path / "outside.png")
    data = json.loads(ann.read_text())
    data["images"][0]["file_name"] = name
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"leads outside the image folder|outside the image folder"):
        CocoDetection(folder, ann)
    with pytest.raises(ValueError, match="data.allow_outside_paths=true"):
        image_path(folder, name)
    assert image_path(folder, "sub/../x.png") == folder / "x.png"          # inside after all: fine
    if name.startswith("../"):                                             # the explicit opt-in
        assert CocoDetection(folder, ann, allow_outside_paths=True).load_image(0).size == (16, 12)


def test_categories_are_checked_train_against_val(tmp_path):
    from msdetr_lite.data.coco import check_same_categories
    cats = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    check_same_categories(cats, "train.json", [dict(c) for c in cats], "val.json")
    for other in (cats + [{"id": 3, "name": "star"}], cats[:1], [cats[0], {"id": 2, "name": "box"}], cats[::-1]):
        with pytest.raises(ValueError) as err:
            check_same_categories(cats, "train.json", other, "val.json")
        assert "train.json lists [1 circle, 2 square]" in str(err.value) and "val.json lists [" in str(err.value)
    ds = CocoDetection(*one_image_set(tmp_path, Image.new("RGB", (16, 12))))
    assert ds.categories == [{"id": 1, "name": "thing"}]        # what is compared, in label order


def test_images_too_elongated_for_the_resize_fail_when_built(tmp_path):
    from msdetr_lite.data import build_dataset
    folder, ann = one_image_set(tmp_path, Image.new("RGB", (400, 2)), box=(0, 0, 40, 2))
    (tmp_path / "annotations").mkdir()
    ann.rename(tmp_path / "annotations" / "instances_val.json")
    folder.rename(tmp_path / "val")
    cfg = apply_overrides(preset("tiny"), [f"data.root={tmp_path}"]).data     # max_size 192: 400 / 2 > 192
    with pytest.raises(ValueError, match=r"too elongated for data.max_size=192.*x.png \(400x2\)"):
        build_dataset(cfg, "val")
    cfg.max_size = 400                                                         # 2 * 400 / 400 = 2 px: fine
    assert len(build_dataset(cfg, "val")) == 1
