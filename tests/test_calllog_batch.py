"""The call log writes a batch of records with a few statements (``write_records``: rows folded per
call and per turn, one executemany per table and shape): the database must end up exactly as
writing the same records one at a time, in order, leaves it. SQLite always, PostgreSQL when
``VOXROUTE_TEST_POSTGRES_URL`` is set."""

from __future__ import annotations

import json
import time

from sqlalchemy import delete, select

from tests.test_calllog import _call, _turn, db_url  # noqa: F401 (db_url: the fixture)
from voxroute.agent.calllog.schema import calls_table, turns_table
from voxroute.agent.calllog.store import CallLog, make_engine, migrate, write_record, write_records

VOLATILE = {"updated_at", "recorded_at"}  # the write's own clock


def _records(tmp_path) -> list[dict]:
    """Two calls interleaved as the writer sees them: starts, turns, an operator's outcome in the
    middle, the end of A's first leg, A's second leg (a failed transfer came back; still running), B's
    end, and a duplicate of a turn record (a replayed spool)."""
    log = CallLog(make_engine("sqlite+aiosqlite://"), salt=b"salt", directory=tmp_path)
    t0 = time.time()
    a, b = _call("CA-a", started_at=t0), _call("CA-b", number="+91 98000 00002", started_at=t0 + 1)
    a_turns = [_turn(1), _turn(2, "billing_dispute", usage={"cost_usd": 0.01})]
    a_end = a | {"ended": "transferred", "ended_at": t0 + 20, "turns": a_turns, "handoff": {"to": "agent"}}
    a2 = a | {"leg": 2, "started_at": t0 + 30, "outcome": "resolved"}
    b_turns = [_turn(1, "faq"), _turn(2, "faq", interrupted=True, outcome="interrupted")]
    b_end = b | {"ended": "completed", "ended_at": t0 + 40, "turns": b_turns}
    items = [
        ("call", (a,)),
        ("turn", (a, a_turns[0])),
        ("call", (b,)),
        ("turn", (a, a_turns[1])),
        ("outcome", ("CA-a", "resolved", "card 4111 1111 1111 1111")),
        ("turn", (b, b_turns[0])),
        ("end", (a_end,)),
        ("call", (a2,)),
        ("turn", (a2, _turn(1, "order_tracking"))),
        ("turn", (a2, _turn(1, "order_tracking"))),
        ("turn", (b, b_turns[1])),
        ("outcome", ("CA-b", "unresolved", None)),
        ("end", (b_end,)),
    ]  # A's second leg still in progress
    # through JSON, as the writer reads them back from the spool
    return [json.loads(json.dumps(log._rows(kind, args))) for kind, args in items]


async def _tables(engine) -> tuple[list[dict], list[dict]]:
    async with engine.connect() as conn:
        calls = (await conn.execute(select(calls_table).order_by(calls_table.c.call_sid))).mappings().all()
        turns = (
            (
                await conn.execute(
                    select(turns_table).order_by(turns_table.c.call_sid, turns_table.c.turn_index)
                )
            )
            .mappings()
            .all()
        )
    strip = lambda rows: [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]  # noqa: E731
    return strip(calls), strip(turns)


async def test_a_batch_leaves_the_rows_that_one_record_at_a_time_would(db_url, tmp_path):  # noqa: F811
    records = _records(tmp_path)
    engine = make_engine(db_url)
    try:
        await migrate(engine)
        for record in records:  # one record per transaction, in order
            async with engine.begin() as conn:
                await write_record(conn, record)
        one_by_one = await _tables(engine)
        async with engine.begin() as conn:
            await conn.execute(delete(turns_table))
            await conn.execute(delete(calls_table))
        async with engine.begin() as conn:  # the whole batch in one transaction
            await write_records(conn, records)
        batched = await _tables(engine)
    finally:
        await engine.dispose()
    calls, turns = one_by_one
    assert len(calls) == 2 and len(turns) == 5  # A: 2 turns and 1 of its second leg; B: 2
    by_sid = {c["call_sid"]: c for c in calls}
    assert by_sid["CA-a"]["legs"] == 2 and by_sid["CA-a"]["turn_count"] == 2  # as its first leg ended
    assert by_sid["CA-b"]["outcome"] == "unknown"  # B's end record came after its outcome
    assert batched == one_by_one
