"""The carrier media streams on a lean websocket server of our own, beside the ASGI app.

A media stream is 50 small messages per call-second in and ~20 out. Through uvicorn and Starlette
each one crosses the ASGI machinery (an event dict, a queue, a pause and a resume of the socket's
reader); through the ``websockets`` library's asyncio server, a reader task, its frame parser (a
generator per frame) and a message queue with its futures (about 10 us of framing per message,
24% of the server's busy samples at 50 calls). Here one ``asyncio.Protocol`` per connection feeds
the socket's bytes to a sans-I/O RFC 6455 codec (telephony/wsframes.py, about 2 us a frame): no
task per connection, and the messages of one read go to the handler in one wake-up (it takes the
queued ones without waiting). Sends write the frame straight to the transport.
``telephony.media_port`` turns this server on: the same stream routes (``/twilio/stream``,
``/exotel/stream``, ...), served by the same handlers, on a second port; a reverse proxy routes the
stream paths there (deploy/nginx), so the URLs a carrier is given do not change. Without it the
streams stay on the ASGI port.

The handlers are the FastAPI app's own websocket endpoints, so every check holds as it does there:
each gets a :class:`MediaSocket`, which speaks the part of Starlette's ``WebSocket`` they use. A
handler runs from the upgrade request on, so what it decides before ``accept()`` decides the
handshake: ``close()`` first is HTTP 403 (a bad signature, an address not allowed),
``send_denial_response`` its response (503 while draining), ``accept()`` the 101. Every handler
task belongs to the server's task group.

Flow control both ways: a socket whose handler has not taken 16 messages stops being read (the
carrier's TCP window fills, not our memory) until it has taken them; a send to a peer that does not
read waits while the transport's buffer is over its high-water mark (``pause_writing``). A close
the server starts waits up to ``CLOSE_TIMEOUT_S`` for the peer's close frame, then drops the
connection. No keep-alive pings: carriers keep the socket busy with media, and the link's media
silence timeout (telephony/wslink.py) ends a stream that went quiet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

from starlette.datastructures import URL, Address, Headers
from starlette.responses import Response as StarletteResponse
from starlette.routing import WebSocketRoute

from voxroute.agent.ratelog import RateLimitedLog
from voxroute.telephony import wsframes
from voxroute.telephony.wsframes import OP_PONG, OP_TEXT, Close, FrameParser, HandshakeError, Ping

log = logging.getLogger(__name__)
# what a peer can make happen on many sockets at once: one line per kind per 10 s, not one each
_peer_log = RateLimitedLog(log)

MAX_SIZE = 1 << 20  # as the ASGI port (voxroute/server.py): the codecs apply the carriers' own limits
QUEUE_HIGH = 16  # messages waiting for the handler before the socket stops being read
CLOSE_TIMEOUT_S = 5.0  # after our close frame, how long the peer has to answer with its own
Endpoint = Callable[[Any], Awaitable[None]]

# a connection's states
HANDSHAKE, DECIDING, OPEN, CLOSING, CLOSED = "handshake", "deciding", "open", "closing", "closed"


def stream_routes(app: Any) -> dict[str, Endpoint]:
    """The websocket routes of a FastAPI app (the carriers' streams): path -> endpoint."""
    return {r.path: r.endpoint for r in app.router.routes if isinstance(r, WebSocketRoute)}


class TrustedProxies:
    """Which peers may name the client in ``X-Forwarded-For``: uvicorn's rule for the ASGI port
    (``FORWARDED_ALLOW_IPS``, default 127.0.0.1; ``*`` trusts every peer), so an address check (the
    Exotel allow-list) sees the same client on either port."""

    def __init__(self, spec: str | None = None) -> None:
        spec = spec if spec is not None else os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
        items = [s.strip() for s in spec.split(",") if s.strip()]
        self.everyone = "*" in items
        self._networks = []
        for item in items:
            with contextlib.suppress(ValueError):
                self._networks.append(ipaddress.ip_network(item, strict=False))

    def trusts(self, host: str) -> bool:
        if self.everyone:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client(self, peer: tuple[str, int] | None, forwarded_for: str | None) -> Address | None:
        if peer is None:
            return None
        host, port = peer[0], peer[1]
        if forwarded_for and self.trusts(host):
            hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
            for hop in reversed(hops):  # the nearest hop a trusted proxy did not add
                if not self.trusts(hop):
                    return Address(hop, 0)
            if hops:
                return Address(hops[0], 0)
        return Address(host, port)


class _Connection(asyncio.Protocol):
    """One TCP connection on the media port: the upgrade request, then frames both ways."""

    def __init__(self, server: MediaServer) -> None:
        self._server = server
        self._loop = server._loop
        self.state = HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._head = bytearray()  # the upgrade request until its head is complete
        self._early = b""  # bytes after the request head, read before the handler decided
        self._parser = FrameParser(MAX_SIZE)
        self.opened = False  # the 101 went out: what the peer sends now is frames
        self.socket: MediaSocket | None = None
        # inbound: messages the handler has not taken yet, and its wait for more
        self.inbox: collections.deque[str | bytes] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.close_code: int | None = None  # the peer's close code (1005: none), 1006 if it never sent one
        # outbound: the transport's buffer over its high-water mark, and the sends waiting for it
        self.write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(server.open_timeout_s, self._too_slow)

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # small frames, sent as they are made
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.opened:
            self._frames(data)
        elif self.state is HANDSHAKE:
            self._head += data
            self._request()
        elif self.state is DECIDING:  # reading is paused while the handler decides: a last read
            self._early += data

    def eof_received(self) -> bool:
        return False  # the peer will send nothing more: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self._cancel_timer()
        if self.close_code is None:
            self.close_code = wsframes.ABNORMAL
        self._wake()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        self._server._lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # ---- the opening handshake

    def _request(self) -> None:
        try:
            parsed = wsframes.parse_request(self._head)
        except HandshakeError as exc:
            _peer_log.info("refused", "media port: refused an upgrade request from %s: %s", self.peer, exc)
            self.respond(exc.status.value, f"{exc.detail}\n".encode(), exc.headers)
            return
        if parsed is None:
            return
        request, used = parsed
        self._early, self._head = bytes(self._head[used:]), bytearray()
        self.state = DECIDING
        assert self.transport is not None
        self.transport.pause_reading()  # until the handler accepts: then the frames are its
        self._server._dispatch(self, request)

    def _too_slow(self) -> None:
        """The open timeout: no complete request, or no decision, in ``open_timeout_s``."""
        self._timer = None
        if self.state is HANDSHAKE or self.state is DECIDING:
            _peer_log.info(
                "slow",
                "media port: %s did not open within %.0f s, dropped",
                self.peer,
                self._server.open_timeout_s,
            )
            self.state = CLOSING
            assert self.transport is not None
            self.transport.close()
        elif self.state is CLOSING:  # the peer did not end its side in time
            self._abort()

    def respond(self, status: int, body: bytes = b"", headers: Any = ()) -> None:
        """Refuse the upgrade with a plain HTTP answer and close."""
        if self.state is HANDSHAKE or self.state is DECIDING:
            assert self.transport is not None
            self.transport.write(wsframes.http_response(status, body, headers))
            self._finish()

    def open(self, request: wsframes.Request) -> None:
        """Accept: the 101, then the frames (any read before it first)."""
        if self.state is not DECIDING:
            return  # dropped meanwhile: the handler's receive says so
        assert self.transport is not None
        self._cancel_timer()
        self.transport.write(wsframes.accept_response(request))
        self.state = OPEN
        self.opened = True
        self.transport.resume_reading()
        if self._early:
            early, self._early = self._early, b""
            self._frames(early)

    # ---- frames

    def _frames(self, data: bytes) -> None:
        parser = self._parser
        for event in parser.feed(data):
            kind = type(event)
            if kind is str or kind is bytes:
                self.inbox.append(event)  # type: ignore[arg-type]
            elif kind is Ping and self.state is OPEN:
                self.write(wsframes.frame(OP_PONG, event.payload))  # type: ignore[union-attr]
            elif kind is Close:
                self._peer_closed(event)  # type: ignore[arg-type]
        if parser.error is not None and self.state is OPEN:
            _peer_log.info("protocol", "media port: %s broke the websocket protocol (%s), closing", self.peer,
                           parser.error)  # fmt: skip
            self._fail(parser.error.code, parser.error.reason)
        if self.inbox:
            self._wake()
            if len(self.inbox) >= QUEUE_HIGH and not self.reading_paused and self.state is OPEN:
                assert self.transport is not None
                self.reading_paused = True
                self.transport.pause_reading()

    def took(self) -> None:
        """The handler took a message: read the socket again once it has taken the backlog."""
        if self.reading_paused and not self.inbox and self.state is OPEN:
            assert self.transport is not None
            self.reading_paused = False
            self.transport.resume_reading()

    def _peer_closed(self, event: Close) -> None:
        self.close_code = event.code
        if self.state is OPEN:  # the peer started the close: answer it with its code
            self.write(wsframes.close_frame(event.code))
        self.state = CLOSING
        assert self.transport is not None
        self.transport.close()  # the server closes TCP first (RFC 6455 7.1.1)
        self._wake()

    def _fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol: our close frame with ``code``, then our end of TCP."""
        if self.state is OPEN:
            self.write(wsframes.close_frame(code, reason))
        self._finish()
        self._wake()

    def _finish(self) -> None:
        """Our side is done: end our half of TCP and drop what the peer still sends until it ends
        its own (or the close timeout does). Closing outright with unread bytes would reset the
        connection, and the peer could lose the answer or close frame just written."""
        assert self.transport is not None
        self.state = CLOSING
        self.opened = False  # no more frames are parsed
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.transport.resume_reading()  # paused while a handler decided, or for a full queue
            self.reading_paused = False
            self._cancel_timer()
            self._timer = self._loop.call_later(CLOSE_TIMEOUT_S, self._too_slow)
        else:
            self.transport.close()

    def close(self, code: int) -> None:
        """Start the closing handshake: our close frame, then the peer's (or the timeout)."""
        if self.state is OPEN:
            self.write(wsframes.close_frame(code))
            self.state = CLOSING
            self._cancel_timer()
            self._timer = self._loop.call_later(CLOSE_TIMEOUT_S, self._too_slow)
        elif self.state is HANDSHAKE or self.state is DECIDING:
            self._abort()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        """Until the transport's buffer is under its low-water mark (or the connection is gone)."""
        while self.write_paused and self.state is not CLOSED:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _abort(self) -> None:
        if self.transport is not None and self.state is not CLOSED:
            self.state = CLOSING
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class MediaSocket:
    """One stream's socket, as much of Starlette's ``WebSocket`` as the stream handlers use:
    ``url``, ``headers``, ``client``, ``accept``, ``receive``, ``send_text``, ``close``,
    ``send_denial_response``; and for the link's per-message path (telephony/wslink.py)
    :meth:`receive_data` (``receive`` without the ASGI message dict), :meth:`write_text` and
    :meth:`drain` (``send_text`` without a coroutine while the peer keeps up)."""

    def __init__(self, conn: _Connection, request: wsframes.Request, client: Address | None) -> None:
        self._conn = conn
        self._request = request
        self.url = URL(f"ws://{request.header('Host') or 'localhost'}{request.path}")
        self.headers = Headers(raw=[(k.lower().encode("latin-1"), v.encode("latin-1"))
                                    for k, v in request.headers])  # fmt: skip
        self.client = client
        self.decided = False  # accepted or refused
        self.accepted = False

    async def accept(self) -> None:
        if self.accepted:
            raise RuntimeError("accept() twice")
        if self.decided:
            raise RuntimeError("accept() after the upgrade was refused")
        self.accepted = self.decided = True
        self._conn.open(self._request)

    async def receive_data(self) -> str | bytes | None:
        """The next message (``str`` for text, ``bytes`` for binary); None once the socket is gone
        (``close_code`` says how). Messages already read return without waiting."""
        conn = self._conn
        while True:
            if conn.inbox:
                data = conn.inbox.popleft()
                if conn.reading_paused:
                    conn.took()
                return data
            if conn.state is not OPEN:
                return None
            conn.waiter = waiter = conn._loop.create_future()
            try:
                await waiter
            finally:
                conn.waiter = None

    @property
    def close_code(self) -> int | None:
        """How the peer closed (1005: without a code; 1006: it never sent a close frame)."""
        return self._conn.close_code

    async def receive(self) -> dict[str, Any]:
        """The next message as Starlette gives it: ``websocket.receive`` with ``text`` or ``bytes``,
        ``websocket.disconnect`` with the peer's close code once the socket is gone."""
        data = await self.receive_data()
        if data is None:
            return {"type": "websocket.disconnect", "code": self._conn.close_code or wsframes.ABNORMAL}
        if isinstance(data, str):
            return {"type": "websocket.receive", "text": data}
        return {"type": "websocket.receive", "bytes": data}

    def write_text(self, text: str) -> bool:
        """Write a text frame now; False when the peer is behind (the transport's buffer is over
        its high-water mark): :meth:`drain` before writing more. OSError once the socket closed."""
        conn = self._conn
        if conn.state is not OPEN:
            raise OSError(f"websocket {conn.state}")
        conn.write(wsframes.frame(OP_TEXT, text.encode("utf-8")))
        return not conn.write_paused

    async def drain(self) -> None:
        """Until the peer has read enough of what was written (or the socket is gone)."""
        await self._conn.drain()

    async def send_text(self, text: str) -> None:
        if not self.write_text(text):  # the peer reads slower than we send: wait, do not buffer more
            await self._conn.drain()

    async def close(self, code: int = 1000) -> None:
        if not self.decided:  # before the handshake: refused with 403, as Starlette does
            self.refuse(HTTPStatus.FORBIDDEN.value)
            return
        self._conn.close(code)

    async def send_denial_response(self, response: StarletteResponse) -> None:
        if self.accepted:
            raise RuntimeError("send_denial_response() after accept()")
        self.refuse(response.status_code, bytes(response.body), list(response.headers.items()))

    def refuse(self, status: int, body: bytes = b"", headers: Any = ()) -> None:
        """An HTTP answer instead of the 101 (once: the first decision holds)."""
        if not self.decided:
            self.decided = True
            self._conn.respond(status, body, headers)


class MediaServer:
    """The stream ``routes`` on the media port. ``serving`` listens until its block ends."""

    def __init__(
        self,
        routes: dict[str, Endpoint],
        *,
        open_timeout_s: float = 10.0,
        trusted: TrustedProxies | None = None,
    ) -> None:
        self._routes = routes
        self.open_timeout_s = open_timeout_s
        self._trusted = trusted if trusted is not None else TrustedProxies()
        self._connections: set[_Connection] = set()
        self._all_lost: asyncio.Future[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by serving()

    def _dispatch(self, conn: _Connection, request: wsframes.Request) -> None:
        """A complete upgrade request: its route's handler runs (in the task group) and decides."""
        path = request.path.partition("?")[0]
        endpoint = self._routes.get(path)
        if endpoint is None:
            conn.respond(HTTPStatus.NOT_FOUND.value, b"not found\n")
            return
        assert self._tg is not None and conn.transport is not None
        client = self._trusted.client(
            conn.transport.get_extra_info("peername"), request.header("X-Forwarded-For")
        )
        try:
            sock = conn.socket = MediaSocket(conn, request, client)
        except ValueError as exc:  # a Host header no URL can hold
            _peer_log.info("refused", "media port: refused an upgrade request from %s: %s", conn.peer, exc)
            conn.respond(HTTPStatus.BAD_REQUEST.value, b"bad Host header\n")
            return
        self._tg.create_task(self._run(endpoint, sock), name=f"stream {path}")

    async def _run(self, endpoint: Endpoint, sock: MediaSocket) -> None:
        try:
            await endpoint(sock)
        except Exception:
            log.exception("stream handler failed")
            if not sock.decided:
                sock.refuse(HTTPStatus.INTERNAL_SERVER_ERROR.value)
            else:
                sock._conn.close(wsframes.INTERNAL_ERROR)
        finally:
            sock.refuse(HTTPStatus.FORBIDDEN.value)  # returned without a word: refused
            sock._conn.close(wsframes.NORMAL)  # returned with the socket open: a normal close

    def _lost(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        if not self._connections and self._all_lost is not None and not self._all_lost.done():
            self._all_lost.set_result(None)

    @contextlib.asynccontextmanager
    async def serving(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: Any = None, reuse_port: bool = False
    ) -> AsyncIterator[asyncio.Server]:
        """Listen on ``host:port`` (or ``sock``); yield the server; on exit stop listening, close
        the open streams' sockets (1001, going away) and wait for their handlers."""
        self._loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            listen: dict[str, Any] = {"sock": sock} if sock is not None else {"host": host, "port": port}
            if reuse_port:
                listen["reuse_port"] = True
            server = await self._loop.create_server(lambda: _Connection(self), **listen)
            try:
                yield server
            finally:
                server.close()
                for conn in list(self._connections):
                    conn.close(wsframes.GOING_AWAY)
        # the handlers are done; the sockets close as the peers answer (bounded by the close timeout)
        if self._connections:
            self._all_lost = self._loop.create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S + 1):
                    await self._all_lost


def bound_port(server: asyncio.Server) -> int:
    return next(iter(server.sockets)).getsockname()[1]


@contextlib.asynccontextmanager
async def media_edge(
    app: Any, host: str, port: int | None, *, open_timeout_s: float = 10.0
) -> AsyncIterator[asyncio.Server | None]:
    """``voxroute serve``: the app's stream routes on ``port`` (``telephony.media_port``), or nothing
    when it is None. ``SO_REUSEPORT``: the workers of ``--workers`` each listen on it."""
    if port is None:
        yield None
        return
    media = MediaServer(stream_routes(app), open_timeout_s=open_timeout_s)
    async with media.serving(host, port, reuse_port=True) as server:
        log.warning("carrier media streams on ws://%s:%d (media port)", host, bound_port(server))
        yield server
