"""Where STARS computes: the device a setting names, and what training does about it.

`TrainConfig.device` (and `starsrec train|evaluate|index --device`) is "auto" (a GPU when
torch sees one, else the CPU), "cpu", "cuda" or "cuda:N"; under torchrun a bare "cuda"
means the GPU of the rank's LOCAL_RANK. On a GPU, training runs its forward pass and loss
under bf16 autocast (weights, optimiser state, checkpoints and scores stay float32), host
tensors reach the GPU through pinned memory without blocking, and the next steps' host
work runs ahead in a thread (`prefetched`). On the CPU the three are no-ops: the float32
code it always was. Either way `reused_host_memory` keeps the freed blocks of one step for
the next.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

import torch

DEVICES = ("auto", "cpu", "cuda")
Item = TypeVar("Item")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device `name` means (see module doc); a ValueError naming the fix when it
    asks for a GPU that torch cannot see, or is not a device starsrec runs on."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: use one of {', '.join(DEVICES)}") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported: use one of {', '.join(DEVICES)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for, but torch sees no GPU (a CPU-only torch build, "
                "or no driver): use --device cpu, or auto to take a GPU only when there is one"
            )
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def mixed_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU that has bf16; nothing elsewhere (see module doc)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host `tensor` on `device`: pinned and copied without blocking to a GPU (the copy
    overlaps the work already queued there); the same tensor on the CPU."""
    if device.type == "cpu":
        return tensor
    if tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


# glibc's mallopt parameters and their defaults (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD = -1, -3, 128 * 1024


@contextlib.contextmanager
def reused_host_memory() -> Iterator[None]:
    """Keep freed host memory in the heap for reuse while the body runs (glibc's malloc;
    a no-op where there is none).

    A training step allocates and frees the same few (positions x candidates) float
    tensors, tens of MB each. glibc serves blocks that large with mmap and unmaps them when
    freed, so every step faulted all their pages in again, which took longer than the
    arithmetic on them (`benchmarks/training_throughput.py`). Raised mmap and trim
    thresholds keep the blocks in the heap. On the way out the thresholds go back to
    glibc's defaults and the free memory to the system. Numbers are unchanged: only where
    the memory comes from differs."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # blocks under 1 GiB from the heap
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)


def prefetched(items: Iterator[Item], depth: int = 2) -> Iterator[Item]:
    """`items` in order, produced up to `depth` ahead by a background thread: host work
    (numpy, mostly outside the GIL) overlapping what the caller queues on a GPU. An
    exception in the producer is raised here, at the item it failed on."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def produce() -> None:
        try:
            for item in items:
                ready.put((item, None))
        except BaseException as error:  # handed to the consumer, raised there
            ready.put((end, error))
        else:
            ready.put((end, None))

    threading.Thread(target=produce, name="starsrec-prefetch", daemon=True).start()
    while True:
        item, error = ready.get()
        if error is not None:
            raise error
        if item is end:
            return
        yield item
