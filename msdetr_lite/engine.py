"""Training: `train(cfg)` sets a run up, then per epoch `train_one_epoch`, checkpoint, evaluation.

    from msdetr_lite.config import preset, apply_overrides
    from msdetr_lite.engine import train
    cfg = apply_overrides(preset("tiny"), ["model.supervision=o2o", "train.epochs=3"])
    summary = train(cfg)                 # writes cfg.train.output_dir/{config.json, metrics.jsonl,
                                         #   checkpoint.pth, final.pth, eval.json}
    train(cfg, on_epoch_end=lambda epoch, s: print(epoch, s["losses"]["loss"]))   # a per-epoch hook

Multi-GPU / multi-node: launch the same command with torchrun, e.g.
    torchrun --nproc_per_node 8 -m msdetr_lite train --preset r50
`train.batch_size` is the total batch over all processes. Only rank 0 writes files or prints.

The pieces it uses live by idea: `distributed.py` (process group, rank averages, synchronised
BatchNorm), `optim.py` (parameter groups, AdamW, lr schedule, clipping), `nonfinite.py` (the
NaN stop), `rundir.py` (claiming the run directory, resumability, metrics.jsonl), `resume.py`
(continuing a run), `checkpoint.py` (atomic saves, weights-only loads) and `data/loaders.py`. A directory
that holds a run is only continued (`resume=True`, `--resume`) or replaced (`overwrite=True`,
`--overwrite`), never silently overwritten. Each epoch is checkpointed before its evaluation.

Reproducibility and resume. Every epoch starts from seeds derived from (seed, epoch, rank):
the sampler's shuffle (seed + epoch, shared by the ranks), torch / numpy / random, the
DataLoader workers and the o2m matcher's generator. This is the one mechanism: epoch e does not
depend on how the run got there, so `--resume` (continue after the last completed epoch)
reproduces an uninterrupted run bit for bit, and checkpoints carry no RNG state.

Learning-rate schedule. Each group's lr is a function of (config, epoch), set at every epoch
start (`apply_schedule`), as is the weight decay. Resuming with changed train.lr, lr_backbone,
lr_linear_proj_mult, lr_drop, weight_decay, epochs (or any other non-model field) applies the new
values from the next epoch on; the changes are printed and kept in a "resume" record of
metrics.jsonl, and config.json holds the new config. Model fields must match the checkpoint.

Host-device synchronisation (nanoGPT's rule). Values are read back from the device at one
marked sync point, on logged steps (every `train.log_every`-th and the last of an epoch), and
once per epoch (the mean losses, accumulated on the device). The other per-step read is
clip_grad_norm_'s non-finite check (one bool), which stops training before a NaN/inf reaches the
weights.
"""
from __future__ import annotations

import contextlib
import json
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from msdetr_lite.checkpoint import build_model_from_config, load_model_from_checkpoint, resolve_device, save_checkpoint
from msdetr_lite.config import Config, ConfigError
from msdetr_lite.data.loaders import build_train_loader, build_val_loader
from msdetr_lite.distributed import DistInfo, init_distributed, maybe_sync_batchnorm, mean_over_ranks, unwrap
from msdetr_lite.nonfinite import NonFiniteLossError, _all_finite, _non_finite
from msdetr_lite.optim import apply_schedule, build_optimizer, clip_gradients, current_lrs
from msdetr_lite.resume import keep_logged, restore
from msdetr_lite.rundir import (CHECKPOINT, CONFIG, EVAL, FINAL, METRICS, SNAPSHOT, RunDirError, append_jsonl,
                                claim_run_dir, raise_together, run_files)

# Moved out of this module (checkpoint.py, data/loaders.py, optim.py, rundir.py); still importable
# from here for zoo.py, report.py, widgets.py, the notebooks and bench/overhead.py.
__all__ = ["train", "train_one_epoch", "setup", "NonFiniteLossError", "RunDirError", "build_optimizer",
           "apply_schedule", "resolve_device", "seed_everything", "build_model_from_config",
           "load_model_from_checkpoint", "build_val_loader"]


# ---------------------------------------------------------------- processes and seeds
def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A well-mixed 32-bit seed for (run seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


# ---------------------------------------------------------------- small pieces
def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(MiB, what it measures): CUDA max allocated since the last reset, or the process's
    peak resident set size on CPU (ru_maxrss, monotonic over the process lifetime)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
            for t in targets]


def _float_tree(x):
    """Cast floating tensors in a nested output structure to float32 (after bf16 autocast)."""
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _float_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_float_tree(v) for v in x)
    return x


def _loss_vector(loss_dict: dict) -> tuple[list[str], torch.Tensor]:
    """(sorted names, float32 [T] detached values) of the criterion's scalar terms."""
    names = sorted(k for k, v in loss_dict.items() if torch.is_tensor(v) and v.numel() == 1)
    return names, torch.stack([loss_dict[k].detach().float().reshape(()) for k in names])


# ---------------------------------------------------------------- setup
@dataclass
class Run:
    """What `setup` builds for one training run, and its progress (restored on resume)."""
    cfg: Config
    device: torch.device
    dist: DistInfo
    out: Path
    train_loader: DataLoader
    sampler: DistributedSampler
    loader_gen: torch.Generator           # seeds the DataLoader workers
    val_loader: DataLoader
    steps_per_epoch: int
    model: torch.nn.Module                # DDP-wrapped under torch.distributed
    criterion: torch.nn.Module
    matcher_gen: torch.Generator          # the o2m matcher's random subsets (CPU)
    optimizer: torch.optim.Optimizer
    params: list
    use_amp: bool
    epoch: int = 0                        # completed epochs
    step: int = 0                         # optimizer steps so far
    best_ap: float = -1.0
    best_epoch: int = -1
    epoch_times: list = field(default_factory=list)
    last_good: Optional[str] = None       # the checkpoint this run can resume from
    changes: dict = field(default_factory=dict)   # on resume: config fields changed since the checkpoint
    categories: list = field(default_factory=list)   # [{"id", "name"}] of the training set, label order
    unclosed: Optional[dict] = None       # on resume: the checkpoint's epoch record, if never evaluated / logged
    done: Optional[dict] = None           # on resume of a finished run: its eval.json (nothing to do)
    doing: str = "starting"               # what the run is doing (for the Ctrl-C message)

    @property
    def raw_model(self) -> torch.nn.Module:
        return unwrap(self.model)

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def say(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else contextlib.nullcontext()


def setup(cfg: Config, info: DistInfo, device: torch.device, resume: bool,
          find_unused_parameters: bool = False) -> Run:
    """Data, model, criterion, optimizer; with `resume`, the state of out/checkpoint.pth."""
    from msdetr_lite.data import build_dataset
    from msdetr_lite.data.coco import check_same_categories
    from msdetr_lite.losses import SetCriterion

    tc = cfg.train
    if tc.batch_size % info.world_size:
        raise ConfigError([f"train.batch_size={tc.batch_size} (the total batch) must be divisible "
                           f"by the number of processes ({info.world_size})"])
    per_rank_batch = tc.batch_size // info.world_size
    seed_everything(tc.seed)                       # identical model init on every rank

    train_ds = build_dataset(cfg.data, "train")
    val_ds = build_dataset(cfg.data, "val")
    check_same_categories(train_ds.categories, str(train_ds.ann_file), val_ds.categories, str(val_ds.ann_file))
    cfg.model.num_classes = train_ds.num_classes
    cfg.model.validate()
    pin = device.type == "cuda"
    train_loader, sampler, loader_gen = build_train_loader(cfg, train_ds, per_rank_batch, info.rank,
                                                           info.world_size, pin_memory=pin)
    val_loader = build_val_loader(cfg, val_ds, per_rank_batch, info.rank, info.world_size, pin_memory=pin)
    steps = len(train_loader)
    if tc.max_steps_per_epoch > 0:
        steps = min(steps, tc.max_steps_per_epoch)

    model = build_model_from_config(cfg, device)
    matcher_gen = torch.Generator()
    criterion = SetCriterion(cfg.model.num_classes, cfg.loss, cfg.matcher, cfg.model.supervision,
                             cfg.model.num_queries, cfg.model.group_num, generator=matcher_gen)
    optimizer = build_optimizer(model, tc)
    run = Run(cfg, device, info, Path(tc.output_dir), train_loader, sampler, loader_gen, val_loader, steps,
              model, criterion, matcher_gen, optimizer, params=[], use_amp=tc.amp and device.type == "cuda",
              categories=train_ds.categories)
    if resume:
        restore(run)

    model = maybe_sync_batchnorm(model, tc, info, device)
    if info.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=find_unused_parameters)
    run.model = model
    run.params = [p for p in run.raw_model.parameters() if p.requires_grad]
    return run


def _start_files(run: Run, resume: bool) -> None:
    """config.json (the config this run trains with) and metrics.jsonl (kept up to the
    checkpoint on resume: `resume.keep_logged`)."""
    if run.is_main:
        (run.out / CONFIG).write_text(json.dumps(run.cfg.to_dict(), indent=2) + "\n")
        if not resume:
            (run.out / METRICS).write_text("")
    if resume:
        keep_logged(run)


# ---------------------------------------------------------------- one epoch
def _is_log_step(it: int, steps: int, log_every: int) -> bool:
    return it % log_every == 0 or it == steps - 1


def _stop_non_finite(run: Run, epoch: int, names: list[str], values: torch.Tensor) -> NonFiniteLossError:
    """The error for a non-finite gradient norm at this step, naming the loss terms that are
    non-finite (averaged over ranks: every rank is here, as DDP made the gradients equal)."""
    named = dict(zip(names, mean_over_ranks(values, run.dist).tolist()))
    terms = _non_finite(named)
    if not terms:
        grads = [p.grad for p in run.params if p.grad is not None]
        terms = {"grad_norm": float(torch.nn.utils.get_total_norm(grads))}
    return NonFiniteLossError(epoch + 1, run.step + 1, terms, run.last_good)


def train_one_epoch(run: Run, epoch: int, progress: bool = True) -> dict:
    """One epoch (0-based `epoch`) of optimizer steps. Returns {"losses": mean of every loss term
    over the epoch's steps and ranks, "steps": steps taken, "epoch_time": seconds}. Logged
    steps go to metrics.jsonl with their own (rank-averaged) losses, lr, grad norm, timing."""
    tc, model, optimizer, device = run.cfg.train, run.model, run.optimizer, run.device
    metrics = run.out / METRICS
    model.train()
    sums, names, n_steps = None, None, 0
    steps_since_log, data_time = 0, 0.0
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}",
               disable=not (progress and run.is_main), dynamic_ncols=True, leave=False)
    t_epoch = t_log = t_data = time.perf_counter()
    for it, (images, masks, targets) in enumerate(run.train_loader):
        if it >= run.steps_per_epoch:
            break
        data_time += time.perf_counter() - t_data
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        targets = targets_to(targets, device)
        with run.autocast():
            outputs = model(images, masks)
        loss_dict = run.criterion(_float_tree(outputs) if run.use_amp else outputs, targets)
        step_names, values = _loss_vector(loss_dict)
        if names is None:
            names, sums = step_names, torch.zeros(len(step_names), dtype=torch.float64, device=values.device)
        elif step_names != names:
            raise RuntimeError(f"the criterion's loss terms changed within an epoch: {names} -> {step_names}")

        optimizer.zero_grad(set_to_none=True)
        loss_dict["loss"].backward()
        try:
            grad_norm = clip_gradients(run.params, tc.clip_max_norm)
        except RuntimeError as e:
            raise _stop_non_finite(run, epoch, names, values) from e
        optimizer.step()
        run.step += 1
        n_steps += 1
        steps_since_log += 1
        sums += values                                  # on the device: no read-back per step

        if _is_log_step(it, run.steps_per_epoch, tc.log_every):
            # sync point: the only per-step read of values from the device (the stream runs
            # up to here, so the time since the last one is what those steps took)
            reduced = torch.cat([mean_over_ranks(values, run.dist), grad_norm.reshape(1).float()])
            *host, grad_norm_value = reduced.tolist()
            logged = dict(zip(names, host))
            now = time.perf_counter()
            if _non_finite(logged):
                raise NonFiniteLossError(epoch + 1, run.step, _non_finite(logged), run.last_good)
            if run.is_main:
                mem, mem_kind = peak_memory_mb(device)
                append_jsonl(metrics, {
                    "type": "step", "epoch": epoch + 1, "iter": it, "step": run.step, "losses": logged,
                    "lr": current_lrs(optimizer), "grad_norm": grad_norm_value,
                    # means over the steps since the previous logged step
                    "step_time": (now - t_log) / steps_since_log, "data_time": data_time / steps_since_log,
                    "peak_mem_mb": mem, "peak_mem_kind": mem_kind})
            bar.set_postfix(loss=f"{logged['loss']:.3f}", lr=f"{current_lrs(optimizer)['default']:.1e}")
            t_log, steps_since_log, data_time = now, 0, 0.0
        bar.update()
        t_data = time.perf_counter()
    bar.close()
    if n_steps == 0:
        return {"losses": {}, "steps": 0, "epoch_time": time.perf_counter() - t_epoch}
    # the epoch's second read: the mean losses (float64 sums over the steps, averaged over ranks)
    means = dict(zip(names, (mean_over_ranks(sums, run.dist) / n_steps).tolist()))
    if _non_finite(means):
        raise NonFiniteLossError(epoch + 1, run.step, _non_finite(means), run.last_good)
    return {"losses": means, "steps": n_steps, "epoch_time": time.perf_counter() - t_epoch}


# ---------------------------------------------------------------- evaluation and checkpoints
def _evaluate(run: Run, progress: bool) -> dict:
    """AP per decoder layer on the val set (all ranks share it; evaluate() gathers, all get the AP),
    NMS-free and, with train.eval_nms_iou, after class-wise NMS; duplicates per image."""
    from msdetr_lite.evaluation import evaluate
    result = evaluate(run.raw_model, run.val_loader, run.device, layers="all", progress=progress and run.is_main,
                      nms_iou=run.cfg.train.eval_nms_iou or None)
    return json.loads(json.dumps(result, default=float))        # plain floats (JSON, checkpoints)


def _maybe_evaluate(run: Run, progress: bool) -> tuple[Optional[dict], float]:
    """(AP per layer, seconds) every train.eval_every epochs and after the last; (None, 0) otherwise.
    Keeps run.best_ap / best_epoch up to date."""
    tc = run.cfg.train
    if not (tc.eval_every > 0 and (run.epoch % tc.eval_every == 0 or run.epoch == tc.epochs)):
        return None, 0.0
    t_eval = time.perf_counter()
    result = _evaluate(run, progress)
    if result["final"]["AP"] > run.best_ap:
        run.best_ap, run.best_epoch = result["final"]["AP"], run.epoch
    return result, time.perf_counter() - t_eval


def _announce(run: Run) -> None:
    tc, info = run.cfg.train, run.dist
    run.say(f"msdetr train: supervision={run.cfg.model.supervision}, "
            f"{sum(p.numel() for p in run.params) / 1e6:.2f}M trainable params, device={run.device} "
            f"x{info.world_size}, batch {tc.batch_size} ({tc.batch_size // info.world_size}/process), "
            f"{len(run.train_loader.dataset)} train images, {run.steps_per_epoch} steps/epoch, "
            f"epochs {run.epoch + 1}..{tc.epochs} -> {run.out}")


def _save_checkpoint(run: Run, record: dict) -> None:
    """out/checkpoint.pth for the completed epochs, atomically, and only with finite weights;
    `record` (the epoch's metrics record, not yet evaluated) goes with it, so that a run
    interrupted during the evaluation evaluates and logs that epoch when resumed."""
    if not _all_finite(run.raw_model.parameters()):
        raise NonFiniteLossError(run.epoch, run.step, {"parameters": float("nan")}, run.last_good)
    path = run.out / CHECKPOINT
    if run.is_main:
        save_checkpoint(path, {
            "model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "epoch": run.epoch, "step": run.step, "config": run.cfg.to_dict(), "best_ap": run.best_ap,
            "best_epoch": run.best_epoch, "epoch_times": run.epoch_times, "world_size": run.dist.world_size,
            "categories": run.categories, "epoch_record": record})
        if run.cfg.train.keep_snapshots:
            save_checkpoint(run.out / SNAPSHOT.format(run.epoch), {
                "model": run.raw_model.state_dict(), "config": run.cfg.to_dict(), "epoch": run.epoch,
                "categories": run.categories})
    run.last_good = str(path)


def _epoch_record(run: Run, result: dict, lrs: dict) -> dict:
    """The metrics record of the epoch just trained, before its evaluation."""
    mem, mem_kind = peak_memory_mb(run.device)
    return {"type": "epoch", "epoch": run.epoch, "step": run.step, "steps": result["steps"],
            "losses": result["losses"], "lr": lrs, "epoch_time": result["epoch_time"], "eval_time": 0.0,
            "eval": None, "peak_mem_mb": mem, "peak_mem_kind": mem_kind}


def _close_epoch(run: Run, record: dict, progress: bool, on_epoch_end) -> Optional[dict]:
    """Evaluate the epoch of `record` (when due), log the record, call the hook; returns the
    evaluation (or None)."""
    run.doing = f"evaluating epoch {run.epoch} (its training is saved in {run.last_good})"
    eval_result, eval_time = _maybe_evaluate(run, progress)
    record = {**record, "eval": eval_result, "eval_time": eval_time}
    if run.is_main:
        append_jsonl(run.out / METRICS, record)
        ap_text = f", AP {eval_result['final']['AP']:.3f}" if eval_result else ""
        run.say(f"epoch {run.epoch}/{run.cfg.train.epochs}: loss "
                f"{record['losses'].get('loss', float('nan')):.4f}, {record['epoch_time']:.1f}s{ap_text}")
    if on_epoch_end is not None and run.is_main:
        on_epoch_end(run.epoch, {
            "epoch": run.epoch, "step": run.step, "losses": record["losses"], "lr": record["lr"],
            "eval": eval_result, "best_ap": run.best_ap, "best_epoch": run.best_epoch,
            "epoch_times": list(run.epoch_times), "checkpoint": run.last_good, "model": run.raw_model})
    return eval_result


def _summary(run: Run, final_eval: dict) -> dict:
    tc, out = run.cfg.train, run.out
    return {"output_dir": str(out), "epochs": tc.epochs, "steps": run.step, "eval": final_eval,
            "best_ap": run.best_ap, "best_epoch": run.best_epoch, "epoch_times": run.epoch_times,
            "checkpoint": str(out / CHECKPOINT), "final": str(out / FINAL), "model": run.raw_model}


def _finish(run: Run, final_eval: Optional[dict], progress: bool) -> dict:
    """final.pth and eval.json; the summary `train` returns."""
    tc, out = run.cfg.train, run.out
    run.doing = f"writing {FINAL} and {EVAL} ({run.last_good} holds all {tc.epochs} epochs)"
    if final_eval is None:
        final_eval = _evaluate(run, progress)
    n_params = sum(p.numel() for p in run.params)
    if run.is_main:
        save_checkpoint(out / FINAL, {"model": run.raw_model.state_dict(), "config": run.cfg.to_dict(),
                                      "epoch": tc.epochs, "eval": final_eval, "categories": run.categories})
        report = {**final_eval, "epoch": tc.epochs, "supervision": run.cfg.model.supervision,
                  "best_ap": run.best_ap, "best_epoch": run.best_epoch, "epoch_times": run.epoch_times,
                  "mean_epoch_time": float(np.mean(run.epoch_times)) if run.epoch_times else None,
                  "trainable_params": n_params, "world_size": run.dist.world_size}
        (out / EVAL).write_text(json.dumps(report, indent=2, default=float) + "\n")
        run.say(f"done: final AP {final_eval['final']['AP']:.4f} -> {out / EVAL}")
    return _summary(run, final_eval)


# ---------------------------------------------------------------- the training loop
EpochHook = Callable[[int, dict], None]


def train(cfg: Config, resume: bool = False, progress: bool = True, find_unused_parameters: bool = False,
          overwrite: bool = False, on_epoch_end: Optional[EpochHook] = None) -> dict:
    """Train `cfg`, evaluating every `train.eval_every` epochs; returns a summary dict:
    output_dir, epochs, steps, eval (final AP per layer), best_ap, best_epoch, epoch_times,
    checkpoint, final, and `model` (the trained, unwrapped nn.Module; not JSON).

    Each epoch is checkpointed before it is evaluated: an interruption during the evaluation
    loses no training, and `resume` evaluates and logs that epoch first.

    resume: continue train.output_dir/checkpoint.pth (a run that has finished all train.epochs is
        left as it is, and says so); overwrite: replace the run there. Without either, a directory
        that holds any file of a run (`rundir.run_files`) is a RunDirError (nothing is touched).
    on_epoch_end(epoch, summary): called on rank 0 after each epoch's checkpoint is written, with
        the completed epoch (1-based) and {"epoch", "step", "losses" (epoch means), "lr",
        "eval" (or None), "best_ap", "best_epoch", "epoch_times", "checkpoint", "model"}.
    """
    if resume and overwrite:
        raise ConfigError(["resume and overwrite exclude each other: --resume continues the run in "
                           "train.output_dir, --overwrite replaces it"])
    cfg.validate()
    tc = cfg.train
    device = resolve_device(tc.device)
    info, device = init_distributed(device)
    out = Path(tc.output_dir)
    lock = None
    try:
        error = None
        if info.rank == 0:
            try:
                lock = claim_run_dir(out, resume, overwrite, run_files(tc))
            except RunDirError as e:
                error = e
        raise_together(info, error)

        run = setup(cfg, info, device, resume, find_unused_parameters)
        if run.done is not None:
            run.say(f"msdetr train: nothing to do: {out} has finished all {tc.epochs} epochs ({FINAL} and "
                    f"{EVAL} are left as they are); to train further, --resume with a larger train.epochs")
            return _summary(run, run.done)
        _start_files(run, resume)
        _announce(run)

        final_eval = None
        try:
            if run.unclosed is not None:             # interrupted while evaluating: that epoch first
                final_eval = _close_epoch(run, run.unclosed, progress, on_epoch_end)
            for epoch in range(run.epoch, tc.epochs):
                run.doing = f"training epoch {epoch + 1} (last good checkpoint: {run.last_good or 'none yet'})"
                _start_epoch(run, epoch)
                lrs = apply_schedule(run.optimizer, tc, epoch)
                result = train_one_epoch(run, epoch, progress)
                run.epoch_times.append(result["epoch_time"])
                run.epoch = epoch + 1
                record = _epoch_record(run, result, lrs)
                _save_checkpoint(run, record)        # before the evaluation: training is never lost to it
                final_eval = _close_epoch(run, record, progress, on_epoch_end)
            return _finish(run, final_eval, progress)
        except KeyboardInterrupt:
            run.say(f"\ninterrupted while {run.doing}.\nResume with the same command plus --resume "
                    f"(e.g. msdetr train ... train.output_dir={out} --resume)")
            raise
    finally:
        if lock is not None:
            lock.release()
        if info.created and dist.is_initialized():
            dist.destroy_process_group()


def _start_epoch(run: Run, epoch: int) -> None:
    """Seeds of (seed, epoch, rank) for everything random in the epoch: resume == uninterrupted."""
    s = epoch_seed(run.cfg.train.seed, epoch, run.dist.rank)
    seed_everything(s)
    run.matcher_gen.manual_seed(s + 1)
    run.loader_gen.manual_seed(s + 2)
    run.sampler.set_epoch(epoch)                 # shuffle with seed + epoch, same on all ranks
    last = run.cfg.loss.o2m_last_epoch           # epochs count from 1 in the config, from 0 here
    run.criterion.o2m_scale = 0.0 if last and epoch >= last else 1.0
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
