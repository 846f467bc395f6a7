"""Loopback emulator of OpenAI-compatible chat completions: OpenRouter, Sarvam, CallMissed (and plain OpenAI).

One app instance emulates one provider, chosen by ``flavor`` (they would clash on ``/v1``):

=============  ===============================================  ==========================================
flavor         paths                                            auth failure (when ``api_key`` is set)
=============  ===============================================  ==========================================
openrouter     ``POST /api/v1/chat/completions``                401, ``{"error":{"code":401,...}}``
sarvam         ``POST /v1/chat/completions``, ``/v2/...``       403, ``code: "invalid_api_key_error"``
callmissed     ``POST /v1/chat/completions``                    401, ``code: "invalid_api_key"`` (OpenAI shape)
openai         ``POST /v1/chat/completions``                    as callmissed
=============  ===============================================  ==========================================

Sarvam is strict: any top-level field outside its allow-list (per version) gets 400
``invalid_request_error`` naming the field in ``param``; so do a ``developer`` role and ``tool_choice``
without ``tools``.

Streams follow ``docs/reference/openai_compatible.md`` §3: a role chunk with empty content,
content chunks (one word piece each: a word plus its trailing space), a finish chunk, a usage chunk
with empty ``choices`` (OpenRouter always, with ``cost``; the others only with
``stream_options.include_usage``), ``data: [DONE]``. The openrouter flavor sends
``: OPENROUTER PROCESSING`` keep-alives before the first token and every few tokens. Reasoning-tier
models (the name contains "reason", or listed in ``reasoning_models``) first stream a reasoning delta
(``reasoning`` on OpenRouter, ``reasoning_content`` elsewhere) and answer a little longer.

Timing comes from ``dice.llm_timing(reasoning)``; faults from ``dice.request_fault("llm")`` (see
:data:`voxroute.emulators.profiles.EMULATED_FAULTS`): ``http_500``, ``http_429`` (Retry-After: 1),
``error_midstream`` (a few tokens, then an error chunk: top-level ``error`` plus
``finish_reason: "error"``; the code alternates int 502 / string "server_error"), ``hang`` (no byte
until the client goes away), ``stall`` (keep-alive comments only, forever), ``malformed`` (a
``data: {not json`` line after a few tokens), ``drop`` (the connection is closed mid-stream, no
``[DONE]``). On openrouter, a request with ``models`` answers an ``http_500``/``http_429`` of the
primary from the next model (reported in ``model``); such absorbed faults are counted in stats, not
in the fault log.

Control endpoints: ``GET /_emulator/faults`` -> ``[FaultRecord.as_dict()...]`` (tag = the
``X-Voxroute-Tag`` header); ``POST /_emulator/force`` ``{"service": "llm", "fault": ...}``;
``GET /_emulator/stats`` -> ``{"requests", "connections" (distinct TCP peers), "fallbacks", "active"
(responses in progress)}``; ``POST /_emulator/behaviour`` ``{"model": "x" | null, "ttft_median_s",
"ttft_p95_s", "tps", "fault"}`` makes one model (or, with ``model`` null, every model of this provider)
behave so until ``DELETE /_emulator/behaviour``: a slow model, a hung one, a provider that is down.

Replies come from :func:`respond`, a pure template responder, and tool calls from
:func:`plan_tool_calls`. Scripted tool calls (``voxroute.emulators.scripted.ScriptedCall``: a fixture
utterance's ``expect_tool``, or ``POST /_emulator/tools`` ``[{"match", "name", "arguments", "rounds",
"offered_only"}]``, cleared by ``DELETE /_emulator/tools``) come first: the model calls that tool
when the caller's last words contain ``match``, streamed as real providers do (the name in the
first fragment, the arguments in pieces). Once tool results are back the model says what they hold
(:func:`voxroute.emulators.scripted.after_tools`).

Run standalone: ``python -m voxroute.emulators.llm --flavor openrouter --port 8101``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from voxroute.emulators import scripted
from voxroute.emulators.profiles import EMULATED_FAULTS, Dice, FaultRecord, Latency
from voxroute.emulators.recent import Recent

log = logging.getLogger(__name__)

EMULATOR_FLAVORS = ("openrouter", "sarvam", "callmissed", "openai")
OPENROUTER_KEEPALIVE = b": OPENROUTER PROCESSING\n\n"
GENERIC_KEEPALIVE = b": keep-alive\n\n"
FAULT_AFTER_TOKENS = 3  # error_midstream / malformed / drop happen after this many content tokens
KEEPALIVE_EVERY_TOKENS = 4  # openrouter: a keep-alive comment after every 4th token

# What Sarvam accepts (sarvamai 0.1.39 chat/raw_client.py; v1 once also had wiki_grounding).
_SARVAM_V1_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "temperature",
        "top_p",
        "reasoning_effort",
        "max_tokens",
        "stop",
        "n",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "tools",
        "tool_choice",
        "response_format",
        "wiki_grounding",
    }
)
SARVAM_FIELDS = {
    "v1": _SARVAM_V1_FIELDS,
    "v2": (_SARVAM_V1_FIELDS - {"wiki_grounding"})
    | {"top_k", "min_p", "repetition_penalty", "parallel_tool_calls", "stream_options"},
}
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})

# Notional prices (USD per million tokens) for OpenRouter's reported cost, for models without a
# price of their own (``LLMEmulator(prices=...)``: model id -> (input, output)).
PRICE_FAST = (0.10, 0.40)
PRICE_REASONING = (1.00, 4.00)


# ---------------------------------------------------------------- the template responder

_DEVANAGARI = re.compile(r"[\u0900-\u097F]")
_ORDER_ID = re.compile(r"\b([A-Za-z]{1,3}-?\d{2,}|\d{4,})\b")
_DTMF = re.compile(r"^\s*(?:dtmf[:\s]*)?([0-9*#][0-9*#\s]*)$", re.IGNORECASE)
_WORD = re.compile(r"\S+\s*")

_HUMAN = ("human", "person", "agent", "representative", "manager", "supervisor", "someone real", "transfer")
_BILLING = (
    "charged twice",
    "double charge",
    "charged",
    "refund",
    "dispute",
    "billing",
    "overcharg",
    "payment",
)
_BOOKING = ("booking", "reschedul", "appointment", "reservation", "change my", "move my", "flight")
_ORDER = ("order", "package", "parcel", "delivery", "deliver", "shipped", "shipping", "track")
_COMPLAINT = (
    "complain",
    "angry",
    "terrible",
    "ridiculous",
    "unacceptable",
    "upset",
    "worst",
    "stop",
    "useless",
)

_EN = {
    "order_ask": (
        "I can check that for you. Could you tell me your order number?",
        "Happy to help with your order. What is the order number, please?",
        "Sure, let me look that up. Can you read me the order number?",
    ),
    "order_found": (
        "Thanks. Order {id} has shipped and should reach you within two days.",
        "I found order {id}. It is out for delivery and should arrive today.",
        "Order {id} is packed and will ship by tomorrow morning.",
    ),
    "billing": (
        "I am sorry about that. I will look into the charge on your account right away.",
        "I apologise for the trouble. Let me look into that charge and get it sorted for you.",
        "Sorry about the extra charge. I am checking the payment now and will refund anything taken twice.",
    ),
    "booking": (
        "Done, I have changed your booking. You will get a confirmation message shortly.",
        "Your booking change is confirmed. Is there anything else you would like to adjust?",
        "I have moved your booking as requested. The new details are on their way to you.",
    ),
    "human": (
        "I am really sorry for the trouble. I can connect you to a person right away, would you like that?",
        "I apologise for this experience. Shall I transfer you to a colleague who can take this further?",
        "I am sorry this has been frustrating. A member of our team can help you, may I put you through?",
    ),
    "dtmf": (
        "I got {digits}. Thank you.",
        "Thanks, I have {digits}.",
        "Noted, you entered {digits}.",
    ),
    "generic": (
        "Sure, I can help with that. Could you tell me a little more?",
        "Thanks for calling. What can I help you with today?",
        "Of course. Tell me the details and I will take care of it.",
    ),
}
_HI = {
    "order_ask": (
        "मैं आपका ऑर्डर देखती हूँ। कृपया अपना ऑर्डर नंबर बताइए।",
        "ज़रूर, आपका ऑर्डर नंबर क्या है?",
        "मैं मदद करती हूँ। अपना ऑर्डर नंबर बोलिए।",
    ),
    "billing": (
        "असुविधा के लिए माफ़ी चाहती हूँ। मैं इस चार्ज की जाँच करती हूँ।",
        "माफ़ कीजिए। मैं अभी आपके भुगतान की जाँच करती हूँ।",
        "क्षमा करें, मैं इस शुल्क को देखकर आपका पैसा लौटाने की व्यवस्था करती हूँ।",
    ),
    "human": (
        "माफ़ कीजिए। मैं आपको अभी किसी सहकर्मी से जोड़ सकती हूँ।",
        "असुविधा के लिए खेद है। क्या मैं आपको किसी व्यक्ति से जोड़ दूँ?",
        "मुझे खेद है। हमारी टीम का कोई सदस्य आपकी मदद करेगा।",
    ),
    "generic": (
        "जी, मैं आपकी मदद करती हूँ। आप क्या जानना चाहेंगे?",
        "नमस्ते, बताइए मैं आपकी क्या सहायता करूँ?",
        "ज़रूर। थोड़ा और बताइए, मैं देखती हूँ।",
    ),
}
_EN_REASONING_TAIL = " I have double-checked this against your account."
_HI_REASONING_TAIL = " मैंने आपके खाते से इसकी पुष्टि कर ली है।"
_HI_ORDER = ("ऑर्डर", "डिलीवरी", "पार्सल")
_HI_BILLING = ("पैसे", "रिफंड", "चार्ज", "भुगतान", "दो बार")
_HI_HUMAN = ("इंसान", "एजेंट", "व्यक्ति", "किसी से बात")


def message_text(message: dict[str, Any]) -> str:
    """The text of a message whose content is a string or a list of ``{"type": "text"}`` parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def is_reasoning_model(model: str, reasoning_models: frozenset[str] | set[str] = frozenset()) -> bool:
    return "reason" in model.lower() or model in reasoning_models


def _intent(text: str) -> str:
    low = text.lower()
    for name, words in (("human", _HUMAN), ("billing", _BILLING), ("booking", _BOOKING), ("order", _ORDER)):
        if any(w in low for w in words):
            return name
    if any(w in low for w in _COMPLAINT):
        return "human"
    return "generic"


def respond(model: str, messages: list[dict[str, Any]], *, reasoning: bool | None = None) -> str:
    """The emulated model's reply: deterministic in (model, conversation), 1-3 short sentences.

    The intent comes from the last user message; the variant from the turn number (the count of user
    messages) and the model, so consecutive turns of one conversation never repeat a reply. Reasoning-tier
    models (``reasoning``, by default "reason" in the name) add a sentence.
    """
    if reasoning is None:
        reasoning = is_reasoning_model(model)
    users = [message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    turn = len(users)
    text = users[-1] if users else ""
    variant = (turn - 1 + zlib.crc32(model.encode())) % 3
    if _DEVANAGARI.search(text):
        if any(w in text for w in _HI_HUMAN):
            key = "human"
        elif any(w in text for w in _HI_BILLING):
            key = "billing"
        elif any(w in text for w in _HI_ORDER):
            key = "order_ask"
        else:
            key = {"human": "human", "billing": "billing", "order": "order_ask"}.get(_intent(text), "generic")
        return _HI[key][variant] + (_HI_REASONING_TAIL if reasoning else "")
    if m := _DTMF.match(text):
        digits = [c for c in m.group(1) if not c.isspace()]
        reply = _EN["dtmf"][variant].format(digits=" ".join(digits))
        if any(_intent(u) == "order" for u in users[:-1]):
            reply += " Let me check that order."
        return reply + (_EN_REASONING_TAIL if reasoning else "")
    intent = _intent(text)
    order_id = _ORDER_ID.search(text)
    if intent == "generic" and order_id and any(_intent(u) == "order" for u in users[:-1]):
        intent = "order"  # "It's A17" after "where is my order"
    if intent == "order":
        reply = (
            _EN["order_found"][variant].format(id=order_id.group(1))
            if order_id
            else _EN["order_ask"][variant]
        )
    else:
        reply = _EN[intent][variant]
    return reply + (_EN_REASONING_TAIL if reasoning else "")


def tool_names(tools: Any) -> set[str]:
    names = set()
    for tool in tools or []:
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            name = tool["function"].get("name")
            if isinstance(name, str):
                names.add(name)
    return names


def plan_tool_calls(messages: list[dict[str, Any]], tools: Any) -> list[tuple[str, dict[str, Any]]]:
    """Tool calls the emulated model makes: ``transfer_to_human`` when the caller asks for a person (or a
    transfer) and ``lookup_order`` when an order id is given, if offered. Both at once = parallel calls.
    Nothing unless the last message is the user's (after a tool result the model answers in text)."""
    names = tool_names(tools)
    if not names or not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return []
    text = message_text(messages[-1])
    low = text.lower()
    calls: list[tuple[str, dict[str, Any]]] = []
    if "lookup_order" in names and (m := _ORDER_ID.search(text)):
        calls.append(("lookup_order", {"order_id": m.group(1)}))
    if "transfer_to_human" in names and any(
        w in low for w in ("transfer", "human", "person", "representative")
    ):
        calls.append(("transfer_to_human", {"reason": "caller asked for a person"}))
    if "mark_resolved" in names and not calls and any(w in low for w in _CLOSINGS):
        calls.append(("mark_resolved", {"summary": "the caller said that is all"}))
    return calls


# A caller's closing words: the emulated model marks the call resolved (with its spoken reply).
_CLOSINGS = ("that's all", "that is all", "thank you", "thanks", "bye", "धन्यवाद", "शुक्रिया")
SPOKEN_TOOLS = {"mark_resolved"}  # tools a model calls beside its text, not instead of it


def word_pieces(text: str) -> list[str]:
    """The emulator's "tokens": one word plus its trailing whitespace each."""
    return _WORD.findall(text)


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(message_text(m).split()) + 4 for m in messages if isinstance(m, dict))


# ---------------------------------------------------------------- the app


def _arguments_text(args: dict[str, Any] | str) -> str:
    """A call's arguments as the model sends them: JSON, or a scripted string as it is (broken JSON)."""
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class _ASGIResponse(Response):
    """A response that drives ``send`` itself (timed streams, faults that break the protocol)."""

    def __init__(self, run: Callable[[Callable, Callable], Awaitable[None]]) -> None:
        super().__init__()
        self._run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._run(receive, send)


async def _until_disconnect(receive: Callable, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``; cancel it when the client goes away (uvicorn's send is silent after a disconnect)."""
    async with asyncio.TaskGroup() as tg:
        job = tg.create_task(work)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            job.cancel()

        watcher = tg.create_task(watch())
        job.add_done_callback(lambda _: watcher.cancel())


class LLMEmulator:
    """State of one emulated provider; ``app`` is its FastAPI application."""

    def __init__(
        self,
        dice: Dice,
        flavor: str = "openrouter",
        api_key: str | None = None,
        reasoning_models: frozenset[str] | set[str] = frozenset(),
        keepalive_interval_s: float = 0.1,
        prices: dict[str, tuple[float, float]] | None = None,
        tool_script: list[scripted.ScriptedCall] | None = None,
    ) -> None:
        if flavor not in EMULATOR_FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; choose one of {EMULATOR_FLAVORS}")
        self.dice = dice
        self.flavor = flavor
        self.api_key = api_key
        self.reasoning_models = frozenset(reasoning_models)
        self.keepalive_interval_s = keepalive_interval_s
        self.prices = dict(prices or {})
        self.faults: list[FaultRecord] = Recent()
        self.requests = 0
        self.connections: set[tuple[str, int]] = set()
        self.fallbacks = 0
        self.active = 0  # responses being produced now (a cancelled client brings it back down)
        self._seq = 0
        self._midstream_errors = 0
        self.model_requests: dict[str, int] = {}  # requests per model id
        self.behaviours: dict[str | None, Behaviour] = {}  # model (None = every model) -> behaviour
        self.tool_script: list[scripted.ScriptedCall] = list(tool_script or [])
        self.keepalive = OPENROUTER_KEEPALIVE if flavor == "openrouter" else GENERIC_KEEPALIVE
        self.app = self._build_app()

    # ---- app and control endpoints

    def _build_app(self) -> FastAPI:
        app = FastAPI(title=f"voxroute LLM emulator ({self.flavor})")
        app.state.emulator = self
        if self.flavor == "openrouter":
            app.add_route("/api/v1/chat/completions", self._route("v1"), methods=["POST"])
        else:
            app.add_route("/v1/chat/completions", self._route("v1"), methods=["POST"])
            if self.flavor == "sarvam":
                app.add_route("/v2/chat/completions", self._route("v2"), methods=["POST"])

        @app.get("/_emulator/faults")
        async def faults() -> list[dict]:
            return [f.as_dict() for f in self.faults]

        @app.post("/_emulator/force")
        async def force(request: Request) -> JSONResponse:
            try:
                body = await request.json()
                self.dice.force(body["service"], body["fault"])
            except (ValueError, KeyError, TypeError) as e:
                log.warning("llm emulator: bad force request: %r", e)
                return JSONResponse(
                    {"error": f"bad force request: {e}", "faults": list(EMULATED_FAULTS)}, 400
                )
            return JSONResponse({"ok": True})

        @app.post("/_emulator/behaviour")
        async def behaviour(request: Request) -> JSONResponse:
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise TypeError("the body must be a JSON object")
                model = body.pop("model", None)
                self.behave(model, **body)
            except (ValueError, TypeError) as e:
                log.warning("llm emulator: bad behaviour request: %r", e)
                return JSONResponse({"error": f"bad behaviour request: {e}"}, 400)
            return JSONResponse({"ok": True})

        @app.delete("/_emulator/behaviour")
        async def clear_behaviour() -> JSONResponse:
            self.behaviours.clear()
            return JSONResponse({"ok": True})

        @app.post("/_emulator/tools")
        async def script_tools(request: Request) -> JSONResponse:
            try:
                body = await request.json()
                if not isinstance(body, list):
                    raise TypeError("the body must be a JSON list")
                self.tool_script.extend(scripted.ScriptedCall.from_json(item) for item in body)
            except (ValueError, TypeError) as e:
                log.warning("llm emulator: bad tool script: %r", e)
                return JSONResponse({"error": f"bad tool script: {e}"}, 400)
            return JSONResponse({"ok": True, "scripted": len(self.tool_script)})

        @app.delete("/_emulator/tools")
        async def clear_tools() -> JSONResponse:
            self.tool_script.clear()
            return JSONResponse({"ok": True})

        @app.get("/_emulator/stats")
        async def stats() -> dict:
            return {
                "requests": self.requests,
                "connections": len(self.connections),
                "fallbacks": self.fallbacks,
                "active": self.active,
            }

        return app

    def behave(
        self,
        model: str | None = None,
        *,
        ttft_median_s: float | None = None,
        ttft_p95_s: float | None = None,
        tps: float | None = None,
        fault: str | None = None,
    ) -> None:
        """From now on, requests for ``model`` (None: any model) take this latency and/or this fault
        on every request (a persistent fault: a hung model, a provider that is down)."""
        if fault is not None and fault not in EMULATED_FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {EMULATED_FAULTS}")
        for name, v in (("ttft_median_s", ttft_median_s), ("ttft_p95_s", ttft_p95_s), ("tps", tps)):
            if v is not None and (not isinstance(v, int | float) or v < 0):
                raise ValueError(f"{name} must be a non-negative number")
        ttft = None
        if ttft_median_s is not None:
            ttft = Latency(ttft_median_s, ttft_p95_s if ttft_p95_s is not None else ttft_median_s)
        self.behaviours[model] = Behaviour(ttft=ttft, tps=tps, fault=fault)

    def _behaviour(self, model: str) -> Behaviour | None:
        return self.behaviours.get(model) or self.behaviours.get(None)

    def _route(self, version: str) -> Callable[[Request], Awaitable[Response]]:
        async def chat(request: Request) -> Response:
            try:
                return await self._chat(request, version)
            except ClientDisconnect:
                log.info("llm emulator: client went away before its request was read")
                return Response(status_code=499)
            except Exception:  # never crash the server on a request we did not foresee
                log.exception("llm emulator: request failed")
                return self._error(500, "server", "emulator internal error")

        return chat

    # ---- errors in each provider's envelope

    def _error(
        self, status: int, reason: str, message: str, *, param: str | None = None, headers=None
    ) -> JSONResponse:
        """``reason``: auth | bad_request | rate | server."""
        if self.flavor == "openrouter":
            err: dict[str, Any] = {"code": status, "message": message}
            if reason in ("rate", "server"):
                err["metadata"] = {"provider_name": "Emulated", "raw": message}
        elif self.flavor == "sarvam":
            code = {
                "auth": "invalid_api_key_error",
                "bad_request": "invalid_request_error",
                "rate": "rate_limit_exceeded_error",
                "server": "internal_server_error",
            }[reason]
            date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
            err = {
                "message": message,
                "code": code,
                "request_id": f"{date}_{uuid.UUID(int=self._seq, version=4)}",
            }
            if param:
                err["param"] = param
        else:
            etype, code = {
                "auth": ("invalid_request_error", "invalid_api_key"),
                "bad_request": ("invalid_request_error", "invalid_request"),
                "rate": ("rate_limit_error", "rate_limit_exceeded"),
                "server": ("server_error", "provider_error"),
            }[reason]
            err = {"message": message, "type": etype, "code": code}
            if param:
                err["param"] = param
        return JSONResponse({"error": err}, status_code=status, headers=headers)

    def _authorized(self, request: Request) -> bool:
        if not self.api_key:
            return True
        bearer = request.headers.get("authorization", "") == f"Bearer {self.api_key}"
        if self.flavor == "sarvam":
            return bearer or request.headers.get("api-subscription-key") == self.api_key
        return bearer

    def _validate(self, body: Any, version: str) -> tuple[str, str | None] | None:
        """(message, param) of the first problem, or None."""
        if not isinstance(body, dict):
            return "request body must be a JSON object", None
        if self.flavor == "sarvam":
            for key in body:
                if key not in SARVAM_FIELDS[version]:
                    return f"Unknown field: {key}", key
            if "tool_choice" in body and not body.get("tools"):
                return "tool_choice requires tools", "tool_choice"
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "model is required", "model"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages must be a non-empty list", "messages"
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in _ROLES:
                return f"invalid message: {str(m)[:80]}", "messages"
            if self.flavor == "sarvam" and m["role"] == "developer":
                return "role developer is not supported", "messages"
        if body.get("tools") is not None and not isinstance(body["tools"], list):
            return "tools must be a list", "tools"
        return None

    # ---- one chat request

    async def _chat(self, request: Request, version: str) -> Response:
        self.requests += 1
        self._seq += 1
        if request.client:
            self.connections.add((request.client.host, request.client.port))
        if not self._authorized(request):
            if self.flavor == "openrouter":
                return self._error(401, "auth", "No auth credentials found")
            return self._error(403 if self.flavor == "sarvam" else 401, "auth", "Invalid API key")
        try:
            body = json.loads(await request.body())
        except ValueError:
            log.info("llm emulator: request body is not JSON")
            return self._error(400, "bad_request", "request body is not valid JSON")
        if problem := self._validate(body, version):
            log.info("llm emulator: bad request: %s", problem[0])
            return self._error(400, "bad_request", problem[0], param=problem[1])

        model = body["model"]
        self.model_requests[model] = self.model_requests.get(model, 0) + 1
        tag = request.headers.get("x-voxroute-tag")
        fault = self.dice.request_fault("llm")
        behaviour = self._behaviour(model)
        if behaviour is not None and behaviour.fault:
            fault = behaviour.fault
        if (
            fault in ("http_500", "http_429")
            and self.flavor == "openrouter"
            and isinstance(body.get("models"), list)
        ):
            fallback = next((m for m in body["models"] if isinstance(m, str) and m != model), None)
            if fallback:
                log.info("llm emulator: %s failed with %s, falling back to %s", model, fault, fallback)
                self.fallbacks += 1
                model, fault = fallback, None
        if fault in ("http_500", "http_429", "hang", "stall"):
            # Faults that show from the first byte are logged now; mid-stream ones when they happen
            # (a client that went away before them never saw them).
            self._record(fault, tag, model)
        if fault == "http_500":
            return self._error(500, "server", "Internal Server Error (emulated)")
        if fault == "http_429":
            return self._error(429, "rate", "Rate limit exceeded (emulated)", headers={"Retry-After": "1"})

        reasoning = is_reasoning_model(model, self.reasoning_models)
        ttft, tps = self.dice.llm_timing(reasoning)
        if behaviour is not None:
            if behaviour.ttft is not None:
                ttft = behaviour.ttft.draw(self.dice.rng)
            if behaviour.tps is not None:
                tps = behaviour.tps
        messages = body["messages"]
        calls = scripted.scripted_calls(self.tool_script, messages, tool_names(body.get("tools")))
        calls = calls or plan_tool_calls(messages, body.get("tools"))
        spoken = all(name in SPOKEN_TOOLS for name, _ in calls)
        # Tool results say what to answer; a routing class from the runtime (the offline stack) picks a
        # scripted reply; else the templates.
        text = (
            scripted.after_tools(messages)
            or scripted.reply(messages)
            or respond(model, messages, reasoning=reasoning)
            if spoken
            else ""
        )
        plan = _Plan(
            model=model,
            reasoning=reasoning,
            pieces=word_pieces(text),
            calls=calls,
            prompt_tokens=_prompt_tokens(messages),
            ttft=ttft,
            gap=1.0 / tps if tps > 0 else 0.0,
            fault=fault,
            include_usage=self.flavor == "openrouter"
            or bool(
                isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")
            ),
            seq=self._seq,
            tag=tag,
        )
        if fault == "error_midstream":
            self._midstream_errors += 1
            plan.int_code = self._midstream_errors % 2 == 1
        produce = self._stream if body.get("stream") else self._complete

        async def run(receive: Callable, send: Callable) -> None:
            self.active += 1
            try:
                await _until_disconnect(receive, produce(plan, send))
            finally:
                self.active -= 1

        return _ASGIResponse(run)

    # ---- streaming

    def _chunk_base(self, plan: _Plan) -> dict[str, Any]:
        base: dict[str, Any] = {
            "id": plan.completion_id(self.flavor),
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
        }
        if self.flavor == "openrouter":
            base["provider"] = "Emulated"
        return base

    def _choice_chunk(self, plan: _Plan, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if self.flavor == "openrouter" and finish:
            choice["native_finish_reason"] = finish
        return _sse({**self._chunk_base(plan), "choices": [choice]})

    def _usage(self, plan: _Plan, completion_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": plan.prompt_tokens + completion_tokens,
        }
        if plan.reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": 2}
        if self.flavor == "openrouter":
            pin, pout = self.prices.get(plan.model) or (PRICE_REASONING if plan.reasoning else PRICE_FAST)
            usage["cost"] = round((plan.prompt_tokens * pin + completion_tokens * pout) / 1e6, 10)
            usage["is_byok"] = False
        return usage

    def _error_chunk(self, plan: _Plan) -> bytes:
        if plan.int_code:
            error: dict[str, Any] = {
                "code": 502,
                "message": "Provider disconnected unexpectedly (emulated)",
                "metadata": {"error_type": "provider_unavailable"},
            }
        else:
            error = {"code": "server_error", "message": "Provider disconnected unexpectedly (emulated)"}
        choice = {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}
        return _sse({**self._chunk_base(plan), "error": error, "choices": [choice]})

    async def _wait(self, send: Callable, seconds: float, keepalives: bool) -> None:
        """Sleep ``seconds``; with ``keepalives``, send a comment every keep-alive interval meanwhile."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, self.keepalive_interval_s) if keepalives else left)
            if keepalives and loop.time() < end:
                await send({"type": "http.response.body", "body": self.keepalive, "more_body": True})

    async def _stream(self, plan: _Plan, send: Callable) -> None:
        if plan.fault == "hang":
            await asyncio.Future()  # until the client goes away (cancelled by _until_disconnect)
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        if self.flavor == "openrouter":
            headers.append((b"x-generation-id", plan.completion_id(self.flavor).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def body(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        openrouter = self.flavor == "openrouter"
        if openrouter or plan.fault == "stall":
            await body(self.keepalive)
        if plan.fault == "stall":
            while True:
                await asyncio.sleep(self.keepalive_interval_s)
                await body(self.keepalive)
        await self._wait(send, plan.ttft, keepalives=openrouter)
        if plan.calls and not plan.pieces:
            if not await self._stream_tool_calls(plan, send, body):
                return
        else:
            if plan.reasoning:
                key = "reasoning" if openrouter else "reasoning_content"
                await body(
                    self._choice_chunk(plan, {"role": "assistant", key: "Checking the account first."})
                )
            await body(self._choice_chunk(plan, {"role": "assistant", "content": ""}))
            for i, piece in enumerate(plan.pieces):
                if plan.fault and i == min(FAULT_AFTER_TOKENS, len(plan.pieces) - 1):
                    await self._break_stream(plan, send)
                    return
                if i:
                    await self._wait(send, plan.gap, keepalives=False)
                    if openrouter and i % KEEPALIVE_EVERY_TOKENS == 0:
                        await body(self.keepalive)
                await body(self._choice_chunk(plan, {"content": piece}))
            if plan.calls:  # text first, then the calls in the same message
                if not await self._stream_tool_calls(plan, send, body, after_text=True):
                    return
            else:
                await body(self._choice_chunk(plan, {}, "stop"))
        if plan.include_usage:
            completion = len(plan.pieces) + sum(2 for _ in plan.calls)
            await body(
                _sse({**self._chunk_base(plan), "choices": [], "usage": self._usage(plan, completion)})
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    def _record(self, fault: str, tag: str | None, model: str) -> None:
        self.faults.append(FaultRecord("llm", fault, tag, time.monotonic(), model))
        log.info("llm emulator: injecting %s (tag %s)", fault, tag)

    async def _break_stream(self, plan: _Plan, send: Callable) -> None:
        """The mid-stream faults, after a few tokens have gone out."""
        self._record(plan.fault, plan.tag, plan.model)

        async def last(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": False})

        if plan.fault == "error_midstream":
            await last(self._error_chunk(plan))
        elif plan.fault == "malformed":
            await send({"type": "http.response.body", "body": b"data: {not json\n\n", "more_body": True})
            await last(b"data: [DONE]\n\n")
        else:  # drop: return without completing the response; the server closes the connection mid-body
            log.info("llm emulator: dropping the connection mid-stream")

    async def _stream_tool_calls(
        self,
        plan: _Plan,
        send: Callable,
        body: Callable[[bytes], Awaitable[None]],
        after_text: bool = False,
    ) -> bool:
        """Stream the tool calls; False when a fault broke the stream."""
        ids = [plan.call_id(self.flavor, i) for i in range(len(plan.calls))]
        first = [
            {"index": i, "id": ids[i], "type": "function", "function": {"name": name, "arguments": ""}}
            for i, (name, _) in enumerate(plan.calls)
        ]
        opening = (
            {"tool_calls": first}
            if after_text
            else {"role": "assistant", "content": None, "tool_calls": first}
        )
        await body(self._choice_chunk(plan, opening))
        if plan.fault and not after_text:
            await self._break_stream(plan, send)
            return False
        for i, (_, args) in enumerate(plan.calls):
            text = _arguments_text(args)
            cut = max(1, len(text) // 2)
            for part in (text[:cut], text[cut:]):
                await body(
                    self._choice_chunk(plan, {"tool_calls": [{"index": i, "function": {"arguments": part}}]})
                )
        await body(self._choice_chunk(plan, {}, "tool_calls"))
        return True

    # ---- non-streaming

    async def _complete(self, plan: _Plan, send: Callable) -> None:
        if plan.fault in ("hang", "stall"):
            await asyncio.Future()
        await asyncio.sleep(plan.ttft + plan.gap * len(plan.pieces))
        if plan.fault in ("malformed", "drop", "error_midstream"):
            self._record(plan.fault, plan.tag, plan.model)
        if plan.fault == "malformed":
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"{not json", "more_body": False})
            return
        if plan.fault == "drop":
            headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"id":', "more_body": True})
            log.info("llm emulator: dropping the connection mid-response")
            return
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(plan.pieces) or None,
        }
        finish = "tool_calls" if plan.calls else "stop"
        if plan.calls:
            message["tool_calls"] = [
                {
                    "id": plan.call_id(self.flavor, i),
                    "type": "function",
                    "function": {"name": name, "arguments": _arguments_text(args)},
                }
                for i, (name, args) in enumerate(plan.calls)
            ]
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        if plan.fault == "error_midstream":  # non-streaming: 200 with a choice that failed
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "error",
                "error": {"code": 502, "message": "Provider returned error (emulated)"},
            }
        completion = len(plan.pieces) + 2 * len(plan.calls)
        obj = {
            "id": plan.completion_id(self.flavor),
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [choice],
            "usage": self._usage(plan, completion),
        }
        data = json.dumps(obj, ensure_ascii=False).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})


@dataclass(frozen=True)
class Behaviour:
    """A persistent override for one model: its latency and/or a fault on every request."""

    ttft: Latency | None = None
    tps: float | None = None
    fault: str | None = None


class _Plan:
    """Everything one request will do, decided up front (so the dice are drawn in request order)."""

    def __init__(self, **kw: Any) -> None:
        self.model: str = kw["model"]
        self.reasoning: bool = kw["reasoning"]
        self.pieces: list[str] = kw["pieces"]
        self.calls: list[tuple[str, dict[str, Any] | str]] = kw["calls"]
        self.prompt_tokens: int = kw["prompt_tokens"]
        self.ttft: float = kw["ttft"]
        self.gap: float = kw["gap"]
        self.fault: str | None = kw["fault"]
        self.include_usage: bool = kw["include_usage"]
        self.seq: int = kw["seq"]
        self.tag: str | None = kw.get("tag")
        self.int_code = False
        self.created = int(time.time())

    def completion_id(self, flavor: str) -> str:
        return f"gen-emu-{self.seq}" if flavor == "openrouter" else f"chatcmpl-emu{self.seq}"

    def call_id(self, flavor: str, index: int) -> str:
        if flavor == "sarvam":
            return f"call-{uuid.UUID(int=self.seq * 16 + index, version=4)}"
        return f"call_emu{self.seq}x{index}"


def create_llm_app(
    dice: Dice,
    flavor: str = "openrouter",
    api_key: str | None = None,
    reasoning_models: frozenset[str] | set[str] = frozenset(),
    keepalive_interval_s: float = 0.1,
) -> FastAPI:
    """A FastAPI app emulating one provider (see the module doc). ``app.state.emulator`` is the
    :class:`LLMEmulator` (fault log, stats) for in-process inspection."""
    return LLMEmulator(dice, flavor, api_key, reasoning_models, keepalive_interval_s).app


def main() -> None:  # pragma: no cover - manual use
    import argparse

    import uvicorn

    from voxroute.emulators.profiles import get_profile

    parser = argparse.ArgumentParser(description="voxroute LLM emulator")
    parser.add_argument("--flavor", default="openrouter", choices=EMULATOR_FLAVORS)
    parser.add_argument("--profile", default="reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    app = create_llm_app(Dice(get_profile(args.profile), args.seed), args.flavor, args.api_key)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":  # pragma: no cover
    main()
