"""Turn raw decoder outputs into detections: top-k (query, class) pairs; NMS only on request."""
from __future__ import annotations

from typing import Optional

import torch
from torchvision.ops import batched_nms, box_convert


@torch.no_grad()
def postprocess(outputs: dict, target_sizes: torch.Tensor, k: int = 100, layer: int = -1,
                nms_iou: Optional[float] = None) -> list[dict]:
    """Detections of one decoder layer's o2o predictions.

    outputs: the model's output dict (uses outputs["o2o"][layer]: logits [B, Q, C], boxes [B, Q, 4]
        normalised cxcywh).
    target_sizes: [B, 2] (h, w) in pixels of the images the boxes should be scaled to.
    Returns per image {"scores": [k'], "labels": [k'] int64, "boxes": [k', 4] xyxy pixels},
    k' = min(k, Q*C), sorted by score. A query may appear with several classes (as in
    Deformable DETR); duplicates are the model's job to suppress, that is the point of o2o.

    nms_iou: None (the default: NMS-free, as the detector is meant to run) or an IoU in (0, 1]:
        class-wise NMS (torchvision.ops.batched_nms) over the top-k pairs, as the authors' code
        offers with --nms_iou_threshold. Used to *measure* what duplicates cost: AP with NMS minus
        AP without is the part of the detector's errors that are duplicates. Fewer than k'
        detections may remain, still sorted by score.
    Each dict also has "queries": [k'] the query index of each detection.
    """
    if nms_iou is not None and not 0.0 < float(nms_iou) <= 1.0:
        raise ValueError(f"nms_iou must be None (no NMS) or an IoU in (0, 1], got {nms_iou!r}")
    logits = outputs["o2o"][layer]["logits"]
    boxes = outputs["o2o"][layer]["boxes"]
    B, Q, C = logits.shape
    if target_sizes.shape != (B, 2):
        raise ValueError(f"target_sizes must be [B, 2] = [{B}, 2] (h, w), got {tuple(target_sizes.shape)}")
    prob = logits.sigmoid().flatten(1)                               # [B, Q*C]
    k = min(k, Q * C)
    scores, idx = prob.topk(k, dim=1)
    query = torch.div(idx, C, rounding_mode="floor")
    labels = idx % C
    xyxy = box_convert(boxes, "cxcywh", "xyxy")
    xyxy = torch.gather(xyxy, 1, query.unsqueeze(-1).expand(-1, -1, 4))
    h, w = target_sizes.float().unbind(1)
    xyxy = xyxy * torch.stack([w, h, w, h], dim=1)[:, None, :]
    dets = [{"scores": s, "labels": l, "boxes": b, "queries": q}
            for s, l, b, q in zip(scores, labels, xyxy, query)]
    if nms_iou is None:
        return dets
    # batched_nms returns the kept indices sorted by decreasing score: the order stays the same
    keeps = [batched_nms(d["boxes"].float(), d["scores"].float(), d["labels"], float(nms_iou)) for d in dets]
    return [{name: v[keep] for name, v in d.items()} for d, keep in zip(dets, keeps)]
