"""COCO box AP with pycocotools, for the final prediction and for every decoder layer.

    stats = evaluate(model, val_loader, device)            # all decoder layers
    stats["final"]["AP"], [s["AP"] for s in stats["layers"]]

Values are fractions in [0, 1] as COCOeval reports them (papers print them x100). As in
COCOeval, an area range without any ground truth gives -1 for its APs / ARs.

Detections come from `postprocess` (top-k (query, class) pairs by sigmoid score, no NMS), boxes
scaled to the *original* image size, because COCO's ground truth lives in the file's pixels.
`evaluate(..., nms_iou=0.7)` also scores every layer after class-wise NMS: the gap between the
two is what duplicates cost (MS-DETR's o2m branch makes more of them, its o2o branch must learn
to suppress them).
"""
from __future__ import annotations

import contextlib
import io
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert
from tqdm.auto import tqdm

from .data import base_dataset
from .models.postprocess import postprocess

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _metric_names(max_dets: int) -> list[str]:
    names = list(METRIC_NAMES)
    names[8] = f"AR{max_dets}"                    # COCOeval's third maxDets setting
    return names


def coco_eval(coco_gt: COCO, detections: list[dict], img_ids: Optional[Iterable[int]] = None,
              max_dets: int = 100, per_class: bool = False) -> dict:
    """COCO bbox metrics of `detections` against `coco_gt`, quietly (COCOeval's prints are captured).

    detections: COCO results format, one dict per box:
        {"image_id": int, "category_id": int (the dataset's id, not the contiguous label),
         "bbox": [x, y, w, h] pixels of the original image, "score": float}
    img_ids: the images evaluated (default: all of coco_gt); images without a detection count
        as missed ground truth.
    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", f"AR{max_dets}", "ARs",
    "ARm", "ARl"} as floats, plus "per_class": {category id: AP} when per_class=True.
    No detections at all gives 0 for every metric.
    """
    img_ids = sorted(coco_gt.getImgIds()) if img_ids is None else sorted(set(int(i) for i in img_ids))
    names = _metric_names(max_dets)
    if len(detections) == 0 or len(img_ids) == 0:
        out = {n: 0.0 for n in names}
        if per_class:
            out["per_class"] = {int(c): 0.0 for c in sorted(coco_gt.getCatIds())}
        return out

    unknown_imgs = {d["image_id"] for d in detections} - set(coco_gt.getImgIds())
    if unknown_imgs:
        raise ValueError(f"detections refer to {len(unknown_imgs)} image id(s) not in the ground truth, "
                         f"e.g. {sorted(unknown_imgs)[:5]}")
    unknown_cats = {d["category_id"] for d in detections} - set(coco_gt.getCatIds())
    if unknown_cats:
        raise ValueError(f"detections use category id(s) {sorted(unknown_cats)[:5]} not in the ground "
                         f"truth categories {sorted(coco_gt.getCatIds())}; map contiguous labels "
                         f"back with dataset.label_to_cat_id")

    # loadRes writes area / id into the dicts it gets: hand it copies
    dets = [dict(d) for d in detections]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = img_ids
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {n: float(v) for n, v in zip(names, ev.stats)}
    if per_class:
        # precision [T iou thresholds, R recall points, K classes, A areas, M maxDets]; -1 = no GT
        prec = ev.eval["precision"][:, :, :, 0, -1]
        out["per_class"] = {}
        for k, cat_id in enumerate(ev.params.catIds):
            p = prec[:, :, k]
            out["per_class"][int(cat_id)] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return out


def detections_to_coco(dets: dict, image_id: int, label_to_cat_id: Sequence[int]) -> list[dict]:
    """One image's postprocess output {"scores" [k], "labels" [k], "boxes" [k, 4] xyxy pixels}
    -> COCO results dicts (xywh, dataset category ids)."""
    labels = dets["labels"].tolist()
    if labels and max(labels) >= len(label_to_cat_id):
        raise ValueError(f"the model predicts label {max(labels)} but the dataset has "
                         f"{len(label_to_cat_id)} classes; set model.num_classes from the dataset")
    boxes = box_convert(dets["boxes"].float(), "xyxy", "xywh").cpu().tolist()
    scores = dets["scores"].float().cpu().tolist()
    return [{"image_id": int(image_id), "category_id": int(label_to_cat_id[l]), "bbox": b, "score": s}
            for l, b, s in zip(labels, boxes, scores)]


def _resolve_layers(layers: Union[str, int, Sequence[int]], n_layers: int) -> list[int]:
    """"all" -> 0..L-1; "final" -> [L-1]; int or ints (negative allowed) -> non-negative ids."""
    if isinstance(layers, str):
        if layers == "all":
            return list(range(n_layers))
        if layers in ("final", "last"):
            return [n_layers - 1]
        raise ValueError(f"layers must be 'all', 'final' or layer indices, got {layers!r}")
    ids = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for l in ids:
        if not -n_layers <= int(l) < n_layers:
            raise ValueError(f"layer {l} out of range for {n_layers} decoder layers")
        out.append(int(l) % n_layers)
    return out


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


# The duplicate count of analysis.image_candidate_stats, with its defaults: confident queries
# (max class score > 0.3) landing at IoU >= 0.5 on a GT already claimed by a higher-scored one.
DUP_SCORE_THRESH, DUP_IOU = 0.3, 0.5


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: Union[str, torch.device],
             layers: Union[str, int, Sequence[int]] = "all", max_dets: int = 100,
             progress: bool = True, per_class: bool = False, nms_iou: Optional[float] = None) -> dict:
    """COCO AP of the model's o2o predictions on `loader` (batches from `collate`).

    loader.dataset: a CocoDetection (or Subset(s) of one): its `coco` is the ground truth and
        its `label_to_cat_id` maps contiguous labels back to category ids.
    layers: "all" (every decoder layer), "final", or decoder layer indices.
    nms_iou: also score every layer after class-wise NMS at this IoU (postprocess's nms_iou).
        The headline numbers stay NMS-free, as the detector is meant to run; the difference
        says how much AP the model loses to duplicates.
    Returns {"final": metrics of the last decoder layer, "layers": [metrics per requested layer],
    "layer_ids": [the layers' indices], "num_images": images evaluated,
    "duplicates": {"per_image": [mean duplicates per image, per requested layer],
    "score_thresh", "dup_iou"} (the count of analysis.image_candidate_stats), and with nms_iou
    "nms": {"iou", "final", "layers"}}; metrics as `coco_eval`.

    Under torch.distributed (e.g. with a DistributedSampler) every rank runs its share, the
    detections are gathered (all_gather_object) and de-duplicated per image (the sampler pads
    with repeats), rank 0 evaluates and the result is broadcast, so all ranks return it.
    """
    from .analysis import image_candidate_stats

    if nms_iou is not None and not 0.0 < float(nms_iou) <= 1.0:
        raise ValueError(f"nms_iou must be None (no NMS) or an IoU in (0, 1], got {nms_iou!r}")
    ds = base_dataset(loader.dataset)
    if not (hasattr(ds, "coco") and hasattr(ds, "label_to_cat_id")):
        raise TypeError(f"evaluate needs a COCO-style dataset with .coco and .label_to_cat_id "
                        f"(e.g. CocoDetection), got {type(ds).__name__}")
    distributed = _dist_ready()
    rank = dist.get_rank() if distributed else 0
    variants = [None] if nms_iou is None else [None, float(nms_iou)]

    was_training = model.training
    model.eval()
    layer_ids: Optional[list[int]] = None
    computed: list[int] = []
    # image_id -> {"dets": [variant][computed layer] -> COCO dicts, "dups": [computed layer] -> count}
    per_image: dict[int, dict] = {}
    try:
        for images, masks, targets in tqdm(loader, desc="eval", disable=not progress or rank != 0,
                                           leave=False):
            outputs = model(images.to(device), masks.to(device))
            if layer_ids is None:
                n_layers = len(outputs["o2o"])
                layer_ids = _resolve_layers(layers, n_layers)
                computed = sorted(set(layer_ids) | {n_layers - 1})
            sizes = torch.stack([t["orig_size"] for t in targets]).to(outputs["o2o"][-1]["boxes"].device)
            per_variant = [[postprocess(outputs, sizes, k=max_dets, layer=l, nms_iou=v) for l in computed]
                           for v in variants]
            for b, t in enumerate(targets):
                gt = t["boxes"].to(outputs["o2o"][-1]["boxes"].device)
                per_image[int(t["image_id"])] = {
                    "dets": [[detections_to_coco(dets[b], t["image_id"], ds.label_to_cat_id) for dets in per_layer]
                             for per_layer in per_variant],
                    "dups": [image_candidate_stats(outputs["o2o"][l]["logits"][b], outputs["o2o"][l]["boxes"][b], gt,
                                                   score_thresh=DUP_SCORE_THRESH, dup_iou=DUP_IOU)["duplicates"]
                             for l in computed]}
    finally:
        model.train(was_training)

    if distributed:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (per_image, layer_ids, computed))
        result = [None]
        if rank == 0:
            merged: dict[int, dict] = {}
            for part, ids, comp in gathered:
                merged.update(part)               # repeats of one image carry equal detections
                if ids is not None:
                    layer_ids, computed = ids, comp
            result[0] = _score(ds.coco, merged, layer_ids, computed, max_dets, per_class, variants)
        dist.broadcast_object_list(result, src=0)
        return result[0]
    return _score(ds.coco, per_image, layer_ids, computed, max_dets, per_class, variants)


def _score(coco_gt: COCO, per_image: dict, layer_ids: Optional[list[int]], computed: list[int],
           max_dets: int, per_class: bool, variants: list[Optional[float]]) -> dict:
    if layer_ids is None:
        raise ValueError("evaluate: the loader yielded no batches")
    img_ids = sorted(per_image)
    scored = []
    for v in range(len(variants)):
        by_layer = {}
        for j, l in enumerate(computed):
            dets = [d for i in img_ids for d in per_image[i]["dets"][v][j]]
            by_layer[l] = coco_eval(coco_gt, dets, img_ids=img_ids, max_dets=max_dets, per_class=per_class)
        scored.append({"final": by_layer[computed[-1]], "layers": [by_layer[l] for l in layer_ids]})
    dups = {l: sum(per_image[i]["dups"][j] for i in img_ids) / len(img_ids) for j, l in enumerate(computed)}
    out = {**scored[0], "layer_ids": list(layer_ids), "num_images": len(img_ids),
           "duplicates": {"per_image": [dups[l] for l in layer_ids], "score_thresh": DUP_SCORE_THRESH,
                          "dup_iou": DUP_IOU}}
    if len(variants) > 1:
        out["nms"] = {"iou": variants[1], **scored[1]}
    return out


def format_metrics(metrics: dict, keys: Sequence[str] = ("AP", "AP50", "AP75", "APs", "APm", "APl")) -> str:
    """One line, x100 as papers print: 'AP 41.2 | AP50 60.3 | ...' ('-' where COCOeval gave -1)."""
    return " | ".join(f"{k} {100 * metrics[k]:.1f}" if metrics[k] >= 0 else f"{k} -"
                      for k in keys if k in metrics)


__all__ = ["coco_eval", "evaluate", "detections_to_coco", "format_metrics", "METRIC_NAMES"]
