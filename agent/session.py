"""One call: the core loop of docs/design.md.

Four strands in one task group:

1. inbound  - carrier frames -> voice gate (webrtcvad) and STT; DTMF; mark echoes. What the caller
              does is fed to the sans-I/O turn core (agent/turns.py), which holds every turn-taking
              rule (end of turn by the clock, merges, barge-in, backchannels); a ticker wakes it
              when its timers are due.
2. turn     - runs each turn the core commits:
              route -> LLM (fallback ladder) -> speakable chunks -> TTS -> player.
3. outbound - ``Player.run``: paces audio to the carrier, marks after each chunk.
4. watchdog - one per turn: at ``deadline - bridge_lead`` with no answer audio out, plays the
              cached bridge; keeps the line alive; at the hard cap plays the apology.

Plus the STT feed (agent/sttfeed.py), which sends frames, reads transcripts and reconnects on failure.
Invariant: every turn puts agent audio on the wire within its budget, whatever the providers do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agent.bargein import BargeInPolicy
from agent.chunker import SpeakableChunker
from agent.endpointing import VoiceGate
from agent.handoff.flow import Handover
from agent.ladder import LadderExhausted, LLMLadder
from agent.link import CallEnded, CarrierLink, InboundAudio, InboundDtmf, MarkEcho
from agent.metrics import InboundClock
from agent.player import Player
from agent.providers.base import ProviderError, Transcript
from agent.services import Services
from agent.sttfeed import STTFeed
from agent.timeline import Clock, TurnRecord
from agent.tools import MARK_RESOLVED, TRANSFER_TO_HUMAN, ToolRequest, agent_tools, read_tool_calls
from agent.turns import BargeIn, Commit, IgnoreOverlap, Merge, TurnAction, TurnPolicy, TurnTaker
from routing.router import health_key

log = logging.getLogger("voxroute.call")

# Ends the heard part of a reply the caller talked over, so the model knows it was cut short.
INTERRUPTED_MARK = "[interrupted by the caller]"
MAX_REPLY_CHARS = 4000  # of one turn's reply; the model's max_tokens normally ends it long before


class _CallOver(Exception):
    """The carrier ended the call: unwinds every strand of the call's task group."""


@dataclass
class CallSummary:
    call_sid: str
    stream_sid: str
    tenant: str
    language: str
    started_at: float  # wall clock (time.time())
    ended: str = "in_progress"  # in_progress | completed | caller_hung_up | handoff | error
    error: str | None = None
    carrier: str = "twilio"
    from_number: str | None = None
    to_number: str | None = None
    channel: str = "voice"
    ended_at: float | None = None  # wall clock, once the call is over
    outcome: str = "unknown"  # resolved | unresolved | handoff | unknown (the LLM's tool or the operator)
    outcome_reason: str | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(
        default_factory=list
    )  # faults after the last turn (no turn to own them)


class CallSession:
    def __init__(self, link: CarrierLink, services: Services) -> None:
        self.link = link
        self.services = services
        self.config = services.config
        start = link.start
        self.call_sid = start.call_sid
        self.language = start.language or self.config.language
        self.clock = Clock()
        self.started_wall = time.time()
        self.turns: list[TurnRecord] = []
        self.merged: list[int] = []  # indices of turns the caller continued before they were answered
        self.history: list[dict[str, Any]] = [{"role": "system", "content": self.config.agent.system_prompt}]
        self.routing = services.router.conversation(start.tenant, "voice")
        self.tenant = self.routing.tenant
        self.voice_budget_ms = services.router.table.tenants[self.tenant].budgets.voice_ms
        ep = self.config.endpoint
        self.vad = VoiceGate(ep.vad_mode)
        first_index = 1
        self.resumed = start.parameters.get("resume") == "transfer_failed"
        earlier = services.finished.get(self.call_sid) if self.resumed else None
        if earlier is not None:  # back from a failed transfer: the conversation goes on where it was
            if earlier.history:
                self.history = [dict(m) for m in earlier.history]
            first_index = 1 + max((t["index"] for t in earlier.turns), default=0)
        # All turn-taking policy (endpointing, merges, barge-in) lives in the sans-I/O turn core.
        self.taker = TurnTaker(
            TurnPolicy(
                silence_ms=ep.silence_ms,
                min_speech_ms=ep.min_speech_ms,
                incomplete_hold_ms=ep.incomplete_hold_ms,
                stt_final_wait_ms=ep.stt_final_wait_ms,
                dtmf_timeout_ms=ep.dtmf_timeout_ms,
                max_dtmf_digits=ep.max_dtmf_digits,
                max_transcript_chars=ep.max_transcript_chars,
            ),
            BargeInPolicy(ep.barge_in_min_voiced_ms, ep.barge_in_confirm_ms, ep.backchannels),
            first_index=first_index,
        )
        self.player = Player(link, self._on_first_send)
        self.ended = "in_progress"
        self.ended_wall: float | None = None
        self.error: str | None = None
        self.outcome = "unknown"  # set by the LLM's mark_resolved tool, a handoff, or the operator API
        self.outcome_reason: str | None = None
        self._final_event = asyncio.Event()  # an STT final arrived (a turn may be waiting for it)
        self._commits: asyncio.Queue[Commit] = asyncio.Queue()
        self._rearm = asyncio.Event()  # the turn core's next timer may have moved earlier
        self._tick_at: float | None = None  # when the ticker is due to wake (call ms), None: idle
        # turns
        self._turn_task: asyncio.Task | None = None
        self._active: TurnRecord | None = None
        self._chunk_text: dict[str, tuple[TurnRecord, str]] = {}
        self._end_marks: dict[str, asyncio.Event] = {}
        self._pending_faults: list[dict[str, Any]] = []  # STT faults, reported on the next turn
        # handoff to a person
        self.tg: asyncio.TaskGroup | None = None
        self.handover = Handover(self)
        # STT
        self.stt = STTFeed(
            services.stt,
            self.language,
            f"{self.call_sid}:stt",
            self.clock,
            self._on_transcript,
            self._stt_fault,
        )

    # ------------------------------------------------------------------ run

    async def run(self) -> CallSummary:
        log.info(
            "call %s started (tenant=%s language=%s)", self.call_sid, self.link.start.tenant, self.language
        )
        self.services.register(self)
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                if self.resumed:
                    tg.create_task(self._after_failed_transfer(), name=f"{self.call_sid}:resume")
                tg.create_task(self.stt.run(), name=f"{self.call_sid}:stt")
                tg.create_task(self.player.run(), name=f"{self.call_sid}:outbound")
                tg.create_task(self._turn_loop(tg), name=f"{self.call_sid}:turns")
                tg.create_task(self._ticker(), name=f"{self.call_sid}:ticker")
                tg.create_task(self.services.warm_phrases(self.language), name=f"{self.call_sid}:phrases")
                tg.create_task(self._inbound(), name=f"{self.call_sid}:inbound")
        except* _CallOver:
            pass
        except* Exception as group:  # a bug in a strand: end this call only, with a log line
            self.ended, self.error = "error", "; ".join(repr(e) for e in group.exceptions)
            log.exception("call %s failed: %s", self.call_sid, self.error)
        finally:
            await self.stt.aclose()
            self._finish_turn_on_hangup()
            self.ended_wall = time.time()
            self.services.unregister(self)
        log.info("call %s ended: %s after %d turns", self.call_sid, self.ended, len(self.turns))
        return self.summary()

    def summary(self) -> CallSummary:
        s = self.link.start
        return CallSummary(
            call_sid=self.call_sid,
            stream_sid=s.stream_sid,
            tenant=s.tenant,
            language=self.language,
            started_at=self.started_wall,
            ended=self.ended,
            error=self.error,
            turns=[t.as_dict() for t in self.turns],
            history=[dict(m) for m in self.history],
            merged=list(self.merged),
            faults=list(self._pending_faults),
            carrier=s.carrier,
            from_number=s.from_number,
            to_number=s.to_number,
            ended_at=self.ended_wall,
            outcome=self.outcome,
            outcome_reason=self.outcome_reason,
        )

    # ------------------------------------------------------------------ inbound strand

    async def _inbound(self) -> None:
        inbound_clock = InboundClock()
        async for event in self.link.events():
            if isinstance(event, InboundAudio):
                inbound_clock.frame(event.timestamp_ms)
                voiced = self.vad.is_voiced(event.pcm)
                await self._act(self.taker.frame(voiced, self.clock.now(), self.player.speaking))
                self.stt.push(event.pcm, event.ulaw)
            elif isinstance(event, InboundDtmf):
                await self._act(self.taker.dtmf(event.digit, self.clock.now(), self.player.speaking))
            elif isinstance(event, MarkEcho):
                self._on_mark(event.name)
            elif isinstance(event, CallEnded):
                if self.ended == "in_progress":
                    self.ended = "completed" if event.reason == "stop" else "caller_hung_up"
                    if event.reason == "error":
                        self.ended, self.error = "error", "carrier protocol error"
                raise _CallOver
        raise _CallOver

    async def _ticker(self) -> None:
        """Wakes the turn core when its timers are due: silence is counted by the clock, so a turn
        ends even when the caller's side sends no frames at all while quiet."""
        while True:
            now = self.clock.now()
            self._tick_at = self.taker.next_wake(now)
            self._rearm.clear()
            try:
                async with asyncio.timeout(None if self._tick_at is None else (self._tick_at - now) / 1000):
                    await self._rearm.wait()
                continue  # a timer moved earlier: look again
            except TimeoutError:
                pass
            await self._act(self.taker.tick(self.clock.now(), self.player.speaking))

    async def _act(self, actions: list[TurnAction]) -> None:
        """Carry out what the turn core decided."""
        for action in actions:
            if isinstance(action, Commit):
                self._commits.put_nowait(action)
            elif isinstance(action, Merge):
                await self._merge(action.index)
            elif isinstance(action, BargeIn):
                await self._barge_in(action.index, action.why)
            elif isinstance(action, IgnoreOverlap):
                self._ignore_overlap(action)
        due = self.taker.next_wake(self.clock.now())
        if due is not None and (self._tick_at is None or due < self._tick_at):
            self._rearm.set()

    def _ignore_overlap(self, action: IgnoreOverlap) -> None:
        log.info(
            "call %s: %s over the agent, not an interruption: %r", self.call_sid, action.kind, action.text
        )
        turn = next((t for t in reversed(self.turns) if t.index == action.index), None)
        if turn is not None:
            turn.overlaps.append({"kind": action.kind, "text": action.text, "at": round(action.at, 1)})

    def _turn(self, index: int) -> TurnRecord | None:
        """The running turn, if it is turn ``index``."""
        turn = self._active
        if turn is None or turn.index != index or self._turn_task is None or self._turn_task.done():
            return None
        return turn

    async def _merge(self, index: int) -> None:
        """The caller went on talking before turn ``index`` was answered: cancel it; the turn core
        has put its words back, to be merged with what follows (a mid-sentence pause)."""
        turn = self._turn(index)
        if turn is None:
            return
        log.info("call %s turn %d: caller resumed before the answer; merging", self.call_sid, turn.index)
        if self.player.speaking:  # only a bridge can be playing: stop it, the caller is talking
            await self.player.clear()
        turn.outcome = "merged"
        self._turn_task.cancel()

    async def _barge_in(self, index: int, why: str) -> None:
        turn = self._turn(index)
        if turn is None:
            return
        log.info("call %s turn %d: barge-in (%s)", self.call_sid, turn.index, why)
        turn.interrupted = True
        turn.outcome = "interrupted"
        await self.player.clear()
        self._turn_task.cancel()

    def _on_mark(self, name: str) -> None:
        heard = self.player.on_mark_echo(name)
        entry = self._chunk_text.pop(name, None)
        if entry is not None:
            turn, text = entry
            if heard:
                turn.mark("first_audio_heard", self.clock.now())
                if text:
                    turn.heard = f"{turn.heard} {text}".strip()
        event = self._end_marks.pop(name, None)
        if event is not None:
            event.set()

    # ------------------------------------------------------------------ STT

    async def _on_transcript(self, ev: Transcript) -> None:
        now, playing = self.clock.now(), self.player.speaking
        if ev.final:
            log.debug("call %s: STT final %r", self.call_sid, ev.text[:200])
            actions = self.taker.stt_final(ev.text, ev.language, ev.confidence, now, playing)
            if ev.text.strip():
                # Classify now, while the commit rules wait: the decision only confirms it.
                self.routing.speculate(self.taker.heard_text())
            self._final_event.set()
        else:
            actions = self.taker.stt_partial(ev.text, now, playing)
            self.routing.speculate(self.taker.partial)  # capped: a huge partial is cut first
        await self._act(actions)

    def _stt_fault(self, exc: ProviderError, action: str) -> None:
        log.warning("call %s: STT %s: %s (%s)", self.call_sid, exc.kind, exc.message, action)
        fault = {"provider": exc.provider, "kind": exc.kind, "error": exc.message[:300], "action": action}
        fault["service"] = "stt"
        turn = self._active
        target = turn if turn is not None and not self.taker.answering(turn.index) else None
        if target is not None:
            target.fallbacks.append(fault)
        else:
            self._pending_faults.append(fault)

    # ------------------------------------------------------------------ turn strand

    async def _turn_loop(self, tg: asyncio.TaskGroup) -> None:
        while True:
            commit = await self._commits.get()
            log.debug("call %s: commit %s %r", self.call_sid, commit.kind, commit.transcript)
            task, previous = self._turn_task, self._active
            if task is not None and not task.done():
                if previous is not None and previous.index == commit.previous_index:
                    if commit.previous == "barge_in":
                        await self._barge_in(previous.index, "new caller turn")
                    elif commit.previous == "merge":
                        await self._merge(previous.index)
                    else:
                        task.cancel()  # its audio has played; it only waits for the end mark
                await asyncio.wait([task])
            turn = self._open(commit)
            self._active = turn
            self._turn_task = tg.create_task(self._run_turn(turn), name=f"{self.call_sid}:turn{turn.index}")

    def _open(self, commit: Commit) -> TurnRecord:
        turn = TurnRecord(index=commit.index, kind=commit.kind, language=commit.language or self.language)
        turn.budget_ms = self.voice_budget_ms  # until the route gives the class's budget
        turn.transcript = commit.transcript
        turn.stt_confidence = commit.confidence
        turn.mark("speech_end", commit.speech_end)
        turn.mark("endpoint", commit.endpoint)
        if commit.stt_final is not None:
            turn.mark("stt_final", commit.stt_final)
        turn.fallbacks.extend(self._pending_faults)
        self._pending_faults.clear()
        self.turns.append(turn)
        return turn

    async def _await_transcript(self, turn: TurnRecord) -> None:
        """Our endpointer committed before the STT's final: ask for it, wait briefly, else use the partial."""
        if turn.transcript or turn.kind == "dtmf":
            return
        await self.stt.flush()
        try:
            async with asyncio.timeout(self.config.endpoint.stt_final_wait_ms / 1000):
                while not self.taker.has_final():
                    self._final_event.clear()
                    await self._final_event.wait()
        except TimeoutError:
            pass
        taken = self.taker.take_transcript(turn.index, self.clock.now())
        if taken is not None:
            turn.transcript = taken.text
            turn.language = taken.language or turn.language
            turn.stt_confidence = taken.confidence
            turn.mark("stt_final", taken.stt_final)

    # ------------------------------------------------------------------ one turn

    async def _run_turn(self, turn: TurnRecord) -> None:
        user_msg: dict[str, Any] | None = None
        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    watchdog = tg.create_task(
                        self._watchdog(turn), name=f"{self.call_sid}:watchdog{turn.index}"
                    )
                    await self._await_transcript(turn)
                    if turn.kind == "dtmf":
                        user_msg = {"role": "user", "content": f"(keypad) {turn.transcript}"}
                    elif turn.transcript:
                        user_msg = {"role": "user", "content": turn.transcript}
                    if user_msg is None:
                        turn.route = {
                            "class": "none",
                            "tier": "none",
                            "model": None,
                            "escalated": False,
                            "reason": "no transcript",
                        }
                        turn.outcome = "not_heard"
                        await self._speak_phrase(turn, "not_heard")
                    else:
                        self.history.append(user_msg)
                        if not await self._answer(turn):
                            if (turn.route or {}).get("on_failure") == "handoff":
                                await self._hand_to_person(turn, "every model path failed", "handoff")
                            else:
                                turn.outcome = "apology"
                                await self._speak_phrase(turn, "apology")
                    watchdog.cancel()
            except* _HardCap:
                await self._speak_phrase(turn, "apology")
            await self._wait_played(turn)
            turn.mark("done", self.clock.now())
        except asyncio.CancelledError:
            turn.mark("done", self.clock.now())
            if turn.outcome == "merged":
                if user_msg is not None and self.history and self.history[-1] is user_msg:
                    self.history.pop()
                if turn in self.turns:
                    self.turns.remove(turn)
                self.merged.append(turn.index)
                # What went wrong in the abandoned attempt is reported with the turn that replaces it.
                self._pending_faults.extend(turn.fallbacks)
                return
            raise
        finally:
            if turn.outcome != "merged":
                self.routing.outcome(turn.outcome)
                if turn.heard or turn.reply:
                    # History keeps only what the caller heard (barge-in trims it).
                    spoken = turn.heard if turn.interrupted else turn.reply
                    if spoken and turn.interrupted:
                        spoken = f"{spoken} {INTERRUPTED_MARK}"
                    if spoken:
                        self.history.append({"role": "assistant", "content": spoken})
                self._log_turn(turn)
                self.services.turn_finished(self, turn)
            self.taker.turn_ended(turn.index)
            if self._active is turn:
                self._active = None

    async def _wait_played(self, turn: TurnRecord) -> None:
        name = f"{turn.index}:end"
        event = asyncio.Event()
        self._end_marks[name] = event
        self.player.mark(name)
        try:
            async with asyncio.timeout(self.player.remaining_s() + 5.0):
                await event.wait()
        except TimeoutError:
            log.warning("call %s turn %d: end mark never echoed", self.call_sid, turn.index)
            self._end_marks.pop(name, None)

    async def _watchdog(self, turn: TurnRecord) -> None:
        """The deadline. Bridge at deadline - lead if no answer audio is out; refill; hard cap."""
        b = self.config.budget
        speech_end = turn.timeline["speech_end"]
        for _ in range(3):  # the route may change the budget while we sleep: look again
            wait = speech_end + turn.budget_ms - b.bridge_lead_ms - self.clock.now()
            if wait <= 0:
                break
            await asyncio.sleep(wait / 1000)
        if self.taker.answering(turn.index) or "first_audio_out" in turn.timeline:
            return
        turn.bridge, turn.bridge_kind = True, "cached"
        self.player.play(await self.services.phrase(turn.language, "bridge"), turn, "bridge")
        self.player.mark(f"{turn.index}:bridge")
        self._chunk_text[f"{turn.index}:bridge"] = (turn, "")
        hard_cap = speech_end + b.hard_cap_ms
        while not self.taker.answering(turn.index):
            wait = min(b.refill_ms, hard_cap - self.clock.now())
            if wait <= 0:
                break
            await asyncio.sleep(wait / 1000)
            if self.taker.answering(turn.index):
                return
            if self.clock.now() < hard_cap and not self.player.speaking:
                self.player.play(await self.services.phrase(turn.language, "bridge"), turn, "bridge")
        if not self.taker.answering(turn.index):
            log.warning("call %s turn %d: hard cap reached; apologising", self.call_sid, turn.index)
            turn.add_fallback("runtime", "timeout", "no answer audio before the hard cap", "apologise")
            turn.outcome = "apology"
            raise _HardCap

    def _on_first_send(self, owner: object, source: str, now_s: float) -> None:
        if isinstance(owner, TurnRecord):
            t = self.clock.at(now_s)
            owner.mark("first_audio_out", t)
            if source == "bridge":
                owner.mark("bridge_out", t)

    async def _speak_phrase(self, turn: TurnRecord, kind: str) -> None:
        pcm = await self.services.phrase(turn.language, kind)
        text = self.services.phrase_text(turn.language, kind)
        self.taker.answer_started(turn.index)
        self.player.play(pcm, turn, kind)
        name = f"{turn.index}:{kind}"
        self._chunk_text[name] = (turn, text)
        self.player.mark(name)
        turn.reply = f"{turn.reply} {text}".strip()

    # ------------------------------------------------------------------ the answer

    async def _answer(self, turn: TurnRecord) -> bool:
        """Route, stream the LLM through the ladder, speak chunks as they come. False if nothing was said.

        When the route says "bridge then escalate", the fast path speaks a short acknowledgement
        first (instead of the cached bridge) while the reasoning path works on the answer."""
        b = self.config.budget
        speech_end = turn.timeline["speech_end"]
        now = self.clock.now()
        route = self.routing.decide(
            turn.transcript,
            turn.language,
            budget_left_ms=speech_end + turn.budget_ms - now,
            stt_confidence=turn.stt_confidence,
            dtmf=turn.kind == "dtmf",
        )
        turn.budget_ms = route.budget_ms
        turn.route = route.as_dict()
        turn.handoff = route.handoff
        turn.mark("route", self.clock.now())
        digit = self.config.handoff.dtmf_digit
        keyed_for_person = turn.kind == "dtmf" and digit is not None and turn.transcript.rstrip("#") == digit
        if (route.handoff or keyed_for_person) and self._can_transfer():
            why = "the caller asked for a person" if route.handoff else f"the caller pressed {digit}"
            await self._hand_to_person(turn, why, "transfer")
            return True
        audio_by = speech_end + route.budget_ms - b.bridge_lead_ms  # answer audio out by then: no bridge
        first_token_by: float | None = audio_by - b.tts_first_audio_ms
        chunks: asyncio.Queue[str | None] = asyncio.Queue()
        queues = [chunks]
        wanted: list[ToolRequest] = []
        chunker = SpeakableChunker()
        room = [MAX_REPLY_CHARS]  # what a provider that ignores max_tokens may still make us say

        def on_text(text: str) -> None:
            text, room[0] = text[: max(0, room[0])], room[0] - len(text)
            for chunk in chunker.feed(text):
                turn.mark("first_chunk", self.clock.now())
                chunks.put_nowait(chunk)

        try:
            async with asyncio.TaskGroup() as tg:
                if route.bridge_first and self._fast_path_healthy(route):
                    ack: asyncio.Queue[str | None] = asyncio.Queue()
                    queues.insert(0, ack)
                    tg.create_task(self._acknowledge(turn, route, ack, first_token_by))
                    first_token_by = None  # the acknowledgement keeps the budget; the answer may take longer
                speaker = tg.create_task(self._speak_chunks(turn, queues))
                try:
                    wanted = await self._run_ladder(turn, list(route.paths), on_text, first_token_by)
                finally:
                    for chunk in chunker.flush():
                        turn.mark("first_chunk", self.clock.now())
                        chunks.put_nowait(chunk)
                    chunks.put_nowait(None)
                await speaker
        except* LadderExhausted:
            pass
        for tool in wanted:
            if tool.name == MARK_RESOLVED:
                log.info("call %s turn %d: the model marked the call resolved", self.call_sid, turn.index)
                self.outcome, self.outcome_reason = "resolved", tool.argument or "marked by the agent"
        if any(t.name == TRANSFER_TO_HUMAN for t in wanted):
            reason = next(t.argument for t in wanted if t.name == TRANSFER_TO_HUMAN)
            await self._hand_to_person(turn, f"the agent asked for a person: {reason}", "transfer")
            return True
        answered = self.taker.answering(turn.index) and bool(turn.reply_answer)
        if answered and route.ends_with_human and self._can_transfer():
            await self._hand_to_person(turn, f"{route.routing_class} calls end with a person", "transfer")
        return answered

    def _fast_path_healthy(self, route) -> bool:
        models = self.services.router.models(self.tenant)
        return any(
            not self.services.router.health.in_cooldown(health_key(models[p])) for p in route.fast_paths
        )

    async def _acknowledge(
        self, turn: TurnRecord, route, out: asyncio.Queue[str | None], by: float | None
    ) -> None:
        """The fast path's first sentence, queued before the answer: a contextual bridge."""
        chunker = SpeakableChunker()
        first: list[str] = []
        got = asyncio.Event()

        def on_text(text: str) -> None:
            if not first:
                first.extend(chunker.feed(text)[:1])
                if first:
                    got.set()

        ladder = self._ladder(
            turn,
            ":ack",
            first_token_by=by,
            max_tokens=self.config.ladder.ack_max_tokens,
            extra_messages=[{"role": "system", "content": self.config.agent.ack_prompt}],
            hedging=False,
            role="ack",
        )
        left = None if by is None else max(0.0, by - self.clock.now()) / 1000
        try:
            async with asyncio.timeout(left):
                async with asyncio.TaskGroup() as tg:
                    job = tg.create_task(ladder.run(list(route.fast_paths), on_text))
                    waiter = tg.create_task(got.wait())
                    await asyncio.wait([job, waiter], return_when=asyncio.FIRST_COMPLETED)
                    job.cancel()
                    waiter.cancel()
            if not first:
                first.extend(chunker.flush()[:1])
        except* TimeoutError:
            log.info("call %s turn %d: no acknowledgement in time", self.call_sid, turn.index)
            ladder.abandoned("no acknowledgement in time", "cached bridge")
        except* LadderExhausted:
            log.info("call %s turn %d: no acknowledgement: the fast paths failed", self.call_sid, turn.index)
        finally:
            if first:
                out.put_nowait(first[0])
            out.put_nowait(None)

    async def _speak_chunks(self, turn: TurnRecord, queues: list[asyncio.Queue[str | None]]) -> None:
        """Speak the chunks of each queue in turn (the acknowledgement's, then the answer's)."""
        index = 0
        for queue in queues:
            ack = queue is not queues[-1]
            while (text := await queue.get()) is not None:
                turn.chunks.append(text)
                turn.reply = f"{turn.reply} {text}".strip()
                if ack:
                    turn.bridge, turn.bridge_kind = True, "ack"
                else:
                    turn.reply_answer = f"{turn.reply_answer} {text}".strip()
                queued = await self._speak_chunk(turn, index, text, "bridge" if ack else "answer")
                if queued:
                    name = f"{turn.index}:{index}"
                    self._chunk_text[name] = (turn, text)
                    self.player.mark(name)
                index += 1

    async def _speak_chunk(self, turn: TurnRecord, index: int, text: str, source: str = "answer") -> bool:
        """Stream one chunk through TTS into the player; fall back to REST; True if any audio queued."""
        tts = self.services.tts
        ladder = self.config.ladder
        tag = f"{self.call_sid}:{turn.index}"
        queued = False
        turn.mark("tts_request", self.clock.now())
        stream = None
        try:
            async with asyncio.timeout(ladder.tts_first_audio_timeout_ms / 1000) as cm:
                stream = await tts.open(turn.language, tag=tag)
                await stream.send_text(text)
                await stream.flush()
                async for pcm in stream.audio():
                    if not queued:
                        turn.mark("tts_first_audio", self.clock.now())
                    queued = True
                    self.taker.answer_started(turn.index)
                    self.player.play(pcm, turn, source)
                    cm.reschedule(asyncio.get_running_loop().time() + ladder.tts_gap_timeout_ms / 1000)
            return queued
        except (ProviderError, TimeoutError) as exc:
            kind, msg = _fault_of(exc, "no TTS audio in time")
            if stream is not None:
                await _quietly(stream.cancel())
            if queued:
                turn.add_fallback(tts.name, kind, msg, "skip rest of chunk", service="tts")
                return True
            turn.add_fallback(tts.name, kind, msg, "tts rest fallback", service="tts")
        except asyncio.CancelledError:
            if stream is not None:
                await _quietly(stream.cancel())
            raise
        for attempt in range(2):
            try:
                async with asyncio.timeout(2.0):
                    pcm = await tts.synthesize(text, turn.language)
                turn.mark("tts_first_audio", self.clock.now())
                self.taker.answer_started(turn.index)
                self.player.play(pcm, turn, source)
                return True
            except (ProviderError, TimeoutError) as exc:
                kind, msg = _fault_of(exc, "REST TTS timed out")
                action = "retry rest" if attempt == 0 else "drop chunk"
                turn.add_fallback(tts.name, kind, msg, action, service="tts")
        return False

    def _ladder(self, turn: TurnRecord, tag_suffix: str = "", **kwargs) -> LLMLadder:
        """A ladder for this turn over the tenant's model paths and the shared provider health."""
        return LLMLadder(
            self.config,
            self.services.llms,
            self.clock,
            turn,
            self.history,
            f"{self.call_sid}:{turn.index}{tag_suffix}",
            models=self.services.router.models(self.tenant),
            health=self.services.router.health,
            **kwargs,
        )

    async def _run_ladder(
        self, turn: TurnRecord, paths: list[str], on_text, first_token_by: float | None
    ) -> list[ToolRequest]:
        """The answer's ladder, offering the agent's tools; returns the tools the model called."""
        ladder = self._ladder(turn, first_token_by=first_token_by, tools=agent_tools(self._can_transfer()))
        try:
            await ladder.run(paths, on_text)
        finally:
            wanted, problems = read_tool_calls(ladder.tool_calls)
            for problem in problems:
                log.warning("call %s turn %d: ignoring a tool call: %s", self.call_sid, turn.index, problem)
            turn.tools = [{"name": w.name, "argument": w.argument} for w in wanted]
        return wanted

    # ------------------------------------------------------------------ handoff to a person

    def _can_transfer(self) -> bool:
        return self.handover.can_transfer()

    async def _hand_to_person(self, turn: TurnRecord, why: str, phrase: str) -> None:
        """The turn ends in a handoff: transfer when the call can be, and say ``phrase``."""
        turn.handoff, turn.outcome = True, "handoff"
        self.handover.begin(turn, why)
        await self._speak_phrase(turn, phrase)

    async def play_phrase(self, kind: str) -> None:
        """A phrase outside any turn (after a failed transfer): played and kept in the history."""
        pcm = await self.services.phrase(self.language, kind)
        self.player.play(pcm, None, kind)
        self.history.append({"role": "assistant", "content": self.services.phrase_text(self.language, kind)})

    async def _after_failed_transfer(self) -> None:
        log.info("call %s: back from a failed transfer", self.call_sid)
        await self.play_phrase("callback")

    # ------------------------------------------------------------------ end of call and logs

    def _finish_turn_on_hangup(self) -> None:
        turn = self._active
        if turn is not None and "done" not in turn.timeline:
            turn.mark("done", self.clock.now())
            if turn.outcome == "answered" and not turn.heard:
                turn.outcome = "caller_hung_up"

    def _log_turn(self, turn: TurnRecord) -> None:
        tl = turn.timeline
        route = turn.route or {}
        log.info(
            "turn call=%s index=%d class=%s escalated=%s model=%s answered_by=%s cost_usd=%s first_audio_ms=%s "
            "budget_ms=%d within=%s bridge=%s fallbacks=%d outcome=%s reason=%r speech_end=%s endpoint=%s stt_final=%s llm_first_token=%s "
            "tts_first_audio=%s first_audio_out=%s first_audio_heard=%s done=%s",
            self.call_sid,
            turn.index,
            route.get("class"),
            route.get("escalated"),
            route.get("model"),
            turn.usage.get("path"),
            turn.usage.get("cost_usd"),
            turn.first_audio_ms,
            turn.budget_ms,
            turn.within_budget,
            turn.bridge,
            len(turn.fallbacks),
            turn.outcome,
            route.get("reason"),
            tl.get("speech_end"),
            tl.get("endpoint"),
            tl.get("stt_final"),
            tl.get("llm_first_token"),
            tl.get("tts_first_audio"),
            tl.get("first_audio_out"),
            tl.get("first_audio_heard"),
            tl.get("done"),
        )


class _HardCap(Exception):
    """The watchdog's hard cap: the answer is abandoned and the apology plays."""


def _fault_of(exc: Exception, timeout_message: str) -> tuple[str, str]:
    """(kind, message) of a provider failure or of our own deadline running out."""
    if isinstance(exc, ProviderError):
        return exc.kind, exc.message
    return "timeout", timeout_message


async def _quietly(coro) -> None:
    try:
        async with asyncio.timeout(1.0):
            await coro
    except (ProviderError, TimeoutError, OSError):
        pass
