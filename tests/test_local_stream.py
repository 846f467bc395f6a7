"""The offline STT's decoding while the caller speaks (agent/providers/local/, ``Redecoder`` and
``LocalWhisperStream``) on a fake clock with a fake engine, and what the turn core does with a final
that comes after its turn gave up on it (agent/turns.py). No model runs here: the real Whisper is in
tests/test_local_stack.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from voxroute.agent.bargein import BargeInPolicy
from voxroute.agent.fixture import load
from voxroute.agent.providers.base import SpeechEnded, SpeechStarted, Transcript
from voxroute.agent.providers.local import (
    Decode,
    Drop,
    Ended,
    Heard,
    LocalWhisperStream,
    Lost,
    Redecoder,
    stutters,
    unloop,
)
from voxroute.agent.turns import Commit, TurnPolicy, TurnTaker
from voxroute.audio import silence_pcm, ulaw_to_pcm16

FRAME = 20


@dataclass
class FakeEngine:
    """Decodes take ``decode_ms`` each, one worker per ``workers``; a decode of N frames "hears" the
    words the caller had said by then: ``w1 w2 ...`` one word per 10 frames."""

    decode_ms: float = 150
    workers: int = 2
    started: list[tuple[float, Decode]] = field(default_factory=list)
    running: list[tuple[float, Decode]] = field(default_factory=list)  # (done at, job)
    busy_always: bool = False

    @property
    def busy(self) -> bool:
        return self.busy_always or len(self.running) >= self.workers

    def start(self, now: float, job: Decode) -> None:
        self.started.append((now, job))
        free_at = now if len(self.running) < self.workers else min(t for t, _ in self.running)
        self.running.append((free_at + self.decode_ms, job))

    def due(self, now: float) -> list[Decode]:
        done = sorted((r for r in self.running if r[0] <= now), key=lambda r: r[0])
        self.running = [r for r in self.running if r[0] > now]
        return [job for _, job in done]


def text_of(frames: int) -> str:
    return " ".join(f"w{i}" for i in range(1, frames // 10 + 1))


class Caller:
    """Drives a Redecoder with 20 ms frames on a fake clock and the fake engine; collects actions."""

    def __init__(self, engine: FakeEngine | None = None, **kw) -> None:
        self.plan = Redecoder(**kw)
        self.engine = engine or FakeEngine()
        self.t = 0.0
        self.actions: list[tuple[float, object]] = []
        self.last_voice: float | None = None

    def _handle(self, acts: list) -> None:
        for a in acts:
            self.actions.append((self.t, a))
            if isinstance(a, Decode):
                self.engine.start(self.t, a)
            elif isinstance(a, Drop):  # cancelled: its result never comes
                self.engine.running = [r for r in self.engine.running if r[1] != a.job]

    def _finish_due(self) -> None:
        for job in self.engine.due(self.t):
            self._handle(self.plan.done(job, text_of(job.frames), 0.9, self.t))

    def frames(self, ms: int, voiced: bool) -> Caller:
        for _ in range(ms // FRAME):
            self.t += FRAME
            self._finish_due()
            self._handle(self.plan.frame(voiced, self.t, self.engine.busy))
            if voiced:
                self.last_voice = self.t
        return self

    def voice(self, ms: int) -> Caller:
        return self.frames(ms, True)

    def quiet(self, ms: int) -> Caller:
        return self.frames(ms, False)

    def of(self, kind: type) -> list:
        return [a for _, a in self.actions if isinstance(a, kind)]

    def finals(self) -> list[tuple[float, Heard]]:
        return [(t, a) for t, a in self.actions if isinstance(a, Heard) and a.final]


def test_partials_while_the_caller_speaks_one_decode_at_a_time_at_the_interval():
    c = Caller(FakeEngine(decode_ms=150)).quiet(100).voice(2400)
    starts = [t for t, _ in c.engine.started]
    assert len(starts) >= 4  # 2.4 s of speech: a decode every 400 ms or so
    assert all(b - a >= 400 for a, b in zip(starts, starts[1:], strict=False))
    partials = [a.text for a in c.of(Heard) if not a.final]
    assert partials and all(p.startswith("w1") for p in partials)
    assert [len(p.split()) for p in partials] == sorted(len(p.split()) for p in partials)  # they grow


def test_slow_decodes_space_the_partials_out():
    """A loaded machine: each decode takes 500 ms, so partials come at most every 1.5 s (a third of
    a worker's time), and the decode at the pause still goes at once."""
    c = Caller(FakeEngine(decode_ms=500)).quiet(100).voice(5000)
    starts = [t for t, _ in c.engine.started]
    assert len(starts) >= 3 and all(b - a >= 1500 for a, b in zip(starts[1:], starts[2:], strict=False))
    c.quiet(60)
    assert c.engine.started[-1][0] == c.t - 20  # 40 ms of quiet: the pause's decode


def test_the_final_is_ready_within_250_ms_of_the_end_of_speech():
    """The decode that starts at the pause is the final: not a whole decode after the 200 ms that
    end the utterance (the old way: 200 ms + the decode, and later still on a loaded machine)."""
    c = Caller(FakeEngine(decode_ms=180)).quiet(100).voice(2500).quiet(600)
    ((at, final),) = c.finals()
    assert c.last_voice is not None and at - c.last_voice <= 250
    assert final.text == text_of(c.plan.frames - 10)  # holds every voiced frame (the decode at the pause)
    assert sum(1 for a in c.of(Decode)) == len(c.engine.started)  # no decode after the end


def test_the_final_goes_once_the_pause_decode_is_back_and_120_ms_of_quiet_followed():
    """A quick decode at the pause: the final at 120 ms of quiet, not at the 200 ms that end an
    utterance whose decode is not back."""
    c = Caller(FakeEngine(decode_ms=40)).quiet(100).voice(2000).quiet(400)
    ((at, final),) = c.finals()
    assert c.last_voice is not None and at - c.last_voice == 120
    assert final.text == text_of(c.plan.frames - 6)  # every voiced frame (the decode at the pause)


def test_a_decode_back_after_120_ms_of_quiet_is_the_final_when_it_comes():
    c = Caller(FakeEngine(decode_ms=100)).quiet(100).voice(2000).quiet(400)
    ((at, final),) = c.finals()
    pause_decode, job = c.engine.started[-1]  # 5 frames of lead-in, 100 voiced, 2 quiet
    assert c.last_voice is not None and pause_decode - c.last_voice == 40 and job.frames == 107
    assert final.text == text_of(job.frames)
    assert at == pause_decode + 100  # (the fake clock reads results at frame times)


def test_a_short_pause_mid_sentence_is_no_final():
    """The caller pauses 100 ms (the decode at the pause comes back meanwhile) and goes on: one
    utterance, one final, holding all of it."""
    c = Caller(FakeEngine(decode_ms=20)).quiet(100).voice(1000).quiet(100).voice(1000).quiet(400)
    ((_, final),) = c.finals()
    assert len(c.of(Ended)) == 1
    assert final.text == text_of(c.plan.frames - 6)


def test_a_decode_that_looped_is_no_result_and_the_final_then_takes_the_full_window():
    """Whisper looped on a short window (text None): no partial; when that was the decode at the
    pause that was to give the final, the final is decoded again the full way."""
    plan = Redecoder()
    for i in range(40):
        plan.frame(True, i * 20.0, busy=False)
    partial = Decode(plan.utterance, 40, window_only=True)
    plan._in_flight.add(partial)
    assert plan.done(partial, None, None) == []
    acts = [a for i in range(40, 43) for a in plan.frame(False, i * 20.0, busy=False)]
    (pause,) = [a for a in acts if isinstance(a, Decode)]
    assert pause.window_only and pause.frames >= 40  # the decode at the pause went all the same
    acts = [a for i in range(43, 60) for a in plan.frame(False, i * 20.0, busy=False)]
    assert Ended(1, final=True) in acts and not any(isinstance(a, Decode) for a in acts)  # it waits
    (again,) = plan.done(pause, None, None)
    assert again == Decode(1, pause.frames, window_only=False)
    assert plan.done(again, "a b", 0.9) == [Heard(1, "a b", 0.9, final=True)]


def test_the_last_result_is_reused_as_the_final_when_it_holds_all_the_voice():
    c = Caller(FakeEngine(decode_ms=20)).quiet(100).voice(1500).quiet(100)
    decodes = len(c.of(Decode))
    c.quiet(200)  # the utterance ends: its final is the result in hand, at once
    ((at, final),) = c.finals()
    assert len(c.of(Decode)) == decodes
    (ended_at,) = [t for t, a in c.actions if isinstance(a, Ended)]
    assert at == ended_at and final.text == text_of(final_frames := c.engine.started[-1][1].frames)
    assert final_frames >= 1500 // FRAME


def test_a_busy_engine_gets_no_partials_but_the_final_is_always_decoded():
    c = Caller(FakeEngine(busy_always=True)).quiet(100).voice(2000).quiet(300)
    (job,) = c.of(Decode)  # the one at the end
    assert job.frames == c.plan.frames
    (ended,) = c.of(Ended)
    assert ended.final and c.finals() == []  # on its way
    c.engine.busy_always = False
    c.quiet(200)
    ((_, final),) = c.finals()
    assert final.text == text_of(job.frames)


@pytest.mark.parametrize("seconds", [6, 12, 24])
def test_decoding_stays_linear_in_the_utterance_however_it_is_paced(seconds):
    """A caller who pauses just long enough for a decode, again and again, on an instant engine."""
    c = Caller(FakeEngine(decode_ms=0, workers=8))
    for _ in range(seconds * 1000 // 120):
        c.voice(60).quiet(60)
    c.quiet(400)
    (ended,) = c.of(Ended)
    frames = seconds * 1000 // FRAME
    total = sum(job.frames for job in c.of(Decode))
    assert total <= 4 * frames + 150  # DECODE_WORK (3) times the frames, the allowance, the final
    assert total >= frames  # it did decode as it went


def test_a_click_is_not_decoded_and_has_no_final():
    c = Caller().quiet(100).voice(60).quiet(400)
    assert c.of(Decode) == [] and c.finals() == []
    (ended,) = c.of(Ended)
    assert not ended.final


def test_a_result_that_comes_after_a_newer_one_or_after_the_end_is_dropped():
    plan = Redecoder()
    for i in range(40):
        plan.frame(True, i * 20.0, busy=False)
    old, new = Decode(plan.utterance, 10), Decode(plan.utterance, 30)
    plan._in_flight |= {old, new}
    assert plan.done(new, "a b c", 0.9) == [Heard(1, "a b c", 0.9, final=False)]
    assert plan.done(old, "a", 0.9) == []  # older than the result in hand
    acts = plan.flush()  # ends: the result holds every voiced frame up to 30, not 40: a new decode
    (final,) = [a for a in acts if isinstance(a, Decode)]
    assert final.frames == 40
    assert [a.job.frames for a in acts if isinstance(a, Drop)] == [20]  # the partial under way
    assert plan.failed(final) == [Lost(1)]


def test_unloop_cuts_a_repeated_sentence():
    assert unloop("It's a 1745. It's a 1745. It's a") == ("It's a 1745.", True)
    assert unloop("Hi, can you tell me where my order is? Hi, can you") == (
        "Hi, can you tell me where my order is?",
        True,
    )
    assert unloop("No. No, I said the other one.") == ("No. No, I said the other one.", False)
    assert unloop("Okay, great. Thank you so much.") == ("Okay, great. Thank you so much.", False)


# ---------------------------------------------------------------- the stream, on the asyncio side


class FutureEngine:
    """The engine seam LocalWhisperStream uses (``submit``, ``busy``): each decode is a future the
    test resolves, with the words of the frames it was given."""

    def __init__(self) -> None:
        self.jobs: list[tuple[bytes, asyncio.Future]] = []
        self.methods: list[str] = []
        self.busy = False

    def submit(self, method: str, pcm: bytes) -> asyncio.Future:
        assert method in ("transcribe", "transcribe_window")
        self.methods.append(method)
        future = asyncio.get_running_loop().create_future()
        self.jobs.append((pcm, future))
        return future

    def finish_all(self) -> None:
        for pcm, future in self.jobs:
            if not future.done():
                future.set_result((text_of(len(pcm) // 320), 0.9))


async def test_the_stream_puts_partials_and_the_final_in_order():
    engine = FutureEngine()
    clock = [0.0]
    stream = LocalWhisperStream(engine, "en-IN", clock=lambda: clock[0])  # type: ignore[arg-type]
    fixture = load("order_status")
    utt = fixture.script.utterances[0]
    pcm = silence_pcm(200) + ulaw_to_pcm16(fixture.utterance_audio(utt)) + silence_pcm(400)
    for i in range(0, len(pcm) - 319, 320):
        clock[0] += FRAME
        await stream.send_audio(pcm[i : i + 320])
        if i % 3200 == 0:  # the worker answers now and then
            engine.finish_all()
            await asyncio.sleep(0)
    engine.finish_all()
    await asyncio.sleep(0)
    await stream.aclose()
    events = [e async for e in stream.events()]
    kinds = [type(e).__name__ + (":final" if isinstance(e, Transcript) and e.final else "") for e in events]
    assert kinds[0] == "SpeechStarted" and kinds[-2:] == ["SpeechEnded", "Transcript:final"]
    assert "Transcript" in kinds  # partials came while the caller spoke
    assert "transcribe_window" in engine.methods  # while the utterance was open
    final = events[-1]
    assert isinstance(final, Transcript) and final.language == "en-IN" and final.text.startswith("w1 w2")
    assert isinstance(events[0], SpeechStarted) and isinstance(events[-2], SpeechEnded)


async def test_a_final_decoded_again_after_the_next_utterance_began_is_of_its_own_audio():
    engine = FutureEngine()
    clock = [0.0]
    stream = LocalWhisperStream(engine, "en-IN", clock=lambda: clock[0])  # type: ignore[arg-type]
    fixture = load("order_status")
    first, second = (ulaw_to_pcm16(fixture.utterance_audio(u)) for u in fixture.script.utterances[:2])
    pcm = silence_pcm(200) + first + silence_pcm(400) + second[:16000]
    for i in range(0, len(pcm) - 319, 320):
        clock[0] += FRAME
        await stream.send_audio(pcm[i : i + 320])
    assert stream._plan.in_speech and stream._plan.utterance == 2
    # The second utterance is under way; the first's decode at its pause comes back looped.
    (pause_pcm, pause_job), *_ = [(p, f) for p, f in engine.jobs if len(p) >= len(first)]
    pause_job.set_result((None, None))
    await asyncio.sleep(0)
    again_pcm, again_job = engine.jobs[-1]
    assert engine.methods[-1] == "transcribe" and again_pcm == pause_pcm  # the first utterance's audio
    again_job.set_result(("hi there", 0.9))
    await stream.aclose()
    finals = [e for e in [e async for e in stream.events()] if isinstance(e, Transcript) and e.final]
    assert [f.text for f in finals] == ["hi there"]


async def test_a_failed_final_decode_is_a_provider_fault():
    from voxroute.agent.providers.base import ProviderError

    engine = FutureEngine()
    engine.busy = True  # no partials: the one decode is the final's
    stream = LocalWhisperStream(engine, "en-IN", clock=lambda: 0.0)  # type: ignore[arg-type]
    fixture = load("order_status")
    pcm = ulaw_to_pcm16(fixture.utterance_audio(fixture.script.utterances[0])) + silence_pcm(400)
    for i in range(0, len(pcm) - 319, 320):
        await stream.send_audio(pcm[i : i + 320])
    ((_, future),) = engine.jobs
    future.set_exception(RuntimeError("worker died"))
    await asyncio.sleep(0)
    with pytest.raises(ProviderError, match="worker died"):
        async for _ in stream.events():
            pass


# ---------------------------------------------------------------- the turn core and a late final


def taker() -> TurnTaker:
    return TurnTaker(TurnPolicy(), BargeInPolicy(300, 700, ()))


def speak(core: TurnTaker, start: float, ms: int, quiet_ms: int) -> tuple[list, float]:
    acts, t = [], start
    for _ in range(ms // FRAME):
        t += FRAME
        acts += core.frame(True, t, False)
    for _ in range(quiet_ms // FRAME):
        t += FRAME
        acts += core.frame(False, t, False)
    return acts, t


def test_a_final_after_its_turn_gave_up_on_it_is_not_a_second_turn():
    """The phantom turn: the turn committed at the pause, waited for the final, gave up ("not
    heard"); the final came after. It was a second turn, timed from the first one's end of speech,
    so its deadline had passed before it began: the bridge went out at once, ~1.9 s late."""
    core = taker()
    acts, t = speak(core, 0, 1200, 400)
    (commit,) = [a for a in acts if isinstance(a, Commit)]
    assert commit.transcript == ""
    assert core.take_transcript(commit.index, t + 1500) is None  # the session's wait ran out
    core.answer_started(commit.index)
    assert core.stt_final("Where is my order?", "en-IN", 0.9, t + 1700, True) == []
    for step in range(1, 40):  # and no timer makes it a turn later either
        assert [a for a in core.tick(t + 1700 + step * 20, True) if isinstance(a, Commit)] == []
    assert core.late_finals == 1


def test_a_final_after_the_turn_took_the_partial_is_not_a_second_turn():
    core = taker()
    acts, t = speak(core, 0, 1200, 100)
    core.stt_partial("Where is my order", t, False)
    more, t = speak(core, t, 0, 300)
    (commit,) = [a for a in acts + more if isinstance(a, Commit)]
    taken = core.take_transcript(commit.index, t + 400)
    assert taken is not None and taken.text == "Where is my order"
    assert core.stt_final("Where is my order?", "en-IN", 0.9, t + 600, False) == []
    assert [a for a in core.tick(t + 700, False) if isinstance(a, Commit)] == []


def test_a_final_for_new_speech_after_a_turn_is_still_a_turn():
    core = taker()
    acts, t = speak(core, 0, 1200, 400)
    (first,) = [a for a in acts if isinstance(a, Commit)]
    core.take_transcript(first.index, t)
    core.turn_ended(first.index)
    _, t = speak(core, t + 500, 800, 40)  # the caller speaks again
    acts = core.stt_final("It's A1745.", "en-IN", 0.9, t, False)
    acts += core.tick(t + 60, False)
    (second,) = [a for a in acts if isinstance(a, Commit)]
    assert second.transcript == "It's A1745." and second.index == first.index + 1


def test_a_final_before_the_not_heard_turn_speaks_answers_it_after_all():
    """Took nothing, but nothing has played yet: the turn is answered again, with the words."""
    core = taker()
    acts, t = speak(core, 0, 1200, 400)
    (first,) = [a for a in acts if isinstance(a, Commit)]
    assert core.take_transcript(first.index, t + 1500) is None
    acts = core.stt_final("Where is my order?", "en-IN", 0.9, t + 1510, False)
    (again,) = [a for a in acts if isinstance(a, Commit)]
    assert again.previous == "merge" and again.previous_index == first.index
    assert again.transcript == "Where is my order?" and again.speech_end == first.speech_end


# ---------------------------------------------------------------- the engine pool's queue


class Gated:
    """An engine whose jobs wait for a gate, and say in which order they ran."""

    def __init__(self) -> None:
        import threading

        self.gate = threading.Event()
        self.ran: list[str] = []

    def work(self, name: str) -> tuple[str, dict]:
        self.gate.wait(5)
        self.ran.append(name)
        return name, {}


async def test_work_that_can_wait_never_stands_before_urgent_work(monkeypatch):
    """The phrase cache's sentences queue in the pool only when a worker is free: an answer's
    sentence submitted after them runs first; one cancelled before it began never runs."""
    from voxroute.agent.providers import local

    monkeypatch.setitem(local._ENGINES, "gated", Gated)
    pool = local.EnginePool("gated", processes=0)
    try:
        first = pool.submit("work", "answer 1")
        phrases = [pool.submit("work", f"phrase {i}", wait=True) for i in (1, 2)]
        second = pool.submit("work", "answer 2")
        phrases[1].cancel()  # timed out before it began
        pool._local.gate.set()
        assert await first == "answer 1" and await second == "answer 2"
        assert await phrases[0] == "phrase 1"
        await asyncio.sleep(0.05)
        assert pool._local.ran == ["answer 1", "answer 2", "phrase 1"]
        assert pool.in_flight == 0 and not pool.busy
    finally:
        pool.close()


def test_a_short_sentence_said_three_times_is_a_loop_to_decode_again():
    # seen on pause_mid_sentence under load: six "Hello?" before the words (word error 0.42)
    assert stutters("Hello? Hello? Hello? Hello? I both the flight with you last month.")
    assert not stutters("Hello? Hello? I booked a flight.")  # a caller may say it twice
    assert not stutters("No, no, no, no.")  # one sentence
    assert not stutters("I booked a flight with you last month.")


# ---------------------------------------------------------------- the scripted LLM's acknowledgement


def test_the_scripted_acknowledgement_is_not_the_answers_first_sentence_said_twice():
    """The fast path's acknowledgement before a reasoning answer (tag ``...:ack``) gets a line of
    its own from the scripted responder; the answer's request gets the answer."""
    from voxroute.agent.providers.base import LLMRequest
    from voxroute.agent.providers.local import ClassTaggedLLM
    from voxroute.emulators import scripted

    class Inner:
        name = "emulated"

        def stream(self, request, **kwargs):
            return request.messages

    llm = ClassTaggedLLM(Inner(), lambda tag: "billing_dispute")
    user = [{"role": "user", "content": "I was charged twice for my order"}]
    ack = llm.stream(LLMRequest("m", list(user), tag="CA1:1:ack"))
    answer = llm.stream(LLMRequest("m", list(user), tag="CA1:1"))
    ack_text, answer_text = scripted.reply(ack), scripted.reply(answer)
    assert answer_text is not None and answer_text.startswith("I am sorry you were charged")
    assert ack_text in scripted.EN["ack"] and ack_text.split(".")[0] not in answer_text


def test_an_early_request_gets_the_scripted_reply_of_its_route_and_stays_as_asked():
    """An early request (agent/preemptive.py) is made before its turn is committed: the class lookup
    finds the route on the call's pending early request (before, it found none, and the demo's early
    turns got the emulator's generic lines: "Thanks for calling. What can I help you with today?"
    to the caller's thanks). The wrapper marks a copy: the request the ladder compares with the
    turn's own stays as asked."""
    from types import SimpleNamespace

    from voxroute.agent.preemptive import EarlyRequest
    from voxroute.agent.providers.base import LLMRequest
    from voxroute.agent.providers.local import ClassTaggedLLM
    from voxroute.agent.providers.local.stack import class_lookup
    from voxroute.emulators import scripted

    class Inner:
        name = "emulated"

        def stream(self, request, **kwargs):
            return request.messages

    user = [{"role": "user", "content": "Okay, great. Thank you so much."}]
    request = LLMRequest("m", list(user), tag="CA1:2")
    pending = EarlyRequest(user[0]["content"], "fast", request, 0.0, index=2, routing_class="faq")
    session = SimpleNamespace(turns=[], early=SimpleNamespace(pending=pending))
    class_of = class_lookup({"CA1": session})  # type: ignore[dict-item]
    assert class_of("CA1:2") == "faq" and class_of("CA1:3") is None
    sent = ClassTaggedLLM(Inner(), class_of).stream(request)
    assert scripted.routing_class(sent) == "faq"
    assert request.messages == user  # the early request itself is as asked
