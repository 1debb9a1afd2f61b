"""MS-DETR on Deformable-DETR++: the whole detector and the supervision switch.

    images -> ResNet (strides 8/16/32) -> projections (+ stride 64) -> deformable encoder
           -> two-stage proposals (one per token, scored class-agnostically)
           -> top-k proposals become the queries' reference boxes (mixed query selection:
              positions from proposals, content from a learned embedding)
           -> decoder with box refinement and look-forward-twice -> per-layer predictions.

The `supervision` switch decides which extra predictions exist in training:
    o2o     nothing extra (the Deformable-DETR++ baseline)
    ms      o2m predictions of the *same* queries, tapped inside each decoder layer (MS-DETR)
    hybrid  an extra query set trained one-to-one against GTs repeated K times (H-DETR)
    group   G-1 extra query groups, each trained one-to-one (Group-DETR)
Hybrid and group queries are masked from the primary ones in self-attention so the primary
set behaves at inference exactly as it did in training; inference uses the primary set only.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import box_convert, nms

from ..config import ModelConfig
from .backbone import Backbone
from .decoder import MLP, Decoder
from .encoder import Encoder, encoder_proposals
from .position import PositionEmbeddingSine


def group_attention_mask(sizes: list[int], device=None) -> torch.Tensor:
    """Block-diagonal self-attention mask: bool [T, T], True where query i may NOT see query j,
    i.e. where they belong to different groups. sizes: number of queries per group."""
    ids = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
    return ids[:, None] != ids[None, :]


def select_proposals(scores: torch.Tensor, boxes: torch.Tensor, n: int, nms_iou: float = 0.0) -> torch.Tensor:
    """Indices [B, n] of the proposals that become queries: the n best by score, or with nms_iou > 0
    the n best that survive class-agnostic NMS at that IoU (per image, in decreasing score), topped
    up with the best suppressed ones where fewer than n survive.

    scores [B, T] (the encoder's objectness logits); boxes [B, T, 4] normalised cxcywh."""
    if not nms_iou:
        return scores.topk(n, dim=1).indices
    out = []
    for s, b in zip(scores.detach().float(), boxes.detach().float()):
        keep = nms(box_convert(b, "cxcywh", "xyxy"), s, nms_iou)
        if keep.numel() < n:                       # top up: the best of the suppressed, by score
            rest = torch.ones_like(s, dtype=torch.bool)
            rest[keep] = False
            order = s.argsort(descending=True, stable=True)
            keep = torch.cat([keep, order[rest[order]]])
        out.append(keep[:n])
    return torch.stack(out)


class MSDETR(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.d_model
        self.num_queries, self.num_classes = cfg.num_queries, cfg.num_classes
        self.backbone = Backbone(cfg.backbone, cfg.pretrained, cfg.train_backbone, cfg.backbone_norm)
        self.position = PositionEmbeddingSine(d // 2)
        groups = math.gcd(32, d)
        chans = self.backbone.num_channels
        n_from_backbone = min(cfg.num_feature_levels, 3)
        self.backbone_levels = list(range(3 - n_from_backbone, 3))   # which of strides 8/16/32 to use
        proj = [nn.Sequential(nn.Conv2d(chans[i], d, 1), nn.GroupNorm(groups, d)) for i in self.backbone_levels]
        if cfg.num_feature_levels == 4:                               # stride 64 from stride 32
            proj.append(nn.Sequential(nn.Conv2d(chans[-1], d, 3, stride=2, padding=1), nn.GroupNorm(groups, d)))
        self.input_proj = nn.ModuleList(proj)
        self.level_embed = nn.Parameter(torch.empty(cfg.num_feature_levels, d).normal_())
        layer_kwargs = dict(d_model=d, dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout,
                            n_levels=cfg.num_feature_levels, n_heads=cfg.nheads, n_points=cfg.n_points,
                            backend=cfg.deform_backend)
        self.encoder = Encoder(cfg.num_encoder_layers, **layer_kwargs)
        # two-stage: every encoder token proposes a box, scored class-agnostically
        self.enc_output = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
        self.enc_class = nn.Linear(d, 1)
        self.enc_bbox = MLP(d, d, 4, 3)
        nn.init.constant_(self.enc_class.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.enc_bbox.layers[-1].weight)
        nn.init.zeros_(self.enc_bbox.layers[-1].bias)
        tap = cfg.o2m_tap if cfg.supervision == "ms" else None
        self.decoder = Decoder(cfg.num_decoder_layers, d, cfg.nheads, cfg.dim_feedforward, cfg.dropout,
                               cfg.num_feature_levels, cfg.n_points, cfg.num_classes, tap=tap,
                               aux_ffn=cfg.o2m_aux_ffn, look_forward_twice=cfg.look_forward_twice,
                               query_pos=cfg.query_pos, backend=cfg.deform_backend)
        self.num_extra = {"hybrid": cfg.hybrid_num_queries,
                          "group": (cfg.group_num - 1) * cfg.num_queries}.get(cfg.supervision, 0)
        # mixed query selection: content queries are learned, positions come from proposals
        self.tgt_embed = nn.Embedding(cfg.num_queries + self.num_extra, d)
        for p in self.input_proj.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    # -- pieces of forward ---------------------------------------------------------------
    def _flatten_features(self, images, masks):
        feats = self.backbone(images, masks)
        srcs, level_masks = [], []
        for proj, i in zip(self.input_proj, self.backbone_levels):
            srcs.append(proj(feats[i][0]))
            level_masks.append(feats[i][1])
        if len(self.input_proj) > len(self.backbone_levels):
            srcs.append(self.input_proj[-1](feats[-1][0]))
            level_masks.append(nn.functional.interpolate(masks[None].float(), size=srcs[-1].shape[-2:])
                               .to(torch.bool)[0])
        spatial_shapes = torch.as_tensor([s.shape[-2:] for s in srcs], dtype=torch.long, device=images.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([torch.stack([(~m[:, 0, :]).sum(1).float() / m.shape[2],
                                                 (~m[:, :, 0]).sum(1).float() / m.shape[1]], -1)
                                    for m in level_masks], 1)                          # [B, L, 2] (w, h)
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([self.position(m).flatten(2).transpose(1, 2) + self.level_embed[lvl]
                         for lvl, m in enumerate(level_masks)], 1)
        mask = torch.cat([m.flatten(1) for m in level_masks], 1)
        return src, pos, mask, spatial_shapes, level_start_index, valid_ratios

    def _split(self, per_layer, key_logits, key_boxes, sl):
        return [{"logits": o[key_logits][:, sl], "boxes": o[key_boxes][:, sl]} for o in per_layer]

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None,
                return_attention: bool = False, aux_branches: bool | None = None) -> dict:
        """images float [B, 3, H, W]; masks bool [B, H, W] (True = padding) or None.

        aux_branches: compute the training-only predictions (o2m / hybrid / group); defaults to
        self.training. Turn it on in eval mode to inspect the o2m branch.
        Returns the dict described in docs/design.md.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if masks is None:
            masks = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        if masks.shape != (images.shape[0], *images.shape[-2:]) or masks.dtype != torch.bool:
            raise ValueError(f"masks must be bool [B, H, W] = {[images.shape[0], *images.shape[-2:]]}, "
                             f"got {masks.dtype} {tuple(masks.shape)}")
        aux = self.training if aux_branches is None else aux_branches
        Q = self.num_queries
        extra = self.num_extra if aux else 0

        src, pos, mask, spatial_shapes, level_start_index, valid_ratios = self._flatten_features(images, masks)
        memory = self.encoder(src, pos, spatial_shapes, level_start_index, valid_ratios, mask)

        out_memory, proposals, valid = encoder_proposals(memory, mask, spatial_shapes)
        out_memory = self.enc_output(out_memory)
        enc_logits = self.enc_class(out_memory).masked_fill(~valid[..., None], -1e4)
        enc_boxes_unact = self.enc_bbox(out_memory) + proposals

        n_select = Q + (self.num_extra if (aux and self.cfg.supervision == "hybrid") else 0)
        if n_select > enc_logits.shape[1]:
            raise ValueError(f"{n_select} queries need as many encoder proposals, but the image gives only "
                             f"{enc_logits.shape[1]} tokens: use larger images or fewer (hybrid) queries")
        topk = select_proposals(enc_logits[..., 0], enc_boxes_unact.sigmoid(), n_select, self.cfg.proposal_nms)
        ref = torch.gather(enc_boxes_unact, 1, topk[..., None].expand(-1, -1, 4)).detach().sigmoid()
        B = images.shape[0]
        if aux and self.cfg.supervision == "group":
            ref = ref.repeat(1, self.cfg.group_num, 1)
        tgt = self.tgt_embed.weight[:Q + extra][None].expand(B, -1, -1)
        attn_mask = None
        if extra:
            sizes = [Q, extra] if self.cfg.supervision == "hybrid" else [Q] * self.cfg.group_num
            attn_mask = group_attention_mask(sizes, images.device)

        layers = self.decoder(tgt, ref, memory, spatial_shapes, level_start_index, valid_ratios, mask,
                              self_attn_mask=attn_mask, with_o2m=aux and self.cfg.supervision == "ms",
                              return_attention=return_attention)

        primary = slice(0, Q)
        outputs = {
            "o2o": self._split(layers, "logits", "boxes", primary),
            "enc": {"logits": enc_logits, "boxes": enc_boxes_unact.sigmoid()},
            "references": [o["reference"][:, primary] for o in layers],
            "spatial_shapes": spatial_shapes,
            "valid_ratios": valid_ratios,
        }
        if aux and self.cfg.supervision == "ms":
            outputs["o2m"] = self._split(layers, "o2m_logits", "o2m_boxes", slice(None))
        elif extra:
            outputs["o2m"] = self._split(layers, "logits", "boxes", slice(Q, None))
        if return_attention:
            outputs["attention"] = [{"sampling_locations": o["sampling_locations"][:, primary],
                                     "attention_weights": o["attention_weights"][:, primary]} for o in layers]
        return outputs


def build_model(cfg: ModelConfig) -> MSDETR:
    return MSDETR(cfg)
