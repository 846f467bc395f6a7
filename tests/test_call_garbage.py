"""A call leaves no cyclic garbage of its own: when it ends, its session, strands and the frames of
the exceptions that ended them are freed by reference counting, not left for a full collection
(agent/session.py ``_let_go``, agent/gcquiet.py ``free_frames``)."""

from __future__ import annotations

import gc
import types

import pytest

from tests.conftest import FAST_VOICE
from voxroute.agent.config import load_config
from voxroute.agent.fixture import all_fixture_names, load
from voxroute.replay import local_stack, replay_fixture

SERVER_PARTS = ("voxroute.agent", "voxroute.telephony", "voxroute.routing")
SERVER_DIRS = ("/agent/", "/telephony/", "/routing/")


def _server_objects(garbage: list) -> list[str]:
    """What of the collector's finds belongs to the server: its classes, and frames of its code
    (the emulators and the test's own client share the process)."""
    found = []
    for obj in garbage:
        if isinstance(obj, types.FrameType):
            if any(d in obj.f_code.co_filename for d in SERVER_DIRS):
                found.append(f"frame {obj.f_code.co_filename}:{obj.f_code.co_name}")
        elif type(obj).__module__.startswith(SERVER_PARTS):
            found.append(f"{type(obj).__module__}.{type(obj).__name__}")
    return found


def early_requests():
    """Early requests on every route (agent/preemptive.py), with a Sarvam silence window that leaves
    the pause before the final for them to start in."""
    config = load_config()
    config.ladder.early_request = "all"
    config.sarvam.stt_silence_ms = 600
    return config


@pytest.mark.parametrize("config", [None, early_requests()], ids=["default", "early_requests"])
async def test_a_replayed_call_leaves_no_server_objects_in_cyclic_garbage(config):
    fixture = load(all_fixture_names()[0])
    async with local_stack("zero", 1, [fixture], config, voice_speed=FAST_VOICE) as stack:
        await replay_fixture(fixture, stack.server_url)  # warm-up: pools, caches, lazy imports
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            call = await replay_fixture(fixture, stack.server_url)
            gc.collect()
            garbage = list(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert call["turns"], call  # a real call ran: turns, a session, its strands
    if config is not None:
        assert any(t["usage"].get("early_used") or t["usage"].get("early_unused") for t in call["turns"])
    assert _server_objects(garbage) == []
