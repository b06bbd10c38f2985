"""Index types on the serving benchmark's synthetic catalogue (benchmarks/serving.py: real
products' text plus noise through the model's item path, so many near-tied items).

    python benchmarks/index_types.py --artifact artifacts/demo-stars            # 1M items
    python benchmarks/index_types.py --artifact artifacts/demo-stars --items 100000 \\
        --types "IVF1,PQ{dim}x4fs,RFlat@ip" default

For each type (a factory and a space, `IndexConfig(factories=(factory,), spaces=(space,))`,
built by `ItemIndex.build` with its sweep; "default" is `IndexConfig()` itself): build time,
memory (RSS growth and the faiss file's size), and over the held-out users' queries, one at a
time and one thread, each with 20 excluded rows as a user's history brings: recall@10 against
exact filtered search and `ItemIndex.search` p50/p99 with no filter and 30%, 10% and 1%
filters, as the planner routes them and forced down the other path (exact subset scan or
ANN); beside the floor, a faiss IndexFlatIP scan under the same filters and exclusions as
selectors, as a ratio. Then in-process `recommend` p50/p99 through the service with
benchmarks/serving.py's requests and filters (none, 10%, 1%). Sweep queries are the other
users'. Writes benchmarks/results/index_types.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from serving import (
    latencies,
    latency_summary,
    requests,
    retrieval_vectors,
    rss_mib,
    synthetic_catalogue,
    synthetic_service,
    user_queries,
)
from starsrec.data.files import FAISS_FILE
from starsrec.experiments.report import machine_description, source_revision
from starsrec.index.config import IndexConfig
from starsrec.index.item_index import ItemIndex
from starsrec.serving.service import RecommendationService

RESULTS = Path(__file__).parent / "results"
TYPES = (
    "IVF{nlist},Flat@l2",
    "IVF1,PQ{dim}x4fs,RFlat@ip",
    "IVF1,PQ{dim}x4fs,RFlat@l2",
    "IVF1,RaBitQfs,RFlat@ip",
    "default",
)
EXCLUDED = 20  # rows excluded per query, as a user's own history is
K = 10


def percentiles(milliseconds: list[float]) -> dict:
    return {
        "p50_ms": float(np.percentile(milliseconds, 50)),
        "p99_ms": float(np.percentile(milliseconds, 99)),
    }


def timed(search, queries: np.ndarray, exclude: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    """(found rows, p50/p99 ms) of `search(query, excluded)` one query at a time."""
    found, spent = [], []
    for q in range(len(queries)):
        started = time.perf_counter()
        found.append(search(queries[q : q + 1], exclude[q]))
        spent.append((time.perf_counter() - started) * 1e3)
    return np.concatenate(found), percentiles(spent)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [
        len(set(f[f >= 0]) & set(t[t >= 0])) / max((t >= 0).sum(), 1)
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits))


def floor(vectors: np.ndarray, queries, masks: dict, exclude) -> dict:
    """The exact-scan floor: faiss IndexFlatIP under each filter and the exclusions."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    result = {}
    for name, mask in masks.items():
        bitmap = (
            None if mask is None else faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
        )

        def search(query, banned, bitmap=bitmap):
            batch = faiss.IDSelectorBatch(banned)
            negated = faiss.IDSelectorNot(batch)
            selector = negated if bitmap is None else faiss.IDSelectorAnd(bitmap, negated)
            return flat.search(query, K, params=faiss.SearchParameters(sel=selector))[1]

        result[name] = timed(search, queries, exclude)[1]
    return result


def measure(index: ItemIndex, queries, masks: dict, exclude, truths: dict) -> dict:
    """Per filter: recall@10, p50/p99 ms and the plan of `index.search` as the planner
    routes it, then forced down the other path (exact subset scan or ANN)."""
    result = {}
    routed = index.config
    for name, mask in masks.items():
        exact = index.plan(mask) == "exact"
        forced = dataclasses.replace(routed, exact_subset_rows=0 if exact else index.size)
        result[name] = {}
        for path, config in (("planner", routed), ("forced", forced)):
            index.config = config

            def search(query, banned, mask=mask, scope=name):
                return index.search(query, K, mask, [banned], scope)[0]

            search(queries[:1], exclude[0])  # the scope's first search caches its subset
            found, timing = timed(search, queries, exclude)
            result[name][path] = {
                **timing,
                "recall@10": recall(found, truths[name]),
                "plan": index.plan(mask, name),
            }
        index.config = routed
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("artifacts/demo-stars"))
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300, help="held-out users timed")
    parser.add_argument("--requests", type=int, default=1500, help="recommend calls per type")
    parser.add_argument("--types", nargs="+", default=list(TYPES), help="FACTORY@SPACE or default")
    parser.add_argument("--out", type=Path, default=RESULTS / "index_types.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    base = RecommendationService.load(args.artifact)
    arrays = synthetic_catalogue(base, args.items)
    vectors = retrieval_vectors(base, arrays)
    users = user_queries(base, vectors.shape[1])
    rng = np.random.default_rng(2)
    users = users[rng.permutation(len(users))]
    queries, sweep_queries = users[: args.queries], users[args.queries :]
    real = len(base.items)  # a user's history is real products
    exclude = [np.sort(rng.choice(real, EXCLUDED, replace=False)) for _ in queries]
    # The serving benchmark's filters (serving.FILTERS: class-3 and sub-42), and three
    # classes, which the planner sends to the ANN.
    masks = {
        "none": None,
        "30%": np.isin(arrays["item_class"], [3, 4, 5]),
        "10%": arrays["item_class"] == 3,
        "1%": arrays["subclass"] == 42,
    }
    exact = ItemIndex(vectors, IndexConfig())  # the reference path, scanning every row
    truths = {
        name: exact.exact_search(queries, K, mask, exclude)[0] for name, mask in masks.items()
    }
    del exact
    faiss.omp_set_num_threads(1)
    record = {
        "items": len(vectors),
        "dim": int(vectors.shape[1]),
        "queries": len(queries),
        "load_average_before": os.getloadavg()[0],
        "floor": floor(vectors, queries, masks, exclude),
        "types": [],
    }
    for name in args.types:
        if name == "default":
            config = IndexConfig()
        else:
            factory, space = name.rsplit("@", 1)
            config = IndexConfig(factories=(factory,), spaces=(space,))
        gc.collect()
        rss, started = rss_mib(), time.perf_counter()
        index = ItemIndex.build(vectors, config, queries=sweep_queries, progress=False)
        build_s, grown = time.perf_counter() - started, rss_mib() - rss
        with tempfile.TemporaryDirectory() as tmp:
            faiss_mib = (index.save(tmp) / FAISS_FILE).stat().st_size / 2**20
        service = synthetic_service(base, arrays, index, args.artifact)
        entry = {
            "type": name,
            "kind": index.kind,
            "space": index.space,
            "breadth": index.breadth,
            "k_factor": index.k_factor,
            "build_s": build_s,
            "rss_mib": grown,
            "faiss_mib": faiss_mib,
            "search": measure(index, queries, masks, exclude, truths),
            "recommend": latency_summary(latencies(service, requests(service, args.requests))),
            "sweep": index.sweep,
        }
        record["types"].append(entry)
        print(row_lines(entry, record["floor"]), flush=True)
        del service, index
    record |= {
        "load_average_after": os.getloadavg()[0],
        "artifact": str(args.artifact),
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "commit": source_revision(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(record))


HEAD = (
    "| index (space) | nprobe / k_factor | build s | +RSS / faiss MiB | filter: path | "
    "recall@10 | search p50 / p99 ms | p99 / floor p99 | recommend p50 / p99 ms |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def row_lines(entry: dict, floor_ms: dict) -> str:
    """One type's Markdown rows: one per filter and path, its build on the first."""
    default = " [default]" if entry["type"] == "default" else ""
    build = [
        f"{entry['kind']} ({entry['space']}){default}",
        f"{entry['breadth']} / {entry['k_factor']}",
        f"{entry['build_s']:.0f}",
        f"+{entry['rss_mib']:.0f} / {entry['faiss_mib']:.0f}",
    ]
    lines = []
    for name, paths in entry["search"].items():
        for path, s in paths.items():
            served = entry["recommend"].get(name)  # the serving benchmark's filters only
            cells = [
                *(build if not lines else [""] * len(build)),
                f"{name}: {path} ({s['plan']})",
                f"{s['recall@10']:.4f}",
                f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}",
                f"{s['p99_ms'] / floor_ms[name]['p99_ms']:.2f}",
                f"{served['p50_ms']:.2f} / {served['p99_ms']:.2f}"
                if served and path == "planner"
                else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(record: dict) -> str:
    """The record as Markdown (what docs/benchmarks.md shows)."""
    floor_ms = record["floor"]
    floors = ", ".join(f"{n} {t['p50_ms']:.2f} / {t['p99_ms']:.2f}" for n, t in floor_ms.items())
    head = (
        f"{record['items']:,} items x {record['dim']}, {record['queries']} held-out user "
        f"queries, k = 10, one thread. Floor (faiss IndexFlatIP, same filters and exclusions) "
        f"p50 / p99 ms: {floors}. Load average {record['load_average_before']:.1f} before, "
        f"{record['load_average_after']:.1f} after."
    )
    return "\n".join([head, "", HEAD, *(row_lines(e, floor_ms) for e in record["types"])])


if __name__ == "__main__":
    main()
