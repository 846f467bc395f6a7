"""A turn waits for its end mark (``Player.played``, agent/player.py): the echo ends the wait, a
flushed echo too (a barge-in cleared the audio), and a lost one only after what was queued should
have played plus the slack. A real ``Player`` strand over a link that records the marks it sends."""

from __future__ import annotations

import asyncio

from voxroute.agent.player import Player
from voxroute.audio import PCM16_8K


class Link:
    audio_format = PCM16_8K

    def __init__(self) -> None:
        self.marks: list[str] = []
        self.clears = 0
        self.marked = asyncio.Event()

    async def send_audio(self, pcm: bytes) -> None:
        pass

    async def send_mark(self, name: str) -> None:
        self.marks.append(name)
        self.marked.set()

    async def clear(self) -> None:
        self.clears += 1


def _player(link: Link) -> Player:
    return Player(link, lambda owner, source, now: None)  # type: ignore[arg-type]


async def _sent(link: Link, name: str) -> None:
    async with asyncio.timeout(5):
        await link.marked.wait()
    assert link.marks == [name]


async def test_the_echo_of_the_end_mark_ends_the_wait() -> None:
    link = Link()
    player = _player(link)
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(player.run())
        waiting = tg.create_task(player.played("1:end"))
        await _sent(link, "1:end")
        assert not waiting.done()
        assert player.on_mark_echo("1:end")  # it proves its audio played
        assert await waiting is True
        runner.cancel()


async def test_an_end_mark_flushed_by_a_clear_still_ends_the_wait() -> None:
    link = Link()
    player = _player(link)
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(player.run())
        waiting = tg.create_task(player.played("2:end"))
        await _sent(link, "2:end")
        await player.clear()  # barge-in: the carrier still echoes the mark
        assert not player.on_mark_echo("2:end")  # it proves nothing was heard
        assert await waiting is True
        runner.cancel()
    assert link.clears == 1


async def test_a_lost_end_mark_gives_up_after_the_slack_and_a_late_echo_is_harmless() -> None:
    link = Link()
    player = _player(link)
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(player.run())
        assert await player.played("3:end", slack_s=0.05) is False  # nothing queued: the slack alone
        runner.cancel()
    assert link.marks == ["3:end"]
    assert player.on_mark_echo("3:end")  # the echo comes after all: nobody waits, nothing breaks
    assert player._awaited == {}


async def test_a_cancelled_wait_leaves_nothing_behind() -> None:
    link = Link()
    player = _player(link)
    waiting = asyncio.create_task(player.played("4:end"))
    await asyncio.sleep(0)
    assert "4:end" in player._awaited
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert player._awaited == {}
