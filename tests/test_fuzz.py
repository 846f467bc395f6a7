"""Fuzzing every codec and parser that reads network input: 10,000 inputs per target.

The targets and the mutator are in ``tests/fuzzing.py`` (``bench/fuzz.py`` runs 1,000,000 per
target with the same code). A parser passes when every input either parses or raises the error
it documents; any other exception fails the test and prints the input as hex, to reproduce with
``tests.fuzzing.BY_NAME[target].run(bytes.fromhex(...))``. The inputs are deterministic (seed 0,
or ``VOXROUTE_FUZZ_SEED``), so a failure in CI is a failure on every machine.

The regression cases below are inputs the fuzzer found crashing a parser, cut down by hand to
the bytes that mattered; each says what the parser must do instead. (The SSE one was found
reading the parser while writing its target: a quadratic search, not a crash.)
"""

from __future__ import annotations

import json
import os

import pytest

from tests.fuzzing import BY_NAME, SEP, TARGETS, check, fuzz
from voxroute.agent.providers import openai_protocol as oai
from voxroute.agent.providers import sarvam_protocol as sarvam
from voxroute.telephony import exotel, plivo, telnyx, twilio
from voxroute.telephony.mediastream import CarrierProtocolError
from voxroute.telephony.sip import auth, sdp
from voxroute.telephony.sip import message as sipmsg

INPUTS = 10_000
SEED = int(os.environ.get("VOXROUTE_FUZZ_SEED", "0"))


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_fuzz_target(target) -> None:
    res = fuzz(target, INPUTS, SEED)
    assert res.inputs == INPUTS
    assert not res.bugs, f"{sum(res.bug_kinds.values())} inputs raised undocumented errors:\n" + "\n".join(
        bug.report() for bug in res.bugs[:5]
    )
    # the mutator reached more than the first check: broken inputs fail in several distinct ways
    assert len(res.outcomes) >= (2 if target.expected else 1), res.outcomes


def test_seeds_parse_cleanly() -> None:
    """The seeds are valid messages: were they not, the mutator would only explore error paths."""
    for target in TARGETS:
        for seed in target.seeds:
            assert check(target, seed) is None, (target.name, seed[:120])


def test_a_regression_input_reproduces_from_its_hex() -> None:
    """What a failure prints is enough to replay it: the stream separator survives hex."""
    data = SEP.join([b'{"event":"connected"}', b"{}"])
    assert check(BY_NAME["twilio"], bytes.fromhex(data.hex())) is not None


# ---------------------------------------------------------------- regressions found by fuzzing

SIP_HEAD = b"OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h:5060;branch=z9hG4bK1\r\nFrom: <sip:x@h>;tag=1\r\n"
SIP_HEAD += b"To: <sip:a@h>\r\nCall-ID: c1\r\n"
SUP2 = "²".encode()  # "²".isdigit() is true, int("²") raises ValueError
DEEP = b"[" * 100_000


def _sip(extra: bytes, cseq: bytes = b"1 OPTIONS") -> bytes:
    return SIP_HEAD + b"CSeq: " + cseq + b"\r\n" + extra + b"\r\n"


SIP_REGRESSIONS = [
    _sip(b"Content-Length: " + SUP2 + b"\r\n"),
    _sip(b"Content-Length: 1" + "٣".encode() + b"\r\n"),
    _sip(b"", cseq=SUP2 + b" OPTIONS"),
    _sip(b"Contact: <sip:x@h:5060" + SUP2 + b">\r\n").replace(b"h:5060;", b"h:5060" + SUP2 + b";"),
    _sip(b"").replace(b"h:5060;", b"h:" + b"9" * 5000 + b";"),
]


@pytest.mark.parametrize("data", SIP_REGRESSIONS)
def test_sip_numbers_that_int_rejects_are_parse_errors(data: bytes) -> None:
    with pytest.raises(sipmsg.SipParseError):
        msg = sipmsg.parse(data)
        msg.check_request()


def test_sip_stream_content_length_superscript() -> None:
    with pytest.raises(sipmsg.SipParseError, match="Content-Length"):
        sipmsg.StreamParser().feed(_sip(b"Content-Length: 4" + SUP2 + b"\r\n"))


def test_sip_stream_parses_a_head_once_however_the_bytes_arrive(monkeypatch) -> None:
    """A message trickling in one byte per read (a slow or hostile TCP peer) used to re-search
    and re-parse its head on every read: 3.7 s for a 60 kB head, 1.2 s for a 4 kB body."""
    parsed = []
    real = sipmsg._parse_head
    monkeypatch.setattr(sipmsg, "_parse_head", lambda head: parsed.append(head) or real(head))
    body = b"v=0\r\n" * 500
    data = _sip(b"X-Pad: " + b"a" * 5000 + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n") + body
    parser = sipmsg.StreamParser()
    got = [msg for i in range(len(data)) for msg in parser.feed(data[i : i + 1])]
    assert len(got) == 1 and got[0].body == body and got[0].cseq == (1, "OPTIONS")
    assert len(parsed) == 1
    got = parser.feed(b"\r\n" + data[:10]) + parser.feed(data[10:])  # a keep-alive, then the next one
    assert len(got) == 1 and got[0].body == body and len(parsed) == 2


def test_sip_folded_and_leading_blank_lines_parse_as_before() -> None:
    """Unfolding joined parts with += and skipped blank lines with pop(0): quadratic, 45 ms and
    246 ms for one 64 kB datagram. The values are unchanged."""
    data = b" \r\n" * 3 + _sip(b"Subject: a\r\n b\r\n\tc\r\n")
    msg = sipmsg.parse(data)
    assert msg.method == "OPTIONS" and msg.get("Subject") == "a b c"
    msg = sipmsg.parse(_sip(b"Subject: x\r\n" + b" y\r\n" * 10_000))
    assert msg.get("Subject") == "x" + " y" * 10_000
    with pytest.raises(sipmsg.SipParseError, match="empty message"):
        sipmsg.parse(b" \n" * 1000 + b"\n")


SDP = b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0 8\r\n"


@pytest.mark.parametrize(
    "line",
    [
        b"a=ptime:" + b"9" * 5000,  # over CPython's 4300-digit int() limit
        b"a=ptime:2" + SUP2,
        b"a=rtpmap:" + SUP2 + b" PCMU/8000",
        b"a=fmtp:1" + SUP2 + b" 0-16",
        b"a=rtpmap:0 PCMU/8000" + SUP2,
    ],
)
def test_sdp_attribute_numbers_int_rejects_are_ignored(line: bytes) -> None:
    media = sdp.parse(SDP + line + b"\r\n")
    assert media.port == 4000 and media.payload_types == [0, 8]
    assert sdp.negotiate(media).codec == "PCMU"


@pytest.mark.parametrize("port", [b"4" + SUP2, b"9" * 5000])
def test_sdp_media_port_int_rejects_is_a_parse_error(port: bytes) -> None:
    with pytest.raises(sipmsg.SipParseError, match="bad m= line"):
        sdp.parse(SDP.replace(b"4000", port))


def test_sarvam_number_beyond_float_is_a_protocol_error() -> None:
    text = '{"event":"vad.speech_start","utterance_idx":0,"confidence":1' + "0" * 400 + "}"
    with pytest.raises(sarvam.SarvamProtocolError, match="out of range"):
        sarvam.parse_realtime(text)


@pytest.mark.parametrize("code", ["4" + "²", "9" * 5000])
def test_sarvam_tts_error_code_that_is_not_a_number_is_dropped(code: str) -> None:
    msg = sarvam.parse_tts(json.dumps({"type": "error", "data": {"message": "m", "code": code}}))
    assert isinstance(msg, sarvam.TtsError) and msg.code is None and msg.message == "m"


def test_openai_nesting_deeper_than_the_json_parser_is_a_protocol_error() -> None:
    for parse in (oai.parse_completion, oai.parse_error_body, oai.ChunkInterpreter().feed):
        with pytest.raises(oai.OpenAIProtocolError, match="not JSON"):
            parse(DEEP.decode())
    with pytest.raises(oai.OpenAIProtocolError, match="not JSON"):
        oai.ChatStreamDecoder().feed(b"data: " + DEEP + b"\n")
    interp = oai.ChunkInterpreter()
    frag = {"index": 0, "id": "t", "function": {"name": "f", "arguments": "[" * 100_000}}
    interp.feed_obj({"choices": [{"index": 0, "delta": {"tool_calls": [frag]}}]})
    with pytest.raises(oai.OpenAIProtocolError, match="not JSON"):
        interp.feed_obj({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})


@pytest.mark.parametrize("value", ["Infinity", "NaN", "-Infinity"])
def test_openai_usage_that_is_not_a_finite_count_is_a_protocol_error(value: str) -> None:
    chunk = f'{{"choices":[],"usage":{{"prompt_tokens":{value},"completion_tokens":1}}}}'
    with pytest.raises(oai.OpenAIProtocolError, match="usage.prompt_tokens"):
        oai.ChunkInterpreter().feed(chunk)


def test_sse_long_line_over_many_reads() -> None:
    """A line arriving 1 kB per read used to be searched from its start on every read (quadratic,
    bounded by the 1 MB line cap); the bytes already searched are now skipped."""
    parser = oai.SSEParser()
    line = b'data: {"choices":[{"delta":{"content":"' + b"x" * 300_000 + b'"}}]}'
    items = [item for i in range(0, len(line), 1000) for item in parser.feed(line[i : i + 1000])]
    assert items == [] and parser.pending == len(line)
    assert parser.feed(b"\r") == []  # may be the first half of "\r\n"
    (item,) = parser.feed(b"\n: ping\r")
    assert item == oai.SSEEvent(line[6:].decode())
    assert parser.feed(b"data: [DONE]\n") == [oai.Comment("ping"), oai.Done()]


def test_sse_lines_ended_by_cr_alone() -> None:
    """100k keep-alives ended by a bare "\\r" in one read. Each line used to search the rest of the
    buffer for "\\n" (quadratic: 9.8 s for 320k lines); the scaling probe in bench/fuzz.py measures it."""
    parser = oai.SSEParser()
    items = parser.feed(b": k\r" * 100_000 + b'data: {"choices":[]}\r\n')
    assert len(items) == 100_001
    assert items[0] == oai.Comment("k") and items[-1] == oai.SSEEvent('{"choices":[]}')
    assert parser.pending == 0


@pytest.mark.parametrize(
    "value", ["Wed, 21 Oct 99999999999999999999 07:28:00 GMT", "inf", "1e999", "-inf", "nan"]
)
def test_openai_retry_after_out_of_range_is_unreadable(value: str) -> None:
    assert oai.parse_retry_after(value, now=0.0) is None


@pytest.mark.parametrize(
    ("make", "codec"),
    [
        (exotel.ExotelPeer, exotel.ExotelStream),
        (plivo.PlivoPeer, plivo.PlivoStream),
        (telnyx.TelnyxPeer, telnyx.TelnyxStream),
        (twilio.TwilioPeer, twilio.TwilioStream),
    ],
)
def test_carrier_ids_with_a_lone_surrogate_escape_are_protocol_errors(make, codec) -> None:
    """``"\\ud800"`` is valid JSON but no Unicode text: an Exotel or Plivo stream id holding one went
    back raw into every message we sent on the stream, which then failed to encode."""
    lone = json.dumps(json.loads(make("S\ud800", "C").start()))  # ensure_ascii: the escape on the wire
    with pytest.raises(CarrierProtocolError, match="lone surrogate"):
        codec().feed(lone)
    paired = json.dumps(json.loads(make("S\U0001f600", "C").start()))  # an emoji: "\ud83d\ude00"
    assert "\\ud83d" in paired
    (start,) = codec().feed(paired)
    assert "S\U0001f600" in (getattr(start, "stream_id", None), getattr(start, "stream_sid", None))


def test_provider_text_with_a_lone_surrogate_escape_is_a_protocol_error() -> None:
    """A transcript or an answer is spoken, logged and stored: one holding ``"\\ud800"`` (valid JSON,
    no Unicode text) used to come out of the decoders and fail later, in ``encode``."""
    lone, pair = '"a\\ud800"', '"a\\ud83d\\ude00"'  # the escapes as they are on the wire
    realtime = '{"event":"transcript.final","utterance_idx":0,"text":%s}'
    tts = '{"type":"error","data":{"message":%s}}'
    completion, error = '{"choices":[{"message":{"content":%s}}]}', '{"error":{"message":%s}}'
    with pytest.raises(sarvam.SarvamProtocolError, match="lone surrogate"):
        sarvam.parse_realtime(realtime % lone)
    assert sarvam.parse_realtime(realtime % pair).text == "a\U0001f600"
    with pytest.raises(sarvam.SarvamProtocolError, match="lone surrogate"):
        sarvam.parse_tts(tts % lone)
    chunk = '{"choices":[{"index":0,"delta":{"content":%s}}]}'
    with pytest.raises(oai.OpenAIProtocolError, match="lone surrogate"):
        oai.ChatStreamDecoder().feed(b"data: " + (chunk % lone).encode() + b"\n")
    assert oai.ChunkInterpreter().feed(chunk % pair) == [oai.ContentDelta("a\U0001f600")]
    with pytest.raises(oai.OpenAIProtocolError, match="lone surrogate"):
        oai.parse_completion((completion % lone).encode())
    with pytest.raises(oai.OpenAIProtocolError, match="lone surrogate"):
        oai.parse_error_body((error % lone).encode())
    encoded = (error % '"\ud800"').encode("utf-8", "surrogatepass")  # json.loads(bytes) would take it
    for parse in (oai.parse_error_body, oai.parse_completion):
        with pytest.raises(oai.OpenAIProtocolError, match="not UTF-8"):
            parse(encoded)


def test_digest_response_with_non_ascii_is_refused_not_a_crash() -> None:
    """``hmac.compare_digest`` raises TypeError on str with non-ASCII characters; the registrar's
    check compared the peer's ``response`` as str."""
    value = 'Digest username="alice", realm="trunk", nonce="n1", uri="sip:trunk", response="é"'
    assert auth.check_authorization(value, "REGISTER", "trunk", "n1", {"alice": "s3cret"}) is None
    challenge = auth.Challenge("trunk", "n1")
    good = auth.authorization(challenge, "REGISTER", "sip:trunk", "alice", "s3cret")
    assert auth.check_authorization(good, "REGISTER", "trunk", "n1", {"alice": "s3cret"}) == "alice"
