"""The text channel (agent/chat.py): ``POST /v1/chat/completions`` over a real socket on 127.0.0.1,
with the official ``openai`` SDK as the client: the same router (the chat channel), ladder and call
log as a voice call; auth outside dev; OpenAI-shaped errors for bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx
import openai
import pytest

from voxroute.agent.calllog.report import Filters, report
from voxroute.agent.calllog.store import CallLog
from voxroute.agent.config import load_config
from voxroute.emulators.stack import run_emulators
from voxroute.replay import local_stack
from voxroute.runtime import build_services, create_runtime_app, missing_secrets
from voxroute.server import serve_app


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """This test's own call log."""
    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("VOXROUTE_DATABASE_URL", raising=False)
    return tmp_path / "data"


def client(url: str, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


async def test_non_streaming_and_streaming_through_the_router_into_the_call_log(data_dir):
    async with local_stack("zero", 0, [], load_config()) as stack:
        chat = client(stack.server_url)
        first = await chat.chat.completions.create(
            model="default", user="widget-42",
            messages=[{"role": "user", "content": "I was charged twice for my order"}],
        )  # fmt: skip
        assert first.model == "default" and first.object == "chat.completion"
        assert first.choices[0].message.role == "assistant" and first.choices[0].finish_reason == "stop"
        assert len(first.choices[0].message.content) > 20
        assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
        ext = first.model_extra["voxroute"]
        assert set(ext["route"]) == {"class", "tier", "model", "reason"}
        assert ext["route"]["class"] == "billing_dispute" and ext["route"]["tier"] == "reasoning"
        assert "charged twice" in ext["route"]["reason"]  # the keyword rule that decided it

        # The same session (``user``), streamed: sticky escalation keeps the reasoning tier.
        stream = await chat.chat.completions.create(
            model="default", user="widget-42", stream=True,
            messages=[
                {"role": "user", "content": "I was charged twice for my order"},
                {"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "ok and what time do you open tomorrow"},
            ],
        )  # fmt: skip
        pieces, finish, last = [], None, None
        async for chunk in stream:
            delta = chunk.choices[0].delta
            if delta.content:
                pieces.append(delta.content)
            finish = chunk.choices[0].finish_reason or finish
            last = chunk
        assert len(pieces) >= 2 and finish == "stop"  # text as it came, not one block
        streamed = last.model_extra["voxroute"]
        assert streamed["conversation_id"] == ext["conversation_id"] and streamed["turn"] == 2
        assert streamed["route"]["tier"] == "reasoning"  # escalation sticks across the conversation
        assert "".join(pieces).strip() != ""

        # Another session is another conversation.
        other = await chat.chat.completions.create(
            model="default",
            user="widget-43",
            messages=[{"role": "user", "content": "what are your opening hours"}],
        )
        assert other.model_extra["voxroute"]["conversation_id"] != ext["conversation_id"]
        assert other.model_extra["voxroute"]["route"]["tier"] == "fast"

        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{stack.server_url}/metrics")).text
        log = next(o for o in stack.services.observers if isinstance(o, CallLog))
        await log.flush()
        figures = await report(log.engine, Filters(tenant="default"))

    def total(name: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + "{")
        )

    assert total("voxroute_turns_total") == 3  # the chat's turns are counted ...
    assert total("voxroute_first_audio_seconds_count") == 0  # ... but their text is not audio latency
    chat_figures = figures["by_channel"]["chat"]
    assert chat_figures["calls"] == 2 and chat_figures["turns"] == 3
    by_class = chat_figures["first_audio_ms_by_class"]  # on chat: the time to the first text
    assert by_class["billing_dispute"]["turns"] == 1 and sum(v["turns"] for v in by_class.values()) == 3
    assert "voice" not in figures["by_channel"]  # no call was made: the figures are the chat's
    assert figures["calls"] == 2


async def test_bad_input_gets_an_openai_shaped_4xx_and_the_server_goes_on(data_dir):
    config = load_config()
    async with local_stack("zero", 0, [], config) as stack:
        url = f"{stack.server_url}/v1/chat/completions"
        ok = {"model": "default", "messages": [{"role": "user", "content": "hello"}]}
        cases = [
            (b"{not json", 400, "invalid_json"),
            (json.dumps({**ok, "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}), 400,
             "invalid_role"),
            (json.dumps({**ok, "messages": [{"role": "wizard", "content": "x"}]}), 400, "invalid_request"),
            (json.dumps({**ok, "messages": []}), 400, "invalid_request"),
            (json.dumps({**ok, "messages": [{"role": "assistant", "content": "hi"}]}), 400, "invalid_messages"),
            (json.dumps({**ok, "model": "nobody"}), 404, "model_not_found"),
            (json.dumps({**ok, "messages": [{"role": "user", "content": "x" * 9000}]}), 400, "message_too_long"),
            (b"{" + b" " * (config.chat.max_body_bytes + 10) + b"}", 413, "body_too_large"),
        ]  # fmt: skip
        async with httpx.AsyncClient(timeout=20) as http:
            for body, status, code in cases:
                r = await http.post(url, content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == status, (code, r.text)
                error = r.json()["error"]
                assert error["code"] == code and error["message"] and "type" in error, r.text
            assert (await http.post(url, json=ok)).status_code == 200  # still answering
        with pytest.raises(openai.NotFoundError):
            await client(stack.server_url).chat.completions.create(model="nobody", messages=ok["messages"])


@contextlib.asynccontextmanager
async def production_server(config):
    """The runtime app outside dev mode (its secrets from the environment), emulated providers."""
    async with run_emulators("zero", 0, []) as emu:
        async with build_services(config, emu.urls) as services:
            app = create_runtime_app(services, dev=False)
            async with serve_app(app) as url:
                yield url, app


async def test_outside_dev_the_tenant_chat_key_is_required(data_dir, monkeypatch):
    config = load_config()
    monkeypatch.delenv("VOXROUTE_CHAT_KEY", raising=False)
    assert (
        "VOXROUTE_CHAT_KEY",
        "chat API key of tenant default (POST /v1/chat/completions)",
    ) in missing_secrets(config)  # serve refuses to start without it
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "twilio-secret")
    monkeypatch.setenv("VOXROUTE_API_KEY", "operator-secret")
    for name in ("OPENROUTER_API_KEY", "SARVAM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    messages = [{"role": "user", "content": "what are your opening hours"}]
    async with production_server(config) as (url, app):
        with pytest.raises(openai.AuthenticationError):  # no key configured: closed, whatever is sent
            await client(url, "anything").chat.completions.create(model="default", messages=messages)
        monkeypatch.setenv("VOXROUTE_CHAT_KEY", "chat-secret")
        assert not [m for m in missing_secrets(config) if m[0] == "VOXROUTE_CHAT_KEY"]
        with pytest.raises(openai.AuthenticationError) as info:
            await client(url, "wrong").chat.completions.create(model="default", messages=messages)
        assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):  # the operator key is not a chat key
            await client(url, "operator-secret").chat.completions.create(model="default", messages=messages)
        answer = await client(url, "chat-secret").chat.completions.create(model="default", messages=messages)
        assert answer.choices[0].message.content
    assert app.state.chat.tool_http.is_closed and not app.state.chat.conversations  # closed with the app


async def test_a_client_gone_mid_stream_ends_the_turn_and_a_busy_server_says_429(data_dir):
    """Slow tokens: the client reads the first text and goes; the model's stream is cancelled and the
    turn is logged as the caller hanging up. Meanwhile, over ``chat.max_concurrent``: 429."""
    from sqlalchemy import select

    from voxroute.agent.calllog.schema import turns_table

    config = load_config()
    config.chat.max_concurrent = 1
    async with local_stack("zero", 0, [], config) as stack:
        for llm in stack.emulators.llm.values():
            llm.behave(None, tps=4)  # about 4 words a second: a reply takes seconds
        url = f"{stack.server_url}/v1/chat/completions"
        body = {
            "model": "default",
            "stream": True,
            "messages": [{"role": "user", "content": "I was charged twice"}],
        }
        async with httpx.AsyncClient(timeout=20) as http:
            async with http.stream("POST", url, json=body) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                conversation = response.headers["x-voxroute-session-id"]
                with pytest.raises(openai.RateLimitError):  # one request at a time here
                    await client(stack.server_url).chat.completions.create(
                        model="default", messages=body["messages"]
                    )
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get(
                        "content"
                    ):
                        break  # the first text: now go away
        log = next(o for o in stack.services.observers if isinstance(o, CallLog))
        async with asyncio.timeout(10):
            while True:
                await log.flush()
                async with log.engine.connect() as db:
                    rows = (
                        await db.execute(select(turns_table).where(turns_table.c.call_sid == conversation))
                    ).all()
                if rows and rows[0]._mapping["outcome"] == "caller_hung_up":
                    break
                await asyncio.sleep(0.05)
        async with asyncio.timeout(5):  # the model's stream was cancelled with the turn
            while sum(llm.active for llm in stack.emulators.llm.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert rows[0]._mapping["turn_index"] == 1 and rows[0]._mapping["reply"]  # the text sent before


RETAIL = Path(__file__).resolve().parent.parent / "examples" / "retail.yaml"


async def test_a_chat_session_uses_the_tenants_tools_and_high_stakes_ones_escalate(data_dir):
    """examples/retail.yaml by text: ``lookup_order`` runs once against the order service stand-in (with
    an idempotency key) and the reply carries its result; a ``stakes: high`` tool puts the turn on the
    reasoning tier, and the next turn stays there."""
    from voxroute.emulators.scripted import ScriptedCall

    async with local_stack("zero", 0, [], load_config(RETAIL)) as stack:
        service = stack.tool_apps["shopfast.lookup_order"].state.service
        chat = client(stack.server_url)
        first = await chat.chat.completions.create(
            model="shopfast",
            user="buyer-7",
            messages=[{"role": "user", "content": "where is my order A1745"}],
        )
        ext = first.model_extra["voxroute"]
        assert [(t["name"], t["status"]) for t in ext["tools"]] == [("lookup_order", "ok")]
        assert ext["tools"][0]["arguments"] == {"order_id": "A1745"}
        assert len(service.requests) == 1 and service.requests[0]["path"] == "/orders/A1745"
        assert service.requests[0]["idempotency_key"]  # exactly once, with its key
        assert "shipped" in first.choices[0].message.content  # the model read the tool's result

        for llm in stack.emulators.llm.values():
            llm.tool_script.append(
                ScriptedCall("take it back", "start_return", {"order_id": "A1745", "reason": "damaged"})
            )
        history = [
            {"role": "user", "content": "where is my order A1745"},
            {"role": "assistant", "content": first.choices[0].message.content},
        ]
        second = await chat.chat.completions.create(
            model="shopfast", user="buyer-7",
            messages=[*history, {"role": "user", "content": "can you take it back for me"}],
        )  # fmt: skip
        ext2 = second.model_extra["voxroute"]
        assert [(t["name"], t["status"]) for t in ext2["tools"]] == [("start_return", "ok")]
        assert (
            ext2["route"]["tier"] == "reasoning"
            and "high-stakes tool start_return" in ext2["route"]["reason"]
        )
        third = await chat.chat.completions.create(
            model="shopfast", user="buyer-7",
            messages=[*history, {"role": "user", "content": "what time do you open"}],
        )  # fmt: skip
        assert third.model_extra["voxroute"]["route"]["tier"] == "reasoning"  # the escalation sticks
        assert len(service.requests) == 1


async def test_hindi_text_takes_the_indic_table_and_the_conversation_has_a_call_page(data_dir):
    async with local_stack("zero", 0, [], load_config()) as stack:
        reply = await client(stack.server_url).chat.completions.create(
            model="default", messages=[{"role": "user", "content": "मेरा ऑर्डर कहाँ है"}]
        )
        ext = reply.model_extra["voxroute"]
        assert ext["route"]["model"] == "sarvam-30b"  # the indic table's fast ladder starts with it
        log = next(o for o in stack.services.observers if isinstance(o, CallLog))
        await log.flush()
        async with httpx.AsyncClient() as http:
            page = (await http.get(f"{stack.server_url}/calls/{ext['conversation_id']}")).json()
    assert page["channel"] == "chat" and page["ended"] == "completed"
    assert page["turns"][0]["transcript"] == "मेरा ऑर्डर कहाँ है" and page["turns"][0]["language"] == "hi-IN"


async def test_a_bug_in_a_turn_fails_that_request_in_openai_shape_only(data_dir, monkeypatch, caplog):
    from voxroute.agent.chat import ChatConversation

    async def broken(self, messages, out):
        raise RuntimeError("a bug in the answer")

    messages = [{"role": "user", "content": "what are your hours"}]
    async with local_stack("zero", 0, [], load_config()) as stack:
        chat = client(stack.server_url)
        monkeypatch.setattr(ChatConversation, "answer", broken)
        with pytest.raises(openai.InternalServerError) as info:
            await chat.chat.completions.create(model="default", messages=messages)
        assert info.value.code == "server_error"
        failures = [r for r in caplog.records if r.getMessage().endswith("the turn failed")]
        assert failures and failures[-1].exc_info[0] is RuntimeError  # the bug itself is logged
        with pytest.raises(openai.APIError, match="failed to answer"):
            async for _ in await chat.chat.completions.create(
                model="default", messages=messages, stream=True
            ):
                pass
        monkeypatch.undo()
        reply = await chat.chat.completions.create(model="default", messages=messages)
        assert reply.choices[0].message.content  # the server goes on
