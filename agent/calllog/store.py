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

The parts, each a module of its own: the database, its migrations and how its failures read
(``database.py``), records to rows and rows to the database (``rows.py``), the spool (``spool.py``);
the writer here puts them together (and its module still exports their names callers import).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from voxroute.agent.calllog.database import (
    StorageFault,
    data_dir,
    database_url,
    describe,
    is_transient,
    make_engine,
    migrate,
    sqlite_file,
    storage_fault,
)
from voxroute.agent.calllog.redact import ConversationRedactor, redact, redact_conversation
from voxroute.agent.calllog.rows import (
    call_header,
    call_totals,
    caller_hash,
    caller_salt,
    turn_row,
    write_record,
    write_records,
)
from voxroute.agent.calllog.schema import calls_table
from voxroute.agent.calllog.spool import SPOOL_DIR, SYNC_INTERVAL_S, Spool, SyncPacer
from voxroute.agent.config import CallLogConfig

log = logging.getLogger("voxroute.calllog")

# The writer's own names, and those of the modules it was split into that callers import from here.
__all__ = [
    "BATCH",
    "KNOWN_CALLS",
    "REJECTED_FILE",
    "SPOOL_DIR",
    "STORAGE_CHECK_S",
    "CallLog",
    "Spool",
    "StorageState",
    "SyncPacer",
    "TurnNumbers",
    "caller_hash",
    "caller_salt",
    "data_dir",
    "database_url",
    "describe",
    "is_transient",
    "make_engine",
    "migrate",
    "storage_fault",
    "turn_row",
    "write_record",
    "write_records",
]

REJECTED_FILE = "calllog-rejected.jsonl"
BATCH = 200  # records per transaction
STORAGE_CHECK_S = 2.0  # how often an idle writer checks that the SQLite file is still there
KNOWN_CALLS = 4096  # calls whose turn numbers the writer remembers (for later legs)


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
        self._sqlite_path = sqlite_file(engine)
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


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:300]
