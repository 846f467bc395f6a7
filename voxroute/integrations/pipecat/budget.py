"""The turn's latency budget in a Pipecat pipeline: bridge before the deadline, apology at the hard cap.

:class:`TurnDeadline` is the rule, sans-I/O on a clock in ms (the rule of voxroute's watchdog,
agent/session.py): the deadline starts at the user's end of speech; if no answer audio has started
by ``budget - bridge_lead`` the cached bridge plays; while the answer is still missing, the bridge
is played again every ``refill`` ms of the line going quiet; at the hard cap the apology plays and
the turn is given up. :class:`TurnBudgetProcessor` is the thin Pipecat layer: place it after the
TTS service (any LLM, any TTS) and before the output transport. The phrases are audio synthesised
once (:func:`cached_phrases` takes them from voxroute's phrase cache), so a bridge costs no TTS
round trip when it is needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voxroute.agent.config import Config
from voxroute.agent.timeline import Clock
from voxroute.audio import PCM16_8K

log = logging.getLogger("voxroute.pipecat")

PHRASE_CHUNK_MS = 20  # the phrase goes out as 20 ms frames, as a TTS service's audio would


@dataclass(frozen=True)
class Phrase:
    """A cached phrase: its text and its audio (PCM16 mono)."""

    text: str
    pcm: bytes
    sample_rate: int = 8000

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate * 1000


async def cached_phrases(services, language: str, voice: str | None = None) -> dict[str, Phrase]:
    """The bridge and the apology from voxroute's phrase cache (``Services.phrase``: synthesised once
    per language and voice by voxroute's TTS, 8 kHz)."""
    return {
        kind: Phrase(
            services.phrase_text(language, kind), await services.phrase(language, kind, voice, PCM16_8K)
        )
        for kind in ("bridge", "apology")
    }


class TurnDeadline:
    """One turn's deadline, sans-I/O. Times are ms on one clock.

    ``due(now, speaking)`` says what to play now ("bridge", "apology" or None); ``next_at()`` when to
    ask again (None: nothing more will be due)."""

    def __init__(
        self,
        speech_end_ms: float,
        budget_ms: float,
        *,
        bridge_lead_ms: float = 150,
        hard_cap_ms: float = 8000,
        refill_ms: float = 2500,
    ) -> None:
        self.speech_end_ms = speech_end_ms
        self.budget_ms = budget_ms
        self.bridge_lead_ms = bridge_lead_ms
        self.hard_cap_ms = hard_cap_ms
        self.refill_ms = refill_ms
        self.answered = False
        self.bridges = 0
        self.apologised = False
        self._last_bridge_ms: float | None = None

    @classmethod
    def from_config(cls, config: Config, speech_end_ms: float, budget_ms: float) -> TurnDeadline:
        b = config.budget
        return cls(
            speech_end_ms,
            budget_ms,
            bridge_lead_ms=b.bridge_lead_ms,
            hard_cap_ms=b.hard_cap_ms,
            refill_ms=b.refill_ms,
        )

    @property
    def over(self) -> bool:
        return self.answered or self.apologised

    def answer_started(self) -> None:
        self.answered = True

    def next_at(self) -> float | None:
        if self.over:
            return None
        if self._last_bridge_ms is None:
            return self.speech_end_ms + self.budget_ms - self.bridge_lead_ms
        hard_cap = self.speech_end_ms + self.hard_cap_ms
        return min(self._last_bridge_ms + self.refill_ms, hard_cap)

    def due(self, now_ms: float, speaking: bool = False) -> str | None:
        """What to play at ``now_ms``; ``speaking``: a phrase of ours is still playing."""
        at = self.next_at()
        if at is None or now_ms < at:
            return None
        if self._last_bridge_ms is None:
            self._last_bridge_ms = now_ms
            self.bridges += 1
            return "bridge"
        if now_ms >= self.speech_end_ms + self.hard_cap_ms:
            self.apologised = True
            return "apology"
        self._last_bridge_ms = now_ms
        if speaking:
            return None  # the line is not quiet: look again after another refill
        self.bridges += 1
        return "bridge"


def speech_end_ms(frame: Frame, clock: Clock) -> float:
    """When the user stopped speaking, on ``clock``: a VAD frame says when it decided and after how much
    silence (so the end of speech was ``stop_secs`` before); any other stop frame means now."""
    now = clock.now()
    if isinstance(frame, VADUserStoppedSpeakingFrame):
        ago_s = max(0.0, time.time() - frame.timestamp) + frame.stop_secs
        return now - ago_s * 1000
    return now


class TurnBudgetProcessor(FrameProcessor):
    """Keeps each turn's latency budget in a Pipecat pipeline, whatever the LLM and TTS services.

    Put it after the TTS service and before ``transport.output()``. A turn starts at the user's end
    of speech (the turn's ``UserStoppedSpeakingFrame``, dated by the ``VADUserStoppedSpeakingFrame``
    before it when there is one) and is answered
    by the first ``TTSAudioRawFrame`` coming from the TTS. ``budget_ms``: the turn's budget unless
    the routed LLM service's route (a ``RouteMetricsData`` in a ``MetricsFrame``) gives its class's
    budget. ``bridges`` and ``apologies`` count what was played (for tests and benchmarks)."""

    def __init__(
        self,
        phrases: dict[str, Phrase],
        *,
        budget_ms: float = 1000,
        bridge_lead_ms: float = 150,
        hard_cap_ms: float = 8000,
        refill_ms: float = 2500,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        missing = {"bridge", "apology"} - set(phrases)
        if missing:
            raise ValueError(f"TurnBudgetProcessor needs the phrases {sorted(missing)}")
        self.phrases = phrases
        self.budget_ms = budget_ms
        self.bridge_lead_ms = bridge_lead_ms
        self.hard_cap_ms = hard_cap_ms
        self.refill_ms = refill_ms
        self.clock = Clock()
        self.deadline: TurnDeadline | None = None
        self.bridges = 0
        self.apologies = 0
        self._timer: asyncio.Task | None = None
        self._phrase_until_ms = 0.0  # when the phrase we pushed last has played
        self._voice_end: float | None = None  # the VAD's end of voice in the user's current turn

    @classmethod
    def from_config(
        cls,
        config: Config,
        phrases: dict[str, Phrase],
        budget_ms: float | None = None,
        language: str | None = None,
        **kw,
    ):
        """The budget settings of a voxroute config (``budget:``); ``budget_ms``: the default tenant's
        voice budget for ``language`` (the config's unless given) unless given."""
        if budget_ms is None:
            table = config.routing_table()
            group = table.group("default", language or config.language)
            budget_ms = table.cell("default", group, "voice", "faq").budget_ms
        b = config.budget
        return cls(
            phrases,
            budget_ms=budget_ms,
            bridge_lead_ms=b.bridge_lead_ms,
            hard_cap_ms=b.hard_cap_ms,
            refill_ms=b.refill_ms,
            **kw,
        )

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            # The VAD knows when the voice stopped; the user's turn ends with the stop frame after it
            # (a pause inside the turn, or a backchannel over the bot, is no turn).
            self._voice_end = speech_end_ms(frame, self.clock)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            end = self._voice_end if self._voice_end is not None else self.clock.now()
            self._voice_end = None
            await self._start_turn(end)
        elif isinstance(frame, UserStartedSpeakingFrame | InterruptionFrame):
            self._voice_end = None
            await self._stop_turn()  # the user has the floor: no bridge over them
        elif isinstance(frame, EndFrame | CancelFrame):
            await self._stop_turn()
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            if self.deadline is not None and not self.deadline.answered:
                self.deadline.answer_started()
                await self._stop_timer()
        elif isinstance(frame, MetricsFrame) and self.deadline is not None:
            for data in frame.data:
                budget = getattr(data, "budget_ms", None)
                if getattr(data, "routing_class", None) and budget:
                    self.deadline.budget_ms = budget  # the route's class has its own budget
        await self.push_frame(frame, direction)

    async def _start_turn(self, speech_end: float) -> None:
        await self._stop_timer()
        self.deadline = TurnDeadline(
            speech_end,
            self.budget_ms,
            bridge_lead_ms=self.bridge_lead_ms,
            hard_cap_ms=self.hard_cap_ms,
            refill_ms=self.refill_ms,
        )
        self._timer = self.create_task(self._watch(self.deadline), "turn-budget")

    async def _stop_turn(self) -> None:
        await self._stop_timer()
        self.deadline = None

    async def _stop_timer(self) -> None:
        if self._timer is not None:
            timer, self._timer = self._timer, None
            if timer is not asyncio.current_task():
                await self.cancel_task(timer)

    async def _watch(self, deadline: TurnDeadline) -> None:
        while (at := deadline.next_at()) is not None:
            await asyncio.sleep(max(0.0, at - self.clock.now()) / 1000)
            now = self.clock.now()
            kind = deadline.due(now, speaking=now < self._phrase_until_ms)
            if kind is not None:
                log.info("turn budget: no answer audio %.0f ms after the end of speech: %s",
                         now - deadline.speech_end_ms, kind)  # fmt: skip
                await self._play(kind)

    async def _play(self, kind: str) -> None:
        phrase = self.phrases[kind]
        if kind == "bridge":
            self.bridges += 1
        else:
            self.apologies += 1
        now = self.clock.now()
        self._phrase_until_ms = max(now, self._phrase_until_ms) + phrase.duration_ms
        step = phrase.sample_rate * 2 * PHRASE_CHUNK_MS // 1000
        await self.push_frame(TTSStartedFrame(append_to_context=False))
        for i in range(0, len(phrase.pcm), step):
            await self.push_frame(TTSAudioRawFrame(phrase.pcm[i : i + step], phrase.sample_rate, 1))
        await self.push_frame(TTSStoppedFrame())
