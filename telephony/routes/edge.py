"""What every carrier's routes share: the :class:`Edge` they are mounted with, the one stream
handler (:meth:`Edge.run_stream`), and the webhook helpers (:func:`read_form`, the draining and
error answers).

Each websocket handler owns its call and starts no tasks: ``on_call`` runs inside it, and the link
reads the socket only when ``on_call`` iterates ``link.events()``. A protocol error ends that call
only (close 1008, ``CallEnded("error")``). Over the call cap a stream closes 1013; while the
process drains for shutdown, set-ups get HTTP 503 and stream upgrades are refused with 503 before
they are accepted (:func:`draining_answer`), so a proxy in front retries the next worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import MultiDict

from voxroute.agent.link import CallStart, CarrierLink
from voxroute.telephony.admission import DRAINING, WS_TRY_AGAIN_LATER, CallGate
from voxroute.telephony.mediastream import CarrierProtocolError, MediaStreamCodec
from voxroute.telephony.wslink import MediaStreamLink, SocketClosed, peer_of

log = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 64 * 1024

OnCall = Callable[[CarrierLink], Awaitable[None]]
TenantLookup = Callable[[str], str | None]
StartCheck = Callable[[CallStart], str | None]  # why a started stream is refused, or None


def no_check(start: CallStart) -> str | None:
    return None


@dataclass(frozen=True)
class Edge:
    """What the carriers' routes are mounted with: who runs a call, admission, the public base URL
    (signatures are over it), tenants, limits."""

    public_base_url: str
    on_call: OnCall
    gate: CallGate
    default_tenant: str = "default"
    tenant_lookup: TenantLookup | None = None  # the number called -> its tenant
    start_timeout_s: float = 10.0  # the carrier's start must arrive within this
    silence_timeout_s: float | None = None  # no media this long ends a call

    def tenant_for(self, to: str) -> str:
        """The tenant of the number called; the default when there is none, or the lookup fails."""
        if self.tenant_lookup is not None and to:
            try:
                tenant = self.tenant_lookup(to)
            except Exception:
                log.exception("tenant lookup for %s failed; using %s", to, self.default_tenant)
                tenant = None
            if tenant:
                return tenant
        return self.default_tenant

    def admit_call(
        self,
        request: Request,
        what: str,
        carrier: str,
        call_id: str | None,
        call_id_field: str,
        busy_markup: str,
    ) -> str | Response:
        """A new call's set-up webhook, its form read: the call id when the call may start, else the
        answer to send: 400 without a call id; while draining 503, as the carrier's busy markup
        would end the call where a proxy can try the next worker; over the call cap the carrier's
        ``busy_markup``, so the caller hears busy."""
        if not call_id:
            log.warning("%s from %s: no %s", what, peer_of(request), call_id_field)
            return error_response(400, f"{call_id_field} is required")
        if (refused := self.gate.check(carrier, call_id)) is not None:
            if refused == DRAINING:
                return draining_answer()
            return Response(busy_markup, media_type="application/xml")
        return call_id

    async def run_stream(
        self, websocket: WebSocket, codec: MediaStreamCodec, check: StartCheck = no_check
    ) -> None:
        """One carrier media stream from the upgrade (already checked by the carrier's route) to
        the call's end: refused while draining, the start within ``start_timeout_s``, ``check``
        (a per-call token), a call slot, then ``on_call`` until the call ends."""
        peer, carrier = peer_of(websocket), codec.carrier
        if await refuse_upgrade_if_draining(websocket, self.gate, carrier):
            return
        await websocket.accept()
        link = MediaStreamLink(websocket, codec, default_tenant=self.default_tenant)
        stream = f"{codec.stream_label} from {peer}"
        try:
            async with asyncio.timeout(self.start_timeout_s):
                start = await link.wait_start(self.tenant_for)
        except TimeoutError:
            log.warning("%s: no start within %.1f s, closing (1008)", stream, self.start_timeout_s)
            await link.close(1008)
            return
        except CarrierProtocolError as exc:
            log.warning("%s: protocol error before start, closing (1008): %s", stream, exc)
            await link.close(1008)
            return
        except SocketClosed:
            log.info("%s closed before start", stream)
            return
        call = f"{codec.call_label} {start.call_sid}"
        if problem := check(start):
            log.warning("%s from %s: %s, closing (1008)", call, peer, problem)
            await link.close(1008)
            return
        if self.gate.enter(carrier, start.call_sid) is not None:
            await link.close(WS_TRY_AGAIN_LATER)
            return
        log.info("%s: stream %s started (tenant %s)", call, start.stream_sid, start.tenant)
        link.silence_timeout_s = self.silence_timeout_s
        try:
            await self.on_call(link)
        except Exception:
            log.exception("%s: on_call failed, closing the stream (1011)", call)
            await link.close(1011)
        finally:
            self.gate.leave()
            await link.close(1000)  # no-op when already closed
            log.info("%s: stream ended", call)


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


def parse_form(body: bytes) -> MultiDict:
    """An ``application/x-www-form-urlencoded`` body (repeated keys kept: Twilio signs them all);
    ``ValueError`` when it is not one (not UTF-8, over 200 fields)."""
    return MultiDict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200))


async def read_form(
    request: Request,
    what: str,
    carrier: str,
    *,
    check_body: Callable[[bytes], str | None] | None = None,
    check_form: Callable[[MultiDict], str | None] | None = None,
) -> MultiDict | Response:
    """A carrier webhook's form with its signature checked, or the error response to send (413 too
    large, 400 unreadable, 403 refused; each logged). ``check_body`` (a signature over the raw body)
    runs before the form is parsed, ``check_form`` (one over the URL and fields) after; each says
    why it refuses, or None."""
    body = await read_body(request, what)
    if isinstance(body, Response):
        return body
    if check_body is not None and (problem := check_body(body)):
        return _refused(request, what, carrier, problem)
    try:
        form = parse_form(body)
    except (UnicodeDecodeError, ValueError) as exc:
        log.warning("%s from %s: unreadable form: %s", what, peer_of(request), exc)
        return error_response(400, "body must be application/x-www-form-urlencoded")
    if check_form is not None and (problem := check_form(form)):
        return _refused(request, what, carrier, problem)
    return form


def _refused(request: Request, what: str, carrier: str, problem: str) -> Response:
    log.warning("%s from %s rejected (403): %s", what, peer_of(request), problem)
    return error_response(403, f"invalid {carrier} signature")
