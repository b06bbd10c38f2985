"""Shared fixtures: a tiny served STARS artifact, and a throwaway Redis server for the
Redis event store tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from starsrec.data.files import SERVING_DIR
from starsrec.data.interactions import Catalogue, EventLog
from starsrec.data.toyworld import make_toy_world
from starsrec.recommender import TrainingData
from starsrec.serving.offline import write_serving_files
from starsrec.stars.recommender import StarsRecommender
from tiny import TINY, overrides

TINY_OVERRIDES = overrides(TINY)  # the CLI's `--set` arguments for the tiny STARS


@pytest.fixture(scope="session")
def served_artifact(tmp_path_factory) -> tuple[StarsRecommender, EventLog, Path]:
    """A tiny STARS (2 epochs: quality is not the point) on the toy world, saved with its
    serving files: (recommender, the toy log, artifact directory). Copy before changing."""
    torch.set_num_threads(1)
    dataset = make_toy_world(n_users=40)
    catalogue = Catalogue.from_items(dataset.items)
    log = EventLog.from_dataset(dataset, catalogue)
    recommender = StarsRecommender(TINY).fit(TrainingData(log, catalogue, "GB"))
    artifact = recommender.save(tmp_path_factory.mktemp("served"), {"note": "test"})
    write_serving_files(recommender, log, artifact / SERVING_DIR, exclude_seen=True)
    return recommender, log, artifact


# The SQLite store's guarantee: every acknowledged write is fsynced before the reply.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    """A redis-server subprocess on loopback with its data in `directory`."""

    directory: Path
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self, kill: bool = False) -> None:
        if self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            self.process.wait(timeout=30)


def start_redis(directory: Path, port: int | None = None, options=DURABLE) -> RedisServer:
    """Start redis-server on 127.0.0.1 and wait until it answers PING; skips the test when
    redis-server is not installed."""
    redis = pytest.importorskip("redis", reason="pip install -e '.[dev]' installs redis")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed: run scripts/redis-server.sh (make test-setup does)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a free port can be taken between the probe and the server's bind
        chosen = port or free_port()
        log = directory / "redis.log"
        command = [binary, "--bind", "127.0.0.1", "--port", str(chosen), "--save", ""]
        command += [*options, "--dir", str(directory), "--logfile", str(log)]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        client = redis.Redis(port=chosen, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                client.close()
                return RedisServer(directory, chosen, process)
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        RedisServer(directory, chosen, process).stop(kill=True)
        if port is not None:
            break
    text = log.read_text() if log.exists() else ""
    raise RuntimeError(f"redis-server did not start:\n{text[-2000:]}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """Database 0 of the shared test server (tests keep apart by key prefix)."""
    return f"{redis_server.url}/0"
