"""Twilio call control: transfer to a human, hang-up, redirect; and the TwiML those need.

Two layers, as everywhere in ``telephony``:

- Pure builders and parsers (no I/O): :func:`transfer_twiml` (``<Say>`` + ``<Dial>`` to the human queue
  number or SIP address, with the whisper URL on the ``<Number>``/``<Sip>``), :func:`whisper_twiml`
  (the one sentence the human hears before the caller is connected), :func:`dial_action_result`
  (Twilio's ``<Dial action>`` callback form -> connected / failed) and :func:`return_to_agent_twiml`
  (a failed human leg: ``<Connect><Stream>`` back to the agent, built by ``voxroute.telephony.twiml``).
- :class:`TwilioCallControl`: one small async client over the official ``twilio`` SDK
  (``calls(sid).update_async``) with per-attempt timeouts and retries with backoff on 5xx, 429,
  timeouts and connection errors (never on other 4xx). ``api_base_url`` points it at a stand-in
  (``emulators/twilio_rest.py``): the SDK's HTTP client is subclassed to rewrite ``https://*.twilio.com``.

A call that already ended (404 code 20404, or 400 code 21220 "call is not in-progress") is not an
error: the methods return ``False`` and log one line. Anything else that fails logs one line and raises
:class:`CallControlError`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client
from twilio.twiml.voice_response import Dial, VoiceResponse
from voxroute.telephony.twiml import connect_stream_twiml

log = logging.getLogger(__name__)

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
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
        self.code = code  # Twilio error code, when the response carried one


class RebasedAsyncHttpClient(AsyncTwilioHttpClient):
    """The SDK's aiohttp client, optionally sending ``https://*.twilio.com/...`` to ``base_url`` instead.

    It also sends basic auth as a header (aiohttp deprecates the ``auth=`` the SDK passes); the
    request is the same on the wire.
    """

    def __init__(self, base_url: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._base = None
        if base_url is not None:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"api_base_url must be http(s)://host[:port][/prefix], got {base_url!r}")
            self._base = parts

    def rebase(self, url: str) -> str:
        parts = urlsplit(url)
        if self._base is None or not (parts.hostname or "").endswith("twilio.com"):
            return url
        path = self._base.path.rstrip("/") + parts.path
        return urlunsplit((self._base.scheme, self._base.netloc, path, parts.query, ""))

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the SDK's HttpClient interface
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        if auth is not None:
            headers = dict(headers or {})
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        return await super().request(
            method,
            self.rebase(url),
            params=params,
            data=data,
            headers=headers,
            auth=None,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )


class TwilioCallControl:
    """Updates live Twilio calls. Use as ``async with TwilioCallControl(...) as control:``.

    ``attempts`` counts the first try; between attempts it waits ``backoff_s * 2**n`` (capped at
    ``max_backoff_s``). Each attempt is bounded by ``timeout_s``.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base_url: str | None = None,
        timeout_s: float = 5.0,
        attempts: int = 3,
        backoff_s: float = 0.25,
        max_backoff_s: float = 2.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.api_base_url = api_base_url
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None

    def __repr__(self) -> str:
        return f"TwilioCallControl({self.account_sid!r}, api_base_url={self.api_base_url!r})"

    async def __aenter__(self) -> TwilioCallControl:
        self._sdk()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    def _sdk(self) -> Client:
        # The aiohttp session must be created inside the running loop: lazily, not in __init__.
        if self._client is None:
            kwargs = {"timeout": self.timeout_s}
            self._http = RebasedAsyncHttpClient(self.api_base_url, **kwargs)
            self._client = Client(self.account_sid, self._auth_token, http_client=self._http)
        return self._client

    # -------------------------------------------------------------------------------- operations

    async def transfer(self, call_sid: str, twiml: str) -> bool:
        """Replace the call's TwiML (a ``<Dial>`` from :func:`transfer_twiml`). False: the call had ended."""
        return await self._update(call_sid, "transfer", twiml=twiml)

    async def hang_up(self, call_sid: str) -> bool:
        """End the call (``Status=completed``). False: it had already ended."""
        return await self._update(call_sid, "hang-up", status="completed")

    async def redirect(self, call_sid: str, url: str, method: str = "POST") -> bool:
        """Make Twilio fetch new TwiML from ``url``. False: the call had ended."""
        return await self._update(call_sid, "redirect", url=url, method=method)

    async def _update(self, call_sid: str, what: str, **fields: str) -> bool:
        if not isinstance(call_sid, str) or not CALL_SID.match(call_sid):  # it goes into the URL path
            error = CallControlError(f"Twilio {what}: not a call SID: {call_sid!r}", call_sid=str(call_sid))
            log.warning("%s", error)
            raise error
        calls = self._sdk().calls(call_sid)
        last: CallControlError | None = None
        attempt = 0  # attempts >= 1 (checked at start): the loop sets it
        for attempt in range(1, self.attempts + 1):
            retryable = False
            try:
                async with asyncio.timeout(self.timeout_s):
                    await calls.update_async(**fields)
                if attempt > 1:
                    log.info("call %s: %s succeeded on attempt %d", call_sid, what, attempt)
                return True
            except TwilioException as exc:
                status = getattr(exc, "status", None)
                code = getattr(exc, "code", None)
                if code in CALL_GONE_CODES and status in (400, 404):
                    log.info(
                        "call %s: %s skipped, the call already ended (Twilio %s/%s)",
                        call_sid,
                        what,
                        status,
                        code,
                    )
                    return False
                retryable = status is None or status >= 500 or status == 429
                message = getattr(exc, "msg", None) or getattr(exc, "detail", None) or str(exc)
                last = CallControlError(
                    f"Twilio {what} of call {call_sid} failed: HTTP {status} code {code}: {message}",
                    call_sid=call_sid,
                    status=status,
                    code=code,
                )
            except TimeoutError:
                retryable = True
                last = CallControlError(
                    f"Twilio {what} of call {call_sid} timed out after {self.timeout_s:g} s",
                    call_sid=call_sid,
                )
            except (aiohttp.ClientError, OSError) as exc:
                retryable = True
                last = CallControlError(
                    f"Twilio {what} of call {call_sid} failed: {type(exc).__name__}: {exc}", call_sid=call_sid
                )
            if not retryable or attempt == self.attempts:
                break
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
            log.info(
                "call %s: %s attempt %d failed (%s), retrying in %.2f s", call_sid, what, attempt, last, delay
            )
            await asyncio.sleep(delay)
        assert last is not None
        log.warning("%s (after %d attempt%s)", last, attempt, "" if attempt == 1 else "s")
        raise last
