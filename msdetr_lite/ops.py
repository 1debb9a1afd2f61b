"""Multi-scale deformable attention: one entry point, several backends.

Placeholder-free minimal version: the plain PyTorch (grid_sample) reference. The kernels issue
extends this file with numba and CUDA backends behind the same signature.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn_torch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Reference: value [N, S, M, D], sampling_locations [N, Lq, M, L, P, 2] in [0, 1] (x, y),
    attention_weights [N, Lq, M, L, P] -> [N, Lq, M*D]."""
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_list = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1            # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(N * M, D, int(h), int(w))
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)   # [N*M, Lq, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [N*M, D, Lq, L*P] weighted by [N*M, 1, Lq, L*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    w = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (stacked * w).sum(-1).view(N, M * D, Lq)
    return out.transpose(1, 2).contiguous()


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                   backend: str = "auto"):
    return ms_deform_attn_torch(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights)
