"""What the agent says outside its answers to the caller's turns: the greeting and the asides.

- The greeting: when the tenant's agent speaks first it is turn 0 (kind ``greeting``), timed from
  the stream's start, so its ``first_audio_ms`` is the time to the greeting's first audio (budget: the
  voice budget).
- An aside: a phrase played outside any turn, such as the callback offer when the caller comes back
  from a failed transfer. It is kept in the history as the agent's message.

The caller speaking over either (``barge_in_min_voiced_ms`` of voice) cuts it: its audio and TTS
stop, and what the caller says is the next turn. A committed turn cuts an aside too, else the
answer would queue behind it. Whatever was cut keeps :data:`INTERRUPTED_MARK` in the history.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from voxroute.agent.logs import TURN
from voxroute.agent.timeline import INTERRUPTED_MARK, TurnRecord, log_turn
from voxroute.routing.route import Route

if TYPE_CHECKING:
    from voxroute.agent.session import CallSession

log = logging.getLogger("voxroute.call")


class Asides:
    def __init__(self, session: CallSession) -> None:
        self.s = session
        self.cut_ms = session.config.endpoint.barge_in_min_voiced_ms  # caller voice that cuts them
        self._greeting: tuple[TurnRecord, asyncio.Task] | None = None  # while it plays
        self._aside: tuple[str, dict[str, Any]] | None = None  # (its end mark, its history message)

    def start(self, tg: asyncio.TaskGroup) -> None:
        """The call's first words: the callback offer on a leg back from a failed transfer, else the
        tenant's greeting, if it has one."""
        s = self.s
        if s.resumed:
            tg.create_task(self._after_failed_transfer(), name=f"{s.call_sid}:resume")
        elif text := s.agent.greeting_text(s.language, s.link.start.from_number):
            turn = self._greeting_turn()
            self._greeting = (turn, tg.create_task(self._greet(turn, text), name=f"{s.call_sid}:greeting"))

    async def caller_voiced(self, voiced_run_ms: float) -> None:
        """The caller has been speaking for ``voiced_run_ms``: long enough, it cuts what plays."""
        if voiced_run_ms < self.cut_ms:
            return
        if self._greeting is not None:
            await self._cut_greeting()
        elif self._aside is not None:
            await self._cut_aside()

    async def turn_committed(self) -> None:
        """A turn to answer: an aside must not hold its answer back."""
        if self._aside is not None:
            await self._cut_aside()

    def mark_echoed(self, name: str) -> None:
        if self._aside is not None and name == self._aside[0]:
            self._aside = None  # played out

    async def play(self, kind: str) -> None:
        """A phrase outside any turn: played and kept in the history; the caller speaking over it, or
        a committed turn, cuts it."""
        s = self.s
        audio = await s.services.phrase(s.language, kind, s.agent.voice(s.language), s.player.audio_format)
        message = {"role": "assistant", "content": s.services.phrase_text(s.language, kind)}
        s.history.append(message)
        s.player.play(audio, None, kind)
        self._aside = (f"aside:{kind}:{len(s.history)}", message)
        s.player.mark(self._aside[0])

    async def _cut_aside(self) -> None:
        assert self._aside is not None
        (_, message), self._aside = self._aside, None
        log.info("call %s: the caller spoke over a phrase; stopping it", self.s.call_sid)
        message["content"] = f"{message['content']} {INTERRUPTED_MARK}"
        await self.s.player.clear()

    async def _after_failed_transfer(self) -> None:
        log.info("call %s: back from a failed transfer", self.s.call_sid)
        await self.play("callback")

    def _greeting_turn(self) -> TurnRecord:
        s = self.s
        turn = TurnRecord(index=0, kind="greeting", language=s.language, budget_ms=s.voice_budget_ms)
        turn.mark("speech_end", 0.0)
        turn.route = Route.unrouted("greeting", "the agent speaks first")
        s.turns.append(turn)
        return turn

    async def _greet(self, turn: TurnRecord, text: str) -> None:
        s = self.s
        TURN.set(turn.index)
        span = s.trace.start_turn(turn)
        try:
            if await s.speaker.chunk(turn, 0, text):
                turn.chunks.append(text)
                turn.reply = turn.reply_answer = text
                s.speaker.mark(turn, "0:greeting", text)
            else:
                turn.outcome = "apology"  # no TTS at all: the caller speaks first after all
            await s.wait_played(turn)
        finally:
            self._greeting = None
            turn.mark("done", s.clock.now())
            spoken = f"{turn.heard} {INTERRUPTED_MARK}" if turn.interrupted and turn.heard else turn.heard
            if spoken:  # after the system prompt: a caller turn may have begun meanwhile
                s.history.insert(1, {"role": "assistant", "content": spoken})
            log_turn(s.call_sid, turn)
            s.services.turn_finished(s, turn)
            s.trace.end_turn(span, turn)

    async def _cut_greeting(self) -> None:
        """The caller talks over the greeting: it stops (its TTS too), and what they say is turn 1."""
        assert self._greeting is not None
        (turn, task), self._greeting = self._greeting, None
        log.info("call %s: the caller spoke over the greeting; stopping it", self.s.call_sid)
        turn.interrupted, turn.outcome = True, "interrupted"
        task.cancel()
        await self.s.player.clear()
