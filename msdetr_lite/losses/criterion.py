"""SetCriterion and its batched path (the default): every layer and image of a branch at once."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from ..config import SUPERVISIONS, LossConfig, MatcherConfig
from ..matching import (HungarianPairs, HungarianProblem, ManyPairs, PaddedTargets, batched_o2o_cost,
                        batched_one_to_many, hungarian_solve, pad_targets)
from ..matching.reference import _xyxy
from .reference import ReferencePath
from .terms import Assignment, _iou_aware_focal_terms, _num_boxes, _one_to_one_assignment


class SetCriterion(ReferencePath, nn.Module):
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
        # 1.0, or 0.0 where the engine switches the o2m branch off (LossConfig.o2m_last_epoch):
        # its terms stay in the loss dict (same names every step) with zero weight
        self.o2m_scale = 1.0

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

    @torch.no_grad()
    def match(self, outputs: dict, targets: list[dict]) -> dict:
        """All assignments of a batch, for the losses and for the notebooks:
        {"o2o": [layer][image] -> Assignment, "o2m": [layer][image] -> Assignment (when the
        scheme has an o2m branch and outputs carry it), "enc": [image] -> Assignment}."""
        if not self.batched:
            return self._match_reference(outputs, self._prepare(outputs, targets))
        gt = self._padded_targets(outputs, targets)
        return self._assignments(self._match_batched(outputs, gt), gt)

    def _o2m_weights(self, num_boxes: Tensor) -> tuple[tuple[float, float, float], Tensor]:
        """(cls, L1, GIoU) weights and normaliser of the o2m branch of the current scheme."""
        c, scale = self.loss_cfg, self.o2m_scale
        o2o = (c.cls_o2o, c.bbox_o2o, c.giou_o2o)
        if self.supervision == "ms":
            return tuple(w * scale for w in (c.cls_o2m, c.bbox_o2m, c.giou_o2m)), num_boxes
        if self.supervision == "hybrid":
            # H-DETR normalises by its repeated targets, i.e. K times as many boxes.
            return tuple(w * c.hybrid_weight * scale for w in o2o), num_boxes * max(c.hybrid_k, 1)
        return tuple(w * c.group_weight * scale for w in o2o), num_boxes          # group

    def o2m_layer_mask(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """The o2m terms `loss_*_o2m_{l}` with layers l >= LossConfig.o2m_layers set to zero (a
        departure; 0 keeps every layer). Zeroed terms stay in the dict: same names every step."""
        n = self.loss_cfg.o2m_layers
        if not n:
            return terms
        return {k: v * 0.0 if int(k.rsplit("_", 1)[1]) >= n else v for k, v in terms.items()}

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
            losses.update(self.o2m_layer_mask(self._batched_branch_losses(
                o2m, gt, norm, weights, [f"o2m_{layer}" for layer in range(o2m.logits.shape[0])])))
        if "enc" in branches:
            losses.update(self._batched_branch_losses(
                branches["enc"], gt, num_boxes, (c.cls_enc, c.bbox_enc, c.giou_enc), ["enc"],
                class_agnostic=True))
        losses["loss"] = torch.stack(list(losses.values())).sum()
        if return_matches:
            return losses, self._assignments(branches, gt)
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
                iou = box_iou(_xyxy(boxes)[..., None, :], _xyxy(gt.boxes[image, cls_gt])[..., None, :])
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

