"""Loopback stand-in of the Twilio REST API: the Calls resource that call control updates.

``POST /2010-04-01/Accounts/{AC}/Calls/{CA}.json`` takes the form fields Twilio's call update takes
(``Status``, ``Twiml``, ``Url``, ``Method``, ...; docs/reference/telephony.md §1.6) and answers with
Twilio's call resource JSON; ``GET`` of the same path fetches it. Like Twilio:

- HTTP basic auth must be the account SID and its auth token, and the SID in the path must be that
  account: otherwise 401 ``{"code": 20003, "message": "Authenticate", ...}`` with ``WWW-Authenticate``.
- A call the stand-in was told is gone (:meth:`TwilioRestEmulator.gone`) is 404 code 20404.
- Updating a call that already ended (``Status=completed`` earlier) with ``Twiml``/``Url`` is 400 code
  21220 (call not in progress); completing it again is a harmless 200.
- ``Twiml`` must parse as XML with a ``<Response>`` root (400 code 12100 otherwise), ``Twiml`` and
  ``Url`` are mutually exclusive, ``Status`` is ``completed`` or ``canceled``, ``Method`` GET or POST
  (400 code 20001 otherwise: the stand-in's choice of code for a bad parameter).

Any call SID not told otherwise is an in-progress inbound call (the stand-in does not see the calls
the fake carrier dials). Every request is recorded (:attr:`TwilioRestEmulator.requests`, also
``GET /_emulator/requests``), including rejected ones, with the status it got.

Faults for tests: :meth:`fail_next` (the next N requests get 500 code 20500), :meth:`hang_next` (the
next N requests answer only after ``seconds``, or when the client goes away).

Control endpoints: ``GET /_emulator/requests``, ``DELETE /_emulator/requests``,
``POST /_emulator/gone/{CA}``, ``POST /_emulator/fail`` ``{"count": N, "status": 500}``.

Run standalone: ``python -m voxroute.emulators.twilio_rest --port 8130 --account-sid AC... --auth-token ...``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hmac
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from voxroute.emulators.recent import Recent

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
CALL_PATH = "/" + API_VERSION + "/Accounts/{account_sid}/Calls/{call_sid}.json"
MAX_BODY_BYTES = 64 * 1024
UPDATE_FIELDS = frozenset(
    {
        "Url",
        "Method",
        "Status",
        "FallbackUrl",
        "FallbackMethod",
        "StatusCallback",
        "StatusCallbackMethod",
        "Twiml",
        "TimeLimit",
    }
)


@dataclass
class RecordedRequest:
    """One request as the stand-in saw it."""

    method: str
    path: str
    account_sid: str
    call_sid: str
    form: dict[str, str]
    auth_user: str | None  # the basic-auth user name, None without (valid) basic auth
    status: int  # the HTTP status the stand-in answered
    at: float  # time.monotonic()

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "path": self.path,
            "account_sid": self.account_sid,
            "call_sid": self.call_sid,
            "form": dict(self.form),
            "auth_user": self.auth_user,
            "status": self.status,
            "at": self.at,
        }


@dataclass
class _Call:
    sid: str
    status: str = "in-progress"
    created: str = field(default_factory=lambda: email.utils.formatdate(usegmt=True))
    updated: str = field(default_factory=lambda: email.utils.formatdate(usegmt=True))


def twilio_error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Twilio's (legacy) REST error body, which the SDK turns into ``TwilioRestException``."""
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status_code=status,
        headers=headers,
    )


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """``Authorization: Basic base64(user:password)`` -> (user, password), None if absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def check_update_form(form: dict[str, str]) -> tuple[int, str] | None:
    """Validate a call update form like Twilio: None if fine, else (code, message) for a 400."""
    unknown = sorted(set(form) - UPDATE_FIELDS)
    if unknown:
        return 20001, f"Unknown parameter(s): {', '.join(unknown)}"
    if "Twiml" in form and "Url" in form:
        return 20001, "Twiml and Url are mutually exclusive"
    status = form.get("Status")
    if status is not None and status not in ("completed", "canceled"):
        return 20001, f"Status must be completed or canceled, got {status!r}"
    for name in ("Method", "FallbackMethod", "StatusCallbackMethod"):
        if name in form and form[name].upper() not in ("GET", "POST"):
            return 20001, f"{name} must be GET or POST, got {form[name]!r}"
    for name in ("Url", "FallbackUrl", "StatusCallback"):
        if name in form and not form[name].startswith(("http://", "https://")):
            return 21205, f"{name} is not a valid URL: {form[name]!r}"
    if "Twiml" in form:
        try:
            root = ET.fromstring(form["Twiml"])
        except ET.ParseError as exc:
            return 12100, f"Document parse failure: {exc}"
        if root.tag != "Response":
            return 12100, f"Document parse failure: root element is <{root.tag}>, not <Response>"
    if not ({"Twiml", "Url", "Status"} & set(form)):
        return 20001, "one of Url, Twiml or Status is required"
    return None


class TwilioRestEmulator:
    """The stand-in's state and its FastAPI app (:attr:`app`)."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.requests: list[RecordedRequest] = Recent()
        self.calls: dict[str, _Call] = {}
        self._gone: set[str] = set()
        self._fail: list[int] = []  # statuses for the next requests, in order
        self._hang: list[float] = []  # delays for the next requests, in order
        self.app = self._build_app()

    # ------------------------------------------------------------------ test controls

    def gone(self, call_sid: str) -> None:
        """From now on the call does not exist: 404 code 20404."""
        self._gone.add(call_sid)

    def fail_next(self, count: int, status: int = 500) -> None:
        """The next ``count`` requests to the Calls resource get ``status`` (Twilio code 20500 for 500)."""
        self._fail.extend([status] * count)

    def hang_next(self, count: int, seconds: float) -> None:
        """The next ``count`` requests answer only after ``seconds`` (or never, if the client leaves)."""
        self._hang.extend([seconds] * count)

    def for_call(self, call_sid: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.call_sid == call_sid]

    def reset(self) -> None:
        self.requests.clear()
        self._fail.clear()
        self._hang.clear()

    # ------------------------------------------------------------------ resource

    def call_json(self, account_sid: str, call: _Call) -> dict:
        """Twilio's call resource shape (the fields the SDK's CallInstance reads)."""
        uri = CALL_PATH.format(account_sid=account_sid, call_sid=call.sid)
        return {
            "sid": call.sid,
            "account_sid": account_sid,
            "parent_call_sid": None,
            "date_created": call.created,
            "date_updated": call.updated,
            "to": "+15550002222",
            "to_formatted": "(555) 000-2222",
            "from": "+15550001111",
            "from_formatted": "(555) 000-1111",
            "phone_number_sid": None,
            "status": call.status,
            "start_time": call.created,
            "end_time": call.updated if call.status in ("completed", "canceled") else None,
            "duration": None,
            "price": None,
            "price_unit": "USD",
            "direction": "inbound",
            "answered_by": None,
            "api_version": API_VERSION,
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": uri,
            "subresource_uris": {
                "notifications": uri.replace(".json", "/Notifications.json"),
                "recordings": uri.replace(".json", "/Recordings.json"),
            },
        }

    async def _handle(self, request: Request, account_sid: str, call_sid: str) -> Response:
        form: dict[str, str] = {}
        bad_body: str | None = None
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                bad_body = f"request body over {MAX_BODY_BYTES} bytes"
            else:
                try:
                    form = dict(
                        parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
                    )
                except (UnicodeDecodeError, ValueError) as exc:
                    bad_body = f"body must be application/x-www-form-urlencoded: {exc}"
        auth = parse_basic_auth(request.headers.get("authorization"))
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            account_sid=account_sid,
            call_sid=call_sid,
            form=form,
            auth_user=auth[0] if auth else None,
            status=0,
            at=time.monotonic(),
        )
        self.requests.append(record)
        response = await self._respond(request, record, auth, bad_body)
        record.status = response.status_code
        return response

    async def _respond(
        self, request: Request, record: RecordedRequest, auth: tuple[str, str] | None, bad_body: str | None
    ) -> Response:
        if self._hang:
            await _wait_or_disconnect(request, self._hang.pop(0))
        if not self._authorized(auth, record.account_sid):
            log.warning(
                "twilio stand-in: 401 for %s %s (user %r)", record.method, record.path, record.auth_user
            )
            return twilio_error(401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        if self._fail:
            status = self._fail.pop(0)
            return twilio_error(status, 20500 if status == 500 else status, "Internal Server Error")
        if record.call_sid in self._gone:
            return twilio_error(404, 20404, f"The requested resource {record.path} was not found")
        if bad_body:
            log.warning("twilio stand-in: 400 for %s: %s", record.path, bad_body)
            return twilio_error(400, 20001, bad_body)
        call = self.calls.setdefault(record.call_sid, _Call(record.call_sid))
        if record.method == "POST":
            problem = check_update_form(record.form)
            if problem is not None:
                log.warning("twilio stand-in: 400 for %s: %s", record.path, problem[1])
                return twilio_error(400, *problem)
            ended = call.status in ("completed", "canceled")
            if ended and ("Twiml" in record.form or "Url" in record.form):
                return twilio_error(400, 21220, "Call is not in-progress. Cannot redirect.")
            if "Status" in record.form and not ended:
                call.status = "completed" if record.form["Status"] == "completed" else "canceled"
            call.updated = email.utils.formatdate(usegmt=True)
        return JSONResponse(self.call_json(record.account_sid, call))

    def _authorized(self, auth: tuple[str, str] | None, account_sid: str) -> bool:
        if auth is None:
            return False
        user, password = auth
        ok_user = hmac.compare_digest(user.encode(), self.account_sid.encode())
        ok_password = hmac.compare_digest(password.encode(), self.auth_token.encode())
        return ok_user and ok_password and account_sid == self.account_sid

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="Twilio REST stand-in", docs_url=None, redoc_url=None, openapi_url=None)
        app.state.emulator = self

        @app.api_route(CALL_PATH, methods=["GET", "POST"])
        async def call_resource(request: Request, account_sid: str, call_sid: str) -> Response:
            return await self._handle(request, account_sid, call_sid)

        @app.get("/_emulator/requests")
        async def list_requests() -> list[dict]:
            return [r.as_dict() for r in self.requests]

        @app.delete("/_emulator/requests")
        async def clear_requests() -> dict:
            self.requests.clear()
            return {"ok": True}

        @app.post("/_emulator/gone/{call_sid}")
        async def mark_gone(call_sid: str) -> dict:
            self.gone(call_sid)
            return {"ok": True}

        @app.post("/_emulator/fail")
        async def fail(request: Request) -> Response:
            try:
                spec = await request.json()
                count, status = int(spec.get("count", 1)), int(spec.get("status", 500))
            except (ValueError, TypeError, AttributeError) as exc:
                return JSONResponse({"detail": f'expected {{"count": N, "status": 500}}: {exc}'}, 400)
            if not (0 <= count <= 1000 and 400 <= status <= 599):
                return JSONResponse({"detail": "count 0..1000, status 400..599"}, 400)
            self.fail_next(count, status)
            return JSONResponse({"ok": True})

        return app


async def _wait_or_disconnect(request: Request, seconds: float) -> None:
    """Sleep ``seconds``, but stop early when the client hangs up (so the server can shut down fast)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def create_app(account_sid: str, auth_token: str) -> FastAPI:
    """The stand-in's app; its state is ``app.state.emulator`` (a :class:`TwilioRestEmulator`)."""
    return TwilioRestEmulator(account_sid, auth_token).app


def main() -> None:  # pragma: no cover - manual use
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description="Twilio REST API stand-in (Calls resource)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8130)
    parser.add_argument("--account-sid", default="AC" + "0" * 32)
    parser.add_argument("--auth-token", default="0" * 32)
    args = parser.parse_args()
    uvicorn.run(create_app(args.account_sid, args.auth_token), host=args.host, port=args.port)


if __name__ == "__main__":  # pragma: no cover
    main()
