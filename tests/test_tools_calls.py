"""Tools in real calls: the order-status fixture dialled into the runtime with the retail example's
tools (examples/retail.yaml), the order-service stand-in and the emulators on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_VOICE
from voxroute.agent.config import load_config
from voxroute.agent.fixture import load
from voxroute.replay import local_stack, replay_fixture

RETAIL = Path(__file__).resolve().parent.parent / "examples" / "retail.yaml"
ORDER_TURN = "one seven four five"  # the caller's words with the order number


async def _call(
    profile: str = "zero",
    *,
    mode: str = "ok",
    script: list[dict[str, Any]] | None = None,
    during: Callable[[Any, Any], Awaitable[None]] | None = None,
    speed: float = 4.0,
) -> tuple[dict[str, Any], Any]:
    """Replay order_status on the retail config. ``mode``: the order service's; ``script``: the LLM
    emulators' tool script instead of the fixture's (posted to the control endpoint);
    ``during(stack, service)`` runs beside the call. The agent's voice speaks at FAST_VOICE (what is
    checked is the tool calls and what the replies say, not how long they last)."""
    cfg = load_config(RETAIL)
    fixture = load("order_status")
    async with local_stack(profile, 0, [fixture], cfg, voice_speed=FAST_VOICE) as stack:
        service = stack.tool_apps["shopfast.lookup_order"].state.service
        service.mode, service.delay_s = mode, 0.3
        if script is not None:
            async with httpx.AsyncClient(base_url=stack.emulators.openrouter_url) as http:
                assert (await http.delete("/_emulator/tools")).status_code == 200
                r = await http.post("/_emulator/tools", json=script)
                assert r.status_code == 200, r.text
        async with asyncio.TaskGroup() as tg:
            if during is not None:
                side = tg.create_task(during(stack, service))
            raw = await replay_fixture(fixture, stack.server_url, speed=speed, config=stack.config)
            if during is not None:
                side.cancel()
        async with httpx.AsyncClient(base_url=stack.server_url) as http:  # what operators see
            raw["_metrics"] = (await http.get("/metrics")).text
            page = await http.get(f"/calls/{raw['call_sid']}", headers={"Accept": "text/html"})
            raw["_page"] = page.text
    assert raw["ended"] == "completed", raw.get("error")
    return raw, service


def _order_turn(raw: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in raw["turns"] if ORDER_TURN in (t["transcript"] or "").lower())


def _in_budget(raw: dict[str, Any], slack_ms: float = 0.0) -> None:
    for t in raw["turns"]:
        if t["kind"] == "greeting":
            continue
        assert t["first_audio_ms"] is not None and t["first_audio_ms"] <= t["budget_ms"] + slack_ms, t


async def test_order_status_looks_up_the_order_once_and_says_its_status() -> None:
    raw, service = await _call()
    turn = _order_turn(raw)
    assert [(t["name"], t["arguments"], t["status"]) for t in turn["tools"]] == [
        ("lookup_order", {"order_id": "A1745"}, "ok")
    ]
    assert [r["idempotency_key"] for r in service.requests] == [f"{raw['call_sid']}:{turn['index']}:0"]
    assert service.requests[0]["path"] == "/orders/A1745" and service.requests[0]["authorization"]
    assert "shipped" in turn["reply"]
    ok_calls = r'voxroute_tool_calls_total\{status="ok",tenant="[\w]+",tool="lookup_order"\} 1\.0'
    assert re.search(ok_calls, raw["_metrics"])
    assert 'data-stage="tool_result"' in raw["_page"] and "<code>lookup_order</code>" in raw["_page"]
    tl = turn["timeline"]
    assert tl["llm_first_token"] <= tl["tool_request"] <= tl["tool_result"] <= tl["first_audio_out"]
    assert all(
        t["tools"] == [] or t is turn or t["tools"][0]["name"] == "mark_resolved" for t in raw["turns"]
    )
    _in_budget(raw)


async def test_a_hedged_turn_runs_the_tool_once() -> None:
    async def slow_down_mini(stack, service) -> None:
        # Once the first turn's request is out, the first rung of order_tracking (mini) turns slow (the
        # path's health learned it fast): the ladder hedges on flash, which wins.
        emu = stack.emulators.llm["openrouter"]
        while emu.requests < 1:  # noqa: ASYNC110 - the emulator's request count has no event
            await asyncio.sleep(0.01)
        emu.behave("openai/gpt-5-mini", ttft_median_s=1.5)

    raw, service = await _call(during=slow_down_mini)
    turn = _order_turn(raw)
    # The round that called the tool hedged (flash won it); the hedge cap may refuse a second hedge.
    assert turn["usage"]["hedges"] >= 1 and "flash" in turn["usage"]["by_path"]
    assert any(f["action"] == "hedge lost" and f["path"] == "mini" for f in turn["fallbacks"])
    assert len(service.requests) == 1 and [t["status"] for t in turn["tools"]] == ["ok"]
    assert "shipped" in turn["reply"]


async def test_after_a_mid_stream_error_the_continuation_reuses_the_tool_result() -> None:
    async def break_the_answer(stack, service) -> None:
        # The tool is running (slow mode: 300 ms): the answer that follows its result fails mid-stream.
        await service.requested.wait()
        stack.emulators.dice["openrouter_llm"].force("llm", "error_midstream")

    raw, service = await _call(mode="slow", during=break_the_answer)
    turn = _order_turn(raw)
    assert any(f["action"] == "continue on next rung" for f in turn["fallbacks"]), turn["fallbacks"]
    # The continuation's model asked again; the result was reused, not fetched again.
    assert [(t["name"], t["status"], t.get("reused", False)) for t in turn["tools"]] == [
        ("lookup_order", "ok", False),
        ("lookup_order", "ok", True),
    ]
    assert len(service.requests) == 1
    assert "shipped" in turn["reply"]


@pytest.mark.parametrize(("mode", "status"), [("hang", "timeout"), ("error", "error")])
async def test_a_hung_or_failing_tool_gets_an_error_result_and_the_caller_an_answer_in_budget(
    mode, status
) -> None:
    raw, service = await _call(mode=mode, speed=2.0)
    turn = _order_turn(raw)
    assert [(t["name"], t["status"]) for t in turn["tools"]] == [("lookup_order", status)]
    assert "can't reach" in turn["reply"]  # the model read the error result
    if mode == "hang":  # 1.5 s of tool timeout: the waiting phrase filled it, within budget
        assert turn["bridge_kind"] == "tool" and "Let me pull up that order." in turn["reply"]
    _in_budget(raw)
    assert raw["turns"][-1]["reply"] and raw["turns"][-1]["index"] > turn["index"]  # the call went on


async def test_a_high_stakes_tool_escalates_the_turn_and_the_escalation_sticks() -> None:
    script = [{"match": "a one seven four five", "name": "start_return",
               "arguments": {"order_id": "A1745", "reason": "damaged"}}]  # fmt: skip
    raw, service = await _call(script=script)
    turn = _order_turn(raw)
    assert turn["route"]["tier"] == "reasoning" and turn["route"]["escalated"]
    assert "high-stakes tool start_return -> escalate" in turn["route"]["reason"]
    assert turn["usage"]["path"] == "sonnet"  # the reasoning tier answered
    # The fast tier's call was not run: the reasoning tier's was, once.
    assert [(t["name"], t["status"]) for t in turn["tools"]] == [("start_return", "ok")]
    assert "return" in turn["reply"]
    later = [t for t in raw["turns"] if t["index"] > turn["index"]]
    assert later and all(t["route"]["escalated"] and t["route"]["tier"] == "reasoning" for t in later)
    assert "sticky escalation" in later[0]["route"]["reason"]
    assert service.requests == []


async def test_chaos_with_tools_keeps_every_turn_within_budget() -> None:
    raw, service = await _call("chaos", speed=1.0)
    assert len(service.requests) <= 1
    _in_budget(raw, slack_ms=20)


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ([{"match": ORDER_TURN, "name": "cancel_everything", "arguments": {}, "offered_only": False}],
         [("cancel_everything", "error")]),
        ([{"match": ORDER_TURN, "name": "lookup_order", "arguments": '{"order_id": "A17'}],
         [("lookup_order", "error")]),
        ([{"match": ORDER_TURN, "name": "lookup_order", "arguments": {"order_id": "A1745"}, "rounds": 99}],
         [("lookup_order", "ok")] * 3),
    ],
    ids=["unknown tool", "invalid JSON", "looping"],
)  # fmt: skip
async def test_bad_tool_calls_get_error_results_or_the_round_cap(script, expect) -> None:
    raw, service = await _call(script=script)
    turn = _order_turn(raw)
    assert [(t["name"], t["status"]) for t in turn["tools"]] == expect
    assert turn["reply"] and turn["outcome"] == "answered"
    assert len(service.requests) == (1 if expect[0] == ("lookup_order", "ok") else 0)
    _in_budget(raw)


def test_voxroute_replay_of_the_retail_example_serves_the_stand_in_and_shows_the_lookup(tmp_path) -> None:
    from typer.testing import CliRunner

    from voxroute.cli import app

    out = tmp_path / "replay.json"
    args = [
        "replay",
        "order_status",
        "--config",
        str(RETAIL),
        "--fast",
        "--profile",
        "zero",
        "--json",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    turns = json.loads(out.read_text())["calls"][0]["turns"]
    calls = [call for t in turns for call in t["tools"] if call["name"] == "lookup_order"]
    assert len(calls) == 1 and calls[0]["arguments"] == {"order_id": "A1745"} and calls[0]["status"] == "ok"
    assert isinstance(calls[0]["latency_ms"], float)
