"""Interactive panels for the notebooks, each built from plain functions.

A panel is a row of ipywidgets controls above an `ipywidgets.Output` that shows a matplotlib
figure; moving a control calls the panel's draw function with the values of all controls and
puts the new figure (as PNG) into the Output. Everything a panel computes lives in plain
functions here (`run_model`, `compute_assignment`, `query_attention`, `topk_candidates`) and
everything it draws in `msdetr_lite.viz`, so both can be used and tested without a browser:

    panel = assignment_panel({"epoch 1": model_a, "final": model_b}, val_dataset)
    panel                                  # in a notebook: shows the controls and the figure
    panel.controls["K"].value = 3          # what a user's slider move does: redraws
    panel.figure, panel.draws, panel.png   # the current figure, redraw count, its PNG bytes
    panel.set(K=2, tau=0.5)                # several values at once, one redraw

Panels: `detections_panel` (00_tour), `assignment_panel` (01_assignments), `attention_panel`
(02_deformable_attention), `candidates_panel` (04_candidate_quality).

Models may be given as modules or as checkpoint paths (loaded on first use); model outputs are
cached per (model, image), so moving K / tau / alpha only re-runs the matcher.
"""
from __future__ import annotations

import base64
import threading
import time
import traceback
from collections import OrderedDict
from typing import Callable, Mapping, Optional, Sequence, Union

import ipywidgets as W
import torch
from matplotlib.figure import Figure

from . import viz
from .config import MatcherConfig
from .matching import match_scores, one_to_many, one_to_one, select_positives

__all__ = [
    "Panel", "ModelBank", "SampleCache", "run_model", "branch_predictions", "compute_assignment",
    "query_order", "query_attention", "topk_candidates", "default_score_threshold", "k_sensitive_image",
    "detections_panel", "assignment_panel",
    "attention_panel", "candidates_panel", "deform_inputs", "compare_backends", "model_backend_agreement",
]


# ---------------------------------------------------------------- plain functions
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
                from .engine import load_model_from_checkpoint
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
class Panel:
    """Controls + an Output showing `draw(**values)`'s figure; redraws on every value change.

    controls: {name: ipywidgets value widget}; the names are `draw`'s keyword arguments.
    Attributes: controls, output, widget (the VBox to display), figure (the last Figure),
    draws (how many times it drew), error (the traceback text of a failed redraw, or None).
    """

    BUSY_AFTER_S = 0.5           # a redraw that takes longer shows the busy line until it ends
    BUSY_TEXT = "&#8987; redrawing ..."

    def __init__(self, controls: Mapping[str, W.ValueWidget], draw: Callable[..., Figure],
                 title: Optional[str] = None, dpi: float = 90, note: str = ""):
        self.controls = dict(controls)
        self._draw = draw
        self.dpi = dpi
        self.figure: Optional[Figure] = None
        self.png: Optional[bytes] = None
        self.draws = 0
        self.error: Optional[str] = None
        self._hold = False
        self.output = W.Output(layout=W.Layout(min_height="200px"))
        # the busy line: shown by a timer thread when a redraw outlasts BUSY_AFTER_S (the kernel's
        # main thread is busy drawing then, a thread can still send the widget update)
        self.busy = W.HTML("", layout=W.Layout(min_height="1.5em"))
        self.busy_shown = 0                       # how many redraws showed it
        rows = [W.HTML(f"<b>{title}</b>")] if title else []
        if note:
            rows.append(W.HTML(note))
        rows.append(W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap")))
        rows.append(self.busy)
        rows.append(self.output)
        self.widget = W.VBox(rows)
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.redraw()

    def values(self) -> dict:
        return {name: c.value for name, c in self.controls.items()}

    def set(self, **values) -> Figure:
        """Set several controls at once, then redraw once."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise KeyError(f"unknown control(s) {sorted(unknown)}; known: {list(self.controls)}")
        self._hold = True
        try:
            for name, v in values.items():
                self.controls[name].value = v
        finally:
            self._hold = False
        return self.redraw()

    def redraw(self) -> Figure:
        """Draw with the current values and show the figure; raises if drawing fails."""
        timer = threading.Timer(self.BUSY_AFTER_S, self._show_busy)
        timer.daemon = True
        timer.start()
        try:
            fig = self._draw(**self.values())
        finally:
            timer.cancel()
            self.busy.value = ""
        png = viz.fig_to_png(fig, dpi=self.dpi)
        self.figure, self.png, self.error = fig, png, None
        self.draws += 1
        w, h = fig.get_size_inches() * self.dpi
        self.output.outputs = ({
            "output_type": "display_data",
            "data": {"image/png": base64.b64encode(png).decode("ascii"),
                     "text/plain": f"<Figure {int(w)}x{int(h)}, draw {self.draws}>"},
            "metadata": {"image/png": {"width": int(w), "height": int(h)}},
        },)
        return fig

    def _show_busy(self) -> None:
        self.busy_shown += 1
        self.busy.value = f"<span style='color:#b35900'>{self.BUSY_TEXT}</span>"

    def _on_change(self, change) -> None:
        if self._hold:
            return
        try:
            self.redraw()
        except Exception:                         # show it in the panel: callbacks have no cell to print to
            self.error = traceback.format_exc()
            self.output.outputs = ({"output_type": "stream", "name": "stderr", "text": self.error},)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"Panel({', '.join(f'{k}={v!r}' for k, v in self.values().items())}, draws={self.draws})"


def _slider(description: str, value: int, lo: int, hi: int, **kw) -> W.IntSlider:
    return W.IntSlider(value=value, min=lo, max=hi, step=1, description=description, continuous_update=False,
                       style={"description_width": "initial"}, **kw)


def _fslider(description: str, value: float, lo: float, hi: float, step: float) -> W.FloatSlider:
    return W.FloatSlider(value=value, min=lo, max=hi, step=step, description=description, continuous_update=False,
                         readout_format=".2f", style={"description_width": "initial"})


def _image_control(indices: Sequence[int]) -> W.IntSlider:
    """A slider over positions in `indices` (the dataset indices a panel shows)."""
    return _slider("image", 0, 0, max(len(indices) - 1, 0))


def _indices(dataset, indices: Optional[Sequence[int]], default: int = 16) -> list[int]:
    if indices is None:
        indices = range(min(default, len(dataset)))
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("no images to show")
    return indices


def _n_layers(cache: SampleCache, name: str, index: int) -> int:
    return len(cache.outputs(name, index)["o2o"])


# ---------------------------------------------------------------- panels
def default_score_threshold(outputs: dict, n: int) -> float:
    """A score threshold that keeps the `n` best (query, class) scores of one image's final
    layer (rounded down to 0.01): a default that shows something whatever the model's
    calibration (a young detector's scores are around 0.1-0.3, a trained one's near 1)."""
    from .models import postprocess

    scores = postprocess(outputs, torch.tensor([[1, 1]]), k=max(1, n))[0]["scores"]
    if not len(scores):
        return 0.0
    return max(0.0, float(torch.floor(scores[-1] * 100) / 100))


def detections_panel(model, dataset, indices: Optional[Sequence[int]] = None, score_thresh: Optional[float] = None,
                     k: int = 100, top: int = 100) -> Panel:
    """Image, score threshold and "top" (at most this many, best first): the model's detections
    (final decoder layer, `k` per image as in evaluation) with the GT.

    score_thresh: None = keep as many detections on the first image as it has objects
    (`default_score_threshold`), so the default view shows the model's best guesses."""
    from .models import postprocess

    bank = ModelBank(model)
    name = bank.names[0]
    cache = SampleCache(dataset, bank)
    indices = _indices(dataset, indices)
    class_names = getattr(dataset, "class_names", None)
    if score_thresh is None:
        _, first = cache.sample(indices[0])
        score_thresh = default_score_threshold(cache.outputs(name, indices[0]), len(first["labels"]))

    def draw(image: int, score: float, top: int) -> Figure:
        idx = indices[image]
        img, target = cache.sample(idx)
        out = cache.outputs(name, idx)
        size = target["size"].tolist()
        dets = postprocess(out, torch.tensor([size]), k=k)[0]
        return viz.plot_detections(img, dets, gt_boxes=target["boxes"], class_names=class_names,
                                   score_thresh=score, size=size, max_dets=top,
                                   title=f"image {idx}: detections with score >= {score:.2f}, top {top} (final layer)")

    controls = {"image": _image_control(indices), "score": _fslider("score >=", score_thresh, 0.0, 1.0, 0.01),
                "top": _slider("top", min(top, k), 1, k)}
    return Panel(controls, draw, title="Detections of the trained model")


def k_sensitive_image(cache: "SampleCache", name: str, indices: Sequence[int], matcher: MatcherConfig,
                      layer: int = -1) -> Optional[int]:
    """The first position in `indices` whose o2m assignment (final layer, the matcher's tau and
    alpha) changes when K goes from matcher.k to matcher.k + 1, i.e. an image with a GT that has
    more than K positives; None if no image has one."""
    for pos, idx in enumerate(indices):
        _, target = cache.sample(idx)
        out = cache.outputs(name, idx)
        pairs = [compute_assignment(out, target, layer=layer, k=k, tau=matcher.tau, alpha=matcher.alpha,
                                    max_pos_fraction=matcher.max_pos_fraction, matcher=matcher)["o2m"]
                 for k in (matcher.k, matcher.k + 1)]
        if len(pairs[0][0]) != len(pairs[1][0]):
            return pos
    return None


def assignment_panel(models, dataset, indices: Optional[Sequence[int]] = None,
                     matcher: Optional[MatcherConfig] = None, checkpoint: Optional[str] = None,
                     max_queries: int = 40, image: Optional[int] = None) -> Panel:
    """One-to-one vs one-to-many assignment on real model outputs.

    models: {checkpoint label: module or checkpoint path} (e.g. the epochs of one training run).
    Controls: image, decoder layer, K, tau, alpha, training checkpoint. Shows the GT boxes, the
    o2o match, the o2m matches coloured by score and S as a heatmap with the pairs marked.
    image: the position in `indices` shown first; None = the first image where one more K adds
    pairs (`k_sensitive_image`), so moving K visibly changes the assignment; the panel says so
    when no image qualifies.
    """
    matcher = matcher or MatcherConfig()
    bank = ModelBank(models)
    cache = SampleCache(dataset, bank)
    indices = _indices(dataset, indices)
    class_names = getattr(dataset, "class_names", None)
    names = bank.names
    start = checkpoint if checkpoint is not None else names[-1]
    n_layers = _n_layers(cache, start, indices[0])
    if image is None:
        image = k_sensitive_image(cache, start, indices, matcher)
    note = ""
    if image is None:
        image = 0
        note = (f"<i>At tau = {matcher.tau:g} no image here has a GT with more than K = {matcher.k} positives, so "
                f"moving K changes only the hollow circles (the top-K candidates), not the pairs: "
                f"lower tau to see K act.</i>")

    def draw(image: int, layer: int, K: int, tau: float, alpha: float, checkpoint: str) -> Figure:
        idx = indices[image]
        img, target = cache.sample(idx)
        out = cache.outputs(checkpoint, idx)
        a = compute_assignment(out, target, layer=layer - 1, k=K, tau=tau, alpha=alpha,
                               max_pos_fraction=matcher.max_pos_fraction, matcher=matcher)
        fig = viz.plot_assignment(img, a, class_names=class_names, size=target["size"].tolist(),
                                  max_queries=max_queries)
        fig.axes[0].set_title(f"image {idx}, {checkpoint}, decoder layer {layer}\no2o (Hungarian) vs o2m (top-K)",
                              fontsize=10)
        return fig

    image_control = _image_control(indices)
    image_control.value = image
    controls = {
        "image": image_control,
        "layer": _slider("decoder layer", n_layers, 1, n_layers),
        "K": _slider("K", matcher.k, 1, 20),
        "tau": _fslider("tau", matcher.tau, 0.0, 1.0, 0.05),
        "alpha": _fslider("alpha", matcher.alpha, 0.0, 1.0, 0.05),
        "checkpoint": W.Dropdown(options=names, value=start, description="checkpoint"),
    }
    return Panel(controls, draw, title="One-to-one vs one-to-many assignment", note=note)


def attention_panel(model, dataset, indices: Optional[Sequence[int]] = None) -> Panel:
    """Pick a query (by score rank, 0 = the most confident) and see its reference box / point,
    its sampling points per feature level and its attention weights over the image."""
    bank = ModelBank(model)
    name = bank.names[0]
    cache = SampleCache(dataset, bank)
    indices = _indices(dataset, indices)
    out0 = cache.outputs(name, indices[0], attention=True)
    n_layers = len(out0["o2o"])
    n_queries = out0["o2o"][0]["logits"].shape[1]
    n_heads = out0["attention"][0]["attention_weights"].shape[2]
    class_names = getattr(dataset, "class_names", None)

    def draw(image: int, layer: int, query: int, head) -> Figure:
        idx = indices[image]
        img, target = cache.sample(idx)
        out = cache.outputs(name, idx, attention=True)
        q = int(query_order(out)[query])              # rank by the final layer's score
        qa = query_attention(out, q, layer - 1)
        h = None if head == "all" else int(head)
        cls = viz.class_name(class_names, qa["label"])
        return viz.plot_deformable_attention(
            img, qa["sampling_locations"], qa["attention_weights"], ref_box=qa["reference"], pred_box=qa["box"],
            size=target["size"].tolist(), head=h,
            title=(f"image {idx}, query {q} (score rank {query}; {cls} {qa['score']:.2f} at this layer)\n"
                   f"decoder layer {layer}, {'all heads' if h is None else f'head {h}'}"))

    controls = {
        "image": _image_control(indices),
        "layer": _slider("decoder layer", n_layers, 1, n_layers),
        "query": _slider("query (score rank)", 0, 0, n_queries - 1),
        "head": W.Dropdown(options=["all"] + list(range(n_heads)), value="all", description="head"),
    }
    return Panel(controls, draw, title="Deformable cross-attention of one decoder query")


SIDE_BY_SIDE = "side by side"


def candidates_panel(models, dataset, indices: Optional[Sequence[int]] = None, k: int = 20) -> Panel:
    """The paper's Fig. 1, live: the top-k query boxes per model and decoder layer.

    models: {name: module or checkpoint path}, e.g. {"o2o": baseline, "ms": msdetr}; names
    that are supervision schemes get the suite's scheme colours. Controls: image, decoder
    layer, model (one, or all side by side), k.
    """
    bank = ModelBank(models)
    cache = SampleCache(dataset, bank)
    indices = _indices(dataset, indices)
    names = bank.names
    n_layers = _n_layers(cache, names[0], indices[0])

    def draw(image: int, layer: int, model: str, top_k: int) -> Figure:
        idx = indices[image]
        img, target = cache.sample(idx)
        shown = names if model == SIDE_BY_SIDE else [model]
        fig, axes = viz.new_figure(1, len(shown), (4.2, 4.2), extra_height=0.3)
        for ax, name in zip(axes[0], shown):
            boxes, scores = topk_candidates(cache.outputs(name, idx), layer - 1)
            viz.plot_candidates(ax, img, boxes, scores, target["boxes"], k=top_k, color=viz.scheme_color(name),
                                size=target["size"].tolist(), title=viz.scheme_label(name), legend=True)
        fig.suptitle(f"image {idx}: top-{top_k} query boxes at decoder layer {layer} "
                     f"(ground truth dashed green)", fontsize=10)
        return fig

    controls = {
        "image": _image_control(indices),
        "layer": _slider("decoder layer", n_layers, 1, n_layers),
        "model": W.Dropdown(options=[SIDE_BY_SIDE] + names if len(names) > 1 else names,
                            value=SIDE_BY_SIDE if len(names) > 1 else names[0], description="model"),
        "top_k": _slider("top-k", k, 1, 100),
    }
    return Panel(controls, draw, title="Candidate boxes: o2o baseline vs MS-DETR")


# ---------------------------------------------------------------- deformable-attention backends
# The kernel-input generator, timer and backend comparison live in kernel_bench, shared with
# bench/kernels.py; the notebooks keep calling them through this module.
from .kernel_bench import compare_backends, deform_inputs  # noqa: E402


@torch.no_grad()
def model_backend_agreement(model: torch.nn.Module, image: torch.Tensor, backends: Sequence[str]) -> list[dict]:
    """The whole model run with each deformable-attention backend on one image: forward time (the
    faster of two calls) and the largest difference of the final boxes and scores from the
    `torch` backend's. Restores the model's backends afterwards."""
    from .models.attention import MSDeformAttn

    modules = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    saved = [m.backend for m in modules]
    rows, ref = [], None
    try:
        for name in ["torch"] + [b for b in backends if b != "torch"]:
            for m in modules:
                m.backend = name
            dt = float("inf")
            for _ in range(2):                            # the first call warms up (JIT, allocations)
                t = time.perf_counter()
                out = run_model(model, image, aux=False)
                dt = min(dt, time.perf_counter() - t)
            boxes, scores = out["o2o"][-1]["boxes"], out["o2o"][-1]["logits"].sigmoid()
            if ref is None:
                ref = (boxes, scores)
            rows.append({"backend": name, "model forward (ms)": round(1000 * dt, 1),
                         "max |box diff|": float((boxes - ref[0]).abs().max()),
                         "max |score diff|": float((scores - ref[1]).abs().max())})
    finally:
        for m, b in zip(modules, saved):
            m.backend = b
    return rows
