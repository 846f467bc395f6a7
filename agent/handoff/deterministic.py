"""The deterministic summary and the whisper: built from what the runtime already knows."""

from __future__ import annotations

import logging
import re
from typing import Any

from voxroute.agent.handoff.entities import WEEKDAYS, dedupe, extract_entities
from voxroute.agent.handoff.summary import Entity, HandoffSummary
from voxroute.routing.route import Route
from voxroute.routing.router import ANGER, MONEY
from voxroute.routing.table import BUILTIN_CLASSES

log = logging.getLogger("voxroute.handoff")


# ---------------------------------------------------------------- the deterministic summary

_LABELS = {
    "faq": "Question",
    "order_tracking": "Order tracking",
    "booking_change": "Booking change",
    "complaint": "Complaint",
    "billing_dispute": "Billing dispute",
    "sales_qualification": "Sales enquiry",
    "document_support": "Document support",
    "regulated": "Regulated matter",
    "human_request": "Request for a person",
    "out_of_scope": "Out of scope",
}
_FRUSTRATED = re.compile(
    r"\b(still|again|already (?:told|said|gave)|not working|doesn'?t work|didn'?t work|fails?|failed|"
    r"how long|waiting|no one|nobody|i said|wrong|not happy|disappointed|annoy(?:ed|ing)|"
    r"come on|seriously|real person|right now)\b|!|फिर से|अभी तक|कब तक",
    re.IGNORECASE,
)
_FAILED_OUTCOMES = {"apology", "not_heard", "handoff"}


def _class_stakes(route: Route) -> str:
    if route.stakes:
        return route.stakes
    cdef = BUILTIN_CLASSES.get(route.routing_class)  # a logged route that did not say
    return cdef.stakes if cdef else "low"


def _class_of(turn: dict[str, Any]) -> str:
    route = Route.from_dict(turn.get("route"))
    return route.routing_class if route else ""


def _label(cls: str) -> str:
    return _LABELS.get(cls, cls.replace("_", " ").capitalize() or "Call")


def as_text(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _clip(text: str, words: int = 16) -> str:
    parts = text.split()
    out = " ".join(parts[:words]) + ("…" if len(parts) > words else "")
    return out.strip().rstrip(".!?।,;") or text.strip()


def _dtmf_hint(turns: list[dict[str, Any]], pos: int, cls: str) -> str:
    """What keypad digits are, from the agent's last question (or the class)."""
    prev = ""
    for t in reversed(turns[:pos]):
        prev = as_text(t.get("heard")) or as_text(t.get("reply"))
        if prev:
            break
    p = prev.lower()
    if "card" in p:
        return "card_last4"
    if "account" in p:
        return "account_last4"
    if any(w in p for w in ("booking", "reservation", "pnr")) or cls == "booking_change":
        return "booking_ref"
    return "order_ref"


def deterministic_summary(turns: list[dict[str, Any]], call_language: str = "en-IN") -> HandoffSummary:
    """A summary from what the runtime knows, for turn dicts of the ``TurnRecord.as_dict()`` shape
    (``index``, ``kind``, ``transcript``, ``language``, ``route`` with ``class``/``stakes``/``signals``,
    ``fallbacks``, ``outcome``, ``interrupted``, ``handoff``). Never raises; malformed turns are skipped."""
    try:
        return _deterministic(turns, call_language)
    except Exception:
        log.exception("deterministic handoff summary failed; sending a minimal one")
        return HandoffSummary(
            reason="The call is being handed to a person; the automatic summary failed.",
            routing_class="human_request",
            tone="calm",
            urgency="high",
            tried=[],
            next_action="Ask the caller how you can help and read the call log.",
        )


def _deterministic(turns: list[dict[str, Any]], call_language: str) -> HandoffSummary:
    good = [t for t in (turns or []) if isinstance(t, dict)]
    classes: list[tuple[str, str]] = []  # (class, stakes) per caller turn
    entities: list[Entity] = []
    anger = frustration = unresolved = interrupted = answered = 0
    human_turns: list[int] = []
    dtmf_keyed: list[str] = []
    failures: dict[str, int] = {}
    for pos, t in enumerate(good):
        index, route = t.get("index"), Route.from_dict(t.get("route"))
        idx = index if isinstance(index, int) and index >= 0 else pos
        cls = route.routing_class if route else ""
        stakes = _class_stakes(route) if route else "low"
        text = as_text(t.get("transcript"))
        is_dtmf = t.get("kind") == "dtmf"
        if cls:
            classes.append((cls, stakes))
        if is_dtmf:
            hint = _dtmf_hint(good, pos, cls)
            entities += extract_entities(
                text, idx, as_text(t.get("language")) or call_language, dtmf=True, hint=hint
            )
            digits = re.sub(r"[^0-9*]", "", text)
            if digits:
                dtmf_keyed.append(digits)
        elif text:
            entities += extract_entities(text, idx, as_text(t.get("language")) or call_language)
            anger += len(ANGER.findall(text))
            frustration += len(_FRUSTRATED.findall(text))
        signals = route.signals if route else ()
        if "anger" in signals and not ANGER.search(text):
            anger += 1
        if "repeated request" in signals:
            frustration += 1
        outcome = as_text(t.get("outcome"))
        if outcome in ("apology", "not_heard"):
            unresolved += 1
        elif outcome == "answered":
            answered += 1
        if t.get("interrupted") is True:
            interrupted += 1
        if t.get("handoff") is True or stakes == "human" or (route is not None and route.handoff):
            human_turns.append(idx)
        fallbacks = t.get("fallbacks")
        for fb in fallbacks if isinstance(fallbacks, list) else []:
            if not isinstance(fb, dict):
                continue
            what = as_text(fb.get("model")) or as_text(fb.get("provider")) or "provider"
            service = as_text(fb.get("service")) or "llm"
            if as_text(fb.get("provider")) and as_text(fb.get("model")):
                what = f"{fb['provider']}/{fb['model']}"
            key = f"{service} {what}: {as_text(fb.get('kind')) or 'failed'}"
            failures[key] = failures.get(key, 0) + 1
    entities = dedupe(entities)

    # the topic: the last high-stakes class, else the person request, else the last routine subject
    topic = next((c for c, s in reversed(classes) if s == "high"), None)
    topic = topic or next((c for c, s in reversed(classes) if s == "human"), None)
    # a routine call: its subject, not the closing "thank you" (faq)
    topic = topic or next((c for c, _ in reversed(classes) if c not in ("faq", "out_of_scope")), None)
    topic = topic or (classes[-1][0] if classes else "human_request")
    stakes_seen = {s for _, s in classes}

    # tone
    if anger >= 2 or (anger and (frustration or human_turns or unresolved)):
        tone = "angry"
    elif anger or frustration >= 2 or unresolved >= 2 or (frustration and unresolved):
        tone = "frustrated"
    else:
        tone = "calm"

    money = any(e.kind == "amount" for e in entities) or any(
        MONEY.search(as_text(t.get("transcript"))) for t in good
    )
    high_stakes = bool(stakes_seen & {"high", "human"})
    urgency = (
        "high"
        if topic == "regulated"
        or (high_stakes and (tone != "calm" or money or failures or unresolved or topic == "billing_dispute"))
        else "low"
    )

    # the reason: the class's description and the caller's own words
    cdef = BUILTIN_CLASSES.get(topic)
    desc = cdef.description if cdef else ""
    quote = _key_quote(good, topic)
    reason = f"{_label(topic)}" + (f" ({desc})" if desc else "")
    if quote:
        reason += f': the caller said "{quote}"'
    if human_turns and topic != "human_request":
        reason += " and asked for a person"
    reason += "."

    # what was tried
    tried: list[str] = []
    if answered:
        tried.append(f"the agent answered {answered} turn{'s' if answered != 1 else ''}")
    if unresolved:
        tried.append(
            f"{unresolved} turn{'s' if unresolved != 1 else ''} ended unresolved (apology or not heard)"
        )
    for key, count in failures.items():
        tried.append(f"{key}" + (f" (x{count})" if count > 1 else ""))
    if dtmf_keyed:
        tried.append("caller keyed in " + ", ".join(dtmf_keyed))
    if interrupted:
        tried.append(f"caller interrupted the agent {interrupted} time{'s' if interrupted != 1 else ''}")
    if human_turns:
        tried.append("caller asked for a person (turn " + ", ".join(str(i) for i in human_turns[:5]) + ")")
    if not tried:
        tried.append("nothing yet: handed off before the agent answered")

    return HandoffSummary(
        reason=_one_sentence(reason, 400),
        routing_class=topic,
        entities=entities[:50],
        tone=tone,  # type: ignore[arg-type]
        urgency=urgency,  # type: ignore[arg-type]
        tried=tried[:20],
        next_action=_one_sentence(_next_action(topic, entities, tone), 400),
        source="deterministic",
    )


def _key_quote(turns: list[dict[str, Any]], topic: str) -> str:
    texts = [
        as_text(t.get("transcript"))
        for t in turns
        if t.get("kind") != "dtmf" and _class_of(t) == topic and as_text(t.get("transcript")).strip()
    ]
    if not texts:
        texts = [
            as_text(t.get("transcript"))
            for t in turns
            if t.get("kind") != "dtmf" and as_text(t.get("transcript"))
        ]
    if not texts:
        return ""
    best = texts[0] if len(texts[0].split()) >= 4 else max(texts, key=lambda s: len(s.split()))
    return _clip(best.replace('"', "'"))


def _one_sentence(text: str, limit: int) -> str:
    # keep one sentence: full stops inside quotes or values become commas
    body = text.strip().rstrip(".")
    body = re.sub(r"(?<=\S)[.!?।]+(?=\s|\"|$)", ",", body).rstrip(",")
    out = body[: limit - 1].rstrip() + "."
    return out


def _first(entities: list[Entity], kind: str) -> str | None:
    return next((e.value for e in entities if e.kind == kind), None)


def _charge_date(entities: list[Entity]) -> str | None:
    """The date that goes with the (first) amount: a calendar date before a relative one, the amount's
    own turn first."""
    dates = [e for e in entities if e.kind == "date"]
    if not dates:
        return None
    amount = next((e for e in entities if e.kind == "amount"), None)
    turn = amount.turn if amount else -1
    best = sorted(dates, key=lambda e: (not e.value[:1].isdigit(), e.turn != turn))[0]
    return best.value


def _when(date: str | None) -> str:
    if not date:
        return ""
    if date[:1].isdigit() or date in WEEKDAYS.values():
        return f" on {date}"
    return f" {date}"  # "last week", "yesterday"


_PAST = ("last ", "yesterday", "the day before")


def _booking_dates(entities: list[Entity]) -> list[str]:
    """[old, new] when one turn names a calendar range ("from the 5th of April to the 8th"), else
    [new]: the last date that is not in the past ("last month" says when it was booked), or []."""
    dates = [e for e in entities if e.kind == "date"]
    by_turn: dict[int, list[str]] = {}
    for e in dates:
        if e.value[:1].isdigit():
            by_turn.setdefault(e.turn, []).append(e.value)
    ranges = [v for v in by_turn.values() if len(v) >= 2]
    if ranges:
        return ranges[-1][:2]
    future = [e.value for e in dates if not e.value.startswith(_PAST) and "कल" not in e.value]
    return future[-1:]


_SHORT_ACTION = {
    "billing_dispute": "verify and refund",
    "complaint": "apologise and own the fix",
    "booking_change": "change the booking",
    "order_tracking": "look up the order",
    "regulated": "verify identity and follow procedure",
    "human_request": "take over the call",
    "sales_qualification": "answer and qualify",
    "document_support": "help with the document",
}


def _next_action(cls: str, entities: list[Entity], tone: str) -> str:
    amount = _first(entities, "amount")
    order, booking = _first(entities, "order_ref"), _first(entities, "booking_ref")
    card = _first(entities, "card_last4") or _first(entities, "account_last4")
    on = _when(_charge_date(entities))
    if cls == "billing_dispute":
        charge = f"the duplicate charge of {amount}{on}" if amount else f"the disputed charge{on}"
        where = f" on the card ending {card}" if card else ""
        act = f"verify {charge}{where} and refund it if it was charged twice"
    elif cls == "booking_change":
        ref = f"booking {booking or order}" if (booking or order) else "the booking"
        old_new = _booking_dates(entities)
        if len(old_new) == 2:
            act = f"move {ref} from {old_new[0]} to {old_new[1]} and confirm the new date to the caller"
        elif old_new:
            act = f"change {ref} to {old_new[0]} and confirm the new date to the caller"
        else:
            act = f"ask for the new date, change {ref} and confirm it to the caller"
    elif cls == "order_tracking":
        ref = f"order {order}" if order else "the caller's order (ask for the order number)"
        act = f"look up {ref} and tell the caller where it is and when it will arrive"
    elif cls == "complaint":
        act = "acknowledge the repeated problem, take ownership of fixing it and agree a call-back time"
    elif cls == "regulated":
        act = "verify the caller's identity and follow the fraud and regulated-matters procedure (block the card if lost or stolen)"
    elif cls == "human_request":
        act = "take over the conversation, ask what the caller needs and resolve it"
    elif cls == "sales_qualification":
        act = "answer the caller's product question and qualify the lead"
    elif cls == "document_support":
        act = "help the caller with the document or statement they asked about"
    else:
        act = "answer the caller's question"
    if tone == "angry":
        act = "apologise first, then " + act
    elif tone == "frustrated":
        act = "acknowledge the caller's frustration, then " + act
    return act[0].upper() + act[1:] + "."


# ---------------------------------------------------------------- the whisper


def _spoken_amount(value: str) -> str:
    num, _, cur = value.partition(" ")
    return f"{num} " + {"INR": "rupees", "USD": "dollars", "EUR": "euros", "GBP": "pounds"}.get(cur, cur)


def whisper_sentence(summary: HandoffSummary) -> str:
    """The one sentence played to the human before the caller is connected, e.g.
    "Billing dispute, angry caller, urgent: 2400 rupees on 12 March; verify the duplicate charge ..."."""
    try:
        head = f"{_label(summary.routing_class)}, {summary.tone} caller" + (
            ", urgent" if summary.urgency == "high" else ""
        )
        facts: list[str] = []
        ents = summary.entities
        amount = _first(ents, "amount")
        if amount:
            facts.append(_spoken_amount(amount) + _when(_charge_date(ents)))
        elif summary.routing_class == "booking_change" and (dates := _booking_dates(ents)):
            facts.append(("from " if len(dates) == 2 else "to ") + " to ".join(dates))
        for kind, say in (("order_ref", "order"), ("booking_ref", "booking"), ("card_last4", "card ending")):
            v = _first(ents, kind)
            if v:
                facts.append(f"{say} {v}")
        name = _first(ents, "name")
        if name:
            facts.insert(0, name)
        if not facts:
            said = summary.reason.split(":", 1)[-1].replace("the caller said", "").strip(' ."')
            said = said.split('" and asked')[0].strip(' ."')
            facts.append(f'"{_clip(said, 12)}"' if summary.source == "deterministic" else _clip(said, 12))
        if "asked for a person" in summary.reason:
            facts.append("asked for a person")
        action = _SHORT_ACTION.get(summary.routing_class) or summary.next_action.strip().rstrip(".")
        action = action[0].lower() + action[1:] if action else ""
        sentence = f"{head}: {', '.join(facts)}" + (f"; {action}" if action else "")
        return _one_sentence(sentence, 300)
    except Exception:
        log.exception("whisper sentence failed")
        return "Transferred call; please read the handoff summary."
