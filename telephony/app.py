"""The FastAPI edge for Twilio: voice webhook -> TwiML, media-stream websocket -> ``on_call(link)``.

``POST /twilio/voice`` answers with ``<Connect><Stream>`` and per-call ``<Parameter>``s;
``WS /twilio/stream`` turns the media stream into a :class:`TwilioLink` (the ``CarrierLink`` of
``voxroute.agent.link``) and runs ``on_call(link)`` until the call ends; ``GET /healthz`` (alive) and
``GET /readyz`` (taking calls: 503 while draining for shutdown or at the call cap).

Fail closed: each enabled carrier needs its secret (Twilio's auth token here; the others' in
``voxroute.telephony.carriers``), else building the app raises, unless ``allow_unsigned`` (``voxroute serve
--dev`` and in-process test stacks say so explicitly). A carrier that is not enabled has no routes
(404). Every call takes a slot of one :class:`~telephony.admission.CallGate`; over its cap the
carrier gets its busy answer; while draining for shutdown, a new call's webhook gets 503 and a stream
upgrade is refused with 503, so a proxy in front retries the next worker (Twilio, with none left: the
number's Voice Fallback URL).

Each websocket handler owns its call and starts no tasks: ``on_call`` runs inside it, and the
link reads the socket only when ``on_call`` iterates ``link.events()``. A protocol error ends
that call only (close 1008, ``CallEnded("error")``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.datastructures import MultiDict

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
from voxroute.telephony.admission import DRAINING, WS_TRY_AGAIN_LATER, CallGate
from voxroute.telephony.call_control import (
    DialResult,
    dial_action_result,
    hangup_twiml,
    return_to_agent_twiml,
    whisper_twiml,
)
from voxroute.telephony.carriers import (
    CARRIERS,
    CarrierSettings,
    add_carrier_routes,
    draining_answer,
    error_response,
    peer_of,
    read_body,
    refuse_upgrade_if_draining,
)
from voxroute.telephony.twilio import (
    MAX_MESSAGE_BYTES,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    TwilioProtocolError,
    TwilioStream,
)
from voxroute.telephony.twiml import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    call_token,
    check_call_token,
    connect_stream_twiml,
    public_url,
    public_ws_url,
    validate_signature,
)
from voxroute.telephony.wslink import SocketClosed, WebSocketLink

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
STREAM_PATH = "/twilio/stream"
WHISPER_PATH = "/twilio/whisper"  # + /{CallSid}: what the human hears before the caller is connected
DIAL_ACTION_PATH = "/twilio/dial-action"  # + /{CallSid}: how the human leg of a transfer ended
INBOUND_TRACKS = frozenset({"inbound", "inbound_track"})

BUSY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>'

OnCall = Callable[[CarrierLink], Awaitable[None]]
TenantLookup = Callable[[str], str | None]


class TelephonySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_base_url: str  # what Twilio calls, e.g. https://agent.example.com (signatures are over it)
    twilio_auth_token: str | None = Field(default=None, repr=False)  # None: no signature checks
    default_tenant: str = "default"
    max_message_bytes: int = Field(default=MAX_MESSAGE_BYTES, gt=0)
    start_timeout_s: float = Field(default=10.0, gt=0)  # connected+start must arrive within this
    verify_call_token: bool = True  # with an auth token: start must carry our per-call HMAC parameter
    carriers: tuple[str, ...] = CARRIERS  # the carriers routed; the others answer 404
    allow_unsigned: bool = False  # True: a carrier without its secret takes unsigned traffic (dev only)
    max_concurrent_calls: int = Field(default=100, ge=1)  # when create_app makes its own CallGate
    media_silence_timeout_s: float | None = Field(default=30.0, gt=0)  # no media this long ends a call

    @field_validator("carriers")
    @classmethod
    def _known_carriers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in value if c not in CARRIERS]
        if unknown:
            raise ValueError(f"unknown carrier(s) {unknown}; known: {CARRIERS}")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _http_base(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("must be http(s)://host[:port][/prefix] without query or fragment")
        return value.rstrip("/")


class TwilioLink(WebSocketLink):
    """One Twilio media stream as a ``voxroute.agent.link.CarrierLink``.

    Audio in is PCM16 8 kHz decoded from mu-law; ``send_audio`` takes any even number of bytes of
    PCM16 8 kHz and sends it as one ``media`` message. Sends after the socket closed are dropped
    quietly: the call's end shows up in ``events()`` as ``CallEnded``.
    """

    def __init__(self, websocket: WebSocket, stream: TwilioStream, *, default_tenant: str = "default"):
        super().__init__(websocket, f"stream from {websocket.client.host if websocket.client else '?'}")
        self._stream = stream
        self._default_tenant = default_tenant
        self._ready: collections.deque[CarrierEvent] = collections.deque()  # a message's later frames

    async def wait_start(self) -> CallStart:
        """Read until Twilio's ``start`` (after ``connected``); the caller bounds this with a timeout."""
        while True:
            for event in self._stream.feed(await self._receive()):
                if isinstance(event, Start):
                    params = dict(event.custom_parameters)
                    self.start = CallStart(
                        call_sid=event.call_sid,
                        stream_sid=event.stream_sid,
                        tenant=params.get("tenant") or self._default_tenant,
                        from_number=params.get("from") or None,
                        to_number=params.get("to") or None,
                        language=params.get("language") or None,
                        parameters=params,
                    )
                    self._who = f"call {event.call_sid}"
                    return self.start

    def _end(self, reason: str) -> CallEnded:
        self._ended = True
        return CallEnded(reason)

    async def _next_event(self) -> CarrierEvent:
        if self._ready:  # before the end check: a ``stop`` may follow frames of the same message
            return self._ready.popleft()
        if self._ended:
            raise StopAsyncIteration
        while True:
            try:
                raw = await self._receive()
            except SocketClosed:
                return self._end("closed")
            try:
                parsed = self._stream.feed(raw)
            except TwilioProtocolError as exc:
                log.warning("%s: Twilio protocol error, closing the stream (1008): %s", self._who, exc)
                await self.close(1008)
                return self._end("error")
            for event in parsed:
                if isinstance(event, Media):
                    if event.track is None or event.track in INBOUND_TRACKS:
                        self._ready.append(InboundAudio(event.pcm, event.timestamp, event.payload))
                elif isinstance(event, Dtmf):
                    self._ready.append(InboundDtmf(event.digit))
                elif isinstance(event, Mark):
                    self._ready.append(MarkEcho(event.name))
                elif isinstance(event, Stop):
                    self._ready.append(self._end("stop"))
            if self._ready:
                return self._ready.popleft()

    async def send_audio(self, pcm: bytes) -> None:
        if pcm and not self._closed:
            await self._send([self._stream.media(pcm)])

    async def send_mark(self, name: str) -> None:
        await self._send([self._stream.mark(name)])

    async def clear(self) -> None:
        await self._send([self._stream.clear()])


class HandoffHooks(Protocol):
    """What the edge asks the core about a transfer in progress."""

    async def whisper_for(self, call_sid: str) -> str | None: ...

    async def on_dial_result(self, call_sid: str, result: DialResult) -> None: ...

    async def plivo_transfer_xml(self, call_uuid: str) -> str | None:
        """The XML Plivo runs for a call we asked it to transfer, None if there is none."""
        ...


def create_app(
    settings: TelephonySettings,
    on_call: OnCall,
    *,
    tenant_for_number: TenantLookup | None = None,
    handoff: HandoffHooks | None = None,
    carriers: CarrierSettings | None = None,
    gate: CallGate | None = None,
) -> FastAPI:
    """The carriers' edge. ``on_call(link)`` runs one call to its end (the lead's CallSession).
    Exotel, Plivo and Telnyx routes come from ``voxroute.telephony.carriers`` (``carriers``: their
    secrets; ``None`` reads them from the environment). ``gate``: the process's call admission
    (shared with the SIP edge); None makes one of ``settings.max_concurrent_calls``.
    Raises ``ValueError`` naming every missing secret of an enabled carrier (fail closed)."""
    app = FastAPI(title="voxroute telephony", docs_url=None, redoc_url=None, openapi_url=None)
    token = settings.twilio_auth_token
    twilio_on = "twilio" in settings.carriers
    if twilio_on and not token:
        if not settings.allow_unsigned:
            raise ValueError("Twilio is enabled but has no auth token: its webhooks could not be verified")
        log.warning("DEV: no Twilio auth token: webhook and media stream signatures are NOT checked")
    stream_url = public_ws_url(settings.public_base_url, STREAM_PATH)
    gate = gate if gate is not None else CallGate(settings.max_concurrent_calls)
    app.state.telephony_settings = settings
    app.state.call_gate = gate

    def tenant_for(to: str) -> str:
        if tenant_for_number is not None and to:
            try:
                tenant = tenant_for_number(to)
            except Exception:
                log.exception("tenant lookup for %s failed; using %s", to, settings.default_tenant)
                tenant = None
            if tenant:
                return tenant
        return settings.default_tenant

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "active_calls": gate.active, "draining": gate.draining}

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready for new calls: 503 while draining for shutdown or with every call slot taken."""
        reason = gate.refusal()
        body = {"ready": reason is None, "active_calls": gate.active, "max_calls": gate.max_calls}
        if reason is not None:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if reason is None else 503)

    add_carrier_routes(
        app,
        settings.public_base_url,
        on_call,
        settings=carriers,
        enabled=settings.carriers,
        allow_unsigned=settings.allow_unsigned,
        default_tenant=settings.default_tenant,
        tenant_for=tenant_for,
        max_message_bytes=settings.max_message_bytes,
        start_timeout_s=settings.start_timeout_s,
        gate=gate,
        silence_timeout_s=settings.media_silence_timeout_s,
        plivo_transfer_xml=handoff.plivo_transfer_xml if handoff is not None else None,
    )
    if not twilio_on:
        return app  # not configured: no Twilio routes (404), not open ones

    async def twilio_form(request: Request, what: str) -> MultiDict | Response:
        """A Twilio webhook's form, signature checked; or the error response to send."""
        body = await read_body(request, what)
        if isinstance(body, Response):
            return body
        try:
            form = MultiDict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200))
        except (UnicodeDecodeError, ValueError) as exc:
            log.warning("%s from %s: unreadable form: %s", what, peer_of(request), exc)
            return error_response(400, "body must be application/x-www-form-urlencoded")
        if token:
            url = public_url(settings.public_base_url, request.url.path, request.url.query)
            signature = request.headers.get(SIGNATURE_HEADER)
            settings_header = request.headers.get(SIGNATURE_SETTINGS_HEADER)
            if not validate_signature(token, url, form, signature, signature_settings=settings_header):
                log.warning(
                    "%s from %s rejected (403): %s X-Twilio-Signature for %s (CallSid %r)",
                    what,
                    peer_of(request),
                    "bad" if signature else "missing",
                    url,
                    form.get("CallSid"),
                )
                return error_response(403, "invalid Twilio signature")
        return form

    def stream_parameters(call_sid: str, from_number: str, to_number: str) -> dict[str, str]:
        parameters = {
            "call_sid": call_sid,
            "from": from_number,
            "to": to_number,
            "tenant": tenant_for(to_number),
        }
        if token and settings.verify_call_token:
            parameters["call_token"] = call_token(token, call_sid)
        return parameters

    @app.post(VOICE_PATH)
    async def voice(request: Request) -> Response:
        form = await twilio_form(request, "voice webhook")
        if isinstance(form, Response):
            return form
        call_sid = form.get("CallSid")
        if not call_sid:
            log.warning("voice webhook from %s: no CallSid", peer_of(request))
            return error_response(400, "CallSid is required")
        if (refused := gate.check("twilio", call_sid)) is not None:
            if refused == DRAINING:  # <Reject> would end the call: 503 lets a proxy try the next worker
                return draining_answer()
            return Response(BUSY_TWIML, media_type="application/xml")  # full: the caller hears busy
        from_number, to_number = form.get("From", ""), form.get("To", "")
        parameters = stream_parameters(call_sid, from_number, to_number)
        log.info(
            "call %s from %s to %s: connecting media stream", call_sid, mask_number(from_number), to_number
        )
        return Response(connect_stream_twiml(stream_url, parameters), media_type="application/xml")

    @app.post(WHISPER_PATH + "/{call_sid}")
    async def whisper(call_sid: str, request: Request) -> Response:
        """Twilio fetches this when the human answers: one sentence about the caller, then the bridge."""
        form = await twilio_form(request, "whisper webhook")
        if isinstance(form, Response):
            return form
        sentence = None
        if handoff is not None:
            try:
                sentence = await handoff.whisper_for(call_sid)
            except Exception:
                log.exception("call %s: whisper lookup failed", call_sid)
        sentence = sentence or "A caller is being transferred to you from the voice agent."
        return Response(whisper_twiml(sentence), media_type="application/xml")

    @app.post(DIAL_ACTION_PATH + "/{call_sid}")
    async def dial_action(call_sid: str, request: Request) -> Response:
        """The human leg of a transfer ended. Connected: done, hang up. Not: back to the agent."""
        form = await twilio_form(request, "dial action webhook")
        if isinstance(form, Response):
            return form
        result = dial_action_result(form)
        if handoff is not None:
            try:
                await handoff.on_dial_result(call_sid, result)
            except Exception:
                log.exception("call %s: dial result hook failed", call_sid)
        if result.connected:
            return Response(hangup_twiml(), media_type="application/xml")
        log.info(
            "call %s: the human leg ended %s; returning the caller to the agent", call_sid, result.dial_status
        )
        parameters = stream_parameters(call_sid, form.get("From", ""), form.get("To", ""))
        parameters["resume"] = "transfer_failed"
        return Response(return_to_agent_twiml(stream_url, parameters), media_type="application/xml")

    @app.websocket(STREAM_PATH)
    async def media_stream(websocket: WebSocket) -> None:
        peer = peer_of(websocket)
        if token:
            url = public_ws_url(settings.public_base_url, websocket.url.path, websocket.url.query)
            signature = websocket.headers.get(SIGNATURE_HEADER)
            if not validate_signature(token, url, None, signature):
                log.warning(
                    "media stream upgrade from %s rejected (403): %s X-Twilio-Signature for %s",
                    peer,
                    "bad" if signature else "missing",
                    url,
                )
                await websocket.close(code=1008)  # before accept: the handshake fails with HTTP 403
                return
        if await refuse_upgrade_if_draining(websocket, gate, "twilio"):
            return
        await websocket.accept()
        link = TwilioLink(
            websocket,
            TwilioStream(max_message_bytes=settings.max_message_bytes),
            default_tenant=settings.default_tenant,
        )
        try:
            async with asyncio.timeout(settings.start_timeout_s):
                start = await link.wait_start()
        except TimeoutError:
            log.warning(
                "media stream from %s: no start within %.1f s, closing (1008)", peer, settings.start_timeout_s
            )
            await link.close(1008)
            return
        except TwilioProtocolError as exc:
            log.warning(
                "media stream from %s: Twilio protocol error before start, closing (1008): %s", peer, exc
            )
            await link.close(1008)
            return
        except SocketClosed:
            log.info("media stream from %s closed before start", peer)
            return
        if token and settings.verify_call_token:
            if not check_call_token(token, start.call_sid, start.parameters.get("call_token")):
                log.warning(
                    "call %s: start without a valid call_token parameter, closing (1008)", start.call_sid
                )
                await link.close(1008)
                return
        if gate.enter("twilio", start.call_sid) is not None:
            await link.close(WS_TRY_AGAIN_LATER)
            return
        log.info("call %s: stream %s started (tenant %s)", start.call_sid, start.stream_sid, start.tenant)
        link.silence_timeout_s = settings.media_silence_timeout_s
        try:
            await on_call(link)
        except Exception:
            log.exception("call %s: on_call failed, closing the stream (1011)", start.call_sid)
            await link.close(1011)
        finally:
            gate.leave()
            await link.close(1000)  # no-op when already closed
            log.info("call %s: stream ended", start.call_sid)

    return app
