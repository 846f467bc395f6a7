"""One turn's answer and the call's voice.

:class:`Answerer` routes the turn, streams the LLM through the fallback ladder (with the fast path's
acknowledgement first when the reasoning path cannot make the budget), cuts the text into speakable
chunks and hands them to the :class:`Speaker`, which speaks them (and the cached phrases) through TTS
into the player, each followed by a mark whose echo proves what the caller heard.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
from typing import TYPE_CHECKING

import httpx

from voxroute.agent.calllog.redact import redact_json
from voxroute.agent.chunker import SpeakableChunker
from voxroute.agent.ladder import LadderExhausted, LLMLadder
from voxroute.agent.providers.base import LLMRequest, ProviderError
from voxroute.agent.timeline import TurnRecord
from voxroute.agent.tools import (
    BUILTIN_TOOLS,
    MARK_RESOLVED,
    TRANSFER_TO_HUMAN,
    ToolRequest,
    agent_tools,
    read_tool_calls,
)
from voxroute.agent.tools.run import ToolRunner, assistant_message
from voxroute.routing.router import health_key

if TYPE_CHECKING:
    from voxroute.agent.preemptive import EarlyRequest
    from voxroute.agent.session import CallSession

log = logging.getLogger("voxroute.call")

MAX_REPLY_CHARS = 4000  # of one turn's reply; the model's max_tokens normally ends it long before


class WaitingPhrase(str):
    """A tool's waiting phrase in the answer's chunk queue: spoken as a bridge, not as the answer."""


class Speaker:
    def __init__(self, session: CallSession) -> None:
        self.s = session
        self.chunk_text: dict[str, tuple[TurnRecord, str]] = {}  # mark name -> what it proves was heard

    def mark(self, turn: TurnRecord, name: str, text: str) -> None:
        """A mark after what was just queued: its echo proves ``text`` played."""
        self.chunk_text[name] = (turn, text)
        self.s.player.mark(name)

    def heard(self, name: str, played: bool, now: float) -> None:
        """The carrier echoed mark ``name`` (``played``: not flushed by a barge-in)."""
        entry = self.chunk_text.pop(name, None)
        if entry is not None and played:
            turn, text = entry
            turn.mark("first_audio_heard", now)
            if text:
                turn.heard = f"{turn.heard} {text}".strip()

    async def phrase(self, turn: TurnRecord, kind: str) -> None:
        audio = await self.s.services.phrase(
            turn.language, kind, self._voice(turn.language), self.s.player.audio_format
        )
        text = self.s.services.phrase_text(turn.language, kind)
        self.s.taker.answer_started(turn.index)
        self.s.player.play(audio, turn, kind)
        self.mark(turn, f"{turn.index}:{kind}", text)
        turn.reply = f"{turn.reply} {text}".strip()

    async def chunks(self, turn: TurnRecord, queues: list[asyncio.Queue[str | None]]) -> None:
        """Speak the chunks of each queue in turn (the acknowledgement's, then the answer's)."""
        index = 0
        for queue in queues:
            while (text := await queue.get()) is not None:
                ack = queue is not queues[-1] or isinstance(text, WaitingPhrase)
                turn.chunks.append(text)
                turn.reply = f"{turn.reply} {text}".strip()
                if ack:
                    turn.bridge = True
                    turn.bridge_kind = "tool" if isinstance(text, WaitingPhrase) else "ack"
                else:
                    turn.reply_answer = f"{turn.reply_answer} {text}".strip()
                queued = await self.chunk(turn, index, text, "bridge" if ack else "answer")
                if queued:
                    self.mark(turn, f"{turn.index}:{index}", text)
                index += 1

    def _voice(self, language: str) -> str | None:
        """The tenant's speaker for ``language`` (agent/agentdef.py); None: the provider's default."""
        agent = getattr(self.s, "agent", None)
        return agent.voice(language) if agent is not None else None

    async def chunk(self, turn: TurnRecord, index: int, text: str, source: str = "answer") -> bool:
        """Stream one chunk through TTS into the player; fall back to REST; True if any audio queued.
        The TTS is asked for the link's wire format: its bytes go to the carrier as they come."""
        tts = self.s.services.tts
        fmt = self.s.player.audio_format
        ladder = self.s.config.ladder
        tag = f"{self.s.call_sid}:{turn.index}"
        queued = False
        turn.mark("tts_request", self.s.clock.now())
        stream = None
        try:
            async with asyncio.timeout(ladder.tts_first_audio_timeout_ms / 1000) as cm:
                stream = await tts.open(turn.language, voice=self._voice(turn.language), tag=tag, fmt=fmt)
                await stream.send_text(text)
                await stream.flush()
                async for audio in stream.audio():
                    if not queued:
                        turn.mark("tts_first_audio", self.s.clock.now())
                    queued = True
                    self.s.taker.answer_started(turn.index)
                    self.s.player.play(audio, turn, source)
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
                    audio = await tts.synthesize(
                        text, turn.language, voice=self._voice(turn.language), fmt=fmt
                    )
                turn.mark("tts_first_audio", self.s.clock.now())
                self.s.taker.answer_started(turn.index)
                self.s.player.play(audio, turn, source)
                return True
            except (ProviderError, TimeoutError) as exc:
                kind, msg = _fault_of(exc, "REST TTS timed out")
                action = "retry rest" if attempt == 0 else "drop chunk"
                turn.add_fallback(tts.name, kind, msg, action, service="tts")
        return False


class Answerer:
    def __init__(self, session: CallSession, *, tool_http: httpx.AsyncClient | None = None) -> None:
        """``tool_http``: a shared HTTP client for the tools (the text channel's: a new client costs
        40-90 ms of loop time for its TLS context); None: the tool runner makes its own."""
        self.s = session
        self.tools = ToolRunner(
            session.config.tools.of(session.tenant),
            call_sid=session.call_sid,
            tenant=session.tenant,
            http=tool_http,
            now=session.clock.now,
        )

    async def aclose(self) -> None:
        await self.tools.aclose()

    def early_request(
        self, index: int, text: str, language: str, speech_end: float
    ) -> tuple[str, LLMRequest, str | None] | None:
        """(path, request, routing class) of the first model attempt turn ``index`` would make if the caller's
        words were ``text`` (an early request: agent/preemptive.py). The route is decided on a copy
        of the conversation's routing state; the turn decides again when it commits. None when the
        turn would not begin with a model request of its own (a handoff) or its path cools down.
        With ``ladder.early_request`` "fast" only a fast-tier path is asked early: the answer's, or
        when the answer is the reasoning tier's and the route bridges first, the fast path's
        acknowledgement (which keeps the budget)."""
        now = self.s.clock.now()
        routing = copy.copy(self.s.routing)
        route = routing.decide(text, language, budget_left_ms=speech_end + self.s.voice_budget_ms - now)
        if route.handoff or not route.paths:
            return None
        turn = TurnRecord(index=index, kind="speech", language=language)
        said = [*self.s.history, {"role": "user", "content": text}]
        first = self.s.services.router.models(self.s.tenant)[route.paths[0]]
        if self.s.config.ladder.early_request == "fast" and first.tier != "fast":
            if not (route.bridge_first and self._fast_path_healthy(route)):
                return None
            got = self._ack_ladder(turn, None, said).first_request(list(route.fast_paths))
        else:
            history = with_guidance(said, route.guidance)
            got = self._ladder(turn, history=history, tools=self._offered()).first_request(list(route.paths))
        return None if got is None else (*got, route.routing_class)

    def _offered(self) -> list[dict]:
        """The tools offered to the model: the built-in ones and the tenant's."""
        return agent_tools(self.s.handover.can_transfer()) + self.tools.offered()

    async def run(self, turn: TurnRecord, early: EarlyRequest | None = None) -> bool:
        """Route, stream the LLM through the ladder, speak chunks as they come. False if nothing was said.

        When the route says "bridge then escalate", the fast path speaks a short acknowledgement
        first (instead of the cached bridge) while the reasoning path works on the answer.
        ``early``: a request started before the commit, which the answer's (or the
        acknowledgement's) first attempt adopts if it asks the same."""
        b = self.s.config.budget
        speech_end = turn.timeline["speech_end"]
        now = self.s.clock.now()
        route = self.s.routing.decide(
            turn.transcript,
            turn.language,
            budget_left_ms=speech_end + turn.budget_ms - now,
            stt_confidence=turn.stt_confidence,
            dtmf=turn.kind == "dtmf",
        )
        turn.budget_ms = route.budget_ms
        turn.route = route
        turn.handoff = route.handoff
        turn.mark("route", self.s.clock.now())
        digit = self.s.config.handoff.dtmf_digit
        keyed_for_person = turn.kind == "dtmf" and digit is not None and turn.transcript.rstrip("#") == digit
        if (route.handoff or keyed_for_person) and self.s.handover.can_transfer():
            why = "the caller asked for a person" if route.handoff else f"the caller pressed {digit}"
            await self.s.hand_to_person(turn, why, "transfer")
            return True
        audio_by = speech_end + route.budget_ms - b.bridge_lead_ms  # answer audio out by then: no bridge
        first_token_by: float | None = audio_by - b.tts_first_audio_ms
        chunks: asyncio.Queue[str | None] = asyncio.Queue()
        queues = [chunks]
        wanted: list[ToolRequest] = []
        chunker = SpeakableChunker()
        room = [MAX_REPLY_CHARS]  # what a provider that ignores max_tokens may still make us say

        def on_text(text: str) -> None:
            arrived = self.s.clock.now()  # the ladder calls this as the model's text comes
            text, room[0] = text[: max(0, room[0])], room[0] - len(text)
            for chunk in chunker.feed(text):
                turn.mark("first_chunk_text", arrived)
                turn.mark("first_chunk", self.s.clock.now())
                chunks.put_nowait(chunk)

        def flushed() -> None:
            """The model's text so far is a chunk because its stream paused or ended: that is the
            text that completed the chunk, arriving now."""
            for chunk in chunker.flush():
                now = self.s.clock.now()
                turn.mark("first_chunk_text", now)
                turn.mark("first_chunk", now)
                chunks.put_nowait(chunk)

        def on_pause(waiting: str | None) -> None:
            """A tool round starts: what was said so far is spoken; ``waiting``: a tool's phrase."""
            flushed()
            if waiting:
                chunks.put_nowait(WaitingPhrase(waiting))

        try:
            async with asyncio.TaskGroup() as tg:
                if route.bridge_first and self._fast_path_healthy(route):
                    ack: asyncio.Queue[str | None] = asyncio.Queue()
                    queues.insert(0, ack)
                    tg.create_task(self._acknowledge(turn, route, ack, first_token_by, early))
                    first_token_by = None  # the acknowledgement keeps the budget; the answer may take longer
                speaker = tg.create_task(self.s.speaker.chunks(turn, queues))
                try:
                    wanted = await self._run_ladder(
                        turn, route, on_text, first_token_by, on_pause, audio_by - b.tts_first_audio_ms, early
                    )
                finally:
                    flushed()
                    chunks.put_nowait(None)
                await speaker
        except* LadderExhausted:
            pass
        for tool in wanted:
            if tool.name == MARK_RESOLVED:
                log.info("call %s turn %d: the model marked the call resolved", self.s.call_sid, turn.index)
                self.s.outcome, self.s.outcome_reason = "resolved", tool.argument or "marked by the agent"
        if any(t.name == TRANSFER_TO_HUMAN for t in wanted):
            reason = next(t.argument for t in wanted if t.name == TRANSFER_TO_HUMAN)
            await self.s.hand_to_person(turn, f"the agent asked for a person: {reason}", "transfer")
            return True
        answered = self.s.taker.answering(turn.index) and bool(turn.reply_answer)
        if answered and route.ends_with_human and self.s.handover.can_transfer():
            await self.s.hand_to_person(turn, f"{route.routing_class} calls end with a person", "transfer")
        return answered

    def _fast_path_healthy(self, route) -> bool:
        models = self.s.services.router.models(self.s.tenant)
        return any(
            not self.s.services.router.health.in_cooldown(health_key(models[p])) for p in route.fast_paths
        )

    async def _acknowledge(
        self,
        turn: TurnRecord,
        route,
        out: asyncio.Queue[str | None],
        by: float | None,
        early: EarlyRequest | None = None,
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

        ladder = self._ack_ladder(turn, by, early=early)
        left = None if by is None else max(0.0, by - self.s.clock.now()) / 1000
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
            log.info("call %s turn %d: no acknowledgement in time", self.s.call_sid, turn.index)
            ladder.abandoned("no acknowledgement in time", "cached bridge")
        except* LadderExhausted:
            log.info(
                "call %s turn %d: no acknowledgement: the fast paths failed", self.s.call_sid, turn.index
            )
        finally:
            if first:
                out.put_nowait(first[0])
            out.put_nowait(None)

    def _ack_ladder(
        self, turn: TurnRecord, by: float | None, history=None, early: EarlyRequest | None = None
    ) -> LLMLadder:
        """The ladder of the fast path's acknowledgement: short, no hedge, its own instruction."""
        return self._ladder(
            turn,
            ":ack",
            history,
            first_token_by=by,
            max_tokens=self.s.config.ladder.ack_max_tokens,
            extra_messages=[{"role": "system", "content": self.s.config.agent.ack_prompt}],
            hedging=False,
            role="ack",
            early=early,
        )

    def _ladder(self, turn: TurnRecord, tag_suffix: str = "", history=None, **kwargs) -> LLMLadder:
        """A ladder for this turn over the tenant's model paths and the shared provider health."""
        return LLMLadder(
            self.s.config,
            self.s.services.llms,
            self.s.clock,
            turn,
            self.s.history if history is None else history,
            f"{self.s.call_sid}:{turn.index}{tag_suffix}",
            models=self.s.services.router.models(self.s.tenant),
            health=self.s.services.router.health,
            **kwargs,
        )

    async def _run_ladder(
        self,
        turn: TurnRecord,
        route,
        on_text,
        first_token_by: float | None,
        on_pause=None,
        waiting_by: float | None = None,
        early: EarlyRequest | None = None,
    ) -> list[ToolRequest]:
        """The answer's ladder, offering the agent's tools; returns the built-in tools the model called.

        The route's class guidance (out of scope: a polite redirect) is said just before the caller's
        words so that the model reads it with them. Business tools run between rounds: each round
        is a new ladder (only its winning attempt's calls run), and the results go back to the model
        as tool messages; the last round (``tools.max_rounds``) offers no tools, so a model that keeps
        calling them must answer. A call to a ``stakes: high`` tool from a fast-tier model is not
        run: the round is asked again of the reasoning tier, and the escalation sticks.
        ``on_pause(phrase)`` is called when a tool round starts (``phrase``: the tool's waiting
        phrase, when the tool is not back by ``waiting_by``)."""
        paths = list(route.paths)
        history = with_guidance(self.s.history, route.guidance)
        offered = self._offered()
        wanted: list[ToolRequest] = []
        max_rounds = self.s.config.tools.max_rounds if self.tools.tools else 0
        rounds = 0
        escalated_here = False
        try:
            while True:
                last = rounds >= max_rounds and max_rounds > 0
                ladder = self._ladder(
                    turn,
                    f":t{rounds}" if rounds else "",
                    first_token_by=first_token_by,
                    tools=None if last else offered,
                    history=history,
                    early=early if rounds == 0 else None,
                )
                try:
                    await ladder.run(paths, on_text)
                finally:
                    found, problems = read_tool_calls(ladder.tool_calls)
                    for problem in problems:
                        log.warning(
                            "call %s turn %d: ignoring a tool call: %s", self.s.call_sid, turn.index, problem
                        )
                    wanted += found
                    turn.tools += [_builtin_record(w) for w in found]
                calls = [c for c in ladder.tool_calls if c.name not in BUILTIN_TOOLS]
                if not calls or last:
                    if calls:
                        log.warning(
                            "call %s turn %d: tool calls after the round cap ignored",
                            self.s.call_sid,
                            turn.index,
                        )
                    break
                high = [c.name for c in calls if self.tools.stakes(c.name) == "high"]
                if high and not escalated_here and self._answered_by_tier(turn) != "reasoning":
                    escalated_here = True
                    paths = self._escalate(turn, route, high[0])
                    rounds += 1
                    continue  # the reasoning tier decides again; the fast tier's call is not run
                rounds += 1
                said = "".join(ladder.spoken)
                outcomes = await self._tool_round(turn, ladder.tool_calls, on_pause, waiting_by)
                results = [o.message() for o in outcomes]
                results += [
                    {"role": "tool", "tool_call_id": c.id, "content": '{"ok": true}'}
                    for c in ladder.tool_calls
                    if c.name in BUILTIN_TOOLS
                ]
                history = [*history, assistant_message(ladder.tool_calls, said), *results]
        finally:
            self.tools.forget(turn.index)
        return wanted

    def _answered_by_tier(self, turn: TurnRecord) -> str | None:
        path = turn.usage.get("path")
        models = self.s.services.router.models(self.s.tenant)
        return models[path].tier if path in models else None

    def _escalate(self, turn: TurnRecord, route, tool: str) -> list[str]:
        """A high-stakes tool call: this turn goes to the reasoning tier, and the conversation stays
        escalated as after a high-stakes class (its class's ``step_down_after`` applies)."""
        conv = self.s.routing
        if not conv.escalated:
            conv.escalated, conv.escalated_by = True, route.routing_class
        conv.routine_since_escalation = 0
        table = self.s.services.router.table
        cell = table.cell(route.tenant, route.group, route.channel, route.routing_class)
        paths = list(cell.escalated_ladder)
        first = self.s.services.router.models(self.s.tenant)[paths[0]]
        log.info(
            "call %s turn %d: high-stakes tool %s: escalating to %s", self.s.call_sid, turn.index, tool, paths
        )
        if turn.route is not None:
            turn.route = dataclasses.replace(
                turn.route,
                tier=first.tier,
                model=first.model,
                paths=tuple(paths),
                escalated=True,
                stakes="high",
                reason=f"{turn.route.reason}; high-stakes tool {tool} -> escalate",
            )
        return paths

    async def _tool_round(self, turn: TurnRecord, calls, on_pause, waiting_by: float | None) -> list:
        """Run one round of business tool calls. If they are not back by ``waiting_by`` (when the
        answer's audio had to start), the first called tool's waiting phrase is spoken meanwhile
        (once per turn); without one, the watchdog's bridge covers the budget."""
        business = [c for c in calls if c.name not in BUILTIN_TOOLS]
        turn.mark("tool_request", self.s.clock.now())
        phrase = next((p for c in business if (p := self.tools.waiting_phrase(c.name, turn.language))), None)
        if turn.reply_answer or turn.bridge_kind == "tool":
            phrase = None
        if on_pause is not None:
            on_pause(None)
        async with asyncio.TaskGroup() as tg:
            # Never past the turn's hard cap (the watchdog's apology no longer guards a turn that spoke).
            left = turn.timeline["speech_end"] + self.s.config.budget.hard_cap_ms - self.s.clock.now()
            job = tg.create_task(self.tools.run(turn.index, business, limit_ms=left))
            if phrase and on_pause is not None:
                wait = 0.0 if waiting_by is None else max(0.0, waiting_by - self.s.clock.now()) / 1000
                done, _ = await asyncio.wait([job], timeout=wait)
                if not done:
                    on_pause(phrase)
            outcomes = await job
        turn.mark("tool_result", self.s.clock.now(), overwrite=True)
        turn.tools += [o.record() for o in outcomes]
        return outcomes


def _builtin_record(w: ToolRequest) -> dict:
    key = "reason" if w.name == TRANSFER_TO_HUMAN else "summary"
    return {"name": w.name, "arguments": redact_json({key: w.argument}), "status": "ok", "latency_ms": 0.0}


def with_guidance(history: list[dict], guidance: str) -> list[dict]:
    """``history`` with the class's instruction as a system line just before the caller's last words."""
    if not guidance or not history:
        return history
    return [*history[:-1], {"role": "system", "content": guidance}, history[-1]]


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
