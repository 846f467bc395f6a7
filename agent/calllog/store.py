"""The call log's writer: every call and turn into the database, without ever making a call wait.

``CallLog`` is a call observer (agent/services.py): ``call_started``, ``turn_finished`` and
``call_ended`` only put the record on a bounded queue and return. One writer task (``run``, owned by
the runtime's task group) turns records into rows (numbers hashed, text redacted) and writes them in
batches. Every write is an upsert keyed by ``call_sid`` or ``(call_sid, turn_index)``, so writing a
record twice (a retry, a spool read again after a crash) never duplicates anything.

When the database is slow or down, the writer keeps the rows in memory (``memory_records``), spills
the overflow to a JSONL spool file in the data directory (at most ``spool_max_bytes``), and retries
with backoff; when the database answers again, the spool is written first, then memory, in order.
On a clean shutdown the writer drains the queue; what the database still refuses stays in the spool
and is written at the next start (a spool left by a process that is gone is adopted).

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
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from agent.calllog.redact import redact, redact_json
from agent.calllog.schema import calls_table, turns_table
from agent.config import CallLogConfig
from agent.timeline import TIMELINE_NAMES

log = logging.getLogger("voxroute.calllog")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SALT_FILE = "caller_salt"
SPOOL_DIR = "calllog-spool"
REJECTED_FILE = "calllog-rejected.jsonl"
BATCH = 200  # records per transaction
SQLITE_BUSY_MS = 2000  # how long SQLite waits for another writer's lock before the write fails


# ---------------------------------------------------------------- where the database is


def data_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("VOXROUTE_DATA_DIR") or "data")


def database_url(env: dict[str, str] | None = None) -> str:
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
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
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


def caller_salt(directory: Path, env: dict[str, str] | None = None) -> bytes:
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
    }


def call_totals(call: dict[str, Any]) -> dict[str, Any]:
    """What only the end of a call knows: turn count, cost, the reason for contact, the handoff."""
    turns = call.get("turns") or []
    routed = [t for t in turns if (t.get("route") or {}).get("class")]
    return {
        "turn_count": len(turns),
        "cost_usd": round(sum(float((t.get("usage") or {}).get("cost_usd") or 0.0) for t in turns), 8),
        "routing_class": routed[0]["route"]["class"] if routed else None,
        "handoff": redact_json(call.get("handoff")),
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


async def _upsert(conn: AsyncConnection, table, row: dict[str, Any], keys: tuple[str, ...]) -> None:
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    stmt = insert(table).values(**row)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in row if c not in keys}
    )
    await conn.execute(stmt)


async def write_record(conn: AsyncConnection, record: dict[str, Any]) -> None:
    """One record (``kind``: call, turn, outcome) as upserts: writing it again changes nothing."""
    now = datetime.now(UTC)
    kind = record["kind"]
    if kind in ("call", "turn"):
        call = dict(record["call"])
        call["started_at"], call["ended_at"] = _dt(call["started_at"]), _dt(call.get("ended_at"))
        call["updated_at"] = now
        await _upsert(conn, calls_table, call, ("call_sid",))
        for turn in record.get("turns") or ():
            await _upsert(conn, turns_table, {**turn, "recorded_at": now}, ("call_sid", "turn_index"))
    elif kind == "outcome":
        await conn.execute(
            update(calls_table)
            .where(calls_table.c.call_sid == record["call_sid"])
            .values(outcome=record["outcome"], outcome_reason=record["reason"], updated_at=now)
        )
    else:
        raise ValueError(f"unknown call log record kind {kind!r}")


def is_transient(exc: BaseException) -> bool:
    """The database is away (down, restarting, locked, unreachable): try again later. Anything else is
    a problem with one record, which must not hold back the others."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError | ConnectionError)


# ---------------------------------------------------------------- the spool (records on disk)


class Spool:
    """Records the database could not take yet, as JSON lines in files under the data directory.

    Each process appends to its own file and holds an exclusive ``flock`` on it while it runs; a file
    nobody holds was left by a process that ended with the database away, and is adopted. Files are
    read front to back and deleted once every record in them is written. Sizes and read offsets are
    kept in memory, so asking whether anything is spooled costs no I/O."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.own_path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._own = None  # the open, locked file we append to
        self._handles: dict[Path, Any] = {}  # adopted file -> its open, locked handle
        self._sizes: dict[Path, int] = {}  # file -> bytes in it
        self._offsets: dict[Path, int] = {}  # file -> bytes already in the database

    def bytes_pending(self) -> int:
        return sum(size - self._offsets.get(p, 0) for p, size in self._sizes.items())

    def pending_files(self) -> list[Path]:
        """Oldest first: adopted files, then our own (records spilled earlier than memory's)."""
        return [p for p, size in self._sizes.items() if size > self._offsets.get(p, 0)]

    # The methods below do file I/O: the writer calls them through asyncio.to_thread.

    def adopt(self) -> int:
        """Take the files of processes that are gone. Returns how many."""
        if not self.directory.is_dir():
            return 0
        taken = 0
        for path in sorted(self.directory.glob("*.jsonl")):
            if path == self.own_path or path in self._handles:
                continue
            f = open(path, "rb")  # noqa: SIM115 - held open (and locked) until the file is consumed
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process's own spool
                f.close()
                continue
            self._handles[path] = f
            self._sizes = {path: os.fstat(f.fileno()).st_size, **self._sizes}  # adopted: older than ours
            taken += 1
        return taken

    def append(self, records: list[dict[str, Any]]) -> int:
        """Append what fits under ``max_bytes``; returns how many records were kept."""
        if self._own is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Locked under a name adopt() ignores, then renamed: nobody can adopt it in between.
            part = self.own_path.with_suffix(".part")
            self._own = open(part, "ab")  # noqa: SIM115 - held open for the writer's life
            fcntl.flock(self._own, fcntl.LOCK_EX | fcntl.LOCK_NB)
            part.replace(self.own_path)
            self._sizes[self.own_path] = 0
        used = self.bytes_pending()
        kept = 0
        for record in records:
            line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            if used + len(line) > self.max_bytes:
                break
            self._own.write(line)
            used += len(line)
            self._sizes[self.own_path] += len(line)
            kept += 1
        self._own.flush()
        os.fsync(self._own.fileno())
        return kept

    def read(self, path: Path, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` records from where the file was left; returns them and the next offset."""
        records: list[dict[str, Any]] = []
        offset = self._offsets.get(path, 0)
        with open(path, "rb") as f:
            f.seek(offset)
            while len(records) < limit:
                line = f.readline()
                if not line.endswith(b"\n"):  # end of file (or a line cut by a crash: skipped)
                    if line:
                        offset += len(line)
                    break
                offset += len(line)
                try:
                    records.append(json.loads(line))
                except ValueError:
                    log.error("call log: unreadable line in %s skipped", path)
        return records, offset

    def consumed(self, path: Path, offset: int) -> None:
        """Records up to ``offset`` are in the database; a fully written file goes away."""
        self._offsets[path] = offset
        if offset < self._sizes[path]:
            return
        if path == self.own_path:
            self._own.truncate(0)
            self._sizes[path] = self._offsets[path] = 0
        else:
            path.unlink(missing_ok=True)
            self._handles.pop(path).close()
            self._sizes.pop(path, None)
            self._offsets.pop(path, None)

    def close(self) -> None:
        """Our file goes if empty; otherwise it stays (unlocked) for the next process to adopt."""
        files = [(p, f) for p, f in self._handles.items()]
        if self._own is not None:
            files.append((self.own_path, self._own))
        for path, f in files:
            f.close()
            left = self._sizes.get(path, 0) - self._offsets.get(path, 0)
            if left <= 0:
                path.unlink(missing_ok=True)
            elif self._offsets.get(path):  # drop the written part: the next reader starts at 0
                _drop_head(path, self._offsets[path])
        self._own = None
        self._handles.clear()
        self._sizes.clear()
        self._offsets.clear()


def _drop_head(path: Path, offset: int) -> None:
    rest = path.read_bytes()[offset:]
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(rest)
    tmp.replace(path)


# ---------------------------------------------------------------- the writer


class CallLog:
    """The call observer that writes the call log. ``run`` is the writer task; ``aclose`` drains it."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        salt: bytes,
        directory: Path,
        settings: CallLogConfig | None = None,
        retry_max_s: float = 5.0,
        write_timeout_s: float = 10.0,
        drain_timeout_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.settings = settings or CallLogConfig()
        self.salt = salt
        self.directory = directory
        self.spool = Spool(directory / SPOOL_DIR, self.settings.spool_max_bytes)
        self.retry_max_s = retry_max_s
        self.write_timeout_s = write_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self._queue: asyncio.Queue[tuple[str, tuple] | None] = asyncio.Queue(self.settings.queue_size)
        self._memory: deque[dict[str, Any]] = deque()  # rows waiting for the database, oldest first
        self._closing = False
        self._closed = asyncio.Event()
        self._idle = asyncio.Event()  # nothing queued, in memory or spooled
        self._migrated = False
        self.stats = {"written": 0, "failures": 0, "spilled": 0, "dropped": 0, "rejected": 0}

    @classmethod
    def from_environment(cls, settings: CallLogConfig, env: dict[str, str] | None = None, **kw) -> CallLog:
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
            self._queue.put_nowait((kind, args))
            self._idle.clear()
        except asyncio.QueueFull:
            # The writer is stuck longer than any write may take (write_timeout_s): say so loudly.
            self.stats["dropped"] += 1
            log.error("call log: queue full (%d records): a %s record is lost", self._queue.maxsize, kind)

    # ---- records -> rows

    def _rows(self, kind: str, args: tuple) -> dict[str, Any]:
        raw = self.settings.store_raw_numbers
        if kind == "call":
            return {"kind": "call", "call": call_header(args[0], self.salt, raw)}
        if kind == "turn":
            call, turn = args
            return {
                "kind": "turn",
                "call": call_header(call, self.salt, raw),
                "turns": [turn_row(call["call_sid"], turn)],
            }
        if kind == "end":
            call = args[0]
            return {
                "kind": "call",
                "call": {**call_header(call, self.salt, raw), **call_totals(call)},
                # Every turn again: a turn's outcome can change as the call ends (caller hung up).
                "turns": [turn_row(call["call_sid"], t) for t in call.get("turns") or ()],
            }
        call_sid, outcome, reason = args
        return {"kind": "outcome", "call_sid": call_sid, "outcome": outcome, "reason": redact(reason)}

    # ---- the writer task

    async def run(self) -> None:
        """Owned by the runtime's task group; ends after ``aclose`` once everything is written or spooled.
        It never raises into its owner: a bug here costs the call log, not the calls."""
        try:
            adopted = await asyncio.to_thread(self.spool.adopt)
            if adopted:
                log.warning("call log: %d spool file(s) of an earlier run will be written", adopted)
            await self._loop()
            await self._drain()
        except Exception:
            log.exception("call log: the writer failed; calls are no longer logged")
        finally:
            self._closed.set()
            try:
                self._intake([])
                if self._memory:  # cancelled (the runtime is failing): keep what we have, on disk
                    self.spool.append(list(self._memory))
                    self._memory.clear()
                self.spool.close()
            except Exception:
                log.exception("call log: could not keep %d records in the spool", len(self._memory))
            await self.engine.dispose()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.0  # > 0 while the database is away: how long to wait before trying again
        retry_at = 0.0
        while True:
            backlog = bool(self._memory) or bool(self.spool.pending_files())
            if not backlog and self._queue.empty():
                self._idle.set()
            if self._closing and self._queue.empty():
                return
            if backlog and loop.time() >= retry_at:
                if await self._write_backlog():
                    delay = 0.0
                else:
                    delay = min(self.retry_max_s, max(0.25, delay * 2))
                    retry_at = loop.time() + delay
                await self._take(0)
                continue
            await self._take(max(0.0, retry_at - loop.time()) if backlog else None)

    async def _take(self, wait: float | None) -> None:
        """Move queued records into memory (as rows); wait up to ``wait`` s for the first one."""
        items = []
        if self._queue.empty() and (wait is None or wait > 0):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    items.append(await self._queue.get())
        self._intake(items)
        if len(self._memory) > self.settings.memory_records:
            await self._spill(len(self._memory) - self.settings.memory_records // 2)

    def _intake(self, items: list) -> None:
        """``items`` and everything queued, as rows in memory."""
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        for item in items:
            if item is None:  # aclose's wake-up
                continue
            try:
                self._memory.append(self._rows(*item))
            except Exception:  # a malformed record must not stop the writer
                self.stats["rejected"] += 1
                log.exception("call log: could not make rows of a %s record", item[0])

    async def _spill(self, count: int) -> None:
        """The oldest ``count`` rows in memory go to the spool (memory stays bounded while the database
        is away); order is kept because the spool is written before memory."""
        batch = [self._memory.popleft() for _ in range(min(count, len(self._memory)))]
        kept = await asyncio.to_thread(self.spool.append, batch)
        self.stats["spilled"] += kept
        if kept < len(batch):
            self.stats["dropped"] += len(batch) - kept
            log.error(
                "call log: spool full (%d bytes): %d records lost", self.spool.max_bytes, len(batch) - kept
            )
        else:
            log.warning("call log: database away; %d records spooled to %s", kept, self.spool.directory)

    async def _write_backlog(self) -> bool:
        """Spool first (older), then memory. False: the database is away (try again later)."""
        try:
            if not self._migrated:
                async with asyncio.timeout(max(self.write_timeout_s, 30.0)):
                    await migrate(self.engine)
                self._migrated = True
            for path in self.spool.pending_files():
                while True:
                    records, offset = await asyncio.to_thread(self.spool.read, path, BATCH)
                    if records:
                        await self._write_batch(records)
                    await asyncio.to_thread(self.spool.consumed, path, offset)
                    if not records or path not in self.spool.pending_files():
                        break
            while self._memory:
                batch = [self._memory[i] for i in range(min(BATCH, len(self._memory)))]
                await self._write_batch(batch)
                for _ in batch:
                    self._memory.popleft()
            return True
        except Exception as exc:
            self.stats["failures"] += 1
            waiting = len(self._memory)
            if is_transient(exc):
                log.warning("call log: database unavailable (%s); %d records waiting", _short(exc), waiting)
            else:
                log.exception("call log: writing failed; %d records waiting, retrying", waiting)
            return False

    async def _write_batch(self, records: list[dict[str, Any]]) -> None:
        """One transaction. A record the database refuses for its own sake (not an outage) is set aside
        in the rejected file, so one bad row never blocks the rest."""
        try:
            async with asyncio.timeout(self.write_timeout_s), self.engine.begin() as conn:
                for record in records:
                    await write_record(conn, record)
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

    async def _drain(self) -> None:
        """At shutdown: write what is left while the database answers, up to ``drain_timeout_s``; then
        whatever remains in memory goes to the spool, for the next start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        delay = 0.1
        await self._take(0)  # records that came in while the loop was ending
        while self._memory or self.spool.pending_files():
            if await self._write_backlog() or loop.time() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
            await self._take(0)
        await self._take(0)
        if self._memory:
            left = len(self._memory)
            await self._spill(left)
            log.warning("call log: %d records kept in the spool; they are written at the next start", left)

    async def aclose(self) -> None:
        """Stop taking records, write (or spool) what is pending, and wait for the writer to end."""
        self._closing = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        await self._closed.wait()

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every record put so far is in the database (tests, scripts)."""
        async with asyncio.timeout(timeout_s):
            while not self._closed.is_set():
                await self._idle.wait()
                if self._queue.empty() and not self._memory:
                    return
                self._idle.clear()
                await asyncio.sleep(0.01)

    async def call_exists(self, call_sid: str) -> bool | None:
        """Whether the database knows the call; None when it cannot be asked now."""
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


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:300]
