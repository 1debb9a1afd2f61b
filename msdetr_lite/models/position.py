"""Sine positional encodings: for feature maps (encoder) and for boxes (decoder queries)."""
from __future__ import annotations

import math

import torch
from torch import nn


def _sine(coords: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """coords [..., K] already scaled by 2*pi -> [..., K*num_feats] interleaved sin/cos."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = coords[..., None] / dim_t                                    # [..., K, F]
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """DETR's 2-D sine encoding, normalised to the valid (unpadded) extent of each image.

    mask bool [B, H, W] (True = padding) -> pos [B, 2*num_feats, H, W] (y features then x).
    """

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0):
        super().__init__()
        self.num_feats, self.temperature = num_feats, temperature

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        not_mask = (~mask).float()
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        eps, scale = 1e-6, 2 * math.pi
        y = (y - 0.5) / (y[:, -1:, :] + eps) * scale
        x = (x - 0.5) / (x[:, :, -1:] + eps) * scale
        pos = _sine(torch.stack([y, x], dim=-1), self.num_feats, self.temperature)  # [B, H, W, 2F]
        return pos.permute(0, 3, 1, 2).contiguous()


def box_sine_embed(boxes: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine encoding of normalised boxes [..., 4] (cx, cy, w, h) -> [..., 4*num_feats]."""
    return _sine(boxes * (2 * math.pi), num_feats, temperature)
