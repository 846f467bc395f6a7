"""The call pages' view of the call log: past calls, read back from the database.

``DatabaseCallSource`` is a ``CallSource`` (agent/pages.py) over the ``calls`` and ``turns`` tables:
it rebuilds the dict ``Services.call_json`` gives (times as epoch seconds, each turn shaped as
``TurnRecord.as_dict``, its timeline from the ``*_ms`` columns), so the pages render a call from the
database exactly as one from memory. Text is what the call log stored: redacted.

``CombinedCallSource`` puts the two together: the in-memory record wins while the process holds the
call (live, or recently finished, unredacted), the database answers for the rest, so ``GET /calls``
still lists yesterday's calls after a restart.

Reads are bounded by ``READ_TIMEOUT_S``; a database that is down or slow raises, and the pages turn
that into their 503. Nothing here is on the call path: the writer (agent/calllog/store.py) shares
the engine, not any state.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from voxroute.agent.calllog.schema import calls_table, turns_table
from voxroute.agent.pages import LIST_LIMIT, CallSource, call_summary
from voxroute.agent.timeline import TIMELINE_NAMES

READ_TIMEOUT_S = 5.0  # a page waits this long for the database, then says it is unavailable
INDEX_LIMIT = 100  # sids per list in the JSON index, as the memory source gives
SIMULATED_MODES = ("emulated", "local")  # modes whose LLM answers came from emulators


# ---------------------------------------------------------------- rows -> call dicts (pure)


def _epoch(value: datetime | None) -> float | None:
    """SQLite hands back naive datetimes (the writer stored UTC); PostgreSQL aware ones."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def call_header(row: RowMapping) -> dict[str, Any]:
    """The ``Services.call_json`` header of a calls row (``from_number`` only if stored raw)."""
    return {
        "call_sid": row["call_sid"],
        "stream_sid": row["stream_sid"],
        "tenant": row["tenant"],
        "carrier": row["carrier"],
        "channel": row["channel"],
        "from_number": row["caller_number"],
        "to_number": row["to_number"],
        "language": row["language"],
        "started_at": _epoch(row["started_at"]),
        "ended_at": _epoch(row["ended_at"]),
        "ended": row["ended"],
        "outcome": row["outcome"],
        "outcome_reason": row["outcome_reason"],
        "error": row["error"],
        "mode": row["mode"],
        "policy": row["policy"],
        "source": "call_log",  # redacted text; no history, faults or audio
    }


def turn_dict(row: RowMapping, simulated: bool = False) -> dict[str, Any]:
    """A turns row as ``TurnRecord.as_dict`` shapes it (chunks, tools, overlaps are not stored)."""
    route = row["route"]
    if route is None and row["routing_class"] is not None:  # an older row: the columns alone
        route = {
            "class": row["routing_class"],
            "stakes": row["stakes"],
            "tier": row["tier"],
            "model": row["model"],
            "reason": row["reason"],
            "escalated": row["escalated"],
        }
    turn = {
        "index": row["turn_index"],
        "kind": row["kind"],
        "transcript": row["transcript"] or "",
        "language": row["language"],
        "route": route,
        "timeline": {n: row[f"{n}_ms"] for n in TIMELINE_NAMES if row[f"{n}_ms"] is not None},
        "first_audio_ms": row["first_audio_ms"],
        "budget_ms": row["budget_ms"],
        "within_budget": row["within_budget"],
        "bridge": row["bridge"],
        "bridge_kind": row["bridge_kind"],
        "handoff": row["handoff"],
        "fallbacks": row["fallbacks"] or [],
        "reply": row["reply"] or "",
        "heard": row["heard"] or "",
        "interrupted": row["barged_in"],
        "outcome": row["outcome"],
        "usage": row["usage"] or {},
    }
    if simulated:
        turn["llm"] = "simulated LLM"
    return turn


def call_dict(call: RowMapping, turns: list[RowMapping]) -> dict[str, Any]:
    simulated = call["mode"] in SIMULATED_MODES
    return {
        **call_header(call),
        "turns": [turn_dict(t, simulated) for t in turns],
        "handoff": call["handoff"],
    }


# ---------------------------------------------------------------- the sources


class DatabaseCallSource:
    """Calls as the call log stored them. Until the writer has created the tables (a fresh database,
    no call yet) there are simply no calls."""

    def __init__(self, engine: AsyncEngine, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self._tables_exist = False  # once seen, never asked again

    async def _ready(self, conn: AsyncConnection) -> bool:
        if not self._tables_exist:
            self._tables_exist = await conn.run_sync(lambda sync: inspect(sync).has_table(turns_table.name))
        return self._tables_exist

    async def index(self) -> dict[str, Any]:
        """The newest ``INDEX_LIMIT`` calls, oldest first as the memory source lists them; calls
        still ``in_progress`` in the database (here or in another process) are ``active``."""
        c = calls_table.c
        async with asyncio.timeout(self.timeout_s), self.engine.connect() as conn:
            if not await self._ready(conn):
                return {"active": [], "finished": []}
            newest = (
                await conn.execute(
                    select(c.call_sid, c.ended).order_by(c.started_at.desc()).limit(2 * INDEX_LIMIT)
                )
            ).all()
        rows = list(reversed(newest))
        active = [sid for sid, ended in rows if ended == "in_progress"]
        finished = [sid for sid, ended in rows if ended != "in_progress"]
        return {"active": sorted(active[-INDEX_LIMIT:]), "finished": finished[-INDEX_LIMIT:]}

    async def recent(self, limit: int = LIST_LIMIT, tenant: str | None = None) -> list[dict[str, Any]]:
        """Newest first, as ``call_summary`` rows: the header from ``calls``, and from ``turns`` only
        the columns the summary needs."""
        c, t = calls_table.c, turns_table.c
        newest = select(calls_table).order_by(c.started_at.desc(), c.call_sid).limit(limit)
        if tenant:
            newest = newest.where(c.tenant == tenant)
        async with asyncio.timeout(self.timeout_s), self.engine.connect() as conn:
            if not await self._ready(conn):
                return []
            calls = (await conn.execute(newest)).mappings().all()
            sids = [row["call_sid"] for row in calls]
            turns = (
                await conn.execute(
                    select(t.call_sid, t.first_audio_ms, t.budget_ms, t.cost_usd).where(t.call_sid.in_(sids))
                )
            ).all()
        by_call: dict[str, list[dict[str, Any]]] = {sid: [] for sid in sids}
        for sid, first_audio, budget, cost in turns:
            by_call[sid].append(
                {"first_audio_ms": first_audio, "budget_ms": budget, "usage": {"cost_usd": cost}}
            )
        return [
            call_summary({**call_header(row), "handoff": row["handoff"], "turns": by_call[row["call_sid"]]})
            for row in calls
        ]

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        async with asyncio.timeout(self.timeout_s), self.engine.connect() as conn:
            if not await self._ready(conn):
                return None
            call = (
                (await conn.execute(select(calls_table).where(calls_table.c.call_sid == call_sid)))
                .mappings()
                .first()
            )
            if call is None:
                return None
            turns = (
                (
                    await conn.execute(
                        select(turns_table)
                        .where(turns_table.c.call_sid == call_sid)
                        .order_by(turns_table.c.turn_index)
                    )
                )
                .mappings()
                .all()
            )
        return call_dict(call, list(turns))


class CombinedCallSource:
    """This process's calls first (live, or finished and still held: whole and unredacted), the call
    log for everything else. Lists are merged newest first, one row per call."""

    def __init__(self, memory: CallSource, database: CallSource) -> None:
        self.memory = memory
        self.database = database

    async def index(self) -> dict[str, Any]:
        """``active``: this process's live calls. ``finished``: the call log's newest calls this
        process does not hold, then its own finished ones (the newest ``INDEX_LIMIT`` in all)."""
        mem = await self.memory.index()
        db = await self.database.index()
        held = {*mem["active"], *mem["finished"]}
        older = [sid for sid in (*db["active"], *db["finished"]) if sid not in held]
        return {"active": mem["active"], "finished": [*older, *mem["finished"]][-INDEX_LIMIT:]}

    async def recent(self, limit: int = LIST_LIMIT, tenant: str | None = None) -> list[dict[str, Any]]:
        rows = {r["call_sid"]: r for r in await self.database.recent(limit, tenant=tenant)}
        rows.update((r["call_sid"], r) for r in await self.memory.recent(limit, tenant=tenant))
        merged = sorted(rows.values(), key=lambda r: r.get("started_at") or 0.0, reverse=True)
        return merged[:limit]

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        data = await self.memory.get(call_sid)
        if data is not None:
            return data
        return await self.database.get(call_sid)


__all__ = ["CombinedCallSource", "DatabaseCallSource", "call_dict", "turn_dict"]
