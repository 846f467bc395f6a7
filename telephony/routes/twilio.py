"""Twilio's routes: the voice webhook answers ``<Connect><Stream>`` with per-call ``<Parameter>``s,
the media stream runs the call; the whisper and dial-action webhooks serve a transfer's human leg.

Checks: ``X-Twilio-Signature`` on every webhook and on the stream's upgrade (over the public URL),
and a per-call HMAC ``<Parameter>`` (``call_token``) on the stream's ``start``. Without an auth
token (``allow_unsigned``, dev only) none of them runs.
"""

from __future__ import annotations

import logging
from typing import Protocol

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from starlette.datastructures import MultiDict

from voxroute.agent.calllog.redact import mask_number
from voxroute.agent.link import CallStart
from voxroute.telephony.call_control import (
    DialResult,
    dial_action_result,
    hangup_twiml,
    return_to_agent_twiml,
    whisper_twiml,
)
from voxroute.telephony.carriers import (
    TWILIO_DIAL_ACTION_PATH,
    TWILIO_STREAM_PATH,
    TWILIO_VOICE_PATH,
    TWILIO_WHISPER_PATH,
)
from voxroute.telephony.routes.edge import Edge, no_check, read_form
from voxroute.telephony.twilio import TwilioStream
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
from voxroute.telephony.wslink import peer_of

log = logging.getLogger(__name__)

BUSY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>'


class TwilioHandoff(Protocol):
    """What Twilio's routes ask the core about a transfer in progress."""

    async def whisper_for(self, call_sid: str) -> str | None: ...

    async def on_dial_result(self, call_sid: str, result: DialResult) -> None: ...


def add_routes(
    app: FastAPI,
    edge: Edge,
    *,
    auth_token: str | None,
    verify_call_token: bool = True,
    max_message_bytes: int,
    handoff: TwilioHandoff | None = None,
) -> None:
    """Mount Twilio's routes. ``auth_token`` None: no signature or call-token checks (dev only)."""
    stream_url = public_ws_url(edge.public_base_url, TWILIO_STREAM_PATH)
    with_call_token = bool(auth_token) and verify_call_token

    def signature_problem(request: Request, form: MultiDict) -> str | None:
        if not auth_token:
            return None
        url = public_url(edge.public_base_url, request.url.path, request.url.query)
        signature = request.headers.get(SIGNATURE_HEADER)
        settings_header = request.headers.get(SIGNATURE_SETTINGS_HEADER)
        if validate_signature(auth_token, url, form, signature, signature_settings=settings_header):
            return None
        return f"{'bad' if signature else 'missing'} X-Twilio-Signature for {url} (CallSid {form.get('CallSid')!r})"

    async def twilio_form(request: Request, what: str) -> MultiDict | Response:
        return await read_form(
            request, what, "Twilio", check_form=lambda form: signature_problem(request, form)
        )

    def stream_parameters(call_sid: str, from_number: str, to_number: str) -> dict[str, str]:
        parameters = {
            "call_sid": call_sid,
            "from": from_number,
            "to": to_number,
            "tenant": edge.tenant_for(to_number),
        }
        if auth_token and with_call_token:
            parameters["call_token"] = call_token(auth_token, call_sid)
        return parameters

    async def voice(request: Request) -> Response:
        form = await twilio_form(request, "voice webhook")
        if isinstance(form, Response):
            return form
        call_sid = edge.admit_call(
            request, "voice webhook", "twilio", form.get("CallSid"), "CallSid", BUSY_TWIML
        )
        if isinstance(call_sid, Response):
            return call_sid
        from_number, to_number = form.get("From", ""), form.get("To", "")
        parameters = stream_parameters(call_sid, from_number, to_number)
        log.info(
            "call %s from %s to %s: connecting media stream", call_sid, mask_number(from_number), to_number
        )
        return Response(connect_stream_twiml(stream_url, parameters), media_type="application/xml")

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

    def call_token_problem(start: CallStart) -> str | None:
        assert auth_token is not None
        if check_call_token(auth_token, start.call_sid, start.parameters.get("call_token")):
            return None
        return "start without a valid call_token parameter"

    async def media_stream(websocket: WebSocket) -> None:
        if auth_token:
            url = public_ws_url(edge.public_base_url, websocket.url.path, websocket.url.query)
            signature = websocket.headers.get(SIGNATURE_HEADER)
            if not validate_signature(auth_token, url, None, signature):
                log.warning(
                    "media stream upgrade from %s rejected (403): %s X-Twilio-Signature for %s",
                    peer_of(websocket),
                    "bad" if signature else "missing",
                    url,
                )
                await websocket.close(code=1008)  # before accept: the handshake fails with HTTP 403
                return
        codec = TwilioStream(max_message_bytes=max_message_bytes)
        await edge.run_stream(websocket, codec, call_token_problem if with_call_token else no_check)

    app.add_api_route(TWILIO_VOICE_PATH, voice, methods=["POST"])
    app.add_api_route(TWILIO_WHISPER_PATH + "/{call_sid}", whisper, methods=["POST"])
    app.add_api_route(TWILIO_DIAL_ACTION_PATH + "/{call_sid}", dial_action, methods=["POST"])
    app.add_api_websocket_route(TWILIO_STREAM_PATH, media_stream)
