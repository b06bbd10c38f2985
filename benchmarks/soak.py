"""Soak benchmark: drive a real `starsrec serve` process on loopback at a steady rate with
mixed reads and writes for `--duration` seconds, and watch for errors, latency drift and
memory growth.

    python benchmarks/soak.py --artifact artifacts/demo-stars                 # 10 minutes
    python benchmarks/soak.py --artifact artifacts/demo-stars --duration 20   # a smoke run

The server runs on a copy of the artifact (the soak writes events and products). Requests
are sent open-loop: one every 1/rate seconds whether or not earlier ones have answered, so
a slowing server shows up as latency, not as a politely lower rate. The mix per request:
60% recommend for a known user, 10% recommend for an anonymous shopper's recent events,
20% POST one event, 5% similar items, 5% PUT a product drawn from a fixed pool of 50 (added
once, then updated: the catalogue stays bounded, so memory should too). Every `--window`
seconds: p50/p99, requests, errors; the server's RSS each second. Memory growth is measured
from the end of the warm-up (the first `--warmup` seconds) to the end.
Writes benchmarks/results/soak.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from starsrec.data.files import ITEMS_FILE, SERVING_DIR, SERVING_FILE
from starsrec.experiments.report import machine_description, source_revision

RESULTS = Path(__file__).parent / "results"
MIX = (("recommend", 0.60), ("anonymous", 0.10), ("event", 0.20), ("similar", 0.05), ("put", 0.05))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("artifacts/demo-stars"))
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per table row")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before memory base")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    return parser.parse_args(argv)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(artifact: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "starsrec.cli", "serve", str(artifact), "--port", str(port)]
    command.append("--insecure-open-writes")  # a local benchmark: no key
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=out, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited at start:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the server did not start in 120 s:\n{log.read_text()}")


def make_request(kind: str, n: int, users: list[str], items: list[str], rng: random.Random):
    """(method, path, JSON body) of the n-th request, of `kind`."""
    now = time.time()
    if kind == "recommend":
        return "POST", "/v1/recommend", {"user_id": rng.choice(users), "k": 10}
    if kind == "anonymous":
        recent = [{"item_id": rng.choice(items), "timestamp": now - 60 * i} for i in range(3)]
        return "POST", "/v1/recommend", {"events": recent, "k": 10}
    if kind == "event":
        event = {"event_id": f"soak-{n}", "user_id": rng.choice(users), "timestamp": now}
        return "POST", "/v1/events", {**event, "item_id": rng.choice(items)}
    if kind == "similar":
        return "GET", f"/v1/items/{rng.choice(items)}/similar?k=10", None
    product = rng.randrange(50)
    text = f"soak test product {product}, version {n}"
    return "PUT", "/v1/items", {"item_id": f"soak-product-{product}", "text": text}


async def drive(base_url: str, args: argparse.Namespace, users, items, pid: int) -> dict:
    """Send the open-loop request stream; return per-request and per-second samples."""
    rng = random.Random(args.seed)
    kinds, weights = zip(*MIX, strict=True)
    samples: list[tuple[float, str, float, int]] = []  # (start offset, kind, ms, status)
    memory: list[tuple[float, float]] = []
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

        async def one(n: int, kind: str, offset: float) -> None:
            method, path, body = make_request(kind, n, users, items, rng)
            started = time.perf_counter()
            try:
                answer = await client.request(method, path, json=body)
                status = answer.status_code
            except httpx.HTTPError:
                status = 0  # no answer at all: counted as an error
            samples.append((offset, kind, (time.perf_counter() - started) * 1e3, status))

        started, tasks, n = time.perf_counter(), [], 0
        next_memory = 0.0
        while (offset := time.perf_counter() - started) < args.duration:
            if offset >= next_memory:
                memory.append((offset, rss_mib(pid)))
                next_memory += 1.0
            due = n / args.rate
            if offset < due:
                await asyncio.sleep(min(due - offset, 0.05))
                continue
            tasks.append(asyncio.create_task(one(n, rng.choices(kinds, weights)[0], due)))
            n += 1
        await asyncio.gather(*tasks)
        memory.append((time.perf_counter() - started, rss_mib(pid)))
    return {"samples": samples, "memory": memory}


def summarise(samples, memory, args: argparse.Namespace) -> dict:
    """Per-window latency and errors, totals, and memory growth after the warm-up."""
    windows = []
    for start in np.arange(0.0, args.duration, args.window):
        rows = [s for s in samples if start <= s[0] < start + args.window]
        ms = np.array([s[2] for s in rows]) if rows else np.array([np.nan])
        windows.append(
            {
                "from_s": float(start),
                "requests": len(rows),
                "errors": sum(1 for s in rows if not 200 <= s[3] < 300),
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "rss_mib": float(
                    max((m for t, m in memory if t < start + args.window), default=np.nan)
                ),
            }
        )
    warm = [m for t, m in memory if t >= min(args.warmup, args.duration / 2)]
    base, end = (warm[0], memory[-1][1]) if warm else (memory[0][1], memory[-1][1])
    ms = np.array([s[2] for s in samples])
    errors = [s for s in samples if not 200 <= s[3] < 300]
    by_kind = {
        kind: {
            "requests": len(times),
            "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)),
        }
        for kind, _ in MIX
        if (times := [s[2] for s in samples if s[1] == kind])
    }
    return {
        "requests": len(samples),
        "errors": len(errors),
        "by_kind": by_kind,
        "error_statuses": sorted({s[3] for s in errors}),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rss_after_warmup_mib": base,
        "rss_end_mib": end,
        "memory_growth": (end - base) / base,
        "windows": windows,
    }


def table(record: dict) -> str:
    lines = ["| from s | requests | errors | p50 ms | p99 ms | server RSS MiB |", "|---" * 6 + "|"]
    for w in record["windows"]:
        lines.append(
            f"| {w['from_s']:.0f} | {w['requests']} | {w['errors']} | {w['p50_ms']:.2f} "
            f"| {w['p99_ms']:.2f} | {w['rss_mib']:.0f} |"
        )
    lines.append("\n| request | count | p50 ms | p99 ms |\n|---|---|---|---|")
    for kind, k in record["by_kind"].items():
        lines.append(f"| {kind} | {k['requests']} | {k['p50_ms']:.2f} | {k['p99_ms']:.2f} |")
    lines.append(
        f"\n{record['requests']} requests, {record['errors']} errors, p50 "
        f"{record['p50_ms']:.2f} ms, p99 {record['p99_ms']:.2f} ms; server RSS "
        f"{record['rss_after_warmup_mib']:.0f} MiB after warm-up, {record['rss_end_mib']:.0f} "
        f"MiB at the end ({100 * record['memory_growth']:+.1f}%)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    serving = json.loads((args.artifact / SERVING_DIR / SERVING_FILE).read_text())
    users = serving["users"][:1000]
    items = list(pd.read_parquet(args.artifact / ITEMS_FILE)["item_id"].astype(str))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(shutil.copytree(args.artifact, Path(tmp) / "artifact"))
        with socket.socket() as sock:  # a free loopback port
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = start_server(copy, port, Path(tmp) / "server.log")
        try:
            raw = asyncio.run(drive(f"http://127.0.0.1:{port}", args, users, items, server.pid))
        finally:
            server.terminate()
            server.wait(timeout=30)
    record = {
        **summarise(raw["samples"], raw["memory"], args),
        "duration_s": args.duration,
        "rate": args.rate,
        "mix": dict(MIX),
        "artifact": str(args.artifact),
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "commit": source_revision(),
    }
    print(table(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
