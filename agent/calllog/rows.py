"""Call log records to rows (pure: caller numbers hashed with the per-deployment salt, text
redacted) and rows to the database (upserts keyed by ``call_sid`` or ``(call_sid, turn_index)``, so
a record written twice never duplicates anything)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Table, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from voxroute.agent.calllog.redact import redact, redact_handoff, redact_json
from voxroute.agent.calllog.schema import calls_table, turns_table
from voxroute.agent.timeline import TIMELINE_NAMES
from voxroute.routing.route import Route

SALT_FILE = "caller_salt"


# ---------------------------------------------------------------- the per-deployment salt


def caller_salt(directory: Path, env: Mapping[str, str] | None = None) -> bytes:
    """``VOXROUTE_CALLER_SALT``, else a random salt kept in the data directory (created once; every
    process sharing the directory uses it). Deployments on several hosts set the variable."""
    env = os.environ if env is None else env
    if value := (env.get("VOXROUTE_CALLER_SALT") or "").strip():
        return value.encode()
    path = directory / SALT_FILE
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    for _ in range(50):  # another process may have created it a moment ago and be writing it
        salt = path.read_text().strip()
        if salt:
            return salt.encode()
        time.sleep(0.01)
    raise RuntimeError(f"{path}: the caller salt file is empty; delete it or set $VOXROUTE_CALLER_SALT")


def normalise_number(number: str) -> str:
    """Digits only, with the + of an international number kept: one caller, one hash."""
    digits = "".join(ch for ch in number if ch.isdigit())
    return ("+" if number.strip().startswith("+") else "") + digits


def caller_hash(number: str | None, salt: bytes) -> str | None:
    if not number or not normalise_number(number).strip("+"):
        return None
    return hmac.new(salt, normalise_number(number).encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- records -> rows (pure)


def _ts(seconds: float | None) -> float | None:
    return None if seconds is None else float(seconds)


def call_header(call: dict[str, Any], salt: bytes, store_raw_numbers: bool) -> dict[str, Any]:
    """The calls row's fields known from the start of a call (times as epoch seconds, JSON-safe)."""
    number = call.get("from_number")
    return {
        "call_sid": call["call_sid"],
        "stream_sid": call.get("stream_sid"),
        "tenant": call.get("tenant") or "default",
        "carrier": call.get("carrier") or "unknown",
        "channel": call.get("channel") or "voice",
        "caller_hash": caller_hash(number, salt),
        "caller_number": normalise_number(number) if (store_raw_numbers and number) else None,
        "to_number": call.get("to_number"),
        "language": call.get("language") or "",
        "started_at": _ts(call.get("started_at")) or time.time(),
        "ended_at": _ts(call.get("ended_at")),
        "ended": call.get("ended") or "in_progress",
        "outcome": call.get("outcome") or "unknown",
        "outcome_reason": redact(call.get("outcome_reason")),
        "error": redact(call.get("error")),
        "mode": call.get("mode"),
        "policy": call.get("policy"),
        "legs": int(call.get("leg") or 1),  # this record's leg: the row keeps the highest seen
    }


def call_totals(call: dict[str, Any]) -> dict[str, Any]:
    """What only the end of a call knows: turn count, cost, the reason for contact, the handoff."""
    turns = call.get("turns") or []
    routes = (Route.from_dict(t.get("route")) for t in turns)
    first_routed = next((route for route in routes if route is not None), None)
    return {
        "turn_count": len(turns),
        "cost_usd": round(sum(float((t.get("usage") or {}).get("cost_usd") or 0.0) for t in turns), 8),
        "routing_class": first_routed.routing_class if first_routed else None,
        "handoff": redact_handoff(call.get("handoff")),
    }


def is_model_failure(fallback: dict[str, Any]) -> bool:
    """A fallback of the LLM ladder (or the hard cap: no answer at all); not STT or TTS trouble."""
    return fallback.get("service") == "llm" or fallback.get("provider") == "runtime"


def turn_row(call_sid: str, turn: dict[str, Any]) -> dict[str, Any]:
    route = turn.get("route") or {}
    usage = turn.get("usage") or {}
    fallbacks = redact_json(turn.get("fallbacks") or [])
    timeline = turn.get("timeline") or {}
    row = {
        "call_sid": call_sid,
        "turn_index": int(turn["index"]),
        "kind": turn.get("kind") or "speech",
        "transcript": redact(turn.get("transcript")),
        "language": turn.get("language"),
        "routing_class": route.get("class"),
        "stakes": route.get("stakes"),
        "tier": route.get("tier"),
        "model": route.get("model"),
        "reason": redact(route.get("reason")),
        "escalated": bool(route.get("escalated")),
        "route": redact_json(route) if route else None,
        "answered_by": usage.get("path"),
        "answered_model": usage.get("model"),
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "cost_usd": float(usage.get("cost_usd") or 0.0),
        "usage": usage or None,
        "budget_ms": turn.get("budget_ms"),
        "first_audio_ms": turn.get("first_audio_ms"),
        "within_budget": bool(turn.get("within_budget")),
        "bridge": bool(turn.get("bridge")),
        "bridge_kind": turn.get("bridge_kind"),
        "hedges": int(usage.get("hedges") or 0),
        "fallback_count": len(fallbacks),
        "model_failures": sum(is_model_failure(f) for f in fallbacks),
        "fallbacks": fallbacks,
        "tools": redact_json(turn.get("tools")) or None,
        "handoff": bool(turn.get("handoff")),
        "barged_in": bool(turn.get("interrupted")),
        "outcome": turn.get("outcome"),
        "reply": redact(turn.get("reply")),
        "heard": redact(turn.get("heard")),
    }
    for name in TIMELINE_NAMES:
        row[f"{name}_ms"] = timeline.get(name)
    return row


# ---------------------------------------------------------------- rows -> database


def _dt(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


_UPSERTS: dict[tuple[str, str, tuple[str, ...]], Any] = {}  # (dialect, table, columns) -> statement


def _upsert_statement(dialect: str, table: Table, columns: tuple[str, ...], keys: tuple[str, ...]):
    """The upsert of rows with these columns, built once per shape (building it costs ~100 us of
    SQLAlchemy on the event loop; a batch of records executes it once, as an executemany)."""
    cache_key = (dialect, table.name, columns)
    stmt = _UPSERTS.get(cache_key)
    if stmt is not None:
        return stmt
    insert = sqlite_insert(table) if dialect == "sqlite" else pg_insert(table)
    new = insert.excluded
    set_: dict[str, ColumnElement[Any]] = {c: new[c] for c in columns if c not in keys}
    if table is calls_table:  # a call with several legs: it began with the first, has the most legs
        c = calls_table.c
        set_["started_at"] = case((c.started_at < new.started_at, c.started_at), else_=new.started_at)
        if "legs" in columns:
            set_["legs"] = case((c.legs > new.legs, c.legs), else_=new.legs)
    stmt = _UPSERTS[cache_key] = insert.on_conflict_do_update(index_elements=list(keys), set_=set_)
    return stmt


async def _upsert_many(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]], keys: tuple[str, ...]
) -> None:
    """Rows as upserts, one executemany per shape (set of columns), rows of a shape in order."""
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        shapes.setdefault(tuple(row), []).append(row)
    for columns, same in shapes.items():
        await conn.execute(_upsert_statement(conn.dialect.name, table, columns, keys), same)


async def _call_totals_from_turns(conn: AsyncConnection, call_sid: str) -> None:
    """A call's turn count, cost and reason for contact from its turns rows: right for every leg."""
    t = turns_table.c
    of_call = t.call_sid == call_sid
    first_class = (
        select(t.routing_class)
        .where(of_call, t.routing_class.is_not(None))
        .order_by(t.turn_index)
        .limit(1)
        .scalar_subquery()
    )
    await conn.execute(
        update(calls_table)
        .where(calls_table.c.call_sid == call_sid)
        .values(
            turn_count=select(func.count()).where(of_call).scalar_subquery(),
            cost_usd=select(func.coalesce(func.sum(t.cost_usd), 0.0)).where(of_call).scalar_subquery(),
            routing_class=first_class,
        )
    )


async def write_record(conn: AsyncConnection, record: dict[str, Any]) -> None:
    """One record (``kind``: call, turn, outcome) as upserts: writing it again changes nothing."""
    await write_records(conn, [record])


async def write_records(conn: AsyncConnection, records: list[dict[str, Any]]) -> None:
    """Records in order, as upserts (writing them again changes nothing), with a few statements per
    batch instead of a few per record: the rows of a call and of a turn are folded in Python first,
    exactly as the upserts one after another would leave them (a calls row keeps the columns of the
    last record that had them, the earliest ``started_at`` and the most ``legs``; a turns row is its
    last version). An ``outcome`` record is written where it stands: the rows before it go first; so
    are a call's totals at the end of a leg, before the turns of its next leg."""
    now = datetime.now(UTC)
    calls: dict[str, dict[str, Any]] = {}
    turns: dict[tuple[str, int], dict[str, Any]] = {}
    totals: list[str] = []  # calls whose leg ended: totals over all of their legs

    async def write_folded() -> None:
        if calls:
            await _upsert_many(conn, calls_table, list(calls.values()), ("call_sid",))
        if turns:
            await _upsert_many(conn, turns_table, list(turns.values()), ("call_sid", "turn_index"))
        for sid in dict.fromkeys(totals):
            await _call_totals_from_turns(conn, sid)
        calls.clear()
        turns.clear()
        totals.clear()

    for record in records:
        kind = record["kind"]
        if kind in ("call", "turn"):
            call = dict(record["call"])
            sid = call["call_sid"]
            if sid in totals and record.get("turns"):
                await write_folded()  # the ended leg's totals before the next leg's turns, as in order
            call["started_at"], call["ended_at"] = _dt(call["started_at"]), _dt(call.get("ended_at"))
            call["updated_at"] = now
            if (before := calls.get(sid)) is not None:
                call = {**before, **call}  # later columns win; the first leg's start, the most legs
                call["started_at"] = min(before["started_at"], call["started_at"])
                call["legs"] = max(before.get("legs") or 1, call.get("legs") or 1)
            calls[sid] = call
            for turn in record.get("turns") or ():
                turns[(sid, turn["turn_index"])] = {**turn, "recorded_at": now}
            if "turn_count" in record["call"]:  # the end of a leg
                totals.append(sid)
        elif kind == "outcome":
            await write_folded()
            await conn.execute(
                update(calls_table)
                .where(calls_table.c.call_sid == record["call_sid"])
                .values(outcome=record["outcome"], outcome_reason=record["reason"], updated_at=now)
            )
        else:
            raise ValueError(f"unknown call log record kind {kind!r}")
    await write_folded()
