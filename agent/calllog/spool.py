"""The call log's write-ahead spool: every record as a JSON line on disk, fsynced at most
``SYNC_INTERVAL_S`` after it is appended, before the database sees it (:class:`Spool`), and when the
next fsync is due (:class:`SyncPacer`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("voxroute.calllog")

SPOOL_DIR = "calllog-spool"
SYNC_INTERVAL_S = 0.2  # the spool is fsynced at most this long after a record is appended
ROTATE_BYTES = 1024 * 1024  # our spool file, once wholly in the database and this big, is replaced


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
