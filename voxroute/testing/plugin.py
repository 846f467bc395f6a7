"""The voxroute pytest plugin (entry point ``pytest11``: installed with the package, on in every
pytest run of the environment). It gives the ``replay_call`` fixture:

    async def test_dispute(replay_call):
        result = await replay_call("billing_dispute", config="voxroute.yaml")
        assert_within_budget(result)
        assert_routed(result, turn=1, cls="billing_dispute", tier="reasoning")

Fixtures are found by path, or by name in ``--voxroute-fixtures DIR`` (ini: ``voxroute_fixtures``,
relative to the ini file), else in ``$VOXROUTE_FIXTURES``. The config: ``config=`` (a Config or a
YAML path), else ``--voxroute-config`` (ini: ``voxroute_config``), else ``$VOXROUTE_CONFIG`` or the
default. Calls go to a call log in a temporary folder unless ``VOXROUTE_DATA_DIR`` or
``VOXROUTE_DATABASE_URL`` says where. Nothing of voxroute is imported until a test asks for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from voxroute.testing.assertions import ReplayResult


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("voxroute")
    group.addoption("--voxroute-fixtures", metavar="DIR", help="where replay_call finds fixtures by name")
    group.addoption("--voxroute-config", metavar="YAML", help="the config replay_call replays with")
    parser.addini("voxroute_fixtures", "where replay_call finds fixtures by name (relative to this file)")
    parser.addini("voxroute_config", "the config replay_call replays with (relative to this file)")


def _setting(config: pytest.Config, name: str) -> Path | None:
    """A path from the command line (relative to the working directory) or the ini file (to it)."""
    option = config.getoption(f"--voxroute-{name}")
    if option:
        return Path(option).resolve()
    ini = config.getini(f"voxroute_{name}")
    if ini:
        base = config.inipath.parent if config.inipath else config.rootpath
        return (base / ini).resolve()
    return None


def find_fixture(name: str | Path, fixtures_dir: Path | None) -> Path:
    """A fixture's JSON path: ``name`` as a path, else ``fixtures_dir/name.json``, else as
    ``voxroute.agent.fixture.resolve`` finds it ($VOXROUTE_FIXTURES)."""
    from voxroute.agent.fixture import FixtureError, resolve

    if fixtures_dir is not None and not Path(name).suffix:
        candidate = fixtures_dir / f"{name}.json"
        if candidate.exists():
            return candidate
        try:
            return resolve(name)
        except FixtureError:
            raise FixtureError(f"no fixture named {str(name)!r} in {fixtures_dir}") from None
    return resolve(name)


def emulator_faults(stack: Any) -> dict[str, list[dict[str, Any]]]:
    """Every fault the emulators injected, by service."""
    emu = stack.emulators
    out: dict[str, list[dict[str, Any]]] = {"llm": [], "stt": [], "tts": []}
    for llm in emu.llm.values():
        out["llm"] += [f.as_dict() for f in llm.faults]
    for service, app in (("stt", emu.stt_app), ("tts", emu.tts_app)):
        out[service] += [f.as_dict() for f in app.state.emulator.faults]
    return out


@pytest.fixture(scope="session")
def _voxroute_call_log(tmp_path_factory: pytest.TempPathFactory):
    """Replayed calls go to a call log of their own, never into ./data."""
    if "VOXROUTE_DATA_DIR" in os.environ or "VOXROUTE_DATABASE_URL" in os.environ:
        yield
        return
    os.environ["VOXROUTE_DATA_DIR"] = str(tmp_path_factory.mktemp("voxroute-data"))
    try:
        yield
    finally:
        os.environ.pop("VOXROUTE_DATA_DIR", None)


@pytest.fixture
def replay_call(request: pytest.FixtureRequest, _voxroute_call_log):
    """``await replay_call(fixture, profile=..., config=...)``: one fixture call through the whole
    stack (fake carrier, runtime server, emulated providers, all on 127.0.0.1) -> ReplayResult."""
    fixtures_dir = _setting(request.config, "fixtures")
    default_config = _setting(request.config, "config")

    async def _replay(
        name: str | Path,
        profile: str = "reference",
        seed: int = 0,
        speed: float = 1.0,
        config: Any = None,
        force: Sequence[tuple[str, str]] = (),
        items: int | None = None,
        behave: Sequence[tuple[str, str | None, dict[str, Any]]] = (),
        carrier: str = "twilio",
        voice_speed: float = 1.0,
    ) -> ReplayResult:
        """``config``: a ``voxroute.agent.config.Config`` or a YAML path. ``profile``: the emulators' latency
        profile (zero, reference, chaos). ``speed``: how much faster than real time the caller plays.
        ``items``: replay only the first N caller items. ``force``: (dice, fault) pairs queued before
        dialling; dice is one of "stt", "tts", "sarvam_llm", "openrouter_llm" (emulators/stack.py),
        fault one of emulators.profiles.EMULATED_FAULTS. ``behave``: (LLM emulator "openrouter" or
        "sarvam", model id or None for all, LLMEmulator.behave keyword arguments): persistent
        per-model latency or faults for the whole call. ``carrier``: which fake carrier dials
        (emulators.carriers.CARRIERS: twilio, exotel, plivo, telnyx, sip). ``voice_speed``: how
        fast the emulated TTS voice speaks (2.0: half the audio per character); the runtime plays
        replies in real time whatever ``speed`` is, so this is what shortens a call's replies."""
        from voxroute.agent.config import Config, load_config
        from voxroute.agent.fixture import load
        from voxroute.replay import local_stack, replay_fixture

        if not isinstance(config, Config):
            config = load_config(config or default_config)
        fixture = load(find_fixture(name, fixtures_dir))
        if items is not None:  # only the first caller items: a shorter call for tests of one turn
            fixture.script = fixture.script.model_copy(
                update={"utterances": fixture.script.utterances[:items]}
            )
        sip = carrier == "sip"
        async with local_stack(profile, seed, [fixture], config, sip=sip, voice_speed=voice_speed) as stack:
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
            fixture=fixture.name if isinstance(name, Path) or Path(name).suffix else str(name),
            call_sid=raw["call_sid"],
            ended=raw["ended"],
            turns=raw["turns"],
            carrier=raw["carrier"],
            history=data.get("history", []),
            faults=faults,
            raw=raw,
            fixture_path=str(fixture.json_path),
        )

    return _replay
