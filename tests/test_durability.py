"""Nothing lost (issue 18), the call log's side: the write-ahead spool, replay at start, shutdown and
SIGKILL of a real process with the database away, storage faults (file deleted, disk full), a
resumed leg's turns, and two streams with one CallSid.

Process tests run tests/calllog_worker.py (a CallLog in its own process, SQLite or the PostgreSQL of
``VOXROUTE_TEST_POSTGRES_URL``). "The database away" is, for SQLite, a path whose parent directory is
a regular file (tests run as root, so permissions would not stop a write); for PostgreSQL a port
where nothing listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import event, select

from tests.test_calllog import _call, _count, _migrated, _postgres_database, _turn, running, until
from voxroute.agent.calllog.schema import calls_table, turns_table
from voxroute.agent.calllog.store import (
    SPOOL_DIR,
    CallLog,
    Spool,
    StorageState,
    SyncPacer,
    TurnNumbers,
    is_transient,
    make_engine,
    storage_fault,
)
from voxroute.agent.config import CallLogConfig
from voxroute.agent.services import Services
from voxroute.agent.session import CallSummary
from voxroute.testing.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


async def _rows(url: str, table, *order) -> list[dict]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(select(table).order_by(*order))).mappings().all()]
    finally:
        await engine.dispose()


def _spooled_lines(directory: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted((directory / SPOOL_DIR).glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


# ---------------------------------------------------------------- pure parts


def test_fsyncs_are_paced_on_a_fake_clock():
    pacer = SyncPacer(0.2)
    assert pacer.delay(100.0) == 0.0  # never synced: at once
    pacer.synced(100.0)
    assert pacer.delay(100.05) == pytest.approx(0.15)  # a record now waits for the window's end
    assert pacer.delay(100.2) == 0.0
    assert pacer.delay(107.0) == 0.0  # a quiet writer syncs a new record at once
    pacer.synced(107.0)
    assert pacer.delay(107.0) == pytest.approx(0.2)  # never more than the interval


def test_storage_state_logs_once_per_change_and_names_the_faults():
    state = StorageState()
    assert state.ok() is False  # nothing to announce
    assert state.failed("the disk is full") is True
    assert state.failed("the disk is full") is False  # the same outage: no new line
    assert state.failed("the database is read-only") is True  # a new cause: a line
    assert state.ok() is True and state.ok() is False
    errors = {
        "attempt to write a readonly database": "the database is read-only",
        "disk I/O error": "disk I/O error",
        "database or disk is full": "the disk is full",
        "unable to open database file": "the database file cannot be opened",
    }
    for message, name in errors.items():
        exc = sqlite3.OperationalError(message)
        assert storage_fault(exc) == name and is_transient(exc)
    assert storage_fault(ValueError("bad row")) is None and not is_transient(ValueError("bad row"))


def test_turn_numbers_continue_across_legs_and_never_collide():
    numbers = TurnNumbers()
    assert [numbers.number(1, i) for i in (1, 3)] == [1, 3]  # the first leg keeps its numbers (2 merged)
    assert [numbers.number(2, i) for i in (1, 2)] == [4, 5]  # the resumed leg continues
    assert numbers.number(1, 3) == 3 and numbers.number(2, 1) == 4  # the same turn again: same number
    assert numbers.number(1, 4) == 6  # a first leg still live beside: 4 is taken
    assert numbers.number(1, 2) == 2  # a free number is kept


def test_a_spool_file_left_behind_is_replayed_from_its_checkpoint(tmp_path):
    first = Spool(tmp_path, max_bytes=1 << 20)
    lines = [json.dumps({"n": i}).encode() + b"\n" for i in range(10)]
    first.append(lines)
    first.sync()
    path = first.own_path
    records, offset = first.read(path, 4)
    first.consumed(path, offset)  # 4 in the database
    first.append([b'{"n": 10, "cut by a cra'])  # a torn last line (power loss): never durable
    # The process dies without closing: its lock goes with its file descriptors.
    os.close(first._own_fd)
    for fd in first._checkpoints.values():
        os.close(fd)
    second = Spool(tmp_path, max_bytes=1 << 20)
    assert second.adopt() == 1 and second.pending_files() == [path]
    got, end = second.read(path, 100)
    assert [r["n"] for r in got] == list(range(4, 10))  # from the checkpoint; the torn line skipped
    second.consumed(path, end)
    assert not path.exists() and not (tmp_path / (path.name + ".done")).exists()
    second.close()


# ---------------------------------------------------------------- the writer, in process


async def test_every_record_is_in_the_spool_fsynced_before_the_database_gets_it(tmp_path):
    """The database is away; each record is on disk, in order, once ``durable`` returns."""
    away = tmp_path / "not-a-directory"
    away.write_text("")
    url = f"sqlite+aiosqlite:///{away / 'voxroute.db'}"
    log = CallLog(make_engine(url), salt=b"s", directory=tmp_path, retry_max_s=0.3, drain_timeout_s=0.5)
    async with running(log):
        call = _call("CA-wal")
        log.call_started(call)
        log.turn_finished(call, _turn(1))
        await log.durable()
        assert [r["kind"] for r in _spooled_lines(tmp_path)] == ["call", "turn"]
        log.turn_finished(call, _turn(2))
        log.call_ended(call | {"ended": "completed", "turns": [_turn(1), _turn(2)]})
        log.set_outcome("CA-wal", "resolved", None)
        await log.durable()
        spooled = _spooled_lines(tmp_path)
        assert [r["kind"] for r in spooled] == ["call", "turn", "turn", "call", "outcome"]
        assert [t["turn_index"] for r in spooled[1:3] for t in r["turns"]] == [1, 2]
        # rows, redacted, never the raw record (the card's digits: "4111" alone can be in a timestamp)
        assert "4111 1111 1111 1111" not in json.dumps(spooled)
        syncs = log.stats["syncs"]
        for n in range(100):  # put at once: one append, one fsync
            log.turn_finished(call, _turn(10 + n))
        await log.durable()
        assert log.stats["syncs"] == syncs + 1
        await until(lambda: log.stats["failures"] >= 1, 10, "a failed write")
        assert log.stats["written"] == 0
    assert log.stats["dropped"] == 0
    assert len(_spooled_lines(tmp_path)) == 105  # still there for the next start


async def test_the_next_start_writes_the_spool_and_a_replay_changes_nothing(tmp_path):
    db = tmp_path / "voxroute.db"
    url = f"sqlite+aiosqlite:///{db}"
    await _migrated(url)
    first = CallLog(make_engine(url), salt=b"s", directory=tmp_path)
    async with running(first):
        for n in range(3):
            call = _call(f"CA-r{n}")
            first.call_started(call)
            first.turn_finished(call, _turn(1))
        await first.durable()
        spool = sorted((tmp_path / SPOOL_DIR).glob("*.jsonl"))[0]
        copy = spool.read_bytes()
        await first.flush()
    assert await _count(url, turns_table) == 3
    # A crash after the database committed but before the checkpoint: the same file comes back.
    (tmp_path / SPOOL_DIR / "99999-crashed.jsonl").write_bytes(copy)
    first_rows = await _rows(url, turns_table, turns_table.c.call_sid)
    second = CallLog(make_engine(url), salt=b"s", directory=tmp_path)
    async with running(second):
        await second.flush()
    assert second.stats["written"] == 6  # replayed ...
    after = await _rows(url, turns_table, turns_table.c.call_sid)
    assert len(after) == 3  # ... as upserts: nothing doubled
    assert [{k: v for k, v in r.items() if k != "recorded_at"} for r in after] == [
        {k: v for k, v in r.items() if k != "recorded_at"} for r in first_rows
    ]
    assert not list((tmp_path / SPOOL_DIR).glob("*.jsonl"))


async def test_another_live_process_spool_is_not_ours_at_shutdown(tmp_path, caplog):
    """Workers of one host share the data folder: at shutdown each speaks of its own spool only, not
    of a live neighbour's file (which the neighbour writes to its database itself)."""
    db = tmp_path / "voxroute.db"
    url = f"sqlite+aiosqlite:///{db}"
    await _migrated(url)
    (tmp_path / SPOOL_DIR).mkdir()
    neighbour = open(tmp_path / SPOOL_DIR / "4242-neighbour.jsonl", "wb")  # noqa: SIM115, ASYNC230
    neighbour.write(b'{"kind": "call"}\n' * 50)
    neighbour.flush()
    fcntl.flock(neighbour, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, as a live process holds its own
    caplog.set_level(logging.WARNING, logger="voxroute.calllog")
    try:
        log = CallLog(make_engine(url), salt=b"s", directory=tmp_path)
        async with running(log):
            call = _call("CA-own")
            log.call_started(call)
            log.turn_finished(call, _turn(1))
            await log.flush()
        assert await _count(url, turns_table) == 1
        waiting = [r.getMessage() for r in caplog.records if "wait in the spool" in r.getMessage()]
        assert waiting == []
        assert (tmp_path / SPOOL_DIR / "4242-neighbour.jsonl").stat().st_size == 17 * 50  # untouched
    finally:
        neighbour.close()


async def test_a_deleted_database_file_is_noticed_and_the_backlog_written_after_restore(tmp_path, caplog):
    db = tmp_path / "voxroute.db"
    url = f"sqlite+aiosqlite:///{db}"
    log = CallLog(make_engine(url), salt=b"s", directory=tmp_path, retry_max_s=0.3)
    caplog.set_level(logging.WARNING, logger="voxroute.calllog")
    async with running(log):
        log.call_started(_call("CA-before"))
        await log.flush()
        backup = sqlite3.connect(tmp_path / "backup.db")  # the operator's backup
        with sqlite3.connect(db) as live:
            live.backup(backup)
        backup.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{db}{suffix}")
        for n in range(3):
            call = _call(f"CA-gone{n}")
            log.call_started(call)
            log.turn_finished(call, _turn(1))
        await until(lambda: log.storage.fault is not None, 10, "the deleted file noticed")
        await asyncio.sleep(1.0)  # a few more tries: still one log line
        assert await log.call_exists("CA-before") is None  # cannot be asked now
        assert not db.exists()  # not silently made again (empty) by the writer or the question
        deleted = [r for r in caplog.records if "was deleted" in r.getMessage()]
        assert len(deleted) == 1, [r.getMessage() for r in caplog.records]
        assert len(_spooled_lines(tmp_path)) >= 6
        os.replace(tmp_path / "backup.db", db)  # restored
        await log.flush(20)
        assert any("takes writes again" in r.getMessage() for r in caplog.records)
    sids = {r["call_sid"] for r in await _rows(url, calls_table)}
    assert sids == {"CA-before", "CA-gone0", "CA-gone1", "CA-gone2"}
    assert await _count(url, turns_table) == 3


async def test_a_full_disk_is_a_storage_fault_and_calls_go_on(tmp_path, caplog):
    """SQLite's own "database or disk is full" (the file may not grow: max_page_count), then room
    again: logged once, spooled, written."""
    db = tmp_path / "voxroute.db"
    url = f"sqlite+aiosqlite:///{db}"
    await _migrated(url)
    engine = make_engine(url)
    full = {"on": True}

    @event.listens_for(engine.sync_engine, "connect")
    def _no_room(dbapi_conn, _record) -> None:
        if full["on"]:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA page_count")
            pages = cur.fetchone()[0]
            cur.execute(f"PRAGMA max_page_count={pages}")
            cur.close()

    caplog.set_level(logging.WARNING, logger="voxroute.calllog")
    log = CallLog(engine, salt=b"s", directory=tmp_path, retry_max_s=0.3)
    async with running(log):
        for n in range(20):
            call = _call(f"CA-full{n}")
            log.call_started(call)
            log.turn_finished(call, _turn(1, transcript="words " * 400))
        await until(lambda: log.storage.fault == "the disk is full", 10, "the full disk noticed")
        await asyncio.sleep(1.0)
        assert sum("the disk is full" in r.getMessage() for r in caplog.records) == 1
        full["on"] = False
        await log.flush(20)
    assert await _count(url, turns_table) == 20 and log.stats["dropped"] == 0


async def test_a_resumed_leg_appends_its_turns(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'voxroute.db'}"
    log = CallLog(make_engine(url), salt=b"s", directory=tmp_path)
    first = _call("CA-leg", started_at=1000.0)
    second = _call("CA-leg", started_at=1100.0, leg=2)
    legs = [
        (first, [_turn(1, "order_tracking"), _turn(2, "order_tracking")]),
        (second, [_turn(1, "billing_dispute", usage={"cost_usd": 0.5})]),
    ]
    async with running(log):
        for call, turns in legs:
            log.call_started(call)
            for t in turns:
                log.turn_finished(call, t)
            log.call_ended(call | {"ended": "completed", "turns": turns})
        await log.flush()
    rows = await _rows(url, turns_table, turns_table.c.turn_index)
    assert [(r["turn_index"], r["leg"], r["routing_class"]) for r in rows] == [
        (1, 1, "order_tracking"),
        (2, 1, "order_tracking"),
        (3, 2, "billing_dispute"),
    ]
    (call,) = await _rows(url, calls_table)
    assert call["legs"] == 2 and call["turn_count"] == 3 and call["cost_usd"] == pytest.approx(0.504)
    assert call["started_at"].timestamp() == 1000.0 and call["routing_class"] == "order_tracking"


# ---------------------------------------------------------------- two streams, one CallSid


class FakeSession:
    def __init__(self, call_sid: str, stream: str) -> None:
        self.call_sid = call_sid
        self.stream = stream
        self.turns: list[dict] = []

    def summary(self) -> CallSummary:
        return CallSummary(
            call_sid=self.call_sid,
            stream_sid=self.stream,
            tenant="default",
            language="en-IN",
            started_at=time.time(),
            turns=list(self.turns),
        )


def _services() -> Services:
    router = SimpleNamespace(policy_version="p1", table=SimpleNamespace(policy_version="t1"))
    return Services(SimpleNamespace(call_log=CallLogConfig()), None, None, {}, router)  # type: ignore[arg-type]


async def test_a_second_stream_with_the_same_call_sid_overwrites_and_unregisters_nothing(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'voxroute.db'}"
    services = _services()
    log = CallLog(make_engine(url), salt=b"s", directory=tmp_path)
    services.observers.append(log)
    a, b = FakeSession("CA-twin", "MZa"), FakeSession("CA-twin", "MZb")
    async with running(log):
        services.register(a)
        services.register(b)  # while a is live: kept alongside, a keeps the call's place
        assert services.calls["CA-twin"] is a
        for session in (a, b):
            for i in (1, 2):
                turn = _turn(i, transcript=f"{session.stream} {i}")
                session.turns.append(turn)
                services.turn_finished(session, SimpleNamespace(as_dict=lambda t=turn: t))
        services.unregister(b)
        assert services.calls["CA-twin"] is a  # b's end does not unregister a
        assert services.call_json("CA-twin")["stream_sid"] == "MZa"
        services.unregister(b)  # twice: nothing
        assert services.calls["CA-twin"] is a
        services.unregister(a)
        assert "CA-twin" not in services.calls and not services.streams
        await log.flush()
    rows = await _rows(url, turns_table, turns_table.c.turn_index)
    assert [(r["turn_index"], r["leg"], r["transcript"]) for r in rows] == [
        (1, 1, "MZa 1"),
        (2, 1, "MZa 2"),
        (3, 2, "MZb 1"),
        (4, 2, "MZb 2"),
    ]


def test_the_stream_alongside_takes_the_calls_place_when_the_first_ends():
    services = _services()
    seen: list[tuple[str, int]] = []
    services.observers.append(
        SimpleNamespace(
            call_started=lambda c: seen.append(("start", c["leg"])),
            turn_finished=lambda c, t: None,
            call_ended=lambda c: seen.append(("end", c["leg"])),
        )
    )
    a, b = FakeSession("CA-two", "MZa"), FakeSession("CA-two", "MZb")
    services.register(a)
    services.register(b)
    services.unregister(a)
    assert services.calls["CA-two"] is b
    services.unregister(b)
    assert not services.calls and seen == [("start", 1), ("start", 2), ("end", 1), ("end", 2)]


# ---------------------------------------------------------------- real processes


@pytest.fixture(params=["sqlite", "postgresql"])
async def outage(request, tmp_path):
    """(URL with the database away, URL with it back): the same database, the same data directory."""
    if request.param == "sqlite":
        parent = tmp_path / "db"
        parent.write_text("")  # a regular file where the database's directory should be
        url = f"sqlite+aiosqlite:///{parent / 'voxroute.db'}"

        def back() -> str:
            parent.unlink()
            parent.mkdir()
            return url

        yield SimpleNamespace(away=url, back=back)
        return
    async with _postgres_database("voxroute_durability") as real:
        yield SimpleNamespace(
            away=f"postgresql+asyncpg://voxroute@127.0.0.1:{free_port()}/voxroute", back=lambda: real
        )


def _worker(url: str, directory: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.calllog_worker", url, str(directory), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(proc: subprocess.Popen, predicate, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"worker ended: {proc.wait()} {proc.stderr.read()[-2000:]}")
        if predicate(line.strip()):
            return line.strip()
    raise AssertionError("timed out waiting for the worker")


def _drain(url: str, directory: Path) -> None:
    proc = _worker(url, directory, "drain")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_with_the_database_away_loses_nothing(outage, sig, tmp_path):
    data = tmp_path / "data"
    proc = _worker(outage.away, data, "log", "40")
    _wait_for_line(proc, lambda line: line == "logged")
    proc.send_signal(sig)  # at once: most records are still queued, none can reach the database
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    closed = float(out.split("closed ")[1].split()[0])
    assert closed < 5.0  # aclose is bounded (drain_timeout_s 2 s), not a speed measurement
    assert len(_spooled_lines(data)) == 40 * 4  # call, 2 turns, end: all on disk
    url = outage.back()
    await asyncio.to_thread(_drain, url, data)
    assert await _count(url, calls_table) == 40 and await _count(url, turns_table) == 80
    assert not list((data / SPOOL_DIR).glob("*.jsonl"))


@pytest.mark.parametrize("database", ["up", "away"])
async def test_sigkill_loses_no_record_that_was_durable(outage, database, tmp_path):
    data = tmp_path / "data"
    url = outage.back() if database == "up" else outage.away
    proc = _worker(url, data, "forever")
    marker = _wait_for_line(proc, lambda line: line.startswith("durable ") and int(line.split()[1]) >= 25)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    durable = int(marker.split()[1])
    if database == "away":
        url = outage.back()
    await asyncio.to_thread(_drain, url, data)
    calls = {r["call_sid"]: r for r in await _rows(url, calls_table)}
    turns = {(r["call_sid"], r["turn_index"]) for r in await _rows(url, turns_table)}
    for n in range(1, durable + 1):
        assert calls[f"CA-w{n}"]["ended"] == "completed", n
        assert {(f"CA-w{n}", 1), (f"CA-w{n}", 2)} <= turns, n
    assert not list((data / SPOOL_DIR).glob("*.jsonl"))
