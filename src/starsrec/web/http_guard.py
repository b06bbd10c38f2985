"""What stands between a hostile client and the API (issue 20): pure ASGI middleware that
bounds a request body by the bytes actually received and checks the key before any body is
read, a request observer that counts and briefly logs every answer (500s included), and
helpers that keep error answers and log lines small and JSON-safe whatever the input.

    BodyGuard          400/411/413 from the headers, then the route's key check, then the
                       body read whole and counted: 413 once it passes the limit, 408 when
                       it has not all arrived within the body deadline
    ObservedRequests   every status (and the time) to a callback; an unexpected exception
                       becomes a short 500 and one bounded log record
    validation_errors  a 422 body: the first few problems, each input cut short, a count
    short              text for a log line: escaped, truncated
    without_paths      an error message for a client: no absolute paths of the server
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from starsrec.serving.catalogue import RequestError

logger = logging.getLogger(__name__)


def route_dependencies(scope: Scope) -> set[Callable[..., Any]]:
    """The dependency callables of the route the router matched for `scope` (empty before
    routing, or for a route without dependencies)."""
    dependant = getattr(scope.get("route"), "dependant", None)
    return {d.call for d in getattr(dependant, "dependencies", ())}


def _refusal(status: int, content: Mapping[str, object]) -> JSONResponse:
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


def too_slow(seconds: float) -> str:
    """The 408 message."""
    return f"request body not received within {seconds:g} s: send it faster, or smaller"


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
        timeout_s: float | None,
    ) -> None:
        self.scope, self._receive, self._send = scope, receive, send
        self.limit = limit
        self.before_body = before_body
        self.timeout_s = timeout_s
        self.started = False  # the app asked for the body
        self.refused = False  # the guard answered: whatever the app sends is dropped

    async def refuse(self, response: JSONResponse) -> NoReturn:
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
        # A client sending a byte now and then would otherwise hold the request (and its
        # buffer) for as long as it likes: the whole body must arrive within the deadline.
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._read_body()
        except TimeoutError:
            await self.refuse(_refusal(408, {"detail": too_slow(self.timeout_s or 0)}))

    async def _read_body(self) -> Message:
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
    passes `max_body_bytes` without reading the rest, and 408 when it is not all there
    `body_timeout_s` after the app asked for it (None: no deadline)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        before_body: Callable[[Scope], None] | None = None,
        body_timeout_s: float | None = 30.0,
    ) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.before_body = before_body
        self.timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse bad framing and missing keys from the headers, then count the body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = framing_refusal(Headers(scope=scope), self.limit)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        request = _GuardedRequest(
            scope, receive, send, self.limit, self.before_body, self.timeout_s
        )
        with contextlib.suppress(_Refused):  # raised once the guard has answered
            await self.app(scope, request.receive, request.send)


ECHO_CHARS = 100  # characters of an echoed string
ECHO_ITEMS = 5  # entries of an echoed list or object
ECHO_DEPTH = 3  # nesting of an echoed value; deeper containers are described, not copied
LOG_CHARS = 200  # characters of any client-given text in a log line
LOG_FRAMES = 12  # traceback frames logged with an unexpected error (innermost)


def short(text: object, limit: int = LOG_CHARS) -> str:
    """`text` for a log line: newlines, control characters, non-ASCII and lone surrogates
    escaped (so a client cannot forge log lines), cut to about `limit` characters."""
    escaped = str(text).encode("unicode_escape").decode("ascii")
    if len(escaped) <= limit:
        return escaped
    return f"{escaped[:limit]}...(+{len(escaped) - limit} chars)"


# The directories of an absolute path: "/" then names, each ending in "/" (not after a word,
# so "a/b" and URLs' "//" are left alone).
_DIRECTORIES = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`():]+/)+")


def without_paths(text: str, root: Path) -> str:
    """`text` with the directory `root` (in any spelling: as given, absolute, resolved)
    written as ARTIFACT and every other absolute path cut to its file name: a client learns
    what failed, not where the server keeps its files."""
    spellings = {str(root), str(root.absolute()), str(root.resolve())} - {"", "."}
    for spelling in sorted(spellings, key=len, reverse=True):
        text = text.replace(spelling, "ARTIFACT")
    return _DIRECTORIES.sub("", text)


def _echo_text(text: str) -> str:
    # backslashreplace writes a lone surrogate as the six characters \ud800, which any JSON
    # encoder can carry; the raw one makes UTF-8 encoding (and so the response) fail.
    if len(text) > ECHO_CHARS:
        text = f"{text[:ECHO_CHARS]}...(+{len(text) - ECHO_CHARS} chars)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def echo(value: object, depth: int = 0) -> object:
    """A small, JSON-safe copy of a client's input for an error answer: strings cut short
    and UTF-8-safe, NaN and infinities as strings, huge integers as text, at most
    ECHO_ITEMS entries per container (then a count), containers below ECHO_DEPTH described
    rather than copied. Recursion is bounded by ECHO_DEPTH, so any nesting is safe."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**18 else _echo_text(str(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _echo_text(value)
    if isinstance(value, bytes | bytearray):
        return _echo_text(bytes(value[: ECHO_CHARS * 4]).decode("utf-8", "backslashreplace"))
    if isinstance(value, Mapping):
        if depth >= ECHO_DEPTH:
            return f"(an object of {len(value)} keys)"
        copy: dict[str, object] = {}
        for n, (key, item) in enumerate(value.items()):
            if n == ECHO_ITEMS:
                copy["..."] = f"(+{len(value) - ECHO_ITEMS} more keys)"
                break
            copy[_echo_text(str(key))] = echo(item, depth + 1)
        return copy
    if isinstance(value, list | tuple):
        if depth >= ECHO_DEPTH:
            return f"(a list of {len(value)} items)"
        items = [echo(item, depth + 1) for item in value[:ECHO_ITEMS]]
        if len(value) > ECHO_ITEMS:
            items.append(f"(+{len(value) - ECHO_ITEMS} more items)")
        return items
    return _echo_text(str(value))


class ObservedRequests:
    """Pure ASGI middleware passing every answer's status and duration to
    `record(scope, status, seconds)`. An exception that escapes the app is answered 500 and
    logged as one record (method, path and message escaped and cut short, the innermost
    frames), never with the request's body, and recorded as a 500 like any other status."""

    def __init__(self, app: ASGIApp, record: Callable[[Scope, int, float], None]) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, recording its status and time; an escaping error is a 500."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception as error:
            frames = traceback.format_list(traceback.extract_tb(error.__traceback__)[-LOG_FRAMES:])
            logger.error(
                "%s %s failed: %s: %s\n%s",
                scope.get("method"),
                short(scope.get("path", "")),
                type(error).__name__,
                short(error),
                "".join(frames).rstrip(),
            )
            if status is None:
                await JSONResponse({"detail": "internal error"}, status_code=500)(
                    scope, receive, observed
                )
            else:  # the answer had begun: it is cut short, and counted as a failure
                status = 500
        if status is not None:
            self.record(scope, status, time.perf_counter() - started)


MAX_ERRORS = 20  # problems listed in a 422; the rest are counted


def validation_errors(errors: Sequence[Mapping[str, Any]]) -> dict[str, object]:
    """The body of a 422 for pydantic's `errors`: the first MAX_ERRORS, each with its
    location, message, type and echoed input, and `more_errors` counting the rest, so the
    answer stays small however many problems a request has."""
    detail = [
        {
            "loc": [part if isinstance(part, int) else _echo_text(str(part)) for part in e["loc"]],
            "msg": _echo_text(str(e["msg"])),
            "type": _echo_text(str(e["type"])),
            "input": echo(e.get("input")),
        }
        for e in errors[:MAX_ERRORS]
    ]
    body: dict[str, object] = {"detail": detail}
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    return body
