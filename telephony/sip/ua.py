"""The SIP user agent as a state machine without I/O (RFC 3261 subset, RFC 3515 REFER).

Feed it datagrams with ``receive(data, addr, now)`` and time with ``tick(now)``; it returns
actions: :class:`Send` (bytes for an address) and call events (:class:`IncomingCall`,
:class:`CallAnswered`, :class:`CallTerminated`, ...). The asyncio layer (``transport.py``) only
moves bytes and reacts to the events.

What it does:

- UAS: INVITE -> 100 Trying -> (the transport binds RTP, ``answer``) -> 200 OK with the SDP
  answer, retransmitted until ACK (T1 doubling to T2, given up after 64*T1 with a BYE);
  BYE, CANCEL (487 to the INVITE), OPTIONS; retransmitted requests get the cached response.
  Direct INVITEs (and OPTIONS) only from allow-listed networks or the registrar: 403 otherwise.
- UAC: INVITE/ACK/BYE for the fake carrier and the benchmark.
- REGISTER with digest auth (401/407), refreshed at half the granted expiry.
- Blind transfer: REFER, then NOTIFY sipfrag progress -> :class:`TransferResult`; incoming
  REFER is accepted (202) and reported as :class:`IncomingRefer`, ``notify_refer`` reports back.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from voxroute.agent.ratelog import RateLimitedLog
from voxroute.telephony.sip import auth, sdp
from voxroute.telephony.sip.message import (
    NameAddr,
    SipMessage,
    SipParseError,
    host_port,
    new_branch,
    new_call_id,
    new_tag,
    parse,
    parse_name_addr,
    request,
    response,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]
T1 = 0.5
T2 = 4.0
TX_TIMEOUT = 64 * T1
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, NOTIFY"
USER_AGENT = "voxroute"


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes
    addr: Address


@dataclass(frozen=True, slots=True)
class IncomingCall:
    call: Call


@dataclass(frozen=True, slots=True)
class CallAnswered:
    call: Call


@dataclass(frozen=True, slots=True)
class CallFailed:
    call: Call
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class CallTerminated:
    call: Call
    reason: str  # "bye" (the far end hung up), "cancel", "local", "timeout"


@dataclass(frozen=True, slots=True)
class TransferResult:
    call: Call
    ok: bool
    status: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class IncomingRefer:
    call: Call
    target: str


@dataclass(frozen=True, slots=True)
class RegistrationState:
    registered: bool
    status: int | None
    detail: str
    expires: int = 0


Action = (
    Send
    | IncomingCall
    | CallAnswered
    | CallFailed
    | CallTerminated
    | TransferResult
    | IncomingRefer
    | RegistrationState
)


# --------------------------------------------------------------------------- state


@dataclass(eq=False)
class Call:
    call_id: str
    role: str  # "uas" or "uac"
    local: NameAddr  # our From (uac) / To (uas), with our tag
    remote: NameAddr  # the other party, with its tag once known
    remote_addr: Address  # where in-dialog requests go (symmetric: where the INVITE came from)
    remote_target: str  # the far end's Contact URI
    state: str = "proceeding"  # proceeding -> answered (2xx sent/received) -> confirmed -> terminated
    local_cseq: int = 1
    remote_cseq: int = 0
    offer: sdp.MediaDescription | None = None
    media: sdp.Negotiated | None = None
    invite: SipMessage | None = None  # the INVITE (uas: to answer; uac: to ACK/CANCEL)
    route_set: list[str] = field(default_factory=list)
    final: bytes | None = None  # our 2xx to INVITE, retransmitted until ACK
    final_next: float = 0.0
    final_interval: float = T1
    final_deadline: float = 0.0
    refer_pending: bool = False
    refer_id: int | None = None  # CSeq of the incoming REFER we report on
    local_rtp: Address | None = None

    @property
    def local_tag(self) -> str:
        return self.local.tag or ""

    @property
    def remote_tag(self) -> str | None:
        return self.remote.tag


@dataclass(eq=False)
class _ClientTx:
    branch: str
    method: str
    msg: SipMessage
    addr: Address
    call: Call | None
    next_send: float
    interval: float
    deadline: float
    provisional: bool = False


@dataclass
class Registration:
    registrar: Address
    domain: str  # the registrar's domain (Request-URI and AOR host)
    username: str
    password: str
    expires: int = 3600
    auth_username: str | None = None


class UserAgent:
    def __init__(
        self,
        local_addr: Address,
        *,
        allow_from: Iterable[str] = (),
        registration: Registration | None = None,
        user: str = "voxroute",
        transport: str = "UDP",
    ) -> None:
        self.local_addr = local_addr
        self.user = user
        self.transport = transport
        self.allow_from = [ipaddress.ip_network(n, strict=False) for n in allow_from]
        self.registration = registration
        self.calls: dict[str, Call] = {}
        self._tx: dict[tuple[str, str], _ClientTx] = {}
        self._answered: dict[tuple[str, str, str], tuple[bytes, float]] = {}  # server tx -> response
        self._rate = RateLimitedLog(log)
        self._reg_call_id = new_call_id(local_addr[0])
        self._reg_cseq = 0
        self._reg_tag = new_tag()
        self._reg_nonce_tried: str | None = None
        self._reg_refresh_at: float | None = None
        self.registered = False

    @property
    def pending_transactions(self) -> int:
        """Requests we sent that have no final response yet."""
        return len(self._tx)

    # -- addresses

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{host_port(*self.local_addr)}>"

    def _via(self, branch: str) -> str:
        return f"SIP/2.0/{self.transport} {host_port(*self.local_addr)};branch={branch};rport"

    def allowed(self, addr: Address) -> bool:
        try:
            ip = ipaddress.ip_address(addr[0])
        except ValueError:
            return False
        if self.registration is not None and addr[0] == self.registration.registrar[0]:
            return True
        return any(ip in net for net in self.allow_from)

    # -- input

    def receive(self, data: bytes, addr: Address, now: float) -> list[Action]:
        if not data.strip():
            return []  # CRLF keep-alive
        try:
            msg = parse(data)
            msg.check_request()
        except SipParseError as exc:
            self._rate.warning(
                f"bad:{addr[0]}", "SIP from %s:%s: malformed message dropped: %s", addr[0], addr[1], exc
            )
            return self._bad_request(data, addr, exc)
        try:
            if msg.is_request:
                return self._on_request(msg, addr, now)
            return self._on_response(msg, addr, now)
        except SipParseError as exc:  # a header we needed later (SDP, Contact) was unreadable
            self._rate.warning(f"bad:{addr[0]}", "SIP %s from %s:%s rejected: %s", msg, addr[0], addr[1], exc)
            if msg.is_request and msg.method != "ACK":
                return [self._reply(msg, addr, 400, now, reason=f"Bad Request ({exc})"[:80])]
            return []

    def _bad_request(self, data: bytes, addr: Address, exc: SipParseError) -> list[Action]:
        """Answer 400 when the message is a request whose Via, Call-ID and CSeq we can read."""
        try:
            msg = parse(data)
            if not msg.is_request or msg.method == "ACK":
                return []
            _ = (msg.top_via, msg.call_id, msg.cseq)  # From and To are copied as they are
        except SipParseError:
            return []
        return [Send(response(msg, 400, f"Bad Request ({exc})"[:80]).to_bytes(), addr)]

    def _reply(
        self,
        req: SipMessage,
        addr: Address,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        call: Call | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Send:
        hdrs = [("Server", USER_AGENT), *headers]
        if body:
            hdrs.append(("Content-Type", "application/sdp"))
        msg = response(
            req, status, reason, to_tag=call.local_tag if call else new_tag(), headers=hdrs, body=body
        )
        data = msg.to_bytes()
        if status >= 200 and req.method != "ACK":
            self._answered[(req.top_via.branch or "", req.method or "", req.call_id)] = (
                data,
                now + TX_TIMEOUT,
            )
        return Send(data, addr)

    # -- requests

    def _on_request(self, msg: SipMessage, addr: Address, now: float) -> list[Action]:
        assert msg.method is not None
        key = (msg.top_via.branch or "", msg.method, msg.call_id)
        if key in self._answered:  # a retransmission: the same answer again
            return [Send(self._answered[key][0], addr)]
        call = self.calls.get(msg.call_id)
        method = msg.method
        if method == "ACK":
            if call is not None and call.state == "answered" and msg.cseq[0] == call.remote_cseq:
                call.state = "confirmed"
                call.final = None
            return []
        if method == "INVITE":
            if call is not None and call.invite is not None and call.role == "uas":
                if msg.top_via.branch == call.invite.top_via.branch:  # retransmitted while we set up
                    return [Send(response(msg, 100, headers=[("Server", USER_AGENT)]).to_bytes(), addr)]
            if call is not None:  # a re-INVITE (hold, codec change): keep the media as it is
                if msg.to_addr.tag != call.local_tag:
                    return [self._reply(msg, addr, 482, now, reason="Loop Detected")]
                call.remote_cseq = msg.cseq[0]
                body = self._local_sdp(call)
                return [
                    self._reply(
                        msg, addr, 200, now, call=call, headers=[("Contact", self.contact)], body=body
                    )
                ]
            return self._on_invite(msg, addr, now)
        if method == "OPTIONS":
            if not self.allowed(addr) and call is None:
                self._rate.warning(
                    f"deny:{addr[0]}", "SIP OPTIONS from %s:%s: address not allowed (403)", *addr
                )
                return [self._reply(msg, addr, 403, now)]
            return [
                self._reply(msg, addr, 200, now, headers=[("Allow", ALLOW), ("Accept", "application/sdp")])
            ]
        if call is None or (call.remote_tag and msg.from_addr.tag != call.remote_tag):
            if method in ("BYE", "CANCEL", "NOTIFY", "REFER"):
                return [self._reply(msg, addr, 481, now)]
            return [self._reply(msg, addr, 405, now, headers=[("Allow", ALLOW)])]
        if method == "CANCEL":
            out: list[Action] = [self._reply(msg, addr, 200, now, call=call)]
            if call.role == "uas" and call.state == "proceeding" and call.invite is not None:
                out.append(self._reply(call.invite, addr, 487, now, call=call))
                out += self._terminate(call, "cancel")
            return out
        call.remote_cseq = max(call.remote_cseq, msg.cseq[0])
        if method == "BYE":
            out = [self._reply(msg, addr, 200, now, call=call)]
            return out + self._terminate(call, "bye")
        if method == "NOTIFY":
            return [self._reply(msg, addr, 200, now, call=call)] + self._on_notify(call, msg)
        if method == "REFER":
            target = msg.get("Refer-To")
            if not target:
                return [self._reply(msg, addr, 400, now, reason="Missing Refer-To", call=call)]
            call.refer_id = msg.cseq[0]
            out = [self._reply(msg, addr, 202, now, call=call, headers=[("Contact", self.contact)])]
            return out + [IncomingRefer(call, parse_name_addr(target).uri)]
        return [self._reply(msg, addr, 405, now, call=call, headers=[("Allow", ALLOW)])]

    def _on_invite(self, msg: SipMessage, addr: Address, now: float) -> list[Action]:
        if not self.allowed(addr):
            self._rate.warning(
                f"deny:{addr[0]}",
                "SIP INVITE from %s:%s (%s): address not allowed, rejected (403)",
                addr[0],
                addr[1],
                msg.get("From"),
            )
            return [self._reply(msg, addr, 403, now)]
        if msg.to_addr.tag:
            return [self._reply(msg, addr, 481, now)]  # in-dialog INVITE for a dialog we do not know
        ctype = (msg.get("Content-Type") or "").split(";")[0].strip().lower()
        if not msg.body or ctype != "application/sdp":
            return [self._reply(msg, addr, 488, now, reason="Not Acceptable Here (SDP offer required)")]
        offer = sdp.parse(msg.body)
        try:
            sdp.negotiate(offer)
        except SipParseError as exc:
            return [self._reply(msg, addr, 488, now, reason=f"Not Acceptable Here ({exc})"[:80])]
        contact = msg.get_all("Contact")
        target = parse_name_addr(contact[0]).uri if contact else msg.from_addr.uri
        to = msg.to_addr
        call = Call(
            call_id=msg.call_id,
            role="uas",
            local=NameAddr(to.display, to.uri, {**to.params, "tag": new_tag()}),
            remote=msg.from_addr,
            remote_addr=addr,
            remote_target=target,
            remote_cseq=msg.cseq[0],
            offer=offer,
            invite=msg,
            route_set=msg.get_all("Record-Route"),
        )
        self.calls[call.call_id] = call
        trying = response(msg, 100, headers=[("Server", USER_AGENT)]).to_bytes()
        return [Send(trying, addr), IncomingCall(call)]

    def answer(self, call: Call, rtp_addr: Address, now: float) -> list[Action]:
        """Accept a ringing call: 200 OK with our SDP answer; RTP will come to ``rtp_addr``."""
        if call.state != "proceeding" or call.invite is None or call.offer is None:
            return []
        call.local_rtp = rtp_addr
        body, call.media = sdp.answer(call.offer, rtp_addr[0], rtp_addr[1])
        send = self._reply(
            call.invite,
            call.remote_addr,
            200,
            now,
            call=call,
            headers=[("Contact", self.contact), ("Allow", ALLOW)],
            body=body,
        )
        call.state = "answered"
        call.final = send.data
        call.final_interval = T1
        call.final_next = now + T1
        call.final_deadline = now + TX_TIMEOUT
        return [send]

    def reject(self, call: Call, status: int, now: float, reason: str | None = None) -> list[Action]:
        if call.state != "proceeding" or call.invite is None:
            return []
        out: list[Action] = [
            self._reply(call.invite, call.remote_addr, status, now, reason=reason, call=call)
        ]
        call.state = "terminated"
        self.calls.pop(call.call_id, None)
        return out

    def _local_sdp(self, call: Call) -> bytes:
        if call.media is None or call.local_rtp is None:
            return b""
        return sdp.build(
            call.local_rtp[0],
            call.local_rtp[1],
            [(call.media.payload_type, call.media.codec)],
            call.media.dtmf_pt,
        )

    def _on_notify(self, call: Call, msg: SipMessage) -> list[Action]:
        if not call.refer_pending or not (msg.get("Event") or "").lower().startswith("refer"):
            return []
        line = msg.body.decode("utf-8", "replace").strip().splitlines()[:1]
        status = None
        if line and line[0].startswith("SIP/2.0 ") and line[0][8:11].isdigit():
            status = int(line[0][8:11])
        terminated = (msg.get("Subscription-State") or "").lower().startswith("terminated")
        if status is None:
            if terminated:
                call.refer_pending = False
                return [TransferResult(call, False, None, "subscription ended without a final status")]
            return []
        if status < 200:
            log.info("call %s: transfer progress %s", call.call_id, line[0])
            return []
        call.refer_pending = False
        return [TransferResult(call, status < 300, status, line[0])]

    # -- responses

    def _on_response(self, msg: SipMessage, addr: Address, now: float) -> list[Action]:
        assert msg.status is not None
        branch = msg.top_via.branch or ""
        method = msg.cseq[1]
        tx = self._tx.get((branch, method))
        if tx is None:
            call = self.calls.get(msg.call_id)
            if method == "INVITE" and 200 <= msg.status < 300 and call is not None and call.role == "uac":
                return [self._ack(call, msg)]  # a retransmitted 2xx: ACK again
            return []
        if msg.status < 200:
            tx.provisional = True
            if method == "INVITE" and tx.call is not None and msg.to_addr.tag:
                tx.call.remote = msg.to_addr
            return []
        del self._tx[(branch, method)]
        call = tx.call
        if method == "REGISTER":
            return self._on_register_response(msg, tx, now)
        if call is None:
            return []
        if method == "INVITE":
            return self._on_invite_response(call, msg, tx)
        if method == "REFER":
            if msg.status >= 300:
                call.refer_pending = False
                return [TransferResult(call, False, msg.status, f"REFER refused: {msg.status} {msg.reason}")]
            return []
        return []

    def _on_invite_response(self, call: Call, msg: SipMessage, tx: _ClientTx) -> list[Action]:
        assert msg.status is not None
        call.remote = msg.to_addr
        if msg.status >= 300:
            ack = request(
                "ACK",
                tx.msg.uri or "",
                [
                    ("Via", tx.msg.get("Via") or ""),
                    ("From", tx.msg.get("From") or ""),
                    ("To", msg.get("To") or ""),
                    ("Call-ID", call.call_id),
                    ("CSeq", f"{call.local_cseq} ACK"),
                    ("Max-Forwards", "70"),
                ],
            )
            call.state = "terminated"
            self.calls.pop(call.call_id, None)
            return [Send(ack.to_bytes(), tx.addr), CallFailed(call, msg.status, msg.reason)]
        contact = msg.get_all("Contact")
        if contact:
            call.remote_target = parse_name_addr(contact[0]).uri
        call.route_set = list(reversed(msg.get_all("Record-Route")))
        if msg.body:
            answer = sdp.parse(msg.body)
            call.media = sdp.negotiate(answer)
        call.state = "confirmed"
        return [self._ack(call, msg), CallAnswered(call)]

    def _ack(self, call: Call, msg: SipMessage) -> Send:
        ack = self._in_dialog_request(
            call, "ACK", cseq=call.local_cseq if call.invite is None else call.invite.cseq[0]
        )
        return Send(ack.to_bytes(), call.remote_addr)

    # -- requests we send

    def _in_dialog_request(
        self,
        call: Call,
        method: str,
        *,
        cseq: int | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> SipMessage:
        if cseq is None:
            call.local_cseq += 1
            cseq = call.local_cseq
        hdrs = [
            ("Via", self._via(new_branch())),
            ("Max-Forwards", "70"),
            ("From", str(call.local)),
            ("To", str(call.remote)),
            ("Call-ID", call.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", self.contact),
            ("User-Agent", USER_AGENT),
        ]
        hdrs += [("Route", r) for r in call.route_set]
        return request(method, call.remote_target, hdrs + list(headers), body)

    def _start_tx(self, msg: SipMessage, addr: Address, call: Call | None, now: float) -> Send:
        branch = msg.top_via.branch or ""
        assert msg.method is not None
        tx = _ClientTx(branch, msg.method, msg, addr, call, now + T1, T1, now + TX_TIMEOUT)
        self._tx[(branch, msg.method)] = tx
        return Send(msg.to_bytes(), addr)

    def hangup(self, call: Call, now: float) -> list[Action]:
        """End the call from our side: BYE once answered, CANCEL before (uac), 480 before (uas)."""
        if call.state == "terminated":
            return []
        if call.state == "proceeding":
            if call.role == "uas":
                return self.reject(call, 480, now, "Temporarily Unavailable") + [
                    CallTerminated(call, "local")
                ]
            assert call.invite is not None
            cancel = request(
                "CANCEL",
                call.invite.uri or "",
                [
                    ("Via", call.invite.get("Via") or ""),
                    ("From", call.invite.get("From") or ""),
                    ("To", call.invite.get("To") or ""),
                    ("Call-ID", call.call_id),
                    ("CSeq", f"{call.invite.cseq[0]} CANCEL"),
                    ("Max-Forwards", "70"),
                ],
            )
            out: list[Action] = [self._start_tx(cancel, call.remote_addr, None, now)]
            return out + self._terminate(call, "local")
        bye = self._in_dialog_request(call, "BYE")
        return [self._start_tx(bye, call.remote_addr, None, now)] + self._terminate(call, "local")

    def refer(self, call: Call, target: str, now: float, referred_by: str | None = None) -> list[Action]:
        """Blind transfer: ask the far end to call ``target``; a TransferResult follows."""
        if call.state not in ("answered", "confirmed"):
            return [TransferResult(call, False, None, f"call is {call.state}")]
        call.refer_pending = True
        headers = [("Refer-To", f"<{target}>"), ("Referred-By", referred_by or f"<{call.local.uri}>")]
        return [
            self._start_tx(
                self._in_dialog_request(call, "REFER", headers=headers), call.remote_addr, call, now
            )
        ]

    def notify_refer(self, call: Call, status: int, reason: str, now: float) -> list[Action]:
        """Tell the referrer how the transfer is going (RFC 3515 §2.4.5, sipfrag body)."""
        state = "active;expires=60" if status < 200 else "terminated;reason=noresource"
        body = f"SIP/2.0 {status} {reason}\r\n".encode()
        headers = [
            ("Event", f"refer;id={call.refer_id}" if call.refer_id else "refer"),
            ("Subscription-State", state),
            ("Content-Type", "message/sipfrag;version=2.0"),
        ]
        return [
            self._start_tx(
                self._in_dialog_request(call, "NOTIFY", headers=headers, body=body),
                call.remote_addr,
                None,
                now,
            )
        ]

    def invite(
        self,
        target: str,
        addr: Address,
        body: bytes,
        now: float,
        *,
        from_user: str = "caller",
        headers: Sequence[tuple[str, str]] = (),
        call_id: str | None = None,
    ) -> tuple[Call, list[Action]]:
        """Place a call (uac) to ``target`` via ``addr`` with an SDP offer ``body``.
        ``call_id``: one chosen beforehand (:func:`new_call_id`), when the caller must know it first."""
        host, port = self.local_addr
        call = Call(
            call_id=call_id or new_call_id(host),
            role="uac",
            local=NameAddr("", f"sip:{from_user}@{host_port(host, port)}", {"tag": new_tag()}),
            remote=NameAddr("", target, {}),
            remote_addr=addr,
            remote_target=target,
        )
        msg = self._in_dialog_request(
            call,
            "INVITE",
            cseq=call.local_cseq,
            headers=[("Content-Type", "application/sdp"), *headers],
            body=body,
        )
        call.invite = msg
        self.calls[call.call_id] = call
        return call, [self._start_tx(msg, addr, call, now)]

    def _terminate(self, call: Call, reason: str) -> list[Action]:
        if call.state == "terminated":
            return []
        call.state = "terminated"
        call.final = None
        self.calls.pop(call.call_id, None)
        out: list[Action] = [CallTerminated(call, reason)]
        if call.refer_pending:
            call.refer_pending = False
            # a BYE from the transferee after its NOTIFY 200 is the normal end of a blind transfer
            ok = reason == "bye"
            out.insert(0, TransferResult(call, ok, None, "call ended during the transfer"))
        return out

    # -- registration

    def register(
        self, now: float, *, auth_header: tuple[str, str] | None = None, expires: int | None = None
    ) -> list[Action]:
        reg = self.registration
        if reg is None:
            return []
        self._reg_cseq += 1
        aor = f"sip:{reg.username}@{reg.domain}"
        hdrs = [
            ("Via", self._via(new_branch())),
            ("Max-Forwards", "70"),
            ("From", f"<{aor}>;tag={self._reg_tag}"),
            ("To", f"<{aor}>"),
            ("Call-ID", self._reg_call_id),
            ("CSeq", f"{self._reg_cseq} REGISTER"),
            ("Contact", self.contact),
            ("Expires", str(reg.expires if expires is None else expires)),
            ("User-Agent", USER_AGENT),
        ]
        if auth_header:
            hdrs.append(auth_header)
        self._reg_refresh_at = None
        return [self._start_tx(request("REGISTER", f"sip:{reg.domain}", hdrs), reg.registrar, None, now)]

    def _on_register_response(self, msg: SipMessage, tx: _ClientTx, now: float) -> list[Action]:
        reg = self.registration
        assert reg is not None and msg.status is not None
        if msg.status in (401, 407):
            header = msg.get("WWW-Authenticate" if msg.status == 401 else "Proxy-Authenticate")
            try:
                challenge = auth.parse_challenge(header or "")
            except SipParseError as exc:
                return self._register_failed(msg.status, f"unreadable challenge: {exc}", now)
            if self._reg_nonce_tried == challenge.nonce and not challenge.stale:
                return self._register_failed(msg.status, "credentials refused", now)
            self._reg_nonce_tried = challenge.nonce
            value = auth.authorization(
                challenge,
                "REGISTER",
                f"sip:{reg.domain}",
                reg.auth_username or reg.username,
                reg.password,
                nc=1,
            )
            name = "Authorization" if msg.status == 401 else "Proxy-Authorization"
            return self.register(now, auth_header=(name, value))
        if msg.status >= 300:
            return self._register_failed(msg.status, msg.reason, now)
        expires = reg.expires
        for c in msg.get_all("Contact"):
            na = parse_name_addr(c)
            if "expires" in na.params and na.params["expires"].isdigit():
                expires = int(na.params["expires"])
                break
        else:
            header = (msg.get("Expires") or "").strip()
            if header.isdigit():
                expires = int(header)
        self._reg_nonce_tried = None
        self.registered = True
        self._reg_refresh_at = now + max(1.0, expires / 2)
        log.info("registered %s@%s for %d s", reg.username, reg.domain, expires)
        return [RegistrationState(True, msg.status, "registered", expires)]

    def _register_failed(self, status: int | None, detail: str, now: float) -> list[Action]:
        self.registered = False
        self._reg_nonce_tried = None
        self._reg_refresh_at = now + 30.0
        log.warning("registration failed (%s %s); retrying in 30 s", status, detail)
        return [RegistrationState(False, status, detail)]

    # -- time

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for key, tx in list(self._tx.items()):
            if now >= tx.deadline:
                del self._tx[key]
                out += self._tx_timeout(tx, now)
            elif now >= tx.next_send and not (tx.provisional and tx.method == "INVITE"):
                out.append(Send(tx.msg.to_bytes(), tx.addr))
                tx.interval = min(tx.interval * 2, T2) if tx.method != "INVITE" else tx.interval * 2
                tx.next_send = now + tx.interval
        for call in list(self.calls.values()):
            if call.final is None:
                continue
            if now >= call.final_deadline:
                log.warning(
                    "call %s: no ACK for our 200 OK within %.0f s; hanging up", call.call_id, TX_TIMEOUT
                )
                call.final = None
                call.state = "confirmed"
                out += self.hangup(call, now)
                out = [CallTerminated(a.call, "timeout") if isinstance(a, CallTerminated) else a for a in out]
            elif now >= call.final_next:
                out.append(Send(call.final, call.remote_addr))
                call.final_interval = min(call.final_interval * 2, T2)
                call.final_next = now + call.final_interval
        if self._answered:
            for key in [k for k, (_, until) in self._answered.items() if until <= now]:
                del self._answered[key]
        if self._reg_refresh_at is not None and now >= self._reg_refresh_at:
            out += self.register(now)
        return out

    def _tx_timeout(self, tx: _ClientTx, now: float) -> list[Action]:
        log.warning("SIP %s to %s:%s timed out", tx.method, *tx.addr)
        if tx.method == "REGISTER":
            return self._register_failed(408, "timeout", now)
        if tx.call is None:
            return []
        if tx.method == "INVITE":
            tx.call.state = "terminated"
            self.calls.pop(tx.call.call_id, None)
            return [CallFailed(tx.call, 408, "Request Timeout")]
        if tx.method == "REFER" and tx.call.refer_pending:
            tx.call.refer_pending = False
            return [TransferResult(tx.call, False, 408, "REFER timed out")]
        return []
