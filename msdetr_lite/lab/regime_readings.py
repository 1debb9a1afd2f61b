"""Sentences, tables and the per-epoch figure built from the regime study's JSON (`bench/regime.py`,
computed by `msdetr_lite.regime`): where MS-DETR beats o2o, NMS-free and with NMS.

    study = load_regime()                     # your bench/results run, else the committed docs/results one
    describe_epoch_gap(study, "demo"), describe_schedule(study)
    describe_o2m_switched_off(study), regime_epochs_figure(study)
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from .. import viz
from ..regime import gap_per_epoch, per_epoch
from . import PROJECT_ROOT
from .readings import NMS_IOU, measurement_path

REGIME_JSON = PROJECT_ROOT / "bench" / "results" / "regime.json"
# the study as measured for this repository (bench/regime.py's JSON, committed with its machine):
# what a reader sees before running their own
REGIME_MEASURED_JSON = PROJECT_ROOT / "docs" / "results" / "regime.json"


def load_regime(path: Union[str, Path, None] = None) -> Optional[dict]:
    """bench/regime.py's JSON ({"nms_iou", "cells", "summary", "runs", "machine"}): `path`, else your
    own run (REGIME_JSON), else the committed measurement (REGIME_MEASURED_JSON); None if none."""
    found = measurement_path(path, REGIME_JSON, REGIME_MEASURED_JSON)
    return None if found is None else {**json.loads(found.read_text()), "path": str(found)}


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
