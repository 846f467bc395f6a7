"""Where the call log's database is (``VOXROUTE_DATABASE_URL``, else SQLite in WAL mode at
``$VOXROUTE_DATA_DIR/voxroute.db``), its schema (Alembic migrations, one process at a time) and how
its failures read: a storage fault or an outage (records wait in the spool) or a bad record."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
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


def _locked(path: str):
    f = open(path, "a")  # noqa: SIM115 - the caller unlocks and closes it
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


# ---------------------------------------------------------------- how its failures read


class StorageFault(OSError):
    """The database's storage is not usable (the SQLite file is gone): records wait in the spool."""


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


def sqlite_file(engine: AsyncEngine) -> str | None:
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    return engine.url.database
