"""The regime study: where does mixed supervision beat the o2o baseline, NMS-free and with NMS?

MS-DETR's claim has two halves. (1) One-to-many supervision of the primary queries makes the
decoder's *candidates* better. (2) The one-to-one branch still learns to keep one candidate per
object, so the detector stays NMS-free. On the embedded data at the demo's budget, (1) holds and
(2) does not: with NMS, ms beats o2o; without, it loses. The study varies one knob at a time
around the demo's recipe and measures, per cell, scheme and seed, the final layer's AP without
and with class-wise NMS (evaluation.evaluate(nms_iou=...)). The difference to o2o, paired by
seed, says where each half holds.

    cells = CELLS                                  # name -> Cell(overrides, question, only)
    records = collect(root, cells, schemes, seeds) # from finished run folders
    summary = summarize(records)                   # per cell: mean / spread per scheme, deltas
    plot_study(summary, "regime.png")              # viz.plot_regime_map, the map the notebooks show

bench/regime.py runs the grid (resumable: finished runs are kept) and writes JSON plus the plot.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

# The demo's recipe (`msdetr demo`): tiny preset, 4 epochs, the lr drops 10x before the last;
# a weights-only snapshot per epoch for the mechanism probe (msdetr_lite.probe).
BASE_OVERRIDES = ("train.epochs=4", "train.lr_drop=3", "train.keep_snapshots=true")
SCHEMES = ("o2o", "ms", "hybrid")
NMS_IOU = 0.7
NMS_FILE = "eval_nms.json"            # evaluate(nms_iou=NMS_IOU) of final.pth, for runs trained without it


# The map's axes: what a cell changes, in the order the map shows them.
AXES = ("method: where o2m supervises", "method: the o2m matcher", "method: the o2m loss",
        "schedule", "decoder", "queries", "data", "trunk")


@dataclass(frozen=True)
class Cell:
    """One point of the grid: config overrides on top of BASE_OVERRIDES.

    question: what the cell asks, in a sentence (printed in the table, shown in the notebooks).
    only:     the schemes whose training the overrides change (None: all). Other schemes reuse
              the runs of the `demo` cell: e.g. o2m loss weights do not touch the o2o baseline.
    axis:     which of AXES the cell moves along (the map's rows are grouped by it).
    label:    the change in a few plain words, for the map ("" for the demo: the reference point).
    data:     a shapes variant (data.synthetic VARIANTS) the cell trains on instead of data/shapes;
              bench/regime.py generates it once under its data folder (`data_root`).
    trunk:    "pretrained" (msdetr_lite.trunk's synthetic pretraining, the paper's regime: frozen
              BN, stem and layer1 frozen, 0.1x backbone lr) or "frozen" (the whole trunk frozen);
              bench/regime.py builds the trunk once (cached) and adds trunk.overrides(...).
    """
    overrides: tuple[str, ...]
    question: str
    only: Optional[tuple[str, ...]] = None
    axis: str = ""
    label: str = ""
    data: Optional[str] = None
    trunk: Optional[str] = None


_PLACE, _MATCH, _LOSS = AXES[:3]
# the tiny preset's multi-scale training around 128 px, moved to the 192 px variants
_AT_192 = ("data.train_scales=(176,192,208)", "data.val_size=192", "data.max_size=288")
# One knob at a time, around the demo's recipe. Authors' defaults stay the defaults; every
# change to the method is a named departure.
CELLS: dict[str, Cell] = {
    "demo": Cell((), "the demo's recipe: d_model 128, 8 heads, 4 decoder layers, 100 queries, 4 epochs"),
    "tap_after_sa": Cell(("model.o2m_tap=after_sa",),
                         "o2m tapped after self-attention (Fig. 4(d)): the o2o stream keeps the plain "
                         "SA -> CA -> FFN order", only=("ms",), axis=_PLACE, label="o2m tap after self-attention (Fig. 4d)"),
    "tap_output": Cell(("model.o2m_tap=output",),
                       "o2m on the layer output with its own class heads (Fig. 4(a)): the o2o class "
                       "head is no longer asked to score K queries per object high", only=("ms",),
                       axis=_PLACE, label="o2m on the layer output, own class heads (Fig. 4a)"),
    "o2m_early": Cell(("loss.o2m_layers=2",),
                      "o2m on decoder layers 1-2 only: layers 3-4 and their heads are trained one-to-one "
                      "alone, a stage left to de-duplicate (loss.o2m_layers)", only=("ms",),
                      axis=_PLACE, label="o2m on layers 1-2 only, 3-4 one-to-one"),
    "o2m_off_last": Cell(("loss.o2m_last_epoch=3",),
                         "o2m supervision in epochs 1-3 only, the o2o branch alone in the last epoch (after "
                         "the lr drop): a departure (loss.o2m_last_epoch) that asks whether the o2o branch then "
                         "learns to suppress the duplicates", only=("ms",), axis="schedule",
                         label="o2m off in the last epoch"),
    "k2_tau07": Cell(("matcher.k=2", "matcher.tau=0.7"),
                     "a stricter o2m matcher, K = 2 and tau = 0.7: fewer, better-placed positives, so a "
                     "confident class score no longer lets a poorly placed query pass", only=("ms",),
                     axis=_MATCH, label="K = 2, tau = 0.7 (stricter)"),
    "cap_off": Cell(("matcher.max_pos_fraction=1.0",),
                    "the 25% positive cap lifted: with 100 queries it binds in almost every image, so "
                    "K = 6 is rarely reached", only=("ms",), axis=_MATCH, label="no 25% cap on positives"),
    "o2m_half": Cell(("loss.cls_o2m=1.0", "loss.bbox_o2m=2.5", "loss.giou_o2m=1.0"),
                     "o2m loss weights halved (a departure from the authors' 2 / 5 / 2)", only=("ms",),
                     axis=_LOSS, label="o2m loss weights halved"),
    "o2m_boxes": Cell(("loss.cls_o2m=0",),
                      "o2m box losses only, no o2m class loss: do the o2m class targets make the "
                      "confident duplicates?", only=("ms",), axis=_LOSS, label="o2m box losses only, no class loss"),
    "ep8": Cell(("train.epochs=8", "train.lr_drop=6"), "twice the schedule: 8 epochs, lr drop after 6",
                axis="schedule", label="8 epochs instead of 4"),
    "dec6": Cell(("model.num_decoder_layers=6",), "6 decoder layers, the paper's depth: more layers to de-duplicate",
                 axis="decoder", label="6 decoder layers instead of 4"),
    "heads4": Cell(("model.nheads=4",), "4 attention heads of 32 channels instead of 8 of 16",
                   axis="decoder", label="4 heads of 32 channels instead of 8 of 16"),
    "q50": Cell(("model.num_queries=50", "model.hybrid_num_queries=75"),
                "50 queries instead of 100: fewer candidates per object to suppress",
                axis="queries", label="50 queries instead of 100"),
    "query_pos_ref": Cell(("model.query_pos=reference",),
                          "each layer's positional query from its own reference box (DINO) instead of the "
                          "fixed proposal: queries that converge on one object also look alike to "
                          "self-attention", axis="queries", label="positional query from each layer's box"),
    "proposal_nms": Cell(("model.proposal_nms=0.7",),
                         "class-agnostic NMS at IoU 0.7 on the encoder's proposals before the top 100 become "
                         "queries: fewer queries start on one object (a departure, model.proposal_nms)",
                         axis="queries", label="NMS at 0.7 on the proposals that seed the queries"),
    "many_classes": Cell((), "14 shape classes instead of 4 (the many_classes variant): a class score that "
                         "stays lower for longer keeps the o2m matcher's bar S >= tau near IoU 0.4-0.5",
                         axis="data", label="14 classes instead of 4", data="many_classes"),
    "coco_like": Cell(_AT_192, "COCO-like scenes (the coco_like variant): 14 classes, 5-30 objects of 6-96 px, "
                      "more occlusion, 192 px images (queries 12% of the tokens instead of 27%)",
                      axis="data", label="COCO-like scenes: 14 classes, 5-30 objects, occlusion, 192 px",
                      data="coco_like"),
    "trunk_pretrained": Cell((), "a trunk pretrained on other synthetic images (msdetr_lite.trunk), used as the paper "
                             "uses ImageNet weights: frozen BN, stem and layer1 frozen, 0.1x backbone lr",
                             axis="trunk", label="pretrained trunk (synthetic task), fine-tuned at 0.1x lr",
                             trunk="pretrained"),
    "trunk_frozen": Cell((), "the pretrained trunk kept frozen: only the transformer learns (the cheapest step)",
                         axis="trunk", label="pretrained trunk, frozen", trunk="frozen"),
    "dense": Cell(_AT_192, "dense scenes (the dense variant): 20-40 objects of 8-32 px per 192 px image",
                  axis="data", label="dense scenes: 20-40 small objects, 192 px", data="dense"),
}


def run_name(scheme: str, seed: int) -> str:
    return f"{scheme}_s{seed}"


def source_cell(cells: Mapping[str, Cell], cell: str, scheme: str) -> str:
    """The cell whose run stands for (cell, scheme): itself, or `demo` where the cell's
    overrides do not change that scheme's training."""
    only = cells[cell].only
    return cell if only is None or scheme in only else "demo"


def run_dir(root: str | Path, cells: Mapping[str, Cell], cell: str, scheme: str, seed: int) -> Path:
    return Path(root) / source_cell(cells, cell, scheme) / run_name(scheme, seed)


def data_root(root: str | Path, variant: str) -> Path:
    """Where the study keeps a shapes variant's data: beside its run folders, `root`/../data/VARIANT."""
    return Path(root).parent / "data" / variant


def train_overrides(cells: Mapping[str, Cell], cell: str, scheme: str, seed: int,
                    out_dir: str | Path, root: str | Path = ".", trunk_path: Optional[str | Path] = None) -> list[str]:
    """The `msdetr train --preset tiny` overrides of one run (`root`: the study's run folders, for
    a cell's data variant; `trunk_path`: the built trunk's weights, for a cell with a trunk)."""
    source = cells[source_cell(cells, cell, scheme)]
    data = [f"data.root={data_root(root, source.data)}"] if source.data else []
    if source.trunk and trunk_path is None:
        raise ValueError(f"cell {cell!r} starts from a pretrained trunk: give trunk_path (msdetr_lite.trunk.build)")
    if source.trunk:
        from .trunk import overrides as trunk_overrides
        data += trunk_overrides(trunk_path, frozen=source.trunk == "frozen")
    return [*BASE_OVERRIDES, *data, *source.overrides,
            f"model.supervision={scheme}", f"train.seed={seed}", f"train.output_dir={out_dir}"]


def _nms_evaluation(path: Path) -> Optional[dict]:
    """The run's evaluation with NMS at NMS_IOU: its eval.json when training scored NMS there
    (train.eval_nms_iou), else the NMS_FILE that bench/regime.py writes afterwards."""
    train_eval = json.loads((path / "eval.json").read_text())
    if train_eval.get("nms", {}).get("iou") == NMS_IOU:
        return train_eval
    if (path / NMS_FILE).is_file():
        return json.loads((path / NMS_FILE).read_text())
    return None


def run_record(path: str | Path) -> Optional[dict]:
    """The numbers of one finished run folder (None until it has finished and has an evaluation
    with NMS): AP, AP50 and AP with NMS of the final layer, per-layer APs, duplicates per image at
    the final layer, mean seconds per epoch, "lr_drop" (train.lr_drop of config.json: the epochs
    after the first lr_drop run at a tenth of the lr) and "epochs": the final layer's AP, AP with
    NMS and duplicates after every evaluated epoch (AP_nms None where that epoch was scored without
    NMS); lr_drop None and epochs [] for a folder without metrics.jsonl and config.json."""
    path = Path(path)
    if not (path / "eval.json").is_file():
        return None
    ev = _nms_evaluation(path)
    if ev is None:
        return None
    train_eval = json.loads((path / "eval.json").read_text())
    from .runs import METRICS_FILE, load_run
    run = load_run(path) if (path / METRICS_FILE).is_file() else None     # config + per-epoch records
    return {"AP": ev["final"]["AP"], "AP50": ev["final"]["AP50"],
            "AP_nms": ev["nms"]["final"]["AP"], "AP50_nms": ev["nms"]["final"]["AP50"],
            "AP_per_layer": [m["AP"] for m in ev["layers"]],
            "AP_nms_per_layer": [m["AP"] for m in ev["nms"]["layers"]],
            "duplicates": ev["duplicates"]["per_image"][-1],
            "epoch_time_s": train_eval.get("mean_epoch_time"),
            "lr_drop": run.config.get("train", {}).get("lr_drop") if run else None,
            "epochs": _epoch_records(run) if run else []}


def _epoch_records(run) -> list[dict]:
    """[{"epoch", "AP", "AP_nms", "duplicates"}] of the final layer after each evaluated epoch of a
    runs.Run."""
    return [{"epoch": epoch, "AP": ev["final"]["AP"],
             "AP_nms": ev["nms"]["final"]["AP"] if ev.get("nms", {}).get("iou") == NMS_IOU else None,
             "duplicates": ev["duplicates"]["per_image"][-1]}
            for epoch, ev in run.epoch_evals()]


def collect(root: str | Path, cells: Mapping[str, Cell], names: Iterable[str], schemes: Sequence[str],
            seeds: Sequence[int]) -> list[dict]:
    """One record per (cell, scheme, seed) of `names` x `schemes` x `seeds` that has finished."""
    out = []
    for cell in names:
        for scheme in schemes:
            for seed in seeds:
                rec = run_record(run_dir(root, cells, cell, scheme, seed))
                if rec is not None:
                    out.append({"cell": cell, "scheme": scheme, "seed": seed, **rec})
    return out


def _mean_spread(values: Sequence[float]) -> dict:
    """{mean, spread (max - min), n, min, max} of values over seeds."""
    return {"mean": statistics.fmean(values), "spread": max(values) - min(values), "n": len(values),
            "min": min(values), "max": max(values)}


def summarize(records: Sequence[dict]) -> list[dict]:
    """Per cell (in record order): per scheme the mean and spread (max - min over seeds) of AP and
    AP with NMS, and per non-o2o scheme the difference to o2o, paired by seed (only seeds where
    both finished): {"cell", "schemes": {scheme: {"AP": {mean, spread, n}, "AP_nms": ...,
    "duplicates": ...}}, "delta": {scheme: {"AP": {mean, spread, n}, "AP_nms": ...}}}."""
    cells: dict[str, dict] = {}
    for r in records:
        cells.setdefault(r["cell"], {}).setdefault(r["scheme"], {})[r["seed"]] = r
    out = []
    for cell, by_scheme in cells.items():
        entry = {"cell": cell, "schemes": {}, "delta": {}}
        for scheme, by_seed in by_scheme.items():
            runs = list(by_seed.values())
            entry["schemes"][scheme] = {k: _mean_spread([r[k] for r in runs]) for k in ("AP", "AP_nms", "duplicates")}
        base = by_scheme.get("o2o", {})
        for scheme, by_seed in by_scheme.items():
            seeds = sorted(set(by_seed) & set(base))
            if scheme == "o2o" or not seeds:
                continue
            entry["delta"][scheme] = {k: _mean_spread([by_seed[s][k] - base[s][k] for s in seeds])
                                      for k in ("AP", "AP_nms")}
        out.append(entry)
    return out


def _epochs_by_seed(records: Sequence[dict], cell: str, scheme: str) -> dict[int, dict[int, dict]]:
    """{seed: {epoch: per-epoch record}} of one scheme in a cell; seeds without per-epoch records
    (runs from before they were kept) are left out."""
    return {r["seed"]: {e["epoch"]: e for e in r["epochs"]}
            for r in records if r["cell"] == cell and r["scheme"] == scheme and r.get("epochs")}


def per_epoch(records: Sequence[dict], cell: str, scheme: str, key: str = "duplicates") -> list[dict]:
    """One scheme's `key` ("AP", "AP_nms" or "duplicates") after every epoch all its seeds evaluated
    in a cell: [{"epoch", "mean", "spread", "n", "min", "max"}]; seeds without per-epoch records
    are left out ([] if none has them)."""
    runs = list(_epochs_by_seed(records, cell, scheme).values())
    epochs = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
    return [{"epoch": epoch, **_mean_spread([r[epoch][key] for r in runs])} for epoch in epochs
            if all(r[epoch][key] is not None for r in runs)]


def gap_per_epoch(records: Sequence[dict], cell: str, scheme: str = "ms") -> list[dict]:
    """`scheme` minus o2o in one cell after every epoch both evaluated, paired by seed:
    [{"epoch", "AP": {mean, spread, n}, "AP_nms": {...} or None}] (AP_nms None where an epoch was
    scored without NMS for some seed). Empty when no seed has both schemes' epoch records."""
    ours, base = _epochs_by_seed(records, cell, scheme), _epochs_by_seed(records, cell, "o2o")
    seeds = sorted(set(ours) & set(base))
    epochs = sorted(set.intersection(*(set(ours[s]) & set(base[s]) for s in seeds))) if seeds else []
    out = []
    for epoch in epochs:
        pairs = [(ours[s][epoch], base[s][epoch]) for s in seeds]
        nms = None if any(a["AP_nms"] is None or b["AP_nms"] is None for a, b in pairs) else \
            _mean_spread([a["AP_nms"] - b["AP_nms"] for a, b in pairs])
        out.append({"epoch": epoch, "AP": _mean_spread([a["AP"] - b["AP"] for a, b in pairs]), "AP_nms": nms})
    return out


def map_rows(summary: Sequence[dict], cells: Mapping[str, Cell] = CELLS, scheme: str = "ms") -> list[dict]:
    """The rows of viz.plot_regime_map: the demo first (the reference point), then every cell with a
    `scheme` - o2o difference, grouped by AXES in their order (cells of one axis in `cells` order):
    [{"cell", "axis", "label", "seeds", "AP": {mean, spread, n, min, max}, "AP_nms": {...}}]."""
    by_cell = {e["cell"]: e for e in summary if scheme in e["delta"]}
    order = {name: i for i, name in enumerate(cells)}

    def rank(name: str):
        axis = cells[name].axis
        return (name != "demo", AXES.index(axis) if axis in AXES else len(AXES), order.get(name, len(order)))

    rows = []
    for name in sorted(by_cell, key=rank):
        cell, delta = cells[name], by_cell[name]["delta"][scheme]
        rows.append({"cell": name, "axis": cell.axis or "reference",
                     "label": cell.label or "the demo's recipe (the authors' method)",
                     "seeds": delta["AP"]["n"], "AP": delta["AP"], "AP_nms": delta["AP_nms"]})
    return rows


def describe_map(rows: Sequence[dict], goal: float = 2.0, scheme_name: str = "MS-DETR") -> str:
    """Sentences built from `map_rows`: which changes give `scheme_name` a lead of at least `goal`
    AP (x100) over o2o NMS-free in every seed (the bar of the study), the best and worst change
    NMS-free, and in how many it leads with NMS."""
    if not rows:
        return "The study has no finished cell yet."
    wins = [r for r in rows if 100 * r["AP"]["min"] >= goal]
    best = max(rows, key=lambda r: r["AP"]["mean"])
    worst = min(rows, key=lambda r: r["AP"]["mean"])
    nms_ahead = [r for r in rows if r["AP_nms"]["min"] > 0]

    def name(r):
        return f"{r['label']} ({100 * r['AP']['mean']:+.1f} AP, {r['seeds']} seeds)"

    if wins:
        head = (f"{scheme_name} beats o2o NMS-free by at least {goal:g} AP in every seed in {len(wins)} of "
                f"{len(rows)} settings: " + "; ".join(name(r) for r in wins) + ".")
    else:
        head = (f"In none of the {len(rows)} settings does {scheme_name} beat o2o NMS-free by {goal:g} AP in "
                f"every seed; the closest is {name(best)}.")
    return (f"{head} The furthest behind is {name(worst)}. With class-wise NMS {scheme_name} is ahead in every "
            f"seed in {len(nms_ahead)} of {len(rows)} settings.")


def describe_probe(probes: Mapping[str, Sequence[dict]], scheme: str = "ms", scheme_name: str = "MS-DETR") -> str:
    """Sentences built from the mechanism probe of one cell ({"o2o": mean_over_runs, scheme: ...}):
    the final layer's best and second-best candidate scores after the last epoch, how the
    second-best score changes through the decoder, whether self-attention moves the two best
    candidates apart, and what the o2m matcher sees."""
    ours, base = probes.get(scheme), probes.get("o2o")
    if not ours or not base:
        return "The probe needs both o2o and the o2m scheme's snapshots."
    o, b = ours[-1]["layers"], base[-1]["layers"]
    epoch = ours[-1]["epoch"]

    def trend(layers):
        first, last = layers[0]["score2"], layers[-1]["score2"]
        return f"{'rises' if last > first + 0.01 else 'falls' if last < first - 0.01 else 'stays'} " \
               f"from {first:.2f} to {last:.2f}"

    def moved(layer):
        pre, post = layer["sim_pre_sa"], layer["sim_post_sa"]
        if pre is None or post is None:
            return "no object has two candidates"
        return f"{pre:.2f} -> {post:.2f}"

    def last_epoch(recs):
        if len(recs) < 2:
            return ""
        a, z = recs[-2]["layers"][-1]["score2"], recs[-1]["layers"][-1]["score2"]
        return f"{'falls' if z < a - 0.01 else 'rises' if z > a + 0.01 else 'stays'} ({a:.2f} -> {z:.2f})"

    apart = [l for l in (o[-1], b[-1]) if l["sim_pre_sa"] is not None and l["sim_post_sa"] < l["sim_pre_sa"] - 0.02]
    verdict = ("moves the two best candidates of an object apart" if len(apart) == 2 else
               "does not move the two best candidates of an object apart in either model" if not apart else
               "moves the two best candidates apart in one model only")
    m = o[-1]
    return (f"After epoch {epoch}, an object's second-best candidate scores {o[-1]['score2']:.2f} under {scheme_name} "
            f"and {b[-1]['score2']:.2f} under o2o at the final layer (best: {o[-1]['score1']:.2f} vs "
            f"{b[-1]['score1']:.2f}). Through the decoder, {scheme_name}'s second-best score {trend(o)}; "
            f"o2o's {trend(b)}." + (f" In the last epoch the final layer's second-best score {last_epoch(base)} "
                                    f"under o2o and {last_epoch(ours)} under {scheme_name}." if len(ours) > 1 else "")
            + f" Self-attention {verdict} (cosine similarity entering -> leaving it, final "
            f"layer: {scheme_name} {moved(o[-1])}, o2o {moved(b[-1])}). The o2m matcher at the final layer: the "
            f"25% cap binds in {m['cap_binds']:.0%} of images, o2o's pick is o2m's top-1 for "
            f"{m['o2o_is_o2m_top1']:.0%} of objects, and the weakest o2m target sits at IoU "
            f"{m['weakest_iou']:.2f} with class probability {m['positive_score']:.2f} on average.")


def format_table(summary: Sequence[dict], cells: Mapping[str, Cell] = CELLS) -> str:
    """A markdown table, AP x100: per cell and scheme, NMS-free and with NMS, and the difference to
    o2o (mean over seeds +- half the spread)."""
    def pm(d: Optional[dict]) -> str:
        return "" if d is None else f"{100 * d['mean']:+.1f} +- {50 * d['spread']:.1f}"

    def val(d: Optional[dict]) -> str:
        return "" if d is None else f"{100 * d['mean']:.1f}"

    lines = ["| cell | scheme | seeds | AP | AP, NMS | dup / img | AP - o2o | AP - o2o, NMS |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in summary:
        for scheme, s in entry["schemes"].items():
            d = entry["delta"].get(scheme, {})
            lines.append(f"| {entry['cell']} | {scheme} | {s['AP']['n']} | {val(s['AP'])} | {val(s['AP_nms'])} "
                         f"| {s['duplicates']['mean']:.1f} | {pm(d.get('AP'))} | {pm(d.get('AP_nms'))} |")
    return "\n".join(lines)


def plot_study(summary: Sequence[dict], path: Optional[str | Path] = None):
    """viz.plot_regime_map of a summary at this study's NMS IoU, saved to `path` when given."""
    from . import viz
    fig = viz.plot_regime_map(map_rows(summary), NMS_IOU)
    if path is not None:
        viz.save_figure(fig, path)
    return fig


__all__ = ["AXES", "BASE_OVERRIDES", "CELLS", "Cell", "NMS_FILE", "NMS_IOU", "SCHEMES", "collect", "format_table",
           "data_root", "describe_map", "describe_probe", "gap_per_epoch", "map_rows", "per_epoch", "plot_study", "run_dir", "run_record", "summarize", "train_overrides"]
