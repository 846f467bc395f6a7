"""The turn record: docs/design.md's timeline names, the route, and what went wrong.

Times are monotonic milliseconds relative to the call's start (the carrier's ``start``).
The same names appear in the log line, the replay JSON and (later) the call log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from voxroute.routing.route import Route

TIMELINE_NAMES = (
    "speech_end",
    "endpoint",
    "stt_final",
    "route",
    "llm_request",
    "llm_first_token",
    "tool_request",  # the first business tool call of the turn went out (agent/tools)
    "tool_result",  # the last tool result came back
    # the model's text that completed the first speakable chunk reached the turn: from here to
    # first_chunk is the runtime's (chunking); before it, the model was still streaming
    "first_chunk_text",
    "first_chunk",
    "tts_request",
    "tts_first_audio",
    "first_audio_out",
    "first_audio_heard",
    "bridge_out",
    "done",
)

# Ends the heard part of a reply the caller talked over, so the model knows it was cut short.
INTERRUPTED_MARK = "[interrupted by the caller]"


class Clock:
    """Monotonic ms since the call started."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * 1000.0

    def at(self, monotonic_s: float) -> float:
        return (monotonic_s - self._t0) * 1000.0


@dataclass
class TurnRecord:
    index: int
    kind: str = "speech"  # "speech" or "dtmf"
    transcript: str = ""
    language: str = "en-IN"
    budget_ms: int = 1000
    route: Route | None = None  # the router's decision (Route.unrouted: the greeting, nothing heard)
    timeline: dict[str, float] = field(default_factory=dict)
    bridge: bool = False
    bridge_kind: str | None = None  # "cached" (the phrase) or "ack" (the fast path's acknowledgement)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    reply: str = ""  # everything the agent said (or started to say) in this turn
    reply_answer: str = ""  # the answer's part of the reply (without an acknowledgement)
    stt_confidence: float | None = None
    handoff: bool = False  # the turn asks for a human (the caller did, or failure hands off)
    heard: str = ""  # the part whose audio the caller heard (mark echoes)
    interrupted: bool = False
    outcome: str = "answered"  # answered, apology, handoff, not_heard, interrupted
    usage: dict[str, Any] = field(default_factory=dict)
    chunks: list[str] = field(default_factory=list)
    # tool calls the model made: {name, arguments (masked), status ok|error|timeout, latency_ms, ...}
    tools: list[dict[str, Any]] = field(default_factory=list)
    overlaps: list[dict[str, Any]] = field(
        default_factory=list
    )  # caller sounds over the agent that did not interrupt

    def mark(self, name: str, t: float, *, overwrite: bool = False) -> None:
        if name not in TIMELINE_NAMES:
            raise KeyError(name)
        if overwrite or name not in self.timeline:
            self.timeline[name] = round(t, 1)

    @property
    def first_audio_ms(self) -> float | None:
        if "first_audio_out" in self.timeline and "speech_end" in self.timeline:
            return round(self.timeline["first_audio_out"] - self.timeline["speech_end"], 1)
        return None

    @property
    def within_budget(self) -> bool:
        fa = self.first_audio_ms
        return fa is not None and fa <= self.budget_ms

    def add_fallback(self, provider: str, kind: str, message: str, action: str, **extra: Any) -> None:
        item = {"provider": provider, "kind": kind, "error": message[:300], "action": action}
        item.update(extra)
        self.fallbacks.append(item)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "transcript": self.transcript,
            "language": self.language,
            "route": self.route.as_dict() if self.route is not None else None,
            "timeline": {k: self.timeline[k] for k in TIMELINE_NAMES if k in self.timeline},
            "first_audio_ms": self.first_audio_ms,
            "budget_ms": self.budget_ms,
            "within_budget": self.within_budget,
            "bridge": self.bridge,
            "bridge_kind": self.bridge_kind,
            "handoff": self.handoff,
            "fallbacks": self.fallbacks,
            "reply": self.reply,
            "heard": self.heard,
            "interrupted": self.interrupted,
            "outcome": self.outcome,
            "usage": self.usage,
            "chunks": self.chunks,
            "tools": self.tools,
            "overlaps": self.overlaps,
        }


_log = logging.getLogger("voxroute.call")


def log_turn(call_sid: str, turn: TurnRecord) -> None:
    """The turn's log line: its route, cost, first audio and the whole timeline."""
    tl = turn.timeline
    route = turn.route.as_dict() if turn.route is not None else {}  # as logged elsewhere
    _log.info(
        "turn call=%s index=%d class=%s escalated=%s model=%s answered_by=%s cost_usd=%s first_audio_ms=%s "
        "budget_ms=%d within=%s bridge=%s fallbacks=%d outcome=%s reason=%r speech_end=%s endpoint=%s stt_final=%s llm_first_token=%s "
        "tts_first_audio=%s first_audio_out=%s first_audio_heard=%s done=%s",
        call_sid,
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
