"""Running a conversation's business tools: the model's tool calls in, OpenAI tool messages out.

No audio and no turn machinery here: a voice turn (agent/answer.py) and a text conversation use the
same :class:`ToolRunner`. One round's calls run in parallel, each inside its own ``timeout_ms``, so
a slow or hung tool costs its own timeout and nothing else; every failure (unknown tool, arguments
that are not JSON or do not fit the schema, an HTTP error, an exception, a timeout) becomes an error
result the model reads, never an exception.

Exactly once: each call gets an idempotency key ``{call}:{turn}:{index}`` (sent as the
``Idempotency-Key`` header, or given to a Python tool as ``context.idempotency_key``), and within a
turn a call the model repeats with the same arguments (a continuation on the next rung after a
mid-stream failure) reuses the first result instead of running again.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from voxroute.agent.calllog.redact import redact_json
from voxroute.agent.tools.spec import (
    ToolConfig,
    ToolContext,
    check_arguments,
    fill_env,
    openai_tool,
    validate_python_args,
)

log = logging.getLogger("voxroute.tools")

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_RESPONSE_BYTES = 256 * 1024  # an HTTP tool's body beyond this is an error (the model reads little)
MAX_RESULT_CHARS = 4000  # of the JSON the model sees


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """One executed (or reused) tool call."""

    call_id: str  # the model's tool_call id
    name: str
    arguments: dict[str, Any]
    status: str  # ok, error, timeout
    content: dict[str, Any]  # what the model reads
    latency_ms: float
    key: str  # idempotency key
    started_ms: float = 0.0  # on the runner's clock
    reused: bool = False

    def message(self) -> dict[str, Any]:
        """The OpenAI tool message carrying the result."""
        text = json.dumps(self.content, ensure_ascii=False, default=str)
        if len(text) > MAX_RESULT_CHARS:
            text = json.dumps({"error": "the tool's result was too long"})
        return {"role": "tool", "tool_call_id": self.call_id, "content": text}

    def record(self) -> dict[str, Any]:
        """What the call log, replay JSON and pages keep: arguments masked as in the call log."""
        out = {
            "name": self.name,
            "arguments": redact_json(self.arguments),
            "status": self.status,
            "latency_ms": round(self.latency_ms, 1),
            "at_ms": round(self.started_ms, 1),
        }
        if self.reused:
            out["reused"] = True
        if self.status != "ok":
            out["error"] = str(self.content.get("error", ""))[:200]
        return out


def assistant_message(calls: Sequence[Any], text: str = "") -> dict[str, Any]:
    """The assistant message that asked for ``calls`` (OpenAI format), to precede the tool messages."""
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
            }
            for c in calls
        ],
    }


@dataclass
class _Turn:
    next_index: int = 0
    done: dict[tuple[str, str], ToolOutcome] = field(default_factory=dict)


class ToolRunner:
    """The business tools of one conversation (a phone call or a chat session)."""

    def __init__(
        self,
        tools: dict[str, ToolConfig],
        *,
        call_sid: str,
        tenant: str,
        http: httpx.AsyncClient | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        """``http``: a shared client (its pool); one is made (and closed by ``aclose``) when None.
        ``now``: the conversation's clock in ms, for the records' ``at_ms``."""
        self.tools = tools
        self.call_sid = call_sid
        self.tenant = tenant
        self._own_http = http is None
        self._pool = http
        self.now = now or (lambda: time.monotonic() * 1000)
        self._turns: dict[int, _Turn] = {}
        self._offered: list[dict[str, Any]] | None = None

    def offered(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI ``tools`` format."""
        if self._offered is None:  # built once: a Python tool's schema comes from pydantic
            self._offered = [openai_tool(name, tool) for name, tool in self.tools.items()]
        return list(self._offered)

    def stakes(self, name: str) -> str:
        tool = self.tools.get(name)
        return tool.stakes if tool is not None else "low"

    def waiting_phrase(self, name: str, language: str) -> str | None:
        tool = self.tools.get(name)
        return tool.phrase_for(language) if tool is not None else None

    @property
    def http(self) -> httpx.AsyncClient:
        """The HTTP pool, made at the first HTTP tool call (most calls never need one: building a TLS
        context costs 0.1-0.5 s of CPU, so it is made once per process)."""
        if self._pool is None:
            self._pool = httpx.AsyncClient(verify=_tls_context(), timeout=None)
        return self._pool

    async def aclose(self) -> None:
        if self._own_http and self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    async def run(self, turn: int, calls: Sequence[Any], limit_ms: float | None = None) -> list[ToolOutcome]:
        """Run one round of the model's tool calls (objects with ``id``, ``name``, ``arguments`` and
        optionally ``arguments_error``) for conversation turn ``turn``, all at once; the outcomes in
        the calls' order. Never raises for a tool's failure. ``limit_ms``: no call waits longer
        (what is left of the turn), whatever its own ``timeout_ms``."""
        state = self._turns.setdefault(turn, _Turn())
        jobs: list[asyncio.Task[ToolOutcome] | ToolOutcome] = []
        async with asyncio.TaskGroup() as tg:
            for call in calls:
                args = call.arguments if isinstance(call.arguments, dict) else {}
                memo = (call.name, json.dumps(args, sort_keys=True, default=str))
                earlier = state.done.get(memo)
                if earlier is not None and not getattr(call, "arguments_error", None):
                    log.info("call %s turn %d: %s already ran in this turn; reusing its result",
                             self.call_sid, turn, call.name)  # fmt: skip
                    jobs.append(
                        replace(earlier, call_id=call.id, latency_ms=0.0, started_ms=self.now(), reused=True)
                    )
                    continue
                key = f"{self.call_sid}:{turn}:{state.next_index}"
                state.next_index += 1
                jobs.append(tg.create_task(self._one(call, args, key, limit_ms)))
        outcomes = [j if isinstance(j, ToolOutcome) else j.result() for j in jobs]
        for call, outcome in zip(calls, outcomes, strict=True):
            if not outcome.reused and not getattr(call, "arguments_error", None):
                state.done[(call.name, json.dumps(outcome.arguments, sort_keys=True, default=str))] = outcome
        return outcomes

    def forget(self, turn: int) -> None:
        """The turn is over: its results are no longer reused."""
        self._turns.pop(turn, None)

    async def _one(self, call: Any, args: dict[str, Any], key: str, limit_ms: float | None) -> ToolOutcome:
        started = self.now()
        t0 = time.perf_counter()

        def done(status: str, content: dict[str, Any]) -> ToolOutcome:
            ms = (time.perf_counter() - t0) * 1000
            if status != "ok":
                log.warning("call %s: tool %s %s after %.0f ms: %s", self.call_sid, call.name, status, ms,
                            content.get("error"))  # fmt: skip
            return ToolOutcome(call.id, call.name, args, status, content, ms, key, started)

        tool = self.tools.get(call.name)
        if tool is None:
            return done("error", {"error": f"there is no tool named {call.name!r}"})
        if getattr(call, "arguments_error", None):
            return done("error", {"error": f"the arguments were not valid JSON: {call.arguments_error}"})
        wait_ms = tool.timeout_ms if limit_ms is None else max(0.0, min(tool.timeout_ms, limit_ms))
        try:
            async with asyncio.timeout(wait_ms / 1000):
                if tool.kind == "http":
                    status, content = await self._http(tool, args, key)
                else:
                    status, content = await self._python(tool, args, key, call)
        except TimeoutError:
            return done("timeout", {"error": f"the tool did not answer within {wait_ms:.0f} ms"})
        except Exception as exc:  # a tool's bug is the model's error result, never the caller's problem
            log.exception("call %s: tool %s raised", self.call_sid, call.name)
            return done("error", {"error": f"the tool failed: {type(exc).__name__}: {str(exc)[:200]}"})
        if status == "ok":
            content = _pick(content, tool.result_fields)
        return done(status, content)

    async def _http(self, tool: ToolConfig, args: dict[str, Any], key: str) -> tuple[str, dict[str, Any]]:
        assert tool.url is not None and tool.parameters is not None
        problem = check_arguments(tool.parameters, args)
        if problem:
            return "error", {"error": f"bad arguments: {problem}"}
        in_url = {name for name in re.findall(r"\{(\w+)\}", tool.url)}
        url = tool.url.format(**{k: quote(str(args.get(k, "")), safe="") for k in in_url})
        headers = {IDEMPOTENCY_HEADER: key}
        for name, template in tool.headers.items():
            headers[name], missing = fill_env(template)
            if missing:
                return "error", {
                    "error": f"the tool is not configured (environment variable {missing} unset)"
                }
        rest = {k: v for k, v in args.items() if k not in in_url}
        kwargs: dict[str, Any] = {"headers": headers}
        if tool.method in ("GET", "DELETE"):
            kwargs["params"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in rest.items()}
        else:
            kwargs["json"] = rest
        retries = 1 if tool.idempotent else 0  # an idempotent tool may be asked twice (same key)
        while True:
            try:
                async with self.http.stream(tool.method, url, **kwargs) as response:
                    body = b""
                    async for part in response.aiter_bytes():
                        body += part
                        if len(body) > MAX_RESPONSE_BYTES:
                            return "error", {"error": "the tool's response was too large"}
                break
            except httpx.TransportError as exc:
                if retries > 0:
                    retries -= 1
                    continue
                return "error", {"error": f"could not reach the tool: {type(exc).__name__}"}
        if response.status_code >= 400:
            return "error", {"error": f"the tool answered HTTP {response.status_code}"}
        if not body.strip():
            return "ok", {}
        try:
            data = json.loads(body)
        except ValueError:
            return "error", {"error": "the tool's response was not JSON"}
        return "ok", data if isinstance(data, dict) else {"result": data}

    async def _python(
        self, tool: ToolConfig, args: dict[str, Any], key: str, call: Any
    ) -> tuple[str, dict[str, Any]]:
        kwargs, problem = validate_python_args(tool, args)
        if problem or kwargs is None:
            return "error", {"error": f"bad arguments: {problem}"}
        if tool.wants_context:
            turn = int(key.rsplit(":", 2)[1])
            kwargs["context"] = ToolContext(key, self.call_sid, turn, self.tenant)
        if inspect.iscoroutinefunction(tool.fn):
            result = await tool.fn(**kwargs)
        else:
            # A thread, so a slow sync tool never blocks the loop (a hung one keeps its thread).
            result = await asyncio.to_thread(tool.fn, **kwargs)
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        return "ok", result if isinstance(result, dict) else {"result": result}


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def _pick(content: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """Only the configured result fields (dotted paths into the JSON), under their dotted names."""
    if fields is None:
        return content
    out: dict[str, Any] = {}
    for path in fields:
        value: Any = content
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out[path] = value
    return out
