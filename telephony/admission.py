"""How many calls one process carries, and whether it takes new ones: every carrier edge (Twilio,
Exotel, Plivo, Telnyx, SIP, AudioSocket) asks the same :class:`CallGate` before a call starts; and
:class:`SilenceGuard`, the media-silence timeout for links that do not time their own receive.

Over the cap, or while the process drains for shutdown, a new call is refused with the carrier's
own busy answer (``<Reject reason="busy"/>``, a websocket close 1013, SIP 486) and one log line
(rate-limited), and ``refused`` counts it by carrier and reason for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voxroute.agent.link import CallStart, CarrierEvent, CarrierLink
    from voxroute.audio import WireFormat

log = logging.getLogger(__name__)

BUSY, DRAINING = "busy", "draining"
WS_TRY_AGAIN_LATER = 1013  # RFC 6455 registry: the server is overloaded, try again later
LOG_EVERY_S = 5.0


class CallGate:
    """Admission for calls: ``enter`` takes a slot (or says why not), ``leave`` gives it back."""

    def __init__(self, max_calls: int) -> None:
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        self.max_calls = max_calls
        self.active = 0
        self.draining = False
        self.refused: Counter[tuple[str, str]] = Counter()  # (carrier, reason) -> calls refused
        self._last_log = 0.0
        self._unlogged = 0

    def refusal(self) -> str | None:
        """Why a new call would be refused now (``busy``, ``draining``), or None."""
        if self.draining:
            return DRAINING
        if self.active >= self.max_calls:
            return BUSY
        return None

    def check(self, carrier: str, call_id: str | None = None) -> str | None:
        """For a call set-up that takes no slot yet (a webhook): the refusal, counted and logged."""
        reason = self.refusal()
        if reason is not None:
            self._refused(carrier, reason, call_id)
        return reason

    def enter(self, carrier: str, call_id: str | None = None) -> str | None:
        """Take a slot for a call that starts now; else the refusal (counted and logged)."""
        reason = self.check(carrier, call_id)
        if reason is None:
            self.active += 1
        return reason

    def leave(self) -> None:
        self.active = max(0, self.active - 1)

    def _refused(self, carrier: str, reason: str, call_id: str | None) -> None:
        self.refused[(carrier, reason)] += 1
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more refused since the last line)" if self._unlogged else ""
        self._last_log, self._unlogged = now, 0
        why = (
            "shutting down" if reason == DRAINING else f"{self.active} of {self.max_calls} calls in progress"
        )
        log.warning("%s call %s refused (%s): %s%s", carrier, call_id or "?", reason, why, more)


class SilenceGuard:
    """A ``CarrierLink`` whose events end the call after ``timeout_s`` without any inbound event:
    for links that do not time their own receive (SIP, AudioSocket: silence suppression and an idle
    Asterisk send nothing for a while, but never for this long on a live call). Everything else is
    the wrapped link's."""

    def __init__(self, link: CarrierLink, timeout_s: float) -> None:
        self._link = link
        self._timeout_s = timeout_s
        self.timed_out = False

    def __getattr__(self, name: str):
        return getattr(self._link, name)

    @property
    def start(self) -> CallStart:
        return self._link.start

    def events(self) -> _GuardedEvents:
        return _GuardedEvents(self, self._link.events())

    @property
    def audio_format(self) -> WireFormat:
        return self._link.audio_format

    async def send_audio(self, data: bytes) -> None:
        await self._link.send_audio(data)

    async def send_mark(self, name: str) -> None:
        await self._link.send_mark(name)

    async def clear(self) -> None:
        await self._link.clear()

    async def hangup(self) -> None:
        await self._link.hangup()


class _GuardedEvents:
    def __init__(self, guard: SilenceGuard, inner: AsyncIterator[CarrierEvent]) -> None:
        self._guard = guard
        self._inner = inner
        self._over = False

    def __aiter__(self) -> _GuardedEvents:
        return self

    async def __anext__(self) -> CarrierEvent:
        from voxroute.agent.link import CallEnded

        if self._over:
            raise StopAsyncIteration
        try:
            async with asyncio.timeout(self._guard._timeout_s):
                return await self._inner.__anext__()
        except TimeoutError:
            link = self._guard._link
            who = getattr(getattr(link, "start", None), "call_sid", "?")
            log.warning("call %s: no media for %.1f s, ending the call", who, self._guard._timeout_s)
            self._over = self._guard.timed_out = True
            await link.hangup()
            return CallEnded("closed")
