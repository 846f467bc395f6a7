"""The cyclic garbage collector stays off from a committed turn to its model request.

That stretch is one synchronous step of the turn's task (route, build the request, launch it): a
collection that falls into it (gen0 0.3-1 ms and gen1 1-4 ms on a quiet 2-core machine, many times
that on a loaded one, `bench/overhead.py`) is added to the caller's wait in full. Held, the
collector runs at the first allocation after the release instead, while the model is thinking.
Holds nest across calls; a collector the process had turned off itself stays off.
"""

from __future__ import annotations

import gc

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
