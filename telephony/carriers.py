"""The FastAPI edge for Exotel, Plivo and Telnyx: call set-up answers and media-stream websockets.

One websocket :class:`MediaStreamLink` (a ``voxroute.agent.link.CarrierLink``) serves all three over
their sans-I/O codecs (``telephony/exotel.py``, ``plivo.py``, ``telnyx.py``); each carrier
adds only its set-up answer and the check it offers:

| carrier | set-up | check |
|---|---|---|
| Exotel | ``GET /exotel/voicebot`` (the applet's dynamic URL) -> ``{"url": "wss://..."}``, or a static URL | Basic auth on the upgrade (``wss://KEY:TOKEN@host/...``), optional IP allow-list |
| Plivo | ``POST /plivo/answer`` -> ``<Stream bidirectional="true">`` XML; ``POST /plivo/stream-status`` | ``X-Plivo-Signature-V3`` on webhooks, a per-call HMAC in ``extraHeaders`` checked on ``start`` |
| Telnyx | ``POST /telnyx/texml`` -> ``<Connect><Stream bidirectionalMode="rtp">`` TeXML | Ed25519 webhook signature, a per-call HMAC ``<Parameter>`` checked on ``start`` |

Secrets come from the environment (:meth:`CarrierSettings.from_env`, variable names from the
config's ``telephony`` section). Fail closed: an enabled carrier without its secret is an error at
start (:func:`missing_secrets`), unless ``allow_unsigned`` (dev only: its check is off and a
warning says so). A carrier that is not enabled has no routes (404). Over the call cap or while
draining (``voxroute.telephony.admission``), set-ups get the carrier's busy answer and streams close 1013;
while the process drains for shutdown, set-ups get HTTP 503 and stream upgrades are refused with 503
before they are accepted (:func:`draining_answer`), so a proxy in front retries the next worker.
Any bad input from the network ends only its own call: close 1008 and one log line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from voxroute.agent.calllog.redact import mask_number
from voxroute.agent.link import (
    CallEnded,
    CallStart,
    CarrierEvent,
    CarrierLink,
    InboundAudio,
    InboundDtmf,
    MarkEcho,
)
from voxroute.telephony import plivo, telnyx
from voxroute.telephony.admission import DRAINING, WS_TRY_AGAIN_LATER, CallGate
from voxroute.telephony.exotel import ExotelStream
from voxroute.telephony.mediastream import (
    Audio,
    CarrierError,
    CarrierProtocolError,
    Dtmf,
    MarkPlayed,
    MediaStreamCodec,
    Stopped,
    StreamStart,
)
from voxroute.telephony.plivo import PlivoStream
from voxroute.telephony.telnyx import TelnyxStream
from voxroute.telephony.twiml import call_token, check_call_token, public_url, public_ws_url
from voxroute.telephony.wslink import SocketClosed, WebSocketLink

log = logging.getLogger(__name__)

EXOTEL_VOICEBOT_PATH = "/exotel/voicebot"
EXOTEL_STREAM_PATH = "/exotel/stream"
PLIVO_ANSWER_PATH = "/plivo/answer"
PLIVO_STATUS_PATH = "/plivo/stream-status"
PLIVO_STREAM_PATH = "/plivo/stream"
PLIVO_TRANSFER_PATH = "/plivo/transfer"  # + /{call_uuid}: telephony.carrier_control's aleg_url
TELNYX_TEXML_PATH = "/telnyx/texml"
TELNYX_STREAM_PATH = "/telnyx/stream"
MAX_WEBHOOK_BYTES = 64 * 1024
CARRIERS = ("twilio", "exotel", "plivo", "telnyx")  # the websocket carriers; SIP is telephony.sip
# What a carrier hears when we are at capacity or shutting down (its own markup for "busy").
PLIVO_BUSY_XML = '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup reason="busy"/></Response>'
TELNYX_BUSY_TEXML = '<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>'

OnCall = Callable[[CarrierLink], Awaitable[None]]


class CarrierSettings(BaseModel):
    """Per-carrier secrets and choices. ``None`` secret: that carrier's check is off (logged)."""

    model_config = ConfigDict(extra="forbid")

    exotel_credentials: str | None = Field(default=None, repr=False)  # "KEY:TOKEN" for Basic auth
    exotel_allowed_networks: list[str] = Field(default_factory=list)  # CIDRs; empty: any address
    exotel_sample_rate: int = 8000  # asked for in the stream URL (?sample-rate=); 8000, 16000, 24000
    plivo_auth_token: str | None = Field(default=None, repr=False)
    plivo_content_type: str = "audio/x-l16;rate=8000"  # Plivo's default
    telnyx_public_key: str | None = None  # base64 Ed25519 key from the portal
    telnyx_stream_secret: str | None = Field(default=None, repr=False)  # our key for the per-call HMAC
    telnyx_codec: str = "PCMU"
    telnyx_sample_rate: int = 8000

    @model_validator(mode="after")
    def _known_formats(self) -> CarrierSettings:
        if self.exotel_sample_rate not in (8000, 16000, 24000):
            raise ValueError("exotel_sample_rate must be 8000, 16000 or 24000")
        if self.plivo_content_type not in plivo.CONTENT_TYPES:
            raise ValueError(f"plivo_content_type must be one of {plivo.CONTENT_TYPES}")
        telnyx.codec_format(self.telnyx_codec, self.telnyx_sample_rate)  # raises if we could not decode it
        return self

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, names: dict[str, str] | None = None
    ) -> CarrierSettings:
        """``names``: the environment variable of each secret field, when not the default
        (``exotel_credentials``, ``plivo_auth_token``, ``telnyx_public_key``, ``telnyx_stream_secret``)."""
        env = os.environ if env is None else env
        names = {**SECRET_ENV, **(names or {})}
        nets = [n.strip() for n in env.get("EXOTEL_ALLOWED_NETWORKS", "").split(",") if n.strip()]
        choices = {
            "exotel_sample_rate": env.get("EXOTEL_SAMPLE_RATE"),
            "plivo_content_type": env.get("PLIVO_CONTENT_TYPE"),
            "telnyx_codec": env.get("TELNYX_CODEC"),
            "telnyx_sample_rate": env.get("TELNYX_SAMPLE_RATE"),
        }
        # validated from strings as the environment holds them (pydantic converts the sample rates)
        return cls.model_validate(
            {
                "exotel_allowed_networks": nets,
                **{field: (env.get(name) or "").strip() or None for field, name in names.items()},
                **{k: v for k, v in choices.items() if v},
            }
        )


# Each carrier's secret fields in CarrierSettings, and their default environment variables.
SECRET_ENV = {
    "exotel_credentials": "EXOTEL_STREAM_CREDENTIALS",
    "plivo_auth_token": "PLIVO_AUTH_TOKEN",
    "telnyx_public_key": "TELNYX_PUBLIC_KEY",
    "telnyx_stream_secret": "TELNYX_STREAM_SECRET",
}
SECRETS_OF = {
    "exotel": ("exotel_credentials",),
    "plivo": ("plivo_auth_token",),
    "telnyx": ("telnyx_public_key", "telnyx_stream_secret"),
}


def missing_secrets(settings: CarrierSettings, enabled: tuple[str, ...] | list[str]) -> list[str]:
    """The secret fields that enabled carriers (other than Twilio) lack."""
    return [f for c in enabled for f in SECRETS_OF.get(c, ()) if not getattr(settings, f)]


class MediaStreamLink(WebSocketLink):
    """One JSON media stream (Exotel, Plivo or Telnyx) as a ``voxroute.agent.link.CarrierLink``.

    Audio in is 20 ms PCM16 8 kHz (the codec converts from the native format); ``send_audio``
    takes PCM16 8 kHz. Marks flushed by our own ``clear`` are reported at once (Twilio's rule,
    whatever the carrier does). Sends after the socket closed are dropped quietly: the end
    shows up in ``events()`` as ``CallEnded``.
    """

    def __init__(self, websocket: WebSocket, codec: MediaStreamCodec, *, default_tenant: str = "default"):
        super().__init__(websocket, f"{codec.carrier} stream from {peer_of(websocket)}")
        self._codec = codec
        self._default_tenant = default_tenant
        self._ready: collections.deque[CarrierEvent] = collections.deque()
        self.carrier_errors = 0

    async def wait_start(self, tenant_for: Callable[[str], str] | None = None) -> CallStart:
        """Read until the carrier's ``start``; the caller bounds this with a timeout.
        Events that come in the same message batch after it are kept for ``events()``."""
        while True:
            started: StreamStart | None = None
            for event in self._codec.feed(await self._receive()):
                if isinstance(event, StreamStart):
                    started = event
                elif started is not None:
                    self._queue(event)
            if started is None:
                continue
            params = dict(started.parameters)
            to_number = started.to_number or params.get("to") or None
            tenant = params.get("tenant") or (tenant_for(to_number) if tenant_for and to_number else None)
            self.start = CallStart(
                call_sid=started.call_id,
                stream_sid=started.stream_id,
                tenant=tenant or self._default_tenant,
                from_number=started.from_number or params.get("from") or None,
                to_number=to_number,
                language=params.get("language") or None,
                carrier=self._codec.carrier,
                parameters=params,
            )
            self._who = f"{self._codec.carrier} call {started.call_id}"
            return self.start

    def _queue(self, event: object) -> None:
        if isinstance(event, Audio):
            self._ready.append(InboundAudio(event.pcm, event.timestamp_ms, event.ulaw))
        elif isinstance(event, Dtmf):
            self._ready.append(InboundDtmf(event.digit))
        elif isinstance(event, MarkPlayed):
            self._ready.append(MarkEcho(event.name))
        elif isinstance(event, Stopped):
            self._ready.append(CallEnded("stop"))
        elif isinstance(event, CarrierError):
            self.carrier_errors += 1
            if self.carrier_errors <= 10:
                log.warning("%s: the carrier reports an error %s: %s", self._who, event.code, event.detail)

    async def _next_event(self) -> CarrierEvent:
        if self._ended:
            raise StopAsyncIteration
        while not self._ready:
            try:
                raw = await self._receive()
            except SocketClosed:
                clean = self.close_code in (1000, 1001, 1005)
                self._ready.append(CallEnded("stop" if clean and self._codec.close_means_stop else "closed"))
                break
            try:
                parsed = self._codec.feed(raw)
            except CarrierProtocolError as exc:
                log.warning("%s: protocol error, closing the stream (1008): %s", self._who, exc)
                await self.close(1008)
                self._ready.append(CallEnded("error"))
                break
            for event in parsed:
                self._queue(event)
        event = self._ready.popleft()
        if isinstance(event, CallEnded):
            self._ended = True
            self._ready.clear()
        return event

    async def send_audio(self, pcm: bytes) -> None:
        if pcm and not self._closed:
            await self._send(self._codec.media(pcm))

    async def send_mark(self, name: str) -> None:
        await self._send(self._codec.mark(name))

    async def clear(self) -> None:
        await self._send(self._codec.clear())
        for event in self._codec.take_flushed():
            self._queue(event)


# ---------------------------------------------------------------- helpers


def peer_of(conn: Request | WebSocket) -> str:
    """``host:port`` of the far end, for log lines."""
    return f"{conn.client.host}:{conn.client.port}" if conn.client else "?"


def error_response(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def draining_answer() -> JSONResponse:
    """A new call's set-up (or stream upgrade) while this process drains for shutdown: 503, not the
    carrier's busy markup, which would end the call. A proxy in front (deploy/nginx) retries the
    next worker; with none left the carrier takes its fallback (Twilio: the number's Voice Fallback
    URL, Plivo: the application's fallback_answer_url, Telnyx: the TeXML application's
    voice_fallback_url, Exotel: the applet's failure branch)."""
    return JSONResponse(
        {"detail": "draining: this worker is shutting down, try another"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def refuse_upgrade_if_draining(websocket: WebSocket, gate: CallGate, carrier: str) -> bool:
    """While draining: refuse a stream upgrade with HTTP 503 before accepting it (counted, logged),
    so a proxy can hand it to another worker; True when refused."""
    if not gate.draining:
        return False
    gate.check(carrier)
    await websocket.send_denial_response(draining_answer())
    return True


async def read_body(request: Request, what: str) -> bytes | Response:
    """A webhook's body, or a 413 once it passes MAX_WEBHOOK_BYTES (logged)."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_WEBHOOK_BYTES:
            log.warning("%s from %s: body over %d bytes", what, peer_of(request), MAX_WEBHOOK_BYTES)
            return error_response(413, "request body too large")
    return bytes(body)


def _form(body: bytes) -> dict[str, str] | None:
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200))
    except (UnicodeDecodeError, ValueError):
        return None


def basic_auth_ok(header: str | None, credentials: str) -> bool:
    """``Authorization: Basic base64(KEY:TOKEN)`` against ``KEY:TOKEN``, in constant time."""
    if not header or not header[:6].lower() == "basic ":
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, credentials.encode())


def _with_credentials(url: str, credentials: str | None) -> str:
    if not credentials:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"{credentials}@{parts.netloc}", parts.path, parts.query, ""))


def _address_allowed(host: str | None, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not networks:
        return True
    try:
        addr = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return any(addr in net for net in networks)


def _alnum(value: str) -> str:
    """Plivo's extraHeaders take alphanumeric values only: keep the digits of a phone number."""
    return "".join(c for c in value if c.isascii() and c.isalnum())


# ---------------------------------------------------------------- routes


def add_carrier_routes(
    app: FastAPI,
    public_base_url: str,
    on_call: OnCall,
    *,
    settings: CarrierSettings | None = None,
    enabled: tuple[str, ...] | list[str] = CARRIERS,
    allow_unsigned: bool = False,
    default_tenant: str = "default",
    tenant_for: Callable[[str], str] | None = None,
    max_message_bytes: int | None = None,
    start_timeout_s: float = 10.0,
    gate: CallGate | None = None,
    silence_timeout_s: float | None = None,
    plivo_transfer_xml: Callable[[str], Awaitable[str | None]] | None = None,
) -> None:
    """Mount the routes of the ``enabled`` carriers among Exotel, Plivo and Telnyx on ``app``;
    ``on_call(link)`` runs one call. Raises ``ValueError`` when an enabled carrier lacks its
    secret, unless ``allow_unsigned``. ``plivo_transfer_xml(call_uuid)``: the XML for a transfer
    we asked Plivo for (its ``aleg_url``)."""
    s = settings or CarrierSettings.from_env()
    gate = gate if gate is not None else CallGate(100)
    missing = missing_secrets(s, enabled)
    if missing and not allow_unsigned:
        raise ValueError(f"enabled carriers lack their secrets: {', '.join(missing)}")
    limit = {} if max_message_bytes is None else {"max_message_bytes": max(max_message_bytes, 256 * 1024)}
    networks = [ipaddress.ip_network(n, strict=False) for n in s.exotel_allowed_networks]
    telnyx_key = base64.b64decode(s.telnyx_public_key) if s.telnyx_public_key else None
    if telnyx_key is not None and len(telnyx_key) != 32:
        raise ValueError("telnyx_public_key must be a base64 Ed25519 public key (32 bytes)")
    for field in missing:
        log.warning("DEV: no %s: %s traffic is NOT checked", field, field.split("_")[0].capitalize())

    async def run_stream(
        websocket: WebSocket, codec: MediaStreamCodec, check: Callable[[CallStart], str | None]
    ) -> None:
        peer = peer_of(websocket)
        if await refuse_upgrade_if_draining(websocket, gate, codec.carrier):
            return
        await websocket.accept()
        link = MediaStreamLink(websocket, codec, default_tenant=default_tenant)
        try:
            async with asyncio.timeout(start_timeout_s):
                start = await link.wait_start(tenant_for)
        except TimeoutError:
            log.warning(
                "%s stream from %s: no start within %.1f s, closing (1008)",
                codec.carrier,
                peer,
                start_timeout_s,
            )
            await link.close(1008)
            return
        except CarrierProtocolError as exc:
            log.warning(
                "%s stream from %s: protocol error before start, closing (1008): %s", codec.carrier, peer, exc
            )
            await link.close(1008)
            return
        except SocketClosed:
            log.info("%s stream from %s closed before start", codec.carrier, peer)
            return
        problem = check(start)
        if problem:
            log.warning(
                "%s call %s from %s: %s, closing (1008)", codec.carrier, start.call_sid, peer, problem
            )
            await link.close(1008)
            return
        if gate.enter(codec.carrier, start.call_sid) is not None:
            await link.close(WS_TRY_AGAIN_LATER)
            return
        log.info(
            "%s call %s: stream %s started (tenant %s)",
            codec.carrier,
            start.call_sid,
            start.stream_sid,
            start.tenant,
        )
        link.silence_timeout_s = silence_timeout_s
        try:
            await on_call(link)
        except Exception:
            log.exception(
                "%s call %s: on_call failed, closing the stream (1011)", codec.carrier, start.call_sid
            )
            await link.close(1011)
        finally:
            gate.leave()
            await link.close(1000)
            log.info("%s call %s: stream ended", codec.carrier, start.call_sid)

    def no_check(start: CallStart) -> str | None:
        return None

    # -- Exotel

    def exotel_allowed(conn: Request | WebSocket, what: str) -> bool:
        host = conn.client.host if conn.client else None
        if not _address_allowed(host, networks):
            log.warning(
                "%s from %s rejected (403): address not in the Exotel allow-list", what, peer_of(conn)
            )
            return False
        if s.exotel_credentials and not basic_auth_ok(
            conn.headers.get("authorization"), s.exotel_credentials
        ):
            log.warning("%s from %s rejected (403): missing or wrong Basic auth", what, peer_of(conn))
            return False
        return True

    async def exotel_voicebot(request: Request) -> Response:
        """The Voicebot applet's dynamic URL: Exotel GETs it with the call's details."""
        if not exotel_allowed(request, "Exotel voicebot URL request"):
            return error_response(403, "forbidden")
        q = request.query_params
        if gate.check("exotel", q.get("CallSid")) is not None:
            # 503 (at the cap and while draining): a proxy in front retries the next worker; with
            # none left, the flow goes on to the applet's failure branch
            return error_response(503, "busy")
        to_number = q.get("CallTo") or q.get("To") or ""
        params = {"sample-rate": str(s.exotel_sample_rate)}
        if tenant_for is not None and to_number:
            params["tenant"] = tenant_for(to_number)
        url = public_ws_url(public_base_url, EXOTEL_STREAM_PATH, urlencode(params))
        log.info("Exotel call %s to %s: stream URL handed out", q.get("CallSid"), to_number)
        return JSONResponse({"url": _with_credentials(url, s.exotel_credentials)})

    async def exotel_stream(websocket: WebSocket) -> None:
        if not exotel_allowed(websocket, "Exotel stream upgrade"):
            await websocket.close(code=1008)  # before accept: the handshake fails with HTTP 403
            return
        await run_stream(websocket, ExotelStream(**limit), no_check)

    if "exotel" in enabled:
        app.add_api_route(EXOTEL_VOICEBOT_PATH, exotel_voicebot, methods=["GET"])
        app.add_api_websocket_route(EXOTEL_STREAM_PATH, exotel_stream)

    # -- Plivo

    async def plivo_form(request: Request, what: str) -> dict[str, str] | Response:
        body = await read_body(request, what)
        if isinstance(body, Response):
            return body
        form = _form(body)
        if form is None:
            log.warning("%s from %s: unreadable form", what, peer_of(request))
            return error_response(400, "body must be application/x-www-form-urlencoded")
        if s.plivo_auth_token:
            url = public_url(public_base_url, request.url.path, request.url.query)
            ok = plivo.validate_signature_v3(
                s.plivo_auth_token,
                url,
                request.headers.get(plivo.NONCE_HEADER),
                request.headers.get(plivo.SIGNATURE_HEADER),
                form,
            )
            if not ok:
                log.warning(
                    "%s from %s rejected (403): bad or missing %s",
                    what,
                    peer_of(request),
                    plivo.SIGNATURE_HEADER,
                )
                return error_response(403, "invalid Plivo signature")
        return form

    async def plivo_answer(request: Request) -> Response:
        form = await plivo_form(request, "Plivo answer webhook")
        if isinstance(form, Response):
            return form
        call_uuid = form.get("CallUUID")
        if not call_uuid:
            log.warning("Plivo answer webhook from %s: no CallUUID", peer_of(request))
            return error_response(400, "CallUUID is required")
        if (refused := gate.check("plivo", call_uuid)) is not None:
            if refused == DRAINING:
                return draining_answer()
            return Response(PLIVO_BUSY_XML, media_type="application/xml")
        from_number, to_number = form.get("From", ""), form.get("To", "")
        headers = {"from": _alnum(from_number), "to": _alnum(to_number)}
        tenant = tenant_for(to_number) if tenant_for and to_number else None
        if tenant and _alnum(tenant) == tenant:
            headers["tenant"] = tenant
        if s.plivo_auth_token:
            headers["callToken"] = call_token(s.plivo_auth_token, call_uuid)
        xml = plivo.stream_xml(
            public_ws_url(public_base_url, PLIVO_STREAM_PATH),
            content_type=s.plivo_content_type,
            headers=headers,
            status_callback_url=public_url(public_base_url, PLIVO_STATUS_PATH),
        )
        log.info(
            "Plivo call %s from %s to %s: connecting audio stream",
            call_uuid,
            mask_number(from_number),
            to_number,
        )
        return Response(xml, media_type="application/xml")

    async def plivo_status(request: Request) -> Response:
        form = await plivo_form(request, "Plivo stream status callback")
        if isinstance(form, Response):
            return form
        log.info(
            "Plivo call %s: stream %s %s",
            form.get("CallUUID"),
            form.get("StreamID") or form.get("StreamId"),
            form.get("Event"),
        )
        return Response(status_code=204)

    def plivo_check(start: CallStart) -> str | None:
        if s.plivo_auth_token and not check_call_token(
            s.plivo_auth_token, start.call_sid, start.parameters.get("callToken")
        ):
            return "start without a valid callToken in extra_headers"
        return None

    async def plivo_stream(websocket: WebSocket) -> None:
        await run_stream(websocket, PlivoStream(**limit), plivo_check)

    async def plivo_transfer(request: Request, call_uuid: str) -> Response:
        """Plivo's fetch of the ``aleg_url`` of a transfer we asked for: ``<Speak>`` + ``<Dial>``."""
        form = await plivo_form(request, "Plivo transfer URL request")
        if isinstance(form, Response):
            return form
        xml = await plivo_transfer_xml(call_uuid) if plivo_transfer_xml is not None else None
        if xml is None:
            log.warning("Plivo transfer URL for call %s from %s: no transfer pending (404)", call_uuid,
                        peer_of(request))  # fmt: skip
            return error_response(404, "no transfer pending for this call")
        log.info("Plivo call %s: transfer XML handed out", call_uuid)
        return Response(xml, media_type="application/xml")

    if "plivo" in enabled:
        app.add_api_route(PLIVO_ANSWER_PATH, plivo_answer, methods=["POST"])
        app.add_api_route(PLIVO_STATUS_PATH, plivo_status, methods=["POST"])
        app.add_api_websocket_route(PLIVO_STREAM_PATH, plivo_stream)
        app.add_api_route(PLIVO_TRANSFER_PATH + "/{call_uuid}", plivo_transfer, methods=["POST"])

    # -- Telnyx

    async def telnyx_texml(request: Request) -> Response:
        body = await read_body(request, "Telnyx TeXML webhook")
        if isinstance(body, Response):
            return body
        if telnyx_key is not None:
            problem = telnyx.verify_webhook(
                telnyx_key,
                body,
                request.headers.get(telnyx.SIGNATURE_HEADER),
                request.headers.get(telnyx.TIMESTAMP_HEADER),
            )
            if problem:
                log.warning("Telnyx TeXML webhook from %s rejected (403): %s", peer_of(request), problem)
                return error_response(403, "invalid Telnyx signature")
        form = _form(body)
        if form is None:
            log.warning("Telnyx TeXML webhook from %s: unreadable form", peer_of(request))
            return error_response(400, "body must be application/x-www-form-urlencoded")
        call_sid = form.get("CallSid") or form.get("CallControlId")
        if not call_sid:
            log.warning("Telnyx TeXML webhook from %s: no CallSid", peer_of(request))
            return error_response(400, "CallSid is required")
        if (refused := gate.check("telnyx", call_sid)) is not None:
            if refused == DRAINING:
                return draining_answer()
            return Response(TELNYX_BUSY_TEXML, media_type="application/xml")
        from_number, to_number = form.get("From", ""), form.get("To", "")
        params = {"from": from_number, "to": to_number}
        if tenant_for is not None and to_number:
            params["tenant"] = tenant_for(to_number)
        if s.telnyx_stream_secret:
            params["call_token"] = call_token(s.telnyx_stream_secret, call_sid)
        texml = telnyx.connect_stream_texml(
            public_ws_url(public_base_url, TELNYX_STREAM_PATH),
            params,
            codec=s.telnyx_codec,
            sample_rate=s.telnyx_sample_rate,
        )
        log.info(
            "Telnyx call %s from %s to %s: connecting media stream",
            call_sid,
            mask_number(from_number),
            to_number,
        )
        return Response(texml, media_type="application/xml")

    def telnyx_check(start: CallStart) -> str | None:
        # The token is bound to the TeXML CallSid, which the stream reports as call_control_id.
        if s.telnyx_stream_secret and not check_call_token(
            s.telnyx_stream_secret, start.call_sid, start.parameters.get("call_token")
        ):
            return "start without a valid call_token parameter"
        return None

    async def telnyx_stream(websocket: WebSocket) -> None:
        await run_stream(websocket, TelnyxStream(**limit), telnyx_check)

    if "telnyx" in enabled:
        app.add_api_route(TELNYX_TEXML_PATH, telnyx_texml, methods=["POST"])
        app.add_api_websocket_route(TELNYX_STREAM_PATH, telnyx_stream)
