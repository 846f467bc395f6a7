"""The STT feed's batched sends (agent/sttfeed.py) through the Sarvam client, over a real socket on
127.0.0.1 to a server that records what arrives (the wire the provider would see)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection, serve

from voxroute.agent.config import SarvamConfig
from voxroute.agent.providers.sarvam import SarvamSTT
from voxroute.agent.sttfeed import STTFeed
from voxroute.agent.timeline import Clock
from voxroute.audio import ulaw_to_pcm16

FRAME_ULAW = 160
NO_STALL = 600_000  # ms: tests of the batching by frames, which a stall must not cut short on a slow machine


class Recorder:
    """What a websocket server on port 0 received: every JSON message, in order."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.flushed = asyncio.Event()
        self._arrived = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            self.received.append(msg)
            self._arrived.set()
            if msg.get("event") == "flush":
                self.flushed.set()

    async def wait_for(self, predicate, timeout_s: float = 5.0) -> None:  # noqa: ANN001
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def recorder() -> AsyncIterator[tuple[str, Recorder]]:
    rec = Recorder()
    async with serve(rec.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}", rec


def frame(i: int) -> tuple[bytes, bytes]:
    ulaw = bytes([i % 256]) * FRAME_ULAW
    return ulaw_to_pcm16(ulaw), ulaw


def audio_inputs(received: list[dict]) -> list[bytes]:
    return [base64.b64decode(m["audio"]) for m in received if m.get("event") == "audio_input"]


async def test_frames_go_out_in_batches_and_flush_sends_the_rest_first() -> None:
    async with recorder() as (url, rec):
        received = rec.received
        faults: list = []
        feed = STTFeed(
            SarvamSTT("k", url), "en-IN", "t", Clock(), lambda _t: asyncio.sleep(0),
            lambda exc, _w: faults.append(exc), batch_ms=60, stall_ms=NO_STALL,
        )  # fmt: skip
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(feed.run())
            frames = [frame(i) for i in range(7)]
            for pcm, ulaw in frames:
                feed.push(pcm, ulaw)
            # two whole batches of three frames go; the seventh waits for its batch
            await rec.wait_for(lambda: len(audio_inputs(received)) == 2)
            await asyncio.sleep(0.05)
            assert [len(a) for a in audio_inputs(received)] == [3 * FRAME_ULAW, 3 * FRAME_ULAW]
            await feed.flush()  # the endpointer committed: the partial batch goes first, then flush
            await asyncio.wait_for(rec.flushed.wait(), 5)
            runner.cancel()
        await feed.aclose()
    sent = audio_inputs(received)
    assert [len(a) for a in sent] == [3 * FRAME_ULAW, 3 * FRAME_ULAW, FRAME_ULAW]
    assert b"".join(sent) == b"".join(u for _p, u in frames)  # every frame once, in order
    assert received[-1] == {"event": "flush"}
    assert faults == []


async def test_one_frame_batches_send_each_frame() -> None:
    async with recorder() as (url, rec):
        received = rec.received
        feed = STTFeed(
            SarvamSTT("k", url), "en-IN", "t", Clock(), lambda _t: asyncio.sleep(0),
            lambda exc, _w: None, batch_ms=20,
        )  # fmt: skip
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(feed.run())
            for i in range(4):
                feed.push(*frame(i))
            await rec.wait_for(lambda: len(audio_inputs(received)) == 4)
            runner.cancel()
        await feed.aclose()
    assert [a[0] for a in audio_inputs(received)] == [0, 1, 2, 3]


@pytest.mark.parametrize("batch_ms", [0, 10, 30, 120])
def test_batch_outside_20_to_100_ms_in_frames_is_refused(batch_ms: int) -> None:
    with pytest.raises(ValidationError, match="stt_batch_ms"):
        SarvamConfig(stt_batch_ms=batch_ms)
    with pytest.raises(ValueError, match="batch_ms"):
        STTFeed(SarvamSTT("k"), "en-IN", "t", Clock(), None, None, batch_ms=batch_ms)  # type: ignore[arg-type]


async def test_a_dropped_socket_replays_only_the_audio_after_the_last_final() -> None:
    """The first connection gets frames 0-5, sends a final after the fourth and drops; the feed
    reconnects and sends frames 4 on (not finalised), not 0-3 again."""
    connections: list[list[bytes]] = []
    got_final = asyncio.Event()
    dropped = asyncio.Event()
    replayed = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        audio: list[bytes] = []
        connections.append(audio)
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("event") != "audio_input":
                continue
            audio.append(base64.b64decode(msg["audio"]))
            if len(connections) == 2 and len(audio) == 4:
                replayed.set()
            if len(connections) == 1 and len(audio) == 4:
                await ws.send(json.dumps({"event": "transcript.final", "utterance_idx": 0, "text": "hello"}))
            if len(connections) == 1 and len(audio) == 6:
                await got_final.wait()
                dropped.set()
                return  # the socket closes: the feed reconnects

    finals: list[str] = []

    async def on_transcript(t) -> None:  # noqa: ANN001
        finals.append(t.text)
        got_final.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        feed = STTFeed(
            SarvamSTT("k", url), "en-IN", "t", Clock(), on_transcript, lambda e, w: None, batch_ms=20
        )
        frames = [frame(i) for i in range(8)]
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(feed.run())
            for pcm, ulaw in frames[:4]:
                feed.push(pcm, ulaw)
            await asyncio.wait_for(got_final.wait(), 5)
            for pcm, ulaw in frames[4:6]:
                feed.push(pcm, ulaw)
            await asyncio.wait_for(dropped.wait(), 5)
            for pcm, ulaw in frames[6:]:
                feed.push(pcm, ulaw)
            await asyncio.wait_for(replayed.wait(), 5)
            runner.cancel()
        await feed.aclose()
    assert finals == ["hello"]
    assert [a[0] for a in connections[0]] == [0, 1, 2, 3, 4, 5]
    assert [a[0] for a in connections[1]] == [4, 5, 6, 7]  # the replay starts after the final


async def test_when_speech_stops_frames_go_one_by_one_for_the_hurry_then_batch_again() -> None:
    """Batching must not delay the silence that ends an utterance: after a voiced frame, the next
    ``hurry_ms`` of unvoiced frames go as they arrive; speech and long silences go in batches."""
    async with recorder() as (url, rec):
        received = rec.received
        feed = STTFeed(
            SarvamSTT("k", url), "en-IN", "t", Clock(), lambda _t: asyncio.sleep(0),
            lambda exc, _w: None, batch_ms=100, hurry_ms=60, stall_ms=NO_STALL,
        )  # fmt: skip
        sizes = lambda: [len(a) // FRAME_ULAW for a in audio_inputs(received)]  # noqa: E731

        async def push(i: int, voiced: bool, then: list[int]) -> None:
            feed.push(*frame(i), voiced)
            if then != sizes():
                await rec.wait_for(lambda: sizes() == then)

        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(feed.run())
            for i in range(4):
                await push(i, False, [])  # silence before the caller speaks: batched
            await push(4, True, [5])  # the fifth frame completes a batch
            for i in range(5, 9):
                await push(i, True, [5])  # speech: batched
            await push(9, False, [5, 5])  # speech stopped; the batch was already whole
            await push(10, False, [5, 5, 1])  # the hurry (three frames, 60 ms): each at once
            await push(11, False, [5, 5, 1, 1])
            for i in range(12, 16):
                await push(i, False, [5, 5, 1, 1])  # past the hurry: batched again
            await asyncio.sleep(0.05)
            assert sizes() == [5, 5, 1, 1]
            await push(16, False, [5, 5, 1, 1, 5])
            await push(17, True, [5, 5, 1, 1, 5])
            await push(18, False, [5, 5, 1, 1, 5, 2])  # stopped again: what the batch held goes at once
            runner.cancel()
        await feed.aclose()
    assert b"".join(audio_inputs(received)) == b"".join(frame(i)[1] for i in range(19))


async def test_when_the_frames_stop_what_a_batch_holds_goes_without_a_flush() -> None:
    """A phone with silence suppression sends nothing after the caller's words: the tail of the
    utterance that a batch was gathering goes once no frame has come for ``stall_ms``, without
    waiting for frames that never come (or for our endpointer's flush)."""
    async with recorder() as (url, rec):
        received = rec.received
        feed = STTFeed(
            SarvamSTT("k", url), "en-IN", "t", Clock(), lambda _t: asyncio.sleep(0),
            lambda exc, _w: None, batch_ms=100, stall_ms=40,
        )  # fmt: skip
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(feed.run())
            for i in range(5):
                feed.push(*frame(i), True)
            await rec.wait_for(lambda: len(audio_inputs(received)) == 1)  # a whole batch
            for i in range(5, 7):
                feed.push(*frame(i), True)  # more speech, then the phone stops sending
            await rec.wait_for(lambda: sum(len(a) for a in audio_inputs(received)) == 7 * FRAME_ULAW)
            runner.cancel()
        await feed.aclose()
    sent = audio_inputs(received)
    assert [len(a) // FRAME_ULAW for a in sent] == [5, 2]  # the whole batch, then the held tail
    assert not any(m.get("event") == "flush" for m in received)
    assert b"".join(sent) == b"".join(frame(i)[1] for i in range(7))
