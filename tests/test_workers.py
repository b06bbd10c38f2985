"""`starsrec serve --workers 2`: both workers answer on one port, share events, serve a
product put through either within seconds, drop a forgotten user's memory, reload under
load with no failed request, and stop with their parent (see starsrec.web.workers)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from test_server_process import Server, artifact  # noqa: F401 (a fixture)

WORKERS = ("--workers", "2")


def healthz(server: Server) -> dict:
    """One /healthz on a fresh connection: the kernel hands it to either worker."""
    return httpx.get(f"{server.url}/healthz", timeout=10).json()


def until(condition, seconds: float, what: str) -> float:
    """Poll `condition` until true; the seconds it took (fails after `seconds`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"{what} not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


def worker_pids(server: Server) -> set[int]:
    pids: set[int] = set()
    until(lambda: pids.add(healthz(server)["worker"]) or len(pids) == 2, 30, "two workers")
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_products_forgets_and_reloads(
    served_artifact,
    artifact: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, log, _ = served_artifact
    server = Server(artifact, tmp_path / "server.log", options=WORKERS)
    try:
        pids = worker_pids(server)
        assert server.process.pid not in pids
        before = healthz(server)["items"]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            product = {"item_id": "put-live", "text": "a product put through one worker"}
            assert client.put("/v1/items", json=product).status_code == 200
        seen: dict[int, int] = {}

        def everyone_serves_it() -> bool:
            answer = healthz(server)
            seen[answer["worker"]] = answer["items"]
            return len(seen) == 2 and set(seen.values()) == {before + 1}

        until(everyone_serves_it, 10, "the product on both workers")

        user = str(log.user_ids[0])

        def items(user_id: str) -> list[str]:
            body = {"user_id": user_id, "k": 10}
            answer = httpx.post(f"{server.url}/v1/recommend", json=body, timeout=10)
            assert answer.status_code == 200, answer.text
            return [r["item_id"] for r in answer.json()["items"]]

        # Events posted through either worker drive every worker's next answer.
        shopper, before_events = "a-new-shopper", items("a-new-shopper")
        bought = [str(i) for i in served_artifact[0].catalogue.item_ids[-3:]]
        events = [
            {"event_id": f"w-{n}", "user_id": shopper, "item_id": item, "timestamp": 1.7e9 + n}
            for n, item in enumerate(bought)
        ]
        assert httpx.post(f"{server.url}/v1/events", json=events, timeout=10).status_code == 200
        after_events = {tuple(items(shopper)) for _ in range(20)}  # fresh connections: both
        assert len(after_events) == 1 and list(after_events.pop()) != before_events

        stranger = items("a-stranger")
        assert items(user) != stranger  # the user's long-term memory personalises
        assert httpx.delete(f"{server.url}/v1/users/{user}/events", timeout=10).status_code == 200
        time.sleep(1.5)  # three follow rounds
        assert all(items(user) == stranger for _ in range(20))  # fresh connections: both

        statuses: list[int] = []
        done = threading.Event()

        def recommend_until_done() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while not done.is_set():
                    body = {"user_id": str(log.user_ids[len(statuses) % len(log.user_ids)])}
                    statuses.append(client.post("/v1/recommend", json=body).status_code)

        clients = [threading.Thread(target=recommend_until_done) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            assert httpx.post(f"{server.url}/v1/admin/reload", timeout=60).status_code == 200
            until(lambda: server.log.read_text().count("reloaded") >= 2, 30, "both reloading")
            server.process.send_signal(signal.SIGHUP)  # the parent: both reload again
            until(lambda: server.log.read_text().count("reloaded") >= 4, 30, "both again")
        finally:
            done.set()
            for thread in clients:
                thread.join(timeout=30)
        assert len(statuses) > 20 and set(statuses) == {200}
    finally:
        server.stop()
    assert server.process.returncode == 0
    until(lambda: not any(alive(pid) for pid in pids), 10, "the workers' exit")


def test_a_worker_that_dies_stops_the_server(artifact: Path, tmp_path: Path) -> None:  # noqa: F811
    server = Server(artifact, tmp_path / "server.log", options=WORKERS)
    try:
        pids = worker_pids(server)
        os.kill(min(pids), signal.SIGKILL)
        assert server.process.wait(timeout=30) == 1
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
    until(lambda: not any(alive(pid) for pid in pids), 10, "the other worker's exit")
    assert "exited with status" in server.log.read_text()


@pytest.mark.parametrize("option", ["0", "-1"])
def test_workers_must_be_positive(tmp_path: Path, option: str, capsys) -> None:
    """Refused before anything loads (the artifact need not even exist)."""
    from starsrec.cli.commands import main

    assert main(["serve", str(tmp_path / "no-artifact"), "--workers", option]) == 2
    assert f"--workers must be >= 1, got {option}" in capsys.readouterr().err


def test_kept_alive_connections_spread_over_the_workers(
    artifact: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The parent hands connections out in turn: four kept-alive clients, two per worker
    (the kernel's SO_REUSEPORT hash had put all four on one worker)."""
    server = Server(artifact, tmp_path / "server.log", options=WORKERS)
    clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(4)]
    try:
        worker_pids(server)
        # Each client asks twice on its one connection: the same worker answers both.
        answers = [[c.get("/healthz").json()["worker"] for _ in range(2)] for c in clients]
        assert all(first == second for first, second in answers)
        per_worker = [first for first, _ in answers]
        assert sorted(per_worker.count(pid) for pid in set(per_worker)) == [2, 2]
    finally:
        for client in clients:
            client.close()
        server.stop()


def test_a_second_server_cannot_take_the_workers_port() -> None:
    """The workers' port is the parent's alone: another server started on it is refused."""
    from starsrec.web.workers import listening_socket

    first = listening_socket("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}"):
            listening_socket("127.0.0.1", port)
    finally:
        first.close()
