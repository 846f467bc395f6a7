"""What a carrier transport hands the core: the one seam between ``telephony`` and ``agent``.

A transport (Twilio websocket today; Exotel, Plivo, SIP later) turns its carrier's protocol into
these events and implements :class:`CarrierLink`. ``CallSession`` never knows which carrier it is.
Audio in is 20 ms PCM16 at 8 kHz (320 bytes): whatever packet size a carrier sends (RTP at
10-60 ms, 100 ms Exotel chunks, a stray odd byte), its link re-frames it with
``voxroute.audio.InboundFramer`` so that every :class:`InboundAudio` is exactly one 20 ms frame,
delivered when the packet that completes it arrives. Audio out is in the link's own
:attr:`CarrierLink.audio_format` (mu-law for Twilio, A-law for a PCMA SIP call, ...): the session
asks the TTS for that format, so the bytes the TTS made are the bytes the carrier plays.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from voxroute.audio import WireFormat


@dataclass(frozen=True, slots=True)
class CallStart:
    call_sid: str
    stream_sid: str
    tenant: str = "default"
    from_number: str | None = None
    to_number: str | None = None
    language: str | None = None  # the caller's expected language, when the call set-up says
    carrier: str = "twilio"  # which transport carried the call (call log and reports)
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InboundAudio:
    pcm: bytes  # exactly 20 ms PCM16 8 kHz (320 bytes)
    timestamp_ms: int | None = None  # carrier media time of the frame's first sample, when it gives one
    ulaw: bytes | None = None  # the carrier's own mu-law bytes, when it sends mu-law (saves a re-encode)


@dataclass(frozen=True, slots=True)
class InboundDtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class MarkEcho:
    name: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    reason: str = "stop"  # "stop" (carrier said so), "closed" (socket closed), "error"


CarrierEvent = InboundAudio | InboundDtmf | MarkEcho | CallEnded


class CarrierLink(Protocol):
    """One live call on a carrier. ``events()`` yields CallEnded last and then stops."""

    @property
    def start(self) -> CallStart:
        """How the call began (read only: a wrapper may hand out its inner link's)."""
        ...

    @property
    def audio_format(self) -> WireFormat:
        """What ``send_audio`` takes: the carrier's encoding and rate on the wire (known once the
        call has started, and fixed for the call)."""
        ...

    def events(self) -> AsyncIterator[CarrierEvent]: ...

    async def send_audio(self, data: bytes) -> None:
        """Queue audio for the caller, in :attr:`audio_format` (whole samples)."""

    async def send_mark(self, name: str) -> None:
        """Ask the carrier to echo ``name`` once everything queued before it has played."""

    async def clear(self) -> None:
        """Drop everything queued but not yet played (barge-in); pending marks echo at once."""

    async def hangup(self) -> None:
        """End the call from our side."""
