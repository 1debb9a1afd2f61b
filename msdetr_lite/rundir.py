"""The run directory: claiming it, the files a run writes there, and whether a checkpoint may be resumed.

    lock = claim_run_dir(out, resume=False, overwrite=False)   # RunDirError if it holds a run
    check_resumable(ckpt["config"], cfg, path, ckpt["epoch"])
    config_changes(ckpt["config"], cfg)                         # {"train.lr": [old, new], ...}

A directory that holds a run (checkpoint.pth, final.pth or metrics.jsonl) is only continued
(resume) or replaced (overwrite), never silently overwritten. While a run trains, rank 0 holds
the lock `.train.lock` in it (released on any exit; the operating system drops it if the process
dies). metrics.jsonl is read through `msdetr_lite.runs.read_metrics`, the one reader of it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch.distributed as dist
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from msdetr_lite.checkpoint import remove_orphan_tmp
from msdetr_lite.config import Config
from msdetr_lite.distributed import DistInfo
from msdetr_lite.runs import read_metrics

__all__ = ["CHECKPOINT", "FINAL", "SNAPSHOT", "METRICS", "EVAL", "LOCK", "RUN_FILES", "RunDirError", "claim_run_dir",
           "raise_together", "check_resumable", "config_changes", "append_jsonl", "keep_metrics_before"]

CHECKPOINT = "checkpoint.pth"        # last completed epoch: everything needed to resume
FINAL = "final.pth"                  # trained weights + config (what `msdetr eval` reads)
METRICS = "metrics.jsonl"            # one JSON record per logged step and per epoch (+ "resume")
EVAL = "eval.json"                   # final AP per decoder layer
SNAPSHOT = "epoch_{}.pth"            # train.keep_snapshots: weights + config after epoch N
LOCK = ".train.lock"                 # held by the training process while it runs
RUN_FILES = (CHECKPOINT, FINAL, METRICS)   # any of these: the directory holds a run


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked: it holds a run (neither resume nor overwrite),
    another process trains into it, or its checkpoint cannot be resumed with this config."""


def claim_run_dir(out: Path, resume: bool, overwrite: bool) -> FileLock:
    """Create `out`, take its lock and check that this run may write there; returns the held
    lock (release it when the run ends). Removes orphaned checkpoint temporaries; with
    `overwrite`, the previous run's files."""
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
        existing = [name for name in RUN_FILES if (out / name).exists()]
        if existing and not (resume or overwrite):
            raise RunDirError(f"{out} already holds a run ({', '.join(existing)}); continue it with --resume "
                              f"(train(..., resume=True)) or replace it with --overwrite "
                              f"(train(..., overwrite=True))")
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
    if info.enabled:
        message = [str(error) if error else None]
        dist.broadcast_object_list(message, src=0)
        if error is None and message[0] is not None:
            raise RunDirError(message[0])
    if error is not None:
        raise error


def _plain(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def check_resumable(saved: dict, cfg: Config, ckpt_path: Path, completed: int) -> None:
    """RunDirError unless the checkpoint at `ckpt_path` (its config `saved`, `completed` epochs)
    can continue under `cfg`: the same model fields, and no more epochs done than train.epochs."""
    mismatched = [k for k, v in cfg.to_dict()["model"].items()
                  if k in saved["model"] and _plain(saved["model"][k]) != _plain(v)]
    if mismatched:
        raise RunDirError(f"cannot resume {ckpt_path}: the checkpoint's model config differs in "
                          + ", ".join(f"model.{k} (checkpoint {saved['model'][k]!r}, now "
                                      f"{getattr(cfg.model, k)!r})" for k in mismatched)
                          + "; use the checkpoint's values or --overwrite to start again")
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


def keep_metrics_before(path: Path, completed_epochs: int) -> None:
    """On resume: drop the records of epochs that did not complete (they are re-run); the records
    of epochs <= completed_epochs (and those without an epoch) stay, one JSON record a line."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("epoch", 0) <= completed_epochs]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
