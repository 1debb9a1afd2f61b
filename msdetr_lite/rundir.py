"""The run directory: claiming it, the files a run writes there, and whether a checkpoint may be resumed.

    lock = claim_run_dir(out, resume=False, overwrite=False, names=run_files(cfg.train))   # RunDirError
    check_resumable(ckpt["config"], cfg, path, ckpt["epoch"])   # same model, same data, epochs left
    config_changes(ckpt["config"], cfg)                         # {"train.lr": [old, new], ...}
    finished_eval(out, completed, cfg.train.epochs)             # eval.json of a finished run, or None

A directory that holds any file a run writes (`run_files`: config.json, metrics.jsonl,
checkpoint.pth, final.pth, eval.json, and with train.keep_snapshots epoch_N.pth) is only
continued (resume) or replaced (overwrite), never silently overwritten: the rule of
`msdetr_lite.outputs`, which every command follows. While a run trains, rank 0 holds the lock
`.train.lock` in it (released on any exit; the operating system drops it if the process dies).
metrics.jsonl is read through `msdetr_lite.runs.read_metrics`, the one reader of it (a torn last
line, left by a kill or a full disk, is skipped and reported).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from msdetr_lite.checkpoint import remove_orphan_tmp
from msdetr_lite.config import Config
from msdetr_lite.distributed import DistInfo, from_main
from msdetr_lite.errors import UserError
from msdetr_lite.outputs import OutputError, check_folder, check_replace
from msdetr_lite.runs import RunFileError, read_json_object, read_metrics

__all__ = ["CHECKPOINT", "FINAL", "SNAPSHOT", "METRICS", "EVAL", "CONFIG", "LOCK", "RUN_FILES", "RunDirError",
           "run_files", "claim_run_dir", "raise_together", "check_resumable", "config_changes", "finished_eval",
           "append_jsonl", "keep_metrics_before", "same_config", "plan_run"]

CHECKPOINT = "checkpoint.pth"        # last completed epoch: everything needed to resume
FINAL = "final.pth"                  # trained weights + config (what `msdetr eval` reads)
METRICS = "metrics.jsonl"            # one JSON record per logged step and per epoch (+ "resume")
EVAL = "eval.json"                   # final AP per decoder layer
SNAPSHOT = "epoch_{}.pth"            # train.keep_snapshots: weights + config after epoch N
CONFIG = "config.json"               # the Config this run trains with
LOCK = ".train.lock"                 # held by the training process while it runs
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, FINAL, EVAL)     # any of these: the directory holds a run


class RunDirError(UserError, RuntimeError):
    """The run directory cannot be used as asked: it holds a run (neither resume nor overwrite),
    another process trains into it, or its checkpoint cannot be resumed with this config."""


def run_files(train_cfg) -> list[str]:
    """The files a training run with `train_cfg` writes in its directory."""
    snapshots = [SNAPSHOT.format(e) for e in range(1, train_cfg.epochs + 1)] if train_cfg.keep_snapshots else []
    return [*RUN_FILES, *snapshots]


def claim_run_dir(out: Path, resume: bool, overwrite: bool, names=RUN_FILES) -> FileLock:
    """Create `out`, take its lock and check that this run may write its files `names` there;
    returns the held lock (release it when the run ends). Removes orphaned checkpoint
    temporaries; with `overwrite`, the previous run's files."""
    check_folder(out, error=RunDirError)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create train.output_dir {out}: {e.strerror or e}") from e
    lock = FileLock(out / LOCK, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirError(f"another training process is writing to {out} (it holds {out / LOCK}); "
                          f"wait for it to finish or choose another train.output_dir") from None
    try:
        check_replace(out, names, None, resume or overwrite, error=RunDirError,
                      how="continue the run with --resume (train(..., resume=True)) or replace it with "
                          "--overwrite (train(..., overwrite=True))")
        if overwrite:
            for name in (CHECKPOINT, FINAL, METRICS, EVAL):
                (out / name).unlink(missing_ok=True)
        for orphan in remove_orphan_tmp(out):
            tqdm.write(f"removed {orphan}: left by an interrupted checkpoint write")
    except BaseException:
        lock.release()
        raise
    return lock


def raise_together(info: DistInfo, error: Optional[Exception]) -> None:
    """Rank 0 alone touches the run directory; if it failed, every rank raises (instead of the
    others waiting for it at the next collective until the 30-minute timeout)."""
    message = from_main(info, str(error) if error else None)
    if error is None and message is not None:
        raise RunDirError(message)
    if error is not None:
        raise error


def _plain(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _data_identity(data: dict) -> tuple:
    """Where a run's images come from: (resolved data.root, train_split, val_split)."""
    from msdetr_lite.config import DataConfig
    from msdetr_lite.data import resolve_root
    default = DataConfig()
    root = resolve_root(data.get("root", default.root)).resolve()
    return str(root), data.get("train_split", default.train_split), data.get("val_split", default.val_split)


def check_resumable(saved: dict, cfg: Config, ckpt_path: Path, completed: int) -> None:
    """RunDirError unless the checkpoint at `ckpt_path` (its config `saved`, `completed` epochs)
    can continue under `cfg`: the same model fields, the same data (data.root, train_split,
    val_split) and no more epochs done than train.epochs."""
    mismatched = [k for k, v in cfg.to_dict()["model"].items()
                  if k in saved["model"] and _plain(saved["model"][k]) != _plain(v)]
    if mismatched:
        raise RunDirError(f"cannot resume {ckpt_path}: the checkpoint's model config differs in "
                          + ", ".join(f"model.{k} (checkpoint {saved['model'][k]!r}, now "
                                      f"{getattr(cfg.model, k)!r})" for k in mismatched)
                          + "; use the checkpoint's values or --overwrite to start again")
    before, now = _data_identity(saved.get("data", {})), _data_identity(cfg.to_dict()["data"])
    if before != now:
        raise RunDirError(f"cannot resume {ckpt_path}: it was trained on data.root={before[0]} (splits "
                          f"{before[1]!r}, {before[2]!r}), now data.root={now[0]} (splits {now[1]!r}, "
                          f"{now[2]!r}); continue it on its own data, or train into another "
                          f"train.output_dir (--overwrite replaces this run)")
    if completed > cfg.train.epochs:
        raise RunDirError(f"cannot resume {ckpt_path}: it has completed {completed} epochs, more than "
                          f"train.epochs={cfg.train.epochs}; pass train.epochs={completed} or more "
                          f"(or --overwrite to start again)")


def config_changes(saved: dict, cfg: Config) -> dict[str, list]:
    """Non-model fields whose value differs from a checkpoint's config: {"train.lr": [old, new]}.
    Not listed: train.output_dir (where the run lives, e.g. a copied run directory) and fields the
    checkpoint does not have (added later)."""
    changes = {}
    for section, values in cfg.to_dict().items():
        if section == "model":
            continue
        for k, v in values.items():
            old = saved.get(section, {}).get(k, v)
            if _plain(old) != _plain(v) and f"{section}.{k}" != "train.output_dir":
                changes[f"{section}.{k}"] = [old, v]
    return changes


# ---------------------------------------------------------------- metrics.jsonl
def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def keep_metrics_before(path: Path, completed_epochs: int) -> list[dict]:
    """On resume: drop the records of epochs that did not complete (they are re-run) and a torn
    last line; the records of epochs <= completed_epochs (and those without an epoch) stay, one
    JSON record a line. Returns the kept records."""
    if not path.exists():
        return []
    kept = [r for r in read_metrics(path) if r.get("epoch", 0) <= completed_epochs]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")     # a kill mid-write keeps the old file
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    return kept


# ---------------------------------------------------------------- a finished run
def _json_or_none(path: Path) -> Optional[dict]:
    """The JSON object in `path` (runs' reader), or None if it is missing or unreadable."""
    try:
        return read_json_object(path)
    except (OSError, RunFileError):
        return None


def finished_eval(out: Path, completed: int, epochs: int) -> Optional[dict]:
    """eval.json of the run in `out` if it has finished all `epochs` (its checkpoint completed
    them, final.pth and a readable eval.json are there); None if there is still work to do."""
    if completed < epochs or not (out / FINAL).is_file():
        return None
    return _json_or_none(out / EVAL)


def _as_json(cfg: Config) -> dict:
    return json.loads(json.dumps(cfg.to_dict()))         # tuples as lists, as config.json holds them


def same_config(run_dir: Path, cfg: Config) -> bool:
    """Whether run_dir/config.json holds `cfg` (fields missing from an older file take their defaults)."""
    saved = _json_or_none(Path(run_dir) / CONFIG)
    if saved is None:
        return False
    try:
        return _as_json(Config.from_dict(saved)) == _as_json(cfg)
    except ValueError:
        return False


def plan_run(run_dir: Path, cfg: Config, owner: str, overwrite: bool) -> tuple[str, list[str]]:
    """What a command that trains `cfg` into `run_dir` on the user's behalf (the demo) does there,
    decided before any training: ("reuse", []) a finished run of exactly `cfg`; ("resume", []) an
    unfinished run of `cfg` (its checkpoint, if any, is continued); ("train", []) no file of a run there;
    ("replace", []) a run of another config that `owner` wrote and that is unchanged since
    (`outputs.record`), or `overwrite`; ("refuse", problems) anything else."""
    run_dir = Path(run_dir)
    names = run_files(cfg.train)
    if run_dir.is_dir() and not any((run_dir / n).exists() for n in names):
        return "train", []
    if same_config(run_dir, cfg):                  # what this very command would write there
        return ("reuse" if (run_dir / EVAL).is_file() and (run_dir / FINAL).is_file() else "resume"), []
    try:
        check_replace(run_dir, names, owner, overwrite,
                      how=f"it is not a run {owner} trained; pass --overwrite to replace it, or choose another --out")
    except OutputError as e:
        return "refuse", e.problems
    return ("replace" if run_dir.is_dir() else "train"), []
