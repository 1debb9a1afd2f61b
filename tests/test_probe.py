"""The mechanism probe (msdetr_lite.probe): hand-checkable statistics, and a run's snapshots."""
from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest
import torch

from msdetr_lite import engine
from msdetr_lite.config import preset
from msdetr_lite.probe import PROBE_FILE, PROBE_STATS, _image_layer, probe_run

from test_engine import micro_train_config, shapes_root  # noqa: F401 (a fixture)


def _logit(p):
    return math.log(p / (1 - p))


def test_image_layer_by_hand():
    """One GT of class 1 at (0.5, 0.5, 0.2, 0.2); query 0 sits on it with p = 0.9, query 1 on it
    with p = 0.6, query 2 far away with p = 0.95, query 3 half off it. Every number is checkable."""
    cfg = preset("tiny")
    cfg.matcher.k, cfg.matcher.tau, cfg.matcher.alpha, cfg.matcher.max_pos_fraction = 2, 0.4, 0.3, 0.5
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.6, 0.5, 0.2, 0.2]])
    logits = torch.full((4, 3), -10.0)
    logits[0, 1], logits[1, 1], logits[2, 1], logits[3, 1] = _logit(0.9), _logit(0.6), _logit(0.95), _logit(0.5)
    pred = {"logits": logits[None], "boxes": boxes[None]}
    hidden = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, -1.0]])[None]
    stats = defaultdict(list)
    _image_layer(stats, pred, pred, 0, {"labels": torch.tensor([1]), "boxes": gt},
                 (hidden, hidden * torch.tensor([1.0, 0.0]), -hidden), cfg)
    # S = 0.3 p + 0.7 IoU: queries 0, 1 (IoU 1): 0.97, 0.88; query 3 (IoU 1/3): 0.383 < tau; query 2: 0.285
    # positives: queries 0 and 1 (2 = the cap of floor(0.5 * 4)); K = 2 -> targets 0 and 1
    assert stats["positives_per_gt"] == [2.0] and stats["cap_binds"] == [0.0]
    assert stats["weakest_iou"] == pytest.approx([1.0])
    assert stats["positive_score"] == pytest.approx([0.9, 0.6])
    assert stats["o2o_is_o2m_top1"] == [1.0]               # Hungarian picks query 0, S's top-1 too
    assert stats["score1"] == pytest.approx([0.9]) and stats["score2"] == pytest.approx([0.6])
    assert stats["has_second"] == [1.0]
    assert stats["sim_pre_sa"] == pytest.approx([1 / math.sqrt(2)])   # (1, 0) vs (1, 1)
    assert stats["sim_post_sa"] == pytest.approx([1.0])                # (1, 0) vs (1, 0)
    assert stats["sim_out"] == pytest.approx([1 / math.sqrt(2)])

    # a stricter tau leaves only the low-quality rule's query: one target; no candidate but one
    cfg.matcher.tau, cfg.matcher.max_pos_fraction = 0.95, 0.25
    boxes[1] = torch.tensor([0.9, 0.9, 0.1, 0.1])
    stats = defaultdict(list)
    _image_layer(stats, pred, pred, 0, {"labels": torch.tensor([1]), "boxes": gt}, (hidden,) * 3, cfg)
    assert stats["positives_per_gt"] == [1.0] and stats["has_second"] == [0.0] and stats["score2"] == [0.0]
    assert "sim_pre_sa" not in stats


@pytest.mark.parametrize("supervision", ["o2o", "ms"])
def test_probe_run_reads_every_snapshot_and_caches(tmp_path, shapes_root, supervision):
    run = tmp_path / supervision
    engine.train(micro_train_config(shapes_root, run, f"model.supervision={supervision}",
                                    "train.keep_snapshots=true"), progress=False)
    records = probe_run(run)
    assert [r["epoch"] for r in records] == [1, 2] and all(r["supervision"] == supervision for r in records)
    assert all(len(r["layers"]) == 2 and set(r["layers"][0]) == set(PROBE_STATS) for r in records)
    for layer in records[-1]["layers"]:
        for name in ("cap_binds", "o2o_is_o2m_top1", "has_second", "score1", "score2"):
            assert 0.0 <= layer[name] <= 1.0, name
        assert layer["score2"] <= layer["score1"]
    cached = json.loads((run / PROBE_FILE).read_text())
    assert probe_run(run) == records == list(cached["0"].values())     # deterministic, from the cache
    with pytest.raises(FileNotFoundError, match="keep_snapshots"):
        probe_run(tmp_path)
