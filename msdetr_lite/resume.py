"""Continuing a run (`train(..., resume=True)`, `msdetr train --resume`) from its directory.

    restore(run)        # out/checkpoint.pth into the engine's Run: weights, optimizer moments, progress
    keep_logged(run)    # metrics.jsonl kept up to the checkpoint; best AP and the unlogged epoch

What a resume finds, and what it does:
* no checkpoint.pth: it says so and starts from scratch;
* a file that is not a training checkpoint (final.pth or epoch_N.pth copied there, no optimizer
  state), another model config, other data (data.root, splits, categories), more epochs done
  than train.epochs: refused (RunDirError / CheckpointError / DataError), nothing is touched;
* a run that finished all train.epochs (final.pth and eval.json there): nothing to do
  (`run.done` holds its eval.json; the engine says so and writes nothing);
* an epoch trained and checkpointed but never evaluated and logged (interrupted during the
  evaluation): `run.unclosed` holds its record; the engine evaluates and logs it first;
* changed non-model fields (train.lr, train.epochs, ...): printed, kept in a "resume" record,
  applied from the next epoch.
"""
from __future__ import annotations

from msdetr_lite.checkpoint import load_checkpoint, load_weights, require_training
from msdetr_lite.data.coco import check_same_categories
from msdetr_lite.distributed import from_main
from msdetr_lite.rundir import (CHECKPOINT, METRICS, append_jsonl, check_resumable, config_changes, finished_eval,
                                keep_metrics_before)

__all__ = ["restore", "keep_logged"]


def restore(run) -> None:
    """Load out/checkpoint.pth into `run` (weights, optimizer moments, progress), if there is one;
    note a finished run (`run.done`) and the checkpoint's epoch record (`run.unclosed`, cleared
    by `keep_logged` if that epoch was logged)."""
    path = run.out / CHECKPOINT
    if not path.exists():
        run.say(f"--resume: no checkpoint at {path}, starting from scratch")
        return
    ckpt = load_checkpoint(path)
    require_training(ckpt, path)
    check_resumable(ckpt["config"], run.cfg, path, ckpt["epoch"])
    if ckpt.get("categories") not in (None, run.categories):
        check_same_categories(ckpt["categories"], str(path), run.categories, "the training set now")
    load_weights(run.model, ckpt["model"], path)
    # the optimizer state brings the checkpoint's lr / weight decay: apply_schedule resets them
    # from the current config at every epoch start
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.epoch, run.step = ckpt["epoch"], ckpt["step"]
    run.best_ap, run.best_epoch = ckpt.get("best_ap", -1.0), ckpt.get("best_epoch", -1)
    run.epoch_times = list(ckpt.get("epoch_times", []))
    run.last_good = str(path)
    run.unclosed = ckpt.get("epoch_record")
    run.done = from_main(run.dist, finished_eval(run.out, run.epoch, run.cfg.train.epochs) if run.is_main else None)
    if run.done is not None:
        return
    run.changes = config_changes(ckpt["config"], run.cfg)
    run.say(f"resumed from {path}: {run.epoch} epochs, {run.step} steps done")
    for key, (old, new) in run.changes.items():
        run.say(f"  {key}: {old!r} -> {new!r} (applies from epoch {run.epoch + 1})")


def keep_logged(run) -> None:
    """metrics.jsonl kept up to the checkpoint (rank 0 rewrites it), plus a record of changed
    fields; the best AP so far and whether the checkpoint's epoch was logged come from the kept
    records (the checkpoint is written before its epoch's evaluation)."""
    metrics = run.out / METRICS
    kept = keep_metrics_before(metrics, run.epoch) if run.is_main else []
    logged = {r["epoch"]: r for r in kept if r.get("type") == "epoch"}
    for epoch, record in sorted(logged.items()):
        if record.get("eval") and record["eval"]["final"]["AP"] > run.best_ap:
            run.best_ap, run.best_epoch = record["eval"]["final"]["AP"], epoch
    run.best_ap, run.best_epoch = from_main(run.dist, (run.best_ap, run.best_epoch))
    if from_main(run.dist, run.epoch in logged):
        run.unclosed = None
    if run.is_main and run.changes:
        append_jsonl(metrics, {"type": "resume", "epoch": run.epoch, "step": run.step, "changed": run.changes})
