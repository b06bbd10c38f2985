"""What a serving worker pays for live counts: keeping its copy of the counters
(`StoreLive`) and merging the live items into a request's answer (`with_added`).

    python benchmarks/live_reads.py                 # 1,000 / 10,000 / 100,000 items with sales

For each size an SQLite event store is filled with three purchases per item (random items,
one second apart, 5,000 shoppers) of a catalogue of `--catalogue` rows (default a million,
the serving benchmark's: most products of a large shop sell nothing in a while), then a
worker's copy is read: in full (every counter, what
a worker did at every refresh before the change sequence), after 20 new events (only the
items they changed), and at a request between reads (the copy decayed to its time). Then
the merge, on a synthetic million-row index (Gaussian rows, 85 dimensions, exact top lists)
with that many live rows at random, live terms 0.5 log1p(c_1d) + 0.1 log1p(c_7d) (Online
Retail's fitted weights) of exponential counts: the top 10 merged from an index search of
depth 10 and of depth `LIVE_SEARCH_DEPTH`, with how many live rows each had to score.
Medians of 5 (merge: of 20). Writes benchmarks/results/live_reads.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from starsrec.experiments.report import machine_description, source_revision
from starsrec.index.exact import inner_scores
from starsrec.serving.live_items import LIVE_SEARCH_DEPTH, StoreLive, with_added
from starsrec.serving.store import Event, SQLiteEventStore

RESULTS = Path(__file__).parent / "results"
START = 1_700_000_000.0


def measure(n_items: int, catalogue: int, folder: Path, repeats: int = 5) -> dict:
    """Median milliseconds of a full read, a read of 20 changes and a request between reads."""
    store = SQLiteEventStore(folder / f"events-{n_items}.sqlite")
    items = np.random.default_rng(0).integers(0, n_items, 3 * n_items)
    store.load(
        (
            Event(f"e{n}", f"u{n % 5000}", f"i{item}", "purchase", START + n)
            for n, item in enumerate(items.tolist())
        ),
        progress=False,
    )
    row_of = {f"i{n}": n for n in range(max(n_items, catalogue))}
    live = StoreLive(lambda: store, {"purchase"}, row_of, refresh_s=1.0)
    at = START + 10**6
    times: dict[str, list[float]] = {"full": [], "changes": [], "request": []}
    for repeat in range(repeats):
        live._seq = 0  # the next read takes every counter
        live.invalidate()
        for name, when in (("full", at), ("changes", at + 1), ("request", at + 1.5)):
            if name == "changes":
                new = [Event(f"x{repeat}-{j}", "x", f"i{j}", "purchase", at) for j in range(20)]
                store.append(new)
                live.invalidate()
            started = time.perf_counter()
            rows, _ = live(when)
            times[name].append(time.perf_counter() - started)
        at += 2
    store.close()
    medians = {f"{name}_ms": 1000 * float(np.median(t)) for name, t in times.items()}
    return {"items_with_counts": len(rows), "catalogue": len(row_of), **medians}


def merge_cost(n_live: int, index: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict:
    """Median ms of `with_added` for a top 10 with `n_live` live rows, and rows it scored,
    for an index search of depth 10 and of `LIVE_SEARCH_DEPTH`."""
    vectors, query, base = index
    rng = np.random.default_rng(n_live)
    rows = np.sort(rng.choice(len(vectors), n_live, replace=False))
    counts = rng.exponential(0.3, size=(n_live, 2))
    terms = (0.5 * np.log1p(counts[:, 0]) + 0.1 * np.log1p(counts[:, 1])).astype(np.float32)
    order = np.argsort(-base)
    out: dict = {}
    for depth in (10, LIVE_SEARCH_DEPTH):
        found, skip, spent = order[:depth], np.empty(0, np.int64), []
        for _ in range(20):
            started = time.perf_counter()
            merged, _ = with_added(
                found, base[found], (rows, terms), vectors, query, skip, None, 10
            )
            spent.append(time.perf_counter() - started)
        out[f"depth_{depth}"] = {
            "ms": 1000 * float(np.median(spent)),
            "rows_scored": len(np.setdiff1d(merged, found)),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--catalogue", type=int, default=1_000_000, help="catalogue rows")
    parser.add_argument("--out", type=Path, default=RESULTS / "live_reads.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="starsrec-live-reads-") as folder:
        rows = [measure(int(n), args.catalogue, Path(folder)) for n in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    vectors = (rng.normal(size=(1_000_000, 85)) / np.sqrt(85)).astype(np.float32)
    query = rng.normal(size=85).astype(np.float32)
    index = (vectors, query, inner_scores(query[None], vectors)[0])
    for row in rows:
        row["merge"] = merge_cost(row["items_with_counts"], index)
    record = {
        "rows": rows,
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "commit": source_revision(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    deep = f"depth_{LIVE_SEARCH_DEPTH}"
    print(
        "| items with counts (catalogue) | full read ms | read of 20 changes ms "
        "| request between reads ms "
        f"| merge, search depth 10: ms (rows scored) | merge, depth {LIVE_SEARCH_DEPTH} |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        merge = row["merge"]
        print(
            f"| {row['items_with_counts']:,} ({row['catalogue']:,}) | {row['full_ms']:.2f} | "
            f"{row['changes_ms']:.2f} | "
            f"{row['request_ms']:.2f} | {merge['depth_10']['ms']:.2f} "
            f"({merge['depth_10']['rows_scored']:,}) | {merge[deep]['ms']:.2f} "
            f"({merge[deep]['rows_scored']:,}) |"
        )


if __name__ == "__main__":
    main()
