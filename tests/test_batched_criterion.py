"""The batched criterion equals the per-image reference (as DETR's test_hungarian: a batch at once
gives what one image at a time gives).

Matching: `SetCriterion(batched=True).match` against `batched=False` for every scheme and the
encoder, and the batched matchers of matching.py against the per-image ones, on batches with
several layers, images without GT next to images with many (G > Q), a single GT, duplicated GT
boxes and fully tied predictions. Where no two candidates tie, the indices must be identical.
Where candidates tie exactly (duplicated predictions, duplicated GTs), any choice among them is
optimal and the two paths may choose differently, so the assignments must be identical up to
swapping interchangeable candidates: equal as multisets of (prediction, GT) *values*.
Losses: the same dict to 1e-5 relative, for every scheme, with and without iou_aware.
"""
import math

import pytest
import torch

from msdetr_lite.config import LossConfig, MatcherConfig
from msdetr_lite.losses import SetCriterion, _num_boxes
from msdetr_lite.matching import (_cap_positives, batched_one_to_many, batched_one_to_one, o2m_class_targets,
                                  one_to_many, one_to_one, pad_targets)

C, Q, LAYERS, ENC_TOKENS, GROUP_NUM, HYBRID_Q = 4, 8, 3, 24, 3, 20
SIZES = (0, 3, 1, 11)                      # an empty image, one GT, G > Q
NO_CAP = MatcherConfig(max_pos_fraction=1.0, tau=0.3)


def make_targets(sizes=SIZES, seed=0, duplicate_gt=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        cxcy = 0.25 + 0.5 * torch.rand(n, 2, generator=g)
        wh = 0.1 + 0.3 * torch.rand(n, 2, generator=g)
        boxes, labels = torch.cat([cxcy, wh], 1), torch.randint(0, C, (n,), generator=g)
        if duplicate_gt and n >= 2:          # the same object annotated twice
            boxes[1], labels[1] = boxes[0], labels[0]
        out.append({"labels": labels, "boxes": boxes})
    return out


def make_branch(targets, n, classes=C, seed=0, tied=False):
    """Random predictions, the first queries near the GTs (so o2m has positives); with `tied`
    every query predicts the same box and logits."""
    g = torch.Generator().manual_seed(seed)
    batch = len(targets)
    logits = torch.randn(batch, n, classes, generator=g)
    boxes = 0.2 + 0.5 * torch.rand(batch, n, 4, generator=g)
    for b, t in enumerate(targets):
        m = min(len(t["labels"]), n // 2)
        boxes[b, :m] = t["boxes"][:m] + 0.03 * torch.randn(m, 4, generator=g)
    if tied:
        logits[:] = logits[:, :1]
        boxes[:] = boxes[:, :1]
    return {"logits": logits.requires_grad_(), "boxes": boxes.clamp(0.01, 0.99).requires_grad_()}


def make_outputs(supervision, targets, seed=0, tied=False, layers=LAYERS):
    n_o2m = {"o2o": Q, "ms": Q, "hybrid": HYBRID_Q, "group": (GROUP_NUM - 1) * Q}[supervision]
    enc = make_branch(targets, ENC_TOKENS, classes=1, seed=seed + 100, tied=tied)
    with torch.no_grad():                    # invalid encoder tokens, as the model marks them
        enc["logits"][:, -3:] = float("-inf")
        enc["boxes"][:, -3:] = 1e4
    out = {"o2o": [make_branch(targets, Q, seed=seed + l, tied=tied) for l in range(layers)], "enc": enc}
    if supervision != "o2o":
        out["o2m"] = [make_branch(targets, n_o2m, seed=seed + 10 + l, tied=tied) for l in range(layers)]
    return out


def criterion(supervision, batched, matcher_cfg=NO_CAP, loss_cfg=None, seed=0):
    return SetCriterion(C, loss_cfg or LossConfig(hybrid_k=3), matcher_cfg, supervision, num_queries=Q,
                        group_num=GROUP_NUM, generator=torch.Generator().manual_seed(seed), batched=batched)


def value_pairs(query_idx, gt_idx, pred, image, target, agnostic=False):
    """The pairs as (prediction values, GT values): equal for interchangeable candidates."""
    rows = torch.cat([pred["logits"][image], pred["boxes"][image]], 1).detach()
    label = torch.zeros_like(target["labels"]) if agnostic else target["labels"]
    gts = torch.cat([label[:, None].float(), target["boxes"]], 1)
    return sorted((tuple(rows[q].tolist()), tuple(gts[g].tolist()))
                  for q, g in zip(query_idx.tolist(), gt_idx.tolist()))


def assert_same_assignments(ref, new, preds, targets, exact, agnostic=False):
    """ref, new: [image] -> Assignment of one branch and layer."""
    assert len(ref) == len(new) == len(targets)
    for b, (r, n) in enumerate(zip(ref, new)):
        for field in ("query_idx", "gt_idx", "cls_query_idx", "cls_gt_idx"):
            a, c = getattr(r, field), getattr(n, field)
            assert a.dtype == c.dtype == torch.int64 and a.shape == c.shape, (b, field)
            if exact:
                assert torch.equal(a, c), (b, field, a, c)
        if not exact:
            for q, g in (("query_idx", "gt_idx"), ("cls_query_idx", "cls_gt_idx")):
                assert value_pairs(getattr(r, q), getattr(r, g), preds, b, targets[b], agnostic) == \
                    value_pairs(getattr(n, q), getattr(n, g), preds, b, targets[b], agnostic), (b, q)


def assert_same_matches(supervision, outputs, targets, exact, matcher_cfg=NO_CAP):
    ref = criterion(supervision, batched=False, matcher_cfg=matcher_cfg).match(outputs, targets)
    new = criterion(supervision, batched=True, matcher_cfg=matcher_cfg).match(outputs, targets)
    assert set(ref) == set(new)
    for branch in ("o2o", "o2m"):
        if branch in ref:
            assert len(ref[branch]) == len(new[branch]) == LAYERS
            for layer, (r, n) in enumerate(zip(ref[branch], new[branch])):
                assert_same_assignments(r, n, outputs[branch][layer], targets, exact)
    assert_same_assignments(ref["enc"], new["enc"], outputs["enc"], targets, exact, agnostic=True)


SCHEMES = ["o2o", "ms", "hybrid", "group"]


@pytest.mark.parametrize("supervision", SCHEMES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_batches_give_identical_assignments(supervision, seed):
    targets = make_targets(seed=seed)
    assert_same_matches(supervision, make_outputs(supervision, targets, seed=seed), targets, exact=True)


@pytest.mark.parametrize("matcher_cfg", [MatcherConfig(max_pos_fraction=1.0, tau=0.9, k=2),   # low-quality rule
                                         MatcherConfig(max_pos_fraction=1.0, tau=0.0, k=6),   # all positive
                                         MatcherConfig(max_pos_fraction=1.0, tau=0.4, k=1)])
def test_o2m_thresholds_and_k(matcher_cfg):
    for seed in (0, 1):
        targets = make_targets(seed=seed)
        assert_same_matches("ms", make_outputs("ms", targets, seed=seed), targets, True, matcher_cfg)


@pytest.mark.parametrize("supervision", SCHEMES)
def test_tied_predictions_and_duplicate_gts(supervision):
    # every query identical (equal boxes and logits), and one GT annotated twice
    targets = make_targets(seed=3, duplicate_gt=True)
    assert_same_matches(supervision, make_outputs(supervision, targets, seed=3, tied=True), targets, exact=False)
    targets = make_targets(seed=4, duplicate_gt=True)
    assert_same_matches(supervision, make_outputs(supervision, targets, seed=4), targets, exact=False)


@pytest.mark.parametrize("supervision", SCHEMES)
@pytest.mark.parametrize("sizes", [(0, 0), (1,), (2, 0, 1)])
def test_empty_and_single_gt_batches(supervision, sizes):
    targets = make_targets(sizes, seed=5)
    assert_same_matches(supervision, make_outputs(supervision, targets, seed=5), targets, exact=True)


# ------------------------------------------------------------------ matching.py, function by function

def stacked(targets, seed=0):
    preds = [make_branch(targets, Q, seed=seed + l) for l in range(LAYERS)]
    return (torch.stack([p["logits"] for p in preds]).detach(), torch.stack([p["boxes"] for p in preds]).detach())


def test_batched_one_to_one_equals_one_image_at_a_time():
    targets = make_targets(seed=6)
    logits, boxes = stacked(targets, seed=6)
    gt = pad_targets([t["labels"] for t in targets], [t["boxes"] for t in targets])
    assert gt.labels.shape == (len(SIZES), max(SIZES)) and gt.mask.sum(1).tolist() == list(SIZES)
    pairs = batched_one_to_one(logits, boxes, gt)
    assert pairs.counts == tuple(min(Q, g) for g in SIZES)
    for layer in range(LAYERS):
        start = 0
        for b, t in enumerate(targets):
            q, g = one_to_one(logits[layer, b], boxes[layer, b], t["labels"], t["boxes"])
            stop = start + pairs.counts[b]
            assert torch.equal(pairs.query_idx[layer, start:stop], q)
            assert torch.equal(pairs.gt_idx[layer, start:stop], g)
            assert (pairs.batch_idx[layer, start:stop] == b).all()
            start = stop


def test_batched_one_to_many_equals_one_image_at_a_time():
    targets = make_targets(seed=7)
    logits, boxes = stacked(targets, seed=7)
    gt = pad_targets([t["labels"] for t in targets], [t["boxes"] for t in targets])
    many = batched_one_to_many(logits, boxes, gt, k=3, tau=0.3, max_pos_fraction=1.0)
    for layer in range(LAYERS):
        for b, t in enumerate(targets):
            q, g, s = one_to_many(logits[layer, b], boxes[layer, b], t["labels"], t["boxes"], k=3, tau=0.3,
                                  max_pos_fraction=1.0, return_scores=True)
            n = len(t["labels"])
            valid = many.valid[layer, b, :n]
            assert torch.equal(many.query_idx[layer, b, :n][valid], q)
            assert torch.equal(torch.arange(n)[:, None].expand_as(valid)[valid], g)
            torch.testing.assert_close(many.scores[layer, b, :n], s, rtol=0, atol=1e-6)
            assert (many.scores[layer, b, n:] == -1).all()              # padding rows never win
            cq, cg = o2m_class_targets(q, g, s)
            cls = many.cls_gt[layer, b]
            assert torch.equal((cls >= 0).nonzero().squeeze(1), cq) and torch.equal(cls[cq], cg)


def test_random_cap_when_it_binds():
    targets = make_targets((6, 5, 0), seed=8)
    logits, boxes = stacked(targets, seed=8)
    gt = pad_targets([t["labels"] for t in targets], [t["boxes"] for t in targets])
    args = dict(k=6, tau=0.0, max_pos_fraction=0.25)                # every query positive, cap 2 of 8
    uncapped = batched_one_to_many(logits, boxes, gt, k=6, tau=0.0, max_pos_fraction=1.0)
    runs = [batched_one_to_many(logits, boxes, gt, generator=torch.Generator().manual_seed(s), **args)
            for s in (0, 0, 1, 2, 3)]
    max_pos = math.floor(0.25 * Q)
    for many in runs:
        # sum_g min(c_g, K) over the kept positives, c_g counted on at most max_pos queries
        assert (many.valid.sum(dim=(2, 3))[:, :2] == max_pos).all()     # K >= the cap here
        assert not many.valid[:, 2].any()                                # the image without GT
        assert (many.valid.sum(dim=(2, 3)) <= uncapped.valid.sum(dim=(2, 3))).all()
        # kept pairs are a subset of the pairs of the same rows without the cap (top of each row)
        width = many.valid.sum(3)
        assert torch.equal(many.query_idx, uncapped.query_idx)
        assert (width <= uncapped.valid.sum(3)).all()
    assert torch.equal(runs[0].valid, runs[1].valid) and torch.equal(runs[0].cls_gt, runs[1].cls_gt)
    assert len({tuple(r.valid.flatten().tolist()) for r in runs}) > 1


def test_cap_keeps_a_uniform_subset_of_the_positives():
    positive = torch.rand(2, 3, 16, generator=torch.Generator().manual_seed(0)) > 0.3
    gen = torch.Generator().manual_seed(1)
    for max_pos in (0, 3, 16):
        kept = _cap_positives(positive, max_pos, gen)
        assert (kept <= positive).all()                                  # a subset
        assert torch.equal(kept.sum(-1), positive.sum(-1).clamp(max=max_pos))
    # each positive is kept about equally often (uniform): 3 of the positives of one row
    row = positive[0, 0]
    hits = sum(_cap_positives(positive, 3, gen)[0, 0].long() for _ in range(400))
    share = hits[row].float() / 400
    assert share.min() > 0.5 * 3 / row.sum() and share.max() < 1.5 * 3 / row.sum()


# ------------------------------------------------------------------ losses

def assert_same_losses(ref, new):
    assert set(ref) == set(new)
    for k in ref:
        assert new[k].dim() == 0 and torch.isfinite(new[k])
        assert new[k].item() == pytest.approx(ref[k].item(), rel=1e-5, abs=1e-7), k


@pytest.mark.parametrize("supervision", SCHEMES)
@pytest.mark.parametrize("iou_aware", [False, True])
def test_same_losses_and_gradients(supervision, iou_aware):
    targets = make_targets(seed=9)
    loss_cfg = LossConfig(hybrid_k=3, iou_aware=iou_aware)
    grads = []
    for batched in (False, True):
        outputs = make_outputs(supervision, targets, seed=9)
        losses = criterion(supervision, batched, loss_cfg=loss_cfg)(outputs, targets)
        losses["loss"].backward()
        grads.append(torch.cat([p[k].grad.flatten() for p in outputs["o2o"] + outputs.get("o2m", [])
                                for k in ("logits", "boxes")]))
        if batched:
            assert_same_losses(ref, losses)
        ref = losses
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("supervision", SCHEMES)
def test_same_losses_with_ties_empty_images_and_one_layer(supervision):
    for targets, tied, layers in ((make_targets(seed=10, duplicate_gt=True), True, LAYERS),
                                  (make_targets((0, 0), seed=11), False, 1),
                                  (make_targets((1,), seed=12), False, 2)):
        outputs = make_outputs(supervision, targets, seed=10, tied=tied, layers=layers)
        assert_same_losses(criterion(supervision, False)(outputs, targets),
                           criterion(supervision, True)(outputs, targets))


def test_forward_reads_back_once_and_never_item(monkeypatch):
    """A CPU stand-in for the host-sync count: the batched step copies to the host once (the
    Hungarian costs of all branches together) and never calls .item() / .tolist()."""
    targets = make_targets(seed=13)
    outputs = make_outputs("hybrid", targets, seed=13)
    crit = criterion("hybrid", batched=True)
    calls = {"cpu": 0, "item": 0, "tolist": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    crit(outputs, targets)
    assert calls == {"cpu": 1, "item": 0, "tolist": 0}


def test_num_boxes_is_a_clamped_tensor():
    n = _num_boxes(make_targets((0, 0)), torch.device("cpu"))
    assert torch.is_tensor(n) and n.dim() == 0 and n.item() == 1.0
    assert _num_boxes(make_targets((2, 3)), torch.device("cpu")).item() == 5.0


def test_bad_labels_and_group_sizes_raise_clear_errors():
    targets = make_targets((2,), seed=14)
    targets[0]["labels"][0] = C
    with pytest.raises(ValueError, match="gt_labels"):
        criterion("o2o", True)(make_outputs("o2o", make_targets((2,), seed=14)), targets)
    outputs = make_outputs("group", make_targets((2,)))
    outputs["o2m"] = [make_branch(make_targets((2,)), Q + 1)]
    with pytest.raises(ValueError, match="group_num"):
        criterion("group", True)(outputs, make_targets((2,)))


@pytest.mark.parametrize("supervision", ["ms", "hybrid", "group"])
@pytest.mark.parametrize("batched", [False, True])
def test_o2m_switched_off_keeps_its_terms_at_zero(supervision, batched):
    """LossConfig.o2m_last_epoch: after that epoch the engine sets o2m_scale = 0; the o2m terms
    stay in the dict (the same names every step) at zero, and no gradient flows into o2m outputs."""
    targets = make_targets(seed=13)
    on = criterion(supervision, batched)(make_outputs(supervision, targets, seed=13), targets)
    crit = criterion(supervision, batched)
    crit.o2m_scale = 0.0
    outputs = make_outputs(supervision, targets, seed=13)
    off = crit(outputs, targets)
    assert set(off) == set(on)
    o2m = [k for k in off if "_o2m_" in k]
    assert o2m and all(off[k].item() == 0.0 for k in o2m) and any(on[k].item() > 0 for k in o2m)
    for k in off:
        if "_o2m_" not in k and k != "loss":
            assert off[k].item() == on[k].item(), k
    torch.testing.assert_close(off["loss"], sum(v for k, v in on.items() if "_o2m_" not in k and k != "loss"))
    off["loss"].backward()
    assert all(p[k].grad is None or not p[k].grad.any() for p in outputs["o2m"] for k in ("logits", "boxes"))


@pytest.mark.parametrize("batched", [False, True])
def test_o2m_layers_supervises_only_the_first_layers(batched):
    """LossConfig.o2m_layers=2 (a departure): the o2m terms of layers 0-1 are those of the method,
    the terms of later layers stay in the dict at zero and send no gradient into their outputs."""
    targets = make_targets(seed=21)
    full = criterion("ms", batched)(make_outputs("ms", targets, seed=21), targets)
    outputs = make_outputs("ms", targets, seed=21)
    early = criterion("ms", batched, loss_cfg=LossConfig(hybrid_k=3, o2m_layers=2))(outputs, targets)
    assert set(early) == set(full)
    for k in early:
        if k == "loss":
            continue
        layer = int(k.rsplit("_", 1)[1]) if "_o2m_" in k else -1
        if layer >= 2:
            assert early[k].item() == 0.0 and full[k].item() > 0, k
        else:
            assert early[k].item() == full[k].item(), k
    early["loss"].backward()
    assert LAYERS > 2
    for layer, pred in enumerate(outputs["o2m"]):
        grads = [pred[k].grad for k in ("logits", "boxes")]
        moved = any(g is not None and g.any() for g in grads)
        assert moved == (layer < 2), layer


def test_o2m_layers_beyond_the_decoder_is_rejected():
    from msdetr_lite.config import ConfigError, apply_overrides, preset
    with pytest.raises(ConfigError, match=r"loss.o2m_layers=5 .*num_decoder_layers=4"):
        apply_overrides(preset("tiny"), ["loss.o2m_layers=5"])
    apply_overrides(preset("tiny"), ["loss.o2m_layers=4"])
