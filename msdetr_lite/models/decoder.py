"""The decoder: one layer with an o2m tap, iterative box refinement, look-forward-twice.

Where o2m supervision taps the layer (the paper's Fig. 4):

    tap=None        SA -> CA -> FFN                    plain Deformable DETR layer (o2o, hybrid, group)
    tap="after_ca"  CA -> [o2m] -> SA -> FFN           the released MS-DETR layer, Fig. 4(c)
    tap="after_sa"  SA -> [o2m] -> CA -> FFN           Fig. 4(d)
    tap="output"    SA -> CA -> FFN -> [o2m]           Fig. 4(a): both branches see the output,
                                                       so o2m needs its own class heads

Only the o2o stream flows to the next layer; the o2m stream is a side output for training.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QUERY_POS
from .attention import MSDeformAttn
from .encoder import FFN, inverse_sigmoid
from .position import box_sine_embed

TAPS = (None, "after_ca", "after_sa", "output")


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, in_dim, hidden_dim, out_dim, num_layers):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DecoderLayer(nn.Module):
    def __init__(self, d_model, nheads, dim_feedforward, dropout, n_levels, n_points,
                 tap=None, aux_ffn=False, backend="auto"):
        super().__init__()
        if tap not in TAPS:
            raise ValueError(f"o2m tap {tap!r} unknown; expected one of {TAPS}")
        self.tap = tap
        self.cross_attn = MSDeformAttn(d_model, n_levels, nheads, n_points, backend)
        self.norm_ca = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.norm_sa = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, dim_feedforward, dropout)
        self.dropout = nn.Dropout(dropout)
        self.aux_ffn = FFN(d_model, dim_feedforward, dropout) if (aux_ffn and tap is not None) else None

    def _sa(self, tgt, pos, attn_mask):
        q = k = tgt + pos
        out = self.self_attn(q, k, tgt, attn_mask=attn_mask, need_weights=False)[0]
        return self.norm_sa(tgt + self.dropout(out))

    def _ca(self, tgt, pos, ref, memory, spatial_shapes, level_start_index, memory_mask):
        out, loc, w = self.cross_attn(tgt + pos, ref, memory, spatial_shapes, level_start_index, memory_mask)
        return self.norm_ca(tgt + self.dropout(out)), loc, w

    def _o2m(self, tgt):
        return self.aux_ffn(tgt) if self.aux_ffn is not None else tgt

    def forward(self, tgt, pos, ref, memory, spatial_shapes, level_start_index, memory_mask,
                self_attn_mask=None, with_o2m=True):
        """tgt, pos [B, Q, C]; ref [B, Q, L, 4] (scaled to each level's valid region);
        memory [B, S, C]; self_attn_mask bool [Q, Q] (True = may not attend) or None.

        Returns (tgt_o2o [B, Q, C] for the next layer, tgt_o2m [B, Q, C] or None,
                 sampling_locations [B, Q, M, L, P, 2], attention_weights [B, Q, M, L, P]).
        """
        ca = (ref, memory, spatial_shapes, level_start_index, memory_mask)
        tgt_o2m = None
        if self.tap == "after_ca":
            tgt, loc, w = self._ca(tgt, pos, *ca)
            if with_o2m:
                tgt_o2m = self._o2m(tgt)
            tgt = self._sa(tgt, pos, self_attn_mask)
        else:
            tgt = self._sa(tgt, pos, self_attn_mask)
            if self.tap == "after_sa" and with_o2m:
                tgt_o2m = self._o2m(tgt)
            tgt, loc, w = self._ca(tgt, pos, *ca)
        tgt = self.ffn(tgt)
        if self.tap == "output" and with_o2m:
            tgt_o2m = self._o2m(tgt)
        return tgt, tgt_o2m, loc, w


class Decoder(nn.Module):
    """Stack of DecoderLayer with per-layer heads and iterative box refinement.

    Box refinement: layer l predicts a delta on its reference box (inverse-sigmoid space); the
    refined box is layer l+1's reference. The reference fed to attention is detached so each
    layer learns a residual; with look-forward-twice (DINO) the *prediction* of layer l uses the
    undetached reference, so layer l's loss also refines layer l-1's box.
    """

    def __init__(self, num_layers, d_model, nheads, dim_feedforward, dropout, n_levels, n_points,
                 num_classes, tap=None, aux_ffn=False, look_forward_twice=True, query_pos="proposal",
                 backend="auto"):
        super().__init__()
        if query_pos not in QUERY_POS:
            raise ValueError(f"query_pos {query_pos!r} unknown; expected one of {QUERY_POS}")
        self.query_pos = query_pos
        layer = DecoderLayer(d_model, nheads, dim_feedforward, dropout, n_levels, n_points, tap, aux_ffn, backend)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.d_model, self.tap, self.look_forward_twice = d_model, tap, look_forward_twice
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.class_embed = nn.ModuleList(nn.Linear(d_model, num_classes) for _ in range(num_layers))
        self.bbox_embed = nn.ModuleList(MLP(d_model, d_model, 4, 3) for _ in range(num_layers))
        # The o2m branch shares the o2o heads, except when both read the same layer output
        # (Fig. 4(a)): then identical features would need identical scores for one query that
        # o2o wants unique and o2m wants duplicated, so o2m gets its own class heads.
        self.o2m_class_embed = (nn.ModuleList(nn.Linear(d_model, num_classes) for _ in range(num_layers))
                                if tap == "output" else None)
        prior_bias = -torch.log(torch.tensor((1 - 0.01) / 0.01)).item()
        for head in list(self.class_embed) + list(self.o2m_class_embed or []):
            nn.init.constant_(head.bias, prior_bias)
        for head in self.bbox_embed:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def forward(self, tgt, ref_boxes, memory, spatial_shapes, level_start_index, valid_ratios,
                memory_mask, self_attn_mask=None, with_o2m=False, return_attention=False):
        """tgt [B, T, C] content queries; ref_boxes [B, T, 4] cxcywh initial references (detached).

        Returns a list over layers of dicts with "logits" [B, T, K], "boxes" [B, T, 4],
        "reference" [B, T, 4] (the layer's input box), optionally "o2m_logits"/"o2m_boxes" and
        "sampling_locations"/"attention_weights".
        """
        level_scale = torch.cat([valid_ratios, valid_ratios], -1)[:, None]       # [B, 1, L, 4]
        ref = ref_boxes
        outs = []
        for l, layer in enumerate(self.layers):
            ref_in = ref.detach()
            if l == 0 or self.query_pos == "reference":    # "proposal": layer 0's, kept
                pos = self.ref_point_head(box_sine_embed(ref_in, self.d_model // 2))
            tgt, tgt_o2m, loc, w = layer(tgt, pos, ref_in[:, :, None] * level_scale, memory, spatial_shapes,
                                         level_start_index, memory_mask, self_attn_mask, with_o2m)
            ref_pred = inverse_sigmoid(ref if self.look_forward_twice else ref_in)
            boxes = (self.bbox_embed[l](tgt) + ref_pred).sigmoid()
            out = {"logits": self.class_embed[l](tgt), "boxes": boxes, "reference": ref_in}
            if tgt_o2m is not None:
                cls_head = self.o2m_class_embed[l] if self.o2m_class_embed is not None else self.class_embed[l]
                out["o2m_logits"] = cls_head(tgt_o2m)
                # o2m boxes refine the same reference as o2o boxes; only o2o refines onwards
                out["o2m_boxes"] = (self.bbox_embed[l](tgt_o2m) + ref_pred).sigmoid()
            if return_attention:
                out["sampling_locations"], out["attention_weights"] = loc, w
            outs.append(out)
            ref = boxes
        return outs
