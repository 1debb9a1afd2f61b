"""Trained checkpoints for the notebooks: train once, cache, reuse.

    from msdetr_lite.lab import zoo                 # or, as before, `from msdetr_lite import zoo`
    path = zoo.get_checkpoint("ms")                 # the shipped model (lab/shipped.py), else trains once
    model, cfg = zoo.load_model("ms")
    zoo.list_checkpoints("ms")                      # [("init", .../epoch_0.pth), ("epoch 1", ...), ...]
    zoo.history("ms"), zoo.evaluation("ms")         # the run (msdetr_lite.runs.Run), its eval.json

Runs live in `runs/notebooks/{fast|full}/{name}/` under the repository root (or under
$MSDETR_ZOO_DIR), so every notebook, whatever its working directory, finds what an earlier one
trained. `name` is the supervision scheme ("o2o", "ms", "hybrid", "group"), with a suffix when
extra config overrides are given.

Two schedules of the `tiny` preset on the embedded shapes data (`SCHEDULES`):
    fast  (env MSDETR_FAST=1, CI): a handful of steps on a few images; pictures are of an
          almost untrained model, the point is that every cell runs.
    full  the demo's recipe (`make demo`): 4 epochs of 300 steps of 4 images (the whole 1200-image
          train split), lr drop after epoch 3, seed 42, an evaluation per epoch. Per model about
          5.5 min on the 2-core AMD EPYC dev VM, 25 min on one core of the 2-core Xeon one (AP on
          the Xeon: ms 41.0, o2o 51.4, hybrid 35.4, group 45.3). Build all four once with
          `python -m msdetr_lite.lab build` (`make zoo`; docs/results.md: about an hour on the Xeon, two at a time).
          On a GPU the engine's `train.device=auto` uses it.

**Shipped first.** The repository ships the full schedule's o2o and ms weights (fp16) and all
four schemes' training records (weights/, lab/shipped.py): with no current run cached, a
full-mode call verifies the shipped one and lays it out here in seconds ("init" and the final
weights; intermediate epochs need `make zoo-train`). Training happens only where nothing fitting
ships (fast mode, overrides, changed model code), and says first what and for about how long.

Training runs `msdetr_lite.engine.train` in a subprocess (`python -m msdetr_lite.lab train ...`):
the notebook kernel stays small, and the peak memory the engine logs is that run's alone. One
uninterrupted training; the engine's `on_epoch_end` hook keeps a weights-only snapshot per
epoch, `epoch_{e}.pth` (`epoch_0.pth` = the initialisation), for the notebooks' "training
checkpoint" selectors. A run is reused when its `zoo.json` records
the same configuration and the same model / training code (a hash of the sources); otherwise
it is trained again. Executing the notebooks into HTML is `msdetr_lite.lab.render`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from filelock import FileLock

from ..config import SUPERVISIONS, Config, apply_overrides, preset
from ..runs import Run, load_run
from ..threads import choose, subprocess_env
from . import PROJECT_ROOT, relative, shipped

PACKAGE_ROOT = PROJECT_ROOT / "msdetr_lite"
ZOO_ENV = "MSDETR_ZOO_DIR"
FAST_ENV = "MSDETR_FAST"
ZOO_FILE = "zoo.json"
ZOO_VERSION = 1

# Overrides of the tiny preset per schedule. The shapes data: 1200 train / 200 val images.
SCHEDULES = {
    "fast": ["train.epochs=2", "train.max_steps_per_epoch=1", "train.batch_size=4", "train.lr_drop=100",
             "data.max_images=8", "train.log_every=1", "data.num_workers=0"],
    # the demo's recipe (report.run_demo via `msdetr demo`): the tiny preset at 4 epochs, lr drop after 3
    "full": ["train.epochs=4", "train.max_steps_per_epoch=0", "train.batch_size=4", "train.lr_drop=3",
             "train.seed=42", "data.max_images=0", "train.log_every=10", "data.num_workers=0"],
}
# the sources a trained run depends on (paths under msdetr_lite/): a change to any of them retrains
# the cached models. The teaching layer (lab/, viz/) is not among them: it trains nothing.
_CODE = ("config.py", "engine.py", "distributed.py", "optim.py", "rundir.py", "checkpoint.py", "losses", "matching",
         "ops.py", "models", "data")

__all__ = ["fast_mode", "default_threads", "mode_name", "build", "zoo_root", "ensure_data", "zoo_config", "run_dir",
           "get_checkpoint", "ensure_run", "ship", "list_checkpoints", "load_model", "history", "evaluation", "nms_evaluation", "run_info",
           "efficiency_rows", "train_run", "list_runs", "SCHEDULES"]


def fast_mode(fast: Optional[bool] = None) -> bool:
    """`fast` if given, else whether env MSDETR_FAST is set to something true ("1", "true", ...)."""
    if fast is not None:
        return bool(fast)
    return os.environ.get(FAST_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def default_threads() -> int:
    """CPU threads for torch in notebooks and zoo training (msdetr_lite.threads.choose):
    $MSDETR_THREADS or $OMP_NUM_THREADS, else half the cores (at most 8), so that a busy
    neighbour (the browser, a notebook kernel) never shares a core with a training thread."""
    return choose()


def mode_name(fast: Optional[bool] = None) -> str:
    return "fast" if fast_mode(fast) else "full"


def zoo_root() -> Path:
    """Where runs are cached: $MSDETR_ZOO_DIR or <repository>/runs/notebooks."""
    env = os.environ.get(ZOO_ENV)
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "runs" / "notebooks"


def ensure_data(root: Union[str, Path] = "data/shapes", quiet: bool = False) -> Path:
    """The embedded shapes dataset's folder, generated first if it is missing (about 10 s)."""
    from ..data import resolve_root
    from ..data.synthetic import generate

    path = resolve_root(root)
    if not (path / "annotations" / "instances_val.json").is_file() or not (path / "annotations" /
                                                                           "instances_train.json").is_file():
        if not Path(root).is_absolute():
            path = PROJECT_ROOT / root
        if not quiet:
            print(f"generating the synthetic shapes dataset into {relative(path)} ...", flush=True)
        with _lock(path.parent / f".{path.name}.lock"):
            if not (path / "annotations" / "instances_val.json").is_file():
                summary = generate(path)
                if not quiet:
                    print(f"  {summary['images']} images in {summary['seconds']} s", flush=True)
    return path


def _lock(path: Path) -> FileLock:
    """An exclusive lock file, so two processes (two notebooks, two pytest workers) do not
    generate the data or train the same run at once; the second waits, then finds it done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


def zoo_config(supervision: str, fast: Optional[bool] = None, overrides: Sequence[str] = ()) -> Config:
    """The `tiny` preset with the schedule of `fast` / full mode, `model.supervision`, and overrides."""
    if supervision not in SUPERVISIONS:
        raise ValueError(f"supervision={supervision!r}; expected one of {SUPERVISIONS}")
    mode = mode_name(fast)
    cfg = apply_overrides(preset("tiny"), [*SCHEDULES[mode], f"model.supervision={supervision}", *overrides])
    cfg.data.root = str(ensure_data(cfg.data.root, quiet=True))
    return cfg


def _run_name(supervision: str, overrides: Sequence[str]) -> str:
    if not overrides:
        return supervision
    return f"{supervision}-{hashlib.sha1('|'.join(overrides).encode()).hexdigest()[:8]}"


def run_dir(supervision: str, fast: Optional[bool] = None, overrides: Sequence[str] = ()) -> Path:
    return zoo_root() / mode_name(fast) / _run_name(supervision, overrides)


def _code_hash() -> str:
    h = hashlib.sha1()
    pkg = PACKAGE_ROOT                        # names are hashed relative to msdetr_lite/, as before lab/ existed
    for name in _CODE:
        p = pkg / name
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(pkg)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _request(cfg: Config) -> dict:
    d = json.loads(json.dumps(cfg.to_dict()))
    d["data"]["root"] = str(Path(d["data"]["root"]).resolve())
    return d


def run_info(supervision: str, fast: Optional[bool] = None, overrides: Sequence[str] = ()) -> Optional[dict]:
    """The run's zoo.json (None if it was never completed)."""
    path = run_dir(supervision, fast, overrides) / ZOO_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _is_current(out: Path, cfg: Config, check_code: bool = True, need_weights: bool = True,
                allow_shipped: bool = True) -> bool:
    """Whether `out` holds a complete run of `cfg` (and, with check_code, of today's sources):
    with need_weights its final.pth and snapshots, else its records alone (a shipped scheme that
    ships no weights); allow_shipped=False accepts only a run trained on this machine."""
    path = out / ZOO_FILE
    if not path.is_file():
        return False
    info = json.loads(path.read_text())
    if info.get("shipped") and not allow_shipped:
        return False
    return (info.get("version") == ZOO_VERSION and info.get("request") == _request(cfg)
            and (not check_code or info.get("code") == _code_hash())
            and all((out / f).is_file() for f in info.get("snapshots", {}).values())
            and (out / "metrics.jsonl").is_file()
            and (not need_weights or (out / "final.pth").is_file()))


def _install_shipped(supervision: str, cfg: Config, out: Path, need_weights: bool, quiet: bool) -> bool:
    """Lay the shipped `supervision` out in `out` (lab/shipped.py verifies it first); False, with
    the reason printed, when nothing fitting ships or a check fails."""
    request = _request(cfg)
    meta = shipped.info(supervision)
    if meta is None or not shipped.available(supervision, request) or (need_weights and not meta.get("weights")):
        return False
    if out.exists():
        shutil.rmtree(out)                    # the zoo's own cache folder: a stale run of this scheme
    try:
        zoo_info = shipped.install(supervision, request, out, _code_hash())
    except shipped.ShippedError as e:
        print(f"not using the shipped {supervision}: {e}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        return False
    (out / ZOO_FILE).write_text(json.dumps(zoo_info, indent=2) + "\n")
    if not quiet:
        what = "model" if meta.get("weights") else "training record (no weights ship for it)"
        checks = "sha256, configuration and output fingerprint checked; " if meta.get("weights") else ""
        print(f"using the shipped {supervision} {what}: trained on {meta['trained']['machine']} "
              f"({meta['trained']['finished'][:10]}, {meta['trained']['wall_time'] / 60:.0f} min); {checks}"
              f"`make zoo-train` trains every epoch here instead", flush=True)
    return True


def _training_notice(supervision: str, cfg: Config) -> str:
    """What is about to train and for about how long, from the shipped record of the same recipe."""
    t = cfg.train
    what = (f"training {supervision}: {t.epochs} epoch(s) of {t.max_steps_per_epoch or 'all'} step(s), batch "
            f"{t.batch_size}, an evaluation per epoch")
    meta = shipped.info(supervision)
    if shipped.available(supervision, _request(cfg)):
        return (f"{what}; the shipped run of this recipe took {meta['trained']['wall_time'] / 60:.0f} min on "
                f"{meta['trained']['machine']} with {meta['trained']['torch_threads']} thread(s) "
                f"(slower CPUs: up to 3x)")
    return what + ("" if t.epochs * max(1, t.max_steps_per_epoch) < 100 else
                   "; at the demo's recipe about 10-30 min per model on one core of a laptop-class CPU")


def get_checkpoint(supervision: str = "ms", fast: Optional[bool] = None, epoch: Optional[int] = None,
                   overrides: Sequence[str] = (), retrain: bool = False, quiet: bool = False,
                   use_shipped: bool = True) -> Path:
    """Path of a trained checkpoint of `supervision` ("o2o" | "ms" | "hybrid" | "group").

    In order: a current cached run; the shipped model of the same recipe (full mode, no
    overrides; lab/shipped.py: verified, then laid out as a run with "init" and the final
    weights); else trains it (in a subprocess, saying what and for about how long first).
    epoch: None = the final weights (`final.pth`), 0 = the initialisation, e = after epoch e.
    overrides: extra `section.field=value` config overrides (the run gets its own folder).
    retrain: train again even if cached. use_shipped=False: only a run trained here will do.
    """
    out = ensure_run(supervision, fast, overrides, retrain=retrain, quiet=quiet, use_shipped=use_shipped,
                     need_weights=True)
    if epoch is None:
        return out / "final.pth"
    info = json.loads((out / ZOO_FILE).read_text())
    if str(epoch) not in info["snapshots"]:
        hint = " (the shipped model has the initialisation and the final weights; `make zoo-train` trains every epoch)" \
            if info.get("shipped") else ""
        raise ValueError(f"no snapshot of epoch {epoch}; the run has {sorted(map(int, info['snapshots']))}{hint}")
    return out / info["snapshots"][str(epoch)]


def ensure_run(supervision: str = "ms", fast: Optional[bool] = None, overrides: Sequence[str] = (),
               retrain: bool = False, quiet: bool = False, use_shipped: bool = True,
               need_weights: bool = False) -> Path:
    """The folder of a complete run of `supervision` (see get_checkpoint for the order). Without
    need_weights, the shipped training record of a scheme that ships no weights will do (notebook
    03's curves and tables of hybrid and group)."""
    cfg = zoo_config(supervision, fast, overrides)
    out = run_dir(supervision, fast, overrides)
    with _lock(out.parent / f".{out.name}.lock"):
        if retrain or not _is_current(out, cfg, need_weights=need_weights, allow_shipped=use_shipped):
            if (retrain or not use_shipped or mode_name(fast) != "full" or overrides
                    or not _install_shipped(supervision, cfg, out, need_weights, quiet)):
                if not quiet:
                    print(_training_notice(supervision, cfg), flush=True)
                _train_subprocess(supervision, mode_name(fast), overrides, quiet)
                # not the code hash: the run just trained with the sources it read when it started
                # (recorded in zoo.json); sources edited meanwhile make it stale for the *next* call
                if not _is_current(out, cfg, check_code=False):
                    raise RuntimeError(f"training {supervision} finished but {out} holds no complete run")
        elif not quiet:
            info = json.loads((out / ZOO_FILE).read_text())
            print(f"using the {'shipped' if info.get('shipped') else 'cached'} {supervision} run in {relative(out)}",
                  flush=True)
    return out


def list_checkpoints(supervision: str = "ms", fast: Optional[bool] = None, overrides: Sequence[str] = (),
                     quiet: bool = True) -> list[tuple[str, Path]]:
    """[(label, path)] of a run's snapshots, in training order: "init", "epoch 1", ... (trains if needed)."""
    get_checkpoint(supervision, fast, overrides=overrides, quiet=quiet)
    out = run_dir(supervision, fast, overrides)
    info = json.loads((out / ZOO_FILE).read_text())
    return [("init" if int(e) == 0 else f"epoch {e}", out / f)
            for e, f in sorted(info["snapshots"].items(), key=lambda kv: int(kv[0]))]


def load_model(supervision: str = "ms", fast: Optional[bool] = None, epoch: Optional[int] = None,
               overrides: Sequence[str] = (), device: str = "cpu", quiet: bool = False):
    """(model in eval mode, its Config) of a zoo checkpoint (trained on first use)."""
    from ..engine import load_model_from_checkpoint
    return load_model_from_checkpoint(get_checkpoint(supervision, fast, epoch, overrides, quiet=quiet),
                                      device=device)


def history(supervision: str = "ms", fast: Optional[bool] = None, overrides: Sequence[str] = ()) -> Run:
    """The run as `msdetr_lite.runs` reads it: config, step and epoch records, eval, loss series."""
    return load_run(run_dir(supervision, fast, overrides), name=supervision)


def evaluation(supervision: str = "ms", fast: Optional[bool] = None, overrides: Sequence[str] = ()) -> dict:
    """The run's eval.json: final AP per decoder layer ("final", "layers", "layer_ids", ...)."""
    run = history(supervision, fast, overrides)
    if run.eval is None:
        raise FileNotFoundError(f"{run.dir} has no eval.json: its training did not finish")
    return run.eval


NMS_EVAL_FILE = "eval-nms.json"


def nms_evaluation(supervision: str = "ms", fast: Optional[bool] = None, nms_iou: float = 0.7,
                   overrides: Sequence[str] = ()) -> dict:
    """The run's final weights evaluated NMS-free *and* with class-wise NMS at `nms_iou`
    (`evaluation.evaluate(..., nms_iou=...)`: "final", "layers", "nms", "duplicates").

    Computed once (the whole val split, about 10 s per model on a CPU core) and cached in the
    run folder as eval-nms.json, tied to the run's zoo.json (a retrained run recomputes it).
    Batched as in training's evaluation (train.batch_size): padding to the batch's largest image
    changes what the backbone sees at the borders, so another batch size moves the AP a little
    (o2o 51.4 at batch 4 vs 52.0 at batch 8 here), and the NMS-free numbers equal eval.json's."""
    from ..data import build_dataset, build_val_loader
    from ..evaluation import evaluate

    out = ensure_run(supervision, fast, overrides, quiet=True)
    stamp = (out / ZOO_FILE).read_text()
    cache = out / NMS_EVAL_FILE
    batch = zoo_config(supervision, fast, overrides).train.batch_size
    if cache.is_file():
        cached = json.loads(cache.read_text())
        # a shipped run's evaluation was computed where it was trained, from the same weights
        same_run = cached.get("zoo") == stamp or json.loads(stamp).get("shipped")
        if same_run and cached.get("nms_iou") == nms_iou and cached.get("batch_size") == batch:
            return cached["eval"]
    get_checkpoint(supervision, fast, overrides=overrides, quiet=True)
    stamp = (out / ZOO_FILE).read_text()
    model, cfg = load_model(supervision, fast, overrides=overrides, quiet=True)
    loader = build_val_loader(cfg, build_dataset(cfg.data, "val"), batch)
    result = evaluate(model, loader, "cpu", progress=False, nms_iou=nms_iou)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"zoo": stamp, "nms_iou": nms_iou, "batch_size": batch, "eval": result}) + "\n")
    tmp.replace(cache)                        # atomic: a reader never sees half a file
    return result


def efficiency_rows(schemes: Sequence[str], fast: Optional[bool] = None, overrides: Sequence[str] = ()) -> list[dict]:
    """One row per trained scheme: parameters, time per training step, peak memory, AP.

    Step time is the median over logged steps after the first two (warm-up); memory is the
    training process's peak resident set size on CPU (or CUDA max allocated), as the engine logs it.
    """
    rows = []
    for s in schemes:
        run = history(s, fast, overrides)
        steps = run.steps
        times = sorted(r["step_time"] for r in steps[2:]) or sorted(r["step_time"] for r in steps)
        ev = evaluation(s, fast, overrides)
        info = run_info(s, fast, overrides) or {}
        rows.append({
            "scheme": s,
            "trainable params (M)": round(ev.get("trainable_params", 0) / 1e6, 2),
            "s / step (median)": round(times[len(times) // 2], 3) if times else None,
            "peak memory (MiB)": round(max((r.get("peak_mem_mb", 0) for r in run.records), default=0)),
            "memory kind": steps[-1].get("peak_mem_kind") if steps else None,
            "train wall time (s)": round(info.get("wall_time", float("nan")), 1),
            "AP": round(100 * ev["final"]["AP"], 2),
            "AP50": round(100 * ev["final"]["AP50"], 2),
        })
    return rows


# ---------------------------------------------------------------- training
def _train_subprocess(supervision: str, mode: str, overrides: Sequence[str], quiet: bool) -> None:
    cmd = [sys.executable, "-m", "msdetr_lite.lab", "train", supervision, "--mode", mode]
    for o in overrides:
        cmd += ["--override", o]
    if not quiet:
        print(f"training {supervision} ({mode} schedule), once; later calls reuse it:\n  {' '.join(cmd[1:])}",
              flush=True)
    env = dict(subprocess_env(default_threads()), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=str(PROJECT_ROOT))
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        if not quiet:
            # the run's paths as the notebooks print them: relative to the project root
            print("  " + line.rstrip().replace(str(PROJECT_ROOT) + os.sep, ""), flush=True)
    if proc.wait() != 0:
        raise RuntimeError(f"training {supervision} failed (exit {proc.returncode}):\n{''.join(tail)}")


def train_run(supervision: str, mode: str = "fast", overrides: Sequence[str] = ()) -> Path:
    """Train a zoo run in this process, epoch by epoch with a snapshot after each; returns its folder."""
    import torch

    from ..checkpoint import save_checkpoint
    from ..data import build_dataset
    from ..engine import train
    from ..kernel_bench import describe_machine

    torch.set_num_threads(default_threads())
    fast = mode == "fast"
    cfg = zoo_config(supervision, fast, overrides)
    request = _request(cfg)
    out = run_dir(supervision, fast, overrides)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg.train.output_dir = str(out)
    code = _code_hash()                       # the code this run trains with (read before it may change)
    t0 = time.perf_counter()

    # epoch 0: the initialisation the engine starts from (same seed, same construction order)
    init_cfg = Config.from_dict(cfg.to_dict())
    init_cfg.model.num_classes = build_dataset(init_cfg.data, "train", transforms=None).num_classes
    shipped.save_initialisation(out / "epoch_0.pth", init_cfg)
    snapshots = {"0": "epoch_0.pth"}

    def snapshot(epoch: int, summary: dict) -> None:
        # weights only (no optimizer state): what the notebooks' checkpoint selectors load
        save_checkpoint(out / f"epoch_{epoch}.pth", {"model": summary["model"].state_dict(),
                                                     "config": init_cfg.to_dict(), "epoch": epoch})
        snapshots[str(epoch)] = f"epoch_{epoch}.pth"

    train(cfg, progress=False, on_epoch_end=snapshot)
    wall = time.perf_counter() - t0
    (out / ZOO_FILE).write_text(json.dumps({
        "version": ZOO_VERSION, "supervision": supervision, "mode": mode, "overrides": list(overrides),
        "request": request, "code": code, "snapshots": snapshots, "wall_time": wall,
        "torch_threads": torch.get_num_threads(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": describe_machine()}, indent=2) + "\n")
    print(f"zoo: {supervision} ({mode}) trained in {wall:.0f} s -> {relative(out)}", flush=True)
    return out


BUILD_SCHEMES = ("ms", "o2o", "hybrid", "group")      # what notebooks 00-04 load


def build(schemes: Sequence[str] = BUILD_SCHEMES, fast: Optional[bool] = None, nms_iou: float = 0.7,
          train: bool = False) -> list[Path]:
    """Make every scheme the notebooks load ready, then their NMS-aware evaluations, so that
    running the notebooks only reads results: the shipped models where they fit (seconds), else
    trained here; train=True (`make zoo-train`) trains every one here, with its per-epoch
    snapshots (reusing runs already trained here). Returns the run folders."""
    dirs = []
    for s in schemes:
        t0 = time.perf_counter()
        ensure_run(s, fast, use_shipped=not train, need_weights=train or s in shipped.WITH_WEIGHTS)
        nms_evaluation(s, fast, nms_iou)
        dirs.append(run_dir(s, fast))
        print(f"zoo build: {s} ({mode_name(fast)}) ready in {time.perf_counter() - t0:.0f} s -> {relative(dirs[-1])}", flush=True)
    return dirs


def ship(schemes: Sequence[str] = BUILD_SCHEMES, root: Optional[Path] = None) -> list[dict]:
    """Pack the full-mode runs trained here (`make zoo-train`) into weights/ (lab/shipped.py)."""
    root = shipped.WEIGHTS_DIR if root is None else Path(root)
    metas = []
    for s in schemes:
        out = run_dir(s, fast=False)
        if not _is_current(out, zoo_config(s, False), allow_shipped=False):
            raise RuntimeError(f"{relative(out)} holds no current run of {s} trained here: `make zoo-train` first")
        nms_evaluation(s, False)
        metas.append(shipped.pack(s, out, json.loads((out / ZOO_FILE).read_text()), root))
        w = metas[-1]["weights"]
        print(f"ship: {s} -> {relative(root / s)}" + (f" ({w['bytes'] / 2**20:.1f} MiB fp16; AP fp32 "
              f"{100 * metas[-1]['fp16_check']['AP_fp32']:.2f} vs fp16 {100 * metas[-1]['fp16_check']['AP_fp16']:.2f})"
              if w else " (records only)"), flush=True)
    return metas


def list_runs() -> list[dict]:
    """Every cached run's zoo.json (both schedules), with its folder as "dir"."""
    return [{**json.loads(p.read_text()), "dir": str(p.parent)} for p in sorted(zoo_root().glob(f"*/*/{ZOO_FILE}"))]
