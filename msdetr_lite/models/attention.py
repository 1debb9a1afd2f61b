"""The multi-scale deformable attention module (Deformable DETR, Zhu et al. 2021).

Each query looks at P learned sampling points per head and per feature level, around its
reference point (or inside its reference box), and mixes them with softmax weights over all
L*P points of a head. The sampling itself is `msdetr_lite.ops.ms_deform_attn`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import ms_deform_attn


class MSDeformAttn(nn.Module):
    """query [N, Lq, C], reference_points [N, Lq, L, 2] (x, y) or [N, Lq, L, 4] (cx, cy, w, h),
    normalised and already scaled to each level's valid region; value [N, S, C];
    spatial_shapes int64 [L, 2] (H, W); level_start_index int64 [L];
    padding_mask bool [N, S] (True = padding) or None.

    Returns out [N, Lq, C], sampling_locations [N, Lq, M, L, P, 2], attention_weights [N, Lq, M, L, P].
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 backend: str = "auto"):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.backend = backend
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        # Start with each head looking in its own direction, the k-th point k steps away, so
        # early training already sees a spread-out neighbourhood instead of one pixel.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query, reference_points, value, spatial_shapes, level_start_index, padding_mask=None):
        N, Lq, _ = query.shape
        S = value.shape[1]
        M, L, P = self.n_heads, self.n_levels, self.n_points
        if reference_points.shape[:3] != (N, Lq, L) or reference_points.shape[-1] not in (2, 4):
            raise ValueError(f"reference_points must be [N, Lq, L, 2|4] = [{N}, {Lq}, {L}, 2|4], "
                             f"got {tuple(reference_points.shape)}")
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(N, S, M, self.d_model // M)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(N, Lq, M, L * P).softmax(-1).view(N, Lq, M, L, P)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by that level's (W, H)
            normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(offsets)
            loc = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        else:
            # offsets are relative to the reference box: at most half its size per unit step / P
            loc = (reference_points[:, :, None, :, None, :2]
                   + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)
        out = ms_deform_attn(v, spatial_shapes, level_start_index, loc, weights, backend=self.backend)
        return self.output_proj(out), loc, weights
