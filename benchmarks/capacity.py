"""Per-unit costs for the capacity plan in docs/scaling.md, measured on a trained artifact.

    python benchmarks/capacity.py --artifact artifacts/ml-scale

Measures, one process and one thread:
- offline throughput: item retrieval vectors per second and long-term user memories u_L
  per second (the artifact's users, repeated to `--users` queries so the rate is steady);
- bytes per stored event in the event stores: SQLite (file size) and Redis (`used_memory`
  growth of a throwaway redis-server, when one is installed), for `--events` synthetic
  events over `--store-users` users, with the artifact's item ids;
- the byte sizes of one item's index row and one user's memory at the artifact's widths.
Writes benchmarks/results/capacity.json and prints it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from starsrec.data.interactions import Queries
from starsrec.experiments.report import machine_description, source_revision
from starsrec.serving.catalogue import retrieval_vectors
from starsrec.serving.offline import load_offline_inputs
from starsrec.serving.store import Event, SQLiteEventStore
from starsrec.stars.recommender import StarsRecommender
from starsrec.stars.sequences import featurize, query_windows

RESULTS = Path(__file__).parent / "results"


def synthetic_events(item_ids: np.ndarray, events: int, users: int) -> list[Event]:
    rng = np.random.default_rng(0)
    items = item_ids[rng.integers(0, len(item_ids), events)]
    return [
        Event(f"e{i}", f"user-{i % users}", str(items[i]), "purchase", 1.7e9 + i)
        for i in range(events)
    ]


def redis_bytes_per_event(events: list[Event], directory: Path) -> float | None:
    """`used_memory` growth per event in a fresh redis-server; None without one."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    import redis

    from starsrec.serving.redis_store import RedisEventStore

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [binary, "--port", str(port), "--save", "", "--appendonly", "yes"]
    process = subprocess.Popen([*command, "--dir", str(directory)], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        before = client.info("memory")["used_memory"]
        store = RedisEventStore(f"redis://127.0.0.1:{port}/0")
        store.load(events, progress=False)
        after = client.info("memory")["used_memory"]
        store.close()
        return (after - before) / len(events)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--store-users", type=int, default=4_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "capacity.json")
    args = parser.parse_args()
    _, recommender, log, _ = load_offline_inputs(args.artifact)
    model = recommender.model

    started = time.perf_counter()
    vectors = retrieval_vectors(recommender)
    item_seconds = time.perf_counter() - started
    repeats = -(-args.users // log.n_users)
    queries = Queries.for_users(log, list(log.user_ids) * repeats)[: args.users]
    started = time.perf_counter()
    memories = _memories(recommender, queries)
    user_seconds = time.perf_counter() - started

    events = synthetic_events(recommender.catalogue.item_ids, args.events, args.store_users)
    with tempfile.TemporaryDirectory() as scratch:
        with SQLiteEventStore(Path(scratch) / "events.sqlite") as store:
            store.load(events, progress=False)
        sqlite_bytes = (Path(scratch) / "events.sqlite").stat().st_size / len(events)
        redis_bytes = redis_bytes_per_event(events, Path(scratch))
    record = {
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "revision": source_revision(),
        "artifact": str(args.artifact),
        "model_dim": model.config.dim,
        "max_length": model.config.max_length,
        "item_row_dims": int(vectors.shape[1]),
        "item_row_bytes": int(vectors.shape[1] * 4),
        "user_memory_bytes": int(memories.shape[1] * 4),
        "items_per_s": round(len(vectors) / item_seconds, 1),
        "user_memories_per_s": round(len(memories) / user_seconds, 1),
        "sqlite_bytes_per_event": round(sqlite_bytes, 1),
        "redis_bytes_per_event": None if redis_bytes is None else round(redis_bytes, 1),
        "store_events": len(events),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def _memories(recommender: StarsRecommender, queries: Queries, batch: int = 256) -> np.ndarray:
    """u_L for arbitrary (repeated) queries: `offline.long_term_memories`' loop without its
    one-query-per-user lookup, so the same users can be counted many times."""
    model = recommender.model
    out = np.zeros((len(queries), model.config.dim), dtype=np.float32)
    with torch.no_grad():
        for lo in range(0, len(queries), batch):
            part = queries[lo : lo + batch]
            rows = query_windows(part, model.config.max_length)
            events = featurize(
                part.log, rows, part.time, recommender.calendar, model.config.session_gap_minutes
            )
            out[lo : lo + len(part)] = model.memories(events)[1][:, -1].numpy()
    return out


if __name__ == "__main__":
    main()
