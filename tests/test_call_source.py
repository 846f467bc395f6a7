"""The call pages over the call log (agent/calllog/source.py): calls written by the real CallLog writer
are read back as the dicts the pages render, a fresh runtime app (no calls in memory, as after a
restart) serves them as JSON and HTML over a socket, memory wins over the database for the calls it
holds, and a database that cannot be read is the pages' 503.

Every database test runs against SQLite (a file in a temporary directory) and against PostgreSQL
when ``VOXROUTE_TEST_POSTGRES_URL`` is set (``.ci/postgres.sh`` prints it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.test_calllog import _postgres_database
from voxroute.agent.calllog.redact import redact, redact_json
from voxroute.agent.calllog.source import CombinedCallSource, DatabaseCallSource
from voxroute.agent.calllog.store import CallLog, make_engine
from voxroute.agent.config import load_config
from voxroute.agent.pages import MemoryCallSource, call_summary
from voxroute.agent.services import Services
from voxroute.agent.session import CallSummary
from voxroute.agent.timeline import TurnRecord
from voxroute.routing.route import Route
from voxroute.runtime import build_router, create_runtime_app
from voxroute.server import serve_app

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
CARD_TEXT = "my card is 4111 1111 1111 1111, call me on +91 98000 00001"


# ---------------------------------------------------------------- databases


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request, tmp_path) -> AsyncIterator[str]:
    """An empty database of each kind (no tables: the writer migrates it; PostgreSQL: this test's own)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'voxroute.db'}"
        return
    async with _postgres_database("voxroute_source") as url:
        yield url


@asynccontextmanager
async def database_source(url: str):
    engine = make_engine(url)
    try:
        yield DatabaseCallSource(engine)
    finally:
        await engine.dispose()


# ---------------------------------------------------------------- calls


def make_turn(
    index: int, first_audio: float = 650.0, *, bridge: bool = False, interrupted: bool = False
) -> dict:
    """A turn as the session records it: every timeline stage, a route, usage, maybe a fallback."""
    t = TurnRecord(index=index, transcript=CARD_TEXT if index == 1 else f"turn {index}", budget_ms=1000)
    t.route = Route(
        routing_class="billing_dispute" if index == 1 else "order_tracking",
        tier="reasoning",
        stakes="high",
        model="anthropic/claude-sonnet-4.5",
        paths=("reasoning",),
        escalated=index == 1,
        reason="rule: charged twice on card 4111 1111 1111 1111",
    )
    t0 = 4000.0 * index + 0.3
    for name, dt in (
        ("speech_end", 0),
        ("endpoint", 60.5),
        ("stt_final", 62),
        ("route", 63),
        ("llm_request", 64),
        ("llm_first_token", 400),
        ("first_chunk", 470),
        ("tts_request", 471),
        ("tts_first_audio", first_audio - 5),
        ("first_audio_out", first_audio),
        ("done", first_audio + 2500),
    ):
        t.mark(name, t0 + dt)
    if not interrupted:
        t.mark("first_audio_heard", t0 + first_audio + 300)
    if bridge:
        t.mark("bridge_out", t0 + 320)
        t.bridge, t.bridge_kind = True, "ack"
        t.add_fallback("openrouter", "http_500", "server error", "next rung", service="llm", model="m")
    t.reply = "Sorry about the extra charge. I will look into it right away."
    t.heard = "Sorry about the extra charge." if interrupted else t.reply
    t.interrupted = interrupted
    t.outcome = "interrupted" if interrupted else "answered"
    t.usage = {"model": "anthropic/claude-sonnet-4.5", "provider": "openrouter", "cost_usd": 0.0005 * index}
    return t.as_dict()


def make_call(sid: str, started: float, turns: list[dict], tenant: str = "default", **kw) -> dict:
    """A call dict as ``Services.call_json`` gives it to the observers."""
    return {
        "call_sid": sid,
        "stream_sid": "MZ" + sid,
        "tenant": tenant,
        "carrier": "twilio",
        "channel": "voice",
        "from_number": "+919800000001",
        "to_number": "+918000000000",
        "language": "en-IN",
        "started_at": started,
        "ended_at": None,
        "ended": "in_progress",
        "outcome": "unknown",
        "outcome_reason": None,
        "error": None,
        "mode": "live",
        "policy": "policy-7",
        "turns": turns,
    } | kw


async def write_calls(url: str, directory: Path, calls: list[dict], ended: bool = True) -> None:
    """Through the real writer, as the runtime's observers do: started, each turn, ended."""
    log = CallLog(make_engine(url), salt=b"salt", directory=directory)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(log.run())
        try:
            for call in calls:
                header = {k: v for k, v in call.items() if k not in ("turns", "handoff")}
                log.call_started(header)
                for turn in call["turns"]:
                    log.turn_finished(header, turn)
                if ended and call["ended"] != "in_progress":
                    log.call_ended(call)
            await log.flush()
        finally:
            await log.aclose()
    assert log.stats["rejected"] == 0 and log.stats["dropped"] == 0


NOW = time.time()


def sample_calls() -> list[dict]:
    done = {"ended": "completed", "outcome": "resolved"}
    return [
        make_call("CAold", NOW - 300, [make_turn(1)], ended_at=NOW - 270, **done),
        make_call(
            "CAslow",
            NOW - 100,
            [make_turn(1, bridge=True), make_turn(2, first_audio=1420.0, interrupted=True)],
            ended_at=NOW - 60,
            handoff={"trigger": "the caller asked for a person", "transferred": True},
            **done,
        ),
        make_call(
            "CAacme", NOW - 50, [make_turn(1, first_audio=700.0)], tenant="acme", ended_at=NOW - 20, **done
        ),
        make_call("CAlive", NOW - 10, [make_turn(1)]),  # not ended: still in progress
    ]


# ---------------------------------------------------------------- DatabaseCallSource


async def test_database_source_rebuilds_the_call_and_its_turns(db_url, tmp_path):
    calls = sample_calls()
    await write_calls(db_url, tmp_path, calls)
    async with database_source(db_url) as source:
        got = await source.get("CAslow")
        assert await source.get("CAnope") is None
    want = calls[1]
    assert got["call_sid"] == "CAslow" and got["source"] == "call_log"
    for key in ("stream_sid", "tenant", "carrier", "channel", "to_number", "language", "ended", "outcome"):
        assert got[key] == want[key], key
    assert got["mode"] == "live" and got["policy"] == "policy-7"
    assert got["started_at"] == pytest.approx(want["started_at"], abs=1e-3)
    assert got["ended_at"] == pytest.approx(want["ended_at"], abs=1e-3)
    assert got["from_number"] is None  # only its hash is stored
    assert got["handoff"] == want["handoff"]
    assert [t["index"] for t in got["turns"]] == [1, 2]
    for turn, original in zip(got["turns"], want["turns"], strict=True):
        assert turn["timeline"] == original["timeline"]  # every name, every value, from the *_ms columns
        assert list(turn["timeline"]) == list(original["timeline"])  # in docs/design.md's order
        assert turn["route"] == redact_json(original["route"])
        for key in (
            "kind",
            "language",
            "first_audio_ms",
            "budget_ms",
            "within_budget",
            "bridge",
            "bridge_kind",
            "handoff",
            "fallbacks",
            "interrupted",
            "outcome",
            "usage",
        ):
            assert turn[key] == original[key], key
        assert turn["reply"] == redact(original["reply"]) and turn["heard"] == redact(original["heard"])
        assert "llm" not in turn  # a live call's answers are not simulated
    first, second = got["turns"]
    assert first["transcript"] == "my card is [card], call me on [phone]"  # redacted, as stored
    assert first["route"]["class"] == "billing_dispute" and "[card]" in first["route"]["reason"]
    assert first["timeline"]["bridge_out"] == want["turns"][0]["timeline"]["bridge_out"]
    assert second["route"]["class"] == "order_tracking" and second["first_audio_ms"] == 1420.0
    assert "first_audio_heard" not in second["timeline"] and second["interrupted"] is True


async def test_database_source_lists_recent_calls_like_the_memory_source(db_url, tmp_path):
    calls = sample_calls()
    await write_calls(db_url, tmp_path, calls)
    async with database_source(db_url) as source:
        rows = await source.recent(100)
        two = await source.recent(2)
        acme = await source.recent(100, tenant="acme")
        index = await source.index()
    assert [r["call_sid"] for r in rows] == ["CAlive", "CAacme", "CAslow", "CAold"]  # newest first
    assert [r["call_sid"] for r in two] == ["CAlive", "CAacme"]
    assert [r["call_sid"] for r in acme] == ["CAacme"]
    by_sid = {r["call_sid"]: r for r in rows}
    for call in calls:  # the summary of the stored call is the summary of the original
        want, got = call_summary(call), by_sid[call["call_sid"]]
        for key in (
            "turn_count",
            "worst_first_audio_ms",
            "worst_budget_ms",
            "budget_misses",
            "ended",
            "tenant",
        ):
            assert got[key] == want[key], (call["call_sid"], key)
        assert got["cost_usd"] == pytest.approx(want["cost_usd"])
    assert by_sid["CAslow"]["budget_misses"] == 1 and by_sid["CAslow"]["worst_first_audio_ms"] == 1420.0
    assert by_sid["CAlive"]["ended"] == "in_progress" and by_sid["CAlive"]["turn_count"] == 1
    assert index == {"active": ["CAlive"], "finished": ["CAold", "CAslow", "CAacme"]}


async def test_a_database_without_tables_has_no_calls(db_url):
    """A fresh deployment: the writer creates the tables with the first call. Until then the pages
    show no calls (and a 404 for an id), not a 503."""
    async with database_source(db_url) as source:
        assert await source.recent(10) == []
        assert await source.get("CAx") is None
        assert await source.index() == {"active": [], "finished": []}


# ---------------------------------------------------------------- the runtime's pages, after a restart


def fresh_services() -> Services:
    config = load_config()
    return Services(config, None, None, {}, build_router(config), mode="emulated")  # type: ignore[arg-type]


def held(call: dict) -> CallSummary:
    """A call as this process holds it once finished (unredacted)."""
    return CallSummary(
        call_sid=call["call_sid"],
        stream_sid=call["stream_sid"],
        tenant=call["tenant"],
        language=call["language"],
        started_at=call["started_at"],
        ended=call["ended"],
        from_number=call["from_number"],
        to_number=call["to_number"],
        ended_at=call["ended_at"],
        turns=call["turns"],
    )


@asynccontextmanager
async def runtime_pages(url: str, services: Services, tmp_path: Path):
    """The runtime app with a call log on ``url`` among the observers, as build_services wires it."""
    call_log = CallLog(make_engine(url), salt=b"salt", directory=tmp_path / "second-run")
    services.observers.append(call_log)
    try:
        async with serve_app(create_runtime_app(services, dev=True)) as base:
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                yield http
    finally:
        await call_log.engine.dispose()


async def test_after_a_restart_the_pages_show_past_calls_from_the_database(db_url, tmp_path, monkeypatch):
    monkeypatch.delenv("VOXROUTE_API_KEY", raising=False)
    calls = sample_calls()
    await write_calls(db_url, tmp_path, calls)
    services = fresh_services()  # a new process: nothing in memory
    assert not services.calls and not services.finished
    async with runtime_pages(db_url, services, tmp_path) as http:
        page = await http.get("/calls/CAslow", headers=BROWSER)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert html.count('<svg class="waterfall"') == 2 and html.count('<section class="turn"') == 2
        assert 'data-stage="first_audio_heard"' in html and 'data-stage="bridge_out"' in html
        assert "my card is [card], call me on [phone]" in html and "4111 1111 1111 1111" not in html
        assert '<dd class="bridge">ack at 320 ms after speech end</dd>' in html
        assert '<span class="miss">1420 ms</span>' in html and "Fallbacks (1)" in html
        assert "the caller asked for a person" in html  # the handoff record

        listing = await http.get("/calls", headers=BROWSER)
        assert listing.status_code == 200
        for sid in ("CAold", "CAslow", "CAacme", "CAlive"):
            assert f'href="/calls/{sid}"' in listing.text
        assert listing.text.index("CAlive") < listing.text.index("CAold")  # newest first

        as_json = (await http.get("/calls/CAold")).json()
        assert as_json["turns"][0]["timeline"] == calls[0]["turns"][0]["timeline"]
        assert as_json["turns"][0]["route"]["class"] == "billing_dispute"
        index = (await http.get("/calls")).json()
        assert index == {"active": [], "finished": ["CAlive", "CAold", "CAslow", "CAacme"]}
        assert (await http.get("/calls/CAnope", headers=BROWSER)).status_code == 404


async def test_an_unreadable_database_is_a_503_and_held_calls_still_show(tmp_path, monkeypatch):
    monkeypatch.delenv("VOXROUTE_API_KEY", raising=False)
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database file, it only looks like one " * 100)
    services = fresh_services()
    services.finished["CAheld"] = held(
        make_call("CAheld", NOW, [make_turn(1)], ended="completed", ended_at=NOW)
    )
    async with runtime_pages(f"sqlite+aiosqlite:///{broken}", services, tmp_path) as http:
        assert (await http.get("/calls", headers=BROWSER)).status_code == 503
        assert (await http.get("/calls")).status_code == 503
        missing = await http.get("/calls/CAnope", headers=BROWSER)
        assert missing.status_code == 503 and "The call log is unavailable" in missing.text
        ok = await http.get("/calls/CAheld", headers=BROWSER)  # memory answers without the database
        assert ok.status_code == 200 and ok.text.count('<svg class="waterfall"') == 1
        assert (await http.get("/debug/stats")).status_code == 200  # the rest of the app is unharmed


# ---------------------------------------------------------------- CombinedCallSource


async def test_combined_source_prefers_memory_and_merges_the_lists(db_url, tmp_path):
    calls = sample_calls()
    await write_calls(db_url, tmp_path, calls)
    services = fresh_services()
    slow_again = dict(calls[1], outcome="handoff")  # this process holds CAslow, with a newer verdict
    newest = make_call("CAnew", NOW + 5, [make_turn(1)], ended="completed", ended_at=NOW + 30)
    services.finished["CAslow"] = held(slow_again)
    services.finished["CAslow"].outcome = "handoff"
    services.finished["CAnew"] = held(newest)
    async with database_source(db_url) as database:
        source = CombinedCallSource(MemoryCallSource(services), database)
        slow = await source.get("CAslow")
        old = await source.get("CAold")
        assert await source.get("CAnope") is None
        rows = await source.recent(100)
        three = await source.recent(3)
        acme = await source.recent(100, tenant="acme")
        index = await source.index()
    assert "source" not in slow and slow["outcome"] == "handoff"  # the memory record ...
    assert slow["turns"][0]["transcript"] == "my card is [card], call me on [phone]"  # ... redacted as stored
    assert (
        old["source"] == "call_log"
        and old["turns"][0]["transcript"] == "my card is [card], call me on [phone]"
    )
    assert [r["call_sid"] for r in rows] == ["CAnew", "CAlive", "CAacme", "CAslow", "CAold"]
    assert [r["call_sid"] for r in three] == ["CAnew", "CAlive", "CAacme"]
    assert [r["call_sid"] for r in acme] == ["CAacme"]
    slow_row = next(r for r in rows if r["call_sid"] == "CAslow")
    assert slow_row["outcome"] == "handoff" and "source" not in slow_row  # one row, memory's
    assert index == {"active": [], "finished": ["CAlive", "CAold", "CAacme", "CAslow", "CAnew"]}
