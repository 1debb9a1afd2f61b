"""SetCriterion: match, then supervise, for every decoder layer and every branch.

Branches (docs/msdetr-method.md, "Losses"):

| branch | predictions | matching | weights cls / L1 / GIoU |
|---|---|---|---|
| `o2o` | outputs["o2o"][l], the primary queries | Hungarian | 1 / 5 / 2 |
| `o2m`, supervision `ms` | outputs["o2m"][l], the same queries at the o2m tap | MS-DETR one-to-many | 2 / 5 / 2 |
| `o2m`, supervision `hybrid` | outputs["o2m"][l], H-DETR's extra queries | Hungarian on the GTs repeated K times | o2o x hybrid_weight |
| `o2m`, supervision `group` | outputs["o2m"][l], Group-DETR's extra groups | Hungarian per group | o2o x group_weight |
| `enc` | outputs["enc"], two-stage proposals | Hungarian, class-agnostic | 2 / 5 / 2 |

Every branch uses the sigmoid focal loss over all queries x classes and L1 + GIoU on the
matched pairs, all divided by the number of GT boxes in the batch (averaged over processes).
So the o2m branch of `ms`, with up to K positives per GT, weighs about K times the o2o branch.
The one exception is `hybrid`, which divides by the number of *repeated* GTs (K x the number of
GTs), exactly as H-DETR does by handing its criterion the repeated targets.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from .config import SUPERVISIONS, LossConfig, MatcherConfig
from .matching import _xyxy, o2m_class_targets, one_to_many, one_to_one


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


def _num_boxes(targets: list[dict], device: torch.device) -> float:
    """Number of GT boxes per process, averaged over processes, at least 1 (normaliser)."""
    n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n.item()), 1.0)


def iou_aware_focal_loss(logits: Tensor, target: Tensor, positive: Tensor,
                         alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Quality-focal style loss with soft targets t in [0, 1] (summed):

        loss = alpha_t * |t - p|^gamma * BCE(p, t),   p = sigmoid(logit),
        alpha_t = alpha on the matched (query, class) entries (`positive`), 1 - alpha elsewhere.

    The matched entry gets t = IoU(predicted box, its GT), all others t = 0. With t = 1 it is
    exactly the sigmoid focal loss, so the IoU target is the only change: a query learns to
    score as high as its box is good, not just "object here".
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    alpha_t = torch.where(positive, torch.full_like(prob, alpha), torch.full_like(prob, 1 - alpha))
    return (alpha_t * (target - prob).abs().pow(gamma) * ce).sum()


class SetCriterion(nn.Module):
    """Losses of MS-DETR and of the schemes it is compared with.

    SetCriterion(num_classes, loss_cfg, matcher_cfg, supervision, num_queries, group_num,
                 generator=None)

    supervision: "o2o" | "ms" | "hybrid" | "group" (ModelConfig.supervision).
    num_queries: Q of the primary set; `group` needs it to split outputs["o2m"] into groups.
    group_num:   Group-DETR's number of groups, primary included (outputs["o2m"] holds
                 group_num - 1 groups of num_queries queries).
    generator:   torch.Generator for the random subset of the one-to-many matcher (step 4).

    forward(outputs, targets) -> dict of weighted scalar losses
        `loss_{cls|bbox|giou}_o2o_{l}`, `loss_{cls|bbox|giou}_o2m_{l}` (l = decoder layer,
        the last one is the final prediction), `loss_{cls|bbox|giou}_enc`, and `loss`, the sum.
    `outputs` and `targets` follow docs/design.md. A missing or empty outputs["o2m"] (the
    model in eval mode) skips the o2m branch; a missing outputs["enc"] skips the encoder.
    """

    def __init__(self, num_classes: int, loss_cfg: LossConfig, matcher_cfg: MatcherConfig,
                 supervision: str, num_queries: int, group_num: int,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if supervision not in SUPERVISIONS:
            raise ValueError(f"supervision={supervision!r}; expected one of {SUPERVISIONS}")
        if supervision == "group" and group_num < 2:
            raise ValueError(f"group_num={group_num} must be >= 2 for supervision='group'")
        self.num_classes = num_classes
        self.loss_cfg = loss_cfg
        self.matcher_cfg = matcher_cfg
        self.supervision = supervision
        self.num_queries = num_queries
        self.group_num = group_num
        self.generator = generator

    # ------------------------------------------------------------------ matching

    def _hungarian(self, logits: Tensor, boxes: Tensor, labels: Tensor, gt_boxes: Tensor):
        m = self.matcher_cfg
        return one_to_one(logits, boxes, labels, gt_boxes, m.cost_class, m.cost_bbox, m.cost_giou,
                          self.loss_cfg.focal_alpha, self.loss_cfg.focal_gamma)

    def _match_o2o(self, logits: Tensor, boxes: Tensor, targets: list[dict]) -> list[Assignment]:
        return [_one_to_one_assignment(*self._hungarian(logits[b], boxes[b], t["labels"], t["boxes"]))
                for b, t in enumerate(targets)]

    def _match_ms(self, logits: Tensor, boxes: Tensor, targets: list[dict]) -> list[Assignment]:
        m = self.matcher_cfg
        out = []
        for b, t in enumerate(targets):
            q, g, scores = one_to_many(logits[b], boxes[b], t["labels"], t["boxes"], k=m.k, tau=m.tau,
                                       alpha=m.alpha, max_pos_fraction=m.max_pos_fraction,
                                       generator=self.generator, return_scores=True)
            out.append(Assignment(q, g, *o2m_class_targets(q, g, scores)))
        return out

    def _match_hybrid(self, logits: Tensor, boxes: Tensor, targets: list[dict]) -> list[Assignment]:
        k = self.loss_cfg.hybrid_k
        out = []
        for b, t in enumerate(targets):
            num_gt = len(t["labels"])
            # H-DETR: the extra queries are matched one-to-one against K copies of every GT.
            q, g = self._hungarian(logits[b], boxes[b], t["labels"].repeat(k), t["boxes"].repeat(k, 1))
            g = g % num_gt if num_gt else g          # copy index -> original GT index
            out.append(_one_to_one_assignment(q, g))
        return out

    def _match_group(self, logits: Tensor, boxes: Tensor, targets: list[dict]) -> list[Assignment]:
        q_per_group, n_groups = self.num_queries, self.group_num - 1
        if logits.shape[1] != n_groups * q_per_group:
            raise ValueError(f"outputs['o2m'] logits must be [B, (group_num-1)*num_queries, C] = "
                             f"[B, {n_groups * q_per_group}, C], got {tuple(logits.shape)}")
        out = []
        for b, t in enumerate(targets):
            qs, gs = [], []
            for i in range(n_groups):  # Group-DETR: every group is an independent o2o problem
                part = slice(i * q_per_group, (i + 1) * q_per_group)
                q, g = self._hungarian(logits[b, part], boxes[b, part], t["labels"], t["boxes"])
                qs.append(q + i * q_per_group)
                gs.append(g)
            out.append(_one_to_one_assignment(torch.cat(qs), torch.cat(gs)))
        return out

    def _match_enc(self, logits: Tensor, boxes: Tensor, targets: list[dict]) -> list[Assignment]:
        # Class-agnostic: every GT is class 0 of the single "object" logit. Invalid (padded)
        # tokens carry very negative logits and far-away boxes, so they are never cheap.
        return [_one_to_one_assignment(*self._hungarian(logits[b], boxes[b], torch.zeros_like(t["labels"]),
                                                        t["boxes"]))
                for b, t in enumerate(targets)]

    def _prepare(self, outputs: dict, targets: list[dict]) -> list[dict]:
        """Check the batch and move the targets next to the predictions."""
        if not outputs.get("o2o"):
            raise ValueError("outputs['o2o'] must be a non-empty list over decoder layers of "
                             "{'logits': [B, Q, C], 'boxes': [B, Q, 4]}")
        logits = outputs["o2o"][-1]["logits"]
        if logits.dim() != 3 or logits.shape[0] != len(targets) or logits.shape[2] != self.num_classes:
            raise ValueError(f"outputs['o2o'][l]['logits'] must be [B, Q, C] with B = len(targets) = "
                             f"{len(targets)} and C = num_classes = {self.num_classes}, "
                             f"got {tuple(logits.shape)}")
        device = logits.device
        return [{"labels": t["labels"].to(device=device, dtype=torch.int64),
                 "boxes": t["boxes"].to(device=device, dtype=torch.float32)} for t in targets]

    @torch.no_grad()
    def match(self, outputs: dict, targets: list[dict]) -> dict:
        """All assignments of a batch, for the losses and for the notebooks:
        {"o2o": [layer][image] -> Assignment, "o2m": [layer][image] -> Assignment (when the
        scheme has an o2m branch and outputs carry it), "enc": [image] -> Assignment}."""
        return self._match(outputs, self._prepare(outputs, targets))

    def _match(self, outputs: dict, targets: list[dict]) -> dict:
        with torch.no_grad():
            result = {"o2o": [self._match_o2o(p["logits"], p["boxes"], targets) for p in outputs["o2o"]]}
            if self.supervision != "o2o" and outputs.get("o2m"):
                match_o2m = {"ms": self._match_ms, "hybrid": self._match_hybrid,
                             "group": self._match_group}[self.supervision]
                result["o2m"] = [match_o2m(p["logits"], p["boxes"], targets) for p in outputs["o2m"]]
            if outputs.get("enc") is not None:
                result["enc"] = self._match_enc(outputs["enc"]["logits"], outputs["enc"]["boxes"], targets)
        return result

    # ------------------------------------------------------------------ losses

    def _branch_losses(self, logits: Tensor, boxes: Tensor, targets: list[dict],
                       assignments: list[Assignment], num_boxes: float,
                       weights: tuple[float, float, float], tag: str,
                       class_agnostic: bool = False) -> dict[str, Tensor]:
        """Focal + L1 + GIoU of one branch at one layer; logits [B, N, C], boxes [B, N, 4]."""
        # -inf logits (never-selected encoder tokens) would make the BCE inf - inf = NaN.
        logits = logits.float().clamp(min=torch.finfo(torch.float32).min)
        boxes = boxes.float()
        w_cls, w_bbox, w_giou = weights

        # Boxes: every matched pair counts.
        batch_idx = torch.cat([torch.full_like(a.query_idx, b) for b, a in enumerate(assignments)])
        query_idx = torch.cat([a.query_idx for a in assignments])
        src_boxes = boxes[batch_idx, query_idx]                                      # [N, 4]
        tgt_boxes = torch.cat([t["boxes"][a.gt_idx] for t, a in zip(targets, assignments)])
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
        loss_giou = generalized_box_iou_loss(box_convert(src_boxes, "cxcywh", "xyxy"),
                                             box_convert(tgt_boxes, "cxcywh", "xyxy"),
                                             reduction="sum") / num_boxes

        # Classes: one-hot target for each query's (single) class assignment, 0 elsewhere.
        cls_batch = torch.cat([torch.full_like(a.cls_query_idx, b) for b, a in enumerate(assignments)])
        cls_query = torch.cat([a.cls_query_idx for a in assignments])
        if class_agnostic:
            cls_label = torch.zeros_like(cls_query)
        else:
            cls_label = torch.cat([t["labels"][a.cls_gt_idx] for t, a in zip(targets, assignments)])
        target = torch.zeros_like(logits)
        if self.loss_cfg.iou_aware:
            with torch.no_grad():  # the IoU is a target, not a path for gradients
                cls_gt_boxes = torch.cat([t["boxes"][a.cls_gt_idx] for t, a in zip(targets, assignments)])
                # box_iou over a batch of 1x1 problems: the IoU of each (prediction, GT) pair.
                iou = box_iou(_xyxy(boxes[cls_batch, cls_query])[:, None],
                              _xyxy(cls_gt_boxes)[:, None])[:, 0, 0]
                target[cls_batch, cls_query, cls_label] = torch.nan_to_num(iou, nan=0.0).clamp(0, 1)
            positive = torch.zeros_like(logits, dtype=torch.bool)
            positive[cls_batch, cls_query, cls_label] = True
            loss_cls = iou_aware_focal_loss(logits, target, positive,
                                            self.loss_cfg.focal_alpha, self.loss_cfg.focal_gamma)
        else:
            target[cls_batch, cls_query, cls_label] = 1.0
            loss_cls = sigmoid_focal_loss(logits, target, self.loss_cfg.focal_alpha,
                                          self.loss_cfg.focal_gamma, reduction="sum")
        loss_cls = loss_cls / num_boxes

        return {f"loss_cls_{tag}": w_cls * loss_cls,
                f"loss_bbox_{tag}": w_bbox * loss_bbox,
                f"loss_giou_{tag}": w_giou * loss_giou}

    def _o2m_weights(self, num_boxes: float) -> tuple[tuple[float, float, float], float]:
        """(cls, L1, GIoU) weights and normaliser of the o2m branch of the current scheme."""
        c = self.loss_cfg
        o2o = (c.cls_o2o, c.bbox_o2o, c.giou_o2o)
        if self.supervision == "ms":
            return (c.cls_o2m, c.bbox_o2m, c.giou_o2m), num_boxes
        if self.supervision == "hybrid":
            # H-DETR normalises by its repeated targets, i.e. K times as many boxes.
            return tuple(w * c.hybrid_weight for w in o2o), num_boxes * max(c.hybrid_k, 1)
        return tuple(w * c.group_weight for w in o2o), num_boxes          # group

    def forward(self, outputs: dict, targets: list[dict], return_matches: bool = False):
        """outputs: the model's dict (docs/design.md); targets: list over images of dicts with
        `labels` int64 [G] and `boxes` float [G, 4] (cxcywh, normalised).

        Returns the loss dict, or (loss dict, matches) with return_matches (see `match`).
        """
        targets = self._prepare(outputs, targets)
        matches = self._match(outputs, targets)
        num_boxes = _num_boxes(targets, outputs["o2o"][-1]["logits"].device)
        c = self.loss_cfg

        losses: dict[str, Tensor] = {}
        for layer, (pred, assign) in enumerate(zip(outputs["o2o"], matches["o2o"])):
            losses.update(self._branch_losses(pred["logits"], pred["boxes"], targets, assign, num_boxes,
                                              (c.cls_o2o, c.bbox_o2o, c.giou_o2o), f"o2o_{layer}"))
        if "o2m" in matches:
            weights, norm = self._o2m_weights(num_boxes)
            for layer, (pred, assign) in enumerate(zip(outputs["o2m"], matches["o2m"])):
                losses.update(self._branch_losses(pred["logits"], pred["boxes"], targets, assign, norm,
                                                  weights, f"o2m_{layer}"))
        if "enc" in matches:
            enc = outputs["enc"]
            losses.update(self._branch_losses(enc["logits"], enc["boxes"], targets, matches["enc"], num_boxes,
                                              (c.cls_enc, c.bbox_enc, c.giou_enc), "enc",
                                              class_agnostic=True))
        losses["loss"] = torch.stack(list(losses.values())).sum()
        if return_matches:
            return losses, matches
        return losses
