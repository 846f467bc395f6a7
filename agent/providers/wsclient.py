"""The speech providers' websocket client: the ``websockets`` library's sans-I/O ``ClientProtocol``
driven from one ``asyncio.Protocol`` per socket.

Why not the library's asyncio client: each STT socket carries a message every 20-100 ms for the
whole call, and the asyncio client's ``send`` (an async context manager, a lock, a
``transport.write`` per frame) and its reader (an assembler of futures per message) took about a
tenth of the server's busy samples at 100 calls (py-spy). Here a send is one masked frame and one write, with no
suspension unless the peer is behind; a received message wakes the one reader waiting for it. The
text frames we send are built here (``_text_frame``: masks from a buffer of ``os.urandom``, not a
system call per frame); everything else on the wire is the library's sans-I/O code.

What it keeps of the library's client (what ``agent/providers/sarvam.py`` relied on): the opening
handshake and its errors (``InvalidStatus`` with the response and its body, ``InvalidHandshake``),
RFC 6455 parsing, control frames and the closing handshake, pongs to the server's pings, a keepalive ping every ``ping_interval`` s that fails the connection when no
pong came within ``ping_timeout`` s, ``close_timeout``, ``max_size``, text frames as ``str``,
``ConnectionClosed`` (with the close frame received) from ``send`` and ``recv`` once the socket is
gone, ``state`` and ``transport``. A URL that the environment sends through a proxy
(``HTTPS_PROXY`` and friends) goes to the library's own client, which knows proxies; no redirects
are followed (the providers' sockets never redirect).
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
import struct
from collections.abc import Mapping
from typing import cast

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as library_connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import Frame, Opcode, apply_mask  # apply_mask: the C speed-up when built
from websockets.http11 import USER_AGENT, Response
from websockets.protocol import State
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

MAX_QUEUE = 32  # messages received and not read yet before the socket stops being read
MASK_BUFFER = 4096  # bytes of os.urandom drawn at a time for the masks of sent frames: 1024 frames


class LeanClientConnection(asyncio.Protocol):
    """One client websocket. ``send`` and ``recv`` as the library's ``ClientConnection``."""

    transport: asyncio.Transport

    def __init__(
        self,
        protocol: ClientProtocol,
        *,
        ping_interval: float | None,
        ping_timeout: float | None,
        close_timeout: float,
    ) -> None:
        self.protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._fragments: list[bytes] = []
        self._fragmented_text = False
        self._reader: asyncio.Future[None] | None = None  # recv() waiting for a message
        self._response: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_sent_at: float | None = None  # our keepalive ping not answered yet
        self._close_timer: asyncio.TimerHandle | None = None
        self._masks = b""  # random bytes for the masks of the frames we send (``_text_frame``)
        self._mask_at = 0

    @property
    def state(self) -> State:
        return self.protocol.state

    # -- the application's side

    async def handshake(self, headers: Mapping[str, str]) -> None:
        request = self.protocol.connect()
        for name, value in headers.items():
            request.headers[name] = value
        request.headers.setdefault("User-Agent", USER_AGENT)
        self.protocol.send_request(request)
        self._write_out()
        await self._response
        if self.protocol.handshake_exc is not None:
            raise self.protocol.handshake_exc
        if self._ping_interval is not None:
            self._ping_timer = self._loop.call_later(self._ping_interval, self._keepalive)

    async def send(self, message: str) -> None:
        """One text message. Raises ``ConnectionClosed`` once the socket is closing or gone; waits
        only while the peer is behind (the transport over its high-water mark)."""
        if self.protocol.state is not State.OPEN:
            raise self._closed_exc()
        self.transport.write(self._text_frame(message.encode()))
        if self._writing_paused:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                self._drain_waiters.remove(waiter)

    async def recv(self) -> str | bytes:
        """The next message (text as ``str``); ``ConnectionClosed`` when the socket is gone and
        every message before its end was read."""
        while not self._messages:
            if self._lost.done() or self.protocol.state is State.CLOSED:
                raise self._closed_exc()
            self._reader = self._loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        message = self._messages.popleft()
        if self._reading_paused and len(self._messages) < MAX_QUEUE // 4:
            self._reading_paused = False
            self.transport.resume_reading()
        return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake, then the server closes the TCP connection (``close_timeout``,
        then it is aborted)."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._write_out()
            self._arm_close_timer()
        elif self.protocol.state is State.CONNECTING:
            self.transport.abort()
        await asyncio.shield(self._lost)

    def _text_frame(self, payload: bytes) -> bytes:
        """One unfragmented, masked text frame (RFC 6455 5.2, 5.3), built here rather than by the
        protocol's ``send_text``: that draws each frame's mask with a system call (``getrandom``) and
        builds a ``Frame`` object per message. The masks come from a per-connection buffer of
        ``os.urandom`` (a CSPRNG, as 5.3 asks), 4 bytes per frame. The protocol's state is not
        touched by a data frame we never fragment, so it stays as ``send_text`` would leave it."""
        if self._mask_at >= len(self._masks):
            self._masks, self._mask_at = os.urandom(MASK_BUFFER), 0
        mask = self._masks[self._mask_at : self._mask_at + 4]
        self._mask_at += 4
        n = len(payload)
        if n < 126:
            head = bytes((0x81, 0x80 | n))
        elif n < 65536:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        return head + mask + apply_mask(payload, mask)

    def _closed_exc(self) -> ConnectionClosed:
        return self.protocol.close_exc

    # -- I/O

    def _write_out(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()  # TLS: no half-close

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self._lost.done():
            self._close_timer = self._loop.call_later(self._close_timeout, self.transport.abort)

    def _keepalive(self) -> None:
        """Every ``ping_interval``: a ping; when the last one is still unanswered after
        ``ping_timeout``, the peer is gone: fail the connection (1011), as the library does."""
        self._ping_timer = None
        if self.protocol.state is not State.OPEN:
            return
        now = self._loop.time()
        if (
            self._ping_sent_at is not None
            and self._ping_timeout is not None
            and now - self._ping_sent_at >= self._ping_timeout
        ):
            self.protocol.fail(1011, "keepalive ping timeout")
            self._write_out()
            self._arm_close_timer()  # the peer is likely gone: aborted after close_timeout
            return
        if self._ping_sent_at is None:
            self.protocol.send_ping(b"")
            self._write_out()
            self._ping_sent_at = now
        assert self._ping_interval is not None
        self._ping_timer = self._loop.call_later(self._ping_interval, self._keepalive)

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _received(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragments = [bytes(frame.data)]
                self._fragmented_text = opcode is Opcode.TEXT
                return
            data, text = bytes(frame.data), opcode is Opcode.TEXT  # bytes already: no copy
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if not frame.fin:
                return
            data, text = b"".join(self._fragments), self._fragmented_text
            self._fragments = []
        else:
            if opcode is Opcode.PONG:
                self._ping_sent_at = None
            return  # a ping is answered by the protocol; a close ends in connection_lost
        if text:
            try:
                self._messages.append(data.decode())
            except UnicodeDecodeError as exc:
                self.protocol.fail(1007, f"{exc.reason} at position {exc.start}")
                self._write_out()
                self._arm_close_timer()
                return
        else:
            self._messages.append(data)
        if len(self._messages) >= MAX_QUEUE and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._events()

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self._events()

    def _events(self) -> None:
        events = self.protocol.events_received()
        try:
            self._write_out()
        except (OSError, RuntimeError):
            pass  # the socket is going away: connection_lost follows
        if self.protocol.close_expected():
            self._arm_close_timer()
        for event in events:
            if isinstance(event, Frame):
                self._received(event)
            elif isinstance(event, Response) and not self._response.done():
                self._response.set_result(None)
        if self._messages:
            self._wake_reader()
        if self.protocol.handshake_exc is not None and not self._response.done():
            self._response.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent: the protocol's state becomes CLOSED
        for timer in (self._ping_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._close_timer = None
        if not self._response.done():
            self._response.set_exception(
                InvalidHandshake("connection closed during the opening handshake")
                if exc is None
                else ConnectionError(f"connection lost during the opening handshake: {exc!r}")
            )
        self._lost.set_result(None)
        self._wake_reader()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)


WebSocketClient = LeanClientConnection | ClientConnection


async def connect(
    url: str,
    *,
    additional_headers: Mapping[str, str],
    open_timeout: float,
    ping_interval: float | None,
    ping_timeout: float | None,
    close_timeout: float,
    max_size: int,
) -> WebSocketClient:
    """Open a client websocket (the handshake within ``open_timeout``: ``TimeoutError``). Raises
    what the library's ``connect`` raises: ``InvalidStatus`` (a refused handshake, with its
    response), ``InvalidHandshake``, ``InvalidURI``, ``OSError``."""
    uri = parse_uri(url)
    if get_proxy(uri) is not None:
        return await library_connect(
            url,
            additional_headers=dict(additional_headers),
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            max_size=max_size,
            compression=None,
        )
    loop = asyncio.get_running_loop()
    tls = ssl.create_default_context() if uri.secure else None
    async with asyncio.timeout(open_timeout):
        _, client = await loop.create_connection(
            lambda: LeanClientConnection(
                ClientProtocol(uri, max_size=max_size),
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                close_timeout=close_timeout,
            ),
            uri.host,
            uri.port,
            ssl=tls,
            server_hostname=uri.host if tls is not None else None,
        )
        try:
            await client.handshake(additional_headers)
        except BaseException:
            client.transport.abort()
            raise
    return client
