"""What both paths of SetCriterion share: the assignment of one image, the GT-count normaliser,
and the IoU-aware focal loss.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Assignment", "iou_aware_focal_loss"]


class Assignment(NamedTuple):
    """The matching of one image for one branch and layer (int64 tensors, query indices
    index the branch's predictions, GT indices the image's original `labels` / `boxes`).

    query_idx, gt_idx:         [N] every (query, GT) pair; the box losses count each pair.
    cls_query_idx, cls_gt_idx: [M] each query at most once; the query's class target is the
                               label of that GT. Equal to the pairs except for `ms`, where a
                               query paired with two GTs keeps the higher-scoring one.
    """
    query_idx: Tensor
    gt_idx: Tensor
    cls_query_idx: Tensor
    cls_gt_idx: Tensor


def _one_to_one_assignment(query_idx: Tensor, gt_idx: Tensor) -> Assignment:
    return Assignment(query_idx, gt_idx, query_idx, gt_idx)


def _num_boxes(targets: list[dict], device: torch.device) -> Tensor:
    """Number of GT boxes per process, averaged over processes, at least 1 (normaliser).

    A 0-d float tensor on `device`, never read back to the host: the count comes from the
    targets' shapes and torch.full writes it without a host -> device copy (no sync)."""
    n = torch.full((), float(sum(len(t["labels"]) for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1.0)


def iou_aware_focal_loss(logits: Tensor, target: Tensor, positive: Tensor,
                         alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Quality-focal style loss with soft targets t in [0, 1] (summed):

        loss = alpha_t * |t - p|^gamma * BCE(p, t),   p = sigmoid(logit),
        alpha_t = alpha on the matched (query, class) entries (`positive`), 1 - alpha elsewhere.

    The matched entry gets t = IoU(predicted box, its GT), all others t = 0. With t = 1 it is
    exactly the sigmoid focal loss, so the IoU target is the only change: a query learns to
    score as high as its box is good, not just "object here".
    """
    return _iou_aware_focal_terms(logits, target, positive, alpha, gamma).sum()


def _iou_aware_focal_terms(logits: Tensor, target: Tensor, positive: Tensor,
                           alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """The elementwise terms of `iou_aware_focal_loss`, same shape as `logits`."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    alpha_t = torch.where(positive, torch.full_like(prob, alpha), torch.full_like(prob, 1 - alpha))
    return alpha_t * (target - prob).abs().pow(gamma) * ce
