"""The greeting and the asides (agent/asides.py): what cuts them, and what they leave in the history.

A real ``Player`` over a link that records what reaches the carrier; the rest of the call session is
a stand-in with just what ``Asides`` reads (the whole session runs in the call tests:
tests/test_agentdef.py greets, tests/test_handoff_calls.py offers the callback after a failed
transfer)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from voxroute.agent.asides import Asides
from voxroute.agent.config import EndpointConfig
from voxroute.agent.player import Player
from voxroute.agent.timeline import INTERRUPTED_MARK, TurnRecord
from voxroute.audio import MULAW_8K, WireFormat

CUT_MS = 300  # barge_in_min_voiced_ms


class Link:
    audio_format = MULAW_8K

    def __init__(self) -> None:
        self.clears = 0

    async def clear(self) -> None:
        self.clears += 1


class Speaker:
    def __init__(self, player: Player) -> None:
        self.player = player
        self.chunks: list[str] = []

    async def chunk(self, turn: TurnRecord, index: int, text: str) -> bool:
        self.chunks.append(text)
        self.player.play(b"\x00" * 320, turn, "answer")
        return True

    def mark(self, turn: TurnRecord, name: str, text: str) -> None:
        self.player.mark(name)


class Session:
    """What ``Asides`` reads of a ``CallSession``."""

    def __init__(self, *, greeting: str | None = "Hello, how can I help?", resumed: bool = False) -> None:
        self.call_sid = "CA1"
        self.language = "en-IN"
        self.resumed = resumed
        self.voice_budget_ms = 1000
        self.config = SimpleNamespace(endpoint=EndpointConfig(barge_in_min_voiced_ms=CUT_MS))
        self.agent = SimpleNamespace(
            greeting_text=lambda language, caller: greeting, voice=lambda language: None
        )
        self.link = SimpleNamespace(start=SimpleNamespace(from_number="+15550100"))
        self.services = SimpleNamespace(
            phrase=self._phrase,
            phrase_text=lambda language, kind: f"({kind} phrase)",
            turn_finished=lambda session, turn: self.finished.append(turn),
        )
        self.trace = SimpleNamespace(start_turn=lambda turn: None, end_turn=lambda span, turn: None)
        self.clock = SimpleNamespace(now=lambda: 1234.0)
        self.history: list[dict[str, Any]] = [{"role": "system", "content": "prompt"}]
        self.turns: list[TurnRecord] = []
        self.finished: list[TurnRecord] = []
        self.carrier = Link()
        self.player = Player(self.carrier, lambda owner, source, now: None)  # type: ignore[arg-type]
        self.speaker = Speaker(self.player)
        self.played = asyncio.Event()  # the greeting's end mark echoed

    async def _phrase(self, language: str, kind: str, voice: str | None, fmt: WireFormat) -> bytes:
        assert fmt == MULAW_8K  # the phrase is asked for in the link's format
        return b"\x01" * 160

    async def wait_played(self, turn: TurnRecord) -> None:
        await self.played.wait()


def _asides(session: Session) -> Asides:
    return Asides(session)  # type: ignore[arg-type]


async def test_the_greeting_is_turn_0_and_what_the_caller_heard_goes_into_the_history() -> None:
    s = Session()
    asides = _asides(s)
    async with asyncio.TaskGroup() as tg:
        asides.start(tg)
        assert [t.kind for t in s.turns] == ["greeting"]
        await asyncio.sleep(0)
        s.turns[0].heard = "Hello, how can I help?"  # its mark echoed
        s.history.append({"role": "user", "content": "hi"})  # the caller's first turn began meanwhile
        s.played.set()
    turn = s.turns[0]
    assert (turn.index, turn.route and turn.route.routing_class, turn.timeline["speech_end"]) == (
        0,
        "greeting",
        0.0,
    )
    assert s.speaker.chunks == ["Hello, how can I help?"]
    assert turn.reply == turn.reply_answer == "Hello, how can I help?"
    assert s.history[1] == {"role": "assistant", "content": "Hello, how can I help?"}  # after the prompt
    assert s.history[2]["role"] == "user"
    assert s.finished == [turn] and turn.timeline["done"] == 1234.0
    assert s.carrier.clears == 0


async def test_caller_voice_cuts_the_greeting_only_once_it_is_long_enough() -> None:
    s = Session()
    asides = _asides(s)
    async with asyncio.TaskGroup() as tg:
        asides.start(tg)
        await asyncio.sleep(0)
        s.turns[0].heard = "Hello,"
        await asides.caller_voiced(CUT_MS - 20)  # a cough
        assert s.carrier.clears == 0 and not s.turns[0].interrupted
        await asides.caller_voiced(CUT_MS)
        assert s.carrier.clears == 1
        await asides.caller_voiced(CUT_MS + 200)  # the same speech goes on: nothing more to cut
    turn = s.turns[0]
    assert s.carrier.clears == 1
    assert (turn.interrupted, turn.outcome) == (True, "interrupted")
    assert s.history[1] == {"role": "assistant", "content": f"Hello, {INTERRUPTED_MARK}"}
    assert not s.played.is_set()  # the greeting's task was cancelled while it waited for its end mark


async def test_no_greeting_text_means_no_turn_0() -> None:
    s = Session(greeting=None)
    async with asyncio.TaskGroup() as tg:
        _asides(s).start(tg)
    assert s.turns == [] and len(s.history) == 1


async def test_back_from_a_failed_transfer_the_callback_offer_plays_and_stays_in_the_history() -> None:
    s = Session(resumed=True)
    asides = _asides(s)
    async with asyncio.TaskGroup() as tg:
        asides.start(tg)
    assert s.turns == []  # no greeting on a resumed leg
    assert s.history[-1] == {"role": "assistant", "content": "(callback phrase)"}
    assert s.player.speaking
    await asides.caller_voiced(CUT_MS)
    assert s.history[-1]["content"] == f"(callback phrase) {INTERRUPTED_MARK}"
    assert s.carrier.clears == 1 and not s.player.speaking


async def test_a_committed_turn_cuts_an_aside_but_not_one_that_played_out() -> None:
    s = Session()
    asides = _asides(s)
    await asides.play("callback")
    await asides.turn_committed()
    assert s.carrier.clears == 1 and s.history[-1]["content"].endswith(INTERRUPTED_MARK)
    await asides.turn_committed()  # nothing left to cut
    assert s.carrier.clears == 1

    await asides.play("callback")
    mark = f"aside:callback:{len(s.history)}"
    asides.mark_echoed("0:greeting")  # another mark: the aside still plays
    asides.mark_echoed(mark)  # its own: it played out
    await asides.turn_committed()
    await asides.caller_voiced(CUT_MS)
    assert s.carrier.clears == 1
    assert s.history[-1] == {"role": "assistant", "content": "(callback phrase)"}
