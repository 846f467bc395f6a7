"""OpenAICompatLLM against the LLM emulator over real sockets: every fault kind, keep-alive, cancel, allow-list."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from voxroute.agent.providers.base import LLMRequest, LLMToken, LLMUsage, ProviderError
from voxroute.agent.providers.openai_compat import (
    SHARD_CONNECTIONS,
    ClientShards,
    LLMToolCalls,
    OpenAICompatLLM,
)
from voxroute.emulators.llm import create_llm_app, respond
from voxroute.emulators.profiles import ZERO, Dice
from voxroute.server import serve_app

KEY = "sk-test-key"
PREFIX = {"openrouter": "/api/v1", "sarvam": "/v1", "callmissed": "/v1", "openai": "/v1"}
MESSAGES = [
    {"role": "system", "content": "You are a phone agent."},
    {"role": "user", "content": "I was charged twice"},
]


@contextlib.asynccontextmanager
async def setup(
    flavor: str = "openrouter", *, prefix: str | None = None, key: str = KEY, **client_kw
) -> AsyncIterator[tuple[OpenAICompatLLM, Dice, str]]:
    dice = Dice(ZERO, seed=3)
    app = create_llm_app(dice, flavor, api_key=KEY, keepalive_interval_s=0.02, reasoning_models={"big"})
    async with serve_app(app) as url:
        client_kw.setdefault("stall_timeout_s", 5.0)
        llm = OpenAICompatLLM("emu", flavor, url + (prefix or PREFIX[flavor]), key, **client_kw)
        try:
            yield llm, dice, url
        finally:
            await llm.aclose()


async def collect(llm: OpenAICompatLLM, request: LLMRequest, into: list | None = None) -> list:
    events = [] if into is None else into
    async for ev in llm.stream(request):
        events.append(ev)
    return events


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, LLMToken))


async def stats(url: str) -> dict:
    async with httpx.AsyncClient() as c:
        return (await c.get(url + "/_emulator/stats")).json()


async def faults(url: str) -> list[dict]:
    async with httpx.AsyncClient() as c:
        return (await c.get(url + "/_emulator/faults")).json()


@pytest.mark.parametrize("flavor", ["openrouter", "sarvam", "callmissed", "openai"])
async def test_stream_text_and_usage(flavor: str) -> None:
    async with setup(flavor, price_in_per_mtok=1.0, price_out_per_mtok=2.0) as (llm, _, _):
        events = await collect(llm, LLMRequest("fast", MESSAGES))
    assert text_of(events) == respond("fast", MESSAGES)
    usages = [e for e in events if isinstance(e, LLMUsage)]
    if flavor == "sarvam":  # v1 has no stream_options, so no usage
        assert usages == []
        return
    (usage,) = usages
    assert usage.completion_tokens > 0 and usage.cost_usd is not None and usage.cost_usd > 0
    if flavor != "openrouter":  # computed from the configured prices
        assert usage.cost_usd == pytest.approx(
            (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6
        )


async def test_sarvam_v2_client_body_accepted_with_usage_and_no_reasoning_text() -> None:
    request = LLMRequest("big", [{"role": "developer", "content": "be brief"}, *MESSAGES])
    async with setup("sarvam", prefix="/v2") as (llm, _, _):
        events = []
        async for ev in llm.stream(
            request, extra_body={"models": ["x"], "provider": {}, "session_id": "s", "top_k": 4}
        ):
            events.append(ev)
    as_sent = [{"role": "user", "content": "be brief"}, *MESSAGES]  # Sarvam has no developer role
    assert text_of(events) == respond("big", as_sent, reasoning=True)
    assert "Checking the account" not in text_of(events)  # the reasoning delta is never spoken
    assert any(isinstance(e, LLMUsage) for e in events)


async def test_sarvam_constructor_refuses_openrouter_fields() -> None:
    with pytest.raises(ValueError, match="provider"):
        OpenAICompatLLM(
            "s", "sarvam", "http://127.0.0.1:1/v1", KEY, extra_body={"provider": {"sort": "latency"}}
        )


async def test_sarvam_emulator_rejects_openrouter_field_sent_raw() -> None:
    async with setup("sarvam") as (_, _, url), httpx.AsyncClient() as c:
        r = await c.post(
            url + "/v1/chat/completions",
            headers={"api-subscription-key": KEY},
            json={"model": "sarvam-105b", "messages": MESSAGES, "stream": True, "session_id": "abc"},
        )
    assert r.status_code == 400 and r.json()["error"]["param"] == "session_id"


async def test_tool_calls_and_tag() -> None:
    tools = [
        {"type": "function", "function": {"name": "transfer_to_human", "parameters": {"type": "object"}}}
    ]
    request = LLMRequest(
        "fast", [{"role": "user", "content": "transfer me to a human"}], tools=tools, tag="c1/t1"
    )
    async with setup("openrouter") as (llm, dice, url):
        events = await collect(llm, request)
        dice.force("llm", "http_500")
        with pytest.raises(ProviderError):
            await collect(llm, request)
        recorded = await faults(url)
    (calls,) = [e for e in events if isinstance(e, LLMToolCalls)]
    assert [(c.name, c.arguments) for c in calls.calls] == [
        ("transfer_to_human", {"reason": "caller asked for a person"})
    ]
    assert text_of(events) == ""
    assert recorded[0]["tag"] == "c1/t1"


@pytest.mark.parametrize("flavor", ["openrouter", "sarvam", "callmissed"])
async def test_http_faults(flavor: str) -> None:
    async with setup(flavor) as (llm, dice, _):
        dice.force("llm", "http_500")
        with pytest.raises(ProviderError) as e500:
            await collect(llm, LLMRequest("fast", MESSAGES))
        dice.force("llm", "http_429")
        with pytest.raises(ProviderError) as e429:
            await collect(llm, LLMRequest("fast", MESSAGES))
        # the pool survives errors: the next request works
        assert text_of(await collect(llm, LLMRequest("fast", MESSAGES)))
    assert (e500.value.kind, e500.value.status, e500.value.after_first) == ("http_500", 500, False)
    assert (e429.value.kind, e429.value.status, e429.value.retry_after_s) == ("http_429", 429, 1.0)


@pytest.mark.parametrize(("flavor", "status"), [("openrouter", 401), ("sarvam", 403), ("callmissed", 401)])
async def test_bad_key_is_http_error(flavor: str, status: int) -> None:
    async with setup(flavor, key="wrong") as (llm, _, _):
        with pytest.raises(ProviderError) as info:
            await collect(llm, LLMRequest("fast", MESSAGES))
    assert (info.value.kind, info.value.status) == ("http_error", status)


async def test_midstream_faults_keep_partial_text() -> None:
    cases = [
        ("error_midstream", "stream_error"),
        ("error_midstream", "stream_error"),
        ("malformed", "malformed"),
    ]
    cases.append(("drop", "disconnected"))
    async with setup("openrouter") as (llm, dice, _):
        for fault, kind in cases:  # error_midstream twice: int code, then string code
            dice.force("llm", fault)
            got: list = []
            with pytest.raises(ProviderError) as info:
                await collect(llm, LLMRequest("fast", MESSAGES), into=got)
            assert (info.value.kind, info.value.after_first) == (kind, True)
            assert text_of(got) and respond("fast", MESSAGES).startswith(text_of(got))
        assert text_of(await collect(llm, LLMRequest("fast", MESSAGES)))  # and the next request works


async def test_hang_is_timeout_and_stall_is_stall() -> None:
    async with setup("openrouter", stall_timeout_s=0.3) as (llm, dice, url):
        dice.force("llm", "hang")
        with pytest.raises(ProviderError) as hang:
            await collect(llm, LLMRequest("fast", MESSAGES))
        dice.force("llm", "stall")
        with pytest.raises(ProviderError) as stall:
            await collect(llm, LLMRequest("fast", MESSAGES))
        await _until_idle(url)
    assert (hang.value.kind, hang.value.after_first) == ("timeout", False)
    assert (stall.value.kind, stall.value.after_first) == ("stall", False)


async def test_first_token_timeout() -> None:
    async with setup("callmissed", first_token_timeout_s=0.2, stall_timeout_s=30) as (llm, dice, _):
        dice.force("llm", "stall")
        with pytest.raises(ProviderError) as info:
            await collect(llm, LLMRequest("fast", MESSAGES))
    assert info.value.kind == "timeout"


async def test_connection_refused_is_disconnected() -> None:
    llm = OpenAICompatLLM("dead", "openrouter", "http://127.0.0.1:9/api/v1", KEY, connect_timeout=1.0)
    try:
        with pytest.raises(ProviderError) as info:
            await collect(llm, LLMRequest("fast", MESSAGES))
    finally:
        await llm.aclose()
    assert info.value.kind in ("disconnected", "timeout")


async def test_keepalive_pool_reuses_one_connection() -> None:
    async with setup("openrouter") as (llm, _, url):
        for turn in range(4):
            messages = MESSAGES + [{"role": "user", "content": f"and turn {turn}"}]
            assert text_of(await collect(llm, LLMRequest("fast", messages)))
        s = await stats(url)
    assert s["requests"] == 4 and s["connections"] == 1


async def _until_active(url: str, active: bool) -> None:
    """Poll the emulator (over HTTP, as another process would) until responses are (not) in progress."""
    async with asyncio.timeout(5):  # generous bound: only fails if the server never notices the close
        for _ in range(1000):
            if bool((await stats(url))["active"]) == active:
                return
            await asyncio.sleep(0.02)


async def _until_idle(url: str) -> None:
    await _until_active(url, False)


async def test_cancel_closes_the_response() -> None:
    async with setup("openrouter") as (llm, dice, url):
        # aclose() after the first token, mid-stream (stall keeps the stream open forever otherwise)
        dice.force("llm", "hang")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):  # the caller's own deadline
                await collect(llm, LLMRequest("fast", MESSAGES))
        await _until_idle(url)
        dice.force("llm", "stall")
        task = asyncio.create_task(collect(llm, LLMRequest("fast", MESSAGES)))
        await _until_active(url, True)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until_idle(url)
        stream = llm.stream(LLMRequest("fast", MESSAGES))
        first = await anext(stream)
        assert isinstance(first, LLMToken)
        await stream.aclose()
        assert (await stats(url))["requests"] == 3
        # and the client still works afterwards
        assert text_of(await collect(llm, LLMRequest("fast", MESSAGES)))


async def test_models_fallback_through_client() -> None:
    async with setup("openrouter", extra_body={"models": ["fast", "backup"]}) as (llm, dice, url):
        dice.force("llm", "http_500")
        events = await collect(llm, LLMRequest("fast", MESSAGES))
        s = await stats(url)
    assert text_of(events) == respond("backup", MESSAGES) and s["fallbacks"] == 1


def test_client_shards_split_the_connections_and_lease_the_least_busy() -> None:
    shards = ClientShards(100, httpx.Timeout(1.0))
    sizes = [c._transport._pool._max_connections for c in shards.clients]  # type: ignore[attr-defined]
    assert sizes == [SHARD_CONNECTIONS] * 6 + [4] and sum(sizes) == 100
    held = contextlib.ExitStack()
    leased = [held.enter_context(shards.lease()) for _ in range(14)]
    # one request per shard first, then by free room: the small shard's second after the big ones' fourth
    assert leased[:7] == shards.clients
    assert shards.in_flight == [3, 2, 2, 2, 2, 2, 1]
    with pytest.raises(RuntimeError), shards.lease():
        raise RuntimeError("request failed")
    assert sum(shards.in_flight) == 14  # a failed request gives its lease back
    held.close()
    assert shards.in_flight == [0] * 7
    with pytest.raises(ValueError):
        ClientShards(0, httpx.Timeout(1.0))


async def test_concurrent_streams_across_shards() -> None:
    """40 requests at once through 3 shards (max_connections 40): every answer complete, every lease
    given back."""
    async with setup(max_connections=40) as (llm, _dice, url):
        answers = await asyncio.gather(
            *(collect(llm, LLMRequest("fast", MESSAGES, max_tokens=8)) for _ in range(40))
        )
        assert all(text_of(a) for a in answers)
        assert llm._clients.in_flight == [0, 0, 0]
        assert (await stats(url))["requests"] >= 40


async def test_each_provider_has_two_connections_per_call_the_process_may_carry(tmp_path, monkeypatch):
    """A request waiting for a pool connection is silence the ladder cannot tell from a slow model:
    the runtime's LLM clients hold two connections per call of ``telephony.max_concurrent_calls``."""
    from voxroute.agent.config import load_config
    from voxroute.emulators.stack import run_emulators
    from voxroute.runtime import build_services

    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("VOXROUTE_DATABASE_URL", raising=False)
    config = load_config()
    telephony = config.telephony.model_copy(update={"max_concurrent_calls": 300})
    config = config.model_copy(update={"telephony": telephony})
    async with run_emulators("zero", 0, []) as emu, build_services(config, emu.urls) as services:
        assert services.llms
        for llm in services.llms.values():
            assert isinstance(llm, OpenAICompatLLM)
            assert sum(llm._clients.sizes) == 600


async def test_emulated_stt_from_another_emulator_process(tmp_path, monkeypatch) -> None:
    """``EmulatorURLs.sarvam_stt_ws`` (bench.concurrency runs the STT emulator in a process of its
    own): the STT client streams there, the TTS stays on ``sarvam_ws``; unset, both use ``sarvam_ws``."""
    import dataclasses

    from voxroute.agent.config import load_config
    from voxroute.emulators.stack import run_emulators
    from voxroute.runtime import build_services

    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("VOXROUTE_DATABASE_URL", raising=False)
    monkeypatch.delenv("SARVAM_API_KEY", raising=False)
    config = load_config()
    async with run_emulators("zero", 0, []) as emu:
        elsewhere = dataclasses.replace(emu.urls, sarvam_stt_ws="ws://127.0.0.1:9")
        async with build_services(config, elsewhere) as services:
            assert services.stt.ws_base_url == "ws://127.0.0.1:9"  # type: ignore[attr-defined]
            assert services.tts.ws_base_url == emu.urls.sarvam_ws  # type: ignore[attr-defined]
        async with build_services(config, emu.urls) as services:
            assert services.stt.ws_base_url == emu.urls.sarvam_ws  # type: ignore[attr-defined]
