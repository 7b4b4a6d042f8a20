"""DistributedDataParallel bookkeeping: which process this is, its device, and the bare model."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from minivit.devices import get_device


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` and ``DistributedDataParallel`` wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def default_device(rank: int) -> torch.device:
    """:func:`minivit.devices.get_device`; under torchrun, each process's own GPU."""
    device = get_device()
    if device.type == "cuda" and device.index is None and rank_and_world_size()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return device


def init_from_environment() -> int:
    """Join the process group that ``torchrun`` describes in the environment; returns the world size.

    NCCL with CUDA, else gloo, whose processes then share this machine's cores.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "gloo":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return world_size
