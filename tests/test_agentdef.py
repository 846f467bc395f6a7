"""The agent per tenant (agent/agentdef.py): prompt templates, greeting, voices, knowledge file, and
configuration errors that name the dotted field."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from voxroute.agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config
from voxroute.audio import PCM16_8K


def _config(tmp_path: Path, agent: dict, tenant: str = "retail") -> Path:
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["tenants"][tenant] = {**data["tenants"]["default"], "numbers": ["+918000000123"], "agent": agent}
    path = tmp_path / "voxroute.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def test_prompt_template_knowledge_and_greeting(tmp_path):
    (tmp_path / "kb.md").write_text("# Returns\nReturns are free within 30 days.\n")
    path = _config(
        tmp_path,
        {
            "system_prompt": "You answer for {tenant}. It is {local_time} on {local_date}. Caller {caller}.",
            "greeting": {"en-IN": "Hello from {tenant}, it is {local_time}.", "hi-IN": "नमस्ते, {tenant}।"},
            "voices": {"hi-IN": "anushka"},
            "knowledge_file": "kb.md",  # relative: from the config file's folder
            "timezone": "Asia/Kolkata",
        },
    )
    agent = load_config(path).agent_for("retail")
    noon_utc = datetime(2026, 12, 3, 6, 30, tzinfo=UTC)  # 12:00 in India
    prompt = agent.prompt("en-IN", "+919800000001", noon_utc)
    assert prompt.startswith("You answer for retail. It is 12:00 on Thursday 03 December 2026.")
    assert "Caller ••••••••0001." in prompt and "9800000001" not in prompt
    assert prompt.endswith("Returns are free within 30 days.")  # the knowledge, after the prompt
    assert agent.greeting_text("en-IN", None, noon_utc) == "Hello from retail, it is 12:00."
    assert agent.greeting_text("hi-IN") == "नमस्ते, retail।"
    assert agent.voice("hi-IN") == "anushka" and agent.voice("en-IN") is None
    # the shared agent section stays the default tenant's: no greeting, the shared prompt, no knowledge
    default = load_config(path).agent_for("default")
    assert default.greeting_text("en-IN") is None and "##" not in default.prompt("en-IN")


@pytest.mark.parametrize(
    ("agent", "field", "why"),
    [
        ({"knowledge_file": "missing.md"}, "tenants.retail.agent.knowledge_file", "no such file"),
        ({"knowledge_file": "big.md", "knowledge_max_bytes": 1024}, "tenants.retail.agent.knowledge_file",
         "over knowledge_max_bytes (1024)"),
        ({"system_prompt": "Hi {customer}"}, "tenants.retail.agent.system_prompt", "unknown template field"),
        ({"greeting": "Hi {"}, "tenants.retail.agent.greeting", "not a valid template"),
        ({"greeting": {"ta-IN": "Vanakkam"}}, "tenants.retail.agent.greeting.ta-IN", "not one of the tenant"),
        ({"voices": {"ta-IN": "x"}}, "tenants.retail.agent.voices.ta-IN", "not one of the tenant"),
        ({"timezone": "Mars/Olympus"}, "tenants.retail.agent.timezone", "unknown time zone"),
        ({"knowledge_max_bytes": 10}, "tenants.retail.agent.knowledge_max_bytes", "greater than or equal"),
        ({"prompt": "x"}, "tenants.retail.agent.prompt", "Extra inputs"),
    ],
)  # fmt: skip
def test_configuration_errors_name_the_dotted_field(tmp_path, agent, field, why):
    (tmp_path / "big.md").write_text("x" * 2000)
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, agent))
    message = str(info.value)
    assert f"  {field}: " in message and why in message, message


def test_chat_section_defaults_off_with_a_derived_key_name():
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["tenants"]["my-shop"] = {k: v for k, v in data["tenants"]["default"].items() if k != "chat"}
    data["tenants"]["my-shop"]["numbers"] = []
    config = parse_config(data)
    tenant = config.tenants["my-shop"]
    assert tenant.chat.enabled is False and tenant.chat_key_env("my-shop") == "VOXROUTE_CHAT_KEY_MY_SHOP"


async def test_the_greeting_is_heard_within_a_second_of_the_stream_start(tmp_path):
    """A real websocket into /twilio/stream: the first agent audio arrives within 1 s of ``start``; the
    greeting is turn 0 on the timeline, and the tenant's prompt (with its knowledge) heads the history."""
    import json
    import time

    from websockets.asyncio.client import connect

    from voxroute.emulators.carrier import connected_text, make_ids, mark_text, start_text, stop_text
    from voxroute.replay import local_stack

    (tmp_path / "kb.md").write_text("Open 9 to 6, Monday to Saturday.")
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["tenants"]["default"]["agent"] = {
        "greeting": "Hello, you have reached {tenant}. How can I help?",
        "system_prompt": "You answer calls for {tenant}.",
        "knowledge_file": str(tmp_path / "kb.md"),
    }
    config = parse_config(data)
    ids = make_ids()
    async with local_stack("reference", 0, [], config) as stack:
        url = stack.server_url.replace("http://", "ws://") + "/twilio/stream"
        params = {"tenant": "default", "from": "+919800000001", "language": "en-IN"}
        async with connect(url, proxy=None) as ws:
            await ws.send(connected_text())
            await ws.send(start_text(1, ids, params))
            started = time.monotonic()
            first_media = None
            marks: list[str] = []
            async with asyncio.timeout(10):
                while "0:end" not in marks:
                    message = json.loads(await ws.recv())
                    if message["event"] == "media" and first_media is None:
                        first_media = time.monotonic() - started
                    elif message["event"] == "mark":
                        marks.append(message["mark"]["name"])
                        await ws.send(mark_text(2 + len(marks), ids.stream_sid, message["mark"]["name"]))
            session = stack.services.calls[ids.call_sid]
            async with asyncio.timeout(5):  # our echoes reach the session: the greeting is done
                while "done" not in session.turns[0].timeline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            greeting = session.turns[0].as_dict()
            history = [dict(m) for m in session.history]
            await ws.send(stop_text(99, ids))
    assert first_media is not None and first_media <= 1.0, first_media
    assert greeting["index"] == 0 and greeting["kind"] == "greeting" and greeting["within_budget"]
    assert greeting["reply"] == "Hello, you have reached default. How can I help?"
    assert greeting["heard"] == greeting["reply"]  # the mark after it was echoed
    assert greeting["timeline"]["speech_end"] == 0.0 and greeting["first_audio_ms"] <= 1000
    assert history[0]["content"].startswith("You answer calls for default.")
    assert history[0]["content"].endswith("Open 9 to 6, Monday to Saturday.")
    assert history[1] == {"role": "assistant", "content": greeting["reply"]}


async def test_an_agent_first_fixture_waits_for_the_greeting_then_the_call_goes_on():
    """Fixture format 1's ``agent_first``: the caller's first words come ``gap_ms`` after the greeting
    has played. The greeting is turn 0; every caller turn after it is answered as without one."""
    from voxroute.agent.fixture import load
    from voxroute.replay import local_stack, replay_fixture

    fixture = load("order_status")
    fixture.script = fixture.script.model_copy(update={"agent_first": True})
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["tenants"]["default"]["agent"] = {"greeting": "Thank you for calling. How can I help you today?"}
    config = parse_config(data)
    async with local_stack("reference", 0, [fixture], config) as stack:
        raw = await replay_fixture(fixture, stack.server_url, config=stack.config)
    turns, items = raw["turns"], raw["carrier"]["items"]
    assert raw["ended"] == "completed" and not raw["carrier"]["errors"], raw["carrier"]["errors"]
    assert [t["kind"] for t in turns] == ["greeting"] + ["speech"] * len(fixture.script.utterances)
    greeting = turns[0]
    assert greeting["within_budget"] and greeting["heard"] == greeting["reply"]
    # On the carrier's clock: the caller began gap_ms after the greeting's end mark was echoed.
    greeting_end = next(m["echoed_at"] for m in raw["carrier"]["marks"] if m["name"] == "0:end")
    assert items[0]["started_at"] >= greeting_end + fixture.script.utterances[0].gap_ms / 1000 - 0.001
    assert all(t["within_budget"] and t["outcome"] == "answered" and not t["interrupted"] for t in turns[1:])


async def test_the_caller_speaking_over_the_greeting_cuts_it(replay_call):
    """The committed fixtures' caller speaks 700 ms after connecting: over a long greeting, which
    stops (a clear on the wire); the caller's words are turn 1, answered in budget; the model is not
    told it said a greeting the caller never heard."""
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["tenants"]["default"]["agent"] = {
        "greeting": "Thank you for calling our store. Your call may be recorded for quality and training "
        "purposes. Please tell me, in a few words, how I can help you today."
    }
    result = await replay_call("order_status", config=parse_config(data), items=1)
    greeting, first = result.turns[0], result.turns[1]
    assert greeting["kind"] == "greeting" and greeting["interrupted"] and greeting["heard"] == ""
    assert result.carrier["clears"]  # the greeting's audio was cleared at the carrier
    assert first["transcript"] and first["outcome"] == "answered" and first["within_budget"]
    assert not any("recorded for quality" in str(m.get("content")) for m in result.history)


class _VoiceLog:
    """The real TTS client (to the emulated Sarvam over its sockets), noting the voice of each request."""

    def __init__(self, tts) -> None:
        self.tts, self.voices = tts, []

    def __getattr__(self, name: str):
        return getattr(self.tts, name)

    async def open(self, language: str, voice: str | None = None, tag: str | None = None, fmt=PCM16_8K):
        self.voices.append(("stream", language, voice))
        return await self.tts.open(language, voice=voice, tag=tag, fmt=fmt)

    async def synthesize(
        self, text: str, language: str, voice: str | None = None, tag: str | None = None, fmt=PCM16_8K
    ):
        self.voices.append(("rest", language, voice))
        return await self.tts.synthesize(text, language, voice=voice, tag=tag, fmt=fmt)


async def test_the_tenants_voice_speaks_answers_phrases_and_the_greeting():
    from voxroute.agent.fixture import load
    from voxroute.replay import local_stack, replay_fixture

    fixture = load("order_status")
    fixture.script = fixture.script.model_copy(
        update={"agent_first": True, "utterances": fixture.script.utterances[:1]}
    )
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["tenants"]["default"]["agent"] = {"greeting": "Hello.", "voices": {"en-IN": "priya"}}
    async with local_stack("reference", 0, [fixture], parse_config(data)) as stack:
        log = stack.services.tts = _VoiceLog(stack.services.tts)
        raw = await replay_fixture(fixture, stack.server_url, config=stack.config)
    assert raw["ended"] == "completed" and [t["outcome"] for t in raw["turns"]] == ["answered", "answered"]
    assert {kind for kind, _, _ in log.voices} == {"stream", "rest"}  # answers streamed, phrases by REST
    assert {(language, voice) for _, language, voice in log.voices} == {("en-IN", "priya")}
