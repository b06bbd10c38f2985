"""Artifact directories: train STARS into one, evaluate one in the shared harness.

An artifact holds what `Recommender.save` writes: config.json, state.safetensors,
items.parquet, calendar.json, and last meta.json with their checksums (verified at load,
`starsrec.data.integrity`). meta.json also records the dataset it was trained on (path and a
fingerprint of its tables), the protocol, the variant, validation metrics and the training
history, so `starsrec evaluate ARTIFACT_DIR` can rebuild the same split and
refuse a dataset that changed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from starsrec.data.dataset import DataError, Dataset, load_prepared
from starsrec.data.files import META_FILE
from starsrec.data.integrity import ArtifactError, read_manifest
from starsrec.data.splits import default_protocol, split_dataset
from starsrec.experiments.report import evaluation_record, machine_description, training_data
from starsrec.stars import distributed
from starsrec.stars.recommender import StarsConfig, StarsRecommender
from starsrec.stars.variants import stars_variant

logger = logging.getLogger(__name__)


def fingerprint(dataset: Dataset) -> str:
    """A short hash of the events and items tables (content, not file bytes)."""
    digest = hashlib.sha256()
    for table in (dataset.events, dataset.items):
        digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def load_config(path: str | Path | None, overrides: list[str]) -> StarsConfig:
    """A StarsConfig from an optional JSON file and `key=value` overrides, where key may be
    dotted (`model.dim=128`, `train.epochs=10`) and value is JSON (or a plain string)."""
    values: dict[str, Any] = json.loads(Path(path).read_text()) if path else {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {override!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    try:
        return StarsConfig(**values)
    except TypeError as error:
        raise ValueError(f"bad STARS config: {error}") from error


def train_artifact(
    data_dir: str | Path,
    out_dir: str | Path,
    config: StarsConfig = StarsConfig(),
    protocol: str | None = None,
    variant: str = "stars",
    checkpoint_dir: str | Path | None = None,
) -> Path:
    """Train a STARS variant on a prepared dataset and write the artifact directory.

    With `checkpoint_dir`, training checkpoints there every epoch and resumes from the
    checkpoint it finds. In a process group every rank trains (see `starsrec.stars.train`) and
    rank 0 alone writes the artifact while the others wait for it."""
    dataset = load_prepared(data_dir)
    protocol = protocol or default_protocol(dataset)  # None: see `default_protocol`
    split = split_dataset(dataset, protocol)
    model = stars_variant(variant, config)
    model.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    started = time.perf_counter()
    model.fit(training_data(dataset, split, dataset.exclude_seen))
    train_s = time.perf_counter() - started
    rank = distributed.current()
    if not rank.is_main:
        distributed.barrier()
        return Path(out_dir)
    state = model.training_state
    assert state is not None  # fit sets it
    meta = {
        "dataset": dataset.name,
        "data_dir": str(Path(data_dir).resolve()),
        "fingerprint": fingerprint(dataset),
        "protocol": protocol,
        "variant": variant,
        "seed": model.config.seed,
        "best_epoch": state.best_epoch,
        "validation_ndcg@10": state.best_metric,
        "history": state.history,
        "train_s": round(train_s, 3),
        "world_size": rank.world_size,
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "config": dataclasses.asdict(model.config),
    }
    out = model.save(out_dir, meta)
    logger.info("wrote artifact %s (validation ndcg@10 %.4f)", out, meta["validation_ndcg@10"])
    distributed.barrier()
    return out


def is_artifact(path: str | Path) -> bool:
    """Whether `path` is an artifact directory (holds a meta.json)."""
    return (Path(path) / META_FILE).exists()


def artifact_dataset(
    artifact_dir: str | Path, data_dir: str | Path | None = None
) -> tuple[dict, Dataset]:
    """(meta.json, the prepared dataset it was trained on), refusing a changed dataset."""
    root = Path(artifact_dir)
    remedy = f"train it with `starsrec train DATA_DIR --out {root}`"
    meta = read_manifest(root / META_FILE, remedy)
    if not {"data_dir", "fingerprint", "dataset"} <= meta.keys():
        raise ArtifactError(f"{root}/{META_FILE} has no training record: {remedy}")
    dataset = load_prepared(data_dir or meta["data_dir"])
    if fingerprint(dataset) != meta["fingerprint"]:
        raise DataError(
            f"{root} was trained on another version of dataset {meta['dataset']!r} "
            f"(fingerprint {meta['fingerprint']}, now {fingerprint(dataset)}); retrain it"
        )
    return meta, dataset


def evaluate_artifact(
    artifact_dir: str | Path,
    data_dir: str | Path | None = None,
    device: str = "auto",
    new_item_slots: int = 0,
    new_to: str = "catalogue",
) -> dict:
    """Evaluate an artifact on the test queries of the split it was trained with, scoring
    on `device` (`starsrec.stars.device`), with `new_item_slots` places kept for items new
    to the catalogue or the shopper (`new_to`; `EvaluationConfig`)."""
    root = Path(artifact_dir)
    meta, dataset = artifact_dataset(root, data_dir)
    split = split_dataset(dataset, meta["protocol"])
    model = StarsRecommender.load(root).to(device)
    return evaluation_record(
        model,
        meta["variant"],
        meta["seed"],
        dataset,
        split,
        dataset.exclude_seen,
        meta["train_s"],
        new_item_slots=new_item_slots,
        new_to=new_to,
    )
