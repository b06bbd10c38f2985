"""Serving benchmark: a trained artifact's real model, encoder and event store, serving a
synthetic catalogue of `--items` products (default 1,000,000) at the model width.

    python benchmarks/serving.py --artifact artifacts/demo-stars           # about 5 minutes
    python benchmarks/serving.py --artifact artifacts/demo-stars --items 100000 --duration 10
    python benchmarks/serving.py --artifact artifacts/demo-stars --items 0   # its own catalogue

The synthetic products keep the real catalogue's geometry: each is a real product's text
embedding plus noise, turned into a token by the model's own item path (like any product
added after training). Every row gets one of 10 classes and one of 100 subclasses, so a
class filter keeps 10% of the catalogue and a subclass filter 1%.

Measures: index build time and memory; in-process `recommend` latency p50/p99 with no
filter, 10% and 1% filters (each request carries two live session events, so the encoder
runs); recall@10 of the index against exact filtered search; then the same mix over HTTP on
loopback with `wrk` for `--duration` seconds, served as `starsrec serve --workers N` serves
(`--workers 1,2`, one thread each) at 1, 4 and 8 connections: p50/p99, requests/s and
errors, each server process's CPU seconds per run (whether every worker took a share of the
connections), and the server's memory (RSS and PSS of the parent and each worker). Writes
benchmarks/results/serving.json, the empirical CDF of the in-process latencies as
benchmarks/results/figures/serving-latency-{items}.png (the record's "latency_figure"), and
prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from starsrec.data.files import SERVING_DIR, SERVING_FILE
from starsrec.experiments.plots import latency_cdf
from starsrec.experiments.report import machine_description, source_revision
from starsrec.index.config import IndexConfig
from starsrec.index.item_index import ItemIndex
from starsrec.serving.catalogue import ItemTable
from starsrec.serving.product_tokens import new_product_bias
from starsrec.serving.request import FiltersIn
from starsrec.serving.service import RecommendationService
from starsrec.serving.store import Event

RESULTS = Path(__file__).parent / "results"
CLASSES, SUBCLASSES = 10, 100
FILTERS = {
    "none": FiltersIn(),
    "10%": FiltersIn(classes=["class-3"]),
    "1%": FiltersIn(subclasses=["sub-42"]),
}
logger = logging.getLogger("serving-benchmark")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_mib(pid: int) -> dict[str, float]:
    """{"rss", "pss"} of a process in MiB: resident, and proportional (each shared page
    divided among the processes sharing it, so a sum over processes counts it once)."""
    sizes = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            sizes[name.lower()] = int(rest.split()[0]) / 1024
    return sizes


def server_processes(pid: int) -> list[int]:
    """A server process and its forked workers, if any."""
    return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_memory(pid: int) -> dict:
    """The memory of a server process and of its forked workers, if any."""
    processes = [memory_mib(p) for p in server_processes(pid)]
    return {
        "processes": processes,
        "total_rss_mib": sum(m["rss"] for m in processes),
        "total_pss_mib": sum(m["pss"] for m in processes),
    }


@torch.no_grad()
def synthetic_catalogue(base: RecommendationService, n_items: int, seed: int = 0) -> dict:
    """Arrays of an ItemTable with the real products first, then synthetic ones."""
    rng = np.random.default_rng(seed)
    model, features = base.model, base.recommender.features
    real = len(base.items)
    n_items = max(n_items, real)  # --items 0: the artifact's own catalogue only
    text = features["text"]
    tokens = np.empty((n_items, model.config.dim), np.float32)
    tokens[:real] = base.items.tokens
    tags = np.zeros((1, features["tags"].shape[1]), np.float32)
    for lo in range(real, n_items, 100_000):
        hi = min(lo + 100_000, n_items)
        mixed = text[rng.integers(0, real, hi - lo)] + 0.05 * rng.normal(
            size=(hi - lo, text.shape[1])
        )
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        chunk = torch.from_numpy(mixed.astype(np.float32))
        tokens[lo:hi] = model.item_tokens.combine(
            chunk, torch.from_numpy(tags).expand(hi - lo, -1)
        ).numpy()
    model_class = np.concatenate(
        [base.items.model_class, rng.integers(0, model.n_classes, n_items - real)]
    )
    bias = np.concatenate(
        [model.item_biases().numpy(), np.full(n_items - real, new_product_bias(model), np.float32)]
    )
    return {
        "tokens": tokens,
        "bias": bias.astype(np.float32),
        "model_class": model_class.astype(np.int64),
        "item_class": rng.integers(0, CLASSES, n_items),
        "subclass": rng.integers(0, SUBCLASSES, n_items),
    }


@torch.no_grad()
def retrieval_vectors(base: RecommendationService, arrays: dict) -> np.ndarray:
    """(N, D) the synthetic catalogue's retrieval vectors, by the model's own item path."""
    return base.model.retrieval_items(
        torch.from_numpy(arrays["tokens"]),
        torch.from_numpy(arrays["bias"]),
        torch.from_numpy(arrays["model_class"]),
    ).numpy()


def user_queries(base: RecommendationService, dim: int) -> np.ndarray:
    """(users, dim) query vectors: each user's long-term memory, then the bias column's 1."""
    memories = np.stack(list(base.memories.values()))
    queries = np.zeros((len(memories), dim), np.float32)
    queries[:, : memories.shape[1]] = memories
    queries[:, memories.shape[1]] = 1.0
    return queries


def synthetic_service(
    base: RecommendationService, arrays: dict, index: ItemIndex, artifact: Path
) -> RecommendationService:
    """`base`'s model, encoder and store over the synthetic catalogue and its index."""
    n = len(arrays["tokens"])
    real = len(base.items)
    items = ItemTable(
        list(base.items.item_ids) + [f"synthetic-{i}" for i in range(real, n)],
        list(base.items.texts) + [f"synthetic product {i}" for i in range(real, n)],
        [f"class-{c}" for c in range(CLASSES)],
        [f"sub-{s}" for s in range(SUBCLASSES)],
        item_class=arrays["item_class"],
        subclass=arrays["subclass"],
        model_class=arrays["model_class"],
        tags=np.zeros((n, base.items.tags.shape[1]), np.float32),
        tokens=arrays["tokens"],
        in_stock=np.ones(n, bool),
    )
    serving = json.loads((artifact / SERVING_DIR / SERVING_FILE).read_text())
    service = RecommendationService(
        base.recommender,
        index,
        base.store,
        items,
        base.memories,
        serving["event_types"],
        base.exclude_seen,
        base.encoder,
        base.config,
    )
    service.serving_dir = base.serving_dir  # where a forked worker reopens the store
    return service


def requests(service: RecommendationService, count: int, seed: int = 1) -> list[dict]:
    """Request bodies: a known user, two live session events a minute apart, k = 10."""
    rng = np.random.default_rng(seed)
    users = sorted(service.memories)
    real = service.recommender.catalogue.item_ids
    now = time.time()
    bodies = []
    for n in range(count):
        filter_name = list(FILTERS)[n % len(FILTERS)]
        events = [
            {"item_id": str(real[i]), "timestamp": now - 120 + 60 * j}
            for j, i in enumerate(rng.integers(0, len(real), 2))
        ]
        bodies.append(
            {
                "user_id": users[rng.integers(len(users))],
                "events": events,
                "k": 10,
                "filters": _filters_json(FILTERS[filter_name]),
                "_filter": filter_name,
            }
        )
    return bodies


def _filters_json(filters: FiltersIn) -> dict:
    return {"classes": list(filters.classes), "subclasses": list(filters.subclasses)}


def latencies(service: RecommendationService, bodies: list[dict]) -> dict[str, list[float]]:
    """Milliseconds of each `recommend` call per filter, after a warm-up of 50 requests."""
    timings: dict[str, list[float]] = {name: [] for name in FILTERS}
    for warm, body in enumerate(bodies[:50] + bodies):
        events = [
            Event(f"r{k}", "", e["item_id"], service.main_event_type, e["timestamp"])
            for k, e in enumerate(body["events"])
        ]
        started = time.perf_counter()
        filters = service.filters(FILTERS[body["_filter"]])
        service.recommend(body["user_id"], events, body["k"], None, filters)
        if warm >= 50:
            timings[body["_filter"]].append((time.perf_counter() - started) * 1e3)
    return timings


def latency_summary(timings: dict[str, list[float]]) -> dict:
    """p50/p99 ms and the count per filter (the record's "in_process")."""
    return {
        name: {
            "p50_ms": float(np.percentile(t, 50)),
            "p99_ms": float(np.percentile(t, 99)),
            "n": len(t),
        }
        for name, t in timings.items()
    }


def in_process(service: RecommendationService, bodies: list[dict]) -> dict:
    """p50/p99 ms of `recommend` per filter, after a warm-up."""
    return latency_summary(latencies(service, bodies))


def recall(service: RecommendationService, queries: np.ndarray, k: int = 10) -> dict:
    """Mean recall@k of `index.search` against exact filtered search, per filter."""
    result = {}
    for name, request in FILTERS.items():
        filters = service.filters(request)
        found, _ = service.index.search(queries, k, filters.allowed, None, filters.scope)
        truth, _ = service.index.exact_search(queries, k, filters.allowed)
        hits = [
            len(set(f[f >= 0]) & set(t[t >= 0])) / max((t >= 0).sum(), 1)
            for f, t in zip(found, truth, strict=True)
        ]
        result[name] = {
            "recall@10": float(np.mean(hits)),
            "plan": service.index.plan(filters.allowed, filters.scope),
        }
    return result


WRK_SCRIPT = """
local bodies = {}
local n = 0
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end
request = function()
  n = n % #bodies + 1
  return wrk.format("POST", "/v1/recommend", {["Content-Type"] = "application/json"}, bodies[n])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "JSON {\\"requests\\": %d, \\"duration_s\\": %f, \\"p50_ms\\": %f, \\"p90_ms\\": %f, "
    .. "\\"p99_ms\\": %f, \\"max_ms\\": %f, \\"errors\\": %d}\\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def over_http(
    workdir: Path,
    artifact: Path,
    bodies: list[dict],
    duration: int,
    connections: list[int],
    workers: int,
) -> dict:
    """Serve the synthetic catalogue from a child process with `workers` workers and drive
    it with wrk, once per connection count (1 connection: latency without queueing; more:
    throughput); then the server's memory."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian), then rerun")
    port = 8790
    command = [sys.executable, __file__, "--child", str(workdir), "--artifact", str(artifact)]
    command += ["--port", str(port), "--workers", str(workers)]
    child = subprocess.Popen(command, env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if child.poll() is not None:
                    status = child.returncode
                    raise RuntimeError(f"the server exited with status {status}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError("the server did not start")
        lines = workdir / "bodies.jsonl"
        lines.write_text(
            "".join(
                json.dumps({k: v for k, v in b.items() if k != "_filter"}) + "\n" for b in bodies
            )
        )
        script = workdir / "recommend.lua"
        script.write_text(WRK_SCRIPT)
        runs = []
        processes = server_processes(child.pid)
        for count, seconds in [(max(connections), 5)] + [(c, duration) for c in connections]:
            before = [cpu_seconds(p) for p in processes]
            output = subprocess.run(
                [
                    "wrk",
                    "-t1",
                    f"-c{count}",
                    f"-d{seconds}s",
                    "--timeout",
                    "5s",
                    "-s",
                    str(script),
                    f"http://127.0.0.1:{port}",
                    "--",
                    str(lines),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            stats = json.loads(re.search(r"^JSON (.*)$", output, re.M).group(1))
            stats["requests_per_s"] = stats["requests"] / stats["duration_s"]
            stats["connections"] = count
            stats["workers"] = workers
            non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
            stats["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
            # Each process's CPU seconds in the run (parent first): whether every worker
            # took a share of the connections.
            stats["cpu_s"] = [
                round(cpu_seconds(p) - b, 2) for p, b in zip(processes, before, strict=True)
            ]
            runs.append(stats)
        return {"workers": workers, "runs": runs[1:], "memory": server_memory(child.pid)}
    finally:
        child.terminate()
        child.wait(timeout=30)


def child(workdir: Path, artifact: Path, port: int, workers: int) -> None:
    """The server process: the synthetic service behind the real app, served as
    `starsrec serve --workers` serves (starsrec.web.server.serve_service)."""
    from starsrec.web.app import create_app
    from starsrec.web.server import serve_service

    def load() -> RecommendationService:
        base = RecommendationService.load(artifact)
        arrays = load_file(workdir / "catalogue.safetensors")
        service = synthetic_service(base, arrays, ItemIndex.load(workdir / "index"), artifact)
        service.tokenizer.load_encoder()  # writes are open: before the fork, as serve does
        return service

    def app(service, on_reload):
        return create_app(service=service, insecure_open_writes=True, on_reload=on_reload)

    sys.exit(serve_service(load, app, "127.0.0.1", port, workers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("artifacts/demo-stars"))
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--connections", default="1,4,8", help="wrk connection counts")
    parser.add_argument("--workers", default="1,2", help="server worker counts")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8790, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    if args.child:
        child(args.child, args.artifact, args.port, int(args.workers))
        return
    if not (args.artifact / SERVING_DIR / SERVING_FILE).exists():
        raise SystemExit(
            f"{args.artifact} has no serving files: run `starsrec index {args.artifact}`"
        )

    base = RecommendationService.load(args.artifact)
    arrays = synthetic_catalogue(base, args.items)
    vectors = retrieval_vectors(base, arrays)
    queries = user_queries(base, vectors.shape[1])
    rss_before, started = rss_mib(), time.perf_counter()
    index = ItemIndex.build(vectors, IndexConfig(), queries=queries[:1000], progress=False)
    build_s, index_mib = time.perf_counter() - started, rss_mib() - rss_before
    service = synthetic_service(base, arrays, index, args.artifact)
    bodies = requests(service, args.requests)
    timings = latencies(service, bodies)
    record = {
        "items": len(arrays["tokens"]),
        "dim": int(vectors.shape[1]),
        "index": index.kind,
        "space": index.space,
        "breadth": index.breadth,
        "k_factor": index.k_factor,
        "build_s": build_s,
        "index_rss_mib": index_mib,
        "in_process": latency_summary(timings),
        "recall": recall(service, queries[-500:]),
    }
    figure = args.out.parent / "figures" / f"serving-latency-{record['items']}.png"
    title = (
        f"In-process recommend latency: {record['items']:,} items x {record['dim']} "
        f"({record['index']}), k = 10, two live session events"
    )
    latency_cdf(timings, figure, title)
    record["latency_figure"] = Path(os.path.relpath(figure, args.out.parent)).as_posix()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()},
            workdir / "catalogue.safetensors",
        )
        index.save(workdir / "index")
        del service, index, vectors, arrays
        connections = [int(c) for c in args.connections.split(",")]
        record["http"] = [
            over_http(workdir, args.artifact, bodies, args.duration, connections, int(count))
            for count in args.workers.split(",")
        ]
    record |= {
        "artifact": str(args.artifact),
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "commit": source_revision(),
    }
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    key = (record["items"], record["artifact"])
    records = [r for r in records if (r["items"], r["artifact"]) != key]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([*records, record], indent=2) + "\n")
    print(table(record))


def table(record: dict) -> str:
    """The record as a Markdown table (what docs/benchmarks.md shows)."""
    http = record["http"]
    head = (
        f"{record['items']:,} items x {record['dim']} ({record['index']}, "
        f"{record['space']}, breadth {record['breadth']}, "
        f"k_factor {record['k_factor']}): build {record['build_s']:.1f} s, "
        f"+{record['index_rss_mib']:.0f} MiB"
    )
    lines = [
        head,
        "| path | filter | p50 ms | p99 ms | recall@10 / load |",
        "|---|---|---|---|---|",
    ]
    for name, timing in record["in_process"].items():
        r = record["recall"][name]
        lines.append(
            f"| in-process | {name} | {timing['p50_ms']:.2f} | {timing['p99_ms']:.2f} | "
            f"{r['recall@10']:.4f} ({r['plan']}) |"
        )
    for server in http:
        for run in server["runs"]:
            lines.append(
                f"| HTTP, {server['workers']} worker(s), {run['connections']} connection(s), "
                f"{run['duration_s']:.0f} s | mixed | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | "
                f"{run['requests_per_s']:.0f} req/s, {run['requests']} requests, "
                f"{run['errors'] + run['non_2xx']} errors, CPU s per process "
                f"{' + '.join(f'{c:.1f}' for c in run.get('cpu_s', []))} |"
            )
    lines.append("")
    lines.append("| server | processes' RSS MiB | total RSS MiB | total PSS MiB |")
    lines.append("|---|---|---|---|")
    for server in http:
        memory = server["memory"]
        each = " + ".join(f"{m['rss']:.0f}" for m in memory["processes"])
        lines.append(
            f"| {server['workers']} worker(s) | {each} | {memory['total_rss_mib']:.0f} | "
            f"{memory['total_pss_mib']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
