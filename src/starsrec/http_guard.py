"""What stands between a hostile client and the API (issue 20): pure ASGI middleware that
bounds a request body by the bytes actually received and checks the key before any body is
read.

    BodyGuard          400/411/413 from the headers, then the route's key check, then the
                       body read whole and counted: 413 once it passes the limit
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from starsrec.itemtable import RequestError

logger = logging.getLogger(__name__)


def route_dependencies(scope: Scope) -> set[Callable[..., Any]]:
    """The dependency callables of the route the router matched for `scope` (empty before
    routing, or for a route without dependencies)."""
    dependant = getattr(scope.get("route"), "dependant", None)
    return {d.call for d in getattr(dependant, "dependencies", ())}


def _refusal(status: int, content: dict[str, object]) -> JSONResponse:
    # The body (or its rest) is never read, so the connection cannot carry another request.
    return JSONResponse(content, status_code=status, headers={"connection": "close"})


def framing_refusal(headers: Headers, limit: int) -> JSONResponse | None:
    """A refusal decided by the headers alone: 400 for Content-Length together with
    Transfer-Encoding (RFC 9112 lets a server reject what request smuggling is made of) or
    for a malformed Content-Length, 411 for a body of undeclared length, 413 for a declared
    length over `limit`; None when the headers are fine."""
    length = headers.get("content-length")
    if "transfer-encoding" in headers:
        if length is not None:
            detail = "send Content-Length or Transfer-Encoding, not both"
            return _refusal(400, {"detail": detail})
        return _refusal(411, {"detail": "send a Content-Length header"})
    if length is not None and not length.isdigit():
        return _refusal(400, {"detail": "Content-Length must be a number of bytes"})
    if length is not None and int(length) > limit:
        return _refusal(413, {"detail": too_large(limit)})
    return None


def too_large(limit: int) -> str:
    """The 413 message."""
    return f"request body over {limit} bytes: send fewer events or items per request"


class _Refused(Exception):
    """Raised into the app from `receive` once the guard has answered for it."""


class _GuardedRequest:
    """One request's view of the body: the key check before the first byte is read, then
    the whole body counted on arrival and handed over in one piece."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        limit: int,
        before_body: Callable[[Scope], None] | None,
    ) -> None:
        self.scope, self._receive, self._send = scope, receive, send
        self.limit = limit
        self.before_body = before_body
        self.started = False  # the app asked for the body
        self.refused = False  # the guard answered: whatever the app sends is dropped

    async def refuse(self, response: JSONResponse) -> None:
        self.refused = True
        await response(self.scope, self._receive, self._send)
        raise _Refused

    async def receive(self) -> Message:
        if self.started or self.refused:  # after the body: disconnect notices
            return await self._receive()
        self.started = True
        # The router has matched by now (the app reads the body inside the route), so the
        # route's key check can run first: an unauthenticated body is never read.
        if self.before_body is not None:
            try:
                self.before_body(self.scope)
            except RequestError as error:
                content = {"detail": str(error), "field": error.field}
                await self.refuse(_refusal(error.status, content))
        body = bytearray()
        while True:
            message = await self._receive()
            if message["type"] != "http.request":  # the client left mid-body
                return message
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self.refuse(_refusal(413, {"detail": too_large(self.limit)}))
            if not message.get("more_body", False):
                return {"type": "http.request", "body": bytes(body), "more_body": False}

    async def send(self, message: Message) -> None:
        if not self.refused:
            await self._send(message)


class BodyGuard:
    """Pure ASGI middleware bounding request bodies by the bytes received, whatever the
    framing claims, before anything parses them.

    Refuses from the headers alone what framing_refusal refuses; otherwise, when the app
    first asks for the body, runs `before_body(scope)` (a key check that raises
    RequestError, e.g. 401) and then reads the body whole, answering 413 as soon as it
    passes `max_body_bytes` without reading the rest."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        before_body: Callable[[Scope], None] | None = None,
    ) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.before_body = before_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = framing_refusal(Headers(scope=scope), self.limit)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        request = _GuardedRequest(scope, receive, send, self.limit, self.before_body)
        with contextlib.suppress(_Refused):  # raised once the guard has answered
            await self.app(scope, request.receive, request.send)
