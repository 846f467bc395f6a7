"""What every call of one process shares: config, provider clients, router, cached phrases, live calls."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from voxroute.agent.calllog.redact import redact_call_async
from voxroute.agent.calllog.state import CallState
from voxroute.agent.callsummary import CallSummary
from voxroute.agent.config import Config
from voxroute.agent.providers.base import LLMProvider, ProviderError, STTProvider, TTSProvider
from voxroute.audio import WireFormat, pcm_to_wire
from voxroute.routing.router import Router

if TYPE_CHECKING:
    from voxroute.agent.link import CallStart
    from voxroute.agent.session import CallSession
    from voxroute.agent.webhook import WebhookSender


log = logging.getLogger("voxroute.services")


class Transfers(Protocol):
    """Hands a live call to a person (the runtime gives ``CarrierTransfers``: each call to its
    carrier's call control)."""

    async def transfer(
        self, call_sid: str, to: str, caller_id: str | None, say: str | None = None
    ) -> bool: ...

    async def hang_up(self, call_sid: str) -> bool: ...

    def can_transfer(self, call_sid: str) -> bool:
        """Whether this call's carrier has a call control here (else no transfer is offered)."""
        ...


class CallObserver(Protocol):
    """Sees every call and turn (the call log, /metrics). Must return at once and never raise:
    anything slow (a database write) goes through the observer's own queue."""

    def call_started(self, call: dict[str, Any]) -> None: ...

    def turn_finished(self, call: dict[str, Any], turn: dict[str, Any]) -> None: ...

    def call_ended(self, call: dict[str, Any]) -> None: ...


PHRASE_KINDS = ("bridge", "apology", "not_heard", "handoff", "transfer", "callback")


def comfort_tone(fmt: WireFormat, ms: int = 600) -> bytes:
    """Last resort when no phrase could be synthesised: a soft two-note chime, never silence (in the
    call's wire format)."""
    n = ms * 8
    t = np.arange(n) / 8000.0
    f = np.where(t < t[-1] / 2, 660.0, 523.0)
    env = np.minimum(1.0, np.minimum(t, t[-1] - t) * 20)
    return pcm_to_wire((np.sin(2 * math.pi * f * t) * env * 4000).astype("<i2").tobytes(), fmt)


class Services:
    def __init__(
        self,
        config: Config,
        stt: STTProvider,
        tts: TTSProvider,
        llms: dict[str, LLMProvider],
        router: Router,
        mode: str = "live",
        *,
        calls: dict[str, CallSession] | None = None,
        call_control: Transfers | None = None,
        webhooks: WebhookSender | None = None,
    ) -> None:
        self.config = config
        self.stt = stt
        self.tts = tts
        self.llms = llms
        self.router = router
        self.mode = mode  # "live" or "emulated": said in logs and call pages
        # call sid -> the live session that holds the call (the root shares the dict with what needs it)
        self.calls: dict[str, CallSession] = calls if calls is not None else {}
        # every live session (by identity: id(session)) -> (session, its leg of the call)
        self.streams: dict[int, tuple[CallSession, int]] = {}
        self._legs: OrderedDict[str, int] = OrderedDict()  # call sid -> legs so far (recent calls)
        self.finished: OrderedDict[str, CallSummary] = OrderedDict()
        self.call_control = call_control  # transfers and hang-ups (each carrier's own, in the runtime)
        self.webhooks = webhooks  # the handoff webhook
        self.handoffs: dict[str, dict[str, Any]] = {}  # call sid -> handoff record (summary, transfer)
        self.observers: list[CallObserver] = []  # call log, metrics (runtime adds them)
        # What other processes of the database must see (the resumed leg's conversation, the handoff
        # record, the human leg, the operator's outcome): the runtime gives the call log database's
        # store; without one (no call log) this process's memory is the only state.
        self.state = CallState(None)
        # (language, kind, voice, wire format) -> audio in that format: a phrase is synthesised once
        # per format its calls' carriers want (mu-law for Twilio, A-law for a PCMA SIP call, ...)
        self._phrases: dict[tuple[str, str, str | None, WireFormat], bytes] = {}
        self._phrase_locks: dict[tuple[str, str, str | None, WireFormat], asyncio.Lock] = {}

    # ---- calls

    def register(self, session: CallSession) -> None:
        """A new stream of a call. Each stream with a CallSid seen before (the caller back after a failed
        transfer, or a second stream while the first is live) is the call's next leg: the call log
        numbers its turns after the earlier legs'. A second live stream is kept alongside the first,
        which keeps the call's place (``calls``, the operator API) until it ends; neither can
        unregister the other."""
        sid = session.call_sid
        leg = self._legs.pop(sid, 0) + 1
        self._legs[sid] = leg
        while len(self._legs) > 4096:
            self._legs.popitem(last=False)
        self.streams[id(session)] = (session, leg)
        if sid in self.calls:
            log.warning("call %s: a second stream while one is live; kept alongside as leg %d", sid, leg)
        else:
            self.calls[sid] = session
        self._notify("call_started", self.call_json(sid, with_turns=False, session=session))

    def unregister(self, session: CallSession) -> None:
        sid = session.call_sid
        if id(session) not in self.streams:
            return  # not registered (or already gone)
        ended = self.call_json(sid, session=session)
        leg = self._leg(session)
        del self.streams[id(session)]
        if self.calls.get(sid) is session:
            del self.calls[sid]
            other = next((s for s, _ in self.streams.values() if s.call_sid == sid), None)
            if other is not None:  # the stream alongside takes the call's place
                self.calls[sid] = other
        self.finished[sid] = session.summary()
        self.finished.move_to_end(sid)
        while len(self.finished) > self.config.call_log.recent_calls:
            gone, _ = self.finished.popitem(last=False)
            self.handoffs.pop(gone, None)  # bounded with the calls it belongs to
        summary = self.finished[sid]
        if summary.ended == "handoff" and self.state.shared:  # the caller may come back, to any process
            self.state.put_nowait(sid, "call", self._conversation(summary, leg))
        self._notify("call_ended", ended)

    # ---- state shared with the other processes of the database (agent/calllog/state.py)

    @staticmethod
    def _conversation(summary: CallSummary, leg: int) -> dict[str, Any]:
        return {"leg": leg, "summary": dataclasses.asdict(summary)}

    async def save_conversation(self, session: CallSession) -> None:
        """Before a transfer is asked for: the conversation so far, for the process that the caller's
        stream reaches if the human leg fails (bounded wait; a failure is logged, the transfer goes on)."""
        if self.state.shared:
            await self.state.put(
                session.call_sid, "call", self._conversation(session.summary(), self._leg(session))
            )

    async def before_call(self, start: CallStart) -> None:
        """A stream is about to become a call session. A caller back from a failed transfer
        (``resume=transfer_failed``) continues the earlier leg's conversation, which another process
        may have held: it comes from the shared store into ``finished`` (what the session continues)
        with its leg number. The read is bounded; without an answer, what this process knows."""
        if not self.state.shared or start.parameters.get("resume") != "transfer_failed":
            return
        sid = start.call_sid
        value = await self.state.get(sid, "call")
        if value is None:
            return
        try:
            leg = int(value["leg"])
            summary = CallSummary(**value["summary"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("call %s: the stored conversation is unreadable (%s); starting afresh", sid, exc)
            return
        if self._legs.get(sid, 0) > leg:  # this process saw a later leg than the store did
            return
        self.finished[sid] = summary
        self.finished.move_to_end(sid)
        self._legs[sid] = leg
        log.info(
            "call %s: leg %d's conversation (%d turns) from the shared call state",
            sid,
            leg,
            len(summary.turns),
        )

    async def save_handoff(self, call_sid: str, record: dict[str, Any], *, wait: bool = True) -> None:
        """The handoff record (summary, whisper, transfer): here, and for every process (``wait``: until
        it is written, bounded; else queued)."""
        self.handoffs[call_sid] = record
        if not self.state.shared:
            return
        if wait:
            await self.state.put(call_sid, "handoff", record)
        else:
            self.state.put_nowait(call_sid, "handoff", record)

    async def handoff_record(self, call_sid: str) -> dict[str, Any] | None:
        """The call's handoff record with the human leg's result, as any process last wrote them;
        this process's own when the store has none or does not answer in time."""
        local = self.handoffs.get(call_sid)
        stored = await self.state.get_many(call_sid, ("handoff", "human_leg")) if self.state.shared else None
        if not stored or "handoff" not in stored:
            return local
        record = dict(stored["handoff"])
        if "human_leg" in stored:
            record["human_leg"] = stored["human_leg"]
        return record

    async def dial_result(self, call_sid: str, human_leg: dict[str, Any]) -> None:
        """How the human leg of a transfer ended (the carrier's dial action, on any process). Not
        connected: the caller comes back, maybe here, and that leg's record carries the handoff."""
        record = self.handoffs.get(call_sid)
        if record is None and self.state.shared and not human_leg.get("connected"):
            stored = await self.state.get(call_sid, "handoff")
            if stored is not None:  # the transfer was asked for by another process
                record = self.handoffs[call_sid] = dict(stored)
                while len(self.handoffs) > 2 * self.config.call_log.recent_calls:
                    self.handoffs.pop(next(iter(self.handoffs)))
        if record is not None:
            record["human_leg"] = human_leg
        if self.state.shared:
            await self.state.put(call_sid, "human_leg", human_leg)
            if human_leg.get("connected"):  # the caller is with a person: no leg will continue
                await self.state.delete(call_sid, "call")

    async def share_outcome(self, call_sid: str, outcome: str, reason: str | None) -> None:
        """The operator's verdict, for the process that holds the live call (``take_outcome``)."""
        await self.state.put(call_sid, "outcome", {"outcome": outcome, "reason": reason, "at": time.time()})

    async def take_outcome(self, session: CallSession) -> None:
        """The end of a leg: an operator's verdict given during it through another process becomes
        the session's (its end record carries it to the call log). Bounded; never raises."""
        if not self.state.shared:
            return
        value = await self.state.get(session.call_sid, "outcome")
        if value is None or float(value.get("at") or 0) < session.started_wall:
            return
        if value.get("outcome") != session.outcome:
            log.info("call %s: outcome %s set by the operator through another process", session.call_sid,
                     value.get("outcome"))  # fmt: skip
        session.outcome, session.outcome_reason = value.get("outcome") or session.outcome, value.get("reason")

    def turn_finished(self, session: CallSession, turn: Any) -> None:
        call = self.call_json(session.call_sid, with_turns=False, session=session)
        self._notify("turn_finished", call, turn.as_dict())

    def _leg(self, session: CallSession) -> int:
        return self.streams.get(id(session), (session, 1))[1]

    def _notify(self, what: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, what)(*args)
            except Exception:  # an observer's bug must not end a call
                log.exception("call observer %r failed in %s", observer, what)

    def call_json(
        self, call_sid: str, *, with_turns: bool = True, session: CallSession | None = None
    ) -> dict[str, Any] | None:
        """A call as the API, the call log and replay JSON see it (``with_turns=False``: the header only).
        ``session``: that stream of the call (a call can have two at once), else the one in ``calls``."""
        live = session if session is not None else self.calls.get(call_sid)
        summary = live.summary() if live is not None else self.finished.get(call_sid)
        if summary is None:
            return None
        data = {
            "call_sid": summary.call_sid,
            "stream_sid": summary.stream_sid,
            "tenant": summary.tenant,
            "carrier": summary.carrier,
            "channel": summary.channel,
            "from_number": summary.from_number,
            "to_number": summary.to_number,
            "language": summary.language,
            "started_at": summary.started_at,
            "ended_at": summary.ended_at,
            "ended": summary.ended,
            "outcome": summary.outcome,
            "outcome_reason": summary.outcome_reason,
            "error": summary.error,
            "mode": self.mode,
            "policy": self.router.policy_version,
            "leg": self._leg(live) if live is not None else self._legs.get(call_sid, 1),
        }
        if with_turns:
            data.update(
                turns=summary.turns,
                history=summary.history,
                merged_turns=summary.merged,
                faults=summary.faults,
                handoff=self.handoffs.get(summary.call_sid),
            )
        return data

    async def call_view(self, call_sid: str) -> dict[str, Any] | None:
        """``call_json`` as an operator sees it: redacted exactly as the call log stores it (numbers
        split over turns too; the caller's number only if the call log keeps it raw); long calls are
        redacted off the event loop."""
        data = self.call_json(call_sid)
        if data is None:
            return None
        return await redact_call_async(data, keep_number=self.config.call_log.store_raw_numbers)

    # ---- cached phrases (bridge, apology, not heard): synthesised once per language and wire format

    def phrase_text(self, language: str, kind: str) -> str:
        agent = self.config.agent
        table = {
            "bridge": agent.bridge_phrases,
            "apology": agent.apology_phrases,
            "not_heard": agent.not_heard_phrases,
            "handoff": agent.handoff_phrases,
            "transfer": agent.transfer_phrases,
            "callback": agent.callback_phrases,
            "closing": agent.closing_phrases,
        }
        return self.config.phrase(table[kind], language)

    async def phrase(self, language: str, kind: str, voice: str | None, fmt: WireFormat) -> bytes:
        """The phrase's audio in ``fmt`` (the call's ``link.audio_format``), synthesised once per
        (language, kind, voice, format); ``voice``: the tenant's speaker for the language
        (agent/agentdef.py), None: the provider's default."""
        key = (language, kind, voice, fmt)
        if key in self._phrases:
            return self._phrases[key]
        lock = self._phrase_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._phrases:
                audio = await self._synthesise(language, kind, voice, fmt)
                if audio is None:
                    return comfort_tone(fmt)  # not cached: the next call tries the TTS again
                self._phrases[key] = audio
        return self._phrases[key]

    async def _synthesise(self, language: str, kind: str, voice: str | None, fmt: WireFormat) -> bytes | None:
        text = self.phrase_text(language, kind)
        for attempt in range(3):
            try:
                async with asyncio.timeout(2.0):
                    audio = await self.tts.synthesize(text, language, voice=voice, tag="phrases", fmt=fmt)
                if audio:
                    return audio
            except (ProviderError, TimeoutError) as exc:
                log.warning(
                    "could not synthesise %s phrase for %s (attempt %d): %s", kind, language, attempt + 1, exc
                )
        log.error("using a comfort tone for the %s phrase in %s", kind, language)
        return None

    async def warm_phrases(self, language: str, voice: str | None, fmt: WireFormat) -> None:
        """At call start: make sure the bridge and apology for the call's language and format are cached."""
        for kind in PHRASE_KINDS:
            await self.phrase(language, kind, voice, fmt)
