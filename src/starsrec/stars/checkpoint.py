"""Training checkpoints: safetensors for the tensors, JSON for the rest (never pickles).

One directory holds `checkpoint.safetensors` (the model, the best weights so far, the
AdamW state and the torch RNG streams) and `trainer.json` (the `TrainingState`, the numpy
epoch-order generator and the optimiser's parameter groups), each written to a temporary
name and renamed. Tensors are written from and read into host memory, so a checkpoint
written on a GPU resumes on the CPU and the other way round (exactly on the same device
and world size, validly elsewhere: `starsrec.stars.train`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from starsrec.stars.model import STARS
from starsrec.stars.optim import Optimizers


@dataclass
class TrainingState:
    """What a checkpoint restores besides the weights."""

    epoch: int = 0
    best_metric: float = -math.inf  # any first epoch improves on it (metric may be -loss)
    best_epoch: int = -1
    stale_epochs: int = 0
    history: list[dict] = field(default_factory=list)  # one record per epoch


def save_checkpoint(
    directory: Path,
    model: STARS,
    optimizer: torch.optim.Optimizer | Optimizers,
    state: TrainingState,
    rng: np.random.Generator,
    best_weights: dict[str, torch.Tensor],
) -> None:
    """Write the checkpoint of an epoch's end into `directory` (see module doc)."""
    directory.mkdir(parents=True, exist_ok=True)
    optimizer_state = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best_weights.items()}
    tensors["torch_rng"] = torch.get_rng_state()
    if model.device.type == "cuda":  # dropout and cold-item draws come from the GPU's stream
        tensors["torch_cuda_rng"] = torch.cuda.get_rng_state(model.device)
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
    tensors = {k: v.detach().cpu() for k, v in tensors.items()}  # written from host memory
    meta = {
        "state": asdict(state),
        "numpy_rng": rng.bit_generator.state,
        "param_groups": optimizer_state["param_groups"],
    }
    tmp_tensors, tmp_meta = directory / "checkpoint.tmp", directory / "trainer.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_tensors)
    tmp_meta.write_text(json.dumps(meta))
    tmp_tensors.replace(directory / "checkpoint.safetensors")
    tmp_meta.replace(directory / "trainer.json")


def load_checkpoint(
    directory: Path,
    model: STARS,
    optimizer: torch.optim.Optimizer | Optimizers,
    best_weights: dict[str, torch.Tensor],
) -> tuple[TrainingState, np.random.Generator]:
    """Restore `model`, `optimizer`, `best_weights` and the torch RNG streams in place from
    `directory`; the training state and epoch-order generator to continue with."""
    # Read into host memory whatever device wrote it; load_state_dict copies onto the
    # model's device and the optimiser moves its state to its parameters'.
    tensors = load_file(directory / "checkpoint.safetensors", device="cpu")
    meta = json.loads((directory / "trainer.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best_weights.update({k[5:]: v for k, v in tensors.items() if k.startswith("best.")})
    torch.set_rng_state(tensors["torch_rng"])
    if "torch_cuda_rng" in tensors and model.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["torch_cuda_rng"], model.device)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["numpy_rng"]
    return TrainingState(**meta["state"]), rng
