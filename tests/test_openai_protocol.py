"""Sans-I/O OpenAI-compatible protocol: SSE framing, chunk interpretation, bodies, errors (no sockets)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxroute.agent.providers.base import LLMRequest
from voxroute.agent.providers.openai_protocol import (
    ChatStreamDecoder,
    ChunkInterpreter,
    Comment,
    ContentDelta,
    Done,
    Finish,
    KeepAlive,
    OpenAIProtocolError,
    ReasoningDelta,
    SSEEvent,
    SSEParser,
    StreamError,
    ToolCall,
    Usage,
    build_body,
    parse_completion,
    parse_error_body,
    parse_retry_after,
)

# The reference stream of docs/reference/openai_compatible.md §3, verbatim.
REFERENCE_STREAM = b""": OPENROUTER PROCESSING

data: {"id":"gen-1","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}

data: {"id":"gen-1","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{"content":"Your order"},"finish_reason":null}]}

data: {"id":"gen-1","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{"content":" ships today."},"finish_reason":null}]}

data: {"id":"gen-1","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

data: {"id":"gen-1","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[],"usage":{"prompt_tokens":42,"completion_tokens":5,"total_tokens":47}}

data: [DONE]

"""

TOOL_STREAM = b"""data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_ab12","type":"function","function":{"name":"lookup_order","arguments":""}}]},"finish_reason":null}]}
data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"order_id\\":"}}]},"finish_reason":null}]}
data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"A17\\"}"}}]},"finish_reason":null}]}
data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}
data: [DONE]
"""


def _feed_all(parser: SSEParser, data: bytes, cuts: list[int]) -> list:
    out, prev = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += parser.feed(data[prev:cut])
        prev = cut
    return out


# ---------------------------------------------------------------- SSE framing


def test_sse_reference_stream_in_one_read() -> None:
    items = SSEParser().feed(REFERENCE_STREAM)
    assert items[0] == Comment("OPENROUTER PROCESSING")
    assert sum(isinstance(i, SSEEvent) for i in items) == 5
    assert items[-1] == Done()


def test_sse_byte_by_byte_equals_one_read() -> None:
    parser = SSEParser()
    items = [i for b in REFERENCE_STREAM for i in parser.feed(bytes([b]))]
    assert items == SSEParser().feed(REFERENCE_STREAM)


def test_sse_data_without_space_and_line_endings() -> None:
    parser = SSEParser()
    items = parser.feed(b'data:{"a":1}\r\ndata:  x\rdata: y\n: ping\r')
    assert items == [SSEEvent('{"a":1}'), SSEEvent(" x"), SSEEvent("y")]
    # the trailing \r may be the first half of \r\n: resolved by the next read
    assert parser.feed(b"\n") == [Comment("ping")]
    assert parser.pending == 0


def test_sse_stops_at_done_and_ignores_rest() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]\n\ndata: {not json}\n") == [Done()]
    assert parser.done
    assert parser.feed(b"garbage\n") == []


def test_sse_ignores_event_id_retry_fields() -> None:
    assert SSEParser().feed(b"event: message\nid: 7\nretry: 100\ndata: x\n\n") == [SSEEvent("x")]


def test_sse_rejects_non_sse_line_and_bad_utf8_and_long_line() -> None:
    with pytest.raises(OpenAIProtocolError, match="not an SSE line"):
        SSEParser().feed(b"<html>502 Bad Gateway</html>\n")
    with pytest.raises(OpenAIProtocolError, match="UTF-8"):
        SSEParser().feed(b"data: \xff\xfe\n")
    with pytest.raises(OpenAIProtocolError, match="longer"):
        SSEParser(max_line_bytes=100).feed(b"data: " + b"x" * 200)


def test_sse_partial_line_is_kept_until_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a"') == []
    assert parser.pending > 0
    assert parser.feed(b":1}\n") == [SSEEvent('{"a":1}')]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(REFERENCE_STREAM + TOOL_STREAM)), max_size=40))
def test_fuzz_arbitrary_reads_give_same_events(cuts: list[int]) -> None:
    for stream in (REFERENCE_STREAM, TOOL_STREAM):
        whole = SSEParser().feed(stream)
        assert _feed_all(SSEParser(), stream, [c for c in cuts if c <= len(stream)]) == whole


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=10))
def test_fuzz_garbage_only_raises_protocol_error(data: bytes, cuts: list[int]) -> None:
    decoder = ChatStreamDecoder()
    prev = 0
    try:
        for cut in sorted(c for c in cuts if c <= len(data)) + [len(data)]:
            decoder.feed(data[prev:cut])
            prev = cut
    except OpenAIProtocolError:
        pass


_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=6)
_json_values = (
    _scalars | st.lists(_scalars, max_size=2) | st.dictionaries(st.text(max_size=4), _scalars, max_size=2)
)
_fragment = st.dictionaries(
    st.sampled_from(["index", "id", "function", "type"]),
    _json_values | st.just({"name": "f", "arguments": "{"}),
    max_size=3,
)
_delta = st.dictionaries(
    st.sampled_from(["content", "reasoning", "reasoning_content", "tool_calls", "role"]),
    _json_values | st.lists(_fragment, max_size=2),
    max_size=3,
)
_choice = st.dictionaries(
    st.sampled_from(["delta", "finish_reason", "index", "error"]), _json_values | _delta, max_size=3
)
_chunk = st.dictionaries(
    st.sampled_from(["choices", "usage", "error", "model"]),
    _json_values | st.lists(_choice, max_size=2),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(_chunk, min_size=1, max_size=4))
def test_fuzz_chunk_shapes_only_raise_protocol_error(chunks: list[dict]) -> None:
    interp = ChunkInterpreter()
    try:
        for chunk in chunks:
            interp.feed(json.dumps(chunk))
    except OpenAIProtocolError:
        pass


# ---------------------------------------------------------------- chunks


def test_decoder_reference_stream() -> None:
    events = ChatStreamDecoder().feed(REFERENCE_STREAM)
    assert events == [
        KeepAlive("OPENROUTER PROCESSING"),
        ContentDelta("Your order"),
        ContentDelta(" ships today."),
        Finish("stop"),
        Usage(42, 5, None),
        Done(),
    ]


def test_decoder_tool_calls_parsed_only_at_finish() -> None:
    decoder = ChatStreamDecoder()
    lines = TOOL_STREAM.splitlines(keepends=True)
    assert decoder.feed(b"".join(lines[:3])) == []  # fragments: nothing yet
    events = decoder.feed(b"".join(lines[3:]))
    assert events == [
        Finish("tool_calls", (ToolCall("call_ab12", "lookup_order", {"order_id": "A17"}, 0),)),
        Done(),
    ]


def test_parallel_tool_calls_by_index() -> None:
    interp = ChunkInterpreter()

    def frag(index, **kw):
        return json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, **kw}]}}]})

    interp.feed(frag(0, id="call-a", type="function", function={"name": "a", "arguments": ""}))
    interp.feed(frag(1, id="call-b", type="function", function={"name": "b", "arguments": '{"x"'}))
    interp.feed(frag(0, function={"arguments": "{}"}))
    interp.feed(frag(1, function={"arguments": ": 1}"}))
    (finish,) = interp.feed(
        json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    )
    assert finish.tool_calls == (ToolCall("call-a", "a", {}, 0), ToolCall("call-b", "b", {"x": 1}, 1))


def test_bad_tool_arguments_raise_at_finish() -> None:
    interp = ChunkInterpreter()
    interp.feed_obj(
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}}]}
    )
    interp.feed_obj(
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{bad"}}]}}]}
    )
    with pytest.raises(OpenAIProtocolError, match="not JSON"):
        interp.feed_obj({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})


def test_reasoning_is_never_content_and_empty_content_ignored() -> None:
    interp = ChunkInterpreter()
    events = interp.feed_obj(
        {"choices": [{"delta": {"role": "assistant", "content": "", "reasoning": "hmm"}}]}
    )
    events += interp.feed_obj({"choices": [{"delta": {"reasoning_content": "think", "content": None}}]})
    assert events == [ReasoningDelta("hmm"), ReasoningDelta("think")]


def test_usage_with_openrouter_cost() -> None:
    (usage,) = ChunkInterpreter().feed_obj(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 194,
                "completion_tokens": 2,
                "total_tokens": 196,
                "cost": 0.000095,
                "completion_tokens_details": {"reasoning_tokens": 1},
            },
        }
    )
    assert usage == Usage(194, 2, 0.000095, 1)


@pytest.mark.parametrize("code", [502, "server_error"])
def test_midstream_error_chunk_int_or_str_code(code) -> None:
    interp = ChunkInterpreter()
    chunk = {
        "id": "gen-123",
        "model": "openai/gpt-5.4-mini",
        "provider": "openai",
        "error": {"code": code, "message": "Provider disconnected unexpectedly"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    (err,) = interp.feed(json.dumps(chunk))
    assert err == StreamError(code, "Provider disconnected unexpectedly")
    assert interp.finish_reason == "error"


def test_finish_reason_error_without_top_level_error() -> None:
    (err,) = ChunkInterpreter().feed_obj({"choices": [{"delta": {}, "finish_reason": "error"}]})
    assert isinstance(err, StreamError)


@pytest.mark.parametrize(
    "data",
    [
        "{not json",
        "[1, 2]",
        '{"choices": {"a": 1}}',
        '{"choices": [{"delta": "x"}]}',
        '{"choices": [{"delta": {"content": 5}}]}',
        '{"choices": [], "usage": {"prompt_tokens": "many"}}',
        '{"choices": [{"delta": {"tool_calls": [{"index": -1}]}}]}',
    ],
)
def test_malformed_chunks_raise(data: str) -> None:
    with pytest.raises(OpenAIProtocolError):
        ChunkInterpreter().feed(data)


def test_model_of_the_answer_is_recorded() -> None:
    interp = ChunkInterpreter()
    interp.feed_obj({"model": "fallback/model", "choices": [{"delta": {"content": "hi"}}]})
    assert interp.model == "fallback/model"


def test_parse_completion_with_tool_calls_and_error() -> None:
    body = {
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    c = parse_completion(json.dumps(body))
    assert c.tool_calls == (ToolCall("c1", "f", {"a": 1}, 0),) and c.usage == Usage(3, 4)
    body["choices"][0] = {
        "finish_reason": "error",
        "message": {"content": ""},
        "error": {"code": 502, "message": "x"},
    }
    assert parse_completion(json.dumps(body)).error == StreamError(502, "x")


# ---------------------------------------------------------------- errors


def test_error_envelopes() -> None:
    orr = parse_error_body(
        b'{"error": {"code": 429, "message": "Rate limit exceeded", "metadata": {"raw": "r"}}}'
    )
    assert (orr.code, orr.message, orr.metadata) == (429, "Rate limit exceeded", {"raw": "r"})
    sarvam = parse_error_body(
        '{"error": {"message": "Unknown field: provider", "code": "invalid_request_error",'
        ' "request_id": "20260301_x", "param": "provider"}}'
    )
    assert (sarvam.code, sarvam.param, sarvam.request_id, sarvam.type) == (
        "invalid_request_error",
        "provider",
        "20260301_x",
        None,
    )
    cm = parse_error_body(
        '{"error": {"message": "Invalid API key", "type": "invalid_request_error", "code": "invalid_api_key"}}'
    )
    assert (cm.code, cm.type) == ("invalid_api_key", "invalid_request_error")


@pytest.mark.parametrize("body", [b"<html>", b"[]", b'{"error": 5}', b'{"error": {"code": [1]}}', b"{}"])
def test_bad_error_bodies_raise(body: bytes) -> None:
    with pytest.raises(OpenAIProtocolError):
        parse_error_body(body)


def test_retry_after() -> None:
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


# ---------------------------------------------------------------- request bodies

TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
OPENROUTER_ONLY = {
    "models": ["a", "b"],
    "provider": {"sort": "latency"},
    "session_id": "s1",
    "reasoning": {"effort": "low"},
    "plugins": [],
    "route": "fallback",
    "usage": {"include": True},
    "max_completion_tokens": 5,
    "stream_options": {"include_usage": True},
}


def _req(**kw) -> LLMRequest:
    messages = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi", "extra": 1}]
    return LLMRequest(model="sarvam-105b", messages=messages, **kw)


def test_sarvam_body_has_only_sarvam_fields() -> None:
    body = build_body("sarvam", _req(), extra={**OPENROUTER_ONLY, "tool_choice": "auto", "top_p": 0.9})
    assert set(body) == {"model", "messages", "stream", "temperature", "max_tokens", "top_p"}
    assert body["messages"] == [{"role": "user", "content": "be brief"}, {"role": "user", "content": "hi"}]


def test_sarvam_v2_gets_usage_and_tool_choice_with_tools() -> None:
    body = build_body(
        "sarvam", _req(tools=TOOLS), extra={"tool_choice": "auto", "top_k": 5}, api_version="v2"
    )
    assert body["stream_options"] == {"include_usage": True}
    assert body["tool_choice"] == "auto" and body["tools"] == TOOLS and body["top_k"] == 5
    assert "top_k" not in build_body("sarvam", _req(), extra={"top_k": 5})  # v1 has no top_k


def test_openrouter_body_keeps_routing_extras() -> None:
    body = build_body("openrouter", _req(), extra=OPENROUTER_ONLY)
    assert (
        body["models"] == ["a", "b"]
        and body["provider"] == {"sort": "latency"}
        and body["session_id"] == "s1"
    )
    assert "route" not in body and "usage" not in body and "stream_options" not in body
    assert body["max_tokens"] == 200 and "max_completion_tokens" not in body
    assert body["messages"][0]["role"] == "developer"


def test_callmissed_and_openai_bodies() -> None:
    cm = build_body("callmissed", _req(), extra={"models": ["x"], "top_k": 3})
    assert cm["stream_options"] == {"include_usage": True} and "models" not in cm and cm["top_k"] == 3
    frontier = build_body(
        "callmissed",
        LLMRequest("openai/gpt-5.4-mini", [{"role": "user", "content": "x"}]),
        extra={"models": ["x"]},
    )
    assert frontier["models"] == ["x"]
    oa = build_body("openai", _req())
    assert oa["max_completion_tokens"] == 200 and "max_tokens" not in oa


def test_unknown_flavor_rejected() -> None:
    with pytest.raises(ValueError):
        build_body("anthropic", _req())
