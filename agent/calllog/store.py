"""The call log's writer: every call and turn into the database, without ever making a call wait,
and without losing what a crash, a stop or a storage fault interrupts.

``CallLog`` is a call observer (agent/services.py): ``call_started``, ``turn_finished`` and
``call_ended`` only put the record on a bounded queue and return. The writer task (``run``, owned by
the runtime's task group) turns records into rows (numbers hashed, text redacted) and appends them to
a write-ahead spool: JSON lines in the data directory, fsynced at most ``SYNC_INTERVAL_S`` (200 ms)
after they are appended. Only then does the database see them: a second strand writes what the spool
holds, in order and in batches, and advances the spool's checkpoint. Every write is an upsert keyed by
``call_sid`` or ``(call_sid, turn_index)``, so writing a record twice (a retry, a spool replayed after
a crash) never duplicates anything. A SIGKILL or a power loss loses at most the fsync window; the next
start replays whatever the database had not taken.

While the database is away or its storage is faulty (the SQLite file deleted, read-only, the disk
full) the records wait in the spool (at most ``spool_max_bytes``); the fault is logged once when it
starts and once when it ends, and calls go on. ``aclose`` (shutdown) spools everything queued at once
and gives the database at most ``drain_timeout_s`` (none while it is known to be away).

A call back from a failed transfer (the same CallSid) is its next leg: its turns continue the first
leg's numbering (``turns.leg``, ``calls.legs``) instead of overwriting them.

Where the database is: ``VOXROUTE_DATABASE_URL`` (PostgreSQL through asyncpg, e.g.
``postgresql+asyncpg://user:pass@host/db``; ``postgresql://`` is accepted), else SQLite in WAL mode at
``$VOXROUTE_DATA_DIR/voxroute.db`` (default ``./data``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Table, case, event, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from voxroute.agent.calllog.redact import (
    ConversationRedactor,
    redact,
    redact_conversation,
    redact_handoff,
    redact_json,
)
from voxroute.agent.calllog.schema import calls_table, turns_table
from voxroute.agent.config import CallLogConfig
from voxroute.agent.timeline import TIMELINE_NAMES
from voxroute.routing.route import Route

log = logging.getLogger("voxroute.calllog")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SALT_FILE = "caller_salt"
SPOOL_DIR = "calllog-spool"
REJECTED_FILE = "calllog-rejected.jsonl"
BATCH = 200  # records per transaction
SYNC_INTERVAL_S = 0.2  # the spool is fsynced at most this long after a record is appended
ROTATE_BYTES = 1024 * 1024  # our spool file, once wholly in the database and this big, is replaced
STORAGE_CHECK_S = 2.0  # how often an idle writer checks that the SQLite file is still there
KNOWN_CALLS = 4096  # calls whose turn numbers the writer remembers (for later legs)
SQLITE_BUSY_MS = 2000  # how long SQLite waits for another writer's lock before the write fails


# ---------------------------------------------------------------- where the database is


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("VOXROUTE_DATA_DIR") or "data")


def database_url(env: Mapping[str, str] | None = None) -> str:
    """``VOXROUTE_DATABASE_URL`` (made async: asyncpg, aiosqlite), else SQLite in the data directory."""
    env = os.environ if env is None else env
    url = (env.get("VOXROUTE_DATABASE_URL") or "").strip()
    if not url:
        return f"sqlite+aiosqlite:///{(data_dir(env) / 'voxroute.db').resolve()}"
    for plain, async_ in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return async_ + url.removeprefix(plain)
    return url


def make_engine(url: str) -> AsyncEngine:
    """An async engine. SQLite gets WAL (readers never block the writer), a busy timeout, and foreign
    keys on. Connections are checked before use, so a restarted server is found again."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            # Not there and not makeable (a storage fault): the writer reports it and spools meanwhile.
            with contextlib.suppress(OSError):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # No memory-mapped I/O: a storage fault under a mapping is a SIGBUS that kills the process
            # (and every call in it); through read/write it is an error the writer handles.
            cur.execute("PRAGMA mmap_size=0")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            cur.close()

        return engine
    if not url.startswith("postgresql"):
        raise ValueError(f"VOXROUTE_DATABASE_URL: unsupported database {url.split(':', 1)[0]!r}")
    return create_async_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, pool_recycle=1800)


def describe(url: str) -> str:
    """The URL without its password, for log lines."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ---------------------------------------------------------------- migrations


def _alembic_config():
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(sync_conn) -> None:
    from alembic import command

    cfg = _alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision. Two processes starting at once take turns: a file
    lock beside a SQLite database (Alembic's SQLite DDL is not one transaction), an advisory lock on
    PostgreSQL (held to the end of the migration's transaction)."""
    lock = None
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        lock = await asyncio.to_thread(_locked, engine.url.database + ".migrate-lock")
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7146243)")
            await conn.run_sync(_upgrade)
    finally:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


# ---------------------------------------------------------------- the per-deployment salt


def _locked(path: str):
    f = open(path, "a")  # noqa: SIM115 - the caller unlocks and closes it
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


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


STORAGE_ERRORS = {  # SQLite's words for a storage fault -> what the log line calls it
    "readonly database": "the database is read-only",
    "disk i/o error": "disk I/O error",
    "database or disk is full": "the disk is full",
    "unable to open database file": "the database file cannot be opened",
    "no space left on device": "the disk is full",
}


def storage_fault(exc: BaseException) -> str | None:
    """What is wrong with the database's storage (read-only, full, I/O error, file gone), or None."""
    if isinstance(exc, StorageFault):
        return str(exc)
    text = str(exc).lower()
    return next((name for words, name in STORAGE_ERRORS.items() if words in text), None)


def is_transient(exc: BaseException) -> bool:
    """The database is away (down, restarting, locked, unreachable, its storage faulty): try again
    later. Anything else is a problem with one record, which must not hold back the others."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if storage_fault(exc) is not None:
        return True
    return isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError | ConnectionError)


# ---------------------------------------------------------------- the spool (write-ahead, on disk)


class Spool:
    """The write-ahead log of the call log: every record as a JSON line, on disk before the database
    sees it.

    Each process appends to its own file under the data directory and holds an exclusive ``flock``
    on it while it runs. Beside each file a small checkpoint (``<file>.done``) says how many of its
    bytes are in the database; it is rewritten in place (no fsync: a stale checkpoint only means
    records are written again, and writes are upserts). A file nobody holds was left by a process
    that ended (cleanly with the database away, or killed) and is adopted at start: the writer
    replays it from its checkpoint. A file whose every byte is in the database is deleted (our own
    once it has grown past ``rotate_bytes``: appends then go to a new file, so nothing is rewritten).

    ``append`` writes without fsync; ``sync`` makes everything appended so far durable, and only
    synced bytes are ever read for the database, so the database is never ahead of the spool.
    Methods do file I/O: the writer calls them through ``asyncio.to_thread`` (a lock serialises the
    appending thread and the database thread)."""

    def __init__(self, directory: Path, max_bytes: int, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.rotate_bytes = rotate_bytes
        self.own_path: Path | None = None  # the file we append to (None until the first append)
        self._own_fd: int | None = None
        self._handles: dict[Path, Any] = {}  # adopted file -> its open, locked handle
        self._sizes: dict[Path, int] = {}  # file -> bytes in it
        self._synced: dict[Path, int] = {}  # file -> bytes known to be on disk (fsynced)
        self._offsets: dict[Path, int] = {}  # file -> bytes already in the database
        self._checkpoints: dict[Path, int] = {}  # file -> fd of its checkpoint
        self._lock = threading.Lock()

    # ---- cheap questions (no I/O)

    def bytes_pending(self) -> int:
        """Bytes not yet in the database (synced or not)."""
        return sum(size - self._offsets.get(p, 0) for p, size in self._sizes.items())

    def pending_files(self) -> list[Path]:
        """Files with synced bytes the database has not taken yet; oldest first (adopted ones)."""
        return [p for p, synced in self._synced.items() if synced > self._offsets.get(p, 0)]

    # ---- file I/O

    def adopt(self) -> int:
        """Take the files of processes that are gone. Returns how many."""
        if not self.directory.is_dir():
            return 0
        taken = 0
        for done in self.directory.glob("*.jsonl.done"):  # the checkpoint of a file deleted by a crash
            if not done.with_suffix("").exists():
                done.unlink(missing_ok=True)
        for path in sorted(self.directory.glob("*.jsonl")):
            if path == self.own_path or path in self._handles:
                continue
            f = open(path, "rb")  # noqa: SIM115 - held open (and locked) until the file is consumed
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process's own spool
                f.close()
                continue
            size = os.fstat(f.fileno()).st_size
            done = _read_checkpoint(_checkpoint_path(path))
            with self._lock:
                self._handles[path] = f
                # adopted files are older than ours: first in every dict (dicts keep insertion order)
                self._sizes = {path: size, **self._sizes}
                self._synced = {path: size, **self._synced}
                self._offsets[path] = done if done <= size else 0
            taken += 1
        return taken

    def append(self, lines: list[bytes]) -> int:
        """Append what fits under ``max_bytes`` (not yet durable: see ``sync``); returns how many
        lines were kept. On a write error the file is cut back to its last whole line and the error
        raised: nothing half-written stays."""
        with self._lock:
            path, fd = self._own_file()
            used = self.bytes_pending()
            kept: list[bytes] = []
            for line in lines:
                if used + len(line) > self.max_bytes:
                    break
                kept.append(line)
                used += len(line)
            data = b"".join(kept)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._sizes[path])
                raise
            self._sizes[path] += len(data)
            return len(kept)

    def sync(self) -> None:
        """Everything appended so far is on disk once this returns."""
        with self._lock:
            path, fd = self.own_path, self._own_fd
            if path is None or fd is None:
                return
            size = self._sizes[path]
            if self._synced[path] < size:
                os.fsync(fd)
                self._synced[path] = size

    def _own_file(self) -> tuple[Path, int]:
        """Our spool file and its descriptor, opened on the first append."""
        if self.own_path is not None and self._own_fd is not None:
            return self.own_path, self._own_fd
        return self._open_own()

    def _open_own(self) -> tuple[Path, int]:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
        # Locked under a name adopt() ignores, then renamed: nobody can adopt it in between.
        part = path.with_suffix(".part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            part.replace(path)
            _fsync_dir(self.directory)  # the new name survives a power loss
        except OSError:
            os.close(fd)
            raise
        self.own_path, self._own_fd = path, fd
        self._sizes[path] = self._synced[path] = self._offsets[path] = 0
        return path, fd

    def read(self, path: Path, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` records from where the database left the file (synced bytes only);
        returns them and the offset after them."""
        records: list[dict[str, Any]] = []
        offset = self._offsets.get(path, 0)
        end = self._synced.get(path, 0)
        with open(path, "rb") as f:
            f.seek(offset)
            while len(records) < limit and offset < end:
                line = f.readline(end - offset)
                if not line.endswith(b"\n"):  # a line cut by a crash (adopted file): skipped
                    offset += len(line)
                    break
                offset += len(line)
                try:
                    records.append(json.loads(line))
                except ValueError:
                    log.error("call log: unreadable line in %s skipped", path)
        return records, offset

    def consumed(self, path: Path, offset: int) -> None:
        """Records up to ``offset`` are in the database: note it in the checkpoint; a file that is
        wholly in the database goes away (our own only when it has grown past ``rotate_bytes``)."""
        with self._lock:
            self._offsets[path] = offset
            whole = offset >= self._sizes.get(path, 0)
            if self._own_fd is not None and path == self.own_path:
                if whole and offset >= self.rotate_bytes:
                    os.close(self._own_fd)
                    self._own_fd, self.own_path = None, None
                    self._forget(path)
                else:
                    self._checkpoint(path, offset)
            elif path in self._handles:
                if whole:
                    self._handles.pop(path).close()
                    self._forget(path)
                else:
                    self._checkpoint(path, offset)

    def _checkpoint(self, path: Path, offset: int) -> None:
        fd = self._checkpoints.get(path)
        if fd is None:
            fd = self._checkpoints[path] = os.open(_checkpoint_path(path), os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(fd, b"%20d\n" % offset, 0)

    def _forget(self, path: Path) -> None:
        """Delete a file that is wholly in the database, checkpoint first (a checkpoint without its
        file is harmless; the other way round the file would be replayed, which is harmless too)."""
        if (fd := self._checkpoints.pop(path, None)) is not None:
            os.close(fd)
        _checkpoint_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        for d in (self._sizes, self._synced, self._offsets):
            d.pop(path, None)

    def close(self) -> None:
        """Sync; files wholly in the database go; the others stay, with their checkpoint on disk,
        for the next process to adopt."""
        with contextlib.suppress(OSError):
            self.sync()
        with self._lock:
            files = list(self._handles.items())
            if self.own_path is not None and self._own_fd is not None:
                files.append((self.own_path, None))
            for path, handle in files:
                left = self._sizes.get(path, 0) - self._offsets.get(path, 0)
                try:
                    if left <= 0:
                        self._forget(path)
                    elif self._offsets.get(path):
                        self._checkpoint(path, self._offsets[path])
                        os.fsync(self._checkpoints[path])
                except OSError as exc:
                    log.error("call log: could not tidy the spool file %s: %s", path, exc)
                if handle is not None:
                    handle.close()
            if self._own_fd is not None:
                os.close(self._own_fd)
            for fd in self._checkpoints.values():
                os.close(fd)
            self._own_fd, self.own_path = None, None
            self._handles.clear()
            self._checkpoints.clear()
            self._sizes.clear()
            self._synced.clear()
            self._offsets.clear()


def _checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + ".done")


def _read_checkpoint(path: Path) -> int:
    try:
        return int(path.read_bytes().strip() or 0)
    except (OSError, ValueError):
        return 0  # none, or unreadable: replay the whole file (writes are upserts)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SyncPacer:
    """When the spool is next fsynced (sans-I/O): at once if the last fsync is ``interval_s`` old,
    else when it will be. Records wait at most ``interval_s`` (plus the fsync itself) to be durable,
    and a busy writer fsyncs at most once per interval."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last = float("-inf")

    def delay(self, now: float) -> float:
        return max(0.0, self.last + self.interval_s - now)

    def synced(self, now: float) -> None:
        self.last = now


class StorageState:
    """Whether the database takes writes, with one log line per change of state (sans-I/O): an
    outage logs once when it starts (and again only if its cause changes) and once when it ends."""

    def __init__(self) -> None:
        self.fault: str | None = None

    def failed(self, reason: str) -> bool:
        """Returns True when this is news (the caller logs it)."""
        news = reason != self.fault
        self.fault = reason
        return news

    def ok(self) -> bool:
        """Returns True when storage is back after a fault (the caller logs it)."""
        back = self.fault is not None
        self.fault = None
        return back


class StorageFault(OSError):
    """The database's storage is not usable (the SQLite file is gone): records wait in the spool."""


class TurnNumbers:
    """A call's turn numbers in the call log, across its legs. The first leg keeps its own numbers;
    a later leg (the call back from a failed transfer, or a second stream with the same CallSid)
    continues after the highest number taken, so no leg overwrites another's turns."""

    def __init__(self) -> None:
        self.by_leg: dict[tuple[int, int], int] = {}
        self.taken: set[int] = set()
        self.top = 0  # the highest number taken

    def number(self, leg: int, index: int) -> int:
        key = (leg, index)
        if key not in self.by_leg:
            # A later leg whose session continued the earlier legs' numbering (it knew them, maybe
            # through another process: agent/calllog/state.py) keeps its numbers: this writer may
            # not have seen the earlier legs' turns.
            fresh = index not in self.taken and (leg <= 1 or index > self.top)
            n = index if fresh else self.top + 1
            self.by_leg[key] = n
            self.taken.add(n)
            self.top = max(self.top, n)
        return self.by_leg[key]


# ---------------------------------------------------------------- the writer


class CallLog:
    """The call observer that writes the call log.

    ``run`` (owned by the runtime's task group) runs two strands: the spooler turns queued records
    into rows, appends them to the spool and fsyncs it (at most ``sync_interval_s`` apart); the
    database strand writes what the spool holds, in order, and advances the spool's checkpoint.
    ``aclose`` spools everything queued (fsynced), gives the database at most ``drain_timeout_s``
    and returns; what is not written then is in the spool for the next start."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        salt: bytes,
        directory: Path,
        settings: CallLogConfig | None = None,
        retry_max_s: float = 5.0,
        write_timeout_s: float = 10.0,
        drain_timeout_s: float = 3.0,
        sync_interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        self.engine = engine
        self.settings = settings or CallLogConfig()
        self.salt = salt
        self.directory = directory
        self.spool = Spool(directory / SPOOL_DIR, self.settings.spool_max_bytes)
        self.retry_max_s = retry_max_s
        self.write_timeout_s = write_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.pacer = SyncPacer(sync_interval_s)
        self.storage = StorageState()
        self._queue: asyncio.Queue[tuple[int, str, tuple] | None] = asyncio.Queue(self.settings.queue_size)
        self._unspooled: deque[bytes] = deque()  # lines the spool's disk refused, retried
        self._numbers: OrderedDict[str, TurnNumbers] = OrderedDict()  # call sid -> its turn numbers
        self._conversations: dict[str, ConversationRedactor] = {}  # call sid -> its transcripts' redactor
        self._put_seq = 0  # records put so far
        self._synced_seq = 0  # ... of which durable in the spool
        self._synced = asyncio.Event()  # pulsed after each fsync
        self._spooled = asyncio.Event()  # new synced records for the database strand
        self._closing = False
        self._draining = False
        self._started = asyncio.Event()  # the spool files of earlier runs are adopted
        self._closed = asyncio.Event()
        self._migrated = False
        self._sqlite_path = _sqlite_file(engine)
        self._db_identity: tuple[int, int] | None = None  # the SQLite file's (device, inode)
        self._reopen = False  # the SQLite file was replaced (restored): new connections
        self._spool_fault: str | None = None
        self.stats = {"written": 0, "failures": 0, "spooled": 0, "dropped": 0, "rejected": 0, "syncs": 0}

    @classmethod
    def from_environment(cls, settings: CallLogConfig, env: Mapping[str, str] | None = None, **kw) -> CallLog:
        """The database of ``VOXROUTE_DATABASE_URL`` or the SQLite file in ``VOXROUTE_DATA_DIR``."""
        directory = data_dir(env)
        url = database_url(env)
        log.info("call log: %s", describe(url))
        return cls(
            make_engine(url), salt=caller_salt(directory, env), directory=directory, settings=settings, **kw
        )

    # ---- the observer side: never blocks, never raises

    def call_started(self, call: dict[str, Any]) -> None:
        self._put("call", (call,))

    def turn_finished(self, call: dict[str, Any], turn: dict[str, Any]) -> None:
        self._put("turn", (call, turn))

    def call_ended(self, call: dict[str, Any]) -> None:
        self._put("end", (call,))

    def set_outcome(self, call_sid: str, outcome: str, reason: str | None) -> None:
        """The operator's (or a tool's) verdict on a call; written after everything queued before it."""
        self._put("outcome", (call_sid, outcome, reason))

    def _put(self, kind: str, args: tuple) -> None:
        if self._closed.is_set():
            log.error("call log: %s record after the writer stopped: not written", kind)
            self.stats["dropped"] += 1
            return
        try:
            self._queue.put_nowait((self._put_seq + 1, kind, args))
            self._put_seq += 1
        except asyncio.QueueFull:
            # The spool's disk is stuck longer than any append may take: say so loudly.
            self.stats["dropped"] += 1
            log.error("call log: queue full (%d records): a %s record is lost", self._queue.maxsize, kind)

    # ---- records -> rows (in the spooler's thread, one batch at a time)

    def _rows(self, kind: str, args: tuple) -> dict[str, Any]:
        raw = self.settings.store_raw_numbers
        if kind == "call":
            return {"kind": "call", "call": call_header(args[0], self.salt, raw)}
        if kind == "turn":
            call, turn = args
            # Transcripts are redacted as one conversation: a number split over turns is masked in
            # each, so the earlier turns it completes are written again (agent/calllog/redact.py).
            conversation = self._conversations.setdefault(call["call_sid"], ConversationRedactor())
            while len(self._conversations) > KNOWN_CALLS:
                self._conversations.pop(next(iter(self._conversations)))
            texts = conversation.redact_turn(turn, turn.get("transcript"))
            return {
                "kind": "turn",
                "call": call_header(call, self.salt, raw),
                "turns": [self._turn_row(call, {**t, "transcript": text}) for t, text in texts],
            }
        if kind == "end":
            call = args[0]
            self._conversations.pop(call["call_sid"], None)
            turns = call.get("turns") or ()
            texts = redact_conversation(t.get("transcript") for t in turns)
            return {
                "kind": "call",
                "call": {**call_header(call, self.salt, raw), **call_totals(call)},
                # Every turn again: a turn's outcome can change as the call ends (caller hung up).
                "turns": [
                    self._turn_row(call, {**t, "transcript": x}) for t, x in zip(turns, texts, strict=True)
                ],
            }
        call_sid, outcome, reason = args
        return {"kind": "outcome", "call_sid": call_sid, "outcome": outcome, "reason": redact(reason)}

    def _turn_row(self, call: dict[str, Any], turn: dict[str, Any]) -> dict[str, Any]:
        """``turn_row`` with the call log's turn number (legs after the first continue the count)."""
        sid, leg = call["call_sid"], int(call.get("leg") or 1)
        numbers = self._numbers.get(sid)
        if numbers is None:
            numbers = self._numbers[sid] = TurnNumbers()
            while len(self._numbers) > KNOWN_CALLS:
                self._numbers.popitem(last=False)
        self._numbers.move_to_end(sid)
        row = turn_row(sid, turn)
        row["turn_index"] = numbers.number(leg, row["turn_index"])
        row["leg"] = leg
        return row

    def _encode(self, items: list[tuple[int, str, tuple]]) -> list[bytes]:
        lines = []
        for _, kind, args in items:
            try:
                record = self._rows(kind, args)
                lines.append((json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
            except Exception:  # a malformed record must not stop the writer
                self.stats["rejected"] += 1
                log.exception("call log: could not make rows of a %s record", kind)
        return lines

    def _spool_lines(self, lines: list[bytes]) -> None:
        """Append (what the disk refused earlier first) and fsync. Raises OSError with the lines kept
        in memory (bounded by ``memory_records``) for the next try."""
        self._unspooled.extend(lines)
        pending = list(self._unspooled)
        kept = self.spool.append(pending) if pending else 0
        self._unspooled.clear()
        if kept < len(pending):
            self.stats["dropped"] += len(pending) - kept
            log.error(
                "call log: spool full (%d bytes): %d records lost", self.spool.max_bytes, len(pending) - kept
            )
        self.stats["spooled"] += kept
        self.spool.sync()
        self.stats["syncs"] += 1

    def _keep_unspooled(self) -> None:
        over = len(self._unspooled) - self.settings.memory_records
        if over > 0:
            for _ in range(over):
                self._unspooled.popleft()
            self.stats["dropped"] += over
            log.error("call log: the spool cannot be written and memory is full: %d records lost", over)

    # ---- the writer task

    async def run(self) -> None:
        """Owned by the runtime's task group; ends after ``aclose`` (everything queued is then in the
        spool, on disk). It never raises into its owner: a bug here costs the call log, not the calls."""
        try:
            adopted = await asyncio.to_thread(self.spool.adopt)
            if adopted:
                log.warning("call log: %d spool file(s) of an earlier run will be written", adopted)
                self._spooled.set()
            self._started.set()
            async with asyncio.TaskGroup() as tg:
                database = tg.create_task(self._database(), name="call-log-database")
                await self._spooler()
                self._draining = True  # aclose: the database strand gets drain_timeout_s
                self._spooled.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(database), self.drain_timeout_s)
                database.cancel()
        except Exception:
            log.exception("call log: the writer failed; calls are no longer logged")
        finally:
            self._started.set()
            self._closed.set()
            try:
                # Cancelled (the runtime is failing) or failed: what is queued goes to disk anyway.
                items = []
                while not self._queue.empty():
                    if (item := self._queue.get_nowait()) is not None:
                        items.append(item)
                if items or self._unspooled:
                    self._spool_lines(self._encode(items))
            except Exception:
                log.exception("call log: could not spool %d records", len(self._unspooled))
            # This process's files only: another process's live spool in the same folder is its own.
            left = self.spool.bytes_pending()
            try:
                self.spool.close()
            except Exception:
                log.exception("call log: could not close the spool")
            if left:
                log.warning("call log: %d bytes of records wait in the spool for the next start", left)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.engine.dispose()

    async def _spooler(self) -> None:
        """Queue -> rows -> spool (fsynced, paced) until ``aclose`` and the queue is empty."""
        loop = asyncio.get_running_loop()
        retry_at = 0.0  # while the spool's disk fails: when to try again
        while True:
            if self._closing and self._queue.empty() and not self._unspooled:
                return
            items: list = []
            if self._queue.empty():
                wait = max(0.01, retry_at - loop.time()) if self._unspooled else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        items.append(await self._queue.get())
            if not self._closing:  # pace the fsyncs (more records gather meanwhile)
                wait = self.pacer.delay(loop.time())
                if self._unspooled:
                    wait = max(wait, retry_at - loop.time())
                if wait > 0:
                    await asyncio.sleep(wait)
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            items = [i for i in items if i is not None]  # None: aclose's wake-up
            if not items and not self._unspooled:
                continue
            top = max((i[0] for i in items), default=self._synced_seq)
            try:
                await asyncio.to_thread(self._spool_batch, items)
            except OSError as exc:
                self._keep_unspooled()
                retry_at = loop.time() + 1.0
                if self._spool_fault != _short(exc):
                    self._spool_fault = _short(exc)
                    log.error(
                        "call log: cannot write the spool in %s (%s); %d records held in memory",
                        self.spool.directory,
                        self._spool_fault,
                        len(self._unspooled),
                    )
                if self._closing:
                    return
                continue
            if self._spool_fault is not None:
                self._spool_fault = None
                log.warning("call log: the spool is writable again")
            self.pacer.synced(loop.time())
            if not self._unspooled:
                self._synced_seq = max(self._synced_seq, top)
            self._synced.set()
            self._synced.clear()
            self._spooled.set()

    def _spool_batch(self, items: list[tuple[int, str, tuple]]) -> None:
        self._spool_lines(self._encode(items))

    async def durable(self, timeout_s: float = 10.0) -> None:
        """Wait until every record put so far is in the spool, fsynced: a crash now loses none of
        them (scripts and tests; the runtime never waits for this)."""
        target = self._put_seq
        async with asyncio.timeout(timeout_s):
            while self._synced_seq < target:
                if self._closed.is_set():
                    raise RuntimeError("the call log writer has stopped")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self._synced.wait()

    async def _database(self) -> None:
        """Spool -> database, in order; backs off while the database is away."""
        loop = asyncio.get_running_loop()
        delay = 0.0
        retry_at = 0.0
        next_check = 0.0
        while True:
            self._spooled.clear()  # before looking: a wake-up after this is never missed
            backlog = bool(self.spool.pending_files())
            if self._draining and (not backlog or self.storage.fault is not None):
                return
            now = loop.time()
            if backlog and now >= retry_at:
                if await self._write_backlog():
                    delay = 0.0
                else:
                    delay = min(self.retry_max_s, max(0.25, delay * 2))
                    retry_at = loop.time() + delay
                    if self._draining:
                        return
                continue
            if not backlog and now >= next_check:  # idle: is the database file still there?
                next_check = now + STORAGE_CHECK_S
                self._check_idle_storage()
            wait = (retry_at - now) if backlog else max(0.0, next_check - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, wait)):
                    await self._spooled.wait()

    def _check_idle_storage(self) -> None:
        try:
            self._check_storage()
        except StorageFault as exc:
            if self.storage.failed(str(exc)):
                log.error("call log: storage fault: %s; records wait in the spool", exc)

    def _sqlite_deleted(self) -> bool:
        """The SQLite file this writer wrote is no longer there (a stat: microseconds)."""
        return (
            self._sqlite_path is not None
            and self._db_identity is not None
            and not os.path.exists(self._sqlite_path)
        )

    def _check_storage(self) -> None:
        """SQLite: the file the engine writes must still be the one at its path. A deleted file is
        not made again by this process (its connections would write into the unlinked one, or a new
        empty file would hide the loss): the records wait in the spool until the file is restored,
        or the server restarts and creates it. A different file (restored) is reopened."""
        if self._sqlite_path is None or self._db_identity is None:
            return
        try:
            st = os.stat(self._sqlite_path)
        except FileNotFoundError:
            raise StorageFault(f"the database file {self._sqlite_path} was deleted") from None
        if (st.st_dev, st.st_ino) != self._db_identity:
            log.warning("call log: the database file %s was replaced; reopening it", self._sqlite_path)
            self._db_identity = None
            self._migrated = False
            self._reopen = True

    async def _write_backlog(self) -> bool:
        """Everything synced in the spool, oldest file first. False: the database is away."""
        try:
            self._check_storage()
            if self._reopen:
                self._reopen = False
                await self.engine.dispose()
            if not self._migrated:
                async with asyncio.timeout(max(self.write_timeout_s, 30.0)):
                    await migrate(self.engine)
                self._migrated = True
                if self._sqlite_path is not None:
                    st = os.stat(self._sqlite_path)
                    self._db_identity = (st.st_dev, st.st_ino)
            for path in self.spool.pending_files():
                while True:
                    records, offset = await asyncio.to_thread(self.spool.read, path, BATCH)
                    if records:
                        await self._write_batch(records)
                    await asyncio.to_thread(self.spool.consumed, path, offset)
                    if not records or path not in self.spool.pending_files():
                        break
            if self.storage.ok():
                log.warning("call log: the database takes writes again; the spooled backlog is written")
            return True
        except Exception as exc:
            self.stats["failures"] += 1
            waiting = self.spool.bytes_pending()
            if is_transient(exc):
                reason = storage_fault(exc) or "database unavailable"
                if self.storage.failed(reason):
                    log.error(
                        "call log: %s (%s); records wait in the spool (%d bytes), calls go on",
                        reason,
                        _short(exc),
                        waiting,
                    )
                if storage_fault(exc) and self._sqlite_path is not None:
                    # A broken SQLite connection is not reused: the next try opens a fresh one.
                    with contextlib.suppress(Exception):
                        await self.engine.dispose()
            elif self.storage.failed(f"writing failed: {type(exc).__name__}"):
                log.exception("call log: writing failed; %d bytes wait in the spool, retrying", waiting)
            return False

    async def _write_batch(self, records: list[dict[str, Any]]) -> None:
        """One transaction. A record the database refuses for its own sake (not an outage) is set aside
        in the rejected file, so one bad row never blocks the rest."""
        try:
            async with asyncio.timeout(self.write_timeout_s), self.engine.begin() as conn:
                await write_records(conn, records)
            self.stats["written"] += len(records)
            return
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(records) == 1:
                self._reject(records[0], exc)
                return
        for record in records:  # find the bad one: a transaction each
            await self._write_batch([record])

    def _reject(self, record: dict[str, Any], exc: BaseException) -> None:
        self.stats["rejected"] += 1
        log.error("call log: the database refused a %s record: %s", record.get("kind"), _short(exc))
        path = self.directory / REJECTED_FILE
        with open(path, "a", encoding="utf-8") as f:  # rare, small: no thread for it
            f.write(json.dumps({"error": _short(exc), "record": record}, ensure_ascii=False) + "\n")

    async def aclose(self, timeout_s: float | None = None) -> None:
        """Stop taking records; everything queued goes to the spool (fsynced) at once; the database
        then gets up to ``drain_timeout_s`` (none while it is known to be away) and what it has not
        taken stays in the spool for the next start. Returns within ``timeout_s`` (default: the
        drain time plus 2 s for the spool)."""
        self._closing = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        limit = self.drain_timeout_s + 2.0 if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                await self._closed.wait()
        except TimeoutError:
            log.error("call log: the writer did not stop within %.1f s", limit)

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every record put so far is in the database (tests, scripts)."""
        async with asyncio.timeout(timeout_s):
            await self.durable(timeout_s)
            await self._started.wait()
            while self.spool.pending_files() or self._unspooled:
                if self._closed.is_set():
                    return
                await asyncio.sleep(0.01)

    async def call_exists(self, call_sid: str) -> bool | None:
        """Whether the database knows the call; None when it cannot be asked now."""
        if self._sqlite_deleted():
            return None  # asking would make an empty file in place of the deleted one
        try:
            async with asyncio.timeout(2.0), self.engine.connect() as conn:
                found = await conn.scalar(
                    select(calls_table.c.call_sid).where(calls_table.c.call_sid == call_sid)
                )
            return found is not None
        except Exception as exc:
            if is_transient(exc) or not self._migrated:
                return None
            raise


def _sqlite_file(engine: AsyncEngine) -> str | None:
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    return engine.url.database


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:300]
