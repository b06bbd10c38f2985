"""The real `starsrec serve` process: no acknowledged event is lost when it is killed with
SIGKILL mid-stream, each is stored exactly once however often it is resent, and a hot
reload (SIGHUP or POST /v1/admin/reload) under load fails no request."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from starsrec.data.files import SERVING_DIR, STORE_FILE
from starsrec.serving.store import SQLiteEventStore

BATCH = 20


class Server:
    """`python -m starsrec.cli serve ARTIFACT` on a free loopback port, logging to a file."""

    def __init__(
        self, artifact: Path, log: Path, open_writes: bool = True, options: Sequence[str] = ()
    ) -> None:
        """Start it; `open_writes` passes --insecure-open-writes (off for a server given a
        key in STARSREC_API_KEY); `options` are more of serve's options."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "starsrec.cli", "serve", str(artifact)]
        command += ["--insecure-open-writes"] if open_writes else []
        command += list(options)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)], stdout=out, stderr=out, env=env
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.process.kill()
        raise RuntimeError(f"server did not start in 90 s:\n{log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)
        self.process.wait(timeout=30)


def batches(user_ids: list[str], item_ids: list[str], count: int) -> list[list[dict]]:
    """`count` batches of BATCH events with stable ids, so a resend is recognisable."""
    return [
        [
            {
                "event_id": f"stream-{b}-{e}",
                "user_id": user_ids[(b * BATCH + e) % len(user_ids)],
                "item_id": item_ids[(b * BATCH + e) % len(item_ids)],
                "timestamp": 1_700_000_000 + b * BATCH + e,
            }
            for e in range(BATCH)
        ]
        for b in range(count)
    ]


@pytest.fixture
def artifact(served_artifact, tmp_path: Path) -> Path:
    _, _, original = served_artifact
    return Path(shutil.copytree(original, tmp_path / "artifact"))


def test_acknowledged_events_survive_sigkill_and_count_once(
    served_artifact, artifact: Path, tmp_path: Path
) -> None:
    recommender, log, _ = served_artifact
    users = [str(u) for u in log.user_ids[:10]]
    stream = batches(users, list(recommender.catalogue.item_ids[:30]), count=400)
    with SQLiteEventStore(artifact / SERVING_DIR / STORE_FILE) as store:
        seeded = store.count()

    server = Server(artifact, tmp_path / "server.log")
    acknowledged: list[str] = []

    def post_until_refused() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for batch in stream:
                try:
                    answer = client.post("/v1/events", json=batch)
                except httpx.TransportError:
                    return  # the server died mid-request: this batch was never acknowledged
                assert answer.status_code == 200, answer.text
                acknowledged.extend(e["event_id"] for e in batch)

    poster = threading.Thread(target=post_until_refused)
    poster.start()
    while len(acknowledged) < 50 * BATCH and poster.is_alive():
        time.sleep(0.01)
    server.stop(signal.SIGKILL)  # mid-stream: no shutdown handler runs
    poster.join(timeout=30)
    assert BATCH * 50 <= len(acknowledged) < BATCH * len(stream), "kill was not mid-stream"

    with SQLiteEventStore(artifact / SERVING_DIR / STORE_FILE) as store:
        missing = [e for e in acknowledged if not store.has(e)]
        assert missing == [], f"{len(missing)} acknowledged events lost"

    # A client that is unsure resends everything: each event is stored exactly once.
    server = Server(artifact, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            stored = [client.post("/v1/events", json=batch).json()["stored"] for batch in stream]
    finally:
        server.stop()
    resent_acknowledged = len(acknowledged) // BATCH
    assert stored[:resent_acknowledged] == [0] * resent_acknowledged
    with SQLiteEventStore(artifact / SERVING_DIR / STORE_FILE) as store:
        assert store.count() == seeded + BATCH * len(stream)


def test_hot_reload_under_load_fails_no_request(
    served_artifact, artifact: Path, tmp_path: Path
) -> None:
    _, log, _ = served_artifact
    server = Server(artifact, tmp_path / "server.log")
    statuses: list[int] = []
    done = threading.Event()

    def recommend_until_done() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            n = 0
            while not done.is_set():
                user = str(log.user_ids[n % len(log.user_ids)])
                statuses.append(client.post("/v1/recommend", json={"user_id": user}).status_code)
                n += 1

    clients = [threading.Thread(target=recommend_until_done) for _ in range(2)]
    try:
        for thread in clients:
            thread.start()
        with httpx.Client(base_url=server.url, timeout=60) as admin:
            for _ in range(2):
                assert admin.post("/v1/admin/reload").status_code == 200
                server.process.send_signal(signal.SIGHUP)
                time.sleep(1.0)  # let the signalled reload run under load too
        done.set()
        for thread in clients:
            thread.join(timeout=30)
    finally:
        done.set()
        server.stop()
    reloads = server.log.read_text().count("reloaded")
    assert reloads >= 3, server.log.read_text()  # two POSTs and at least one SIGHUP
    assert len(statuses) > 20 and set(statuses) == {200}
