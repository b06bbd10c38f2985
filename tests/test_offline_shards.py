"""Sharded offline jobs: shards computed apart and merged give the unsharded vectors and
memories, and `starsrec index` merges them into a working serving folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import TINY_OVERRIDES
from starsrec.cli import main
from starsrec.data.dataset import save_prepared
from starsrec.data.files import SHARDS_DIR
from starsrec.data.toyworld import make_toy_world
from starsrec.experiments.artifact import load_config, train_artifact
from starsrec.serving.catalogue import retrieval_vectors
from starsrec.serving.offline import load_offline_inputs, long_term_memories
from starsrec.serving.shards import compute_shard, has_shards, merge_shards


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    data = save_prepared(make_toy_world(n_users=90), root / "data")
    return train_artifact(data, root / "artifact", load_config(None, TINY_OVERRIDES))


def test_sharded_vectors_and_memories_equal_the_whole(artifact) -> None:
    _, recommender, log, _ = load_offline_inputs(artifact)
    for shard in (2, 0, 1):  # any order, any machine
        compute_shard(artifact, 3, shard, progress=False)
    vectors, memories = merge_shards(artifact)
    np.testing.assert_allclose(vectors, retrieval_vectors(recommender), rtol=1e-5, atol=1e-6)
    whole = long_term_memories(recommender, log, progress=False)
    np.testing.assert_allclose(memories, whole, rtol=1e-5, atol=1e-6)
    assert memories.shape == (log.n_users, recommender.model.config.dim)
    shutil.rmtree(artifact / SHARDS_DIR)


def test_index_merges_shards_into_the_same_serving_files(artifact, capsys) -> None:
    assert main(["index", str(artifact)]) == 0
    whole = load_file(artifact / "serving" / "memories.safetensors")["long"]
    users = json.loads((artifact / "serving" / "serving.json").read_text())["users"]

    assert main(["index", str(artifact), "--shards", "2", "--shard", "1"]) == 0
    capsys.readouterr()
    assert main(["index", str(artifact)]) == 2  # shard 0 is missing: refused, named
    assert "shard(s) [0] of 2 missing" in capsys.readouterr().err
    assert main(["index", str(artifact), "--shards", "2", "--shard", "0"]) == 0
    assert main(["index", str(artifact)]) == 0
    assert not has_shards(artifact)  # merged shards are removed: never merged twice
    merged = load_file(artifact / "serving" / "memories.safetensors")["long"]
    np.testing.assert_allclose(merged, whole, rtol=1e-5, atol=1e-6)
    assert json.loads((artifact / "serving" / "serving.json").read_text())["users"] == users
    for name in ("serving.json", "encoder.onnx", "events.sqlite", "index"):
        assert (artifact / "serving" / name).exists(), name


def test_shard_arguments_go_together(artifact, capsys) -> None:
    assert main(["index", str(artifact), "--shards", "2"]) == 2
    assert "--shards N and --shard I go together" in capsys.readouterr().err
    assert main(["index", str(artifact), "--shards", "2", "--shard", "2"]) == 2
    assert "outside" in capsys.readouterr().err


def test_index_with_two_torchrun_ranks_matches_the_whole(artifact) -> None:
    assert main(["index", str(artifact)]) == 0
    whole = load_file(artifact / "serving" / "memories.safetensors")["long"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "starsrec.cli", "index", str(artifact), "--nproc", "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    merged = load_file(artifact / "serving" / "memories.safetensors")["long"]
    np.testing.assert_allclose(merged, whole, rtol=1e-5, atol=1e-6)
    assert not has_shards(artifact)
