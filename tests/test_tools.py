"""Business tools (agent/tools): config, the tool runner over real sockets, the emulator's scripted
tool calls through the real client. The calls end to end are in tests/test_tools_calls.py."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from examples.tools.order_service import OrderService
from voxroute.agent.config import ConfigError, load_config, parse_config
from voxroute.agent.providers.base import LLMRequest
from voxroute.agent.providers.openai_compat import LLMToolCalls, OpenAICompatLLM
from voxroute.agent.tools.run import ToolRunner
from voxroute.agent.tools.spec import ToolConfig, ToolsConfig
from voxroute.emulators.llm import LLMEmulator
from voxroute.emulators.profiles import Dice, get_profile
from voxroute.emulators.scripted import ScriptedCall, after_tools, normalise
from voxroute.server import serve_app

RETAIL = Path(__file__).resolve().parent.parent / "examples" / "retail.yaml"


@dataclass
class Call:
    id: str
    name: str
    arguments: dict[str, Any]
    arguments_error: str | None = None


def lookup(url: str, **kw: Any) -> ToolConfig:
    spec = {
        "kind": "http",
        "description": "Look up an order",
        "url": f"{url}/orders/{{order_id}}",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
            "additionalProperties": False,
        },
        "timeout_ms": 500,
        "result_fields": ["order_id", "status", "eta"],
        **kw,
    }
    return ToolConfig.model_validate(spec)


@pytest.fixture
async def orders():
    service = OrderService()
    async with serve_app(service.app) as url:
        yield service, url


# ---------------------------------------------------------------- config


def _retail_data() -> dict[str, Any]:
    return yaml.safe_load(RETAIL.read_text())


def test_retail_example_loads_its_tools_and_their_schemas() -> None:
    cfg = load_config(RETAIL)
    tools = cfg.tools.of("shopfast")
    assert set(tools) == {"lookup_order", "start_return"}
    assert tools["start_return"].stakes == "high" and tools["lookup_order"].stakes == "low"
    schema = tools["start_return"].arguments_schema()
    # From the type hints; the ``context`` parameter is the runtime's, not the model's.
    assert schema["required"] == ["order_id", "reason"] and "context" not in schema["properties"]
    assert "damaged" in schema["properties"]["reason"]["enum"]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            {"function": "no_such_module_xyz:fn"},
            "tools.tenants.shopfast.start_return.function",
            "cannot import",
        ),
        (
            {"function": "examples.tools.returns:nope"},
            "tools.tenants.shopfast.start_return.function",
            "no function",
        ),
        (
            {"function": "json:dumps"},
            "tools.tenants.shopfast.start_return.function",
            "has no type hint",
        ),
    ],
)
def test_a_python_tool_that_cannot_load_fails_at_start_naming_the_field(change, field, message) -> None:
    data = _retail_data()
    data["tools"]["tenants"]["shopfast"]["start_return"].update(change)
    with pytest.raises(ConfigError) as err:
        parse_config(data, "retail.yaml")
    assert field in str(err.value) and message in str(err.value)


def test_http_tool_errors_name_the_field() -> None:
    data = _retail_data()
    data["tools"]["tenants"]["shopfast"]["lookup_order"]["url"] = "http://127.0.0.1:1/orders/{order}"
    with pytest.raises(ConfigError, match=r"tools\.tenants\.shopfast\.lookup_order.*placeholder \{order\}"):
        parse_config(data)
    data = _retail_data()
    data["tools"]["tenants"]["nobody"] = {}
    with pytest.raises(ConfigError, match=r"tools\.tenants\.nobody: no tenant"):
        parse_config(data)


# ---------------------------------------------------------------- the runner over a real socket


async def test_http_tool_sends_an_idempotency_key_and_shows_only_the_result_fields(orders) -> None:
    service, url = orders
    runner = ToolRunner({"lookup_order": lookup(url)}, call_sid="CA1", tenant="t")
    try:
        (out,) = await runner.run(3, [Call("c1", "lookup_order", {"order_id": "A1745"})])
    finally:
        await runner.aclose()
    assert out.status == "ok" and out.content == {"order_id": "A1745", "status": "shipped", "eta": "Friday"}
    assert [r["idempotency_key"] for r in service.requests] == ["CA1:3:0"]
    msg = out.message()
    assert msg["role"] == "tool" and msg["tool_call_id"] == "c1" and "warehouse" not in msg["content"]
    assert out.record()["arguments"] == {"order_id": "A1745"} and out.record()["status"] == "ok"


@pytest.mark.parametrize("idempotent", [True, False])
async def test_a_dropped_connection_is_retried_once_with_the_same_key_only_for_an_idempotent_tool(
    idempotent,
) -> None:
    """A server that reads the first request and hangs up without answering, then answers."""
    keys: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        keys.extend(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("idempotency-key:")
        )
        if len(keys) > 1:
            body = b'{"order_id": "A1745", "status": "shipped"}'
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    runner = ToolRunner(
        {"lookup_order": lookup(f"http://127.0.0.1:{port}", idempotent=idempotent)},
        call_sid="CA1",
        tenant="t",
    )
    try:
        (out,) = await runner.run(4, [Call("c1", "lookup_order", {"order_id": "A1745"})])
    finally:
        await runner.aclose()
        server.close()
        await server.wait_closed()
    if idempotent:
        assert out.status == "ok" and out.content["status"] == "shipped"
        assert keys == ["CA1:4:0", "CA1:4:0"]  # asked twice, with the same key
    else:
        assert out.status == "error" and "could not reach the tool" in out.content["error"]
        assert keys == ["CA1:4:0"]  # a tool that is not idempotent is never asked twice


async def test_a_repeated_call_in_the_turn_reuses_the_result_and_a_new_turn_runs_again(orders) -> None:
    service, url = orders
    runner = ToolRunner({"lookup_order": lookup(url)}, call_sid="CA1", tenant="t")
    call = Call("c1", "lookup_order", {"order_id": "A1745"})
    await runner.run(1, [call])
    (again,) = await runner.run(1, [Call("c9", "lookup_order", {"order_id": "A1745"})])
    assert again.reused and again.status == "ok" and again.call_id == "c9" and len(service.requests) == 1
    runner.forget(1)
    await runner.run(2, [call])
    await runner.aclose()
    assert [r["idempotency_key"] for r in service.requests] == ["CA1:1:0", "CA1:2:0"]


async def test_a_hung_tool_times_out_without_delaying_the_others_in_its_round(orders) -> None:
    service, url = orders
    hung = OrderService()
    hung.mode = "hang"
    async with serve_app(hung.app) as hung_url:
        runner = ToolRunner(
            {"fast": lookup(url), "hung": lookup(hung_url, timeout_ms=300)}, call_sid="CA1", tenant="t"
        )
        t0 = time.perf_counter()
        fast, slow = await runner.run(
            1, [Call("a", "fast", {"order_id": "A1745"}), Call("b", "hung", {"order_id": "A1745"})]
        )
        took = time.perf_counter() - t0
        await runner.aclose()
    assert fast.status == "ok" and fast.latency_ms < 300
    assert slow.status == "timeout" and "300 ms" in slow.content["error"]
    assert took < 1.0  # the round lasts the hung tool's timeout, not longer


async def test_no_tool_waits_past_what_is_left_of_the_turn() -> None:
    hung = OrderService()
    hung.mode = "hang"
    async with serve_app(hung.app) as url:
        runner = ToolRunner({"hung": lookup(url, timeout_ms=5000)}, call_sid="CA1", tenant="t")
        (out,) = await runner.run(1, [Call("a", "hung", {"order_id": "A1"})], limit_ms=150)
        await runner.aclose()
    assert out.status == "timeout" and "within 150 ms" in out.content["error"] and out.latency_ms < 1000


async def test_failures_are_error_results_for_the_model(orders) -> None:
    service, url = orders
    runner = ToolRunner({"lookup_order": lookup(url)}, call_sid="CA1", tenant="t")
    calls = [
        Call("a", "cancel_everything", {}),
        Call("b", "lookup_order", {}, arguments_error="tool call lookup_order arguments are not JSON"),
        Call("c", "lookup_order", {"order_id": 17}),
        Call("d", "lookup_order", {"order_id": "Z9999"}),  # 404
    ]
    outs = await runner.run(1, calls)
    service.mode = "error"
    (five_hundred,) = await runner.run(2, [Call("e", "lookup_order", {"order_id": "A1745"})])
    await runner.aclose()
    assert [o.status for o in outs] == ["error"] * 4
    assert "no tool named" in outs[0].content["error"] and "not valid JSON" in outs[1].content["error"]
    assert "must be string" in outs[2].content["error"] and "HTTP 404" in outs[3].content["error"]
    assert five_hundred.status == "error" and "HTTP 500" in five_hundred.content["error"]
    assert len(service.requests) == 2  # only the well-formed calls reached the service


async def test_a_missing_secret_is_an_error_result_and_a_default_fills_in(orders, monkeypatch) -> None:
    service, url = orders
    monkeypatch.delenv("VOXROUTE_TEST_ORDERS_KEY", raising=False)
    strict = lookup(url, headers={"Authorization": "Bearer ${VOXROUTE_TEST_ORDERS_KEY}"})
    loose = lookup(url, headers={"Authorization": "Bearer ${VOXROUTE_TEST_ORDERS_KEY:-demo}"})
    runner = ToolRunner({"strict": strict, "loose": loose}, call_sid="CA1", tenant="t")
    a, b = await runner.run(
        1, [Call("a", "strict", {"order_id": "A1745"}), Call("b", "loose", {"order_id": "A1"})]
    )
    await runner.aclose()
    assert a.status == "error" and "VOXROUTE_TEST_ORDERS_KEY" in a.content["error"]
    assert b.status == "error" and len(service.requests) == 1 and service.requests[0]["authorization"]


async def test_python_tool_gets_its_context_and_validated_arguments() -> None:
    tools = load_config(RETAIL).tools.of("shopfast")
    runner = ToolRunner({"start_return": tools["start_return"]}, call_sid="CA7", tenant="shopfast")
    args = {"order_id": "a1745", "reason": "damaged"}
    (ok,) = await runner.run(2, [Call("a", "start_return", args)])
    (bad,) = await runner.run(3, [Call("b", "start_return", {"order_id": "A1", "reason": "bored"})])
    await runner.aclose()
    assert ok.status == "ok" and ok.content["return_id"].startswith("R") and ok.content["order_id"] == "A1745"
    assert ok.key == "CA7:2:0"
    assert bad.status == "error" and "reason" in bad.content["error"]


async def test_a_sync_python_tool_runs_in_a_thread_and_a_slow_one_times_out(tmp_path, monkeypatch) -> None:
    (tmp_path / "slow_tools_mod.py").write_text(
        "import time\n"
        "def nap(seconds: float) -> dict:\n"
        "    time.sleep(seconds)\n"
        "    return {'slept': seconds}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = ToolsConfig.model_validate(
        {
            "tenants": {
                "t": {
                    "nap": {
                        "kind": "python",
                        "function": "slow_tools_mod:nap",
                        "description": "d",
                        "timeout_ms": 200,
                    }
                }
            }
        }  # fmt: skip
    )
    runner = ToolRunner(cfg.of("t"), call_sid="CA1", tenant="t")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with asyncio.TaskGroup() as tg:
        tick = tg.create_task(ticker())
        quick, slow = await runner.run(
            1, [Call("a", "nap", {"seconds": 0.01}), Call("b", "nap", {"seconds": 0.5})]
        )
        tick.cancel()
    assert quick.status == "ok" and quick.content == {"slept": 0.01}
    assert slow.status == "timeout"
    assert ticks >= 10  # the loop kept running while the sync tool slept


# ---------------------------------------------------------------- the emulator's scripted calls


async def test_emulator_streams_scripted_calls_in_fragments_that_the_client_parses() -> None:
    script = [
        ScriptedCall("a one seven four five", "lookup_order", {"order_id": "A1745"}),
        ScriptedCall("broken", "lookup_order", '{"order_id": "A1'),
    ]
    emu = LLMEmulator(Dice(get_profile("zero"), 0), "openai", tool_script=script)
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
    async with serve_app(emu.app) as url:
        client = OpenAICompatLLM("emu", "openai", f"{url}/v1", None)
        try:
            got = {}
            for text in ("It's A one seven four five.", "this is broken", "hello there"):
                req = LLMRequest(model="m", messages=[{"role": "user", "content": text}], tools=tools)
                got[text] = [ev async for ev in client.stream(req) if isinstance(ev, LLMToolCalls)]
        finally:
            await client.aclose()
    (calls,) = got["It's A one seven four five."]
    assert [(c.name, c.arguments, c.arguments_error) for c in calls.calls] == [
        ("lookup_order", {"order_id": "A1745"}, None)
    ]
    (broken,) = got["this is broken"]
    assert broken.calls[0].arguments == {} and "not JSON" in broken.calls[0].arguments_error
    assert got["hello there"] == []


def test_emulator_answers_from_tool_results() -> None:
    base = [
        {"role": "user", "content": "where is A1745"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                 "function": {"name": "x", "arguments": "{}"}}]},
    ]  # fmt: skip
    ok = [
        *base,
        {
            "role": "tool",
            "tool_call_id": "c",
            "content": json.dumps({"order_id": "A1745", "status": "shipped"}),
        },
    ]
    err = [*base, {"role": "tool", "tool_call_id": "c", "content": json.dumps({"error": "timeout"})}]
    assert "A1745 is shipped" in after_tools(ok)
    assert "can't reach" in after_tools(err)
    assert after_tools(copy.deepcopy(base)) is None


# ---------------------------------------------------------------- where tool calls are recorded


def _tool_turn() -> dict[str, Any]:
    return {
        "index": 2,
        "route": {"class": "order_tracking", "tier": "fast"},
        "timeline": {"speech_end": 1000.0, "llm_first_token": 1300.0, "tool_request": 1310.0,
                     "tool_result": 1450.0, "first_audio_out": 1700.0},
        "first_audio_ms": 700.0,
        "budget_ms": 1000,
        "tools": [
            {"name": "lookup_order", "arguments": {"order_id": "A1745"}, "status": "ok", "latency_ms": 140.0},
            {"name": "lookup_order", "arguments": {"order_id": "A1745"}, "status": "ok", "latency_ms": 0.0,
             "reused": True},
            {"name": "lookup_order", "arguments": {"order_id": "B2"}, "status": "timeout", "latency_ms": 1500.0},
            {"name": "made_up", "arguments": {}, "status": "error", "latency_ms": 0.5},
        ],
    }  # fmt: skip


def test_report_gives_failures_and_p95_by_tool() -> None:
    from voxroute.agent.calllog.report import tool_figures

    figs = tool_figures([_tool_turn(), {"tools": None}])
    assert figs["lookup_order"] == {
        "calls": 2,  # the reused result is not a call
        "failures": 1,
        "failure_rate": 0.5,
        "p50_ms": 820.0,
        "p95_ms": 1432.0,
    }
    assert figs["made_up"]["failures"] == 1


def test_metrics_count_tool_calls_and_latency_by_tool() -> None:
    from voxroute.agent.prom import PromMetrics

    m = PromMetrics(["shopfast"], ["order_tracking"], process=False, tools=["lookup_order"])
    m.turn_finished({"tenant": "shopfast"}, _tool_turn())
    text = m.exposition()[0].decode()
    assert 'voxroute_tool_calls_total{status="ok",tenant="shopfast",tool="lookup_order"} 1.0' in text
    assert 'voxroute_tool_calls_total{status="timeout",tenant="shopfast",tool="lookup_order"} 1.0' in text
    assert 'voxroute_tool_calls_total{status="error",tenant="shopfast",tool="other"} 1.0' in text
    assert 'voxroute_tool_latency_seconds_count{tool="lookup_order"} 2.0' in text


def test_call_page_draws_the_tools_row_and_lists_each_call() -> None:
    from voxroute.agent.pages import turn_html, waterfall_svg

    svg = waterfall_svg(_tool_turn())
    assert 'data-stage="tool_result"' in svg and "tools: 140 ms after tool_request" in svg
    html = turn_html(_tool_turn())
    assert "<code>lookup_order</code>" in html and "timeout, 1500.0 ms" in html and "reused" in html


def test_the_call_log_keeps_tool_calls_with_masked_arguments() -> None:
    from voxroute.agent.calllog.store import turn_row
    from voxroute.agent.tools.run import ToolOutcome

    out = ToolOutcome("c1", "call_back", {"phone": "+91 98000 00001", "when": "today"}, "ok", {}, 12.0, "k")
    record = out.record()
    assert "98000" not in json.dumps(record) and record["arguments"]["when"] == "today"
    row = turn_row("CA1", {**_tool_turn(), "tools": [record]})
    assert row["tools"] == [record] and row["tool_request_ms"] == 1310.0 and row["tool_result_ms"] == 1450.0


def test_scripted_calls_match_however_the_words_were_transcribed() -> None:
    from voxroute.emulators.scripted import scripted_calls

    script = [ScriptedCall(normalise("It's A one seven four five."), "lookup_order", {"order_id": "A1745"})]
    marker = {"role": "system", "content": "voxroute-routing-class: order_tracking"}  # the local stack's
    for heard in ("It's A one seven four five.", "it's a 1745", "It’s A 17 45"):
        messages = [{"role": "user", "content": heard}, marker]
        assert scripted_calls(script, messages, {"lookup_order"}) == [("lookup_order", {"order_id": "A1745"})]
    assert scripted_calls(script, [{"role": "user", "content": "order 1745"}], {"lookup_order"}) == []
    assert scripted_calls(script, [{"role": "user", "content": "it's a 1745"}], {"other_tool"}) == []
