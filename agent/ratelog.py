"""A log line that a peer cannot turn into a flood.

For what a peer can make happen many times at once (a scan of bad packets, hundreds of sockets
timing out in the same tick): each line is formatted and written on the event loop, and a burst of
them would stall every call. Standard library only: sans-I/O protocol modules use it.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """At most one line per key per ``interval`` seconds; the next one says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, text: str, *args: object) -> None:
        self.log(logging.WARNING, key, text, *args)

    def info(self, key: str, text: str, *args: object) -> None:
        self.log(logging.INFO, key, text, *args)

    def log(self, level: int, key: str, text: str, *args: object) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(key, (-1e9, 0))
        if now - last < self._interval:
            self._last[key] = (last, suppressed + 1)
            return
        if len(self._last) > 1000:  # keys may be source addresses: bounded memory under a scan
            self._last.clear()
        self._last[key] = (now, 0)
        more = f" ({suppressed} similar suppressed)" if suppressed else ""
        self._log.log(level, text + more, *args)
