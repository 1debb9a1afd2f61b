"""ResNet trunk returning multi-scale features at strides 8, 16 and 32.

The stride-64 level of Deformable DETR is made from the stride-32 map by the detector's input
projection (a strided 3x3 conv), not here, so this module stays a plain feature extractor.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.ops import FrozenBatchNorm2d

_TRUNKS = {"resnet18": (resnet18, (128, 256, 512)),
           "resnet34": (resnet34, (128, 256, 512)),
           "resnet50": (resnet50, (512, 1024, 2048))}
NORMS = ("frozen_bn", "bn")


class Backbone(nn.Module):
    """torchvision ResNet without its classifier.

    images [B, 3, H, W], masks bool [B, H, W] (True = padding)
    -> list of (features [B, C_i, H/s, W/s], masks bool [B, H/s, W/s]) for s = 8, 16, 32.

    norm="frozen_bn" is the detection convention (statistics of a pretrained trunk, frozen:
    batches of a few large images make poor BatchNorm statistics). From random init there are
    no statistics to freeze, so the `tiny` preset trains ordinary BatchNorm instead ("bn").
    """

    def __init__(self, name: str = "resnet50", pretrained: str | None = None,
                 train_backbone: bool = True, norm: str = "frozen_bn"):
        super().__init__()
        if name not in _TRUNKS:
            raise ValueError(f"backbone {name!r} unknown; expected one of {sorted(_TRUNKS)}")
        if norm not in NORMS:
            raise ValueError(f"backbone norm {norm!r} unknown; expected one of {NORMS}")
        ctor, self.num_channels = _TRUNKS[name]
        trunk = ctor(weights=None, norm_layer=FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d)
        if pretrained:
            load_torchvision_weights(trunk, pretrained)
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        # DETR's convention: with pretrained weights the stem and layer1 stay frozen (generic
        # edges); from scratch everything must learn.
        for mod_name, module in [("stem", self.stem), ("layer1", self.layer1), ("layer2", self.layer2),
                                 ("layer3", self.layer3), ("layer4", self.layer4)]:
            trainable = train_backbone and not (pretrained and mod_name in ("stem", "layer1"))
            for p in module.parameters():
                p.requires_grad_(trainable)

    def forward(self, images: torch.Tensor, masks: torch.Tensor):
        x = self.layer1(self.stem(images))
        outs = []
        for layer in (self.layer2, self.layer3, self.layer4):
            x = layer(x)
            m = F.interpolate(masks[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            outs.append((x, m))
        return outs


def load_torchvision_weights(trunk: nn.Module, path: str) -> None:
    """Load a local torchvision ResNet state dict (e.g. resnet50-0676ba61.pth). Never downloads."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained backbone weights not found: {path} "
                                "(give a local torchvision ResNet state dict; nothing is downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} does not match the backbone: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
