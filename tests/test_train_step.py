"""One optimisation step of the `tiny` preset, for every supervision scheme and o2m tap."""
import pytest
import torch

from msdetr_lite.config import preset
from msdetr_lite.losses import SetCriterion
from msdetr_lite.models import build_model

CASES = [("o2o", "after_ca", False), ("ms", "after_ca", False), ("ms", "after_ca", True),
         ("ms", "after_sa", False), ("ms", "output", False), ("hybrid", "after_ca", False),
         ("group", "after_ca", False)]


def _targets(B, C, g):
    out = []
    for b in range(B):
        n = 3 if b else 0                               # an image without objects too
        xy = torch.rand(n, 2, generator=g) * 0.5 + 0.25
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.1
        out.append({"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.cat([xy, wh], 1)})
    return out


@pytest.mark.parametrize("supervision,tap,aux_ffn", CASES)
def test_tiny_training_step(supervision, tap, aux_ffn):
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.model.supervision, cfg.model.o2m_tap, cfg.model.o2m_aux_ffn = supervision, tap, aux_ffn
    cfg.model.deform_backend = "torch"
    model = build_model(cfg.model).train()
    criterion = SetCriterion(cfg.model.num_classes, cfg.loss, cfg.matcher, supervision,
                             cfg.model.num_queries, cfg.model.group_num)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 128, 128, generator=g)
    masks = torch.zeros(2, 128, 128, dtype=torch.bool)
    targets = _targets(2, cfg.model.num_classes, g)

    losses = criterion(model(images, masks), targets)
    L = cfg.model.num_decoder_layers
    assert torch.isfinite(losses["loss"])
    for kind in ("cls", "bbox", "giou"):
        assert f"loss_{kind}_enc" in losses
        for layer in range(L):
            assert f"loss_{kind}_o2o_{layer}" in losses
            assert (f"loss_{kind}_o2m_{layer}" in losses) == (supervision != "o2o")
    before = model.decoder.class_embed[-1].weight.detach().clone()
    opt.zero_grad()
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_max_norm)
    opt.step()
    assert not torch.equal(before, model.decoder.class_embed[-1].weight)
