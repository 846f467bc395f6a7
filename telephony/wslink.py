"""What every carrier's websocket link shares: receiving until the socket goes away, serialised
sends that turn a dead socket into a quiet no-op, closing once, and ``events()`` as an iterator.

``TwilioLink`` (telephony/app.py) and ``MediaStreamLink`` (telephony/carriers.py) add their
codec: ``wait_start`` and ``_next_event``.

Media silence: with ``silence_timeout_s`` set (the edge sets it once the call started), a socket
that delivers no message for that long is closed and reads as gone (``SocketClosed``): the call
ends as if the carrier had hung up, with one log line. Carriers send media all through a call
(silence too), so this only ends calls whose carrier side went quiet.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from agent.link import CallStart, CarrierEvent

log = logging.getLogger(__name__)

YIELD_EVERY = 16  # messages read in a row before the link lets the event loop run other work


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

    @property
    def closed(self) -> bool:
        return self._closed

    async def _receive(self) -> str | bytes:
        if self._closed:
            raise SocketClosed
        try:
            if self.silence_timeout_s is None:
                message = await self._ws.receive()
            else:
                async with asyncio.timeout(self.silence_timeout_s):
                    message = await self._ws.receive()
        except TimeoutError:
            log.warning("%s: no media for %.1f s, ending the call", self._who, self.silence_timeout_s)
            self.timed_out = True
            await self.close(1000)
            raise SocketClosed from None
        except (WebSocketDisconnect, RuntimeError, OSError):
            message = {"type": "websocket.disconnect"}
        if message["type"] == "websocket.disconnect":
            self._closed = True
            self.close_code = message.get("code")
            raise SocketClosed
        self._burst += 1
        if self._burst >= YIELD_EVERY:
            # Messages already queued are returned without a pause: a peer that floods the socket
            # would keep this strand running and every other call waiting. Let the loop run.
            self._burst = 0
            await asyncio.sleep(0)
        text = message.get("text")
        return text if text is not None else (message.get("bytes") or b"")

    async def _send(self, texts: list[str]) -> None:
        if not texts:
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

    async def __anext__(self) -> CarrierEvent:
        return await self._link._next_event()
