"""One carrier media stream (Twilio, Exotel, Plivo or Telnyx) over a websocket, as a
``voxroute.agent.link.CarrierLink``: :class:`MediaStreamLink` drives the carrier's sans-I/O codec
(a ``telephony.mediastream.MediaStreamCodec``); :class:`WebSocketLink` below it receives until the
socket goes away, serialises sends (a dead socket turns them into a quiet no-op), closes once, and
gives ``events()`` as an iterator.

Media silence: with ``silence_timeout_s`` set (the edge sets it once the call started), a socket
that delivers no message for that long is closed and reads as gone (``SocketClosed``): the call
ends as if the carrier had hung up, with one log line. Carriers send media all through a call
(silence too), so this only ends calls whose carrier side went quiet. One timer per link watches
it, re-armed when it fires (every ``silence_timeout_s``), not one per message: an
``asyncio.timeout`` around each of the 50 receives per call-second cost ~7 us each.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Coroutine

from fastapi import Request, WebSocket
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect

from voxroute.agent.link import CallEnded, CallStart, CarrierEvent, InboundAudio, InboundDtmf, MarkEcho
from voxroute.audio import WireFormat
from voxroute.telephony.mediastream import (
    Audio,
    CarrierError,
    CarrierProtocolError,
    Dtmf,
    MarkPlayed,
    MediaStreamCodec,
    Stopped,
    StreamStart,
)

log = logging.getLogger(__name__)

YIELD_EVERY = 16  # messages read in a row before the link lets the event loop run other work


def peer_of(conn: Request | WebSocket) -> str:
    """``host:port`` of the far end, for log lines."""
    return f"{conn.client.host}:{conn.client.port}" if conn.client else "?"


class SocketClosed(Exception):
    """The carrier's side of the socket went away."""


class WebSocketLink:
    start: CallStart

    def __init__(self, websocket: WebSocket, who: str) -> None:
        self._ws = websocket
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._ended = False
        self._who = who
        self.close_code: int | None = None  # how the carrier closed the socket
        self.silence_timeout_s: float | None = None  # no message for this long ends the call
        self.timed_out = False  # ended by the media-silence timeout
        self._burst = 0  # messages received since the last pause for the loop
        self._receiver: asyncio.Task | None = None  # the task waiting for a message, while it waits
        self._waiting_since = 0.0  # loop time that wait began
        self._silence_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first receive
        # The media port's socket (telephony/wsserver.py) gives the message itself (no ASGI dict)
        # and writes a frame without waiting unless its peer is behind: both per message.
        self._receive_data = getattr(websocket, "receive_data", None)
        self._write_text = getattr(websocket, "write_text", None)

    @property
    def closed(self) -> bool:
        return self._closed

    async def _receive(self) -> str | bytes:
        if self._closed:
            raise SocketClosed
        # The loop is looked up once: on Python 3.11 each lookup (``get_running_loop``, and
        # ``current_task`` without one) checks the process id, a getpid system call (~0.6 us here).
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self.silence_timeout_s is not None and self._silence_timer is None:
            self._silence_timer = loop.call_at(loop.time() + self.silence_timeout_s, self._check_silence)
        self._receiver = task = asyncio.current_task(loop)
        self._waiting_since = loop.time()
        data: str | bytes | None
        try:
            if self._receive_data is not None:
                data = await self._receive_data()
                if data is None:
                    self.close_code = self._ws.close_code  # type: ignore[attr-defined]
            else:
                data = await self._receive_asgi()
        except asyncio.CancelledError:
            if not self.timed_out or task is None or task.uncancel():
                raise  # not (only) our timer's cancellation
            log.warning("%s: no media for %.1f s, ending the call", self._who, self.silence_timeout_s)
            await self.close(1000)
            raise SocketClosed from None
        except (WebSocketDisconnect, RuntimeError, OSError):
            data = None
        finally:
            self._receiver = None
        if data is None:
            self._closed = True
            self._stop_silence_timer()
            raise SocketClosed
        self._burst += 1
        if self._burst >= YIELD_EVERY:
            # Messages already queued are returned without a pause: a peer that floods the socket
            # would keep this strand running and every other call waiting. Let the loop run.
            self._burst = 0
            await asyncio.sleep(0)
        return data

    async def _receive_asgi(self) -> str | bytes | None:
        """The next message from a Starlette ``WebSocket``; None (and ``close_code``) at its end."""
        message: Message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            self.close_code = message.get("code")
            return None
        text = message.get("text")
        return text if text is not None else (message.get("bytes") or b"")

    def _check_silence(self) -> None:
        """The silence timer: ends a wait for a message that has lasted ``silence_timeout_s``
        (cancelling it, as ``asyncio.timeout`` would), else fires again when the current wait
        would reach it."""
        self._silence_timer = None
        timeout = self.silence_timeout_s
        if self._closed or timeout is None:
            return
        loop = asyncio.get_running_loop()
        due = (self._waiting_since if self._receiver is not None else loop.time()) + timeout
        if self._receiver is not None and loop.time() >= due:
            self.timed_out = True
            self._receiver.cancel()
            return
        self._silence_timer = loop.call_at(due, self._check_silence)

    def _stop_silence_timer(self) -> None:
        if self._silence_timer is not None:
            self._silence_timer.cancel()
            self._silence_timer = None

    async def _send(self, texts: list[str]) -> None:
        if not texts:
            return
        write = self._write_text
        if write is not None and not self._send_lock.locked():
            # The media port: the frames go to the transport now, no lock round trip and no
            # suspension, unless the peer is behind: then wait (holding the lock, so other
            # sends queue behind) until it drains.
            if self._closed:
                return
            try:
                keeping_up = all([write(text) for text in texts])
                if not keeping_up:
                    async with self._send_lock:
                        await self._ws.drain()  # type: ignore[attr-defined]
            except OSError as exc:
                self._closed = True
                log.info("%s: send failed, socket closed: %r", self._who, exc)
            return
        async with self._send_lock:
            if self._closed:
                return
            try:
                for text in texts:
                    await self._ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                self._closed = True
                log.info("%s: send failed, socket closed: %r", self._who, exc)

    def events(self) -> _LinkEvents:
        return _LinkEvents(self)

    async def _next_event(self) -> CarrierEvent:
        raise NotImplementedError

    async def hangup(self) -> None:
        await self.close(1000)

    async def close(self, code: int = 1000) -> None:
        self._stop_silence_timer()
        async with self._send_lock:
            if self._closed:
                return
            self._closed = True
            try:
                await self._ws.close(code=code)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass


class _LinkEvents:
    """``link.events()``: a plain async iterator (not a generator: nothing to finalise if dropped)."""

    def __init__(self, link: WebSocketLink):
        self._link = link

    def __aiter__(self) -> _LinkEvents:
        return self

    def __anext__(self) -> Coroutine[object, object, CarrierEvent]:
        return self._link._next_event()  # the coroutine itself: no second frame per message


class MediaStreamLink(WebSocketLink):
    """One carrier media stream as a ``voxroute.agent.link.CarrierLink``.

    Audio in is 20 ms PCM16 8 kHz (the codec converts from the native format); ``send_audio``
    takes the stream's ``audio_format`` (the codec's wire format: mu-law for Twilio, ...) and
    sends it as it is. Marks flushed by our own ``clear`` are reported at once (Twilio's rule,
    which Twilio keeps itself and the codecs of the others keep for them). Sends after the socket
    closed are dropped quietly: the end shows up in ``events()`` as ``CallEnded``.
    """

    def __init__(self, websocket: WebSocket, codec: MediaStreamCodec, *, default_tenant: str = "default"):
        super().__init__(websocket, f"{codec.stream_label} from {peer_of(websocket)}")
        self._codec = codec
        self._default_tenant = default_tenant
        self._ready: collections.deque[CarrierEvent] = collections.deque()
        self.carrier_errors = 0

    async def wait_start(self, tenant_for: Callable[[str], str] | None = None) -> CallStart:
        """Read until the carrier's ``start``; the caller bounds this with a timeout. The tenant:
        the start's ``tenant`` parameter, else ``tenant_for`` the number called, else the default.
        Events that come in the same message batch after it are kept for ``events()``."""
        while True:
            started: StreamStart | None = None
            for event in self._codec.feed(await self._receive()):
                if isinstance(event, StreamStart):
                    started = event
                elif started is not None:
                    self._queue(event)
            if started is None:
                continue
            params = dict(started.parameters)
            to_number = started.to_number or params.get("to") or None
            tenant = params.get("tenant") or (tenant_for(to_number) if tenant_for and to_number else None)
            self.start = CallStart(
                call_sid=started.call_id,
                stream_sid=started.stream_id,
                tenant=tenant or self._default_tenant,
                from_number=started.from_number or params.get("from") or None,
                to_number=to_number,
                language=params.get("language") or None,
                carrier=self._codec.carrier,
                parameters=params,
            )
            self._who = f"{self._codec.call_label} {started.call_id}"
            return self.start

    def _queue(self, event: object) -> None:
        if isinstance(event, Audio):
            self._ready.append(InboundAudio(event.pcm, event.timestamp_ms, event.ulaw))
        elif isinstance(event, Dtmf):
            self._ready.append(InboundDtmf(event.digit))
        elif isinstance(event, MarkPlayed):
            self._ready.append(MarkEcho(event.name))
        elif isinstance(event, Stopped):
            self._ready.append(CallEnded("stop"))
        elif isinstance(event, CarrierError):
            self.carrier_errors += 1
            if self.carrier_errors <= 10:
                log.warning("%s: the carrier reports an error %s: %s", self._who, event.code, event.detail)

    async def _next_event(self) -> CarrierEvent:
        if self._ended:
            raise StopAsyncIteration
        while not self._ready:
            try:
                raw = await self._receive()
            except SocketClosed:
                clean = self.close_code in (1000, 1001, 1005)
                self._ready.append(CallEnded("stop" if clean and self._codec.close_means_stop else "closed"))
                break
            try:
                parsed = self._codec.feed(raw)
            except CarrierProtocolError as exc:
                log.warning("%s: protocol error, closing the stream (1008): %s", self._who, exc)
                await self.close(1008)
                self._ready.append(CallEnded("error"))
                break
            for event in parsed:
                self._queue(event)
        event = self._ready.popleft()
        if isinstance(event, CallEnded):
            self._ended = True
            self._ready.clear()
        return event

    @property
    def audio_format(self) -> WireFormat:
        return self._codec.wire_format

    async def send_audio(self, data: bytes) -> None:
        if data and not self._closed:
            await self._send(self._codec.media_wire(data))

    async def send_mark(self, name: str) -> None:
        await self._send(self._codec.mark(name))

    async def clear(self) -> None:
        await self._send(self._codec.clear())
        for event in self._codec.take_flushed():
            self._queue(event)
