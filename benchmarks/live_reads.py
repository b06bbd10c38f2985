"""What a serving worker pays to keep its copy of the live counters (`StoreLive`).

    python benchmarks/live_reads.py                 # 1,000 / 10,000 / 100,000 items with sales

For each size an SQLite event store is filled with three purchases per item (random items,
one second apart, 5,000 shoppers), then a worker's copy is read: in full (every counter, what
a worker did at every refresh before the change sequence), after 20 new events (only the
items they changed), and at a request between reads (the copy decayed to its time). Medians
of 5. Writes benchmarks/results/live_reads.json and prints a table.
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
from starsrec.serving.live_items import StoreLive
from starsrec.serving.store import Event, SQLiteEventStore

RESULTS = Path(__file__).parent / "results"
START = 1_700_000_000.0


def measure(n_items: int, folder: Path, repeats: int = 5) -> dict:
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
    row_of = {f"i{n}": n for n in range(n_items)}
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
    return {"items_with_counts": len(rows), **medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--out", type=Path, default=RESULTS / "live_reads.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="starsrec-live-reads-") as folder:
        rows = [measure(int(n), Path(folder)) for n in args.sizes.split(",")]
    record = {
        "rows": rows,
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "commit": source_revision(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("| items with counts | full read ms | read of 20 changes ms | request between reads ms |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['items_with_counts']:,} | {row['full_ms']:.2f} | {row['changes_ms']:.2f} | "
            f"{row['request_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
