"""Issue 23, "nothing lost": the CLI as a careless user and a hostile input would use it.

One table: for each case, the files it starts from (built from small generated data and one
micro run), the command, the exit code, words its message must hold, and the check that nothing
that was there before changed (a sha256 of every file before and after; a case names the files
it may change, e.g. a run it was asked to continue). No case may print a traceback.
"""
from __future__ import annotations

import errno
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

from msdetr_lite import cli
from msdetr_lite.checkpoint import load_checkpoint, save_checkpoint
from test_cli import MICRO

ONE_STEP = [*MICRO, "train.epochs=1", "train.max_steps_per_epoch=1", "--no-progress"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """base/data: a shapes set written by `msdetr data shapes`; base/run: a finished 1-epoch run."""
    from msdetr_lite.data.synthetic import generate
    root = tmp_path_factory.mktemp("base")
    generate(root / "data", n_train=4, n_val=2, image_size=64, seed=3)
    assert cli.main(["train", f"data.root={root / 'data'}", f"train.output_dir={root / 'run'}", *ONE_STEP]) == 0
    return root


# ---------------------------------------------------------------- building the starting files
def data(w: Path, b: Path) -> Path:
    """A copy of the dataset (the user's: no record of the generator, so not its to replace)."""
    shutil.copytree(b / "data", w / "data", ignore=shutil.ignore_patterns(".msdetr-outputs.json"))
    return w / "data"


def run(w: Path, b: Path, name: str = "run") -> Path:
    """A copy of the finished run (trained on base/data, which no case changes)."""
    shutil.copytree(b / "run", w / name)
    edit_json(w / name / "config.json", lambda cfg: cfg["train"].update(output_dir=str(w / name)))
    return w / name


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def val_json(w: Path) -> Path:
    return w / "data" / "annotations" / "instances_val.json"


def train_args(w: Path, *extra) -> list[str]:
    return ["train", f"data.root={w / 'data'}", f"train.output_dir={w / 'out'}", *ONE_STEP, *extra]


def resume_args(r: Path, *extra) -> list[str]:
    return ["train", "--config", str(r / "config.json"), "--resume", "--no-progress", *extra]


def extra_category(w, b):
    data(w, b)
    edit_json(val_json(w), lambda d: d["categories"].append({"id": 5, "name": "star"}))
    return train_args(w)


def fewer_categories(w, b):
    data(w, b)

    def drop(d):
        d["categories"] = d["categories"][:3]
        d["annotations"] = [a for a in d["annotations"] if a["category_id"] <= 3]
    edit_json(val_json(w), drop)
    return train_args(w)


def file_name(name_of: Callable[[Path], str]):
    def setup(w, b):
        data(w, b)
        (w / "outside.png").write_bytes((w / "data" / "val" / "000001.png").read_bytes())
        edit_json(val_json(w), lambda d: d["images"][0].update(file_name=name_of(w)))
        return train_args(w)
    return setup


def eval_on_other_categories(w, b):
    r = run(w, b)
    extra_category(w, b)
    return ["eval", "--checkpoint", str(r / "final.pth"), f"data.root={w / 'data'}", "--no-progress"]


def damaged_jpeg(w, b):
    data(w, b)
    info = json.loads(val_json(w).read_text())["images"][0]
    with Image.open(w / "data" / "val" / info["file_name"]) as im:
        im.convert("RGB").save(w / "data" / "val" / "x.jpg", quality=95)
    raw = bytearray((w / "data" / "val" / "x.jpg").read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 200):         # the middle: header and end marker intact
        raw[i] = 0xFF if i % 7 == 0 else raw[i] ^ 0x55
    (w / "data" / "val" / "x.jpg").write_bytes(bytes(raw))
    edit_json(val_json(w), lambda d: d["images"][0].update(file_name="x.jpg"))
    return train_args(w)


def elongated_image(w, b):
    data(w, b)
    Image.new("RGB", (10000, 1)).save(w / "data" / "val" / "thin.png")
    edit_json(val_json(w), lambda d: d["images"][0].update(file_name="thin.png", width=10000, height=1))
    return train_args(w)


def other_data_root(w, b):
    return resume_args(run(w, b), f"data.root={data(w, b)}")


def final_as_checkpoint(w, b):
    r = run(w, b)
    shutil.copy(r / "final.pth", r / "checkpoint.pth")
    return resume_args(r, "train.epochs=2")


def torn_metrics(w, b):
    r = run(w, b)
    with open(r / "metrics.jsonl", "a") as f:
        f.write('{"type": "step", "epoch": 2, "it')              # a write cut short by a kill
    return r


def torn_resume(w, b):
    return resume_args(torn_metrics(w, b), "train.epochs=2")


def torn_compare(w, b):
    return ["compare", str(torn_metrics(w, b)), "--out", str(w / "cmp")]


def nan_weights(w, b):
    r = run(w, b)
    ckpt = load_checkpoint(r / "final.pth")
    next(v for v in ckpt["model"].values() if v.is_floating_point()).fill_(float("nan"))
    save_checkpoint(r / "final.pth", ckpt)
    return ["eval", "--checkpoint", str(r / "final.pth"), "--no-progress"]


def user_runs_in_demo_out(w, b):
    data(w, b), run(w, b, "ms"), run(w, b, "o2o")
    return ["demo", "--out", str(w), "--epochs", "1", "--data", str(w / "data"), *MICRO, "--no-progress"]


def bad_metrics_line(line: str):
    def setup(w, b):
        r = run(w, b)
        (r / "metrics.jsonl").write_text(line + "\n" + (r / "metrics.jsonl").read_text())
        return ["compare", str(r), "--out", str(w / "cmp")]
    return setup


def disk_full(monkeypatch):
    def no_space(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", no_space)


def interrupt_evaluation(monkeypatch):
    import msdetr_lite.evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(msdetr_lite.evaluation, "evaluate", interrupted)


@dataclass
class Case:
    name: str
    setup: Callable[[Path, Path], list[str]]       # (world, base) -> argv, after `start` and `files`
    code: int
    words: tuple[str, ...]
    start: tuple = ()                              # builders (world, base) run first: data, run
    files: dict = field(default_factory=dict)      # then {relative path: text or bytes; None: a folder}
    may_change: tuple[str, ...] = ()               # relative paths the command may change (asked to)
    patch: Callable = None                         # monkeypatch -> None: a failure to simulate


def eval_args(w: Path, *extra) -> list[str]:
    return ["eval", "--checkpoint", str(w / "run" / "final.pth"), "--no-progress", *extra]


def compare_args(w: Path, *extra) -> list[str]:
    return ["compare", str(w / "run"), "--out", str(w / "cmp"), *extra]


CASES = [
    # ------------------------------------------------ what is there is never replaced without a word
    Case("data shapes over a dataset it did not write", lambda w, b: [
        "data", "shapes", "--out", str(data(w, b)), "--n-train", "2", "--n-val", "1", "--size", "64"],
        2, ("msdetr data shapes: error:", "already holds", "that data shapes did not write", "--overwrite")),
    Case("data shapes --out a file", lambda w, b: ["data", "shapes", "--out", str(w / "f")], 2, ("is a file",),
         files={"f": "mine"}),
    Case("data shapes --out a name too long", lambda w, b: [
        "data", "shapes", "--out", str(w / ("x" * 300))], 2, ("File name too long",)),
    Case("train into a folder holding eval.json and config.json", lambda w, b: train_args(w), 2,
         ("already holds", "config.json", "eval.json", "--resume", "--overwrite"),
         start=(data,), files={"out/eval.json": "{}", "out/config.json": "{}"}),
    Case("train.output_dir is a file", lambda w, b: train_args(w), 2, ("is a file, not a folder",),
         start=(data,), files={"out": "mine"}),
    Case("demo --out a folder holding the user's runs ms and o2o", user_runs_in_demo_out, 2,
         ("ms already holds", "o2o already holds", "not a run demo trained", "--overwrite")),
    Case("eval --out a directory", lambda w, b: eval_args(w, "--out", str(w / "d")), 2, ("is a directory",),
         start=(run,), files={"d": None}),
    Case("eval --out a file of the user's", lambda w, b: eval_args(w, "--out", str(w / "e.json")), 2,
         ("already holds e.json", "--overwrite"), start=(run,), files={"e.json": "mine"}),
    Case("compare --out a folder with the user's summary.md", lambda w, b: compare_args(w), 2,
         ("already holds summary.md", "--overwrite"), start=(run,), files={"cmp/summary.md": "mine"}),
    # ------------------------------------------------ resume: refused when it cannot continue the run
    Case("--resume with another data.root", other_data_root, 2, ("cannot resume", "trained on data.root=")),
    Case("--resume from final.pth copied to checkpoint.pth", final_as_checkpoint, 2,
         ("not a training checkpoint", "optimizer")),
    Case("--resume of a finished run: nothing to do, nothing written", lambda w, b: resume_args(w / "run"),
         0, ("nothing to do", "finished all 1 epochs"), start=(run,)),
    Case("--resume past a torn last line of metrics.jsonl", torn_resume, 0, ("torn last line",),
         may_change=("run/",)),
    Case("train.epochs=0", lambda w, b: train_args(w, "train.epochs=0"), 2, ("train.epochs=0: must be >= 1",),
         start=(data,)),
    # ------------------------------------------------ data: checked once, before any training
    Case("val lists one category more than train", extra_category, 2,
         ("categories of", "instances_val.json", "instances_train.json", "5 star")),
    Case("val lists fewer categories", fewer_categories, 2, ("categories of", "4 cross")),
    Case("eval against a val set with another category list", eval_on_other_categories, 2,
         ("categories of", "final.pth (its training set)", "5 star")),
    Case("file_name ../outside.png", file_name(lambda w: "../../outside.png"), 2, ("outside the image folder",)),
    Case("absolute file_name", file_name(lambda w: str(w / "outside.png")), 2, ("outside the image folder",)),
    Case("a JPEG damaged in the middle", damaged_jpeg, 2, ("x.jpg: damaged",)),
    Case("a 10000 x 1 image", elongated_image, 2, ("too elongated", "thin.png (10000x1)")),
    Case("data shapes --size 100000", lambda w, b: ["data", "shapes", "--out", str(w / "d"), "--size", "100000"],
         2, ("larger than Pillow opens",)),
    Case("data shapes --size 20", lambda w, b: ["data", "shapes", "--out", str(w / "d"), "--size", "20"],
         2, ("image_size=20 is smaller than max_size=48",)),
    Case("data shapes --seed -1", lambda w, b: ["data", "shapes", "--out", str(w / "d"), "--seed", "-1"],
         2, ("must be >= 0",)),
    # ------------------------------------------------ files of a run that are damaged
    Case("eval of NaN weights", nan_weights, 2, ("non-finite weights",)),
    Case("compare past a torn last line", torn_compare, 0, ("torn last line",)),
    Case("compare with a metrics line that is a list", bad_metrics_line("[1, 2]"), 2,
         ("metrics.jsonl:1", "must be a JSON object")),
    Case("compare with a step record without its step", bad_metrics_line('{"type": "step", "epoch": 1, "iter": 0}'),
         2, ("metrics.jsonl:1", "'step' must be an integer")),
    Case("compare with config.json that is not UTF-8", lambda w, b: compare_args(w), 2, ("config.json is not UTF-8",),
         start=(run,), files={"run/config.json": b"\xff\xfe{"}),
    Case("compare --out below a file", lambda w, b: ["compare", str(w / "run"), "--out", str(w / "f" / "cmp")], 2,
         ("is a file, so",), start=(run,), files={"f": "mine"}),
    Case("compare with --labels of another count", lambda w, b: compare_args(w, "--labels", "a", "b"), 2,
         ("--labels names 2 runs",), start=(run,)),
    Case("--config that is a JSON list", lambda w, b: ["train", "--config", str(w / "c.json")], 2,
         ("a config must be a mapping",), files={"c.json": "[1]"}),
    Case("--config that is not UTF-8", lambda w, b: ["train", "--config", str(w / "c.json")], 2,
         ("is not valid JSON",), files={"c.json": b"\xff\xfe"}),
    Case("--checkpoint a directory", lambda w, b: ["eval", "--checkpoint", str(w / "d")], 2,
         ("checkpoint not found",), files={"d": None}),
    # ------------------------------------------------ failures on the way: one line, nothing lost
    Case("a full disk while saving a checkpoint", lambda w, b: train_args(w), 2,
         ("cannot write", "checkpoint.pth: No space left on device", "unchanged"), start=(data,), patch=disk_full),
    Case("Ctrl-C during eval", lambda w, b: eval_args(w), 130, ("interrupted",), start=(run,),
         patch=interrupt_evaluation),
]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_case(case: Case, base, tmp_path, capsys, monkeypatch):
    world = tmp_path / "w"
    world.mkdir()
    for build in case.start:
        build(world, base)
    for name, content in case.files.items():
        (world / name).parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            (world / name).mkdir()
        elif isinstance(content, bytes):
            (world / name).write_bytes(content)
        else:
            (world / name).write_text(content)
    argv = case.setup(world, base)
    before = _hashes(world)
    capsys.readouterr()
    if case.patch:
        case.patch(monkeypatch)
    monkeypatch.delenv("MSDETR_DEBUG", raising=False)
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == case.code, err
    for word in case.words:
        assert word in out + err, (word, out, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert lines and all(line.startswith("msdetr ") for line in lines), err
    after = _hashes(world)
    changed = [p for p, h in before.items() if after.get(p) != h and not p.startswith(case.may_change or ("\0",))]
    assert changed == [], changed
