"""What the notebooks' panels show, as plain functions of a model and a dataset sample.

    outputs = run_model(model, image)                       # the model's output dict, on the CPU
    logits, boxes = branch_predictions(outputs, "o2m", layer=-1)
    assignment = compute_assignment(outputs, target, k=6, tau=0.4, alpha=0.3)
    query_attention(outputs, query), topk_candidates(outputs), query_order(outputs)
    attention_levels(model, image)                          # 02: the attention weight per feature level
    ToyModel(), ToyDataset(), toy_rows()                    # 01's toy: 2 GTs x 6 queries, S by hand
    bank = ModelBank({"o2o": model, "ms": "runs/ms/final.pth"})   # loaded on first use
    cache = SampleCache(dataset, bank)                      # outputs per (model, image)

msdetr_lite.lab.widgets builds its panels from these and msdetr_lite.viz; both can be used and
tested without a browser. Boxes follow docs/design.md (normalised cxcywh).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional, Union

import torch

from ..config import MatcherConfig
from ..matching import one_to_many, one_to_one, select_positives

__all__ = ["ModelBank", "SampleCache", "run_model", "branch_predictions", "compute_assignment",
           "query_order", "query_attention", "topk_candidates", "level_shares", "attention_levels", "ToyModel",
           "ToyDataset", "toy_rows"]

@torch.no_grad()
def run_model(model: torch.nn.Module, image: torch.Tensor, attention: bool = False, aux: bool = True) -> dict:
    """Outputs of `model` (put in eval mode) for one image [3, H, W] (a batch of one, no padding).

    aux: also compute the training-only branches (the o2m predictions of MS-DETR).
    attention: also return the decoder's sampling locations and attention weights.
    Tensors are moved to the CPU.
    """
    model.eval()
    device = next(model.parameters()).device
    out = model(image[None].to(device), None, return_attention=attention, aux_branches=aux)
    return _to_cpu(out)


def _to_cpu(x):
    if torch.is_tensor(x):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x


def branch_predictions(outputs: dict, branch: str = "o2o", layer: int = -1, batch: int = 0):
    """(logits [Q, C], boxes [Q, 4]) of one image, decoder layer and branch ("o2o" or "o2m")."""
    if branch not in outputs:
        raise KeyError(f"outputs have no {branch!r} branch (keys: {sorted(k for k in outputs)})")
    pred = outputs[branch][layer]
    return pred["logits"][batch], pred["boxes"][batch]


def compute_assignment(outputs: dict, target: Mapping, layer: int = -1, k: int = 6, tau: float = 0.4,
                       alpha: float = 0.3, max_pos_fraction: float = 0.25,
                       matcher: Optional[MatcherConfig] = None, seed: int = 0) -> dict:
    """Both assignments of one image at one decoder layer, as the loss would compute them.

    o2o: Hungarian matching (`matching.one_to_one`, the matcher config's costs) of the layer's
    o2o predictions. o2m: MS-DETR's matcher (`matching.one_to_many`) with K / tau / alpha of the
    layer's o2m predictions; a model without an o2m branch (o2o baseline) gets the matcher run
    on its o2o predictions instead, and `note` says so.

    Returns {"layer", "k", "tau", "alpha", "gt_boxes" [G, 4], "gt_labels" [G],
    "o2o_boxes" [Q, 4], "o2m_boxes" [Q, 4], "o2o": (query_idx, gt_idx),
    "o2m": (query_idx, gt_idx), "o2m_scores" [N] (S of each o2m pair), "scores" S [G, Q],
    "positive" bool [Q], "best_gt" [Q], "candidates": (query_idx, gt_idx) the top-K of every
    row of S, "note"}.
    """
    matcher = matcher or MatcherConfig()
    n_layers = len(outputs["o2o"])
    layer = layer % n_layers
    gt_labels = torch.as_tensor(target["labels"]).long().cpu()
    gt_boxes = torch.as_tensor(target["boxes"]).float().cpu()
    o2o_logits, o2o_boxes = branch_predictions(outputs, "o2o", layer)
    note = ""
    if outputs.get("o2m") and outputs["o2m"][layer]["logits"].shape[1] == o2o_logits.shape[0]:
        o2m_logits, o2m_boxes = branch_predictions(outputs, "o2m", layer)
    else:
        o2m_logits, o2m_boxes = o2o_logits, o2o_boxes
        note = "no o2m branch in this model: o2m matcher applied to its o2o predictions"
    q1, g1 = one_to_one(o2o_logits, o2o_boxes, gt_labels, gt_boxes, matcher.cost_class, matcher.cost_bbox,
                        matcher.cost_giou)
    gen = torch.Generator().manual_seed(seed)
    q2, g2, S = one_to_many(o2m_logits, o2m_boxes, gt_labels, gt_boxes, k=k, tau=tau, alpha=alpha,
                            max_pos_fraction=max_pos_fraction, generator=gen, return_scores=True)
    # the positives of steps 2-4, with the same random subset as inside one_to_many
    Q = o2m_logits.shape[0]
    max_pos = int(max_pos_fraction * Q + 1e-9)
    best_gt, positive = select_positives(S, tau, max_pos, torch.Generator().manual_seed(seed))
    if S.shape[0] and Q:
        kk = min(k, Q)
        cand_q = S.topk(kk, dim=1).indices.reshape(-1)
        cand_g = torch.arange(S.shape[0]).repeat_interleave(kk)
    else:
        cand_q = cand_g = torch.empty(0, dtype=torch.long)
    return {"layer": layer, "k": int(k), "tau": float(tau), "alpha": float(alpha),
            "max_pos_fraction": float(max_pos_fraction), "max_pos": max_pos,
            "gt_boxes": gt_boxes, "gt_labels": gt_labels, "o2o_boxes": o2o_boxes, "o2m_boxes": o2m_boxes,
            "o2o": (q1, g1), "o2m": (q2, g2), "o2m_scores": S[g2, q2] if len(q2) else torch.empty(0),
            "scores": S, "positive": positive, "best_gt": best_gt, "candidates": (cand_q, cand_g), "note": note}


def query_order(outputs: dict, layer: int = -1) -> torch.Tensor:
    """Query ids of image 0 sorted by their score (max sigmoid over classes) at `layer`, best first."""
    logits = outputs["o2o"][layer]["logits"][0]
    return logits.float().sigmoid().max(-1).values.argsort(descending=True)


def query_attention(outputs: dict, query: int, layer: int = -1) -> dict:
    """Where query `query` (an id) of image 0 looks in decoder layer `layer`'s cross-attention.

    Needs outputs from `run_model(..., attention=True)`. Returns {"sampling_locations"
    [M, L, P, 2], "attention_weights" [M, L, P], "reference" [4] (the layer's input box),
    "box" [4] (the layer's predicted box), "score", "label"}.
    """
    if "attention" not in outputs:
        raise KeyError("outputs carry no attention: run the model with return_attention=True")
    att = outputs["attention"][layer]
    logits = outputs["o2o"][layer]["logits"][0, query].float().sigmoid()
    return {"sampling_locations": att["sampling_locations"][0, query],
            "attention_weights": att["attention_weights"][0, query],
            "reference": outputs["references"][layer][0, query],
            "box": outputs["o2o"][layer]["boxes"][0, query],
            "score": float(logits.max()), "label": int(logits.argmax())}


def topk_candidates(outputs: dict, layer: int = -1, branch: str = "o2o") -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes [Q, 4], scores [Q]) of image 0 at `layer`: every query's box and its max class score."""
    logits, boxes = branch_predictions(outputs, branch, layer)
    return boxes, logits.float().sigmoid().max(-1).values


def level_shares(weights: torch.Tensor) -> list[float]:
    """The share of attention weight on each feature level, from attention weights [..., M, L, P]
    (summed over everything but the level)."""
    w = torch.as_tensor(weights).float()
    per_level = w.movedim(-2, 0).reshape(w.shape[-2], -1).sum(1)
    return (per_level / per_level.sum().clamp(min=1e-12)).tolist()


@torch.no_grad()
def attention_levels(model: torch.nn.Module, image: torch.Tensor) -> dict:
    """Where the model's deformable attention reads, by feature level, on one image: {"decoder":
    [share per level] per decoder layer (all queries' cross-attention), "encoder": [share per level]
    per encoder layer for the queries of level 0 (the finest map's tokens), "spatial_shapes"
    [[H, W] per level]}. The encoder's weights are caught with forward hooks on its attention
    modules (the model returns only the decoder's)."""
    from ..models.attention import MSDeformAttn

    caught: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: caught.append(out[2].detach().cpu()))
             for m in model.encoder.modules() if isinstance(m, MSDeformAttn)]
    try:
        out = run_model(model, image, attention=True, aux=False)
    finally:
        for h in hooks:
            h.remove()
    n0 = int(out["spatial_shapes"][0].prod())                  # level 0's tokens come first
    return {"decoder": [level_shares(a["attention_weights"][0]) for a in out["attention"]],
            "encoder": [level_shares(w[0, :n0]) for w in caught],
            "spatial_shapes": out["spatial_shapes"].tolist()}


# ---------------------------------------------------------------- the toy of notebook 01
# Two objects and six queries on a 100 x 100 canvas, one class, chosen so that every IoU and every
# S = 0.3 p + 0.7 IoU can be checked by hand (boxes as x1, y1, x2, y2 in hundredths of the canvas):
#   GT 0 = A = (10, 10, 50, 50), GT 1 = B = (60, 50, 90, 90)
#   q0 = A exactly, p 0.9     q1 = A moved right by 10 (IoU 1200 / 2000 = 0.6), p 0.5
#   q2 = A's left half (IoU 0.5), p 0.2                   q3 = B exactly, p 0.6
#   q4 = B moved down by 10 (IoU 900 / 1500 = 0.6), p 0.8  q5 = on no object, p 0.1
TOY_GT_XYXY = ((10, 10, 50, 50), (60, 50, 90, 90))
TOY_QUERIES = (((10, 10, 50, 50), 0.9), ((20, 10, 60, 50), 0.5), ((10, 10, 30, 50), 0.2),
               ((60, 50, 90, 90), 0.6), ((60, 60, 90, 100), 0.8), ((0, 80, 10, 100), 0.1))


def _cxcywh(xyxy) -> list[float]:
    x1, y1, x2, y2 = (v / 100 for v in xyxy)
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


class ToyModel(torch.nn.Module):
    """A "model" whose o2o and o2m predictions are the toy's six queries whatever the image: what
    `assignment_panel` needs to run the real matchers on numbers a reader can check by hand."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)   # a device to report
        p = torch.tensor([prob for _, prob in TOY_QUERIES])
        self.register_buffer("logits", torch.logit(p)[None, :, None])            # [1, Q, C = 1]
        self.register_buffer("boxes", torch.tensor([_cxcywh(b) for b, _ in TOY_QUERIES])[None])

    def forward(self, images, masks=None, return_attention=False, aux_branches=True):
        pred = {"logits": self.logits.expand(len(images), -1, -1), "boxes": self.boxes.expand(len(images), -1, -1)}
        return {"o2o": [pred], "o2m": [pred] if aux_branches else []}


class ToyDataset:
    """The toy's one sample: a blank canvas [3, 100, 100] and its two GTs (class 0, "object")."""

    class_names = ["object"]

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        if index != 0:
            raise IndexError(index)
        target = {"labels": torch.zeros(2, dtype=torch.long),
                  "boxes": torch.tensor([_cxcywh(b) for b in TOY_GT_XYXY]), "size": torch.tensor([100, 100])}
        return torch.full((3, 100, 100), 0.96), target


def toy_rows(alpha: float = 0.3) -> list[dict]:
    """The toy's S, one row per query, with what it is made of: p, the IoU with GT 0 (A) and GT 1 (B)
    (`match_scores` with alpha = 1 and 0), and S for each GT."""
    from ..matching import match_scores

    _, target = ToyDataset()[0]
    out = ToyModel()(torch.zeros(1, 3, 100, 100))["o2o"][0]
    logits, boxes = out["logits"][0], out["boxes"][0]
    S, iou, p = (match_scores(logits, boxes, target["labels"], target["boxes"], alpha=a) for a in (alpha, 0.0, 1.0))
    return [{"query": f"q{q}", "p": round(float(p[0, q]), 2), "IoU with GT 0": round(float(iou[0, q]), 2),
             "IoU with GT 1": round(float(iou[1, q]), 2), "S for GT 0": round(float(S[0, q]), 3),
             "S for GT 1": round(float(S[1, q]), 3)} for q in range(len(TOY_QUERIES))]


# ---------------------------------------------------------------- caches
class ModelBank:
    """Named models, given as modules or checkpoint paths (loaded on first use, eval mode, CPU)."""

    def __init__(self, models: Union[Mapping[str, object], torch.nn.Module], device: str = "cpu"):
        if isinstance(models, torch.nn.Module):
            models = {"model": models}
        if not models:
            raise ValueError("no models given")
        self._items = dict(models)
        self._loaded: dict[str, torch.nn.Module] = {}
        self.device = device

    @property
    def names(self) -> list[str]:
        return list(self._items)

    def __getitem__(self, name: str) -> torch.nn.Module:
        if name not in self._loaded:
            item = self._items[name]
            if isinstance(item, torch.nn.Module):
                model = item
            else:
                from ..engine import load_model_from_checkpoint
                model, _ = load_model_from_checkpoint(item, device=self.device)
            self._loaded[name] = model.eval()
        return self._loaded[name]


class SampleCache:
    """dataset[i] and model outputs per (model name, image, attention), least recently used first out."""

    def __init__(self, dataset, bank: ModelBank, max_items: int = 64):
        self.dataset, self.bank, self.max_items = dataset, bank, max_items
        self._samples: OrderedDict = OrderedDict()
        self._outputs: OrderedDict = OrderedDict()

    def _put(self, store: OrderedDict, key, value):
        store[key] = value
        store.move_to_end(key)
        while len(store) > self.max_items:
            store.popitem(last=False)
        return value

    def sample(self, index: int):
        if index in self._samples:
            self._samples.move_to_end(index)
            return self._samples[index]
        return self._put(self._samples, index, self.dataset[index])

    def outputs(self, name: str, index: int, attention: bool = False) -> dict:
        key = (name, index, attention)
        if key in self._outputs:
            self._outputs.move_to_end(key)
            return self._outputs[key]
        image, _ = self.sample(index)
        return self._put(self._outputs, key, run_model(self.bank[name], image, attention=attention, aux=True))


# ---------------------------------------------------------------- the panel
