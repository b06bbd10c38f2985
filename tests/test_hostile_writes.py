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
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import free_port
from starsrec import cli
from starsrec.data.files import MEMORY_FILE, SERVING_DIR
from starsrec.serving.service import RecommendationService
from starsrec.web.app import create_app
from test_hostile import JSON, call_asgi

KEY = "hostile-writes-test-key"


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
    """`uvicorn.run` replaced by a recorder: a `starsrec serve` that passes its checks."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    return calls


def serve(artifact: Path, *options: str) -> list[str]:
    return ["serve", str(artifact), *options]


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
