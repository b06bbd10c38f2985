"""Sharded offline jobs: item retrieval vectors and user memories computed in pieces.

`starsrec index ARTIFACT --shards N --shard I` (one job per shard, on any machines that see
the artifact) writes `serving.shards/shard-I-of-N.safetensors` inside the artifact: the
retrieval vectors of item rows [a, b) and the long-term memories u_L of user rows [c, d),
contiguous ranges from `distributed.shard_range`, with the ranges, the totals and the
dataset fingerprint in the file's metadata. Once all N exist, `starsrec index ARTIFACT`
merges them in range order, builds the index and the rest of `serving/` from the merged
arrays (see `starsrec.serving.offline`) and removes the shards, so a later retrain cannot meet
stale ones. `starsrec index ARTIFACT --nproc N` runs the same as N torchrun ranks (shard =
rank) followed by the merge on rank 0.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from starsrec.data.files import META_FILE, SHARDS_DIR
from starsrec.serving.config import ServingConfig
from starsrec.serving.offline import build_serving, load_offline_inputs, long_term_memories
from starsrec.stars.batch import slot_of
from starsrec.stars.distributed import shard_range
from starsrec.stars.recommender import StarsRecommender

logger = logging.getLogger(__name__)


def shard_path(artifact_dir: str | Path, shards: int, shard: int) -> Path:
    """Where shard `shard` of `shards` lives inside the artifact."""
    return Path(artifact_dir) / SHARDS_DIR / f"shard-{shard:05d}-of-{shards:05d}.safetensors"


@torch.no_grad()
def item_vectors_range(recommender: StarsRecommender, start: int, stop: int) -> np.ndarray:
    """(stop - start, D + 1 + n_classes) retrieval vectors of catalogue rows [start, stop):
    the rows `catalogue.retrieval_vectors` gives for the whole catalogue."""
    model = recommender._fitted_model()
    model.eval()
    item_slots = slot_of(torch.arange(start, stop, device=model.device))
    item_class = torch.from_numpy(recommender.features["item_class"][start:stop].astype(np.int64))
    bias = model.item_biases()[start:stop]
    vectors = model.item_vectors(item_slots)
    return model.retrieval_items(vectors, bias, item_class.to(model.device)).cpu().numpy()


def compute_shard(
    artifact_dir: str | Path,
    shards: int,
    shard: int,
    data_dir: str | Path | None = None,
    progress: bool = True,
    device: str = "auto",
) -> Path:
    """Compute and write shard `shard` of `shards` (see module doc) on `device`; its path."""
    meta, recommender, log, _ = load_offline_inputs(artifact_dir, data_dir, device)
    n_items, n_users = recommender._fitted_catalogue().size, log.n_users
    items = shard_range(n_items, shard, shards)
    users = shard_range(n_users, shard, shards)
    vectors = item_vectors_range(recommender, *items)
    memories = long_term_memories(recommender, log, progress, users=slice(*users))
    path = shard_path(artifact_dir, shards, shard)
    path.parent.mkdir(exist_ok=True)
    header = {
        "shards": shards,
        "shard": shard,
        "items": list(items),
        "users": list(users),
        "n_items": n_items,
        "n_users": n_users,
        "fingerprint": meta["fingerprint"],
    }
    temporary = path.with_suffix(".tmp")
    save_file(
        {"items": vectors, "memories": memories}, temporary, metadata={"shard": json.dumps(header)}
    )
    temporary.replace(path)
    logger.info(
        "shard %d of %d: items [%d, %d), users [%d, %d) -> %s", shard, shards, *items, *users, path
    )
    return path


def has_shards(artifact_dir: str | Path) -> bool:
    """True when the artifact holds shard files waiting to be merged."""
    folder = Path(artifact_dir) / SHARDS_DIR
    return folder.is_dir() and any(folder.glob("shard-*.safetensors"))


def merge_shards(artifact_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, D') item vectors and (U, D) user memories concatenated from a complete set of
    shards; a ValueError naming what is missing or inconsistent otherwise."""
    root = Path(artifact_dir)
    meta = json.loads((root / META_FILE).read_text())
    headers, vectors, memories = [], [], []
    for path in sorted((root / SHARDS_DIR).glob("shard-*.safetensors")):
        with safe_open(path, framework="numpy") as handle:
            headers.append(json.loads(handle.metadata()["shard"]))
            vectors.append(handle.get_tensor("items"))
            memories.append(handle.get_tensor("memories"))
    counts = {h["shards"] for h in headers}
    if len(counts) != 1:
        raise ValueError(f"{root / SHARDS_DIR} mixes shard sets of sizes {sorted(counts)}")
    (shards,) = counts
    missing = sorted(set(range(shards)) - {h["shard"] for h in headers})
    if missing:
        raise ValueError(
            f"{root / SHARDS_DIR}: shard(s) {missing} of {shards} missing; run "
            f"`starsrec index {root} --shards {shards} --shard I` for each"
        )
    if any(h["fingerprint"] != meta["fingerprint"] for h in headers):
        raise ValueError(f"{root / SHARDS_DIR} holds shards of another dataset version")
    for header, rows, name in [(h, "items", "n_items") for h in headers] + [
        (h, "users", "n_users") for h in headers
    ]:
        expected = shard_range(header[name], header["shard"], shards)
        if tuple(header[rows]) != expected:
            raise ValueError(
                f"shard {header['shard']} covers {rows} {header[rows]}, not {expected}"
            )
    return np.concatenate(vectors), np.concatenate(memories)


def build_serving_from_shards(
    artifact_dir: str | Path,
    data_dir: str | Path | None = None,
    config: ServingConfig = ServingConfig(),
    progress: bool = True,
) -> Path:
    """Merge the shards, build `serving/` from them, then remove the shards."""
    precomputed = merge_shards(artifact_dir)
    out = build_serving(artifact_dir, data_dir, config, progress, precomputed=precomputed)
    shutil.rmtree(Path(artifact_dir) / SHARDS_DIR)
    return out
