"""Loopback stand-ins of the Plivo and Telnyx call-control APIs (one FastAPI app serves both).

Plivo (``telephony/carrier_control.py`` ``PlivoCallControl``):

- ``POST /v1/Account/{auth_id}/Call/{call_uuid}/`` with ``legs``, ``aleg_url``, ``aleg_method``:
  HTTP basic auth must be the account's ``auth_id:auth_token`` and the path's ``auth_id`` the same
  (401 otherwise). 202 ``{"api_id", "message": "call transferred"}``. Then, like Plivo, it fetches
  ``aleg_url`` with the call's form (``CallUUID``, ``Event=Transfer`` ...) signed with
  ``X-Plivo-Signature-V3`` and keeps the XML it got (:attr:`CarrierRestEmulator.fetched`).
- ``DELETE`` of the same path: 204. A call told :meth:`gone` is 404 ``{"error": "call not found"}``.

Telnyx (``TelnyxCallControl``):

- ``POST /v2/calls/{call_control_id}/actions/transfer`` ``{"to", "from"?}`` and ``.../actions/hangup``:
  ``Authorization: Bearer <api key>`` (401 ``errors[].code 10009`` otherwise); ``to`` is required
  (422 code 10015); a gone call is 422 code 90018 "Call has already ended"; 200
  ``{"data": {"result": "ok"}}``.

Every request is recorded with the status it got (:attr:`requests`); :meth:`fail_next` makes the
next requests answer 500.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from voxroute.emulators.recent import Recent
from voxroute.emulators.twilio_rest import parse_basic_auth
from voxroute.telephony import plivo

log = logging.getLogger(__name__)

EMULATED_PLIVO_AUTH_ID = "MAEMULATEDPLIVO00000"
EMULATED_PLIVO_AUTH_TOKEN = "emulated-plivo-auth-token"
EMULATED_TELNYX_API_KEY = "KEYEMULATEDTELNYX"


def emulated_plivo_token() -> str:
    """The stand-in's auth token: ``$PLIVO_AUTH_TOKEN`` when set (the runtime checks webhook
    signatures with it, and Plivo signs with the account's auth token), else a fixed one."""
    return os.environ.get("PLIVO_AUTH_TOKEN") or EMULATED_PLIVO_AUTH_TOKEN


@dataclass
class CarrierRequest:
    carrier: str  # "plivo" | "telnyx"
    method: str
    path: str
    call_id: str
    action: str  # "transfer" | "hangup"
    body: dict[str, Any]
    status: int
    at: float = field(default_factory=time.monotonic)


@dataclass
class FetchedXml:
    """What Plivo fetched from an ``aleg_url`` after a transfer."""

    call_uuid: str
    url: str
    status: int
    xml: str


class CarrierRestEmulator:
    def __init__(
        self,
        plivo_auth_id: str = EMULATED_PLIVO_AUTH_ID,
        plivo_auth_token: str = EMULATED_PLIVO_AUTH_TOKEN,
        telnyx_api_key: str = EMULATED_TELNYX_API_KEY,
    ) -> None:
        self.plivo_auth_id = plivo_auth_id
        self.plivo_auth_token = plivo_auth_token
        self.telnyx_api_key = telnyx_api_key
        self.requests: list[CarrierRequest] = Recent()
        self.fetched: list[FetchedXml] = Recent()
        self._gone: set[str] = set()
        self._fail: list[int] = []
        self._fetches: set[asyncio.Task] = set()
        # Where the runtime really listens, when its public base URL is not reachable from here
        # (a replay): the fetch goes there, signed for the public URL as Plivo would sign it.
        self.local_base: str | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------------ test controls

    def gone(self, call_id: str) -> None:
        self._gone.add(call_id)

    def fail_next(self, count: int, status: int = 500) -> None:
        self._fail.extend([status] * count)

    def for_call(self, call_id: str) -> list[CarrierRequest]:
        return [r for r in self.requests if r.call_id == call_id]

    async def settle(self) -> None:
        """Wait for the ``aleg_url`` fetches in flight."""
        if self._fetches:
            await asyncio.gather(*self._fetches, return_exceptions=True)

    # ------------------------------------------------------------------ app

    def _record(self, carrier: str, request: Request, call_id: str, action: str, body: dict, status: int):
        self.requests.append(
            CarrierRequest(carrier, request.method, request.url.path, call_id, action, body, status)
        )

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="carrier call-control stand-in", docs_url=None, redoc_url=None, openapi_url=None)

        @app.api_route("/v1/Account/{auth_id}/Call/{call_uuid}/", methods=["POST", "DELETE"])
        async def plivo_call(request: Request, auth_id: str, call_uuid: str) -> Response:
            action = "transfer" if request.method == "POST" else "hangup"
            body: dict[str, Any] = {}
            raw = await request.body()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_unreadable": raw[:200].decode("utf-8", "replace")}

            def answer(status: int, content: dict | None = None) -> Response:
                self._record("plivo", request, call_uuid, action, body, status)
                if content is None:
                    return Response(status_code=status)
                return JSONResponse({"api_id": str(uuid.uuid4()), **content}, status_code=status)

            auth = parse_basic_auth(request.headers.get("authorization"))
            if (
                auth is None
                or auth_id != self.plivo_auth_id
                or auth[0] != self.plivo_auth_id
                or not secrets.compare_digest(auth[1], self.plivo_auth_token)
            ):
                return answer(401, {"error": "authentication failed"})
            if self._fail:
                return answer(self._fail.pop(0), {"error": "internal server error"})
            if call_uuid in self._gone:
                return answer(404, {"error": "call not found"})
            if action == "hangup":
                self._gone.add(call_uuid)
                return answer(204)
            legs = body.get("legs", "aleg")
            url = body.get("aleg_url")
            if legs != "aleg" or not isinstance(url, str) or not url.startswith(("http://", "https://")):
                return answer(400, {"error": "legs=aleg needs an http(s) aleg_url"})
            if body.get("aleg_method", "POST") not in ("GET", "POST"):
                return answer(400, {"error": "aleg_method must be GET or POST"})
            task = asyncio.create_task(self._fetch_aleg(call_uuid, url))
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)
            return answer(202, {"message": "call transferred"})

        @app.post("/v2/calls/{call_control_id}/actions/{action}")
        async def telnyx_action(request: Request, call_control_id: str, action: str) -> Response:
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                body = {}

            def error(status: int, code: str, title: str) -> Response:
                self._record("telnyx", request, call_control_id, action, body, status)
                return JSONResponse({"errors": [{"code": code, "title": title}]}, status_code=status)

            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given.encode(), self.telnyx_api_key.encode()):
                return error(401, "10009", "Authentication failed")
            if self._fail:
                return error(self._fail.pop(0), "10007", "Unexpected error")
            if action not in ("transfer", "hangup"):
                return error(404, "10005", "Resource not found")
            if call_control_id in self._gone:
                return error(422, "90018", "Call has already ended")
            if action == "transfer" and not isinstance(body.get("to"), str):
                return error(422, "10015", "The 'to' parameter is required")
            self._gone.add(call_control_id)  # the call leaves our control either way
            self._record("telnyx", request, call_control_id, action, body, 200)
            return JSONResponse({"data": {"result": "ok"}})

        return app

    async def _fetch_aleg(self, call_uuid: str, url: str) -> None:
        """Plivo asks the transfer URL what to do with the caller, signed like every Plivo webhook."""
        form = {
            "CallUUID": call_uuid,
            "Direction": "inbound",
            "Event": "Transfer",
            "CallStatus": "in-progress",
            "From": "919800000000",
            "To": "918000000000",
        }
        nonce = base64.b64encode(secrets.token_bytes(12)).decode()
        headers = {
            plivo.NONCE_HEADER: nonce,
            plivo.SIGNATURE_HEADER: plivo.signature_v3(self.plivo_auth_token, url, nonce, form),
        }
        target = url
        if self.local_base:
            parts = urlsplit(url)
            target = self.local_base.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                r = await http.post(target, data=form, headers=headers)
            self.fetched.append(FetchedXml(call_uuid, url, r.status_code, r.text))
        except httpx.HTTPError as exc:
            log.warning("plivo stand-in: fetching %s failed: %s", url, exc)
            self.fetched.append(FetchedXml(call_uuid, url, 0, f"{type(exc).__name__}: {exc}"))
