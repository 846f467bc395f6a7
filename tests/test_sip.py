"""SIP user agent units: message parsing (fuzzed), SDP, RTP, DTMF, jitter buffer, digest, the dialog
state machine (two sans-I/O UAs talking), and RTP from unknown addresses / floods on real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxroute.agent.link import InboundAudio
from voxroute.agent.prom import PromMetrics
from voxroute.emulators.sip_carrier import SipPhone
from voxroute.telephony.sip import auth, rtp, sdp
from voxroute.telephony.sip.message import (
    SipParseError,
    StreamParser,
    parse,
    parse_name_addr,
    parse_uri,
    response,
)
from voxroute.telephony.sip.transport import RTP_TOTALS, SipLink, SipServer, serving
from voxroute.telephony.sip.ua import (
    CallAnswered,
    CallTerminated,
    IncomingCall,
    IncomingRefer,
    Registration,
    RegistrationState,
    Send,
    TransferResult,
    UserAgent,
)

INVITE = (
    b"INVITE sip:agent@127.0.0.1:5070 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bK776asdhds, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKproxy\r\n"
    b"Max-Forwards: 70\r\n"
    b'f: "Alice" <sip:alice@10.0.0.1>;tag=1928301774\r\n'
    b"t: <sip:agent@127.0.0.1>\r\n"
    b"i: a84b4c76e66710@10.0.0.1\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"m: <sip:alice@10.0.0.1:5061>\r\n"
    b"Subject: a folded\r\n  header\r\n"
    b"c: application/sdp\r\n"
    b"l: 4\r\n\r\n"
    b"v=0\r\nEXTRA"
)

OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 8 0 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-16\r\na=ptime:20\r\n"
)


# --------------------------------------------------------------------------- messages


def test_parse_compact_folded_multi_value_and_content_length() -> None:
    msg = parse(INVITE)
    assert msg.method == "INVITE" and msg.uri == "sip:agent@127.0.0.1:5070"
    assert msg.call_id == "a84b4c76e66710@10.0.0.1"
    assert msg.cseq == (314159, "INVITE")
    vias = msg.get_all("Via")
    assert len(vias) == 2 and msg.top_via.branch == "z9hG4bK776asdhds" and msg.top_via.port == 5061
    assert msg.from_addr.display == "Alice" and msg.from_addr.tag == "1928301774"
    assert msg.to_addr.tag is None
    assert msg.get("Subject") == "a folded header"
    assert msg.get("Content-Type") == "application/sdp"
    assert msg.body == b"v=0\r"  # Content-Length wins over trailing bytes
    again = parse(msg.to_bytes())
    assert again.headers == msg.headers and again.body == msg.body


def test_response_copies_transaction_headers_and_adds_a_to_tag() -> None:
    req = parse(INVITE)
    resp = parse(response(req, 200, to_tag="abc", body=b"x").to_bytes())
    assert resp.status == 200 and resp.reason == "OK"
    assert resp.get_all("Via") == req.get_all("Via")
    assert resp.to_addr.tag == "abc" and resp.from_addr.tag == "1928301774"
    assert resp.cseq == req.cseq and resp.body == b"x"
    assert parse(response(req, 100, to_tag="abc").to_bytes()).to_addr.tag is None  # no tag on 100


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"INVITE sip:a@b SIP/2.0\r\n",  # no blank line
        b"INVITE sip:a@b SIP/3.0\r\n\r\n",
        b"SIP/2.0 99 Odd\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nbad header\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nshort",
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n",
        b"\xff\xfe SIP/2.0\r\n\r\n",
    ],
)
def test_malformed_messages_raise_sip_parse_error(data: bytes) -> None:
    with pytest.raises(SipParseError):
        parse(data)


def test_missing_mandatory_headers_fail_check() -> None:
    msg = parse(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n")
    with pytest.raises(SipParseError):
        msg.check_request()


def test_stream_parser_cuts_messages_by_content_length() -> None:
    p = StreamParser()
    data = b"\r\n\r\n" + parse(INVITE).to_bytes() * 2
    got = p.feed(data[:50]) + p.feed(data[50:])
    assert [m.method for m in got] == ["INVITE", "INVITE"] and got[1].body == b"v=0\r"


def test_uri_and_name_addr() -> None:
    u = parse_uri("sip:+919800000001@[::1]:5080;transport=udp?subject=x")
    assert (u.user, u.host, u.port, u.params) == ("+919800000001", "::1", 5080, {"transport": "udp"})
    na = parse_name_addr("sip:bob@h;tag=9")
    assert na.uri == "sip:bob@h" and na.tag == "9"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        parse(data)
    except SipParseError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_invites_never_crash_the_ua(data) -> None:
    raw = bytearray(INVITE.replace(b"l: 4", b"l: " + str(len(OFFER)).encode()).split(b"\r\n\r\n")[0])
    raw += b"\r\n\r\n" + OFFER
    for _ in range(data.draw(st.integers(0, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "dup"]))
        if op == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 20))]
        elif raw:
            raw[pos:pos] = raw[pos : pos + data.draw(st.integers(1, 20))]
        if not raw:
            break
    ua = UserAgent(("127.0.0.1", 5070), allow_from=["10.0.0.0/8"])
    for action in ua.receive(bytes(raw), ("10.0.0.1", 5061), 0.0):  # SipParseError is handled inside
        if isinstance(action, Send):
            assert parse(action.data).status in (100, 400, 403, 405, 481, 482, 488)


# --------------------------------------------------------------------------- SDP


def test_sdp_answer_follows_the_offerers_codec_order_and_dtmf_pt() -> None:
    offer = sdp.parse(OFFER)
    assert (offer.address, offer.port, offer.payload_types) == ("10.0.0.1", 40000, [8, 0, 96])
    body, agreed = sdp.answer(offer, "127.0.0.1", 30000)
    assert (agreed.codec, agreed.payload_type, agreed.dtmf_pt) == ("PCMA", 8, 96)
    back = sdp.parse(body)
    assert back.payload_types == [8, 96] and back.port == 30000 and back.rtpmap[96][0] == "telephone-event"


def test_sdp_without_g711_is_refused() -> None:
    offer = sdp.parse(
        OFFER.replace(b"8 0 96", b"9 96").replace(b"PCMA", b"G722").replace(b"rtpmap:0 ", b"x:")
    )
    with pytest.raises(SipParseError):
        sdp.negotiate(offer)


# --------------------------------------------------------------------------- RTP


def pkt(seq: int, ts: int | None = None, payload: bytes | None = None, pt: int = 0) -> rtp.RtpPacket:
    ts = seq * 160 if ts is None else ts
    data = rtp.build_packet(pt, seq, ts, 1234, payload if payload is not None else bytes([seq & 0xFF]) * 160)
    return rtp.parse_packet(data)


def test_rtp_header_roundtrip_with_csrc_extension_and_padding() -> None:
    p = rtp.parse_packet(rtp.build_packet(0, 65535, 2**32 - 1, 7, b"ab", marker=True))
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.payload, p.marker) == (
        0,
        65535,
        2**32 - 1,
        7,
        b"ab",
        True,
    )
    raw = bytes([0xB1, 0]) + bytes(10) + b"CSRC" + b"\x00\x01\x00\x01" + b"EXTN" + b"pay" + b"\x00\x02"
    p = rtp.parse_packet(raw)
    assert p.payload == b"pay"
    for bad in (b"\x80", bytes([0x40]) + bytes(11), bytes([0xA0]) + bytes(11) + b"\x09"):
        with pytest.raises(rtp.RtpError):
            rtp.parse_packet(bad)


def test_sender_sequence_and_timestamps_advance_and_wrap() -> None:
    s = rtp.RtpSender(0, 101, ssrc=5)
    s.sequence, s.timestamp = 65535, 2**32 - 160
    a, b = rtp.parse_packet(s.audio(bytes(160))), rtp.parse_packet(s.audio(bytes(160)))
    assert (a.sequence, b.sequence, a.timestamp, b.timestamp) == (65535, 0, 2**32 - 160, 0)
    assert a.marker and not b.marker and a.ssrc == b.ssrc == 5


def test_dtmf_events_are_reported_once_per_keypress() -> None:
    s = rtp.RtpSender(0, 101)
    rx = rtp.DtmfReceiver()
    first = s.dtmf("#")
    s.audio(bytes(160))  # the audio stream keeps the clock between keypresses
    digits = [rx.feed(rtp.parse_packet(p)) for p in first + s.dtmf("#")]
    assert [d for d in digits if d] == ["#", "#"]  # two keypresses (two timestamps), each once
    s.audio(bytes(160))
    ev = rtp.parse_dtmf(rtp.parse_packet(s.dtmf("7")[-1]).payload)
    assert ev.digit == "7" and ev.end and ev.duration == 800


def test_jitter_buffer_reorders() -> None:
    jb = rtp.JitterBuffer(depth=3)
    out = []
    for seq in (1, 3, 2, 4, 6, 5):
        out += jb.push(pkt(seq))
    assert [f.payload[0] for f in out] == [1, 2, 3, 4, 5, 6] and jb.lost == 0


def test_jitter_buffer_conceals_loss_repeat_then_silence_and_keeps_time() -> None:
    jb = rtp.JitterBuffer(depth=2)
    out = []
    for seq in (10, 11, 15, 16, 17, 18):  # 12-14 lost
        out += jb.push(pkt(seq))
    kinds = [f.kind for f in out]
    assert kinds == ["audio", "audio", "repeat", "silence", "silence", "audio", "audio", "audio", "audio"]
    assert out[2].payload == out[1].payload and out[3].payload == b"\xff" * 160
    assert len(out) == 18 - 10 + 1  # one frame per 20 ms sent: no drift
    assert jb.push(pkt(12)) == [] and jb.late == 1  # too late now: dropped


def test_jitter_buffer_wraps_sequence_and_fills_timestamp_gaps() -> None:
    jb = rtp.JitterBuffer(depth=2)
    out = []
    for seq in (65534, 65535, 0, 1):
        out += jb.push(pkt(seq, ts=(seq - 65534) % 65536 * 160))
    assert len(out) == 4 and all(f.kind == "audio" for f in out)
    out = jb.push(pkt(2, ts=(2 + 2 + 3) * 160))  # the sender skipped 3 frames of time
    assert [f.kind for f in out] == ["silence", "audio"] and out[0].payload == b"\xff" * 3 * 160


@pytest.mark.parametrize("ptime_ms", [10, 20, 30, 40, 60])
def test_jitter_buffer_counts_time_by_payload_length_for_any_ptime(ptime_ms: int) -> None:
    """A sender on a fake clock: every packet lasts ``ptime_ms``; what comes out is exactly the
    audio sent (no silence inserted after a 40/60 ms packet), and a pause of the sender (silence
    suppression) comes out as exactly that long a silence."""
    samples = 8 * ptime_ms
    jb = rtp.JitterBuffer(depth=2)
    out: list[rtp.Frame] = []
    seq, sent_samples = 100, 0
    for clock_ms in range(0, 1200, ptime_ms):  # 1.2 s of talk
        if 600 <= clock_ms < 960:
            continue  # the sender pauses for 360 ms (no packets), then talks on
        out += jb.push(pkt(seq, ts=clock_ms * 8, payload=bytes([seq & 0xFF]) * samples))
        seq += 1
        sent_samples += samples
    assert [f.kind for f in out].count("silence") == 1 and jb.lost == 0
    silence = next(f for f in out if f.kind == "silence")
    assert len(silence.payload) == 360 * 8  # the pause, to the sample
    assert sum(len(f.payload) for f in out) == sent_samples + 360 * 8 == 1200 * 8


def test_jitter_buffer_conceals_a_lost_60ms_packet_with_60ms() -> None:
    jb = rtp.JitterBuffer(depth=2)
    out = []
    for seq in (1, 2, 4, 5, 6):  # 3 lost
        out += jb.push(pkt(seq, ts=seq * 480, payload=bytes([seq]) * 480))
    assert [f.kind for f in out] == ["audio", "audio", "repeat", "audio", "audio", "audio"]
    assert [len(f.payload) for f in out] == [480] * 6 and jb.lost == 1


def test_jitter_buffer_skips_numbers_used_by_dtmf() -> None:
    jb = rtp.JitterBuffer(depth=2)
    out = jb.push(pkt(1)) + jb.skip(pkt(2, ts=160, pt=101)) + jb.push(pkt(3, ts=320))
    assert [f.kind for f in out] == ["audio", "audio"] and jb.lost == 0


def test_playout_marks_echo_after_their_audio_and_on_clear() -> None:
    p = rtp.Playout()
    assert p.mark("idle") == ["idle"]
    p.push(b"\x01" * 500)
    assert p.mark("a") == []
    frame, echoed = p.next_frame()
    assert frame is not None and len(frame) == 320 and echoed == []
    frame, echoed = p.next_frame()
    assert frame is not None and frame[180:] == bytes(140) and echoed == ["a"]
    assert p.next_frame() == (None, [])
    p.push(b"\x01" * 640)
    p.mark("b")
    assert p.clear() == ["b"] and p.next_frame() == (None, [])


def test_playout_of_g711_sends_160_byte_frames_and_pads_with_the_codecs_silence() -> None:
    p = rtp.Playout(rtp.SAMPLES_PER_FRAME, rtp.SILENCE["PCMA"])  # a PCMA call: A-law from the TTS
    p.push(b"\x01" * 250)
    assert p.mark("a") == []
    frame, echoed = p.next_frame()
    assert frame == b"\x01" * 160 and echoed == []
    frame, echoed = p.next_frame()
    assert frame == b"\x01" * 90 + b"\xd5" * 70 and echoed == ["a"]  # A-law silence, not 0x00 (a click)


# --------------------------------------------------------------------------- digest


def test_digest_rfc2617_and_rfc7616_vectors() -> None:
    ch = auth.Challenge("testrealm@host.com", "dcd98b7102dd2f0e8b11d0f600bfb0c093", "MD5", ("auth",))
    r = auth.digest_response(
        ch, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b", nc=1, qop="auth"
    )
    assert r == "6629fae49393a05397450978507c4ef1"
    ch = auth.Challenge(
        "http-auth@example.org", "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "SHA-256", ("auth",)
    )
    r = auth.digest_response(
        ch, "GET", "/dir/index.html", "Mufasa", "Circle of Life",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", nc=1, qop="auth",
    )  # fmt: skip
    assert r == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_digest_challenge_parse_and_server_check() -> None:
    ch = auth.parse_challenge(
        'Digest realm="trunk", nonce="n1", qop="auth,auth-int", algorithm=MD5, opaque="o"'
    )
    assert ch.qop == ("auth", "auth-int") and ch.opaque == "o"
    value = auth.authorization(ch, "REGISTER", "sip:trunk", "alice", "s3cret")
    assert auth.check_authorization(value, "REGISTER", "trunk", "n1", {"alice": "s3cret"}) == "alice"
    assert auth.check_authorization(value, "REGISTER", "trunk", "n1", {"alice": "wrong"}) is None
    with pytest.raises(SipParseError):
        auth.parse_challenge("Basic realm=x")


# --------------------------------------------------------------------------- dialogs (two sans-I/O UAs)

AGENT = ("127.0.0.1", 5070)
PHONE = ("127.0.0.2", 5061)


class Wire:
    """Carries Send actions between two UAs; returns the non-Send events of each side."""

    def __init__(self, agent: UserAgent, phone: UserAgent) -> None:
        self.ua = {AGENT: agent, PHONE: phone}
        self.events: dict[tuple[str, int], list] = {AGENT: [], PHONE: []}
        self.sent: list[tuple[tuple[str, int], bytes]] = []
        self.drop = 0

    def deliver(self, actions, source, now: float = 0.0) -> None:
        queue = [(a, source) for a in actions]
        while queue:
            action, src = queue.pop(0)
            if not isinstance(action, Send):
                self.events[src].append(action)
                continue
            self.sent.append((action.addr, action.data))
            if self.drop:
                self.drop -= 1
                continue
            dest = action.addr
            queue += [(a, dest) for a in self.ua[dest].receive(action.data, src, now)]


def dialog(allow=("127.0.0.0/8",)):
    agent = UserAgent(AGENT, allow_from=list(allow))
    phone = UserAgent(PHONE, user="caller")
    wire = Wire(agent, phone)
    call, actions = phone.invite("sip:agent@127.0.0.1:5070", AGENT, sdp.offer(PHONE[0], 40000), 0.0)
    wire.deliver(actions, PHONE)
    return agent, phone, wire, call


def test_invite_trying_answer_ack_bye() -> None:
    agent, phone, wire, pcall = dialog()
    incoming = [e for e in wire.events[AGENT] if isinstance(e, IncomingCall)]
    assert len(incoming) == 1 and parse(wire.sent[1][1]).status == 100
    acall = incoming[0].call
    wire.deliver(agent.answer(acall, ("127.0.0.1", 30000), 0.1), AGENT, 0.1)
    assert any(isinstance(e, CallAnswered) for e in wire.events[PHONE])
    assert acall.state == "confirmed" and pcall.media is not None and pcall.media.remote_port == 30000
    assert pcall.media.codec == "PCMU" and pcall.media.dtmf_pt == 101
    wire.deliver(phone.hangup(pcall, 1.0), PHONE, 1.0)
    assert [e.reason for e in wire.events[AGENT] if isinstance(e, CallTerminated)] == ["bye"]
    assert parse(wire.sent[-1][1]).status == 200 and not agent.calls


def test_ipv6_hosts_are_bracketed_in_via_contact_and_uris_and_bare_in_sdp() -> None:
    agent_addr, phone_addr = ("::1", 5070), ("::1", 5061)
    agent = UserAgent(agent_addr, allow_from=["::1/128"])
    phone = UserAgent(phone_addr, user="caller")
    pcall, actions = phone.invite("sip:agent@[::1]:5070", agent_addr, sdp.offer("::1", 40000), 0.0)
    invite = parse(actions[0].data)
    assert invite.get("Via").startswith("SIP/2.0/UDP [::1]:5061;") and invite.get("Contact") == (
        "<sip:caller@[::1]:5061>"
    )
    assert "<sip:caller@[::1]:5061>" in invite.get("From")
    out = agent.receive(actions[0].data, phone_addr, 0.0)
    [incoming] = [a for a in out if isinstance(a, IncomingCall)]
    [ok] = agent.answer(incoming.call, ("::1", 30000), 0.1)
    answer = parse(ok.data)
    assert answer.status == 200 and answer.get("Contact") == "<sip:voxroute@[::1]:5070>"
    assert b"c=IN IP6 ::1\r\n" in answer.body and b"o=voxroute" in answer.body
    events = phone.receive(ok.data, agent_addr, 0.2)
    assert any(isinstance(e, CallAnswered) for e in events) and pcall.media.remote_address == "::1"
    bye = parse(next(a for a in agent.hangup(incoming.call, 1.0) if isinstance(a, Send)).data)
    assert bye.get("Via").startswith("SIP/2.0/UDP [::1]:5070;") and bye.uri == "sip:caller@[::1]:5061"


def test_unanswered_200_is_retransmitted_until_ack_then_bye_on_timeout() -> None:
    agent, phone, wire, _ = dialog()
    acall = wire.events[AGENT][0].call
    wire.drop = 1  # the 200 OK is lost
    wire.deliver(agent.answer(acall, ("127.0.0.1", 30000), 0.0), AGENT, 0.0)
    resend = agent.tick(0.6)
    assert len(resend) == 1 and parse(resend[0].data).status == 200
    wire.deliver(resend, AGENT, 0.6)  # this one arrives: the phone ACKs
    assert acall.state == "confirmed" and agent.tick(5.0) == []
    # and one nobody ACKs: BYE after 64*T1
    agent2, _, wire2, _ = dialog()
    call2 = wire2.events[AGENT][0].call
    agent2.answer(call2, ("127.0.0.1", 30001), 0.0)
    out = agent2.tick(40.0)
    assert any(isinstance(a, Send) and parse(a.data).method == "BYE" for a in out)
    assert [a.reason for a in out if isinstance(a, CallTerminated)] == ["timeout"]


def test_retransmitted_invite_gets_the_same_answer_and_cancel_gets_487() -> None:
    agent, phone, wire, pcall = dialog()
    invite = next(d for a, d in wire.sent if a == AGENT)
    (again,) = agent.receive(invite, PHONE, 0.2)  # retransmitted before the answer: Trying again
    assert isinstance(again, Send) and parse(again.data).status == 100
    assert len([e for e in wire.events[AGENT] if isinstance(e, IncomingCall)]) == 1  # still one call
    acall = wire.events[AGENT][0].call
    (ok,) = agent.answer(acall, ("127.0.0.1", 30000), 0.25)  # the 200 OK is lost on the way
    assert agent.receive(invite, PHONE, 0.26) == [ok]  # the INVITE again: the same 200 again
    # another call, cancelled before the answer
    agent, phone, wire, pcall = dialog()
    acall = wire.events[AGENT][0].call
    wire.deliver(phone.hangup(pcall, 0.3), PHONE, 0.3)  # before the answer: CANCEL
    statuses = [parse(d).status for a, d in wire.sent if a == PHONE]
    assert 487 in statuses and 200 in statuses
    assert acall.state == "terminated" and [
        e.reason for e in wire.events[AGENT] if isinstance(e, CallTerminated)
    ] == ["cancel"]


def test_invite_from_an_address_not_allowed_gets_403(caplog) -> None:
    agent, _, wire, _ = dialog(allow=["10.0.0.0/8"])
    assert not any(isinstance(e, IncomingCall) for e in wire.events[AGENT])
    assert [parse(d).status for a, d in wire.sent if a == PHONE] == [403]
    assert "not allowed" in caplog.text


def test_options_and_unknown_method() -> None:
    agent = UserAgent(AGENT, allow_from=["127.0.0.0/8"])
    opts = INVITE.replace(b"INVITE", b"OPTIONS").split(b"\r\n\r\n")[0].replace(b"l: 4", b"l: 0") + b"\r\n\r\n"
    (out,) = agent.receive(opts, ("127.0.0.5", 5000), 0)
    resp = parse(out.data)
    assert resp.status == 200 and "REFER" in (resp.get("Allow") or "")
    info = opts.replace(b"OPTIONS", b"INFO")
    assert parse(agent.receive(info, ("127.0.0.5", 5000), 0)[0].data).status == 405


def test_bad_request_gets_400_and_garbage_is_dropped() -> None:
    agent = UserAgent(AGENT, allow_from=["127.0.0.0/8"])
    bad = INVITE.replace(b'f: "Alice" <sip:alice@10.0.0.1>;tag=1928301774', b"f: garbage")
    (out,) = agent.receive(bad, PHONE, 0)
    assert parse(out.data).status == 400 and "addr-spec" in parse(out.data).reason
    (out,) = agent.receive(INVITE, PHONE, 0)  # a readable INVITE whose SDP has no audio line
    assert parse(out.data).status == 400 and "audio" in parse(out.data).reason
    assert agent.receive(INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: x INVITE"), PHONE, 0) == []
    assert agent.receive(b"\x00\x01garbage", PHONE, 0) == []
    bad_sdp = INVITE.replace(b"l: 4", b"l: 9").replace(b"v=0\r\nEXTRA", b"m=video x")
    assert parse(agent.receive(bad_sdp, ("127.0.0.1", 9), 0)[0].data).status in (400, 488)


def test_refer_then_notify_sipfrag_reports_the_transfer() -> None:
    agent, phone, wire, pcall = dialog()
    acall = wire.events[AGENT][0].call
    wire.deliver(agent.answer(acall, ("127.0.0.1", 30000), 0.0), AGENT)
    wire.deliver(agent.refer(acall, "sip:human@pbx", 1.0), AGENT, 1.0)
    (refer,) = [e for e in wire.events[PHONE] if isinstance(e, IncomingRefer)]
    assert refer.target == "sip:human@pbx"
    assert 202 in [parse(d).status for a, d in wire.sent if a == AGENT]
    wire.deliver(phone.notify_refer(pcall, 100, "Trying", 1.1), PHONE)
    assert not any(isinstance(e, TransferResult) for e in wire.events[AGENT])
    wire.deliver(phone.notify_refer(pcall, 486, "Busy Here", 1.2), PHONE)
    (result,) = [e for e in wire.events[AGENT] if isinstance(e, TransferResult)]
    assert not result.ok and result.status == 486


def test_register_with_digest_and_refresh_before_expiry() -> None:
    reg = Registration(("127.0.0.9", 5060), "trunk.example", "alice", "s3cret", expires=120)
    ua = UserAgent(AGENT, registration=reg)
    seen = []

    def registrar(data: bytes) -> bytes:
        req = parse(data)
        seen.append(req)
        value = req.get("Authorization")
        if value and auth.check_authorization(value, "REGISTER", "trunk.example", "n-1", {"alice": "s3cret"}):
            return response(
                req, 200, to_tag="r", headers=[("Contact", f"{req.get('Contact')};expires=60")]
            ).to_bytes()
        challenge = 'Digest realm="trunk.example", nonce="n-1", qop="auth", algorithm=MD5'
        return response(req, 401, to_tag="r", headers=[("WWW-Authenticate", challenge)]).to_bytes()

    def exchange(actions, now):
        events = []
        queue = list(actions)
        while queue:
            a = queue.pop(0)
            if isinstance(a, Send):
                assert a.addr == reg.registrar
                queue += ua.receive(registrar(a.data), reg.registrar, now)
            else:
                events.append(a)
        return events

    (state,) = exchange(ua.register(0.0), 0.0)
    assert isinstance(state, RegistrationState) and state.registered and state.expires == 60
    assert [r.get("Authorization") is None for r in seen] == [True, False]
    assert seen[0].cseq[0] < seen[1].cseq[0] and seen[0].call_id == seen[1].call_id
    assert exchange(ua.tick(20.0), 20.0) == []  # not yet
    (state,) = exchange(ua.tick(31.0), 31.0)  # half of 60 s: re-registered
    assert state.registered and len(seen) == 4
    # wrong password: refused after one try, retried later
    ua.registration.password = "nope"  # type: ignore[union-attr]
    (state,) = exchange(ua.register(40.0), 40.0)
    assert not state.registered and state.status == 401


def test_invite_from_the_registrar_is_allowed_without_allow_list() -> None:
    reg = Registration(("127.0.0.2", 5060), "trunk", "alice", "x")
    agent = UserAgent(AGENT, registration=reg)
    phone = UserAgent(PHONE)
    wire = Wire(agent, phone)
    _, actions = phone.invite("sip:agent@127.0.0.1:5070", AGENT, sdp.offer(PHONE[0], 4000), 0.0)
    wire.deliver(actions, PHONE)
    assert any(isinstance(e, IncomingCall) for e in wire.events[AGENT])


# --------------------------------------------------------------------------- real sockets: foreign RTP, floods


async def test_rtp_from_unknown_addresses_and_floods_are_dropped_without_disturbing_other_calls(
    caplog,
) -> None:
    links: list[SipLink] = []
    frames: dict[str, int] = {}

    async def on_call(link: SipLink) -> None:
        links.append(link)
        async for ev in link.events():
            if isinstance(ev, InboundAudio):
                frames[link.start.call_sid] = frames.get(link.start.call_sid, 0) + 1

    server = SipServer(on_call, bind=("127.0.0.1", 0))
    before = dataclasses.replace(RTP_TOTALS)
    async with serving(server), SipPhone.running() as phone:
        assert server.address is not None
        target = f"sip:agent@127.0.0.1:{server.address[1]}"
        a = await phone.call(target)
        b = await phone.call(target)
        assert await a.answered and await b.answered
        await asyncio.sleep(0.05)
        for _ in range(10):  # both calls latch their callers' RTP addresses
            a.send_audio(b"\x00" * 160)
            b.send_audio(b"\x00" * 160)
        await asyncio.sleep(0.05)
        link_a = next(x for x in links if x.call.call_id == a.call.call_id)
        link_b = next(x for x in links if x.call.call_id == b.call.call_id)
        rtp_port_a = link_a._rtp.get_extra_info("sockname")[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            attacker.bind(("127.0.0.1", 0))
            junk = rtp.build_packet(0, 1, 1, 99, b"\x00" * 160)
            for i in range(300):
                attacker.sendto(junk, ("127.0.0.1", rtp_port_a))
                if i % 50 == 49:
                    await asyncio.sleep(0.01)  # within the socket's receive buffer
        assert a.sender is not None and b.sender is not None
        for i in range(400):  # a flood from call A's own caller
            a.send_audio(b"\x00" * 160)
            if i % 50 == 49:
                await asyncio.sleep(0.01)
        for _ in range(25):  # call B keeps talking at its normal rate
            b.send_audio(b"\x00" * 160)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
    assert link_a.stats.dropped_foreign == 300
    assert link_a.stats.dropped_flood > 200
    assert link_b.stats.dropped_foreign == link_b.stats.dropped_flood == 0
    assert frames[link_b.start.call_sid] == 35  # every frame of call B arrived
    assert "unexpected" in caplog.text and caplog.text.count("unexpected") == 1  # rate-limited log
    # the ended calls' counters reach the process totals, and /metrics through them
    assert RTP_TOTALS.calls - before.calls == 2
    assert RTP_TOTALS.foreign - before.foreign == 300
    assert RTP_TOTALS.flood - before.flood == link_a.stats.dropped_flood
    assert RTP_TOTALS.packets_in - before.packets_in == link_a.stats.packets_in + link_b.stats.packets_in > 35
    metrics = PromMetrics(["default"], [], process=False)
    metrics.watch_rtp(RTP_TOTALS)
    text = metrics.exposition()[0].decode()
    assert f'voxroute_rtp_problems_total{{kind="foreign"}} {float(RTP_TOTALS.foreign)}' in text
    assert f'voxroute_rtp_packets_total{{direction="in"}} {float(RTP_TOTALS.packets_in)}' in text


def test_jitter_buffer_follows_a_sender_that_restarts_its_numbering() -> None:
    jb = rtp.JitterBuffer(depth=2)
    for seq in range(1000, 1005):
        jb.push(pkt(seq))
    out = []
    for seq in range(10, 14):  # far behind: a new stream, not 990 late packets
        out += jb.push(pkt(seq))
    assert [f.payload[0] for f in out] == [10, 11, 12, 13] and jb.late == 0
