"""Training curves from runs (`msdetr_lite.runs`): losses per branch, AP per epoch and per decoder layer.

Every function takes {model name: run}, where a run is a `runs.Run` or its metrics.jsonl
records, and draws each model in its scheme's colour and line style (the o2o baseline dashed,
MS-DETR solid, as in the paper's Fig. 2). The notebooks and `report.compare_runs` draw with
the same functions.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

from matplotlib.figure import Figure

from ..runs import LOSS_TERMS, Run, as_run
from .figures import add_legend, new_figure
from .palette import BRANCH_COLORS, layer_color, scheme_color, scheme_label, scheme_style

RunLike = Union[Run, Sequence[Mapping]]       # a run, or its metrics.jsonl records
LOSS_TITLES = {"cls": "classification (focal)", "bbox": "box L1", "giou": "GIoU", None: "all terms"}


def _style(name: str, run: Run) -> dict:
    return {"color": scheme_color(name, run.supervision), "linestyle": scheme_style(name, run.supervision)}


def _layer_name(layer: Optional[int]) -> str:
    if layer is None:
        return "all layers"
    if layer == -1:
        return "final layer"
    return f"layer {layer + 1}" if layer >= 0 else f"layer {layer} from the end"


def _smooth(ys: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over `window` values (the first ones average what there is)."""
    if window <= 1 or len(ys) < 3:
        return list(ys)
    out, acc = [], []
    for y in ys:
        acc.append(y)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_loss_curves(histories: Mapping[str, RunLike], branches: Sequence[str] = ("o2o", "o2m"),
                     terms: Sequence[Optional[str]] = LOSS_TERMS, layer: Optional[int] = -1, x: str = "step",
                     smooth: int = 5, title: Optional[str] = None,
                     panels: Optional[Sequence[tuple[str, Optional[str], Optional[int]]]] = None,
                     steps_behind: bool = False) -> Figure:
    """Loss curves, one line per model; by default a grid of branches (rows) x terms (columns).

    histories: {model name: `runs.Run` or its records}. Losses are the weighted terms the engine
    logs. For `hybrid` / `group` the o2m row holds their extra queries' (one-to-one) losses.
    term None: cls + bbox + giou. layer: decoder layer (-1 = final, None = all layers summed).
    panels: instead of the grid, explicit (branch, term, layer) panels, three per row.
    x: "step" (logged steps, moving average over `smooth`) or "epoch" (epoch means, with markers);
    steps_behind (x="epoch"): the logged steps too, faint, at their fractional epoch.
    """
    if x not in ("step", "epoch"):
        raise ValueError(f"x={x!r}; expected 'step' or 'epoch'")
    runs = {name: as_run(run, name) for name, run in histories.items()}
    if panels is None:
        panels = [(branch, term, layer) for branch in branches for term in terms]
        ncols = len(terms)
    else:
        ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = new_figure(nrows, ncols, (3.6, 2.7), extra_height=0.4)
    for ax, (branch, term, lay) in zip(axes.flat, panels):
        drawn = 0
        for name, run in runs.items():
            xs, ys = run.loss(branch, term, lay, per=x)
            if not xs:
                continue
            if steps_behind and x == "epoch":
                epoch_at = dict(zip((r["step"] for r in run.steps), run.step_epochs()))
                sx, sy = run.loss(branch, term, lay, per="step")
                ax.plot([epoch_at[s] for s in sx], sy, linewidth=0.8, alpha=0.35, **_style(name, run))
            ax.plot(xs, _smooth(ys, smooth if x == "step" else 1), linewidth=1.6, label=name,
                    marker="o" if len(xs) < 8 else None, markersize=3, **_style(name, run))
            drawn += 1
        where = f" ({_layer_name(lay)})" if branch != "enc" else ""
        ax.set_title(f"{branch} branch: {LOSS_TITLES.get(term, term)}{where}", fontsize=9,
                     color=BRANCH_COLORS.get(branch, "black"))
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if drawn:
            add_legend(ax)
        else:
            ax.text(0.5, 0.5, f"no {branch} losses\n(o2o-only models have none)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="grey")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or "Training losses per branch: o2o baseline dashed, MS-DETR solid", fontsize=10)
    return fig


def plot_total_loss(run: RunLike, name: str = "ms", smooth: int = 5) -> Figure:
    """The summed training loss and the final layer's o2o / o2m terms of one run, per step."""
    run = as_run(run, name)
    fig, axes = new_figure(1, 2, (4.6, 3.0), extra_height=0.3)
    xs, ys = run.loss()
    axes[0, 0].plot(xs, _smooth(ys, smooth), color=scheme_color(name, run.supervision),
                    marker="o" if len(xs) < 8 else None)
    axes[0, 0].set_title("total loss (all branches and layers)", fontsize=9)
    for branch in ("o2o", "o2m"):
        for term, style in (("cls", "-"), ("giou", ":")):
            bx, by = run.loss(branch, term, -1)
            if bx:
                axes[0, 1].plot(bx, _smooth(by, smooth), color=BRANCH_COLORS[branch], linestyle=style,
                                label=f"{branch} {term}")
    axes[0, 1].set_title("final decoder layer, per branch", fontsize=9)
    add_legend(axes[0, 1])
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training of {scheme_label(name)}", fontsize=10)
    return fig


def _ap_axes(ax, xlabel: str, metric: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (x100)")
    ax.set_title(title, fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    add_legend(ax, loc="lower right")


def plot_ap_curves(histories: Mapping[str, RunLike], metrics: Sequence[str] = ("AP", "AP50"),
                   per_layer: bool = False) -> Figure:
    """COCO AP (x100) per epoch of the final decoder layer, one panel per metric and one line per
    model. per_layer: first a panel per model with every decoder layer's `metrics[0]` per epoch."""
    runs = {name: as_run(run, name) for name, run in histories.items()}
    n_layer_panels = len(runs) if per_layer else 0
    fig, axes = new_figure(1, n_layer_panels + len(metrics), (4.2, 3.0), extra_height=0.3)
    for ax, (name, run) in zip(axes[0], runs.items() if per_layer else ()):
        evals = run.epoch_evals()
        n_layers = max((len(ev["layers"]) for _, ev in evals), default=0)
        for l in range(n_layers):
            pts = [(e, 100 * ev["layers"][l][metrics[0]]) for e, ev in evals if l < len(ev["layers"])]
            ax.plot(*zip(*pts), marker=".", color=layer_color(l, n_layers), label=f"layer {l + 1}")
        _ap_axes(ax, "epoch", metrics[0], f"{name}: {metrics[0]} per decoder layer")
    for ax, metric in zip(axes[0, n_layer_panels:], metrics):
        for name, run in runs.items():
            ev = run.epoch_evals()
            if ev:
                ax.plot([e for e, _ in ev], [100 * m["final"][metric] for _, m in ev], marker="o", label=name,
                        **_style(name, run))
        _ap_axes(ax, "epoch", metric, f"val {metric} per epoch (final decoder layer)")
    fig.suptitle("Convergence: AP per epoch", fontsize=10)
    return fig


def plot_ap_per_layer(evals: Mapping[str, Union[Run, Mapping]], metrics: Sequence[str] = ("AP", "AP50"),
                      ylim: Optional[tuple[float, float]] = None, title: Optional[str] = None) -> Figure:
    """AP (x100) of every decoder layer's o2o predictions, one line per model.

    evals: {name: an `evaluation.evaluate` result / eval.json ("layers", "layer_ids"), or a
    `runs.Run` (its final evaluation; runs without one are skipped)}. ylim: a fixed y axis (e.g.
    (0, 100), so that a small AP looks small) instead of one fitted to the values."""
    fig, axes = new_figure(1, len(metrics), (4.2, 3.0), extra_height=0.3)
    for ax, metric in zip(axes[0], metrics):
        for name, ev in evals.items():
            style = _style(name, ev if isinstance(ev, Run) else Run(name, []))
            ev = ev.final_eval() if isinstance(ev, Run) else ev
            if not ev:
                continue
            layers = ev.get("layers") or []
            ids = ev.get("layer_ids") or list(range(len(layers)))
            ax.plot([i + 1 for i in ids], [100 * m[metric] for m in layers], marker="o", label=name, **style)
        _ap_axes(ax, "decoder layer", metric, f"{metric} per decoder layer")
        if ylim is not None:
            ax.set_ylim(*ylim)
    fig.suptitle(title or "Every decoder layer is a detector: AP per layer", fontsize=10)
    return fig


# the paper's Fig. 2: the o2o classification and box losses of the final decoder layer
FIG2_PANELS = (("o2o", "cls", -1), ("o2o", "bbox", -1), ("o2o", "giou", -1))


def plot_o2o_losses(histories: Mapping[str, RunLike], title: Optional[str] = None) -> Figure:
    """The paper's Fig. 2: o2o classification, L1 and GIoU losses of the final decoder layer per
    epoch (epoch means, logged steps faint behind), the baseline dashed and MS-DETR solid.
    These are the losses of the branch used at inference, so lower is better for every scheme."""
    return plot_loss_curves(histories, panels=FIG2_PANELS, x="epoch", steps_behind=True,
                            title=title or "Fig. 2: o2o losses per epoch (final layer), "
                                           "baseline dashed, MS-DETR solid")


def plot_nms_ap_per_layer(evals: Mapping[str, Mapping], metric: str = "AP") -> Figure:
    """`metric` (x100) per decoder layer of each model, NMS-free (solid markers, as the detector
    runs) and after class-wise NMS (hollow markers, thin line): the gap between a model's two
    lines is what its duplicates cost. evals: {name: `evaluate(..., nms_iou=...)` result}."""
    fig, axes = new_figure(1, 1, (6.0, 3.6))
    ax = axes[0, 0]
    iou = None
    for name, ev in evals.items():
        style = _style(name, Run(name, []))
        ids = [i + 1 for i in (ev.get("layer_ids") or range(len(ev["layers"])))]
        ax.plot(ids, [100 * m[metric] for m in ev["layers"]], marker="o", linewidth=1.8,
                label=f"{name}, NMS-free", **style)
        if ev.get("nms"):
            iou = ev["nms"]["iou"]
            ax.plot(ids, [100 * m[metric] for m in ev["nms"]["layers"]], marker="o", markerfacecolor="white",
                    linewidth=1.0, label=f"{name}, NMS at IoU {iou:g}", **style)
    _ap_axes(ax, "decoder layer", metric, f"{metric} per decoder layer, without and with NMS")
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig


# the measures of `Run.convergence`, as drawn: row title, scale, format of a cell, whether higher is better
CONVERGENCE_ROWS = {"AP": ("AP, NMS-free", 100.0, "{:.1f}", True),
                    "AP_nms": ("AP with NMS", 100.0, "{:.1f}", True),
                    "duplicates": ("duplicates / image", 1.0, "{:.2f}", False)}


def plot_convergence(convergences: Mapping[str, Mapping], baseline: str = "o2o",
                     keys: Sequence[str] = ("AP", "AP_nms", "duplicates")) -> Figure:
    """Convergence per decoder layer: for each measure of `Run.convergence` (rows: AP NMS-free, AP
    with NMS, duplicates per image) a decoder layer x epoch grid per model, each cell written out,
    and, with a `baseline` among two models, a last column of the other model minus the baseline
    (green where the other model is better: higher AP, fewer duplicates).

    convergences: {model name: `Run.convergence()`}. Cells an evaluation did not score show "-"."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    names = list(convergences)
    other = [n for n in names if n != baseline]
    diff = len(names) == 2 and baseline in names
    ncols = len(names) + int(diff)
    fig, axes = new_figure(len(keys), ncols, (3.0, 2.0), extra_height=0.5)
    iou = next((c.get("nms_iou") for c in convergences.values() if c.get("nms_iou")), None)

    def grid(conv: Mapping, key: str, scale: float):
        return np.array([[np.nan if v is None else scale * v for v in row] for row in conv[key]], dtype=float)

    def draw(ax, values, epochs, fmt, cmap, vmin, vmax):
        norm, cm = Normalize(vmin, vmax), colormaps[cmap]
        ax.imshow(np.ma.masked_invalid(values), cmap=cm, norm=norm, aspect="auto", alpha=0.8)
        for (l, j), v in np.ndenumerate(values):
            r, g, b, _ = cm(norm(v)) if np.isfinite(v) else (1, 1, 1, 1)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5          # white text on dark cells
            ax.text(j, l, "-" if np.isnan(v) else fmt.format(v), ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
        ax.set_xticks(range(len(epochs)), [str(e) for e in epochs])
        ax.set_yticks(range(values.shape[0]), [str(l + 1) for l in range(values.shape[0])])
        ax.set_xlabel("epoch", fontsize=9)

    for r, key in enumerate(keys):
        title, scale, fmt, higher_better = CONVERGENCE_ROWS[key]
        grids = {n: grid(convergences[n], key, scale) for n in names}
        finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()] or [np.zeros(0)])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        for c, name in enumerate(names):
            draw(axes[r, c], grids[name], convergences[name]["epochs"], fmt, "Greens" if higher_better else "Reds",
                 lo, hi + 1e-9)
        if diff:
            a, b = grids[other[0]], grids[baseline]
            n = min(a.shape[1], b.shape[1])
            d = a[:, :n] - b[:, :n]
            span = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 1.0
            draw(axes[r, -1], d, convergences[other[0]]["epochs"][:n], "{:+" + fmt[2:],
                 "RdYlGn" if higher_better else "RdYlGn_r", -span - 1e-9, span + 1e-9)
        axes[r, 0].set_ylabel(f"{title}\ndecoder layer", fontsize=9)
    heads = [scheme_label(n) for n in names] + ([f"{other[0]} minus {baseline} (green: {other[0]} better)"]
                                                if diff else [])
    for ax, head in zip(axes[0], heads):
        ax.set_title(head, fontsize=9)
    nms = f", NMS at IoU {iou:g}" if iou else ""
    fig.suptitle(f"Convergence per decoder layer{nms}: every layer is a detector, scored after every epoch",
                 fontsize=10)
    return fig
