"""Data-parallel training under torchrun (`starsrec train --nproc 2`, gloo on loopback):
quality like one process, checkpoints that resume exactly at the same world size and
validly at another, and the sharding helpers."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from starsrec.cli import without_option
from starsrec.data.dataset import save_prepared
from starsrec.data.toyworld import make_toy_world
from starsrec.experiments.artifact import load_config, train_artifact
from starsrec.stars.distributed import shard_range, torchrun_command
from tiny import overrides, tiny

TINY = overrides(
    tiny(
        train={
            "batch_size": 32,
            "uniform_negatives": 16,
            "subclass_negatives": 16,
            "learning_rate": 0.01,
        }
    )
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return save_prepared(make_toy_world(n_users=200), tmp_path_factory.mktemp("toy") / "data")


def train_two_processes(
    data_dir: Path, out: Path, epochs: int, checkpoints: Path, variant: str = "stars"
) -> dict:
    """`starsrec train --nproc 2` in a subprocess; the artifact's meta.json."""
    overrides = [arg for value in [*TINY, f"train.epochs={epochs}"] for arg in ("--set", value)]
    argv = ["train", str(data_dir), *overrides, "--nproc", "2", "--variant", variant]
    argv += ["--checkpoints", str(checkpoints), "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "starsrec.cli", *argv]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "meta.json").read_text())


def test_two_processes_train_as_well_as_one_and_resume_with_one(data_dir, tmp_path) -> None:
    single = train_artifact(
        data_dir, tmp_path / "one", load_config(None, [*TINY, "train.epochs=40"])
    )
    one = json.loads((single / "meta.json").read_text())
    checkpoints = tmp_path / "checkpoints"
    two = train_two_processes(data_dir, tmp_path / "two", 40, checkpoints)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["validation_ndcg@10"] > 0.5  # learned the chains, so the comparison means something
    assert two["validation_ndcg@10"] >= 0.95 * one["validation_ndcg@10"]
    # Both ranks trained every step on half the windows each: the events add up to the
    # single process's (the same windows, the same target positions).
    assert two["history"][0]["events"] == one["history"][0]["events"]

    # The 2-process checkpoint resumes in one process: its history carries over.
    trained = len(two["history"])
    config = load_config(None, [*TINY, f"train.epochs={trained + 2}", "train.patience=100"])
    resumed = train_artifact(data_dir, tmp_path / "resumed", config, checkpoint_dir=checkpoints)
    history = json.loads((resumed / "meta.json").read_text())["history"]
    assert len(history) == trained + 2
    assert [h["validation"] for h in history[:trained]] == [h["validation"] for h in two["history"]]


def test_checkpoints_resume_exactly_at_the_same_world_size(data_dir, tmp_path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_two_processes(data_dir, tmp_path / "a", 2, straight)
    train_two_processes(data_dir, tmp_path / "b", 1, split)
    train_two_processes(data_dir, tmp_path / "c", 2, split)
    expected = load_file(straight / "checkpoint.safetensors")
    actual = load_file(split / "checkpoint.safetensors")
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert (value == actual[key]).all(), key

    # A checkpoint holds the same tensors whatever the world size that wrote it.
    single = tmp_path / "single"
    config = load_config(None, [*TINY, "train.epochs=1"])
    train_artifact(data_dir, tmp_path / "d", config, checkpoint_dir=single)
    shapes = {k: v.shape for k, v in load_file(single / "checkpoint.safetensors").items()}
    assert shapes == {k: v.shape for k, v in expected.items()}


def test_switched_off_components_train_under_ddp(data_dir, tmp_path) -> None:
    """SASRec switches most STARS components off: their parameters get no gradient, which
    DDP only accepts with find_unused_parameters (it raises at the second step otherwise)."""
    meta = train_two_processes(data_dir, tmp_path / "sasrec", 1, tmp_path / "c", "sasrec")
    assert meta["variant"] == "sasrec" and meta["world_size"] == 2
    assert meta["history"][0]["events"] > 0 and 0 <= meta["validation_ndcg@10"] <= 1


def test_shards_cover_every_row_once() -> None:
    for n, world in [(10, 3), (2, 4), (1000, 7), (0, 2)]:
        bounds = [shard_range(n, rank, world) for rank in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="outside"):
        shard_range(10, 3, 3)


def test_the_launcher_strips_its_own_option() -> None:
    argv = ["train", "data", "--nproc", "2", "--out", "a", "--nproc=3"]
    assert without_option(argv, "--nproc") == ["train", "data", "--out", "a"]
    command = torchrun_command(2, ["train", "data"])
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=2" in command and command[-2:] == ["train", "data"]
