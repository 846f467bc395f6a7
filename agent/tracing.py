"""OpenTelemetry traces of calls and turns (the ``otel`` extra: ``pip install 'voxroute[otel]'``).

One span per call (``call``), one per turn (``turn N``, a child of the call's span) with the turn
timeline's names as events at their times (speech_end, endpoint, stt_final, route, llm_request,
llm_first_token, tts_first_audio, first_audio_out, ..., done) and the route as attributes
(``voxroute.route.class``, ``.tier``, ``.model``, ``.reason``). A turn's span is the current span of
the turn's task, so the provider HTTP calls it makes carry it in ``traceparent`` (httpx instrumented
by :func:`configure_from_env`).

Export is configured the OpenTelemetry way, from the environment: with ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, spans go by OTLP/HTTP in batches; service name from
``OTEL_SERVICE_NAME`` (default ``voxroute``). Without the extra installed every function here does
nothing, and the call path pays one ``is None`` test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
except ImportError:  # the otel extra is not installed
    trace = None  # type: ignore[assignment]
    otel_context = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from voxroute.agent.timeline import Clock, TurnRecord

log = logging.getLogger(__name__)

TRACER_NAME = "voxroute"
# None: OpenTelemetry's global provider. Tests put an SDK provider with an in-memory exporter here.
provider: Any = None


def available() -> bool:
    return trace is not None


def configure_from_env() -> bool:
    """OTLP export and traced provider HTTP calls when an OTLP endpoint is configured (and the extra is
    installed). True when traces are exported. Logs why not when an endpoint is set but cannot be used."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning(
            "an OTLP endpoint is set but the otel extra is not installed (%s): pip install 'voxroute[otel]'",
            exc,
        )
        return False
    assert trace is not None  # the SDK just imported requires the API
    service = os.environ.get("OTEL_SERVICE_NAME") or TRACER_NAME
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": service}))
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=tracer_provider)
    log.info("traces: OTLP export as service %s", service)
    return True


class CallTrace:
    """One call's span and its turns' spans, timed on the call's :class:`~agent.timeline.Clock` (ms
    since the call started, mapped to wall-clock time once at the start)."""

    def __init__(self, call_sid: str, clock: Clock, attributes: dict[str, Any] | None = None) -> None:
        self.clock = clock
        self._wall0_ns = time.time_ns() - int(clock.now() * 1e6)
        self.span = None
        if trace is None:
            return
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=provider)
        attrs = {
            "voxroute.call_sid": call_sid,
            **{k: v for k, v in (attributes or {}).items() if v is not None},
        }
        self.span = self._tracer.start_span("call", attributes=attrs, start_time=self._wall0_ns)

    def at_ns(self, t_ms: float) -> int:
        """Wall-clock ns of a time on the call's clock."""
        return self._wall0_ns + int(t_ms * 1e6)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The call's span is current inside (tasks created inside inherit it); it ends on the way out."""
        if self.span is None or trace is None:  # (no span without the otel extra)
            yield
            return
        with trace.use_span(
            self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            yield

    def end(self, ended: str, turns: int, error: str | None = None) -> None:
        if self.span is None or trace is None:
            return
        self.span.set_attribute("voxroute.call.ended", ended)
        self.span.set_attribute("voxroute.call.turns", turns)
        if error:
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, error[:500]))
        self.span.end(end_time=self.at_ns(self.clock.now()))

    def start_turn(self, turn: TurnRecord) -> Any:
        """The turn's span, made current for the rest of the calling task (the turn's own task): the
        provider calls it makes are its children. Starts at the turn's ``speech_end`` when known."""
        if self.span is None or trace is None or otel_context is None:
            return None
        start = turn.timeline.get("speech_end", self.clock.now())
        span = self._tracer.start_span(
            f"turn {turn.index}",
            context=trace.set_span_in_context(self.span),
            start_time=self.at_ns(start),
            attributes={"voxroute.turn.index": turn.index, "voxroute.turn.kind": turn.kind},
        )
        otel_context.attach(trace.set_span_in_context(span))  # this task's context only
        return span

    def end_turn(self, span: Any, turn: TurnRecord) -> None:
        """The timeline as events in time order, the route and the outcome as attributes; ends ``span``."""
        if span is None:
            return
        for name, t in sorted(turn.timeline.items(), key=lambda item: item[1]):
            span.add_event(name, {"voxroute.t_ms": t}, timestamp=self.at_ns(t))
        route = turn.route.as_dict() if turn.route is not None else {}  # the span shows the logged values
        attrs = {
            "voxroute.route.class": route.get("class"),
            "voxroute.route.tier": route.get("tier"),
            "voxroute.route.model": route.get("model"),
            "voxroute.route.reason": route.get("reason"),
            "voxroute.route.escalated": route.get("escalated"),
            "voxroute.turn.outcome": turn.outcome,
            "voxroute.turn.budget_ms": turn.budget_ms,
            "voxroute.turn.first_audio_ms": turn.first_audio_ms,
            "voxroute.turn.within_budget": turn.within_budget,
        }
        span.set_attributes({k: v for k, v in attrs.items() if v is not None})
        end = turn.timeline.get("done")
        span.end(end_time=self.at_ns(end if end is not None else self.clock.now()))
