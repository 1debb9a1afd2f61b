"""SetCriterion's per-image, per-layer path (`batched=False`): the readable reference.

Each image and decoder layer is matched by `matching.one_to_one` / `matching.one_to_many` and
supervised on its own; the equivalence tests compare the batched path against it. `ReferencePath`
is a mixin of SetCriterion: it reads the criterion's loss_cfg, matcher_cfg, supervision,
num_queries, group_num and generator, and its `_check_batch` / `_o2m_weights`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from ..matching import o2m_class_targets, one_to_many, one_to_one
from ..matching.reference import _xyxy
from .terms import Assignment, _num_boxes, _one_to_one_assignment, iou_aware_focal_loss


class ReferencePath:
    """The per-image matching (`_match_reference`) and losses (`_forward_reference`) of SetCriterion."""

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
        """Check the batch and move the targets next to the predictions (reference path)."""
        device = self._check_batch(outputs, targets)
        return [{"labels": t["labels"].to(device=device, dtype=torch.int64),
                 "boxes": t["boxes"].to(device=device, dtype=torch.float32)} for t in targets]

    def _match_reference(self, outputs: dict, targets: list[dict]) -> dict:
        with torch.no_grad():
            result = {"o2o": [self._match_o2o(p["logits"], p["boxes"], targets) for p in outputs["o2o"]]}
            if self.supervision != "o2o" and outputs.get("o2m"):
                match_o2m = {"ms": self._match_ms, "hybrid": self._match_hybrid,
                             "group": self._match_group}[self.supervision]
                result["o2m"] = [match_o2m(p["logits"], p["boxes"], targets) for p in outputs["o2m"]]
            if outputs.get("enc") is not None:
                result["enc"] = self._match_enc(outputs["enc"]["logits"], outputs["enc"]["boxes"], targets)
        return result

    def _branch_losses(self, logits: Tensor, boxes: Tensor, targets: list[dict],
                       assignments: list[Assignment], num_boxes: Tensor,
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

    def _forward_reference(self, outputs: dict, targets: list[dict], return_matches: bool = False):
        """`forward` one image and one layer at a time (batched=False)."""
        targets = self._prepare(outputs, targets)
        matches = self._match_reference(outputs, targets)
        num_boxes = _num_boxes(targets, outputs["o2o"][-1]["logits"].device)
        c = self.loss_cfg

        losses: dict[str, Tensor] = {}
        for layer, (pred, assign) in enumerate(zip(outputs["o2o"], matches["o2o"])):
            losses.update(self._branch_losses(pred["logits"], pred["boxes"], targets, assign, num_boxes,
                                              (c.cls_o2o, c.bbox_o2o, c.giou_o2o), f"o2o_{layer}"))
        if "o2m" in matches:
            weights, norm = self._o2m_weights(num_boxes)
            for layer, (pred, assign) in enumerate(zip(outputs["o2m"], matches["o2m"])):
                losses.update(self.o2m_layer_mask(self._branch_losses(
                    pred["logits"], pred["boxes"], targets, assign, norm, weights, f"o2m_{layer}")))
        if "enc" in matches:
            enc = outputs["enc"]
            losses.update(self._branch_losses(enc["logits"], enc["boxes"], targets, matches["enc"], num_boxes,
                                              (c.cls_enc, c.bbox_enc, c.giou_enc), "enc",
                                              class_agnostic=True))
        losses["loss"] = torch.stack(list(losses.values())).sum()
        if return_matches:
            return losses, matches
        return losses
