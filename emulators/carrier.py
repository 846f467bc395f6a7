"""A loopback Twilio: dials a fixture call into the runtime's Media Streams websocket.

It behaves like Twilio's side of a bidirectional ``<Connect><Stream>`` (docs/reference/telephony.md §1):
a signed upgrade, ``connected``, ``start``, 160-byte mu-law ``media`` frames every 20 ms for the
whole call (silence between utterances, as a phone line does), ``dtmf`` events, a playback buffer
that drains the runtime's audio at 8000 bytes/s and echoes each ``mark`` once everything queued
before it has played (at once when nothing is queued), ``clear`` that flushes the buffer and
echoes all pending marks, and ``stop``.

Two layers, as elsewhere in voxroute:

- :class:`FakeTwilioCall` is sans-I/O: ``open()``, ``tick()`` (one 20 ms frame of the carrier
  clock), ``receive(text, now)`` and ``stop()`` return the JSON texts to send. It owns the
  utterance schedule, the playback buffer, the recording and the result.
- :func:`dial` is the thin asyncio layer: a ``websockets`` client, an absolute-deadline pacing
  loop and a receive loop in one ``asyncio.TaskGroup``.

Times in the result are seconds of the carrier clock since the ``start`` message: at
``speed=4`` one carrier second passes in 0.25 s of wall time, so results compare with the
fixture's milliseconds whatever the speed.

When is the agent "done"? The runtime names its marks ``"<turn>:<chunk>"`` and sends
``"<turn>:end"`` after a reply's last audio. A reply to caller item *i* has finished when the
carrier echoes a mark ending in ``":end"`` after item *i* finished playing; it began when agent
audio starts playing after item *i* finished (audio queued after that moment, or audio after
the buffer was idle). A bot that sends no marks (Pipecat's own Twilio serializer) can be dialled
with ``end_silence_s``: its reply is over when nothing has played for that long, as the fake SIP
phone decides (a caller who hears the line fall quiet).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from voxroute.agent.fixture import Fixture, Utterance, write_ulaw_wav

log = logging.getLogger(__name__)

FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
SILENCE_BYTE = 0xFF  # mu-law zero
SILENCE_FRAME = bytes([SILENCE_BYTE]) * FRAME_BYTES
DTMF_SPACING_S = 0.15
TAIL_S = 0.3  # carrier seconds between the end of the script and ``stop``
MAX_ERRORS = 100  # a runtime that gets every frame wrong must not grow the result without bound
MAX_LOGGED_ERRORS = 10
TWILIO_USER_AGENT = "Twilio.TmeWs/1.0"
_EPS = 1e-9

BeforeStream = Callable[[str], Awaitable[None]]  # awaited with the call's id before its stream opens


# --------------------------------------------------------------------------- ids and signature


@dataclass(frozen=True, slots=True)
class CallIds:
    call_sid: str
    stream_sid: str
    account_sid: str


def _hex32(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def make_ids(call_sid: str | None = None) -> CallIds:
    """Twilio-shaped ids (prefix + 32 hex). Deterministic given ``call_sid``, random without.

    A ``call_sid`` already in ``CA`` + 32 hex form is used as is; any other string seeds one.
    The account is one fixed fake account, as all calls of a real number share one.
    """
    if call_sid is None:
        call = "CA" + secrets.token_hex(16)
    elif (
        len(call_sid) == 34
        and call_sid.startswith("CA")
        and all(c in "0123456789abcdef" for c in call_sid[2:])
    ):
        call = call_sid
    else:
        call = "CA" + _hex32("call:" + call_sid)
    return CallIds(
        call_sid=call, stream_sid="MZ" + _hex32("stream:" + call), account_sid="AC" + _hex32("voxroute")
    )


def wss_form(ws_url: str) -> str:
    """The public ``wss://`` form Twilio signs (docs/reference/telephony.md §1.7): ``ws://h/p`` -> ``wss://h/p``."""
    if ws_url.startswith("ws://"):
        return "wss://" + ws_url[len("ws://") :]
    if ws_url.startswith("http://"):
        return "wss://" + ws_url[len("http://") :]
    if ws_url.startswith("https://"):
        return "wss://" + ws_url[len("https://") :]
    return ws_url


def upgrade_signature(auth_token: str, url: str) -> str:
    """``X-Twilio-Signature`` of a Media Streams upgrade: the URL alone, no parameters."""
    return RequestValidator(auth_token).compute_signature(url, {})


# --------------------------------------------------------------------------- Twilio -> runtime texts


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def connected_text() -> str:
    return _dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_text(seq: int, ids: CallIds, custom_parameters: dict[str, str]) -> str:
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": str(seq),
            "streamSid": ids.stream_sid,
            "start": {
                "streamSid": ids.stream_sid,
                "accountSid": ids.account_sid,
                "callSid": ids.call_sid,
                "tracks": ["inbound"],
                "customParameters": custom_parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def media_text(seq: int, stream_sid: str, chunk: int, timestamp_ms: int, ulaw: bytes) -> str:
    return _dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(ulaw).decode("ascii"),
            },
        }
    )


def dtmf_text(seq: int, stream_sid: str, digit: str) -> str:
    return _dumps(
        {
            "event": "dtmf",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


def mark_text(seq: int, stream_sid: str, name: str) -> str:
    return _dumps(
        {"event": "mark", "sequenceNumber": str(seq), "streamSid": stream_sid, "mark": {"name": name}}
    )


def stop_text(seq: int, ids: CallIds) -> str:
    return _dumps(
        {
            "event": "stop",
            "sequenceNumber": str(seq),
            "streamSid": ids.stream_sid,
            "stop": {"accountSid": ids.account_sid, "callSid": ids.call_sid},
        }
    )


# --------------------------------------------------------------------------- result


@dataclass(slots=True)
class ItemResult:
    index: int
    kind: Literal["audio", "dtmf"]
    play: str
    started_at: float | None = None
    ended_at: float | None = None
    reply_started_at: float | None = None
    reply_finished_at: float | None = None
    skipped: bool = False  # sound over the agent, not played: the agent's reply had already ended


@dataclass(slots=True)
class MarkRecord:
    name: str
    received_at: float
    echoed_at: float | None = None


@dataclass
class CarrierResult:
    call_sid: str
    stream_sid: str
    items: list[ItemResult]
    marks: list[MarkRecord] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    agent_audio_ms: int = 0
    recorded: bytes = b""  # the agent channel as the caller heard it, 8 kHz mu-law; not in as_dict()
    closed_by: str | None = None  # "carrier" (we sent stop and closed), "server", "handshake"
    close_code: int | None = None
    errors: list[str] = field(default_factory=list)
    completed: bool = False
    account_sid: str = ""
    duration_s: float = 0.0  # carrier seconds from ``start`` to ``stop`` (= len(recorded) / 8000)
    max_lag_ms: float = 0.0  # worst lateness of the pacing loop, wall-clock ms

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "recorded":
                continue
            value = getattr(self, f.name)
            if f.name in ("items", "marks"):
                value = [_rounded(dataclasses.asdict(v)) for v in value]
            elif f.name == "clears":
                value = [round(t, 3) for t in value]
            out[f.name] = value
        out["recorded_ms"] = len(self.recorded) // 8
        return out


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


# --------------------------------------------------------------------------- sans-I/O call


@dataclass(slots=True)
class _Watch:
    """Watches the agent's reply to the caller item that finished at ``since``."""

    item: ItemResult | None  # None: the call start (a greeting), before any caller item
    since: float
    boundary: int  # playback position queued when the item finished: bytes past it are the reply
    deadline: float
    reply_started_at: float | None = None
    reply_finished_at: float | None = None
    timed_out: bool = False


class FakeCarrierCall:
    """A carrier's side of one bidirectional media stream, as a state machine without I/O.

    ``tick()`` advances the carrier clock by exactly 20 ms; ``receive(text, now)`` handles one
    message from the runtime at carrier time ``now`` (clamped into the current tick). Every
    method returns the texts to send, in order; they carry the shared sequence counter, so send
    them in the order they were produced.

    The caller script, the playback buffer (8 kHz mu-law, drained at 8000 bytes/s), marks and
    the result live here; the wire format is a subclass's: :class:`FakeTwilioCall` here, and
    Exotel, Plivo and Telnyx in ``emulators/carriers.py``.
    """

    echo_marks_on_clear = True  # Twilio echoes every pending mark when told to clear

    def __init__(
        self,
        fixture: Fixture,
        *,
        ids: CallIds,
        custom_parameters: dict[str, str] | None = None,
        agent_wait_s: float = 20.0,
        end_silence_s: float | None = None,
    ) -> None:
        self.fixture = fixture
        self.ids = ids
        self.agent_wait_s = agent_wait_s  # carrier seconds
        self.end_silence_s = end_silence_s  # None: a reply ends with its ":end" mark only
        self._quiet_s = 0.0  # carrier seconds since agent audio last played
        script = fixture.script
        self.custom_parameters = {
            "tenant": script.tenant,
            "from": script.from_,
            "language": script.language,
            **{str(k): str(v) for k, v in (custom_parameters or {}).items()},
        }
        self._utts: list[Utterance] = list(script.utterances)
        self.result = CarrierResult(
            call_sid=ids.call_sid,
            stream_sid=ids.stream_sid,
            account_sid=ids.account_sid,
            items=[
                ItemResult(index=i, kind="dtmf" if u.is_dtmf else "audio", play=u.play)
                for i, u in enumerate(self._utts)
            ],
        )
        self._seq = 0
        self._ticks = 0
        self._opened = False
        self.stopped = False
        self._suppressed_errors = 0
        # caller side
        self._next_item = 0
        self._active: int | None = None  # index of the item playing now
        self._active_audio = b""
        self._active_pos = 0
        self._active_digits = ""
        self._dtmf_sent = 0
        self._watch = _Watch(item=None, since=0.0, boundary=0, deadline=agent_wait_s)
        self._tail_until: float | None = None
        # agent side: one playback position space; ``clear`` skips it forward, never back
        self._buf = bytearray()  # bytes from _played_pos to _queued_pos
        self._queued_pos = 0
        self._played_pos = 0
        self._heard_pos = 0  # audio before this position has finished playing
        self._playing = False  # the last tick played agent audio
        self._pending: list[tuple[int, MarkRecord]] = []  # (position, record), in order
        self._recording = bytearray()
        self._played_bytes = 0

    # -- clock --------------------------------------------------------------

    @property
    def now(self) -> float:
        """Carrier time of the last tick (seconds since ``start``)."""
        return self._ticks * FRAME_MS / 1000

    @property
    def finished(self) -> bool:
        """The script is over and the tail has passed: time to send ``stop``."""
        return self._tail_until is not None and self.now >= self._tail_until - _EPS

    # -- outbound control ---------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def open(self) -> list[str]:
        """``connected`` (no sequence number) and ``start``; the carrier clock starts here."""
        assert not self._opened
        self._opened = True
        return self._open_texts()

    def stop(self) -> str | None:
        """The carrier's ``stop`` message (``None`` for a carrier that has none: close the socket)."""
        self.stopped = True
        self._finish()
        return self._stop_text()

    # -- the wire format: one subclass per carrier --------------------------

    def _open_texts(self) -> list[str]:
        raise NotImplementedError

    def _stop_text(self) -> str | None:
        raise NotImplementedError

    def _frame_texts(self, frame: bytes) -> list[str]:
        """One 20 ms caller frame (160 bytes of 8 kHz mu-law) as the carrier sends it."""
        raise NotImplementedError

    def _dtmf_text(self, digit: str) -> str:
        raise NotImplementedError

    def _mark_text(self, name: str) -> str:
        raise NotImplementedError

    def _decode(self, text: str | bytes) -> tuple[str, object] | None:
        """One runtime message as ``("media", 8 kHz mu-law)``, ``("mark", name)`` or
        ``("clear", None)``; ``None`` after recording the error."""
        raise NotImplementedError

    def _clear_ack_texts(self) -> list[str]:
        """What the carrier sends when it has cleared (Plivo ``clearedAudio``); nothing by default."""
        return []

    def tick(self) -> list[str]:
        """Advance one 20 ms frame: echo played marks, run the script, send one media frame."""
        if self.stopped:
            return []
        self._ticks += 1
        t = self.now
        out: list[str] = []
        # 1. marks whose audio finished playing during the previous frame
        self._heard_pos = self._played_pos
        self._echo_played(t, out)
        # 2. the caller script
        self._schedule(t)
        frame = SILENCE_FRAME
        if self._active is not None:
            item = self.result.items[self._active]
            if item.kind == "audio":
                frame = self._active_audio[self._active_pos : self._active_pos + FRAME_BYTES]
                self._active_pos += FRAME_BYTES
                if len(frame) < FRAME_BYTES:
                    frame = frame + bytes([SILENCE_BYTE]) * (FRAME_BYTES - len(frame))
                if self._active_pos >= len(self._active_audio):
                    self._end_item(t)
            else:
                assert item.started_at is not None
                while (
                    self._dtmf_sent < len(self._active_digits)
                    and t + _EPS >= item.started_at + self._dtmf_sent * DTMF_SPACING_S
                ):
                    digit = self._active_digits[self._dtmf_sent]
                    out.append(self._dtmf_text(digit))
                    self._dtmf_sent += 1
                if self._dtmf_sent >= len(self._active_digits):
                    self._end_item(t)
        out += self._frame_texts(frame)
        # 3. the agent channel: play the next 20 ms of the buffer
        n = min(FRAME_BYTES, len(self._buf))
        if n:
            start_pos = self._played_pos
            self._recording += self._buf[:n]
            del self._buf[:n]
            self._played_pos += n
            self._played_bytes += n
            w = self._watch
            if (
                w.reply_started_at is None
                and t > w.since + _EPS
                and (not self._playing or start_pos + n > w.boundary)
            ):
                w.reply_started_at = t
                if w.item is not None:
                    w.item.reply_started_at = t
        if n < FRAME_BYTES:
            self._recording += bytes([SILENCE_BYTE]) * (FRAME_BYTES - n)
        self._playing = n > 0
        if self.end_silence_s is not None:
            self._quiet_s = 0.0 if n else self._quiet_s + FRAME_MS / 1000
            w = self._watch
            if (
                w.reply_started_at is not None
                and w.reply_finished_at is None
                and self._quiet_s + _EPS >= self.end_silence_s
            ):
                w.reply_finished_at = t
                if w.item is not None:
                    w.item.reply_finished_at = t
        # 4. end of the script
        if self._tail_until is None and self._script_done(t):
            self._tail_until = t + TAIL_S
        return out

    # -- the script ---------------------------------------------------------

    def _schedule(self, t: float) -> None:
        if self._active is not None or self._next_item >= len(self._utts):
            return
        i = self._next_item
        utt = self._utts[i]
        w = self._watch
        start_at: float | None = None
        if utt.play == "after_agent":
            if w.item is None and not self.fixture.script.agent_first:  # first item: gap after connecting
                start_at = utt.gap_ms / 1000
            elif w.reply_finished_at is not None:  # after the agent's reply (agent first: its greeting)
                start_at = w.reply_finished_at + utt.gap_ms / 1000
        elif not utt.expect_turn and w.reply_finished_at is not None:
            # Sound over the agent (an "mm-hm", a cough) with no reply left to talk over: a fault cut
            # the reply short. Played into the silence it would be a caller turn, which the script
            # does not mean; the caller stays quiet, and the next item counts from the reply's end.
            self.result.items[i].skipped = True
            self._next_item += 1
            log.info("fake carrier: item %d (sound over the agent) skipped: the reply had ended", i)
            self._schedule(t)
            return
        else:  # barge_in
            if w.reply_started_at is not None:
                start_at = w.reply_started_at + utt.offset_ms / 1000
        if start_at is None and t + _EPS >= w.deadline:
            what = "end mark" if utt.play == "after_agent" else "reply audio"
            about = f"item {w.item.index}" if w.item is not None else "the call start"
            self.error(f"no agent {what} within {self.agent_wait_s:g}s after {about}; playing item {i}")
            w.timed_out = True
            start_at = t
        if start_at is None or t + _EPS < start_at:
            return
        item = self.result.items[i]
        item.started_at = t
        self._active = i
        self._next_item += 1
        if utt.is_dtmf:
            assert utt.dtmf is not None
            self._active_digits = utt.dtmf
            self._dtmf_sent = 0
        else:
            self._active_audio = self.fixture.utterance_audio(utt)
            self._active_pos = 0
            if not self._active_audio:
                self.error(f"item {i}: empty audio slice")

    def _end_item(self, t: float) -> None:
        assert self._active is not None
        item = self.result.items[self._active]
        item.ended_at = t
        overlap = not self._utts[self._active].expect_turn
        self._active = None
        self._watch = _Watch(item=item, since=t, boundary=self._queued_pos, deadline=t + self.agent_wait_s)
        if overlap and not self._buf and not any(rec.name.endswith(":end") for _, rec in self._pending):
            # A backchannel or cough over the agent gets no reply of its own, and the reply it
            # overlapped has already finished: the next caller item counts its gap from now.
            self._watch.reply_started_at = self._watch.reply_finished_at = t

    def _script_done(self, t: float) -> bool:
        if self._active is not None or self._next_item < len(self._utts):
            return False
        w = self._watch
        if w.reply_finished_at is not None:
            return True
        if t + _EPS >= w.deadline:
            about = f"item {w.item.index}" if w.item is not None else "the call start"
            self.error(f"no agent end mark within {self.agent_wait_s:g}s after {about}; hanging up")
            w.timed_out = True
            return True
        return False

    # -- marks and playback -------------------------------------------------

    def _echo(self, rec: MarkRecord, t: float, out: list[str]) -> None:
        rec.echoed_at = t
        out.append(self._mark_text(rec.name))
        w = self._watch
        if rec.name.endswith(":end") and w.reply_finished_at is None and t > w.since + _EPS:
            w.reply_finished_at = t
            if w.item is not None:
                w.item.reply_finished_at = t

    def _echo_played(self, t: float, out: list[str]) -> None:
        k = 0
        while k < len(self._pending) and self._pending[k][0] <= self._heard_pos:
            self._echo(self._pending[k][1], t, out)
            k += 1
        if k:
            del self._pending[:k]

    def receive(self, text: str | bytes, now: float | None = None) -> list[str]:
        """One message from the runtime at carrier time ``now``; returns the echoes to send."""
        if self.stopped:
            return []
        t = self.now if now is None else min(max(now, self.now), self.now + FRAME_MS / 1000)
        decoded = self._decode(text)
        if decoded is None:
            return []
        kind, value = decoded
        out: list[str] = []
        if kind == "media":
            assert isinstance(value, bytes | bytearray)
            self._buf += value
            self._queued_pos += len(value)
        elif kind == "mark":
            assert isinstance(value, str)
            rec = MarkRecord(name=value, received_at=t)
            self.result.marks.append(rec)
            if not self._pending and self._queued_pos <= self._heard_pos:
                self._echo(rec, t, out)  # nothing queued: at once
            else:
                self._pending.append((self._queued_pos, rec))
        else:  # clear
            self.result.clears.append(t)
            self._buf.clear()
            self._played_pos = self._heard_pos = self._queued_pos
            if self.echo_marks_on_clear:
                for _, rec in self._pending:
                    self._echo(rec, t, out)
            self._pending.clear()
            out += self._clear_ack_texts()
        return out

    # -- bookkeeping --------------------------------------------------------

    def error(self, text: str) -> None:
        errors = self.result.errors
        if len(errors) < MAX_ERRORS:
            errors.append(text)
            if len(errors) <= MAX_LOGGED_ERRORS:
                log.warning("fake carrier %s: %s", self.ids.call_sid, text)
        else:
            self._suppressed_errors += 1

    def server_closed(self, code: int | None, reason: str = "") -> None:
        """The runtime closed the socket (or it was lost) before we sent ``stop``."""
        if self.stopped:
            return
        self.stopped = True
        self.result.closed_by = "server"
        self.result.close_code = code
        if self._tail_until is None:
            self.error(
                f"the server closed the socket (code {code}{', ' + reason if reason else ''}) mid-script"
            )
        self._finish()

    def abort(self, closed_by: str, code: int | None, why: str) -> None:
        """End the call without ``stop`` (a refused upgrade, a runtime that stopped reading)."""
        self.error(why)
        self.stopped = True
        self.result.closed_by = closed_by
        self.result.close_code = code
        self._finish()

    def _finish(self) -> None:
        r = self.result
        r.recorded = bytes(self._recording)
        r.agent_audio_ms = self._played_bytes // 8
        r.duration_s = self.now
        r.completed = all(
            it.skipped
            or (it.ended_at is not None and (it.reply_started_at is not None or not utt.expect_turn))
            for it, utt in zip(r.items, self._utts, strict=True)
        )  # sound over the agent (expect_turn false) gets no reply of its own
        if self._suppressed_errors and not any(e.startswith("... and ") for e in r.errors):
            r.errors.append(f"... and {self._suppressed_errors} more errors")


class FakeTwilioCall(FakeCarrierCall):
    """Twilio's side of one bidirectional Media Stream (docs/reference/telephony.md §1.8): ``connected``,
    ``start`` with string numbers, 160-byte mu-law ``media`` every 20 ms, ``dtmf``, ``mark``
    echoes and ``stop``, all on one shared ``sequenceNumber`` counter."""

    def _open_texts(self) -> list[str]:
        return [connected_text(), start_text(self._next_seq(), self.ids, self.custom_parameters)]

    def _stop_text(self) -> str:
        return stop_text(self._next_seq(), self.ids)

    def _frame_texts(self, frame: bytes) -> list[str]:
        return [media_text(self._next_seq(), self.ids.stream_sid, self._ticks, self._ticks * FRAME_MS, frame)]

    def _dtmf_text(self, digit: str) -> str:
        return dtmf_text(self._next_seq(), self.ids.stream_sid, digit)

    def _mark_text(self, name: str) -> str:
        return mark_text(self._next_seq(), self.ids.stream_sid, name)

    def _decode(self, text: str | bytes) -> tuple[str, object] | None:
        if isinstance(text, bytes):
            self.error("binary websocket frame from the runtime (Twilio takes JSON text frames)")
            return None
        try:
            msg = json.loads(text)
        except ValueError:
            self.error(f"message is not JSON: {text[:80]!r}")
            return None
        if not isinstance(msg, dict):
            self.error(f"message is not a JSON object: {text[:80]!r}")
            return None
        event = msg.get("event")
        if event not in ("media", "mark", "clear"):
            self.error(f"unknown event {event!r} (expected media, mark or clear)")
            return None
        if msg.get("streamSid") != self.ids.stream_sid:
            self.error(f"{event}: streamSid {msg.get('streamSid')!r} is not {self.ids.stream_sid!r}")
            return None
        if event == "media":
            media = msg.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            if not isinstance(payload, str):
                self.error("media: missing media.payload string")
                return None
            try:
                audio = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                self.error("media: payload is not valid base64")
                return None
            if audio[:4] == b"RIFF":
                self.error(
                    "media: payload starts with a RIFF/WAV header (Twilio plays raw mu-law only); dropped"
                )
                return None
            return "media", audio
        if event == "mark":
            mark = msg.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str) or not name:
                self.error("mark: missing mark.name string")
                return None
            return "mark", name
        return "clear", None


# --------------------------------------------------------------------------- asyncio layer


async def dial(
    fixture: Fixture,
    ws_url: str,
    *,
    auth_token: str | None = None,
    public_url: str | None = None,
    speed: float = 1.0,
    record_path: Path | None = None,
    custom_parameters: dict | None = None,
    agent_wait_s: float = 20.0,
    call_sid: str | None = None,
    before_stream: BeforeStream | None = None,
    end_silence_s: float | None = None,
) -> CarrierResult:
    """Dial ``fixture`` into the runtime's Twilio stream endpoint at ``ws_url`` and play it out.

    ``speed`` > 1 runs the carrier clock faster than real time. ``agent_wait_s`` is wall-clock
    time to wait for the agent before moving on (an error note is recorded). A rejected upgrade
    returns a result with ``closed_by="handshake"`` and the HTTP status as ``close_code``.
    ``before_stream``: see :func:`run_fake_call`. ``end_silence_s``: for a bot that sends no marks,
    the carrier seconds of quiet that end its reply.
    """
    if speed <= 0:
        raise ValueError("speed must be > 0")
    ids = make_ids(call_sid)
    call = FakeTwilioCall(
        fixture,
        ids=ids,
        custom_parameters=custom_parameters,
        agent_wait_s=agent_wait_s * speed,
        end_silence_s=end_silence_s,
    )
    headers: dict[str, str] = {}
    if auth_token:
        headers["X-Twilio-Signature"] = upgrade_signature(auth_token, public_url or wss_form(ws_url))
    return await run_fake_call(
        call,
        ws_url,
        headers=headers,
        user_agent=TWILIO_USER_AGENT,
        speed=speed,
        agent_wait_s=agent_wait_s,
        record_path=record_path,
        before_stream=before_stream,
    )


def _send_now(ws: ClientConnection, texts: list[str]) -> bool:
    """Send ``texts`` at once if they are one frame that fits under the transport's high-water mark
    on an open connection: it cannot wait on back-pressure, so it needs neither ``send()``'s
    context nor a timeout. False: nothing was sent, use ``send()``. At hundreds of calls, the
    timer and the context per 20 ms frame were the load generator's largest cost."""
    if ws.paused or len(texts) != 1 or ws.protocol.state is not State.OPEN:
        return False
    transport = ws.transport
    _low, high = transport.get_write_buffer_limits()
    if transport.get_write_buffer_size() + len(texts[0]) + 64 >= high:  # 64: the frame's header
        return False
    ws.protocol.send_text(texts[0].encode())
    for data in ws.protocol.data_to_send():
        transport.write(data)
    return True


async def run_fake_call(
    call: FakeCarrierCall,
    ws_url: str,
    *,
    headers: dict[str, str],
    user_agent: str,
    speed: float = 1.0,
    agent_wait_s: float = 20.0,
    record_path: Path | None = None,
    before_stream: BeforeStream | None = None,
) -> CarrierResult:
    """The asyncio layer for any :class:`FakeCarrierCall`: connect, pace, receive, stop, record.
    ``before_stream(call_sid)`` is awaited before the media stream opens, with the id the runtime
    will know the call by (the replayer tells the STT emulator the call's words with it)."""
    if speed <= 0:
        raise ValueError("speed must be > 0")
    ids = call.ids
    if before_stream is not None:
        await before_stream(ids.call_sid)
    log.info(
        "fake carrier dialling %s into %s (call %s, speed %g)", call.fixture.name, ws_url, ids.call_sid, speed
    )
    try:
        async with connect(
            ws_url,
            additional_headers=headers,
            user_agent_header=user_agent,
            compression=None,
            proxy=None,
            ping_interval=None,
            max_size=1 << 20,
            open_timeout=10,
            close_timeout=2,
        ) as ws:
            send_lock = asyncio.Lock()  # one sequence counter: texts go out in the order they were made
            for text in call.open():
                await ws.send(text)
            t0 = time.monotonic()
            frame_s = FRAME_MS / 1000 / speed

            async def send_all(texts: list[str]) -> None:
                for text in texts:
                    await ws.send(text)

            async def pace() -> None:
                n = 0
                try:
                    while not call.finished:
                        n += 1
                        delay = t0 + n * frame_s - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        else:  # late: send the frames that are due, no more, and let the receiver run
                            call.result.max_lag_ms = max(call.result.max_lag_ms, -delay * 1000)
                            await asyncio.sleep(0)
                        async with send_lock:
                            if call.stopped:
                                return
                            texts = call.tick()
                            try:
                                if not _send_now(ws, texts):
                                    # a runtime that stops reading blocks send() on back-pressure:
                                    # never hang
                                    async with asyncio.timeout(agent_wait_s):
                                        await send_all(texts)
                            except TimeoutError:
                                call.abort(
                                    "carrier", None, f"the runtime stopped reading for {agent_wait_s:g}s"
                                )
                                ws.transport.abort()
                                return
                    await asyncio.sleep(0)  # let echoes received during the last frame be handled
                    async with send_lock:
                        if call.stopped:
                            return
                        stop = call.stop()
                        if stop is not None:  # Plivo has no stop message: closing says it
                            await ws.send(stop)
                        call.result.closed_by = "carrier"
                    await ws.close(1000)
                    call.result.close_code = ws.close_code
                except ConnectionClosed:
                    pass  # the receiver saw it too and records it

            async def receive(pacer: asyncio.Task[None]) -> None:
                try:
                    async for raw in ws:
                        now = (time.monotonic() - t0) * speed
                        async with send_lock:
                            echoes = call.receive(raw, now)
                            if echoes:
                                await send_all(echoes)
                except ConnectionClosed:
                    pass
                if not call.stopped:
                    call.server_closed(ws.close_code, ws.close_reason or "")
                    pacer.cancel()

            async with asyncio.TaskGroup() as tg:
                pacer = tg.create_task(pace())
                tg.create_task(receive(pacer))
    except InvalidStatus as exc:
        status = exc.response.status_code
        call.abort("handshake", status, f"the runtime rejected the websocket upgrade with HTTP {status}")
    result = call.result
    if record_path is not None:
        write_ulaw_wav(Path(record_path), result.recorded)
    log.info(
        "fake carrier call %s ended: closed_by=%s code=%s completed=%s errors=%d",
        ids.call_sid,
        result.closed_by,
        result.close_code,
        result.completed,
        len(result.errors),
    )
    return result
