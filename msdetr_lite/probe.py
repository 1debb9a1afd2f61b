"""The mechanism probe: why do MS-DETR's confident duplicates survive NMS-free at this scale?

Measured on trained checkpoints, no training: for every val image and decoder layer.

The o2m matcher's view (MS-DETR's six steps, `matching.reference`, on the predictions the o2m
matcher sees in training: ms's o2m branch; for o2o its o2o predictions, "what top-K would pick"):

    positives_per_gt  o2m targets per GT, min(c_g, K)                           (mean over GTs)
    weakest_iou       the lowest IoU of an o2m (query, GT) pair in the image     (mean over images)
    positive_score    class probability of the o2m targets                       (mean over pairs)
    cap_binds         share of images whose positives (steps 2-3) exceed the cap (floor(0.25 Q))
    o2o_is_o2m_top1   share of GTs whose Hungarian (o2o) query is the top-1 query of its S row

The de-duplication view (o2o predictions, as at inference). A GT's *candidates* are the queries
whose box has IoU >= 0.5 with it, ranked by their probability of the GT's class:

    score1, score2    the best and second-best candidate's score (0 where there is none)
    has_second        share of GTs with a second candidate
    sim_pre_sa        cosine similarity of the two best candidates' content vectors as they enter
                      the layer's self-attention (the o2m tap of the released layer, Fig. 4(c))
    sim_post_sa       ... right after self-attention (+ residual and norm)
    sim_out           ... at the layer's output, what the heads read      (means over GTs with two)

If self-attention de-duplicates, score2 falls through the layers while score1 stays, and the
two candidates' vectors move apart from sim_pre_sa to sim_post_sa.

    result = probe_checkpoint("runs/ms/epoch_3.pth", max_images=200)   # {"layers": [{stat: mean}]}
    records = probe_run("runs/ms")                                      # one result per snapshot
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from .matching.reference import _xyxy, match_scores, one_to_one, select_positives, topk_per_gt

__all__ = ["PROBE_STATS", "PROBE_TITLES", "PROBE_FILE", "probe_outputs", "probe_checkpoint", "probe_run",
           "mean_over_runs"]

PROBE_FILE = "probe.json"             # probe_run's cache in the run folder
CANDIDATE_IOU = 0.5
PROBE_TITLES = {
    "positives_per_gt": "o2m targets per object",
    "weakest_iou": "IoU of the weakest o2m target",
    "positive_score": "class probability of the o2m targets",
    "cap_binds": "images where the 25% cap binds (share)",
    "o2o_is_o2m_top1": "objects whose o2o query is o2m's top-1 (share)",
    "score1": "best candidate's score",
    "score2": "second-best candidate's score",
    "has_second": "objects with a second candidate (share)",
    "sim_pre_sa": "similarity of the 2 best candidates, before self-attention",
    "sim_post_sa": "similarity of the 2 best candidates, after self-attention",
    "sim_out": "similarity of the 2 best candidates, layer output",
}
PROBE_STATS = tuple(PROBE_TITLES)


class _Taps:
    """Forward hooks on every decoder layer: the content vectors [B, Q, C] entering
    self-attention (its value input), leaving it (norm_sa's output) and leaving the layer."""

    def __init__(self, decoder):
        self.pre, self.post, self.out = {}, {}, {}
        self.handles = []
        for l, layer in enumerate(decoder.layers):
            self.handles += [
                layer.self_attn.register_forward_pre_hook(lambda m, args, l=l: self.pre.__setitem__(l, args[2])),
                layer.norm_sa.register_forward_hook(lambda m, args, out, l=l: self.post.__setitem__(l, out)),
                layer.register_forward_hook(lambda m, args, out, l=l: self.out.__setitem__(l, out[0])),
            ]

    def remove(self):
        for h in self.handles:
            h.remove()


def _cos(a: Tensor, b: Tensor) -> float:
    return F.cosine_similarity(a[None], b[None]).item()


def _image_layer(stats: dict, o2o: dict, o2m: dict, b: int, target: dict, hidden: tuple, cfg) -> None:
    """Add one image's statistics at one layer to `stats` (stat -> list of values)."""
    labels, gt = target["labels"], target["boxes"]
    if gt.numel() == 0:
        return
    m = cfg.matcher
    logits, boxes = o2m["logits"][b], o2m["boxes"][b]                  # the o2m matcher's input
    S = match_scores(logits, boxes, labels, gt, m.alpha)               # [G, Q]
    best_gt, positive = select_positives(S, m.tau, None)
    cap = int(math.floor(m.max_pos_fraction * logits.shape[0] + 1e-9))
    stats["cap_binds"].append(float(positive.sum().item() > cap))
    if positive.sum() > cap:                                           # step 4, deterministically
        keep = positive.nonzero().squeeze(1)[:cap]
        positive = torch.zeros_like(positive)
        positive[keep] = True
    q_idx, g_idx = topk_per_gt(S, best_gt, positive, m.k)
    counts = torch.bincount(g_idx, minlength=len(labels))
    stats["positives_per_gt"] += counts.float().tolist()
    if q_idx.numel():
        iou = box_iou(_xyxy(gt), _xyxy(boxes))                          # [G, Q]
        stats["weakest_iou"].append(iou[g_idx, q_idx].min().item())
        stats["positive_score"] += logits.sigmoid()[q_idx, labels[g_idx]].tolist()
    oq, og = one_to_one(o2o["logits"][b], o2o["boxes"][b], labels, gt, m.cost_class, m.cost_bbox, m.cost_giou,
                        cfg.loss.focal_alpha, cfg.loss.focal_gamma)
    top1 = S.argmax(dim=1)                                              # [G]
    stats["o2o_is_o2m_top1"] += (top1[og] == oq).float().tolist()

    # de-duplication: the o2o predictions, as at inference
    scores = o2o["logits"][b].sigmoid()[:, labels].T                    # [G, Q]
    iou = box_iou(_xyxy(gt), _xyxy(o2o["boxes"][b]))                     # [G, Q]
    ranked = torch.where(iou >= CANDIDATE_IOU, scores, torch.full_like(scores, -1.0)).sort(dim=1, descending=True)
    for g in range(len(labels)):
        s, q = ranked.values[g], ranked.indices[g]
        stats["score1"].append(max(s[0].item(), 0.0))
        second = s.numel() > 1 and s[1].item() >= 0
        stats["score2"].append(s[1].item() if second else 0.0)
        stats["has_second"].append(float(second))
        if second:
            for name, h in zip(("sim_pre_sa", "sim_post_sa", "sim_out"), hidden):
                stats[name].append(_cos(h[b, q[0]], h[b, q[1]]))


@torch.no_grad()
def probe_outputs(model: torch.nn.Module, images: Tensor, masks: Tensor, targets: list[dict], cfg,
                  stats: Optional[list[dict]] = None) -> list[dict]:
    """Run `model` (eval mode, with the o2m branch where it has one) on one batch and add every
    image's statistics to `stats`, a list over decoder layers of {stat: [values]} (made if None)."""
    n_layers = len(model.decoder.layers)
    stats = stats if stats is not None else [defaultdict(list) for _ in range(n_layers)]
    taps = _Taps(model.decoder)
    try:
        out = model(images, masks, aux_branches=True)
    finally:
        taps.remove()
    o2m_branch = out["o2m"] if cfg.model.supervision == "ms" else out["o2o"]
    for l in range(n_layers):
        hidden = (taps.pre[l], taps.post[l], taps.out[l])
        for b, target in enumerate(targets):
            _image_layer(stats[l], out["o2o"][l], o2m_branch[l], b, target, hidden, cfg)
    return stats


def _means(stats: list[dict]) -> list[dict]:
    return [{k: (sum(v) / len(v) if v else None) for k, v in ((k, s.get(k, [])) for k in PROBE_STATS)}
            for s in stats]


def probe_checkpoint(path: Union[str, Path], max_images: int = 0, batch_size: Optional[int] = None,
                     data_root: Optional[str] = None) -> dict:
    """The probe of one checkpoint (checkpoint.pth, final.pth or epoch_N.pth) over the val
    split of its config (or `data_root`), the first `max_images` images (0 = all), batched as in
    training. Returns {"layers": [{stat: mean or None}], "images": n, "supervision", "epoch"}."""
    from .checkpoint import load_checkpoint, load_model_from_checkpoint
    from .data import build_dataset, build_val_loader

    model, cfg = load_model_from_checkpoint(path, device="cpu")
    if data_root is not None:
        cfg.data.root = data_root
    dataset = build_dataset(cfg.data, "val")
    if max_images:
        dataset = torch.utils.data.Subset(dataset, range(min(max_images, len(dataset))))
    loader = build_val_loader(cfg, dataset, batch_size or cfg.train.batch_size)
    stats = None
    for images, masks, targets in loader:
        stats = probe_outputs(model, images, masks, targets, cfg, stats)
    epoch = load_checkpoint(path).get("epoch")
    return {"layers": _means(stats), "images": len(dataset), "supervision": cfg.model.supervision,
            "epoch": epoch}


def probe_run(run_dir: Union[str, Path], max_images: int = 0, refresh: bool = False) -> list[dict]:
    """The probe of every epoch snapshot (epoch_N.pth, train.keep_snapshots) of a run folder, in
    epoch order; cached in run_dir/probe.json (recomputed where a snapshot is new or `refresh`)."""
    run_dir = Path(run_dir)
    snaps = sorted(run_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    if not snaps:
        raise FileNotFoundError(f"{run_dir} has no epoch_N.pth snapshots (train with train.keep_snapshots=true)")
    cache_path = run_dir / PROBE_FILE
    cache = {} if refresh or not cache_path.is_file() else json.loads(cache_path.read_text())
    key = str(max_images)
    done = cache.get(key, {})
    for snap in snaps:
        if snap.name not in done:
            done[snap.name] = probe_checkpoint(snap, max_images)
    cache[key] = done
    tmp = cache_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cache, indent=1) + "\n")
    tmp.replace(cache_path)
    return [done[s.name] for s in snaps]


def mean_over_runs(runs: list[list[dict]]) -> list[dict]:
    """The mean over seeds of several `probe_run` results of one scheme: per epoch (the epochs all
    runs have) {"epoch", "seeds", "layers": [{stat: mean or None}]}."""
    if not runs:
        return []
    by_epoch = [{r["epoch"]: r for r in run} for run in runs]
    epochs = sorted(set.intersection(*(set(e) for e in by_epoch)))
    out = []
    for epoch in epochs:
        recs = [e[epoch] for e in by_epoch]
        layers = []
        for l in range(len(recs[0]["layers"])):
            layer = {}
            for name in PROBE_STATS:
                vals = [r["layers"][l][name] for r in recs if r["layers"][l][name] is not None]
                layer[name] = sum(vals) / len(vals) if vals else None
            layers.append(layer)
        out.append({"epoch": epoch, "seeds": len(recs), "layers": layers})
    return out
