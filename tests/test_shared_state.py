"""Call state shared by the processes of one database (issue 15, part 3: agent/calllog/state.py).

The store on its own (two stores on one database, as two processes have), then whole calls: two
runtime servers on 127.0.0.1 (A and B, each its own ``Services``, engine and call log) sharing one
database, SQLite or PostgreSQL (``VOXROUTE_TEST_POSTGRES_URL``, ``.ci/postgres.sh``; each test gets
a database of its own). A call's first leg runs on A; the whisper, the dial action and the caller's
resumed stream reach B, and the conversation goes on with its history.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text

from agent.calllog.state import CallState
from agent.calllog.store import make_engine, migrate
from tests.conftest import services_required

PG_URL_ENV = "VOXROUTE_TEST_POSTGRES_URL"


# ---------------------------------------------------------------- databases


def _postgres_url() -> str:
    url = os.environ.get(PG_URL_ENV, "").strip()
    if not url:
        reason = f'PostgreSQL not configured: set ${PG_URL_ENV} (eval "$(.ci/postgres.sh)")'
        if services_required():
            pytest.fail(reason)
        pytest.skip(reason)
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


@asynccontextmanager
async def _postgres_database() -> AsyncIterator[str]:
    """A database of this test's own on the test server (others run in parallel), dropped after."""
    base = _postgres_url()
    name = f"voxroute_state_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base).execution_options(isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request, tmp_path) -> AsyncIterator[str]:
    """An empty database of each kind, its schema migrated."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'voxroute.db'}"
        await _migrated(url)
        yield url
        return
    async with _postgres_database() as url:
        await _migrated(url)
        yield url


async def _migrated(url: str) -> None:
    engine = make_engine(url)
    await migrate(engine)
    await engine.dispose()


@asynccontextmanager
async def running(*stores: CallState) -> AsyncIterator[None]:
    """Each store's writer in a task group, as the runtime owns it."""
    async with asyncio.TaskGroup() as tg:
        for store in stores:
            tg.create_task(store.run())
        try:
            yield
        finally:
            for store in stores:
                await store.aclose()


# ---------------------------------------------------------------- the store


async def test_two_stores_on_one_database_see_each_others_writes(db_url):
    a = CallState(make_engine(db_url), migrated=True)
    b = CallState(make_engine(db_url), migrated=True)
    async with running(a, b):
        assert await b.get("CA1", "handoff") is None
        assert await a.put("CA1", "handoff", {"whisper": "An angry caller", "transferred": False})
        assert await b.get("CA1", "handoff") == {"whisper": "An angry caller", "transferred": False}
        # Replaced whole, by whoever writes it last.
        assert await a.put("CA1", "handoff", {"whisper": "An angry caller", "transferred": True})
        assert await b.put("CA1", "human_leg", {"status": "no-answer", "connected": False})
        got = await a.get_many("CA1", ("handoff", "human_leg", "outcome"))
        assert got == {
            "handoff": {"whisper": "An angry caller", "transferred": True},
            "human_leg": {"status": "no-answer", "connected": False},
        }
        # Queued without waiting: in order, the last value of a kind wins.
        for n in range(5):
            a.put_nowait("CA2", "outcome", {"outcome": "resolved", "n": n})
        assert await a.put("CA2", "human_leg", {"status": "busy"})  # written after those before it
        assert await b.get("CA2", "outcome") == {"outcome": "resolved", "n": 4}
        # Handed out once: of two takers, one gets it.
        assert await a.put("CA3", "plivo_transfer", {"to": "+918000000999"})
        taken = await asyncio.gather(a.take("CA3", "plivo_transfer"), b.take("CA3", "plivo_transfer"))
        assert sorted(taken, key=lambda v: v is None) == [{"to": "+918000000999"}, None]
        assert await a.get("CA3", "plivo_transfer") is None
        assert await b.delete("CA1", "handoff")
        assert await a.get("CA1", "handoff") is None


async def test_a_database_away_bounds_reads_and_writes_and_the_caller_goes_on(tmp_path, caplog):
    """A database that does not answer: a read returns None within its timeout, an awaited write
    reports False within its own, and both are logged."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the database's directory should be")
    store = CallState(
        make_engine(f"sqlite+aiosqlite:///{blocked / 'voxroute.db'}"),
        read_timeout_s=0.3,
        write_timeout_s=0.3,
        retry_s=0.2,
        migrated=True,
    )
    loop = asyncio.get_running_loop()
    async with running(store):
        t0 = loop.time()
        assert await store.get("CA1", "call") is None
        assert await store.put("CA1", "call", {"history": []}) is False
        assert loop.time() - t0 < 1.5
    assert store.stats["read_failures"] == 1 and store.stats["failed"] == 1
    assert "call state: reading call of call CA1 failed" in caplog.text
    assert "not written" in caplog.text


async def test_an_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown call state kind 'summary'"):
        CallState(None).put_nowait("CA1", "summary", {})


async def test_old_rows_are_pruned(db_url):
    store = CallState(make_engine(db_url), migrated=True, ttl_s=3600, short_ttl_s=0.0)
    async with running(store):
        assert await store.put("CA1", "call", {"history": []})
        assert await store.put("CA1", "handoff", {"whisper": "w"})
        await store._prune()  # the conversation is short-lived; the handoff record stays a day
        assert await store.get_many("CA1", ("call", "handoff")) == {"handoff": {"whisper": "w"}}
