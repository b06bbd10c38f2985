"""Hostile clients (issue 20, finding 6): product writes never block the event loop, are
bounded per request and in all, and a restart or reload embeds no product text twice.

A slow encoder is simulated by holding the (tiny, deterministic) hashing encoder at a gate:
what matters is the order of events (/healthz answered while a write was still embedding),
not wall-clock thresholds. Encoder work is counted as the texts it was given."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from starsrec.data.files import EMBEDDINGS_DIR, SERVING_DIR
from starsrec.features.encoders import HashingEncoder
from starsrec.serving import product_tokens
from starsrec.serving.catalogue import Product
from starsrec.serving.service import RecommendationService
from starsrec.web.app import create_app
from test_server_process import Server


@pytest.fixture
def artifact(served_artifact, tmp_path) -> Path:
    _, _, original = served_artifact
    return Path(shutil.copytree(original, tmp_path / "artifact"))


@pytest.fixture
def service(artifact) -> Iterator[RecommendationService]:
    service = RecommendationService.load(artifact)
    yield service
    service.store.close()


def products(prefix: str, n: int) -> list[dict]:
    """`n` products with texts no earlier test embedded (so the encoder sees them)."""
    return [
        {"item_id": f"{prefix}-{i}", "text": f"{prefix} product {i} of line 3"} for i in range(n)
    ]


class Gate:
    """Replaces HashingEncoder.encode: each call counts its texts and, while `held`, waits
    at the gate until released (or 5 s pass: then `released_in_time` records False)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, held: bool = True) -> None:
        self.held = held
        self.entered = threading.Event()
        self.release = threading.Event()
        self.texts = 0
        self.active = self.most_active = 0
        self.released_in_time: list[bool] = []
        self._lock = threading.Lock()
        encode = HashingEncoder.encode

        def gated(encoder: HashingEncoder, texts: list[str]) -> np.ndarray:
            with self._lock:
                self.texts += len(texts)
                self.active += 1
                self.most_active = max(self.most_active, self.active)
            self.entered.set()
            try:
                if self.held:
                    self.released_in_time.append(self.release.wait(5))
                return encode(encoder, texts)
            finally:
                with self._lock:
                    self.active -= 1

        monkeypatch.setattr(HashingEncoder, "encode", gated)


def run(scenario: Callable[[httpx.AsyncClient], object], app) -> object:
    """Run an async scenario against `app` in-process (one event loop, like uvicorn's)."""

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await scenario(client)

    return asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_healthz_and_recommend_answer_while_a_put_is_embedding(service, monkeypatch) -> None:
    """A PUT of 10,000 products held the event loop for 48 s: now the embedding runs in a
    worker thread, and other requests are answered while it is still under way."""
    gate = Gate(monkeypatch)
    app = create_app(service=service, insecure_open_writes=True)

    async def scenario(client: httpx.AsyncClient):
        put = asyncio.create_task(client.put("/v1/items", json=products("slow", 200)))
        assert await asyncio.to_thread(gate.entered.wait, 10), "the PUT never reached the encoder"
        health = await client.get("/healthz")
        recommended = await client.post("/v1/recommend", json={"k": 3})
        put_was_running = not put.done()
        gate.release.set()
        return health, recommended, put_was_running, await put

    health, recommended, put_was_running, put = run(scenario, app)
    assert gate.released_in_time == [True], "the encoder held the loop until its timeout"
    assert put_was_running
    assert health.status_code == 200 and recommended.status_code == 200
    assert put.status_code == 200, put.text
    assert {item["status"] for item in put.json()["items"]} == {"added"}
    assert "slow-199" in service.items.row_of


def test_two_product_writes_never_interleave(service, monkeypatch) -> None:
    gate = Gate(monkeypatch)
    app = create_app(service=service, insecure_open_writes=True)

    async def scenario(client: httpx.AsyncClient):
        first = asyncio.create_task(client.put("/v1/items", json=products("first", 5)))
        assert await asyncio.to_thread(gate.entered.wait, 10)
        second = asyncio.create_task(client.put("/v1/items", json=products("second", 5)))
        await asyncio.sleep(0.3)  # time for the second to reach the encoder, were it free to
        waited = gate.active == 1
        gate.release.set()
        return waited, await first, await second

    waited, first, second = run(scenario, app)
    assert waited and gate.most_active == 1, "two writes embedded at once"
    assert first.status_code == second.status_code == 200
    assert {"first-4", "second-4"} <= service.items.row_of.keys()


def test_a_reload_waits_for_the_product_write_in_progress(artifact, monkeypatch) -> None:
    """The swap waits for a write being embedded, so the write reaches the new service."""
    service = RecommendationService.load(artifact)
    loaded = threading.Event()
    load = RecommendationService.load

    def load_and_tell(*args, **kwargs):
        fresh = load(*args, **kwargs)
        loaded.set()
        return fresh

    monkeypatch.setattr(RecommendationService, "load", load_and_tell)
    gate = Gate(monkeypatch)
    app = create_app(service, reload_from=artifact, insecure_open_writes=True)

    async def scenario(client: httpx.AsyncClient):
        put = asyncio.create_task(client.put("/v1/items", json=products("during", 3)))
        assert await asyncio.to_thread(gate.entered.wait, 10)
        reload = asyncio.create_task(client.post("/v1/admin/reload"))
        assert await asyncio.to_thread(loaded.wait, 30), "the reload did not load"
        await asyncio.sleep(0.2)  # the reload now waits for the write
        gate.release.set()
        answers = await put, await reload
        similar = await client.get("/v1/items/similar", params={"item_id": "during-2"})
        return (*answers, similar)

    put, reload, similar = run(scenario, app)
    assert put.status_code == 200 and reload.status_code == 200, (put.text, reload.text)
    assert similar.status_code == 200, "the product did not reach the reloaded service"
    service.store.close()


def test_a_restart_and_a_reload_embed_no_product_text_again(artifact, monkeypatch) -> None:
    """A restart after 32,001 logged products took 158 s: every text was embedded again.
    Now the texts' embeddings are cached in the artifact (serving/embeddings/)."""
    gate = Gate(monkeypatch, held=False)
    first = RecommendationService.load(artifact)
    first.upsert_items([Product(p["item_id"], p["text"]) for p in products("kept", 40)])
    assert gate.texts == 40
    assert (artifact / SERVING_DIR / EMBEDDINGS_DIR).is_dir()
    tokens = first.items.tokens[first.items.row_of["kept-7"]]
    first.store.close()

    monkeypatch.setattr(product_tokens, "_CACHES", {})  # a new process: nothing in memory
    gate.texts = 0
    restarted = RecommendationService.load(artifact)
    assert gate.texts == 0, f"the restart embedded {gate.texts} texts again"
    np.testing.assert_allclose(restarted.items.tokens[restarted.items.row_of["kept-7"]], tokens)
    # A changed text is embedded (once); the others are not.
    restarted.upsert_items([Product("kept-3", "kept product 3, now in blue")])
    assert gate.texts == 1
    with TestClient(
        create_app(restarted, reload_from=artifact, insecure_open_writes=True)
    ) as client:
        client.post("/v1/admin/reload").raise_for_status()
    assert gate.texts == 1, "the reload embedded texts again"
    restarted.store.close()


PER_REQUEST = "max_products_per_request"


def test_a_batch_over_the_per_request_cap_gets_a_422_naming_it(service, monkeypatch) -> None:
    monkeypatch.setattr(service, "config", replace(service.config, max_products_per_request=10))
    gate = Gate(monkeypatch, held=False)
    with TestClient(create_app(service=service, insecure_open_writes=True)) as client:
        answer = client.put("/v1/items", json=products("many", 11))
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert answer.json()["field"] == "items"
        assert "at most 10" in detail and PER_REQUEST in detail
        assert "--max-products-per-request" in detail
        assert gate.texts == 0 and "many-0" not in service.items.row_of  # nothing was embedded
        assert client.put("/v1/items", json=products("many", 10)).status_code == 200


def test_the_catalogue_cap_refuses_new_products_with_409_and_the_remedy(
    service, monkeypatch, artifact, caplog
) -> None:
    """The catalogue had no cap: a flood of new ids grew it (and memory) without end."""
    trained = len(service.items)
    monkeypatch.setattr(service, "config", replace(service.config, max_added_products=5))
    with TestClient(create_app(service=service, insecure_open_writes=True)) as client:
        assert client.put("/v1/items", json=products("cap", 4)).status_code == 200
        answer = client.put("/v1/items", json=products("over", 2))
        assert answer.status_code == 409, answer.text
        detail = answer.json()["detail"]
        assert "cap of 5" in detail and "max_added_products" in detail, detail
        assert "--max-added-products" in detail
        assert "over-0" not in service.items.row_of and len(service.items) == trained + 4
        # Filling to the cap, and changing existing products, are still allowed.
        assert client.put("/v1/items", json=products("over", 1)).status_code == 200
        changed = [{"item_id": "cap-1", "text": "cap product 1, changed"}]
        assert client.put("/v1/items", json=changed).status_code == 200
        assert client.put("/v1/items", json=products("more", 1)).status_code == 409
    # A restart under a lower cap keeps every acknowledged product, with a warning.
    service.store.close()
    with caplog.at_level(logging.WARNING):
        lowered = RecommendationService.load(
            artifact, replace(service.config, max_added_products=2)
        )
    assert len(lowered.items) == trained + 5
    assert any("over the cap" in r.getMessage() for r in caplog.records)
    lowered.store.close()


def test_the_text_encoder_is_loaded_at_start_when_products_can_be_put(service, monkeypatch) -> None:
    """The first PUT used to load the encoder (3.8 s for the sentence transformer)."""
    made: list[str] = []
    make = product_tokens.named_encoder
    monkeypatch.setattr(product_tokens, "named_encoder", lambda *a: (made.append("x"), make(*a))[1])
    with TestClient(create_app(service=service)):  # writes closed: no products
        pass
    assert made == []
    with TestClient(create_app(service=service, insecure_open_writes=True)) as client:
        assert made == ["x"]  # at start
        assert client.put("/v1/items", json=products("warm", 1)).status_code == 200
    assert made == ["x"]  # not again at the first PUT


def test_a_server_killed_after_products_restarts_without_embedding_them(artifact) -> None:
    """A real `starsrec serve`: products put, SIGKILL, restart; the restart replays the log
    from the embedding cache (the service logs each batch of texts it embeds)."""
    log = artifact.parent / "server.log"
    server = Server(artifact, log)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for first in range(0, 300, 100):
                batch = products("killed", 300)[first : first + 100]
                assert client.put("/v1/items", json=batch).status_code == 200
    finally:
        server.stop(signal.SIGKILL)
    before = log.read_text()
    assert "embedding 100 distinct new texts" in before
    server = Server(artifact, log)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answer = client.get("/v1/items/similar", params={"item_id": "killed-299"})
            assert answer.status_code == 200, answer.text
    finally:
        server.stop()
    after = log.read_text()[len(before) :]
    assert "replayed 300 products" in after, after[-2000:]
    assert "distinct new texts" not in after, after[-2000:]
