"""End-of-turn detection on 20 ms frames: a webrtcvad gate with silence and minimum-speech rules.

Sans-I/O: ``feed(pcm, now_ms)`` returns what changed. The session combines this with the
STT's own end-of-speech and final events; whichever says "turn over" first wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import webrtcvad

from agent.providers.base import FRAME_BYTES, FRAME_MS, SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class SpeechBegan:
    at_ms: float  # time of the first voiced frame of this stretch


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    """``silence_ms`` of silence after at least ``min_speech_ms`` of speech: the turn may be over."""

    speech_end_ms: float  # time of the last voiced frame


VADEvent = SpeechBegan | SpeechPaused


class Endpointer:
    """Tracks voiced/unvoiced frames. ``last_voice_ms`` is when the last voiced frame arrived."""

    def __init__(self, silence_ms: int = 300, min_speech_ms: int = 120, mode: int = 2) -> None:
        self._vad = webrtcvad.Vad(mode)
        self.silence_ms = silence_ms
        self.min_speech_ms = min_speech_ms
        self.in_speech = False  # a stretch of speech long enough to count is under way
        self.voiced_run_ms = 0  # consecutive voiced ms (for barge-in guards)
        self.speech_ms = 0  # voiced ms since the last pause
        self.last_voice_ms: float | None = None
        self._silence_run_ms = 0
        self._stretch_start: float | None = None

    def is_voiced(self, pcm: bytes) -> bool:
        if len(pcm) != FRAME_BYTES:
            return False
        return self._vad.is_speech(pcm, SAMPLE_RATE)

    def feed(self, pcm: bytes, now_ms: float) -> list[VADEvent]:
        """One 20 ms frame received at ``now_ms`` (monotonic ms)."""
        events: list[VADEvent] = []
        if self.is_voiced(pcm):
            self.voiced_run_ms += FRAME_MS
            self.speech_ms += FRAME_MS
            self._silence_run_ms = 0
            self.last_voice_ms = now_ms
            if self._stretch_start is None:
                self._stretch_start = now_ms
            if not self.in_speech and self.speech_ms >= self.min_speech_ms:
                self.in_speech = True
                events.append(SpeechBegan(self._stretch_start))
        else:
            self.voiced_run_ms = 0
            self._silence_run_ms += FRAME_MS
            if self._stretch_start is not None and self._silence_run_ms >= self.silence_ms:
                if self.in_speech and self.last_voice_ms is not None:
                    events.append(SpeechPaused(self.last_voice_ms))
                self.in_speech = False
                self.speech_ms = 0
                self._stretch_start = None
        return events

    @property
    def silence_run_ms(self) -> int:
        return self._silence_run_ms
