"""Shapes, o2m tap wiring, hybrid/group masks and parameter counts of the detector."""
import pytest
import torch

from msdetr_lite.models import build_model, group_attention_mask, postprocess

from conftest import micro_model_config

SCHEMES = [("o2o", "after_ca"), ("ms", "after_ca"), ("ms", "after_sa"), ("ms", "output"),
           ("hybrid", "after_ca"), ("group", "after_ca")]


def _batch(B=2, H=64, W=48):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(B, 3, H, W, generator=g)
    masks = torch.zeros(B, H, W, dtype=torch.bool)
    masks[-1, :, W - 16:] = True          # the last image is narrower: padded on the right
    return images, masks


@pytest.mark.parametrize("supervision,tap", SCHEMES)
def test_output_shapes(supervision, tap):
    torch.manual_seed(0)
    cfg = micro_model_config(supervision=supervision, o2m_tap=tap)
    model = build_model(cfg).train()
    images, masks = _batch()
    out = model(images, masks)
    Q, C, L = cfg.num_queries, cfg.num_classes, cfg.num_decoder_layers
    assert len(out["o2o"]) == L and len(out["references"]) == L
    for o in out["o2o"]:
        assert o["logits"].shape == (2, Q, C) and o["boxes"].shape == (2, Q, 4)
        assert ((o["boxes"] >= 0) & (o["boxes"] <= 1)).all()
    S = int(out["spatial_shapes"].prod(1).sum())
    assert out["enc"]["logits"].shape == (2, S, 1) and out["enc"]["boxes"].shape == (2, S, 4)
    assert out["valid_ratios"].shape == (2, cfg.num_feature_levels, 2)
    assert out["valid_ratios"][0].eq(1).all() and out["valid_ratios"][1, 0, 0] < 1
    extra = {"o2o": None, "ms": Q, "hybrid": cfg.hybrid_num_queries, "group": (cfg.group_num - 1) * Q}[supervision]
    if extra is None:
        assert "o2m" not in out
    else:
        assert len(out["o2m"]) == L
        assert out["o2m"][0]["logits"].shape == (2, extra, C) and out["o2m"][0]["boxes"].shape == (2, extra, 4)
    # eval: primary queries only, no training branches
    model.eval()
    with torch.no_grad():
        ev = model(images, masks, return_attention=True)
    assert "o2m" not in ev
    att = ev["attention"][0]
    assert att["sampling_locations"].shape == (2, Q, cfg.nheads, cfg.num_feature_levels, cfg.n_points, 2)
    torch.testing.assert_close(att["attention_weights"].flatten(-2).sum(-1), torch.ones(2, Q, cfg.nheads))


def test_ms_adds_no_parameters_over_o2o():
    count = lambda **kw: sum(p.numel() for p in build_model(micro_model_config(**kw)).parameters())
    base = count(supervision="o2o")
    assert count(supervision="ms", o2m_tap="after_ca") == base
    assert count(supervision="ms", o2m_tap="after_sa") == base
    assert count(supervision="ms", o2m_tap="after_ca", o2m_aux_ffn=True) > base
    assert count(supervision="ms", o2m_tap="output") > base      # separate o2m class heads
    assert count(supervision="hybrid") > base and count(supervision="group") > base


def _grads(model):
    return {n: p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()}


def test_o2m_gradient_reaches_tap_after_ca_and_not_later_modules():
    torch.manual_seed(0)
    model = build_model(micro_model_config(supervision="ms", o2m_tap="after_ca", look_forward_twice=False)).train()
    out = model(*_batch())
    # only layer 0's o2m prediction
    (out["o2m"][0]["logits"].sum() + out["o2m"][0]["boxes"].sum()).backward()
    g = _grads(model)
    layer0 = "decoder.layers.0."
    assert any(v for n, v in g.items() if n.startswith(layer0 + "cross_attn")), "CA before the tap learns from o2m"
    assert any(v for n, v in g.items() if n.startswith("encoder.")), "o2m reaches the encoder"
    assert not any(v for n, v in g.items() if n.startswith(layer0 + "self_attn")), "SA after the tap must not"
    assert not any(v for n, v in g.items() if n.startswith(layer0 + "ffn")), "FFN after the tap must not"
    assert not any(v for n, v in g.items() if n.startswith("decoder.layers.1.")), "later layers must not"


def test_o2m_gradient_after_sa_tap():
    torch.manual_seed(0)
    model = build_model(micro_model_config(supervision="ms", o2m_tap="after_sa", look_forward_twice=False)).train()
    out = model(*_batch())
    out["o2m"][0]["logits"].sum().backward()
    g = _grads(model)
    assert any(v for n, v in g.items() if n.startswith("decoder.layers.0.self_attn"))
    assert not any(v for n, v in g.items() if n.startswith("decoder.layers.0.cross_attn.sampling_offsets"))


def test_o2m_side_stream_does_not_leak_into_next_layer():
    """With the aux FFN on the tap, changing it changes o2m predictions but no o2o prediction."""
    torch.manual_seed(0)
    model = build_model(micro_model_config(supervision="ms", o2m_aux_ffn=True)).train()
    images, masks = _batch()
    torch.manual_seed(1)
    before = model(images, masks)
    with torch.no_grad():
        for p in model.decoder.layers[0].aux_ffn.parameters():
            p.add_(torch.randn_like(p))
    after = model(images, masks)
    for a, b in zip(before["o2o"], after["o2o"]):
        torch.testing.assert_close(a["logits"], b["logits"])
        torch.testing.assert_close(a["boxes"], b["boxes"])
    assert not torch.allclose(before["o2m"][0]["logits"], after["o2m"][0]["logits"])


def test_look_forward_twice_passes_gradient_to_previous_layer():
    images, masks = _batch()
    for lft, expect in [(True, True), (False, False)]:
        torch.manual_seed(0)
        model = build_model(micro_model_config(supervision="o2o", look_forward_twice=lft)).train()
        out = model(images, masks)
        out["o2o"][1]["boxes"].sum().backward()      # layer 1's box loss only
        g = model.decoder.bbox_embed[0].layers[-1].weight.grad
        assert (g is not None and g.abs().sum() > 0) == expect


@pytest.mark.parametrize("query_pos, embeds", [("proposal", 1), ("reference", 4)])
def test_query_pos_fixed_or_per_layer(query_pos, embeds):
    """"proposal" embeds each query's position once, from its proposal box, and every layer sees
    it; "reference" re-embeds the refined box before each of the 4 layers."""
    torch.manual_seed(0)
    model = build_model(micro_model_config(supervision="o2o", num_decoder_layers=4, query_pos=query_pos)).eval()
    with torch.no_grad():  # box heads start at zero; let them move the boxes
        for head in model.decoder.bbox_embed:
            head.layers[-1].weight.normal_(std=0.1)
    seen = []
    model.decoder.ref_point_head.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    images, masks = _batch()
    out = model(images, masks)
    assert len(seen) == embeds
    refs = out["references"]
    assert not torch.allclose(refs[0], refs[-1])      # the boxes do move between layers
    if query_pos == "reference":
        assert not torch.allclose(seen[0], seen[-1])


def test_group_attention_mask():
    m = group_attention_mask([2, 3])
    expected = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0],
                             [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(m, expected)


@pytest.mark.parametrize("supervision", ["hybrid", "group"])
def test_extra_queries_do_not_change_primary_predictions(supervision):
    """Masked self-attention: the primary set predicts exactly the same with or without the
    extra hybrid / group queries, so training them cannot change inference."""
    torch.manual_seed(0)
    model = build_model(micro_model_config(supervision=supervision)).eval()
    images, masks = _batch()
    with torch.no_grad():
        alone = model(images, masks, aux_branches=False)
        together = model(images, masks, aux_branches=True)
    assert "o2m" in together and "o2m" not in alone
    for a, b in zip(alone["o2o"], together["o2o"]):
        torch.testing.assert_close(a["logits"], b["logits"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-5)


def test_unmasked_groups_would_interact():
    """The converse of the test above: the mask is what keeps the sets apart."""
    import msdetr_lite.models.detector as det
    torch.manual_seed(0)
    model = build_model(micro_model_config(supervision="group")).eval()
    images, masks = _batch()
    with torch.no_grad():
        alone = model(images, masks, aux_branches=False)
        orig = det.group_attention_mask
        det.group_attention_mask = lambda sizes, device=None: torch.zeros(sum(sizes), sum(sizes), dtype=torch.bool)
        try:
            together = model(images, masks, aux_branches=True)
        finally:
            det.group_attention_mask = orig
    assert not torch.allclose(alone["o2o"][-1]["logits"], together["o2o"][-1]["logits"], atol=1e-5)


def test_postprocess_topk_and_scaling():
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 1, 0], logits[0, 2, 1] = 5.0, 2.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]]])
    det = postprocess({"o2o": [{"logits": logits, "boxes": boxes}]}, torch.tensor([[100, 200]]), k=2)[0]
    assert det["labels"].tolist() == [0, 1] and det["queries"].tolist() == [1, 2]
    torch.testing.assert_close(det["boxes"][0], torch.tensor([0.0, 0.0, 100.0, 100.0]))
    assert det["scores"][0] > det["scores"][1]


def test_bad_inputs_name_the_problem():
    model = build_model(micro_model_config()).eval()
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\]"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="masks must be bool"):
        model(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="supervision"):
        build_model(micro_model_config(supervision="one-to-many"))
    with pytest.raises(ValueError, match="queries need as many encoder proposals"):
        build_model(micro_model_config(num_queries=500)).eval()(torch.randn(1, 3, 96, 96))


def test_select_proposals_nms_by_hand():
    """Three proposals on one object (IoU ~0.8 with each other) and one elsewhere: top-2 by score
    takes two of the same object; with NMS at 0.7 the second query goes to the other object; where
    NMS leaves fewer than n, the best suppressed ones top the selection up, in score order."""
    from msdetr_lite.models.detector import select_proposals
    boxes = torch.tensor([[[0.50, 0.50, 0.20, 0.20], [0.51, 0.50, 0.20, 0.20], [0.49, 0.50, 0.20, 0.20],
                           [0.10, 0.10, 0.10, 0.10]]])
    scores = torch.tensor([[3.0, 2.5, 2.0, 1.0]])
    assert select_proposals(scores, boxes, 2).tolist() == [[0, 1]]
    assert select_proposals(scores, boxes, 2, nms_iou=0.7).tolist() == [[0, 3]]
    assert select_proposals(scores, boxes, 4, nms_iou=0.7).tolist() == [[0, 3, 1, 2]]
    assert select_proposals(scores, boxes, 2, nms_iou=0.99).tolist() == [[0, 1]]   # nothing that close


@pytest.mark.parametrize("nms_iou", [0.0, 0.7])
def test_proposal_nms_model_runs_and_differs(nms_iou):
    """model.proposal_nms changes which proposals seed the queries (0 = off, the method's top-k)."""
    torch.manual_seed(0)
    model = build_model(micro_model_config(supervision="ms", proposal_nms=nms_iou)).eval()
    torch.manual_seed(0)
    plain = build_model(micro_model_config(supervision="ms")).eval()
    with torch.no_grad():                 # large proposals overlap: something for NMS to remove
        for m in (model, plain):
            m.enc_bbox.layers[-1].bias[2:] = 8.0
    images, masks = _batch()
    with torch.no_grad():
        a, b = model(images, masks)["references"][0], plain(images, masks)["references"][0]
    assert a.shape == b.shape
    assert torch.equal(a, b) == (nms_iou == 0.0)
