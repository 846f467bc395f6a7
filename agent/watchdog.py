"""One turn's deadline: the bridge, its refills and the hard cap (docs/design.md, "the watchdog").

Every turn must put agent audio on the wire within its budget, whatever the providers do. At
``speech_end + budget - bridge_lead`` with no answer audio out, the cached bridge plays ("one
moment"); while the answer is still missing it plays again each ``refill_ms`` of silence; at
``speech_end + hard_cap`` the answer is abandoned and the apology plays.

:class:`Deadline` is the sans-I/O schedule (times are the call clock's ms, so it is tested on a
fake clock); :class:`Watchdog` is the thin async strand a turn runs beside its answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from voxroute.agent.config import BudgetConfig

if TYPE_CHECKING:
    from voxroute.agent.session import CallSession
    from voxroute.agent.timeline import TurnRecord

log = logging.getLogger("voxroute.call")

# The route may change the turn's budget while the watchdog sleeps towards the bridge: it looks again
# this many times at most.
BRIDGE_LOOKS = 3


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wake at ``until`` (call ms) and ask again."""

    until: float


@dataclass(frozen=True, slots=True)
class PlayBridge:
    """Play the cached bridge phrase (``first``: the turn's first, which also gets a mark)."""

    first: bool


@dataclass(frozen=True, slots=True)
class StandDown:
    """The answer is on its way: the watchdog has nothing more to do."""


@dataclass(frozen=True, slots=True)
class HardCapReached:
    """No answer audio by the hard cap: abandon the answer and apologise."""


WatchStep = Sleep | PlayBridge | StandDown | HardCapReached


class Deadline:
    """Sans-I/O: what a turn's watchdog does next, given the time and the state of the answer."""

    def __init__(self, speech_end: float, budget: BudgetConfig) -> None:
        self.speech_end = speech_end
        self.bridge_lead_ms = budget.bridge_lead_ms
        self.refill_ms = budget.refill_ms
        self.hard_cap = speech_end + budget.hard_cap_ms
        self._bridged = False  # the first bridge has been asked for
        self._looks = 0  # sleeps towards the bridge so far
        self._slept = False  # the last step asked for a sleep between refills

    def next(
        self, now: float, budget_ms: int, *, answering: bool, audio_out: bool, speaking: bool
    ) -> WatchStep:
        """``budget_ms``: the turn's budget now (the route sets the class's); ``answering``: the turn
        core says the answer has started; ``audio_out``: the turn has sent audio; ``speaking``: the
        player has audio queued or playing."""
        if not self._bridged:
            due = self.speech_end + budget_ms - self.bridge_lead_ms
            if now < due and self._looks < BRIDGE_LOOKS:
                self._looks += 1
                return Sleep(due)
            if answering or audio_out:
                return StandDown()
            self._bridged = True
            return PlayBridge(first=True)
        if answering:  # (the bridge's own audio counts as audio out: only the answer ends it now)
            return StandDown()
        slept, self._slept = self._slept, False
        if slept and now < self.hard_cap and not speaking:
            return PlayBridge(first=False)  # a silence of refill_ms since the last look: fill it
        if now >= self.hard_cap:
            return HardCapReached()
        self._slept = True
        return Sleep(min(now + self.refill_ms, self.hard_cap))


class HardCap(Exception):
    """The watchdog's hard cap: the answer is abandoned and the apology plays."""


class Watchdog:
    """The async strand of :class:`Deadline` for one call's turns."""

    def __init__(self, session: CallSession) -> None:
        self.s = session

    async def run(self, turn: TurnRecord) -> None:
        """Keeps ``turn``'s deadline; raises :class:`HardCap` at the hard cap."""
        s = self.s
        deadline = Deadline(turn.timeline["speech_end"], s.config.budget)
        while True:
            step = deadline.next(
                s.clock.now(),
                turn.budget_ms,
                answering=s.taker.answering(turn.index),
                audio_out="first_audio_out" in turn.timeline,
                speaking=s.player.speaking,
            )
            if isinstance(step, Sleep):
                await asyncio.sleep(max(0.0, step.until - s.clock.now()) / 1000)
            elif isinstance(step, PlayBridge):
                if step.first:
                    turn.bridge, turn.bridge_kind = True, "cached"
                audio = await s.services.phrase(
                    turn.language, "bridge", s.agent.voice(turn.language), s.player.audio_format
                )
                s.player.play(audio, turn, "bridge")
                if step.first:
                    s.speaker.mark(turn, f"{turn.index}:bridge", "")
            elif isinstance(step, StandDown):
                return
            else:
                log.warning("call %s turn %d: hard cap reached; apologising", s.call_sid, turn.index)
                turn.add_fallback("runtime", "timeout", "no answer audio before the hard cap", "apologise")
                turn.outcome = "apology"
                raise HardCap
