"""The business figures of the call log: what a routing change did to conversations, not to prompts.

``voxroute report`` reads the call log (the same database the runtime writes) and computes, over
the calls that *started* in the window (``--since``), of one tenant (``--tenant``) and one routing
policy (``--policy``, the hash of the routing table in force during the call):

``calls``
    Calls that are over (``ended`` is not ``in_progress``). Calls still going on have no outcome yet
    and are left out, with their turns.
``turns``
    The turns of those calls (a turn the caller continued before it was answered is merged into the
    next one and not counted twice).
``cost_per_resolved``
    The money (USD) spent on every call counted, divided by the number of those calls whose outcome
    is ``resolved``: unresolved conversations are part of the price of a resolved one. ``None``
    when no call was resolved.
``containment``
    Contained calls / ``calls``. A call is contained when its outcome is ``resolved``, it did not end
    with a human (no handoff, no transfer), and the same caller (the salted hash of the number) did
    not call the same tenant again within 24 hours of its start. Callers who asked for a person
    (opt-outs), hung up, or hit an error all count in the denominator.
``first_audio_ms_by_class``
    Routing class -> ``{p50, p95, turns}``: first-audio latency (``first_audio_out - speech_end``,
    ms) of the turns of that class that put audio on the wire; percentiles by linear interpolation
    between closest ranks, as ``voxroute replay`` computes them. Turns without a route are
    ``unrouted``.
``escalation_after_failure``
    Calls in which a model failure led to a human / ``calls``. A model failure is a fallback of the LLM
    ladder (an error, timeout, hedge loss or cooldown skip of a model path, or the hard cap with no
    answer at all); it led to a human when the call ended in a handoff and the failure happened in the
    handoff's turn or before it.
``repeat_contact_rate``
    ``{"overall": rate, "by_class": {class: {"calls", "repeats", "rate"}}}``. A call is followed by a
    repeat contact when the same caller calls the same tenant again within 7 days of its start (the
    later call may be of any policy). Rate = such calls / calls with a known caller. A call's class is
    its reason for contact: the routing class of its first routed turn. Calls near the end of the
    window have had less time to be repeated: compare windows that ended at least 7 days ago.
``bridges_per_100_turns``, ``hedges_per_100_turns``
    Turns that played a bridge, and hedge requests started, per 100 ``turns``.
``tools``
    Tool name -> ``{calls, failures, failure_rate, p50_ms, p95_ms}`` over the tool calls the runtime
    ran in the counted turns (agent/tools): ``failures`` are calls whose status is ``error`` or
    ``timeout``; a result reused within a turn is not a call. Latency percentiles as above.
``by_channel``
    Channel (``voice``, ``chat``: the text endpoint) -> every figure above over that channel's calls
    only. On the chat channel "first audio" is the time to the answer's first text.

``compare(policy_a, policy_b)`` gives the figures of each policy and ``b - a`` for every number.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from voxroute.agent.calllog.schema import calls_table, turns_table

REPEAT_CONTAINMENT = timedelta(hours=24)
REPEAT_CONTACT = timedelta(days=7)
KEYS = (
    "calls",
    "turns",
    "cost_per_resolved",
    "containment",
    "first_audio_ms_by_class",
    "escalation_after_failure",
    "repeat_contact_rate",
    "bridges_per_100_turns",
    "hedges_per_100_turns",
    "tools",
)  # the figures; ``report`` adds ``by_channel``: the same per channel


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    tenant: str | None = None
    policy: str | None = None


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """``2026-11-01``, ``2026-11-01T09:30`` (UTC unless an offset is given), or ``7d`` / ``24h`` ago."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    if m := re.fullmatch(r"(\d+)\s*([dhm])", text.strip()):
        unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
        return now - timedelta(**{unit: int(m.group(1))})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since: {text!r} is not a date (2026-11-01), a time or 7d/24h") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time in the call log is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (voxroute.replay's summary uses it too)."""
    k = (len(sorted_values) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# ---------------------------------------------------------------- reading


CALL_COLUMNS = (
    "call_sid",
    "tenant",
    "caller_hash",
    "started_at",
    "ended",
    "outcome",
    "policy",
    "routing_class",
    "channel",
)
TURN_COLUMNS = (
    "call_sid",
    "turn_index",
    "routing_class",
    "first_audio_ms",
    "cost_usd",
    "bridge",
    "hedges",
    "model_failures",
    "handoff",
    "tools",
)


async def load(engine: AsyncEngine, filters: Filters) -> tuple[list[dict], list[dict]]:
    """Calls of the window and tenant (every policy: repeat contacts cross policies) and their turns."""
    c, t = calls_table.c, turns_table.c
    where = []
    if filters.since is not None:
        where.append(c.started_at >= filters.since.astimezone(UTC))
    if filters.tenant is not None:
        where.append(c.tenant == filters.tenant)
    async with engine.connect() as conn:
        calls = [
            dict(r._mapping) for r in await conn.execute(select(*(c[k] for k in CALL_COLUMNS)).where(*where))
        ]
        turns = [
            dict(r._mapping)
            for r in await conn.execute(
                select(*(t[k] for k in TURN_COLUMNS))
                .join(calls_table, t.call_sid == c.call_sid)
                .where(*where)
            )
        ]
    for call in calls:
        call["started_at"] = _utc(call["started_at"])
    return calls, turns


# ---------------------------------------------------------------- figures (pure)


def _rate(part: int, whole: int, digits: int = 4) -> float | None:
    return round(part / whole, digits) if whole else None


def figures(calls: list[dict], turns: list[dict], policy: str | None = None) -> dict[str, Any]:
    """The report's figures from call and turn rows (``load``'s shape). ``calls`` may hold calls of
    other policies: they count only as repeat contacts of the policy's calls."""
    # Later calls of each caller, for repeat contacts (any policy, in progress or not).
    starts: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for call in calls:
        if call["caller_hash"]:
            starts[(call["tenant"], call["caller_hash"])].append(call["started_at"])
    for times in starts.values():
        times.sort()

    def called_again(call: dict, within: timedelta) -> bool | None:
        if not call["caller_hash"]:
            return None
        times = starts[(call["tenant"], call["caller_hash"])]
        i = bisect.bisect_right(times, call["started_at"])
        return i < len(times) and times[i] <= call["started_at"] + within

    population = [
        c for c in calls if c["ended"] != "in_progress" and (policy is None or c["policy"] == policy)
    ]
    sids = {c["call_sid"] for c in population}
    by_call: dict[str, list[dict]] = defaultdict(list)
    for turn in turns:
        if turn["call_sid"] in sids:
            by_call[turn["call_sid"]].append(turn)
    counted = [t for sid in sids for t in by_call[sid]]

    resolved = contained = escalated_after_failure = 0
    repeat_calls: dict[str, int] = defaultdict(int)
    repeats: dict[str, int] = defaultdict(int)
    for call in population:
        call_turns = sorted(by_call[call["call_sid"]], key=lambda t: t["turn_index"])
        handoff_turns = [t["turn_index"] for t in call_turns if t["handoff"]]
        with_human = call["ended"] == "handoff" or call["outcome"] == "handoff" or bool(handoff_turns)
        if call["outcome"] == "resolved":
            resolved += 1
            if not with_human and not called_again(call, REPEAT_CONTAINMENT):
                contained += 1
        if with_human:
            last = max(handoff_turns) if handoff_turns else float("inf")
            if any(t["model_failures"] and t["turn_index"] <= last for t in call_turns):
                escalated_after_failure += 1
        again = called_again(call, REPEAT_CONTACT)
        if again is not None:
            routed = [t["routing_class"] for t in call_turns if t["routing_class"]]
            cls = routed[0] if routed else (call["routing_class"] or "unrouted")
            repeat_calls[cls] += 1
            repeats[cls] += bool(again)

    latency: dict[str, list[float]] = defaultdict(list)
    for turn in counted:
        if turn["first_audio_ms"] is not None:
            latency[turn["routing_class"] or "unrouted"].append(float(turn["first_audio_ms"]))
    first_audio = {}
    for cls in sorted(latency):
        values = sorted(latency[cls])
        first_audio[cls] = {
            "p50": round(percentile(values, 50), 1),
            "p95": round(percentile(values, 95), 1),
            "turns": len(values),
        }

    cost = sum(float(t["cost_usd"] or 0.0) for t in counted)
    n_calls, n_turns = len(population), len(counted)
    tools = tool_figures(counted)
    known = sum(repeat_calls.values())
    return {
        "calls": n_calls,
        "turns": n_turns,
        "cost_per_resolved": round(cost / resolved, 6) if resolved else None,
        "containment": _rate(contained, n_calls),
        "first_audio_ms_by_class": first_audio,
        "escalation_after_failure": _rate(escalated_after_failure, n_calls),
        "repeat_contact_rate": {
            "overall": _rate(sum(repeats.values()), known),
            "by_class": {
                cls: {"calls": repeat_calls[cls], "repeats": repeats[cls], "rate": _rate(repeats[cls], n)}
                for cls, n in sorted(repeat_calls.items())
            },
        },
        "bridges_per_100_turns": round(100 * sum(bool(t["bridge"]) for t in counted) / n_turns, 2)
        if n_turns
        else None,
        "hedges_per_100_turns": round(100 * sum(int(t["hedges"] or 0) for t in counted) / n_turns, 2)
        if n_turns
        else None,
        "tools": tools,
    }


def tool_figures(turns: list[dict]) -> dict[str, dict[str, Any]]:
    """Per tool: calls run, failures (error or timeout), their rate, and latency p50 / p95 (ms)."""
    latency: dict[str, list[float]] = defaultdict(list)
    failures: dict[str, int] = defaultdict(int)
    for turn in turns:
        for call in turn.get("tools") or []:
            if not isinstance(call, dict) or call.get("reused") or not isinstance(call.get("name"), str):
                continue
            name = call["name"]
            ms = call.get("latency_ms")
            latency[name].append(float(ms) if isinstance(ms, int | float) else 0.0)
            failures[name] += call.get("status") in ("error", "timeout")
    out = {}
    for name in sorted(latency):
        values = sorted(latency[name])
        out[name] = {
            "calls": len(values),
            "failures": failures[name],
            "failure_rate": _rate(failures[name], len(values)),
            "p50_ms": round(percentile(values, 50), 1),
            "p95_ms": round(percentile(values, 95), 1),
        }
    return out


def difference(a: Any, b: Any) -> Any:
    """``b - a`` for every number in two figure trees (None where either side has no value)."""
    if isinstance(a, dict) or isinstance(b, dict):
        a, b = a or {}, b or {}
        return {k: difference(a.get(k), b.get(k)) for k in sorted(set(a) | set(b), key=str)}
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return None
    return round(b - a, 6)


def with_channels(calls: list[dict], turns: list[dict], policy: str | None = None) -> dict[str, Any]:
    """``figures`` over every call, and ``by_channel``: the same over each channel's calls."""
    fig = figures(calls, turns, policy)
    channels = sorted({c.get("channel") or "voice" for c in calls})
    fig["by_channel"] = {
        ch: figures([c for c in calls if (c.get("channel") or "voice") == ch], turns, policy)
        for ch in channels
    }
    return fig


async def report(engine: AsyncEngine, filters: Filters) -> dict[str, Any]:
    calls, turns = await load(engine, filters)
    return with_channels(calls, turns, filters.policy)


async def compare(engine: AsyncEngine, policy_a: str, policy_b: str, filters: Filters) -> dict[str, Any]:
    calls, turns = await load(engine, filters)
    a, b = figures(calls, turns, policy_a), figures(calls, turns, policy_b)
    return {"policy_a": policy_a, "policy_b": policy_b, "a": a, "b": b, "diff": difference(a, b)}


# ---------------------------------------------------------------- printing


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}{unit}" if abs(value) < 1 else f"{value:,.1f}{unit}"
    return f"{value}{unit}"


def _cell(value: Any, unit: str) -> str:
    if isinstance(value, tuple):
        return " / ".join(_fmt(v) for v in value) + unit
    return _fmt(value, unit)


def render(fig: dict[str, Any], title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for label, value, unit in _keyed_rows(fig):
        table.add_row(label, _cell(value, unit))
    return table


def render_compare(result: dict[str, Any]):
    from rich.table import Table

    a, b, d = result["a"], result["b"], result["diff"]
    table = Table(title="routing policies compared (difference: b - a)", title_justify="left")
    table.add_column("figure")
    table.add_column(f"a {result['policy_a']}", justify="right")
    table.add_column(f"b {result['policy_b']}", justify="right")
    table.add_column("difference", justify="right")
    labels_a = {label: (v, u) for label, v, u in _keyed_rows(a)}
    labels_b = {label: (v, u) for label, v, u in _keyed_rows(b)}
    labels_d = {label: (v, u) for label, v, u in _keyed_rows(d)}
    for label in dict.fromkeys([*labels_a, *labels_b]):
        va, unit = labels_a.get(label, (None, ""))
        vb, unit_b = labels_b.get(label, (None, unit))
        vd, _ = labels_d.get(label, (None, ""))
        table.add_row(label, _cell(va, unit or unit_b), _cell(vb, unit or unit_b), _cell(vd, unit or unit_b))
    return table


def _keyed_rows(fig: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Rows keyed by labels that do not depend on counts, so both policies' lines line up."""
    out = []
    for key in ("calls", "turns", "cost_per_resolved", "containment", "escalation_after_failure"):
        out.append((key.replace("_", " "), fig.get(key), ""))
    out.append(("repeat contact within 7 days", (fig.get("repeat_contact_rate") or {}).get("overall"), ""))
    out.append(("bridges per 100 turns", fig.get("bridges_per_100_turns"), ""))
    out.append(("hedges per 100 turns", fig.get("hedges_per_100_turns"), ""))
    for cls, v in (fig.get("first_audio_ms_by_class") or {}).items():
        v = v or {}
        out.append((f"first audio {cls} p50 / p95", (v.get("p50"), v.get("p95")), " ms"))
        out.append((f"first audio {cls} turns", v.get("turns"), ""))
    for cls, v in ((fig.get("repeat_contact_rate") or {}).get("by_class") or {}).items():
        out.append((f"repeat contact {cls}", (v or {}).get("rate"), ""))
    for name, v in (fig.get("tools") or {}).items():
        v = v or {}
        out.append((f"tool {name} calls / failures", (v.get("calls"), v.get("failures")), ""))
        out.append((f"tool {name} p95", v.get("p95_ms"), " ms"))
    for channel, sub in (fig.get("by_channel") or {}).items():
        sub = sub or {}
        for key in ("calls", "turns", "cost_per_resolved", "containment"):
            out.append((f"{channel}: {key.replace('_', ' ')}", sub.get(key), ""))
        for cls, v in (sub.get("first_audio_ms_by_class") or {}).items():
            out.append(
                (
                    f"{channel}: first audio {cls} p50 / p95",
                    ((v or {}).get("p50"), (v or {}).get("p95")),
                    " ms",
                )
            )
    return out
