"""The cyclic garbage collector stays off from a committed turn to its model request.

That stretch is one synchronous step of the turn's task (route, build the request, launch it): a
collection that falls into it (gen0 0.3-1 ms and gen1 1-4 ms on a quiet 2-core machine, many times
that on a loaded one, `bench/overhead.py`) is added to the caller's wait in full. Held, the
collector runs at the first allocation after the release instead, while the model is thinking.
Holds nest across calls; a collector the process had turned off itself stays off.

``free_frames``: what a call leaves for the collector at its end is kept to (next to) nothing.
"""

from __future__ import annotations

import gc
import traceback

_holds = 0
_reenable = False


def hold() -> None:
    global _holds, _reenable
    if _holds == 0:
        _reenable = gc.isenabled()
        gc.disable()
    _holds += 1


def release() -> None:
    global _holds
    if _holds == 0:
        return
    _holds -= 1
    if _holds == 0 and _reenable:
        gc.enable()


def held() -> int:
    return _holds


def free_frames(exc: BaseException) -> None:
    """Clear the finished frames of ``exc``'s traceback, where an exception ends a strand at the end
    of every call. On Python 3.11 ``asyncio.TaskGroup.__aexit__`` keeps the group it raises (and a
    ``CancelledError`` it passes on) in a local of its own frame, which that exception's traceback
    holds: a cycle per call that only a full collection frees, with the frames and everything they
    hold. The traceback still prints (code and line numbers stay); running frames are left alone."""
    traceback.clear_frames(exc.__traceback__)
