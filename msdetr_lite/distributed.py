"""Processes: joining torchrun's process group, averaging over ranks, synchronised BatchNorm.

    info, device = init_distributed(torch.device("cuda"))    # DistInfo(rank, world_size, local_rank)
    model = maybe_sync_batchnorm(model, cfg.train, info, device)

Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op: one process, DistInfo().
`train.batch_size` is the total batch over all processes (engine.setup divides it).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistInfo", "init_distributed", "unwrap", "mean_over_ranks", "from_main", "CpuSyncBatchNorm2d",
           "maybe_sync_batchnorm"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False            # we called init_process_group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    nccl on CUDA (one GPU per process: cuda:LOCAL_RANK), gloo on CPU. Without torchrun (no
    WORLD_SIZE or WORLD_SIZE=1) this is a no-op. An already initialised group is reused.
    """
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    else:
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world <= 1:
            return DistInfo(), device
        info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)), created=True)
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        # 30 min: room for rank 0 writing a large checkpoint while the others move on
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return info, device


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def mean_over_ranks(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """x averaged over the processes (a collective: every rank must call it); x itself unchanged."""
    if not info.enabled:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / info.world_size


def from_main(info: DistInfo, value):
    """Rank 0's `value` on every rank (a collective under torch.distributed: every rank calls it;
    picklable values); `value` itself in one process."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- synchronised BatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the backward also sums the incoming gradients over the ranks (every
    rank's loss depends on the summed value)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover the batch of every process, for CPU
    (gloo) runs: torch's SyncBatchNorm runs on GPUs only. Same maths as BatchNorm2d on the
    concatenated batch: mean and biased variance per channel for normalising, the unbiased
    variance for the running estimate. The sums go through _AllReduceSum, so each rank's input
    also gets the gradient of the global statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:           # x [N, C, H, W]
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims, per_channel = (0, 2, 3), (1, -1, 1, 1)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype)
        dist.all_reduce(count)                                     # elements per channel, all ranks
        mean = all_reduce(x.sum(dims)) / count
        centered = x - mean.view(per_channel)
        var = all_reduce((centered * centered).sum(dims)) / count  # two passes: no cancellation
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * count / max(float(count) - 1, 1.0))
        y = centered * torch.rsqrt(var + self.eps).view(per_channel)
        return y * self.weight.view(per_channel) + self.bias.view(per_channel) if self.affine else y


def _cpu_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm2d below `module` by a CpuSyncBatchNorm2d that shares its
    parameters and buffers (the same tensors: an optimizer built before still updates them)."""
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            sync = CpuSyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            for key, param in child.named_parameters(recurse=False):
                setattr(sync, key, param)
            for key, buffer in child.named_buffers(recurse=False):
                setattr(sync, key, buffer)
            setattr(module, name, sync.train(child.training))
        else:
            _cpu_sync_batchnorm(child)
    return module


def maybe_sync_batchnorm(model: torch.nn.Module, train_cfg, info: DistInfo,
                         device: torch.device) -> torch.nn.Module:
    """With train.sync_bn under DDP (more than one process), BatchNorm layers (backbone_norm=bn)
    use the batch statistics of all processes: torch's SyncBatchNorm on CUDA, CpuSyncBatchNorm2d
    on CPU. Otherwise the model unchanged: one process, or frozen_bn (nothing is estimated)."""
    if not (train_cfg.sync_bn and info.enabled):
        return model
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _cpu_sync_batchnorm(model)
