"""The HTTP API (FastAPI): `create_app(service, ...)`, run by `starsrec serve ARTIFACT_DIR`.

    POST /v1/events              one event or a list (idempotent on event_id)
    DELETE /v1/users/{id}/events forget a user's stored events and long-term memory
                                 (or DELETE /v1/events?user_id=, for any id)
    POST /v1/recommend           user id and/or recent events, k, time, filters
    GET  /v1/items/{id}/similar  items nearest to one item (or /v1/items/similar?item_id=)
    PUT  /v1/items               add or change products (recommendable at once)
    POST /v1/admin/reload        load the artifact again (also on SIGHUP), swap it in live
    GET  /healthz                liveness, sizes and the answering worker's pid
    GET  /metrics                Prometheus text: requests, latencies, index size
    GET  /                       the explorer page and its read-only endpoints
                                 (users, items, audiences: see starsrec.web.explorer)

Handlers are `async def` and call the service directly: a request is about a millisecond
of CPU, and sync handlers (a thread-pool hop each) halved throughput here. The exception is
PUT /v1/items, whose embedding and tagging run in a worker thread, one write at a time
(see `put_items`), so a large batch never holds up other requests. Invalid input is
answered 4xx with a message naming the field (pydantic's 422s, and the service's
`RequestError`s); nothing a client sends should produce a 500. `starsrec.http_guard` bounds
bodies and checks the key before a body is read, and keeps error answers small.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from starlette.types import Scope

from starsrec import __version__
from starsrec.serving.catalogue import Product, RequestError
from starsrec.serving.request import seconds
from starsrec.serving.service import RecommendationService
from starsrec.serving.store import Event
from starsrec.web.access import Access
from starsrec.web.browse import CatalogueBrowser
from starsrec.web.explorer import explorer_router
from starsrec.web.http_guard import (
    BodyGuard,
    ObservedRequests,
    route_dependencies,
    short,
    validation_errors,
    without_paths,
)
from starsrec.web.metrics import Metrics
from starsrec.web.models import (  # MAX_BATCH, MAX_K: the API's caps, for its callers
    MAX_BATCH,  # noqa: F401
    MAX_K,
    Batch,
    EventIn,
    ProductIn,
    RecommendIn,
)

logger = logging.getLogger(__name__)
FOLLOW_INTERVAL_S = 0.5  # how often a worker applies what the others logged and forgot


def _on_hangup(callback: Callable[[], object]) -> Callable[[], object]:
    """Run `callback` on SIGHUP (the usual "reload your files" signal); returns the undo.
    Only the main thread can own signals, so elsewhere (tests, embedded apps) it is a no-op."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, callback)
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread / Windows
        return lambda: None
    return lambda: loop.remove_signal_handler(signal.SIGHUP)


def create_app(
    service: RecommendationService,
    reload_from: str | Path | None = None,
    api_key: str | None = None,
    protect_reads: bool = False,
    max_body_bytes: int = 1 << 20,
    insecure_open_writes: bool = False,
    body_timeout_s: float = 30.0,
    on_reload: Callable[[], object] | None = None,
) -> FastAPI:
    """The API serving `service`, which the caller loads (`starsrec serve` loads the
    artifact before it starts, so a damaged one is refused in one line, not in a lifespan
    traceback) and closes. POST /v1/admin/reload and SIGHUP load the artifact directory
    `reload_from` again, with the serving config of the service they replace, and swap it
    in; without `reload_from` they are refused (409). A reload closes the service it
    replaces, and the app closes at shutdown one it loaded itself.

    With an `api_key` (MIN_KEY_CHARS or more), writes (events, items, reload) need
    `Authorization: Bearer KEY`; reads too when `protect_reads`. Without one, writes are
    refused (403) unless `insecure_open_writes` opens them to anyone, with a warning at
    start (see starsrec.web.access). Bodies over `max_body_bytes` are refused with 413, and
    bodies not received whole within `body_timeout_s` of the first read with 408.

    While it runs, the app follows what other processes sharing its files and store did
    (the workers of `starsrec serve --workers N`): every FOLLOW_INTERVAL_S it applies the
    products they logged and drops the memories of users they forgot. `on_reload` is called
    after a reload asked for over HTTP (the workers' parent then reloads the others)."""
    metrics = Metrics()

    access = Access(api_key, protect_reads, insecure_open_writes)

    def authorised(request: Request, write: bool) -> None:
        access.check(request.headers, write)

    async def writer(request: Request) -> None:
        authorised(request, write=True)

    async def reader(request: Request) -> None:
        authorised(request, write=False)

    # Ready now, which also lets in-process clients that never run the lifespan call the app.
    state = {"service": service}
    reloading = asyncio.Lock()
    # Product writes one at a time (two batches never interleave), and a reload's swap waits
    # for the one in progress: every acknowledged product reaches the service that serves.
    writing_products = asyncio.Lock()

    async def ready_for_products(svc: RecommendationService) -> None:
        """Load the text encoder now when products can be put: loading it at the first PUT
        held that request (a sentence transformer takes seconds)."""
        if access.api_key is not None or access.open_writes:
            await asyncio.to_thread(svc.tokenizer.load_encoder)

    # The explorer's searches over the current service (built lazily, so swapping is cheap).
    browsers: list[CatalogueBrowser] = []

    def browser() -> CatalogueBrowser:
        if not browsers or browsers[0].service is not state["service"]:
            browsers[:] = [CatalogueBrowser(state["service"])]
        return browsers[0]

    async def reload() -> RecommendationService:
        """Load the artifact again in a worker thread while requests go on, then swap.

        Handlers other than PUT /v1/items never await mid-request, so a request is served
        entirely by the old service or entirely by the new one; closing the old store after
        the swap cannot cut one short. The swap waits for a product write in progress, then
        the new service replays what the old one took while it loaded. A failed load
        (corrupt or half-written artifact) raises and leaves the old service serving."""
        if reload_from is None:
            raise RequestError(
                "reload", "reload: this app has no artifact directory to reload from", 409
            )
        async with reloading:
            config = state["service"].config
            fresh = await asyncio.to_thread(RecommendationService.load, reload_from, config, False)
            await ready_for_products(fresh)
            async with writing_products:
                # The new service serves nothing yet, so a thread may change it.
                await asyncio.to_thread(fresh.replay_products)
                old, state["service"] = state["service"], fresh
            old.store.close()
        logger.info("reloaded %s: serving %s items", reload_from, fresh.index.size)
        return fresh

    async def follow() -> None:
        """Apply what other processes logged and forgot, every FOLLOW_INTERVAL_S."""
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL_S)
            try:
                async with writing_products:
                    svc = state["service"]
                    products = await asyncio.to_thread(svc.followed_products)
                    if products:  # prepared in a thread, applied at once, as a PUT's
                        prepared = await asyncio.to_thread(svc.prepare_products, products, False)
                        svc.apply_products(prepared, capped=False)
                svc.follow_forgets()
            except Exception:  # keep following: the next round may succeed
                logger.exception("following the other workers' products and forgets failed")

    async def reload_on_signal() -> None:
        try:
            await reload()
        except Exception:  # a signal has nobody to answer: log and keep serving
            logger.exception("reload on SIGHUP failed; still serving the previous artifact")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ready_for_products(state["service"])
        logger.info("serving %s items", state["service"].index.size)
        access.announce()
        hangup = _on_hangup(lambda: asyncio.ensure_future(reload_on_signal()))
        following = asyncio.create_task(follow())
        yield
        following.cancel()
        hangup()
        if state["service"] is not service:  # a reload loaded it: the app's to close
            state["service"].store.close()

    # No trailing-slash redirects: Starlette builds their Location from the Host header, so
    # any client could make the server point a browser elsewhere.
    app = FastAPI(title="starsrec", version=__version__, lifespan=lifespan, redirect_slashes=False)

    def key_before_body(scope: Scope) -> None:
        """The matched route's key check, run by BodyGuard before the body is read."""
        needs = route_dependencies(scope)
        if writer in needs or reader in needs:
            authorised(Request(scope), write=writer in needs)

    def record(scope: Scope, status: int, seconds: float) -> None:
        name = getattr(scope.get("route"), "path", "unmatched")
        metrics.latency.labels(name).observe(seconds)
        metrics.requests.labels(name, str(status)).inc()

    # The last added runs first: every answer, the guard's refusals included, is observed.
    app.add_middleware(
        BodyGuard,
        max_body_bytes=max_body_bytes,
        before_body=key_before_body,
        body_timeout_s=body_timeout_s,
    )
    app.add_middleware(ObservedRequests, record=record)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(error), "field": error.field}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes every bad input back whole: NaN, a lone surrogate or
        # deep nesting made that a 500, and a megabyte of bad items a response far larger.
        return JSONResponse(validation_errors(error.errors()), status_code=422)

    @app.post("/v1/events", dependencies=[Depends(writer)])
    async def post_events(body: EventIn | Batch[EventIn]) -> dict:
        svc = state["service"]
        batch = body if isinstance(body, list) else [body]
        events = [
            Event(
                event_id=e.event_id or uuid.uuid4().hex,
                user_id=e.user_id,
                item_id=e.item_id,
                event_type=e.event_type or svc.main_event_type,
                timestamp=seconds(e.timestamp),
            )
            for e in batch
        ]
        stored = svc.add_events(events)
        metrics.events.inc(stored)
        return {"received": len(events), "stored": stored}

    @app.delete("/v1/users/{user_id}/events", dependencies=[Depends(writer)])
    async def forget_user(user_id: str) -> dict:
        forgotten = state["service"].forget(user_id)
        browsers.clear()  # the explorer's user list and audiences held the memory
        logger.info("forgot user %s: %d events", short(user_id), forgotten)
        return {"user_id": user_id, "forgotten": forgotten}

    # The same for any id: one holding "/" cannot be a path segment (%2F is decoded first).
    @app.delete("/v1/events", dependencies=[Depends(writer)])
    async def forget_user_by_query(
        user_id: Annotated[str, Query(min_length=1, max_length=512)],
    ) -> dict:
        return await forget_user(user_id)

    @app.post("/v1/recommend", dependencies=[Depends(reader)])
    async def recommend(body: RecommendIn) -> dict:
        svc = state["service"]
        started = time.perf_counter()
        events = [
            Event(
                f"request:{n}",
                "",
                e.item_id,
                e.event_type or svc.main_event_type,
                seconds(e.timestamp),
            )
            for n, e in enumerate(body.events)
        ]
        filters = svc.filters(body.filters)
        results = svc.recommend(body.user_id, events, body.k, seconds(body.timestamp), filters)
        return {
            "items": [dataclasses.asdict(r) for r in results],
            "took_ms": round((time.perf_counter() - started) * 1e3, 3),
        }

    @app.get("/v1/items/{item_id}/similar", dependencies=[Depends(reader)])
    async def similar(item_id: str, k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> dict:
        results = state["service"].similar(item_id, k)
        return {"items": [dataclasses.asdict(r) for r in results]}

    # The same for any id: one holding "/" cannot be a path segment (%2F is decoded first).
    @app.get("/v1/items/similar", dependencies=[Depends(reader)])
    async def similar_by_query(
        item_id: Annotated[str, Query(min_length=1, max_length=512)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    ) -> dict:
        return await similar(item_id, k)

    @app.put("/v1/items", dependencies=[Depends(writer)])
    async def put_items(body: ProductIn | Batch[ProductIn]) -> dict:
        batch = body if isinstance(body, list) else [body]
        cap = state["service"].config.max_products_per_request
        if len(batch) > cap:
            raise RequestError(
                "items",
                f"items: {len(batch)} products in one request, at most {cap} (ServingConfig."
                "max_products_per_request; start `starsrec serve` with "
                "--max-products-per-request N to raise it): send them in several requests",
            )
        products = [Product(p.item_id, p.text, p.item_class, p.subclass, p.in_stock) for p in batch]
        async with writing_products:
            svc = state["service"]
            # Embedding and tagging take long (10,000 products held the loop 48 s): a worker
            # thread does them while requests go on. The rows are then applied at once, so
            # no request sees half a write, and logged (fsync) before the answer.
            prepared = await asyncio.to_thread(svc.prepare_products, products)
            outcome = svc.apply_products(prepared)
            await asyncio.to_thread(svc.log_products, products)
        return {
            "items": [
                {"item_id": p.item_id, "status": o} for p, o in zip(products, outcome, strict=True)
            ]
        }

    @app.post("/v1/admin/reload", dependencies=[Depends(writer)])
    async def admin_reload() -> dict:
        started = time.perf_counter()
        try:
            fresh = await reload()
        except RequestError:
            raise
        except (ValueError, OSError) as error:  # ArtifactError, an old index format, ...
            logger.warning("reload refused, still serving the previous artifact: %s", error)
            # The answer names the files by their place in the artifact, not on the server.
            reason = without_paths(str(error), Path(reload_from or "."))
            message = f"reload refused, still serving the previous artifact: {reason}"
            raise RequestError("artifact", message, 409) from error
        if on_reload is not None:
            on_reload()
        took = round(time.perf_counter() - started, 3)
        return {"status": "reloaded", "items": fresh.index.size, "took_s": took}

    app.include_router(explorer_router(browser, reader))

    @app.get("/healthz")
    async def healthz() -> dict:
        svc = state["service"]
        if protect_reads:  # liveness only: the sizes are data the key protects
            return {"status": "ok"}
        sizes = {"items": svc.index.size, "events": svc.store.count()}
        return {"status": "ok", **sizes, "worker": os.getpid()}

    @app.get("/metrics", dependencies=[Depends(reader)])
    async def prometheus() -> PlainTextResponse:
        metrics.index_size.set(state["service"].index.size)
        return PlainTextResponse(generate_latest(metrics.registry).decode())

    return app
