"""The regime study: bookkeeping of msdetr_lite.regime and bench/regime.py end to end at micro size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from msdetr_lite import regime

REPO = Path(__file__).resolve().parents[1]
MICRO = ["data.train_scales=(64,)", "data.val_size=64", "data.max_size=96", "data.num_workers=0",
         "model.num_encoder_layers=1", "model.num_decoder_layers=2", "model.d_model=32", "model.nheads=4",
         "model.n_points=2", "model.dim_feedforward=64", "model.num_queries=20", "model.hybrid_num_queries=20",
         "model.deform_backend=torch", "train.batch_size=2", "train.max_steps_per_epoch=1", "train.epochs=1",
         "train.device=cpu"]


def _fake_run(path: Path, ap: float, ap_nms: float, dups: float = 1.0) -> None:
    path.mkdir(parents=True)
    metrics = lambda a: {"AP": a, "AP50": min(1.0, a + 0.1)}  # noqa: E731
    (path / "eval.json").write_text(json.dumps({"mean_epoch_time": 3.0}))
    (path / regime.NMS_FILE).write_text(json.dumps({
        "final": metrics(ap), "layers": [metrics(ap - 0.05), metrics(ap)],
        "nms": {"iou": regime.NMS_IOU, "final": metrics(ap_nms), "layers": [metrics(ap_nms), metrics(ap_nms)]},
        "duplicates": {"per_image": [2.0, dups]}}))


def test_cells_reuse_demo_runs_only_where_the_scheme_is_untouched(tmp_path):
    cells = regime.CELLS
    assert regime.run_dir(tmp_path, cells, "o2m_half", "o2o", 0) == tmp_path / "demo" / "o2o_s0"
    assert regime.run_dir(tmp_path, cells, "o2m_half", "ms", 0) == tmp_path / "o2m_half" / "ms_s0"
    assert regime.run_dir(tmp_path, cells, "dec6", "o2o", 1) == tmp_path / "dec6" / "o2o_s1"
    opts = regime.train_overrides(cells, "o2m_half", "o2o", 1, tmp_path / "x")
    assert not any("o2m" in o for o in opts) and "train.seed=1" in opts and "model.supervision=o2o" in opts
    # every cell's overrides name real config fields
    from msdetr_lite.config import apply_overrides, preset
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"")                               # trunk.overrides only checks it is a file
    for name in cells:
        for scheme in regime.SCHEMES:
            apply_overrides(preset("tiny"), regime.train_overrides(cells, name, scheme, 0, tmp_path,
                                                                   trunk_path=weights))
    frozen = regime.train_overrides(cells, "trunk_frozen", "ms", 0, tmp_path, trunk_path=weights)
    assert f"model.pretrained={weights}" in frozen and "model.train_backbone=false" in frozen
    assert "model.backbone_norm=frozen_bn" in frozen and "train.lr_backbone=4e-05" in frozen
    with pytest.raises(ValueError, match="pretrained trunk"):
        regime.train_overrides(cells, "trunk_pretrained", "o2o", 0, tmp_path)


def test_summary_pairs_seeds_and_reports_spread(tmp_path):
    for seed, (o2o, ms, ms_nms) in enumerate([(0.50, 0.40, 0.62), (0.46, 0.42, 0.60)]):
        _fake_run(tmp_path / "demo" / f"o2o_s{seed}", o2o, o2o + 0.1)
        _fake_run(tmp_path / "demo" / f"ms_s{seed}", ms, ms_nms, dups=4.0)
    (tmp_path / "demo" / "hybrid_s0").mkdir()          # unfinished: no record
    records = regime.collect(tmp_path, regime.CELLS, ["demo"], ["o2o", "ms", "hybrid"], [0, 1])
    assert len(records) == 4
    [entry] = regime.summarize(records)
    ms = entry["delta"]["ms"]
    assert ms["AP"]["mean"] == pytest.approx(((0.40 - 0.50) + (0.42 - 0.46)) / 2)
    assert ms["AP"]["spread"] == pytest.approx(0.06) and ms["AP"]["n"] == 2
    assert ms["AP_nms"]["mean"] == pytest.approx(((0.62 - 0.60) + (0.60 - 0.56)) / 2)
    assert entry["schemes"]["ms"]["duplicates"]["mean"] == 4.0 and "hybrid" not in entry["schemes"]
    table = regime.format_table([entry])
    assert "| demo | ms | 2 | 41.0 | 61.0 | 4.0 | -7.0 +- 3.0 | +3.0 +- 1.0 |" in table
    fig = regime.plot_study([entry], tmp_path / "plot.png")             # the regime map
    assert (tmp_path / "plot.png").stat().st_size > 0 and len(fig.axes) == 1
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "reference", "the demo's recipe (the authors' method)  (2 seeds)"]


def _epoch_metrics(path: Path, aps: list, aps_nms: list) -> None:
    """metrics.jsonl with one evaluated epoch record per AP (AP_nms None: scored without NMS)."""
    lines = []
    for epoch, (ap, nms) in enumerate(zip(aps, aps_nms), 1):
        ev = {"final": {"AP": ap}, "duplicates": {"per_image": [0.5, float(epoch)]}}
        if nms is not None:
            ev["nms"] = {"iou": regime.NMS_IOU, "final": {"AP": nms}}
        lines.append(json.dumps({"type": "epoch", "epoch": epoch, "eval": ev}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_gap_per_epoch_pairs_seeds_epoch_by_epoch(tmp_path):
    curves = {("o2o", 0): ([0.1, 0.3, 0.5], [0.2, 0.4, 0.6]), ("ms", 0): ([0.05, 0.2, 0.4], [0.25, 0.5, 0.7]),
              ("o2o", 1): ([0.1, 0.2, 0.4], [0.2, 0.3, 0.5]), ("ms", 1): ([0.1, 0.2, 0.38], [0.2, 0.4, None])}
    for (scheme, seed), (aps, nms) in curves.items():
        run = tmp_path / "ep8" / f"{scheme}_s{seed}"
        _fake_run(run, aps[-1], 0.5)
        _epoch_metrics(run, aps, nms)
    for scheme in ("o2o", "ms"):                                  # no metrics.jsonl: no epochs, left out
        _fake_run(tmp_path / "ep8" / f"{scheme}_s2", 0.3, 0.5)
    records = regime.collect(tmp_path, regime.CELLS, ["ep8"], ["o2o", "ms"], [0, 1, 2])
    ms0 = next(r for r in records if r["scheme"] == "ms" and r["seed"] == 0)
    assert ms0["epochs"][1] == {"epoch": 2, "AP": 0.2, "AP_nms": 0.5, "duplicates": 2.0}
    assert ms0["lr_drop"] is None                                   # no config.json in these fakes
    gap = regime.gap_per_epoch(records, "ep8")
    assert [g["epoch"] for g in gap] == [1, 2, 3]
    assert gap[0]["AP"]["mean"] == pytest.approx(-0.025) and gap[0]["AP"]["spread"] == pytest.approx(0.05)
    assert gap[2]["AP"]["mean"] == pytest.approx((-0.1 - 0.02) / 2) and gap[2]["AP"]["n"] == 2
    assert gap[1]["AP_nms"]["mean"] == pytest.approx((0.1 + 0.1) / 2)
    assert gap[2]["AP_nms"] is None                                 # seed 1's ms scored epoch 3 without NMS
    assert regime.gap_per_epoch(records, "ep8", "hybrid") == [] and regime.gap_per_epoch(records, "demo") == []
    dups = regime.per_epoch(records, "ep8", "o2o")                 # duplicates of the final layer = epoch here
    assert [(d["epoch"], d["mean"], d["n"]) for d in dups] == [(1, 1.0, 2), (2, 2.0, 2), (3, 3.0, 2)]
    assert [d["epoch"] for d in regime.per_epoch(records, "ep8", "ms", "AP_nms")] == [1, 2]   # seed 1: no NMS at 3
    assert regime.per_epoch(records, "demo", "o2o") == []


@pytest.mark.slow
def test_bench_regime_end_to_end_and_resumable(tmp_path):
    from msdetr_lite.data.synthetic import generate
    data = tmp_path / "shapes"
    generate(data, n_train=4, n_val=2, image_size=64, seed=3)
    cmd = [sys.executable, str(REPO / "bench" / "regime.py"), "--cells", "demo", "o2m_half", "--schemes", "o2o",
           "ms", "--seeds", "0", "--runs", str(tmp_path / "runs"), "--json", str(tmp_path / "regime.json"),
           "--device", "cpu", "--probe", "demo", "--probe-images", "2", f"data.root={data}", *MICRO]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    runs = sorted(p.relative_to(tmp_path / "runs").as_posix() for p in (tmp_path / "runs").glob("*/*_s0")
                  if p.is_dir())
    assert runs == ["demo/ms_s0", "demo/o2o_s0", "o2m_half/ms_s0"]    # o2m_half's o2o is demo's
    out = json.loads((tmp_path / "regime.json").read_text())
    assert [e["cell"] for e in out["summary"]] == ["demo", "o2m_half"]
    assert set(out["summary"][1]["delta"]) == {"ms"} and (tmp_path / "regime.png").is_file()
    assert (tmp_path / "regime_epochs.png").stat().st_size > 0          # the gap epoch by epoch
    assert all(0.0 <= r["AP"] <= 1.0 and 0.0 <= r["AP_nms"] <= 1.0 for r in out["runs"])
    # per-epoch records from each run's metrics.jsonl (MICRO trains 1 epoch), the lr drop from its config
    assert all([e["epoch"] for e in r["epochs"]] == [1] and r["epochs"][0]["AP"] == r["AP"]
               and r["epochs"][0]["AP_nms"] == r["AP_nms"] and r["lr_drop"] == 3 for r in out["runs"])

    # the mechanism probe of the demo cell: both schemes, one epoch snapshot each, and its figure
    probe = out["probe"]["cells"]["demo"]
    assert set(probe) == {"o2o", "ms"} and [r["epoch"] for r in probe["ms"]] == [1]
    assert len(probe["ms"][0]["layers"]) == 2 and (tmp_path / "regime_probe_demo.png").stat().st_size > 0

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0 and again.stdout.count(": done") == 3


def test_load_regime_prefers_your_run_then_the_committed_measurement(tmp_path, monkeypatch):
    from msdetr_lite import report
    from msdetr_lite.lab import regime_readings          # where the paths are defined (report re-exports)
    mine, measured = tmp_path / "bench" / "regime.json", tmp_path / "docs" / "regime.json"
    monkeypatch.setattr(regime_readings, "REGIME_JSON", mine)
    monkeypatch.setattr(regime_readings, "REGIME_MEASURED_JSON", measured)
    assert report.load_regime() is None
    measured.parent.mkdir(parents=True)
    measured.write_text(json.dumps({"machine": "m", "summary": []}))
    assert report.load_regime() == {"machine": "m", "summary": [], "path": str(measured)}
    mine.parent.mkdir(parents=True)
    mine.write_text(json.dumps({"summary": [1]}))
    assert report.load_regime()["path"] == str(mine)


def _row(label, axis, mean, lo, hi, nms_lo=0.01, seeds=2):
    return {"cell": label, "axis": axis, "label": label, "seeds": seeds,
            "AP": {"mean": mean, "min": lo, "max": hi}, "AP_nms": {"mean": nms_lo + 0.01, "min": nms_lo, "max": 0.1}}


def test_map_rows_order_and_describe_map():
    """map_rows: the demo first, then the cells grouped by regime axis in AXES order; describe_map
    names a win only where every seed clears the goal."""
    def entry(cell, d):
        stat = {"mean": d, "spread": 0.01, "n": 2, "min": d - 0.005, "max": d + 0.005}
        return {"cell": cell, "schemes": {}, "delta": {"ms": {"AP": stat, "AP_nms": stat}}}
    summary = [entry("ep8", -0.16), entry("dec6", -0.03), entry("o2m_early", 0.01), entry("demo", -0.05)]
    rows = regime.map_rows(summary)
    assert [r["cell"] for r in rows] == ["demo", "o2m_early", "ep8", "dec6"]
    assert rows[1]["axis"] == "method: where o2m supervises" and rows[1]["label"].startswith("o2m on layers 1-2")
    text = regime.describe_map(rows)
    assert text.startswith("In none of the 4 settings does MS-DETR beat o2o NMS-free by 2 AP in every seed; "
                           "the closest is o2m on layers 1-2 only")
    assert "furthest behind is 8 epochs instead of 4 (-16.0 AP, 2 seeds)" in text
    win = [_row("a", "x", 0.03, 0.021, 0.04), _row("b", "x", 0.03, 0.015, 0.045, nms_lo=-0.01)]
    text = regime.describe_map(win)
    assert text.startswith("MS-DETR beats o2o NMS-free by at least 2 AP in every seed in 1 of 2 settings: a (+3.0 AP")
    assert text.endswith("ahead in every seed in 1 of 2 settings.")


def _probe(score2_first, score2_last, pre, post, epochs=(1, 2)):
    layer = lambda s2, pre, post: {"score1": 0.9, "score2": s2, "has_second": 1.0, "sim_pre_sa": pre,  # noqa: E731
                                   "sim_post_sa": post, "sim_out": post, "cap_binds": 0.9, "o2o_is_o2m_top1": 0.5,
                                   "weakest_iou": 0.3, "positive_score": 0.8, "positives_per_gt": 3.0}
    return [{"epoch": e, "seeds": 2, "layers": [layer(score2_first, pre, post), layer(score2_last, pre, post)]}
            for e in epochs]


def test_describe_probe_and_its_figure(tmp_path):
    from msdetr_lite import viz
    probes = {"o2o": _probe(0.5, 0.1, 0.9, 0.6), "ms": _probe(0.4, 0.7, 0.9, 0.95)}
    text = regime.describe_probe(probes)
    assert text.startswith("After epoch 2, an object's second-best candidate scores 0.70 under MS-DETR and 0.10 "
                           "under o2o at the final layer (best: 0.90 vs 0.90).")
    assert "MS-DETR's second-best score rises from 0.40 to 0.70; o2o's falls from 0.50 to 0.10" in text
    assert "moves the two best candidates apart in one model only" in text
    assert "In the last epoch the final layer's second-best score stays (0.10 -> 0.10) under o2o" in text
    assert "MS-DETR 0.90 -> 0.95, o2o 0.90 -> 0.60" in text and "binds in 90% of images" in text
    probes["ms"] = _probe(0.4, 0.7, 0.9, 0.6)
    assert "moves the two best candidates of an object apart (" in regime.describe_probe(probes)
    assert regime.describe_probe({"o2o": probes["o2o"]}).startswith("The probe needs")
    fig = viz.plot_probe(probes)
    assert len(fig.axes) == 4
    viz.save_figure(fig, tmp_path / "probe.png")


def test_mean_over_runs_averages_seeds_per_epoch():
    from msdetr_lite.probe import mean_over_runs
    a, b = _probe(0.2, 0.4, 0.5, 0.5, epochs=(1, 2, 3)), _probe(0.4, 0.6, 0.7, 0.5, epochs=(1, 2))
    b[0]["layers"][0]["sim_pre_sa"] = None                 # no object with two candidates there
    out = mean_over_runs([a, b])
    assert [r["epoch"] for r in out] == [1, 2] and all(r["seeds"] == 2 for r in out)
    assert out[0]["layers"][0]["score2"] == pytest.approx(0.3) and out[0]["layers"][1]["score2"] == pytest.approx(0.5)
    assert out[0]["layers"][0]["sim_pre_sa"] == pytest.approx(0.5) and out[1]["layers"][0]["sim_pre_sa"] == pytest.approx(0.6)


def test_data_variant_cells_train_on_their_generated_data(tmp_path, monkeypatch):
    """A cell with a shapes variant trains on it (data.root beside the run folders) and
    bench/regime.py generates it once; a half-generated folder is replaced, never trusted."""
    import importlib.util
    opts = regime.train_overrides(regime.CELLS, "coco_like", "o2o", 0, tmp_path / "runs" / "x", tmp_path / "runs")
    assert f"data.root={tmp_path / 'data' / 'coco_like'}" in opts and "data.val_size=192" in opts
    assert not any(o.startswith("data.root") for o in regime.train_overrides(regime.CELLS, "demo", "ms", 0, "x"))
    spec = importlib.util.spec_from_file_location("bench_regime", REPO / "bench" / "regime.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []

    def fake_generate(out, variant, progress):
        calls.append((Path(out).name, variant))
        (Path(out) / "annotations").mkdir(parents=True)
        for split in ("train", "val"):
            (Path(out) / "annotations" / f"instances_{split}.json").write_text("{}")

    monkeypatch.setattr("msdetr_lite.data.synthetic.generate", fake_generate)
    root = tmp_path / "data" / "dense"
    (root.parent / "dense.partial").mkdir(parents=True)                 # an interrupted generation
    bench.ensure_data(root, "dense")
    bench.ensure_data(root, "dense")
    assert calls == [("dense.partial", "dense")] and (root / "annotations" / "instances_val.json").is_file()
    assert not (root.parent / "dense.partial").exists()
