"""Sentences and tables built from measured numbers: what the notebooks, the demo report and
`msdetr compare` print about models, never typed by hand.

    describe_nms_comparison({"ms": ev_ms, "o2o": ev_o2o})    # NMS-free vs with NMS, in words
    describe_convergence({"ms": run.convergence(), ...})    # per decoder layer and epoch, in words
    describe_candidates({"ms": stats_ms, "o2o": stats_o2o})  # the candidates (top-k) and all queries
    nms_rows(evals), candidate_table(stats), summary_table([summarize_run(run), ...])
    benchmark_costs()                                        # bench/overhead.py's JSON as table rows
    fast_notice(fast)                                        # the fast mode's on-screen warning

The regime study's sentences are in `msdetr_lite.lab.regime_readings`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from .. import viz
from ..runs import Run
from . import PROJECT_ROOT

AP_KEYS = ("AP", "AP50", "AP75")


def run_label(run: Run) -> str:
    """A run's legend label: its name, with its supervision scheme when the name does not say it."""
    sup = run.supervision
    return f"{run.name} ({sup})" if sup and sup not in run.name else run.name


def _fmt(v, scale=100.0, digits=1) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or v < 0)):
        return "-"
    return f"{scale * v:.{digits}f}"


# ---------------------------------------------------------------- sentences from the numbers
# differences below this (AP x100) are called "about equal": one seed on a CPU moves AP by
# several points (docs/results.md: 37.7 vs 41.2 for the same seed on two CPU types)
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


def _signed(values: Sequence[Optional[float]]) -> str:
    return ", ".join("-" if v is None else f"{round(v, 1) + 0.0:+.1f}" for v in values)   # + 0.0: no "-0.0"


def describe_convergence(convergences: Mapping[str, Mapping], model: str = "ms", baseline: str = "o2o",
                         fast: bool = False) -> str:
    """The reading under `viz.plot_convergence`, from the same `Run.convergence()` grids: in how many
    (decoder layer, epoch) cells the model is ahead of, level with (within TIE_AP) or behind the
    baseline, NMS-free and with NMS; the last epoch layer by layer; whether the early or the late
    half of the decoder gains more (mean over epochs); and where it has more duplicates."""
    m, b = convergences[model], convergences[baseline]
    name = SHORT_NAMES.get(model, model)
    epochs = [e for e in m["epochs"] if e in b["epochs"]]
    if not epochs or not m["AP"] or not b["AP"]:
        return _fast_prefix(fast) + f"No epoch was evaluated in both {name}'s and the baseline's run."
    cols = [(m["epochs"].index(e), b["epochs"].index(e)) for e in epochs]
    n_layers = min(len(m["AP"]), len(b["AP"]))

    def gaps(key: str, scale: float = 100.0) -> list[list[Optional[float]]]:
        return [[None if m[key][l][i] is None or b[key][l][j] is None else scale * (m[key][l][i] - b[key][l][j])
                 for i, j in cols] for l in range(n_layers)]

    def count(grid) -> Optional[str]:
        cells = [g for row in grid for g in row if g is not None]
        if not cells:
            return None
        ahead = sum(g >= TIE_AP for g in cells)
        behind = sum(g <= -TIE_AP for g in cells)
        return f"ahead in {ahead}, level (within {TIE_AP:g} AP) in {len(cells) - ahead - behind}, behind in {behind}"

    free, nms = gaps("AP"), gaps("AP_nms")
    text = [f"Over {len(epochs)} epoch(s) x {n_layers} decoder layers ({len(epochs) * n_layers} cells), {name} is "
            f"{count(free)} NMS-free" + (f"; with NMS {count(nms)}." if count(nms) else " (no NMS scores).")]
    text.append(f"After epoch {epochs[-1]}, layer by layer, NMS-free: {_signed([row[-1] for row in free])}"
                + (f"; with NMS: {_signed([row[-1] for row in nms])}." if count(nms) else "."))
    means = [sum(g for g in row if g is not None) / max(1, sum(g is not None for g in row)) for row in free]
    if n_layers >= 2:
        half = n_layers // 2
        early, late = sum(means[:half]) / half, sum(means[half:]) / (n_layers - half)
        if abs(early - late) < TIE_AP:
            which = f"the early and the late layers gain about the same (within {TIE_AP:g} AP)"
        else:
            which = f"{'the early' if early > late else 'the late'} layers gain more"

        def span(a: int, z: int) -> str:
            return f"layer {a}" if a == z else f"layers {a}-{z}"
        text.append(f"Averaged over the epochs, the NMS-free gap is {_signed([early])} at {span(1, half)} and "
                    f"{_signed([late])} at {span(half + 1, n_layers)}: {which} (the paper expects the early ones to "
                    f"gain more).")
    dups = gaps("duplicates", 1.0)
    cells = [g for row in dups for g in row if g is not None]
    if cells:
        more = sum(g > 0 for g in cells)
        last_m, last_b = m["duplicates"][n_layers - 1][cols[-1][0]], b["duplicates"][n_layers - 1][cols[-1][1]]
        tail = (f" (last layer after epoch {epochs[-1]}: {last_m:.2f} vs {last_b:.2f})"
                if last_m is not None and last_b is not None else "")
        text.append(f"{name} has more duplicates per image than the baseline in {more} of {len(cells)} cells{tail}.")
    return _fast_prefix(fast) + " ".join(text)


def _pairs_per_gt(a: Mapping) -> list[int]:
    import torch
    return torch.bincount(torch.as_tensor(a["o2m"][1]).long(), minlength=len(a["gt_labels"])).tolist()


def _gt_names(a: Mapping, names: Optional[Sequence[str]]) -> list[str]:
    return list(names) if names else [f"GT {g}" for g in range(len(a["gt_labels"]))]


def describe_assignment(a: Mapping, gt_names: Optional[Sequence[str]] = None) -> str:
    """Both assignments of one `samples.compute_assignment` result in words: the Hungarian pair of
    each GT, then per GT its positives c_g and the min(c_g, K) o2m queries it gets."""
    import torch
    names = _gt_names(a, gt_names)
    q1, g1 = (torch.as_tensor(x).tolist() for x in a["o2o"])
    q2, g2 = (torch.as_tensor(x).tolist() for x in a["o2m"])
    best, pos = torch.as_tensor(a["best_gt"]), torch.as_tensor(a["positive"]).bool()
    o2o = ", ".join(f"{names[g]} gets q{q}" for q, g in sorted(zip(q1, g1), key=lambda t: t[1]))
    per = []
    for g, name in enumerate(names):
        c = int((best[pos] == g).sum())
        mine = [f"q{q}" for q, gg in zip(q2, g2) if gg == g]
        per.append(f"{name} has c = {c} and gets {len(mine)}" + (f" ({', '.join(mine)})" if mine else ""))
    return (f"One-to-one (Hungarian): {o2o or 'no pair'}. One-to-many (K = {a['k']}, tau = {a['tau']:g}): "
            f"{int(pos.sum())} positive queries; " + "; ".join(per) + ".")


def describe_cap(capped: Mapping, uncapped: Mapping, gt_names: Optional[Sequence[str]] = None) -> str:
    """What the positive cap (step 4) did, from two `compute_assignment` results of the same image
    and layer, with the cap (`max_pos_fraction` < 1) and without (1.0): how many positives steps
    2-3 made, how many the cap keeps, the o2m pairs per GT both ways, and which GTs lost all."""
    names = _gt_names(capped, gt_names)
    n_pos, keep = int(uncapped["positive"].sum()), capped["max_pos"]
    with_cap, without = _pairs_per_gt(capped), _pairs_per_gt(uncapped)
    share = f"{100 * capped['max_pos_fraction']:g} % of the {len(capped['positive'])} queries"
    if n_pos <= keep:
        return (f"Steps 2-3 make {n_pos} queries positive; the cap keeps up to {keep} ({share}), so it does not bind "
                f"here: o2m pairs per GT {with_cap}.")
    lost = [names[g] for g, (w, wo) in enumerate(zip(with_cap, without)) if w == 0 and wo > 0]
    fewer = [names[g] for g, (w, wo) in enumerate(zip(with_cap, without)) if 0 < w < wo]
    text = (f"Steps 2-3 make {n_pos} queries positive; the cap keeps {keep} of them ({share}, a random subset). "
            f"o2m pairs per GT with the cap: {with_cap}; without it: {without}.")
    if lost:
        text += f" The cap removes every o2m target of {', '.join(lost)}" + (
            f", and some of {', '.join(fewer)}." if fewer else ".")
    elif fewer:
        text += f" No GT loses all its o2m targets; {', '.join(fewer)} get fewer."
    return text


def branch_rows(stats: Mapping[float, Mapping[str, Mapping]]) -> list[dict]:
    """01's table of the o2o and o2m heads of one model: {score threshold: {branch: one layer's
    `candidate_quality` statistics}} -> rows (duplicates, candidates' recall, queries at IoU 0.5)."""
    from ..analysis import STAT_TITLES

    keys = ("duplicates", "recall50_topk", "num_iou50")
    return [{"branch": branch, "score threshold": thresh, **{STAT_TITLES[k]: round(st[k], 3) for k in keys}}
            for thresh, per in stats.items() for branch, st in per.items()]


def describe_branches(stats: Mapping[float, Mapping[str, Mapping]], fast: bool = False) -> str:
    """The o2m head against the o2o head of one model, per score threshold, from the numbers of
    `branch_rows`: duplicates, and queries at IoU >= 0.5 per GT."""
    parts = []
    for thresh, per in stats.items():
        o2o, o2m = per["o2o"], per["o2m"]
        d_o2o, d_o2m = round(o2o["duplicates"], 3), round(o2m["duplicates"], 3)
        if d_o2o == d_o2m == 0:
            dup = "neither head has a duplicate (no object has two queries that confident)"
        elif d_o2m > d_o2o:
            dup = f"the o2m head has more duplicates ({d_o2m:g} vs {d_o2o:g} per image), as it is trained to"
        else:
            dup = f"the o2m head has no more duplicates than the o2o head ({d_o2m:g} vs {d_o2o:g} per image)"
        n_m, n_o = round(o2m["num_iou50"], 3), round(o2o["num_iou50"], 3)
        more = _compare(n_m, n_o, ("more", "as many", "fewer"))
        parts.append(f"At score > {thresh:g}, {dup}; the o2m head has {more} well-placed queries per GT "
                     f"{'as' if more == 'as many' else 'than'} the o2o head ({n_m:g} vs {n_o:g} with IoU >= 0.5).")
    return (_fast_prefix(fast) if fast else "") + " ".join(parts)


def describe_levels(init: Mapping, trained: Mapping, object_px: Optional[float] = None,
                    strides: Sequence[int] = viz.LEVEL_STRIDES) -> str:
    """02's reading of `viz.plot_level_shares`, from two `samples.attention_levels` results: the
    decoder's share per level at initialisation and after training and, where the trained decoder
    reads (almost) only one level, what the numbers say about why: whether the encoder's tokens of
    that level still read the other levels, and how the levels' cells compare with the objects
    (`object_px`: a typical object's side in pixels)."""
    def pct(x: float) -> str:
        return f"{100 * x:.1f} %"

    n_levels = len(trained["decoder"][0])
    first = [round(s, 3) for s in init["decoder"][0]]
    uniform = all(abs(s - 1 / n_levels) < 0.01 for layer in init["decoder"] for s in layer)
    text = [("At initialisation every level gets " + pct(1 / n_levels) + " in every decoder layer (the weight layer "
             "starts at zero, so the softmax over levels x points is uniform)." if uniform else
             f"At initialisation the decoder's first layer reads {', '.join(pct(s) for s in first)} from levels "
             f"0-{n_levels - 1}.")]
    top = [max(range(n_levels), key=layer.__getitem__) for layer in trained["decoder"]]
    lvl = top[-1]
    shares = [layer[lvl] for layer in trained["decoder"]]
    text.append(f"Trained, the decoder layers put {', '.join(pct(s) for s in shares)} of their weight on level {lvl} "
                f"(stride {strides[lvl]}).")
    if min(shares) >= 0.9 and all(t == lvl for t in top):
        enc = [1.0 - layer[lvl] for layer in trained["encoder"]] if lvl == 0 and trained["encoder"] else []
        reads_all = bool(enc) and min(enc) >= 0.1
        if reads_all:
            text.append(f"The other levels are not lost: the encoder's level-{lvl} tokens still read "
                        f"{', '.join(pct(e) for e in enc)} of their weight from the coarser levels (encoder layers "
                        f"1-{len(enc)}), so by the decoder the finest map already carries the coarse context.")
        h, w = trained["spatial_shapes"][lvl]
        cells = f"Level {lvl}'s {h} x {w} cells are {strides[lvl]} px wide"
        if object_px is not None:
            coarser = [s for s in strides[lvl + 1:n_levels] if s >= object_px]
            cells += (f", below a typical object here ({object_px:.0f} px)" if strides[lvl] < object_px else "")
            if coarser:
                cells += f"; a cell of the coarsest level ({strides[n_levels - 1]} px) is larger than the object"
        text.append(cells + ": on these small images the model learns to read the finest map only."
                    + (" Learned, not a defect: the same sampling op reads every level in the encoder." if reads_all
                       else ""))
    return " ".join(text)


def plumbing_caption(ev: Mapping, run: Run) -> tuple[str, str]:
    """(figure title, caption) for a short run's AP per layer (notebook 05): how many steps on how
    many images it trained, read from its run folder, and that its AP is a plumbing check of the
    pipeline, not a result."""
    steps = sum(int(r.get("steps") or 0) for r in run.epochs)
    n_images = (run.config.get("data") or {}).get("max_images") or 0
    images = f"{n_images} images" if n_images else "the whole train split"
    ap = _ap(ev)
    title = f"A plumbing check, not a result: {steps} training steps on {images}"
    caption = (f"**A plumbing check, not a result.** This run trained {steps} steps ({len(run.epochs)} epoch(s)) on "
               f"{images}; its AP ({'-' if ap is None else f'{ap:.1f}'} at the last decoder layer) only shows that "
               "training, COCOeval and NMS run end to end. The axis is fixed at 0-100, so that a small number looks "
               "small; the trained models of notebooks 00-04 (`make zoo`) show what the recipe reaches.")
    return title, caption


def _compare(a: float, b: float, words: tuple[str, str, str], digits: int = 3) -> str:
    """words[0] if a > b, words[1] if equal at `digits` decimals, words[2] if a < b."""
    a, b = round(a, digits), round(b, digits)
    return words[0] if a > b else (words[1] if a == b else words[2])


def describe_candidates(stats: Mapping[str, Mapping], model: str = "ms", baseline: str = "o2o", layer: int = -1,
                        fast: bool = False) -> str:
    """04's headline, from two `analysis.candidate_quality` results: the candidates (a layer's top-k
    queries by score, the one definition) of the model against the baseline's, then the second view
    over all queries; where the two views disagree, says so and names the mechanism when the numbers
    show it (duplicates crowding the model's top-k), or says that they do not."""
    m, b = stats[model]["layers"][layer], stats[baseline]["layers"][layer]
    k = stats[model].get("topk", 20)
    name = SHORT_NAMES.get(model, model)
    where = "the last decoder layer" if layer == -1 else f"decoder layer {layer % len(stats[model]['layers']) + 1}"
    top_word = _compare(m["best_iou_topk"], b["best_iou_topk"], ("better", "as well", "worse"))
    all_word = _compare(m["best_iou"], b["best_iou"], ("better", "as well", "worse"))
    text = [f"A candidate is one of a layer's top {k} queries by score (the boxes Fig. 1 draws). At {where}, "
            f"{name}'s candidates find {_compare(m['recall50_topk'], b['recall50_topk'], ('more', 'as many', 'fewer'))} "
            f"of the objects at IoU 0.5 than the baseline's ({m['recall50_topk']:.3f} vs {b['recall50_topk']:.3f} of "
            f"the GTs) and are placed {top_word} (best IoU per GT {m['best_iou_topk']:.3f} vs {b['best_iou_topk']:.3f}).",
            f"Over all queries, whatever their score, {name}'s boxes are placed {all_word} (best IoU per GT "
            f"{m['best_iou']:.3f} vs {b['best_iou']:.3f}), with {m['num_iou50']:.1f} vs {b['num_iou50']:.1f} queries "
            f"at IoU >= 0.5 per GT."]
    if top_word != all_word:
        crowd, crowd_b = m["dups_topk"], b["dups_topk"]
        if round(crowd, 2) > round(crowd_b, 2):
            text.append(f"The two views disagree because duplicates crowd {name}'s top {k}: {crowd:.1f} of them per "
                        f"image land on an object another of its top {k} already found (the baseline's: "
                        f"{crowd_b:.1f}), and take the places that candidates for other objects would have.")
        else:
            text.append(f"The two views disagree, and duplicates in the top {k} do not explain it here "
                        f"({crowd:.1f} vs {crowd_b:.1f} per image on an already-found object).")
    text.append(f"Confident duplicates (score > 0.3, what the detector outputs): {m['duplicates']:.1f} vs "
                f"{b['duplicates']:.1f} per image.")
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


# ---------------------------------------------------------------- benchmark JSON: yours, else the committed one
def measurement_path(path: Union[str, Path, None], own: Path, committed: Path) -> Optional[Path]:
    """The benchmark JSON to show: `path` if given, else your own run (`own`, under bench/results),
    else the committed measurement (`committed`, under docs/results); None if none exists."""
    candidates = [Path(path)] if path is not None else [own, committed]
    return next((p for p in candidates if p.is_file()), None)


# costs from the benchmark
OVERHEAD_JSON = PROJECT_ROOT / "bench" / "results" / "overhead.json"
# bench/overhead.py's JSON as measured for this repository (committed with its machine)
OVERHEAD_MEASURED_JSON = PROJECT_ROOT / "docs" / "results" / "overhead.json"


def benchmark_costs(path: Union[str, Path, None] = None) -> Optional[dict]:
    """The training cost per scheme measured by bench/overhead.py (its JSON), as
    {"rows": markdown rows, "caption": what was measured, where}: `path`, else your own run
    (OVERHEAD_JSON), else the committed measurement (OVERHEAD_MEASURED_JSON); None if none."""
    path = measurement_path(path, OVERHEAD_JSON, OVERHEAD_MEASURED_JSON)
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
    shown = path.resolve().relative_to(PROJECT_ROOT) if path.resolve().is_relative_to(PROJECT_ROOT) else path.name
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
    times = [r["epoch_time"] for r in run.epochs if "epoch_time" in r]
    mems = [r.get("peak_mem_mb") for r in run.epochs if r.get("peak_mem_mb") is not None]
    final = ev.get("final", {})
    return {"name": run.name, "dir": str(run.dir), "label": run_label(run), "supervision": run.supervision,
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
