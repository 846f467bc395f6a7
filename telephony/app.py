"""The carriers' edge as one FastAPI app: each enabled carrier's routes (``telephony/routes/``),
``GET /healthz`` (alive) and ``GET /readyz`` (taking calls: 503 while draining for shutdown or at
the call cap).

Fail closed: each enabled carrier needs its secret (Twilio's auth token here; the others' in
:class:`~telephony.carriers.CarrierSettings`), else building the app raises, unless
``allow_unsigned`` (``voxroute serve --dev`` and in-process test stacks say so explicitly). A
carrier that is not enabled has no routes (404). Every call takes a slot of one
:class:`~telephony.admission.CallGate`; over its cap the carrier gets its busy answer; while
draining for shutdown, a new call's set-up gets 503 and a stream upgrade is refused with 503, so a
proxy in front retries the next worker (Twilio, with none left: the number's Voice Fallback URL).
"""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from voxroute.telephony.admission import CallGate
from voxroute.telephony.carriers import CARRIERS, CarrierSettings, missing_secrets
from voxroute.telephony.routes import exotel, plivo, telnyx, twilio
from voxroute.telephony.routes.edge import Edge, OnCall, TenantLookup
from voxroute.telephony.twilio import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

STREAM_MESSAGE_BYTES = 256 * 1024  # the least the other carriers' streams take (Exotel: 100 kB of audio)


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


class HandoffHooks(twilio.TwilioHandoff, Protocol):
    """What the edge asks the core about a transfer in progress."""

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
    ``carriers``: the other carriers' secrets and choices (``None`` reads them from the
    environment). ``gate``: the process's call admission (shared with the SIP edge); None makes one
    of ``settings.max_concurrent_calls``. Raises ``ValueError`` naming every missing secret of an
    enabled carrier (fail closed)."""
    enabled = settings.carriers
    token = settings.twilio_auth_token
    if "twilio" in enabled and not token:
        if not settings.allow_unsigned:
            raise ValueError("Twilio is enabled but has no auth token: its webhooks could not be verified")
        log.warning("DEV: no Twilio auth token: webhook and media stream signatures are NOT checked")
    others = carriers or CarrierSettings.from_env()
    missing = missing_secrets(others, enabled)
    if missing and not settings.allow_unsigned:
        raise ValueError(f"enabled carriers lack their secrets: {', '.join(missing)}")
    for field in missing:
        log.warning("DEV: no %s: %s traffic is NOT checked", field, field.split("_")[0].capitalize())

    app = FastAPI(title="voxroute telephony", docs_url=None, redoc_url=None, openapi_url=None)
    gate = gate if gate is not None else CallGate(settings.max_concurrent_calls)
    app.state.telephony_settings = settings
    app.state.call_gate = gate
    edge = Edge(
        settings.public_base_url,
        on_call,
        gate,
        default_tenant=settings.default_tenant,
        tenant_lookup=tenant_for_number,
        start_timeout_s=settings.start_timeout_s,
        silence_timeout_s=settings.media_silence_timeout_s,
    )

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

    stream_bytes = max(settings.max_message_bytes, STREAM_MESSAGE_BYTES)
    if "exotel" in enabled:
        exotel.add_routes(app, edge, others, max_message_bytes=stream_bytes)
    if "plivo" in enabled:
        transfer_xml = handoff.plivo_transfer_xml if handoff is not None else None
        plivo.add_routes(app, edge, others, max_message_bytes=stream_bytes, transfer_xml=transfer_xml)
    if "telnyx" in enabled:
        telnyx.add_routes(app, edge, others, max_message_bytes=stream_bytes)
    if "twilio" in enabled:
        twilio.add_routes(
            app,
            edge,
            auth_token=token,
            verify_call_token=settings.verify_call_token,
            max_message_bytes=settings.max_message_bytes,
            handoff=handoff,
        )
    return app
