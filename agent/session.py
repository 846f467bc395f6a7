"""One call: the core loop of docs/design.md.

Four strands in one task group:

1. inbound  - carrier frames -> voice gate (webrtcvad) and STT; DTMF; mark echoes. What the caller
              does is fed to the sans-I/O turn core (agent/turns.py), which holds every turn-taking
              rule (end of turn by the clock, merges, barge-in, backchannels); a ticker wakes it
              when its timers are due.
2. turn     - runs each turn the core commits:
              route -> LLM (fallback ladder) -> speakable chunks -> TTS -> player.
3. outbound - ``Player.run``: paces audio to the carrier, marks after each chunk.
4. watchdog - one per turn (agent/watchdog.py): at ``deadline - bridge_lead`` with no answer audio
              out, plays the cached bridge; keeps the line alive; at the hard cap plays the apology.

Plus the STT feed (agent/sttfeed.py), which sends frames, reads transcripts and reconnects on failure;
the greeting and the asides (agent/asides.py), which the caller's voice cuts; the answer
(agent/answer.py); and the handoff to a person (agent/handoff/flow.py).
Invariant: every turn puts agent audio on the wire within its budget, whatever the providers do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from voxroute.agent import gcquiet
from voxroute.agent.answer import Answerer, Speaker
from voxroute.agent.asides import Asides
from voxroute.agent.bargein import BargeInPolicy
from voxroute.agent.callsummary import CallSummary
from voxroute.agent.endpointing import VoiceGate
from voxroute.agent.handoff.flow import Handover
from voxroute.agent.link import CallEnded, CarrierLink, InboundAudio, InboundDtmf, MarkEcho
from voxroute.agent.logs import TURN, call_context
from voxroute.agent.metrics import InboundClock
from voxroute.agent.player import Player
from voxroute.agent.preemptive import EarlyRequest, EarlyRequests
from voxroute.agent.providers.base import ProviderError, Transcript
from voxroute.agent.recording import CallRecorder
from voxroute.agent.services import Services
from voxroute.agent.sttfeed import STTFeed
from voxroute.agent.timeline import INTERRUPTED_MARK, Clock, TurnRecord, log_turn
from voxroute.agent.tracing import CallTrace
from voxroute.agent.turns import (
    COMMIT_SILENCE_MS,
    BargeIn,
    Commit,
    IgnoreOverlap,
    Merge,
    TurnAction,
    TurnPolicy,
    TurnTaker,
)
from voxroute.agent.watchdog import HardCap, Watchdog
from voxroute.routing.route import Route

log = logging.getLogger("voxroute.call")

# INTERRUPTED_MARK (agent/timeline.py) and CallSummary (agent/callsummary.py) are imported from here too.
__all__ = ["INTERRUPTED_MARK", "CallSession", "CallSummary"]


class _CallOver(Exception):
    """The carrier ended the call: unwinds every strand of the call's task group."""


class CallSession:
    """The thin async shell of one call: it feeds what the caller does to the turn core
    (``taker``), carries out what the core decides (commit, merge, barge-in), and runs each committed
    turn through the answer (``answerer``: route, ladder, TTS), the ``player`` and the ``watchdog``.
    The parts it holds get the session itself and read what they need of it."""

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
        self._tick_due = False  # the ticker's timer fired (else ``_rearm`` woke it: look again)
        # turns
        self._turn_task: asyncio.Task | None = None
        self._ending_turn = False  # the turn loop is ending the running turn before the next
        self._active: TurnRecord | None = None
        self.speaker = Speaker(self)
        self.answerer = Answerer(self)
        self.watchdog = Watchdog(self)
        self._pending_faults: list[dict[str, Any]] = []  # STT faults, reported on the next turn
        # early requests (agent/preemptive.py)
        self.early = EarlyRequests(
            self.config.ladder.early_requests_per_turn,
            self.config.ladder.early_request_max_misses,
            self.services.router.models(self.tenant),
            self.call_sid,
        )
        self.asides = Asides(self)  # the greeting and phrases outside any turn: caller speech cuts them
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
                self._let_go()

    def _let_go(self) -> None:
        """The call is over: drop the strands. Each holds the session (as ``s``, or through a bound
        method it calls back), so the session and its strands were a cycle that only a full
        collection freed, with everything they held (~900 objects per call). Without the session's
        side of each link, reference counting frees them now. What the call's record needs (turns,
        outcome, ``summary()``) stays."""
        for strand in ("player", "speaker", "answerer", "watchdog", "asides", "handover", "stt"):
            vars(self).pop(strand, None)
        self._turn_task = None
        self.tg = None

    async def _run(self) -> CallSummary:
        log.info(
            "call %s started (tenant=%s language=%s)", self.call_sid, self.link.start.tenant, self.language
        )
        self.services.register(self)
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                self.asides.start(tg)
                tg.create_task(self.stt.run(), name=f"{self.call_sid}:stt")
                tg.create_task(self.player.run(), name=f"{self.call_sid}:outbound")
                tg.create_task(self._turn_loop(), name=f"{self.call_sid}:turns")
                tg.create_task(self._ticker(), name=f"{self.call_sid}:ticker")
                tg.create_task(
                    self.services.warm_phrases(
                        self.language, self.agent.voice(self.language), self.player.audio_format
                    ),
                    name=f"{self.call_sid}:phrases",
                )
                tg.create_task(self._inbound(), name=f"{self.call_sid}:inbound")
        except* _CallOver as group:
            gcquiet.free_frames(group)  # no cycle left for a full collection (agent/gcquiet.py)
        except* Exception as group:  # a bug in a strand: end this call only, with a log line
            self.ended, self.error = "error", "; ".join(repr(e) for e in group.exceptions)
            log.exception("call %s failed: %s", self.call_sid, self.error)
            gcquiet.free_frames(group)
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
                actions = self.taker.frame(voiced, self.clock.now(), self.player.speaking)
                if actions:
                    await self._act(actions)
                else:  # most frames: no coroutine to make, 50 times a second per call
                    self._rearm_if_sooner()
                await self.asides.caller_voiced(self.taker.voiced_run_ms)
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
        ends even when the caller's side sends no frames at all while quiet. The timer is a plain
        loop timer that sets ``_rearm``, not a timed wait: while the caller speaks it fires every
        60 ms (the commit silence moves with each voiced frame), and a timed wait's expiry is a
        cancellation and an exception each time."""
        loop = asyncio.get_running_loop()
        while True:
            now = self.clock.now()
            self._tick_at = self.taker.next_wake(now)
            self._rearm.clear()
            self._tick_due = False
            timer = (
                None if self._tick_at is None else loop.call_later((self._tick_at - now) / 1000, self._tick)
            )
            try:
                await self._rearm.wait()
            finally:
                if timer is not None:
                    timer.cancel()
            if not self._tick_due:
                continue  # a timer moved earlier: look again
            await self._act(self.taker.tick(self.clock.now(), self.player.speaking, due=self._tick_at))
            self._speculate_if_paused(self.clock.now())
            self._early_request()

    def _tick(self) -> None:
        self._tick_due = True
        self._rearm.set()

    async def _act(self, actions: list[TurnAction]) -> None:
        """Carry out what the turn core decided."""
        for action in actions:
            if isinstance(action, Commit):
                await self.asides.turn_committed()
                self._commit(action)
            elif isinstance(action, Merge):
                await self._merge(action.index)
            elif isinstance(action, BargeIn):
                await self._barge_in(action.index, action.why)
            elif isinstance(action, IgnoreOverlap):
                self._ignore_overlap(action)
        self._rearm_if_sooner()

    def _rearm_if_sooner(self) -> None:
        """Wake the ticker if the turn core's next timer is now sooner than the one it waits for."""
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
        self.asides.mark_echoed(name)
        self.speaker.heard(name, self.player.on_mark_echo(name), self.clock.now())

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
            self._speculate_if_paused(now)
        await self._act(actions)
        self._early_request()

    def _speculate_if_paused(self, now: float) -> None:
        """Classify what the STT has heard (the finals before the partial too: a turn's transcript
        is all its finals joined) once the caller has paused, ahead of the early request and the
        decision, which then only confirm it. Not while the caller speaks: each partial then is
        soon replaced, and scoring every one cost ~4% of the server's CPU at 200 calls. The ticker
        wakes at the pause (``COMMIT_SILENCE_MS``), and a partial that comes after it is scored
        when it comes. ``speculate`` does nothing for a text it has scored."""
        if self.taker.silence(now) >= COMMIT_SILENCE_MS:
            self.routing.speculate(self.taker.pending_text())

    def _early_request(self) -> None:
        """The caller paused: start the answer's first model request on what the STT has heard
        (agent/preemptive.py); new words since an early request cancel it."""
        cfg = self.config.ladder
        if cfg.early_request == "off" or self.tg is None:
            return
        self.early.heard(self.taker.pending_text())
        now = self.clock.now()
        text = self.taker.early_text(now)
        if text is None or self.taker.last_voice is None or not self.early.may_start(text):
            return
        index = self.taker.next_index
        got = self.answerer.early_request(index, text, self.language, self.taker.last_voice)
        if got is None:
            self.early.declined = text  # (a reasoning route, a handoff): not asked again
            return
        path, request, routing_class = got
        mp = self.services.router.models(self.tenant)[path]
        early = EarlyRequest(text, path, request, now, index, routing_class)
        try:
            early.start(self.tg, self.services.llms[mp.provider], mp.provider, cfg.stall_timeout_ms)
        except RuntimeError:  # the call's task group is ending (the caller hung up): nothing to answer
            return
        self.early.started(early)
        log.info("call %s turn %d: early request on %s: %r", self.call_sid, index, path, text[:80])

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

    def _commit(self, commit: Commit) -> None:
        """Start the committed turn at once when no turn runs before it (the usual case: a scheduling
        hop less between the caller's last word and the model request); else the turn loop ends
        the running turn first, in order."""
        log.debug("call %s: commit %s %r", self.call_sid, commit.kind, commit.transcript)
        task = self._turn_task
        if not self._ending_turn and self._commits.empty() and (task is None or task.done()):
            self._start_turn(commit)
        else:
            self._commits.put_nowait(commit)

    async def _turn_loop(self) -> None:
        while True:
            commit = await self._commits.get()
            self._ending_turn = True
            try:
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
                self._start_turn(commit)
            finally:
                self._ending_turn = False

    def _start_turn(self, commit: Commit) -> None:
        assert self.tg is not None  # commits come from the strands the call's task group runs
        turn = self._open(commit)
        self._active = turn
        early = self.early.take(turn, commit.kind == "speech")  # this turn's, if any
        self._turn_task = self.tg.create_task(
            self._run_turn(turn, early), name=f"{self.call_sid}:turn{turn.index}"
        )
        # No collection until the turn's first step (route, model request) has run: the release is
        # queued behind that step (agent/gcquiet.py). Held only once the task exists, so that a
        # task group that refuses it cannot leave the collector off.
        gcquiet.hold()
        asyncio.get_running_loop().call_soon(gcquiet.release)

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

    async def _run_turn(self, turn: TurnRecord, early: EarlyRequest | None = None) -> None:
        TURN.set(turn.index)  # this task's log lines name the turn (agent/logs.py)
        span = self.trace.start_turn(turn)  # and its provider calls are the turn span's children
        user_msg: dict[str, Any] | None = None
        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    watchdog = tg.create_task(
                        self.watchdog.run(turn), name=f"{self.call_sid}:watchdog{turn.index}"
                    )
                    await self._await_transcript(turn)
                    if turn.kind == "dtmf":
                        user_msg = {"role": "user", "content": f"(keypad) {turn.transcript}"}
                    elif turn.transcript:
                        user_msg = {"role": "user", "content": turn.transcript}
                    if user_msg is None:
                        turn.route = Route.unrouted("none", "no transcript")
                        turn.outcome = "not_heard"
                        await self.speaker.phrase(turn, "not_heard")
                    else:
                        self.history.append(user_msg)
                        if not await self.answerer.run(turn, early):
                            if turn.route is not None and turn.route.on_failure == "handoff":
                                await self.hand_to_person(turn, "every model path failed", "handoff")
                            else:
                                turn.outcome = "apology"
                                await self.speaker.phrase(turn, "apology")
                    watchdog.cancel()
            except* HardCap:
                await self.speaker.phrase(turn, "apology")
            await self.wait_played(turn)
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
            self.early.finished(early, turn, turn.outcome == "merged")
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

    async def wait_played(self, turn: TurnRecord) -> None:
        """Until the caller has heard everything queued for ``turn`` (its end mark's echo)."""
        if not await self.player.played(f"{turn.index}:end"):
            log.warning("call %s turn %d: end mark never echoed", self.call_sid, turn.index)

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

    # ------------------------------------------------------------------ end of call and logs

    def _finish_turn_on_hangup(self) -> None:
        turn = self._active
        if turn is not None and "done" not in turn.timeline:
            turn.mark("done", self.clock.now())
            if turn.outcome == "answered" and not turn.heard:
                turn.outcome = "caller_hung_up"
