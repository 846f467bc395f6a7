"""Outbound strand: paces agent audio to the carrier and keeps marks honest.

The carrier would accept audio faster than real time, but then ``clear`` has more to throw
away and marks say little. We keep at most ``lead_ms`` queued at the carrier and send
``slice_ms`` per message. A mark follows each reply chunk; its echo proves the chunk played.

Audio here is in the link's wire format (``link.audio_format``: G.711 at 8 bytes per ms, PCM16 at
8 kHz at 16, ...), as the TTS made it; slices, pacing and ``remaining_s`` count its bytes per ms.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from voxroute.agent.link import CarrierLink
from voxroute.agent.samples import SampleRing


@dataclass(slots=True)
class _Audio:
    data: bytes  # in the link's wire format
    owner: object  # who queued it (a TurnRecord); first-send callbacks get it back
    source: str  # "answer", "bridge", "apology"


@dataclass(slots=True)
class _Mark:
    name: str


class PacingStats:
    """Process-wide lateness of outbound sends against their schedule (for bench/)."""

    def __init__(self, keep: int = 200_000) -> None:
        self.late_ms = SampleRing(keep)  # allocated once: no growth while it fills

    def reset(self) -> None:
        self.late_ms.clear()


PACING = PacingStats()


class MarkLedger:
    """Sans-I/O: the marks sent and not yet echoed. A ``clear`` throws away the audio they follow,
    and the carrier still echoes them, so their echoes then prove nothing. Shared by the player and
    the Pipecat integration's heard-text processor (voxroute/integrations/pipecat/twilio.py)."""

    __slots__ = ("_pending", "_flushed")

    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._flushed: set[str] = set()

    def sent(self, name: str) -> None:
        self._pending.add(name)

    def cleared(self) -> None:
        """The carrier was told to clear: every pending mark is flushed, not heard."""
        self._flushed |= self._pending
        self._pending.clear()

    def echoed(self, name: str) -> bool:
        """True if the echo proves the audio before the mark played; False if a clear flushed it."""
        if name in self._flushed:
            self._flushed.discard(name)
            return False
        self._pending.discard(name)
        return True


class Player:
    def __init__(
        self,
        link: CarrierLink,
        on_first_send: Callable[[object, str, float], None],
        lead_ms: int = 120,
        slice_ms: int = 60,
    ) -> None:
        self._link = link
        self._on_first_send = on_first_send
        self._lead_s = lead_ms / 1000
        self.audio_format = link.audio_format
        self._bytes_per_s = self.audio_format.bytes_per_ms * 1000
        # whole samples per slice (a PCM16 slice never splits a sample)
        self._slice_bytes = slice_ms * self.audio_format.bytes_per_ms
        self._queue: deque[_Audio | _Mark] = deque()
        self._wake = asyncio.Event()
        self._played_until = 0.0  # monotonic s when everything sent so far has played
        self._generation = 0
        self._marks = MarkLedger()
        self._started: set[tuple[int, str]] = set()
        self._awaited: dict[str, asyncio.Event] = {}  # marks someone waits for (``played``)

    # -- what the session calls

    def play(self, data: bytes, owner: object, source: str) -> None:
        """Queue ``data`` (in ``audio_format``: what the TTS gave for it) after what is queued."""
        if data:
            self._queue.append(_Audio(data, owner, source))
            self._wake.set()

    def mark(self, name: str) -> None:
        self._queue.append(_Mark(name))
        self._wake.set()

    @property
    def speaking(self) -> bool:
        """Audio is queued here or still playing at the carrier."""
        return bool(self._queue) or self._played_until > time.monotonic()

    def remaining_s(self) -> float:
        queued = sum(len(i.data) for i in self._queue if isinstance(i, _Audio)) / self._bytes_per_s
        return max(0.0, self._played_until - time.monotonic()) + queued

    async def clear(self) -> None:
        """Barge-in: drop what is queued here and at the carrier; pending marks become unheard."""
        self._queue.clear()
        self._generation += 1
        self._marks.cleared()
        self._played_until = time.monotonic()
        await self._link.clear()

    def on_mark_echo(self, name: str) -> bool:
        """True if the mark proves its audio played; False if ``clear`` flushed it."""
        event = self._awaited.pop(name, None)
        if event is not None:
            event.set()
        return self._marks.echoed(name)

    async def played(self, name: str, slack_s: float = 5.0) -> bool:
        """Queues mark ``name`` and waits for its echo (flushed or not): True; False if none came by
        the time what is queued should have played, and ``slack_s`` more."""
        event = self._awaited[name] = asyncio.Event()
        self.mark(name)
        try:
            async with asyncio.timeout(self.remaining_s() + slack_s):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._awaited.pop(name, None)

    # -- the strand

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, _Mark):
                    self._marks.sent(item.name)
                    await self._link.send_mark(item.name)
                else:
                    await self._send_audio(item)

    async def _send_audio(self, item: _Audio) -> None:
        generation = self._generation
        data = item.data
        key = (id(item.owner), item.source)
        offset, size = 0, len(data)
        while offset < size:
            now = time.monotonic()
            ahead = self._played_until - now
            if ahead > self._lead_s:
                due = self._played_until - self._lead_s
                await asyncio.sleep(due - now)
                now = time.monotonic()
                PACING.late_ms.append((now - due) * 1000)
                if generation != self._generation:
                    return  # cleared while we slept
            # one slice copied per send, not the rest of the reply each time (a 5 s reply: 83 sends)
            piece = data[offset : offset + self._slice_bytes]
            offset += len(piece)
            if key not in self._started:
                self._started.add(key)
                self._on_first_send(item.owner, item.source, now)
            await self._link.send_audio(piece)
            self._played_until = max(now, self._played_until) + len(piece) / self._bytes_per_s
