"""Distributed training helpers for torchrun: rank/world-size from the environment, process group setup.

``torchrun --nproc_per_node N train.py ...`` (or ``python -m torch.distributed.run``) sets
``LOCAL_RANK``, ``RANK`` and ``WORLD_SIZE`` for each process. A plain ``python train.py``
has none of them: every helper here then behaves as a single process (rank -1).
Backend: NCCL when training on CUDA, gloo on CPU.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator

import torch
import torch.distributed as dist


def env_ranks() -> tuple[int, int, int]:
    """(LOCAL_RANK, RANK, WORLD_SIZE) from torchrun's environment; (-1, -1, 1) when not distributed."""
    local_rank = int(os.getenv("LOCAL_RANK", -1))
    rank = int(os.getenv("RANK", -1))
    world_size = int(os.getenv("WORLD_SIZE", 1))
    return local_rank, rank, world_size


LOCAL_RANK, RANK, WORLD_SIZE = env_ranks()


def is_distributed() -> bool:
    """True when this process is a torchrun rank with an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: torch.device, timeout_s: int = 1800) -> None:
    """Create the default process group for this torchrun rank: NCCL on CUDA, gloo on CPU.

    ``device`` must already be the rank's own device (``cuda:LOCAL_RANK`` on GPUs).
    A no-op when not launched by torchrun or when the group already exists. A single-rank torchrun
    (``--nproc_per_node 1``) gets a group too: the rest of DDP training (broadcasts, DDP wrap) expects one.
    """
    if RANK == -1 or is_distributed():
        return
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build; cannot run DDP")
    if device.type == "cuda":
        if torch.cuda.device_count() <= LOCAL_RANK:
            raise RuntimeError(f"LOCAL_RANK {LOCAL_RANK} has no CUDA device "
                               f"(only {torch.cuda.device_count()} visible); reduce --nproc_per_node")
        torch.cuda.set_device(device)
        backend = "nccl" if dist.is_nccl_available() else "gloo"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


@contextlib.contextmanager
def torch_distributed_zero_first(local_rank: int) -> Iterator[None]:
    """Let the local main process do something first (dataset generation, label caching); others wait."""
    if local_rank not in (-1, 0) and is_distributed():
        dist.barrier()
    yield
    if local_rank == 0 and is_distributed():
        dist.barrier()


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Element-wise max of ``x`` over all ranks, in place (identity in a single process)."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def cleanup() -> None:
    """Destroy the process group if one exists."""
    if is_distributed():
        dist.destroy_process_group()
