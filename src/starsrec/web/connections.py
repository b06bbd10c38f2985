"""Connection deadlines uvicorn lacks (issue 20, finding 7): a slow client cannot hold a
connection by sending its request a byte at a time.

uvicorn closes a kept-alive connection idle for `timeout_keep_alive`, but once a byte has
arrived it waits for the rest of a request's headers for ever, and after answering a request
whose body the app never read it keeps draining that body however slowly it comes (3,000
connections dribbling headers were all held). `deadline_protocol(header_timeout_s)` is
uvicorn's h11 protocol with two rules added:

- a request's headers must be complete within `header_timeout_s` of the connection opening,
  or of the first byte after a kept-alive request; otherwise the server answers 408 and
  closes the connection;
- once the answer is sent, a request body still arriving is not waited for: the connection
  closes (the answer already told the client what it needed).

A body the app reads is bounded by `starsrec.web.http_guard.BodyGuard`'s deadline (408).
Pass the class as `uvicorn.run(app, http=deadline_protocol(10.0))`.

It also writes each answer with one system call: uvicorn writes an answer's headers and its
body separately, and a loopback send was the largest single cost of a request in a profile
under load (docs/benchmarks.md, "HTTP overhead"). `CoalescingTransport` gathers the writes
of one event-loop step and sends them together at its end.

`handed_server` is the uvicorn server of a `starsrec serve --workers` worker: it serves the
connections its parent accepted and handed over (`starsrec.web.workers`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from starsrec.web.workers import handed_connections

logger = logging.getLogger(__name__)


def _timeout_answer(seconds: float) -> bytes:
    body = json.dumps(
        {"detail": f"request headers not received within {seconds:g} s: send them at once"}
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class CoalescingTransport:
    """A transport whose writes within one event-loop step go out as one write at its end
    (or before `close`); everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Queue `data`; the step's writes go out together when it ends."""
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: list[bytes]) -> None:
        """`write` each chunk."""
        for chunk in chunks:
            self.write(chunk)

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent: the wrapped transport's and the queued."""
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        """Send what is queued, then close."""
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def __getattr__(self, name: str):  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, no draining of unread bodies, and
    one write per answer."""

    header_timeout_s: float = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection's first header deadline."""
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(coalescing)  # type: ignore[arg-type]
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        """Parse as uvicorn does, then arm or clear the header deadline."""
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._clear_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        """Close instead of waiting for the rest of a body the app did not read."""
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.server_state.total_requests += 1
            self.transport.close()
            return
        super().on_response_complete()
        self._watch_headers()

    def _watch_headers(self) -> None:
        # h11 is IDLE on the client's side until a request's headers are complete.
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        kept_alive = self.timeout_keep_alive_task is not None  # idle: uvicorn's own timer
        if waiting and not kept_alive:
            if self._header_deadline is None:
                self._header_deadline = self.loop.call_later(
                    self.header_timeout_s, self._headers_too_slow
                )
        else:
            self._clear_deadline()

    def _clear_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        logger.info(
            "closed a connection whose request headers took over %g s", self.header_timeout_s
        )
        if self.conn.our_state is h11.IDLE:  # nothing of an answer sent on it yet
            self.transport.write(_timeout_answer(self.header_timeout_s))
        self.transport.close()


def deadline_protocol(header_timeout_s: float) -> type[DeadlineH11Protocol]:
    """The protocol class for `uvicorn.run(http=...)` with this header deadline."""
    if not header_timeout_s > 0:
        raise ValueError(f"the header timeout must be > 0 seconds, got {header_timeout_s}")
    return type(
        "DeadlineH11Protocol", (DeadlineH11Protocol,), {"header_timeout_s": header_timeout_s}
    )


def handed_server(config: uvicorn.Config, channel: socket.socket) -> uvicorn.Server:
    """A uvicorn server that accepts nothing itself: it serves the connections a
    `starsrec serve --workers` parent hands it on `channel` (`starsrec.web.workers`), each
    with the protocol uvicorn would give a connection it accepted."""

    class HandedServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=[])  # the app's startup; no listening socket
            loop = asyncio.get_running_loop()

            def protocol() -> asyncio.Protocol:
                return config.http_protocol_class(  # type: ignore[call-arg]
                    config=config,
                    server_state=self.server_state,
                    app_state=self.lifespan.state,
                    _loop=loop,
                )

            async def adopt(conn: socket.socket) -> None:
                try:
                    await loop.connect_accepted_socket(protocol, conn)
                except OSError:  # the client left before it was taken
                    conn.close()

            adopting: set[asyncio.Task] = set()  # held: the loop keeps only weak references

            def take() -> None:
                try:
                    for conn in handed_connections(channel):
                        task = loop.create_task(adopt(conn))
                        adopting.add(task)
                        task.add_done_callback(adopting.discard)
                except EOFError:  # the parent is gone: this worker dies with it
                    loop.remove_reader(channel.fileno())

            loop.add_reader(channel.fileno(), take)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            await super().shutdown(sockets)

    return HandedServer(config)
