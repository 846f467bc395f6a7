"""Serve an ASGI app from inside a running event loop (``voxroute serve``, tests, replay, benchmarks).

A connection must deliver a whole request head (request line and headers; a websocket upgrade is
one) within ``request_timeout_s`` of opening, or of the previous response: else it is closed. A
client that opens a socket and sends half a request line cannot hold it open (uvicorn's own
keep-alive timeout only starts after a first response). Each socket read is at most 16 KiB, so
one read of a peer's flood of small websocket frames is parsed in a few ms, not 100.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from voxroute.agent.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
# hundreds of sockets opened together time out together: one line per 10 s, not one each
_head_timeouts = RateLimitedLog(log)
REQUEST_TIMEOUT_S = 10.0
READ_CHUNK_BYTES = 16 * 1024  # one socket read; a websocket upgrade keeps the transport (and this)


class _HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head."""

    request_timeout_s = REQUEST_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.request_timeout_s, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if self.conn.their_state is h11.IDLE:  # still no complete request head
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            _head_timeouts.warning("head", "connection from %s: no complete request within %.0f s, closed",
                                   peer, self.request_timeout_s)  # fmt: skip
            self.transport.close()

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if hasattr(transport, "max_size"):
            # asyncio reads up to 256 KiB at a time, and uvicorn parses every websocket frame of a
            # read in one callback: 4,000 tiny frames from a flooding peer held the loop ~100 ms.
            transport.max_size = READ_CHUNK_BYTES
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.transport.get_protocol() is not self or self.conn.their_state is not h11.IDLE:
            self._disarm()  # a request head arrived (or the connection became a websocket)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def _protocol(timeout_s: float) -> type[H11Protocol]:
    if timeout_s == REQUEST_TIMEOUT_S:
        return _HeadTimeoutProtocol
    return type("HeadTimeoutProtocol", (_HeadTimeoutProtocol,), {"request_timeout_s": timeout_s})


@contextlib.asynccontextmanager
async def serve_app(
    app,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    sockets: list[socket.socket] | None = None,
) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on ``host:port`` (0 = a free port) and yield ``http://host:port``.
    ``sockets``: listen on these instead (``voxroute serve --workers``: the supervisor's shared
    socket, first, and the worker's own); the URL is the first one's.

    The server task belongs to a task group that is left only after the server shut down.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # A process that configured logging (the voxroute command: redacted text or JSON lines) gets
        # uvicorn's lines through its own handlers, not uvicorn's plain-text ones.
        log_config=None if logging.getLogger().handlers else LOGGING_CONFIG,
        lifespan="on",
        access_log=False,  # a line per request (every /healthz probe) costs loop time; we log our own
        http=_protocol(request_timeout_s),
        ws="websockets-sansio",
        ws_max_size=1 << 20,
        ws_per_message_deflate=False,  # audio frames: compression costs CPU and saves nothing
        ws_ping_interval=None,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    # The owner handles signals (voxroute serve drains on SIGTERM/SIGINT): uvicorn must neither take
    # them (it would stop serving at once) nor raise them again when it stops.
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # uvicorn < 0.29
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(server.serve(sockets=sockets))
        while not server.started:
            if task.done():
                raise RuntimeError(f"server for {app!r} failed to start")
            await asyncio.sleep(0.01)
        sock = server.servers[0].sockets[0]
        bound_host, bound_port = sock.getsockname()[:2]
        try:
            yield f"http://{bound_host}:{bound_port}"
        finally:
            server.should_exit = True
    logging.getLogger(__name__).debug("server on %s:%s stopped", bound_host, bound_port)


def ws_url(http_url: str) -> str:
    return "ws" + http_url[len("http") :] if http_url.startswith("http") else http_url
