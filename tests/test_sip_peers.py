"""The SIP user agent against real SIP peers (sipp, baresip) on 127.0.0.1, with the real runtime.

Debian packages ``sip-tester`` (sipp) and ``baresip-core``; each test skips when its tool is
missing, unless VOXROUTE_REQUIRE_SERVICES=1 (then it fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import webrtcvad

from tests.conftest import services_required
from voxroute.agent.config import load_config
from voxroute.agent.fixture import load
from voxroute.agent.link import InboundAudio
from voxroute.agent.session import CallSession
from voxroute.audio import pcm_to_wire, ulaw_to_pcm16
from voxroute.replay import local_stack
from voxroute.telephony.sip import rtp
from voxroute.telephony.sip.transport import SipLink, SipServer, SipTransferRefused, SipTransfers, serving
from voxroute.telephony.sip.ua import Registration
from voxroute.testing.ports import free_port

SIPP_PCAPS = Path("/usr/share/sip-tester")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if services_required():
            pytest.fail(f"{tool} is required (VOXROUTE_REQUIRE_SERVICES=1) but not installed")
        pytest.skip(f"{tool} not installed (apt-get install -y sip-tester baresip-core)")
    return path


@contextlib.asynccontextmanager
async def runtime_with_sip(fixture_name: str) -> AsyncIterator[tuple[object, SipServer, list[SipLink]]]:
    """The real runtime (emulated providers) with a SIP UA on a free 127.0.0.1 port."""
    fx = load(fixture_name)
    links: list[SipLink] = []
    async with local_stack("reference", 0, [fx]) as stack:

        async def on_call(link) -> None:
            links.append(link)
            await CallSession(link, stack.services).run()

        server = SipServer(on_call, bind=("127.0.0.1", 0), allow_from=["127.0.0.1/32"])
        async with serving(server):
            yield stack, server, links


async def run(*cmd: str, limit_s: float, cwd: Path | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(limit_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -1, out.decode(errors="replace")
    return proc.returncode or 0, out.decode(errors="replace")


async def call_record(server_url: str, call_sid: str) -> dict:
    async with httpx.AsyncClient(base_url=server_url, timeout=5) as http:
        for _ in range(60):
            r = await http.get(f"/calls/{call_sid}")
            if r.status_code == 200 and r.json().get("ended") != "in_progress":
                return r.json()
            await asyncio.sleep(0.1)
    return r.json() if r.status_code == 200 else {}


# --------------------------------------------------------------------------- sipp scenarios

ACK = """
  <send><![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:919800000001@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
"""

INVITE = """
  <send retrans="500"><![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:919800000001@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[local_ip_type] [local_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-11,16
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true"/>
"""
INVITE += ACK

BYE = """
  <send retrans="500"><![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:919800000001@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv response="200" crlf="true"/>
"""

AUDIO_AND_DTMF = """
  <nop><action><exec rtp_stream="caller.ulaw,1,0"/></action></nop>
  <pause milliseconds="3200"/>
  <nop><action><exec play_pcap_audio="pcap/dtmf_2833_4.pcap"/></action></nop>
  <pause milliseconds="3000"/>
"""  # the digit is a turn after endpoint.dtmf_timeout_ms (1 s): hang up well after that


def refer_answer(status: str, sipfrag: str) -> str:
    """sipp answers the agent's REFER with ``status`` and, on 202, a NOTIFY carrying ``sipfrag``."""
    reply = f"""
  <recv request="REFER"/>
  <send><![CDATA[
      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Content-Length: 0
  ]]></send>
"""
    if status.startswith("202"):
        reply += f"""
  <send retrans="500"><![CDATA[
      NOTIFY sip:agent@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:919800000001@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 3 NOTIFY
      Event: refer
      Subscription-State: terminated;reason=noresource
      Content-Type: message/sipfrag;version=2.0
      Max-Forwards: 70
      Content-Length: [len]

      {sipfrag}
  ]]></send>
  <recv response="200"/>
"""
    return reply


AGENT_BYE = """
  <recv request="BYE" timeout="15000"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>
"""


def scenario(name: str, body: str) -> str:
    return f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="{name}">{body}</scenario>\n'


def sipp_dir(tmp_path: Path, seconds: float = 3.0) -> Path:
    (tmp_path / "pcap").mkdir()
    for pcap in SIPP_PCAPS.glob("dtmf_2833_*.pcap"):
        (tmp_path / "pcap" / pcap.name).symlink_to(pcap)
    fx = load("order_status")
    (tmp_path / "caller.ulaw").write_bytes(fx.ulaw[: int(seconds * 8000)])  # headerless mu-law
    return tmp_path


def sipp_cmd(server: SipServer, xml: Path, timeout_s: int = 20) -> list[str]:
    assert server.address is not None
    host, port = server.address
    return [
        need("sipp"),
        f"{host}:{port}",
        "-sf",
        str(xml),
        "-s",
        "agent",
        "-i",
        "127.0.0.1",
        "-mi",
        "127.0.0.1",
        "-p",
        str(free_port(udp=True)),
        "-mp",
        str(free_port(udp=True)),
        "-m",
        "1",
        "-l",
        "1",
        "-nostdin",
        "-timeout",
        f"{timeout_s}s",
    ]


async def test_sipp_calls_with_pcmu_and_rfc2833_dtmf(tmp_path: Path) -> None:
    need("sipp")
    d = sipp_dir(tmp_path)
    xml = d / "call.xml"
    xml.write_text(scenario("audio and dtmf", INVITE + AUDIO_AND_DTMF + BYE))
    async with runtime_with_sip("order_status") as (stack, server, links):
        code, out = await run(*sipp_cmd(server, xml), limit_s=30, cwd=d)
        assert code == 0, out[-2000:]
        assert len(links) == 1
        link = links[0]
        call = await call_record(stack.server_url, link.start.call_sid)
    assert link.codec == "PCMU"
    # 3.0 s of caller audio in 20 ms packets, then the DTMF event's packets
    assert 145 <= link.stats.packets_in <= 170, link.stats
    assert link.stats.dropped_foreign == link.stats.dropped_flood == 0
    # the agent answered with a live RTP stream, to the media port sipp offered
    assert link.stats.packets_out >= 4.0 / 0.02 * 0.9, link.stats
    assert link.remote_rtp[0] == "127.0.0.1"
    assert call["carrier"] == "sip" and link.start.from_number == "919800000001"
    assert call["from_number"].endswith("0001") and "9198" not in call["from_number"]  # masked in views
    transcripts = [t.get("transcript") or "" for t in call["turns"]]
    assert any("order" in t.lower() for t in transcripts), transcripts
    assert any("4" in t for t in transcripts), transcripts  # the keypad digit arrived as a turn


def read_pcm_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == 8000 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


async def test_baresip_dials_and_hears_the_agent(tmp_path: Path) -> None:
    baresip = need("baresip")
    fx = load("order_status")
    utt = fx.script.utterances[0]
    caller = tmp_path / "caller.wav"
    pcm = np.frombuffer(ulaw_to_pcm16(fx.ulaw), "<i2")
    pcm = np.concatenate([pcm[: utt.end_ms * 8 + 400 * 8], np.zeros(8000 * 20, "<i2")])  # outlasts the call
    with wave.open(str(caller), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())
    rec = tmp_path / "rec"
    rec.mkdir()
    (tmp_path / "config").write_text(
        f"""sip_listen 127.0.0.1:0
audio_source aufile,{caller}
audio_player aufile,/dev/null
ausrc_srate 8000
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module account.so
module menu.so
module sndfile.so
snd_path {rec}
"""
    )
    (tmp_path / "accounts").write_text("<sip:caller@127.0.0.1>;regint=0;audio_codecs=PCMU\n")
    seconds = 9
    async with runtime_with_sip("order_status") as (stack, server, links):
        assert server.address is not None
        target = f"sip:agent@127.0.0.1:{server.address[1]}"
        code, out = await run(
            baresip, "-f", str(tmp_path), "-e", f"/dial {target}", "-t", str(seconds), limit_s=seconds + 10
        )
        assert code == 0, out[-2000:]
        assert len(links) == 1, out[-2000:]
        call = await call_record(stack.server_url, links[0].start.call_sid)
    heard = read_pcm_wav(next(rec.glob("*-dec.wav")))
    # what baresip received: the whole call (minus set-up), and the agent's spoken reply in it
    assert seconds - 3 <= len(heard) / 8000 <= seconds + 1
    frames = heard[: len(heard) // 160 * 160].reshape(-1, 160)
    voiced = np.abs(frames.astype(np.int32)).max(axis=1) > 1000
    assert voiced.sum() * 0.02 >= 1.0, f"only {voiced.sum() * 0.02:.2f} s of agent audio"
    first_voiced_s = np.argmax(voiced) * 0.02
    assert first_voiced_s >= utt.end_ms / 1000, "the agent spoke before the caller finished"
    assert call["carrier"] == "sip"
    assert call["turns"] and "order" in (call["turns"][0].get("transcript") or "").lower()
    assert call["turns"][0]["first_audio_ms"] is not None


@contextlib.asynccontextmanager
async def transfer_agent() -> AsyncIterator[tuple[SipServer, SipTransfers, asyncio.Queue]]:
    """A SIP agent whose calls ask for a transfer one second in (the session's call, made directly)."""
    outcomes: asyncio.Queue = asyncio.Queue()
    holder: dict[str, SipTransfers] = {}

    async def on_call(link: SipLink) -> None:
        await asyncio.sleep(1.0)
        try:
            ok = await holder["t"].transfer(link.start.call_sid, "sip:human@127.0.0.1:5999", None)
            outcomes.put_nowait(("ok", ok))
        except SipTransferRefused as exc:
            outcomes.put_nowait(("refused", str(exc)))
            await link.send_audio(
                pcm_to_wire(np.full(8000, 3000, "<i2").tobytes(), link.audio_format)
            )  # apology
        async for _ in link.events():
            pass

    server = SipServer(on_call, bind=("127.0.0.1", 0))
    holder["t"] = SipTransfers(server, timeout_s=10)
    async with serving(server):
        yield server, holder["t"], outcomes


async def test_refer_blind_transfer_accepted_by_sipp(tmp_path: Path) -> None:
    need("sipp")
    xml = tmp_path / "refer.xml"
    xml.write_text(scenario("refer ok", INVITE + refer_answer("202 Accepted", "SIP/2.0 200 OK") + AGENT_BYE))
    async with transfer_agent() as (server, _, outcomes):
        code, out = await run(*sipp_cmd(server, xml), limit_s=30, cwd=tmp_path)
        assert code == 0, out[-2000:]
        assert outcomes.get_nowait() == ("ok", True)


async def test_refer_refused_apologises_then_hangs_up(tmp_path: Path) -> None:
    need("sipp")
    xml = tmp_path / "refer_no.xml"
    xml.write_text(scenario("refer refused", INVITE + refer_answer("603 Decline", "") + AGENT_BYE))
    async with transfer_agent() as (server, _, outcomes):
        t0 = asyncio.get_running_loop().time()
        code, out = await run(*sipp_cmd(server, xml), limit_s=30, cwd=tmp_path)
        took = asyncio.get_running_loop().time() - t0
        assert code == 0, out[-2000:]  # sipp got the agent's BYE
        kind, detail = outcomes.get_nowait()
        assert kind == "refused" and "603" in detail
        assert took >= 1.0 + 1.0  # BYE only after the 1 s apology played


def test_sipp_is_the_real_tool() -> None:
    path = need("sipp")
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False).stdout
    assert "SIPp" in out


def registrar_cycle(label: str) -> str:
    """sipp as a registrar: 401 with a digest challenge, then check the answer (sipp's verifyauth)."""
    return f"""
  <recv request="REGISTER"/>
  <send><![CDATA[
      SIP/2.0 401 Unauthorized
      [last_Via:]
      [last_From:]
      [last_To:];tag=reg[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      WWW-Authenticate: Digest realm="trunk.example", nonce="n{label}[call_number]", qop="auth", algorithm=MD5
      Content-Length: 0
  ]]></send>
  <recv request="REGISTER">
    <action><verifyauth assign_to="ok{label}" username="alice" password="s3cret"/></action>
  </recv>
  <nop hide="true" test="ok{label}" next="good{label}"/>
  <send><![CDATA[
      SIP/2.0 403 Forbidden
      [last_Via:]
      [last_From:]
      [last_To:];tag=reg[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>
  <recv request="NEVER" timeout="300"/>
  <label id="good{label}"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=reg[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Contact:];expires=2
      Content-Length: 0
  ]]></send>
"""


async def test_register_with_digest_to_sipp_and_refresh_before_expiry(tmp_path: Path) -> None:
    sipp = need("sipp")
    xml = tmp_path / "registrar.xml"
    xml.write_text(scenario("registrar", registrar_cycle("a") + registrar_cycle("b")))
    port = free_port(udp=True)
    registration = Registration(("127.0.0.1", port), "trunk.example", "alice", "s3cret", expires=60)

    async def on_call(link) -> None:
        pass

    proc = await asyncio.create_subprocess_exec(
        sipp, "-sf", str(xml), "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-nostdin", "-timeout", "10s",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    await asyncio.sleep(0.3)  # sipp binds its port
    server = SipServer(on_call, bind=("127.0.0.1", 0), registration=registration)
    states = []
    async with serving(server):
        t0 = asyncio.get_running_loop().time()
        for _ in range(50):
            state = server.registration_state
            if state is not None and not any(state is seen for seen in states):
                states.append(state)
            if len(states) >= 2:
                break
            await asyncio.sleep(0.1)
        took = asyncio.get_running_loop().time() - t0
    async with asyncio.timeout(10):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    assert [s.registered for s in states] == [True, True]  # registered, then refreshed
    assert states[0].expires == 2 and 0.9 <= took <= 3.0  # the refresh came at half of the 2 s granted


# --------------------------------------------------------------------------- real phones' media
# sipp replays RTP from a pcap with the pcap's own timing: 30 ms packets (as sipp's bundled
# pcaps and many phones send), and a stream that simply stops after the caller has spoken
# (silence suppression). What crossed the agent's RTP socket, and when, is the wire.


def write_rtp_pcap(path: Path, ulaw: bytes, ptime_ms: int, *, first_seq: int = 1000) -> int:
    """A pcap (Ethernet/IPv4/UDP) of PCMU RTP packets of ``ptime_ms`` each, spaced ``ptime_ms``
    apart, for sipp's ``play_pcap_audio``. Returns the number of packets."""
    samples = 8 * ptime_ms
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # pcap header, Ethernet
    n = 0
    for n, start in enumerate(range(0, len(ulaw), samples)):
        packet = rtp.build_packet(0, first_seq + n, start, 0x5EED5EED, ulaw[start : start + samples], n == 0)
        udp = struct.pack("!HHHH", 6000, 7000, 8 + len(packet), 0) + packet
        loopback = bytes([127, 0, 0, 1])
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n, 0, 64, 17, 0, loopback, loopback)
        ether = bytes(12) + b"\x08\x00" + ip + udp
        t_us = n * ptime_ms * 1000
        records.append(
            struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(ether), len(ether)) + ether
        )
    path.write_bytes(b"".join(records))
    return n + 1


class RtpTap:
    """The agent's RTP as it crosses its socket: arrival time of each packet in, send time of each out."""

    def __init__(self, link: SipLink) -> None:
        self.loop = asyncio.get_running_loop()
        self.call_sid = link.start.call_sid
        self.arrived: list[tuple[float, rtp.RtpPacket]] = []
        self.sent: list[tuple[float, rtp.RtpPacket]] = []
        self._on_rtp, self._transport = link._on_rtp, link._rtp
        link._on_rtp = self._in  # the protocol hands datagrams to the link's _on_rtp
        link._rtp = self  # type: ignore[assignment]  # the pacer sends through here

    def _in(self, data: bytes, addr) -> None:
        with contextlib.suppress(rtp.RtpError):
            self.arrived.append((self.loop.time(), rtp.parse_packet(data)))
        self._on_rtp(data, addr)

    def sendto(self, data: bytes, addr) -> None:
        self.sent.append((self.loop.time(), rtp.parse_packet(data)))
        self._transport.sendto(data, addr)

    def close(self) -> None:
        self._transport.close()

    def wire_first_audio_ms(self, caller_ulaw: bytes, ptime_ms: int, vad_mode: int) -> float:
        """From the arrival of the packet that ends the caller's last voiced 20 ms frame (the
        session's VAD on the same frames) to the first agent packet that is not silence."""
        vad = webrtcvad.Vad(vad_mode)
        pcm = ulaw_to_pcm16(caller_ulaw)
        voiced = [i for i in range(len(pcm) // 320) if vad.is_speech(pcm[i * 320 : (i + 1) * 320], 8000)]
        assert voiced, "the caller's audio has no voiced frame"
        last_packet = ((voiced[-1] + 1) * 160 - 1) // (8 * ptime_ms)
        audio = [(t, p) for t, p in self.arrived if p.payload_type == 0]
        first_seq = audio[0][1].sequence
        arrived = next(t for t, p in audio if (p.sequence - first_seq) & 0xFFFF == last_packet)
        spoke = next(t for t, p in self.sent if t > arrived and p.payload.strip(b"\xff\x7f"))
        return (spoke - arrived) * 1000


@contextlib.asynccontextmanager
async def tapped_runtime(fixture_name: str) -> AsyncIterator[tuple[object, SipServer, list[RtpTap]]]:
    fx = load(fixture_name)
    taps: list[RtpTap] = []
    async with local_stack("reference", 0, [fx]) as stack:

        async def on_call(link) -> None:
            taps.append(RtpTap(link))
            await CallSession(link, stack.services).run()

        server = SipServer(on_call, bind=("127.0.0.1", 0), allow_from=["127.0.0.1/32"])
        async with serving(server):
            yield stack, server, taps


def play_pcap(name: str, pause_ms: int) -> str:
    return f"""
  <nop><action><exec play_pcap_audio="{name}"/></action></nop>
  <pause milliseconds="{pause_ms}"/>
"""


async def sipp_speaks(
    tmp_path: Path, caller_ulaw: bytes, ptime_ms: int, pause_ms: int
) -> tuple[dict, RtpTap, int]:
    need("sipp")
    packets = write_rtp_pcap(tmp_path / "speech.pcap", caller_ulaw, ptime_ms)
    xml = tmp_path / "speech.xml"
    xml.write_text(scenario(f"{ptime_ms} ms packets", INVITE + play_pcap("speech.pcap", pause_ms) + BYE))
    async with tapped_runtime("order_status") as (stack, server, taps):
        code, out = await run(*sipp_cmd(server, xml), limit_s=pause_ms / 1000 + 20, cwd=tmp_path)
        assert code == 0, out[-2000:]
        assert len(taps) == 1
        call = await call_record(stack.server_url, taps[0].call_sid)
    return call, taps[0], packets


def speech_then(seconds_of_silence: float) -> bytes:
    """The caller's first utterance of order_status, then that much digital silence (none: the
    phone stops sending, as with silence suppression)."""
    fx = load("order_status")
    utt = fx.script.utterances[0]
    return fx.ulaw[: utt.end_ms * 8] + b"\xff" * int(seconds_of_silence * 8000)


async def test_sipp_with_30ms_packets_is_heard_and_the_logged_first_audio_matches_the_wire(
    tmp_path: Path,
) -> None:
    """sipp sends 30 ms packets: the VAD hears them (re-framed to 20 ms), the turn is answered
    within budget, and the call log's first audio is what the wire shows, within 20 ms."""
    caller = speech_then(4.0)
    call, tap, packets = await sipp_speaks(tmp_path, caller, 30, pause_ms=len(caller) // 8 + 500)
    turn = call["turns"][0]
    assert "order" in (turn.get("transcript") or "").lower(), call["turns"]
    assert abs(sum(p.payload_type == 0 for _, p in tap.arrived) - packets) <= 2
    wire_ms = tap.wire_first_audio_ms(caller, 30, load_config().endpoint.vad_mode)
    assert turn["within_budget"] and wire_ms <= turn["budget_ms"], (wire_ms, turn)
    assert abs(turn["first_audio_ms"] - wire_ms) <= 20, (turn["first_audio_ms"], wire_ms)


async def test_sipp_with_silence_suppression_is_answered_within_budget(tmp_path: Path) -> None:
    """The phone stops sending after the caller's words (a pcap that simply ends): the agent
    answers anyway, within budget, and the logged first audio matches the wire within 20 ms."""
    caller = speech_then(0.0)
    call, tap, _ = await sipp_speaks(tmp_path, caller, 20, pause_ms=len(caller) // 8 + 4000)
    turns = call["turns"]
    assert turns and "order" in (turns[0].get("transcript") or "").lower(), call
    wire_ms = tap.wire_first_audio_ms(caller, 20, load_config().endpoint.vad_mode)
    assert turns[0]["within_budget"] and wire_ms <= turns[0]["budget_ms"], (wire_ms, turns[0])
    assert abs(turns[0]["first_audio_ms"] - wire_ms) <= 20, (turns[0]["first_audio_ms"], wire_ms)


BRACKETED = r"\[::1\]:[0-9]+"
IPV6_OK = f"""
  <send retrans="500"><![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:919800000001@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [media_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rtd="true">
    <action>
      <ereg regexp="&lt;sip:voxroute@{BRACKETED}&gt;" search_in="hdr" header="Contact:" check_it="true" assign_to="c"/>
      <ereg regexp="c=IN IP6 ::1" search_in="body" check_it="true" assign_to="s"/>
    </action>
  </recv>
{ACK}  <recv request="BYE" timeout="10000">
    <action>
      <ereg regexp="SIP/2.0/UDP {BRACKETED};branch=" search_in="hdr" header="Via:" check_it="true" assign_to="v"/>
      <ereg regexp="&lt;sip:voxroute@{BRACKETED}&gt;" search_in="hdr" header="Contact:" check_it="true" assign_to="c2"/>
    </action>
  </recv>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>
  <Reference variables="c,s,v,c2"/>
"""


async def test_sipp_over_ipv6_sees_bracketed_hosts(tmp_path: Path) -> None:
    """sipp on ::1 calls the agent on ::1: our 200 OK's Contact and our BYE's Via and Contact carry
    [::1]:port (sipp's ereg check_it fails the call otherwise), and the SDP says c=IN IP6 ::1."""
    sipp = need("sipp")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
    xml = tmp_path / "ipv6.xml"
    xml.write_text(scenario("ipv6", IPV6_OK))
    answered: list[SipLink] = []

    async def on_call(link: SipLink) -> None:
        answered.append(link)
        await asyncio.sleep(0.5)
        await link.hangup()  # our BYE: sipp checks its headers

    server = SipServer(on_call, bind=("::1", 0), allow_from=["::1/128"])
    async with serving(server):
        assert server.address is not None
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
        code, out = await run(
            sipp, f"[::1]:{server.address[1]}", "-sf", str(xml), "-s", "agent", "-t", "u1",
            "-i", "::1", "-p", str(port), "-m", "1", "-nostdin", "-timeout", "15s",
            limit_s=25, cwd=tmp_path,
        )  # fmt: skip
    assert code == 0, out[-3000:]
    assert len(answered) == 1 and answered[0].remote_rtp[0] == "::1"


async def test_sipps_own_30ms_pcma_pcap_reaches_the_session_as_20ms_frames_the_vad_hears(
    tmp_path: Path,
) -> None:
    """sipp's bundled g711a.pcap (7 s of speech in 30 ms PCMA packets): every frame the session
    gets is 20 ms, none is lost to the re-framing, and the voice detector hears the speech."""
    need("sipp")
    bundled = SIPP_PCAPS / "g711a.pcap"
    if not bundled.exists():
        pytest.skip("sipp's g711a.pcap is not installed")
    xml = tmp_path / "pcma.xml"
    invite = INVITE.replace("RTP/AVP 0 101", "RTP/AVP 8 101").replace("rtpmap:0 PCMU", "rtpmap:8 PCMA")
    xml.write_text(scenario("bundled pcap", invite + play_pcap(str(bundled), 7500) + BYE))
    frames: list[bytes] = []

    async def on_call(link: SipLink) -> None:
        async for ev in link.events():
            if isinstance(ev, InboundAudio):
                frames.append(ev.pcm)

    server = SipServer(on_call, bind=("127.0.0.1", 0), allow_from=["127.0.0.1/32"])
    async with serving(server):
        code, out = await run(*sipp_cmd(server, xml), limit_s=30, cwd=tmp_path)
    assert code == 0, out[-2000:]
    assert {len(f) for f in frames} == {320}
    assert 236 * 30 // 20 - 2 <= len(frames) <= 236 * 30 // 20 + 2  # 236 packets of 30 ms
    vad = webrtcvad.Vad(load_config().endpoint.vad_mode)
    voiced = sum(vad.is_speech(f, 8000) for f in frames)
    assert voiced >= len(frames) // 4, f"{voiced} of {len(frames)} frames voiced"
