"""msdetr_lite.evaluation: COCOeval round trip, per-layer evaluation, Subset, distributed gather."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from msdetr_lite.data import CocoDetection, coco_from_dict, collate, load_coco_json
from msdetr_lite.evaluation import coco_eval, evaluate, format_metrics

CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "bird"}]
IMAGES = [{"id": 5, "file_name": "5.png", "width": 120, "height": 90},
          {"id": 6, "file_name": "6.png", "width": 90, "height": 120},
          {"id": 9, "file_name": "9.png", "width": 100, "height": 100}]
ANNS = [
    {"id": 1, "image_id": 5, "category_id": 3, "bbox": [10, 10, 30, 20]},
    {"id": 2, "image_id": 5, "category_id": 12, "bbox": [60, 30, 40, 50]},
    {"id": 3, "image_id": 5, "category_id": 7, "bbox": [0, 60, 50, 25], "iscrowd": 1},
    {"id": 4, "image_id": 6, "category_id": 7, "bbox": [20, 20, 40, 60]},
    {"id": 5, "image_id": 6, "category_id": 7, "bbox": [5, 90, 20, 20]},
    {"id": 6, "image_id": 9, "category_id": 12, "bbox": [30, 30, 40, 40]},
    {"id": 7, "image_id": 9, "category_id": 3, "bbox": [2, 2, 15, 15]},
]


def gt_coco():
    data = json.loads(json.dumps({"images": IMAGES, "annotations": ANNS, "categories": CATS}))
    for a in data["annotations"]:
        a.setdefault("iscrowd", 0)
        a["area"] = a["bbox"][2] * a["bbox"][3]
    return coco_from_dict(data)


def perfect_detections(score=0.9):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "score": score - 0.01 * i} for i, a in enumerate(ANNS) if not a.get("iscrowd")]


# --- coco_eval -------------------------------------------------------------------------------------
def test_perfect_detections_give_ap_one():
    out = coco_eval(gt_coco(), perfect_detections(), per_class=True)
    assert out["AP"] == pytest.approx(1.0) and out["AP50"] == pytest.approx(1.0)
    assert out["AP75"] == pytest.approx(1.0) and out["AR100"] == pytest.approx(1.0)
    assert set(out["per_class"]) == {3, 7, 12} and all(v == pytest.approx(1.0) for v in out["per_class"].values())


def test_detection_on_crowd_region_is_not_a_false_positive():
    dets = perfect_detections(0.5) + [{"image_id": 5, "category_id": 7, "bbox": [0, 60, 50, 25], "score": 0.99}]
    assert coco_eval(gt_coco(), dets)["AP"] == pytest.approx(1.0)


def test_wrong_labels_lower_ap():
    dets = perfect_detections()
    perm = {3: 7, 7: 12, 12: 3}
    shuffled = [dict(d, category_id=perm[d["category_id"]]) for d in dets]
    assert coco_eval(gt_coco(), shuffled)["AP"] == pytest.approx(0.0)
    half = [dict(d, category_id=perm[d["category_id"]]) if i % 2 else d for i, d in enumerate(dets)]
    assert 0.0 < coco_eval(gt_coco(), half)["AP"] < 1.0
    # contiguous labels passed by mistake (0..2 instead of 3, 7, 12) are caught, not silently scored
    with pytest.raises(ValueError, match="label_to_cat_id"):
        coco_eval(gt_coco(), [dict(d, category_id=0) for d in dets])


def test_no_detections_and_subset_of_images():
    out = coco_eval(gt_coco(), [])
    assert out["AP"] == 0.0 and set(out) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    only9 = [d for d in perfect_detections() if d["image_id"] == 9]
    assert coco_eval(gt_coco(), only9, img_ids=[9])["AP"] == pytest.approx(1.0)
    assert coco_eval(gt_coco(), only9)["AP"] < 1.0                   # other images' GTs are missed
    assert "AP 100.0" in format_metrics(coco_eval(gt_coco(), only9, img_ids=[9]))


# --- evaluate() with a model whose answer per image is known ------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    (root / "img").mkdir()
    for k, info in enumerate(IMAGES):
        # each image's grey level encodes its index, so the fake model knows which image it sees
        Image.new("RGB", (info["width"], info["height"]), (10 * (k + 1),) * 3).save(root / "img" / info["file_name"])
    (root / "ann.json").write_text(json.dumps({"images": IMAGES, "annotations": ANNS, "categories": CATS}))
    return CocoDetection(root / "img", root / "ann.json")


class OracleModel(nn.Module):
    """3 decoder layers: 0 = boxes shifted away, 1 = right boxes with wrong labels, 2 = perfect."""

    def __init__(self, dataset, num_classes=3, Q=6):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.targets = [dataset[i][1] for i in range(len(dataset))]
        self.C, self.Q = num_classes, Q

    def forward(self, images, masks):
        B = images.shape[0]
        layers = [{"logits": torch.full((B, self.Q, self.C), -10.0), "boxes": torch.full((B, self.Q, 4), 0.1)}
                  for _ in range(3)]
        for b in range(B):
            k = round(images[b, 0, 0, 0].item() * 255 / 10) - 1
            t = self.targets[k]
            G = len(t["labels"])
            for l, layer in enumerate(layers):
                labels = (t["labels"] + 1) % 3 if l == 1 else t["labels"]
                layer["logits"][b, torch.arange(G), labels] = 5.0 - 0.1 * torch.arange(G)
                boxes = t["boxes"].clone()
                if l == 0:
                    boxes[:, :2] = (boxes[:, :2] + 0.5) % 1.0
                layer["boxes"][b, :G] = boxes
        return {"o2o": layers}


def test_evaluate_all_layers(dataset):
    model = OracleModel(dataset)
    model.train()
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    out = evaluate(model, loader, "cpu", layers="all", progress=False)
    assert model.training                                       # mode restored
    assert out["layer_ids"] == [0, 1, 2] and out["num_images"] == 3
    aps = [l["AP"] for l in out["layers"]]
    assert aps[2] == pytest.approx(1.0) and out["final"]["AP"] == pytest.approx(1.0)
    assert aps[0] < 0.2 and aps[1] < 0.5     # wrong labels: only the low-score pairs match

    out = evaluate(model, loader, "cpu", layers=[-2], progress=False)
    assert out["layer_ids"] == [1] and out["final"]["AP"] == pytest.approx(1.0)
    out = evaluate(model, loader, "cpu", layers="final", progress=False)
    assert out["layers"] == [out["final"]]


def test_evaluate_subset_and_label_mismatch(dataset):
    model = OracleModel(dataset)
    sub = Subset(dataset, [2, 0])
    out = evaluate(model, DataLoader(sub, batch_size=1, collate_fn=collate), "cpu", progress=False)
    assert out["num_images"] == 2 and out["final"]["AP"] == pytest.approx(1.0)
    too_many = OracleModel(dataset, num_classes=5)
    with pytest.raises(ValueError, match="dataset has 3 classes"):
        evaluate(too_many, DataLoader(dataset, batch_size=3, collate_fn=collate), "cpu", progress=False)


def _dist_worker(rank: int, world: int, init_file: str, ann_root: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ds = CocoDetection(Path(ann_root) / "img", Path(ann_root) / "ann.json")
        loader = DataLoader(ds, batch_size=1, collate_fn=collate,
                            sampler=DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False))
        out = evaluate(OracleModel(ds), loader, "cpu", progress=False)
        Path(result_dir, f"{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def test_evaluate_distributed_gathers_and_deduplicates(dataset, tmp_path):
    # 3 images on 2 ranks: the sampler pads rank 1 with a repeat of image 0
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_dist_worker, args=(2, init_file, str(dataset.img_folder.parent), str(tmp_path)), nprocs=2)
    outs = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert outs[0] == outs[1]
    assert outs[0]["num_images"] == 3 and outs[0]["final"]["AP"] == pytest.approx(1.0)


# --- issue 10: the ground truth is the training targets (bad boxes cleaned once, for both) -----------
BAD_ANNS = ANNS + [
    {"id": 8, "image_id": 5, "category_id": 3, "bbox": [100, 70, 40, 40]},          # clipped to 20 x 20
    {"id": 9, "image_id": 6, "category_id": 7, "bbox": [10, 10, 0, 30]},            # zero width
    {"id": 10, "image_id": 6, "category_id": 12, "bbox": [float("nan"), 1, 5, 5]},  # NaN
    {"id": 11, "image_id": 9, "category_id": 3, "bbox": [200, 10, 10, 10]},         # outside
    {"id": 6, "image_id": 9, "category_id": 12, "bbox": [30, 30, 40, 40]},          # repeated entry
    {"id": 7, "image_id": 9, "category_id": 7, "bbox": [60, 5, 20, 20]},            # id shared
    {"id": 0, "image_id": 6, "category_id": 3, "bbox": [50, 5, 30, 10]},            # id 0
]


@pytest.fixture(scope="module")
def bad_box_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("badboxes")
    (root / "img").mkdir()
    for k, info in enumerate(IMAGES):
        Image.new("RGB", (info["width"], info["height"]), (10 * (k + 1),) * 3).save(root / "img" / info["file_name"])
    (root / "ann.json").write_text(json.dumps({"images": IMAGES, "annotations": BAD_ANNS, "categories": CATS}))
    with pytest.warns(UserWarning, match=r"ann: dropped 4 boxes .* clipped 1, gave 2 annotation"):
        return CocoDetection(root / "img", root / "ann.json")


def target_detections(ds, score=0.9) -> list[dict]:
    """The dataset's training targets as COCO detections, in the original image's pixels."""
    dets = []
    for i in range(len(ds)):
        t = ds.raw_target(i)
        dets += [{"image_id": ds.ids[i], "category_id": ds.label_to_cat_id[l], "score": score,
                  "bbox": [x1, y1, x2 - x1, y2 - y1]}
                 for l, (x1, y1, x2, y2) in zip(t["labels"].tolist(), t["boxes"].tolist())]
    return dets


def test_perfect_detections_on_bad_boxes_give_ap_one(bad_box_dataset):
    ds = bad_box_dataset
    dets = target_detections(ds)
    assert coco_eval(ds.coco, dets)["AP"] == pytest.approx(1.0)
    # the json as written would have scored them lower (the bug of issue 10)
    assert coco_eval(coco_from_dict(load_coco_json(ds.ann_file)), dets)["AP"] < 0.9
    out = evaluate(OracleModel(ds), DataLoader(ds, batch_size=2, collate_fn=collate), "cpu", progress=False)
    assert out["final"]["AP"] == pytest.approx(1.0) and out["final"]["AR100"] == pytest.approx(1.0)


def test_crowd_region_survives_cleaning(bad_box_dataset):
    crowd = [a for a in bad_box_dataset.coco.dataset["annotations"] if a["iscrowd"]]
    assert [(a["image_id"], a["bbox"]) for a in crowd] == [(5, [0, 60, 50, 25])]
    # a confident detection on the crowd region is neither a hit nor a false positive
    on_crowd = {"image_id": 5, "category_id": 7, "bbox": [0, 60, 50, 25], "score": 0.99}
    assert coco_eval(bad_box_dataset.coco, target_detections(bad_box_dataset, 0.5) + [on_crowd])["AP"] == 1.0
