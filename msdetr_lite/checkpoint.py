"""Checkpoints: atomic writes, `weights_only` loads, and a model back from a checkpoint.

A checkpoint is a dict of tensors and primitive containers only, so that it loads with
`torch.load(path, weights_only=True)` (no pickled Python objects run on load):

    {"model": state_dict, "optimizer": ..., "epoch": completed epochs, "step": optimizer steps
     so far, "config": cfg.to_dict(), "best_ap": float, "best_epoch": int,
     "epoch_times": [seconds, ...], "world_size": int,
     "categories": [{"id", "name"}, ...] (the training set's, in label order),
     "epoch_record": the last epoch's metrics record, written before its evaluation}

That is a training checkpoint (checkpoint.pth, what `--resume` needs: `require_training`);
final.pth and epoch_N.pth hold {"model", "config", "epoch", ...} only. Weights that are not
finite (NaN / inf) are refused on load, naming the file.

No RNG state and no scheduler state: the engine derives both from (config, epoch) at the start
of every epoch (see engine.py), so a resumed run needs only the completed-epoch count.

Writes go to a temporary file `.NAME.tmp-PID` in the same directory, then `os.replace` swaps it
in: a crash, Ctrl-C or a full disk mid-write leaves the previous checkpoint untouched (a failed
write is a CheckpointError saying why). A process killed
outright (SIGKILL, power loss) can leave the temporary behind; `remove_orphan_tmp` clears them
(the engine calls it when a run starts, holding the run directory's lock).

    model, cfg = load_model_from_checkpoint("runs/tiny/final.pth")   # eval mode, its config
"""
from __future__ import annotations

import os
import pickle
import re
import resource
import shutil
import zipfile
from pathlib import Path
from typing import Optional

import torch

from msdetr_lite.config import Config, ConfigError
from msdetr_lite.errors import UserError

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-\d+$")


class CheckpointError(UserError, ValueError):
    """A file that is not a usable checkpoint (unreadable, missing entries, weights that do not
    fit the model config or are not finite), or a checkpoint that could not be written."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda if available, else cpu; asking for cuda without it is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"device {name!r} was asked for but CUDA is not available; use cpu (or auto)"])
    return device


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_failure(path: Path, error: Exception) -> str:
    """Why writing `path` failed: the system's reason, else (torch's writer hides errno) a full
    disk or a file-size limit where that is what the numbers say, else torch's message."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return f"the file-size limit (ulimit -f) of {limit} bytes was reached"
    free = shutil.disk_usage(path.parent).free
    if free < 64 * 2**20:
        return f"the disk is full ({free / 2**20:.1f} MiB free)"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def save_checkpoint(path: str | os.PathLike, obj: dict) -> Path:
    """Write `obj` to `path` atomically (tmp file in the same directory + os.replace). A failed
    write (full disk, file-size limit, I/O error) is a CheckpointError; `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"cannot write {path}: {_write_failure(path, e)}; "
                              f"the previous {path.name}, if any, is unchanged") from e
    finally:
        if tmp.exists():                      # only if something failed before the replace
            tmp.unlink()
    return path


def remove_orphan_tmp(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries `save_checkpoint` leaves when its process is killed mid-write
    (`.NAME.tmp-PID` in `directory`); returns what was removed. Call it only while no other
    process can be writing checkpoints into `directory` (the engine holds the run's lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    orphans = [p for p in directory.iterdir() if p.is_file() and _TMP.match(p.name)]
    for p in orphans:
        p.unlink(missing_ok=True)
    return orphans


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` (tensors and plain containers only).
    A missing file raises FileNotFoundError; an unreadable one (truncated, not a torch file,
    pickled objects) CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({first_line})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def _require(ckpt: dict, path, keys) -> None:
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} has no {', '.join(missing)}: not a checkpoint written by msdetr train")


TRAINING_KEYS = ("model", "optimizer", "epoch", "step", "config")


def require_training(ckpt: dict, path) -> None:
    """CheckpointError unless `ckpt` is a training checkpoint (see the module docstring)."""
    missing = [k for k in TRAINING_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (it has no {', '.join(missing)}): "
                              f"final.pth and epoch_N.pth hold weights only; --resume continues from the "
                              f"checkpoint.pth that msdetr train writes after every epoch")


# ---------------------------------------------------------------- a model from a checkpoint
def build_model_from_config(cfg: Config, device: torch.device) -> torch.nn.Module:
    """`models.build_model(cfg.model)` on `device` (train mode, as constructed)."""
    from msdetr_lite.models import build_model
    return build_model(cfg.model).to(device)


def config_from_checkpoint(ckpt: dict, path="checkpoint") -> Config:
    """The Config a checkpoint was trained with."""
    _require(ckpt, path, ("config",))
    try:
        return Config.from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config does not match this version: {e}") from e


def load_weights(model: torch.nn.Module, state_dict: dict, path="checkpoint") -> torch.nn.Module:
    """`model.load_state_dict(state_dict)`; weights that do not fit, or are not finite, are a
    CheckpointError naming the file."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"the weights in {path} are a {type(state_dict).__name__}, not a state dict")
    bad = [k for k, v in state_dict.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN / inf in {len(bad)} tensor(s), e.g. "
                              f"{bad[0]}): a model with them predicts nothing; use an earlier checkpoint")
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"the weights in {path} do not fit the model config "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__} ...)") from e
    return model


def load_model_from_checkpoint(path: str | os.PathLike, cfg: Optional[Config] = None,
                               device: str | torch.device = "auto") -> tuple[torch.nn.Module, Config]:
    """A model in eval mode from `checkpoint.pth` or `final.pth`, with the config it was trained
    with (or `cfg`, if given; its model section must match the weights)."""
    ckpt = load_checkpoint(path)
    _require(ckpt, path, ("model", "config"))
    if cfg is None:
        cfg = config_from_checkpoint(ckpt, path)
    device = resolve_device(device) if isinstance(device, str) else device
    model = load_weights(build_model_from_config(cfg, device), ckpt["model"], path)
    return model.eval(), cfg
