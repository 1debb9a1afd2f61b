"""Matchers, per image: which query learns from which ground truth (GT); the readable reference.

Two ways to assign GTs to queries, both without gradients:

* `one_to_one` (o2o): Hungarian matching as in DETR. Each GT gets exactly one query, so the
  detector learns to predict every object once and needs no NMS.
* `one_to_many` (o2m): MS-DETR's matcher. Each GT also gets its top-K best-scoring queries,
  a denser training signal for the same queries (see docs/method.md, "The one-to-many matcher").
  The steps are exposed one by one (`match_scores`, `select_positives`, `topk_per_gt`,
  `o2m_class_targets`) so the notebooks can show each of them.

Conventions for every function here:
    pred_logits [Q, C]  raw class logits (sigmoid classification, no "no-object" class)
    pred_boxes  [Q, 4]  (cx, cy, w, h), normalised to [0, 1]
    gt_labels   [G]     int64 in 0..C-1
    gt_boxes    [G, 4]  (cx, cy, w, h), normalised to [0, 1]
Indices are returned as int64 tensors on the device of `pred_logits`.

The batched versions (`matching/batched.py`) compute the same for every layer and image of a
training step at once; SetCriterion uses them in training.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, box_iou, generalized_box_iou

# Boxes narrower than this are widened before IoU / GIoU so that two degenerate boxes
# (zero width or height) never give 0 / 0. Far below any real box, so values barely move.
_MIN_SIZE = 1e-6
# Stand-in for non-finite matching costs: scipy refuses NaN / inf, and such a pair should
# only be chosen when nothing else is left.
_HUGE_COST = 1e8


def _check_inputs(pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor) -> None:
    """Raise a ValueError that names the offending argument and the expected shape."""
    if pred_logits.dim() != 2:
        raise ValueError(f"pred_logits must be [Q, C], got shape {tuple(pred_logits.shape)}")
    q, c = pred_logits.shape
    if pred_boxes.shape != (q, 4):
        raise ValueError(f"pred_boxes must be [Q, 4] = [{q}, 4] (cx, cy, w, h), got shape {tuple(pred_boxes.shape)}")
    if gt_labels.dim() != 1:
        raise ValueError(f"gt_labels must be [G], got shape {tuple(gt_labels.shape)}")
    g = gt_labels.shape[0]
    if gt_boxes.shape != (g, 4):
        raise ValueError(f"gt_boxes must be [G, 4] = [{g}, 4] (cx, cy, w, h), got shape {tuple(gt_boxes.shape)}")
    if gt_labels.dtype.is_floating_point or gt_labels.dtype == torch.bool:
        raise ValueError(f"gt_labels must hold integer class indices, got dtype {gt_labels.dtype}")
    if g > 0 and (int(gt_labels.min()) < 0 or int(gt_labels.max()) >= c):
        raise ValueError(f"gt_labels must lie in 0..{c - 1} (C = pred_logits.shape[1]), "
                         f"got values in {int(gt_labels.min())}..{int(gt_labels.max())}")


def _xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) [..., 4] -> (x1, y1, x2, y2), with w and h at least _MIN_SIZE (no 0 / 0 later)."""
    boxes = torch.cat([boxes[..., :2], boxes[..., 2:].clamp(min=_MIN_SIZE)], dim=-1)
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def _empty_pair(device) -> tuple[Tensor, Tensor]:
    empty = torch.empty(0, dtype=torch.int64, device=device)
    return empty, empty.clone()


def focal_class_cost(pred_logits: Tensor, gt_labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Classification cost of Deformable DETR, [Q, G]: how much the focal loss of query q would
    drop if it were told "you are class label_g".

        cost = alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p)),  p = sigmoid(logit[q, label_g])
    """
    return _focal_cost_of_prob(pred_logits.float().sigmoid()[:, gt_labels], alpha, gamma)   # [Q, G]


def _focal_cost_of_prob(prob: Tensor, alpha: float, gamma: float) -> Tensor:
    """`focal_class_cost` from the probabilities p of the GT classes (any shape)."""
    pos = alpha * (1 - prob) ** gamma * (-(prob + 1e-8).log())
    neg = (1 - alpha) * prob ** gamma * (-(1 - prob + 1e-8).log())
    return pos - neg


@torch.no_grad()
def one_to_one(pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor,
               cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
               focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> tuple[Tensor, Tensor]:
    """Hungarian (one-to-one) matching of one image.

    cost[q, g] = cost_class * focal_class_cost + cost_bbox * L1(box_q, gt_g) + cost_giou * (-GIoU)

    Returns (query_idx, gt_idx), int64 [min(Q, G)] each, **sorted by query index**; query
    query_idx[i] is matched to GT gt_idx[i]. Every query and every GT appears at most once.
    G = 0 gives two empty tensors; G > Q leaves G - Q GTs unmatched.
    """
    _check_inputs(pred_logits, pred_boxes, gt_labels, gt_boxes)
    device = pred_logits.device
    if gt_labels.numel() == 0 or pred_logits.shape[0] == 0:
        return _empty_pair(device)

    boxes, gts = pred_boxes.float(), gt_boxes.float()
    cost = (cost_class * focal_class_cost(pred_logits, gt_labels, focal_alpha, focal_gamma)
            + cost_bbox * torch.cdist(boxes, gts, p=1)
            - cost_giou * generalized_box_iou(_xyxy(boxes), _xyxy(gts)))
    cost = torch.nan_to_num(cost, nan=_HUGE_COST, posinf=_HUGE_COST, neginf=-_HUGE_COST)

    # scipy returns the row (query) indices in increasing order: that is our sort order.
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return (torch.as_tensor(rows, dtype=torch.int64, device=device),
            torch.as_tensor(cols, dtype=torch.int64, device=device))


# ----------------------------------------------------------------------------------------------
# The one-to-many matcher of MS-DETR, step by step.
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def match_scores(pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor,
                 alpha: float = 0.3) -> Tensor:
    """Step 1: S[g, q] = alpha * sigmoid(logit[q, label_g]) + (1 - alpha) * IoU(box_q, gt_g).

    Returns S, float [G, Q], in [0, 1]. Additive, as in the authors' code (not TOOD's product).
    """
    _check_inputs(pred_logits, pred_boxes, gt_labels, gt_boxes)
    cls = pred_logits.float().sigmoid()[:, gt_labels].T                 # [G, Q]
    iou = box_iou(_xyxy(gt_boxes.float()), _xyxy(pred_boxes.float()))     # [G, Q]
    return torch.nan_to_num(alpha * cls + (1 - alpha) * iou, nan=0.0)


@torch.no_grad()
def select_positives(scores: Tensor, tau: float = 0.4, max_pos: Optional[int] = None,
                     generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Steps 2-4 on S [G, Q]: which queries are positive, and for which GT.

    2. best GT of each query g*(q) = argmax_g S[g, q]; positive if S[g*(q), q] >= tau.
    3. low-quality rule: each GT's highest-scoring query is positive too, but keeps g*(q) as
       its GT (so a GT whose best query prefers another GT may end up with no positive).
    4. if more than `max_pos` positives, keep a random subset of `max_pos` (drawn with
       `generator`, a torch.Generator, for reproducibility; None = the global RNG).

    Returns (best_gt, positive): int64 [Q] (g*(q); 0 when G = 0) and bool [Q].
    """
    num_gt, num_queries = scores.shape
    if num_gt == 0 or num_queries == 0:
        zeros = torch.zeros(num_queries, dtype=torch.int64, device=scores.device)
        return zeros, torch.zeros(num_queries, dtype=torch.bool, device=scores.device)

    best_score, best_gt = scores.max(dim=0)                      # step 2
    positive = best_score >= tau
    positive[scores.argmax(dim=1)] = True                        # step 3

    pos_idx = positive.nonzero().squeeze(1)                      # step 4
    if max_pos is not None and pos_idx.numel() > max_pos:
        gen_device = generator.device if generator is not None else "cpu"
        perm = torch.randperm(pos_idx.numel(), generator=generator, device=gen_device)
        keep = pos_idx[perm[:max_pos].to(scores.device)]
        positive = torch.zeros_like(positive)
        positive[keep] = True
    return best_gt, positive


@torch.no_grad()
def topk_per_gt(scores: Tensor, best_gt: Tensor, positive: Tensor, k: int = 6) -> tuple[Tensor, Tensor]:
    """Step 5: each GT g with c_g > 0 positives (queries with g*(q) = g) gets as o2m targets the
    top min(c_g, K) queries of its row S[g, :], searched over ALL queries (not only its own
    positives: c_g only decides how many).

    Returns (query_idx, gt_idx), int64 [N] with N = sum_g min(c_g, K), ordered by GT and, within
    a GT, by decreasing score. A query may appear under two GTs.
    """
    num_gt, num_queries = scores.shape
    device = scores.device
    if num_gt == 0 or num_queries == 0:
        return _empty_pair(device)
    counts = torch.bincount(best_gt[positive], minlength=num_gt)  # c_g, [G]
    take = counts.clamp(max=k)                                   # min(c_g, K)
    width = int(take.max())
    if width == 0:
        return _empty_pair(device)
    top_q = scores.topk(width, dim=1).indices                     # [G, width], best first
    keep = torch.arange(width, device=device)[None, :] < take[:, None]
    gt_idx = torch.arange(num_gt, device=device)[:, None].expand(num_gt, width)
    return top_q[keep], gt_idx[keep]


@torch.no_grad()
def o2m_class_targets(query_idx: Tensor, gt_idx: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Step 6: a query paired with two GTs gets its class target from the higher-scoring pair.

    Takes the o2m pairs and S [G, Q]; returns (query_idx, gt_idx) with each query once, sorted
    by query index. Ties go to the lower GT index. Box losses keep every pair.
    """
    if query_idx.numel() == 0:
        return query_idx, gt_idx
    pair_score = scores[gt_idx, query_idx]
    # Order by (query, score desc, gt asc) with stable sorts, then keep each query's first pair.
    order = torch.argsort(gt_idx, stable=True)
    order = order[torch.argsort(pair_score[order], descending=True, stable=True)]
    order = order[torch.argsort(query_idx[order], stable=True)]
    q, g = query_idx[order], gt_idx[order]
    first = torch.ones_like(q, dtype=torch.bool)
    first[1:] = q[1:] != q[:-1]
    return q[first], g[first]


@torch.no_grad()
def one_to_many(pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor,
                k: int = 6, tau: float = 0.4, alpha: float = 0.3, max_pos_fraction: float = 0.25,
                generator: Optional[torch.Generator] = None, return_scores: bool = False):
    """MS-DETR's one-to-many matching of one image (the six steps of docs/method.md).

    k:                K, at most this many queries per GT.
    tau:              score threshold for a positive (step 2).
    alpha:            weight of the class probability in S (step 1); IoU gets 1 - alpha.
    max_pos_fraction: at most floor(max_pos_fraction * Q) positives before step 5 (step 4), as
                      in the authors' code (Q < 4 with 0.25 thus gives no o2m targets).
    generator:        torch.Generator for the random subset of step 4.

    Returns (query_idx, gt_idx), int64 [N], ordered by GT then decreasing score; a query may
    be paired with two GTs (both pairs are returned: box losses count each, the class target
    comes from `o2m_class_targets`). With return_scores also S, float [G, Q].
    """
    scores = match_scores(pred_logits, pred_boxes, gt_labels, gt_boxes, alpha)
    max_pos = int(math.floor(max_pos_fraction * pred_logits.shape[0] + 1e-9))
    best_gt, positive = select_positives(scores, tau, max_pos, generator)
    query_idx, gt_idx = topk_per_gt(scores, best_gt, positive, k)
    if return_scores:
        return query_idx, gt_idx, scores
    return query_idx, gt_idx
