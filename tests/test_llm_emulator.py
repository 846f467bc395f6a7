"""The LLM emulator speaks the real protocol: checked with the official ``openai`` SDK and raw httpx."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from voxroute.emulators.llm import create_llm_app, plan_tool_calls, respond, word_pieces
from voxroute.emulators.profiles import ZERO, Dice
from voxroute.server import serve_app

KEY = "sk-test-key"
USER = [
    {"role": "system", "content": "You are a phone agent."},
    {"role": "user", "content": "Where is my order A17?"},
]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "transfer_to_human", "parameters": {"type": "object", "properties": {}}},
    },
    {
        "type": "function",
        "function": {"name": "lookup_order", "parameters": {"type": "object", "properties": {}}},
    },
]


@contextlib.asynccontextmanager
async def emulator(flavor: str, api_key: str | None = KEY, **kw) -> AsyncIterator[tuple[str, Dice]]:
    dice = Dice(ZERO, seed=1)
    async with serve_app(
        create_llm_app(dice, flavor, api_key=api_key, keepalive_interval_s=0.02, **kw)
    ) as url:
        yield url, dice


def sdk(base_url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=10)


# ---------------------------------------------------------------- responder


def test_respond_is_deterministic_and_varies_per_turn() -> None:
    a = respond("fast", USER)
    assert a == respond("fast", USER) and "A17" in a
    two_turns = USER + [
        {"role": "assistant", "content": a},
        {"role": "user", "content": "Where is my order A17?"},
    ]
    assert respond("fast", two_turns) != a


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("Where is my order?", "order number"),
        ("I was charged twice for my order", "charge"),
        ("I need to reschedule my booking", "booking"),
        ("This is ridiculous, I want a human", "person"),
        ("4521", "4 5 2 1"),
        ("मेरा ऑर्डर कहाँ है?", "ऑर्डर"),
        ("hello there", ""),
    ],
)
def test_respond_intents(text: str, expect: str) -> None:
    # turn 1 with a model whose variant is the first template of each intent
    model = next(
        m
        for m in (f"m{i}" for i in range(50))
        if respond(m, [{"role": "user", "content": "hi"}]).startswith("Sure")
    )
    reply = respond(model, [{"role": "user", "content": text}])
    assert expect.lower() in reply.lower() or (expect == "person" and "colleague" in reply)
    assert 1 <= reply.count(".") + reply.count("?") + reply.count("।") <= 3


def test_reasoning_tier_is_longer() -> None:
    assert len(respond("x-reasoner", USER)) > len(respond("x-reasoner", USER, reasoning=False))


def test_plan_tool_calls() -> None:
    msg = [{"role": "user", "content": "please transfer me, my order is A17"}]
    assert plan_tool_calls(msg, TOOLS) == [
        ("lookup_order", {"order_id": "A17"}),
        ("transfer_to_human", {"reason": "caller asked for a person"}),
    ]
    assert plan_tool_calls(msg, None) == []
    assert plan_tool_calls(msg + [{"role": "tool", "content": "{}", "tool_call_id": "c"}], TOOLS) == []


# ---------------------------------------------------------------- conformance with the openai SDK


async def test_openrouter_stream_with_sdk() -> None:
    async with emulator("openrouter") as (url, _), sdk(url + "/api/v1") as client:
        stream = await client.chat.completions.create(model="fast", messages=USER, stream=True)
        text, usage, finish = "", None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
                assert chunk.choices == []
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        assert text == respond("fast", USER)
        assert finish == "stop"
        assert usage.completion_tokens == len(word_pieces(text)) and usage.model_extra["cost"] > 0


async def test_raw_stream_format_openrouter() -> None:
    async with emulator("openrouter", api_key=None) as (url, _), httpx.AsyncClient() as c:
        r = await c.post(
            url + "/api/v1/chat/completions", json={"model": "m", "messages": USER, "stream": True}
        )
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in r.text.split("\n") if line]
    assert lines[0] == ": OPENROUTER PROCESSING"
    assert lines[1].startswith('data: {"id"') and '"delta":{"role":"assistant","content":""}' in lines[1]
    assert lines[-1] == "data: [DONE]" and '"choices":[]' in lines[-2]
    assert r.text.count(": OPENROUTER PROCESSING") >= 2  # also between tokens


async def test_callmissed_usage_only_when_asked() -> None:
    async with emulator("callmissed") as (url, _), sdk(url + "/v1") as client:
        for include_usage in (True, False):
            kw = {"stream_options": {"include_usage": True}} if include_usage else {}
            stream = await client.chat.completions.create(
                model="sarvam-30b", messages=USER, stream=True, **kw
            )
            usages = [c.usage async for c in stream if c.usage]
            assert len(usages) == (1 if include_usage else 0)
            if usages:
                assert "cost" not in (usages[0].model_extra or {})


async def test_sarvam_v2_stream_and_reasoning_content_with_sdk() -> None:
    async with emulator("sarvam", reasoning_models={"sarvam-105b"}) as (url, _), sdk(url + "/v2") as client:
        stream = await client.chat.completions.create(
            model="sarvam-105b", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    reasoning = [c.choices[0].delta.model_extra.get("reasoning_content") for c in chunks if c.choices]
    assert any(reasoning)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == respond("sarvam-105b", USER, reasoning=True)
    assert chunks[-1].usage is not None


async def test_tool_call_stream_with_sdk() -> None:
    msgs = [{"role": "user", "content": "Transfer me to a human about order A17"}]
    async with emulator("openrouter") as (url, _), sdk(url + "/api/v1") as client:
        stream = await client.chat.completions.create(model="fast", messages=msgs, tools=TOOLS, stream=True)
        calls: dict[int, dict] = {}
        fragments: dict[int, int] = {}
        finish = None
        async for chunk in stream:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for tc in choice.delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "args": ""})
                    slot["args"] += tc.function.arguments or ""
                    fragments[tc.index] = fragments.get(tc.index, 0) + 1
    assert finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["lookup_order", "transfer_to_human"]
    assert calls[0]["args"] == '{"order_id": "A17"}'
    assert all(n >= 3 for n in fragments.values())  # name fragment + arguments in at least two pieces


async def test_non_streaming_with_sdk() -> None:
    async with emulator("callmissed") as (url, _), sdk(url + "/v1") as client:
        resp = await client.chat.completions.create(model="m", messages=USER)
        assert resp.choices[0].message.content == respond("m", USER)
        assert resp.usage.prompt_tokens > 0
        tool = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "transfer me"}], tools=TOOLS
        )
        assert tool.choices[0].message.tool_calls[0].function.name == "transfer_to_human"


@pytest.mark.parametrize(
    ("flavor", "prefix"), [("openrouter", "/api/v1"), ("sarvam", "/v1"), ("callmissed", "/v1")]
)
async def test_http_faults_with_sdk(flavor, prefix) -> None:
    async with emulator(flavor) as (url, dice), sdk(url + prefix) as client:
        for fault, status, exc in [
            ("http_500", 500, openai.InternalServerError),
            ("http_429", 429, openai.RateLimitError),
        ]:
            dice.force("llm", fault)
            with pytest.raises(exc) as info:
                await client.chat.completions.create(model="m", messages=USER, stream=True)
            assert isinstance(info.value, openai.APIStatusError) and info.value.status_code == status
            if fault == "http_429":
                assert info.value.response.headers["retry-after"] == "1"
            code = info.value.body["code"]
            assert isinstance(code, int) if flavor == "openrouter" else isinstance(code, str)


@pytest.mark.parametrize(
    ("flavor", "prefix", "status", "code"),
    [
        ("openrouter", "/api/v1", 401, 401),
        ("sarvam", "/v1", 403, "invalid_api_key_error"),
        ("callmissed", "/v1", 401, "invalid_api_key"),
    ],
)
async def test_bad_key_per_flavor(flavor, prefix, status, code) -> None:
    async with emulator(flavor) as (url, _), sdk(url + prefix, key="wrong") as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == status and info.value.body["code"] == code


async def test_sarvam_accepts_subscription_key_header() -> None:
    async with emulator("sarvam") as (url, _), httpx.AsyncClient() as c:
        r = await c.post(
            url + "/v1/chat/completions",
            json={"model": "sarvam-105b", "messages": USER},
            headers={"api-subscription-key": KEY},
        )
    assert r.status_code == 200


async def test_sarvam_v1_rejects_unknown_fields() -> None:
    async with emulator("sarvam") as (url, _), sdk(url + "/v1") as client:
        for field in ["provider", "models", "session_id", "stream_options", "max_completion_tokens"]:
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(
                    model="sarvam-105b", messages=USER, extra_body={field: 1}
                )
            assert info.value.body["code"] == "invalid_request_error" and info.value.body["param"] == field


async def test_sarvam_rejects_developer_role_and_lonely_tool_choice() -> None:
    async with emulator("sarvam", api_key=None) as (url, _), httpx.AsyncClient() as c:
        dev = await c.post(
            url + "/v1/chat/completions",
            json={"model": "s", "messages": [{"role": "developer", "content": "x"}]},
        )
        tc = await c.post(
            url + "/v2/chat/completions", json={"model": "s", "messages": USER, "tool_choice": "auto"}
        )
        bad = await c.post(url + "/v1/chat/completions", content=b"{not json")
    assert (dev.status_code, dev.json()["error"]["param"]) == (400, "messages")
    assert (tc.status_code, tc.json()["error"]["param"]) == (400, "tool_choice")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request_error"


async def test_error_midstream_with_sdk_and_fault_log() -> None:
    async with emulator("openrouter") as (url, dice), sdk(url + "/api/v1") as client:
        dice.force("llm", "error_midstream")
        got = ""
        with pytest.raises(openai.APIError):
            stream = await client.chat.completions.create(
                model="m", messages=USER, stream=True, extra_headers={"X-Voxroute-Tag": "call1/turn2"}
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    got += choice.delta.content or ""
        assert got and respond("m", USER).startswith(got)  # some tokens flowed before the error
        async with httpx.AsyncClient() as c:
            faults = (await c.get(url + "/_emulator/faults")).json()
    assert [(f["service"], f["fault"], f["tag"]) for f in faults] == [
        ("llm", "error_midstream", "call1/turn2")
    ]


async def test_force_endpoint_and_models_fallback() -> None:
    async with emulator("openrouter") as (url, _), httpx.AsyncClient() as c, sdk(url + "/api/v1") as client:
        assert (
            await c.post(url + "/_emulator/force", json={"service": "llm", "fault": "http_500"})
        ).status_code == 200
        assert (
            await c.post(url + "/_emulator/force", json={"service": "llm", "fault": "nope"})
        ).status_code == 400
        stream = await client.chat.completions.create(
            model="primary", messages=USER, stream=True, extra_body={"models": ["primary", "backup"]}
        )
        models = {c.model async for c in stream}
        stats = (await c.get(url + "/_emulator/stats")).json()
    assert models == {"backup"}
    assert stats["fallbacks"] == 1 and stats["requests"] == 1
