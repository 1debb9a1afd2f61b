"""The optimizer: the paper's parameter groups, AdamW, the step lr schedule, gradient clipping.

    optimizer = build_optimizer(model, cfg.train)        # groups "default", "backbone", "linear_proj"
    lrs = apply_schedule(optimizer, cfg.train, epoch)    # at every epoch start: lr and weight decay
    grad_norm = clip_gradients(params, cfg.train.clip_max_norm)

The schedule is a function of (config, epoch) only, so a resumed run follows the config it resumes
with and checkpoints hold no scheduler state.
"""
from __future__ import annotations

import torch

from msdetr_lite.distributed import unwrap

__all__ = ["param_group_name", "group_lrs", "build_optimizer", "lr_factor", "apply_schedule", "current_lrs",
           "clip_gradients"]


def param_group_name(name: str) -> str:
    """Which learning-rate group a parameter belongs to (the paper's three groups)."""
    if name.startswith("backbone."):
        return "backbone"
    if "sampling_offsets" in name or "reference_points" in name:
        return "linear_proj"
    return "default"


def group_lrs(train_cfg) -> dict[str, float]:
    """Base learning rate of each parameter group: default lr; backbone lr_backbone; sampling
    offsets and reference points lr * lr_linear_proj_mult."""
    return {"default": train_cfg.lr, "backbone": train_cfg.lr_backbone,
            "linear_proj": train_cfg.lr * train_cfg.lr_linear_proj_mult}


def build_optimizer(model: torch.nn.Module, train_cfg) -> torch.optim.AdamW:
    """AdamW with the paper's parameter groups (`group_lrs`). Frozen parameters
    (requires_grad=False) are left out. Each group carries a `name`."""
    lrs = group_lrs(train_cfg)
    groups: dict[str, list] = {k: [] for k in lrs}
    for name, p in unwrap(model).named_parameters():
        if p.requires_grad:
            groups[param_group_name(name)].append(p)
    param_groups = [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]
    # fused: one kernel over all parameters instead of ~10 ops per tensor; measured on 2 CPU
    # cores with the tiny preset 6.7 ms per step vs 29 ms (the default) - about 8% of a step.
    return torch.optim.AdamW(param_groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, fused=True)


def lr_factor(train_cfg, epoch: int) -> float:
    """The step schedule: x1, then x0.1 from (0-based) epoch `lr_drop` on."""
    return 0.1 if epoch >= train_cfg.lr_drop else 1.0


def apply_schedule(optimizer: torch.optim.Optimizer, train_cfg, epoch: int) -> dict[str, float]:
    """Set every group's lr (group_lrs x lr_factor) and weight decay for `epoch` from the config.
    A function of (config, epoch) only, so a resumed run follows the config it resumes with.
    Returns the lr per group name."""
    base, factor = group_lrs(train_cfg), lr_factor(train_cfg, epoch)
    for g in optimizer.param_groups:
        g["lr"] = base[g["name"]] * factor
        g["weight_decay"] = train_cfg.weight_decay
    return current_lrs(optimizer)


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {g["name"]: g["lr"] for g in optimizer.param_groups}


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip the total gradient norm to `max_norm` (0 = no clipping); returns the norm (a device
    tensor). Raises RuntimeError if the norm is NaN/inf: a non-finite loss gives non-finite
    gradients, and this stops them before optimizer.step() writes them into the weights."""
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"),
                                          error_if_nonfinite=True)
