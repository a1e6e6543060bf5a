"""Data-parallel training with ``torchrun``: process-group set-up and sharding.

A script launched as ``torchrun --nproc_per_node=N script.py ...`` finds
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment; :func:`setup` joins the
process group (nccl on GPUs, gloo on CPU) and picks this process's device. Launched
plainly, it is a world of one and nothing changes.

Full-graph training is made exactly data-parallel: every rank runs the same forward
pass (same seed, hence the same dropout masks), computes the loss on its shard of the
training nodes scaled by :func:`shard_loss_scale`, and DDP's gradient averaging then
yields the single-process full-batch gradient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistInfo", "setup", "cleanup", "shard", "shard_loss_scale", "all_reduce_sum"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> DistInfo:
    """Join the ``torchrun`` process group if there is one. ``device`` is what the
    user asked for; under torchrun on CUDA each process takes ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {local} has no GPU ({torch.cuda.device_count()} present); "
                f"start at most that many processes per node"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(index: Tensor, info: DistInfo) -> Tensor:
    """This rank's part of ``index``: every ``world_size``-th element from ``rank``."""
    return index[info.rank :: info.world_size]


def shard_loss_scale(total: int, info: DistInfo) -> float:
    """Factor turning a loss summed over this rank's shard into its share of the
    full-batch mean, after DDP averages gradients over ``world_size`` ranks."""
    return info.world_size / max(total, 1)


def all_reduce_sum(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t)
