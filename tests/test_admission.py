"""Bounds of one process (issue 18): the call gate, the media-silence guard of links that do not time
their own receive, SIP's busy answer, and the event-loop watchdog that names what stalled."""

from __future__ import annotations

import asyncio
import logging
import time

from voxroute.agent.link import CallEnded, CallStart, InboundAudio
from voxroute.agent.loopwatch import LoopWatch
from voxroute.emulators.sip_carrier import SipPhone
from voxroute.telephony.admission import BUSY, DRAINING, CallGate, SilenceGuard
from voxroute.telephony.sip.transport import SipServer, serving


def test_the_gate_admits_up_to_its_cap_and_nothing_while_draining(caplog):
    gate = CallGate(2)
    assert gate.enter("twilio", "c1") is None and gate.enter("plivo", "c2") is None
    assert gate.active == 2 and gate.refusal() == BUSY
    assert gate.enter("twilio", "c3") == BUSY and gate.check("sip", "c4") == BUSY
    assert gate.active == 2  # a refusal takes no slot
    gate.leave()
    assert gate.refusal() is None and gate.check("twilio", "c5") is None
    gate.draining = True
    assert gate.enter("telnyx", "c6") == DRAINING
    assert dict(gate.refused) == {("twilio", BUSY): 1, ("sip", BUSY): 1, ("telnyx", DRAINING): 1}
    # one line for the first refusal, the next ones within 5 s are counted in the next line
    assert caplog.text.count("refused (busy)") == 1 and "twilio call c3 refused (busy): 2 of 2" in caplog.text


class QueueLink:
    """A link whose events come from a queue, as SIP's and AudioSocket's do."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.start = CallStart(call_sid="SIPcall", stream_sid="s", tenant="default")
        self.hung_up = 0

    def events(self):
        return self

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.queue.get()

    async def hangup(self) -> None:
        self.hung_up += 1


async def test_the_silence_guard_ends_a_call_whose_media_stopped(caplog):
    link = QueueLink()
    guard = SilenceGuard(link, 0.2)
    assert guard.start.call_sid == "SIPcall"  # everything else is the link's
    events = guard.events()
    frame = InboundAudio(bytes(320), None)
    link.queue.put_nowait(frame)
    assert await events.__anext__() == frame
    loop = asyncio.get_running_loop()
    for _ in range(3):  # media that keeps coming keeps the call (each wait shorter than the timeout)
        loop.call_later(0.1, link.queue.put_nowait, frame)
        assert await events.__anext__() == frame
    began = loop.time()
    assert await events.__anext__() == CallEnded("closed")
    assert 0.19 <= loop.time() - began < 1.0
    assert link.hung_up == 1 and guard.timed_out
    assert "call SIPcall: no media for 0.2 s, ending the call" in caplog.text
    try:
        await events.__anext__()
        raise AssertionError("the guard yields nothing after the end")
    except StopAsyncIteration:
        pass


async def test_sip_invite_over_the_cap_gets_486_busy_here():
    started: list[str] = []

    async def on_call(link) -> None:
        started.append(link.start.call_sid)

    gate = CallGate(1)
    gate.draining = True
    server = SipServer(on_call, bind=("127.0.0.1", 0), admit=lambda call_id: gate.check("sip", call_id))
    async with serving(server), SipPhone.running() as phone:
        assert server.address is not None
        call = await phone.call(f"sip:agent@127.0.0.1:{server.address[1]}")
        async with asyncio.timeout(5):
            assert await call.answered is False
        assert "486" in (call.end_reason or "")
    assert started == [] and gate.refused[("sip", DRAINING)] == 1


async def test_the_loop_watchdog_names_the_task_and_code_that_stalled(caplog):
    lags: list[float] = []
    watch = LoopWatch(lags.append, interval_s=0.01, stall_s=0.05)

    def hog() -> None:
        time.sleep(0.4)  # blocking work on the loop: what the watchdog is for

    async def culprit() -> None:
        await asyncio.sleep(0.1)
        hog()

    with caplog.at_level(logging.WARNING, logger="voxroute.loop"):
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(watch.run())
            await tg.create_task(culprit(), name="culprit-task")
            await asyncio.sleep(0.1)
            watcher.cancel()
    assert watch.stalls >= 1 and max(lags) >= 0.35
    line = next(r for r in caplog.records if "event loop stalled" in r.getMessage()).getMessage()
    assert "in task culprit-task" in line and "in hog" in line and "time.sleep(0.4)" in line
    assert sum(1 for lag in lags if lag > 0.05) == watch.stalls  # one line per stall
