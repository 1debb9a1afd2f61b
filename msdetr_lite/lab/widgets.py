"""Interactive panels for the notebooks, each built from plain functions.

A panel is a row of ipywidgets controls above an `ipywidgets.Output` that shows a matplotlib
figure; moving a control calls the panel's draw function with the values of all controls and
puts the new figure (as PNG) into the Output. Everything a panel computes lives in plain
functions of `msdetr_lite.lab.samples` (`run_model`, `compute_assignment`, `query_attention`,
`topk_candidates`, re-exported here) and
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
import io
import threading
import time
import traceback
from typing import Callable, Mapping, Optional, Sequence

import ipywidgets as W
import torch
from matplotlib.figure import Figure

from .. import viz
from ..config import MatcherConfig
# the plain functions the panels are built from (re-exported: the notebooks call them as widgets.X)
from .samples import (ModelBank, SampleCache, branch_predictions, compute_assignment, query_attention,  # noqa: F401
                      query_order, run_model, topk_candidates)

__all__ = [
    "Panel", "ModelBank", "SampleCache", "run_model", "branch_predictions", "compute_assignment",
    "query_order", "query_attention", "topk_candidates", "default_score_threshold", "k_sensitive_image",
    "detections_panel", "assignment_panel",
    "attention_panel", "candidates_panel", "deform_inputs", "compare_backends", "model_backend_agreement",
]


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

    def small_multiples(self, settings: Sequence[Mapping], titles: Optional[Sequence[str]] = None,
                        columns: int = 2, width: float = 12.0) -> Figure:
        """The panel at a few settings side by side, as one static figure: what a reader of the
        rendered page sees without a kernel (widgets need one; a page keeps their last state only).
        settings: control values per view, e.g. [{"checkpoint": "init"}, {"checkpoint": "epoch 4"}]
        (controls not named keep the values the panel had); titles: one line per view (default: the
        values set). The panel returns to the values it had."""
        from matplotlib import image as mpimg

        before = self.values()
        pngs = []
        try:
            for setting in settings:
                self.set(**{**before, **setting})
                pngs.append(self.png)
        finally:
            self.set(**before)
        rows = -(-len(pngs) // columns)
        images = [mpimg.imread(io.BytesIO(png), format="png") for png in pngs]
        aspect = max(im.shape[0] / im.shape[1] for im in images)
        fig, axes = viz.new_figure(rows, columns, (width / columns, width / columns * aspect + 0.4))
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < len(images):
                ax.imshow(images[i])
                label = titles[i] if titles else ", ".join(f"{k} = {v}" for k, v in settings[i].items())
                ax.set_title(label, fontsize=10)
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


def _checkpoint_control(labels: Sequence[str], value: Optional[str] = None) -> W.Dropdown:
    """The training-checkpoint selector the panels share (01, 02, 04): "init", "epoch 1", ...
    (`zoo.list_checkpoints`), opening on `value` or the last one (the trained model)."""
    labels = list(labels)
    return W.Dropdown(options=labels, value=value if value is not None else labels[-1], description="checkpoint")


def _n_layers(cache: SampleCache, name: str, index: int) -> int:
    return len(cache.outputs(name, index)["o2o"])


# ---------------------------------------------------------------- panels
def default_score_threshold(outputs: dict, n: int) -> float:
    """A score threshold that keeps the `n` best (query, class) scores of one image's final
    layer (rounded down to 0.01): a default that shows something whatever the model's
    calibration (a young detector's scores are around 0.1-0.3, a trained one's near 1)."""
    from ..models import postprocess

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
    from ..models import postprocess

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
    Controls: image, decoder layer, K, tau, alpha, the positive cap (`max_pos_fraction`: at most
    this fraction of the queries stays positive), training checkpoint. Shows the GT boxes, the
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

    def draw(image: int, layer: int, K: int, tau: float, alpha: float, cap: float, checkpoint: str) -> Figure:
        idx = indices[image]
        img, target = cache.sample(idx)
        out = cache.outputs(checkpoint, idx)
        a = compute_assignment(out, target, layer=layer - 1, k=K, tau=tau, alpha=alpha, max_pos_fraction=cap,
                               matcher=matcher)
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
        "cap": _fslider("positive cap", matcher.max_pos_fraction, 0.05, 1.0, 0.05),
        "checkpoint": _checkpoint_control(names, start),
    }
    return Panel(controls, draw, title="One-to-one vs one-to-many assignment", note=note)


def attention_panel(model, dataset, indices: Optional[Sequence[int]] = None) -> Panel:
    """Pick a query (by score rank, 0 = the most confident) and see its reference box / point,
    its sampling points per feature level and its attention weights over the image.

    model: a module, or {checkpoint label: module or checkpoint path} (e.g. `zoo.list_checkpoints`:
    the epochs of one run), which adds the checkpoint selector 01 and 04 have too (it opens on the
    last one)."""
    bank = ModelBank(model)
    name = bank.names[-1]
    cache = SampleCache(dataset, bank)
    indices = _indices(dataset, indices)
    out0 = cache.outputs(name, indices[0], attention=True)
    n_layers = len(out0["o2o"])
    n_queries = out0["o2o"][0]["logits"].shape[1]
    n_heads = out0["attention"][0]["attention_weights"].shape[2]
    class_names = getattr(dataset, "class_names", None)

    def draw(image: int, layer: int, query: int, head, checkpoint: str = name) -> Figure:
        idx = indices[image]
        img, target = cache.sample(idx)
        out = cache.outputs(checkpoint, idx, attention=True)
        q = int(query_order(out)[query])              # rank by the final layer's score
        qa = query_attention(out, q, layer - 1)
        h = None if head == "all" else int(head)
        cls = viz.class_name(class_names, qa["label"])
        return viz.plot_deformable_attention(
            img, qa["sampling_locations"], qa["attention_weights"], ref_box=qa["reference"], pred_box=qa["box"],
            size=target["size"].tolist(), head=h,
            title=(f"image {idx}, query {q} (score rank {query}; {cls} {qa['score']:.2f} at this layer)\n"
                   f"decoder layer {layer}, {'all heads' if h is None else f'head {h}'}"
                   + (f", {checkpoint}" if len(bank.names) > 1 else "")))

    controls = {
        "image": _image_control(indices),
        "layer": _slider("decoder layer", n_layers, 1, n_layers),
        "query": _slider("query (score rank)", 0, 0, n_queries - 1),
        "head": W.Dropdown(options=["all"] + list(range(n_heads)), value="all", description="head"),
    }
    if len(bank.names) > 1:
        controls["checkpoint"] = _checkpoint_control(bank.names)
    return Panel(controls, draw, title="Deformable cross-attention of one decoder query")


SIDE_BY_SIDE = "side by side"


def candidates_panel(models, dataset, indices: Optional[Sequence[int]] = None, k: int = 20) -> Panel:
    """The paper's Fig. 1, live: the top-k query boxes per model and decoder layer.

    models: {name: module or checkpoint path}, e.g. {"o2o": baseline, "ms": msdetr}; names
    that are supervision schemes get the suite's scheme colours. A model may also be given as
    {checkpoint label: module or path} (`zoo.list_checkpoints`, the same labels for every model):
    then a checkpoint selector, shared by all models, scrubs through training as in 01 and 02.
    Controls: image, decoder layer, model (one, or all side by side), k (and checkpoint).
    """
    per_model = {name: (dict(m) if isinstance(m, Mapping) else {"final": m}) for name, m in models.items()}
    names = list(per_model)
    labels = [label for label in next(iter(per_model.values())) if all(label in c for c in per_model.values())]
    if not labels:
        raise ValueError("the models share no checkpoint label")
    bank = ModelBank({f"{name} @ {label}": per_model[name][label] for name in names for label in labels})
    cache = SampleCache(dataset, bank)
    indices = _indices(dataset, indices)
    n_layers = _n_layers(cache, f"{names[0]} @ {labels[-1]}", indices[0])

    def draw(image: int, layer: int, model: str, top_k: int, checkpoint: str = labels[-1]) -> Figure:
        idx = indices[image]
        img, target = cache.sample(idx)
        shown = names if model == SIDE_BY_SIDE else [model]
        fig, axes = viz.new_figure(1, len(shown), (4.2, 4.2), extra_height=0.3)
        for ax, name in zip(axes[0], shown):
            boxes, scores = topk_candidates(cache.outputs(f"{name} @ {checkpoint}", idx), layer - 1)
            viz.plot_candidates(ax, img, boxes, scores, target["boxes"], k=top_k, color=viz.scheme_color(name),
                                size=target["size"].tolist(), title=viz.scheme_label(name), legend=True)
        fig.suptitle(f"image {idx}: top-{top_k} query boxes at decoder layer {layer}"
                     + (f", {checkpoint}" if len(labels) > 1 else "") + " (ground truth dashed green)", fontsize=10)
        return fig

    controls = {
        "image": _image_control(indices),
        "layer": _slider("decoder layer", n_layers, 1, n_layers),
        "model": W.Dropdown(options=[SIDE_BY_SIDE] + names if len(names) > 1 else names,
                            value=SIDE_BY_SIDE if len(names) > 1 else names[0], description="model"),
        "top_k": _slider("top-k", k, 1, 100),
    }
    if len(labels) > 1:
        controls["checkpoint"] = _checkpoint_control(labels)
    return Panel(controls, draw, title="Candidate boxes: o2o baseline vs MS-DETR")


# ---------------------------------------------------------------- deformable-attention backends
# The kernel-input generator, timer and backend comparison live in kernel_bench, shared with
# bench/kernels.py; the notebooks keep calling them through this module.
from ..kernel_bench import compare_backends, deform_inputs  # noqa: E402


@torch.no_grad()
def model_backend_agreement(model: torch.nn.Module, image: torch.Tensor, backends: Sequence[str]) -> list[dict]:
    """The whole model run with each deformable-attention backend on one image: forward time (the
    faster of two calls) and the largest difference of the final boxes and scores from the
    `torch` backend's. Restores the model's backends afterwards."""
    from ..models.attention import MSDeformAttn

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
