"""The call log's tables (SQLAlchemy 2). One row per call, one row per turn.

The migrations in ``migrations/versions`` create exactly these tables; ``tests/test_calllog.py``
checks that the two agree. Times of day are UTC (``started_at``, ``ended_at``); a turn's timeline is
in milliseconds since the call started, one column per docs/design.md name (``speech_end_ms`` ...).
Caller numbers are stored as an HMAC-SHA256 (``caller_hash``); text is redacted before it gets here.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, MetaData, String, Table, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from voxroute.agent.timeline import TIMELINE_NAMES

# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")

# Stable constraint names, so migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


metadata = Base.metadata


class CallRow(Base):
    __tablename__ = "calls"

    call_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    stream_sid: Mapped[str | None] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    carrier: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    caller_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # HMAC-SHA256, hex
    caller_number: Mapped[str | None] = mapped_column(String(32))  # only with call_log.store_raw_numbers
    to_number: Mapped[str | None] = mapped_column(String(32))  # the business's number the caller dialled
    language: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended: Mapped[str] = mapped_column(String(16))  # in_progress, completed, caller_hung_up, handoff, error
    outcome: Mapped[str] = mapped_column(String(16))  # resolved, unresolved, handoff, unknown
    outcome_reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    mode: Mapped[str | None] = mapped_column(String(16))  # live or emulated providers
    policy: Mapped[str | None] = mapped_column(String(64), index=True)  # hash of the routing table in force
    routing_class: Mapped[str | None] = mapped_column(
        String(48)
    )  # the first routed turn's: reason for contact
    turn_count: Mapped[int] = mapped_column(Integer, default=0)  # set when the call ends
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)  # set when the call ends
    handoff: Mapped[dict | None] = mapped_column(JSONType)  # the handoff record (summary, transfer), redacted
    # Legs of the call: 2 once the caller came back from a failed transfer (or a second stream used
    # the same CallSid); later legs' turns continue the first leg's numbering.
    legs: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TurnRow(Base):
    __tablename__ = "turns"

    call_sid: Mapped[str] = mapped_column(
        String(64), ForeignKey("calls.call_sid", ondelete="CASCADE"), primary_key=True
    )
    turn_index: Mapped[int] = mapped_column(Integer, primary_key=True)  # numbered across legs
    leg: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # 1: the first stream
    kind: Mapped[str] = mapped_column(String(8))  # speech or dtmf
    transcript: Mapped[str | None] = mapped_column(Text)  # redacted
    language: Mapped[str | None] = mapped_column(String(16))
    routing_class: Mapped[str | None] = mapped_column(String(48), index=True)
    stakes: Mapped[str | None] = mapped_column(String(8))
    tier: Mapped[str | None] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(128))  # the route's first rung
    reason: Mapped[str | None] = mapped_column(Text)  # why the router chose this route
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    route: Mapped[dict | None] = mapped_column(JSONType)  # the whole decision
    answered_by: Mapped[str | None] = mapped_column(String(64))  # the model path that answered
    answered_model: Mapped[str | None] = mapped_column(String(128))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    usage: Mapped[dict | None] = mapped_column(JSONType)  # tokens and cost per model path
    budget_ms: Mapped[int | None] = mapped_column(Integer)
    first_audio_ms: Mapped[float | None] = mapped_column(Float)
    within_budget: Mapped[bool] = mapped_column(Boolean, default=False)
    bridge: Mapped[bool] = mapped_column(Boolean, default=False)
    bridge_kind: Mapped[str | None] = mapped_column(String(16))
    hedges: Mapped[int] = mapped_column(Integer, default=0)
    fallback_count: Mapped[int] = mapped_column(Integer, default=0)
    model_failures: Mapped[int] = mapped_column(Integer, default=0)  # fallbacks of the LLM ladder
    fallbacks: Mapped[list | None] = mapped_column(JSONType)  # each with its provider, kind, error, action
    tools: Mapped[list | None] = mapped_column(JSONType)  # business and built-in tool calls, arguments masked
    handoff: Mapped[bool] = mapped_column(Boolean, default=False)
    barged_in: Mapped[bool] = mapped_column(Boolean, default=False)  # the caller talked over the reply
    outcome: Mapped[str | None] = mapped_column(String(24))  # answered, apology, handoff, not_heard, ...
    reply: Mapped[str | None] = mapped_column(Text)  # redacted
    heard: Mapped[str | None] = mapped_column(Text)  # redacted: the part the caller heard
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The timeline: ms since the call started (docs/design.md's names)
    speech_end_ms: Mapped[float | None] = mapped_column(Float)
    endpoint_ms: Mapped[float | None] = mapped_column(Float)
    stt_final_ms: Mapped[float | None] = mapped_column(Float)
    route_ms: Mapped[float | None] = mapped_column(Float)
    llm_request_ms: Mapped[float | None] = mapped_column(Float)
    llm_first_token_ms: Mapped[float | None] = mapped_column(Float)
    tool_request_ms: Mapped[float | None] = mapped_column(Float)
    tool_result_ms: Mapped[float | None] = mapped_column(Float)
    first_chunk_text_ms: Mapped[float | None] = mapped_column(Float)
    first_chunk_ms: Mapped[float | None] = mapped_column(Float)
    tts_request_ms: Mapped[float | None] = mapped_column(Float)
    tts_first_audio_ms: Mapped[float | None] = mapped_column(Float)
    first_audio_out_ms: Mapped[float | None] = mapped_column(Float)
    first_audio_heard_ms: Mapped[float | None] = mapped_column(Float)
    bridge_out_ms: Mapped[float | None] = mapped_column(Float)
    done_ms: Mapped[float | None] = mapped_column(Float)


class CallStateRow(Base):
    """State of a call that requests to several processes need (agent/calllog/state.py): the
    conversation a leg back from a failed transfer continues, the handoff record, the human leg's
    dial result, Plivo's pending transfer, the operator's outcome. One row per (call, kind), as JSON;
    unredacted (the conversation goes on with it), and deleted after a few hours."""

    __tablename__ = "call_state"

    call_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(24), primary_key=True)
    value: Mapped[dict] = mapped_column(JSONType)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


# The timeline columns are docs/design.md's names with _ms: TurnRow declares each of them.
TIMELINE_COLUMNS = tuple(f"{name}_ms" for name in TIMELINE_NAMES)


def _table_of(row: type[Base]) -> Table:
    """The Table a declarative class made (SQLAlchemy types ``__table__`` as any FromClause)."""
    table = row.__table__
    assert isinstance(table, Table), f"{row.__name__} is not mapped to a Table"
    return table


calls_table = _table_of(CallRow)
turns_table = _table_of(TurnRow)
call_state_table = _table_of(CallStateRow)

missing = set(TIMELINE_COLUMNS) - set(turns_table.c.keys())
assert not missing, f"TurnRow lacks timeline columns {missing}"  # a new timeline name needs a column
