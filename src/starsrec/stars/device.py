"""Where STARS computes: the device a setting names, and the two things that differ on it.

`TrainConfig.device` (and `starsrec train|evaluate|index --device`) is "auto" (a GPU when
torch sees one, else the CPU), "cpu", "cuda" or "cuda:N"; under torchrun a bare "cuda"
means the GPU of the rank's LOCAL_RANK. On a GPU, training runs its forward pass and loss
under bf16 autocast (weights, optimiser state, checkpoints and scores stay float32) and
host tensors reach the GPU through pinned memory without blocking. On the CPU both are
no-ops, so the CPU path is the float32 code it always was, bit for bit.
"""

from __future__ import annotations

import contextlib
import os

import torch

DEVICES = ("auto", "cpu", "cuda")


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
