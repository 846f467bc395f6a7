"""What every carrier's websocket link shares: receiving until the socket goes away, serialised
sends that turn a dead socket into a quiet no-op, closing once, and ``events()`` as an iterator.

``TwilioLink`` (telephony/app.py) and ``MediaStreamLink`` (telephony/carriers.py) add their
codec: ``wait_start`` and ``_next_event``.

Media silence: with ``silence_timeout_s`` set (the edge sets it once the call started), a socket
that delivers no message for that long is closed and reads as gone (``SocketClosed``): the call
ends as if the carrier had hung up, with one log line. Carriers send media all through a call
(silence too), so this only ends calls whose carrier side went quiet. One timer per link watches
it, re-armed when it fires (every ``silence_timeout_s``), not one per message: an
``asyncio.timeout`` around each of the 50 receives per call-second cost ~7 us each.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import WebSocket
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect
from voxroute.agent.link import CallStart, CarrierEvent

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
        self._receiver: asyncio.Task | None = None  # the task waiting for a message, while it waits
        self._waiting_since = 0.0  # loop time that wait began
        self._silence_timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def _receive(self) -> str | bytes:
        if self._closed:
            raise SocketClosed
        loop = asyncio.get_running_loop()
        if self.silence_timeout_s is not None and self._silence_timer is None:
            self._silence_timer = loop.call_at(loop.time() + self.silence_timeout_s, self._check_silence)
        self._receiver = task = asyncio.current_task()
        self._waiting_since = loop.time()
        message: Message
        try:
            message = await self._ws.receive()
        except asyncio.CancelledError:
            if not self.timed_out or task is None or task.uncancel():
                raise  # not (only) our timer's cancellation
            log.warning("%s: no media for %.1f s, ending the call", self._who, self.silence_timeout_s)
            await self.close(1000)
            raise SocketClosed from None
        except (WebSocketDisconnect, RuntimeError, OSError):
            message = {"type": "websocket.disconnect"}
        finally:
            self._receiver = None
        if message["type"] == "websocket.disconnect":
            self._closed = True
            self._stop_silence_timer()
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

    async def __anext__(self) -> CarrierEvent:
        return await self._link._next_event()
