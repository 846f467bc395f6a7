"""OpenTelemetry traces (the otel extra): a replayed call yields one call span and one span per turn,
with the timeline as events in order, the route as attributes, and provider calls as the turn's children
carrying ``traceparent``. Spans are read from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

pytest.importorskip("opentelemetry.sdk", reason="the otel extra: pip install 'voxroute[otel]'")
pytest.importorskip(
    "opentelemetry.instrumentation.httpx", reason="the otel extra: pip install 'voxroute[otel]'"
)

from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from voxroute.agent import tracing  # noqa: E402
from voxroute.agent.config import load_config  # noqa: E402
from voxroute.agent.timeline import Clock, TurnRecord  # noqa: E402
from voxroute.replay import replay  # noqa: E402
from voxroute.server import serve_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def spans(monkeypatch):
    """An SDK provider with an in-memory exporter for voxroute's spans and instrumented httpx."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "provider", provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        HTTPXClientInstrumentor().uninstrument()
        provider.shutdown()


async def test_replayed_call_yields_call_and_turn_spans(spans, tmp_path, monkeypatch):
    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path / "data"))
    result = await replay(["order_status"], profile="zero", fast=True, config=load_config(None))
    (call,) = result["calls"]
    assert call["ended"] == "completed"
    finished = spans.get_finished_spans()

    (call_span,) = [s for s in finished if s.name == "call"]
    assert call_span.attributes["voxroute.call_sid"] == call["call_sid"]
    assert call_span.attributes["voxroute.call.turns"] == len(call["turns"])
    turn_spans = sorted((s for s in finished if s.name.startswith("turn ")), key=lambda s: s.start_time)
    assert [s.name for s in turn_spans] == [f"turn {t['index']}" for t in call["turns"]]
    for span, turn in zip(turn_spans, call["turns"], strict=True):
        assert span.parent.span_id == call_span.context.span_id
        assert span.context.trace_id == call_span.context.trace_id
        names = [e.name for e in span.events]
        times = [e.timestamp for e in span.events]
        assert times == sorted(times)  # the timeline in order
        timeline = turn["timeline"]
        assert names == sorted(timeline, key=lambda n: timeline[n])
        assert span.attributes["voxroute.route.class"] == turn["route"]["class"]
        assert span.attributes["voxroute.route.tier"] == turn["route"]["tier"]
        assert span.attributes["voxroute.route.reason"] == turn["route"]["reason"]
        if turn.get("kind") != "greeting":
            for name in (
                "speech_end",
                "endpoint",
                "route",
                "llm_request",
                "llm_first_token",
                "first_audio_out",
            ):
                assert name in names, (turn["index"], names)
            assert span.attributes["voxroute.route.model"] == turn["route"]["model"]
    # Provider calls are in the call's trace: the LLM request of each answered turn under that turn
    # (phrase synthesis for the call, outside any turn, under the call's span).
    clients = [s for s in finished if s.kind == SpanKind.CLIENT and s.parent is not None]
    assert all(s.context.trace_id == call_span.context.trace_id for s in clients)
    llm_parents = [
        s.parent.span_id
        for s in clients
        if "chat/completions" in (s.attributes.get("url.full") or s.attributes.get("http.url") or "")
    ]
    answered = [
        s.context.span_id
        for s, t in zip(turn_spans, call["turns"], strict=True)
        if t.get("kind") != "greeting"
    ]
    assert sorted(set(llm_parents)) == sorted(answered)


async def test_provider_calls_carry_the_turn_in_traceparent(spans):
    seen: list[str | None] = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        seen.append(request.headers.get("traceparent"))
        return {}

    clock = Clock()
    call = tracing.CallTrace("CA1", clock)
    turn = TurnRecord(index=1)
    turn.mark("speech_end", clock.now())

    async def turn_task() -> int:
        span = call.start_turn(turn)
        async with httpx.AsyncClient() as client:
            await client.post(base + "/v1/chat/completions", json={})
        turn.mark("done", clock.now())
        call.end_turn(span, turn)
        return span.context.trace_id

    async with serve_app(app) as base:
        with call.active():
            trace_id = await asyncio.create_task(turn_task())
    call.end("completed", 1)
    (header,) = seen
    version, trace_hex, parent_hex, _flags = header.split("-")
    assert version == "00" and int(trace_hex, 16) == trace_id
    (client,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert int(parent_hex, 16) == client.context.span_id
    (turn_span,) = [s for s in spans.get_finished_spans() if s.name == "turn 1"]
    assert client.parent.span_id == turn_span.context.span_id
    assert [e.name for e in turn_span.events] == ["speech_end", "done"]


def test_without_the_extra_everything_is_a_no_op(monkeypatch):
    monkeypatch.setattr(tracing, "trace", None)
    call = tracing.CallTrace("CA1", Clock())
    turn = TurnRecord(index=1)
    with call.active():
        span = call.start_turn(turn)
        call.end_turn(span, turn)
    call.end("completed", 1)
    assert span is None and call.span is None


EXPORTER = """\
import sys
from voxroute.agent import tracing
from voxroute.agent.timeline import Clock, TurnRecord
from opentelemetry import trace

assert tracing.configure_from_env()
clock = Clock()
call = tracing.CallTrace("CA-otlp", clock)
turn = TurnRecord(index=1)
turn.mark("speech_end", clock.now())
with call.active():
    call.end_turn(call.start_turn(turn), turn)
call.end("completed", 1)
trace.get_tracer_provider().shutdown()  # flushes the batch
"""


async def test_otlp_export_when_configured(tmp_path):
    """With $OTEL_EXPORTER_OTLP_ENDPOINT set, ``voxroute``'s set-up exports spans by OTLP/HTTP (a
    collector stand-in on 127.0.0.1 decodes them); a fresh process, as the global provider is set once."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[str] = []
    app = FastAPI()

    @app.post("/v1/traces")
    async def traces(request: Request):
        export = ExportTraceServiceRequest.FromString(await request.body())
        for resource in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            received.extend(f"{service}:{s.name}" for scope in resource.scope_spans for s in scope.spans)
        return {}

    script = tmp_path / "export.py"
    script.write_text(EXPORTER)
    root = ROOT
    async with serve_app(app) as base:
        env = dict(
            os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=base, OTEL_SERVICE_NAME="vx-test", PYTHONPATH=str(root)
        )
        env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), env=env, cwd=root, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert sorted(received) == ["vx-test:call", "vx-test:turn 1"]
