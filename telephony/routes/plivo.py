"""Plivo's routes: the answer webhook returns ``<Stream bidirectional="true">`` XML, the media
stream runs the call, the stream-status callback is logged, and the transfer URL (the ``aleg_url``
of a transfer we asked for) hands out its ``<Speak>`` + ``<Dial>``.

Checks: ``X-Plivo-Signature-V3`` on every webhook, and a per-call HMAC in ``extraHeaders``
(``callToken``) on the stream's ``start``. Without an auth token (dev only) neither runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from starlette.datastructures import MultiDict

from voxroute.agent.calllog.redact import mask_number
from voxroute.agent.link import CallStart
from voxroute.telephony import plivo
from voxroute.telephony.carriers import (
    PLIVO_ANSWER_PATH,
    PLIVO_STATUS_PATH,
    PLIVO_STREAM_PATH,
    PLIVO_TRANSFER_PATH,
    CarrierSettings,
)
from voxroute.telephony.plivo import PlivoStream
from voxroute.telephony.routes.edge import Edge, error_response, read_form
from voxroute.telephony.twiml import call_token, check_call_token, public_url, public_ws_url
from voxroute.telephony.wslink import peer_of

log = logging.getLogger(__name__)

BUSY_XML = '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup reason="busy"/></Response>'

TransferXml = Callable[[str], Awaitable[str | None]]  # call_uuid -> the XML of its pending transfer


def _alnum(value: str) -> str:
    """Plivo's extraHeaders take alphanumeric values only: keep the digits of a phone number."""
    return "".join(c for c in value if c.isascii() and c.isalnum())


def add_routes(
    app: FastAPI,
    edge: Edge,
    settings: CarrierSettings,
    *,
    max_message_bytes: int,
    transfer_xml: TransferXml | None = None,
) -> None:
    """Mount Plivo's routes. ``transfer_xml(call_uuid)``: the XML for a transfer we asked Plivo for."""
    token = settings.plivo_auth_token

    def signature_problem(request: Request, form: MultiDict) -> str | None:
        if not token:
            return None
        url = public_url(edge.public_base_url, request.url.path, request.url.query)
        nonce, signature = (
            request.headers.get(plivo.NONCE_HEADER),
            request.headers.get(plivo.SIGNATURE_HEADER),
        )
        if plivo.validate_signature_v3(token, url, nonce, signature, form):
            return None
        return f"bad or missing {plivo.SIGNATURE_HEADER}"

    async def plivo_form(request: Request, what: str) -> MultiDict | Response:
        return await read_form(
            request, what, "Plivo", check_form=lambda form: signature_problem(request, form)
        )

    async def answer(request: Request) -> Response:
        form = await plivo_form(request, "Plivo answer webhook")
        if isinstance(form, Response):
            return form
        call_uuid = edge.admit_call(
            request, "Plivo answer webhook", "plivo", form.get("CallUUID"), "CallUUID", BUSY_XML
        )
        if isinstance(call_uuid, Response):
            return call_uuid
        from_number, to_number = form.get("From", ""), form.get("To", "")
        headers = {"from": _alnum(from_number), "to": _alnum(to_number)}
        tenant = edge.tenant_for(to_number) if to_number else None
        if tenant and _alnum(tenant) == tenant:
            headers["tenant"] = tenant
        if token:
            headers["callToken"] = call_token(token, call_uuid)
        xml = plivo.stream_xml(
            public_ws_url(edge.public_base_url, PLIVO_STREAM_PATH),
            content_type=settings.plivo_content_type,
            headers=headers,
            status_callback_url=public_url(edge.public_base_url, PLIVO_STATUS_PATH),
        )
        log.info(
            "Plivo call %s from %s to %s: connecting audio stream",
            call_uuid,
            mask_number(from_number),
            to_number,
        )
        return Response(xml, media_type="application/xml")

    async def status(request: Request) -> Response:
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

    def call_token_problem(start: CallStart) -> str | None:
        if token and not check_call_token(token, start.call_sid, start.parameters.get("callToken")):
            return "start without a valid callToken in extra_headers"
        return None

    async def stream(websocket: WebSocket) -> None:
        await edge.run_stream(websocket, PlivoStream(max_message_bytes=max_message_bytes), call_token_problem)

    async def transfer(request: Request, call_uuid: str) -> Response:
        """Plivo's fetch of the ``aleg_url`` of a transfer we asked for: ``<Speak>`` + ``<Dial>``."""
        form = await plivo_form(request, "Plivo transfer URL request")
        if isinstance(form, Response):
            return form
        xml = await transfer_xml(call_uuid) if transfer_xml is not None else None
        if xml is None:
            log.warning("Plivo transfer URL for call %s from %s: no transfer pending (404)", call_uuid,
                        peer_of(request))  # fmt: skip
            return error_response(404, "no transfer pending for this call")
        log.info("Plivo call %s: transfer XML handed out", call_uuid)
        return Response(xml, media_type="application/xml")

    app.add_api_route(PLIVO_ANSWER_PATH, answer, methods=["POST"])
    app.add_api_route(PLIVO_STATUS_PATH, status, methods=["POST"])
    app.add_api_websocket_route(PLIVO_STREAM_PATH, stream)
    app.add_api_route(PLIVO_TRANSFER_PATH + "/{call_uuid}", transfer, methods=["POST"])
