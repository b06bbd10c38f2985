"""The offline stage (DESIGN 1.5): `starsrec index ARTIFACT_DIR`.

Writes, inside the artifact's `serving/` folder, everything the online service reads:
- `index/`: every item's retrieval vector [e_i, b_i, onehot(class(i))] in an `ItemIndex`
  (exact search for small catalogues, a faiss index chosen by a recall sweep above that);
- `memories.safetensors`: each user's long-term memory u_L after their whole history (the
  service uses it as is for a dormant user with no event since);
- `events.sqlite`: the event store, seeded with each user's last `history_limit` events;
- `encoder.onnx`: the exported user encoder;
- `serving.json`: event types, the dataset's repeat convention, the users, sizes, timings.
Every file is written to a temporary name and renamed, and the folder is built beside the
final one and swapped in, so an interrupted run never leaves a half-written serving folder.
serving.json, written last, records every file's checksum (the live event store aside) and
the checksum of the model state they were built from; the service verifies both at load.

The two costs that grow with the catalogue and the user base, item vectors and user
memories, can run as shards on many machines first (`starsrec.serving.shards`); this stage
then merges them instead of computing them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from starsrec.data.files import (
    EMBEDDINGS_DIR,
    ENCODER_FILE,
    INDEX_DIR,
    MEMORY_FILE,
    PRODUCTS_FILE,
    SERVING_DIR,
    SERVING_FILE,
    STATE_FILE,
    STORE_FILE,
)
from starsrec.data.integrity import (
    CHECKSUMS_KEY,
    checksums,
    sha256_file,
    write_atomic,
    write_json_atomic,
)
from starsrec.data.interactions import EventLog, Queries
from starsrec.experiments.artifact import artifact_dataset
from starsrec.index.item_index import ItemIndex
from starsrec.serving.catalogue import retrieval_vectors
from starsrec.serving.config import ServingConfig
from starsrec.serving.service import HISTORY_PREFIX
from starsrec.serving.store import Event, SQLiteEventStore
from starsrec.stars.batch import dormant_seconds
from starsrec.stars.export import export_onnx
from starsrec.stars.recommender import StarsRecommender
from starsrec.stars.sequences import featurize, query_windows

logger = logging.getLogger(__name__)


def load_offline_inputs(
    artifact_dir: str | Path, data_dir: str | Path | None = None, device: str = "cpu"
) -> tuple[dict, StarsRecommender, EventLog, bool]:
    """An artifact's meta.json, recommender (on `device`), event log and whether its dataset
    leaves seen items out (`Dataset.exclude_seen`), refusing a dataset that changed since
    training."""
    root = Path(artifact_dir)
    meta, dataset = artifact_dataset(root, data_dir)
    recommender = StarsRecommender.load(root).to(device)
    log = EventLog.from_dataset(dataset, recommender._fitted_catalogue())
    return meta, recommender, log, dataset.exclude_seen


def build_serving(
    artifact_dir: str | Path,
    data_dir: str | Path | None = None,
    config: ServingConfig = ServingConfig(),
    progress: bool = True,
    precomputed: tuple[np.ndarray, np.ndarray] | None = None,
    device: str = "auto",
) -> Path:
    """Run the offline stage for an artifact on the events of its dataset (see module doc),
    computing item vectors and user memories on `device` (`starsrec.stars.device`).

    `precomputed`: every item's retrieval vector and every user's memory (merged shards),
    used instead of computing them here."""
    root = Path(artifact_dir)
    meta, recommender, log, exclude_seen = load_offline_inputs(root, data_dir, device)
    building = root / f"{SERVING_DIR}.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    write_serving_files(
        recommender, log, building, exclude_seen, config, progress, meta["dataset"], precomputed
    )
    final = root / SERVING_DIR
    if (final / PRODUCTS_FILE).exists():  # products put while serving outlive a re-index
        shutil.copy2(final / PRODUCTS_FILE, building / PRODUCTS_FILE)
    if (final / EMBEDDINGS_DIR).is_dir():  # and so do their text embeddings
        shutil.copytree(final / EMBEDDINGS_DIR, building / EMBEDDINGS_DIR)
    old = root / f"{SERVING_DIR}.old"
    if final.exists():
        final.replace(old)
    building.replace(final)
    shutil.rmtree(old, ignore_errors=True)
    logger.info("wrote %s", final)
    return final


def write_serving_files(
    recommender: StarsRecommender,
    log: EventLog,
    out: Path,
    exclude_seen: bool = False,
    config: ServingConfig = ServingConfig(),
    progress: bool = True,
    dataset_name: str = "",
    precomputed: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Index, memories, store, encoder and serving.json for `recommender` with history
    `log`, into directory `out`. Returns the serving.json record (with seconds per step).
    `precomputed`: (item retrieval vectors, user memories) to use instead of computing."""
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.perf_counter()
    if precomputed is None:
        vectors = retrieval_vectors(recommender)
        memories = long_term_memories(recommender, log, progress)
    else:
        vectors, memories = precomputed
        n_items = recommender._fitted_catalogue().size
        if (len(vectors), len(memories)) != (n_items, log.n_users):
            raise ValueError(
                f"precomputed vectors for {len(vectors)} items and memories for "
                f"{len(memories)} users, but the artifact has {n_items} "
                f"items and {log.n_users} users"
            )
    queries = np.concatenate([memories, np.ones((len(memories), 1), np.float32)], axis=1)
    queries = np.pad(queries, ((0, 0), (0, vectors.shape[1] - queries.shape[1])))
    index = ItemIndex.build(vectors, config.index, queries=queries[:2000], progress=progress)
    index.save(out / INDEX_DIR)
    timings["index"] = time.perf_counter() - started

    started = time.perf_counter()
    write_atomic(out / MEMORY_FILE, lambda temporary: save_file({"long": memories}, temporary))
    timings["memories"] = time.perf_counter() - started

    started = time.perf_counter()
    with SQLiteEventStore(out / STORE_FILE) as store:
        store.load(history_events(log, recommender, config.history_limit), progress=progress)
    timings["store"] = time.perf_counter() - started

    started = time.perf_counter()
    export_onnx(recommender.to("cpu")._fitted_model(), out / ENCODER_FILE)  # ONNX Runtime: CPU
    timings["encoder"] = time.perf_counter() - started
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": dataset_name,
        "event_types": [dataclasses.asdict(t) for t in log.event_types],
        "allow_repeats": not exclude_seen,  # the file's name, as dataset.json's
        "items": index.size,
        "index": index.kind,
        "index_breadth": index.breadth,
        "sweep": index.sweep,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "users": [str(u) for u in log.user_ids],
    }
    # Checksums of every file but the live event store, product log and product embeddings,
    # and of the model state they were built from (beside this folder), verified by
    # RecommendationService.load.
    files = [
        p.relative_to(out).as_posix()
        for p in sorted(out.rglob("*"))
        if p.is_file()
        and not p.name.startswith(STORE_FILE)
        and p.name != PRODUCTS_FILE
        and p.relative_to(out).parts[0] != EMBEDDINGS_DIR
    ]
    meta["model_checksum"] = sha256_file(out.parent / STATE_FILE)
    meta[CHECKSUMS_KEY] = checksums(out, files)
    write_json_atomic(out / SERVING_FILE, meta)
    logger.info("serving files: %s", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return meta


@torch.no_grad()
def long_term_memories(
    recommender: StarsRecommender,
    log: EventLog,
    progress: bool = True,
    batch: int = 256,
    users: slice = slice(None),
) -> np.ndarray:
    """(U, D) u_L of every user of `log` (or of the `users` slice) after their last event."""
    model, calendar = recommender._fitted_model(), recommender._fitted_calendar()
    model.eval()
    queries = Queries.for_users(log, list(log.user_ids[users]))
    # Computed as for a request made once the user is dormant: exact for any such request.
    dormant = dormant_seconds(model.config.use_recency, model.config.session_gap_minutes)
    queries.time[:] = queries.time + int(dormant) + 1
    memories = np.zeros((len(queries), model.config.dim), dtype=np.float32)
    for lo in tqdm(range(0, len(queries), batch), desc="user memories", disable=not progress):
        part = queries[lo : lo + batch]
        rows = query_windows(part, model.config.max_length)
        events = featurize(log, rows, part.time, calendar, model.config.session_gap_minutes)
        _, long, _ = model.memories(events.to(model.device))
        memories[lo : lo + len(part)] = long[:, -1].cpu().numpy()
    return memories


def history_events(log: EventLog, recommender: StarsRecommender, limit: int) -> list[Event]:
    """Each user's last `limit` events as store events (ids derived from the log row)."""
    catalogue = recommender._fitted_catalogue()
    names = [t.name for t in log.event_types]
    starts = np.maximum(log.offsets[1:] - limit, log.offsets[:-1])
    keep = np.concatenate(
        [np.arange(a, b) for a, b in zip(starts, log.offsets[1:], strict=True)]
        or [np.empty(0, np.int64)]
    ).astype(np.int64)
    return [
        Event(
            event_id=f"{HISTORY_PREFIX}{row}",
            user_id=str(log.user_ids[log.user[row]]),
            item_id=str(catalogue.item_ids[log.item[row]]),
            event_type=names[log.event_type[row]],
            timestamp=float(log.timestamp[row]),
        )
        for row in keep.tolist()
    ]
