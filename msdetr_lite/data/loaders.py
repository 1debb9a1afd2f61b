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
    from msdetr_lite.data import collate
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
    from msdetr_lite.data import collate
    sampler = (DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
               if world_size > 1 else SequentialSampler(dataset))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=cfg.data.num_workers, drop_last=False, pin_memory=pin_memory)
