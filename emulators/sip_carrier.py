"""A loopback SIP carrier: dials a fixture call into the runtime over SIP/RTP.

The caller's side of a SIP trunk, built on the same sans-I/O core as the runtime's UA
(``voxroute.telephony.sip``): INVITE with a PCMU/PCMA offer, ACK, 20 ms PCMU packets for the whole call
(silence between utterances), RFC 4733 DTMF, BYE at the end. A REFER from the agent is accepted
(202, NOTIFY 200) as a trunk that completed the transfer would.

The caller script, the recording and the :class:`~emulators.carrier.CarrierResult` come from
:class:`~emulators.carrier.FakeTwilioCall`, fed through a small adapter: RTP has no marks, so
the end of an agent reply is the moment its audio falls silent for ``END_SILENCE_S`` (what a
person on the phone notices), reported to the script as a ``"<n>:end"`` mark.

:class:`SipPhone` (a UAC with one SIP socket and one RTP socket per call) is shared with
``bench/sip_rtp.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from voxroute.agent.fixture import Fixture, write_ulaw_wav
from voxroute.audio import ULAW_DEC
from voxroute.emulators.carrier import FRAME_MS, BeforeStream, CallIds, CarrierResult, FakeTwilioCall
from voxroute.telephony.sip import rtp, sdp
from voxroute.telephony.sip.message import parse_uri
from voxroute.telephony.sip.transport import call_sid_for
from voxroute.telephony.sip.ua import (
    Action,
    Address,
    Call,
    CallAnswered,
    CallFailed,
    CallTerminated,
    IncomingRefer,
    Send,
    UserAgent,
    new_call_id,
)

log = logging.getLogger(__name__)

# Agent audio this long silent: its reply is over. RTP has no end marks, so the caller guesses;
# the gap between a bridge and the answer it covers can pass 1 s on a loaded machine, and a caller
# who speaks into that gap barges in where a Twilio caller (who waits for the mark) would not.
END_SILENCE_S = 1.5
VOICED_LEVEL = 300  # peak PCM16 level of a frame that is not silence


@dataclass(eq=False)
class PhoneCall:
    """One outbound call of a :class:`SipPhone`."""

    phone: SipPhone
    call: Call
    rtp_transport: asyncio.DatagramTransport
    on_packet: Callable[[rtp.RtpPacket, float], None] | None = None
    answered: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str | None = None
    sender: rtp.RtpSender | None = None
    remote_rtp: Address | None = None
    refer_to: str | None = None

    @property
    def local_rtp_port(self) -> int:
        return self.rtp_transport.get_extra_info("sockname")[1]

    def send_audio(self, payload: bytes) -> None:
        if self.sender is not None and self.remote_rtp is not None and not self.ended.is_set():
            self.rtp_transport.sendto(self.sender.audio(payload), self.remote_rtp)

    def send_dtmf(self, digit: str) -> None:
        if self.sender is not None and self.remote_rtp is not None and self.sender.dtmf_pt is not None:
            for packet in self.sender.dtmf(digit):
                self.rtp_transport.sendto(packet, self.remote_rtp)

    def hangup(self) -> None:
        self.phone.hangup(self)


class _Rtp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.call: PhoneCall | None = None

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        call = self.call
        if call is None or call.on_packet is None:
            return
        try:
            packet = rtp.parse_packet(data)
        except rtp.RtpError:
            return
        call.on_packet(packet, time.monotonic())

    def error_received(self, exc: Exception) -> None:
        pass


class _Sip(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.phone: SipPhone | None = None

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if self.phone is not None:
            self.phone._do(self.phone.ua.receive(data, (addr[0], addr[1]), asyncio.get_running_loop().time()))

    def error_received(self, exc: Exception) -> None:
        pass


class SipPhone:
    """A SIP UAC on 127.0.0.1: ``async with SipPhone.running() as phone: await phone.call(...)``."""

    def __init__(self, sip: asyncio.DatagramTransport, host: str) -> None:
        self._sip = sip
        port = sip.get_extra_info("sockname")[1]
        self.host = host
        self.ua = UserAgent((host, port), user="caller")
        self.calls: dict[str, PhoneCall] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, host: str = "127.0.0.1") -> AsyncIterator[SipPhone]:
        loop = asyncio.get_running_loop()
        proto = _Sip()
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=(host, 0))
        phone = cls(transport, host)
        proto.phone = phone
        try:
            async with asyncio.TaskGroup() as tg:
                timers = tg.create_task(phone._timers())
                try:
                    yield phone
                finally:
                    for call in list(phone.calls.values()):
                        phone.hangup(call)
                    for _ in range(100):  # let BYEs be answered (or retransmitted) before the socket goes
                        if not phone.ua.pending_transactions:
                            break
                        await asyncio.sleep(0.05)
                    timers.cancel()
        finally:
            transport.close()

    async def _timers(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.05)
            self._do(self.ua.tick(loop.time()))

    def _do(self, actions: list[Action]) -> None:
        now = asyncio.get_running_loop().time()
        for action in actions:
            if isinstance(action, Send):
                self._sip.sendto(action.data, action.addr)
                continue
            pc = self.calls.get(action.call.call_id) if hasattr(action, "call") else None
            if pc is None:
                continue
            if isinstance(action, CallAnswered):
                media = action.call.media
                if media is None:
                    pc.answered.set_result(False)
                    continue
                pc.sender = rtp.RtpSender(media.payload_type, media.dtmf_pt)
                pc.remote_rtp = (media.remote_address, media.remote_port)
                if not pc.answered.done():
                    pc.answered.set_result(True)
            elif isinstance(action, CallFailed):
                pc.end_reason = f"failed {action.status} {action.reason}"
                if not pc.answered.done():
                    pc.answered.set_result(False)
                self._ended(pc)
            elif isinstance(action, CallTerminated):
                pc.end_reason = pc.end_reason or action.reason
                self._ended(pc)
            elif isinstance(action, IncomingRefer):
                pc.refer_to = action.target
                log.info("fake SIP carrier: REFER to %s accepted; reporting 200", action.target)
                self._do(self.ua.notify_refer(action.call, 100, "Trying", now))
                self._do(self.ua.notify_refer(action.call, 200, "OK", now))

    def _ended(self, pc: PhoneCall) -> None:
        self.calls.pop(pc.call.call_id, None)
        pc.rtp_transport.close()
        pc.ended.set()

    async def call(
        self,
        target: str,
        *,
        from_user: str = "caller",
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        on_packet: Callable[[rtp.RtpPacket, float], None] | None = None,
        codecs: list[tuple[int, str]] | None = None,
        offer_port: int | None = None,
        call_id: str | None = None,
    ) -> PhoneCall:
        """INVITE ``target`` (``sip:user@host:port``); returns once the INVITE is sent.

        ``offer_port``: offer another local RTP port than the call's own socket (the benchmark
        receives on sockets of its own). ``call_id``: the Call-ID to use (``new_call_id``)."""
        loop = asyncio.get_running_loop()
        uri = parse_uri(target)
        proto = _Rtp()
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=(self.host, 0))
        port = transport.get_extra_info("sockname")[1]
        offer = sdp.build(self.host, offer_port or port, codecs or [(0, "PCMU"), (8, "PCMA")])
        call, actions = self.ua.invite(
            target,
            (uri.host, uri.port or 5060),
            offer,
            loop.time(),
            from_user=from_user,
            headers=list(headers),
            call_id=call_id,
        )
        pc = PhoneCall(self, call, transport, on_packet)
        proto.call = pc
        self.calls[call.call_id] = pc
        self._do(actions)
        return pc

    def hangup(self, pc: PhoneCall) -> None:
        if pc.ended.is_set():
            return
        pc.end_reason = pc.end_reason or "local"
        self._do(self.ua.hangup(pc.call, asyncio.get_running_loop().time()))
        self._ended(pc)


# --------------------------------------------------------------------------- the fixture caller


class _ReplyWatcher:
    """Agent RTP -> Twilio-shaped media and end marks for :class:`FakeTwilioCall`."""

    def __init__(self, fake: FakeTwilioCall, stream_sid: str) -> None:
        self.fake = fake
        self.stream_sid = stream_sid
        self.in_reply = False
        self.silent_s = 0.0
        self.replies = 0

    def frame(self, ulaw: bytes) -> list[str]:
        voiced = (
            bool(len(ulaw))
            and int(np.abs(ULAW_DEC[np.frombuffer(ulaw, np.uint8)].astype(np.int32)).max()) > VOICED_LEVEL
        )
        out: list[str] = []
        if voiced:
            self.in_reply = True
            self.silent_s = 0.0
        elif not self.in_reply:
            return out
        else:
            self.silent_s += len(ulaw) / 8000
        payload = base64.b64encode(ulaw).decode("ascii")
        media = {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
        out += self.fake.receive(json.dumps(media))
        if self.in_reply and self.silent_s >= END_SILENCE_S:
            self.in_reply = False
            self.replies += 1
            mark = {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": f"rtp{self.replies}:end"}}
            out += self.fake.receive(json.dumps(mark))
        return out


async def dial(
    fixture: Fixture,
    sip_url: str,
    *,
    auth_token: str | None = None,
    public_url: str | None = None,
    speed: float = 1.0,
    record_path: Path | None = None,
    custom_parameters: dict | None = None,
    agent_wait_s: float = 20.0,
    call_sid: str | None = None,
    before_stream: BeforeStream | None = None,
) -> CarrierResult:
    """Dial ``fixture`` into the runtime's SIP UA at ``sip_url`` (``sip:agent@127.0.0.1:5060``).

    The same signature and result as ``voxroute.emulators.carrier.dial``; ``auth_token``, ``public_url`` and
    ``call_sid`` have no SIP meaning (the runtime's call sid derives from our Call-ID). RTP is real
    time, so ``speed`` other than 1 is refused. ``before_stream(call_sid)`` is awaited with the
    runtime's call id before the INVITE goes out (the Call-ID is chosen first for that).
    """
    if speed != 1.0:
        raise ValueError("the SIP carrier plays RTP in real time only (speed 1)")
    params = {
        "tenant": fixture.script.tenant,
        "language": fixture.script.language,
        **{str(k): str(v) for k, v in (custom_parameters or {}).items()},
    }
    headers = [("X-Tenant", params["tenant"]), ("X-Language", params["language"])]
    loop = asyncio.get_running_loop()
    state: dict[str, object] = {}
    inbound: asyncio.Queue[bytes] = asyncio.Queue()

    def on_packet(packet: rtp.RtpPacket, _arrival: float) -> None:
        pc = state.get("call")
        if isinstance(pc, PhoneCall) and pc.call.media and packet.payload_type == pc.call.media.payload_type:
            inbound.put_nowait(packet.payload)

    async with SipPhone.running() as phone:
        call_id = new_call_id(phone.host)
        if before_stream is not None:
            await before_stream(call_sid_for(call_id))
        pc = await phone.call(
            sip_url,
            from_user=fixture.script.from_.lstrip("+") or "caller",
            headers=headers,
            on_packet=on_packet,
            codecs=[(0, "PCMU")],
            call_id=call_id,
        )
        state["call"] = pc
        ids = CallIds(call_sid=call_sid_for(pc.call.call_id), stream_sid=pc.call.call_id, account_sid="SIP")
        fake = FakeTwilioCall(fixture, ids=ids, custom_parameters=params, agent_wait_s=agent_wait_s)
        log.info("fake SIP carrier dialling %s into %s (call %s)", fixture.name, sip_url, ids.call_sid)
        try:
            async with asyncio.timeout(10):
                ok = await pc.answered
        except TimeoutError:
            ok = False
            pc.end_reason = "no answer within 10 s"
        if not ok:
            fake.abort("handshake", None, f"the runtime did not answer the INVITE: {pc.end_reason}")
        else:
            fake.open()
            watcher = _ReplyWatcher(fake, ids.stream_sid)
            t0 = loop.time()
            n = 0
            while not fake.finished and not pc.ended.is_set():
                n += 1
                delay = t0 + n * FRAME_MS / 1000 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    fake.result.max_lag_ms = max(fake.result.max_lag_ms, -delay * 1000)
                while not inbound.empty():
                    watcher.frame(inbound.get_nowait())  # echoes are Twilio texts: nothing to send
                for text in fake.tick():
                    msg = json.loads(text)
                    if msg["event"] == "media":
                        pc.send_audio(base64.b64decode(msg["media"]["payload"]))
                    elif msg["event"] == "dtmf":
                        pc.send_dtmf(msg["dtmf"]["digit"])
            if pc.ended.is_set():
                fake.server_closed(None, f"the runtime ended the call ({pc.end_reason})")
            else:
                fake.stop()
                fake.result.closed_by = "carrier"
                phone.hangup(pc)
    result = fake.result
    if record_path is not None:
        write_ulaw_wav(Path(record_path), result.recorded)
    log.info(
        "fake SIP carrier call %s ended: closed_by=%s completed=%s errors=%d",
        ids.call_sid,
        result.closed_by,
        result.completed,
        len(result.errors),
    )
    return result


# --------------------------------------------------------------------------- replay wiring

# runtime HTTP base URL -> the SIP URL of its UA (``sip_for_replay`` registers local stacks)
SIP_URLS: dict[str, str] = {}


@contextlib.asynccontextmanager
async def sip_for_replay(services: Any, server_url: str, bind: str = "127.0.0.1:0") -> AsyncIterator[str]:
    """Run the runtime's SIP UA for ``services`` and remember it as ``server_url``'s; yields its URL."""
    from voxroute.telephony.sip.service import sip_edge

    async with sip_edge(services, sip=bind) as edge:
        assert edge.sip_url is not None
        SIP_URLS[server_url.rstrip("/")] = edge.sip_url
        try:
            yield edge.sip_url
        finally:
            SIP_URLS.pop(server_url.rstrip("/"), None)


def sip_url_for(server_url: str) -> str:
    """The SIP UA of the runtime at ``server_url``: a registered local stack, ``$VOXROUTE_SIP_URL``,
    or port 5060 on the server's host (``voxroute serve --sip HOST:5060``)."""
    known = SIP_URLS.get(server_url.rstrip("/"))
    if known:
        return known
    if os.environ.get("VOXROUTE_SIP_URL"):
        return os.environ["VOXROUTE_SIP_URL"]
    host = urlsplit(server_url).hostname or "127.0.0.1"
    return f"sip:agent@{host}:5060"


async def dial_for_replay(
    fixture: Fixture,
    server_url: str,
    *,
    speed: float = 1.0,
    record_path: Path | None = None,
    agent_wait_s: float = 20.0,
    before_stream: BeforeStream | None = None,
    **_carrier_setup: Any,  # http, public_base_url, secrets_: the web carriers' call set-up; SIP has none
) -> CarrierResult:
    """``voxroute.emulators.carriers.DIALERS["sip"]``: the replay's dialer signature, over SIP/RTP.
    RTP plays in real time: a faster ``speed`` (``replay --fast``) is logged and not applied."""
    if speed != 1.0:
        log.info("SIP replay of %s: RTP plays in real time, ignoring speed %.1f", fixture.name, speed)
    return await dial(
        fixture,
        sip_url_for(server_url),
        record_path=record_path,
        agent_wait_s=agent_wait_s,
        before_stream=before_stream,
    )
