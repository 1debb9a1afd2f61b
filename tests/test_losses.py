"""Tests of SetCriterion on fake model outputs (random leaf tensors, no model needed)."""
import os

import pytest
import torch
import torch.distributed as dist
from torchvision.ops import sigmoid_focal_loss

from msdetr_lite.config import LossConfig, MatcherConfig
from msdetr_lite.losses import Assignment, SetCriterion, iou_aware_focal_loss

C, Q, LAYERS, ENC_TOKENS = 3, 8, 2, 20
GROUP_NUM, HYBRID_Q = 3, 24


def branch(batch, n, classes=C, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"logits": torch.randn(batch, n, classes, generator=gen).requires_grad_(),
            "boxes": (torch.rand(batch, n, 4, generator=gen) * 0.5 + 0.1).requires_grad_()}


def fake_outputs(supervision, batch=2, with_o2m=True):
    n_o2m = {"o2o": Q, "ms": Q, "hybrid": HYBRID_Q, "group": (GROUP_NUM - 1) * Q}[supervision]
    out = {"o2o": [branch(batch, Q, seed=l) for l in range(LAYERS)],
           "enc": branch(batch, ENC_TOKENS, classes=1, seed=100)}
    if with_o2m:
        out["o2m"] = [branch(batch, n_o2m, seed=10 + l) for l in range(LAYERS)]
    return out


def fake_targets():
    return [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])},
            {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]


def empty_targets(batch=2):
    return [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)} for _ in range(batch)]


def criterion(supervision, loss_cfg=None, matcher_cfg=None, generator=None, num_classes=C):
    return SetCriterion(num_classes, loss_cfg or LossConfig(), matcher_cfg or MatcherConfig(), supervision,
                        num_queries=Q, group_num=GROUP_NUM, generator=generator)


def keys(branches, layers=LAYERS):
    out = {"loss", "loss_cls_enc", "loss_bbox_enc", "loss_giou_enc"}
    for b in branches:
        out |= {f"loss_{kind}_{b}_{l}" for kind in ("cls", "bbox", "giou") for l in range(layers)}
    return out


@pytest.mark.parametrize("supervision", ["o2o", "ms", "hybrid", "group"])
def test_loss_keys_per_scheme(supervision):
    losses = criterion(supervision)(fake_outputs(supervision), fake_targets())
    expected = keys(["o2o"] if supervision == "o2o" else ["o2o", "o2m"])
    assert set(losses) == expected                 # `o2o` ignores outputs["o2m"] even when present
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    parts = sum(v for k, v in losses.items() if k != "loss")
    assert losses["loss"].item() == pytest.approx(parts.item(), rel=1e-5)


def test_o2m_branch_skipped_when_outputs_lack_it():
    losses = criterion("ms")(fake_outputs("ms", with_o2m=False), fake_targets())
    assert set(losses) == keys(["o2o"])


@pytest.mark.parametrize("supervision", ["ms", "hybrid", "group"])
def test_gradients_flow_to_every_branch(supervision):
    out = fake_outputs(supervision)
    criterion(supervision)(out, fake_targets())["loss"].backward()
    preds = out["o2o"] + out["o2m"] + [out["enc"]]
    for p in preds:
        for t in (p["logits"], p["boxes"]):
            assert t.grad is not None and torch.isfinite(t.grad).all()
            assert t.grad.abs().sum() > 0


@pytest.mark.parametrize("supervision", ["o2o", "ms", "hybrid", "group"])
def test_zero_gt_batch(supervision):
    out = fake_outputs(supervision)
    losses = criterion(supervision)(out, empty_targets())
    for k, v in losses.items():
        if "bbox" in k or "giou" in k:
            assert v.item() == 0.0
        elif "cls" in k:
            assert v.item() > 0
    losses["loss"].backward()
    # all queries are negatives: the gradient lowers every logit
    supervised = out["o2o"] + (out["o2m"] if supervision != "o2o" else [])
    for p in supervised:
        assert (p["logits"].grad > 0).all()


def perfect_branch(targets, n, classes):
    """Queries 0..G-1 predict the GTs exactly and confidently; the others are tiny, far, unsure."""
    batch = len(targets)
    logits = torch.full((batch, n, classes), -6.0)
    boxes = torch.tensor([0.95, 0.95, 0.01, 0.01]).repeat(batch, n, 1)
    for b, t in enumerate(targets):
        g = len(t["labels"])
        boxes[b, :g] = t["boxes"]
        logits[b, torch.arange(g), t["labels"] if classes > 1 else 0] = 6.0
    return {"logits": logits.requires_grad_(), "boxes": boxes.requires_grad_()}


def test_perfect_prediction_gives_zero_box_losses():
    targets = fake_targets()
    out = {"o2o": [perfect_branch(targets, Q, C) for _ in range(LAYERS)],
           "o2m": [perfect_branch(targets, Q, C) for _ in range(LAYERS)],
           "enc": perfect_branch(targets, ENC_TOKENS, 1)}
    losses, matches = criterion("ms")(out, targets, return_matches=True)
    for k, v in losses.items():
        if "bbox" in k or "giou" in k:
            assert v.item() == pytest.approx(0.0, abs=1e-5), k
    assert matches["o2m"][0][0].query_idx.tolist() == [0, 1]
    assert losses["loss_cls_o2o_0"].item() < 0.01


def shifted_queries(num_queries, d):
    """One image, one GT; every query is the GT shifted right by d (all are good candidates)."""
    gt = torch.tensor([[0.5, 0.5, 0.4, 0.4]])
    boxes = gt.repeat(num_queries, 1)
    boxes[:, 0] += d
    logits = torch.full((num_queries, C), -6.0)
    logits[:, 1] = 3.0
    pred = {"logits": logits[None].requires_grad_(), "boxes": boxes[None].requires_grad_()}
    return pred, [{"labels": torch.tensor([1]), "boxes": gt}]


def test_o2m_losses_are_normalised_by_the_number_of_gts():
    d, k = 0.01, 6
    pred, targets = shifted_queries(12, d)
    crit = criterion("ms", matcher_cfg=MatcherConfig(k=k, max_pos_fraction=1.0))
    losses = crit({"o2o": [pred], "o2m": [pred]}, targets)
    # o2o: 1 pair, o2m: K pairs, both divided by 1 GT (not by the number of pairs)
    assert losses["loss_bbox_o2o_0"].item() == pytest.approx(5 * d, rel=1e-4)
    assert losses["loss_bbox_o2m_0"].item() == pytest.approx(5 * k * d, rel=1e-4)
    # the same image twice: twice the pairs, twice the GTs, the same loss
    pred2 = {key: torch.cat([v, v]).detach() for key, v in pred.items()}
    losses2 = crit({"o2o": [pred2], "o2m": [pred2]}, targets * 2)
    for key in ("loss_bbox_o2o_0", "loss_bbox_o2m_0", "loss_giou_o2m_0", "loss_cls_o2m_0"):
        assert losses2[key].item() == pytest.approx(losses[key].item(), rel=1e-4)


def test_hybrid_matches_the_gts_repeated_k_times():
    k = 3
    crit = criterion("hybrid", loss_cfg=LossConfig(hybrid_k=k, hybrid_weight=0.5))
    out, targets = fake_outputs("hybrid"), fake_targets()
    losses, matches = crit(out, targets, return_matches=True)
    for layer, per_image in enumerate(matches["o2m"]):
        l1 = 0.0
        for b, (a, t) in enumerate(zip(per_image, targets)):
            num_gt = len(t["labels"])
            assert len(a.query_idx) == k * num_gt                       # Qh >= K * G
            assert len(set(a.query_idx.tolist())) == k * num_gt
            assert torch.bincount(a.gt_idx, minlength=num_gt).tolist() == [k] * num_gt
            l1 += (out["o2m"][layer]["boxes"][b, a.query_idx] - t["boxes"][a.gt_idx]).abs().sum().item()
        # H-DETR: o2o weight x hybrid_weight, divided by the number of repeated GTs
        expected = 5 * 0.5 * l1 / (k * 3)                           # 3 GTs in the batch
        assert losses[f"loss_bbox_o2m_{layer}"].item() == pytest.approx(expected, rel=1e-4)


def test_hybrid_with_fewer_queries_than_copies():
    crit = criterion("hybrid", loss_cfg=LossConfig(hybrid_k=6))
    out = fake_outputs("hybrid")
    out["o2m"] = [branch(2, 4, seed=5)]
    _, matches = crit(out, fake_targets(), return_matches=True)
    assert [len(a.query_idx) for a in matches["o2m"][0]] == [4, 4]


def test_group_matches_each_group_separately():
    out, targets = fake_outputs("group"), fake_targets()
    _, matches = criterion("group")(out, targets, return_matches=True)
    for per_image in matches["o2m"]:
        for a, t in zip(per_image, targets):
            num_gt = len(t["labels"])
            assert len(a.query_idx) == (GROUP_NUM - 1) * num_gt
            for i in range(GROUP_NUM - 1):
                in_group = (a.query_idx >= i * Q) & (a.query_idx < (i + 1) * Q)
                assert sorted(a.gt_idx[in_group].tolist()) == list(range(num_gt))   # one per GT


def test_group_rejects_a_wrong_number_of_queries():
    out = fake_outputs("group")
    out["o2m"] = [branch(2, Q + 1)]
    with pytest.raises(ValueError, match="group_num"):
        criterion("group")(out, fake_targets())


def test_iou_aware_changes_only_the_cls_loss():
    out, targets = fake_outputs("ms"), fake_targets()
    plain = criterion("ms")(out, targets)
    aware = criterion("ms", loss_cfg=LossConfig(iou_aware=True))(out, targets)
    for k in plain:
        if k.startswith("loss_cls"):
            assert aware[k].item() != pytest.approx(plain[k].item(), rel=1e-3), k
        elif k != "loss":
            assert aware[k].item() == pytest.approx(plain[k].item(), rel=1e-6), k


def test_iou_aware_focal_loss_reduces_to_focal_loss_on_hard_targets():
    logits = torch.randn(2, 5, 3)
    target = (torch.rand(2, 5, 3) > 0.7).float()
    ours = iou_aware_focal_loss(logits, target, target.bool())
    assert ours.item() == pytest.approx(sigmoid_focal_loss(logits, target, reduction="sum").item(), rel=1e-5)
    # and with perfect boxes (IoU = 1) the criterion gives the plain loss
    targets = fake_targets()
    out = {"o2o": [perfect_branch(targets, Q, C)]}
    plain = criterion("o2o")(out, targets)["loss_cls_o2o_0"]
    aware = criterion("o2o", loss_cfg=LossConfig(iou_aware=True))(out, targets)["loss_cls_o2o_0"]
    assert aware.item() == pytest.approx(plain.item(), rel=1e-4)


def test_ms_class_targets_come_from_one_pair_per_query():
    out, targets = fake_outputs("ms"), fake_targets()
    crit = criterion("ms", matcher_cfg=MatcherConfig(tau=0.0, max_pos_fraction=1.0))
    losses, matches = crit(out, targets, return_matches=True)
    pred = out["o2m"][0]
    onehot = torch.zeros_like(pred["logits"])
    for b, (a, t) in enumerate(zip(matches["o2m"][0], targets)):
        assert isinstance(a, Assignment)
        assert len(set(a.cls_query_idx.tolist())) == len(a.cls_query_idx)          # each query once
        assert set(zip(a.cls_query_idx.tolist(), a.cls_gt_idx.tolist())) <= set(
            zip(a.query_idx.tolist(), a.gt_idx.tolist()))
        onehot[b, a.cls_query_idx, t["labels"][a.cls_gt_idx]] = 1
    expected = 2 * sigmoid_focal_loss(pred["logits"], onehot, reduction="sum") / 3
    assert losses["loss_cls_o2m_0"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_encoder_invalid_tokens_are_harmless():
    out, targets = fake_outputs("o2o"), fake_targets()
    logits = out["enc"]["logits"].detach().clone()
    boxes = out["enc"]["boxes"].detach().clone()
    logits[:, -6:-3], logits[:, -3:] = float("-inf"), torch.finfo(torch.float32).min
    boxes[:, -6:] = 1e4
    out["enc"] = {"logits": logits.requires_grad_(), "boxes": boxes.requires_grad_()}
    losses, matches = criterion("o2o")(out, targets, return_matches=True)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all((a.query_idx < ENC_TOKENS - 6).all() for a in matches["enc"])
    losses["loss"].backward()
    assert torch.isfinite(out["enc"]["logits"].grad).all() and torch.isfinite(out["enc"]["boxes"].grad).all()


def test_degenerate_boxes_give_finite_losses():
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.1, 0.0]])}]
    out = fake_outputs("ms", batch=1)
    for p in out["o2o"] + out["o2m"]:
        p["boxes"].data[0, :3] = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.1, 0.0], [0.5, 0.5, 0.0, 0.0]])
    losses = criterion("ms", loss_cfg=LossConfig(iou_aware=True))(out, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(p["boxes"].grad).all() for p in out["o2o"] + out["o2m"])


def test_generator_makes_the_random_cap_reproducible():
    out, targets = fake_outputs("ms"), fake_targets()
    cfg = MatcherConfig(tau=0.0, max_pos_fraction=0.25)      # every query positive, cap 2 of 8
    runs = [criterion("ms", matcher_cfg=cfg, generator=torch.Generator().manual_seed(s))(out, targets)["loss"]
            for s in (7, 7)]
    assert runs[0].item() == runs[1].item()


def test_match_returns_assignments_per_branch_and_layer():
    out, targets = fake_outputs("ms"), fake_targets()
    m = criterion("ms").match(out, targets)
    assert set(m) == {"o2o", "o2m", "enc"}
    assert len(m["o2o"]) == len(m["o2m"]) == LAYERS and len(m["enc"]) == 2
    a = m["o2o"][-1][0]
    assert a.query_idx.tolist() == sorted(a.query_idx.tolist()) and len(a.gt_idx) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="supervision"):
        criterion("dense")
    with pytest.raises(ValueError, match="num_classes"):
        criterion("o2o", num_classes=C + 1)(fake_outputs("o2o"), fake_targets())


def test_num_boxes_all_reduced_in_a_process_group(tmp_path):
    out, targets = fake_outputs("ms"), fake_targets()
    single = criterion("ms")(out, targets)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp_path, 'pg')}", rank=0, world_size=1)
    try:
        grouped = criterion("ms")(out, targets)
    finally:
        dist.destroy_process_group()
    assert grouped["loss"].item() == pytest.approx(single["loss"].item(), rel=1e-6)
