"""Shared pytest fixtures. ``replay_call`` replays a fixture call through the real stack:

async def test_dispute(replay_call):
    result = await replay_call("billing_dispute", profile="reference")
    assert all(t["within_budget"] for t in result.turns)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

from agent.config import Config
from agent.fixture import load
from agent.replay import local_stack, replay_fixture

# `make test` runs the suite on parallel workers (pytest-xdist), then these alone: each puts many
# calls on one process at once (or measures a process under load), so a second test beside it
# would be measuring the machine, not the runtime. The 3-minute soak is a CI step of its own.
SERIAL = {
    "tests/test_carriers_replay.py::test_every_fixture_through_every_carrier_matches_twilio",
    "tests/test_routing_cost.py::test_router_cost_on_the_realistic_mix",
}
SOAK = {"tests/test_soak.py::test_soak_three_minutes"}


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


@dataclass
class ReplayResult:
    fixture: str
    call_sid: str
    ended: str
    turns: list[dict[str, Any]]
    carrier: dict[str, Any]
    history: list[dict[str, Any]]
    faults: dict[str, list[dict[str, Any]]]  # emulator service -> injected faults
    raw: dict[str, Any]


@pytest.fixture
def replay_call():
    async def _replay(
        name: str,
        profile: str = "reference",
        seed: int = 0,
        speed: float = 1.0,
        config: Config | None = None,
        force: list[tuple[str, str]] = (),
        items: int | None = None,
        behave: list[tuple[str, str | None, dict]] = (),
        carrier: str = "twilio",
    ) -> ReplayResult:
        """``items``: replay only the first N caller items. ``force``: (dice, fault) pairs queued before dialling; dice is one of "stt", "tts",
        "sarvam_llm", "openrouter_llm" (emulators/stack.py), fault one of emulators.profiles.EMULATED_FAULTS.
        ``behave``: (LLM emulator "openrouter" or "sarvam", model id or None for all, LLMEmulator.behave
        keyword arguments): persistent per-model latency or faults for the whole call.
        ``carrier``: which fake carrier dials (emulators.carriers.CARRIERS: twilio, exotel, plivo, telnyx, sip)."""
        fixture = load(name)
        if items is not None:  # only the first caller items: a shorter call for tests of one turn
            fixture.script = fixture.script.model_copy(
                update={"utterances": fixture.script.utterances[:items]}
            )
        async with local_stack(profile, seed, [fixture], config, sip=carrier == "sip") as stack:
            for dice_name, fault in force:
                service = "llm" if dice_name.endswith("llm") else dice_name
                stack.emulators.dice[dice_name].force(service, fault)
            for emulator, model, kwargs in behave:
                stack.emulators.llm[emulator].behave(model, **kwargs)
            raw = await replay_fixture(
                fixture, stack.server_url, speed=speed, config=stack.config, carrier=carrier
            )
            data = stack.services.call_json(raw["call_sid"]) or {}
            faults = emulator_faults(stack)
        return ReplayResult(
            fixture=name,
            call_sid=raw["call_sid"],
            ended=raw["ended"],
            turns=raw["turns"],
            carrier=raw["carrier"],
            history=data.get("history", []),
            faults=faults,
            raw=raw,
        )

    return _replay


def emulator_faults(stack) -> dict[str, list[dict[str, Any]]]:
    """Every fault the emulators injected, by service."""
    emu = stack.emulators
    out: dict[str, list[dict[str, Any]]] = {"llm": [], "stt": [], "tts": []}
    for llm in emu.llm.values():
        out["llm"] += [f.as_dict() for f in llm.faults]
    for service, app in (("stt", emu.stt_app), ("tts", emu.tts_app)):
        out[service] += [f.as_dict() for f in app.state.emulator.faults]
    return out
