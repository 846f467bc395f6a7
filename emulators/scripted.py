"""A scripted responder for the emulated LLM tiers, driven by the runtime's routing class.

The offline stack has no local model that fits the latency budget, so the fast and reasoning tiers
stay emulated; this module makes their replies fit the turn: order tracking asks for the order
number (or reports on it once given), a billing dispute is acknowledged and escalated, and so on.

How the class arrives: the runtime's ``ClassTaggedLLM`` (agent/providers/local/) appends one
system message ``voxroute-routing-class: <class>`` to the request. Without that line this responder
steps aside (``reply`` returns None) and the emulator's keyword templates answer as before.

Pure functions, deterministic in the conversation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MARKER = "voxroute-routing-class:"
ACK_MARKER = "voxroute-reply: acknowledgement"  # the fast path's one sentence before a reasoning answer

_DEVANAGARI = re.compile(r"[\u0900-\u097F]")
_ORDER_ID = re.compile(r"\b(?:([A-Za-z])-?\s?)?(\d{3,})\b")
_DIGIT_WORDS = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "शून्य": "0",
    "एक": "1",
    "दो": "2",
    "तीन": "3",
    "चार": "4",
    "पाँच": "5",
    "पांच": "5",
    "छह": "6",
    "सात": "7",
    "आठ": "8",
    "नौ": "9",
}
_THANKS = ("thank", "thanks", "bye", "that's all", "that is all", "great", "धन्यवाद", "शुक्रिया")

EN: dict[str, tuple[str, ...]] = {
    "ack": (
        "I see, let me look into that.",
        "Right, I have noted that.",
        "Understood, let me check that for you.",
    ),
    "order_ask": (
        "I can check that for you. Could you tell me your order number?",
        "Sure, let me look that up. What is the order number, please?",
    ),
    "order_found": (
        "Thanks. Order {id} has shipped and should reach you within two days.",
        "I found order {id}. It is out for delivery and should arrive today.",
    ),
    "billing_dispute": (
        "I am sorry you were charged incorrectly. I have opened a dispute on that charge and I am "
        "escalating it to our billing team now.",
        "I understand, and I have noted the disputed charge. A billing specialist will take it from here.",
    ),
    "booking_change": (
        "Sure, I can change your booking. Which date would suit you instead?",
        "Done, I have moved your booking. You will get a confirmation message shortly.",
    ),
    "complaint": (
        "I am really sorry about this. I have recorded your complaint and escalated it to a supervisor.",
        "I hear you, and I apologise. Your complaint is logged and a senior colleague will follow up today.",
    ),
    "human_request": (
        "Of course. I am connecting you to a member of our team now.",
        "Certainly, let me put you through to a colleague.",
    ),
    "regulated": (
        "For your security I am escalating this to our fraud team right away. Please do not share your PIN.",
        "I have flagged this as urgent with our security team. They will contact you shortly.",
    ),
    "sales_qualification": (
        "Happy to tell you about our plans. What are you mainly looking for?",
        "Good question. Could you tell me roughly how much you would use it each month?",
    ),
    "document_support": (
        "I can help with documents. Which statement or form do you need?",
        "You can download that from your account page, and I can also email it to you.",
    ),
    "faq": (
        "Happy to help. What would you like to know?",
        "Sure. Is there anything else I can help you with?",
    ),
    "thanks": ("You are welcome. Have a great day.", "Glad I could help. Goodbye."),
    "out_of_scope": (
        "I am sorry, I can only help with questions about your account and orders.",
        "That is outside what I can help with, but I am happy to help with your account.",
    ),
}
HI: dict[str, tuple[str, ...]] = {
    "ack": ("जी, मैं देखती हूँ।", "जी, मैंने नोट कर लिया है।"),
    "order_ask": ("मैं आपका ऑर्डर देखती हूँ। कृपया अपना ऑर्डर नंबर बताइए।", "ज़रूर, आपका ऑर्डर नंबर क्या है?"),
    "order_found": ("धन्यवाद। ऑर्डर {id} भेज दिया गया है और दो दिन में पहुँच जाएगा।",),
    "billing_dispute": (
        "असुविधा के लिए माफ़ी चाहती हूँ। मैंने इस चार्ज पर शिकायत दर्ज कर दी है और बिलिंग टीम को भेज रही हूँ।",
    ),
    "complaint": ("मुझे खेद है। आपकी शिकायत दर्ज कर ली गई है और वरिष्ठ अधिकारी को भेज दी गई है।",),
    "human_request": ("ज़रूर, मैं आपको अभी हमारी टीम के सदस्य से जोड़ रही हूँ।",),
    "thanks": ("आपका धन्यवाद। आपका दिन शुभ हो।",),
    "generic": ("जी, मैं आपकी मदद करती हूँ। आप क्या जानना चाहेंगे?",),
}


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def routing_class(messages: list[dict[str, Any]]) -> str | None:
    """The class named by the runtime's marker line (the last one wins), or None."""
    found = None
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "system":
            text = _text(m).strip()
            if text.startswith(MARKER):
                found = text[len(MARKER) :].strip() or None
    return found


def order_id(text: str) -> str | None:
    """An order id typed or spoken: "A1745", "A-1745", "a 1745", "A one seven four five", keypad digits."""
    tokens = []
    for w in re.findall(r"[A-Za-z]+|\d+|[\u0900-\u097F]+", text):
        digit = _DIGIT_WORDS.get(w.lower()) if len(w) > 1 or w.lower() == "o" else None
        if digit is not None or w.isdigit():
            if tokens and tokens[-1].isdigit():
                tokens[-1] += digit or w
            else:
                tokens.append(digit or w)
        else:
            tokens.append(w)
    for candidate in (text, " ".join(tokens)):
        if m := _ORDER_ID.search(candidate):
            return f"{(m.group(1) or '').upper()}{m.group(2)}"
    return None


def reply(messages: list[dict[str, Any]]) -> str | None:
    """The scripted reply for the turn, or None when the request carries no routing class."""
    cls = routing_class(messages)
    if cls is None:
        return None
    users = [_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last = users[-1] if users else ""
    variant = max(len(users) - 1, 0)
    hindi = bool(_DEVANAGARI.search(last))
    table = HI if hindi else EN
    if any(isinstance(m, dict) and m.get("role") == "system" and _text(m) == ACK_MARKER for m in messages):
        options = table["ack"]  # what the acknowledgement prompt asks for: not the answer itself
        return options[variant % len(options)]
    low = last.lower()
    key = cls
    if cls == "order_tracking" or (cls == "faq" and any("order" in u.lower() for u in users[:-1])):
        found = order_id(last)
        if found:
            return table["order_found"][variant % len(table["order_found"])].format(id=found)
        if cls == "order_tracking":
            key = "order_ask"
    if key in ("faq", "out_of_scope", "order_ask") and any(w in low for w in _THANKS) and len(users) > 1:
        key = "thanks"
    options = table.get(key) or table.get("generic") or EN["faq"]
    return options[min(variant, len(options) - 1)]  # the conversation moves on; the last line repeats


# ---------------------------------------------------------------- scripted tool calls


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """A tool call the emulated model makes when the caller's last words contain ``match``.

    ``arguments``: a dict (sent as JSON, cut into fragments), or a string sent as it is (a model's
    broken JSON). ``rounds``: how many tool rounds the model asks for after those words (more than
    one: a model that loops). ``offered_only``: only when the request offers a tool of that name
    (False: the model calls a tool that does not exist)."""

    match: str
    name: str
    arguments: dict[str, Any] | str
    rounds: int = 1
    offered_only: bool = True

    @classmethod
    def from_json(cls, obj: Any) -> ScriptedCall:
        if not isinstance(obj, dict):
            raise TypeError("a scripted tool call is a JSON object")
        args = obj.get("arguments", {})
        if not isinstance(obj.get("match"), str) or not isinstance(obj.get("name"), str):
            raise TypeError("match and name must be strings")
        if not isinstance(args, dict | str):
            raise TypeError("arguments must be an object or a string")
        rounds = obj.get("rounds", 1)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError("rounds must be a positive integer")
        return cls(normalise(obj["match"]), obj["name"], args, rounds, bool(obj.get("offered_only", True)))


def normalise(text: str) -> str:
    """Lower case, letters and digits only, single spaces, digit words as digits and digit runs
    joined ("It's A one seven four five" and "it's a 1745" both give "it s a 1745"): how scripted
    words are matched, whoever transcribed them."""
    out: list[str] = []
    for word in re.findall(r"\w+", text.lower()):
        digit = _DIGIT_WORDS.get(word) if word not in ("oh", "o") else None
        word = digit or word
        if word.isdigit() and out and out[-1].isdigit():
            out[-1] += word
        else:
            out.append(word)
    return " ".join(out)


def conversation(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages without the runtime's trailing system lines (the routing-class marker)."""
    end = len(messages)
    while end and isinstance(messages[end - 1], dict) and messages[end - 1].get("role") == "system":
        end -= 1
    return messages[:end]


def script_from_fixtures(fixtures: Any) -> list[ScriptedCall]:
    """The ``expect_tool`` of every fixture utterance (agent/fixture.py) as scripted calls on its words."""
    out = []
    for fixture in fixtures:
        for utt in fixture.script.utterances:
            expect = getattr(utt, "expect_tool", None)
            if expect is not None and utt.text:
                out.append(ScriptedCall(normalise(utt.text), expect.name, dict(expect.arguments)))
    return out


def _is_note(text: str) -> bool:
    """A runtime's note in the user role ("(Your reply was cut off...)"), not the caller's words."""
    text = text.strip()
    return text.startswith("(") and text.endswith(")")


def caller_words(messages: list[dict[str, Any]]) -> tuple[str, int]:
    """The caller's last words, and the tool rounds the model took since the last user message."""
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return "", 0
    last = users[-1]
    rounds = sum(
        1
        for m in messages[last + 1 :]
        if isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls")
    )
    for i in reversed(users):
        text = _text(messages[i])
        if not _is_note(text):
            return text, rounds
    return "", rounds


def scripted_calls(
    script: list[ScriptedCall], messages: list[dict[str, Any]], offered: set[str]
) -> list[tuple[str, dict[str, Any] | str]]:
    """The calls ``script`` makes for this request (none unless tools are offered, and none once the
    entry's rounds are used up since the caller's words)."""
    messages = conversation(messages)
    if not offered or not script or not messages or not isinstance(messages[-1], dict):
        return []
    if messages[-1].get("role") not in ("user", "tool"):
        return []
    words, rounds = caller_words(messages)
    said = normalise(words)
    return [
        (c.name, c.arguments)
        for c in script
        if c.match
        and normalise(c.match) in said
        and rounds < c.rounds
        and (c.name in offered or not c.offered_only)
    ]


def after_tools(messages: list[dict[str, Any]]) -> str | None:
    """The reply once tool results came back (the last message is a tool message), or None: the
    result's status is said ("Order A1745 is shipped"); an error result gets an apology."""
    messages = conversation(messages)
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "tool":
        return None
    results: list[dict[str, Any]] = []
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") != "tool":
            break
        try:
            value = json.loads(_text(m) or "{}")
        except ValueError:
            value = {"error": "unreadable"}
        results.append(value if isinstance(value, dict) else {"result": value})
    results.reverse()
    if any("error" in r for r in results):
        return "I'm sorry, I can't reach our order system right now. Shall I have someone call you back?"
    parts = []
    for r in results:
        if "status" in r:
            ident = r.get("order_id") or r.get("id")
            part = f"Order {ident} is {r['status']}" if ident else f"It is {r['status']}"
            if r.get("eta"):
                part += f", arriving {r['eta']}"
            parts.append(part + ".")
        elif r.get("return_id"):
            parts.append(f"I have started your return, reference {r['return_id']}.")
        elif r:
            key, value = next(iter(r.items()))
            parts.append(f"Done: {key.replace('_', ' ')} {value}.")
    return " ".join(parts) or "Done. Is there anything else I can help with?"
