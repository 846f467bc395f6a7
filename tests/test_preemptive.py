"""Early requests (agent/preemptive.py): the answer's first model request started when the caller
pauses, on the STT's last partial, and adopted by the ladder when the turn asks the same.

The pure parts on their own (word matching, request matching, the quota, the turn core's pause
rule on a fake clock); the ladder's adoption against the LLM emulator on 127.0.0.1; and whole
fixture calls through the real stack with ``ladder.early_request`` set.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.conftest import FAST_VOICE
from tests.test_ladder import ladder_env
from voxroute.agent.bargein import BargeInPolicy
from voxroute.agent.config import load_config
from voxroute.agent.ladder import LLMLadder
from voxroute.agent.preemptive import EarlyQuota, EarlyRequest, EarlyRequests, same_words
from voxroute.agent.providers.base import LLMRequest, LLMUsage
from voxroute.agent.timeline import Clock, TurnRecord
from voxroute.agent.turns import Commit, Merge, TurnPolicy, TurnTaker
from voxroute.routing.health import Health
from voxroute.routing.table import ModelPath

HISTORY = [
    {"role": "system", "content": "You are a phone agent."},
    {"role": "user", "content": "where is my order"},
]


def request(**changes) -> LLMRequest:
    base = LLMRequest(model="m", messages=[dict(m) for m in HISTORY], max_tokens=100, tag="CA1:1")
    return dataclasses.replace(base, **changes)


def with_words(words: str) -> list[dict]:
    return [HISTORY[0], {"role": "user", "content": words}]


def test_the_same_words_whatever_the_case_punctuation_and_spacing():
    assert same_words("where is my order", "Where is my order?")
    assert same_words("Hi,  can you help", "hi can you help.")
    assert same_words("मेरा ऑर्डर कहाँ है", "मेरा ऑर्डर कहाँ है?")
    assert not same_words("where is my", "Where is my order?")
    assert not same_words("It's A one seven four five.", "It's a 1745.")


def test_an_early_request_matches_only_a_request_that_asks_the_same():
    early = EarlyRequest("where is my order", "fast", request(), 0.0)
    assert early.matches(request(messages=with_words("Where is my order?")))
    assert not early.matches(request(messages=with_words("Where is my order now?")))
    assert not early.matches(request(model="other"))
    assert not early.matches(request(max_tokens=24))
    assert not early.matches(request(tag="CA1:2"))
    assert not early.matches(request(tools=[{"type": "function", "function": {"name": "lookup"}}]))
    earlier = [{"role": "system", "content": "Another prompt."}, HISTORY[1]]
    assert not early.matches(request(messages=earlier))
    assert not early.matches(request(messages=[]))


PRICED = ModelPath(provider="p", model="m", tier="fast", price_in_per_mtok=1.0, price_out_per_mtok=10.0)


def test_an_unused_early_request_costs_what_the_provider_said_else_an_estimate():
    early = EarlyRequest("where is my order", "fast", request(), 0.0)
    chars = sum(len(m["content"]) for m in HISTORY)
    prompt, completion, cost, estimated = early.cost(PRICED)
    assert (prompt, completion, estimated) == (chars // 4, 0, True)
    assert cost == pytest.approx(prompt * 1.0 / 1e6)
    early._put(LLMUsage(prompt_tokens=50, completion_tokens=3))
    assert early.cost(PRICED) == (50, 3, pytest.approx((50 + 30) / 1e6), False)
    early._put(LLMUsage(prompt_tokens=50, completion_tokens=3, cost_usd=0.5))
    assert early.cost(PRICED)[2:] == (0.5, False)


def test_the_quota_allows_a_few_per_turn_and_stops_after_misses_in_a_row():
    quota = EarlyQuota(per_turn=2, max_misses=3)
    quota.start()
    quota.start()
    assert not quota.may_start()  # two for this turn already
    quota.turn_committed()
    assert quota.may_start()
    assert not quota.missed() and not quota.missed()
    quota.used()  # a hit: the misses in a row start again
    assert not quota.missed() and not quota.missed()
    assert quota.missed()  # the third in a row: no more in this call
    quota.turn_committed()
    assert not quota.may_start()


def test_the_call_book_bills_every_unused_request_to_a_turn_and_keeps_a_used_one():
    book = EarlyRequests(per_turn=2, max_misses=3, models={"fast": PRICED}, call_sid="CA1")
    first = EarlyRequest("where is", "fast", request(), 0.0)
    assert book.may_start("where is")
    book.started(first)
    assert not book.may_start("where is my")  # one pending at a time
    book.heard("where is")  # the same words: kept
    assert book.pending is first
    book.heard("where is my order")  # new words: cancelled, waiting for the next turn's bill
    assert book.pending is None and book.unused == [first]
    second = EarlyRequest("where is my order", "fast", request(), 10.0)
    book.started(second)
    book.declined = "hello"
    assert not book.may_start("hello")
    turn = TurnRecord(index=1, kind="speech", language="en-IN")
    assert book.take(turn, speech=True) is second
    assert turn.usage["early_unused"] == 1 and book.unused == []
    assert turn.usage["by_path"]["fast"]["cost_usd"] == pytest.approx(first.cost(PRICED)[2], abs=1e-8)
    second.adopted = True
    book.finished(second, turn, merged=False)
    assert turn.usage["early_used"] is True and book.quota.misses == 0
    # a keypad turn takes no early request: the pending one is billed to it at once
    third = EarlyRequest("one two", "fast", request(), 20.0)
    book.started(third)
    keys = TurnRecord(index=2, kind="dtmf", language="en-IN")
    assert book.take(keys, speech=False) is None
    assert keys.usage["early_unused"] == 1 and book.quota.misses == 1
    # a merged turn's unused request goes to the next turn
    fourth = EarlyRequest("and", "fast", request(), 30.0)
    book.started(fourth)
    merged = TurnRecord(index=3, kind="speech", language="en-IN")
    book.finished(book.take(merged, speech=True), merged, merged=True)
    assert "early_unused" not in merged.usage and book.unused == [fourth]


class Caller:
    """The caller's side into the turn core, with the ticker's timers, on a fake clock (as in
    tests/test_turns.py)."""

    def __init__(self) -> None:
        self.core = TurnTaker(TurnPolicy(), BargeInPolicy(300, 700, ()))
        self.t = 0.0
        self.actions: list = []

    def frames(self, ms: int, voiced: bool) -> None:
        for _ in range(ms // 20):
            self.t += 20
            self.actions += self.core.frame(voiced, self.t, False)

    def until(self, t: float) -> None:
        while (due := self.core.next_wake(self.t)) is not None and due <= t:
            self.t = due
            self.actions += self.core.tick(due, False, due)
        self.t = t


def test_the_turn_core_offers_the_words_heard_once_the_caller_pauses_with_no_turn_running():
    line = Caller()
    line.frames(600, True)
    line.core.stt_partial("where is my", line.t, False)
    assert line.core.early_text(line.t) is None  # still talking
    line.frames(200, True)
    line.core.stt_partial("where is my order", line.t, False)
    last_voice = line.t
    line.frames(40, False)
    assert line.core.early_text(line.t) is None  # 40 ms of quiet: a breath
    line.frames(20, False)
    assert line.t - last_voice == 60
    assert line.core.early_text(line.t) == "where is my order"
    assert line.core.next_index == 1
    line.actions += line.core.stt_final("Where is my order?", "en-IN", None, line.t, False)  # commits
    assert [type(a) for a in line.actions] == [Commit]
    assert line.core.early_text(line.t + 500) is None  # a turn is running
    assert line.core.next_index == 2


def test_words_merged_back_after_a_short_pause_get_an_early_request():
    """ "Okay, great." (committed on its final at 60 ms of quiet) "... thank you so much": the caller
    goes on before any answer, within the same stretch of speech, so the words come back to the
    pending utterance without new speech starting."""
    line = Caller()
    line.frames(700, True)
    line.frames(40, False)
    line.actions += line.core.stt_final("Okay, great.", "en-IN", None, line.t, False)
    line.until(line.t + 40)
    assert [type(a) for a in line.actions] == [Commit]
    line.frames(60, True)  # the caller goes on before the answer
    assert type(line.actions[-1]) is Merge
    line.frames(600, True)
    line.core.stt_partial("thank you so much", line.t, False)
    assert line.core.early_text(line.t) is None  # talking
    line.frames(60, False)
    assert line.core.early_text(line.t) == "Okay, great. thank you so much"


def test_keys_and_sound_over_the_agent_get_no_early_request():
    line = Caller()
    line.core.dtmf("4", 0.0, False)
    assert line.core.early_text(500.0) is None
    line = Caller()
    line.frames(400, True)
    line.actions += line.core.stt_final("hello", "en-IN", None, line.t, False)
    line.until(line.t + 400)
    assert [type(a) for a in line.actions] == [Commit]
    assert line.core.early_text(line.t) is None  # committed and running
    line.core.answer_started(1)
    line.frames(400, True)  # the caller talks over the agent's answer
    line.core.stt_partial("wait a moment", line.t, True)
    line.frames(100, False)
    assert line.core.early_text(line.t) is None


async def _run_with_early(config, llms, emu, words: str, history_words: str):
    """A ladder run whose first attempt may adopt an early request made for ``words``."""
    models = config.routing_table().models["default"]
    history = with_words(history_words)
    turn = TurnRecord(index=1)
    clock = Clock()
    got = LLMLadder(
        config, llms, clock, TurnRecord(index=1), with_words(words), "CA1:1", models=models, health=Health()
    ).first_request(["fast"])
    assert got is not None
    path, req = got
    early = EarlyRequest(words, path, req, clock.now())
    ladder = LLMLadder(
        config, llms, clock, turn, history, "CA1:1", models=models, health=Health(), early=early
    )
    out: list[str] = []
    async with asyncio.TaskGroup() as tg:
        early.start(tg, llms[models[path].provider], models[path].provider, 1500)
        await asyncio.sleep(0.05)  # the caller's final comes later than the pause
        await ladder.run(["fast"], out.append)
        early.cancel()
    return turn, early, "".join(out)


async def test_the_ladder_adopts_an_early_request_that_asks_the_same():
    async with ladder_env("reference") as (config, emu, llms):
        openrouter = emu.llm["openrouter"]
        turn, early, text = await _run_with_early(
            config, llms, emu, "where is my order", "Where is my order?"
        )
        assert early.adopted and text
        assert openrouter.requests == 1  # the early request was the answer's only request
        assert turn.timeline["llm_request"] == round(early.started, 1)
        assert turn.usage["path"] == "fast" and turn.usage["prompt_tokens"] > 0


async def test_the_ladder_asks_again_when_the_final_says_other_words():
    async with ladder_env("zero") as (config, emu, llms):
        openrouter = emu.llm["openrouter"]
        turn, early, text = await _run_with_early(config, llms, emu, "where is my", "Where is my order?")
        assert not early.adopted and text
        assert openrouter.requests == 2
        assert turn.timeline["llm_request"] > round(early.started, 1)


def early_config(mode: str):
    """The default config with early requests, and Sarvam's end-of-speech silence window at 600 ms
    (the reference's example has 500): its final then comes when our endpointer commits and asks
    for it (300 ms of quiet), well after the 60 ms pause an early request starts at, however busy
    the machine is. Up to five early requests a turn: a pause mid-sentence ("नमस्ते, ...") starts one
    on the words so far, and when the next partial comes is a matter of the machine's timing; with
    room for every pause, the last one is on the last partial, which holds all of the final's words."""
    config = load_config()
    config.ladder.early_request = mode
    config.ladder.early_requests_per_turn = 5
    config.sarvam.stt_silence_ms = 600
    return config


@pytest.mark.parametrize("mode", ["fast", "all"])
async def test_a_call_on_sarvam_partials_answers_from_its_early_requests(replay_call, mode):
    config = early_config(mode)
    result = await replay_call(
        "hindi_order_status", profile="reference", seed=3, config=config, voice_speed=FAST_VOICE
    )
    assert result.ended == "completed"
    used = [t for t in result.turns if t["usage"].get("early_used")]
    assert len(used) == len(result.turns) == 3, [t["usage"] for t in result.turns]
    for t in used:  # the model was asked before the STT's final came
        assert t["timeline"]["llm_request"] < t["timeline"]["stt_final"], t["timeline"]
    for t in result.turns:
        assert t["first_audio_ms"] <= t["budget_ms"] + 20
        if t["usage"].get("early_unused"):  # a miss is on the bill
            assert any(p.get("estimated") for p in t["usage"]["by_path"].values()), t["usage"]


async def test_a_reasoning_turn_asks_early_its_acknowledgement_in_fast_mode_and_its_answer_in_all(
    replay_call,
):
    """The billing dispute's first turn: the reasoning tier answers after the fast path's
    acknowledgement. "fast" asks only a fast-tier path early, so the acknowledgement; "all" asks the
    reasoning answer itself."""
    for mode in ("fast", "all"):
        result = await replay_call(
            "billing_dispute", profile="reference", seed=3, config=early_config(mode), items=1
        )
        (turn,) = result.turns
        tl, usage = turn["timeline"], turn["usage"]
        assert turn["route"]["tier"] == "reasoning" and turn["route"]["bridge_first"], turn["route"]
        assert usage.get("early_used"), (mode, usage)
        answer_early = tl["llm_request"] < tl["endpoint"]  # the answer's request (the ack's is not timed)
        assert answer_early == (mode == "all"), (mode, tl)
        assert turn["first_audio_ms"] <= turn["budget_ms"] + 20
