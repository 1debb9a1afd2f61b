"""Deformable encoder and two-stage proposal generation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MSDeformAttn


class FFN(nn.Module):
    """x -> norm(x + W2 relu(W1 x)); post-norm as in Deformable DETR."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x):
        return self.norm(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class EncoderLayer(nn.Module):
    def __init__(self, d_model, dim_feedforward, dropout, n_levels, n_heads, n_points, backend="auto"):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, dim_feedforward, dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask):
        attn, _, _ = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index,
                                    padding_mask)
        return self.ffn(self.norm(src + self.dropout(attn)))


def encoder_reference_points(spatial_shapes, valid_ratios):
    """Pixel centres of every level, normalised to the valid region, then seen from each level.

    spatial_shapes [L, 2], valid_ratios [B, L, 2] (w, h) -> [B, S, L, 2] (x, y).
    """
    refs = []
    device = valid_ratios.device
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, device=device),
                                torch.linspace(0.5, w - 0.5, w, device=device), indexing="ij")
        ys = ys.reshape(1, -1) / (valid_ratios[:, None, lvl, 1] * h)
        xs = xs.reshape(1, -1) / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((xs, ys), -1))
    refs = torch.cat(refs, 1)
    return refs[:, :, None] * valid_ratios[:, None]


class Encoder(nn.Module):
    def __init__(self, num_layers, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, src, pos, spatial_shapes, level_start_index, valid_ratios, padding_mask):
        """src, pos [B, S, C]; padding_mask [B, S] -> memory [B, S, C]."""
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def encoder_proposals(memory, padding_mask, spatial_shapes):
    """One proposal box per encoder token: its pixel centre with a size that doubles per level.

    memory [B, S, C], padding_mask [B, S], spatial_shapes [L, 2]
    -> (memory with invalid tokens zeroed [B, S, C],
        proposals in inverse-sigmoid space [B, S, 4] (cxcywh; invalid tokens 0),
        valid bool [B, S]).
    Boxes are normalised to each image's valid (unpadded) extent, the convention of targets.
    """
    B = memory.shape[0]
    proposals, start = [], 0
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        mask = padding_mask[:, start:start + h * w].view(B, h, w)
        valid_h = (~mask[:, :, 0]).sum(1).float()
        valid_w = (~mask[:, 0, :]).sum(1).float()
        ys, xs = torch.meshgrid(torch.arange(h, device=memory.device, dtype=torch.float32),
                                torch.arange(w, device=memory.device, dtype=torch.float32), indexing="ij")
        grid = torch.stack([xs, ys], -1)[None] + 0.5                     # [1, h, w, 2]
        scale = torch.stack([valid_w, valid_h], -1).view(B, 1, 1, 2)
        grid = grid / scale
        wh = torch.full_like(grid, 0.05 * (2.0 ** lvl))
        proposals.append(torch.cat([grid, wh], -1).view(B, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    # Tokens on padding, or whose box would sit on the image border, propose nothing.
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1) & ~padding_mask
    proposals = inverse_sigmoid(proposals).masked_fill(~valid[..., None], 0.0)
    memory = memory.masked_fill(~valid[..., None], 0.0)
    return memory, proposals, valid
