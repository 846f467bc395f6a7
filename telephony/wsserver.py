"""The carrier media streams on the ``websockets`` library's asyncio server, beside the ASGI app.

A media stream is 50 small messages per call-second in and ~20 out. Through uvicorn and Starlette
each one crosses the ASGI machinery (an event dict, a queue, a pause and a resume of the socket's
reader: two ``epoll_ctl`` calls per message); the ``websockets`` server reads frames straight off
the socket with its C speed-ups. ``telephony.media_port`` turns this server on: the same stream
routes (``/twilio/stream``, ``/exotel/stream``, ...), served by the same handlers, on a second port;
a reverse proxy routes the stream paths there (deploy/nginx), so the URLs a carrier is given do not
change. Without it the streams stay on the ASGI port.

The handlers are the FastAPI app's own websocket endpoints, so every check holds as it does there:
each gets a :class:`MediaSocket`, which speaks the part of Starlette's ``WebSocket`` they use. A
handler runs from the upgrade request on (``process_request``), so what it decides before
``accept()`` decides the handshake: ``close()`` first is HTTP 403 (a bad signature, an address not
allowed), ``send_denial_response`` its response (503 while draining), ``accept()`` the 101. Every
handler task belongs to the server's task group.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

from starlette.datastructures import URL, Address, Headers
from starlette.responses import Response as StarletteResponse
from starlette.routing import WebSocketRoute
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers as WsHeaders
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

MAX_SIZE = 1 << 20  # as the ASGI port (voxroute/server.py): the codecs apply the carriers' own limits
Endpoint = Callable[[Any], Awaitable[None]]


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


class MediaSocket:
    """One stream's socket, as much of Starlette's ``WebSocket`` as the stream handlers use:
    ``url``, ``headers``, ``client``, ``accept``, ``receive``, ``send_text``, ``close``,
    ``send_denial_response``."""

    def __init__(self, conn: ServerConnection, request: Request, client: Address | None) -> None:
        self._conn = conn
        self.url = URL(f"ws://{request.headers.get('Host', 'localhost')}{request.path}")
        self.headers = Headers(raw=[(k.lower().encode("latin-1"), v.encode("latin-1"))
                                    for k, v in request.headers.raw_items()])  # fmt: skip
        self.client = client
        self.decision: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()
        self.opened = asyncio.get_running_loop().create_future()  # the 101 went out: the handler runs
        self._accepted = False

    def _decide(self, response: Response | None) -> None:
        if not self.decision.done():
            self.decision.set_result(response)

    async def accept(self) -> None:
        if self._accepted:
            raise RuntimeError("accept() twice")
        self._accepted = True
        self._decide(None)
        lost = self._conn.connection_lost_waiter
        await asyncio.wait([self.opened, lost], return_when=asyncio.FIRST_COMPLETED)

    async def receive(self) -> dict[str, Any]:
        """The next message as Starlette gives it: ``websocket.receive`` with ``text`` or ``bytes``,
        ``websocket.disconnect`` with the peer's close code once the socket is gone."""
        try:
            data = await self._conn.recv()
        except ConnectionClosed as exc:
            return {"type": "websocket.disconnect", "code": exc.rcvd.code if exc.rcvd else 1006}
        if isinstance(data, str):
            return {"type": "websocket.receive", "text": data}
        return {"type": "websocket.receive", "bytes": data}

    async def send_text(self, text: str) -> None:
        try:
            await self._conn.send(text)
        except ConnectionClosed as exc:
            raise OSError(f"websocket closed: {exc}") from None

    async def close(self, code: int = 1000) -> None:
        if not self._accepted:  # before the handshake: refused with 403, as Starlette does
            self._decide(_response(HTTPStatus.FORBIDDEN, b""))
            return
        await self._conn.close(code)

    async def send_denial_response(self, response: StarletteResponse) -> None:
        if self._accepted:
            raise RuntimeError("send_denial_response() after accept()")
        headers = WsHeaders([(k, v) for k, v in response.headers.items() if k.lower() != "content-length"])
        self._decide(_response(HTTPStatus(response.status_code), bytes(response.body), headers))


def _response(status: HTTPStatus, body: bytes, headers: WsHeaders | None = None) -> Response:
    headers = headers if headers is not None else WsHeaders()
    headers["Content-Length"] = str(len(body))
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, body)


class MediaServer:
    """The stream ``routes`` on a ``websockets`` server. ``run`` serves until cancelled or ``close``."""

    def __init__(
        self,
        routes: dict[str, Endpoint],
        *,
        open_timeout_s: float = 10.0,
        trusted: TrustedProxies | None = None,
    ) -> None:
        self._routes = routes
        self._open_timeout_s = open_timeout_s
        self._trusted = trusted if trusted is not None else TrustedProxies()
        # a socket's handler task until its 101 is out (weak: a handshake that fails drops it)
        self._sockets: weakref.WeakKeyDictionary[ServerConnection, tuple[MediaSocket, asyncio.Task]] = (
            weakref.WeakKeyDictionary()
        )
        self._tg: asyncio.TaskGroup | None = None

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        endpoint = self._routes.get(request.path.partition("?")[0])
        if endpoint is None:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n")
        assert self._tg is not None
        client = self._trusted.client(conn.remote_address, request.headers.get("X-Forwarded-For"))
        sock = MediaSocket(conn, request, client)
        task = self._tg.create_task(
            self._run(endpoint, sock), name=f"stream {request.path.partition('?')[0]}"
        )
        decision = await sock.decision
        if decision is None:
            self._sockets[conn] = (sock, task)
        return decision

    async def _run(self, endpoint: Endpoint, sock: MediaSocket) -> None:
        try:
            await endpoint(sock)
        except Exception:
            log.exception("stream handler failed")
            if not sock.decision.done():
                sock._decide(_response(HTTPStatus.INTERNAL_SERVER_ERROR, b""))
            else:
                with contextlib.suppress(Exception):
                    await sock._conn.close(1011)
        finally:
            sock._decide(_response(HTTPStatus.FORBIDDEN, b""))  # returned without a word: refused

    async def _handler(self, conn: ServerConnection) -> None:
        """The 101 went out: the handler (running since the request) takes the socket; the
        connection stays open until it returns."""
        sock, task = self._sockets.pop(conn)
        sock.opened.set_result(None)
        await asyncio.wait([task])

    @contextlib.asynccontextmanager
    async def serving(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: Any = None, reuse_port: bool = False
    ) -> AsyncIterator[Server]:
        """Listen on ``host:port`` (or ``sock``); yield the server; on exit stop listening, end the
        open streams' sockets and wait for their handlers."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            listen: dict[str, Any] = {"sock": sock} if sock is not None else {"host": host, "port": port}
            if reuse_port:
                listen["reuse_port"] = True
            server = await serve(
                self._handler,
                process_request=self._process_request,
                compression=None,  # audio frames: compression costs CPU and saves nothing
                max_size=MAX_SIZE,
                ping_interval=None,  # carriers keep the socket busy with media
                open_timeout=self._open_timeout_s,
                server_header=None,
                **listen,
            )
            try:
                yield server
            finally:
                server.close(close_connections=True)
                await server.wait_closed()


def bound_port(server: Server) -> int:
    return next(iter(server.sockets)).getsockname()[1]


@contextlib.asynccontextmanager
async def media_edge(
    app: Any, host: str, port: int | None, *, open_timeout_s: float = 10.0
) -> AsyncIterator[Server | None]:
    """``voxroute serve``: the app's stream routes on ``port`` (``telephony.media_port``), or nothing
    when it is None. ``SO_REUSEPORT``: the workers of ``--workers`` each listen on it."""
    if port is None:
        yield None
        return
    media = MediaServer(stream_routes(app), open_timeout_s=open_timeout_s)
    async with media.serving(host, port, reuse_port=True) as server:
        log.warning("carrier media streams on ws://%s:%d (websockets server)", host, bound_port(server))
        yield server
