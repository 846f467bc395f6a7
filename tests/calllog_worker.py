"""A small process that writes the call log, for tests/test_durability.py (killed, stopped, restarted).

    python -m tests.calllog_worker DATABASE_URL DATA_DIR log N     # N calls, 2 turns each, then waits
    python -m tests.calllog_worker DATABASE_URL DATA_DIR forever   # calls until killed
    python -m tests.calllog_worker DATABASE_URL DATA_DIR drain     # start, write the spool, stop

``log`` and ``forever`` print ``durable K`` once every record of call K (and all before it) is in the
spool, fsynced; ``log`` prints ``logged`` when it has put everything and then waits. SIGTERM and SIGINT
call ``CallLog.aclose()`` (what ``voxroute serve`` does at shutdown), print ``closed S`` (seconds the
close took) and exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

from voxroute.agent.calllog.store import CallLog, make_engine
from voxroute.agent.config import CallLogConfig


def call(sid: str) -> dict:
    return {
        "call_sid": sid,
        "stream_sid": "MZ" + sid,
        "carrier": "twilio",
        "from_number": "+919800000001",
        "language": "en-IN",
        "started_at": time.time(),
        "ended": "in_progress",
    }


def turn(index: int) -> dict:
    return {
        "index": index,
        "kind": "speech",
        "transcript": f"turn {index}",
        "route": {"class": "order_tracking"},
        "usage": {"cost_usd": 0.001},
        "outcome": "answered",
    }


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(url: str, directory: Path, mode: str, count: int) -> None:
    log = CallLog(
        make_engine(url),
        salt=b"worker",
        directory=directory,
        settings=CallLogConfig(),
        retry_max_s=0.5,
        drain_timeout_s=2.0,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(log.run())
        if mode == "drain":
            await log.flush(60)
        else:
            n = 0
            while mode == "forever" or n < count:
                n += 1
                c = call(f"CA-w{n}")
                log.call_started(c)
                log.turn_finished(c, turn(1))
                log.turn_finished(c, turn(2))
                log.call_ended(
                    c | {"ended": "completed", "ended_at": time.time(), "turns": [turn(1), turn(2)]}
                )
                if mode == "forever":
                    await log.durable()
                    say(f"durable {n}")
                    await asyncio.sleep(0.01)
            if mode == "log":
                say("logged")
                await stop.wait()
        started = time.monotonic()
        await log.aclose()
        say(f"closed {time.monotonic() - started:.3f}")


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    )
