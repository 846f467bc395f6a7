"""Call control behind one interface: transfer to a human, hang-up, redirect; and Twilio's TwiML.

Three parts:

- Pure builders and parsers (no I/O): :func:`transfer_twiml` (``<Say>`` + ``<Dial>`` to the human queue
  number or SIP address, with the whisper URL on the ``<Number>``/``<Sip>``), :func:`whisper_twiml`
  (the one sentence the human hears before the caller is connected), :func:`dial_action_result`
  (Twilio's ``<Dial action>`` callback form -> connected / failed) and :func:`return_to_agent_twiml`
  (a failed human leg: ``<Connect><Stream>`` back to the agent, built by ``voxroute.telephony.twiml``).
- :class:`RestCallControl`: what every carrier's REST call control shares (Twilio here, Plivo and
  Telnyx in ``carrier_control.py``): one httpx client, the one retry rule of
  :mod:`voxroute.agent.retry` (5xx, 429 after its ``Retry-After``, timeouts and connection errors;
  never other 4xx), the call-ended rule and :class:`CallControlError`. Each is a
  :class:`CallControl`: ``transfer(call_sid, to, caller_id, say)``, ``hang_up`` and ``aclose``.
- :class:`TwilioCallControl`: Twilio's call update, ``POST {api}/2010-04-01/Accounts/{AC}/Calls/{CA}.json``
  form-encoded (``Twiml=``, ``Status=completed``, ``Url=&Method=``) with HTTP basic auth
  ``account_sid:auth_token`` (docs/reference/telephony.md section 1.6), as the ``twilio`` SDK sends it.
  ``api_base_url`` points it at a stand-in (``emulators/twilio_rest.py``).

A call that already ended (Twilio: 404 code 20404, or 400 code 21220 "call is not in-progress") is
not an error: the methods return ``False`` and log one line. Anything else that fails logs one line
and raises :class:`CallControlError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self
from urllib.parse import urlsplit

import httpx
from twilio.twiml.voice_response import Dial, VoiceResponse

from voxroute.agent.retry import RetryPolicy, Sent, send_with_retries
from voxroute.telephony.twiml import connect_stream_twiml, public_url

log = logging.getLogger(__name__)

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
# Any carrier's call id goes into a URL path: letters, digits and : _ - only (Plivo's UUIDs, Telnyx's
# v3:... call_control_ids), never / . % ? or #.
CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_-]{0,199}$")
TWILIO_API = "https://api.twilio.com"
TWILIO_API_VERSION = "2010-04-01"
CALL_GONE_CODES = frozenset({20404, 21220})  # not found / not in progress: the call already ended
DIAL_CONNECTED = frozenset({"completed", "answered"})
DIAL_FAILED = frozenset({"busy", "no-answer", "failed", "canceled"})
MAX_WHISPER_CHARS = 400  # a whisper is one sentence; the human is waiting to talk to the caller
RETURN_PARAMETER = "resume"  # <Parameter name="resume" value="transfer_failed"> on the way back


# ---------------------------------------------------------------------------------------------- TwiML


def transfer_twiml(
    number_or_sip: str,
    caller_id: str | None = None,
    timeout_s: int = 30,
    whisper_url: str | None = None,
    action_url: str | None = None,
    say: str | None = None,
    *,
    language: str | None = None,
) -> str:
    """``<Response>[<Say>say</Say>]<Dial callerId timeout action method="POST"><Number url=whisper>``.

    ``number_or_sip``: an E.164 number (``+91...``) -> ``<Number>``; ``sip:...`` -> ``<Sip>``. The whisper
    URL is requested by Twilio when the human answers and its TwiML is played to the human only.
    ``action_url`` gets the ``<Dial>`` outcome (see :func:`dial_action_result`); without it, a failed
    human leg ends the call, so set it. Raises ``ValueError`` on a bad number, caller ID or timeout.
    """
    target = number_or_sip.strip()
    is_sip = target.lower().startswith(("sip:", "sips:"))
    if not is_sip and not E164.match(target):
        raise ValueError(f"transfer target must be E.164 (+countrycode...) or sip:..., got {number_or_sip!r}")
    if caller_id is not None and not E164.match(caller_id) and not caller_id.startswith("client:"):
        raise ValueError(f"callerId must be an E.164 number, got {caller_id!r}")
    if not 5 <= timeout_s <= 600:  # Twilio's range for <Dial timeout>
        raise ValueError(f"Dial timeout must be 5..600 s, got {timeout_s}")
    for name, url in (("whisper_url", whisper_url), ("action_url", action_url)):
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"{name} must be an http(s) URL, got {url!r}")
    response = VoiceResponse()
    if say:
        response.say(say, **({"language": language} if language else {}))
    dial_attrs: dict[str, object] = {"timeout": timeout_s}
    if caller_id:
        dial_attrs["caller_id"] = caller_id
    if action_url:
        dial_attrs["action"] = action_url
        dial_attrs["method"] = "POST"
    dial = Dial(**dial_attrs)
    noun_attrs = {"url": whisper_url, "method": "POST"} if whisper_url else {}
    if is_sip:
        dial.sip(target, **noun_attrs)
    else:
        dial.number(target, **noun_attrs)
    response.append(dial)
    return str(response)


def whisper_twiml(sentence: str, language: str | None = None, voice: str | None = None) -> str:
    """``<Response><Say language=...>sentence</Say></Response>``: played to the human before bridging.

    The sentence is collapsed to one line and cut at :data:`MAX_WHISPER_CHARS`.
    """
    text = " ".join(sentence.split())
    if not text:
        raise ValueError("whisper sentence is empty")
    if len(text) > MAX_WHISPER_CHARS:
        text = text[: MAX_WHISPER_CHARS - 1].rstrip() + "…"
    attrs = {}
    if language:
        attrs["language"] = language
    if voice:
        attrs["voice"] = voice
    response = VoiceResponse()
    response.say(text, **attrs)
    return str(response)


def hangup_twiml() -> str:
    """``<Response><Hangup/></Response>``: the answer to ``<Connect action>`` or ``<Dial action>`` to end."""
    response = VoiceResponse()
    response.hangup()
    return str(response)


@dataclass(frozen=True)
class DialResult:
    """The outcome of the ``<Dial>`` to a human, from Twilio's ``<Dial action>`` request."""

    outcome: Literal["connected", "failed"]
    dial_status: str  # DialCallStatus as sent ("" when missing)
    duration_s: int | None  # DialCallDuration: seconds the human leg lasted
    call_sid: str | None  # the caller's call (parent leg)
    dial_call_sid: str | None  # the human's leg, when it was created

    @property
    def connected(self) -> bool:
        return self.outcome == "connected"


def dial_action_result(form: Mapping[str, str]) -> DialResult:
    """Parse the ``<Dial action>`` callback form. Anything but completed/answered is ``failed``.

    Unknown or missing ``DialCallStatus`` counts as failed (and is logged): the caller then returns to
    the agent instead of being left in silence.
    """
    status = (form.get("DialCallStatus") or "").strip().lower()
    call_sid = form.get("CallSid") or None
    duration: int | None = None
    raw_duration = form.get("DialCallDuration")
    if raw_duration not in (None, ""):
        try:
            duration = int(raw_duration)
        except ValueError:
            log.warning("call %s: <Dial action> with a bad DialCallDuration %r", call_sid, raw_duration)
    if status in DIAL_CONNECTED:
        outcome: Literal["connected", "failed"] = "connected"
    else:
        outcome = "failed"
        if status not in DIAL_FAILED:
            log.warning(
                "call %s: <Dial action> with unknown DialCallStatus %r: treated as failed", call_sid, status
            )
    return DialResult(
        outcome=outcome,
        dial_status=status,
        duration_s=duration,
        call_sid=call_sid,
        dial_call_sid=form.get("DialCallSid") or None,
    )


def return_to_agent_twiml(
    stream_url: str,
    parameters: Mapping[str, str],
    action_url: str | None = None,
    status_callback: str | None = None,
) -> str:
    """``<Connect><Stream>`` back to the agent after a failed human leg.

    Adds ``<Parameter name="resume" value="transfer_failed">`` (unless ``parameters`` sets ``resume``) so
    the new stream's ``start`` tells the session to apologise and offer a callback in its own voice.
    ``parameters`` should carry the same per-call values (tenant, call_token, ...) as the first stream.
    """
    params = dict(parameters)
    params.setdefault(RETURN_PARAMETER, "transfer_failed")
    return connect_stream_twiml(stream_url, params, action_url=action_url, status_callback=status_callback)


# ---------------------------------------------------------------------------------------------- client


class CallControlError(Exception):
    """A call-control request failed for good (after retries, or a 4xx that retrying cannot fix)."""

    def __init__(
        self, message: str, *, call_sid: str, status: int | None = None, code: int | None = None
    ) -> None:
        super().__init__(message)
        self.call_sid = call_sid
        self.status = status  # HTTP status, None for a timeout or connection error
        self.code = code  # the carrier's error code, when the response carried one


class CallControl(Protocol):
    """One carrier's call control, as every carrier implements it (Twilio, Plivo, Telnyx, Exotel's
    hand-back, SIP's REFER). Whether a call can be transferred at all is the dispatcher's answer
    (``CarrierTransfers.can_transfer``: its carrier has a control mounted), not the control's."""

    async def transfer(
        self, call_sid: str, to: str, caller_id: str | None, say: str | None = None
    ) -> bool: ...

    async def hang_up(self, call_sid: str) -> bool: ...

    async def aclose(self) -> None: ...


def _plural(n: int) -> str:
    return f"{n} attempt{'' if n == 1 else 's'}"


class RestCallControl:
    """The part of a carrier's REST call control that is not the carrier's: one httpx client, one
    retry rule, the call-ended rule (:meth:`_gone`) and the errors. Use as ``async with`` or
    :meth:`aclose` it.

    ``attempts`` counts the first try; between attempts it waits ``backoff_s * 2**n`` (capped at
    ``max_backoff_s``, or a 429's ``Retry-After``). Each attempt is bounded by ``timeout_s``.
    """

    carrier = ""
    call_id = CALL_ID  # what a call id must look like before it goes into a URL path

    def __init__(
        self,
        api_base_url: str,
        *,
        auth: httpx.Auth | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 5.0,
        attempts: int = 3,
        backoff_s: float = 0.25,
        max_backoff_s: float = 2.0,
    ) -> None:
        parts = urlsplit(api_base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"api_base_url must be http(s)://host[:port][/prefix], got {api_base_url!r}")
        self.api_base_url = api_base_url.rstrip("/")
        self.retry = RetryPolicy(attempts, backoff_s, max_backoff_s, timeout_s)
        self.http = httpx.AsyncClient(
            base_url=self.api_base_url, auth=auth, headers=headers, timeout=timeout_s, follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api_base_url={self.api_base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------ what each carrier says

    def _gone(self, r: httpx.Response) -> bool:
        """The answer says the call already ended (not an error: the caller is gone)."""
        return r.status_code == 404

    def _error_detail(self, r: httpx.Response) -> tuple[int | None, str]:
        """The carrier's error code (if any) and message from an error answer."""
        return None, r.text[:200]

    # ------------------------------------------------------------------ the one request path

    async def _command(
        self, call_sid: str, what: str, method: str, path: str, ok: Collection[int], **kw: Any
    ) -> bool:
        """Send ``method path`` (retried as :mod:`voxroute.agent.retry` says). True: a status in ``ok``;
        False: the call had ended; else :class:`CallControlError`."""
        if not isinstance(call_sid, str) or not self.call_id.match(call_sid):  # it goes into the URL path
            error = CallControlError(
                f"{self.carrier} {what}: not a call id: {str(call_sid)[:80]!r}", call_sid=str(call_sid)[:80]
            )
            log.warning("%s", error)
            raise error
        sent = await send_with_retries(
            lambda: self.http.request(method, path, **kw),
            self.retry,
            f"{self.carrier} call {call_sid}: {what}",
            logger=log,
        )
        r = sent.response
        if r is None:
            raise self._failed(call_sid, what, sent, f"{sent.error}")
        if r.status_code in ok:
            if sent.attempts > 1:
                log.info(
                    "%s call %s: %s succeeded on attempt %d", self.carrier, call_sid, what, sent.attempts
                )
            return True
        if self._gone(r):
            code, _ = self._error_detail(r)
            log.info("%s call %s: %s skipped, the call already ended (HTTP %d%s)", self.carrier, call_sid,
                     what, r.status_code, f" code {code}" if code is not None else "")  # fmt: skip
            return False
        code, message = self._error_detail(r)
        detail = f"HTTP {r.status_code}" + (f" code {code}" if code is not None else "") + f": {message}"
        raise self._failed(call_sid, what, sent, detail, status=r.status_code, code=code)

    def _failed(
        self, call_sid: str, what: str, sent: Sent, detail: str, *, status: int | None = None,
        code: int | None = None,
    ) -> CallControlError:  # fmt: skip
        error = CallControlError(
            f"{self.carrier} {what} of call {call_sid} failed: {detail}",
            call_sid=call_sid,
            status=status,
            code=code,
        )
        log.warning(
            "%s (after %s%s)", error, _plural(sent.attempts), "" if sent.retried_out else ", not retried"
        )
        return error


class TwilioCallControl(RestCallControl):
    """Updates live Twilio calls: a :class:`CallControl` over Twilio's REST API.

    :meth:`transfer` builds the ``<Dial>`` (:func:`transfer_twiml`; the whisper and ``<Dial action>``
    URLs are ``public_base_url`` + ``whisper_path``/``action_path`` + ``/{CallSid}`` when given) and
    replaces the call's TwiML with it.
    """

    carrier = "twilio"
    call_id = CALL_SID

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base_url: str | None = None,
        public_base_url: str | None = None,
        whisper_path: str | None = None,
        action_path: str | None = None,
        dial_timeout_s: int = 30,
        **kw: Any,
    ) -> None:
        super().__init__(
            api_base_url or TWILIO_API,
            auth=httpx.BasicAuth(account_sid, auth_token),
            headers={"Accept": "application/json", "Accept-Charset": "utf-8"},
            **kw,
        )
        self.account_sid = account_sid
        self.public_base_url = public_base_url
        self.whisper_path = whisper_path
        self.action_path = action_path
        self.dial_timeout_s = dial_timeout_s

    def __repr__(self) -> str:
        return f"TwilioCallControl({self.account_sid!r}, api_base_url={self.api_base_url!r})"

    def _error_detail(self, r: httpx.Response) -> tuple[int | None, str]:
        """Twilio's error JSON: ``{"code": 20404, "message": "...", "more_info": ..., "status": 404}``."""
        try:
            body = r.json()
            code = body.get("code")
            return (code if isinstance(code, int) else None), str(body.get("message") or r.reason_phrase)
        except (ValueError, AttributeError):
            return None, r.text[:200]

    def _gone(self, r: httpx.Response) -> bool:
        return r.status_code in (400, 404) and self._error_detail(r)[0] in CALL_GONE_CODES

    def _callback_url(self, path: str | None, call_sid: str) -> str | None:
        """Where Twilio asks about this call's transfer: the public base + ``path/{CallSid}``."""
        if not (self.public_base_url and path):
            return None
        return public_url(self.public_base_url, f"{path}/{call_sid}")

    def _url(self, call_sid: str) -> str:
        return f"/{TWILIO_API_VERSION}/Accounts/{self.account_sid}/Calls/{call_sid}.json"

    async def _update(self, call_sid: str, what: str, form: dict[str, str]) -> bool:
        return await self._command(call_sid, what, "POST", self._url(call_sid), (200,), data=form)

    # -------------------------------------------------------------------------------- operations

    async def transfer(self, call_sid: str, to: str, caller_id: str | None, say: str | None = None) -> bool:
        """Dial ``to`` (E.164 or ``sip:``) from the live call. False: the call had ended. A bad target
        raises ``ValueError`` before Twilio is asked."""
        twiml = transfer_twiml(
            to,
            caller_id=caller_id,
            timeout_s=self.dial_timeout_s,
            whisper_url=self._callback_url(self.whisper_path, call_sid),
            action_url=self._callback_url(self.action_path, call_sid),
            say=say,
        )
        return await self.update_twiml(call_sid, twiml)

    async def update_twiml(self, call_sid: str, twiml: str) -> bool:
        """Replace the call's TwiML (``Twiml=``). False: the call had ended."""
        return await self._update(call_sid, "transfer", {"Twiml": twiml})

    async def hang_up(self, call_sid: str) -> bool:
        """End the call (``Status=completed``). False: it had already ended."""
        return await self._update(call_sid, "hang-up", {"Status": "completed"})

    async def redirect(self, call_sid: str, url: str, method: str = "POST") -> bool:
        """Make Twilio fetch new TwiML from ``url``. False: the call had ended."""
        return await self._update(call_sid, "redirect", {"Url": url, "Method": method})
