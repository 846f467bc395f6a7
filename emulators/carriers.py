"""Loopback Exotel, Plivo and Telnyx: dial a fixture call into the runtime over each protocol.

The caller script, the playback buffer, marks and the result are
:class:`voxroute.emulators.carrier.FakeCarrierCall`'s (the same engine as the fake Twilio); each class
here adds only its carrier's wire format, built and parsed by the peer classes of
``telephony/exotel.py``, ``plivo.py`` and ``telnyx.py``:

- **Exotel**: ``connected``, ``start``, s16le at 8 kHz (or 16/24 kHz) in ~100 ms chunks; our
  ``media`` must be n x 320 bytes, and a chunk under 3.2 kB costs a 20 ms stall, which the fake
  plays as 20 ms of silence; ``mark`` echoes when played; ``clear`` flushes without echoing
  the pending marks (Exotel documents none); ``stop``.
- **Plivo**: no ``connected``; ``start`` with the answer XML's ``contentType`` and
  ``extra_headers``; 20 ms ``media`` with epoch-ms timestamps; ``checkpoint`` answered by
  ``playedStream`` when played; ``clearAudio`` answered by ``clearedAudio``; **no stop**: the
  call ends when the fake closes the socket.
- **Telnyx**: ``connected``, ``start``, PCMU ``media`` (one pair of messages in every 50 sent
  out of order, as Telnyx does not guarantee order), ``mark``, ``clear`` (pending marks echoed,
  as Twilio), ``stop``.

:func:`dial_fixture` is the registry ``voxroute replay --carrier`` uses: each carrier's call
set-up (Twilio voice webhook, Exotel dynamic URL, Plivo answer XML, Telnyx TeXML) and then
its media stream. Adding a carrier is one entry in :data:`DIALERS`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from voxroute.agent.fixture import Fixture
from voxroute.audio import StreamResampler, pcm16_to_ulaw, ulaw_to_pcm16
from voxroute.emulators.carrier import (
    SILENCE_FRAME,
    TWILIO_USER_AGENT,
    BeforeStream,
    CallIds,
    CarrierResult,
    FakeCarrierCall,
    dial,
    make_ids,
    run_fake_call,
)
from voxroute.emulators.sip_carrier import dial_for_replay
from voxroute.server import ws_url as ws_base
from voxroute.telephony import plivo, telnyx
from voxroute.telephony.exotel import MIN_CHUNK, ExotelPeer
from voxroute.telephony.mediastream import AudioFormat, CarrierProtocolError, native_to_pcm, pcm_to_native
from voxroute.telephony.twiml import public_ws_url

TO_NUMBER = "+918000000000"


class CarrierNotWired(ValueError):
    """``voxroute replay --carrier X`` for a carrier the fake cannot dial yet."""


@dataclass(frozen=True)
class FakeCarrierSecrets:
    """What each fake carrier signs with; ``None``: it does not sign (the runtime's check is off)."""

    twilio_auth_token: str | None = None
    exotel_credentials: str | None = None  # "KEY:TOKEN"
    plivo_auth_token: str | None = None
    telnyx_private_key: bytes | None = None  # raw 32-byte Ed25519 seed


def _hex(seed: str, n: int = 32) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


class _NativeAudio:
    """The fake's converters: fixture mu-law 8 kHz -> native, native -> mu-law 8 kHz (the recording)."""

    def __init__(self, fmt: AudioFormat):
        self.fmt = fmt
        up = fmt.sample_rate != 8000
        self._up = StreamResampler(8000, fmt.sample_rate) if up else None
        self._down = StreamResampler(fmt.sample_rate, 8000) if up else None

    def to_native(self, ulaw: bytes) -> bytes:
        if self.fmt.encoding == "ulaw":
            return ulaw
        pcm = ulaw_to_pcm16(ulaw)
        if self._up is not None:
            pcm = self._up.process(pcm)
        return pcm_to_native(pcm, self.fmt)

    def to_ulaw(self, native: bytes) -> bytes:
        if self.fmt.encoding == "ulaw":
            return native
        pcm = native_to_pcm(native, self.fmt)
        if self._down is not None:
            pcm = self._down.process(pcm)
        return pcm16_to_ulaw(pcm)

    def reset_down(self) -> None:
        if self._down is not None:
            self._down = StreamResampler(self.fmt.sample_rate, 8000)


class _PeerCall(FakeCarrierCall):
    """Shared by the three: decode through ``self.peer.parse`` and the native converter."""

    peer: Any
    native: _NativeAudio

    def _decode(self, text: str | bytes) -> tuple[str, object] | None:
        if isinstance(text, bytes):
            self.error("binary websocket frame from the runtime (the carrier takes JSON text frames)")
            return None
        try:
            kind, value = self.peer.parse(text)
        except CarrierProtocolError as exc:
            self.error(f"bad message from the runtime: {exc}")
            return None
        if kind == "media":
            assert isinstance(value, bytes)
            if value[:4] == b"RIFF":
                self.error("media: payload starts with a RIFF/WAV header; dropped")
                return None
            if len(value) % (2 if self.native.fmt.encoding.startswith("l16") else 1):
                self.error(f"media: PCM16 payload of odd length {len(value)}; dropped")
                return None
            return "media", self.native.to_ulaw(value)
        if kind == "clear":
            self.native.reset_down()
        if kind == "dtmf":
            return None  # Plivo sendDTMF: the agent pressed keys; nothing to play
        return kind, value


# ---------------------------------------------------------------- Exotel


class FakeExotelCall(_PeerCall):
    echo_marks_on_clear = False

    def __init__(self, fixture: Fixture, *, ids: CallIds, sample_rate: int = 8000, chunk_ms: int = 100, **kw):
        super().__init__(fixture, ids=ids, **kw)
        self.native = _NativeAudio(AudioFormat("l16le", sample_rate))
        self.peer = ExotelPeer(
            ids.stream_sid,
            ids.call_sid,
            account_sid=ids.account_sid,
            from_number=fixture.script.from_,
            to_number=TO_NUMBER,
            custom_parameters=self.custom_parameters,
            sample_rate=sample_rate,
        )
        self._chunk_bytes = chunk_ms * sample_rate // 1000 * 2
        self._inbound = bytearray()
        self.short_chunks = 0

    def _open_texts(self) -> list[str]:
        return [self.peer.connected(), self.peer.start()]

    def _stop_text(self) -> str:
        return self.peer.stop()

    def _frame_texts(self, frame: bytes) -> list[str]:
        self._inbound += self.native.to_native(frame)
        if len(self._inbound) < self._chunk_bytes:
            return []
        chunk = bytes(self._inbound)
        self._inbound.clear()
        return [self.peer.media(chunk)]

    def _dtmf_text(self, digit: str) -> str:
        return self.peer.dtmf(digit)

    def _mark_text(self, name: str) -> str:
        return self.peer.mark(name)

    def _decode(self, text: str | bytes) -> tuple[str, object] | None:
        decoded = super()._decode(text)
        if decoded is not None and decoded[0] == "media":
            native_len = len(decoded[1]) * 2 * self.native.fmt.sample_rate // 8000  # type: ignore[arg-type]
            if native_len < MIN_CHUNK:  # Exotel stalls 20 ms after a short packet
                self.short_chunks += 1
                return "media", bytes(decoded[1]) + SILENCE_FRAME  # type: ignore[arg-type]
        return decoded


# ---------------------------------------------------------------- Plivo


class FakePlivoCall(_PeerCall):
    echo_marks_on_clear = False  # Plivo answers clearAudio with clearedAudio, not with playedStream

    def __init__(
        self,
        fixture: Fixture,
        *,
        ids: CallIds,
        content_type: str = plivo.CONTENT_TYPES[0],
        extra_headers: str = "",
        **kw,
    ):
        super().__init__(fixture, ids=ids, **kw)
        self.peer = plivo.PlivoPeer(
            ids.stream_sid,
            ids.call_sid,
            account_id=ids.account_sid,
            content_type=content_type,
            extra_headers=extra_headers,
            first_epoch_ms=int(time.time() * 1000),
        )
        self.native = _NativeAudio(self.peer.format)

    def _open_texts(self) -> list[str]:
        return [self.peer.start()]

    def _stop_text(self) -> None:
        return None  # Plivo has no websocket stop: it closes the socket

    def _frame_texts(self, frame: bytes) -> list[str]:
        return [self.peer.media(self.native.to_native(frame))]

    def _dtmf_text(self, digit: str) -> str:
        return self.peer.dtmf(digit)

    def _mark_text(self, name: str) -> str:
        return self.peer.played_stream(name)

    def _clear_ack_texts(self) -> list[str]:
        return [self.peer.cleared_audio()]


# ---------------------------------------------------------------- Telnyx


class FakeTelnyxCall(_PeerCall):
    echo_marks_on_clear = True

    def __init__(
        self,
        fixture: Fixture,
        *,
        ids: CallIds,
        codec: str = "PCMU",
        sample_rate: int = 8000,
        swap_every: int = 50,
        **kw,
    ):
        super().__init__(fixture, ids=ids, **kw)
        self.peer = telnyx.TelnyxPeer(
            ids.stream_sid,
            ids.call_sid,
            from_number=fixture.script.from_,
            to_number=TO_NUMBER,
            custom_parameters=self.custom_parameters,
            codec=codec,
            sample_rate=sample_rate,
        )
        self.native = _NativeAudio(self.peer.format)
        self.swap_every = swap_every  # 0: always in order
        self._held: str | None = None
        self._frames = 0

    def _open_texts(self) -> list[str]:
        return [self.peer.connected(), self.peer.start()]

    def _stop_text(self) -> str:
        self._held = None  # a frame held back at the very end is lost: the call is over
        return self.peer.stop()

    def _frame_texts(self, frame: bytes) -> list[str]:
        text = self.peer.media(self.native.to_native(frame))
        self._frames += 1
        if self._held is not None:
            held, self._held = self._held, None
            return [text, held]  # the later frame overtakes the earlier one
        if self.swap_every and self._frames % self.swap_every == 0:
            self._held = text
            return []
        return [text]

    def _dtmf_text(self, digit: str) -> str:
        return self.peer.dtmf(digit)

    def _mark_text(self, name: str) -> str:
        return self.peer.mark(name)


# ---------------------------------------------------------------- call set-up + dial: the registry


Dialer = Callable[..., Awaitable[CarrierResult]]


def _overrides(fixture: Fixture, params: dict[str, str]) -> dict[str, str]:
    """What a replay pins whatever the set-up answered: the fixture's tenant and language."""
    params = dict(params)
    params.setdefault("language", fixture.script.language)
    params["tenant"] = fixture.script.tenant
    return params


def _stream_path(url: str) -> str:
    """The path and query of a public stream URL (the replay dials the local server instead)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def _dial_twilio(
    fixture: Fixture,
    server_url: str,
    *,
    http: httpx.AsyncClient,
    public_base_url: str,
    secrets_: FakeCarrierSecrets,
    **kw: Any,
) -> CarrierResult:
    ids = make_ids()
    form = {
        "CallSid": ids.call_sid,
        "AccountSid": ids.account_sid,
        "From": fixture.script.from_,
        "To": TO_NUMBER,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    headers = {}
    token = secrets_.twilio_auth_token
    if token:
        from twilio.request_validator import RequestValidator

        headers["X-Twilio-Signature"] = RequestValidator(token).compute_signature(
            public_base_url.rstrip("/") + "/twilio/voice", form
        )
    resp = await http.post("/twilio/voice", data=form, headers=headers)
    resp.raise_for_status()
    root = ET.fromstring(resp.text)
    params = {p.get("name", ""): p.get("value", "") for p in root.iter("Parameter")}
    return await dial(
        fixture,
        ws_base(server_url) + "/twilio/stream",
        auth_token=token,
        public_url=public_ws_url(public_base_url, "/twilio/stream"),
        custom_parameters=_overrides(fixture, params),
        call_sid=ids.call_sid,
        **kw,
    )


async def _dial_exotel(
    fixture: Fixture,
    server_url: str,
    *,
    http: httpx.AsyncClient,
    secrets_: FakeCarrierSecrets,
    speed: float = 1.0,
    agent_wait_s: float = 20.0,
    record_path: Path | None = None,
    before_stream: BeforeStream | None = None,
    **_: Any,
) -> CarrierResult:
    call_sid = secrets.token_hex(16)
    ids = CallIds(call_sid=call_sid, stream_sid=_hex("stream:" + call_sid), account_sid="voxroute1")
    auth = {}
    if secrets_.exotel_credentials:
        auth["Authorization"] = "Basic " + base64.b64encode(secrets_.exotel_credentials.encode()).decode()
    query = {
        "CallSid": call_sid,
        "CallFrom": fixture.script.from_,
        "CallTo": TO_NUMBER,
        "Direction": "incoming",
    }
    resp = await http.get("/exotel/voicebot", params=query, headers=auth)
    resp.raise_for_status()
    url = resp.json()["url"]
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    rate = int(params.get("sample-rate", "8000"))
    call = FakeExotelCall(
        fixture,
        ids=ids,
        custom_parameters=_overrides(fixture, params),
        agent_wait_s=agent_wait_s * speed,
        sample_rate=rate,
    )
    headers = dict(auth)
    if parts.username is not None and not headers:  # credentials in the URL: Exotel sends them as Basic auth
        userinfo = f"{parts.username}:{parts.password or ''}"
        headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
    return await run_fake_call(
        call,
        ws_base(server_url) + _stream_path(url),
        headers=headers,
        user_agent="Exotel-Voicebot/1.0",
        speed=speed,
        agent_wait_s=agent_wait_s,
        record_path=record_path,
        before_stream=before_stream,
    )


async def _dial_plivo(
    fixture: Fixture,
    server_url: str,
    *,
    http: httpx.AsyncClient,
    public_base_url: str,
    secrets_: FakeCarrierSecrets,
    speed: float = 1.0,
    agent_wait_s: float = 20.0,
    record_path: Path | None = None,
    before_stream: BeforeStream | None = None,
    **_: Any,
) -> CarrierResult:
    call_uuid = str(uuid.uuid4())
    ids = CallIds(
        call_sid=call_uuid, stream_sid=str(uuid.uuid4()), account_sid="MA" + _hex("voxroute", 18).upper()
    )
    form = {
        "CallUUID": call_uuid,
        "From": fixture.script.from_.lstrip("+"),
        "To": TO_NUMBER.lstrip("+"),
        "Direction": "inbound",
        "CallStatus": "in-progress",
        "Event": "StartApp",
    }
    headers = {}
    if secrets_.plivo_auth_token:
        nonce = secrets.token_hex(10)
        url = public_base_url.rstrip("/") + "/plivo/answer"
        headers[plivo.NONCE_HEADER] = nonce
        headers[plivo.SIGNATURE_HEADER] = plivo.signature_v3(secrets_.plivo_auth_token, url, nonce, form)
    resp = await http.post("/plivo/answer", data=form, headers=headers)
    resp.raise_for_status()
    stream = ET.fromstring(resp.text).find("Stream")
    if stream is None or not (stream.text or "").strip():
        raise CarrierProtocolError(f"Plivo answer without a <Stream>: {resp.text[:200]!r}")
    extra = plivo.parse_extra_headers(stream.get("extraHeaders", ""))
    extra = _overrides(fixture, extra)
    extra.setdefault("from", fixture.script.from_)
    call = FakePlivoCall(
        fixture,
        ids=ids,
        content_type=stream.get("contentType", plivo.CONTENT_TYPES[0]),
        extra_headers=",".join(f"{k}={v}" for k, v in extra.items()),
        agent_wait_s=agent_wait_s * speed,
    )
    return await run_fake_call(
        call,
        ws_base(server_url) + _stream_path(stream.text.strip()),
        headers={},
        user_agent="Plivo-Stream/1.0",
        speed=speed,
        agent_wait_s=agent_wait_s,
        record_path=record_path,
        before_stream=before_stream,
    )


def sign_telnyx(private_key: bytes, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Telnyx's webhook headers: Ed25519 over ``"{timestamp}|{body}"``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = Ed25519PrivateKey.from_private_bytes(private_key).sign(ts.encode() + b"|" + body)
    return {telnyx.SIGNATURE_HEADER: base64.b64encode(sig).decode(), telnyx.TIMESTAMP_HEADER: ts}


async def _dial_telnyx(
    fixture: Fixture,
    server_url: str,
    *,
    http: httpx.AsyncClient,
    secrets_: FakeCarrierSecrets,
    speed: float = 1.0,
    agent_wait_s: float = 20.0,
    record_path: Path | None = None,
    before_stream: BeforeStream | None = None,
    **_: Any,
) -> CarrierResult:
    call_control_id = "v3:" + secrets.token_hex(20)
    ids = CallIds(call_sid=call_control_id, stream_sid=str(uuid.uuid4()), account_sid="")
    form = {
        "CallSid": call_control_id,
        "AccountSid": str(uuid.UUID(_hex("voxroute"))),
        "From": fixture.script.from_,
        "To": TO_NUMBER,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    body = urlencode(form).encode()
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if secrets_.telnyx_private_key:
        headers.update(sign_telnyx(secrets_.telnyx_private_key, body))
    resp = await http.post("/telnyx/texml", content=body, headers=headers)
    resp.raise_for_status()
    stream = ET.fromstring(resp.text).find("Connect/Stream")
    if stream is None or not stream.get("url"):
        raise CarrierProtocolError(f"TeXML without <Connect><Stream url>: {resp.text[:200]!r}")
    if stream.get("bidirectionalMode") != "rtp":
        raise CarrierProtocolError(
            f"TeXML stream is not bidirectional rtp: {stream.get('bidirectionalMode')!r}"
        )
    params = {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}
    call = FakeTelnyxCall(
        fixture,
        ids=ids,
        custom_parameters=_overrides(fixture, params),
        codec=stream.get("bidirectionalCodec", "PCMU"),
        sample_rate=int(stream.get("bidirectionalSamplingRate", "8000")),
        agent_wait_s=agent_wait_s * speed,
    )
    return await run_fake_call(
        call,
        ws_base(server_url) + _stream_path(stream.get("url", "")),
        headers={},
        user_agent="Telnyx-Media-Streaming/1.0",
        speed=speed,
        agent_wait_s=agent_wait_s,
        record_path=record_path,
        before_stream=before_stream,
    )


DIALERS: dict[str, Dialer] = {
    "twilio": _dial_twilio,
    "exotel": _dial_exotel,
    "plivo": _dial_plivo,
    "telnyx": _dial_telnyx,
    "sip": dial_for_replay,
}
CARRIERS = tuple(DIALERS)


def check_dialable(carrier: str) -> None:
    """Raise :class:`CarrierNotWired` now (before any server starts) if ``carrier`` cannot be dialled."""
    dialer = DIALERS.get(carrier)
    if dialer is None:
        raise CarrierNotWired(f"unknown carrier {carrier!r}; choose one of {', '.join(CARRIERS)}")


async def dial_fixture(
    carrier: str,
    fixture: Fixture,
    server_url: str,
    *,
    http: httpx.AsyncClient,
    public_base_url: str,
    speed: float = 1.0,
    record_path: Path | None = None,
    agent_wait_s: float = 20.0,
    secrets: FakeCarrierSecrets | None = None,
    before_stream: BeforeStream | None = None,
) -> CarrierResult:
    """Set up a call the way ``carrier`` does (``http`` talks to ``server_url``), then stream it.
    ``before_stream(call_sid)``: awaited once the call's id is known, before its media stream
    opens (the web carriers; the SIP dialer does not call it)."""
    check_dialable(carrier)
    return await DIALERS[carrier](
        fixture,
        server_url,
        http=http,
        public_base_url=public_base_url,
        secrets_=secrets or FakeCarrierSecrets(),
        speed=speed,
        record_path=record_path,
        agent_wait_s=agent_wait_s,
        before_stream=before_stream,
    )


__all__ = [
    "CARRIERS",
    "DIALERS",
    "CarrierNotWired",
    "FakeCarrierSecrets",
    "FakeExotelCall",
    "FakePlivoCall",
    "FakeTelnyxCall",
    "TWILIO_USER_AGENT",
    "check_dialable",
    "dial_fixture",
    "sign_telnyx",
]
