"""The text channel: the tenant's agent over an OpenAI-compatible ``POST /v1/chat/completions``.

The request's ``model`` names the tenant. Each request is one turn of a conversation, answered by the
same code as a voice turn (agent/answer.py ``Answerer``: the router on the routing table's ``chat``
channel with the chat budget, the fallback ladder, the agent's tools), without TTS: the answer's text
goes to the client as it comes (``stream: true``: server-sent events in OpenAI's chunk format) or
whole. Every turn goes to the call observers (the call log, ``/metrics``) as a call of channel
``chat``.

A conversation (one call log record, one sticky-escalation state) is identified by the
``X-Voxroute-Session`` header, else ``metadata.session_id``, else the ``user`` field; a request
without any of them is a conversation of its own. Its id (``CH`` + 32 hex) is derived from the tenant
and that key, and returned in ``voxroute.conversation_id`` and the ``X-Voxroute-Session-Id`` header.
The client sends the conversation's text as OpenAI clients do (every message, each time); the agent's
system prompt is the tenant's (client ``system``/``developer`` messages are ignored, with a log line),
and ``tool`` messages are refused: the agent's tools run here.

Auth: under ``voxroute serve --dev`` none; otherwise ``Authorization: Bearer`` with the key in the
tenant's ``chat.api_key_env`` (``serve`` refuses to start while an enabled tenant's key is unset, and a
request is refused while it is). Errors have OpenAI's shape ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from typing import Any, Literal

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voxroute.agent.answer import Answerer, Speaker
from voxroute.agent.services import Services
from voxroute.agent.timeline import Clock, TurnRecord, log_turn
from voxroute.routing.router import is_devanagari

log = logging.getLogger("voxroute.chat")

CHAT_PATH = "/v1/chat/completions"
SESSION_HEADER = "X-Voxroute-Session"


# ---------------------------------------------------------------- the request (validated)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = self.content or []
        return " ".join(
            p["text"] for p in parts if p.get("type") == "text" and isinstance(p.get("text"), str)
        )


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # temperature, n, ...: the tenant's agent decides
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None


class ChatError(Exception):
    """A request refused: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": 'Bearer realm="voxroute chat"'} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def parse_request(body: bytes, max_messages: int, max_chars: int) -> ChatRequest:
    """The request from its body, or ``ChatError`` (400) saying what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChatError(400, f"the body is not valid JSON: {exc}", "invalid_json") from None
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        if len(data["messages"]) > max_messages:
            raise ChatError(400, f"at most {max_messages} messages", "too_many_messages", "messages")
        for i, m in enumerate(data["messages"]):
            if isinstance(m, dict) and m.get("role") == "tool":
                raise ChatError(
                    400, "role 'tool' is not accepted: the agent's tools run on the server",
                    "invalid_role", f"messages[{i}].role",
                )  # fmt: skip
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
        raise ChatError(400, f"{param or 'body'}: {err['msg']}", "invalid_request", param or None) from None
    for i, m in enumerate(req.messages):
        if len(m.text()) > max_chars:
            raise ChatError(400, f"a message is at most {max_chars} characters", "message_too_long",
                            f"messages[{i}].content")  # fmt: skip
    if req.messages[-1].role != "user" or not req.messages[-1].text().strip():
        raise ChatError(400, "the last message must be the user's, with text", "invalid_messages", "messages")
    return req


# ---------------------------------------------------------------- one conversation


class _NoTransfer:
    """Chat has no call to transfer: the agent is not offered ``transfer_to_human``."""

    def can_transfer(self) -> bool:
        return False


class _TextTaker:
    """The turn core's two questions the answer asks, for text: there is no one to talk over."""

    def __init__(self) -> None:
        self.started: set[int] = set()

    def answer_started(self, index: int) -> None:
        self.started.add(index)

    def answering(self, index: int) -> bool:
        return index in self.started


class TextSpeaker(Speaker):
    """The voice's ``Speaker`` for text: what it would put through TTS goes to the client instead (its
    ``chunks`` logic, acknowledgements and bridges included, is the voice's). ``first_audio_out`` on
    the chat channel is when the answer's first text went out."""

    def __init__(self, conv: ChatConversation) -> None:
        super().__init__(conv)  # type: ignore[arg-type]  # duck-typed: the answer's view of a call
        self.c = conv
        self.out: asyncio.Queue[str] | None = None  # the running request's text, as it comes

    def say(self, turn: TurnRecord, text: str) -> None:
        turn.mark("first_audio_out", self.c.clock.now())
        self.c.taker.answer_started(turn.index)
        if self.out is not None:
            self.out.put_nowait(text if len(turn.chunks) <= 1 else " " + text)  # as ``reply`` joins them

    def mark(self, turn: TurnRecord, name: str, text: str) -> None:
        """No marks on text: what was sent is what the client got (``heard`` is set at the end)."""

    async def chunk(self, turn: TurnRecord, index: int, text: str, source: str = "answer") -> bool:
        self.say(turn, text)
        return True

    async def phrase(self, turn: TurnRecord, kind: str) -> None:
        text = self.c.services.phrase_text(turn.language, kind)
        turn.reply = f"{turn.reply} {text}".strip()
        turn.chunks.append(text)
        self.say(turn, text)


class ChatConversation:
    """What the ``Answerer`` needs of a call (config, services, clock, routing, history, speaker,
    taker, handover), for one text conversation."""

    def __init__(
        self,
        services: Services,
        tenant: str,
        conversation_id: str,
        language: str,
        tool_http: httpx.AsyncClient,
    ) -> None:
        self.services = services
        self.config = services.config
        self.tenant = tenant
        self.call_sid = conversation_id
        self.language = language
        self.clock = Clock()
        self.started_wall = time.time()
        self.last_used = time.monotonic()
        self.routing = services.router.conversation(tenant, "chat")
        self.agent = self.config.agent_for(tenant)
        self.history: list[dict[str, Any]] = []
        self.turns: list[TurnRecord] = []
        self.handover = _NoTransfer()
        self.taker = _TextTaker()
        self.speaker = TextSpeaker(self)
        # duck-typed: the answer's view of a call; the tools share one HTTP client
        self.answerer = Answerer(self, tool_http=tool_http)  # type: ignore[arg-type]
        self.outcome = "unknown"
        self.outcome_reason: str | None = None
        self.lock = asyncio.Lock()  # one turn at a time per conversation

    async def hand_to_person(self, turn: TurnRecord, why: str, phrase: str) -> None:
        """No person can take a chat here: say so (the handoff phrase) and record the wish."""
        log.info("chat %s turn %d: the conversation asks for a person (%s)", self.call_sid, turn.index, why)
        turn.handoff, turn.outcome = True, "handoff"
        self.outcome, self.outcome_reason = "handoff", why
        await self.speaker.phrase(turn, "handoff")

    async def answer(self, messages: list[ChatMessage], out: asyncio.Queue[str]) -> TurnRecord:
        """One turn: the last user message answered through the router and the ladder."""
        index = len(self.turns) + 1
        text = messages[-1].text().strip()
        language = "hi-IN" if is_devanagari(text) else self.language
        turn = TurnRecord(index=index, kind="text", transcript=text, language=language)
        turn.budget_ms = self.services.router.table.tenants[self.tenant].budgets.chat_ms
        now = self.clock.now()
        for name in ("speech_end", "endpoint", "stt_final"):
            turn.mark(name, now)
        self.turns.append(turn)
        self.history = [{"role": "system", "content": self.agent.prompt(language)}] + [
            {"role": m.role, "content": m.text()} for m in messages if m.role in ("user", "assistant")
        ]
        self.speaker.out = out
        try:
            async with asyncio.timeout(self.config.budget.hard_cap_ms / 1000):
                answered = await self.answerer.run(turn)
            if not answered and not turn.handoff:
                turn.outcome = "apology"
                await self.speaker.phrase(turn, "apology")
        except TimeoutError:
            log.warning("chat %s turn %d: hard cap reached; apologising", self.call_sid, index)
            turn.add_fallback("runtime", "timeout", "no answer before the hard cap", "apologise")
            turn.outcome = "apology"
            await self.speaker.phrase(turn, "apology")
        finally:
            self.speaker.out = None
            turn.heard = turn.reply  # what was sent is what the client got
            turn.mark("done", self.clock.now())
            self.routing.outcome(turn.outcome)
            self.last_used = time.monotonic()
            log_turn(self.call_sid, turn)
        return turn

    async def aclose(self) -> None:
        """The conversation is forgotten: its answer's resources (the tool runner's HTTP pool) go."""
        await self.answerer.aclose()

    def call_json(self, *, ended: str, with_turns: bool) -> dict[str, Any]:
        """The conversation as the call observers see a call (agent/services.py ``call_json``'s shape)."""
        data = {
            "call_sid": self.call_sid, "stream_sid": self.call_sid, "tenant": self.tenant, "carrier": "chat",
            "channel": "chat", "from_number": None, "to_number": None, "language": self.language,
            "started_at": self.started_wall, "ended_at": None if ended == "in_progress" else time.time(),
            "ended": ended, "outcome": self.outcome, "outcome_reason": self.outcome_reason, "error": None,
            "mode": self.services.mode, "policy": self.services.router.policy_version, "leg": 1,
        }  # fmt: skip
        if with_turns:
            data.update(
                turns=[t.as_dict() for t in self.turns], history=[dict(m) for m in self.history],
                merged_turns=[], faults=[], handoff=None,
            )  # fmt: skip
        return data


# ---------------------------------------------------------------- the endpoint


class ChatService:
    """The conversations of one process (bounded, idle ones forgotten) and the endpoint's checks."""

    def __init__(self, services: Services, dev: bool) -> None:
        self.services = services
        self.config = services.config
        self.dev = dev
        self.conversations: OrderedDict[str, ChatConversation] = OrderedDict()
        self.in_flight = 0
        # The tools' HTTP client, shared by every conversation (made here, at start: a new client's
        # TLS context costs 40-90 ms of loop time); closed with the app.
        self.tool_http = httpx.AsyncClient()

    async def aclose(self) -> None:
        for conv in list(self.conversations.values()):
            await conv.aclose()
        self.conversations.clear()
        await self.tool_http.aclose()

    def authorise(self, tenant: str, request: Request) -> None:
        if self.dev:
            return
        env = self.config.tenants[tenant].chat_key_env(tenant)
        key = os.environ.get(env, "").strip()
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if (
            not key
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(token.strip().encode(), key.encode())
        ):
            why = "no chat key is configured" if not key else "no valid Bearer key"
            log.warning(
                "chat: %s %s refused (401): %s for tenant %s", request.method, request.url.path, why, tenant
            )
            raise ChatError(401, "a valid API key is required (Authorization: Bearer)", "invalid_api_key")

    def tenant_of(self, model: str) -> str:
        tenant = self.config.tenants.get(model)
        if tenant is None or not (tenant.chat.enabled or self.dev):
            raise ChatError(404, f"the model {model!r} does not exist (model names a tenant)",
                            "model_not_found", "model")  # fmt: skip
        return model

    async def conversation(self, tenant: str, key: str | None) -> ChatConversation:
        """The conversation of ``key`` (a new one without a key, or when it was forgotten). Its id is
        random: a key seen again after a restart or an idle spell starts a new call log record."""
        cfg = self.config.chat
        now = time.monotonic()
        gone = [
            k for k, c in self.conversations.items()
            if now - c.last_used >= cfg.session_idle_s and not c.lock.locked()
        ]  # fmt: skip
        for k in gone:
            await self.conversations.pop(k).aclose()
        slot = hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest() if key else secrets.token_hex(16)
        conv = self.conversations.get(slot)
        if conv is None:
            languages = self.config.tenants[tenant].languages
            sid = "CH" + secrets.token_hex(16)
            language = languages[0] if languages else self.config.language
            conv = ChatConversation(self.services, tenant, sid, language, self.tool_http)
            self.conversations[slot] = conv
            while len(self.conversations) > cfg.max_sessions:
                oldest = next(k for k, c in self.conversations.items() if not c.lock.locked())
                await self.conversations.pop(oldest).aclose()
        self.conversations.move_to_end(slot)
        if len(conv.turns) >= cfg.max_turns:
            raise ChatError(400, f"this conversation has reached its {cfg.max_turns} turns; start a new one",
                            "conversation_too_long")  # fmt: skip
        return conv

    def notify(self, what: str, *args: Any) -> None:
        for observer in self.services.observers:
            try:
                getattr(observer, what)(*args)
            except Exception:  # an observer's bug must not fail the request
                log.exception("call observer %r failed in %s", observer, what)

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.chat.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ChatError(413, f"the body is over {limit} bytes", "body_too_large")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise ChatError(413, f"the body is over {limit} bytes", "body_too_large")
        return bytes(body)

    async def handle(self, request: Request) -> Response:
        try:
            body = await self.read_body(request)
            cfg = self.config.chat
            req = parse_request(body, cfg.max_messages, cfg.max_message_chars)
            tenant = self.tenant_of(req.model)
            self.authorise(tenant, request)
            if self.in_flight >= cfg.max_concurrent:
                raise ChatError(429, "too many chat requests at once; retry shortly", "rate_limit_exceeded")
            key = request.headers.get(SESSION_HEADER) or (req.metadata or {}).get("session_id") or req.user
            conv = await self.conversation(tenant, key[:256] if key else None)
        except ChatError as exc:
            log.warning("chat: %s %s refused (%d %s): %s", request.method, request.url.path, exc.status,
                        exc.code, exc.message)  # fmt: skip
            return exc.response()
        ignored = sum(m.role in ("system", "developer") for m in req.messages)
        if ignored:
            log.info(
                "chat %s: %d client system message(s) ignored: the tenant's prompt applies",
                conv.call_sid,
                ignored,
            )
        headers = {"X-Voxroute-Session-Id": conv.call_sid}
        if req.stream:
            return _EventStream(lambda receive, send: self._stream(conv, req, headers, receive, send))
        try:
            turn = await self._turn(conv, req, asyncio.Queue())
        except Exception:  # a bug: this request fails in OpenAI's shape, nothing else does
            log.exception("chat %s: the turn failed", conv.call_sid)
            return ChatError(500, "the agent failed to answer; try again", "server_error").response()
        return JSONResponse(self._completion(conv, req, turn), headers=headers)

    async def _turn(self, conv: ChatConversation, req: ChatRequest, out: asyncio.Queue[str]) -> TurnRecord:
        """One turn of ``conv``, told to the call observers (the call log, /metrics) as a call of
        channel chat: started, its turn, ended (a conversation at rest between messages is over; the
        next message reopens the same record). A client gone mid-turn ends it as ``caller_hung_up``."""
        self.in_flight += 1
        try:
            async with conv.lock:
                self.notify("call_started", conv.call_json(ended="in_progress", with_turns=False))
                task, before = asyncio.current_task(), len(conv.turns)
                try:
                    return await conv.answer(req.messages, out)
                finally:
                    ended = "completed"
                    if task is not None and task.cancelling():
                        ended = "caller_hung_up"
                    if len(conv.turns) > before:  # the turn began (a bug may stop it before)
                        turn = conv.turns[-1]
                        turn.outcome = "caller_hung_up" if ended == "caller_hung_up" else turn.outcome
                        call = conv.call_json(ended=ended, with_turns=False)
                        self.notify("turn_finished", call, turn.as_dict())
                    self.notify("call_ended", conv.call_json(ended=ended, with_turns=True))
        finally:
            self.in_flight -= 1

    async def _stream(self, conv: ChatConversation, req: ChatRequest, headers: dict[str, str],
                      receive, send) -> None:  # fmt: skip
        """Server-sent events in OpenAI's chunk format: the role, the text as it comes, the finish
        (with the ``voxroute`` extension), ``[DONE]``. The client going away cancels the turn."""
        out: asyncio.Queue[str] = asyncio.Queue()
        ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}  # fmt: skip
            data = f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()
            return {"type": "http.response.body", "body": data, "more_body": True}

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            raise _ClientGone

        sse_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
        ]
        sse_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
        await send(event({"role": "assistant", "content": ""}))
        try:
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(until_disconnect())
                job = tg.create_task(self._turn(conv, req, out))
                while not (job.done() and out.empty()):
                    getter = tg.create_task(out.get())
                    await asyncio.wait([getter, job], return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        await send(event({"content": getter.result()}))
                    else:
                        getter.cancel()
                turn = job.result()
                await send(event({}, "stop", voxroute=self._extension(conv, turn)))
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
                watcher.cancel()
        except* _ClientGone:
            log.info("chat %s: the client went away mid-answer", conv.call_sid)
        except* Exception:  # a bug: this stream ends with an error event, nothing else does
            log.exception("chat %s: the turn failed", conv.call_sid)
            error = {"error": {"message": "the agent failed to answer; try again", "type": "server_error",
                               "param": None, "code": "server_error"}}  # fmt: skip
            data = f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": False})

    def _extension(self, conv: ChatConversation, turn: TurnRecord) -> dict[str, Any]:
        route = turn.route.as_dict() if turn.route is not None else {}
        return {
            "conversation_id": conv.call_sid,
            "turn": turn.index,
            "route": {k: route.get(k) for k in ("class", "tier", "model", "reason")},
            "answered_by": turn.usage.get("model"),
            "tools": list(turn.tools),
            "outcome": turn.outcome,
            "first_text_ms": turn.first_audio_ms,
        }

    def _completion(self, conv: ChatConversation, req: ChatRequest, turn: TurnRecord) -> dict[str, Any]:
        prompt, completion = (
            int(turn.usage.get("prompt_tokens", 0)),
            int(turn.usage.get("completion_tokens", 0)),
        )
        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": turn.reply}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
            "voxroute": self._extension(conv, turn),
        }


class _ClientGone(Exception):
    """The client closed the connection of a streamed answer."""


class _EventStream(Response):
    """A response that drives ``send`` itself: the stream's tasks live in one task group."""

    def __init__(self, run) -> None:
        super().__init__()
        self._run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._run(receive, send)


def add_chat_routes(app: FastAPI, services: Services, *, dev: bool) -> ChatService:
    """``POST /v1/chat/completions`` on ``app``; the service is ``app.state.chat``."""
    chat = ChatService(services, dev)
    app.state.chat = chat
    app.router.on_shutdown.append(chat.aclose)

    @app.post(CHAT_PATH)
    async def chat_completions(request: Request) -> Response:
        return await chat.handle(request)

    return chat


def missing_chat_keys(config) -> list[tuple[str, str]]:
    """(variable, what it is for) of every tenant that enables chat without its key set."""
    out = []
    for name, tenant in config.tenants.items():
        env = tenant.chat_key_env(name)
        if tenant.chat.enabled and not os.environ.get(env, "").strip():
            out.append((env, f"chat API key of tenant {name} (POST {CHAT_PATH})"))
    return out
