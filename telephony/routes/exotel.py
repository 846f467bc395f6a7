"""Exotel's routes: the Voicebot applet's dynamic URL hands out the stream's ``wss://`` URL, the
media stream runs the call.

Checks: Basic auth (``wss://KEY:TOKEN@host/...``) on the URL request and the upgrade, and an
optional IP allow-list. At the call cap or while draining, the URL request gets 503: a proxy in
front retries the next worker; with none left, the flow goes on to the applet's failure branch.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
from urllib.parse import urlencode, urlsplit, urlunsplit

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from voxroute.telephony.carriers import EXOTEL_STREAM_PATH, EXOTEL_VOICEBOT_PATH, CarrierSettings
from voxroute.telephony.exotel import ExotelStream
from voxroute.telephony.routes.edge import Edge, error_response
from voxroute.telephony.twiml import public_ws_url
from voxroute.telephony.wslink import peer_of

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def _address_allowed(host: str | None, networks: list[Network]) -> bool:
    if not networks:
        return True
    try:
        addr = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return any(addr in net for net in networks)


def add_routes(app: FastAPI, edge: Edge, settings: CarrierSettings, *, max_message_bytes: int) -> None:
    """Mount Exotel's routes. No ``exotel_credentials``: no Basic auth (dev only)."""
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.exotel_allowed_networks]
    credentials = settings.exotel_credentials

    def allowed(conn: Request | WebSocket, what: str) -> bool:
        host = conn.client.host if conn.client else None
        if not _address_allowed(host, networks):
            log.warning(
                "%s from %s rejected (403): address not in the Exotel allow-list", what, peer_of(conn)
            )
            return False
        if credentials and not basic_auth_ok(conn.headers.get("authorization"), credentials):
            log.warning("%s from %s rejected (403): missing or wrong Basic auth", what, peer_of(conn))
            return False
        return True

    async def voicebot(request: Request) -> Response:
        """The Voicebot applet's dynamic URL: Exotel GETs it with the call's details."""
        if not allowed(request, "Exotel voicebot URL request"):
            return error_response(403, "forbidden")
        q = request.query_params
        if edge.gate.check("exotel", q.get("CallSid")) is not None:
            return error_response(503, "busy")  # at the cap and while draining: see the module's doc
        to_number = q.get("CallTo") or q.get("To") or ""
        params = {"sample-rate": str(settings.exotel_sample_rate)}
        if to_number:
            params["tenant"] = edge.tenant_for(to_number)
        url = public_ws_url(edge.public_base_url, EXOTEL_STREAM_PATH, urlencode(params))
        log.info("Exotel call %s to %s: stream URL handed out", q.get("CallSid"), to_number)
        return JSONResponse({"url": _with_credentials(url, credentials)})

    async def stream(websocket: WebSocket) -> None:
        if not allowed(websocket, "Exotel stream upgrade"):
            await websocket.close(code=1008)  # before accept: the handshake fails with HTTP 403
            return
        await edge.run_stream(websocket, ExotelStream(max_message_bytes=max_message_bytes))

    app.add_api_route(EXOTEL_VOICEBOT_PATH, voicebot, methods=["GET"])
    app.add_api_websocket_route(EXOTEL_STREAM_PATH, stream)
