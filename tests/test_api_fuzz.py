"""A schema-driven fuzz of the HTTP API from its own OpenAPI document (schemathesis): valid
and invalid requests to every operation, sent over HTTP to a live server, and not one 5xx."""

from __future__ import annotations

import os
import shutil
import threading
import time

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from conftest import free_port
from starsrec.serving.service import RecommendationService
from starsrec.web.app import create_app

# The document only: creating the app reads nothing from its service, so none is given.
schema = schemathesis.openapi.from_dict(create_app(service=None).openapi())


@pytest.fixture(scope="module")
def live_url(served_artifact, tmp_path_factory):
    """uvicorn on loopback over a private copy of the tiny artifact (the fuzz writes)."""
    _, _, artifact = served_artifact
    copy = shutil.copytree(artifact, tmp_path_factory.mktemp("fuzz") / "artifact")
    service = RecommendationService.load(copy)
    port = free_port()
    config = uvicorn.Config(
        create_app(service=service, insecure_open_writes=True), port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
            break
        except httpx.TransportError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)
    service.store.close()


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_server_error(case, live_url: str) -> None:
    case.call_and_validate(base_url=live_url, checks=[not_a_server_error])
