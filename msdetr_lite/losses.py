"""SetCriterion: match, then supervise, for every decoder layer and every branch.

Branches (docs/method.md, "Losses"):

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

Two paths compute the same losses. The default (`batched=True`) matches and supervises every
layer and image of a branch at once: predictions are stacked [L, B, N, C], the Hungarian cost
matrices of all branches go to the host in one copy (`matching.hungarian_solve`), the
one-to-many matcher stays on the device (`matching.batched_one_to_many`), and each branch takes
one focal loss and one L1 / GIoU over all its layers, split per layer at the end. The host
syncs left per step: that one copy of the costs (scipy needs them) and, on a GPU, nothing else
in the criterion (the GT-count normaliser stays a tensor). `batched=False` runs the original
per-image, per-layer code, kept as the readable reference the equivalence tests compare against.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from .config import SUPERVISIONS, LossConfig, MatcherConfig
from .matching import (HungarianPairs, HungarianProblem, ManyPairs, PaddedTargets, _xyxy, _xyxy_nd,
                       batched_o2o_cost, batched_one_to_many, hungarian_solve, o2m_class_targets,
                       one_to_many, one_to_one, pad_targets)


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


class SetCriterion(nn.Module):
    """Losses of MS-DETR and of the schemes it is compared with.

    SetCriterion(num_classes, loss_cfg, matcher_cfg, supervision, num_queries, group_num,
                 generator=None)

    supervision: "o2o" | "ms" | "hybrid" | "group" (ModelConfig.supervision).
    num_queries: Q of the primary set; `group` needs it to split outputs["o2m"] into groups.
    group_num:   Group-DETR's number of groups, primary included (outputs["o2m"] holds
                 group_num - 1 groups of num_queries queries).
    generator:   torch.Generator for the random subset of the one-to-many matcher (step 4).
    batched:     True (default): all layers and images of a branch at once (see the module
                 docstring); False: the per-image, per-layer reference. The two give the same
                 assignments and losses, except for which positives the random cap keeps when
                 it binds (both reproducible from `generator`, drawn differently).

    forward(outputs, targets) -> dict of weighted scalar losses
        `loss_{cls|bbox|giou}_o2o_{l}`, `loss_{cls|bbox|giou}_o2m_{l}` (l = decoder layer,
        the last one is the final prediction), `loss_{cls|bbox|giou}_enc`, and `loss`, the sum.
    `outputs` and `targets` follow docs/design.md. A missing or empty outputs["o2m"] (the
    model in eval mode) skips the o2m branch; a missing outputs["enc"] skips the encoder.
    """

    def __init__(self, num_classes: int, loss_cfg: LossConfig, matcher_cfg: MatcherConfig,
                 supervision: str, num_queries: int, group_num: int,
                 generator: Optional[torch.Generator] = None, batched: bool = True):
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
        self.batched = batched

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

    def _check_batch(self, outputs: dict, targets: list[dict]) -> torch.device:
        """Check the batch's shapes; returns the predictions' device."""
        if not outputs.get("o2o"):
            raise ValueError("outputs['o2o'] must be a non-empty list over decoder layers of "
                             "{'logits': [B, Q, C], 'boxes': [B, Q, 4]}")
        logits = outputs["o2o"][-1]["logits"]
        if logits.dim() != 3 or logits.shape[0] != len(targets) or logits.shape[2] != self.num_classes:
            raise ValueError(f"outputs['o2o'][l]['logits'] must be [B, Q, C] with B = len(targets) = "
                             f"{len(targets)} and C = num_classes = {self.num_classes}, "
                             f"got {tuple(logits.shape)}")
        return logits.device

    def _prepare(self, outputs: dict, targets: list[dict]) -> list[dict]:
        """Check the batch and move the targets next to the predictions (reference path)."""
        device = self._check_batch(outputs, targets)
        return [{"labels": t["labels"].to(device=device, dtype=torch.int64),
                 "boxes": t["boxes"].to(device=device, dtype=torch.float32)} for t in targets]

    @torch.no_grad()
    def match(self, outputs: dict, targets: list[dict]) -> dict:
        """All assignments of a batch, for the losses and for the notebooks:
        {"o2o": [layer][image] -> Assignment, "o2m": [layer][image] -> Assignment (when the
        scheme has an o2m branch and outputs carry it), "enc": [image] -> Assignment}."""
        if not self.batched:
            return self._match_reference(outputs, self._prepare(outputs, targets))
        gt = self._padded_targets(outputs, targets)
        return self._assignments(self._match_batched(outputs, gt), gt)

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

    # ------------------------------------------------------------------ losses

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

    def _o2m_weights(self, num_boxes: Tensor) -> tuple[tuple[float, float, float], Tensor]:
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
        if not self.batched:
            return self._forward_reference(outputs, targets, return_matches)
        gt = self._padded_targets(outputs, targets)
        branches = self._match_batched(outputs, gt)
        num_boxes = _num_boxes(targets, gt.labels.device)
        c = self.loss_cfg

        losses: dict[str, Tensor] = {}
        o2o = branches["o2o"]
        losses.update(self._batched_branch_losses(
            o2o, gt, num_boxes, (c.cls_o2o, c.bbox_o2o, c.giou_o2o),
            [f"o2o_{layer}" for layer in range(o2o.logits.shape[0])]))
        if "o2m" in branches:
            o2m = branches["o2m"]
            weights, norm = self._o2m_weights(num_boxes)
            losses.update(self._batched_branch_losses(
                o2m, gt, norm, weights, [f"o2m_{layer}" for layer in range(o2m.logits.shape[0])]))
        if "enc" in branches:
            losses.update(self._batched_branch_losses(
                branches["enc"], gt, num_boxes, (c.cls_enc, c.bbox_enc, c.giou_enc), ["enc"],
                class_agnostic=True))
        losses["loss"] = torch.stack(list(losses.values())).sum()
        if return_matches:
            return losses, self._assignments(branches, gt)
        return losses

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

    # ------------------------------------------------------------------ batched path

    def _padded_targets(self, outputs: dict, targets: list[dict]) -> PaddedTargets:
        device = self._check_batch(outputs, targets)
        return pad_targets([t["labels"] for t in targets], [t["boxes"] for t in targets], device,
                           num_classes=self.num_classes)

    def _match_batched(self, outputs: dict, gt: PaddedTargets) -> dict[str, "_Branch"]:
        """Every branch's predictions stacked over layers and their matching; all Hungarian
        problems (o2o, hybrid / group, encoder) are solved together by one `hungarian_solve`."""
        m, c = self.matcher_cfg, self.loss_cfg
        costs = (m.cost_class, m.cost_bbox, m.cost_giou, c.focal_alpha, c.focal_gamma)
        branches: dict[str, tuple[Tensor, Tensor]] = {"o2o": _stack(outputs["o2o"])}
        has_o2m = self.supervision != "o2o" and bool(outputs.get("o2m"))
        if has_o2m:
            branches["o2m"] = _stack(outputs["o2m"])
        if outputs.get("enc") is not None:
            enc = outputs["enc"]
            branches["enc"] = (enc["logits"][None].float(), enc["boxes"][None].float())

        matched: dict[str, object] = {}
        problems: dict[str, HungarianProblem] = {}
        with torch.no_grad():
            if has_o2m and self.supervision == "ms":     # on the device, queued before the sync
                matched["o2m"] = batched_one_to_many(*branches["o2m"], gt, k=m.k, tau=m.tau, alpha=m.alpha,
                                                     max_pos_fraction=m.max_pos_fraction,
                                                     generator=self.generator)
            problems["o2o"] = HungarianProblem(batched_o2o_cost(*branches["o2o"], gt, *costs), gt.sizes)
            if has_o2m and self.supervision == "hybrid":
                # H-DETR: Hungarian against every GT repeated K times (the cost tiled on the host)
                problems["o2m"] = HungarianProblem(batched_o2o_cost(*branches["o2m"], gt, *costs), gt.sizes,
                                                   copies=max(c.hybrid_k, 1))
            if has_o2m and self.supervision == "group":
                problems["o2m"] = self._group_problem(*branches["o2m"], gt, costs)
            if "enc" in branches:
                # class-agnostic: every GT is class 0 of the single "object" logit
                agnostic = gt._replace(labels=torch.zeros_like(gt.labels))
                problems["enc"] = HungarianProblem(batched_o2o_cost(*branches["enc"], agnostic, *costs), gt.sizes)
            names = list(problems)
            matched.update(zip(names, hungarian_solve([problems[n] for n in names])))
            if "o2m" in matched and self.supervision == "group":
                matched["o2m"] = self._ungroup(matched["o2m"])
        return {name: _Branch(*branches[name], matched[name]) for name in branches}

    def _group_problem(self, logits: Tensor, boxes: Tensor, gt: PaddedTargets, costs: tuple) -> HungarianProblem:
        """Group-DETR: each group an independent o2o problem, as extra rows of the batch
        ([L, B, n*Q] -> [L, B*n, Q], row b*n + i = group i of image b)."""
        q, n = self.num_queries, self.group_num - 1
        n_layers, batch, width, _ = logits.shape
        if width != n * q:
            raise ValueError(f"outputs['o2m'] logits must be [B, (group_num-1)*num_queries, C] = "
                             f"[B, {n * q}, C], got {tuple(logits.shape[1:])}")
        rows = PaddedTargets(gt.labels.repeat_interleave(n, 0), gt.boxes.repeat_interleave(n, 0),
                             gt.mask.repeat_interleave(n, 0), tuple(g for g in gt.sizes for _ in range(n)))
        cost = batched_o2o_cost(logits.reshape(n_layers, batch * n, q, -1),
                                boxes.reshape(n_layers, batch * n, q, 4), rows, *costs)
        return HungarianProblem(cost, rows.sizes)

    def _ungroup(self, pairs: HungarianPairs) -> HungarianPairs:
        """Rows of (image, group) back to images: query index + group * Q. The pair order stays
        that of the reference (per image: group 0's pairs, group 1's, ...)."""
        n = self.group_num - 1
        counts = tuple(sum(pairs.counts[b * n:(b + 1) * n]) for b in range(len(pairs.counts) // n))
        return HungarianPairs(pairs.batch_idx // n, pairs.query_idx + (pairs.batch_idx % n) * self.num_queries,
                              pairs.gt_idx, counts)

    def _assignments(self, branches: dict[str, "_Branch"], gt: PaddedTargets) -> dict:
        """The batched matching in `match`'s structure (this reads indices back to the host:
        for notebooks and tests, not for the training step)."""
        out = {}
        for name, branch in branches.items():
            if isinstance(branch.matched, ManyPairs):
                per_layer = _many_assignments(branch.matched, gt.sizes)
            else:
                per_layer = _hungarian_assignments(branch.matched)
            out[name] = per_layer[0] if name == "enc" else per_layer
        return out

    def _batched_branch_losses(self, branch: "_Branch", gt: PaddedTargets, num_boxes: Tensor,
                               weights: tuple[float, float, float], tags: list[str],
                               class_agnostic: bool = False) -> dict[str, Tensor]:
        """Focal + L1 + GIoU of one branch, all L layers at once (one focal loss over
        [L, B, N, C], one L1 / GIoU over the pairs of all layers), split per layer."""
        # -inf logits (never-selected encoder tokens) would make the BCE inf - inf = NaN.
        logits = branch.logits.clamp(min=torch.finfo(torch.float32).min)
        boxes = branch.boxes
        n_layers, batch, n, num_classes = logits.shape
        t = _branch_targets(branch.matched, n_layers, batch, n)
        w_cls, w_bbox, w_giou = weights

        # Boxes: every matched pair counts; padding slots (weight 0) drop out of the sums.
        layer = torch.arange(n_layers, device=logits.device)[:, None].expand_as(t.pair_batch)
        src_boxes = boxes[layer, t.pair_batch, t.pair_query]                          # [L, P, 4]
        tgt_boxes = gt.boxes[t.pair_batch, t.pair_gt]                                 # [L, P, 4]
        loss_bbox = (src_boxes - tgt_boxes).abs().sum(-1)
        loss_giou = generalized_box_iou_loss(box_convert(src_boxes, "cxcywh", "xyxy"),
                                             box_convert(tgt_boxes, "cxcywh", "xyxy"), reduction="none")
        if t.pair_weight is not None:
            loss_bbox, loss_giou = loss_bbox * t.pair_weight, loss_giou * t.pair_weight
        loss_bbox, loss_giou = loss_bbox.sum(-1) / num_boxes, loss_giou.sum(-1) / num_boxes   # [L]

        # Classes: one-hot target for each query's (single) class assignment, 0 elsewhere.
        assigned = t.cls_gt >= 0                                                      # [L, B, N]
        cls_gt = t.cls_gt.clamp(min=0)
        image = torch.arange(batch, device=logits.device)[None, :, None]
        label = torch.zeros_like(cls_gt) if class_agnostic else gt.labels[image, cls_gt]
        target = torch.zeros_like(logits).scatter_(3, label[..., None], assigned[..., None].to(logits.dtype))
        if self.loss_cfg.iou_aware:
            with torch.no_grad():  # the IoU is a target, not a path for gradients
                # box_iou over a batch of 1x1 problems: the IoU of each (prediction, GT) pair.
                iou = box_iou(_xyxy_nd(boxes)[..., None, :], _xyxy_nd(gt.boxes[image, cls_gt])[..., None, :])
                iou = torch.nan_to_num(iou[..., 0, 0], nan=0.0).clamp(0, 1)
            terms = _iou_aware_focal_terms(logits, target * iou[..., None], target.bool(),
                                           self.loss_cfg.focal_alpha, self.loss_cfg.focal_gamma)
        else:
            terms = sigmoid_focal_loss(logits, target, self.loss_cfg.focal_alpha, self.loss_cfg.focal_gamma,
                                       reduction="none")
        loss_cls = terms.sum(dim=(1, 2, 3)) / num_boxes                               # [L]

        out = {}
        for layer_idx, tag in enumerate(tags):
            out[f"loss_cls_{tag}"] = w_cls * loss_cls[layer_idx]
            out[f"loss_bbox_{tag}"] = w_bbox * loss_bbox[layer_idx]
            out[f"loss_giou_{tag}"] = w_giou * loss_giou[layer_idx]
        return out


class _Branch(NamedTuple):
    """One branch in the batched path: predictions stacked over layers, float32,
    logits [L, B, N, C] and boxes [L, B, N, 4], and their matching."""
    logits: Tensor
    boxes: Tensor
    matched: object          # HungarianPairs or ManyPairs


class _BranchTargets(NamedTuple):
    """What the losses of one branch need, for all its layers at once (int64 unless noted).

    pair_batch, pair_query, pair_gt: [L, P] every (query, GT) pair the box losses count (GT
        indices into the padded targets).
    pair_weight: float [L, P], 1 on real pairs and 0 on padding slots; None when all are real.
    cls_gt:      [L, B, N] the GT giving each query its class target, -1 for "no object".
    """
    pair_batch: Tensor
    pair_query: Tensor
    pair_gt: Tensor
    pair_weight: Optional[Tensor]
    cls_gt: Tensor


def _stack(preds: list[dict]) -> tuple[Tensor, Tensor]:
    """Per-layer {"logits" [B, N, C], "boxes" [B, N, 4]} -> float32 [L, B, N, C], [L, B, N, 4]."""
    return (torch.stack([p["logits"] for p in preds]).float(),
            torch.stack([p["boxes"] for p in preds]).float())


def _branch_targets(matched, n_layers: int, batch: int, n: int) -> _BranchTargets:
    """HungarianPairs or ManyPairs -> _BranchTargets, on the device without a host sync."""
    if isinstance(matched, ManyPairs):
        _, _, gmax, width = matched.query_idx.shape
        device = matched.query_idx.device
        shape = (n_layers, batch, gmax, width)
        pair_batch = torch.arange(batch, device=device)[None, :, None, None].expand(shape)
        pair_gt = torch.arange(gmax, device=device)[None, None, :, None].expand(shape)
        return _BranchTargets(pair_batch.reshape(n_layers, -1), matched.query_idx.reshape(n_layers, -1),
                              pair_gt.reshape(n_layers, -1), matched.valid.reshape(n_layers, -1).float(),
                              matched.cls_gt)
    # Hungarian: each query at most once per layer, so its class target is its pair.
    cls_gt = torch.full((n_layers, batch, n), -1, dtype=torch.int64, device=matched.query_idx.device)
    layer = torch.arange(n_layers, device=cls_gt.device)[:, None].expand_as(matched.query_idx)
    cls_gt[layer, matched.batch_idx, matched.query_idx] = matched.gt_idx
    return _BranchTargets(matched.batch_idx, matched.query_idx, matched.gt_idx, None, cls_gt)


def _hungarian_assignments(pairs: HungarianPairs) -> list[list[Assignment]]:
    """[layer][image] -> Assignment, split by the host-known pair counts."""
    return [[_one_to_one_assignment(q, g) for q, g in zip(pairs.query_idx[layer].split(pairs.counts),
                                                           pairs.gt_idx[layer].split(pairs.counts))]
            for layer in range(pairs.query_idx.shape[0])]


def _many_assignments(many: ManyPairs, gt_sizes: tuple) -> list[list[Assignment]]:
    """[layer][image] -> Assignment from the padded one-to-many result (boolean indexing: syncs)."""
    out = []
    for layer in range(many.query_idx.shape[0]):
        per_image = []
        for b, num_gt in enumerate(gt_sizes):
            valid = many.valid[layer, b, :num_gt]
            query = many.query_idx[layer, b, :num_gt][valid]
            gt = torch.arange(num_gt, device=valid.device)[:, None].expand_as(valid)[valid]
            cls_query = (many.cls_gt[layer, b] >= 0).nonzero().squeeze(1)
            per_image.append(Assignment(query, gt, cls_query, many.cls_gt[layer, b, cls_query]))
        out.append(per_image)
    return out

