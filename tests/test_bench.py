"""The benchmark scripts run end to end on tiny settings and write the JSON they promise.

Only that they run and report consistent numbers: speed goals are read off the printed tables
(docs/results.md), never asserted in a unit test.
"""
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    res = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


def test_kernels_bench_writes_table_and_json(tmp_path):
    out = tmp_path / "kernels.json"
    text = _run("kernels.py", "--repeats", "1", "--warmup", "1", "--shapes", "decoder", "--out", str(out))
    result = json.loads(out.read_text())
    rows = {r["backend"]: r for r in result["results"] if r["device"] == "cpu"}
    assert "torch" in rows and rows["torch"]["forward_speedup"] == 1.0
    for r in rows.values():
        assert r["forward_ms"] > 0 and r["forward_backward_ms"] > 0
        assert r["max_abs_diff_vs_reference"] < 1e-4
        assert r["ideal_bytes_forward_backward"] > r["ideal_bytes_forward"] > 0
        assert r["forward_x_floor"] > 0 and r["forward_backward_x_floor"] > 0
    assert result["copy_bandwidth_gbs"]["cpu"] > 0 and "cores" in result["machine"]
    assert "x floor" in text and "decoder" in text


def test_kernel_bench_paper_shapes():
    """The paper's 800 x 1333 shapes (issue 15): levels 100x167 .. 13x21, S = Lq = 22223 for the
    encoder, Lq = 300 (N = 2) and 900 (N = 8) for the decoder (generated on the CPU, kept on "meta")."""
    from msdetr_lite import kernel_bench

    assert kernel_bench.level_shapes((800, 1333)) == [(100, 167), (50, 84), (25, 42), (13, 21)]
    sizes = {}
    for name in kernel_bench.SHAPE_SETS["paper"]:
        x = kernel_bench.deform_inputs(**kernel_bench.SHAPES[name], device="meta")
        sizes[name] = (tuple(x["value"].shape), tuple(x["sampling_locations"].shape))
    assert sizes["paper_encoder"] == ((2, 22223, 8, 32), (2, 22223, 8, 4, 4, 2))
    assert sizes["paper_decoder_300"][1] == (2, 300, 8, 4, 4, 2)
    assert sizes["paper_decoder_900"] == ((8, 22223, 8, 32), (8, 900, 8, 4, 4, 2))


def test_encoder_queries_sample_around_their_own_token():
    from msdetr_lite import kernel_bench

    x = kernel_bench.deform_inputs(n=1, n_queries=None, image_hw=(64, 96), n_heads=2, head_dim=4, n_points=8)
    loc = x["sampling_locations"]  # [1, S, 2, 4, 8, 2]; token 0 is the top-left pixel of level 0
    assert loc.shape[1] == x["value"].shape[1] == 8 * 12 + 4 * 6 + 2 * 3 + 1 * 2
    assert (loc[0, 0].mean(dim=(0, 1, 2)) - torch.tensor([0.5 / 12, 0.5 / 8])).abs().max() < 0.1
    assert (loc[0, -1].mean(dim=(0, 1, 2)) - torch.tensor([0.75, 0.5])).abs().max() < 0.1


def test_overhead_bench_two_schemes(tmp_path):
    out = tmp_path / "overhead.json"
    text = _run("overhead.py", "--schemes", "o2o", "ms", "--steps", "1", "--warmup", "0", "--batch", "2",
                "--image-size", "96", "--json", str(out), "model.num_queries=20")
    result = json.loads(out.read_text())["results"]
    assert [r["scheme"] for r in result] == ["o2o", "ms"]
    assert result[0]["time_ratio"] == 1.0 and result[1]["params"] >= result[0]["params"]
    assert all(r["step_s"] > 0 and r["peak_mem_mb"] > 0 for r in result)
    assert "ms" in text and "x o2o" in text
    # the criterion's share of the step and its host readbacks (syncs are counted on CUDA only)
    assert all(0 < r["criterion_share"] < 1 and r["criterion"] == "batched" for r in result)
    assert all(r["criterion_readbacks"] >= 1 for r in result)
    assert all((r["host_syncs_step"] is None) == (r["device"] == "cpu") for r in result)
    assert "crit %" in text and "readbacks" in text
    assert "cores" in json.loads(out.read_text())["machine"]

    ref = tmp_path / "overhead_reference.json"
    _run("overhead.py", "--schemes", "ms", "--steps", "1", "--warmup", "0", "--batch", "2", "--image-size", "96",
         "--reference-criterion", "--json", str(ref), "model.num_queries=20")
    (reference,) = json.loads(ref.read_text())["results"]
    # the per-image criterion reads back per image and layer: more than the batched one
    assert reference["criterion"] == "reference"
    assert reference["criterion_readbacks"] > result[1]["criterion_readbacks"]


def test_convergence_bench_runs_and_reuses_finished_runs(tmp_path):
    from msdetr_lite.data.synthetic import generate
    data = tmp_path / "shapes"
    generate(data, n_train=4, n_val=2, image_size=64, seed=3)
    micro = ["data.train_scales=(64,)", "data.val_size=64", "data.max_size=96", "data.num_workers=0",
             "model.num_encoder_layers=1", "model.num_decoder_layers=2", "model.d_model=32", "model.nheads=4",
             "model.n_points=2", "model.dim_feedforward=64", "model.num_queries=20", "model.deform_backend=torch",
             "train.batch_size=2", "train.max_steps_per_epoch=1", "train.device=cpu"]
    args = ["--epochs", "2", "--seeds", "0", "--runs", str(tmp_path / "runs"), "--json", str(tmp_path / "c.json"),
            "--no-progress", f"data.root={data}", *micro]
    text = _run("convergence.py", *args)
    table = json.loads((tmp_path / "c.json").read_text())["schemes"]
    assert [t["scheme"] for t in table] == ["o2o", "ms"] and all(t["epochs"] == 2 for t in table)
    assert all(0.0 <= ap <= 1.0 for t in table for ap in t["AP_per_epoch"])
    assert "final AP x100 per decoder layer" in text
    before = (tmp_path / "runs" / "ms_s0" / "final.pth").stat().st_mtime_ns
    _run("convergence.py", *args)                                    # finished runs are reused
    assert (tmp_path / "runs" / "ms_s0" / "final.pth").stat().st_mtime_ns == before


def test_epoch_bench_times_one_epoch_per_scheme(tmp_path):
    from msdetr_lite.data.synthetic import generate
    data = tmp_path / "shapes"
    generate(data, n_train=4, n_val=2, image_size=64, seed=3)
    out = tmp_path / "epoch.json"
    text = _run("epoch.py", "--steps", "2", "--json", str(out), f"data.root={data}", "data.train_scales=(64,)",
                "data.val_size=64", "data.max_size=96", "data.num_workers=0", "model.num_encoder_layers=1",
                "model.num_decoder_layers=2", "model.d_model=32", "model.nheads=4", "model.n_points=2",
                "model.dim_feedforward=64", "model.num_queries=20", "model.deform_backend=torch",
                "train.batch_size=2", "train.device=cpu")
    result = json.loads(out.read_text())
    rows = {r["scheme"]: r for r in result["results"]}
    assert set(rows) == {"o2o", "ms"} and rows["o2o"]["time_ratio"] == 1.0
    assert all(r["steps"] == 2 and r["epoch_s"] > 0 and r["step_ms"] > 0 for r in rows.values())
    assert "cores" in result["machine"] and "x o2o" in text


def test_cpu_timing_does_not_probe_for_cuda():
    """Where CUDA does not run, timing a backend (notebook 02, `widgets.compare_backends`) and
    importing the lesson's modules never import torch.utils.cpp_extension, whose CUDA probe logs
    "No CUDA runtime is found" on a machine with an nvcc but no GPU (the pink block that opened
    every rendered notebook). Where CUDA runs, the probe is real and stays."""
    code = ("import sys, torch\n"
            "from msdetr_lite import report, viz, widgets, zoo, ops\n"
            "widgets.compare_backends(['torch'], repeats=1, n_heads=2, head_dim=4, n_levels=2, n_points=2,"
            " n_queries=4)\n"
            "print(torch.cuda.is_available(), 'torch.utils.cpp_extension' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    cuda, probed = res.stdout.split()[-2:]
    if cuda == "False":
        assert probed == "False" and "No CUDA runtime" not in res.stderr


def test_lab_relative_paths():
    from msdetr_lite.lab import PROJECT_ROOT, relative
    assert relative(PROJECT_ROOT / "runs" / "notebooks" / "full" / "ms") == "runs/notebooks/full/ms"
    assert relative("/elsewhere/x.pth") == "/elsewhere/x.pth"
    assert relative("data/shapes") == "data/shapes"


def test_contention_bench_measures_each_configuration_quiet_and_busy(tmp_path):
    import os
    out = tmp_path / "contention.json"
    text = _run("contention.py", "--steps", "2", "--configs", "0", "4", "5", "--json", str(out))
    result = json.loads(out.read_text())
    rows = {r["configuration"]: r for r in result["rows"]}
    assert list(rows) == ["2 threads, OpenMP default wait", "1 thread", "library (msdetr_lite.threads)"]
    assert "cores" in result["machine"]
    for label, r in rows.items():
        assert r["quiet s/step"] > 0 and r["busy s/step"] > 0
        quiet, busy = (sorted(result["raw"][label][k])[len(result["raw"][label][k]) // 2] for k in ("quiet", "busy"))
        assert r["busy / quiet"] == round(busy / quiet, 2)         # from the medians, not the rounded cells
    # the library chose the thread count, not this test's shell (OMP_* and MSDETR_THREADS are cleared)
    assert rows["library (msdetr_lite.threads)"]["threads"] == max(1, min(8, (os.cpu_count() or 2) // 2))
    assert rows["2 threads, OpenMP default wait"]["threads"] == 2 and rows["1 thread"]["OpenMP environment"] == "-"
    assert "busy / quiet" in text


def test_throughput_bench_counts_flops(tmp_path):
    out = tmp_path / "throughput.json"
    _run("throughput.py", "--threads", "1", "--steps", "2", "--variants", "default", "channels_last",
         "--json", str(out))
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["default"]["vs default"] == 1.0
    # the same arithmetic in another memory layout: the FLOP count does not change
    assert rows["channels_last"]["GFLOP/step"] == rows["default"]["GFLOP/step"] > 1
