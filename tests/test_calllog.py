"""The call log: schema and migrations, redaction, hashing, idempotent writes, buffering while the
database is away, the operator's outcome API, and replayed calls that survive a database outage.

Every database test runs against SQLite (a file in a temporary directory) and against PostgreSQL
when ``VOXROUTE_TEST_POSTGRES_URL`` is set (``.ci/postgres.sh`` prints it). The outage test stops a
real PostgreSQL server (a throwaway cluster of its own, started with pg_ctl) or, on SQLite, holds an
exclusive lock on the database from another connection, so writes really fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text

from tests.conftest import services_required
from voxroute.agent.calllog import report as rep
from voxroute.agent.calllog.redact import luhn_ok, redact
from voxroute.agent.calllog.schema import calls_table, metadata, turns_table
from voxroute.agent.calllog.store import (
    SPOOL_DIR,
    CallLog,
    caller_hash,
    caller_salt,
    make_engine,
    migrate,
)
from voxroute.agent.config import CallLogConfig
from voxroute.agent.fixture import load
from voxroute.replay import local_stack, replay_fixture
from voxroute.testing.ports import free_port

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
async def _postgres_database(prefix: str) -> AsyncIterator[str]:
    """A database of the calling test's own on the test server (others run in parallel), dropped after."""
    base = _postgres_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
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
    """An empty call log database of each kind (PostgreSQL: a database of this test's own)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'voxroute.db'}"
        return
    async with _postgres_database("voxroute_calllog") as url:
        yield url


@asynccontextmanager
async def running(call_log: CallLog):
    """The writer task in a task group, as the runtime owns it."""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(call_log.run())
        try:
            yield call_log
        finally:
            await call_log.aclose()


async def until(check, timeout_s: float, what: str) -> None:
    """Poll ``check`` (sync or async) until true: the state watched lives in another task or process."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok = check()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.05)


async def _migrated(url: str) -> None:
    engine = make_engine(url)
    await migrate(engine)
    await engine.dispose()


async def _count(url: str, table) -> int:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.scalar(select(func.count()).select_from(table))
    finally:
        await engine.dispose()


def _call(sid: str, number: str = "+91 98000 00001", **kw) -> dict:
    base = {
        "call_sid": sid,
        "stream_sid": "MZ" + sid,
        "tenant": "default",
        "carrier": "twilio",
        "channel": "voice",
        "from_number": number,
        "to_number": "+918000000000",
        "language": "en-IN",
        "started_at": time.time(),
        "ended_at": None,
        "ended": "in_progress",
        "outcome": "unknown",
        "outcome_reason": None,
        "error": None,
        "mode": "emulated",
        "policy": "p1",
    }
    return base | kw


def _turn(index: int, cls: str = "order_tracking", **kw) -> dict:
    base = {
        "index": index,
        "kind": "speech",
        "transcript": "card 4111 1111 1111 1111, mail me at a.b@example.com or +91 98000 00001",
        "language": "en-IN",
        "route": {"class": cls, "tier": "fast", "model": "m-fast", "reason": "rule", "escalated": False},
        "timeline": {"speech_end": 1000.0 * index, "first_audio_out": 1000.0 * index + 700},
        "first_audio_ms": 700.0,
        "budget_ms": 1000,
        "within_budget": True,
        "bridge": False,
        "fallbacks": [],
        "reply": "Your order ships today.",
        "heard": "",
        "interrupted": False,
        "outcome": "answered",
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.002, "path": "fast"},
    }
    return base | kw


# ---------------------------------------------------------------- pure parts


def test_redaction_masks_cards_phones_and_emails_and_keeps_short_numbers():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    cases = {
        "my card is 4111 1111 1111 1111 thanks": "my card is [card] thanks",
        "4111-1111-1111-1111": "[card]",
        "5500005555555559": "[card]",  # Luhn-valid, no separators
        "4111 1111 1111 1112": "[card]",  # grouped like a card: masked even if misheard
        "call me on +91 98000 00001 please": "call me on [phone] please",
        "9800000001": "[phone]",
        "(555) 123-4567": "[phone]",
        "write to priya.s+orders@mail.example.co.in": "write to [email]",
        "nine eight zero zero zero zero zero zero zero one": "[phone]",
        "मेरा नंबर ९८०००००००१ है": "मेरा नंबर [phone] है",
    }
    for given, want in cases.items():
        assert redact(given) == want, given
    kept = "order A 1745, 2,400 rupees on 12/03/2024 at 10:30, order four five two one"
    assert redact(kept) == kept
    assert redact(None) is None and redact("") == ""


def test_caller_salt_is_created_once_and_the_hash_is_keyed(tmp_path, monkeypatch):
    monkeypatch.delenv("VOXROUTE_CALLER_SALT", raising=False)
    salt = caller_salt(tmp_path)
    assert len(salt) == 64 and caller_salt(tmp_path) == salt  # the same file, read again
    assert (tmp_path / "caller_salt").stat().st_mode & 0o077 == 0  # not readable by others
    h = caller_hash("+91 98000-00001", salt)
    assert h == caller_hash("+919800000001", salt) and len(h) == 64  # one caller, one hash
    assert h != caller_hash("+919800000002", salt)
    assert h != caller_hash("+919800000001", b"another deployment")
    assert "9800000001" not in h and caller_hash(None, salt) is None
    assert caller_salt(tmp_path, {"VOXROUTE_CALLER_SALT": "from-env"}) == b"from-env"


# ---------------------------------------------------------------- schema and writes


async def test_migrations_create_exactly_the_models(db_url):
    engine = make_engine(db_url)
    try:
        await migrate(engine)
        await migrate(engine)  # a second start finds the schema current
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            if conn.dialect.name == "sqlite":
                assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
                assert await conn.scalar(text("PRAGMA mmap_size")) == 0  # no SIGBUS on a storage fault
        assert diff == [], diff
        assert version == "0005"
    finally:
        await engine.dispose()


async def test_writes_are_upserts_and_text_is_redacted(db_url, tmp_path):
    call = _call("CA-idem")
    turns = [_turn(1), _turn(2, "billing_dispute", usage={"cost_usd": 0.01, "hedges": 2})]
    turns[1]["fallbacks"] = [
        {
            "provider": "openrouter",
            "kind": "http_500",
            "error": "boom",
            "action": "next rung",
            "service": "llm",
        },
        {"provider": "sarvam", "kind": "drop", "error": "tts gone", "action": "rest", "service": "tts"},
    ]
    end = call | {"ended": "completed", "ended_at": time.time(), "outcome": "resolved", "turns": turns}
    log = CallLog(make_engine(db_url), salt=b"salt", directory=tmp_path)
    async with running(log):
        for _ in range(2):  # everything twice: a retry must not duplicate
            log.call_started(call)
            for t in turns:
                log.turn_finished(call, t)
            log.call_ended(end)
        log.set_outcome("CA-idem", "unresolved", "customer called back, card 4111 1111 1111 1111")
        await log.flush()
    assert log.stats["written"] == 2 * 4 + 1 and log.stats["rejected"] == 0
    engine = make_engine(db_url)
    async with engine.connect() as conn:
        calls = (await conn.execute(select(calls_table))).mappings().all()
        rows = (await conn.execute(select(turns_table).order_by(turns_table.c.turn_index))).mappings().all()
    await engine.dispose()
    assert len(calls) == 1 and len(rows) == 2
    c = calls[0]
    assert c["caller_hash"] == caller_hash("+919800000001", b"salt") and c["caller_number"] is None
    assert c["outcome"] == "unresolved" and "[card]" in c["outcome_reason"]
    assert c["ended"] == "completed" and c["turn_count"] == 2 and c["cost_usd"] == pytest.approx(0.012)
    assert c["routing_class"] == "order_tracking" and c["policy"] == "p1"
    first, second = rows
    assert first["transcript"] == "card [card], mail me at [email] or [phone]"
    assert first["speech_end_ms"] == 1000.0 and first["first_audio_out_ms"] == 1700.0
    assert first["first_audio_ms"] == 700.0 and first["routing_class"] == "order_tracking"
    assert second["hedges"] == 2 and second["fallback_count"] == 2 and second["model_failures"] == 1
    assert second["fallbacks"][0]["error"] == "boom"


async def test_raw_numbers_only_when_the_config_allows(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'raw.db'}"
    log = CallLog(
        make_engine(url), salt=b"s", directory=tmp_path, settings=CallLogConfig(store_raw_numbers=True)
    )
    async with running(log):
        log.call_started(_call("CA-raw", number="+91 98000-00001"))
        await log.flush()
    engine = make_engine(url)
    async with engine.connect() as conn:
        number = await conn.scalar(select(calls_table.c.caller_number))
    await engine.dispose()
    assert number == "+919800000001"


# ---------------------------------------------------------------- the database away (SQLite lock)


@contextmanager
def sqlite_locked(path: Path):
    """Another connection holds SQLite's write lock: every write of ours fails with 'database is
    locked' once its busy timeout runs out (a real failure of the database, not a mock)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def test_records_spill_to_disk_while_the_database_is_locked_and_all_arrive(tmp_path):
    db = tmp_path / "voxroute.db"
    url = f"sqlite+aiosqlite:///{db}"
    await _migrated(url)
    settings = CallLogConfig(memory_records=10)
    log = CallLog(make_engine(url), salt=b"s", directory=tmp_path, settings=settings, retry_max_s=0.5)
    async with running(log):
        with sqlite_locked(db):
            for n in range(40):
                call = _call(f"CA-{n}")
                log.call_started(call)
                log.turn_finished(call, _turn(1))
            await until(lambda: log.stats["failures"] >= 1 and log.stats["spooled"] == 80, 15, "a failure")
            assert log.stats["written"] == 0, log.stats
            spooled = list((tmp_path / SPOOL_DIR).glob("*.jsonl"))
            assert spooled and spooled[0].stat().st_size > 0
            # the spool holds redacted rows only (the card's digits, not "4111" alone: a timestamp
            # such as 1796411168.07 holds that too)
            spool = spooled[0].read_text()
            assert "4111 1111 1111 1111" not in spool and "[card]" in spool
        await log.flush(30)
    assert await _count(url, calls_table) == 40 and await _count(url, turns_table) == 40
    assert log.stats["dropped"] == 0
    assert not list((tmp_path / SPOOL_DIR).glob("*.jsonl"))  # written, then removed


async def test_a_clean_shutdown_with_the_database_away_loses_nothing(tmp_path):
    db = tmp_path / "voxroute.db"
    url = f"sqlite+aiosqlite:///{db}"
    await _migrated(url)
    first = CallLog(make_engine(url), salt=b"s", directory=tmp_path, drain_timeout_s=1.0, retry_max_s=0.3)
    with sqlite_locked(db):
        async with running(first):
            for n in range(5):
                call = _call(f"CA-shut-{n}")
                first.call_started(call)
                first.turn_finished(call, _turn(1))
                first.turn_finished(call, _turn(2))
        spool = list((tmp_path / SPOOL_DIR).glob("*.jsonl"))
        assert len(spool) == 1 and len(spool[0].read_text().splitlines()) == 15
    assert await _count(url, turns_table) == 0
    second = CallLog(make_engine(url), salt=b"s", directory=tmp_path)  # the next start adopts the spool
    async with running(second):
        await second.flush()
    assert await _count(url, calls_table) == 5 and await _count(url, turns_table) == 10
    assert not list((tmp_path / SPOOL_DIR).glob("*.jsonl"))


# ---------------------------------------------------------------- a real PostgreSQL server to stop


class Postgres:
    """A throwaway PostgreSQL cluster this test may stop and start (pg_ctl), on a free port."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        found = shutil.which("pg_ctl")
        self.bin = bins[-1].parent if bins else Path(found).parent if found else None
        self.dir = Path(tempfile.mkdtemp(prefix="voxroute-pg-"))
        self.port = free_port()
        self.url = f"postgresql+asyncpg://voxroute@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.dir, "postgres")
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "voxroute", "--auth=trust", "-N")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o", opts, "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with_server = (self.dir / "data" / "postmaster.pid").exists()
        if with_server:
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@asynccontextmanager
async def outage_switch(kind: str, tmp_path: Path):
    """(database URL, stop(), start()) for a database this test may take away and bring back."""
    if kind == "sqlite":
        db = tmp_path / "voxroute.db"
        lock: dict = {}

        def stop() -> None:
            lock["cm"] = sqlite_locked(db)
            lock["cm"].__enter__()

        def start() -> None:
            lock.pop("cm").__exit__(None, None, None)

        yield f"sqlite+aiosqlite:///{db}", stop, start
        if "cm" in lock:
            start()
        return
    _postgres_url()  # skips (or fails under VOXROUTE_REQUIRE_SERVICES) without PostgreSQL
    pg = Postgres()
    if pg.bin is None:
        pytest.fail("PostgreSQL is configured but pg_ctl is not installed")
    try:
        pg.init()
        pg.start()
        yield pg.url, pg.stop, pg.start
    finally:
        pg.remove()


# ---------------------------------------------------------------- replayed calls, an outage, the API


class TurnCounter:
    """An observer beside the call log: counts finished turns (the runtime's own seam)."""

    def __init__(self) -> None:
        self.turns = 0

    def call_started(self, call) -> None:
        pass

    def turn_finished(self, call, turn) -> None:
        self.turns += 1

    def call_ended(self, call) -> None:
        pass


FIXTURES = ("order_status", "dtmf_entry")  # the first two caller items of each: four turns in ~15 s


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_replayed_calls_survive_a_database_outage_and_the_report_matches(kind, tmp_path, monkeypatch):
    """Two fixture calls at once through the real stack (two caller items each). After the first turn is in the database,
    the database goes away (PostgreSQL: pg_ctl stop; SQLite: locked) until two more turns have
    finished; then it comes back. Every turn of both calls must be in the database, the operator's
    outcome API must reach it, and the report's figures must equal the replay's own numbers."""
    async with outage_switch(kind, tmp_path) as (url, stop, start):
        monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("VOXROUTE_DATABASE_URL", url)
        monkeypatch.setenv("VOXROUTE_API_KEY", "operator-key")
        monkeypatch.delenv("VOXROUTE_CALLER_SALT", raising=False)
        fixtures = [load(n) for n in FIXTURES]
        for f in fixtures:
            f.script = f.script.model_copy(update={"utterances": f.script.utterances[:2]})
        since = rep.parse_since("1h")
        async with local_stack("reference", 3, fixtures) as stack:
            services = stack.services
            call_log = next(o for o in services.observers if isinstance(o, CallLog))
            counter = TurnCounter()
            services.observers.append(counter)
            async with asyncio.TaskGroup() as tg:
                replays = [tg.create_task(replay_fixture(f, stack.server_url)) for f in fixtures]
                await until(lambda: _count_quietly(url), 30, "a turn in the database")
                # The operator marks a call resolved while it is on (the live session).
                live_sid = next(iter(services.calls))
                async with httpx.AsyncClient(base_url=stack.server_url) as http:
                    auth = {"X-API-Key": "operator-key"}
                    r = await http.post(
                        f"/calls/{live_sid}/outcome", json={"outcome": "resolved"}, headers=auth
                    )
                    assert r.status_code == 200 and r.json()["live"] is True, r.text
                    assert services.calls[live_sid].outcome == "resolved"
                    r = await http.post(f"/calls/{live_sid}/outcome", json={"outcome": "resolved"})
                    assert r.status_code == 401
                    r = await http.post(f"/calls/{live_sid}/outcome", json={"outcome": "great"}, headers=auth)
                    assert r.status_code == 422

                await asyncio.to_thread(stop)
                failures_before, seen = call_log.stats["failures"], counter.turns
                await until(
                    lambda: counter.turns >= seen + 2 and call_log.stats["failures"] > failures_before,
                    40,
                    "two turns finished and a write failed during the outage",
                )
                if kind == "sqlite":  # readers still work in WAL mode: the new turns are not there yet
                    assert await _count_quietly(url) < counter.turns
                await asyncio.to_thread(start)
            calls = [task.result() for task in replays]
            sids = [c["call_sid"] for c in calls]
            assert all(c["ended"] == "completed" for c in calls), [c.get("error") for c in calls]
            done_sid = next(s for s in sids if s != live_sid)
            # The replay ends with the carrier's hang-up; the server's side of the call ends after
            # it (the STT socket closed, the shared outcome read): until then the call is live.
            await until(lambda: done_sid not in services.calls, 10, "the server ended its side of the call")
            async with httpx.AsyncClient(base_url=stack.server_url) as http:
                r = await http.post(
                    f"/calls/{done_sid}/outcome",
                    json={"outcome": "resolved", "reason": "confirmed"},
                    headers={"X-API-Key": "operator-key"},
                )
                assert r.status_code == 200 and r.json()["live"] is False
                r = await http.post(
                    "/calls/CA-nope/outcome",
                    json={"outcome": "resolved"},
                    headers={"X-API-Key": "operator-key"},
                )
                assert r.status_code == 404
            await call_log.flush(30)
            runtime_calls = {sid: services.call_json(sid) for sid in sids}
            policy = services.router.policy_version
        assert call_log.stats["failures"] > failures_before and call_log.stats["dropped"] == 0

        # Every turn of both calls, as the runtime recorded it.
        engine = make_engine(url)
        async with engine.connect() as conn:
            stored = (await conn.execute(select(turns_table))).mappings().all()
            outcomes = dict((await conn.execute(select(calls_table.c.call_sid, calls_table.c.outcome))).all())
        runtime_turns = [(sid, t) for sid, call in runtime_calls.items() for t in call["turns"]]
        assert {(r["call_sid"], r["turn_index"]) for r in stored} == {
            (s, t["index"]) for s, t in runtime_turns
        }
        by_key = {(r["call_sid"], r["turn_index"]): r for r in stored}
        for sid, t in runtime_turns:
            row = by_key[(sid, t["index"])]
            assert row["transcript"] == redact(t["transcript"])
            assert row["first_audio_ms"] == t["first_audio_ms"]
            assert row["routing_class"] == (t["route"] or {}).get("class")
        assert outcomes == {sid: "resolved" for sid in sids}

        # The report, from the database, against the replay's own per-turn numbers.
        figures = await rep.report(engine, rep.Filters(since=since, policy=policy))
        await engine.dispose()
        turns = [t for _, t in runtime_turns]
        assert figures["calls"] == 2 and figures["turns"] == len(turns)
        cost = sum(t["usage"].get("cost_usd", 0.0) for t in turns)
        assert cost > 0 and figures["cost_per_resolved"] == pytest.approx(cost / 2, abs=1e-6)
        assert figures["containment"] == 1.0 and figures["escalation_after_failure"] == 0.0
        by_class: dict[str, list[float]] = {}
        for t in turns:
            if t["first_audio_ms"] is not None:
                by_class.setdefault(t["route"]["class"], []).append(t["first_audio_ms"])
        assert set(figures["first_audio_ms_by_class"]) == set(by_class)
        for cls, values in by_class.items():
            got = figures["first_audio_ms_by_class"][cls]
            assert got["turns"] == len(values)
            assert got["p50"] == pytest.approx(rep.percentile(sorted(values), 50), abs=0.051)
        bridges = sum(bool(t["bridge"]) for t in turns)
        assert figures["bridges_per_100_turns"] == pytest.approx(100 * bridges / len(turns), abs=0.006)
        assert figures["repeat_contact_rate"]["overall"] == 0.0


async def _count_quietly(url: str) -> int:
    try:
        return await _count(url, turns_table)
    except Exception:  # not migrated yet, or away
        return 0


def test_spool_lines_are_json(tmp_path):
    """The spool is plain JSONL an operator can read (and nothing else sneaks in)."""
    from voxroute.agent.calllog.store import Spool

    spool = Spool(tmp_path / SPOOL_DIR, max_bytes=300)
    lines = [json.dumps({"kind": "call", "n": i}).encode() + b"\n" for i in range(20)]
    kept = spool.append(lines)
    assert 0 < kept < 20  # capped by max_bytes
    path = spool.own_path
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == list(range(kept))
    assert spool.read(path, 5) == ([], 0)  # not fsynced yet: the database never sees it
    spool.sync()
    records, offset = spool.read(path, 5)
    assert [r["n"] for r in records] == list(range(min(5, kept)))
    spool.consumed(path, offset)
    spool.close()
    assert len(path.read_text().splitlines()) == kept  # the file stays whole ...
    assert int((path.parent / (path.name + ".done")).read_text()) == offset  # ... with its checkpoint
