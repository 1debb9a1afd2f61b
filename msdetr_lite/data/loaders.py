"""DataLoaders for training and evaluation, single process or one share per torch.distributed rank.

    loader, sampler, generator = build_train_loader(cfg, train_ds, per_rank_batch, rank, world)
    val_loader = build_val_loader(cfg, val_ds, per_rank_batch, rank, world)

`pin_memory=True` (pass it on CUDA) puts batches in page-locked memory, so that the engine's
`.to(device, non_blocking=True)` copies overlap with compute.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, SequentialSampler

from msdetr_lite.config import ConfigError


def seed_worker(worker_id: int) -> None:
    """DataLoader seeds torch in each worker from its generator; derive numpy / random from it."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_train_loader(cfg, dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                       pin_memory: bool = False) -> tuple[DataLoader, DistributedSampler, torch.Generator]:
    """Shuffled batches of `batch_size` images per process (incomplete last batch dropped).

    Returns (loader, sampler, generator): call `sampler.set_epoch(e)` for epoch e's shuffle
    (seed train.seed + e, the same order split over the ranks) and seed `generator` (the
    workers' seeds derive from it) at every epoch start. num_workers: cfg.data.num_workers.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=False)
    batch_sampler = BatchSampler(sampler, batch_size, drop_last=True)
    if len(batch_sampler) == 0:
        raise ConfigError([f"the training split has {len(dataset)} images, fewer than one batch of "
                           f"{batch_size} per process (train.batch_size={cfg.train.batch_size})"])
    generator = torch.Generator()
    loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate,
                        num_workers=cfg.data.num_workers, worker_init_fn=seed_worker,
                        generator=generator, pin_memory=pin_memory)
    return loader, sampler, generator


def build_val_loader(cfg, dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                     pin_memory: bool = False) -> DataLoader:
    """In order; under torch.distributed each rank gets its share (evaluate() gathers them)."""
    sampler = (DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
               if world_size > 1 else SequentialSampler(dataset))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=cfg.data.num_workers, drop_last=False, pin_memory=pin_memory)


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Batch (image [3, H_i, W_i], target) pairs.

    Returns images float [B, 3, H, W] (zero-padded at the bottom/right to the largest H and W;
    zero is the mean colour after normalisation), masks bool [B, H, W] (True on padding) and the
    list of targets unchanged (boxes stay relative to each image's unpadded size).
    """
    if len(batch) == 0:
        raise ValueError("collate got an empty batch")
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    if any(im.ndim != 3 or im.shape[0] != 3 for im in images):
        raise ValueError(f"expected images [3, H, W], got {[tuple(im.shape) for im in images]}")
    H = max(im.shape[1] for im in images)
    W = max(im.shape[2] for im in images)
    out = images[0].new_zeros((len(images), 3, H, W))
    masks = torch.ones((len(images), H, W), dtype=torch.bool)
    for i, im in enumerate(images):
        h, w = im.shape[1:]
        out[i, :, :h, :w] = im
        masks[i, :h, :w] = False
    return out, masks, targets
