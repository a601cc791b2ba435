"""Distributed helpers that fall back to one process.

A run started without ``torchrun`` (no ``WORLD_SIZE`` in the environment) makes no
``torch.distributed`` call at all: rank 0 of 1. Under ``torchrun`` the process group uses NCCL
on CUDA and gloo on CPU; barriers and reductions happen only when it is initialised (unlike the
official code's unconditional ``dist.barrier()``).

Sharding (:func:`micro_batches`) is deterministic and independent of the world size: an epoch
is one seeded permutation cut into global batches of ``batch_size``; each global batch is cut
into ``world * grad_accum`` micro-batches and micro-step ``j`` of rank ``r`` takes chunk
``j * world + r``. So one process with ``grad_accum = 2`` sees exactly the samples that two
processes with ``grad_accum = 1`` see, in the same order, and resuming at step ``s`` of an
epoch skips exactly ``s`` global batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from rasa.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or is_initialized()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: str) -> DistInfo:
    """Join the process group when launched by ``torchrun``; otherwise do nothing."""
    if "WORLD_SIZE" not in os.environ:
        return DistInfo()
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over processes (a copy); identity on one process."""
    if not is_initialized():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


def broadcast_object(obj: object, src: int = 0) -> object:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: object) -> list[object]:
    """``obj`` of every process, in rank order (picklable objects); ``[obj]`` on one process."""
    if not is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def micro_batch_size(batch_size: int, world_size: int, grad_accum: int) -> int:
    """Per-process micro-batch; the global batch must split evenly."""
    parts = world_size * grad_accum
    if batch_size % parts:
        raise ConfigError(
            f"train.batch_size = {batch_size} does not split into {world_size} process(es) x "
            f"{grad_accum} accumulation step(s); choose a multiple of {parts}."
        )
    return batch_size // parts


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of an epoch: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full global batches per epoch (the last partial batch is dropped)."""
    return n // batch_size


def micro_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    grad_accum: int = 1,
    start_step: int = 0,
) -> list[list[list[int]]]:
    """For each optimizer step from ``start_step``: this rank's ``grad_accum`` micro-batches."""
    mb = micro_batch_size(batch_size, world_size, grad_accum)
    perm = epoch_permutation(n, seed, epoch)
    out = []
    for step in range(start_step, steps_per_epoch(n, batch_size)):
        batch = perm[step * batch_size : (step + 1) * batch_size]
        chunks = []
        for j in range(grad_accum):
            c = j * world_size + rank
            chunks.append(batch[c * mb : (c + 1) * mb].tolist())
        out.append(chunks)
    return out
