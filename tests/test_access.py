"""Access defaults: the server binds to loopback unless told otherwise, and sends no CORS
headers, so another site's page in a shopper's browser cannot read or call the API."""

from __future__ import annotations

from fastapi.testclient import TestClient

from starsrec.cli import build_parser
from starsrec.serving.service import RecommendationService
from starsrec.web.app import create_app


def test_serve_binds_to_loopback_by_default() -> None:
    args = build_parser().parse_args(["serve", "artifacts/x"])
    assert args.host == "127.0.0.1"


def test_cors_is_off_by_default(served_artifact) -> None:
    _, _, artifact = served_artifact
    service = RecommendationService.load(artifact)
    origin = {"Origin": "https://elsewhere.example"}
    with TestClient(create_app(service=service)) as client:
        read = client.post("/v1/recommend", json={"k": 2}, headers=origin)
        assert read.status_code == 200
        assert "access-control-allow-origin" not in read.headers
        preflight = client.options(
            "/v1/events", headers={**origin, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code >= 400
        assert "access-control-allow-origin" not in preflight.headers
    service.store.close()
