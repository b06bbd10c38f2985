"""The explorer: a page at `GET /` and the read-only JSON endpoints it needs.

    GET /                          the page (static HTML, JS and CSS shipped in the package)
    GET /v1/catalogue              sizes, classes and event types (to build the forms)
    GET /v1/users?query=&limit=    shopper ids by prefix
    GET /v1/users/{id}             a shopper's history summary and current session
    GET /v1/items?query=&limit=    items by id or text
    GET /v1/items/{id}/audience    the shoppers whose long-term memory scores an item highest

The page itself writes through the API's existing POST /v1/events and PUT /v1/items. The
logic lives in `starsrec.web.browse`; these handlers only validate and shape JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import HTMLResponse, Response

from starsrec.serving.catalogue import RequestError
from starsrec.web.browse import CatalogueBrowser

MAX_LIMIT = 1000
MAX_SECONDS = 1e11  # the bound of starsrec.web.app: later "timestamps" are milliseconds
# The page's assets, by name: only these are served (no path from a request reaches the disk).
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
SearchText = Annotated[str, Query(max_length=512)]
PathId = Annotated[str, Path(min_length=1, max_length=512)]
# The page runs only its own script and styles, talks only to this server, and no other
# site may frame it (clickjacking) or have its files taken for another type.
PAGE_HEADERS = {
    # img-src data: for the page's empty favicon (href="data:,": no request for one).
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _asset(name: str) -> str:
    return (files("starsrec.web") / "static" / name).read_text(encoding="utf-8")


def explorer_router(
    browser: Callable[[], CatalogueBrowser], reader: Callable[..., Awaitable[None]]
) -> APIRouter:
    """Routes of the explorer; `browser` returns the app's browser once its lifespan has
    loaded the service, and `reader` is the app's read-access dependency."""
    router = APIRouter()
    read = [Depends(reader)]

    # The page and its assets hold no data (the JSON endpoints do), so they need no key.
    @router.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_asset("index.html"), headers=PAGE_HEADERS)

    @router.get("/explorer/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise RequestError("name", f"name: no asset {name!r}", status=404)
        return Response(_asset(name), media_type=ASSETS[name], headers=PAGE_HEADERS)

    @router.get("/v1/catalogue", dependencies=read)
    async def catalogue() -> dict:
        return browser().describe()

    @router.get("/v1/users", dependencies=read)
    async def users(query: SearchText = "", limit: Limit = 20) -> dict:
        return {"users": browser().users(query, limit)}

    @router.get("/v1/users/{user_id}", dependencies=read)
    async def user(
        user_id: PathId,
        timestamp: Annotated[
            float | None, Query(ge=0, lt=MAX_SECONDS, description="unix seconds; now")
        ] = None,
        top: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> dict:
        return dataclasses.asdict(browser().summary(user_id, timestamp, top))

    @router.get("/v1/items", dependencies=read)
    async def items(query: SearchText = "", limit: Limit = 20) -> dict:
        return {"items": [dataclasses.asdict(i) for i in browser().items(query, limit)]}

    @router.get("/v1/items/{item_id}/audience", dependencies=read)
    async def audience(item_id: PathId, k: Limit = 10) -> dict:
        return {"users": [dataclasses.asdict(m) for m in browser().audience(item_id, k)]}

    return router
