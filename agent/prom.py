"""``GET /metrics`` in the Prometheus text format: a call observer that counts turns, first-audio
latency, budget misses, fallbacks, bridges, hedges, cost, and calls.

Label values come from the config (tenants, routing classes, tiers) or from small fixed sets
(turn outcomes, how a call ended, fault kinds); anything else is folded into ``other`` so that a
bad input cannot grow the number of series. Each ``Services`` gets its own ``CollectorRegistry``:
two runtimes in one process (tests) never share counters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from voxroute.agent.providers.base import FAULT_KINDS

log = logging.getLogger("voxroute.prom")

OTHER = "other"
NONE = "none"  # a turn without a route (DTMF before routing, a turn cut short)
TIERS = ("fast", "reasoning")
TURN_OUTCOMES = ("answered", "apology", "handoff", "not_heard", "interrupted", "merged")
CALL_ENDINGS = ("completed", "caller_hung_up", "handoff", "error")
CALL_OUTCOMES = ("resolved", "unresolved", "handoff", "unknown")  # agent/session.py CallSession.outcome
FALLBACK_REASONS = (*FAULT_KINDS, "cooldown")
PROVIDER_KINDS = ("llm", "stt", "tts", "runtime")
BRIDGE_KINDS = ("cached", "ack", "tool")
TOOL_STATUSES = ("ok", "error", "timeout")
BUILTIN_TOOL_NAMES = ("transfer_to_human", "mark_resolved")
# A tool's latency (agent/tools): an order lookup takes tens of ms, a hung one its timeout (seconds).
TOOL_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
MAX_ACTIONS = 32  # fallback actions are code constants; this only guards against a surprise

# Around the 1000 ms voice budget: fine steps below it, coarse ones above (seconds).
FIRST_AUDIO_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
# How late the event loop runs a timer (agent/loopwatch.py): a few ms is normal, 50 ms is a stall.
LOOP_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Labels:
    """A bounded label: values from a known set pass, anything else is ``other``."""

    def __init__(self, known: Iterable[str]) -> None:
        self.known = frozenset(known)

    def __call__(self, value: Any) -> str:
        if value is None or value == "":
            return NONE
        return value if value in self.known else OTHER


class FirstSeen:
    """Free-text labels (fallback actions): the first ``cap`` distinct values, then ``other``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def __call__(self, value: Any) -> str:
        text = str(value or NONE).split(";")[0].strip()[:40] or NONE  # "next rung; path cooling down 30 s"
        if text in self.seen:
            return text
        if len(self.seen) < self.cap:
            self.seen.add(text)
            return text
        return OTHER


class PromMetrics:
    """A ``CallObserver`` (agent/services.py) that keeps Prometheus series. Every method is a few
    dictionary lookups and counter increments: it returns at once."""

    def __init__(
        self, tenants: Iterable[str], classes: Iterable[str], process: bool = True, tools: Iterable[str] = ()
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=self.registry)  # CPU, memory, open fds of this runtime
        self.tenant = Labels(tenants)
        self.routing_class = Labels(classes)
        self.tier = Labels(TIERS)
        self.outcome = Labels(TURN_OUTCOMES)
        self.ended = Labels(CALL_ENDINGS)
        self.call_outcome = Labels(CALL_OUTCOMES)
        self.reason = Labels(FALLBACK_REASONS)
        self.provider_kind = Labels(PROVIDER_KINDS)
        self.bridge_kind = Labels(BRIDGE_KINDS)
        self.action = FirstSeen(MAX_ACTIONS)
        self.tool = Labels([*tools, *BUILTIN_TOOL_NAMES])  # a model's made-up tool name is "other"
        self.tool_status = Labels(TOOL_STATUSES)
        self._active: set[str] = set()
        r = self.registry
        self.turns = Counter(
            "voxroute_turns", "Finished turns", ["tenant", "class", "tier", "outcome"], registry=r
        )
        self.first_audio = Histogram(
            "voxroute_first_audio_seconds",
            "First agent audio on the wire after the end of the caller's speech (first_audio_out - speech_end)",
            ["class", "tier"],
            buckets=FIRST_AUDIO_BUCKETS,
            registry=r,
        )
        self.budget_misses = Counter(
            "voxroute_budget_misses",
            "Turns whose first audio came later than their budget",
            ["tenant", "class", "tier"],
            registry=r,
        )
        self.fallbacks = Counter(
            "voxroute_fallbacks",
            "Fallbacks taken in turns: what went wrong, what the runtime did, which kind of provider",
            ["reason", "action", "provider_kind"],
            registry=r,
        )
        self.bridges = Counter(
            "voxroute_bridges", "Turns that played a bridge", ["tenant", "class", "kind"], registry=r
        )
        self.hedges = Counter(
            "voxroute_hedges",
            "Hedged LLM requests (a second provider started)",
            ["tenant", "class"],
            registry=r,
        )
        self.early_requests = Counter(
            "voxroute_early_requests",
            "Early model requests (ladder.early_request) by result: used by the turn, or cancelled unused",
            ["tenant", "result"],
            registry=r,
        )
        self.cost = Counter(
            "voxroute_cost_usd", "Model cost in US dollars", ["tenant", "class", "tier"], registry=r
        )
        self.tool_calls = Counter(
            "voxroute_tool_calls",
            "Tool calls the runtime ran, by tool and status (ok, error, timeout); reused results not counted",
            ["tenant", "tool", "status"],
            registry=r,
        )
        self.tool_latency = Histogram(
            "voxroute_tool_latency_seconds",
            "How long a tool call took (to its result, its error or its timeout)",
            ["tool"],
            buckets=TOOL_LATENCY_BUCKETS,
            registry=r,
        )
        self.active_calls = Gauge("voxroute_active_calls", "Calls in progress", registry=r)
        self.calls = Counter(
            "voxroute_calls", "Finished calls by how they ended", ["tenant", "ended"], registry=r
        )
        # The business figures of `voxroute report` as rates (deploy/grafana): cost per resolved call
        # and containment need the outcome (set by mark_resolved, a handoff, or the operator before
        # the call ended) together with how the call ended.
        self.call_outcomes = Counter(
            "voxroute_call_outcomes",
            "Finished calls by outcome (resolved, unresolved, handoff, unknown) and how they ended",
            ["tenant", "outcome", "ended"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "voxroute_event_loop_lag_seconds",
            "How late the event loop ran a timer that should have fired (sampled every ~20 ms)",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "voxroute_gc_pause_seconds",
            "How long each run of the cyclic garbage collector held the process, by generation",
            ["generation"],
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self._gc_pause_by_gen = [self.gc_pause.labels(str(gen)) for gen in range(3)]

    def observe_gc(self, generation: int, seconds: float) -> None:
        """For ``metrics.COLLECTOR.observe``: each collection's pause (children bound once)."""
        self._gc_pause_by_gen[generation].observe(seconds)

    def watch_gate(self, gate: Any) -> None:
        """Series of the call admission (telephony.admission.CallGate), read at scrape time."""
        self.registry.register(_GateCollector(gate))

    def watch_rtp(self, totals: Any) -> None:
        """The SIP calls' RTP counters (telephony.sip.transport.RTP_TOTALS), read at scrape time."""
        self.registry.register(_RtpCollector(totals))

    @classmethod
    def for_services(cls, services: Any) -> PromMetrics:
        """Label sets from the config: its tenants and every routing class any tenant knows."""
        table = services.router.table
        classes = {name for per_tenant in table.classes.values() for name in per_tenant}
        tools = {name for per_tenant in services.config.tools.tenants.values() for name in per_tenant}
        return cls(table.tenants, classes, tools=tools)

    # ---- CallObserver

    def call_started(self, call: dict[str, Any]) -> None:
        self._active.add(call.get("call_sid") or "")
        self.active_calls.set(len(self._active))

    def turn_finished(self, call: dict[str, Any], turn: dict[str, Any]) -> None:
        route = turn.get("route") or {}
        tenant = self.tenant(call.get("tenant"))
        klass = self.routing_class(route.get("class"))
        tier = self.tier(route.get("tier"))
        self.turns.labels(tenant, klass, tier, self.outcome(turn.get("outcome"))).inc()
        first_audio = turn.get("first_audio_ms")
        # Chat turns (agent/chat.py) time their first text, not audio: kept out of the audio histogram.
        if isinstance(first_audio, int | float) and call.get("channel", "voice") == "voice":
            self.first_audio.labels(klass, tier).observe(first_audio / 1000.0)
            budget = turn.get("budget_ms")
            if isinstance(budget, int | float) and first_audio > budget:
                self.budget_misses.labels(tenant, klass, tier).inc()
        for fallback in turn.get("fallbacks") or []:
            self.fallbacks.labels(
                self.reason(fallback.get("kind")),
                self.action(fallback.get("action")),
                self.provider_kind(fallback.get("service") or "runtime"),
            ).inc()
        if turn.get("bridge"):
            self.bridges.labels(tenant, klass, self.bridge_kind(turn.get("bridge_kind"))).inc()
        usage = turn.get("usage") or {}
        hedges = usage.get("hedges")
        if isinstance(hedges, int) and hedges > 0:
            self.hedges.labels(tenant, klass).inc(hedges)
        if usage.get("early_used") is True:
            self.early_requests.labels(tenant, "used").inc()
        unused = usage.get("early_unused")
        if isinstance(unused, int) and unused > 0:
            self.early_requests.labels(tenant, "unused").inc(unused)
        cost = usage.get("cost_usd")
        if isinstance(cost, int | float) and cost > 0:
            self.cost.labels(tenant, klass, tier).inc(cost)
        for call in turn.get("tools") or []:
            if not isinstance(call, dict) or call.get("reused"):
                continue
            tool = self.tool(call.get("name"))
            self.tool_calls.labels(tenant, tool, self.tool_status(call.get("status"))).inc()
            latency = call.get("latency_ms")
            if isinstance(latency, int | float) and latency > 0:
                self.tool_latency.labels(tool).observe(latency / 1000.0)

    def call_ended(self, call: dict[str, Any]) -> None:
        self._active.discard(call.get("call_sid") or "")
        self.active_calls.set(len(self._active))
        tenant, ended = self.tenant(call.get("tenant")), self.ended(call.get("ended"))
        self.calls.labels(tenant, ended).inc()
        self.call_outcomes.labels(tenant, self.call_outcome(call.get("outcome")), ended).inc()

    # ---- exposition

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type: OpenMetrics when the scraper asks for it, else the
        classic text format (version 0.0.4, which every Prometheus reads)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class _GateCollector:
    """Calls refused (by carrier and reason), calls admitted now, the cap, and whether draining."""

    def __init__(self, gate: Any) -> None:
        self.gate = gate

    def collect(self):
        refused = CounterMetricFamily(
            "voxroute_calls_refused",
            "Calls refused at set-up: busy (at the concurrent-call cap) or draining (shutting down)",
            labels=["carrier", "reason"],
        )
        for (carrier, reason), count in sorted(self.gate.refused.items()):
            refused.add_metric([carrier, reason], count)
        yield refused
        yield GaugeMetricFamily(
            "voxroute_call_slots_used", "Calls holding a slot of the cap", self.gate.active
        )
        yield GaugeMetricFamily("voxroute_call_slots", "The concurrent-call cap", self.gate.max_calls)
        yield GaugeMetricFamily("voxroute_draining", "1 while shutting down", int(self.gate.draining))

    def describe(self):
        return []


class _RtpCollector:
    """Packets of SIP calls in and out, and what went wrong with them, over the ended calls."""

    PROBLEMS = ("lost", "late", "foreign", "flood", "bad", "backlog")

    def __init__(self, totals: Any) -> None:
        self.totals = totals

    def collect(self):
        t = self.totals
        packets = CounterMetricFamily(
            "voxroute_rtp_packets", "RTP packets of ended SIP calls, by direction", labels=["direction"]
        )
        packets.add_metric(["in"], t.packets_in)
        packets.add_metric(["out"], t.packets_out)
        yield packets
        problems = CounterMetricFamily(
            "voxroute_rtp_problems",
            "Inbound RTP packets of ended SIP calls that were lost, late, or dropped (from a foreign "
            "address, over the rate limit, not RTP of the call's payload types, or backlogged)",
            labels=["kind"],
        )
        for kind in self.PROBLEMS:
            problems.add_metric([kind], getattr(t, kind))
        yield problems

    def describe(self):
        return []


def add_metrics_route(
    app: FastAPI, metrics: PromMetrics, guard: Callable[[Request], None] | None = None
) -> None:
    """``GET /metrics`` behind the operator key (``guard`` raises 401): Prometheus sends it as a bearer
    token (``authorization: {credentials: KEY}`` in the scrape config)."""

    @app.get("/metrics", include_in_schema=False)
    async def get_metrics(request: Request) -> Response:
        if guard is not None:
            guard(request)
        body, content_type = metrics.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})
