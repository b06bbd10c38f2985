"""Hostile clients (issue 20, findings 4, 5 and 7): writes are closed unless a key is set or
the operator opens them explicitly; time cannot be poisoned (timestamps bounded by the
server's clock, a store window that future events cannot fill) and a user's events can be
forgotten; strict types, escaped logs, security headers, no Host-derived redirects, short
refusals without paths, and a one-line error when `starsrec serve` refuses to start.

In-process except where a process matters (a refused start)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import free_port
from starsrec import cli
from starsrec.data.files import MEMORY_FILE, SERVING_DIR
from starsrec.serving.service import RecommendationService
from starsrec.serving.store import Event, EventStore
from starsrec.web.app import create_app
from test_hostile import JSON, call_asgi
from test_store import store  # noqa: F401  (both backends' store fixture)

KEY = "hostile-writes-test-key"
DAY = 86_400.0


@pytest.fixture(scope="module")
def artifact(served_artifact, tmp_path_factory) -> Path:
    _, _, original = served_artifact
    return Path(shutil.copytree(original, tmp_path_factory.mktemp("writes") / "artifact"))


@pytest.fixture(scope="module")
def service(artifact) -> Iterator[RecommendationService]:
    service = RecommendationService.load(artifact)
    yield service
    service.store.close()


@pytest.fixture(scope="module")
def client(service) -> Iterator[TestClient]:
    """Writes need the key (KEY), as `starsrec serve` with STARSREC_API_KEY set."""
    app = create_app(service=service, api_key=KEY)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["authorization"] = f"Bearer {KEY}"
        yield client


def an_item(service: RecommendationService) -> str:
    return next(iter(service.items.row_of))


# --- finding 4: writes are closed unless a key is set or they are opened explicitly ----------
WRITES = [("POST", "/v1/events"), ("PUT", "/v1/items"), ("POST", "/v1/admin/reload")]


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_writes_are_closed_without_a_key_and_refused_before_the_body(
    service, method: str, path: str
) -> None:
    event = {"user_id": "u", "item_id": an_item(service), "event_id": f"closed {path}"}
    body = json.dumps(event).encode()
    headers = {**JSON, "content-length": str(len(body))}
    status, answer, asked = call_asgi(create_app(service=service), method, path, headers, [body])
    assert (status, asked) == (403, 0), answer
    detail = json.loads(answer)["detail"]
    assert "API key" in detail and "--insecure-open-writes" in detail
    assert not service.store.has(f"closed {path}")
    # Reads stay open; the explicit opt-in opens writes.
    read = call_asgi(create_app(service=service), "POST", "/v1/recommend", JSON, [b'{"k": 2}'])
    assert read[0] == 200
    opened = create_app(service=service, insecure_open_writes=True)
    if path == "/v1/events":
        assert call_asgi(opened, method, path, headers, [body])[0] == 200


def test_open_writes_are_warned_about_at_start(service, caplog) -> None:
    with caplog.at_level(logging.INFO), TestClient(create_app(service=service)):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    app = create_app(service=service, insecure_open_writes=True)
    with caplog.at_level(logging.INFO), TestClient(app):
        pass
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "writes are open" in warning.getMessage()


def test_a_short_key_and_contradictory_settings_are_refused(service) -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(service=service, api_key="x")
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(service=service, api_key="k" * 15)
    create_app(service=service, api_key="k" * 16)
    with pytest.raises(ValueError, match="insecure"):
        create_app(service=service, api_key=KEY, insecure_open_writes=True)
    with pytest.raises(ValueError, match="protect_reads"):
        create_app(service=service, protect_reads=True)


@pytest.fixture
def no_uvicorn(monkeypatch) -> list[dict]:
    """`uvicorn.Server.run` replaced by a recorder: a `starsrec serve` that passes its checks."""
    import uvicorn

    calls: list[dict] = []

    def record(server, sockets=None) -> None:
        calls.append(vars(server.config))

    monkeypatch.setattr(uvicorn.Server, "run", record)
    return calls


def serve(artifact: Path, *options: str) -> list[str]:
    """In this process: one worker (more would fork the test run)."""
    return ["serve", str(artifact), "--workers", "1", *options]


def test_serving_off_loopback_needs_a_key(artifact, no_uvicorn, monkeypatch, capsys) -> None:
    monkeypatch.delenv("STARSREC_API_KEY", raising=False)
    for options in (
        ("--host", "0.0.0.0"),
        ("--host", "192.168.1.5", "--insecure-open-writes"),
        ("--host", "::"),
        ("--host", "example.org"),
    ):
        assert cli.main(serve(artifact, *options)) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and "loopback" in error, error
        assert "Traceback" not in error
    assert no_uvicorn == []
    monkeypatch.setenv("STARSREC_API_KEY", "short")
    assert cli.main(serve(artifact)) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    # Loopback without a key serves (writes closed); off loopback with a key serves.
    monkeypatch.delenv("STARSREC_API_KEY")
    for host in ("127.0.0.1", "localhost", "::1"):
        assert cli.main(serve(artifact, "--host", host)) == 0
    monkeypatch.setenv("STARSREC_API_KEY", KEY)
    assert cli.main(serve(artifact, "--host", "0.0.0.0")) == 0
    assert [call["host"] for call in no_uvicorn] == ["127.0.0.1", "localhost", "::1", "0.0.0.0"]


def test_a_refused_start_is_a_one_line_error_not_a_traceback(artifact, tmp_path) -> None:
    """A damaged artifact used to be found in the app's lifespan, under uvicorn, which
    printed a 24-line traceback; now `starsrec serve` loads it first and says why."""
    broken = Path(shutil.copytree(artifact, tmp_path / "broken"))
    memory = broken / SERVING_DIR / MEMORY_FILE
    memory.write_bytes(memory.read_bytes()[:100])
    port = str(free_port())
    command = [sys.executable, "-m", "starsrec.cli", "serve", str(broken), "--port", port]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "starsrec index" in errors[0], done.stderr


# --- finding 5: time that cannot be poisoned, and a user's events forgotten -------------------
def test_events_and_requests_past_the_clock_skew_are_refused(service, client) -> None:
    item = an_item(service)
    now = time.time()
    for future in (now + 2 * DAY, 1e11 - 1, 5e10):
        event = {"user_id": "time-traveller", "item_id": item, "timestamp": future}
        answer = client.post("/v1/events", json={**event, "event_id": f"f{future}"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "events[0].timestamp"
        assert "clock" in answer.json()["detail"]
        answer = client.post("/v1/recommend", json={"k": 2, "timestamp": future})
        assert answer.status_code == 422 and answer.json()["field"] == "timestamp", answer.text
        request = {"k": 2, "events": [{"item_id": item, "timestamp": future}]}
        assert client.post("/v1/recommend", json=request).status_code == 422
    assert service.store.recent("time-traveller", 10) == []
    soon = {"user_id": "time-traveller", "item_id": item, "timestamp": now + 3600}
    assert client.post("/v1/events", json={**soon, "event_id": "soon"}).status_code == 200
    assert client.post("/v1/recommend", json={"k": 2, "timestamp": now + 3600}).status_code == 200


def test_the_clock_skew_is_configurable(artifact, service, client, monkeypatch) -> None:
    args = cli.build_parser().parse_args(serve(artifact, "--max-clock-skew", "60"))
    assert args.max_clock_skew == 60
    assert cli.build_parser().parse_args(serve(artifact)).max_clock_skew == DAY
    monkeypatch.setattr(service, "config", replace(service.config, max_future_s=60.0))
    event = {"user_id": "u", "item_id": an_item(service), "timestamp": time.time() + 120}
    answer = client.post("/v1/events", json=event)
    assert answer.status_code == 422 and "60 s" in answer.json()["detail"], answer.text


def history(user: str, n: int, start: float) -> list[Event]:
    return [Event(f"{user}-{start}-{e}", user, "i", "view", start + e) for e in range(n)]


def test_future_events_cannot_hide_a_users_history_in_the_store(store: EventStore) -> None:  # noqa: F811
    """The store's window is the newest events at or before the request time: 500 events in
    the year 5138 used to fill it, and the real history was filtered out after the read."""
    now = time.time()
    real = history("victim", 20, now - DAY)
    store.append(real)
    store.append(history("victim", 500, 1e11 - 1000))
    assert store.recent("victim", 50, now) == real
    assert store.recent("victim", 5, now) == real[-5:]
    assert store.recent_many(["victim", "nobody"], 50, now) == {"victim": real, "nobody": []}
    assert len(store.recent("victim", 50)) == 50  # no request time: the newest, as before


def test_future_events_cannot_hide_a_users_history_from_recommendations(service) -> None:
    """Even events stored before the clock bound (or under a generous skew) leave a user's
    personalisation intact for requests at the present."""
    user = next(iter(service.memories))
    item = an_item(service)
    now = time.time()
    service.add_events(
        [Event(f"real-{n}", user, item, service.main_event_type, now - 60 + n) for n in range(3)]
    )
    before = [r.item_id for r in service.recommend(user, k=5, at=now)]
    poison = [
        Event(f"poison-{n}", user, item, service.main_event_type, 1e11 - 1000 + n)
        for n in range(service.config.history_limit)
    ]
    service.store.append(poison)  # the store itself takes any valid time
    after = service.recommend(user, k=5, at=now)
    assert [r.item_id for r in after] == before
    assert {r.memory for r in after} != {"context"}


def test_a_users_events_can_be_forgotten_in_the_store(store: EventStore) -> None:  # noqa: F811
    store.append(history("leaver", 30, 1000.0) + history("stayer", 3, 1000.0))
    count = store.count()
    assert store.forget("leaver") == 30
    assert store.recent("leaver", 100) == [] and store.count() == count - 30
    assert not store.has("leaver-1000.0-0") and store.has("stayer-1000.0-0")
    assert store.forget("leaver") == 0 and store.forget("nobody") == 0
    assert len(store.recent("stayer", 10)) == 3
    store.append(history("leaver", 2, 2000.0))  # a new event after forgetting is stored
    assert len(store.recent("leaver", 10)) == 2


def test_delete_forgets_a_users_events_and_needs_the_key(service, client) -> None:
    item = an_item(service)
    user = "leaver/with a slash"
    events = [{"user_id": user, "item_id": item, "event_id": f"gone-{n}"} for n in range(4)]
    assert client.post("/v1/events", json=events).json()["stored"] == 4
    query = {"user_id": user}  # an id with "/" cannot be a path segment
    anonymous = client.delete("/v1/events", params=query, headers={"authorization": ""})
    assert anonymous.status_code == 401
    answer = client.delete("/v1/events", params=query)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"user_id": user, "forgotten": 4}
    assert service.store.recent(user, 10) == [] and not service.store.has("gone-0")
    assert client.delete("/v1/events", params=query).json()["forgotten"] == 0
    # A user with a long-term memory loses it too (in this process).
    remembered = next(iter(service.memories))
    assert client.delete(f"/v1/users/{remembered}/events").status_code == 200
    assert remembered not in service.memories
    assert client.get(f"/v1/users/{remembered}").status_code == 404


# --- finding 7: strict types, escaped logs, headers, redirects, paths, healthz, ids with / -----
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/recommend", {"k": "5"}, "k"),
        ("/v1/recommend", {"k": True}, "k"),
        ("/v1/recommend", {"k": 5.0}, "k"),
        ("/v1/recommend", {"timestamp": True}, "timestamp"),
        ("/v1/recommend", {"events": [{"item_id": "x", "timestamp": False}]}, "timestamp"),
        ("/v1/recommend", {"filters": {"in_stock_only": "yes"}}, "in_stock_only"),
        ("/v1/events", {"user_id": "u", "item_id": "x", "timestamp": True}, "timestamp"),
    ],
)
def test_k_booleans_and_timestamps_must_have_their_json_types(client, path, body, field) -> None:
    answer = client.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert field in answer.text


def test_ids_with_newlines_are_escaped_in_logs(service, client, caplog) -> None:
    hostile = "evil\nERROR starsrec forged line\r"
    with caplog.at_level(logging.INFO):
        answer = client.put("/v1/items", json={"item_id": hostile, "text": "product 1 of line 1"})
        assert answer.status_code == 200, answer.text
        assert client.delete("/v1/users/evil%0Aforged/events").status_code == 200
        assert client.delete("/v1/events", params={"user_id": "a\nb"}).status_code == 200
    messages = [r.getMessage() for r in caplog.records]
    assert messages and not [m for m in messages if "\n" in m or "\r" in m], messages
    assert any("evil\\nERROR" in m for m in messages), messages


def test_the_explorer_page_sends_security_headers(client) -> None:
    for path in ("/", "/explorer/app.js"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff"
    page = client.get("/").headers
    assert page["x-frame-options"] == "DENY"
    policy = page["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_trailing_slashes_get_no_host_derived_redirect(client) -> None:
    for path in ("/v1/catalogue/", "/v1/users/", "/metrics/", "/healthz/"):
        answer = client.get(path, headers={"host": "evil.example"}, follow_redirects=False)
        assert answer.status_code == 404, (path, answer.status_code)
        assert "evil.example" not in answer.headers.get("location", "")


def test_a_refused_reload_names_no_absolute_path(artifact, tmp_path) -> None:
    copy = Path(shutil.copytree(artifact, tmp_path / "reloaded"))
    memory = copy / SERVING_DIR / MEMORY_FILE
    app = create_app(RecommendationService.load(copy), reload_from=copy, api_key=KEY)
    with TestClient(app) as client:
        memory.write_bytes(memory.read_bytes()[:100])
        answer = client.post("/v1/admin/reload", headers={"authorization": f"Bearer {KEY}"})
    assert answer.status_code == 409, answer.text
    detail = answer.json()["detail"]
    assert "still serving" in detail and "starsrec index" in detail
    assert str(tmp_path) not in detail and str(copy.resolve()) not in detail, detail
    assert "/tmp" not in detail and "/home" not in detail, detail


def test_healthz_hides_the_event_count_under_protect_reads(service) -> None:
    with TestClient(create_app(service=service, api_key=KEY)) as client:
        assert "events" in client.get("/healthz").json()
    app = create_app(service=service, api_key=KEY, protect_reads=True)
    with TestClient(app) as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_similar_takes_the_item_id_as_a_query_parameter(service, client) -> None:
    product = {"item_id": "pack/6 of 12", "text": "product 2 of line 1, six pack"}
    assert client.put("/v1/items", json=product).status_code == 200
    answer = client.get("/v1/items/similar", params={"item_id": "pack/6 of 12", "k": 3})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["items"]) == 3
    assert client.get("/v1/items/similar", params={"item_id": "no such"}).status_code == 404
    assert client.get("/v1/items/similar").status_code == 422
    same = client.get(f"/v1/items/{an_item(service)}/similar", params={"k": 3}).json()
    query = client.get("/v1/items/similar", params={"item_id": an_item(service), "k": 3})
    assert query.json() == same
