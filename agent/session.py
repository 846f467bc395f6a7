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

from voxroute.agent.answer import Answerer, Speaker
from voxroute.agent.bargein import BargeInPolicy
from voxroute.agent.endpointing import VoiceGate
from voxroute.agent.handoff.flow import Handover
from voxroute.agent.link import CallEnded, CarrierLink, InboundAudio, InboundDtmf, MarkEcho
from voxroute.agent.logs import TURN, call_context
from voxroute.agent.metrics import InboundClock
from voxroute.agent.player import Player
from voxroute.agent.providers.base import ProviderError, Transcript
from voxroute.agent.recording import CallRecorder
from voxroute.agent.services import Services
from voxroute.agent.sttfeed import STTFeed
from voxroute.agent.timeline import Clock, TurnRecord, log_turn
from voxroute.agent.tracing import CallTrace
from voxroute.agent.turns import BargeIn, Commit, IgnoreOverlap, Merge, TurnAction, TurnPolicy, TurnTaker

log = logging.getLogger("voxroute.call")

# Ends the heard part of a reply the caller talked over, so the model knows it was cut short.
INTERRUPTED_MARK = "[interrupted by the caller]"


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
        self.trace = CallTrace(  # OpenTelemetry spans when the otel extra is installed (agent/tracing.py)
            self.call_sid, self.clock, {"voxroute.tenant": start.tenant, "voxroute.carrier": start.carrier}
        )
        self.started_wall = time.time()
        self.turns: list[TurnRecord] = []
        self.merged: list[int] = []  # indices of turns the caller continued before they were answered
        self.routing = services.router.conversation(start.tenant, "voice")
        self.tenant = self.routing.tenant
        self.agent = self.config.agent_for(self.tenant)  # the tenant's prompt, greeting, voices
        prompt = self.agent.prompt(self.language, start.from_number)
        self.history: list[dict[str, Any]] = [{"role": "system", "content": prompt}]
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
        tenant_config = self.config.tenants.get(self.tenant)
        self.recorder = (  # the tenant's opt-in call recording (agent/recording.py)
            CallRecorder.for_call(tenant_config.recording, self.tenant, self.call_sid, self.clock)
            if tenant_config is not None
            else None
        )
        self.player = Player(
            self.recorder.tap(link) if self.recorder is not None else link, self._on_first_send
        )
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
        self.speaker = Speaker(self)
        self.answerer = Answerer(self)
        self._end_marks: dict[str, asyncio.Event] = {}
        self._pending_faults: list[dict[str, Any]] = []  # STT faults, reported on the next turn
        self._greeting: tuple[TurnRecord, asyncio.Task] | None = None  # while it plays: caller speech cuts it
        self._greeting_cut_ms = ep.barge_in_min_voiced_ms
        # A phrase played outside any turn (the callback offer after a failed transfer): caller speech
        # cuts it as it cuts the greeting, else the caller's next answer would queue behind it.
        self._aside: tuple[str, dict[str, Any]] | None = None  # (its end mark, its history message)
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
            batch_ms=self.config.sarvam.stt_batch_ms,
            hurry_ms=2 * self.config.sarvam.stt_silence_ms,  # the STT's end-of-speech silence, twice
        )

    # ------------------------------------------------------------------ run

    async def run(self) -> CallSummary:
        with call_context(self.call_sid), self.trace.active():  # every log line and span names the call
            try:
                return await self._run()
            finally:
                self.trace.end(self.ended, len(self.turns), self.error)

    async def _run(self) -> CallSummary:
        log.info(
            "call %s started (tenant=%s language=%s)", self.call_sid, self.link.start.tenant, self.language
        )
        self.services.register(self)
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                if self.resumed:
                    tg.create_task(self._after_failed_transfer(), name=f"{self.call_sid}:resume")
                elif greeting := self.agent.greeting_text(self.language, self.link.start.from_number):
                    turn = self._greeting_turn()
                    task = tg.create_task(self._greet(greeting), name=f"{self.call_sid}:greeting")
                    self._greeting = (turn, task)
                tg.create_task(self.stt.run(), name=f"{self.call_sid}:stt")
                tg.create_task(self.player.run(), name=f"{self.call_sid}:outbound")
                tg.create_task(self._turn_loop(tg), name=f"{self.call_sid}:turns")
                tg.create_task(self._ticker(), name=f"{self.call_sid}:ticker")
                tg.create_task(
                    self.services.warm_phrases(self.language, self.agent.voice(self.language)),
                    name=f"{self.call_sid}:phrases",
                )
                tg.create_task(self._inbound(), name=f"{self.call_sid}:inbound")
        except* _CallOver:
            pass
        except* Exception as group:  # a bug in a strand: end this call only, with a log line
            self.ended, self.error = "error", "; ".join(repr(e) for e in group.exceptions)
            log.exception("call %s failed: %s", self.call_sid, self.error)
        finally:
            await self.stt.aclose()
            self._finish_turn_on_hangup()
            await self.answerer.aclose()  # the tool runner's HTTP pool
            self.ended_wall = time.time()
            try:
                if self.recorder is not None:  # written by a worker thread
                    await self.recorder.save([t.as_dict() for t in self.turns], self.language)
                await self.services.take_outcome(self)  # an operator's verdict given through another process
            finally:
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
                if self.taker.voiced_run_ms >= self._greeting_cut_ms:
                    if self._greeting is not None:
                        await self._cut_greeting()
                    elif self._aside is not None:
                        await self._cut_aside()
                self.stt.push(event.pcm, event.ulaw, voiced)
                if self.recorder is not None:
                    self.recorder.caller(event.pcm)
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
            await self._act(self.taker.tick(self.clock.now(), self.player.speaking, due=self._tick_at))

    async def _act(self, actions: list[TurnAction]) -> None:
        """Carry out what the turn core decided."""
        for action in actions:
            if isinstance(action, Commit):
                if self._aside is not None:  # a turn to answer: the phrase must not hold its answer back
                    await self._cut_aside()
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

    def _running(self, index: int) -> tuple[TurnRecord, asyncio.Task] | None:
        """The running turn and its task, if it is turn ``index``."""
        turn, task = self._active, self._turn_task
        if turn is None or turn.index != index or task is None or task.done():
            return None
        return turn, task

    async def _merge(self, index: int) -> None:
        """The caller went on talking before turn ``index`` was answered: cancel it; the turn core
        has put its words back, to be merged with what follows (a mid-sentence pause)."""
        running = self._running(index)
        if running is None:
            return
        turn, task = running
        log.info("call %s turn %d: caller resumed before the answer; merging", self.call_sid, turn.index)
        if self.player.speaking:  # only a bridge can be playing: stop it, the caller is talking
            await self.player.clear()
        turn.outcome = "merged"
        task.cancel()  # this turn's task: the turn loop may have started the next one during the clear

    async def _barge_in(self, index: int, why: str) -> None:
        running = self._running(index)
        if running is None:
            return
        turn, task = running
        log.info("call %s turn %d: barge-in (%s)", self.call_sid, turn.index, why)
        turn.interrupted = True
        turn.outcome = "interrupted"
        await self.player.clear()
        task.cancel()  # (as in _merge)

    def _on_mark(self, name: str) -> None:
        if self._aside is not None and name == self._aside[0]:
            self._aside = None  # played out
        self.speaker.heard(name, self.player.on_mark_echo(name), self.clock.now())
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
        TURN.set(turn.index)  # this task's log lines name the turn (agent/logs.py)
        span = self.trace.start_turn(turn)  # and its provider calls are the turn span's children
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
                        await self.speaker.phrase(turn, "not_heard")
                    else:
                        self.history.append(user_msg)
                        if not await self.answerer.run(turn):
                            if (turn.route or {}).get("on_failure") == "handoff":
                                await self.hand_to_person(turn, "every model path failed", "handoff")
                            else:
                                turn.outcome = "apology"
                                await self.speaker.phrase(turn, "apology")
                    watchdog.cancel()
            except* _HardCap:
                await self.speaker.phrase(turn, "apology")
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
                log_turn(self.call_sid, turn)
                self.services.turn_finished(self, turn)
            self.taker.turn_ended(turn.index)
            self.trace.end_turn(span, turn)
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
        self.player.play(await self._phrase(turn.language, "bridge"), turn, "bridge")
        self.speaker.mark(turn, f"{turn.index}:bridge", "")
        hard_cap = speech_end + b.hard_cap_ms
        while not self.taker.answering(turn.index):
            wait = min(b.refill_ms, hard_cap - self.clock.now())
            if wait <= 0:
                break
            await asyncio.sleep(wait / 1000)
            if self.taker.answering(turn.index):
                return
            if self.clock.now() < hard_cap and not self.player.speaking:
                self.player.play(await self._phrase(turn.language, "bridge"), turn, "bridge")
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

    # ------------------------------------------------------------------ handoff to a person

    async def hand_to_person(self, turn: TurnRecord, why: str, phrase: str) -> None:
        """The turn ends in a handoff: transfer when the call can be, and say ``phrase``."""
        turn.handoff, turn.outcome = True, "handoff"
        self.handover.begin(turn, why)
        await self.speaker.phrase(turn, phrase)

    async def play_phrase(self, kind: str) -> None:
        """A phrase outside any turn (after a failed transfer): played and kept in the history; the
        caller speaking over it cuts it (``_cut_aside``)."""
        pcm = await self._phrase(self.language, kind)
        message = {"role": "assistant", "content": self.services.phrase_text(self.language, kind)}
        self.history.append(message)
        self.player.play(pcm, None, kind)
        self._aside = (f"aside:{kind}:{len(self.history)}", message)
        self.player.mark(self._aside[0])

    async def _cut_aside(self) -> None:
        assert self._aside is not None
        (_, message), self._aside = self._aside, None
        log.info("call %s: the caller spoke over a phrase; stopping it", self.call_sid)
        message["content"] = f"{message['content']} {INTERRUPTED_MARK}"
        await self.player.clear()

    async def _phrase(self, language: str, kind: str) -> bytes:
        """A cached phrase in the tenant's voice for ``language``."""
        return await self.services.phrase(language, kind, self.agent.voice(language))

    async def _greet(self, text: str) -> None:
        """The agent speaks first: turn 0 (kind ``greeting``), timed from the stream's start, so its
        ``first_audio_ms`` is the time to the greeting's first audio (budget: the voice budget).
        The caller speaking over it (``barge_in_min_voiced_ms`` of voice) cuts it (``_cut_greeting``)."""
        turn = self.turns[0]
        TURN.set(turn.index)
        span = self.trace.start_turn(turn)
        try:
            if await self.speaker.chunk(turn, 0, text):
                turn.chunks.append(text)
                turn.reply = turn.reply_answer = text
                self.speaker.mark(turn, "0:greeting", text)
            else:
                turn.outcome = "apology"  # no TTS at all: the caller speaks first after all
            await self._wait_played(turn)
        finally:
            self._greeting = None
            turn.mark("done", self.clock.now())
            spoken = f"{turn.heard} {INTERRUPTED_MARK}" if turn.interrupted and turn.heard else turn.heard
            if spoken:  # after the system prompt: a caller turn may have begun meanwhile
                self.history.insert(1, {"role": "assistant", "content": spoken})
            log_turn(self.call_sid, turn)
            self.services.turn_finished(self, turn)
            self.trace.end_turn(span, turn)

    def _greeting_turn(self) -> TurnRecord:
        turn = TurnRecord(index=0, kind="greeting", language=self.language, budget_ms=self.voice_budget_ms)
        turn.mark("speech_end", 0.0)
        turn.route = {"class": "greeting", "tier": "none", "model": None, "escalated": False,
                      "reason": "the agent speaks first"}  # fmt: skip
        self.turns.append(turn)
        return turn

    async def _cut_greeting(self) -> None:
        """The caller talks over the greeting: it stops (its TTS too), and what they say is turn 1."""
        assert self._greeting is not None
        (turn, task), self._greeting = self._greeting, None
        log.info("call %s: the caller spoke over the greeting; stopping it", self.call_sid)
        turn.interrupted, turn.outcome = True, "interrupted"
        task.cancel()
        await self.player.clear()

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


class _HardCap(Exception):
    """The watchdog's hard cap: the answer is abandoned and the apology plays."""
