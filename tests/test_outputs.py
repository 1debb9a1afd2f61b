"""What a command may replace (msdetr_lite.outputs) and the writers that follow it: the shapes
generator, compare and eval outputs, the demo's folder."""
from __future__ import annotations

import json
import os

import pytest

from msdetr_lite import outputs
from msdetr_lite.data import shapes_output, synthetic
from msdetr_lite.outputs import MANIFEST, OutputError, check_replace, owned, owns_folder, record
from msdetr_lite.shapes_knobs import Knobs


def test_owned_means_recorded_by_that_owner_and_unchanged(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_text("two")
    record(tmp_path, ["a.txt", "b.txt", "missing.txt"], "compare")
    assert owned(tmp_path, "a.txt", "compare") and not owned(tmp_path, "a.txt", "eval")
    assert not owned(tmp_path, "missing.txt", "compare")
    (tmp_path / "b.txt").write_text("edited by the user")
    assert not owned(tmp_path, "b.txt", "compare")
    assert owns_folder(tmp_path / "nothing here", "compare")
    assert not owns_folder(tmp_path, "compare")                       # b.txt changed
    (tmp_path / "b.txt").unlink()
    assert owns_folder(tmp_path, "compare")
    (tmp_path / MANIFEST).write_text("{damaged")                      # a damaged record owns nothing
    assert not owned(tmp_path, "a.txt", "compare") and not owns_folder(tmp_path, "compare")
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_check_replace_refuses_what_it_did_not_write(tmp_path):
    (tmp_path / "mine.md").write_text("the user's")
    (tmp_path / "ours.md").write_text("written before")
    record(tmp_path, ["ours.md"], "compare")
    check_replace(tmp_path, ["ours.md", "new.md"], "compare", False, how="x")   # owned or absent: fine
    with pytest.raises(OutputError) as err:
        check_replace(tmp_path, ["ours.md", "mine.md"], "compare", False, how="pass --overwrite")
    (line,) = err.value.problems
    assert "already holds mine.md that compare did not write" in line and "ours.md" not in line
    assert line.endswith("pass --overwrite")
    check_replace(tmp_path, ["mine.md"], "compare", True, how="x")             # the user said so
    with pytest.raises(OutputError, match="already holds ours.md"):           # no owner: nothing is replaceable
        check_replace(tmp_path, ["ours.md"], None, False, how="x")
    assert (tmp_path / "mine.md").read_text() == "the user's"


def test_path_problems_are_found_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    assert "is a directory" in outputs.path_problem(tmp_path / "dir")
    assert "is a file, not a folder" in outputs.path_problem(tmp_path / "file", folder=True)
    assert "is a file, so" in outputs.path_problem(tmp_path / "file" / "sub" / "x.json")
    assert "File name too long" in outputs.path_problem(tmp_path / ("n" * 300))
    assert outputs.path_problem(tmp_path / "new" / "deeper" / "x.json") is None
    if os.getuid() != 0:                                                        # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        assert "no permission" in outputs.path_problem(tmp_path / "ro" / "x.json")


def test_what_the_demo_may_do_with_a_run_folder(tmp_path):
    """rundir.plan_run, decided before any training: reuse a finished run of the same config,
    resume an unfinished one, train where no run is, replace its own run of another config, and
    refuse anything else (unless overwrite)."""
    from msdetr_lite.config import apply_overrides, preset
    from msdetr_lite.rundir import plan_run, run_files
    run = tmp_path / "ms"
    cfg = apply_overrides(preset("tiny"), [f"train.output_dir={run}"])
    other = apply_overrides(preset("tiny"), [f"train.output_dir={run}", "train.lr=1e-3"])
    assert plan_run(run, cfg, "demo", False) == ("train", [])
    run.mkdir()
    (run / "notes.txt").write_text("not a run file")
    assert plan_run(run, cfg, "demo", False) == ("train", [])
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))          # interrupted in its first epoch
    assert plan_run(run, cfg, "demo", False) == ("resume", [])
    (run / "checkpoint.pth").write_bytes(b"epoch 1")
    assert plan_run(run, cfg, "demo", False) == ("resume", [])
    (run / "final.pth").write_bytes(b"weights")
    (run / "eval.json").write_text("{}")
    assert plan_run(run, cfg, "demo", False) == ("reuse", [])
    action, problems = plan_run(run, other, "demo", False)                  # not recorded as the demo's
    assert action == "refuse" and "not a run demo trained" in problems[0] and "--overwrite" in problems[0]
    assert plan_run(run, other, "demo", True) == ("replace", [])
    record(run, run_files(cfg.train), "demo")
    assert plan_run(run, other, "demo", False) == ("replace", [])
    (run / "eval.json").write_text('{"edited": true}')
    assert plan_run(run, other, "demo", False)[0] == "refuse"


# ---------------------------------------------------------------- the shapes generator
def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_replaces_only_its_own_dataset(tmp_path):
    out = tmp_path / "shapes"
    synthetic.generate(out, n_train=3, n_val=1, image_size=64, seed=0)
    json.loads((out / MANIFEST).read_text())                        # its record, beside the dataset
    synthetic.generate(out, n_train=2, n_val=1, image_size=64, seed=1)   # its own, unchanged: replaced whole
    assert sorted(p.name for p in (out / "train").iterdir()) == ["000001.png", "000002.png"]
    assert owns_folder(out, synthetic.OWNER)

    (out / "notes.txt").write_text("the user's notes")               # something of the user's inside:
    synthetic.generate(out, n_train=1, n_val=1, image_size=64, seed=2)    # kept, the dataset replaced
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert sorted(p.name for p in (out / "train").iterdir()) == ["000001.png"]
    (out / "notes.txt").unlink()
    synthetic.generate(out, n_train=2, n_val=1, image_size=64, seed=2)
    (out / "train" / "000001.png").write_bytes(b"edited")             # a file the user changed
    before = _tree(out)
    with pytest.raises(OutputError, match="already holds .*train/000001.png"):
        synthetic.generate(out, n_train=2, n_val=1, image_size=64, seed=2)
    assert _tree(out) == before
    (out / "keep.txt").write_text("kept")
    synthetic.generate(out, n_train=1, n_val=1, image_size=64, seed=2, overwrite=True)
    assert (out / "keep.txt").read_text() == "kept"                    # --overwrite replaces its files only
    assert (out / "train" / "000001.png").read_bytes() != b"edited"
    assert not (out / "train" / "000002.png").exists()                 # its own, of the dataset before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_generation_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "shapes"
    synthetic.generate(out, n_train=2, n_val=1, image_size=64, seed=0)
    before = _tree(out)
    real = synthetic.generate_split

    def interrupted(out_dir, split, *args, **kwargs):
        if split == "val":
            raise KeyboardInterrupt
        return real(out_dir, split, *args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(out, n_train=3, n_val=1, image_size=64, seed=1)
    assert _tree(out) == before and sorted(os.listdir(tmp_path)) == ["shapes"]
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "fresh", n_train=3, n_val=1, image_size=64, seed=1)
    assert not (tmp_path / "fresh").exists()


def test_generator_refuses_sizes_before_drawing(monkeypatch):
    with pytest.raises(ValueError, match="larger than Pillow opens"):
        synthetic.check_arguments(1, 1, Knobs(image_size=100_000), 0)
    monkeypatch.setattr(shapes_output, "_available_memory", lambda: 2**20)
    with pytest.raises(ValueError, match=r"needs about .* GiB, 0.0 GiB of memory is available"):
        synthetic.check_arguments(1, 1, Knobs(image_size=1024), 0)
    with pytest.raises(ValueError) as err:                   # counts, seed and the knobs' problems, all listed
        synthetic.check_arguments(-1, 1, Knobs(image_size=20, aspect_jitter=1.5), -3)
    assert len(err.value.problems) == 4


# ---------------------------------------------------------------- the committed dataset
def test_the_embedded_dataset_is_the_generators_to_replace():
    """data/shapes is committed with its record: `msdetr data shapes --out data/shapes` (README)
    regenerates it without --overwrite, and a file edited in it would stop that."""
    from msdetr_lite.data import PROJECT_ROOT
    root = PROJECT_ROOT / "data" / "shapes"
    assert owns_folder(root, synthetic.OWNER)
    assert len(json.loads((root / MANIFEST).read_text())["files"]) == len(outputs.files_under(root))
