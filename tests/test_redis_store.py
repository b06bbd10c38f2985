"""The Redis event store: what differs from SQLite, and several serving replicas sharing it.

The behaviour both backends share (ordering, idempotency, validation, threads, bulk load) is
tested in tests/test_store.py on both. Tests needing a server skip when redis-server is not
installed (scripts/redis-server.sh installs it; `make test-setup` runs it)."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest
from fastapi.testclient import TestClient

from conftest import RedisServer, free_port, start_redis
from starsrec.cli import build_parser
from starsrec.serving.config import ServingConfig
from starsrec.serving.redis_store import RedisEventStore
from starsrec.serving.service import RecommendationService
from starsrec.serving.store import Event
from starsrec.web.app import create_app
from test_serving import DAY, world  # noqa: F401  (the toy-world artifact fixture)

redis = pytest.importorskip("redis")


def ev(event_id: str, user: str = "u1", ts: float = 0.0) -> Event:
    return Event(event_id, user, "item", "view", ts)


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


def test_bad_url_and_unreachable_server_are_clear_value_errors() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(
        ValueError,
        match=rf"cannot reach a Redis server at redis://127\.0\.0\.1:{port}/0.*redis-server",
    ):
        RedisEventStore(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(ValueError, match=r"redis://:\*\*\*@127") as caught:
        RedisEventStore(f"redis://:s3cret@127.0.0.1:{port}/0")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ValueError, match="'http://localhost:6379' is not a Redis URL"):
        RedisEventStore("http://localhost:6379")
    with pytest.raises(ValueError, match="not a Redis URL"):
        RedisEventStore("127.0.0.1:6379")
    with pytest.raises(ValueError, match=r"bad Redis URL 'redis://127\.0\.0\.1:port/0'"):
        RedisEventStore("redis://127.0.0.1:port/0")


def test_bad_database_number_is_refused(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match=r"refused the store.*database number"):
        RedisEventStore(f"{redis_server.url}/99")


def test_stores_on_one_server_share_events_and_prefixes_keep_apart(redis_url: str) -> None:
    prefix = unique_prefix()
    with RedisEventStore(redis_url, prefix) as a, RedisEventStore(redis_url, prefix) as b:
        assert a.append([ev("x", ts=2), ev("y", ts=1)]) == 2
        assert [e.event_id for e in b.recent("u1", 5)] == ["y", "x"]
        assert b.append([ev("x", ts=9)]) == 0  # a retry through another replica
        assert b.latest_time("u1") == 2.0 and "x" in b
        with RedisEventStore(redis_url, unique_prefix()) as other:
            assert other.count() == 0 and other.recent("u1", 5) == []
    with pytest.raises(ValueError, match="is closed"):
        a.count()
    a.close()  # idempotent


def test_replicas_appending_the_same_ids_concurrently_store_each_once(redis_url: str) -> None:
    """Two stores (two replicas) x 2 threads, all posting overlapping ids."""
    prefix = unique_prefix()
    stores = [RedisEventStore(redis_url, prefix) for _ in range(2)]
    added = []
    errors: list[BaseException] = []

    def writer(store: RedisEventStore, offset: int) -> None:
        try:
            for i in range(0, 300, 15):
                ids = range(i + offset, i + offset + 15)
                added.append(store.append([ev(f"e{j}", user=f"u{j % 3}", ts=j) for j in ids]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(stores[t % 2], 5 * t)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert sum(added) == stores[0].count() == 315  # ids e0 .. e314, each stored once
    for u in range(3):
        got = stores[1].recent(f"u{u}", 1000)
        assert [e.event_id for e in got] == [f"e{j}" for j in range(u, 315, 3)]
    for store in stores:
        store.close()


def test_acknowledged_events_survive_a_server_kill(tmp_path) -> None:
    server = start_redis(tmp_path / "data")
    try:
        with RedisEventStore(f"{server.url}/0") as store:
            for batch in range(5):
                events = [ev(f"e{batch}-{i}", "u", batch * 100 + i) for i in range(20)]
                assert store.append(events) == 20
        server.stop(kill=True)  # SIGKILL: only what reached the append-only file survives
        server = start_redis(tmp_path / "data", port=server.port)
        with RedisEventStore(f"{server.url}/0") as store:
            assert store.count() == 100
            assert [e.event_id for e in store.recent("u", 2)] == ["e4-18", "e4-19"]
            assert store.append([ev("e0-0", "u", 5.0), ev("new", "u", 1.0)]) == 1
            assert [e.event_id for e in store.recent("u", 1)] == ["e4-19"]
    finally:
        server.stop()


def test_weak_persistence_is_warned_about(tmp_path, redis_url, caplog) -> None:
    with caplog.at_level(logging.WARNING, "starsrec.serving.redis_store"):
        RedisEventStore(redis_url).close()  # the durable test server: no warning
        assert not caplog.records
        server = start_redis(tmp_path / "weak", options=("--appendonly", "no"))
        try:
            RedisEventStore(f"{server.url}/0").close()
        finally:
            server.stop()
    assert "acknowledged events may be lost" in caplog.text


def test_serve_takes_a_store_url() -> None:
    args = build_parser().parse_args(["serve", "art", "--store-url", "redis://h:6379/1"])
    assert args.store_url == "redis://h:6379/1"
    assert build_parser().parse_args(["serve", "art"]).store_url is None


# -- replicas ----------------------------------------------------------------------------
AT = 1_750_000_000.0  # in the past: the service refuses future times


@pytest.fixture
def shared_url(redis_server: RedisServer) -> str:
    """An empty database 1 of the test server, for services using the default prefix."""
    client = redis.Redis(port=redis_server.port, db=1)
    client.flushdb()
    client.close()
    return f"{redis_server.url}/1"


def chain(user: str, line: int = 3) -> list[Event]:
    """A shopper walking line `line` (items 2, 3, 4), one purchase a day, like the toy world."""
    return [
        Event(f"{user}-{n}", user, f"s{line}-n{n}", "purchase", AT + n * DAY) for n in (2, 3, 4)
    ]


def test_an_event_posted_to_one_replica_drives_the_next_request_on_another(
    world,  # noqa: F811
    shared_url: str,
) -> None:
    """Issue 5's 'done when': two services on one artifact and one Redis share sessions."""
    _, _, artifact = world
    config = ServingConfig(store_url=shared_url)
    a = RecommendationService.load(artifact, config)
    b = RecommendationService.load(artifact, config)
    try:
        assert isinstance(a.store, RedisEventStore) and a.store is not b.store
        assert {r.memory for r in b.recommend("walker", k=5, at=AT)} == {"context"}
        assert a.add_events(chain("walker")) == 3
        results = b.recommend("walker", k=5, at=AT + 5 * DAY)
        assert results[0].item_id == "s3-n5"  # the successor of the chain posted to A
        assert results[0].memory in {"session", "long-term"}
        assert b.add_events(chain("walker")[-1:]) == 0  # a retry through B: idempotent
    finally:
        a.store.close()
        b.store.close()


def test_replicas_share_sessions_over_http(world, shared_url: str) -> None:  # noqa: F811
    _, _, artifact = world
    config = ServingConfig(store_url=shared_url)
    service = RecommendationService.load(artifact, config)
    # Replica B loads the artifact itself, with the store URL, as `starsrec serve` does.
    app_a = create_app(service=service, insecure_open_writes=True)
    app_b = create_app(RecommendationService.load(artifact, config), insecure_open_writes=True)
    with TestClient(app_a) as replica_a, TestClient(app_b) as replica_b:
        for event in chain("http-walker", line=1):
            body = {
                "event_id": event.event_id,
                "user_id": event.user_id,
                "item_id": event.item_id,
                "event_type": event.event_type,
                "timestamp": event.timestamp,
            }
            assert replica_a.post("/v1/events", json=body).json() == {"received": 1, "stored": 1}
        assert replica_b.get("/healthz").json()["events"] == 3
        request = {"user_id": "http-walker", "k": 3, "timestamp": AT + 5 * DAY}
        response = replica_b.post("/v1/recommend", json=request)
        assert response.status_code == 200, response.text
        assert response.json()["items"][0]["item_id"] == "s1-n5"
    service.store.close()
