"""What a call leaves behind: :class:`CallSummary`, the record of one call session.

It is what ``CallSession.run`` returns and what the call observers keep (agent/services.py: the
finished calls, the call log, the shared store a resumed leg reads back), so it is plain data
(``CallSummary(**json)`` rebuilds one) and this module imports nothing of the session's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
