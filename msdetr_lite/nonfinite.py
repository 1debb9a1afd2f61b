"""The NaN stop: training halts on a non-finite loss or weight and says how to continue.

The engine checks the logged loss terms (`_non_finite`) and, before every checkpoint, the weights
(`_all_finite`); either raises NonFiniteLossError, which keeps the last good checkpoint.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


class NonFiniteLossError(RuntimeError):
    """Training hit a NaN/inf loss (or gradient norm); the last good checkpoint is kept."""

    def __init__(self, epoch: int, step: int, terms: dict, checkpoint: Optional[str] = None):
        self.epoch, self.step, self.terms, self.checkpoint = epoch, step, dict(terms), checkpoint
        names = ", ".join(f"{k}={v}" for k, v in self.terms.items())
        # resume applies a changed train.lr from the next epoch on (see the module docstring)
        where = (f"the last good checkpoint {checkpoint} is unchanged; lower train.lr (e.g. "
                 f"train.lr=<half the current value>) or check the data, then continue with the same "
                 f"command plus the new value and --resume" if checkpoint else
                 "no checkpoint was written yet; lower train.lr or check the data and start again")
        super().__init__(f"non-finite values at epoch {epoch}, step {step}: {names}; {where}")


def _non_finite(named: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in named.items() if k.startswith("loss") and not math.isfinite(v)}


def _all_finite(params) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())
