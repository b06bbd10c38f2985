"""Distributed plumbing (DESIGN 4): process groups from `torchrun`, sharding, lockstep.

The training and offline code calls the helpers here and runs unchanged at world size 1:
with no process group every helper is a no-op (barrier), an identity (broadcast, sums) or
the whole range (shards). Under `torchrun` (or `starsrec ... --nproc N`, which re-launches
itself through `torch.distributed.run`) the environment carries RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address; `init_from_environment` joins the group with gloo
on CPU, or NCCL when the model runs on CUDA (`starsrec train --device`), each rank on the
GPU of its LOCAL_RANK.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rank:
    """Where this process stands in its group: `rank` of `world_size` (0 of 1 alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the rank that writes checkpoints, artifacts and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when the group has more than one process."""
        return self.world_size > 1


def current() -> Rank:
    """This process's rank in the initialised default group, or `Rank()` without one."""
    if dist.is_available() and dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size())
    return Rank()


def launched_by_torchrun() -> bool:
    """True in a worker process started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_environment(use_cuda: bool = False) -> Rank:
    """Join the process group torchrun describes in the environment (once); `Rank()` when
    the process was not started by torchrun. One torch thread per rank: ranks already
    use the cores, and oversubscribed intra-op threads only slow each other down."""
    if not launched_by_torchrun():
        return current()
    if not dist.is_initialized():
        backend = "nccl" if use_cuda and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        torch.set_num_threads(1)
        logger.info(
            "rank %d of %d joined the %s group", dist.get_rank(), dist.get_world_size(), backend
        )
    return current()


def shutdown() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op without a group)."""
    if current().distributed:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first and on the other ranks after it: for work that fills a
    shared cache (text embeddings), so the others read it instead of racing to write it."""
    rank = current()
    if not rank.is_main:
        barrier()
    yield
    if rank.is_main:
        barrier()


def broadcast_float(value: float) -> float:
    """Rank 0's `value` on every rank (identity without a group)."""
    if not current().distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """The element-wise sum of `values` over all ranks (the values without a group)."""
    if not current().distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def _collective_device() -> torch.device:
    """Where a collective's tensors must live: this rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of contiguous shard `rank` of `world_size` over `n` rows: sizes differ
    by at most one, and concatenating the shards in rank order gives 0..n."""
    if not 0 <= rank < world_size:
        raise ValueError(f"shard {rank} is outside 0..{world_size - 1}")
    bounds = np.linspace(0, n, world_size + 1).round().astype(np.int64)
    return int(bounds[rank]), int(bounds[rank + 1])


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The command that runs `starsrec *argv` as `nproc` local processes under torchrun
    (`--standalone`: a local rendezvous on a free port)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "starsrec.cli",
        *argv,
    ]


def relaunch(nproc: int, argv: Sequence[str]) -> int:
    """Run `starsrec *argv` under torchrun with `nproc` local processes; its exit status.
    Each worker gets OMP_NUM_THREADS=1 unless the caller set it (torchrun's default too)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    command = torchrun_command(nproc, argv)
    logger.info("launching: %s", " ".join(command))
    return subprocess.run(command, env=env, check=False).returncode
