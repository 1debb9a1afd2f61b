"""Comparing runs and the demo report: the files (PNGs, summary tables, report.md).

    compare_runs(["runs/ms", "runs/o2o"], "runs/compare")   # PNGs + summary.{json,md}
    run_demo("runs/demo", epochs=6)                          # data, two trainings, report.md

Runs are read by `msdetr_lite.runs` (config.json, metrics.jsonl, eval.json); every figure is
drawn by `msdetr_lite.viz`, in the suite's palette; this module only chooses and writes them.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from . import viz
from .runs import Run, load_run

AP_KEYS = ("AP", "AP50", "AP75")


def _label(run: Run) -> str:
    sup = run.supervision
    return f"{run.name} ({sup})" if sup and sup not in run.name else run.name


def _fmt(v, scale=100.0, digits=1) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or v < 0)):
        return "-"
    return f"{scale * v:.{digits}f}"


def _by_label(runs: Sequence[Run]) -> dict[str, Run]:
    """{legend label: run}, labels made unique (two runs may share a folder name)."""
    out: dict[str, Run] = {}
    for run in runs:
        label = _label(run)
        out[label if label not in out else f"{label} #{len(out) + 1}"] = run
    return out


# the loss panels of a comparison: each branch's total, then the final layer's o2o terms (Fig. 2)
LOSS_PANELS = (("o2o", None, None), ("o2m", None, None), ("enc", None, None),
               ("o2o", "cls", -1), ("o2o", "bbox", -1), ("o2o", "giou", -1))


# ---------------------------------------------------------------- text from the numbers
# differences below this (AP x100) are called "about equal": one seed on a CPU moves AP by
# several points (the README: 37.7 vs 41.2 for the same seed on two CPU types)
TIE_AP = 1.0
NMS_IOU = 0.7            # the NMS-aware numbers: class-wise NMS at this IoU (the authors' option)
FAST_NOTICE = ("**Fast mode (`MSDETR_FAST=1`): every model below was trained for 2 steps. Its numbers "
               "are meaningless; they only show that the code runs.** Unset `MSDETR_FAST` (after "
               "`make zoo`) for the real ones.")


def fast_notice(fast: bool) -> str:
    """The on-screen warning of fast mode (markdown), or "" in full mode."""
    return FAST_NOTICE if fast else ""


def _ap(ev: Mapping, nms: bool = False, layer: Optional[int] = None) -> Optional[float]:
    """AP x100 of an `evaluation.evaluate` result: final layer (or `layer`), NMS-free or with NMS."""
    part = ev.get("nms") if nms else ev
    if not part:
        return None
    m = part["final"] if layer is None else part["layers"][layer]
    return 100.0 * m["AP"] if m.get("AP", -1) >= 0 else None


def _dups(ev: Mapping, layer: int = -1) -> Optional[float]:
    d = (ev.get("duplicates") or {}).get("per_image") or []
    return d[layer] if d else None


SHORT_NAMES = {"ms": "MS-DETR", "o2o": "the o2o baseline", "hybrid": "H-DETR", "group": "Group-DETR"}


def _relation(diff: float, other: str) -> str:
    if abs(diff) < TIE_AP:
        return f"about equal to {other} ({diff:+.1f})"
    return f"{abs(diff):.1f} {'above' if diff > 0 else 'below'} {other}"


def describe_nms_comparison(evals: Mapping[str, Mapping], model: str = "ms", baseline: str = "o2o",
                            fast: bool = False) -> str:
    """A paragraph (markdown) built from two `evaluate(..., nms_iou=...)` results: the model's
    final-layer AP NMS-free and with NMS against the baseline's, the duplicates per image, and
    what the two differences together say (candidates vs de-duplication). Says so when the
    evaluations carry no NMS numbers."""
    ev_m, ev_b = evals[model], evals[baseline]
    name = SHORT_NAMES.get(model, model)
    free_m, free_b = _ap(ev_m), _ap(ev_b)
    if free_m is None or free_b is None:
        return f"{name} or the baseline has no AP (no ground truth evaluated?)."
    d_free = free_m - free_b
    rel_free = _relation(d_free, f"the baseline's {free_b:.1f}")
    text = [f"Here {name}'s NMS-free AP is {free_m:.1f}, {rel_free}"]
    nms_m, nms_b = _ap(ev_m, nms=True), _ap(ev_b, nms=True)
    if nms_m is None or nms_b is None:
        text[0] += ". These evaluations have no NMS numbers (`evaluate(..., nms_iou=0.7)` adds them)."
        return _fast_prefix(fast) + text[0]
    d_nms = nms_m - nms_b
    iou = ev_m["nms"]["iou"]
    rel_nms = _relation(d_nms, f"the baseline's {nms_b:.1f}")
    text[0] += f"; with class-wise NMS at IoU {iou:g} it is {nms_m:.1f}, {rel_nms}."
    if d_nms >= TIE_AP and d_free <= -TIE_AP:
        text.append("Its candidates are better, its duplicates are not yet suppressed: the o2o branch has not "
                    "learned to silence the extra high-score queries that the o2m branch trains.")
    elif d_nms >= TIE_AP and d_free >= TIE_AP:
        text.append("It wins both ways: better candidates, and its o2o branch keeps the duplicates down.")
    elif d_nms <= -TIE_AP and d_free <= -TIE_AP:
        text.append("It loses both ways: on this run its candidates are not better than the baseline's either.")
    elif d_nms <= -TIE_AP and d_free >= TIE_AP:
        text.append("It wins NMS-free but not with NMS: fewer duplicates, but no better candidates.")
    else:
        text.append("The two are within about 1 AP on at least one of the two measures: on one seed that is noise.")
    dm, db = _dups(ev_m), _dups(ev_b)
    if dm is not None and db is not None:
        text.append(f"Duplicates (confident queries on an already-claimed object, final layer): {dm:.1f} per image "
                    f"for {name}, {db:.1f} for the baseline.")
    return _fast_prefix(fast) + " ".join(text)


def _fast_prefix(fast: bool) -> str:
    return "(Fast mode: 2-step models, these numbers mean nothing.) " if fast else ""


def nms_rows(evals: Mapping[str, Mapping]) -> list[dict]:
    """One row per model: AP x100 per decoder layer NMS-free and with NMS, what NMS adds at the
    final layer, and the duplicates per image of the final layer (markdown_table rows)."""
    rows = []
    for name, ev in evals.items():
        n = len(ev.get("layers") or [])
        free = "/".join(_fmt(ev["layers"][l]["AP"]) for l in range(n))
        nms = "/".join(_fmt(ev["nms"]["layers"][l]["AP"]) for l in range(n)) if ev.get("nms") else "-"
        gain = (_ap(ev, nms=True) - _ap(ev)) if ev.get("nms") and _ap(ev) is not None else None
        dups = _dups(ev)
        rows.append({"model": name, "AP per layer, NMS-free": free,
                     f"AP per layer, NMS at IoU {ev['nms']['iou']:g}" if ev.get("nms") else "AP per layer, NMS": nms,
                     "NMS adds (final layer)": "-" if gain is None else f"{gain:+.1f}",
                     "duplicates / image": "-" if dups is None else f"{dups:.2f}"})
    return rows


# ---------------------------------------------------------------- the regime study
_ROOT = Path(__file__).resolve().parents[1]
REGIME_JSON = _ROOT / "bench" / "results" / "regime.json"
# the study as measured for this repository (bench/regime.py's JSON, committed with its machine):
# what a reader sees before running their own
REGIME_MEASURED_JSON = _ROOT / "docs" / "results" / "regime.json"


def _measurement(path: Union[str, Path, None], own: Path, committed: Path) -> Optional[Path]:
    """The benchmark JSON to show: `path` if given, else your own run (`own`, under bench/results),
    else the committed measurement (`committed`, under docs/results); None if none exists."""
    candidates = [Path(path)] if path is not None else [own, committed]
    return next((p for p in candidates if p.is_file()), None)


def load_regime(path: Union[str, Path, None] = None) -> Optional[dict]:
    """bench/regime.py's JSON ({"nms_iou", "cells", "summary", "runs", "machine"}): `path`, else your
    own run (REGIME_JSON), else the committed measurement (REGIME_MEASURED_JSON); None if none."""
    found = _measurement(path, REGIME_JSON, REGIME_MEASURED_JSON)
    return None if found is None else {**json.loads(found.read_text()), "path": str(found)}


def describe_regime(study: Mapping, scheme: str = "ms", goal: float = 2.0) -> str:
    """Sentences built from a regime study's summary: in which cells `scheme` is at least `goal`
    AP above o2o (mean over seeds), NMS-free and with NMS, and in which it is below."""
    summary = [e for e in study.get("summary", []) if scheme in e.get("delta", {})]
    if not summary:
        return f"The study has no finished cell with both {scheme} and o2o yet."

    def cells(key, test):
        return [e["cell"] for e in summary if test(100 * e["delta"][scheme][key]["mean"])]

    def names(xs):
        return ", ".join(f"`{x}`" for x in xs) if xs else "none"

    n = len(summary)
    seeds = sorted({e["delta"][scheme]["AP"]["n"] for e in summary})
    return (f"{n} cell(s) finished ({'/'.join(map(str, seeds))} seed(s) each). {scheme} at least {goal:g} AP above o2o "
            f"NMS-free: {names(cells('AP', lambda d: d >= goal))}; below o2o NMS-free: "
            f"{names(cells('AP', lambda d: d < 0))}. With NMS at IoU {study.get('nms_iou', NMS_IOU):g}, at least "
            f"{goal:g} above: {names(cells('AP_nms', lambda d: d >= goal))}; below: "
            f"{names(cells('AP_nms', lambda d: d < 0))}.")


def describe_o2m_switched_off(study: Mapping, cell: str = "o2m_off_last", base: str = "demo",
                              scheme: str = "ms") -> Optional[str]:
    """Sentences on the study's `cell` that trains `scheme` as `base` does, then switches the o2m
    losses off for the last epoch(s) (loss.o2m_last_epoch): first and final decoder layer's AP
    and duplicates per image, mean over seeds, and what that says about where duplicates come
    from. None when either cell has no finished run."""
    runs = study.get("runs", [])

    def mean(c: str, value) -> Optional[float]:
        vals = [value(r) for r in runs if r["cell"] == c and r["scheme"] == scheme]
        return statistics.fmean(vals) if vals else None

    stats = {c: (mean(c, lambda r: 100 * r["AP_per_layer"][0]), mean(c, lambda r: 100 * r["AP"]),
                 mean(c, lambda r: r["duplicates"])) for c in (base, cell)}
    if any(v is None for c in stats for v in stats[c]):
        return None
    (first_b, final_b, dup_b), (first_c, final_c, dup_c) = stats[base], stats[cell]
    text = (f"`{cell}` trains {scheme} as `{base}` does, then its o2o branch alone for the last epoch: the "
            f"first decoder layer moves from {first_b:.1f} to {first_c:.1f} AP, the final layer from "
            f"{final_b:.1f} to {final_c:.1f} AP, with {dup_c:.1f} duplicates per image instead of {dup_b:.1f} "
            f"(NMS-free, mean over seeds).")
    if final_c - final_b < 2 and dup_c > 0.8 * dup_b:
        text += (" So the final layer's duplicates do not come from the o2m loss of the moment: they are in what"
                 " the decoder learned while o2m supervision was on, and a last epoch of o2o training alone"
                 " does not remove them.")
    elif final_c - final_b >= 2:
        text += " So o2o training alone at the end removes part of what the o2m branch left."
    return text


def regime_epoch_gaps(study: Mapping, cells: Sequence[str] = ("demo", "ep8"), scheme: str = "ms") -> dict:
    """{cell: regime.gap_per_epoch(...)} for those of `cells` whose runs carry per-epoch records of
    both `scheme` and o2o (a study written before runs kept them has none: {})."""
    from .regime import gap_per_epoch
    gaps = {c: gap_per_epoch(study.get("runs", []), c, scheme) for c in cells}
    return {c: g for c, g in gaps.items() if g}


def regime_lr_drops(study: Mapping, cells: Sequence[str], scheme: str = "ms") -> dict:
    """{cell: train.lr_drop of its `scheme` runs} where the study's runs record one value."""
    out = {}
    for cell in cells:
        drops = {r.get("lr_drop") for r in study.get("runs", []) if r["cell"] == cell and r["scheme"] == scheme}
        if len(drops) == 1 and None not in drops:
            out[cell] = drops.pop()
    return out


def regime_epoch_duplicates(study: Mapping, cells: Sequence[str], schemes: Sequence[str] = ("o2o", "ms")) -> dict:
    """{cell: {scheme: regime.per_epoch(..., "duplicates")}}: duplicates per image of the final layer
    after every epoch, mean over seeds; cells and schemes without per-epoch records left out."""
    from .regime import per_epoch
    out = {}
    for cell in cells:
        found = {s: per_epoch(study.get("runs", []), cell, s) for s in schemes}
        found = {s: v for s, v in found.items() if v}
        if found:
            out[cell] = found
    return out


def regime_epochs_figure(study: Mapping, cells: Sequence[str] = ("demo", "ep8"), scheme: str = "ms"):
    """viz.plot_regime_epochs of a study's `cells` that have per-epoch records: the gap to o2o after
    every epoch, where each lr drops, the duplicates per image of o2o and `scheme`; None if none has."""
    gaps = regime_epoch_gaps(study, cells, scheme)
    if not gaps:
        return None
    return viz.plot_regime_epochs(gaps, study.get("nms_iou", NMS_IOU), scheme,
                                  lr_drops=regime_lr_drops(study, list(gaps), scheme),
                                  duplicates=regime_epoch_duplicates(study, list(gaps), ("o2o", scheme)))


def describe_epoch_gap(study: Mapping, cell: str = "demo", scheme: str = "ms") -> Optional[str]:
    """Sentences on one cell's `scheme` minus o2o after every epoch (x100, mean over seeds): the
    epochs where `scheme` leads NMS-free, and what each scheme gains from the lr drop to the end.
    None without per-epoch records of both schemes."""
    from .regime import gap_per_epoch, per_epoch
    gap = gap_per_epoch(study.get("runs", []), cell, scheme)
    if not gap:
        return None
    last, n = gap[-1]["epoch"], gap[-1]["AP"]["n"]

    def series(key: str) -> str:
        return ", ".join("-" if g[key] is None else f"{100 * g[key]['mean']:+.1f}" for g in gap)

    def after(epochs: list) -> str:
        return f"after epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}" if epochs else \
            "after no epoch"

    ahead = [g["epoch"] for g in gap if _every_seed(g["AP"]) > 0]
    behind = [g["epoch"] for g in gap if _every_seed(g["AP"]) < 0]
    split = [g["epoch"] for g in gap if g["epoch"] not in ahead + behind]
    text = (f"In `{cell}`, {scheme} minus o2o after epochs 1 to {last}, NMS-free: {series('AP')}; with NMS: "
            f"{series('AP_nms')} (mean over {n} seed{'s' if n != 1 else ''}). NMS-free, {scheme} is ahead of o2o "
            f"in every seed {after(ahead)} and behind in every seed {after(behind)}"
            + (f"; the seeds disagree {after(split)}." if split else "."))
    dups = regime_epoch_duplicates(study, [cell], ("o2o", scheme)).get(cell, {})
    if len(dups) == 2:
        text += (" Duplicates per image (final layer) after each epoch: o2o "
                 + ", ".join(f"{d['mean']:.1f}" for d in dups["o2o"]) + f"; {scheme} "
                 + ", ".join(f"{d['mean']:.1f}" for d in dups[scheme]) + ".")
    drop = regime_lr_drops(study, [cell], scheme).get(cell)
    at = {g["epoch"]: g for g in gap}
    if drop in at and drop < last:
        def gain(s: str) -> float:                # mean AP after the last epoch minus after the drop's
            ap = {p["epoch"]: p["mean"] for p in per_epoch(study["runs"], cell, s, "AP")}
            return 100 * (ap[last] - ap[drop])
        before, end = 100 * at[drop]["AP"]["mean"], 100 * at[last]["AP"]["mean"]
        text += (f" The lr drops tenfold after epoch {drop}; from there to epoch {last} o2o gains "
                 f"{gain('o2o'):.1f} AP NMS-free and {scheme} {gain(scheme):.1f}")
        if drop in ahead and last in behind:
            text += f": {scheme}'s lead before the drop ({before:+.1f}) becomes a deficit ({end:+.1f})."
        else:
            text += f", taking the gap from {before:+.1f} to {end:+.1f}."
    return text


def describe_schedule(study: Mapping, cell: str = "ep8", base: str = "demo", scheme: str = "ms",
                      goal: float = 2.0) -> Optional[str]:
    """Sentences on whether a longer schedule (`cell`) closes `scheme`'s NMS-free gap to o2o: the
    gap at the end of `base` and of `cell`, and after the epoch of `cell` where `base` ended, NMS-free
    and with NMS (x100, mean over seeds). None unless both cells have per-epoch records."""
    gaps = regime_epoch_gaps(study, (base, cell), scheme)
    if len(gaps) < 2:
        return None
    end_base, end_cell = gaps[base][-1], gaps[cell][-1]
    mid = next((g for g in gaps[cell] if g["epoch"] == end_base["epoch"]), None)

    def ap(g, key="AP") -> str:
        return "-" if g is None or g.get(key) is None else f"{100 * g[key]['mean']:+.1f}"

    n = end_cell["AP"]["n"]
    text = (f"`{cell}` trains both schemes for {end_cell['epoch']} epochs instead of {end_base['epoch']}. "
            f"{scheme} minus o2o, NMS-free: {ap(end_base)} at the end of `{base}`, {ap(mid)} after epoch "
            f"{end_base['epoch']} of `{cell}`, {ap(end_cell)} at its end; with NMS: {ap(end_base, 'AP_nms')}, "
            f"{ap(mid, 'AP_nms')}, {ap(end_cell, 'AP_nms')} (mean over {n} seed{'s' if n != 1 else ''}).")
    change = 100 * (end_cell["AP"]["mean"] - end_base["AP"]["mean"])
    if change >= goal:
        text += f" The longer schedule narrows the NMS-free gap by {change:.1f} AP"
    elif change <= -goal:
        text += f" The longer schedule widens the NMS-free gap by {-change:.1f} AP"
    else:
        text += f" The longer schedule moves the NMS-free gap by {change:+.1f} AP, less than {goal:g}"
    text += "; " + _standing(scheme, end_cell["AP"], "NMS-free", cell)
    if end_cell.get("AP_nms") is not None:
        text += " " + _standing(scheme, end_cell["AP_nms"], "with NMS", cell)
    return text


def _every_seed(d: Mapping) -> int:
    """+1 where every seed's paired difference {min, max} is above zero, -1 where every one is
    below, 0 where the seeds disagree: a mean inside the seeds' spread is not a lead."""
    return 1 if d["min"] > 0 else -1 if d["max"] < 0 else 0


def _standing(scheme: str, d: Mapping, how: str, cell: str) -> str:
    """'ms leads o2o NMS-free at the end of `ep8` in every seed (+1.0).' (or trails, or is level where
    the seeds disagree) from a paired difference {mean, min, max}."""
    sign = _every_seed(d)
    if sign:
        verb = "leads o2o" if sign > 0 else "trails o2o"
    else:
        return f"{scheme} is level with o2o {how} at the end of `{cell}` (the seeds disagree: {100 * d['mean']:+.1f})."
    return f"{scheme} {verb} {how} at the end of `{cell}` in every seed ({100 * d['mean']:+.1f})."


def regime_rows(study: Mapping) -> list[dict]:
    """One table row per (cell, scheme) of a regime study, AP x100: what the cell asks, seeds,
    AP and AP with NMS (mean over seeds), duplicates per image, and the difference to o2o paired
    by seed (mean +- half the spread over seeds; "-" for o2o itself). The question is given on
    the cell's first row only."""
    questions = {name: c.get("question", "") for name, c in study.get("cells", {}).items()}

    def pm(d: Optional[Mapping]) -> str:
        return "-" if not d else f"{100 * d['mean']:+.1f} +- {50 * d['spread']:.1f}"

    rows = []
    for e in study.get("summary", []):
        for scheme, s in e["schemes"].items():
            d = e.get("delta", {}).get(scheme, {})
            first = not rows or rows[-1]["cell"] != e["cell"]           # the question once per cell
            rows.append({"cell": e["cell"], "what it asks": questions.get(e["cell"], "") if first else "",
                         "scheme": scheme,
                         "seeds": s["AP"]["n"], "AP": f"{100 * s['AP']['mean']:.1f}",
                         "AP, NMS": f"{100 * s['AP_nms']['mean']:.1f}",
                         "duplicates / image": f"{s['duplicates']['mean']:.1f}",
                         "AP - o2o": pm(d.get("AP")), "AP - o2o, NMS": pm(d.get("AP_nms"))})
    return rows


# ---------------------------------------------------------------- costs from the benchmark
OVERHEAD_JSON = _ROOT / "bench" / "results" / "overhead.json"
# bench/overhead.py's JSON as measured for this repository (committed with its machine)
OVERHEAD_MEASURED_JSON = _ROOT / "docs" / "results" / "overhead.json"


def benchmark_costs(path: Union[str, Path, None] = None) -> Optional[dict]:
    """The training cost per scheme measured by bench/overhead.py (its JSON), as
    {"rows": markdown rows, "caption": what was measured, where}: `path`, else your own run
    (OVERHEAD_JSON), else the committed measurement (OVERHEAD_MEASURED_JSON); None if none."""
    path = _measurement(path, OVERHEAD_JSON, OVERHEAD_MEASURED_JSON)
    if path is None:
        return None
    data = json.loads(path.read_text())
    results = data.get("results") or []
    if not results:
        return None
    rows = [{"scheme": r["scheme"],
             "queries in training": (f"{r['num_queries']}+{r['extra_queries']}" if r.get("extra_queries")
                                     else str(r["num_queries"])),
             "ms / step (median)": f"{1e3 * r['step_s']:.1f}",
             "time vs o2o": f"{r['time_ratio']:.2f}x",
             "peak memory (MiB)": f"{r['peak_mem_mb']:.0f}",
             "memory vs o2o": f"{r['mem_ratio']:.2f}x"} for r in results]
    first, args = results[0], data.get("args", {})
    machine = data.get("machine") or first.get("machine")
    shown = path.resolve().relative_to(_ROOT) if path.resolve().is_relative_to(_ROOT) else path.name
    caption = (f"`{shown}` from `bench/overhead.py`: preset `{first['preset']}`, batch {first['batch']}, "
               f"{first['image_size']} px images, device `{first['device']}`"
               + (f" ({machine})" if machine else " (the file does not name the machine)")
               + f", median of {first['steps']} steps after {first['warmup']} warm-up steps, "
               f"{args.get('repeats', 1)} round(s); memory: {first['mem_kind']}.")
    return {"rows": rows, "caption": caption}


# ---------------------------------------------------------------- tables
def summarize_run(run: Run) -> dict:
    """Final APs (x1 fractions), AP per layer, time per epoch and peak memory of a run."""
    ev = run.final_eval() or {}
    times = [r["epoch_time"] for r in run.epochs]
    mems = [r.get("peak_mem_mb") for r in run.epochs if r.get("peak_mem_mb") is not None]
    final = ev.get("final", {})
    return {"name": run.name, "dir": str(run.dir), "label": _label(run), "supervision": run.supervision,
            "epochs": len(run.epochs), **{k: final.get(k) for k in AP_KEYS},
            "AP_per_layer": [l.get("AP") for l in ev.get("layers", [])],
            "time_per_epoch_s": sum(times) / len(times) if times else None,
            "peak_mem_mb": max(mems) if mems else None,
            "peak_mem_kind": run.epochs[-1].get("peak_mem_kind") if run.epochs else None}


def summary_table(summaries: Sequence[dict]) -> str:
    """Markdown table of `summarize_run` results: AP x100 (final layer and per layer), time, memory."""
    n_layers = max((len(s["AP_per_layer"]) for s in summaries), default=0)
    layer_cols = [f"AP L{l + 1}" for l in range(n_layers)]
    rows = []
    for s in summaries:
        layers = [_fmt(v) for v in s["AP_per_layer"]] + ["-"] * (n_layers - len(s["AP_per_layer"]))
        rows.append({"model": s["label"], **{k: _fmt(s[k]) for k in AP_KEYS}, **dict(zip(layer_cols, layers)),
                     "s / epoch": _fmt(s["time_per_epoch_s"], 1.0, 1), "peak mem (MB)": _fmt(s["peak_mem_mb"], 1.0, 0)})
    columns = ["model", *AP_KEYS, *layer_cols, "s / epoch", "peak mem (MB)"]
    return viz.markdown_table(rows, columns) + "\n"


def candidate_table(stats_by_model: dict) -> str:
    """Markdown table of the final decoder layer's candidate statistics, one row per model."""
    rows = []
    for name, st in stats_by_model.items():
        c = st["layers"][-1]
        rows.append({"model": name, "best IoU per GT": f"{c['best_iou']:.3f}",
                     "best IoU, top-20": f"{c['best_iou_topk']:.3f}",
                     "queries IoU>=0.5 per GT": f"{c['num_iou50']:.2f}",
                     "recall at IoU 0.5, top-20": f"{c['recall50_topk']:.3f}", "duplicates / image": f"{c['duplicates']:.2f}"})
    return viz.markdown_table(rows) + "\n"


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path,
                 labels: Optional[Sequence[str]] = None) -> dict:
    """Write loss_curves.png, ap_per_epoch.png, ap_per_layer.png, summary.json and summary.md
    comparing the runs side by side; returns {"summaries": [...], "files": [...]}."""
    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    if labels and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    runs = [load_run(d, name=labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "loss_curves.png", out / "ap_per_epoch.png", out / "ap_per_layer.png", out / "o2o_losses.png"]
    by_label = _by_label(runs)
    viz.save_figure(viz.plot_loss_curves(by_label, panels=LOSS_PANELS, x="epoch", steps_behind=True,
                                         title="training losses (weighted, as optimised)"), files[0])
    viz.save_figure(viz.plot_ap_curves(by_label, metrics=("AP",), per_layer=True), files[1])
    viz.save_figure(viz.plot_ap_per_layer(by_label, metrics=("AP",)), files[2])
    viz.save_figure(viz.plot_o2o_losses(by_label), files[3])          # the paper's Fig. 2
    summaries = [summarize_run(r) for r in runs]
    (out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (out / "summary.md").write_text("AP values x100 (COCO), final decoder layer unless noted.\n\n"
                                    + summary_table(summaries))
    files += [out / "summary.json", out / "summary.md"]
    return {"summaries": summaries, "files": [str(f) for f in files]}


# ---------------------------------------------------------------- the demo
def _finished_with(run_dir: Path, cfg) -> bool:
    """Whether run_dir holds a finished run (eval.json) trained with exactly `cfg`."""
    if not (run_dir / "eval.json").is_file() or not (run_dir / "config.json").is_file():
        return False
    return json.loads((run_dir / "config.json").read_text()) == json.loads(json.dumps(cfg.to_dict()))


def run_demo(out: str | Path = "runs/demo", epochs: Optional[int] = None, data_root: str = "data/shapes",
             preset_name: str = "tiny", seed: int = 42, overrides: Sequence[str] = (),
             progress: bool = True) -> dict:
    """Generate the shapes data if missing, train MS-DETR (`ms`) and the `o2o` baseline with the
    same budget and seed, evaluate both, and write out/report.md with plots."""
    from msdetr_lite import analysis
    from msdetr_lite.config import apply_overrides, preset
    from msdetr_lite.data import build_dataset, resolve_root
    from msdetr_lite.data.synthetic import generate
    from msdetr_lite.engine import build_val_loader, load_model_from_checkpoint, resolve_device, train
    from msdetr_lite.evaluation import evaluate

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = resolve_root(data_root)
    if not (root / "annotations" / "instances_train.json").exists():
        print(f"demo: generating the synthetic shapes dataset into {data_root}")
        generate(data_root)
        root = resolve_root(data_root)

    runs = {}
    for sup in ("ms", "o2o"):
        cfg = preset(preset_name)
        opts = [f"data.root={root}", f"model.supervision={sup}", f"train.seed={seed}",
                f"train.output_dir={out / sup}", *overrides]
        if epochs is not None:
            opts += [f"train.epochs={epochs}", f"train.lr_drop={max(1, epochs - 1)}"]
        cfg = apply_overrides(cfg, opts)
        runs[sup] = out / sup
        if _finished_with(runs[sup], cfg):
            print(f"demo: {sup} already trained with this configuration in {runs[sup]}, reused")
            continue
        print(f"demo: training {sup} ({cfg.train.epochs} epochs)")
        # the demo owns its --out folder: a run there with another configuration is replaced
        train(cfg, progress=progress, overwrite=True)
    cmp = compare_runs([runs["ms"], runs["o2o"]], out, labels=["MS-DETR (ms)", "baseline (o2o)"])

    # candidate quality and detections of both trained models on the val set
    device = resolve_device("auto")
    models, cfg = {}, None
    for name, run in (("MS-DETR (ms)", runs["ms"]), ("baseline (o2o)", runs["o2o"])):
        models[name], cfg = load_model_from_checkpoint(run / "final.pth", device=device)
    val = build_dataset(cfg.data, "val")
    loader = build_val_loader(cfg, val, cfg.train.batch_size)
    cand = {name: analysis.candidate_quality_over_loader(m, loader, device, progress=progress)
            for name, m in models.items()}
    nms = {name: evaluate(m, loader, device, progress=progress, nms_iou=NMS_IOU) for name, m in models.items()}
    (out / "eval_nms.json").write_text(json.dumps(nms, indent=2) + "\n")
    viz.save_figure(viz.plot_nms_ap_per_layer({sup: nms[name] for sup, name in
                                               (("o2o", "baseline (o2o)"), ("ms", "MS-DETR (ms)"))}),
                    out / "ap_nms.png")
    analysis.save_json(cand, out / "candidates.json")
    viz.save_figure(viz.plot_candidate_quality(cand), out / "candidates.png")
    viz.save_figure(viz.plot_detection_grid(models, val, device=device), out / "detections.png")

    s = cmp["summaries"]
    ms_ap, o2o_ap = s[0]["AP"] or 0.0, s[1]["AP"] or 0.0
    elapsed = time.perf_counter() - t0
    tc = cfg.train
    report = f"""# MS-DETR vs the o2o baseline on synthetic shapes

Both detectors: preset `{preset_name}`, {tc.epochs} epochs, total batch {tc.batch_size},
lr {tc.lr:g} (backbone {tc.lr_backbone:g}), lr drop after epoch {tc.lr_drop}, seed {seed}, device
`{device}`. The only difference is `model.supervision`: `ms` adds one-to-many supervision to the
same queries of the same decoder (training only); `o2o` is the Deformable-DETR++ baseline.
Inference is identical (primary queries, top-100, no NMS). Total demo time {elapsed / 60:.1f} min.

## Results (COCO AP x100 on the val split)

{summary_table(s)}
MS-DETR minus baseline: **{100 * (ms_ap - o2o_ap):+.1f} AP** at the final layer. On a run this
small the difference is noisy (one seed; `make regime` runs two per cell).

## NMS-free and with NMS: candidates vs de-duplication

The detector runs NMS-free; the same predictions scored after class-wise NMS at IoU {NMS_IOU:g}
measure the candidates alone (AP x100 per decoder layer, duplicates per image at the final layer).

{viz.markdown_table(nms_rows(nms))}

{describe_nms_comparison({"ms": nms["MS-DETR (ms)"], "o2o": nms["baseline (o2o)"]})}

![AP per layer, without and with NMS](ap_nms.png)

## Candidate quality, final decoder layer (the paper's Fig. 1 statistics)

{candidate_table(cand)}
![candidate quality](candidates.png)

## AP per epoch and per decoder layer

![AP per epoch](ap_per_epoch.png)

![AP per layer](ap_per_layer.png)

## Losses

The paper's Fig. 2: the o2o classification and box losses per epoch (final layer), the baseline
dashed and MS-DETR solid.

![o2o losses per epoch](o2o_losses.png)

All branches:

![loss curves](loss_curves.png)

## Detections

![detections](detections.png)

Runs: `{runs['ms']}`, `{runs['o2o']}` (metrics.jsonl, eval.json, final.pth). Reproduce with
`msdetr demo --out {out} --epochs {tc.epochs}`; compare other runs with `msdetr compare RUN... --out DIR`.
"""
    (out / "report.md").write_text(report)
    print(f"demo: wrote {out / 'report.md'} ({elapsed / 60:.1f} min)")
    return {"report": str(out / "report.md"), "summaries": s, "candidates": cand, "nms": nms, "seconds": elapsed}
