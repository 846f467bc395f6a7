"""OpenAI-compatible chat completions, sans-I/O: request bodies, the SSE stream, error bodies.

Pure functions and small state machines over bytes/str and dataclasses; no sockets, no awaits.
The asyncio client (``openai_compat.py``) and the emulator (``emulators/llm.py``) sit on top.
Wire details: ``docs/reference/openai_compatible.md``.

Pieces:

- :class:`SSEParser` splits a byte stream into lines (across arbitrary network reads) and hands
  out :class:`SSEEvent` (one per ``data:`` line), :class:`Comment` (``:`` lines, i.e. keep-alives)
  and :class:`Done` (``data: [DONE]``). Each ``data:`` line is one event: the providers put one
  JSON chunk per line, and dispatching per line (not per blank line) saves no latency-relevant
  buffering.
- :class:`ChunkInterpreter` turns chunk JSON into :class:`ContentDelta`, :class:`ReasoningDelta`
  (never speakable), :class:`Finish` (with parsed tool calls), :class:`Usage` and
  :class:`StreamError`.
- :class:`ChatStreamDecoder` is both together: ``feed(bytes) -> events``.
- :func:`build_body` builds the provider-specific body from the neutral
  :class:`~agent.providers.base.LLMRequest` with an allow-list per flavor.
- :func:`parse_error_body` reads the three error envelopes; :func:`parse_retry_after`.

Anything malformed raises :class:`OpenAIProtocolError`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from voxroute.agent.providers.base import LLMRequest, ToolCall

log = logging.getLogger(__name__)

Flavor = Literal["openrouter", "sarvam", "callmissed", "openai"]
FLAVORS: tuple[str, ...] = Flavor.__args__  # type: ignore[attr-defined]

MAX_LINE_BYTES = 1 << 20  # one SSE line; a provider chunk is a few hundred bytes


class OpenAIProtocolError(Exception):
    """The peer sent something that is not the OpenAI-compatible protocol."""


# ---------------------------------------------------------------- SSE framing


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str  # the text after "data:" and one optional space


@dataclass(frozen=True, slots=True)
class Comment:
    text: str  # the text after ":" (e.g. "OPENROUTER PROCESSING"): a keep-alive


@dataclass(frozen=True, slots=True)
class Done:
    """``data: [DONE]``: the stream is complete."""


SSEItem = SSEEvent | Comment | Done

_IGNORED_FIELDS = ("event", "id", "retry")


class SSEParser:
    """Incremental SSE line parser. ``feed`` any slice of the byte stream; nothing is lost or re-sent.

    Line ends are ``\\n``, ``\\r\\n`` or ``\\r`` (the SSE spec). After ``[DONE]`` further input is
    ignored. ``event:``/``id:``/``retry:`` fields are ignored; any other line is an error.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_line_bytes
        self._searched = 0  # leading bytes of _buf known to hold no line end (a long line in many reads)
        self.done = False

    def feed(self, data: bytes) -> list[SSEItem]:
        if self.done:
            return []
        self._buf += data
        out: list[SSEItem] = []
        start = 0
        buf = self._buf
        n = len(buf)
        searched = self._searched
        nl = buf.find(b"\n", searched)
        while start < n:
            if 0 <= nl < start:  # search on from the last "\n" only: lines ended by "\r" alone stay linear
                nl = buf.find(b"\n", start)
            cr = buf.find(b"\r", max(start, searched), nl if nl >= 0 else n)
            if cr >= 0:
                if cr + 1 == n:  # a "\r" at the end may be the first half of "\r\n": wait
                    break
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            elif nl >= 0:
                end, nxt = nl, nl + 1
            else:
                break
            item = self._line(bytes(buf[start:end]))
            start = nxt
            if item is not None:
                out.append(item)
                if isinstance(item, Done):
                    self.done = True
                    self._buf.clear()
                    return out
        del self._buf[:start]
        self._searched = len(self._buf) - (1 if self._buf.endswith(b"\r") else 0)
        if len(self._buf) > self._max:
            raise OpenAIProtocolError(f"SSE line longer than {self._max} bytes")
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unterminated last line (a stream cut mid-line leaves some)."""
        return len(self._buf)

    def _line(self, raw: bytes) -> SSEItem | None:
        if len(raw) > self._max:
            raise OpenAIProtocolError(f"SSE line longer than {self._max} bytes")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise OpenAIProtocolError(f"SSE line is not UTF-8: {raw[:80]!r}") from e
        if not line:
            return None
        if line[0] == ":":
            return Comment(line[1:].strip())
        name, sep, value = line.partition(":")
        if name == "data":
            if value.startswith(" "):
                value = value[1:]
            if value.strip() == "[DONE]":
                return Done()
            return SSEEvent(value)
        if name in _IGNORED_FIELDS:
            return None
        raise OpenAIProtocolError(f"not an SSE line: {line[:80]!r}")


# ---------------------------------------------------------------- chunk interpretation


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str  # speakable text, never empty


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str  # `reasoning` / `reasoning_content`: never speak it, never count it as the first token


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str  # stop, length, tool_calls, content_filter, ...
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None = None  # OpenRouter's `cost`; None when the provider does not say
    reasoning_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class StreamError:
    """An error inside a 200 stream (top-level ``error`` and/or ``finish_reason: "error"``)."""

    code: int | str | None
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    text: str


ChatEvent = ContentDelta | ReasoningDelta | Finish | Usage | StreamError


def _loads(data: str | bytes, what: str) -> Any:
    """JSON text -> value; OpenAIProtocolError when it is not JSON, nests deeper than the parser
    takes, or escapes a lone surrogate (``"\\ud800"``: valid JSON, but no text to speak or store)."""
    if not isinstance(data, str):  # strictly: json.loads would let encoded surrogates through
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise OpenAIProtocolError(f"{what}: not UTF-8: {data[:80]!r}") from e
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise OpenAIProtocolError(f"{what}: not JSON: {data[:80]!r}") from e
    if "\\ud" in data or "\\uD" in data:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise OpenAIProtocolError(f"{what}: a lone surrogate escape, not Unicode text") from None
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OpenAIProtocolError(f"{what} is not an object: {value!r:.80}")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise OpenAIProtocolError(f"{what} is not a string: {value!r:.80}")


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:  # not NaN
        raise OpenAIProtocolError(f"{what} is not a non-negative number: {value!r:.80}")
    return int(value)


def parse_usage(raw: Any) -> Usage:
    u = _obj(raw, "usage")
    cost = u.get("cost")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)):
        raise OpenAIProtocolError(f"usage.cost is not a number: {cost!r:.80}")
    details = u.get("completion_tokens_details")
    reasoning = None
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        reasoning = details["reasoning_tokens"]
    return Usage(
        prompt_tokens=_int(u.get("prompt_tokens", 0), "usage.prompt_tokens"),
        completion_tokens=_int(u.get("completion_tokens", 0), "usage.completion_tokens"),
        cost_usd=float(cost) if cost is not None else None,
        reasoning_tokens=reasoning,
    )


def _error(raw: Any) -> StreamError:
    if isinstance(raw, str):
        return StreamError(None, raw)
    e = _obj(raw, "error")
    code = e.get("code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int | str)):
        code = str(code)
    message = e.get("message")
    meta = e.get("metadata")
    return StreamError(
        code=code,
        message=message if isinstance(message, str) else json.dumps(e)[:200],
        metadata=meta if isinstance(meta, dict) else {},
    )


class ChunkInterpreter:
    """Turns the JSON of successive chunks into :data:`ChatEvent` s; keeps tool-call fragments per index.

    Only choice index 0 is read (the router always asks for one choice). ``strict_tool_arguments``:
    arguments that are not a JSON object raise :class:`OpenAIProtocolError` at finish; when False they
    give a :class:`ToolCall` with ``arguments_error`` set (the model's mistake, not the stream's).
    """

    def __init__(self, strict_tool_arguments: bool = True) -> None:
        self.strict_tool_arguments = strict_tool_arguments
        self.model: str | None = None  # the model that actually answered (OpenRouter fallback)
        self.finish_reason: str | None = None
        self.error: StreamError | None = None
        self._tools: dict[int, dict[str, Any]] = {}

    def feed(self, data: str) -> list[ChatEvent]:
        return self.feed_obj(_loads(data, "chunk"))

    def feed_obj(self, chunk: Any) -> list[ChatEvent]:
        chunk = _obj(chunk, "chunk")
        out: list[ChatEvent] = []
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self.model = model
        if chunk.get("error"):
            self.error = _error(chunk["error"])
            self.finish_reason = "error"
            return [self.error]
        choices = chunk.get("choices")
        if choices is None:
            choices = []
        if not isinstance(choices, list):
            raise OpenAIProtocolError(f"choices is not a list: {choices!r:.80}")
        for choice in choices:
            choice = _obj(choice, "choice")
            if choice.get("index", 0) != 0:
                continue
            out.extend(self._choice(choice))
        if chunk.get("usage") is not None:
            out.append(parse_usage(chunk["usage"]))
        return out

    def _choice(self, choice: dict[str, Any]) -> list[ChatEvent]:
        out: list[ChatEvent] = []
        delta = choice.get("delta")
        if delta is None:
            delta = {}
        delta = _obj(delta, "delta")
        content = _opt_str(delta.get("content"), "delta.content")
        for key in ("reasoning", "reasoning_content"):
            reasoning = _opt_str(delta.get(key), f"delta.{key}")
            if reasoning:
                out.append(ReasoningDelta(reasoning))
        if content:
            out.append(ContentDelta(content))
        fragments = delta.get("tool_calls")
        if fragments is not None:
            if not isinstance(fragments, list):
                raise OpenAIProtocolError(f"delta.tool_calls is not a list: {fragments!r:.80}")
            for pos, frag in enumerate(fragments):
                self._tool_fragment(_obj(frag, "tool call fragment"), pos)
        reason = _opt_str(choice.get("finish_reason"), "finish_reason")
        if reason:
            self.finish_reason = reason
            if reason == "error":
                self.error = _error(choice.get("error") or {"message": "finish_reason error"})
                out.append(self.error)
            else:
                out.append(Finish(reason, self._finish_tools()))
        return out

    def _tool_fragment(self, frag: dict[str, Any], pos: int) -> None:
        index = frag.get("index", pos)  # a few providers omit index for single calls
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise OpenAIProtocolError(f"tool call index is not a non-negative int: {index!r:.80}")
        fn = _obj(frag.get("function") or {}, "tool call function")
        slot = self._tools.setdefault(index, {"id": None, "name": None, "args": []})
        call_id = _opt_str(frag.get("id"), "tool call id")
        name = _opt_str(fn.get("name"), "tool call name")
        args = _opt_str(fn.get("arguments"), "tool call arguments")
        if call_id:
            slot["id"] = call_id
        if name and not slot["name"]:  # some servers repeat the name in every fragment: keep the first
            slot["name"] = name
        if args:
            slot["args"].append(args)

    def _finish_tools(self) -> tuple[ToolCall, ...]:
        # Parse only now: fragments of arguments are not JSON on their own. Some providers finish
        # with "stop" even after tool calls, so any finish parses what was gathered.
        calls = []
        for index in sorted(self._tools):
            slot = self._tools[index]
            if not slot["name"]:
                raise OpenAIProtocolError(f"tool call {index} has no function name")
            text = "".join(slot["args"]).strip() or "{}"
            problem = None
            try:
                args = _loads(text, f"tool call {slot['name']} arguments")
                if not isinstance(args, dict):
                    raise OpenAIProtocolError(f"tool call {slot['name']} arguments are not an object")
            except OpenAIProtocolError as exc:
                if self.strict_tool_arguments:
                    raise
                args, problem = {}, str(exc)[:200]
            calls.append(
                ToolCall(
                    id=slot["id"] or f"call_{index}",
                    name=slot["name"],
                    arguments=args,
                    index=index,
                    arguments_error=problem,
                )
            )
        self._tools.clear()
        return tuple(calls)


class ChatStreamDecoder:
    """SSE framing plus chunk interpretation: ``feed(bytes)`` -> chat events, keep-alives and :class:`Done`."""

    def __init__(self, strict_tool_arguments: bool = True) -> None:
        self.sse = SSEParser()
        self.chunks = ChunkInterpreter(strict_tool_arguments)

    @property
    def done(self) -> bool:
        return self.sse.done

    @property
    def finished(self) -> bool:
        """A finish_reason arrived (the answer is complete even if [DONE] never comes)."""
        return self.chunks.finish_reason is not None

    def feed(self, data: bytes) -> list[ChatEvent | KeepAlive | Done]:
        out: list[ChatEvent | KeepAlive | Done] = []
        for item in self.sse.feed(data):
            if isinstance(item, SSEEvent):
                out.extend(self.chunks.feed(item.data))
            elif isinstance(item, Comment):
                out.append(KeepAlive(item.text))
            else:
                out.append(item)
        return out


# ---------------------------------------------------------------- non-streaming responses


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    finish_reason: str | None
    model: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None
    error: StreamError | None = None


def parse_completion(body: bytes | str) -> Completion:
    """A non-streaming ``chat.completion`` (200). A choice with finish_reason "error" sets ``error``."""
    obj = _obj(_loads(body, "response"), "response")
    if obj.get("error"):
        err = _error(obj["error"])
        return Completion("", "error", obj.get("model"), error=err)
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        raise OpenAIProtocolError("response has no choices")
    choice = _obj(choices[0], "choice")
    msg = _obj(choice.get("message") or {}, "message")
    content = _opt_str(msg.get("content"), "message.content") or ""
    reason = _opt_str(choice.get("finish_reason"), "finish_reason")
    calls = []
    raw_calls = msg.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise OpenAIProtocolError("message.tool_calls is not a list")
    interp = ChunkInterpreter()
    for pos, call in enumerate(raw_calls):
        interp._tool_fragment(_obj(call, "tool call"), pos)
    calls = list(interp._finish_tools())
    error = _error(choice.get("error") or {"message": "finish_reason error"}) if reason == "error" else None
    usage = parse_usage(obj["usage"]) if obj.get("usage") is not None else None
    model = obj.get("model") if isinstance(obj.get("model"), str) else None
    return Completion(content, reason, model, tuple(calls), usage, error)


# ---------------------------------------------------------------- errors before the stream


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """An HTTP error body, whichever envelope: OpenRouter (int code), OpenAI/CallMissed (type + str code),
    Sarvam (str code, request_id, param; no type)."""

    message: str
    code: int | str | None = None
    type: str | None = None
    param: str | None = None
    request_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_error_body(body: bytes | str) -> ErrorBody:
    obj = _obj(_loads(body, "error body"), "error body")
    err = obj.get("error")
    if isinstance(err, str):  # some gateways: {"error": "text"}
        return ErrorBody(message=err)
    if err is None and isinstance(obj.get("detail"), str):  # FastAPI-style {"detail": "..."}
        return ErrorBody(message=obj["detail"])
    err = _obj(err, "error body .error")
    code = err.get("code")
    if isinstance(code, bool) or not (code is None or isinstance(code, int | str)):
        raise OpenAIProtocolError(f"error.code is neither int nor string: {code!r:.80}")
    message = err.get("message")
    meta = err.get("metadata")
    return ErrorBody(
        message=message if isinstance(message, str) else "",
        code=code,
        type=err.get("type") if isinstance(err.get("type"), str) else None,
        param=err.get("param") if isinstance(err.get("param"), str) else None,
        request_id=err.get("request_id") if isinstance(err.get("request_id"), str) else None,
        metadata=meta if isinstance(meta, dict) else {},
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (a number or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            secs = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a year past datetime's range
            return None
    if not math.isfinite(secs):  # "nan", "inf"
        return None
    return max(0.0, secs)


# ---------------------------------------------------------------- request bodies

_COMMON_EXTRAS = frozenset({"top_p", "stop", "seed", "frequency_penalty", "presence_penalty", "tool_choice"})
_SARVAM_V1_EXTRAS = _COMMON_EXTRAS | {"n", "reasoning_effort", "response_format"}
_SARVAM_V2_EXTRAS = _SARVAM_V1_EXTRAS | {"top_k", "min_p", "repetition_penalty", "parallel_tool_calls"}
# Extra top-level fields each flavor may carry beyond what build_body always sets. An allow-list:
# everything else is dropped (Sarvam answers 400 to any field it does not know).
EXTRA_FIELDS: dict[str, frozenset[str]] = {
    "openrouter": _COMMON_EXTRAS
    | {
        "models",
        "provider",
        "session_id",
        "reasoning",
        "reasoning_effort",
        "service_tier",
        "plugins",
        "metadata",
        "user",
        "parallel_tool_calls",
        "response_format",
    },
    "sarvam": _SARVAM_V1_EXTRAS,
    "sarvam/v2": _SARVAM_V2_EXTRAS,
    "callmissed": _COMMON_EXTRAS
    | {
        "parallel_tool_calls",
        "response_format",
        "user",
        "top_k",
        "repetition_penalty",
        "structured_outputs",
        "reasoning_effort",
    },
    "openai": _COMMON_EXTRAS
    | {"parallel_tool_calls", "response_format", "user", "reasoning_effort", "service_tier", "metadata"},
}
# CallMissed passes these through to OpenRouter for frontier models (ids with a slash).
CALLMISSED_FRONTIER_EXTRAS = frozenset({"provider", "models", "route", "plugins", "reasoning", "transforms"})

_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
_SARVAM_ROLES = frozenset({"system", "user", "assistant", "tool"})


def allowed_extras(flavor: str, model: str = "", api_version: str = "v1") -> frozenset[str]:
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}; choose one of {FLAVORS}")
    if flavor == "sarvam":
        return EXTRA_FIELDS["sarvam/v2" if api_version == "v2" else "sarvam"]
    if flavor == "callmissed" and "/" in model:
        return EXTRA_FIELDS["callmissed"] | CALLMISSED_FRONTIER_EXTRAS
    return EXTRA_FIELDS[flavor]


def _messages(flavor: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"a message must be a dict with a role: {m!r:.80}")
        if flavor == "sarvam":
            m = {k: v for k, v in m.items() if k in _MESSAGE_KEYS}
            if m["role"] not in _SARVAM_ROLES:
                m["role"] = "user"  # Sarvam has no developer role
        out.append(m)
    return out


def build_body(
    flavor: str,
    request: LLMRequest,
    *,
    stream: bool = True,
    extra: dict[str, Any] | None = None,
    api_version: str = "v1",
) -> dict[str, Any]:
    """The JSON body for ``flavor`` from the neutral request. ``extra`` fields outside the flavor's
    allow-list are dropped (with a log line); ``api_version`` matters for Sarvam only ("v1"/"v2")."""
    allowed = allowed_extras(flavor, request.model, api_version)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": _messages(flavor, request.messages),
        "stream": stream,
        "temperature": request.temperature,
    }
    # OpenAI's newer models reject max_tokens; Sarvam rejects max_completion_tokens.
    body["max_completion_tokens" if flavor == "openai" else "max_tokens"] = request.max_tokens
    if request.tools:
        body["tools"] = request.tools
    if stream and (flavor in ("callmissed", "openai") or (flavor == "sarvam" and api_version == "v2")):
        # OpenRouter always sends usage; Sarvam v1 knows no stream_options.
        body["stream_options"] = {"include_usage": True}
    dropped = []
    if request.response_format:
        extra = {"response_format": request.response_format, **(extra or {})}
    for key, value in (extra or {}).items():
        if key in allowed and key not in body:
            body[key] = value
        else:
            dropped.append(key)
    if "tool_choice" in body and not request.tools:
        del body["tool_choice"]  # rejected without tools (Sarvam), meaningless elsewhere
        dropped.append("tool_choice")
    if dropped:
        log.debug("%s body: dropped fields %s", flavor, sorted(dropped))
    return body
