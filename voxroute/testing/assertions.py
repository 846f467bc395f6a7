"""Assertions on a replayed call that read as the product speaks.

Each takes a replay result: the ``replay_call`` fixture's :class:`ReplayResult`, or one call of
``voxroute replay --json`` (``result["calls"][i]``). Each raises an AssertionError whose message
shows what was expected (``-``) and what the call did (``+``), turn by turn.

:func:`fixture_failures` checks the expectations a fixture script carries (``expect_class``,
``expect_tool``, ``expect_end``); ``voxroute replay --assert`` prints them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CALLER_KINDS = ("speech", "dtmf")  # turn 0 of a call whose agent speaks first is the "greeting"


@dataclass
class ReplayResult:
    """One replayed call (``replay_call``): the runtime's record of it as ``voxroute replay`` prints it."""

    fixture: str
    call_sid: str
    ended: str  # "completed", "handoff" or "error"
    turns: list[dict[str, Any]]
    carrier: dict[str, Any]
    history: list[dict[str, Any]]
    faults: dict[str, list[dict[str, Any]]]  # emulator service -> injected faults
    raw: dict[str, Any]
    fixture_path: str | None = None  # the fixture's JSON, for assert_expectations


def _call(result: Any) -> dict[str, Any]:
    """The call's JSON (the replay's dict) from a ReplayResult or the dict itself."""
    if isinstance(result, Mapping):
        return dict(result)
    raw = getattr(result, "raw", None)
    if isinstance(raw, Mapping):
        return dict(raw)
    raise TypeError(
        f"expected a replay result (replay_call's or a call of `voxroute replay --json`), got {result!r}"
    )


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else value


def _said(turn: Mapping[str, Any]) -> str:
    text = turn.get("transcript") or ""
    return f'"{text[:60]}…"' if len(text) > 60 else f'"{text}"'


def _fail(title: str, lines: Iterable[str]) -> AssertionError:
    return AssertionError("\n".join([title, *(f"  {line}" for line in lines)]))


def _turn(call: Mapping[str, Any], n: int) -> dict[str, Any]:
    __tracebackhide__ = True
    for t in call.get("turns") or []:
        if t.get("index") == n:
            return t
    have = ", ".join(f"{t.get('index')} {_said(t)}" for t in call.get("turns") or []) or "none"
    raise _fail(f"{call.get('fixture')}: the call has no turn {n}", [f"turns: {have}"])


def caller_turns(result: Any) -> list[dict[str, Any]]:
    """The turns the caller's items made (speech and keyed digits), in order; not the greeting."""
    return [t for t in _call(result).get("turns") or [] if t.get("kind") in CALLER_KINDS]


# ---------------------------------------------------------------- one expectation at a time


def assert_within_budget(result: Any, turn: int | None = None) -> None:
    """Every turn (or turn ``turn``) had its first agent audio within the turn's latency budget."""
    __tracebackhide__ = True  # pytest shows the test's line, not this helper's
    call = _call(result)
    turns = [_turn(call, turn)] if turn is not None else call.get("turns") or []
    late = [t for t in turns if not t.get("within_budget")]
    if not turns:
        raise _fail(f"{call.get('fixture')}: no turns to check (ended {call.get('ended')})", [])
    if late:
        lines = []
        for t in late:
            fa = t.get("first_audio_ms")
            got = "no agent audio" if fa is None else f"first audio {fa:.0f} ms"
            lines += [f"turn {t.get('index')} {_said(t)}", f"- within {t.get('budget_ms')} ms", f"+ {got}"]
        raise _fail(f"{call.get('fixture')}: {len(late)} of {len(turns)} turns over budget", lines)


def assert_routed(
    result: Any,
    turn: int,
    cls: str | None = None,
    tier: str | None = None,
    model: str | None = None,
) -> None:
    """Turn ``turn`` (1 = the caller's first) was routed to class ``cls`` on tier ``tier`` (and model)."""
    __tracebackhide__ = True  # pytest shows the test's line, not this helper's
    call = _call(result)
    t = _turn(call, turn)
    route = t.get("route") or {}
    want = {"class": cls, "tier": tier, "model": model}
    want = {k: v for k, v in want.items() if v is not None}
    got = {k: route.get(k) for k in want}
    if got != want:
        raise _fail(
            f"{call.get('fixture')}: turn {turn} {_said(t)} routed elsewhere",
            [
                "- " + " ".join(f"{k}={v}" for k, v in want.items()),
                "+ " + " ".join(f"{k}={v}" for k, v in got.items()),
                f"  (reason: {route.get('reason')})",
            ],
        )


def assert_ended(result: Any, how: str) -> None:
    """The call ended ``how``: "completed" (the caller hung up) or "handoff" (passed to a person)."""
    __tracebackhide__ = True  # pytest shows the test's line, not this helper's
    call = _call(result)
    if call.get("ended") != how:
        lines = [f"- ended {how}", f"+ ended {call.get('ended')}"]
        if call.get("error"):
            lines.append(f"  (error: {call['error']})")
        raise _fail(f"{call.get('fixture')}: the call ended otherwise", lines)


def _norm(value: Any) -> str:
    return " ".join(str(value).split()).casefold()


def assert_handoff(
    result: Any,
    entities: Mapping[str, str | list[str]] | None = None,
    *,
    to: str | None = None,
    routing_class: str | None = None,
) -> None:
    """The call ended in a handoff to a person whose summary carries ``entities`` (kind -> value, or
    a list of values; others may be there too; case and spacing ignored), sent ``to`` that number."""
    __tracebackhide__ = True  # pytest shows the test's line, not this helper's
    call = _call(result)
    h = call.get("handoff")
    name = call.get("fixture")
    if call.get("ended") != "handoff" or not h:
        raise _fail(
            f"{name}: the call did not end in a handoff", ["- ended handoff", f"+ ended {call.get('ended')}"]
        )
    lines: list[str] = []
    found: dict[str, list[str]] = {}
    for e in h.get("entities") or []:
        found.setdefault(e.get("kind"), []).append(e.get("value"))
    for kind, values in (entities or {}).items():
        for value in [values] if isinstance(values, str) else values:
            if _norm(value) not in {_norm(v) for v in found.get(kind, [])}:
                lines += [f"- {kind}: {value}", f"+ {kind}: {', '.join(found.get(kind, [])) or '(none)'}"]
    for key, want in (("to", to), ("routing_class", routing_class)):
        if want is not None and h.get(key) != want:
            lines += [f"- {key}: {want}", f"+ {key}: {h.get(key)}"]
    if lines:
        every = ", ".join(f"{k}={v}" for k, vs in found.items() for v in vs) or "none"
        raise _fail(f"{name}: the handoff differs", [*lines, f"  (entities in the summary: {every})"])


def _tool_line(tool: Mapping[str, Any]) -> str:
    return f"{tool.get('name')}({_show(tool.get('arguments') or {})}) {tool.get('status')}"


def _tool_matches(tool: Mapping[str, Any], name: str, arguments: Mapping[str, Any] | None) -> bool:
    args = tool.get("arguments") or {}
    return tool.get("name") == name and all(k in args and args[k] == v for k, v in (arguments or {}).items())


def assert_tool_called(
    result: Any,
    name: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    turn: int | None = None,
    status: str | None = "ok",
) -> None:
    """Tool ``name`` was called (in turn ``turn``, or any) with ``arguments`` (the keys given must
    match; others may be there) and ended with ``status`` ("ok" by default; None: any)."""
    __tracebackhide__ = True  # pytest shows the test's line, not this helper's
    call = _call(result)
    turns = [_turn(call, turn)] if turn is not None else call.get("turns") or []
    calls = [(t, tool) for t in turns for tool in t.get("tools") or []]
    for _, tool in calls:
        if _tool_matches(tool, name, arguments) and (status is None or tool.get("status") == status):
            return
    want = f"{name}({_show(dict(arguments or {}))})" + (f" {status}" if status else "")
    where = f"turn {turn}" if turn is not None else "the call"
    got = [f"+ turn {t.get('index')}: {_tool_line(tool)}" for t, tool in calls] or ["+ (no tool calls)"]
    raise _fail(f"{call.get('fixture')}: {where} made no such tool call", [f"- {want}", *got])


# ---------------------------------------------------------------- the fixture's own expectations


def fixture_failures(fixture: Any, result: Any) -> list[str]:
    """Every expectation of the fixture script (``voxroute.agent.fixture.Fixture``) the call did not meet, as
    readable lines (empty: all met). The utterances that expect a turn are matched to the caller's
    turns in order."""
    call = _call(result)
    script = fixture.script
    lines: list[str] = []
    if script.expect_end and call.get("ended") != script.expect_end:
        lines += ["call end", f"  - {script.expect_end}", f"  + {call.get('ended')}"]
        if call.get("error"):
            lines.append(f"    (error: {call['error']})")
    items = [u for u in script.utterances if u.expect_turn]
    turns = caller_turns(call)
    if len(turns) != len(items) and any(u.expect_class or u.expect_tool for u in items):
        lines += [
            "turns",
            f"  - {len(items)} caller turns (one per utterance)",
            f"  + {len(turns)}: " + " · ".join(_said(t) for t in turns),
        ]
    for utt, t in zip(items, turns, strict=False):
        said = utt.text if utt.dtmf is None else f"keys {utt.dtmf}"
        head = f'turn {t.get("index")} "{said}"'
        route = t.get("route") or {}
        if utt.expect_class and route.get("class") != utt.expect_class:
            lines += [f"{head}: class", f"  - {utt.expect_class}", f"  + {route.get('class')}"]
            lines.append(f"    (reason: {route.get('reason')})")
        if utt.expect_tool:
            want = utt.expect_tool
            tools = t.get("tools") or []
            if not any(_tool_matches(x, want.name, want.arguments) for x in tools):
                lines += [f"{head}: tool", f"  - {want.name}({_show(want.arguments)})"]
                lines += [f"  + {_tool_line(x)}" for x in tools] or ["  + (no tool calls)"]
    return lines


def assert_expectations(result: Any, fixture: Any = None) -> None:
    """The call met every expectation its fixture carries (``expect_class``, ``expect_tool``,
    ``expect_end``), as ``voxroute replay --assert`` checks them."""
    __tracebackhide__ = True  # pytest shows the test's line, not this helper's
    from voxroute.agent.fixture import load

    path = fixture if fixture is not None else getattr(result, "fixture_path", None)
    if path is None:
        raise TypeError("assert_expectations needs the fixture (a name, a path or a loaded Fixture)")
    loaded = load(path) if isinstance(path, str) or hasattr(path, "suffix") else path
    lines = fixture_failures(loaded, result)
    if lines:
        raise _fail(f"{loaded.name}: the call did not meet its fixture's expectations", lines)
