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

Plivo and Telnyx are :class:`~voxroute.telephony.call_control.RestCallControl` as Twilio is: one
httpx client each, the one retry rule (``voxroute.agent.retry``). A call that already ended (404;
Telnyx 422 with code 90018) is not an error: the methods return ``False``. Anything else raises
:class:`~voxroute.telephony.call_control.CallControlError` (the session plays its apology and keeps
the caller). Every control here is a :class:`~voxroute.telephony.call_control.CallControl`, and
:class:`CarrierTransfers` over them the session's ``voxroute.agent.services.Transfers``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from xml.sax.saxutils import escape, quoteattr

import httpx

from voxroute.telephony.call_control import E164, CallControl, CallControlError, RestCallControl
from voxroute.telephony.carriers import PLIVO_TRANSFER_PATH
from voxroute.telephony.twiml import public_url

log = logging.getLogger(__name__)

PLIVO_API = "https://api.plivo.com"
TELNYX_API = "https://api.telnyx.com"
TELNYX_CALL_ENDED = 90018  # "Call has already ended"
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


class PlivoCallControl(RestCallControl):
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
        ok = False
        try:
            ok = await self._command(
                call_sid, "transfer", "POST", self._path(call_sid), (200, 201, 202), json=body
            )
        finally:
            if not ok:  # ended, refused or failed: Plivo will not fetch it
                self._pending.pop(call_sid, None)
        if ok:
            log.info("plivo call %s: transfer to %s accepted", call_sid, to)
        return ok

    async def hang_up(self, call_sid: str) -> bool:
        return await self._command(call_sid, "hang-up", "DELETE", self._path(call_sid), (200, 204))


class TelnyxCallControl(RestCallControl):
    """Telnyx Call Control's ``transfer`` and ``hangup`` commands on the stream's call_control_id."""

    carrier = "telnyx"

    def __init__(self, api_key: str, *, api_base_url: str = TELNYX_API, **kw: Any) -> None:
        super().__init__(api_base_url, headers={"Authorization": f"Bearer {api_key}"}, **kw)

    def _error_detail(self, r: httpx.Response) -> tuple[int | None, str]:
        """Telnyx's ``{"errors": [{"code": "90018", "title": "Call has already ended"}]}``."""
        try:
            error = r.json()["errors"][0]
            code = str(error.get("code", ""))
            return (int(code) if code.isdigit() else None), str(
                error.get("title") or error.get("detail") or ""
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None, r.text[:200]

    def _gone(self, r: httpx.Response) -> bool:
        return r.status_code == 404 or (
            r.status_code == 422 and self._error_detail(r)[0] == TELNYX_CALL_ENDED
        )

    async def _action(self, call_sid: str, action: str, body: dict[str, Any]) -> bool:
        path = f"/v2/calls/{call_sid}/actions/{action}"
        return await self._command(call_sid, action, "POST", path, (200,), json=body)

    async def transfer(self, call_sid: str, to: str, caller_id: str | None, say: str | None = None) -> bool:
        if not (E164.match(to) or SIP_USER.match(to)):
            raise ValueError(f"transfer target must be E.164 or sip:user@host, got {to!r}")
        body: dict[str, Any] = {"to": to}
        if caller_id:
            body["from"] = caller_id
        ok = await self._action(call_sid, "transfer", body)
        if ok:
            log.info("telnyx call %s: transfer to %s accepted", call_sid, to)
        return ok

    async def hang_up(self, call_sid: str) -> bool:
        return await self._action(call_sid, "hangup", {})


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
        self,
        controls: dict[str, CallControl],
        carrier_of: Callable[[str], str | None],
        default: str = "twilio",
    ) -> None:
        self.controls = controls
        self.carrier_of = carrier_of
        self.default = default

    def mount(self, carrier: str, control: CallControl) -> Callable[[], None]:
        """An edge that starts after the services (the SIP UA) adds the control of its own calls; the
        function returned takes it away again when the edge stops."""
        self.controls[carrier] = control
        return lambda: self.controls.pop(carrier, None) and None

    def can_transfer(self, call_sid: str) -> bool:
        return (self.carrier_of(call_sid) or self.default) in self.controls

    def control_for(self, call_sid: str) -> CallControl:
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
