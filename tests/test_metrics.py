"""``GET /metrics`` (agent/prom.py): the observer's series from call and turn dicts, bounded labels,
one registry per runtime, and a replayed call through the real stack whose scrape matches the
call's own turn records."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from voxroute.agent.fixture import load
from voxroute.agent.prom import MAX_ACTIONS, OTHER, FirstSeen, PromMetrics
from voxroute.agent.timeline import TurnRecord
from voxroute.replay import local_stack, operator_headers, replay_fixture
from voxroute.routing.route import Route

CLASSES = ("faq", "billing_dispute", "order_tracking")


def scrape(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition: (name, labels) -> value."""
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum over the series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def turn(
    index: int, klass: str | None, tier: str | None, first_audio: float | None, budget: int = 1000, **kw
) -> dict:
    t = TurnRecord(index=index, budget_ms=budget)
    if klass is not None:
        t.route = Route(routing_class=klass, tier=tier or "fast", model="m", paths=("m",), reason="test")
    t.mark("speech_end", 100.0)
    if first_audio is not None:
        t.mark("first_audio_out", 100.0 + first_audio)
    t.outcome = kw.get("outcome", "answered")
    t.usage = kw.get("usage", {})
    t.bridge, t.bridge_kind = kw.get("bridge", False), kw.get("bridge_kind")
    for f in kw.get("fallbacks", []):
        t.add_fallback(*f[:4], **f[4] if len(f) > 4 else {})
    return t.as_dict()


def test_turns_latency_misses_fallbacks_bridges_hedges_cost_and_calls():
    m = PromMetrics(["default", "acme"], CLASSES, process=False)
    call = {"call_sid": "CA1", "tenant": "acme", "ended": "in_progress"}
    m.call_started(call)
    m.call_started({"call_sid": "CA2", "tenant": "default"})
    assert value(scrape(m.exposition()[0].decode()), "voxroute_active_calls") == 2
    m.turn_finished(
        call,
        turn(
            1,
            "billing_dispute",
            "reasoning",
            650.0,
            bridge=True,
            bridge_kind="ack",
            usage={"cost_usd": 0.0005, "hedges": 1},
            fallbacks=[
                ("openrouter", "http_500", "boom", "next rung; path cooling down 30 s", {"service": "llm"}),
                ("sarvam", "disconnected", "gone", "tts rest fallback", {"service": "tts"}),
            ],
        ),
    )
    usage = {"cost_usd": 0.00025, "early_used": True, "early_unused": 2}
    m.turn_finished(call, turn(2, "billing_dispute", "reasoning", 1250.0, usage=usage))
    m.turn_finished(call, turn(3, "faq", "fast", None, outcome="interrupted"))
    m.call_ended({**call, "ended": "completed"})
    s = scrape(m.exposition()[0].decode())

    assert value(s, "voxroute_turns_total", tenant="acme", **{"class": "billing_dispute"}, tier="reasoning",
                 outcome="answered") == 2  # fmt: skip
    assert (
        value(
            s, "voxroute_turns_total", tenant="acme", **{"class": "faq"}, tier="fast", outcome="interrupted"
        )
        == 1
    )
    hist = {"class": "billing_dispute", "tier": "reasoning"}
    assert value(s, "voxroute_first_audio_seconds_count", **hist) == 2  # no first audio: not observed
    assert value(s, "voxroute_first_audio_seconds_sum", **hist) == pytest.approx(1.9)
    assert value(s, "voxroute_first_audio_seconds_bucket", **hist, le="0.6") == 0
    assert value(s, "voxroute_first_audio_seconds_bucket", **hist, le="0.7") == 1
    assert value(s, "voxroute_first_audio_seconds_bucket", **hist, le="1.0") == 1
    assert value(s, "voxroute_first_audio_seconds_bucket", **hist, le="1.25") == 2
    assert total(s, "voxroute_budget_misses_total") == 1
    assert value(s, "voxroute_budget_misses_total", tenant="acme", **hist) == 1
    assert (
        value(s, "voxroute_fallbacks_total", reason="http_500", action="next rung", provider_kind="llm") == 1
    )
    assert value(s, "voxroute_fallbacks_total", reason="disconnected", action="tts rest fallback",
                 provider_kind="tts") == 1  # fmt: skip
    assert value(s, "voxroute_bridges_total", tenant="acme", **{"class": "billing_dispute"}, kind="ack") == 1
    assert value(s, "voxroute_hedges_total", tenant="acme", **{"class": "billing_dispute"}) == 1
    assert value(s, "voxroute_early_requests_total", tenant="acme", result="used") == 1
    assert value(s, "voxroute_early_requests_total", tenant="acme", result="unused") == 2
    assert total(s, "voxroute_cost_usd_total") == pytest.approx(0.00075)
    assert value(s, "voxroute_calls_total", tenant="acme", ended="completed") == 1
    assert value(s, "voxroute_active_calls") == 1  # CA2 is still on


def test_unknown_label_values_fold_into_other():
    m = PromMetrics(["default"], CLASSES, process=False)
    call = {"call_sid": "CA1", "tenant": "evil-" + "x" * 50}
    for k in range(20):  # values from the network must not make new series
        m.turn_finished(
            {**call, "tenant": f"t{k}"},
            turn(
                1,
                f"class{k}",
                f"tier{k}",
                500.0,
                outcome=f"o{k}",
                fallbacks=[("p", f"kind{k}", "e", "retry", {})],
            ),
        )
    m.turn_finished(call, turn(2, None, None, 400.0))
    m.call_ended({**call, "ended": "exploded"})
    s = scrape(m.exposition()[0].decode())
    turns = {ls for (n, ls) in s if n == "voxroute_turns_total"}
    assert turns == {
        frozenset({"tenant": OTHER, "class": OTHER, "tier": OTHER, "outcome": OTHER}.items()),
        frozenset({"tenant": OTHER, "class": "none", "tier": "none", "outcome": "answered"}.items()),
    }
    assert value(s, "voxroute_fallbacks_total", reason=OTHER, action="retry", provider_kind="runtime") == 20
    assert value(s, "voxroute_calls_total", tenant=OTHER, ended=OTHER) == 1


def test_call_outcomes_with_how_calls_ended():
    """deploy/grafana's cost per resolved call and containment read this series."""
    m = PromMetrics(["default", "acme"], CLASSES, process=False)
    ends = [
        ("CA1", "acme", "resolved", "completed"),
        ("CA2", "acme", "resolved", "completed"),
        ("CA3", "acme", "handoff", "handoff"),
        ("CA4", "default", "resolved", "caller_hung_up"),
        ("CA5", "default", "unknown", "error"),
        ("CA6", "default", "made-up", "completed"),
    ]
    for sid, tenant, outcome, ended in ends:
        m.call_started({"call_sid": sid, "tenant": tenant})
        m.call_ended({"call_sid": sid, "tenant": tenant, "outcome": outcome, "ended": ended})
    s = scrape(m.exposition()[0].decode())
    name = "voxroute_call_outcomes_total"
    assert value(s, name, tenant="acme", outcome="resolved", ended="completed") == 2
    assert value(s, name, tenant="acme", outcome="handoff", ended="handoff") == 1
    assert value(s, name, tenant="default", outcome="resolved", ended="caller_hung_up") == 1
    assert value(s, name, tenant="default", outcome="unknown", ended="error") == 1
    assert value(s, name, tenant="default", outcome=OTHER, ended="completed") == 1
    assert total(s, name) == total(s, "voxroute_calls_total") == len(ends)
    assert total(s, name, outcome="resolved") == 3


def test_free_text_actions_are_capped():
    action = FirstSeen(MAX_ACTIONS)
    assert action("next rung; path cooling down 30 s") == "next rung"
    names = {action(f"action {k}") for k in range(100)}
    assert len(names) == MAX_ACTIONS and OTHER in names and action("next rung") == "next rung"


def test_each_runtime_has_its_own_registry():
    a, b = PromMetrics(["default"], CLASSES, process=False), PromMetrics(["default"], CLASSES, process=False)
    a.turn_finished({"tenant": "default"}, turn(1, "faq", "fast", 300.0))
    assert total(scrape(a.exposition()[0].decode()), "voxroute_turns_total") == 1
    assert total(scrape(b.exposition()[0].decode()), "voxroute_turns_total") == 0


async def test_metrics_after_a_replayed_call_match_its_turns(monkeypatch, tmp_path):
    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path))  # the call log writes here, not in ./data
    monkeypatch.delenv("VOXROUTE_DATABASE_URL", raising=False)
    monkeypatch.delenv("VOXROUTE_API_KEY", raising=False)
    fixture = load("order_status")
    fixture.script = fixture.script.model_copy(update={"utterances": fixture.script.utterances[:1]})
    async with local_stack("reference", 0, [fixture]) as stack:
        raw = await replay_fixture(fixture, stack.server_url, speed=2.0, config=stack.config)
        async with httpx.AsyncClient(base_url=stack.server_url, timeout=10) as http:
            # The server ends its side of the call after the carrier hangs up (the end record, the
            # shared outcome): wait for it, bounded.
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                r = await http.get("/metrics")
                if value(scrape(r.text), "voxroute_active_calls") == 0:
                    break
                assert asyncio.get_running_loop().time() < deadline, "the call never ended on the server"
                await asyncio.sleep(0.05)
            om = await http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
            call = (
                await http.get(f"/calls/{raw['call_sid']}", headers=operator_headers(stack.config))
            ).json()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert om.headers["content-type"].startswith("application/openmetrics-text") and om.text.endswith(
        "# EOF\n"
    )
    s = scrape(r.text)
    turns = call["turns"]
    assert raw["ended"] == "completed" and len(turns) >= 1, raw.get("error")
    assert total(s, "voxroute_turns_total") == len(turns)
    for t in turns:
        labels = {"class": t["route"]["class"], "tier": t["route"]["tier"]}
        assert total(s, "voxroute_turns_total", tenant="default", **labels, outcome=t["outcome"]) >= 1
    timed = [t["first_audio_ms"] for t in turns if t["first_audio_ms"] is not None]
    assert total(s, "voxroute_first_audio_seconds_count") == len(timed)
    assert total(s, "voxroute_first_audio_seconds_sum") == pytest.approx(sum(timed) / 1000, abs=1e-6)
    cost = sum((t.get("usage") or {}).get("cost_usd", 0.0) for t in turns)
    assert cost > 0 and total(s, "voxroute_cost_usd_total") == pytest.approx(cost, rel=1e-6)
    misses = sum(1 for t in turns if t["first_audio_ms"] is not None and t["first_audio_ms"] > t["budget_ms"])
    assert total(s, "voxroute_budget_misses_total") == misses
    assert total(s, "voxroute_bridges_total") == sum(bool(t["bridge"]) for t in turns)
    assert value(s, "voxroute_calls_total", tenant="default", ended="completed") == 1
    assert (
        value(s, "voxroute_call_outcomes_total", tenant="default", outcome=call["outcome"], ended="completed")
        == 1
    )
    assert value(s, "voxroute_active_calls") == 0
    assert value(s, "process_cpu_seconds_total") > 0
