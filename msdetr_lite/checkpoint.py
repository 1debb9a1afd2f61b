"""Checkpoints: atomic writes, `weights_only` loads, and RNG state as plain tensors.

A checkpoint is a dict of tensors and primitive containers only, so that it loads with
`torch.load(path, weights_only=True)` (no pickled Python objects run on load):

    {"model": state_dict, "optimizer": ..., "lr_scheduler": ..., "epoch": completed epochs,
     "step": optimizer steps so far, "rng": capture_rng(...), "config": cfg.to_dict(),
     "best_ap": float, "best_epoch": int, "epoch_times": [seconds, ...], "world_size": int}

Writes go to a temporary file in the same directory, then `os.replace` swaps it in: a crash
or Ctrl-C mid-write leaves the previous checkpoint untouched.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def save_checkpoint(path: str | os.PathLike, obj: dict) -> Path:
    """Write `obj` to `path` atomically (tmp file in the same directory + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():                      # only if something failed before the replace
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` (tensors and plain containers only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# ---------------------------------------------------------------- RNG state as tensors
def capture_rng(generators: Optional[dict[str, torch.Generator]] = None) -> dict:
    """RNG state of torch (CPU and CUDA), numpy, python `random` and named torch Generators,
    as tensors / ints / floats (weights_only friendly)."""
    np_state = np.random.get_state()          # ("MT19937", keys[624] uint32, pos, has_gauss, cached)
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generators: Optional[dict[str, torch.Generator]] = None) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    for name, g in (generators or {}).items():
        if name in state.get("generators", {}):
            g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
