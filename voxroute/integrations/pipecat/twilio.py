"""Twilio Media Streams for Pipecat, with marks, so that the context keeps only what the caller heard.

Pipecat's own Twilio serializer sends no marks: it cannot know what the caller heard, and it
sends audio ahead of real time, so when the caller talks over the bot its context holds text
that was still in Twilio's buffer when ``clear`` threw it away. Here:

- :class:`TwilioMarkSerializer` speaks the protocol through voxroute's sans-I/O codec
  (:class:`voxroute.telephony.twilio.TwilioStream`: the same parsing, re-framing and checks as voxroute's
  own Twilio route). A mark echoed by Twilio comes into the pipeline as a :class:`MarkEchoFrame`.
- :class:`HeardTextProcessor`, placed between ``transport.output()`` and the assistant context
  aggregator, asks for a mark after each spoken chunk (each ``TTSTextFrame``: the transport has
  just sent that chunk's audio) and holds the chunk's text until Twilio echoes the mark, which
  it does when the audio has played. When an interruption clears the buffer, the text whose mark
  had not come back is dropped, and what was heard goes to the context followed by voxroute's
  ``[interrupted by the caller]``, as in voxroute's own calls. ``interruptions`` reports each one.
  After a response's last audio it asks for a mark named ``"reply-<n>:end"``, as voxroute's player
  ends a turn with ``"<turn>:end"``: its echo says the whole reply played (the fake carrier's
  caller speaks again then).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    AudioRawFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesTransformFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    SystemFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer

from voxroute.agent.player import MarkLedger
from voxroute.agent.session import INTERRUPTED_MARK
from voxroute.telephony.mediastream import Audio, Dtmf, MarkPlayed
from voxroute.telephony.twilio import TwilioProtocolError, TwilioStream

log = logging.getLogger("voxroute.pipecat")

TWILIO_RATE = 8000
MARK_KEY = "voxroute_mark"  # a transport message {MARK_KEY: name} becomes a Twilio mark


@dataclass
class MarkEchoFrame(SystemFrame):
    """Twilio echoed mark ``name``: the audio sent before it has played (or a ``clear`` dropped it)."""

    mark: str = ""


class TwilioMarkSerializer(FrameSerializer):
    """Twilio Media Streams through voxroute's codec. ``stream``: the codec, already fed the stream's
    ``connected`` and ``start`` messages (see :meth:`accept`), which carry the ids every reply needs."""

    def __init__(self, stream: TwilioStream, **kwargs) -> None:
        super().__init__(**kwargs)
        if stream.start is None:
            raise ValueError("TwilioMarkSerializer needs a stream that has started (feed it 'start')")
        self.stream = stream
        self._sample_rate = TWILIO_RATE
        self._in_resampler = create_stream_resampler()
        self._out_resampler = create_stream_resampler()

    @classmethod
    async def accept(cls, websocket) -> TwilioMarkSerializer:
        """Read a FastAPI/Starlette websocket's first messages up to ``start``; the serializer for it."""
        stream = TwilioStream()
        while stream.start is None:
            stream.feed(await websocket.receive_text())
        return cls(stream)

    @property
    def stream_sid(self) -> str:
        return self.stream.stream_sid or ""

    @property
    def call_sid(self) -> str:
        return self.stream.start.call_id if self.stream.start else ""

    async def setup(self, setup: FrameProcessorSetup) -> None:
        self._sample_rate = setup.audio_in_sample_rate or TWILIO_RATE

    async def serialize(self, frame: Frame) -> str | None:
        if isinstance(frame, InterruptionFrame):
            (clear,) = self.stream.clear()
            return clear
        if isinstance(frame, AudioRawFrame):
            pcm = frame.audio
            if frame.sample_rate != TWILIO_RATE:
                pcm = await self._out_resampler.resample(pcm, frame.sample_rate, TWILIO_RATE)
            return self.stream.media(pcm)[0] if pcm else None  # Twilio: one message
        if isinstance(frame, OutputTransportMessageFrame | OutputTransportMessageUrgentFrame):
            message = frame.message
            if isinstance(message, dict) and isinstance(message.get(MARK_KEY), str):
                (mark,) = self.stream.mark(message[MARK_KEY])
                return mark
            if self.should_ignore_frame(frame):
                return None
            return json.dumps(message)
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        try:
            events = self.stream.feed(data)
        except TwilioProtocolError as exc:
            log.warning("twilio stream %s: bad message ignored: %s", self.stream_sid, exc)
            return None
        pcm = b"".join(e.pcm for e in events if isinstance(e, Audio))  # the inbound track's
        for event in events:
            if isinstance(event, MarkPlayed):
                return MarkEchoFrame(mark=event.name)
            if isinstance(event, Dtmf):
                try:
                    return InputDTMFFrame(KeypadEntry(event.digit))
                except ValueError:
                    return None  # A-D: no Pipecat keypad entry
        if not pcm:
            return None
        if self._sample_rate != TWILIO_RATE:
            pcm = await self._in_resampler.resample(pcm, TWILIO_RATE, self._sample_rate)
        return InputAudioRawFrame(audio=pcm, sample_rate=self._sample_rate, num_channels=1)

    def heard_text_processor(self, **kwargs) -> HeardTextProcessor:
        """The processor to put between ``transport.output()`` and the assistant context aggregator."""
        return HeardTextProcessor(**kwargs)


class HeardTextProcessor(FrameProcessor):
    """Holds each spoken chunk's text until Twilio's mark echo proves the caller heard it.

    Goes right after ``transport.output()`` (whose serializer is a :class:`TwilioMarkSerializer`),
    before the assistant context aggregator. Audio and system frames pass at once; the context's
    frames (text, the response's end) wait behind a chunk whose mark has not come back."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._held: list[tuple[str | None, Frame]] = []  # (mark name of a chunk's text, frame) in order
        self._marks = MarkLedger()  # voxroute's player's bookkeeping: sent, flushed by a clear
        self._count = 0
        self._replies = 0
        self._in_response = False  # a response started and neither ended nor interrupted
        self._heard_in_response: list[str] = []
        self.heard: list[str] = []  # every chunk the caller heard, in order
        self.interruptions: list[dict[str, Any]] = []  # {"heard": text, "dropped": text} per clear
        self._register_event_handler("on_chunk_sent")  # (processor, text): its audio went out, a mark follows
        self._register_event_handler("on_chunk_heard")  # (processor, text): its mark came back
        self._register_event_handler("on_interrupted")  # (processor, {"heard", "dropped"})

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction != FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
        elif isinstance(frame, MarkEchoFrame):
            await self._echoed(frame.mark)
        elif isinstance(frame, InterruptionFrame):
            self._in_response = False  # cut: no end mark for it
            heard = await self._interrupted()
            await self.push_frame(frame, direction)
            if heard:
                await self._mark_interrupted(" ".join(heard.split()))
        elif isinstance(frame, EndFrame | CancelFrame):
            self._held = [(name, f) for name, f in self._held if name is None]  # unheard: never said
            await self._release()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSTextFrame) and frame.append_to_context and frame.text.strip():
            self._count += 1
            name = f"heard-{self._count}"
            self._held.append((name, frame))
            await self._send_mark(name)
            await self._call_event_handler("on_chunk_sent", frame.text)
        else:
            if isinstance(frame, LLMFullResponseStartFrame):
                self._in_response = True
            elif isinstance(frame, LLMFullResponseEndFrame) and self._in_response:
                # The output transport passes the response's end after its last audio went out.
                self._in_response = False
                self._replies += 1
                await self._send_mark(f"reply-{self._replies}:end")
            await self._pass_or_hold(frame, direction)

    async def _pass_or_hold(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, SystemFrame | AudioRawFrame) or not self._held:
            self._note(frame)
            await self.push_frame(frame, direction)
        else:
            self._held.append((None, frame))

    async def _send_mark(self, name: str) -> None:
        self._marks.sent(name)
        # Upstream to the output transport, which sends urgent messages at once: right after the
        # audio it had sent before the frame that asked for the mark.
        await self.push_frame(
            OutputTransportMessageUrgentFrame(message={MARK_KEY: name}), FrameDirection.UPSTREAM
        )

    def _note(self, frame: Frame) -> None:
        if isinstance(frame, LLMFullResponseStartFrame | LLMFullResponseEndFrame):
            self._heard_in_response = []

    async def _echoed(self, name: str) -> None:
        if not self._marks.echoed(name):
            return  # a clear flushed it: its chunk was not heard
        if not any(n == name for n, _ in self._held):
            return  # an end mark, or not ours
        # Marks come back in order: this one and every chunk before it played.
        upto = next(i for i, (n, _) in enumerate(self._held) if n == name)
        for i, (n, f) in enumerate(self._held[: upto + 1]):
            if n is not None:
                self._held[i] = (None, f)
        await self._release()

    async def _release(self) -> None:
        """Pass on the held frames up to the first chunk whose mark is still out."""
        while self._held and self._held[0][0] is None:
            _, frame = self._held.pop(0)
            if isinstance(frame, TTSTextFrame):
                self.heard.append(frame.text)
                self._heard_in_response.append(frame.text)
                await self._call_event_handler("on_chunk_heard", frame.text)
            self._note(frame)
            await self.push_frame(frame)

    async def _interrupted(self) -> str:
        """A clear is about to empty Twilio's buffer: chunks whose marks are out were not heard."""
        self._marks.cleared()
        dropped = [f.text for n, f in self._held if n is not None and isinstance(f, TTSTextFrame)]
        # The context's other frames behind them (the response's end) belong to the cut response.
        self._held = []
        heard = " ".join(t.strip() for t in self._heard_in_response)
        if dropped or heard:
            report = {"heard": heard, "dropped": " ".join(t.strip() for t in dropped)}
            self.interruptions.append(report)
            log.info("interrupted: the caller heard %r; dropped %d chunk(s) not heard", heard, len(dropped))
            await self._call_event_handler("on_interrupted", report)
        self._heard_in_response = []
        return heard

    async def _mark_interrupted(self, heard: str) -> None:
        """After the interruption, the context aggregator has written what it got (the heard chunks)
        as the assistant's message: end it with voxroute's mark, as voxroute's own history does. A
        data frame behind the interruption reaches the aggregator after it has written."""

        def transform(messages: list) -> list:
            out = list(messages)
            for i in range(len(out) - 1, -1, -1):
                m = out[i]
                if isinstance(m, dict) and m.get("role") == "assistant":
                    if isinstance(m.get("content"), str) and " ".join(m["content"].split()) == heard:
                        out[i] = {**m, "content": f"{heard} {INTERRUPTED_MARK}"}
                    break
            return out

        await self.push_frame(LLMMessagesTransformFrame(transform=transform))
