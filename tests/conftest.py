"""Shared pytest fixtures. ``replay_call`` (replays a fixture call through the real stack) comes
from the package's pytest plugin, voxroute/testing/plugin.py (entry point ``pytest11``):

async def test_dispute(replay_call):
    result = await replay_call("billing_dispute", profile="reference")
    assert all(t["within_budget"] for t in result.turns)
"""

from __future__ import annotations

import os

import pytest

from voxroute.testing.plugin import emulator_faults  # noqa: F401 (tests import it from here)

# `make test` runs the suite on parallel workers (pytest-xdist), then these alone: each puts many
# calls on one process at once, or runs the offline speech engines (Whisper, Piper) on every core
# in real time, so a second test beside it would be measuring the machine, not the runtime. The
# 3-minute soak is a CI step of its own.
SERIAL = {
    "tests/test_carriers_replay.py::test_every_fixture_through_every_carrier_matches_twilio",
    "tests/test_routing_cost.py::test_router_cost_on_the_realistic_mix",
    "tests/test_local_stack.py::test_a_call_through_the_server_on_the_local_stack",
    # the loop's 20 ms timers while Whisper decodes on the engine threads: whether decoding holds
    # the loop (the GIL), which other workers' CPU on the same cores would hide or fake
    "tests/test_local_stack.py::test_transcription_keeps_the_event_loop_free",
    # offline Whisper and Piper in real time, twice: CPU-bound; starved of CPU by other workers, a
    # final can come after its turn took the partial, and the two replays' transcripts differ
    "tests/test_fixturegen.py::test_a_recorded_call_comes_back_as_a_fixture_that_replays_alike",
}
SOAK = {"tests/test_soak.py::test_soak_three_minutes"}

# How fast the emulated agent voice speaks in tests that check what a call routed, said and called,
# not how long the agent spoke (``voice_speed`` of replay_call and local_stack): the runtime plays
# every reply in real time whatever the caller's ``speed``, so at the normal voice (65 ms a
# character) most of a replayed call is the agent talking; at 3 the billing-dispute call of
# test_routing_calls.py (reference profile) took 31 s instead of 45 s. First audio (the budget) is
# unchanged: the voice's speed changes how long a reply lasts, not when it starts. Tests of
# barge-in, backchannels and the greeting keep the normal voice, and so do SIP callers (the fake
# phone takes a quiet line for the end of a reply, and a faster voice leaves gaps between chunks)
# and calls that end in a transfer (it goes out while "connecting you" plays, and the fake caller
# hangs up 0.3 s after that has played: a phrase a third as long made "handoff" a "completed").
FAST_VOICE = 3.0


def pytest_collection_modifyitems(config, items):
    for item in items:
        test = item.nodeid.split("[")[0]
        if test in SERIAL:
            item.add_marker(pytest.mark.serial)
        if test in SOAK:
            item.add_marker(pytest.mark.soak)


@pytest.fixture(autouse=True, scope="session")
def _call_log_in_a_temporary_folder(tmp_path_factory):
    """Calls replayed by tests go to a call log of their own, never into ./data."""
    if "VOXROUTE_DATA_DIR" not in os.environ and "VOXROUTE_DATABASE_URL" not in os.environ:
        os.environ["VOXROUTE_DATA_DIR"] = str(tmp_path_factory.mktemp("voxroute-data"))
        yield
        del os.environ["VOXROUTE_DATA_DIR"]
    else:
        yield


def services_required() -> bool:
    return os.environ.get("VOXROUTE_REQUIRE_SERVICES") == "1"
