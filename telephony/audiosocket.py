"""Asterisk AudioSocket (docs/reference/telephony.md §3.1): a TCP server, one call per connection.

Asterisk is the client: ``Answer()`` then ``AudioSocket(<uuid>,<host:port>)`` in the dialplan.
Every message is 1 type byte, a 2-byte big-endian length and the payload:

- ``0x01`` UUID (16 bytes), always first; ``0x10`` signed-linear 16-bit LE mono 8 kHz audio
  (20 ms = 320 bytes), both ways; ``0x11``-``0x18`` the same at 12/16/24/.../192 kHz (newer
  Asterisk; we take 16 and 24 kHz, resampled, and answer in the caller's format);
  ``0x03`` one DTMF digit; ``0x00`` hang up; ``0xff`` an error code.
- Asterisk sends audio only while RTP flows and closes the socket on hang-up (no ``0x00``);
  we pace our audio with our own 20 ms clock. There are no marks: like RTP, a mark echoes once
  the audio queued before it has been sent.

:class:`AudioSocketParser` and the ``*_frame`` builders are sans-I/O; :class:`AudioSocketLink`
is the call as ``voxroute.agent.link.CarrierLink``; :func:`serve_audiosocket` runs the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from voxroute.agent.link import (
    CallEnded,
    CallStart,
    CarrierEvent,
    CarrierLink,
    InboundAudio,
    InboundDtmf,
    MarkEcho,
)
from voxroute.audio import PCM16_8K, InboundFramer, StreamResampler, WireFormat
from voxroute.telephony.sip.rtp import Playout

log = logging.getLogger(__name__)

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_SLIN = 0x10
KIND_ERROR = 0xFF
SLIN_RATES = {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100, 0x16: 48000,
              0x17: 96000, 0x18: 192000}  # fmt: skip
RESAMPLED = (8000, 16000, 24000)  # rates we take (telephony.audio.StreamResampler)
ERRORS = {0x01: "hangup", 0x02: "frame forwarding", 0x04: "memory"}
MAX_PAYLOAD = 0xFFFF
FRAME_S = 0.020
UUID_TIMEOUT_S = 5.0

OnCall = Callable[[CarrierLink], Awaitable[None]]


class AudioSocketError(ValueError):
    """A stream that does not follow the AudioSocket framing."""


@dataclass(frozen=True, slots=True)
class Message:
    kind: int
    payload: bytes


class AudioSocketParser:
    """Bytes from the socket -> messages (partial messages wait for more bytes)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.seen_uuid = False

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= 3:
            kind = self._buf[0]
            length = struct.unpack_from("!H", self._buf, 1)[0]
            if len(self._buf) < 3 + length:
                break
            payload = bytes(self._buf[3 : 3 + length])
            del self._buf[: 3 + length]
            if not self.seen_uuid:
                if kind != KIND_UUID or length != 16:
                    raise AudioSocketError(f"first message must be a 16-byte UUID, got type {kind:#04x}")
                self.seen_uuid = True
            elif kind in SLIN_RATES:
                if length == 0:
                    raise AudioSocketError("empty audio payload")
                # any other length: the link re-frames it (a stray odd byte is dropped there)
            elif kind == KIND_DTMF:
                if length != 1:
                    raise AudioSocketError(f"DTMF payload of {length} bytes")
            elif kind not in (KIND_HANGUP, KIND_ERROR, KIND_UUID):
                raise AudioSocketError(f"unknown message type {kind:#04x}")
            out.append(Message(kind, payload))
        return out


def frame(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload over 65535 bytes")
    return struct.pack("!BH", kind, len(payload)) + payload


def audio_frame(pcm: bytes, kind: int = KIND_SLIN) -> bytes:
    return frame(kind, pcm)


def hangup_frame() -> bytes:
    return frame(KIND_HANGUP)


def uuid_frame(call_uuid: uuid.UUID) -> bytes:
    return frame(KIND_UUID, call_uuid.bytes)


def dtmf_frame(digit: str) -> bytes:
    return frame(KIND_DTMF, digit.encode("ascii"))


class _Events:
    def __init__(self, link: AudioSocketLink) -> None:
        self._link = link

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> CarrierEvent:
        if self._link._ended_delivered:
            raise StopAsyncIteration
        event = await self._link._events.get()
        if isinstance(event, CallEnded):
            self._link._ended_delivered = True
        return event


class AudioSocketLink:
    """One AudioSocket connection as a ``CarrierLink``. Its ``audio_format`` is PCM16 8 kHz, fixed
    when the call starts, before Asterisk's first audio shows its rate: when that is 16 or 24 kHz,
    our 8 kHz is resampled up to it on the way out."""

    start: CallStart
    audio_format: WireFormat = PCM16_8K

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: AudioSocketParser,
                 call_uuid: uuid.UUID, tenant: str) -> None:  # fmt: skip
        self._reader = reader
        self._writer = writer
        self._parser = parser
        self.uuid = call_uuid
        self.start = CallStart(
            call_sid="AS" + call_uuid.hex,
            stream_sid=str(call_uuid),
            tenant=tenant,
            carrier="audiosocket",
            parameters={"uuid": str(call_uuid)},
        )
        self.playout = Playout()
        self._events: asyncio.Queue[CarrierEvent] = asyncio.Queue()
        self._ended_delivered = False
        self.ended = False
        self._kind = KIND_SLIN  # we answer in the format the caller sends
        self._rate = 8000
        self._framer = InboundFramer("l16le", 8000)  # any payload size -> 20 ms frames
        self._up: StreamResampler | None = None
        self._sent_ahead = False  # send_audio sent the frame of the next tick already
        self.frames_out = 0

    def events(self) -> _Events:
        return _Events(self)

    async def send_audio(self, pcm: bytes) -> None:
        if pcm and not self.ended:
            starting = self.playout.queued_bytes == 0 and not self._sent_ahead
            self.playout.push(pcm)
            if starting:
                # A talk spurt's first frame goes out now, not at the next tick (up to 20 ms on),
                # so the session's first_audio_out is what Asterisk sees; that tick is skipped.
                self._send_next()
                self._sent_ahead = True

    async def send_mark(self, name: str) -> None:
        for echoed in self.playout.mark(name):
            self._events.put_nowait(MarkEcho(echoed))

    async def clear(self) -> None:
        for echoed in self.playout.clear():
            self._events.put_nowait(MarkEcho(echoed))

    async def hangup(self) -> None:
        if not self.ended:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(hangup_frame())
                await self._writer.drain()
            self._end("closed")

    def _end(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self._events.put_nowait(CallEnded(reason))

    def _on_audio(self, kind: int, pcm: bytes) -> None:
        rate = SLIN_RATES[kind]
        if kind != self._kind:
            if rate not in RESAMPLED:
                raise AudioSocketError(f"audio at {rate} Hz is not supported (8, 16 or 24 kHz)")
            self._kind, self._rate = kind, rate
            self._framer = InboundFramer("l16le", rate)
            self._up = StreamResampler(8000, rate) if rate != 8000 else None
        for frame, _, _ in self._framer.push(pcm):
            self._events.put_nowait(InboundAudio(frame))

    async def read_loop(self) -> None:
        """Socket -> events until Asterisk hangs up or closes."""
        try:
            while not self.ended:
                data = await self._reader.read(4096)
                if not data:
                    self._end("stop")  # Asterisk closes the socket when the caller hangs up
                    return
                for msg in self._parser.feed(data):
                    if msg.kind in SLIN_RATES:
                        self._on_audio(msg.kind, msg.payload)
                    elif msg.kind == KIND_DTMF:
                        self._events.put_nowait(InboundDtmf(msg.payload.decode("ascii", "replace")))
                    elif msg.kind == KIND_HANGUP:
                        self._end("stop")
                        return
                    elif msg.kind == KIND_ERROR:
                        code = msg.payload[0] if msg.payload else 0
                        log.warning("call %s: Asterisk error %s", self.start.call_sid, ERRORS.get(code, code))
                        self._end("error" if code != 0x01 else "stop")
                        return
        except AudioSocketError as exc:
            log.warning("call %s: AudioSocket protocol error, closing: %s", self.start.call_sid, exc)
            self._end("error")
        except (ConnectionError, OSError):
            self._end("closed")

    async def send_loop(self) -> None:
        """One 20 ms frame per tick on an absolute schedule, while there is audio to play."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.ended:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > 5 * FRAME_S:
                next_at = loop.time()
            next_at += FRAME_S
            if self._sent_ahead:  # send_audio sent this tick's frame already
                self._sent_ahead = False
                continue
            self._send_next()

    def _send_next(self) -> None:
        pcm, echoed = self.playout.next_frame()
        if pcm is not None and not self.ended:
            if self._up is not None:
                pcm = self._up.process(pcm)
            try:
                self._writer.write(audio_frame(pcm, self._kind))
            except (OSError, RuntimeError):
                self._end("closed")
                return
            self.frames_out += 1
        for name in echoed:
            self._events.put_nowait(MarkEcho(name))


@contextlib.asynccontextmanager
async def serve_audiosocket(
    on_call: OnCall, host: str = "127.0.0.1", port: int = 9092, *, default_tenant: str = "default"
) -> AsyncIterator[tuple[str, int]]:
    """Accept AudioSocket connections on ``host:port`` (0: a free port); yields the bound address."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        parser = AudioSocketParser()
        try:
            async with asyncio.timeout(UUID_TIMEOUT_S):
                first = await reader.readexactly(19)
            (msg,) = parser.feed(first)
            call_uuid = uuid.UUID(bytes=msg.payload)
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            AudioSocketError,
            ValueError,
            ConnectionError,
        ) as exc:
            log.warning(
                "AudioSocket from %s: no valid UUID first (%s); closing", peer, exc or type(exc).__name__
            )
            writer.close()
            return
        link = AudioSocketLink(reader, writer, parser, call_uuid, default_tenant)
        log.info("AudioSocket call %s from %s", link.start.call_sid, peer)
        try:
            async with asyncio.TaskGroup() as tg:
                reading = tg.create_task(link.read_loop())
                sending = tg.create_task(link.send_loop())
                try:
                    await on_call(link)
                except Exception:
                    log.exception("call %s: on_call failed", link.start.call_sid)
                finally:
                    await link.hangup()
                    reading.cancel()
                    sending.cancel()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
            log.info("AudioSocket call %s ended (%d frames sent)", link.start.call_sid, link.frames_out)

    async with asyncio.TaskGroup() as tg:
        calls: set[asyncio.Task] = set()

        def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = tg.create_task(handle(reader, writer))
            calls.add(task)
            task.add_done_callback(calls.discard)

        server = await asyncio.start_server(track, host, port)
        bound = server.sockets[0].getsockname()[:2]
        log.info("AudioSocket listening on tcp %s:%s", *bound)
        try:
            yield bound[0], bound[1]
        finally:
            server.close()
            for task in list(calls):
                task.cancel()
