"""Hostile-load benchmark (issue 20): a real `starsrec serve` process under oversized and
chunked bodies, deeply nested JSON, slow clients and product floods, while normal traffic
runs and a poller asks /healthz whether the event loop still answers.

    python benchmarks/hostile.py                                   # a toy artifact, ~2.5 min
    python benchmarks/hostile.py --artifact artifacts/demo-stars   # any indexed artifact
    python benchmarks/hostile.py --phase-seconds 4                 # a smoke run

Without --artifact a small STARS is trained on the generated toy world (hashing text
encoder, a few seconds). The server runs on a copy, with an API key and its default limits
(1 MiB bodies, 10 s header and 30 s body deadlines, 1,000 products per PUT, 100,000 added
products). Phases, `--phase-seconds` each, in order:

    idle       the poller alone (after a short warm-up): the RSS baseline
    normal     normal traffic: recommend for known users at --rate/s, one in ten an event
    oversized  + 50 MB chunked streams, Content-Length with chunked, a declared 50 MB, a
                 Content-Length that lies, 1 MiB of `[{},...]` with and without the key
    nesting    + 1 MiB of `[[[[...` (and nested in a field) to events, recommend, items
    slow       + 200 connections dribbling headers and 20 dribbling bodies, reopened when
                 the server closes them (--slow-seconds, past the 30 s body deadline)
    products   + two clients PUTting 1,000 new products at a time until the catalogue cap
                 refuses them, then changing those (new texts), and one batch in ten over
                 the per-request cap
    all        every attack at once

The poller is a separate process (this file with --poll-port: GET /healthz every 20 ms on a
kept-alive connection), so the attackers' own CPU use in this process does not delay its
requests. Targets: /healthz
p99 under 50 ms in every phase, the server's peak RSS within 1.5x of idle, no 5xx at all.
Writes benchmarks/results/hostile.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from starsrec.data.files import SERVING_DIR, SERVING_FILE
from starsrec.experiments.report import machine_description, source_revision

RESULTS = Path(__file__).parent / "results"
PHASES = ("idle", "normal", "oversized", "nesting", "slow", "products", "all")
ATTACKS = {"oversized", "nesting", "slow", "products"}
KEY = "hostile-benchmark-key-0123456789"
AUTH = f"Authorization: Bearer {KEY}\r\n".encode()
MIB = 1 << 20
TARGETS = {"healthz_p99_ms": 50.0, "rss_ratio": 1.5, "server_errors": 0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, help="an indexed artifact (default: a toy)")
    parser.add_argument("--phase-seconds", type=float, default=18.0)
    parser.add_argument("--slow-seconds", type=float, default=36.0, help="the slow phase")
    parser.add_argument("--rate", type=float, default=20.0, help="normal requests per second")
    parser.add_argument(
        "--phases",
        type=lambda text: [p for p in text.split(",") if p],
        default=list(PHASES),
        help="comma-separated phases to run, in their order (idle always runs first)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "hostile.json")
    parser.add_argument("--poll-port", type=int, help=argparse.SUPPRESS)  # the poller process
    parser.add_argument("--poll-folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}: choose from {', '.join(PHASES)}")
    args.phases = [p for p in PHASES if p in args.phases or p == "idle"]
    return args


# --- the artifact and the server ----------------------------------------------------------------
def toy_artifact(root: Path) -> Path:
    """A small STARS trained on the toy world, with its serving files."""
    from starsrec.data.interactions import Catalogue, EventLog
    from starsrec.data.toyworld import make_toy_world
    from starsrec.recommender import TrainingData
    from starsrec.serving.offline import write_serving_files
    from starsrec.stars.config import ModelConfig
    from starsrec.stars.recommender import StarsConfig, StarsRecommender
    from starsrec.stars.train import TrainConfig

    config = StarsConfig(
        model=ModelConfig(dim=32, layers=1, heads=2, max_length=16, attribute_dim=8),
        train=TrainConfig(epochs=2, batch_size=64, progress=False),
        text_encoder="hashing",
        embedding_cache=None,
        derived_subclasses=8,
        derived_classes=4,
    )
    dataset = make_toy_world(n_users=300)
    catalogue = Catalogue.from_items(dataset.items)
    log = EventLog.from_dataset(dataset, catalogue)
    recommender = StarsRecommender(config).fit(TrainingData(log, catalogue, "GB"))
    artifact = recommender.save(root / "toy-artifact", {"note": "hostile benchmark"})
    write_serving_files(recommender, log, artifact / SERVING_DIR, exclude_seen=True)
    return artifact


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(artifact: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "starsrec.cli", "serve", str(artifact), "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "STARSREC_API_KEY": KEY}
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


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the /healthz poller, in its own process ----------------------------------------------------
def poll(port: int, folder: Path) -> None:
    """GET /healthz every 20 ms until `folder/stop` exists, creating `folder/ready` at the
    first answer; then write [(unix time, ms, status)] to `folder/polls.json` (status 0: no
    answer within 5 s, or the connection failed). Run as its own process (see `main`)."""
    samples = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while not (folder / "stop").exists():
        now = time.time()
        started = time.perf_counter()
        try:
            connection.request("GET", "/healthz")
            answer = connection.getresponse()
            answer.read()
            status = answer.status
        except (OSError, http.client.HTTPException):
            status = 0
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        samples.append((now, (time.perf_counter() - started) * 1e3, status))
        if status == 200 and not samples[:-1]:
            (folder / "ready").touch()
        time.sleep(max(0.0, 0.02 - (time.perf_counter() - started)))
    (folder / "polls.json").write_text(json.dumps(samples))


def start_poller(port: int, folder: Path) -> subprocess.Popen:
    """This file again as the poller process, once it has had its first answer."""
    command = [sys.executable, __file__, "--poll-port", str(port), "--poll-folder", str(folder)]
    poller = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while not (folder / "ready").exists():
        if poller.poll() is not None or time.monotonic() > deadline:
            poller.kill()
            raise SystemExit("the /healthz poller got no answer")
        time.sleep(0.05)
    return poller


# --- raw-socket attacks -------------------------------------------------------------------------
async def raw(port: int, head: bytes, chunks=(), timeout: float = 40.0) -> int:
    """Send a request head and then `chunks` (an iterable of bytes) until the server answers;
    return its status (0: closed without an answer, -1: no answer within `timeout`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def feed() -> None:
        try:
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, RuntimeError):
            pass  # the server answered and closed: the rest is never sent

    feeding = None
    try:
        writer.write(head)
        feeding = asyncio.create_task(feed())
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except TimeoutError:
        return -1
    except ConnectionError:
        return 0
    finally:
        if feeding is not None:
            feeding.cancel()
        writer.close()


def head(method: str, path: str, *lines: str, key: bool = True) -> bytes:
    text = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    return text.encode() + (AUTH if key else b"") + "".join(f"{x}\r\n" for x in lines).encode()


def chunked(total: int, size: int = 64 << 10):
    piece = f"{size:x}\r\n".encode() + b"[" * size + b"\r\n"
    for _ in range(total // size):
        yield piece


def flat(total: int, size: int = 64 << 10):
    for _ in range(total // size):
        yield b" " * size


EMPTY_OBJECTS = ("[" + ",".join(["{}"] * ((MIB - 10) // 3)) + "]").encode()
NESTED = b"[" * (MIB // 2 - 10) + b"]" * (MIB // 2 - 10)
NESTED_FIELD = b'{"user_id": ' + b"[" * (MIB // 2 - 20) + b"]" * (MIB // 2 - 20) + b"}"


def oversized_attacks(port: int):
    """(label, request) pairs: bodies past the limit, or framed to slip past it."""
    big = 50 * MIB
    chunked_only = head("POST", "/v1/events", "Transfer-Encoding: chunked", "")
    yield "50 MB chunked", raw(port, chunked_only, chunked(big))
    both = head("POST", "/v1/events", "Content-Length: 2", "Transfer-Encoding: chunked", "")
    yield "Content-Length: 2 and chunked", raw(port, both, chunked(big))
    declared = head("POST", "/v1/events", f"Content-Length: {big}", "")
    yield "Content-Length: 50 MB", raw(port, declared, flat(big))
    lying = head("POST", "/v1/recommend", "Content-Length: 2", "")
    yield "Content-Length: 2, then 4 MiB", raw(port, lying, flat(4 * MIB))
    for key in (True, False):
        empty = head("PUT", "/v1/items", f"Content-Length: {len(EMPTY_OBJECTS)}", "", key=key)
        label = f"1 MiB of [{{}},...] {'with' if key else 'without'} the key"
        yield label, raw(port, empty, [EMPTY_OBJECTS])


def nesting_attacks(port: int):
    """(label, request) pairs: a megabyte of nesting, whole or in a field."""
    for path in ("/v1/events", "/v1/recommend", "/v1/items"):
        method = "PUT" if path == "/v1/items" else "POST"
        for where, body in (("whole", NESTED), ("in a field", NESTED_FIELD)):
            request = head(method, path, f"Content-Length: {len(body)}", "")
            yield f"1 MiB of [[[... {where}, {path}", raw(port, request, [body])


async def slow_client(port: int, body: bool, stop: float, counts: Counter) -> None:
    """Keep one slow connection open until `stop`: headers (or a body) a byte a second;
    when the server closes it, count how, and open another."""
    while time.time() < stop:
        # A body: complete headers, then a byte a second of the 10,000 declared. Headers:
        # a header line that never ends.
        lines = ("Content-Length: 10000", "") if body else ("X-Slow: ",)
        request = head("POST", "/v1/events", *lines)

        async def slowly():
            while True:
                yield b"x"
                await asyncio.sleep(1.0)

        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect failed"] += 1
            await asyncio.sleep(0.5)
            continue
        writer.write(request)
        status = "closed"
        try:
            async for byte in slowly():
                if time.time() >= stop:
                    status = "held to the end"
                    break
                writer.write(byte)
                await writer.drain()
                if reader.at_eof():
                    break
                try:
                    line = await asyncio.wait_for(reader.readline(), 0.01)
                except TimeoutError:
                    continue
                status = line.split()[1].decode() if line.startswith(b"HTTP/") else "closed"
                break
        except ConnectionError:
            status = "closed"
        finally:
            writer.close()
        counts[f"slow {'body' if body else 'headers'}: {status}"] += 1


def products(prefix: str, n: int) -> list[dict]:
    return [
        {"item_id": f"{prefix}-{i}", "text": f"flood product {i} of line {i % 97}"}
        for i in range(n)
    ]


# --- the load -------------------------------------------------------------------------------------
async def drive(port: int, args: argparse.Namespace, users: list[str], items: list[str], pid: int):
    """Run the phases; return the phase boundaries, the normal and hostile answers, RSS."""
    base = f"http://127.0.0.1:{port}"
    normal: list[tuple[float, str, float, int]] = []  # (time, kind, ms, status)
    hostile: list[tuple[float, str, str, int]] = []  # (time, kind, attack, status)
    memory: list[tuple[float, float]] = []
    slow_counts: Counter = Counter()
    bounds: dict[str, tuple[float, float]] = {}
    headers = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
        for n in range(20):  # warm-up: every kind of request once or more
            await client.post("/v1/recommend", json={"user_id": users[n % len(users)], "k": 10})
        await client.get(f"/v1/items/{items[0]}/similar")
        await client.put("/v1/items", json=products("warm", 10))

        async def sample_memory(stop: float) -> None:
            while time.time() < stop:
                memory.append((time.time(), rss_mib(pid)))
                await asyncio.sleep(0.25)

        async def normal_traffic(stop: float) -> None:
            tasks, n, started = [], 0, time.time()
            while time.time() < stop:
                due = started + n / args.rate
                if time.time() < due:
                    await asyncio.sleep(due - time.time())
                tasks.append(asyncio.create_task(one_normal(n)))
                n += 1
            await asyncio.gather(*tasks)

        async def one_normal(n: int) -> None:
            user = users[n % len(users)]
            kind, begun = ("event" if n % 10 == 9 else "recommend"), time.perf_counter()
            try:
                if kind == "event":
                    event = {"user_id": user, "item_id": items[n % len(items)]}
                    answer = await client.post("/v1/events", json=event)
                else:
                    answer = await client.post("/v1/recommend", json={"user_id": user, "k": 10})
                status = answer.status_code
            except httpx.HTTPError:
                status = 0
            normal.append((time.time(), kind, (time.perf_counter() - begun) * 1e3, status))

        async def attack_loop(name: str, make, stop: float) -> None:
            while time.time() < stop:
                for label, attack in make(port):
                    status = await attack
                    hostile.append((time.time(), name, label, status))
                    if time.time() >= stop:
                        break

        full: list[bool] = []  # set once the catalogue cap has answered 409
        made: list[str] = []  # prefixes of the batches of new products that were taken

        async def product_flood(worker: int, phase: str, stop: float) -> None:
            """New products 1,000 at a time until the catalogue cap refuses them, then the
            same ids again with new texts (changes are allowed at the cap, and embedded)."""
            batch = 0
            while time.time() < stop:
                batch += 1
                size = 1001 if batch % 10 == 0 else 1000  # one in ten over the per-request cap
                if full and made:
                    label, prefix = "1,000 changed products", made[batch % len(made)]
                    body = [{**p, "text": f"{p['text']}, v{batch}"} for p in products(prefix, size)]
                else:
                    prefix = f"{phase}{worker}-{batch}"
                    label, body = "1,000 new products", products(prefix, size)
                label = "1,001 products" if size > 1000 else label
                try:
                    answer = await client.put("/v1/items", json=body)
                    status = answer.status_code
                except httpx.HTTPError:
                    status = 0
                if status == 409:
                    full.append(True)
                elif status == 200 and label == "1,000 new products":
                    made.append(prefix)
                hostile.append((time.time(), "products", label, status))

        for phase in args.phases:
            start = time.time()
            # The slow phase lasts past the 30 s body deadline, so its closing shows too.
            stop = start + (args.slow_seconds if phase == "slow" else args.phase_seconds)
            work = [sample_memory(stop)]
            if phase != "idle":
                work.append(normal_traffic(stop))
            attacks = ATTACKS if phase == "all" else {phase} & ATTACKS
            if "oversized" in attacks:
                work += [attack_loop("oversized", oversized_attacks, stop) for _ in range(2)]
            if "nesting" in attacks:
                work += [attack_loop("nesting", nesting_attacks, stop) for _ in range(2)]
            if "slow" in attacks:
                work += [slow_client(port, False, stop, slow_counts) for _ in range(200)]
                work += [slow_client(port, True, stop, slow_counts) for _ in range(20)]
            if "products" in attacks:
                work += [product_flood(worker, phase, stop) for worker in range(2)]
            await asyncio.gather(*work)
            bounds[phase] = (start, time.time())
    return {
        "bounds": bounds,
        "normal": normal,
        "hostile": hostile,
        "memory": memory,
        "slow": dict(slow_counts),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarise(raw: dict, polls: list) -> dict:
    """Per phase: /healthz and normal latency, hostile answers by status, RSS; and totals."""
    phases = {}
    idle_start, idle_end = raw["bounds"]["idle"]
    idle_rss = percentile([m for t, m in raw["memory"] if idle_start <= t < idle_end], 50)
    for phase, (start, end) in raw["bounds"].items():
        health = [p for p in polls if start <= p[0] < end]
        normal = [s for s in raw["normal"] if start <= s[0] < end]
        hostile = [h for h in raw["hostile"] if start <= h[0] < end]
        rss = [m for t, m in raw["memory"] if start <= t < end]
        phases[phase] = {
            "healthz": {
                "requests": len(health),
                "p50_ms": percentile([p[1] for p in health], 50),
                "p99_ms": percentile([p[1] for p in health], 99),
                "max_ms": max((p[1] for p in health), default=float("nan")),
                "failed": sum(1 for p in health if p[2] != 200),
            },
            "normal": {
                "requests": len(normal),
                "p50_ms": percentile([s[2] for s in normal], 50),
                "p99_ms": percentile([s[2] for s in normal], 99),
                "statuses": dict(Counter(str(s[3]) for s in normal)),
            },
            "hostile": {
                name: dict(Counter(str(h[3]) for h in hostile if h[1] == name))
                for name in sorted({h[1] for h in hostile})
            },
            "rss_peak_mib": max(rss, default=float("nan")),
        }
    statuses = (
        [p[2] for p in polls] + [s[3] for s in raw["normal"]] + [h[3] for h in raw["hostile"]]
    )
    peak = max(m for _, m in raw["memory"])
    worst_p99 = max(p["healthz"]["p99_ms"] for p in phases.values())
    # Every attack's answers over the whole run (0: the connection closed before an answer
    # was read, which a client still sending a refused body can meet; -1: no answer in 40 s).
    attacks: dict[str, Counter] = {}
    for _, _, label, status in raw["hostile"]:
        attacks.setdefault(label, Counter())[str(status)] += 1
    record = {
        "phases": phases,
        "attacks": {label: dict(counts) for label, counts in attacks.items()},
        "slow_connections": raw["slow"],
        "server_errors": sum(1 for s in statuses if s >= 500),
        "rss_idle_mib": idle_rss,
        "rss_peak_mib": peak,
        "rss_ratio": peak / idle_rss,
        "healthz_worst_p99_ms": worst_p99,
        "targets": TARGETS,
    }
    record["met"] = {
        "healthz_p99_ms": worst_p99 < TARGETS["healthz_p99_ms"],
        "rss_ratio": record["rss_ratio"] <= TARGETS["rss_ratio"],
        "server_errors": record["server_errors"] == TARGETS["server_errors"],
    }
    return record


def table(record: dict) -> str:
    lines = [
        "| phase | /healthz p50 ms | p99 ms | max ms | failed | recommend p50 / p99 ms "
        "| server RSS peak MiB | hostile answers |",
        "|---" * 8 + "|",
    ]
    for phase, p in record["phases"].items():
        h, n = p["healthz"], p["normal"]
        answers = "; ".join(
            f"{name} " + ", ".join(f"{s}: {c}" for s, c in sorted(counts.items()))
            for name, counts in p["hostile"].items()
        )
        recommend = f"{n['p50_ms']:.1f} / {n['p99_ms']:.1f}" if n["requests"] else "-"
        lines.append(
            f"| {phase} | {h['p50_ms']:.1f} | {h['p99_ms']:.1f} | {h['max_ms']:.1f} "
            f"| {h['failed']} | {recommend} | {p['rss_peak_mib']:.0f} | {answers or '-'} |"
        )
    met = record["met"]
    lines.append(
        f"\nRSS idle {record['rss_idle_mib']:.0f} MiB, peak {record['rss_peak_mib']:.0f} MiB "
        f"({record['rss_ratio']:.2f}x; target <= 1.5x: {'met' if met['rss_ratio'] else 'MISSED'})"
        f"; /healthz worst p99 {record['healthz_worst_p99_ms']:.1f} ms (target < 50 ms: "
        f"{'met' if met['healthz_p99_ms'] else 'MISSED'}); 5xx: {record['server_errors']} "
        f"(target 0: {'met' if met['server_errors'] else 'MISSED'})"
    )
    lines.append("\n| attack | answers (status: count) |\n|---|---|")
    for label, counts in record["attacks"].items():
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
        lines.append(f"| {label} | {answers} |")
    for label, n in sorted(record["slow_connections"].items()):
        lines.append(f"| {label} | {n} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.poll_port is not None:
        poll(args.poll_port, args.poll_folder)
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = args.artifact or toy_artifact(work)
        copy = Path(shutil.copytree(source, work / "served"))
        serving = json.loads((copy / SERVING_DIR / SERVING_FILE).read_text())
        users = serving["users"][:500]
        items = list(pd.read_parquet(copy / "items.parquet")["item_id"].astype(str))[:500]
        port = free_port()
        server = start_server(copy, port, work / "server.log")
        folder = work / "poller"
        folder.mkdir()
        poller = start_poller(port, folder)
        try:
            load_before = os.getloadavg()
            raw = asyncio.run(drive(port, args, users, items, server.pid))
            load_after = os.getloadavg()
            (folder / "stop").touch()
            poller.wait(timeout=30)
        finally:
            if poller.poll() is None:
                poller.kill()
            server.terminate()
            server.wait(timeout=30)
        polls = json.loads((folder / "polls.json").read_text())
    record = {
        **summarise(raw, polls),
        "phase_seconds": args.phase_seconds,
        "slow_seconds": args.slow_seconds,
        "rate": args.rate,
        "artifact": str(args.artifact or "generated toy world (300 users, hashing encoder)"),
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        # The machine is shared: its load average (1, 5, 15 min) before and after the run.
        "load_average": {"before": load_before, "after": load_after},
        "commit": source_revision(),
    }
    print(table(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
