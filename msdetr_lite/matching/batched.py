"""Batched matchers: every decoder layer and every image of a branch in one set of tensor ops.

The per-image functions of `matching/reference.py` are the readable reference; the ones below compute the same
assignments for predictions stacked over layers, [L, B, Q, C] / [L, B, Q, 4], against GTs
padded to the batch's largest count Gmax (`pad_targets`). The Hungarian solves still run on the
host (scipy), but all cost matrices of a training step travel there in ONE copy and the
indices come back in ONE copy (`hungarian_solve`, DETR's matcher pattern). The one-to-many
matcher runs entirely on the device and never waits for it (`batched_one_to_many`).

Equality with the reference: the same operations in the same order, so on the same device
the assignments are the same, except where two candidates score equally to the last bit (or
within the last bit: CPU kernels may round a vectorised element and a tail element of the
same value differently): there either choice is optimal and the two paths may pick
differently. The batched top-K breaks ties by the lower query index (stable sort).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_iou, generalized_box_iou

from .reference import _HUGE_COST, _focal_cost_of_prob, _xyxy

# Box given to padding GT slots: finite, non-degenerate, so costs and losses computed on padding
# (then masked out) are never NaN and never leak NaN gradients through a zero weight.
_PAD_BOX = (0.5, 0.5, 1.0, 1.0)           # (cx, cy, w, h): the whole image


class PaddedTargets(NamedTuple):
    """The GTs of a batch, padded to Gmax = max(1, max_b G_b) (at least one column, so that
    gathers by a clamped GT index stay valid in a batch without any GT).

    labels: int64 [B, Gmax], 0 on padding.
    boxes:  float32 [B, Gmax, 4] (cx, cy, w, h) normalised, _PAD_BOX on padding.
    mask:   bool [B, Gmax], True on real GTs.
    sizes:  G_b per image, host ints (known from the shapes: no device sync).
    """
    labels: Tensor
    boxes: Tensor
    mask: Tensor
    sizes: tuple


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Host -> device copy that does not wait for the device (pinned + non_blocking)."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def pad_targets(labels: Sequence[Tensor], boxes: Sequence[Tensor], device=None,
                num_classes: Optional[int] = None) -> PaddedTargets:
    """Stack per-image GTs (labels int [G_b], boxes [G_b, 4] cxcywh) into `PaddedTargets` on
    `device` (default: where the labels are). With `num_classes`, labels outside 0..C-1 raise a
    ValueError; the range check reads values, so it is done only for labels on the CPU (no
    device sync: on a GPU a bad label fails in the gather of the cost instead)."""
    if len(labels) != len(boxes) or len(labels) == 0:
        raise ValueError(f"labels and boxes must be two non-empty lists of the same length (one entry per "
                         f"image), got {len(labels)} and {len(boxes)}")
    for b, (lab, box) in enumerate(zip(labels, boxes)):
        if lab.dim() != 1 or lab.dtype.is_floating_point or lab.dtype == torch.bool:
            raise ValueError(f"gt_labels of image {b} must be integer [G], got {lab.dtype} {tuple(lab.shape)}")
        if box.shape != (lab.shape[0], 4):
            raise ValueError(f"gt_boxes of image {b} must be [G, 4] = [{lab.shape[0]}, 4] (cx, cy, w, h), "
                             f"got shape {tuple(box.shape)}")
    on_cpu = [lab for lab in labels if lab.device.type == "cpu" and lab.numel() > 0]
    if num_classes is not None and on_cpu:
        every = torch.cat(on_cpu)
        if bool(((every < 0) | (every >= num_classes)).any()):          # one read for the batch
            raise ValueError(f"gt_labels must lie in 0..{num_classes - 1}, "
                             f"got values in {int(every.min())}..{int(every.max())}")
    src = labels[0].device
    device = torch.device(device) if device is not None else src
    sizes = tuple(int(lab.shape[0]) for lab in labels)
    gmax = max(1, *sizes)
    lab = torch.zeros(len(sizes), gmax, dtype=torch.int64, device=src)
    box = torch.full((len(sizes), gmax, 4), _PAD_BOX[0], dtype=torch.float32, device=src)
    box[..., 2:] = _PAD_BOX[2]                     # (0.5, 0.5, 1, 1): no host -> device copy
    mask = torch.zeros(len(sizes), gmax, dtype=torch.bool, device=src)
    for b, (g, x, y) in enumerate(zip(sizes, labels, boxes)):   # B small copies, no sync
        lab[b, :g], box[b, :g], mask[b, :g] = x, y, True
    return PaddedTargets(_to_device(lab, device), _to_device(box, device), _to_device(mask, device), sizes)


def _check_batched(pred_logits: Tensor, pred_boxes: Tensor, gt: PaddedTargets) -> None:
    """Shapes only (no values: that would need a device sync)."""
    if pred_logits.dim() != 4:
        raise ValueError(f"pred_logits must be [L, B, Q, C], got shape {tuple(pred_logits.shape)}")
    n_layers, batch, q, _ = pred_logits.shape
    if pred_boxes.shape != (n_layers, batch, q, 4):
        raise ValueError(f"pred_boxes must be [L, B, Q, 4] = [{n_layers}, {batch}, {q}, 4] (cx, cy, w, h), "
                         f"got shape {tuple(pred_boxes.shape)}")
    if gt.labels.shape[0] != batch or len(gt.sizes) != batch:
        raise ValueError(f"the targets hold {gt.labels.shape[0]} images but the predictions {batch} "
                         f"(pred_logits [L, B, Q, C] = {tuple(pred_logits.shape)})")


def _gather_class_prob(pred_logits: Tensor, gt_labels: Tensor) -> Tensor:
    """sigmoid(logit[l, b, q, label_{b, g}]): [L, B, Q, C] x [B, Gmax] -> [L, B, Q, Gmax]."""
    n_layers, batch, q, _ = pred_logits.shape
    index = gt_labels[None, :, None, :].expand(n_layers, batch, q, gt_labels.shape[1])
    return pred_logits.float().sigmoid().gather(3, index)


@torch.no_grad()
def batched_o2o_cost(pred_logits: Tensor, pred_boxes: Tensor, gt: PaddedTargets,
                     cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                     focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> Tensor:
    """The Hungarian cost of `one_to_one` for every (layer, image) at once: [L, B, Q, Gmax]
    (columns g >= G_b are padding and must be ignored). Non-finite entries -> +-_HUGE_COST."""
    _check_batched(pred_logits, pred_boxes, gt)
    n_layers, batch, q, _ = pred_logits.shape
    gmax = gt.labels.shape[1]
    prob = _gather_class_prob(pred_logits, gt.labels)                          # [L, B, Q, Gmax]
    boxes = pred_boxes.float()
    gts = gt.boxes.float()[None].expand(n_layers, batch, gmax, 4)
    l1 = torch.cdist(boxes.reshape(n_layers * batch, q, 4), gts.reshape(n_layers * batch, gmax, 4), p=1)
    giou = generalized_box_iou(_xyxy(boxes), _xyxy(gts))                  # [L, B, Q, Gmax]
    cost = (cost_class * _focal_cost_of_prob(prob, focal_alpha, focal_gamma)
            + cost_bbox * l1.view(n_layers, batch, q, gmax) - cost_giou * giou)
    return torch.nan_to_num(cost, nan=_HUGE_COST, posinf=_HUGE_COST, neginf=-_HUGE_COST)


class HungarianProblem(NamedTuple):
    """One branch's batch of Hungarian problems for `hungarian_solve`.

    cost:     [L, B, Q, Gmax] on the device (e.g. from `batched_o2o_cost`).
    gt_sizes: number of real GT columns of each image (the block solved is cost[l, b, :, :G_b]).
    copies:   H-DETR's K: the GTs are repeated `copies` times, i.e. the block solved is
              cost[l, b, :, :G_b] tiled `copies` times along the GTs (exactly the cost of the
              repeated GTs, computed and copied once), and column j is GT j % G_b.
    """
    cost: Tensor
    gt_sizes: Sequence[int]
    copies: int = 1


class HungarianPairs(NamedTuple):
    """The Hungarian pairs of every (layer, image) of one branch, int64 [L, P] on the device,
    P = sum_b min(Q, copies * G_b): in each layer image 0's pairs first (sorted by query, as
    `one_to_one`), then image 1's, ... `counts` (host ints) holds the pairs of each image."""
    batch_idx: Tensor
    query_idx: Tensor
    gt_idx: Tensor
    counts: tuple


def _pair_counts(num_queries: int, gt_sizes: Sequence[int], copies: int) -> tuple:
    return tuple(min(num_queries, copies * g) for g in gt_sizes)


def _solve_on_host(cost: np.ndarray, gt_sizes: Sequence[int], copies: int) -> np.ndarray:
    """scipy on each unpadded block of cost [L, B, Q, Gmax]; returns int64 [3, L, P] (batch,
    query, GT) in HungarianPairs order."""
    n_layers, batch, q, _ = cost.shape
    counts = _pair_counts(q, gt_sizes, copies)
    out = np.empty((3, n_layers, sum(counts)), dtype=np.int64)
    for layer in range(n_layers):
        start = 0
        for b, (g, n) in enumerate(zip(gt_sizes, counts)):
            if n == 0:
                continue
            block = cost[layer, b, :, :g]
            if copies > 1:
                block = np.tile(block, (1, copies))
            rows, cols = linear_sum_assignment(block)      # rows come sorted by query
            out[0, layer, start:start + n] = b
            out[1, layer, start:start + n] = rows
            out[2, layer, start:start + n] = cols % g       # copy index -> GT index
            start += n
    return out


@torch.no_grad()
def hungarian_solve(problems: Sequence[HungarianProblem]) -> list[HungarianPairs]:
    """Solve every problem of every branch with ONE device -> host copy of all cost matrices
    (the step's only host sync for matching) and ONE host -> device copy of all indices."""
    if not problems:
        return []
    device = problems[0].cost.device
    for p in problems:
        if p.cost.dim() != 4 or len(p.gt_sizes) != p.cost.shape[1]:
            raise ValueError(f"a Hungarian problem needs cost [L, B, Q, Gmax] and B gt_sizes, got cost "
                             f"{tuple(p.cost.shape)} and {len(p.gt_sizes)} sizes")
        if p.copies < 1:
            raise ValueError(f"copies={p.copies} must be >= 1")
    # Only problems with something to solve travel; the others give [L, 0] pairs.
    busy = [i for i, p in enumerate(problems) if p.cost.numel() > 0 and any(p.gt_sizes)]
    host = {}
    if busy:
        flat = torch.cat([problems[i].cost.reshape(-1) for i in busy]).cpu().numpy()
        offset = 0
        for i in busy:
            n = problems[i].cost.numel()
            host[i] = flat[offset:offset + n].reshape(problems[i].cost.shape)
            offset += n
    solved = []
    for i, p in enumerate(problems):
        if i in host:
            solved.append(_solve_on_host(host[i], p.gt_sizes, p.copies))
        else:
            solved.append(np.empty((3, p.cost.shape[0], 0), dtype=np.int64))
    flat_idx = np.concatenate([s.reshape(-1) for s in solved])
    all_idx = _to_device(torch.from_numpy(flat_idx), device) if flat_idx.size else \
        torch.empty(0, dtype=torch.int64, device=device)
    out, offset = [], 0
    for p, s in zip(problems, solved):
        idx = all_idx[offset:offset + s.size].view(s.shape)
        offset += s.size
        counts = _pair_counts(p.cost.shape[2], p.gt_sizes, p.copies)
        out.append(HungarianPairs(idx[0], idx[1], idx[2], counts))
    return out


@torch.no_grad()
def batched_one_to_one(pred_logits: Tensor, pred_boxes: Tensor, gt: PaddedTargets,
                       cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                       focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> HungarianPairs:
    """`one_to_one` for every (layer, image) at once: predictions [L, B, Q, C] / [L, B, Q, 4],
    GTs from `pad_targets`. One cost tensor, one copy to the host, one copy back."""
    cost = batched_o2o_cost(pred_logits, pred_boxes, gt, cost_class, cost_bbox, cost_giou,
                            focal_alpha, focal_gamma)
    return hungarian_solve([HungarianProblem(cost, gt.sizes)])[0]


# ---------------------------------------------------------------- the one-to-many matcher, batched

@torch.no_grad()
def batched_match_scores(pred_logits: Tensor, pred_boxes: Tensor, gt: PaddedTargets,
                         alpha: float = 0.3) -> Tensor:
    """Step 1 for every (layer, image): S [L, B, Gmax, Q] as `match_scores`; padding rows are -1
    (below any real score, which lies in [0, 1], so they never win a max)."""
    _check_batched(pred_logits, pred_boxes, gt)
    cls = _gather_class_prob(pred_logits, gt.labels).transpose(2, 3)          # [L, B, Gmax, Q]
    iou = box_iou(_xyxy(gt.boxes.float())[None], _xyxy(pred_boxes.float()))
    scores = torch.nan_to_num(alpha * cls + (1 - alpha) * iou, nan=0.0)
    return scores.masked_fill(~gt.mask[None, :, :, None], -1.0)


def _cap_positives(positive: Tensor, max_pos: int, generator: Optional[torch.Generator]) -> Tensor:
    """Step 4, batched: keep the `max_pos` positives with the lowest random keys (one torch.rand
    of shape [L, B, Q] from `generator`), i.e. a uniformly random subset where the cap binds,
    all positives where it does not. The draw happens whenever max_pos < Q (a static condition),
    so the generator advances the same way whatever the data."""
    num_queries = positive.shape[-1]
    if max_pos >= num_queries:
        return positive
    gen_device = generator.device if generator is not None else positive.device
    keys = torch.rand(positive.shape, generator=generator, device=gen_device)
    keys = _to_device(keys, positive.device).masked_fill(~positive, 2.0)      # negatives last
    lowest = keys.topk(max_pos, dim=-1, largest=False).indices
    keep = torch.zeros_like(positive).scatter_(-1, lowest, True)
    return keep & positive


@torch.no_grad()
def batched_select_positives(scores: Tensor, gt_mask: Tensor, tau: float = 0.4, max_pos: Optional[int] = None,
                             generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Steps 2-4 of `select_positives` on S [L, B, Gmax, Q] (gt_mask [B, Gmax]).

    Returns (best_gt, positive): int64 [L, B, Q] (0 for an image without GT) and bool [L, B, Q].
    Where the cap binds, the subset differs from `select_positives`'s randperm draw (see
    `_cap_positives`); where it does not, the result is the same.
    """
    best_score, best_gt = scores.max(dim=2)                                    # step 2
    has_gt = gt_mask.any(dim=1)[None, :, None]
    positive = (best_score >= tau) & has_gt
    # step 3: each real GT's best query (scatter_add: several GTs may share one; padding adds 0)
    best_query = scores.argmax(dim=3)                                          # [L, B, Gmax]
    votes = torch.zeros_like(best_gt).scatter_add_(2, best_query, gt_mask.expand_as(best_query).long())
    positive |= votes > 0
    if max_pos is not None:                                                    # step 4
        positive = _cap_positives(positive, max_pos, generator)
    return best_gt, positive


@torch.no_grad()
def batched_topk_per_gt(scores: Tensor, best_gt: Tensor, positive: Tensor, gt_mask: Tensor,
                        k: int = 6) -> tuple[Tensor, Tensor]:
    """Step 5 of `topk_per_gt`, padded: returns (query_idx, valid), [L, B, Gmax, W] with
    W = min(K, Q): row g holds GT g's best queries by decreasing score (ties: lower query
    first), and valid marks the first min(c_g, K) of them for real GTs."""
    n_layers, batch, gmax, num_queries = scores.shape
    counts = torch.zeros(n_layers, batch, gmax, dtype=torch.int64, device=scores.device)
    counts.scatter_add_(2, best_gt, positive.long())                           # c_g
    width = min(k, num_queries)
    query_idx = scores.sort(dim=3, descending=True, stable=True).indices[..., :width]
    slot = torch.arange(width, device=scores.device)
    valid = (slot < counts.clamp(max=k)[..., None]) & gt_mask[None, :, :, None]
    return query_idx, valid


@torch.no_grad()
def batched_o2m_class_targets(query_idx: Tensor, valid: Tensor, scores: Tensor) -> Tensor:
    """Step 6 of `o2m_class_targets`, dense: int64 [L, B, Q], the GT whose pair with the query
    scores highest (ties: the lower GT), -1 for a query in no pair."""
    paired = torch.zeros_like(scores, dtype=torch.bool).scatter_(3, query_idx, valid)  # [L, B, Gmax, Q]
    pair_score = scores.masked_fill(~paired, -1.0)
    best, best_gt = pair_score.max(dim=2)                                      # first max: lower GT
    return best_gt.masked_fill(best < 0, -1)


class ManyPairs(NamedTuple):
    """MS-DETR's one-to-many pairs of every (layer, image), padded (see `batched_one_to_many`).

    query_idx: int64 [L, B, Gmax, W]  GT g's o2m queries, best first (W = min(K, Q)).
    valid:     bool  [L, B, Gmax, W]  the real pairs (slot < min(c_g, K), real GT).
    cls_gt:    int64 [L, B, Q]        each query's class-target GT (step 6), -1 if none.
    scores:    float [L, B, Gmax, Q]  S, -1 on padding rows.
    """
    query_idx: Tensor
    valid: Tensor
    cls_gt: Tensor
    scores: Tensor


@torch.no_grad()
def batched_one_to_many(pred_logits: Tensor, pred_boxes: Tensor, gt: PaddedTargets,
                        k: int = 6, tau: float = 0.4, alpha: float = 0.3, max_pos_fraction: float = 0.25,
                        generator: Optional[torch.Generator] = None) -> ManyPairs:
    """`one_to_many` + `o2m_class_targets` for every (layer, image) at once, on the device, with
    no host sync (no .item(), no data-dependent shapes: the pairs stay padded with a mask).

    Flattening `query_idx[valid]` per (layer, image) gives `one_to_many`'s pairs in its order
    (by GT, then decreasing score), exactly when no two candidates tie (see the section note)
    and the positive cap does not bind. Where the cap binds, the kept positives are a uniformly
    random subset drawn from `generator` by one torch.rand (reproducible from its seed), not the
    reference's randperm draws. A CPU generator with CUDA predictions costs one async copy.
    """
    scores = batched_match_scores(pred_logits, pred_boxes, gt, alpha)
    n_layers, batch, gmax, num_queries = scores.shape
    width = min(k, num_queries)
    if gmax == 0 or num_queries == 0:
        empty = torch.zeros(n_layers, batch, gmax, width, dtype=torch.int64, device=scores.device)
        return ManyPairs(empty, empty.bool(), torch.full((n_layers, batch, num_queries), -1,
                                                         dtype=torch.int64, device=scores.device), scores)
    max_pos = int(math.floor(max_pos_fraction * num_queries + 1e-9))
    best_gt, positive = batched_select_positives(scores, gt.mask, tau, max_pos, generator)
    query_idx, valid = batched_topk_per_gt(scores, best_gt, positive, gt.mask, k)
    return ManyPairs(query_idx, valid, batched_o2m_class_targets(query_idx, valid, scores), scores)
