"""Event-loop lag, measured and explained.

A task on the loop sleeps ``interval_s`` again and again and records how late it wakes (the loop's
lag: every call's audio waits that long too) into a histogram. A watchdog thread reads the task's
heartbeat; when it is more than ``stall_s`` late, the loop thread is stuck in some code right now,
so the thread captures that thread's stack (``sys._current_frames``) and the running task's name.
When the loop comes back, the task logs the stall once, with its length and that stack: the line
names the code that held the loop. Cost: one timer per ``interval_s`` on the loop, and a thread
that wakes every ``interval_s / 2`` and does nothing unless the loop is late.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger("voxroute.loop")

STACK_FRAMES = 8  # innermost frames in the log line
# The loop's own code. On uvloop (telephony.event_loop) the loop is C: between callbacks the loop
# thread's innermost Python frame is asyncio.run's, in runners.py.
IDLE_FILES = ("selectors.py", "selector_events.py", "base_events.py", "runners.py")


class LoopWatch:
    def __init__(
        self,
        observe: Callable[[float], None] | None = None,
        *,
        interval_s: float = 0.02,
        stall_s: float = 0.05,
    ) -> None:
        self.observe = observe  # gets each lag in seconds (a Prometheus histogram's observe)
        self.interval_s = interval_s
        self.stall_s = stall_s
        self.stalls = 0
        self.worst_s = 0.0
        self._due = 0.0  # monotonic time the sampler should wake by
        self._captured: tuple[float, str, str] | None = None  # (due, task name, stack) of the stall now
        self._stop = threading.Event()

    async def run(self) -> None:
        """Sample until cancelled; the watchdog thread lives as long as this."""
        loop = asyncio.get_running_loop()
        thread = threading.Thread(
            target=self._watchdog, args=(loop, threading.get_ident()), name="loop-watchdog", daemon=True
        )
        self._due = time.monotonic() + self.interval_s
        thread.start()
        try:
            while True:
                self._due = time.monotonic() + self.interval_s
                await asyncio.sleep(self.interval_s)
                lag = max(0.0, time.monotonic() - self._due)
                if self.observe is not None:
                    self.observe(lag)
                if lag > self.stall_s:
                    self._report(lag)
        finally:
            self._stop.set()
            await asyncio.to_thread(thread.join, 1.0)

    def _report(self, lag: float) -> None:
        self.stalls += 1
        self.worst_s = max(self.worst_s, lag)
        captured, self._captured = self._captured, None
        if captured is not None and captured[0] == self._due:
            _, task, stack = captured
            log.warning("event loop stalled %.0f ms in task %s:\n%s", lag * 1000, task, stack)
        else:  # over before the watchdog looked (or it could not get the GIL)
            log.warning("event loop stalled %.0f ms (not caught in the act)", lag * 1000)

    def _watchdog(self, loop: asyncio.AbstractEventLoop, loop_thread: int) -> None:
        while not self._stop.wait(self.interval_s / 2):
            due = self._due
            if time.monotonic() - due <= self.stall_s:
                continue
            if self._captured is not None and self._captured[0] == due:
                continue  # this stall is caught already
            frame = sys._current_frames().get(loop_thread)
            if frame is None:
                continue
            summary = traceback.extract_stack(frame)
            stack = "".join(traceback.format_list(summary[-STACK_FRAMES:])).rstrip()
            try:
                task = asyncio.current_task(loop)
            except RuntimeError:
                task = None
            name = task.get_name() if task is not None else "(no task: a callback)"
            if summary and summary[-1].filename.endswith(IDLE_FILES):
                # Caught between callbacks: no code of ours held the loop (the process was not
                # scheduled, or the collector ran); any task name would be a leftover.
                name = "(none: the loop itself, between callbacks)"
            self._captured = (due, name, stack)
