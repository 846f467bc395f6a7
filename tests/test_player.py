"""The player's slicing (agent/player.py): a reply goes out in ``slice_ms`` pieces, every byte once,
in order. Pacing, marks and clear across a real carrier socket: tests/test_twilio_app.py and the
call tests."""

from __future__ import annotations

import asyncio

from voxroute.agent.player import Player
from voxroute.audio import PCM16_8K


class Link:
    audio_format = PCM16_8K

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.marks: list[str] = []
        self.marked = asyncio.Event()

    async def send_audio(self, pcm: bytes) -> None:
        self.sent.append(pcm)

    async def send_mark(self, name: str) -> None:
        self.marks.append(name)
        self.marked.set()


async def test_a_reply_goes_out_in_slices_every_byte_once_in_order() -> None:
    link = Link()
    first: list[tuple[object, str]] = []
    player = Player(
        link, lambda owner, source, _t: first.append((owner, source)), lead_ms=10_000, slice_ms=60
    )  # type: ignore[arg-type]
    reply = bytes(range(256)) * 9  # 2304 bytes: two 960-byte slices and 384 left
    owner = object()
    player.play(reply, owner, "answer")
    player.mark("m1")
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(player.run())
        async with asyncio.timeout(5):
            await link.marked.wait()  # the mark follows the reply: every slice went before it
        runner.cancel()
    assert [len(p) for p in link.sent] == [960, 960, 384]
    assert b"".join(link.sent) == reply
    assert link.marks == ["m1"]
    assert first == [(owner, "answer")]  # the first send of the reply is reported once
