"""The operator's call pages: ``GET /calls`` and ``GET /calls/{call_sid}``.

One URL, two faces: API clients (replay, benchmarks, ``curl``) get the JSON they always got; a
browser, whose ``Accept`` header prefers ``text/html``, gets a server-rendered page (no build step,
no script): the recent calls, and per call its transcript and a latency waterfall per turn drawn as
inline SVG.

The rendering is pure functions from the call dicts of ``Services.call_json`` to HTML strings; the
routes at the bottom are a thin layer over them and over a ``CallSource`` (calls held in memory
now; the database call log can stand in for it with the same two methods).

Both faces are protected by the operator API key, as the handoff API is. A browser cannot set an
``X-API-Key`` header, so the pages also take HTTP Basic (any user name, the key as password) and
``?key=KEY`` once, which sets an HttpOnly cookie for ``/calls`` and redirects to the same URL
without the key (so it stays out of the address bar and history).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape
from typing import Any, Protocol

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("voxroute.pages")

COOKIE_NAME = "voxroute_operator"
COOKIE_MAX_AGE_S = 12 * 3600
LIST_LIMIT = 100
LIST_LIMIT_MAX = 1000


def e(value: Any) -> str:
    """Anything shown on a page, escaped (text and attribute values alike)."""
    return escape("" if value is None else str(value), quote=True)


# ---------------------------------------------------------------------------- the waterfall

# One row per timeline stage: (timeline name of the row's end, label, timeline name it starts from).
# A row whose start is None (or missing) is drawn as a marker at its end time.
WATERFALL_STAGES: tuple[tuple[str, str, str | None], ...] = (
    ("speech_end", "speech end", None),
    ("endpoint", "endpoint", "speech_end"),
    ("stt_final", "STT final", "speech_end"),
    ("route", "route", "endpoint"),
    ("llm_first_token", "LLM first token", "llm_request"),
    ("tool_result", "tools", "tool_request"),  # the turn's tool calls, first request to last result
    ("first_chunk_text", "model to first chunk", "llm_first_token"),  # the model still streaming
    ("first_chunk", "first chunk", "first_chunk_text"),
    ("tts_first_audio", "TTS first audio", "tts_request"),
    ("first_audio_out", "first audio out", "speech_end"),
    ("first_audio_heard", "heard", "first_audio_out"),
    ("bridge_out", "bridge", None),
)
WATERFALL_LABELS = {name: label for name, label, _ in WATERFALL_STAGES}

_W, _LABEL_W, _VALUE_W = 780, 130, 110  # svg width, label column, value column (px)
_ROW_H, _TOP, _BOTTOM = 20, 8, 30
_PLOT_W = _W - _LABEL_W - _VALUE_W


def _tick_step(span_ms: float) -> int:
    for step in (50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 30000):
        if span_ms / step <= 8:
            return step
    return 60000


def waterfall_svg(turn: dict[str, Any]) -> str:
    """A turn's timeline as an inline SVG: one row per stage that happened, times from the end of
    the caller's speech, a dashed line at the turn's budget. Bars are ``rect.bar``, point events
    ``path.marker``; each row is a ``g.stage`` with ``data-stage`` set to its timeline name."""
    timeline: dict[str, float] = {
        k: float(v) for k, v in (turn.get("timeline") or {}).items() if isinstance(v, int | float)
    }
    index = e(turn.get("index"))
    budget = float(turn.get("budget_ms") or 0)
    rows = [stage for stage in WATERFALL_STAGES if stage[0] in timeline]
    if not rows:
        return (
            f'<svg class="waterfall empty" data-turn="{index}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{_W}" height="24" role="img" aria-label="turn {index}: no timeline">'
            f'<text x="4" y="16">no timeline recorded</text></svg>'
        )
    t0 = timeline.get("speech_end", min(timeline.values()))
    shown = [t - t0 for name, t in timeline.items() if name != "done"]
    span = max([budget, *shown, 1.0]) * 1.08
    step = _tick_step(span)
    span = math.ceil(span / step) * step

    def x(t: float) -> float:
        return round(_LABEL_W + max(0.0, min(span, t - t0)) / span * _PLOT_W, 1)

    height = _TOP + len(rows) * _ROW_H + _BOTTOM
    plot_bottom = _TOP + len(rows) * _ROW_H
    first_audio = turn.get("first_audio_ms")
    missed = first_audio is not None and budget and first_audio > budget
    label = f"turn {index}: first audio {first_audio} ms, budget {budget:.0f} ms"
    out = [
        f'<svg class="waterfall" data-turn="{index}" xmlns="http://www.w3.org/2000/svg" width="{_W}" '
        f'height="{height}" viewBox="0 0 {_W} {height}" role="img" aria-label="{e(label)}">',
        f"<title>{e(label)}</title>",
    ]
    for k in range(0, int(span) + 1, step):  # the grid and the time axis
        gx = x(t0 + k)
        out.append(
            f'<line class="grid" x1="{gx}" y1="{_TOP}" x2="{gx}" y2="{plot_bottom}"/>'
            f'<text class="tick" x="{gx}" y="{plot_bottom + 14}" text-anchor="middle">{k}</text>'
        )
    out.append(
        f'<text class="tick" x="{_LABEL_W - 6}" y="{plot_bottom + 14}" text-anchor="end">ms after speech end</text>'
    )
    for row, (name, stage_label, start_name) in enumerate(rows):
        y = _TOP + row * _ROW_H
        end = timeline[name]
        start = timeline.get(start_name) if start_name else None
        css = "stage"
        if name == "first_audio_out":
            css += " miss" if missed else " ok"
        out.append(f'<g class="{css}" data-stage="{name}">')
        out.append(
            f'<text class="label" x="{_LABEL_W - 6}" y="{y + 14}" text-anchor="end">{e(stage_label)}</text>'
        )
        if start is not None:
            lo, hi = min(start, end), max(start, end)
            width = max(2.0, x(hi) - x(lo))
            took = f"{hi - lo:.0f} ms"
            tip = f"{stage_label}: {took} after {start_name}, {end - t0:.0f} ms after speech end"
            out.append(
                f'<rect class="bar" x="{x(lo)}" y="{y + 4}" width="{width:.1f}" height="{_ROW_H - 8}">'
                f"<title>{e(tip)}</title></rect>"
            )
        else:
            took = f"@ {end - t0:.0f} ms"
            mx, my = x(end), y + _ROW_H / 2
            out.append(
                f'<path class="marker" d="M{mx} {my - 6} L{mx + 6} {my} L{mx} {my + 6} L{mx - 6} {my} Z">'
                f"<title>{e(stage_label)} at {end - t0:.0f} ms after speech end</title></path>"
            )
        out.append(f'<text class="value" x="{_W - _VALUE_W + 4}" y="{y + 14}">{e(took)}</text></g>')
    if budget:
        bx = x(t0 + budget)
        out.append(
            f'<line class="budget" x1="{bx}" y1="{_TOP - 4}" x2="{bx}" y2="{plot_bottom}"/>'
            f'<text class="budget-label" x="{bx + 3}" y="{plot_bottom + 26}">budget {budget:.0f} ms</text>'
        )
    if "done" in timeline:
        out.append(
            f'<text class="tick" x="{_W - _VALUE_W + 4}" y="{plot_bottom + 26}">done at {timeline["done"] - t0:.0f} ms</text>'
        )
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------- summaries


def call_summary(call: dict[str, Any]) -> dict[str, Any]:
    """One row of the call list: the call's header plus its cost and worst first audio against the
    budget. A database-backed source may compute the same keys in SQL."""
    turns = call.get("turns") or []
    cost = sum(float((t.get("usage") or {}).get("cost_usd") or 0.0) for t in turns)
    timed = [t for t in turns if t.get("first_audio_ms") is not None]
    worst = max(timed, key=lambda t: t["first_audio_ms"] - (t.get("budget_ms") or 0), default=None)
    header = {k: v for k, v in call.items() if k not in ("turns", "history", "merged_turns", "faults")}
    return {
        **header,
        "turn_count": len(turns),
        "cost_usd": round(cost, 8),
        "worst_first_audio_ms": worst["first_audio_ms"] if worst else None,
        "worst_budget_ms": worst.get("budget_ms") if worst else None,
        "budget_misses": sum(1 for t in timed if t["first_audio_ms"] > (t.get("budget_ms") or math.inf)),
    }


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _usd(value: Any) -> str:
    return f"${value:.4f}" if isinstance(value, int | float) else "—"


def _masked(number: Any) -> str:
    """Caller numbers on a page show their last four digits only."""
    s = str(number or "")
    return s if len(s) <= 4 else "•" * (len(s) - 4) + s[-4:]


def mode_note(mode: Any) -> str:
    if mode == "emulated":
        return "Simulated LLM: providers are the local emulators; replies and latencies come from their profiles."
    if mode == "local":
        return "Simulated LLM: scripted replies by routing class, local speech engines."
    return ""


# ---------------------------------------------------------------------------- pages

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1000px;color:#1d232a;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}h3{font-size:1em;margin:0 0 .3em}
table{border-collapse:collapse;width:100%}th,td{padding:.3em .5em;border-bottom:1px solid #dde;text-align:left}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.miss,.bad{color:#b3261e}.ok{color:#1e7b34}.note{background:#fff7d6;border:1px solid #e6d27a;padding:.5em .8em}
.muted{color:#6b7480}.badge{display:inline-block;border-radius:3px;padding:0 .4em;font-size:.85em;background:#e8ebf0}
.badge.bad{background:#fbe3e1}.turn{border:1px solid #dde;border-radius:6px;padding:.8em;margin:1em 0}
.transcript p{margin:.25em 0}.unheard{color:#8a929c;text-decoration:line-through}
svg.waterfall{display:block;margin:.5em 0;font-size:11px;background:#fbfcfd}
svg .label,svg .value{fill:#1d232a}svg .tick{fill:#6b7480}svg .grid{stroke:#e4e7ec}
svg .bar{fill:#4a78c2}svg .marker{fill:#7a52b3}svg .ok .bar{fill:#2e9e4f}svg .miss .bar{fill:#c8372d}
svg .budget{stroke:#c8372d;stroke-dasharray:4 3}svg .budget-label{fill:#c8372d}
pre{background:#f3f5f8;padding:.5em;overflow:auto;font-size:12px}dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}
dt{font-weight:600}dd{margin:0}
"""


def page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
        f"<body>{body}</body></html>"
    )


def _first_audio_cell(fa: Any, budget: Any) -> str:
    if fa is None:
        return '<span class="muted">—</span>'
    css = "miss" if budget and fa > budget else "ok"
    return f'<span class="{css}">{fa:.0f} ms</span> <span class="muted">/ {e(budget)} ms</span>'


def calls_page(rows: list[dict[str, Any]], tenant: str | None = None, open_api: bool = False) -> str:
    """The list of recent calls (rows from ``call_summary``), newest first."""
    body = ["<h1>Recent calls</h1>"]
    if tenant:
        body.append(f'<p>Tenant <b>{e(tenant)}</b> · <a href="/calls">all tenants</a></p>')
    if open_api:
        body.append('<p class="note">No operator API key is configured: these pages are open.</p>')
    if not rows:
        body.append('<p class="muted">No calls yet.</p>')
        return page("voxroute calls", "".join(body))
    body.append(
        '<table class="calls"><thead><tr><th>call</th><th>tenant</th><th>started</th><th>ended</th>'
        "<th>outcome</th><th>turns</th><th>cost</th><th>worst first audio / budget</th></tr></thead><tbody>"
    )
    for r in rows:
        sid = str(r.get("call_sid") or "")
        sim = ' <span class="badge">simulated LLM</span>' if mode_note(r.get("mode")) else ""
        ended_css = "bad" if r.get("ended") == "error" else ""
        body.append(
            f'<tr class="call" data-call="{e(sid)}"><td><a href="/calls/{e(sid)}">{e(sid)}</a>{sim}</td>'
            f'<td><a href="/calls?tenant={e(r.get("tenant"))}">{e(r.get("tenant"))}</a></td>'
            f'<td>{_when(r.get("started_at"))}</td><td class="{ended_css}">{e(r.get("ended"))}</td>'
            f'<td>{e(r.get("outcome"))}</td><td class="num">{e(r.get("turn_count"))}</td>'
            f'<td class="num">{_usd(r.get("cost_usd"))}</td>'
            f'<td class="num">{_first_audio_cell(r.get("worst_first_audio_ms"), r.get("worst_budget_ms"))}</td></tr>'
        )
    body.append("</tbody></table>")
    return page("voxroute calls", "".join(body))


def _agent_line(turn: dict[str, Any]) -> str:
    reply, heard = str(turn.get("reply") or ""), str(turn.get("heard") or "")
    if not reply:
        return '<span class="muted">(no reply)</span>'
    if heard and reply.startswith(heard):
        rest = reply[len(heard) :]
        text = e(heard) + (
            f' <span class="unheard" title="not heard">{e(rest)}</span>' if rest.strip() else ""
        )
    elif heard:
        text = f'{e(heard)} <span class="unheard" title="said, not heard">{e(reply)}</span>'
    else:
        text = f'<span class="unheard" title="not heard">{e(reply)}</span>'
    if turn.get("interrupted"):
        text += ' <span class="badge bad">interrupted</span>'
    elif heard:
        text += ' <span class="badge">heard</span>'
    return text


def transcript_html(turns: list[dict[str, Any]]) -> str:
    lines = ['<div class="transcript">']
    for t in turns:
        said = f"DTMF {t.get('transcript')}" if t.get("kind") == "dtmf" else t.get("transcript")
        lines.append(
            f'<p class="caller"><b>Caller</b> <span class="muted">#{e(t.get("index"))}</span>: {e(said)}</p>'
            f'<p class="agent"><b>Agent</b>: {_agent_line(t)}</p>'
        )
    lines.append("</div>")
    return "".join(lines)


def _fallbacks_html(fallbacks: list[dict[str, Any]]) -> str:
    if not fallbacks:
        return ""
    rows = "".join(
        f"<tr><td>{e(f.get('service') or 'runtime')}</td><td>{e(f.get('provider'))}</td>"
        f"<td>{e(f.get('model'))}</td><td>{e(f.get('kind'))}</td><td>{e(f.get('action'))}</td>"
        f"<td>{e(f.get('error'))}</td></tr>"
        for f in fallbacks
    )
    return (
        '<table class="fallbacks"><thead><tr><th>service</th><th>provider</th><th>model</th><th>what</th>'
        f"<th>action</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def turn_html(turn: dict[str, Any]) -> str:
    route = turn.get("route") or {}
    usage = turn.get("usage") or {}
    fa, budget = turn.get("first_audio_ms"), turn.get("budget_ms")
    head = [f"Turn {e(turn.get('index'))}"]
    if route:
        head.append(f"{e(route.get('class'))} · {e(route.get('tier'))}")
    head.append(_first_audio_cell(fa, budget))
    parts = [
        f'<section class="turn" id="turn-{e(turn.get("index"))}" data-turn="{e(turn.get("index"))}">',
        f"<h3>{' · '.join(head)}</h3>",
        waterfall_svg(turn),
        "<dl>",
    ]
    if route:
        esc = " (escalated)" if route.get("escalated") else ""
        parts.append(
            f"<dt>route</dt><dd>{e(route.get('class'))}, stakes {e(route.get('stakes'))}, "
            f"{e(route.get('tier'))} tier{esc}: <code>{e(route.get('model'))}</code></dd>"
            f'<dt>reason</dt><dd class="reason">{e(route.get("reason"))}</dd>'
        )
    if usage.get("model") or usage.get("cost_usd") is not None:
        who = " (simulated LLM)" if turn.get("llm") == "simulated LLM" else ""
        parts.append(
            f"<dt>answered by</dt><dd><code>{e(usage.get('model'))}</code> on {e(usage.get('provider'))}{who}, "
            f"{e(usage.get('prompt_tokens'))} + {e(usage.get('completion_tokens'))} tokens, "
            f"{_usd(usage.get('cost_usd'))}</dd>"
        )
    if usage.get("hedges"):
        parts.append(f"<dt>hedges</dt><dd>{e(usage.get('hedges'))}</dd>")
    if turn.get("bridge"):
        at = (turn.get("timeline") or {}).get("bridge_out")
        t0 = (turn.get("timeline") or {}).get("speech_end")
        when = f" at {at - t0:.0f} ms after speech end" if at is not None and t0 is not None else ""
        parts.append(f'<dt>bridge</dt><dd class="bridge">{e(turn.get("bridge_kind") or "played")}{when}</dd>')
    parts.append(f"<dt>outcome</dt><dd>{e(turn.get('outcome'))}</dd>")
    for tool in turn.get("tools") or []:
        status = tool.get("status") or "ok"
        css = "" if status == "ok" else ' class="bad"'
        reused = ", reused" if tool.get("reused") else ""
        parts.append(
            f"<dt>tool</dt><dd{css}><code>{e(tool.get('name'))}</code> {e(tool.get('arguments'))}: "
            f"{e(status)}, {e(tool.get('latency_ms'))} ms{reused}</dd>"
        )
    parts.append("</dl>")
    if turn.get("fallbacks"):
        parts.append(f"<h4>Fallbacks ({len(turn['fallbacks'])})</h4>{_fallbacks_html(turn['fallbacks'])}")
    parts.append("</section>")
    return "".join(parts)


_HANDOFF_KEYS = (
    "trigger",
    "reason",
    "routing_class",
    "tone",
    "urgency",
    "next_action",
    "transferred",
    "to",
    "whisper",
)


def handoff_html(handoff: dict[str, Any] | None) -> str:
    if not handoff:
        return ""
    items = "".join(f"<dt>{e(k)}</dt><dd>{e(handoff.get(k))}</dd>" for k in _HANDOFF_KEYS if k in handoff)
    leg = handoff.get("human_leg")
    if leg:
        items += f"<dt>human leg</dt><dd>{e(leg.get('status'))}, connected {e(leg.get('connected'))}</dd>"
    entities = handoff.get("entities")
    if entities:
        items += f"<dt>entities</dt><dd>{e(entities)}</dd>"
    return f'<h2>Handoff</h2><dl class="handoff">{items}</dl>'


def _recording_note(call: dict[str, Any]) -> str:
    """Whether the call was recorded (its tenant's ``recording``; agent/recording.py), and where."""
    from voxroute.agent.recording import find_recording

    path = find_recording(call.get("tenant"), call.get("call_sid"))
    return f"recorded: <code>{e(path.name)}</code>" if path is not None else "not recorded"


def call_page(call: dict[str, Any]) -> str:
    """One call: header, transcript, then per turn its waterfall, route, reason, fallbacks, bridge."""
    turns = call.get("turns") or []
    s = call_summary(call)
    sid = call.get("call_sid")
    duration = (
        f"{call['ended_at'] - call['started_at']:.1f} s"
        if isinstance(call.get("ended_at"), int | float) and isinstance(call.get("started_at"), int | float)
        else "in progress"
    )
    body = [
        '<p><a href="/calls">← recent calls</a></p>',
        f'<h1>Call <code class="sid">{e(sid)}</code></h1>',
    ]
    note = mode_note(call.get("mode"))
    if note:
        body.append(f'<p class="note mode">{e(note)}</p>')
    ended_css = ' class="bad"' if call.get("ended") == "error" else ""
    reason = f" ({e(call.get('outcome_reason'))})" if call.get("outcome_reason") else ""
    body.append(
        "<dl>"
        f"<dt>tenant</dt><dd>{e(call.get('tenant'))}</dd>"
        f"<dt>carrier</dt><dd>{e(call.get('carrier'))}, {e(call.get('channel'))}, {e(call.get('language'))}</dd>"
        f"<dt>from → to</dt><dd>{e(_masked(call.get('from_number')))} → {e(call.get('to_number'))}</dd>"
        f"<dt>started</dt><dd>{_when(call.get('started_at'))} ({duration})</dd>"
        f"<dt>ended</dt><dd{ended_css}>{e(call.get('ended'))}</dd>"
        f"<dt>outcome</dt><dd>{e(call.get('outcome'))}{reason}</dd>"
        f"<dt>cost</dt><dd>{_usd(s['cost_usd'])}</dd>"
        f"<dt>worst first audio</dt><dd>{_first_audio_cell(s['worst_first_audio_ms'], s['worst_budget_ms'])}"
        f" · {s['budget_misses']} of {len(turns)} turns over budget</dd>"
        f"<dt>routing policy</dt><dd><code>{e(call.get('policy'))}</code></dd>"
        f"<dt>recording</dt><dd>{_recording_note(call)}</dd>"
    )
    if call.get("error"):
        body.append(f'<dt>error</dt><dd class="bad">{e(call.get("error"))}</dd>')
    body.append("</dl>")
    body.append(handoff_html(call.get("handoff")))
    body.append(f"<h2>Transcript</h2>{transcript_html(turns)}")
    body.append(f"<h2>Turns ({len(turns)})</h2>")
    body.extend(turn_html(t) for t in turns)
    if not turns:
        body.append('<p class="muted">No turns.</p>')
    if call.get("faults"):
        body.append(f"<h2>Injected faults</h2><pre>{e(call.get('faults'))}</pre>")
    return page(f"call {sid}", "".join(body))


def not_found_page(call_sid: str, detail: str = "") -> str:
    what = f"<p>{e(detail)}</p>" if detail else f"<p>No call <code>{e(call_sid)}</code> here.</p>"
    return page("call not found", f'<h1>No such call</h1>{what}<p><a href="/calls">recent calls</a></p>')


def unauthorized_page() -> str:
    return page(
        "operator key required",
        "<h1>Operator API key required</h1>"
        "<p>These pages are protected by the operator API key (the one the handoff API takes).</p><ul>"
        "<li>In a browser: open <code>/calls?key=YOUR_KEY</code> once; it sets an HttpOnly cookie for "
        "<code>/calls</code> (12 hours) and drops the key from the address.</li>"
        "<li>Or sign in with HTTP Basic: any user name, the key as password.</li>"
        "<li>API clients: send <code>X-API-Key: KEY</code> or <code>Authorization: Bearer KEY</code>.</li></ul>",
    )


# ---------------------------------------------------------------------------- where calls come from


class CallSource(Protocol):
    """Where the pages and the JSON API read calls: memory now, the call log's database later."""

    async def index(self) -> dict[str, Any]:
        """``GET /calls`` for API clients: ``{"active": [sids], "finished": [sids]}``."""
        ...

    async def recent(self, limit: int = LIST_LIMIT, tenant: str | None = None) -> list[dict[str, Any]]:
        """Newest first, each a ``call_summary`` row."""
        ...

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        """A whole call as ``Services.call_json`` gives it, or None."""
        ...


class MemoryCallSource:
    """The calls this process holds: the live ones and the last thousand finished."""

    def __init__(self, services: Any, simulated: Callable[[], set[str]] = set) -> None:
        self.services = services
        self.simulated = simulated  # LLM provider names answered by emulators: their turns say so

    async def index(self) -> dict[str, Any]:
        return {"active": sorted(self.services.calls), "finished": list(self.services.finished)[-100:]}

    async def recent(self, limit: int = LIST_LIMIT, tenant: str | None = None) -> list[dict[str, Any]]:
        sids = [*self.services.finished, *self.services.calls]
        calls = [c for sid in sids if (c := await self.services.call_view(sid)) is not None]
        if tenant:
            calls = [c for c in calls if c.get("tenant") == tenant]
        calls.sort(key=lambda c: c.get("started_at") or 0.0, reverse=True)
        return [call_summary(c) for c in calls[:limit]]

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        data = await self.services.call_view(call_sid)  # redacted as the call log stores it
        if data is None:
            return None
        simulated = self.simulated()
        turns = []
        for turn in data.get("turns", []):
            turn = dict(turn)  # the summary's own dicts stay as the session wrote them
            if (turn.get("usage") or {}).get("provider") in simulated:
                turn["llm"] = "simulated LLM"
            turns.append(turn)
        if "turns" in data:
            data["turns"] = turns
        return data


# ---------------------------------------------------------------------------- auth and routes


def prefers_html(accept: str | None) -> bool:
    """True when the Accept header ranks text/html above JSON (browsers); ``*/*`` alone means JSON."""
    html_q = json_q = 0.0
    for part in (accept or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if media in ("text/html", "application/xhtml+xml"):
            html_q = max(html_q, q)
        elif media in ("application/json", "application/*", "*/*"):
            json_q = max(json_q, q)
    return html_q > json_q


OPERATOR_REALM = "voxroute operator"


class OperatorAuth:
    """The one operator check. Every operator route asks it: the call pages and their JSON (``/calls``,
    ``/calls/{call_sid}``), the handoff API (``/calls/{call_sid}/handoff``), the outcome API,
    ``/debug/*`` and ``/metrics``, on the main port and on each worker's own port alike (one app).

    The key is taken in five forms, the same on every route:

    1. ``X-API-Key: KEY`` (API clients, replay);
    2. ``Authorization: Bearer KEY`` (Prometheus' scrape, API clients);
    3. ``Authorization: Basic`` with any user name and the key as password (a browser's prompt);
    4. ``?key=KEY`` in the URL (a link; the pages then set the cookie and redirect without it);
    5. the ``voxroute_operator`` cookie that 4 sets: an HMAC of the key, not the key (path ``/calls``).

    Keys are compared in constant time. No key configured: open (the runtime warns at start)."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self.cookie_value = (
            hmac.new(api_key.encode(), b"voxroute call pages", hashlib.sha256).hexdigest() if api_key else ""
        )

    def _is_key(self, given: str | None) -> bool:
        if not given or self.api_key is None:
            return False
        # as bytes: compare_digest refuses str with non-ASCII characters (a header or ?key= may hold them)
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self.api_key.encode())

    def allows(self, request: Request) -> bool:
        """Whether ``request`` carries the key in one of the five forms (or no key is configured)."""
        if self.api_key is None:
            return True
        h = request.headers
        scheme, _, value = h.get("authorization", "").partition(" ")
        password = None
        if scheme.lower() == "basic":
            try:
                password = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                password = None
        bearer = value.strip() if scheme.lower() == "bearer" else None
        cookie = request.cookies.get(COOKIE_NAME, "")
        return (
            self._is_key(h.get("x-api-key"))
            or self._is_key(bearer)
            or self._is_key(password)
            or self._is_key(request.query_params.get("key"))
            or (bool(cookie) and hmac.compare_digest(cookie.encode("utf-8", "surrogatepass"),
                                                     self.cookie_value.encode()))
        )  # fmt: skip

    def require(self, request: Request) -> None:
        """:meth:`allows`, or one log line and a 401 (``HTTPException``) naming the schemes."""
        if self.allows(request):
            return
        log.warning("operator API: %s %s rejected (401): no valid API key", request.method, request.url.path)
        raise StarletteHTTPException(
            status_code=401,
            detail="a valid API key is required",
            headers={"WWW-Authenticate": f'Bearer realm="{OPERATOR_REALM}", Basic realm="{OPERATOR_REALM}"'},
        )


def add_call_routes(app: FastAPI, source: CallSource, auth: OperatorAuth, banner: str | None = None) -> None:
    """``GET /calls`` and ``GET /calls/{call_sid}``: JSON for API clients, HTML for browsers.
    ``banner``: a warning shown at the top of every page (``voxroute serve --dev`` says so)."""
    top = f'<p class="note bad"><strong>{e(banner)}</strong></p>' if banner else ""

    def guard(request: Request, html: bool) -> Response | None:
        """None: go on. Else the response to send (401, or the redirect that sets the cookie)."""
        if not html:
            auth.require(request)  # raises the 401
        elif not auth.allows(request):
            log.warning("call pages: %s rejected (401): no valid API key", request.url.path)
            return HTMLResponse(
                unauthorized_page(),
                status_code=401,
                headers={"WWW-Authenticate": f'Basic realm="{OPERATOR_REALM}"', "Vary": "Accept"},
            )
        if html and auth.api_key and "key" in request.query_params:
            url = request.url.remove_query_params("key")
            target = url.path + (f"?{url.query}" if url.query else "")
            redirect = RedirectResponse(target, status_code=303)
            redirect.set_cookie(
                COOKIE_NAME,
                auth.cookie_value,
                max_age=COOKIE_MAX_AGE_S,
                path="/calls",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return redirect
        return None

    def html_response(body: str, status_code: int = 200) -> HTMLResponse:
        body = body.replace("<body>", "<body>" + top, 1)
        return HTMLResponse(body, status_code, headers={"Cache-Control": "no-store", "Vary": "Accept"})

    def unavailable(html: bool) -> Response:
        if html:
            return html_response(page("unavailable", "<h1>The call log is unavailable</h1>"), 503)
        return JSONResponse({"detail": "the call log is unavailable"}, status_code=503)

    default_http_error = app.exception_handlers.get(StarletteHTTPException, http_exception_handler)

    async def not_found(request: Request, exc: Exception) -> Response:
        """A browser asking for something under /calls/ that no route has (an id with a slash in it)
        gets the same 404 page as for an unknown call; everything else is handled as before."""
        if (
            isinstance(exc, StarletteHTTPException)
            and exc.status_code == 404
            and request.url.path.startswith("/calls/")
            and prefers_html(request.headers.get("accept"))
        ):
            detail = "" if exc.detail == "Not Found" else str(exc.detail)
            return html_response(not_found_page(request.url.path.removeprefix("/calls/"), detail), 404)
        response = default_http_error(request, exc)  # FastAPI's (async), or one set before (maybe sync)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(StarletteHTTPException, not_found)

    @app.get("/calls", response_model=None)
    async def list_calls(request: Request) -> Response:
        html = prefers_html(request.headers.get("accept"))
        denied = guard(request, html)
        if denied is not None:
            return denied
        tenant = request.query_params.get("tenant") or None
        try:
            if not html:
                return JSONResponse(jsonable_encoder(await source.index()))
            try:
                limit = max(1, min(LIST_LIMIT_MAX, int(request.query_params.get("limit", LIST_LIMIT))))
            except ValueError:
                limit = LIST_LIMIT
            rows = await source.recent(limit, tenant=tenant)
        except Exception:  # a database that is down must not become a 500 with a traceback
            log.exception("call pages: could not read the call list")
            return unavailable(html)
        return html_response(calls_page(rows, tenant, open_api=auth.api_key is None))

    @app.get("/calls/{call_sid}", response_model=None)
    async def get_call(call_sid: str, request: Request) -> Response:
        html = prefers_html(request.headers.get("accept"))
        denied = guard(request, html)
        if denied is not None:
            return denied
        try:
            data = await source.get(call_sid)
        except Exception:
            log.exception("call pages: could not read call %r", call_sid[:64])
            return unavailable(html)
        if data is None:
            if html:
                return html_response(not_found_page(call_sid), 404)
            return JSONResponse({"detail": f"no call {call_sid}"}, status_code=404)
        if html:
            return html_response(call_page(data))
        return JSONResponse(jsonable_encoder(data))


__all__ = [
    "CallSource",
    "MemoryCallSource",
    "OPERATOR_REALM",
    "OperatorAuth",
    "add_call_routes",
    "call_page",
    "call_summary",
    "calls_page",
    "prefers_html",
    "waterfall_svg",
]
