"""NMS as a measuring instrument: postprocess(nms_iou=...) and evaluate(nms_iou=...).

The detector is NMS-free; NMS is offered only to measure what duplicates cost. A model that puts
a second, slightly shifted box on every object loses AP NMS-free and gets it back with NMS.
"""
from __future__ import annotations

import pytest
import torch
from test_evaluation import OracleModel, dataset  # noqa: F401  (dataset is a pytest fixture)
from torch.utils.data import DataLoader

from msdetr_lite.data import collate
from msdetr_lite.evaluation import evaluate
from msdetr_lite.models.postprocess import postprocess


def _outputs(logits, boxes):
    return {"o2o": [{"logits": torch.tensor([logits], dtype=torch.float32),
                     "boxes": torch.tensor([boxes], dtype=torch.float32)}]}


def test_postprocess_nms_removes_same_class_duplicates_only():
    # queries 0 and 1: the same box, class 0; query 2: the same box, class 1; query 3 elsewhere
    boxes = [[0.5, 0.5, 0.4, 0.4], [0.51, 0.5, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4], [0.1, 0.1, 0.1, 0.1]]
    logits = [[4.0, -9.0], [3.0, -9.0], [-9.0, 2.0], [1.0, -9.0]]
    sizes = torch.tensor([[100, 200]])
    free = postprocess(_outputs(logits, boxes), sizes, k=4)[0]
    nms = postprocess(_outputs(logits, boxes), sizes, k=4, nms_iou=0.7)[0]
    assert free["queries"].tolist() == [0, 1, 2, 3]
    assert nms["queries"].tolist() == [0, 2, 3]                 # the lower-scored twin of class 0 goes
    assert nms["labels"].tolist() == [0, 1, 0]
    assert torch.equal(nms["scores"], free["scores"][[0, 2, 3]])
    assert torch.equal(nms["boxes"], free["boxes"][[0, 2, 3]])
    # a threshold above the pair's IoU keeps both
    assert postprocess(_outputs(logits, boxes), sizes, k=4, nms_iou=0.99)[0]["queries"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_nms_iou_out_of_range_is_refused(bad):
    out = _outputs([[1.0]], [[0.5, 0.5, 0.2, 0.2]])
    with pytest.raises(ValueError, match="nms_iou"):
        postprocess(out, torch.tensor([[10, 10]]), nms_iou=bad)


class DuplicatingModel(OracleModel):
    """OracleModel's perfect final layer, plus a shifted copy (IoU about 0.8) of every object's box
    scored between the true boxes: a duplicate on every object."""

    def forward(self, images, masks):
        out = super().forward(images, masks)
        final = out["o2o"][-1]
        for b in range(images.shape[0]):
            g = int((final["logits"][b].max(dim=1).values > 0).sum())
            final["boxes"][b, g:2 * g] = final["boxes"][b, :g] + torch.tensor([0.02, 0.0, 0.0, 0.0])
            final["logits"][b, g:2 * g] = final["logits"][b, :g] - 0.05
        return out


def test_evaluate_with_nms_measures_what_duplicates_cost(dataset):  # noqa: F811
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    out = evaluate(DuplicatingModel(dataset, Q=8), loader, "cpu", progress=False, nms_iou=0.7)
    assert out["final"]["AP"] < 0.9                              # duplicates are false positives
    assert out["nms"]["iou"] == 0.7 and len(out["nms"]["layers"]) == len(out["layers"])
    assert out["nms"]["final"]["AP"] == pytest.approx(1.0)       # NMS removes exactly them
    # one duplicate per non-crowd object, counted per image at the final layer
    num_objects = sum(int(len(dataset[i][1]["labels"])) for i in range(len(dataset)))
    assert out["duplicates"]["per_image"][-1] == pytest.approx(num_objects / len(dataset))
    assert out["duplicates"]["per_image"][-1] > 0

    plain = evaluate(OracleModel(dataset), loader, "cpu", progress=False)
    assert "nms" not in plain and plain["duplicates"]["per_image"][-1] == 0
