"""The `msdetr` command: help, clear override errors, data -> train -> eval -> compare at micro size."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msdetr_lite import cli

REPO = Path(__file__).resolve().parents[1]
MICRO = ["data.train_scales=(64,)", "data.val_size=64", "data.max_size=96", "data.num_workers=0",
         "model.num_encoder_layers=1", "model.num_decoder_layers=2", "model.d_model=32", "model.nheads=4",
         "model.n_points=2", "model.dim_feedforward=64", "model.num_queries=20", "model.deform_backend=torch",
         "train.batch_size=2", "train.max_steps_per_epoch=1", "train.epochs=2", "train.device=cpu"]


def test_module_help():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", "msdetr_lite", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    for command in ("data", "train", "eval", "compare", "demo"):
        assert command in res.stdout
    res = subprocess.run([sys.executable, "-m", "msdetr_lite", "train", "--help"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0 and "--resume" in res.stdout and "section.field=value" in res.stdout


@pytest.mark.parametrize("override, message", [
    ("model.no_such_field=1", "unknown config field 'model.no_such_field'"),
    ("modl.supervision=o2o", "unknown config section 'modl'"),
    ("model.supervision=o2x", "model.supervision='o2x'"),
    ("train.epochs=three", "bad value for train.epochs"),
    ("train.epochs", "not of the form section.field=value"),
])
def test_override_errors_are_clear(override, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--preset", "tiny", override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _usage_error(argv, capsys) -> list[str]:
    """Run the CLI expecting a usage error: exit 2, no traceback; returns the stderr lines."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()


def test_whole_config_checked_one_line_per_problem(capsys):
    lines = _usage_error(["train", "model.nheads=0", "train.lr=-1", "train.batch_size=0", "model.supervision=xyz",
                          "data.train_scales=(64,,)", "model.bogus=1", "train.sync_bn=maybe"], capsys)
    assert len(lines) == 7, lines
    for field in ("model.nheads=0", "train.lr=-1.0", "train.batch_size=0", "model.supervision='xyz'",
                  "data.train_scales", "'model.bogus'", "train.sync_bn"):
        assert sum(field in line for line in lines) == 1, (field, lines)
    assert all(line.startswith("msdetr train: config error: ") for line in lines)
    (line,) = _usage_error(["train", "model.d_model=30"], capsys)
    assert "model.d_model=30 must be divisible by model.nheads=8" in line
    # the demo checks its overrides before it trains anything
    (line,) = _usage_error(["demo", "--out", "unused", "loss.focal_alpha=2"], capsys)
    assert "loss.focal_alpha=2.0: must be in [0, 1]" in line


def test_config_field_types_and_backends():
    from msdetr_lite import ops
    from msdetr_lite.config import DEFORM_BACKENDS, Config, preset
    assert DEFORM_BACKENDS == ops.BACKENDS
    assert preset("tiny").problems() == [] and preset("r50").problems() == []
    cfg = preset("tiny")
    cfg.train.lr, cfg.model.num_queries, cfg.train.amp = "1e-4", True, 1
    assert cfg.problems() == ["model.num_queries=True: must be an integer",
                              "train.lr='1e-4': must be a number", "train.amp=1: must be true or false"]
    with pytest.raises(ValueError, match="unknown config section 'modle'"):
        Config.from_dict({"modle": {}})


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    (line,) = _usage_error(["train", "--config", str(tmp_path / "nope.json")], capsys)
    assert "nope.json: no such file" in line
    (tmp_path / "bad.json").write_text("{not json")
    (line,) = _usage_error(["train", "--config", str(tmp_path / "bad.json")], capsys)
    assert "bad.json is not valid JSON" in line
    (line,) = _usage_error(["eval", "--checkpoint", str(tmp_path / "missing.pth")], capsys)
    assert "checkpoint not found" in line and "missing.pth" in line
    (tmp_path / "garbage.pth").write_bytes(b"\x00" * 64)
    (line,) = _usage_error(["eval", "--checkpoint", str(tmp_path / "garbage.pth")], capsys)
    assert "garbage.pth is not a readable checkpoint" in line
    lines = _usage_error(["eval", "--checkpoint", "x.pth", "--nms", "0"], capsys)
    assert "--nms" in lines[-1] and "(0, 1]" in lines[-1]
    lines = _usage_error(["train", "--resume", "--overwrite"], capsys)
    assert "not allowed with argument" in lines[-1]


def test_bad_annotation_json_is_a_user_error(tmp_path, capsys):
    """A data file that cannot be used (DataError) is one line naming the file, exit 2."""
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    bad = root / "annotations" / "instances_train.json"
    bad.write_text('{"images": [], "annotations": [], "categories": [{"id": 1}]}')
    (line,) = _usage_error(["train", f"data.root={root}", f"train.output_dir={tmp_path / 'run'}"], capsys)
    assert line.startswith("msdetr train: error: ") and str(bad) in line and "categories[0]" in line


def test_real_bugs_are_one_line_and_raise_with_debug(monkeypatch, capsys):
    """A bug is not the user's error: one line, exit 3, no traceback; --debug (or MSDETR_DEBUG=1)
    shows it with its traceback."""
    def broken(args):
        raise KeyError("a bug")
    monkeypatch.setitem(cli.COMMANDS, "compare", broken)
    monkeypatch.delenv("MSDETR_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", "a", "--out", "b"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("msdetr compare: internal error: KeyError: 'a bug'") and "--debug" in err
    with pytest.raises(KeyError):
        cli.main(["compare", "a", "--out", "b", "--debug"])
    monkeypatch.setenv("MSDETR_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["compare", "a", "--out", "b"])


def test_unknown_option_and_missing_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--no-such-option"])
    assert exit_info.value.code == 2 and "--no-such-option" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", f"data.root={tmp_path / 'missing'}", f"train.output_dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2 and "data shapes" in capsys.readouterr().err


def test_data_train_eval_compare_end_to_end(tmp_path, capsys):
    data = tmp_path / "shapes"
    assert cli.main(["data", "shapes", "--out", str(data), "--n-train", "4", "--n-val", "2",
                     "--size", "64", "--seed", "3"]) == 0
    assert (data / "annotations" / "instances_train.json").is_file()

    runs = {}
    for sup in ("ms", "o2o"):
        runs[sup] = tmp_path / sup
        # options between overrides are fine
        assert cli.main(["train", "--preset", "tiny", f"model.supervision={sup}", "--no-progress",
                         f"data.root={data}", *MICRO, f"train.output_dir={runs[sup]}"]) == 0
        assert (runs[sup] / "final.pth").is_file()
    # resuming a finished run: nothing to do, nothing written
    before = {p.name: p.read_bytes() for p in runs["ms"].iterdir() if p.is_file()}
    assert cli.main(["train", "--config", str(runs["ms"] / "config.json"), "--resume", "--no-progress"]) == 0
    assert {p.name: p.read_bytes() for p in runs["ms"].iterdir() if p.is_file()} == before
    assert "nothing to do" in capsys.readouterr().out
    # training into it again without --resume / --overwrite: stops, names the directory and both
    (line,) = _usage_error(["train", "--config", str(runs["ms"] / "config.json"), "--no-progress"], capsys)
    assert str(runs["ms"]) in line and "--resume" in line and "--overwrite" in line

    run_eval = (runs["o2o"] / "eval.json").read_text()
    assert cli.main(["eval", "--checkpoint", str(runs["o2o"] / "final.pth"), "--nms", "0.5", "--no-progress"]) == 0
    assert (runs["o2o"] / "eval.json").read_text() == run_eval           # the run's own file is kept
    ev = json.loads((runs["o2o"] / "eval-final.json").read_text())
    assert ev["nms"]["iou"] == 0.5 and len(ev["nms"]["layers"]) == 2
    assert (runs["o2o"] / "eval-final_candidates.png").is_file()
    # its own earlier output is eval's to replace; the same file edited by the user is not
    assert cli.main(["eval", "--checkpoint", str(runs["o2o"] / "final.pth"), "--no-progress"]) == 0
    (runs["o2o"] / "eval-final.json").write_text("my notes")
    (line,) = _usage_error(["eval", "--checkpoint", str(runs["o2o"] / "final.pth"), "--no-progress"], capsys)
    assert "eval-final.json that eval did not write" in line and "--overwrite" in line
    assert (runs["o2o"] / "eval-final.json").read_text() == "my notes"
    assert cli.main(["eval", "--checkpoint", str(runs["o2o"] / "final.pth"), "--nms", "0.5", "--no-progress",
                     "--overwrite"]) == 0

    out = tmp_path / "eval_ms.json"
    assert cli.main(["eval", "--checkpoint", str(runs["ms"] / "final.pth"), "--out", str(out),
                     "--no-progress"]) == 0
    ev = json.loads(out.read_text())
    assert len(ev["layers"]) == 2 and "AP50" in ev["final"] and "nms" not in ev
    assert len(ev["candidates"]["layers"]) == 2 and "best_iou" in ev["candidates"]["layers"][0]
    assert Path(ev["candidates_plot"]).is_file()
    assert "layer 2:" in capsys.readouterr().out

    cmp_dir = tmp_path / "cmp"
    assert cli.main(["compare", str(runs["ms"]), str(runs["o2o"]), "--out", str(cmp_dir)]) == 0
    assert cli.main(["compare", str(runs["ms"]), str(runs["o2o"]), "--out", str(cmp_dir)]) == 0   # its own: again
    for name in ("loss_curves.png", "ap_per_epoch.png", "ap_per_layer.png", "summary.json", "summary.md"):
        assert (cmp_dir / name).is_file(), name
    summary = json.loads((cmp_dir / "summary.json").read_text())
    assert [s["supervision"] for s in summary] == ["ms", "o2o"]
    assert all(len(s["AP_per_layer"]) == 2 and s["time_per_epoch_s"] > 0 for s in summary)
    assert "| model | AP |" in (cmp_dir / "summary.md").read_text()


def test_demo_twice_reuses_its_finished_runs(tmp_path, capsys):
    """`make demo` run again does not stop at the run-folder guard: runs trained with the same
    configuration are reused, and the report is written again. With another configuration the
    demo replaces its own runs; a run in its folder that it did not train stops it before any
    work (issue 23: `msdetr demo --out runs` replaced the user's runs/ms and runs/o2o)."""
    from msdetr_lite.data.synthetic import generate
    data = tmp_path / "shapes"
    generate(data, n_train=4, n_val=2, image_size=64, seed=3)
    # d_model 64: the detection grid runs single images, and GroupNorm(32 groups) of a 1x1 level
    # needs two channels per group
    args = ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--data", str(data), *MICRO, "model.d_model=64"]
    assert cli.main(args) == 0
    first = (tmp_path / "demo" / "ms" / "final.pth").stat().st_mtime_ns
    assert cli.main(args) == 0
    assert (tmp_path / "demo" / "ms" / "final.pth").stat().st_mtime_ns == first
    assert "already trained with this configuration" in capsys.readouterr().out
    assert (tmp_path / "demo" / "report.md").is_file()

    # another configuration: its own run ms would be replaced (rundir.plan_run, tested alone), but
    # o2o changed since the demo wrote it: the demo stops before any work
    (tmp_path / "demo" / "o2o" / "metrics.jsonl").write_text("")
    before = (tmp_path / "demo" / "ms" / "final.pth").read_bytes()
    capsys.readouterr()
    (line,) = _usage_error([*args, "train.lr=1e-3"], capsys)
    assert "o2o already holds metrics.jsonl that demo did not write" in line and "--overwrite" in line
    assert (tmp_path / "demo" / "ms" / "final.pth").read_bytes() == before    # nothing trained
