"""The asyncio layer of the SIP user agent: one UDP socket for SIP, one per call for RTP.

:class:`SipServer` owns everything in one ``asyncio.TaskGroup``: the SIP endpoint, a 50 ms
timer for retransmissions and re-registration, one 20 ms RTP pacer for all calls, and one task
per call that runs ``on_call(link)``. :class:`SipLink` is the call as ``voxroute.agent.link.CarrierLink``:
inbound RTP goes through the jitter buffer, then is re-framed to 20 ms PCM frames (packets of
10-60 ms all work); outbound PCM waits in the
link's ``Playout`` and the pacer sends one packet per call per tick, silence when the agent is
quiet (a live RTP stream, as phones expect).

RTP is symmetric: we send to the address the caller's RTP comes from (once it comes from the
signalling peer's or the SDP's IP), which gets through NATs. RTP from any other address, and
packets beyond a per-call rate, are dropped and logged (rate-limited): a flood cannot reach
another call, each has its own socket and its own budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from voxroute.agent.link import (
    CallEnded,
    CallStart,
    CarrierEvent,
    CarrierLink,
    InboundAudio,
    InboundDtmf,
    MarkEcho,
)
from voxroute.agent.ratelog import RateLimitedLog
from voxroute.audio import ALAW_8K, MULAW_8K, InboundFramer, WireFormat
from voxroute.telephony.sip import rtp
from voxroute.telephony.sip.message import SipParseError, host_port, parse_uri
from voxroute.telephony.sip.ua import (
    Action,
    Address,
    Call,
    CallTerminated,
    IncomingCall,
    Registration,
    RegistrationState,
    Send,
    TransferResult,
    UserAgent,
)

log = logging.getLogger(__name__)

OnCall = Callable[[CarrierLink], Awaitable[None]]
TenantLookup = Callable[[str], str | None]
FRAME_S = 0.020
TICK_S = 0.05
MAX_QUEUED_EVENTS = 250  # 5 s of frames: a session that stops reading loses audio, not memory
RTP_RATE_PPS = 150  # per call: audio 50 pps + DTMF bursts, with room; more is a flood
RTP_BURST = 100
MAX_LATE_FRAMES = 5  # after a longer stall, skip ahead instead of bursting


def call_sid_for(call_id: str) -> str:
    """A URL-safe call id for the runtime (SIP Call-IDs may hold '@' and other characters)."""
    return "SIP" + hashlib.sha256(call_id.encode()).hexdigest()[:32]


def user_part(uri: str) -> str | None:
    try:
        return parse_uri(uri).user
    except SipParseError:
        return None


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, link: SipLink) -> None:
        self.link = link
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.link._on_rtp(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable after the far end left: the BYE or the timer ends the call


class _LinkEvents:
    def __init__(self, link: SipLink) -> None:
        self._link = link

    def __aiter__(self) -> _LinkEvents:
        return self

    async def __anext__(self) -> CarrierEvent:
        link = self._link
        if link._ended_delivered:
            raise StopAsyncIteration
        event = await link._events.get()
        if isinstance(event, CallEnded):
            link._ended_delivered = True
        return event


@dataclass
class LinkStats:
    packets_in: int = 0
    packets_out: int = 0
    dropped_foreign: int = 0
    dropped_flood: int = 0
    dropped_bad: int = 0
    dropped_backlog: int = 0


@dataclass
class RtpTotals:
    """The RTP counters of every SIP call this process carried, added when each call ends; read by
    ``GET /metrics`` (``voxroute_rtp_packets``, ``voxroute_rtp_problems``: agent/prom.py)."""

    calls: int = 0
    packets_in: int = 0
    packets_out: int = 0
    lost: int = 0  # never came: the jitter buffer played the last packet again, then silence
    late: int = 0  # came after their turn (or twice): dropped
    foreign: int = 0  # from an address the call did not expect
    flood: int = 0  # over the per-call packet rate
    bad: int = 0  # not RTP, or another payload type
    backlog: int = 0  # events the session could not take in time

    def add(self, link: SipLink) -> None:
        self.calls += 1
        self.packets_in += link.stats.packets_in
        self.packets_out += link.stats.packets_out
        self.lost += link.jitter.lost
        self.late += link.jitter.late
        self.foreign += link.stats.dropped_foreign
        self.flood += link.stats.dropped_flood
        self.bad += link.stats.dropped_bad
        self.backlog += link.stats.dropped_backlog


RTP_TOTALS = RtpTotals()


class SipLink:
    """One SIP call as a ``CarrierLink``."""

    start: CallStart

    def __init__(
        self, server: SipServer, call: Call, start: CallStart, rtp_transport: asyncio.DatagramTransport
    ) -> None:
        assert call.media is not None
        self.server = server
        self.call = call
        self.start = start
        self._rtp = rtp_transport
        media = call.media
        self.codec = media.codec
        # the negotiated payload type is what the TTS is asked for: its G.711 goes into RTP as it is
        self.audio_format: WireFormat = MULAW_8K if media.codec == "PCMU" else ALAW_8K
        self._framer = InboundFramer("ulaw" if media.codec == "PCMU" else "alaw")
        self._silence = bytes([rtp.SILENCE[media.codec]]) * rtp.SAMPLES_PER_FRAME
        self._audio_pt = media.payload_type
        self._dtmf_pt = media.dtmf_pt
        self.sender = rtp.RtpSender(media.payload_type, media.dtmf_pt)
        self.jitter = rtp.JitterBuffer(media.codec)
        self._audio_ssrc: int | None = None
        self.dtmf = rtp.DtmfReceiver()
        self.playout = rtp.Playout(rtp.SAMPLES_PER_FRAME, rtp.SILENCE[media.codec])
        self._events: asyncio.Queue[CarrierEvent] = asyncio.Queue()
        self._ended_delivered = False
        self.ended = False
        # symmetric RTP: send where the caller's RTP comes from, once it comes from an expected IP
        self._expected_ips = {media.remote_address, call.remote_addr[0]}
        self.remote_rtp: Address = (media.remote_address, media.remote_port)
        self._latched = False
        self._tokens = float(RTP_BURST)
        self._tokens_at = time.monotonic()
        self._bye_when_quiet: float | None = None  # hang up once the queued audio has played
        self._apology_started = False
        self._quiet_since: float | None = None
        self._sent_ahead = False  # send_audio sent the packet of the next pacer tick already
        self._rate = server.rate_log
        self.stats = LinkStats()

    # -- CarrierLink

    def events(self) -> _LinkEvents:
        return _LinkEvents(self)

    async def send_audio(self, data: bytes) -> None:
        """``data``: G.711 in the call's codec (``audio_format``), queued for the 20 ms pacer."""
        if data and not self.ended:
            starting = self.playout.queued_bytes == 0 and not self._sent_ahead
            self.playout.push(data)
            if starting:
                # A talk spurt goes on the wire now, not at the next pacer tick (up to 20 ms on),
                # so the session's first_audio_out is what the caller's side sees. This packet
                # stands for the next tick, which is skipped: one packet per 20 ms, no drift.
                self._send_next(asyncio.get_running_loop().time())
                self._sent_ahead = True

    async def send_mark(self, name: str) -> None:
        for echoed in self.playout.mark(name):
            self._put(MarkEcho(echoed))

    async def clear(self) -> None:
        for echoed in self.playout.clear():
            self._put(MarkEcho(echoed))

    async def hangup(self) -> None:
        self.server.hangup(self)

    # -- inbound

    def _put(self, event: CarrierEvent) -> None:
        if isinstance(event, InboundAudio) and self._events.qsize() >= MAX_QUEUED_EVENTS:
            self.stats.dropped_backlog += 1
            self._rate.warning(
                f"backlog:{self.start.call_sid}",
                "call %s: session is not reading; audio dropped",
                self.start.call_sid,
            )
            return
        self._events.put_nowait(event)

    def _on_rtp(self, data: bytes, addr: Address) -> None:
        if self.ended:
            return
        if addr != self.remote_rtp:
            if self._latched or addr[0] not in self._expected_ips:
                self.stats.dropped_foreign += 1
                self._rate.warning(
                    f"foreign:{self.start.call_sid}",
                    "call %s: RTP from unexpected %s:%s dropped (expecting %s:%s)",
                    self.start.call_sid,
                    addr[0],
                    addr[1],
                    *self.remote_rtp,
                )
                return
            self.remote_rtp = addr  # symmetric RTP: the caller's NAT mapping
        self._latched = True
        now = time.monotonic()
        self._tokens = min(RTP_BURST, self._tokens + (now - self._tokens_at) * RTP_RATE_PPS)
        self._tokens_at = now
        if self._tokens < 1:
            self.stats.dropped_flood += 1
            self._rate.warning(
                f"flood:{self.start.call_sid}",
                "call %s: RTP over %d packets/s from %s:%s dropped",
                self.start.call_sid,
                RTP_RATE_PPS,
                *addr,
            )
            return
        self._tokens -= 1
        try:
            packet = rtp.parse_packet(data)
        except rtp.RtpError as exc:
            self.stats.dropped_bad += 1
            self._rate.warning(
                f"badrtp:{self.start.call_sid}", "call %s: bad RTP dropped: %s", self.start.call_sid, exc
            )
            return
        self.stats.packets_in += 1
        if packet.payload_type == self._audio_pt:
            if packet.ssrc != self._audio_ssrc:
                if self._audio_ssrc is not None:
                    log.info(
                        "call %s: caller's RTP stream changed (SSRC %08x)", self.start.call_sid, packet.ssrc
                    )
                    self.jitter = rtp.JitterBuffer(self.codec)
                self._audio_ssrc = packet.ssrc
            self._deliver(self.jitter.push(packet))
        elif packet.payload_type == self._dtmf_pt:
            if packet.ssrc == self._audio_ssrc:
                self._deliver(self.jitter.skip(packet))
            try:
                digit = self.dtmf.feed(packet)
            except rtp.RtpError:
                return
            if digit:
                self._put(InboundDtmf(digit))
        # anything else (comfort noise, a codec we did not agree) is ignored

    def _deliver(self, frames: list[rtp.Frame]) -> None:
        """Jitter-buffer output (packets of any ptime, gaps) -> 20 ms frames for the session."""
        if not frames:
            return
        payload = frames[0].payload if len(frames) == 1 else b"".join(f.payload for f in frames)
        for pcm, ulaw, _ in self._framer.push(payload):
            self._put(InboundAudio(pcm, None, ulaw))

    def end(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self._events.put_nowait(CallEnded(reason))

    def hang_up_when_played(self, max_wait_s: float = 20.0) -> None:
        """Send BYE once everything queued (say, an apology) has been sent, or after ``max_wait_s``."""
        self._bye_when_quiet = time.monotonic() + max_wait_s

    # -- the paced sender

    def send_frame(self, now: float) -> None:
        """One 20 ms packet: the next frame of agent audio, or silence (the server's pacer calls this)."""
        if self._sent_ahead:  # a talk spurt's first packet went out early for this tick
            self._sent_ahead = False
            return
        self._send_next(now)

    def _send_next(self, now: float) -> None:
        if self.ended:
            return
        frame, echoed = self.playout.next_frame()
        payload = frame if frame is not None else self._silence
        try:
            self._rtp.sendto(self.sender.audio(payload), self.remote_rtp)
        except (OSError, RuntimeError):  # a closed transport: the call is ending
            return
        self.stats.packets_out += 1
        for name in echoed:
            self._put(MarkEcho(name))
        if self._bye_when_quiet is not None:
            self._apology_started = self._apology_started or frame is not None
            if frame is not None or not self._apology_started:
                self._quiet_since = None
            elif self._quiet_since is None:
                self._quiet_since = now
            quiet = self._quiet_since is not None and now - self._quiet_since > 0.6
            if quiet or time.monotonic() > self._bye_when_quiet:
                log.info("call %s: apology played; hanging up", self.start.call_sid)
                self.server.hangup(self)

    def close(self) -> None:
        self._rtp.close()


class _SipProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.server._on_sip(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass


class SipServer:
    """A SIP UA that answers calls and runs ``on_call(link)`` for each, until ``stop()``."""

    def __init__(
        self,
        on_call: OnCall,
        *,
        bind: Address = ("127.0.0.1", 5060),
        advertise_host: str | None = None,
        allow_from: list[str] | tuple[str, ...] = ("127.0.0.1/32",),
        registration: Registration | None = None,
        default_tenant: str = "default",
        tenant_for_number: TenantLookup | None = None,
        carrier: str = "sip",
        language_header: str = "X-Language",
        max_calls: int = 1000,
        admit: Callable[[str], str | None] | None = None,  # None: take the call; else why not (486)
    ) -> None:
        self.on_call = on_call
        self.admit = admit
        self.bind = bind
        self.advertise_host = advertise_host
        self._allow_from = list(allow_from)
        self._registration = registration
        self.default_tenant = default_tenant
        self.tenant_for_number = tenant_for_number
        self.carrier = carrier
        self.language_header = language_header
        self.max_calls = max_calls
        self.rate_log = RateLimitedLog(log)
        self.ua: UserAgent | None = None
        self.links: dict[str, SipLink] = {}  # call sid -> link
        self._by_call: dict[str, SipLink] = {}  # SIP Call-ID -> link
        self._transfers: dict[str, asyncio.Future[TransferResult]] = {}
        self._sip: asyncio.DatagramTransport | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.address: Address | None = None
        self.registration_state: RegistrationState | None = None

    # -- lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _SipProtocol(self), local_addr=self.bind)
        self._sip = transport
        with contextlib.suppress(OSError):  # a burst of INVITEs or BYEs must not overflow the socket
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        host, port = transport.get_extra_info("sockname")[:2]
        self.address = (host, port)
        self.ua = UserAgent(
            (self.advertise_host or host, port), allow_from=self._allow_from, registration=self._registration
        )
        log.info(
            "SIP listening on udp %s:%s (allowed: %s)", host, port, ", ".join(self._allow_from) or "none"
        )
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._timers(), name="sip-timers")
                tg.create_task(self._pace(), name="rtp-pacer")
                if self._registration is not None:
                    self._do(self.ua.register(loop.time()))
                self.ready.set()
                await self._stop.wait()
                for link in list(self.links.values()):
                    self.hangup(link)
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            self._tg = None
            transport.close()

    def stop(self) -> None:
        self._stop.set()

    async def _timers(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_S)
            assert self.ua is not None
            self._do(self.ua.tick(loop.time()))

    async def _pace(self) -> None:
        """One clock for every call's outbound RTP: a packet per call every 20 ms, on an absolute
        schedule (late ticks catch up, so timestamps never drift from the wall clock). One timer
        for all calls costs far less than one per call, and keeps each call's packets 20 ms apart."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > MAX_LATE_FRAMES * FRAME_S:
                log.warning("RTP pacer stalled for %.0f ms; resuming from now", -delay * 1000)
                next_at = loop.time()
            next_at += FRAME_S
            now = loop.time()
            for link in list(self.links.values()):
                link.send_frame(now)

    # -- SIP in, actions out

    def _on_sip(self, data: bytes, addr: Address) -> None:
        if self.ua is None:
            return
        try:
            actions = self.ua.receive(data, addr, asyncio.get_running_loop().time())
        except Exception:  # a bug on one message must not take the listener down
            log.exception("SIP from %s:%s: unexpected error handling a message", *addr)
            return
        self._do(actions)

    def _do(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                if self._sip is not None:
                    self._sip.sendto(action.data, action.addr)
            elif isinstance(action, IncomingCall):
                if self._tg is None:
                    continue
                self._tg.create_task(self._accept(action.call), name=f"sip-call-{action.call.call_id[:16]}")
            elif isinstance(action, CallTerminated):
                link = self._by_call.get(action.call.call_id)
                if link is not None:
                    link.end("stop" if action.reason == "bye" else "closed")
            elif isinstance(action, TransferResult):
                future = self._transfers.pop(action.call.call_id, None)
                if future is not None and not future.done():
                    future.set_result(action)
            elif isinstance(action, RegistrationState):
                self.registration_state = action

    async def _accept(self, call: Call) -> None:
        """Bind the call's RTP socket, answer, run ``on_call`` to the end."""
        loop = asyncio.get_running_loop()
        assert self.ua is not None and self.address is not None
        if len(self.links) >= self.max_calls:
            self.rate_log.warning(
                "busy", "SIP call %s refused: %d calls already (503)", call.call_id, self.max_calls
            )
            self._do(self.ua.reject(call, 503, loop.time(), "Service Unavailable (at capacity)"))
            return
        if self.admit is not None and self.admit(call.call_id) is not None:
            self._do(self.ua.reject(call, 486, loop.time()))  # the process's call cap, or draining
            return
        try:
            rtp_transport, proto = await loop.create_datagram_endpoint(
                lambda: _RtpProtocol(None),  # type: ignore[arg-type]  # the link is set below
                local_addr=(self.address[0], 0),
            )
        except OSError as exc:
            log.error("call %s: no RTP port: %s", call.call_id, exc)
            self._do(self.ua.reject(call, 503, loop.time()))
            return
        rtp_port = rtp_transport.get_extra_info("sockname")[1]
        self._do(self.ua.answer(call, (self.ua.local_addr[0], rtp_port), loop.time()))
        if call.media is None:
            rtp_transport.close()
            return
        link = SipLink(self, call, self._call_start(call), rtp_transport)
        proto.link = link
        sid = link.start.call_sid
        self.links[sid] = link
        self._by_call[call.call_id] = link
        log.info(
            "SIP call %s (%s) from %s answered: %s, RTP %s -> %s:%s",
            sid,
            call.call_id,
            call.remote.uri,
            call.media.codec,
            rtp_port,
            *link.remote_rtp,
        )
        try:
            try:
                await self.on_call(link)
            except Exception:
                log.exception("call %s: on_call failed; hanging up", sid)
            finally:
                self.hangup(link)
        finally:
            link.close()
            self.links.pop(sid, None)
            self._by_call.pop(call.call_id, None)
            RTP_TOTALS.add(link)
            st, jb = link.stats, link.jitter
            log.info(
                "SIP call %s ended: RTP in %d, out %d packets; lost %d, late %d; dropped %d foreign, "
                "%d flood, %d bad, %d backlog",
                sid, st.packets_in, st.packets_out, jb.lost, jb.late,
                st.dropped_foreign, st.dropped_flood, st.dropped_bad, st.dropped_backlog,
            )  # fmt: skip

    def _call_start(self, call: Call) -> CallStart:
        assert call.invite is not None
        to_number = user_part(call.local.uri)
        tenant = None
        if self.tenant_for_number is not None and to_number:
            try:
                tenant = self.tenant_for_number(to_number)
            except Exception:
                log.exception("tenant lookup for %s failed", to_number)
        params = {"sip_call_id": call.call_id}
        for name in ("X-Tenant", self.language_header):
            value = call.invite.get(name)
            if value:
                params[name.lower()] = value
        return CallStart(
            call_sid=call_sid_for(call.call_id),
            stream_sid=call.call_id,
            tenant=params.get("x-tenant") or tenant or self.default_tenant,
            from_number=user_part(call.remote.uri),
            to_number=to_number,
            language=params.get(self.language_header.lower()),
            carrier=self.carrier,
            parameters=params,
        )

    # -- call control

    def hangup(self, link: SipLink) -> None:
        if self.ua is not None and link.call.state != "terminated":
            self._do(self.ua.hangup(link.call, asyncio.get_running_loop().time()))
        link.end("closed")

    async def refer(self, call_sid: str, target: str, timeout_s: float = 30.0) -> TransferResult | None:
        """Blind transfer ``call_sid`` to ``target``; None when the call is not ours or already over."""
        link = self.links.get(call_sid)
        if link is None or self.ua is None or link.ended:
            return None
        future: asyncio.Future[TransferResult] = asyncio.get_running_loop().create_future()
        self._transfers[link.call.call_id] = future
        self._do(self.ua.refer(link.call, target, asyncio.get_running_loop().time()))
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            return TransferResult(link.call, False, 408, f"no final NOTIFY within {timeout_s:g} s")
        finally:
            self._transfers.pop(link.call.call_id, None)


class _Stopped(Exception):
    pass


class SipTransferRefused(RuntimeError):
    """The far end refused the REFER, or the transfer target did not answer."""


class SipTransfers:
    """The ``CallControl`` of SIP calls: blind transfer by REFER. The runtime's call
    control (``CarrierTransfers``) hands it the calls of its carrier (``server.carrier``).
    A refused transfer raises :class:`SipTransferRefused` (the session plays its apology) and,
    with ``hang_up_on_refusal``, the call ends with a BYE once that apology has played.
    """

    def __init__(
        self,
        server: SipServer,
        *,
        target: str | None = None,
        timeout_s: float = 30.0,
        hang_up_on_refusal: bool = True,
    ) -> None:
        self.server = server
        self.target = target
        self.timeout_s = timeout_s
        self.hang_up_on_refusal = hang_up_on_refusal

    def target_uri(self, to: str, link: SipLink) -> str:
        if to.startswith(("sip:", "sips:")):
            return to
        if self.target:
            return self.target
        return f"sip:{to}@{host_port(*link.call.remote_addr)}"  # the trunk routes the number

    async def transfer(self, call_sid: str, to: str, caller_id: str | None, say: str | None = None) -> bool:
        link = self.server.links.get(call_sid)
        if link is None:
            return False
        target = self.target_uri(to, link)
        log.info("call %s: blind transfer (REFER) to %s", call_sid, target)
        result = await self.server.refer(call_sid, target, self.timeout_s)
        if result is None:
            return False
        if result.ok:
            self.server.hangup(link)  # the transferee has the new call; our leg is done
            return True
        if link.ended:
            return False
        log.warning("call %s: transfer to %s refused: %s", call_sid, target, result.detail)
        if self.hang_up_on_refusal:
            link.hang_up_when_played()
        raise SipTransferRefused(result.detail)

    async def hang_up(self, call_sid: str) -> bool:
        link = self.server.links.get(call_sid)
        if link is None:
            return False
        self.server.hangup(link)
        return True

    async def aclose(self) -> None:
        return None  # the UA's dialogs end with the server


@contextlib.asynccontextmanager
async def serving(server: SipServer) -> AsyncIterator[SipServer]:
    """Run ``server`` for the duration of the block (its address is set on entry)."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(server.run(), name="sip-server")
        ready = tg.create_task(server.ready.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()  # raises the bind error
        try:
            yield server
        finally:
            server.stop()
