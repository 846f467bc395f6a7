"""Telnyx's routes: the TeXML webhook answers ``<Connect><Stream bidirectionalMode="rtp">``, the
media stream runs the call.

Checks: the Ed25519 signature of the webhook (over its raw body, before it is parsed), and a
per-call HMAC ``<Parameter>`` (``call_token``) on the stream's ``start``. Without the key and the
secret (dev only) neither runs.
"""

from __future__ import annotations

import base64
import logging

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response

from voxroute.agent.calllog.redact import mask_number
from voxroute.agent.link import CallStart
from voxroute.telephony import telnyx
from voxroute.telephony.carriers import TELNYX_STREAM_PATH, TELNYX_TEXML_PATH, CarrierSettings
from voxroute.telephony.routes.edge import Edge, read_form
from voxroute.telephony.telnyx import TelnyxStream
from voxroute.telephony.twiml import call_token, check_call_token, public_ws_url

log = logging.getLogger(__name__)

BUSY_TEXML = '<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>'


def public_key(settings: CarrierSettings) -> bytes | None:
    """The portal's base64 Ed25519 key as 32 bytes; ``ValueError`` when it is not one."""
    key = base64.b64decode(settings.telnyx_public_key) if settings.telnyx_public_key else None
    if key is not None and len(key) != 32:
        raise ValueError("telnyx_public_key must be a base64 Ed25519 public key (32 bytes)")
    return key


def add_routes(app: FastAPI, edge: Edge, settings: CarrierSettings, *, max_message_bytes: int) -> None:
    """Mount Telnyx's routes. Raises ``ValueError`` on a public key that is not one."""
    key = public_key(settings)
    secret = settings.telnyx_stream_secret

    def signature_problem(request: Request, body: bytes) -> str | None:
        if key is None:
            return None
        headers = request.headers
        return telnyx.verify_webhook(
            key, body, headers.get(telnyx.SIGNATURE_HEADER), headers.get(telnyx.TIMESTAMP_HEADER)
        )

    async def texml(request: Request) -> Response:
        what = "Telnyx TeXML webhook"
        form = await read_form(
            request, what, "Telnyx", check_body=lambda body: signature_problem(request, body)
        )
        if isinstance(form, Response):
            return form
        call_id = form.get("CallSid") or form.get("CallControlId")
        call_sid = edge.admit_call(request, what, "telnyx", call_id, "CallSid", BUSY_TEXML)
        if isinstance(call_sid, Response):
            return call_sid
        from_number, to_number = form.get("From", ""), form.get("To", "")
        params = {"from": from_number, "to": to_number}
        if to_number:
            params["tenant"] = edge.tenant_for(to_number)
        if secret:
            params["call_token"] = call_token(secret, call_sid)
        answer = telnyx.connect_stream_texml(
            public_ws_url(edge.public_base_url, TELNYX_STREAM_PATH),
            params,
            codec=settings.telnyx_codec,
            sample_rate=settings.telnyx_sample_rate,
        )
        log.info(
            "Telnyx call %s from %s to %s: connecting media stream",
            call_sid,
            mask_number(from_number),
            to_number,
        )
        return Response(answer, media_type="application/xml")

    def call_token_problem(start: CallStart) -> str | None:
        # The token is bound to the TeXML CallSid, which the stream reports as call_control_id.
        if secret and not check_call_token(secret, start.call_sid, start.parameters.get("call_token")):
            return "start without a valid call_token parameter"
        return None

    async def stream(websocket: WebSocket) -> None:
        await edge.run_stream(
            websocket, TelnyxStream(max_message_bytes=max_message_bytes), call_token_problem
        )

    app.add_api_route(TELNYX_TEXML_PATH, texml, methods=["POST"])
    app.add_api_websocket_route(TELNYX_STREAM_PATH, stream)
