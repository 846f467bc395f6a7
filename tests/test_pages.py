"""The call pages (agent/pages.py): the waterfall SVG as pure function, the list and call pages as
HTML, and the routes over a real socket: JSON for API clients as before, HTML for browsers, the
operator key as header, HTTP Basic, or the cookie that ``?key=`` sets; unknown ids are a 404 page."""

from __future__ import annotations

import base64
import time
import xml.etree.ElementTree as ET

import httpx
import pytest
from fastapi import FastAPI

from voxroute.agent.config import load_config
from voxroute.agent.pages import (
    COOKIE_NAME,
    WATERFALL_LABELS,
    WATERFALL_STAGES,
    MemoryCallSource,
    OperatorAuth,
    add_call_routes,
    call_page,
    call_summary,
    calls_page,
    prefers_html,
    waterfall_svg,
)
from voxroute.agent.services import Services
from voxroute.agent.session import CallSummary
from voxroute.agent.timeline import TIMELINE_NAMES, TurnRecord
from voxroute.routing.route import Route
from voxroute.runtime import build_router
from voxroute.server import serve_app

KEY = "operator-key-for-page-tests"
SVG = "{http://www.w3.org/2000/svg}"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
LABEL_W, PLOT_W = 130, 780 - 130 - 110  # agent/pages.py geometry


def make_turn(
    index: int,
    first_audio: float = 650.0,
    budget: int = 1000,
    *,
    bridge: bool = False,
    interrupted: bool = False,
    transcript: str = "I was charged twice for my order",
    fallbacks: int = 0,
) -> dict:
    t = TurnRecord(index=index, transcript=transcript, budget_ms=budget)
    t.route = Route(
        routing_class="billing_dispute",
        tier="reasoning",
        stakes="high",
        model="anthropic/claude-sonnet-4.5",
        paths=("reasoning",),
        escalated=True,
        reason="rule: charged twice; escalate",
    )
    t0 = 5000.0 * index
    for name, dt in (
        ("speech_end", 0),
        ("endpoint", 60),
        ("stt_final", 62),
        ("route", 63),
        ("llm_request", 64),
        ("llm_first_token", 400),
        ("first_chunk_text", 469),
        ("first_chunk", 470),
        ("tts_request", 471),
        ("tts_first_audio", first_audio - 5),
        ("first_audio_out", first_audio),
        ("done", first_audio + 3000),
    ):
        t.mark(name, t0 + dt)
    if not interrupted:
        t.mark("first_audio_heard", t0 + first_audio + 300)
    if bridge:
        t.mark("bridge_out", t0 + first_audio)
        t.bridge, t.bridge_kind = True, "ack"
    t.reply = "Sorry about the extra charge. I will look into it right away."
    t.heard = "Sorry about the extra charge." if interrupted else t.reply
    t.interrupted = interrupted
    t.outcome = "interrupted" if interrupted else "answered"
    t.usage = {"model": "anthropic/claude-sonnet-4.5", "provider": "openrouter", "cost_usd": 0.0005}
    for k in range(fallbacks):
        t.add_fallback("openrouter", "http_500", f"server error {k}", "next rung", service="llm", model="m")
    return t.as_dict()


def summary(sid: str, turns: list[dict], started: float, tenant: str = "default") -> CallSummary:
    return CallSummary(
        call_sid=sid,
        stream_sid="MZ" + sid[2:],
        tenant=tenant,
        language="en-IN",
        started_at=started,
        ended="completed",
        from_number="+919800000001",
        to_number="+918000000000",
        ended_at=started + 30,
        turns=turns,
    )


@pytest.fixture(scope="module")
def services() -> Services:
    config = load_config()
    s = Services(config, None, None, {}, build_router(config), mode="emulated")  # type: ignore[arg-type]
    now = time.time()
    s.finished["CAold"] = summary("CAold", [make_turn(1)], now - 100)
    s.finished["CAslow"] = summary(
        "CAslow",
        [
            make_turn(1, bridge=True, fallbacks=2),
            make_turn(2, first_audio=1420.0, interrupted=True, transcript="<script>alert(1)</script> & more"),
        ],
        now - 10,
    )
    s.handoffs["CAslow"] = {
        "trigger": "the caller asked for a person",
        "urgency": "high",
        "transferred": True,
    }
    return s


def svg_tree(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # the SVG is well-formed XML: a browser and a parser read the same thing


# ---------------------------------------------------------------------------- pure rendering


def test_waterfall_draws_each_stage_to_scale():
    turn = make_turn(1, first_audio=650.0, bridge=True)
    root = svg_tree(waterfall_svg(turn))
    assert root.get("class") == "waterfall" and root.get("data-turn") == "1"
    stages = [g.get("data-stage") for g in root.iter(f"{SVG}g")]
    # Every stage of this turn has a row (it called no tools: tests/test_tools.py draws that row).
    assert stages == [name for name, _, _ in WATERFALL_STAGES if name != "tool_result"]
    assert set(stages) <= set(TIMELINE_NAMES)
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "label"]
    assert labels == [WATERFALL_LABELS[s] for s in stages]
    by_stage = {g.get("data-stage"): g for g in root.iter(f"{SVG}g")}
    # Point events are markers, spans are bars.
    assert by_stage["speech_end"].find(f"{SVG}path").get("class") == "marker"
    assert by_stage["bridge_out"].find(f"{SVG}path").get("class") == "marker"
    bar = by_stage["first_audio_out"].find(f"{SVG}rect")
    llm = by_stage["llm_first_token"].find(f"{SVG}rect")
    budget = next(line for line in root.iter(f"{SVG}line") if line.get("class") == "budget")
    # Drawn to scale: first audio (650 ms) against the budget line (1000 ms); LLM wait 336 ms.
    ms_per_px = 1000 / (float(budget.get("x1")) - LABEL_W)
    assert float(bar.get("x")) == LABEL_W
    assert float(bar.get("width")) * ms_per_px == pytest.approx(650, abs=2)
    assert float(llm.get("width")) * ms_per_px == pytest.approx(400 - 64, abs=2)
    assert "ok" in by_stage["first_audio_out"].get("class")
    values = {g.get("data-stage"): g.findall(f"{SVG}text")[-1].text for g in root.iter(f"{SVG}g")}
    assert values["first_audio_out"] == "650 ms" and values["bridge_out"] == "@ 650 ms"


def test_waterfall_marks_a_missed_budget_and_skips_stages_that_did_not_happen():
    turn = make_turn(2, first_audio=1420.0, interrupted=True)
    root = svg_tree(waterfall_svg(turn))
    stages = {g.get("data-stage"): g for g in root.iter(f"{SVG}g")}
    assert "first_audio_heard" not in stages and "bridge_out" not in stages
    assert "miss" in stages["first_audio_out"].get("class")
    width = float(stages["first_audio_out"].find(f"{SVG}rect").get("width"))
    assert LABEL_W + width <= LABEL_W + PLOT_W  # the late bar still fits the plot (the axis grew)
    assert "1420" in root.get("aria-label")


def test_waterfall_without_a_timeline_says_so():
    svg = waterfall_svg({"index": 3, "timeline": {}, "budget_ms": 1000})
    root = svg_tree(svg)
    assert "empty" in root.get("class") and "no timeline" in svg


def test_accept_header_decides_html_or_json():
    assert prefers_html(BROWSER_ACCEPT)
    assert prefers_html("text/html")
    assert not prefers_html("*/*")  # httpx, curl: the JSON API as before
    assert not prefers_html(None)
    assert not prefers_html("application/json")
    assert not prefers_html("application/json, text/html;q=0.5")
    assert prefers_html("application/json;q=0.5, text/html")
    assert not prefers_html("text/html;q=bogus, */*")


def test_call_summary_sums_cost_and_finds_the_worst_turn(services):
    row = call_summary(services.call_json("CAslow"))
    assert row["turn_count"] == 2 and row["cost_usd"] == pytest.approx(0.001)
    assert row["worst_first_audio_ms"] == 1420.0 and row["worst_budget_ms"] == 1000
    assert row["budget_misses"] == 1 and "turns" not in row


def test_pages_escape_what_callers_said(services):
    html = call_page(services.call_json("CAslow"))
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html


def test_list_page_shows_outcome_cost_and_worst_latency(services):
    rows = [call_summary(services.call_json(s)) for s in ("CAslow", "CAold")]
    html = calls_page(rows)
    assert html.index('href="/calls/CAslow"') < html.index('href="/calls/CAold"')
    assert '<span class="miss">1420 ms</span>' in html and '<span class="ok">650 ms</span>' in html
    assert "$0.0010" in html and "simulated LLM" in html


# ---------------------------------------------------------------------------- routes over a socket


@pytest.fixture
async def server(services):
    app = FastAPI()
    add_call_routes(app, MemoryCallSource(services, simulated=lambda: {"openrouter"}), OperatorAuth(KEY))
    async with serve_app(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield http


async def test_json_clients_get_json_with_the_key_and_401_without(server):
    assert (await server.get("/calls")).status_code == 401
    denied = await server.get("/calls/CAslow")
    assert denied.status_code == 401 and denied.json() == {"detail": "a valid API key is required"}
    index = await server.get("/calls", headers={"X-API-Key": KEY})
    assert index.json() == {"active": [], "finished": ["CAold", "CAslow"]}
    call = (await server.get("/calls/CAslow", headers={"Authorization": f"Bearer {KEY}"})).json()
    assert [t["index"] for t in call["turns"]] == [1, 2]
    assert all(t["llm"] == "simulated LLM" for t in call["turns"])
    missing = await server.get("/calls/CAnope", headers={"X-API-Key": KEY})
    assert missing.status_code == 404 and missing.json() == {"detail": "no call CAnope"}
    wrong = await server.get("/calls/CAslow", headers={"X-API-Key": KEY + "x"})
    assert wrong.status_code == 401


async def test_a_browser_without_the_key_is_told_how_to_sign_in(server):
    r = await server.get("/calls", headers={"Accept": BROWSER_ACCEPT})
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert r.headers["www-authenticate"].startswith("Basic")
    assert "/calls?key=" in r.text and "HTTP Basic" in r.text and "X-API-Key" in r.text
    bad = await server.get("/calls?key=nope", headers={"Accept": BROWSER_ACCEPT})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers


async def test_basic_auth_serves_the_pages(server):
    basic = "Basic " + base64.b64encode(f"ops:{KEY}".encode()).decode()
    r = await server.get("/calls", headers={"Accept": BROWSER_ACCEPT, "Authorization": basic})
    assert r.status_code == 200 and "Recent calls" in r.text
    assert r.headers["cache-control"] == "no-store"
    wrong = "Basic " + base64.b64encode(b"ops:guess").decode()
    assert (
        await server.get("/calls", headers={"Accept": BROWSER_ACCEPT, "Authorization": wrong})
    ).status_code == 401
    junk = await server.get("/calls", headers={"Accept": BROWSER_ACCEPT, "Authorization": "Basic %%%"})
    assert junk.status_code == 401


async def test_key_in_the_url_sets_an_http_only_cookie_and_leaves_the_address(server):
    r = await server.get(f"/calls?tenant=default&key={KEY}", headers={"Accept": BROWSER_ACCEPT})
    assert r.status_code == 303 and r.headers["location"] == "/calls?tenant=default"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=") and KEY not in cookie
    assert "HttpOnly" in cookie and "Path=/calls" in cookie and "SameSite=strict" in cookie
    page = await server.get("/calls?tenant=default", headers={"Accept": BROWSER_ACCEPT})  # the client kept it
    assert page.status_code == 200 and 'href="/calls/CAslow"' in page.text
    call = await server.get("/calls/CAslow", headers={"Accept": BROWSER_ACCEPT})
    assert call.status_code == 200 and call.text.count('<svg class="waterfall"') == 2
    server.cookies.set(COOKIE_NAME, "forged")
    assert (await server.get("/calls", headers={"Accept": BROWSER_ACCEPT})).status_code == 401


async def test_call_page_has_transcript_waterfalls_route_fallbacks_bridge_and_handoff(server):
    r = await server.get("/calls/CAslow", headers={"Accept": BROWSER_ACCEPT, "X-API-Key": KEY})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "Simulated LLM" in html  # mode "emulated" is said on the page
    assert html.count('<svg class="waterfall"') == 2 and html.count('<section class="turn"') == 2
    assert "rule: charged twice; escalate" in html  # the route's reason
    assert html.count("server error 0") == 1 and "Fallbacks (2)" in html and "next rung" in html
    assert '<dd class="bridge">ack at 650 ms after speech end</dd>' in html
    assert "the caller asked for a person" in html and "<h2>Handoff</h2>" in html
    # The interrupted turn: what was heard, and the rest struck through.
    assert '<span class="unheard" title="not heard"> I will look into it right away.</span>' in html
    assert '<span class="badge bad">interrupted</span>' in html
    assert "••••••••0001" in html and "+919800000001" not in html


async def test_list_filters_by_tenant_and_bounds_the_limit(server):
    h = {"Accept": BROWSER_ACCEPT, "X-API-Key": KEY}
    one = (await server.get("/calls?limit=1", headers=h)).text
    assert 'href="/calls/CAslow"' in one and 'href="/calls/CAold"' not in one
    assert (await server.get("/calls?limit=abc", headers=h)).status_code == 200
    other = (await server.get("/calls?tenant=acme", headers=h)).text
    assert "No calls yet" in other and "acme" in other


@pytest.mark.parametrize("sid", ["CAnope", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "x" * 3000, "%E2%9C%93"])
async def test_unknown_or_bad_ids_are_a_404_page(server, sid):
    r = await server.get(f"/calls/{sid}", headers={"Accept": BROWSER_ACCEPT, "X-API-Key": KEY})
    assert r.status_code == 404 and "No such call" in r.text and "<script>alert" not in r.text


async def test_a_failing_call_source_is_a_503_not_a_500():
    class Broken:
        async def index(self):
            raise OSError("database is down")

        async def recent(self, limit=100, tenant=None):
            raise OSError("database is down")

        async def get(self, call_sid):
            raise OSError("database is down")

    app = FastAPI()
    add_call_routes(app, Broken(), OperatorAuth(None))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/calls/CA1", headers={"Accept": BROWSER_ACCEPT})).status_code == 503
        assert (await http.get("/calls")).status_code == 503


async def test_without_a_configured_key_the_pages_are_open_and_say_so(services):
    app = FastAPI()
    add_call_routes(app, MemoryCallSource(services), OperatorAuth(None))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.get("/calls", headers={"Accept": BROWSER_ACCEPT})
        assert r.status_code == 200 and "No operator API key is configured" in r.text
        assert (await http.get("/calls/CAold")).json()["call_sid"] == "CAold"
