"""Offline speech-to-text: the re-decoder that transcribes while the caller speaks (sans-I/O), the
Whisper stream over it, and the STT provider (the package docstring has the whole picture)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import webrtcvad

from voxroute.agent.providers.base import (
    FRAME_BYTES,
    FRAME_MS,
    SAMPLE_RATE,
    ProviderError,
    SpeechEnded,
    SpeechStarted,
    STTEvent,
    Transcript,
)
from voxroute.agent.providers.local.common import (
    CPU,
    DECODE_ALLOWANCE_FRAMES,
    DECODE_WORK,
    FINAL_QUIET_MS,
    LEAD_MS,
    MAX_UTTERANCE_S,
    MIN_UTTERANCE_MS,
    PARTIAL_INTERVAL_MS,
    PAUSE_DECODE_MS,
    STT_NAME,
    UTTERANCE_SILENCE_MS,
)
from voxroute.agent.providers.local.engines import EnginePool, WhisperEngine


@dataclass(frozen=True, slots=True)
class Began:
    """An utterance began: its frames are the ``lead`` unvoiced frames before it and this one."""

    utterance: int
    lead: int


@dataclass(frozen=True, slots=True)
class Ended:
    """The utterance is over; ``final``: a final follows (a :class:`Heard`, or :class:`Lost`)."""

    utterance: int
    final: bool


@dataclass(frozen=True, slots=True)
class Decode:
    """Decode the first ``frames`` frames of utterance ``utterance``. ``window_only``: a decode while
    the utterance is open (a partial, or the one at a pause): if Whisper loops on the short window
    there is no result (None), not a second decode on the full window."""

    utterance: int
    frames: int
    window_only: bool = False


@dataclass(frozen=True, slots=True)
class Drop:
    """A decode under way is of no use any more (its utterance ended with another final): cancel it."""

    job: Decode


@dataclass(frozen=True, slots=True)
class Heard:
    """A transcript of utterance ``utterance``: a partial, or its final."""

    utterance: int
    text: str
    confidence: float | None
    final: bool


@dataclass(frozen=True, slots=True)
class Lost:
    """The decode that was to give utterance ``utterance``'s final failed."""

    utterance: int


RecognitionAction = Began | Ended | Decode | Drop | Heard | Lost


class Redecoder:
    """When to decode what, for one call (sans-I/O: frames with the VAD's verdict and the time in ms,
    decode results in; actions out).

    webrtcvad cuts utterances: one begins at a voiced frame (with up to ``lead_ms`` of the quiet
    before it, so onsets are not clipped) and ends after ``silence_ms`` of quiet or at ``max_s``.
    While it grows, the whole utterance so far is decoded again:

    - every ``interval_ms`` at most (three times the last decode's time, when that is longer), when
      ``interval_ms`` of new audio came, one decode at a time; each result is a partial;
    - at once when ``pause_ms`` of quiet follow the voice (the caller may be done): a decode of
      every voiced frame heard, so when the utterance ends its final is ready or nearly so;
    - none while the engine is ``busy`` (its workers all have work: finals come first), and none
      that would take the frames decoded for this utterance past ``work`` times its frames plus
      ``allowance`` (partials stop one utterance's worth short of that, so the decode at the pause
      always fits): re-decoding stays linear in the utterance's length, however it is paced.

    The utterance ends early, at ``final_quiet_ms`` of quiet or when a decode comes back after
    that, if a result holds every voiced frame: its text is the final, at once (the caller is most
    likely done; if they go on, the turn core merges the next utterance into the turn).

    At the end, the final is the last result if it holds every voiced frame (no decode at all),
    else that of a decode under way that holds them, else a new decode of the whole utterance
    (never skipped). Utterances with fewer than ``min_ms`` of voice are clicks: no final.
    """

    def __init__(
        self,
        silence_ms: int = UTTERANCE_SILENCE_MS,
        *,
        interval_ms: int = PARTIAL_INTERVAL_MS,
        pause_ms: int = PAUSE_DECODE_MS,
        final_quiet_ms: int = FINAL_QUIET_MS,
        work: int = DECODE_WORK,
        allowance: int = DECODE_ALLOWANCE_FRAMES,
        min_ms: int = MIN_UTTERANCE_MS,
        max_s: int = MAX_UTTERANCE_S,
        lead_ms: int = LEAD_MS,
    ) -> None:
        self._silence = max(1, silence_ms // FRAME_MS)
        self._interval_ms = interval_ms
        self._pause = max(1, pause_ms // FRAME_MS)
        self._final_quiet = min(self._silence, max(1, final_quiet_ms // FRAME_MS))
        self._work = work
        self._allowance = allowance
        self._min = min_ms // FRAME_MS
        self._max = max_s * 1000 // FRAME_MS
        self._lead_max = lead_ms // FRAME_MS
        self.utterance = 0  # the open (or last) utterance's number
        self.in_speech = False
        self.frames = 0  # the open utterance's frames, lead-in included
        self.voiced = 0
        self.decoded = 0  # frames handed to decodes for the open utterance (the work bound's measure)
        self._lead = 0
        self._heard_upto = 0  # frames up to and including the last voiced one
        self._silent_run = 0
        self._last_start: float | None = None
        self._last_frames = 0  # frames of the last decode started
        self._best: Heard | None = None  # the open utterance's latest result ...
        self._best_frames = 0  # ... and the frames it holds
        self._in_flight: set[Decode] = set()
        self._started: dict[Decode, float] = {}  # when each decode under way began
        self._decode_ms = 0.0  # how long the last decode took, start to result
        self._finals: dict[int, Decode] = {}  # ended utterance -> the decode under way that gives its final

    # ------------------------------------------------------------------ events

    def frame(self, voiced: bool, now: float, busy: bool) -> list[RecognitionAction]:
        """One 20 ms frame at ``now`` (ms); ``busy``: the engine's workers are all at work."""
        if not self.in_speech:
            if not voiced:
                self._lead = min(self._lead + 1, self._lead_max)
                return []
            return [self._begin()]
        self.frames += 1
        if voiced:
            self.voiced += 1
            self._heard_upto = self.frames
            self._silent_run = 0
        else:
            self._silent_run += 1
        if self._silent_run >= self._silence or self.frames >= self._max or self._final_in_hand():
            return self._end()
        job = self._due(now, busy)
        return [job] if job is not None else []

    def flush(self) -> list[RecognitionAction]:
        """End the open utterance now (the session's endpointer decided first)."""
        return self._end() if self.in_speech else []

    def done(
        self, job: Decode, text: str | None, confidence: float | None, now: float | None = None
    ) -> list[RecognitionAction]:
        """A decode finished with ``text`` (None: a ``window_only`` decode that gave nothing) at
        ``now`` (then it is timed: see ``_due``)."""
        self._in_flight.discard(job)
        started = self._started.pop(job, None)
        if now is not None and started is not None:
            self._decode_ms = now - started
        if self._finals.get(job.utterance) == job:
            if text is None:  # the decode at the pause looped: the final needs the full window
                again = Decode(job.utterance, job.frames)
                self._finals[job.utterance] = again
                self._in_flight.add(again)
                return [again]
            del self._finals[job.utterance]
            return [Heard(job.utterance, text, confidence, final=True)]
        if text is None:
            return []  # a decode that ran on: no result
        if job.utterance != self.utterance or not self.in_speech or job.frames <= self._best_frames:
            return []  # an ended utterance's extra decode, or older than a result we hold
        changed = self._best is None or self._best.text != text
        self._best, self._best_frames = Heard(job.utterance, text, confidence, final=False), job.frames
        if self._final_in_hand():
            return self._end()  # the final, now: the caller has been quiet since this decode began
        return [self._best] if text and changed else []

    def failed(self, job: Decode) -> list[RecognitionAction]:
        """A decode failed (its worker died): a loss only if it was to give a final."""
        self._in_flight.discard(job)
        self._started.pop(job, None)
        if self._finals.get(job.utterance) == job:
            del self._finals[job.utterance]
            return [Lost(job.utterance)]
        return []

    # ------------------------------------------------------------------ rules

    def _begin(self) -> Began:
        self.utterance += 1
        self.in_speech = True
        began = Began(self.utterance, self._lead)
        self.frames = self._lead + 1
        self.voiced, self._heard_upto, self._silent_run = 1, self.frames, 0
        self.decoded, self._last_start, self._last_frames = 0, None, 0
        self._best, self._best_frames = None, 0
        self._lead = 0
        return began

    def _final_in_hand(self) -> bool:
        """The quiet after the voice is long enough and a result holds every voiced frame."""
        return (
            self._silent_run >= self._final_quiet
            and self._best is not None
            and self._best_frames >= self._heard_upto
        )

    def _covering(self) -> list[Decode]:
        """This utterance's decodes under way that hold every voiced frame heard so far."""
        return [d for d in self._in_flight if d.utterance == self.utterance and d.frames >= self._heard_upto]

    def _due(self, now: float, busy: bool) -> Decode | None:
        if busy or self.voiced < self._min:
            return None
        after = self.decoded + self.frames  # the work, with this decode
        mine = sum(1 for d in self._in_flight if d.utterance == self.utterance)
        if self._silent_run >= self._pause:  # a pause: decode all the voice heard, once
            if after > self._work * self.frames + self._allowance:
                return None
            if self._best_frames >= self._heard_upto or self._covering() or mine >= 2:
                return None
            return self._start(now)
        # Partials leave room for the decode at the pause: one more decode of the whole utterance.
        if after > (self._work - 1) * self.frames + self._allowance:
            return None
        # Slow decodes (a loaded machine) space the partials out: a worker spends at most a third
        # of its time on this call's partials.
        interval = max(self._interval_ms, 3 * self._decode_ms)
        if mine or (self._last_start is not None and now - self._last_start < interval):
            return None
        if (self.frames - self._last_frames) * FRAME_MS < self._interval_ms:
            return None
        return self._start(now)

    def _start(self, now: float) -> Decode:
        job = Decode(self.utterance, self.frames, window_only=True)
        self._in_flight.add(job)
        self._started[job] = now
        self.decoded += self.frames
        self._last_start, self._last_frames = now, self.frames
        return job

    def _end(self) -> list[RecognitionAction]:
        self.in_speech = False
        self._lead = 0
        mine = [d for d in self._in_flight if d.utterance == self.utterance]
        if self.voiced < self._min:
            return [Ended(self.utterance, final=False), *self._drop(mine)]
        ended = Ended(self.utterance, final=True)
        if self._best is not None and self._best_frames >= self._heard_upto:
            best = self._best
            return [ended, Heard(self.utterance, best.text, best.confidence, final=True), *self._drop(mine)]
        covering = self._covering()
        if covering:
            source = min(covering, key=lambda d: d.frames)  # started first: done first
            self._finals[self.utterance] = source
            return [ended, *self._drop([d for d in mine if d != source])]
        job = Decode(self.utterance, self.frames)
        self._in_flight.add(job)
        self._finals[self.utterance] = job
        return [ended, job, *self._drop(mine)]

    def _drop(self, jobs: list[Decode]) -> list[RecognitionAction]:
        """The ended utterance's other decodes: their results would go unused."""
        self._in_flight.difference_update(jobs)
        for job in jobs:
            self._started.pop(job, None)
        return [Drop(job) for job in jobs]


class LocalWhisperStream:
    """One call's recognition: the frames' VAD verdicts go through the :class:`Redecoder` (cheap, on
    the loop); the decodes it asks for run in the engine's worker pool; partials and finals come back
    as events, in order (a final still being computed holds the events after it)."""

    def __init__(
        self,
        engine: EnginePool,
        language: str,
        silence_ms: int = UTTERANCE_SILENCE_MS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.engine = engine
        self.language = language
        self._vad = webrtcvad.Vad(2)
        self._plan = Redecoder(silence_ms)
        self._clock = clock or (lambda: time.monotonic() * 1000)
        self._buf: list[bytes] = []  # frames of the utterance being heard (with its lead-in)
        self._lead: deque[bytes] = deque(maxlen=LEAD_MS // FRAME_MS)  # the last unvoiced frames
        # Events and finals in order; a Future stands for a final still being computed.
        self._out: asyncio.Queue[STTEvent | asyncio.Future | None] = asyncio.Queue()
        self._finals: dict[int, asyncio.Future] = {}
        self._jobs: dict[Decode, asyncio.Future] = {}  # decodes under way
        self._held: dict[int, list[bytes]] = {}  # ended utterances' frames, until their final is in
        self._closed = False

    async def send_audio(self, pcm: bytes, ulaw: bytes | None = None) -> None:
        if self._closed:
            raise ProviderError(STT_NAME, "disconnected", "stream closed")
        t0 = time.thread_time()
        now = self._clock()
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self._frame(pcm[i : i + FRAME_BYTES], now)
        CPU["vad_webrtc"].add(time.thread_time() - t0, len(pcm) / 2 / SAMPLE_RATE)

    def _frame(self, frame: bytes, now: float) -> None:
        voiced = self._vad.is_speech(frame, SAMPLE_RATE)
        was_open = self._plan.in_speech
        if was_open:
            self._buf.append(frame)
        actions = self._plan.frame(voiced, now, self.engine.busy)
        if not was_open and not self._plan.in_speech:
            self._lead.append(frame)
        self._act(actions, frame)

    def _act(self, actions: list[RecognitionAction], frame: bytes = b"") -> None:
        for act in actions:
            if isinstance(act, Began):
                lead = list(self._lead)[len(self._lead) - act.lead :] if act.lead else []
                self._buf = [*lead, frame]
                self._out.put_nowait(SpeechStarted())
            elif isinstance(act, Decode):
                method = "transcribe_window" if act.window_only else "transcribe"
                audio = self._held.get(act.utterance, self._buf)  # an ended utterance's, for its final
                future = self.engine.submit(method, b"".join(audio[: act.frames]))
                self._jobs[act] = future
                future.add_done_callback(lambda f, job=act: self._decoded(job, f))
            elif isinstance(act, Drop):
                if (future := self._jobs.pop(act.job, None)) is not None:
                    future.cancel()  # dropped from the pool's queue if it has not begun
            elif isinstance(act, Ended):
                self._lead.clear()
                self._out.put_nowait(SpeechEnded())
                if act.final:
                    self._held[act.utterance] = self._buf  # until its final is in
                    final = asyncio.get_running_loop().create_future()
                    self._finals[act.utterance] = final
                    self._out.put_nowait(final)
            elif isinstance(act, Heard) and act.final:
                self._held.pop(act.utterance, None)
                final = self._finals.pop(act.utterance)
                if not final.done():
                    final.set_result((act.text, act.confidence))
            elif isinstance(act, Heard):
                self._out.put_nowait(Transcript(act.text, False, self.language, act.confidence))

    def _decoded(self, job: Decode, future: asyncio.Future) -> None:
        if self._jobs.pop(job, None) is None:
            return  # dropped
        if future.cancelled() or future.exception() is not None:
            for act in self._plan.failed(job):
                assert isinstance(act, Lost)
                self._held.pop(act.utterance, None)
                final = self._finals.pop(act.utterance)
                if not final.done():
                    exc = None if future.cancelled() else future.exception()
                    final.set_exception(exc or ProviderError(STT_NAME, "stream_error", "decode cancelled"))
            return
        text, confidence = future.result()
        self._act(self._plan.done(job, text, confidence, self._clock()))

    async def flush(self) -> None:
        """The session's endpointer decided first: the final of what we hold, now."""
        self._act(self._plan.flush())

    async def events(self) -> AsyncIterator[STTEvent]:
        while True:
            item = await self._out.get()
            if item is None:
                return
            if isinstance(item, asyncio.Future):
                try:
                    text, confidence = await item
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a failed transcription is a provider fault, not a crash
                    raise ProviderError(STT_NAME, "stream_error", f"transcription failed: {exc}") from exc
                yield Transcript(text, final=True, language=self.language, confidence=confidence)
            else:
                yield item

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.put_nowait(None)


class LocalWhisperSTT:
    """English speech recognition on this machine. Other languages: a clear error naming the provider."""

    name = STT_NAME

    def __init__(self, processes: int = 2, cpu_threads: int = 1, silero: bool = True) -> None:
        self.engine = WhisperEngine(processes, cpu_threads, silero)

    @staticmethod
    def supports(language: str) -> bool:
        return language.lower().split("-")[0] == "en"

    async def connect(self, language: str, tag: str | None = None) -> LocalWhisperStream:
        if not self.supports(language):
            raise ProviderError(
                STT_NAME,
                "http_error",
                f"no offline speech recognition model for {language} (tiny.en is English only): "
                "set SARVAM_API_KEY to use Sarvam speech-to-text for it",
            )
        return LocalWhisperStream(self.engine, language)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.close)
