"""``telephony.event_loop: uvloop``: a real ``voxroute serve`` on libuv's event loop carries fixture
calls through the fake carrier on the media port, end to end (its CPU per call-second against the
standard loop is measured by ``bench/concurrency.py --event-loop uvloop``)."""

from __future__ import annotations

import asyncio

import httpx

from bench.common import LOAD_FIXTURES, processes, stream_server_args, webhook_params
from tests.conftest import FAST_VOICE
from voxroute.agent.fixture import load
from voxroute.emulators.carrier import dial


async def test_serve_on_uvloop_carries_calls_on_the_media_port():
    with (
        stream_server_args("media", "uvloop") as (serve_args, stream_base),
        # what is tested is that the loop carries calls, not their timing: the caller at twice
        # real time, the agent's voice at FAST_VOICE (tests/conftest.py)
        processes(serve_args=serve_args, voice_speed=FAST_VOICE) as (base, _pid),
    ):
        assert stream_base is not None
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            assert (await http.get("/debug/stats")).json()["event_loop"] == "uvloop"

            async def call(i: int):
                fixture = load(LOAD_FIXTURES[i])
                sid = f"CA{i:032x}"
                params = await webhook_params(http, sid)
                params["language"] = fixture.script.language
                return await dial(
                    fixture, stream_base + "/twilio/stream", custom_parameters=params, call_sid=sid, speed=2.0
                )

            results = await asyncio.gather(*(call(i) for i in range(2)))
            stats = (await http.get("/debug/stats")).json()
    for r in results:
        assert r.completed and not r.errors, r
    assert stats["event_loop"] == "uvloop"
    assert stats["inbound_frames"] > 0  # the server timed the callers' frames on this loop
    # serve applied the config's collector thresholds and timed the collector's runs
    assert stats["gc_thresholds"] == [2000, 10, 100]
    assert stats["gc0_count"] > 0 and stats["gc0_max_ms"] > 0


def test_uvloop_is_the_default_and_its_absence_falls_back_with_a_warning(monkeypatch, caplog):
    import sys

    import uvloop

    from voxroute.agent.config import TelephonyConfig
    from voxroute.cli import _loop_factory

    assert TelephonyConfig().event_loop == "uvloop"
    assert _loop_factory("uvloop") is uvloop.new_event_loop
    assert _loop_factory("asyncio") is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if the extra were not installed: import fails
    with caplog.at_level("WARNING", logger="voxroute"):
        assert _loop_factory("uvloop") is None  # asyncio.Runner's own loop: the standard one
    assert "uvloop is not installed" in caplog.text
