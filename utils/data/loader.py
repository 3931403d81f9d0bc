"""The loader factory: a seeded, reproducible DataLoader over ``LoadImagesAndLabels`` (DDP sampler under
``torchrun``, persistent workers).
"""
from __future__ import annotations

import os
import random
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, distributed

from utils.data.dataset import LoadImagesAndLabels, collate_fn
from utils.data.files import PathArg

# --------------------------------------------------------------------------- inference sources
from utils.data.sources import LoadImages, LoadStreams  # noqa: F401,E402
from utils.distributed import torch_distributed_zero_first
from utils.log import LOGGER


def seed_worker(worker_id: int) -> None:
    """Seed python/numpy in each worker from torch's per-worker seed (set by the loader's generator)."""
    worker_seed = torch.initial_seed() % 2 ** 32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def create_dataloader(path: PathArg, imgsz: int, batch_size: int, stride: int, single_cls: bool = False,
                      hyp: Optional[dict] = None, augment: bool = False, cache: Union[bool, str] = False,
                      pad: float = 0.0, rect: bool = False, rank: int = -1, workers: int = 8, prefix: str = "",
                      shuffle: bool = False, seed: int = 0, nc: Optional[int] = None):
    """(DataLoader, dataset) with collate_fn, seeded order, persistent workers, DDP sampler when rank != -1.

    The order comes from a generator seeded with ``seed`` (+ rank); each worker seeds python and
    numpy from it (``seed_worker``), so augmentations repeat too. With ``workers=0`` the
    augmentations draw from the process RNGs: call ``utils.general.init_seeds`` first.
    Under DDP call ``loader.sampler.set_epoch(epoch)`` each epoch for a fresh shuffle.
    """
    if rect and shuffle:
        LOGGER.warning(f"{prefix}WARNING: --rect is incompatible with shuffle, setting shuffle=False")
        shuffle = False
    with torch_distributed_zero_first(rank):  # rank 0 builds the label cache first
        dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                      cache_images=cache, single_cls=single_cls, stride=int(stride), pad=pad,
                                      prefix=prefix, nc=nc)
    batch_size = min(batch_size, len(dataset))
    world = torch.distributed.get_world_size() if (rank != -1 and torch.distributed.is_initialized()) else 1
    nw = min((os.cpu_count() or 1) // max(world, 1), batch_size if batch_size > 1 else 0, workers)
    sampler = None if rank == -1 else distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(6148914691236517205 + seed + max(rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, num_workers=nw,
                        sampler=sampler, pin_memory=torch.cuda.is_available(), collate_fn=collate_fn,
                        worker_init_fn=seed_worker, generator=generator, persistent_workers=nw > 0)
    return loader, dataset
