"""The shapes generator's difficulty knobs and named variants: the default output is the embedded
data/shapes byte for byte, every variant is deterministic and has the statistics data/README.md
documents, every class draws and differs from the others, bad values are refused naming the knob,
and a 14-class variant trains."""
from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from msdetr_lite import cli
from msdetr_lite.data import synthetic
from msdetr_lite.data.coco import PROJECT_ROOT
from msdetr_lite.shapes_knobs import KNOB_NAMES, MAX_OBJECTS, SHAPE_NAMES, VARIANTS, Knobs, variant_knobs
from test_data import tree_hash

EMBEDDED = PROJECT_ROOT / "data" / "shapes"


def load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


# --- the hard rule: the defaults are the embedded data/shapes ----------------------------------
def test_default_output_is_the_embedded_data_byte_for_byte(tmp_path):
    synthetic.generate(tmp_path / "a", n_train=4, n_val=3)
    for split, n in (("train", 4), ("val", 3)):
        for i in range(1, n + 1):
            name = f"{i:06d}.png"
            assert (tmp_path / "a" / split / name).read_bytes() == (EMBEDDED / split / name).read_bytes(), name
        mine, embedded = load(tmp_path / "a", split), load(EMBEDDED, split)
        assert mine["info"] == embedded["info"] and mine["categories"] == embedded["categories"]
        assert mine["images"] == embedded["images"][:n]
        assert mine["annotations"] == [a for a in embedded["annotations"] if a["image_id"] <= n]
    # the same through the named default variant and explicit default knob values
    synthetic.generate(tmp_path / "explicit", n_train=4, n_val=3, variant="default", **Knobs().as_dict())
    assert tree_hash(tmp_path / "explicit") == tree_hash(tmp_path / "a")


# --- determinism and the record of the knobs ---------------------------------------------------
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "default"])
def test_variant_is_deterministic_and_recorded(tmp_path, variant):
    synthetic.generate(tmp_path / "a", n_train=2, n_val=2, seed=3, variant=variant)
    synthetic.generate(tmp_path / "b", n_train=2, n_val=2, seed=3, variant=variant)
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b")
    synthetic.generate(tmp_path / "c", n_train=2, n_val=2, seed=4, variant=variant)
    assert tree_hash(tmp_path / "c") != tree_hash(tmp_path / "a")
    knobs = variant_knobs(variant)
    data = load(tmp_path / "a", "train")
    assert data["info"]["variant"] == variant and data["info"]["knobs"] == knobs.as_dict()
    assert [c["name"] for c in data["categories"]] == list(SHAPE_NAMES[:knobs.num_classes])
    for im in data["images"]:
        assert im["height"] == knobs.image_size


def test_an_override_is_recorded_with_the_variant(tmp_path):
    synthetic.generate(tmp_path / "a", n_train=1, n_val=1, variant="dense", max_objects=np.int64(25), min_size=8)
    info = load(tmp_path / "a", "val")["info"]
    assert info["variant"] == "dense" and info["knobs"]["max_objects"] == 25 and info["knobs"]["min_objects"] == 20
    synthetic.generate(tmp_path / "b", n_train=1, n_val=1, variant="dense", max_objects=25, min_size=8.0)
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b")


# --- statistics --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_statistics_within_the_variant_bounds(variant):
    knobs, st = synthetic.variant_statistics(variant, n=10, seed=1)
    objects = st["objects_per_image"]
    assert objects["max"] <= knobs.max_objects and objects["mean"] >= 0.8 * knobs.min_objects
    assert st["classes"] == knobs.num_classes == len(st["boxes_per_class"])
    assert sum(st["area_share"].values()) == pytest.approx(1.0)
    coco = synthetic.coco_split("val", 10, 1, knobs, variant)
    for a in coco["annotations"]:
        assert max(a["bbox"][2:]) <= 1.25 * knobs.max_size + 2       # rotated triangles reach ~1.21 x size
    assert st["val_size"] == knobs.image_size


def test_harder_variants_are_harder_where_they_say():
    base = synthetic.variant_statistics("default", n=40)[1]
    assert synthetic.variant_statistics("occluded", n=40)[1]["occluded_share"] > 1.5 * base["occluded_share"]
    assert synthetic.variant_statistics("small", n=40)[1]["area_share"]["small"] > base["area_share"]["small"]
    dense = synthetic.variant_statistics("dense", n=10)[1]
    assert dense["objects_per_image"]["mean"] > 3 * base["objects_per_image"]["mean"]
    assert dense["queries_per_token"] < 0.5 * base["queries_per_token"]


def test_split_statistics_by_hand():
    coco = {"info": {"image_size": 64},
            "images": [{"id": 1, "width": 64, "height": 64}, {"id": 2, "width": 64, "height": 64}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [
                {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},        # small, overlaps the next
                {"image_id": 1, "category_id": 2, "bbox": [5, 0, 10, 10]},        # IoU 50 / 150 = 0.33
                {"image_id": 1, "category_id": 2, "bbox": [0, 20, 40, 40]},       # medium (1600 px^2), alone
                {"image_id": 2, "category_id": 2, "bbox": [0, 0, 64, 64]}]}       # 4096 px^2: medium
    st = synthetic.split_statistics(coco, num_queries=17)
    assert st["objects_per_image"] == {"mean": 2.0, "min": 1, "max": 3}
    assert st["boxes_per_class"] == {"a": 1, "b": 3}
    assert st["area_share"] == {"small": 0.5, "medium": 0.5, "large": 0.0}
    assert st["occluded_share"] == 0.5
    assert st["tokens_per_image"] == 64 + 16 + 4 + 1 and st["queries_per_token"] == 17 / 85


def test_tokens_are_the_models_and_the_val_resize_the_transforms():
    from msdetr_lite.data.transforms import make_transforms
    from msdetr_lite.models import build_model
    from conftest import micro_model_config
    model = build_model(micro_model_config(d_model=64)).eval()    # GroupNorm of a 1 x 1 level: 2 channels a group
    for h, w in ((64, 56), (72, 96), (100, 136)):
        with torch.no_grad():
            *_, shapes, _, _ = model._flatten_features(torch.zeros(1, 3, h, w), torch.zeros(1, h, w, dtype=torch.bool))
        assert synthetic.token_count(h, w) == int(shapes.prod(1).sum())
    tf = make_transforms("val", val_size=128, max_size=192)
    for w, h in ((112, 128), (144, 128), (128, 40)):
        image, _ = tf(Image.new("RGB", (w, h)), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)})
        assert tuple(image.shape[-2:]) == synthetic.resized_size(h, w, 128, 192)


# --- the classes ---------------------------------------------------------------------------------
def _masks(label: int, size: float, n: int = 6, canvas: int = 64) -> list[np.ndarray]:
    out = []
    for k in range(n):
        geom = synthetic._shape_outline(label, size, np.random.default_rng([label, k]))
        mask = Image.new("L", (canvas, canvas), 0)
        synthetic._draw_shape(ImageDraw.Draw(mask), geom, canvas / 2, canvas / 2, 255)
        out.append(np.asarray(mask) > 0)
    return out


def test_every_class_draws_at_every_size_and_rings_and_frames_have_holes():
    for label, name in enumerate(SHAPE_NAMES):
        for size in (6.0, 12.0, 48.0):
            for m in _masks(label, size, n=3):
                ys, xs = np.nonzero(m)
                assert len(ys) >= 0.15 * size ** 2, (name, size)
                assert max(np.ptp(ys), np.ptp(xs)) + 1 >= 0.7 * size, (name, size)
    for name in ("ring", "frame"):
        assert not _masks(SHAPE_NAMES.index(name), 24.0, n=1)[0][32, 32]


def test_classes_differ_from_each_other():
    """No added class is as alike to another class as the embedded set's most alike pair, circle
    and square (mask IoU 0.81, centred, at 24 px): the highest IoU over 6 x 6 random instances
    (rotations) of each pair stays below it."""
    masks = {label: _masks(label, 24.0) for label in range(len(SHAPE_NAMES))}
    alike = {(SHAPE_NAMES[a], SHAPE_NAMES[b]): max((ma & mb).sum() / (ma | mb).sum()
                                                   for ma in masks[a] for mb in masks[b])
             for a, b in combinations(masks, 2)}
    bar = alike[("circle", "square")]
    added = {pair: iou for pair, iou in alike.items() if set(pair) - set(synthetic.CLASS_NAMES)}
    assert 0.75 < bar < 0.85 and max(added.values()) < bar, sorted(added.items(), key=lambda kv: -kv[1])[:3]


def test_many_classes_draw_every_class():
    coco = synthetic.coco_split("val", 30, 0, variant_knobs("many_classes"), "many_classes")
    assert {a["category_id"] for a in coco["annotations"]} == set(range(1, len(SHAPE_NAMES) + 1))


# --- bad values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"max_objects": MAX_OBJECTS + 1}, "max_objects must be in 1..40"),
    ({"min_objects": 5, "max_objects": 3}, "min_objects=5 is more than max_objects=3"),
    ({"min_objects": -1}, "min_objects must be >= 0"),
    ({"num_classes": 0}, "num_classes must be in 1..14"),
    ({"num_classes": len(SHAPE_NAMES) + 1}, "num_classes must be in 1..14"),
    ({"num_classes": 4.5}, "num_classes must be an integer"),
    ({"min_size": 5}, "min_size must be >= 6"),
    ({"min_size": 30, "max_size": 20}, "min_size=30 is more than max_size=20"),
    ({"image_size": 40}, "image_size=40 is smaller than max_size=48"),
    ({"max_iou": 0}, r"max_iou must be in \(0, 1\]"),
    ({"max_cover": 1.5}, r"max_cover must be in \(0, 1\]"),
    ({"max_inside": float("nan")}, "max_inside must be a finite number"),
    ({"aspect_jitter": 1.0}, r"aspect_jitter must be in \[0, 1\)"),
    ({"variant": "crowded"}, "variant must be one of default, dense"),
    ({"max_object": 5}, "unknown knob"),
])
def test_bad_values_are_refused_naming_the_knob_before_writing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.generate(tmp_path / "out", n_train=1, n_val=1, **kwargs)
    assert not (tmp_path / "out").exists()


def test_render_image_checks_its_knobs_and_every_problem_is_listed():
    with pytest.raises(ValueError, match="max_objects"):
        synthetic.render_image(np.random.default_rng(0), 64, 64, max_objects=50)
    with pytest.raises(ValueError, match="min_size must be >= 6.*max_iou must be in"):
        variant_knobs(min_size=1, max_iou=2)
    assert set(KNOB_NAMES) == set(Knobs().as_dict())


def test_module_command_refuses_a_bad_value_and_prints_statistics(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--out", str(tmp_path / "y"), "--min-size", "2"])
    assert exit_info.value.code == 2 and "min_size must be >= 6" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert synthetic.main(["--stats", "small", "dense", "--n-val", "3", "--max-objects", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("| small | 128 | 4 |") and lines[-1].startswith("| dense | 192 | 4 |")


# --- training on a variant -----------------------------------------------------------------------
def test_fourteen_class_variant_trains_one_step(tmp_path):
    from msdetr_lite import engine
    from test_engine import micro_train_config
    root = tmp_path / "shapes"
    synthetic.generate(root, n_train=2, n_val=2, variant="many_classes", image_size=64, max_size=32)
    summary = engine.train(micro_train_config(root, tmp_path / "run", "train.epochs=1",
                                              "train.max_steps_per_epoch=1"), progress=False)
    assert summary["steps"] == 1 and summary["model"].num_classes == len(SHAPE_NAMES)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["num_classes"] == len(SHAPE_NAMES)


# --- the msdetr command -------------------------------------------------------------------------
def test_msdetr_data_shapes_reports_a_bad_value_in_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data", "shapes", "--out", str(tmp_path / "x"), "--variant", "dense", "--max-objects", "50"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err == ["msdetr data shapes: error: max_objects must be in 1..40, got 50"]
    assert not (tmp_path / "x").exists()


def test_msdetr_data_shapes_variant_and_flags(tmp_path):
    out = tmp_path / "mc"
    assert cli.main(["data", "shapes", "--out", str(out), "--n-train", "1", "--n-val", "1",
                     "--variant", "many_classes", "--size", "64", "--max-size", "32"]) == 0
    info = load(out, "val")["info"]
    assert info["variant"] == "many_classes" and info["knobs"]["image_size"] == 64
    assert info["knobs"]["max_size"] == 32 and info["knobs"]["num_classes"] == len(SHAPE_NAMES)


# --- the documentation -------------------------------------------------------------------------
def test_documented_statistics_are_what_the_command_prints():
    """data/README.md's table is `python -m msdetr_lite.data.synthetic --stats <every variant>`."""
    table = synthetic.statistics_table({v: synthetic.variant_statistics(v) for v in VARIANTS})
    readme = (PROJECT_ROOT / "data" / "README.md").read_text()
    for line in table.splitlines():
        assert line in readme, line


def test_bench_script_draws_the_grid(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("shapes_variants_bench", PROJECT_ROOT / "bench" / "shapes_variants.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    png = tmp_path / "grid.png"
    assert bench.main(["--variants", "default", "dense", "--n", "2", "--n-stats", "3", "--figure", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| default | 128 | 4 |" in out and "| dense | 192 | 4 |" in out
    with Image.open(png) as im:
        assert im.size[0] == 900
    committed = PROJECT_ROOT / "docs" / "images" / "shapes_variants.png"
    assert committed.stat().st_size < 300_000
