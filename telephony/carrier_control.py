"""Transfers and hang-ups on Plivo, Telnyx and Exotel calls, and the dispatcher that picks the
carrier's own call control for each call.

- Plivo: the Call Transfer API, ``POST {api}/v1/Account/{auth_id}/Call/{call_uuid}/`` with
  ``legs=aleg``, ``aleg_url``, ``aleg_method`` (HTTP basic auth ``auth_id:auth_token``, answer 202).
  Plivo then fetches ``aleg_url`` (our ``/plivo/transfer/{call_uuid}``) for the XML it runs next:
  ``<Speak>`` + ``<Dial callerId><Number>`` (or ``<User>`` for a SIP address), built by
  :func:`transfer_xml`. Hang-up is ``DELETE`` of the same path (204).
- Telnyx: Call Control's ``POST {api}/v2/calls/{call_control_id}/actions/transfer`` with
  ``{"to", "from"}`` (Bearer API key, answer 200 ``{"data": {"result": "ok"}}``); hang-up is
  ``actions/hangup``.
- Exotel: the Voicebot applet has no transfer API. Closing the stream hands the call back to the
  flow, which goes on with its next applet: the business puts a Connect applet to its agents
  there. :class:`ExotelHandback` records that and lets the session close the stream.

The HTTP clients are httpx with per-attempt timeouts and retries with backoff on 5xx, 429, timeouts
and connection errors (never on other 4xx), like the Twilio client in ``call_control.py``. A call
that already ended (404; Telnyx 422 with code 90018) is not an error: the methods return ``False``.
Anything else raises :class:`~telephony.call_control.CallControlError` (the session plays its
apology and keeps the caller).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from xml.sax.saxutils import escape, quoteattr

import httpx

from voxroute.telephony.call_control import E164, CallControlError
from voxroute.telephony.carriers import PLIVO_TRANSFER_PATH
from voxroute.telephony.twiml import public_url

log = logging.getLogger(__name__)

PLIVO_API = "https://api.plivo.com"
TELNYX_API = "https://api.telnyx.com"
TELNYX_CALL_ENDED = "90018"  # "Call has already ended"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
SIP_USER = re.compile(r"^sips?:[^@\s]+@[^\s]+$")


def transfer_xml(to: str, caller_id: str | None = None, say: str | None = None, timeout_s: int = 30) -> str:
    """Plivo XML for the transferred leg: ``<Speak>`` (optional) then ``<Dial>`` to the human queue.

    ``to``: an E.164 number -> ``<Number>`` (digits only, Plivo's form), ``sip:user@host`` -> ``<User>``.
    Raises ``ValueError`` on anything else.
    """
    target = to.strip()
    if E164.match(target):
        noun = f"<Number>{escape(target.lstrip('+'))}</Number>"
    elif SIP_USER.match(target):
        noun = f"<User>{escape(target)}</User>"
    else:
        raise ValueError(f"transfer target must be E.164 (+countrycode...) or sip:user@host, got {to!r}")
    if caller_id is not None and not E164.match(caller_id):
        raise ValueError(f"callerId must be an E.164 number, got {caller_id!r}")
    attrs = f" timeout={quoteattr(str(timeout_s))}"
    if caller_id:
        attrs += f" callerId={quoteattr(caller_id.lstrip('+'))}"
    speak = f"<Speak>{escape(' '.join(say.split()))}</Speak>" if say and say.strip() else ""
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Response>{speak}<Dial{attrs}>{noun}</Dial></Response>'


@dataclass(frozen=True)
class PendingTransfer:
    to: str
    caller_id: str | None
    say: str | None


class SharedState(Protocol):
    """Where a pending transfer waits for Plivo's fetch, which any process may receive
    (agent/calllog/state.py's ``CallState``)."""

    async def put(self, call_sid: str, kind: str, value: dict[str, Any]) -> bool: ...

    async def take(self, call_sid: str, kind: str) -> dict[str, Any] | None: ...


class _RestControl:
    """Retries and the call-ended rule shared by the Plivo and Telnyx clients."""

    carrier = ""

    def __init__(
        self,
        api_base_url: str,
        *,
        auth: httpx.Auth | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 5.0,
        attempts: int = 3,
        backoff_s: float = 0.25,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=api_base_url.rstrip("/"), auth=auth, headers=headers, timeout=timeout_s
        )
        self.attempts = attempts
        self.backoff_s = backoff_s

    async def _request(self, call_sid: str, method: str, path: str, **kw: Any) -> httpx.Response:
        last: str = ""
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                r = await self.http.request(method, path, **kw)
            except httpx.TransportError as exc:  # timeouts and connection errors: retry
                last = f"{type(exc).__name__}: {exc}"
                continue
            if r.status_code not in RETRY_STATUSES:
                return r
            last = f"HTTP {r.status_code}"
        log.warning("%s call %s: %s %s failed after %d attempts: %s", self.carrier, call_sid, method, path,
                    self.attempts, last)  # fmt: skip
        raise CallControlError(f"{self.carrier} {method} {path}: {last}", call_sid=call_sid)

    def _fail(self, call_sid: str, what: str, r: httpx.Response) -> CallControlError:
        log.warning("%s call %s: %s refused: HTTP %d %s", self.carrier, call_sid, what, r.status_code,
                    r.text[:200])  # fmt: skip
        return CallControlError(
            f"{self.carrier} {what}: HTTP {r.status_code} {r.text[:200]}",
            call_sid=call_sid,
            status=r.status_code,
        )

    async def aclose(self) -> None:
        await self.http.aclose()


class PlivoCallControl(_RestControl):
    """Plivo's Call Transfer and hang-up; :meth:`pending` answers the ``aleg_url`` request."""

    carrier = "plivo"

    def __init__(
        self, auth_id: str, auth_token: str, public_base_url: str, *, api_base_url: str = PLIVO_API,
        dial_timeout_s: int = 30, **kw: Any,
    ) -> None:  # fmt: skip
        super().__init__(api_base_url, auth=httpx.BasicAuth(auth_id, auth_token), **kw)
        self.auth_id = auth_id
        self.public_base_url = public_base_url
        self.dial_timeout_s = dial_timeout_s
        self._pending: dict[str, PendingTransfer] = {}
        self.shared: SharedState | None = None  # several processes: the pending transfer there too

    def _path(self, call_uuid: str) -> str:
        return f"/v1/Account/{self.auth_id}/Call/{call_uuid}/"

    def pending(self, call_uuid: str) -> str | None:
        """The XML for a transfer we asked for (Plivo fetches it once), None if there is none."""
        p = self._pending.pop(call_uuid, None)
        if p is None:
            return None
        return transfer_xml(p.to, p.caller_id, p.say, self.dial_timeout_s)

    async def take_pending(self, call_uuid: str) -> str | None:
        """:meth:`pending`, or the transfer another process asked for (from the shared state)."""
        xml = self.pending(call_uuid)
        if self.shared is None:
            return xml
        stored = await self.shared.take(call_uuid, "plivo_transfer")  # handed out once, here or there
        if xml is None and stored is not None:
            xml = transfer_xml(stored["to"], stored.get("caller_id"), stored.get("say"), self.dial_timeout_s)
        return xml

    async def transfer(self, call_sid: str, to: str, caller_id: str | None, say: str | None = None) -> bool:
        transfer_xml(to, caller_id, say)  # a bad target fails here, before Plivo is asked
        self._pending[call_sid] = PendingTransfer(to, caller_id, say)
        if self.shared is not None:  # before Plivo is asked: its fetch may reach another process
            await self.shared.put(call_sid, "plivo_transfer", {"to": to, "caller_id": caller_id, "say": say})
        body = {
            "legs": "aleg",
            "aleg_url": public_url(self.public_base_url, f"{PLIVO_TRANSFER_PATH}/{call_sid}"),
            "aleg_method": "POST",
        }
        try:
            r = await self._request(call_sid, "POST", self._path(call_sid), json=body)
        except CallControlError:
            self._pending.pop(call_sid, None)
            raise
        if r.status_code == 404:
            self._pending.pop(call_sid, None)
            log.info("plivo call %s: already ended, no transfer", call_sid)
            return False
        if r.status_code not in (200, 201, 202):
            self._pending.pop(call_sid, None)
            raise self._fail(call_sid, "transfer", r)
        log.info("plivo call %s: transfer to %s accepted", call_sid, to)
        return True

    async def hang_up(self, call_sid: str) -> bool:
        r = await self._request(call_sid, "DELETE", self._path(call_sid))
        if r.status_code == 404:
            return False
        if r.status_code not in (200, 204):
            raise self._fail(call_sid, "hang-up", r)
        return True


class TelnyxCallControl(_RestControl):
    """Telnyx Call Control's ``transfer`` and ``hangup`` commands on the stream's call_control_id."""

    carrier = "telnyx"

    def __init__(self, api_key: str, *, api_base_url: str = TELNYX_API, **kw: Any) -> None:
        super().__init__(api_base_url, headers={"Authorization": f"Bearer {api_key}"}, **kw)

    async def _command(self, call_sid: str, action: str, body: dict[str, Any]) -> bool:
        r = await self._request(call_sid, "POST", f"/v2/calls/{call_sid}/actions/{action}", json=body)
        if r.status_code == 404 or (r.status_code == 422 and TELNYX_CALL_ENDED in r.text):
            log.info("telnyx call %s: already ended, no %s", call_sid, action)
            return False
        if r.status_code != 200:
            raise self._fail(call_sid, action, r)
        return True

    async def transfer(self, call_sid: str, to: str, caller_id: str | None, say: str | None = None) -> bool:
        if not (E164.match(to) or SIP_USER.match(to)):
            raise ValueError(f"transfer target must be E.164 or sip:user@host, got {to!r}")
        body: dict[str, Any] = {"to": to}
        if caller_id:
            body["from"] = caller_id
        ok = await self._command(call_sid, "transfer", body)
        if ok:
            log.info("telnyx call %s: transfer to %s accepted", call_sid, to)
        return ok

    async def hang_up(self, call_sid: str) -> bool:
        return await self._command(call_sid, "hangup", {})


class ExotelHandback:
    """Exotel's Voicebot applet: the flow's next applet (a Connect to the agents) takes the call once
    the stream closes, which the session does after a successful transfer."""

    carrier = "exotel"

    async def transfer(self, call_sid: str, to: str, caller_id: str | None, say: str | None = None) -> bool:
        log.info("exotel call %s: closing the stream; the flow's next applet connects %s", call_sid, to)
        return True

    async def hang_up(self, call_sid: str) -> bool:
        return True  # closing the stream ends the applet; the flow decides the rest

    async def aclose(self) -> None:
        return None


class CarrierTransfers:
    """``voxroute.agent.services.Transfers`` over several carriers: each call goes to its own carrier's control.

    ``carrier_of(call_sid)`` names the carrier of a live call (None if unknown: ``default`` is used).
    A carrier without a control raises ``CallControlError`` (the session apologises, keeps the caller).
    """

    def __init__(
        self, controls: dict[str, Any], carrier_of: Callable[[str], str | None], default: str = "twilio"
    ) -> None:
        self.controls = controls
        self.carrier_of = carrier_of
        self.default = default

    def mount(self, carrier: str, control: Any) -> Callable[[], None]:
        """An edge that starts after the services (the SIP UA) adds the control of its own calls; the
        function returned takes it away again when the edge stops."""
        self.controls[carrier] = control
        return lambda: self.controls.pop(carrier, None) and None

    def can_transfer(self, call_sid: str) -> bool:
        return (self.carrier_of(call_sid) or self.default) in self.controls

    def control_for(self, call_sid: str) -> Any:
        carrier = self.carrier_of(call_sid) or self.default
        control = self.controls.get(carrier)
        if control is None:
            raise CallControlError(f"no call control configured for {carrier} calls", call_sid=call_sid)
        return control

    async def transfer(self, call_sid: str, to: str, caller_id: str | None, say: str | None = None) -> bool:
        return await self.control_for(call_sid).transfer(call_sid, to, caller_id, say)

    async def hang_up(self, call_sid: str) -> bool:
        return await self.control_for(call_sid).hang_up(call_sid)

    async def aclose(self) -> None:
        for control in self.controls.values():
            await control.aclose()
