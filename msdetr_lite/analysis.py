"""Candidate quality per decoder layer: the quantities behind the paper's Fig. 1.

MS-DETR's claim is that one-to-many supervision of the primary queries makes the decoder's
*candidates* better: more queries sit tightly on each object, and the top-scored ones cover the
objects. A **candidate**, everywhere in this suite (notebooks 01, 03, 04, the readings), is one
of a layer's top-k queries by score (k = 20, the boxes the paper's Fig. 1 draws); the statistics
over *all* Q queries are the second view, reported beside it. These statistics measure both,
class-agnostically, from a model's output dict:

    best_iou        per GT: the best IoU over all Q queries                        (mean over GTs)
    best_iou_topk   per GT: the best IoU over the top-k scored queries             (mean over GTs)
    num_iou50       per GT: how many queries have IoU >= 0.5 with it               (mean over GTs)
    num_iou70       per GT: how many queries have IoU >= 0.7 with it               (mean over GTs)
    recall50_topk   fraction of GTs covered by at least one top-k query at IoU >= 0.5
    recall75_topk   fraction of GTs covered by at least one top-k query at IoU >= 0.75
    duplicates      per image: high-score queries (score > score_thresh) that land (IoU >=
                    dup_iou) on a GT already claimed by a higher-scored query  (mean over images)
    dups_topk       per image: top-k queries that land (IoU >= dup_iou) on a GT another top-k
                    query already found (`candidate_hits`): how much of the top-k duplicates
                    crowd out                                                  (mean over images)

A query's score is its max sigmoid over classes. `duplicates` goes through the confident
queries from the highest score down, each claiming the GT it overlaps most; a query whose GT is
already claimed is a duplicate. o2o training should drive it to ~0, o2m alone would not.

Boxes are compared in the normalised cxcywh frame of the outputs and targets: IoU does not
change when x and y are scaled (even by different factors), so no image sizes are needed.

This module computes and stores; it draws nothing. `msdetr_lite.viz.plot_candidate_quality` draws
these statistics (titled by STAT_TITLES below, which viz imports), `viz.save_figure` writes the PNG.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torchvision.ops import box_convert, box_iou
from tqdm.auto import tqdm

STAT_NAMES = ("best_iou", "best_iou_topk", "num_iou50", "num_iou70",
              "recall50_topk", "recall75_topk", "duplicates", "dups_topk")
STAT_TITLES = {
    "best_iou": "best IoU per GT, all queries (mean IoU)",
    "best_iou_topk": "best IoU per GT, top-k queries (mean IoU)",
    "num_iou50": "queries with IoU >= 0.5 (per GT)",
    "num_iou70": "queries with IoU >= 0.7 (per GT)",
    "recall50_topk": "GTs found by the top-k at IoU 0.5 (fraction)",
    "recall75_topk": "GTs found by the top-k at IoU 0.75 (fraction)",
    "duplicates": "duplicates (per image)",
    "dups_topk": "top-k queries on an already-found GT (per image)",
}
_PER_IMAGE = ("duplicates", "dups_topk")
_PER_GT = tuple(n for n in STAT_NAMES if n not in _PER_IMAGE)


class CandidateQualityAccumulator:
    """Running sums of the statistics per decoder layer; `result()` gives the means."""

    def __init__(self, topk: int = 20, score_thresh: float = 0.3, dup_iou: float = 0.5, branch: str = "o2o"):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk, self.score_thresh, self.dup_iou, self.branch = topk, score_thresh, dup_iou, branch
        self.sums: Optional[list[dict]] = None     # per layer: stat -> sum
        self.num_gt = 0
        self.num_images = 0

    @torch.no_grad()
    def update(self, outputs: dict, targets: Sequence[dict]) -> None:
        """outputs[branch]: list over layers of {"logits": [B, Q, C], "boxes": [B, Q, 4] cxcywh};
        targets: B dicts with "boxes" [G, 4] normalised cxcywh."""
        if self.branch not in outputs:
            raise KeyError(f"outputs have no {self.branch!r} predictions (keys: {sorted(outputs)}); "
                           f"o2m exists only in training mode")
        layers = outputs[self.branch]
        if self.sums is None:
            self.sums = [dict.fromkeys(STAT_NAMES, 0.0) for _ in layers]
        elif len(self.sums) != len(layers):
            raise ValueError(f"got {len(layers)} decoder layers, earlier batches had {len(self.sums)}")
        B = layers[-1]["logits"].shape[0]
        if len(targets) != B:
            raise ValueError(f"{len(targets)} targets for a batch of {B} images")
        for sums, layer in zip(self.sums, layers):
            for b in range(B):
                stats = image_candidate_stats(layer["logits"][b], layer["boxes"][b],
                                              targets[b]["boxes"].to(layer["boxes"].device),
                                              self.topk, self.score_thresh, self.dup_iou)
                for name in STAT_NAMES:
                    sums[name] += stats[name]
        self.num_images += B
        self.num_gt += sum(int(t["boxes"].shape[0]) for t in targets)

    def result(self) -> dict:
        """{"layers": [{stat: mean} per decoder layer], "num_images", "num_gt", "topk",
        "score_thresh", "dup_iou", "branch"}; per-GT means are NaN when there was no GT."""
        layers = []
        for sums in self.sums or []:
            d = {n: (sums[n] / self.num_gt if self.num_gt else math.nan) for n in _PER_GT}
            d.update({n: sums[n] / self.num_images if self.num_images else math.nan for n in _PER_IMAGE})
            layers.append(d)
        return {"layers": layers, "num_images": self.num_images, "num_gt": self.num_gt,
                "topk": self.topk, "score_thresh": self.score_thresh, "dup_iou": self.dup_iou,
                "branch": self.branch}


def image_candidate_stats(logits: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor,
                          topk: int = 20, score_thresh: float = 0.3, dup_iou: float = 0.5) -> dict:
    """Statistics of one image and one layer, as *sums* over its GTs (and its duplicate count).

    logits [Q, C], boxes [Q, 4] and gt_boxes [G, 4], boxes normalised cxcywh.
    Returns {stat: float}: per-GT stats summed over the G GTs (0 when G = 0), "duplicates" the
    image's count.
    """
    scores = logits.float().sigmoid().max(dim=-1).values               # [Q]
    pred = box_convert(boxes.float(), "cxcywh", "xyxy")
    gt = box_convert(gt_boxes.float(), "cxcywh", "xyxy")
    out = dict.fromkeys(STAT_NAMES, 0.0)
    if gt.shape[0] == 0 or pred.shape[0] == 0:
        return out                                # no GT: confident queries are FPs, not duplicates
    iou = box_iou(gt, pred)                                              # [G, Q]
    top = scores.topk(min(topk, scores.shape[0])).indices
    best_top = iou[:, top].max(dim=1).values                             # [G]
    out["best_iou"] = iou.max(dim=1).values.sum().item()
    out["best_iou_topk"] = best_top.sum().item()
    out["num_iou50"] = (iou >= 0.5).sum().item()
    out["num_iou70"] = (iou >= 0.7).sum().item()
    out["recall50_topk"] = (best_top >= 0.5).sum().item()
    out["recall75_topk"] = (best_top >= 0.75).sum().item()
    hit = _hits(iou[:, top], dup_iou)
    out["dups_topk"] = float(int((hit >= 0).sum()) - int(hit[hit >= 0].unique().numel()))

    confident = torch.nonzero(scores > score_thresh).flatten()
    confident = confident[scores[confident].argsort(descending=True)]
    claimed = torch.zeros(gt.shape[0], dtype=torch.bool)
    dups = 0
    if confident.numel():
        best_iou, best_gt = iou[:, confident].max(dim=0)                # per confident query
        for q_iou, g in zip(best_iou.tolist(), best_gt.tolist()):
            if q_iou >= dup_iou:
                if claimed[g]:
                    dups += 1
                else:
                    claimed[g] = True
    out["duplicates"] = float(dups)
    return out


def _hits(iou: torch.Tensor, min_iou: float) -> torch.Tensor:
    """For each column (a query) of iou [G, K]: the GT it overlaps most if that IoU >= min_iou, else -1."""
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), -1, dtype=torch.long)
    best, gt = iou.max(dim=0)
    return torch.where(best >= min_iou, gt, torch.full_like(gt, -1))


def candidate_hits(scores: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor, topk: int = 20,
                   min_iou: float = 0.5) -> dict:
    """Which object each candidate (a top-k query by score) lands on, for drawing duplicates.

    scores [Q] (a query's score: its max sigmoid over classes), boxes [Q, 4], gt_boxes [G, 4],
    boxes normalised cxcywh. A candidate hits the GT
    it overlaps most when that IoU is at least `min_iou`. Returns {"queries": [k] query ids, best
    score first, "scores": [k], "gt": [k] the GT each one hits (-1: none), "iou": [k] its IoU with
    that GT (0 for none), "per_gt": [G] candidates per GT, "missed": GT ids no candidate hits,
    "extra": candidates beyond the first on a GT (`dups_topk` of one image)}."""
    scores = torch.as_tensor(scores).float()
    top = scores.topk(min(topk, scores.shape[0])).indices
    iou = box_iou(box_convert(gt_boxes.float(), "cxcywh", "xyxy"), box_convert(boxes.float()[top], "cxcywh", "xyxy"))
    gt = _hits(iou, min_iou)
    per_gt = torch.bincount(gt[gt >= 0], minlength=gt_boxes.shape[0])
    return {"queries": top, "scores": scores[top], "gt": gt,
            "iou": iou.max(dim=0).values.where(gt >= 0, torch.zeros(())) if iou.shape[0] else torch.zeros(len(top)),
            "per_gt": per_gt, "missed": torch.nonzero(per_gt == 0).flatten().tolist(),
            "extra": int((per_gt - 1).clamp(min=0).sum())}


def candidate_quality(outputs: dict, targets: Sequence[dict], topk: int = 20, score_thresh: float = 0.3,
                      dup_iou: float = 0.5, branch: str = "o2o") -> dict:
    """Candidate statistics of one batch of model outputs, per decoder layer.

    outputs: the model's dict; uses outputs[branch] = list over layers of
        {"logits": [B, Q, C], "boxes": [B, Q, 4] normalised cxcywh}.
    targets: B dicts with "boxes" [G, 4] normalised cxcywh.
    Returns the `CandidateQualityAccumulator.result()` dict: "layers" is a list over decoder
    layers of {stat: mean} with the stats of `STAT_NAMES`.
    """
    acc = CandidateQualityAccumulator(topk, score_thresh, dup_iou, branch)
    acc.update(outputs, targets)
    return acc.result()


@torch.no_grad()
def candidate_quality_over_loader(model: torch.nn.Module, loader, device: Union[str, torch.device],
                                  topk: int = 20, max_batches: Optional[int] = None,
                                  score_thresh: float = 0.3, dup_iou: float = 0.5,
                                  progress: bool = True) -> dict:
    """`candidate_quality` accumulated over (the first max_batches batches of) a loader, with the
    model in eval mode (o2o predictions, as at inference). Means are over all GTs / images."""
    acc = CandidateQualityAccumulator(topk, score_thresh, dup_iou, "o2o")
    was_training = model.training
    model.eval()
    try:
        for i, (images, masks, targets) in enumerate(tqdm(loader, desc="candidates", disable=not progress,
                                                          leave=False)):
            if max_batches is not None and i >= max_batches:
                break
            acc.update(model(images.to(device), masks.to(device)), targets)
    finally:
        model.train(was_training)
    return acc.result()


def save_json(stats: dict, path: Union[str, Path]) -> Path:
    """Write a stats dict (or {name: stats}) as json; NaN is written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    path.write_text(json.dumps(clean(stats), indent=2))
    return path


def load_json(path: Union[str, Path]) -> dict:
    """Read what `save_json` wrote (null -> NaN in the per-layer stats)."""
    data = json.loads(Path(path).read_text())

    def restore(x):
        if isinstance(x, dict):
            return {k: (math.nan if v is None and k in STAT_NAMES else restore(v)) for k, v in x.items()}
        if isinstance(x, list):
            return [restore(v) for v in x]
        return x

    return restore(data)


__all__ = ["STAT_NAMES", "STAT_TITLES", "CandidateQualityAccumulator", "image_candidate_stats", "candidate_hits",
           "candidate_quality", "candidate_quality_over_loader", "save_json", "load_json"]
