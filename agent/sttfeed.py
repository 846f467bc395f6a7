"""One call's speech-to-text session: caller frames in, transcripts out, reconnects on failure.

A sender and a reader per connection. When the provider's socket fails, the feed reconnects (with a
short backoff that resets once a connection has worked for a while) and replays the audio the failed
session had not finalised yet, so no words are lost to a dropped socket. Faults are reported to the
session, which puts them on the turn they hurt.

Sends are batched: the sender joins ``batch_ms`` of caller frames (20-100 ms, config
``sarvam.stt_batch_ms``) into one ``send_audio``: each send is a websocket message of base64 in JSON
(with its syscall and mask), so 100 ms batches send a fifth of the messages of 20 ms ones. Where a
batch would cost latency it is skipped: when speech stops (a voiced frame, then an unvoiced one) the
next ``hurry_ms`` of frames (session: twice ``sarvam.stt_silence_ms``) go one at a time, as they arrive, so the STT hears the silence that ends
an utterance (and finalises it) as soon as with no batching; and ``flush`` (our endpointer
committed) sends what a batch holds at once. Speech itself and long silences go in batches.
Batching counts frames (the caller's media clock), not wall time, with one exception: when no frame
has come for ``stall_ms`` (a phone with silence suppression stops sending after the caller's words)
what a batch holds goes at once, else the end of the utterance would wait for frames that never come.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from voxroute.agent import gcquiet
from voxroute.agent.providers.base import ProviderError, STTProvider, STTStream, Transcript
from voxroute.agent.timeline import Clock

STT_REPLAY_LIMIT = 750  # frames (15 s) of not-yet-finalised audio kept to replay after a reconnect
FRAME_MS = 20
DEFAULT_BATCH_MS = 100
HURRY_MS = 400  # after speech stops, frames go one by one this long (twice the default STT silence)
STALL_MS = 60  # no frame for this long (three frame times): the frames a batch holds go at once
BACKOFF_S = (0.0, 0.1, 0.3, 1.0, 2.0)


class STTFeed:
    def __init__(
        self,
        stt: STTProvider,
        language: str,
        tag: str,
        clock: Clock,
        on_transcript: Callable[[Transcript], Awaitable[None]],
        on_fault: Callable[[ProviderError, str], None],
        batch_ms: int = DEFAULT_BATCH_MS,
        hurry_ms: int = HURRY_MS,
        stall_ms: int = STALL_MS,
    ) -> None:
        if not FRAME_MS <= batch_ms <= 100 or batch_ms % FRAME_MS:
            raise ValueError(f"batch_ms must be 20-100 ms in steps of 20, got {batch_ms}")
        self._stt = stt
        self._language = language
        self._tag = tag
        self._clock = clock
        self._on_transcript = on_transcript
        self._on_fault = on_fault
        self._stream: STTStream | None = None
        self._audio: deque[tuple[bytes, bytes | None]] = deque(maxlen=STT_REPLAY_LIMIT)  # (pcm, mu-law)
        self._frames_in = 0  # frames received since the call began
        self._finalised_upto = 0  # frames covered by the STT's last final (no need to replay them)
        self._batch = batch_ms // FRAME_MS  # frames per send
        self._position = 0  # frames handed to the current connection (a count since the call began)
        self._hurry_frames = max(0, hurry_ms // FRAME_MS)
        self._hurry = 0  # unvoiced frames still to send at once since speech stopped
        self._speaking = False  # the last frame pushed was voiced
        self._urgent = False  # the sender sends what it holds, whole batch or not
        self._stall_s = stall_ms / 1000
        self._last_frame_at = 0.0  # clock ms of the last frame pushed
        self._ready = asyncio.Event()
        self._stall_timer: asyncio.TimerHandle | None = None  # checks a gathering batch for a stall

    def push(self, pcm: bytes, ulaw: bytes | None, voiced: bool | None = None) -> None:
        """A caller frame: the sender strand sends it, so a slow STT never holds up the inbound strand.
        ``voiced`` (our VAD's verdict, None: unknown) starts the hurry after speech stops."""
        self._audio.append((pcm, ulaw))
        self._frames_in += 1
        self._last_frame_at = self._clock.now()
        if self._frames_in - self._position == 1:
            self._arm_stall()  # a batch begins
        if voiced:
            self._speaking = True
        elif voiced is not None:
            if self._speaking:
                self._speaking = False
                self._hurry = self._hurry_frames
            if self._hurry:
                self._hurry -= 1
                self._urgent = True
                self._ready.set()
                return
        if self._frames_in - self._position >= self._batch:
            self._ready.set()

    async def flush(self) -> None:
        """Ask the STT to finalise what it holds (our endpointer committed before its final), after
        sending the frames a batch was still gathering."""
        stream = self._stream
        if stream is not None:
            try:
                await self._send_pending(stream)
                await stream.flush()
            except ProviderError:
                pass

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError as exc:  # the call ended
            gcquiet.free_frames(exc)  # no cycle left for a full collection (agent/gcquiet.py)
            raise

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                stream = await self._stt.connect(self._language, tag=self._tag)
            except ProviderError as exc:
                self._on_fault(exc, "reconnect")
                await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
                continue
            self._stream = stream
            connected_at = self._clock.now()
            self._position = max(self._finalised_upto, self._frames_in - len(self._audio))
            self._ready.set()  # the replay, if any, goes at once
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._send(stream))
                    await self._read(stream)
                    raise ProviderError(self._stt.name, "disconnected", "STT stream ended")
            except* ProviderError as group:
                exc = group.exceptions[0]
                assert isinstance(exc, ProviderError)
                gcquiet.free_frames(group)
                self._stream = None
                self._on_fault(exc, "reconnect")
                await _close(stream)
                if self._clock.now() - connected_at > 5000:
                    failures = 0  # it worked for a while: reconnect at once
                await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1

    async def aclose(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        stream, self._stream = self._stream, None
        if stream is not None:
            await _close(stream)

    async def _send(self, stream: STTStream) -> None:
        """Sends caller frames in order, a batch at a time, as they arrive; what a batch holds goes
        at once when the frames stop (``stall_ms``, the stall timer wakes this strand)."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            urgent, self._urgent = self._urgent, False
            await self._send_pending(stream, whole=not urgent)
            if self._frames_in > self._position:
                self._arm_stall()  # frames came during the send: a batch is gathering

    def _arm_stall(self) -> None:
        """Watch the gathering batch for a stall. A plain timer, not a timed wait of the sender: the
        sender wakes only to send (a timed wait cost it a wake-up and a timeout per batch begun and per
        stall check, on every call, every 100 ms)."""
        if self._stall_timer is None:
            loop = asyncio.get_running_loop()
            self._stall_timer = loop.call_at(loop.time() + self._stall_s - self._quiet_s(), self._check_stall)

    def _check_stall(self) -> None:
        self._stall_timer = None
        if self._frames_in <= self._position:
            return  # the batch went: the next one arms its own
        if self._quiet_s() < self._stall_s:
            self._arm_stall()  # a frame came meanwhile: the batch goes on gathering
            return
        self._urgent = True  # no frame for stall_ms: the caller's side stopped sending
        self._ready.set()

    def _quiet_s(self) -> float:
        return (self._clock.now() - self._last_frame_at) / 1000

    async def _send_pending(self, stream: STTStream, whole: bool = False) -> None:
        """Sends the frames not handed to ``stream`` yet, ``batch_ms`` per message (``whole``: only
        full batches; the rest waits for more frames). The position moves before each await, so the
        sender and ``flush`` never send a frame twice."""
        while (left := self._frames_in - self._position) > 0 and (left >= self._batch or not whole):
            oldest = self._frames_in - len(self._audio)
            start = max(self._position, oldest)
            end = min(self._frames_in, start + self._batch)
            self._position = end
            if end - start == 1:
                pcm, ulaw = self._audio[start - oldest]
            else:
                frames = [self._audio[i - oldest] for i in range(start, end)]
                pcm = b"".join(p for p, _ in frames)
                ulaws = [u for _, u in frames if u is not None]
                ulaw = b"".join(ulaws) if len(ulaws) == len(frames) else None  # all frames or none
            await stream.send_audio(pcm, ulaw)

    async def _read(self, stream: STTStream) -> None:
        async for ev in stream.events():
            if not isinstance(ev, Transcript):
                continue  # SpeechEnded: its final follows at once, unless our silence rule came first
            if ev.final:
                self._finalised_upto = self._frames_in
            await self._on_transcript(ev)


async def _close(stream: STTStream) -> None:
    try:
        async with asyncio.timeout(1.0):
            await stream.aclose()
    except (ProviderError, TimeoutError, OSError):
        pass
