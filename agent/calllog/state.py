"""Call state that outlives one request, shared by every process of one database (issue 15).

Behind a load balancer the webhook, the media stream, the human leg's dial action and the stream of
a caller back from a failed transfer may each reach another process (or host). What one of them
learns and another needs lives here, in the call log's database (table ``call_state``: one JSON
value per call and kind):

- ``call``: the conversation so far (the call's summary: history, turns, leg), which the leg of a
  caller back from a failed transfer continues;
- ``handoff``: the handoff record (summary, whisper, transfer) of ``GET /calls/{id}/handoff`` and
  of the whisper the human hears;
- ``human_leg``: how the human leg of the transfer ended (the dial action's result);
- ``plivo_transfer``: the transfer Plivo fetches the XML of (its ``aleg_url``), handed out once;
- ``outcome``: the operator's verdict (``POST /calls/{id}/outcome``), which the process holding the
  live call takes into the call's record when the call ends.

Each kind has one writer at a time (the process holding the call, or the one answering the
carrier's request), so a value is replaced whole and never read-modified-written across processes.

Writes never make a call wait on the database: ``put_nowait`` queues; ``put`` queues and waits at most
``write_timeout_s`` for the write (used where the next request depends on it, e.g. before a transfer
is asked for), and not at all while the database is known to be failing. One writer task (``run``, owned by the runtime's task group) writes in order, in
batches, retrying a failed batch for up to ``retry_s``; a write that fails is logged and the call goes
on. Reads are bounded by ``read_timeout_s`` and return None when the database cannot answer in time
(the caller of ``get`` falls back to what its own process knows). Rows are deleted ``ttl_s`` after
their last write (the conversation and Plivo's transfer sooner: ``short_ttl_s``); the values are not
redacted (the conversation goes on with them), so they are kept no longer than a call may need them.

Without an engine (the call log disabled) the store holds nothing: one process is then the whole
deployment and its memory (``voxroute.agent.services.Services``) the only state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from voxroute.agent.calllog.database import database_url, describe, make_engine, migrate
from voxroute.agent.calllog.schema import call_state_table

log = logging.getLogger("voxroute.callstate")

KINDS = frozenset({"call", "handoff", "human_leg", "plivo_transfer", "outcome"})
SHORT_LIVED = frozenset({"call", "plivo_transfer"})  # raw conversation, a one-shot transfer
READ_TIMEOUT_S = 0.5
WRITE_TIMEOUT_S = 2.0
RETRY_S = 5.0
TTL_S = 24 * 3600.0
SHORT_TTL_S = 3600.0
PRUNE_EVERY_S = 300.0
QUEUE_SIZE = 10000
BATCH = 100


@dataclass
class _Write:
    call_sid: str
    kind: str
    value: dict[str, Any] | None  # None: delete
    done: asyncio.Future[bool] | None = None


class CallState:
    """The shared call-state store. ``engine`` None: disabled (every read None, writes dropped)."""

    def __init__(
        self,
        engine: AsyncEngine | None,
        *,
        read_timeout_s: float = READ_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        retry_s: float = RETRY_S,
        ttl_s: float = TTL_S,
        short_ttl_s: float = SHORT_TTL_S,
        migrated: bool = False,
    ) -> None:
        self.engine = engine
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self.retry_s = retry_s
        self.ttl_s = ttl_s
        self.short_ttl_s = short_ttl_s
        self.migrated = migrated
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue(QUEUE_SIZE)
        self._closing = False
        self._running = False
        self._stopped = asyncio.Event()
        self._fault: str | None = None  # logged once when it starts, once when it ends
        self.stats = {"written": 0, "failed": 0, "dropped": 0, "reads": 0, "read_failures": 0}

    @property
    def shared(self) -> bool:
        """True when a database holds the state (other processes may have written it)."""
        return self.engine is not None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, **kw: Any) -> CallState:
        """The call log's database (``VOXROUTE_DATABASE_URL``, else SQLite in ``VOXROUTE_DATA_DIR``),
        on an engine (a connection pool) of its own: a read never waits behind the call log's writes."""
        url = database_url(env)
        log.info("call state: %s", describe(url))
        return cls(make_engine(url), **kw)

    # ---- writes

    def put_nowait(self, call_sid: str, kind: str, value: dict[str, Any]) -> None:
        """Queue ``value`` as the call's ``kind``; never blocks, never raises."""
        self._enqueue(_Write(call_sid, _kind(kind), value))

    async def put(self, call_sid: str, kind: str, value: dict[str, Any]) -> bool:
        """Queue ``value`` and wait (at most ``write_timeout_s``) until it is in the database. False:
        not written (yet); logged, and the caller goes on."""
        return await self._wait(_Write(call_sid, _kind(kind), value))

    async def delete(self, call_sid: str, kind: str) -> bool:
        return await self._wait(_Write(call_sid, _kind(kind), None))

    async def _wait(self, write: _Write) -> bool:
        if self.engine is None:
            return False
        if self._fault is not None:  # known to be failing: queued for the retries, nobody waits on it
            self._enqueue(write)
            return False
        write.done = asyncio.get_running_loop().create_future()
        if not self._enqueue(write):
            return False
        try:
            async with asyncio.timeout(self.write_timeout_s):
                return await asyncio.shield(write.done)
        except TimeoutError:
            log.warning(
                "call state: %s of call %s not written within %.1f s; going on",
                write.kind,
                write.call_sid,
                self.write_timeout_s,
            )
            return False

    def _enqueue(self, write: _Write) -> bool:
        if self.engine is None:
            return False
        if self._closing:
            log.error("call state: %s of call %s after the writer stopped: not written", write.kind,
                      write.call_sid)  # fmt: skip
            self.stats["dropped"] += 1
            return False
        try:
            self._queue.put_nowait(write)
        except asyncio.QueueFull:
            self.stats["dropped"] += 1
            log.error(
                "call state: queue full (%d): %s of call %s lost", QUEUE_SIZE, write.kind, write.call_sid
            )
            return False
        return True

    # ---- reads

    async def get(self, call_sid: str, kind: str) -> dict[str, Any] | None:
        """The call's ``kind`` from the database; None when there is none, or the database did not
        answer within ``read_timeout_s`` (logged)."""
        values = await self.get_many(call_sid, (kind,))
        return values.get(kind) if values is not None else None

    async def get_many(self, call_sid: str, kinds: tuple[str, ...]) -> dict[str, dict[str, Any]] | None:
        """The call's values of these kinds, in one query; None: the database could not answer."""
        if self.engine is None:
            return None
        c = call_state_table.c
        query = select(c.kind, c.value).where(c.call_sid == call_sid, c.kind.in_([_kind(k) for k in kinds]))
        self.stats["reads"] += 1
        try:
            async with asyncio.timeout(self.read_timeout_s), self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        except Exception as exc:
            self.stats["read_failures"] += 1
            log.warning(
                "call state: reading %s of call %s failed: %s", "/".join(kinds), call_sid, _short(exc)
            )
            return None
        return {kind: value for kind, value in rows}

    async def take(self, call_sid: str, kind: str) -> dict[str, Any] | None:
        """Read and delete (a value handed out once): None when there is none or on a failure. Of
        two processes taking it at once, one gets it."""
        if self.engine is None:
            return None
        c = call_state_table.c
        where = (c.call_sid == call_sid, c.kind == _kind(kind))
        try:
            async with asyncio.timeout(self.read_timeout_s), self.engine.begin() as conn:
                value = await conn.scalar(select(c.value).where(*where))
                if value is None:
                    return None
                gone = await conn.execute(delete(call_state_table).where(*where))
            return value if gone.rowcount else None
        except Exception as exc:
            log.warning("call state: taking %s of call %s failed: %s", kind, call_sid, _short(exc))
            return None

    # ---- the writer

    async def run(self) -> None:
        """Writes what is queued, in order and in batches; prunes old rows. Owned by the runtime's
        task group; ends after ``aclose`` once the queue is written (or given up). Never raises."""
        if self.engine is None:
            return
        self._running = True
        loop = asyncio.get_running_loop()
        prune_at = loop.time() + 5.0
        try:
            while True:
                batch: list[_Write | None] = []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, prune_at - loop.time())):
                        batch.append(await self._queue.get())
                while batch and len(batch) < BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                stop = any(w is None for w in batch)
                writes = [w for w in batch if w is not None]
                if writes:
                    await self._write(writes)
                if loop.time() >= prune_at:
                    prune_at = loop.time() + PRUNE_EVERY_S
                    await self._prune()
                if stop:
                    return
        except Exception:
            log.exception("call state: the writer failed; call state is no longer shared")
        finally:
            self._closing = True
            while not self._queue.empty():  # never written: whoever waits hears so now
                if (left := self._queue.get_nowait()) is not None:
                    _settle([left], False)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.engine.dispose()
            self._stopped.set()

    async def _write(self, writes: list[_Write]) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.retry_s
        delay = 0.1
        while True:
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await self._write_once(writes)
                if self._fault is not None:
                    log.warning("call state: the database is back (was: %s)", self._fault)
                    self._fault = None
                self.stats["written"] += len(writes)
                _settle(writes, True)
                return
            except Exception as exc:
                if self._fault is None:
                    self._fault = _short(exc)
                    log.warning("call state: cannot write to the database: %s; retrying", self._fault)
                if loop.time() + delay > give_up or self._closing:
                    self.stats["failed"] += len(writes)
                    log.error("call state: %d value(s) not written (%s), e.g. %s of call %s", len(writes),
                              _short(exc), writes[0].kind, writes[0].call_sid)  # fmt: skip
                    _settle(writes, False)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _write_once(self, writes: list[_Write]) -> None:
        assert self.engine is not None
        if not self.migrated:  # the database was away at start: the schema now
            await migrate(self.engine)
            self.migrated = True
        now = datetime.now(UTC)
        latest: dict[tuple[str, str], dict[str, Any] | None] = {}
        for w in writes:  # in order: the last value of a (call, kind) wins
            latest.pop((w.call_sid, w.kind), None)
            latest[(w.call_sid, w.kind)] = w.value
        rows = [
            {"call_sid": s, "kind": k, "value": v, "updated_at": now}
            for (s, k), v in latest.items()
            if v is not None
        ]
        gone = [(s, k) for (s, k), v in latest.items() if v is None]
        c = call_state_table.c
        async with self.engine.begin() as conn:
            for sid, kind in gone:
                await conn.execute(delete(call_state_table).where(c.call_sid == sid, c.kind == kind))
            if rows:
                insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
                stmt = insert(call_state_table)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["call_sid", "kind"],
                    set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
                )
                await conn.execute(stmt, rows)

    async def _prune(self) -> None:
        """Rows past their time to live go (every process does it; deleting twice is harmless)."""
        assert self.engine is not None
        if not self.migrated:
            return
        c = call_state_table.c
        now = datetime.now(UTC)
        short = c.kind.in_(sorted(SHORT_LIVED))
        try:
            async with asyncio.timeout(self.write_timeout_s), self.engine.begin() as conn:
                await conn.execute(
                    delete(call_state_table).where(
                        short, c.updated_at < now - timedelta(seconds=self.short_ttl_s)
                    )
                )
                await conn.execute(
                    delete(call_state_table).where(~short, c.updated_at < now - timedelta(seconds=self.ttl_s))
                )
        except Exception as exc:
            log.warning("call state: pruning old rows failed: %s", _short(exc))

    async def aclose(self, timeout_s: float = 3.0) -> None:
        """Stop taking writes; what is queued is written (up to ``timeout_s``)."""
        if self.engine is None or self._closing:
            return
        self._closing = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        if not self._running:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._stopped.wait()
        except TimeoutError:
            log.error("call state: the writer did not stop within %.1f s", timeout_s)


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown call state kind {kind!r}; one of {sorted(KINDS)}")
    return kind


def _settle(writes: list[_Write], ok: bool) -> None:
    for w in writes:
        if w.done is not None and not w.done.done():
            w.done.set_result(ok)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
