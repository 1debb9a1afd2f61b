"""msdetr_lite.analysis: candidate statistics on hand-built outputs whose answers are known."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from msdetr_lite import viz
from msdetr_lite.analysis import (STAT_NAMES, candidate_quality, candidate_quality_over_loader,
                                  image_candidate_stats, load_json, save_json)
from msdetr_lite.data import collate

A = [0.25, 0.25, 0.2, 0.2]          # GT boxes, normalised cxcywh
B = [0.75, 0.75, 0.2, 0.2]
A_SHIFT = [0.30, 0.25, 0.2, 0.2]    # IoU(A, A_SHIFT) = 0.03 / 0.05 = 0.6
B_SHIFT = [0.80, 0.75, 0.2, 0.2]    # IoU 0.6 with B
FAR = [0.75, 0.15, 0.1, 0.1]        # overlaps nothing


def layer(boxes_per_image, logits_per_image):
    return {"boxes": torch.tensor(boxes_per_image), "logits": torch.tensor(logits_per_image)}


def batch():
    """Image 0 has GTs A and B; image 1 has none. Two decoder layers, Q = 6, C = 2."""
    # layer 0, image 0: q0 = A (0.95), q4 = FAR (0.88), q1 = A again (0.82, a duplicate),
    # q2 = A shifted (0.10), q3 = B shifted (0.05), q5 = B exact but scored lowest.
    # A query's score is its best class: q4's and q1's high logits sit in class 1.
    img0_l0 = layer([A, A, A_SHIFT, B_SHIFT, FAR, B],
                    [[3.0, -9], [-9, 1.5], [-2.2, -9], [-3.0, -9], [-9, 2.0], [-5.0, -9]])
    img0_l1 = layer([A, B, FAR, FAR, FAR, FAR],
                    [[3.0, -9], [-9, 2.5], [-4, -9], [-4, -9], [-4, -9], [-4, -9]])
    # image 1 (no GT): two confident queries on the same spot are false positives, not duplicates
    img1 = layer([FAR, FAR, A, A, B, B], [[2.0, -9], [1.9, -9], [-9, -9], [-9, -9], [-9, -9], [-9, -9]])
    outputs = {"o2o": [
        {k: torch.stack([img0_l0[k], img1[k]]) for k in ("boxes", "logits")},
        {k: torch.stack([img0_l1[k], img1[k]]) for k in ("boxes", "logits")},
    ]}
    targets = [{"boxes": torch.tensor([A, B]), "labels": torch.tensor([0, 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return outputs, targets


def test_known_statistics_per_layer():
    outputs, targets = batch()
    res = candidate_quality(outputs, targets, topk=3, score_thresh=0.3)
    assert res["num_images"] == 2 and res["num_gt"] == 2 and len(res["layers"]) == 2
    l0, l1 = res["layers"]
    # GT A: best 1 (top-3 too), 3 queries >= 0.5 (q0 q1 q2), 2 >= 0.7; GT B: best 1 but only q5
    # (not in the top 3 = q0 q4 q1) so best top-3 IoU 0; 2 queries >= 0.5 (q3 q5), 1 >= 0.7
    assert l0["best_iou"] == pytest.approx(1.0)
    assert l0["best_iou_topk"] == pytest.approx(0.5)
    assert l0["num_iou50"] == pytest.approx(2.5)
    assert l0["num_iou70"] == pytest.approx(1.5)
    assert l0["recall50_topk"] == pytest.approx(0.5)
    assert l0["recall75_topk"] == pytest.approx(0.5)
    assert l0["duplicates"] == pytest.approx(0.5)            # 1 duplicate (q1) over 2 images
    assert l0["dups_topk"] == pytest.approx(0.5)             # q1 in the top 3 finds A again: 1 over 2 images
    # layer 1: one query per GT, both in the top 3, no duplicates
    assert l1 == pytest.approx({"best_iou": 1.0, "best_iou_topk": 1.0, "num_iou50": 1.0, "num_iou70": 1.0,
                                "recall50_topk": 1.0, "recall75_topk": 1.0, "duplicates": 0.0, "dups_topk": 0.0})


def test_candidate_hits_by_hand():
    """Layer 0 of image 0: the top 3 are q0 (A, exact), q4 (FAR: hits nothing), q1 (A again), so A
    has 2 candidates, B none (missed), one extra; the top 6 find B twice (q5 exact, q3 at IoU 0.6)."""
    from msdetr_lite.analysis import candidate_hits
    outputs, targets = batch()
    logits, boxes = outputs["o2o"][0]["logits"][0], outputs["o2o"][0]["boxes"][0]
    logits = logits.sigmoid().max(-1).values                     # a query's score
    h = candidate_hits(logits, boxes, targets[0]["boxes"], topk=3)
    assert h["queries"].tolist() == [0, 4, 1] and h["gt"].tolist() == [0, -1, 0]
    assert h["per_gt"].tolist() == [2, 0] and h["missed"] == [1] and h["extra"] == 1
    assert h["iou"].tolist() == pytest.approx([1.0, 0.0, 1.0])
    all6 = candidate_hits(logits, boxes, targets[0]["boxes"], topk=6)
    assert all6["per_gt"].tolist() == [3, 2] and all6["missed"] == [] and all6["extra"] == 3
    none = candidate_hits(logits, boxes, torch.zeros(0, 4), topk=3)
    assert none["gt"].tolist() == [-1, -1, -1] and none["missed"] == [] and none["extra"] == 0


def test_thresholds_and_topk_change_answers():
    outputs, targets = batch()
    # score threshold above q1's 0.82: no duplicate left
    assert candidate_quality(outputs, targets, topk=3, score_thresh=0.85)["layers"][0]["duplicates"] == 0
    # a duplicate needs IoU >= dup_iou with the claimed GT: q1 is exact, so 0.99 still counts it
    assert candidate_quality(outputs, targets, topk=3, dup_iou=0.99)["layers"][0]["duplicates"] == 0.5
    # top-6 includes everything: best top-k IoU = best IoU; topk > Q is fine
    for k in (6, 50):
        l0 = candidate_quality(outputs, targets, topk=k)["layers"][0]
        assert l0["best_iou_topk"] == pytest.approx(1.0) and l0["recall75_topk"] == pytest.approx(1.0)
    # top-1 is q0 only: covers A, not B; B's best top-1 IoU is 0
    l0 = candidate_quality(outputs, targets, topk=1)["layers"][0]
    assert l0["recall50_topk"] == pytest.approx(0.5) and l0["best_iou_topk"] == pytest.approx(0.5)


def test_single_image_sums_and_empty_cases():
    s = image_candidate_stats(torch.tensor([[0.0], [0.0]]), torch.tensor([A, A_SHIFT]), torch.tensor([A]),
                              topk=1, score_thresh=0.3)
    # both queries score 0.5; the first claims A, the second (IoU 0.6) is a duplicate
    assert s["num_iou50"] == 2 and s["num_iou70"] == 1 and s["duplicates"] == 1
    empty = image_candidate_stats(torch.zeros(3, 2), torch.rand(3, 4) * 0.5, torch.zeros(0, 4))
    assert all(v == 0 for v in empty.values())
    res = candidate_quality({"o2o": [{"logits": torch.zeros(1, 3, 2), "boxes": torch.full((1, 3, 4), 0.3)}]},
                            [{"boxes": torch.zeros(0, 4)}])
    assert math.isnan(res["layers"][0]["best_iou"]) and res["layers"][0]["duplicates"] == 0


def test_bad_inputs():
    outputs, targets = batch()
    with pytest.raises(KeyError, match="o2m"):
        candidate_quality(outputs, targets, branch="o2m")
    with pytest.raises(ValueError, match="targets"):
        candidate_quality(outputs, targets[:1])


class FixedModel(nn.Module):
    """Returns the hand-built outputs, one image at a time, in order."""

    def __init__(self):
        super().__init__()
        self.outputs, _ = batch()
        self.calls = 0

    def forward(self, images, masks):
        i = self.calls % 2
        self.calls += 1
        return {"o2o": [{k: v[i:i + 1] for k, v in l.items()} for l in self.outputs["o2o"]]}


def test_over_loader_matches_batch_and_max_batches():
    outputs, targets = batch()
    data = [(torch.zeros(3, 8, 8), t) for t in targets]
    model = FixedModel().train()
    res = candidate_quality_over_loader(model, DataLoader(data, batch_size=1, collate_fn=collate), "cpu",
                                        topk=3, progress=False)
    assert model.training
    assert res == candidate_quality(outputs, targets, topk=3)
    model = FixedModel()
    one = candidate_quality_over_loader(model, DataLoader(data, batch_size=1, collate_fn=collate), "cpu",
                                        topk=3, max_batches=1, progress=False)
    assert one["num_images"] == 1 and one["layers"][0]["duplicates"] == pytest.approx(1.0)


def test_json_round_trip_and_plot(tmp_path):
    outputs, targets = batch()
    base = candidate_quality(outputs, targets, topk=3)
    nan = candidate_quality({"o2o": outputs["o2o"]}, [{"boxes": torch.zeros(0, 4)}] * 2)
    path = save_json({"baseline": base, "empty": nan}, tmp_path / "cq" / "stats.json")
    back = load_json(path)
    assert back["baseline"] == base
    assert math.isnan(back["empty"]["layers"][0]["best_iou"])

    # analysis draws nothing: viz plots its statistics (either form of a result), save_figure writes them
    fig = viz.plot_candidate_quality({"o2o": base, "ms": base["layers"]})
    viz.save_figure(fig, tmp_path / "cq.png", dpi=120)
    assert (tmp_path / "cq.png").stat().st_size > 1000
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(STAT_NAMES)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["o2o", "ms"]
    assert all(ax.get_title() for ax in axes) and axes[0].get_xlabel() == "decoder layer"
    assert list(axes[0].lines[0].get_xdata()) == [1, 2]
    with pytest.raises(ValueError, match="unknown statistic"):
        viz.plot_candidate_quality({"a": base}, stats=["nope"])


def test_stat_titles_name_every_statistic_with_its_unit():
    """Tables and plots show these instead of raw keys: one per statistic, with its unit in
    parentheses, and no '@' (markdown renderers turn 'recall@0.5' into a mail link)."""
    from msdetr_lite.analysis import STAT_NAMES, STAT_TITLES
    assert set(STAT_TITLES) == set(STAT_NAMES)
    for name, title in STAT_TITLES.items():
        assert title != name and "@" not in title and title.endswith(")") and "(" in title, title
