"""The sans-I/O turn core (agent/turns.py) on a fake clock: every turn-taking rule, case by case.

A ``Line`` plays one call's caller side into the core the way the session does: 20 ms frames at their
arrival times (or none at all, as a SIP phone with silence suppression sends), STT events, keys, and
the timers the session's ticker runs when ``next_wake`` says they are due.
"""

from __future__ import annotations

import pytest

from voxroute.agent.bargein import BargeInPolicy
from voxroute.agent.endpointing import VoiceGate
from voxroute.agent.fixture import load
from voxroute.agent.turns import BargeIn, Commit, IgnoreOverlap, Merge, TurnPolicy, TurnTaker
from voxroute.audio import ulaw_to_pcm16


class Line:
    def __init__(self, **policy) -> None:
        self.core = TurnTaker(TurnPolicy(**policy), BargeInPolicy(300, 700, ()))
        self.t = 0.0
        self.actions: list = []
        self.playing = False  # agent audio playing to the caller

    def _timers(self, until: float) -> None:
        """What the session's ticker does: wake the core at each due time up to ``until``."""
        while (due := self.core.next_wake(self.t)) is not None and due <= until:
            self.t = due
            self.actions += self.core.tick(due, self.playing, due)

    def frames(self, ms: int, voiced: bool) -> Line:
        for _ in range(ms // 20):
            arrives = self.t + 20
            self._timers(arrives)
            self.t = arrives
            self.actions += self.core.frame(voiced, self.t, self.playing)
        return self

    def voice(self, ms: int) -> Line:
        return self.frames(ms, True)

    def busy(self, ms: int, voiced: bool) -> Line:
        """This process is busy for ``ms`` while the caller goes on: when it resumes, the timer that
        fell due meanwhile fires first (late), then the frames that queued up are read."""
        due = self.core.next_wake(self.t)
        self.t += ms
        if due is not None and due <= self.t:
            self.actions += self.core.tick(self.t, self.playing, due)
        for _ in range(ms // 20):
            self.actions += self.core.frame(voiced, self.t, self.playing)
        self._timers(self.t)
        return self

    def quiet(self, ms: int) -> Line:
        return self.frames(ms, False)

    def nothing(self, ms: float) -> Line:
        """No frames at all for ``ms`` (silence suppression, an idle AudioSocket)."""
        end = self.t + ms
        self._timers(end)
        self.t = end
        return self

    def final(self, text: str, language: str | None = "en-IN") -> Line:
        self.actions += self.core.stt_final(text, language, None, self.t, self.playing)
        return self

    def partial(self, text: str) -> Line:
        self.actions += self.core.stt_partial(text, self.t, self.playing)
        return self

    def key(self, digit: str) -> Line:
        self.actions += self.core.dtmf(digit, self.t, self.playing)
        return self

    def answer(self) -> Line:
        """The active turn's answer starts playing."""
        assert self.core.active is not None
        self.core.answer_started(self.core.active)
        self.playing = True
        return self

    def of(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]

    def commits(self) -> list[Commit]:
        return self.of(Commit)


def test_a_pause_commits_after_silence_ms_and_the_transcript_is_taken_when_the_final_comes():
    line = Line().quiet(200).voice(1000).quiet(400)
    (commit,) = line.commits()
    assert commit.kind == "speech" and commit.index == 1
    assert commit.speech_end == 1200 and commit.endpoint == 1500
    assert commit.transcript == ""  # the STT has not finalised yet: the turn waits for it
    line.nothing(50).final("I was charged twice.")
    taken = line.core.take_transcript(1, line.t)
    assert taken is not None and taken.text == "I was charged twice." and taken.stt_final == 1650
    assert line.core.take_transcript(1, line.t) is None  # taken once
    assert len(line.commits()) == 1  # the late final belonged to the committed turn


def test_a_final_before_the_pause_commits_after_a_short_quiet():
    line = Line().voice(800).quiet(40).final("Where is my order?").quiet(100)
    (commit,) = line.commits()
    assert commit.transcript == "Where is my order?"
    assert commit.endpoint == 800 + 60  # COMMIT_SILENCE_MS after the last voice, not silence_ms
    assert commit.stt_final == 840 and commit.language == "en-IN"


def test_the_pending_text_is_the_transcript_the_turn_gets_when_the_last_partial_comes_back_final():
    # What speculative routing scores while the caller speaks: the earlier segments' finals and the
    # latest partial, joined as the commit joins its finals (scoring the partial alone missed).
    line = Line().voice(600).final("Can you tell me where my order is,").voice(300)
    line.partial("and when it will")
    assert line.core.pending_text() == "Can you tell me where my order is, and when it will"
    line.partial("and when it will arrive?")
    pending = line.core.pending_text()
    line.voice(200).final("and when it will arrive?").quiet(100)
    (commit,) = line.commits()
    assert commit.transcript == pending
    assert line.core.pending_text() == ""  # taken with the turn


@pytest.mark.parametrize("final_at", [None, 100])
def test_silence_suppression_commits_by_the_clock_when_no_frames_come(final_at):
    """A SIP phone stops sending RTP when the caller stops talking: the turn still ends."""
    line = Line().voice(600)
    if final_at is None:
        line.nothing(1000)
    else:
        line.nothing(final_at).final("I want a refund.").nothing(1000)
    (commit,) = line.commits()
    assert commit.speech_end == 600
    assert commit.endpoint == (600 + 300 if final_at is None else 600 + final_at)
    assert line.core.next_wake(line.t) is None  # nothing pending: the ticker sleeps


@pytest.mark.parametrize("busy_ms", [400, 1500])
def test_a_late_timer_reads_the_frames_that_came_meanwhile_before_it_counts_a_pause(busy_ms):
    """Speech that queued up while the process was busy is not a pause: one turn, not two."""
    line = Line().voice(600).busy(busy_ms, voiced=True).voice(400)
    assert line.commits() == []
    line.quiet(400)
    (commit,) = line.commits()
    assert commit.speech_end == 600 + busy_ms + 400


def test_a_late_timer_still_ends_the_turn_of_a_caller_who_went_quiet():
    line = Line().voice(600).busy(500, voiced=False)  # quiet frames queued up: a real pause
    (commit,) = line.commits()  # as soon as they are read
    assert commit.speech_end == 600 and commit.endpoint == 600 + 500
    line = Line().voice(600)
    line.t += 500  # no frames at all (silence suppression) and the process was busy too
    assert line.core.tick(line.t, False, 900) == []  # first a second look ...
    line.nothing(100)
    (commit,) = line.commits()  # ... then the pause counts: one frame later
    assert commit.endpoint == 600 + 500 + 20
    assert line.core.next_wake(line.t) is None


def test_an_unfinished_sentence_holds_the_commit_for_incomplete_hold_ms():
    line = Line().voice(900).quiet(40).final("I need to change my booking to").quiet(1000)
    (commit,) = line.commits()
    assert commit.endpoint == 900 + 800
    line2 = Line().voice(900).quiet(40).final("I need to change my booking to").quiet(300).voice(500)
    line2.quiet(40).final("next Friday.").quiet(100)
    (commit,) = line2.commits()
    assert commit.transcript == "I need to change my booking to next Friday."


def test_a_short_sound_is_not_speech():
    line = Line().voice(60).quiet(1000)
    assert line.commits() == [] and line.core.next_wake(line.t) is None


def test_keys_commit_on_hash_or_after_the_timeout_and_an_entry_is_capped():
    line = Line()
    for d in "4521#":
        line.nothing(100).key(d)
    (commit,) = line.commits()
    assert commit.kind == "dtmf" and commit.transcript == "4521#" and commit.speech_end == 500
    line.nothing(100).key("0").nothing(999)
    assert len(line.commits()) == 1
    line.nothing(1)
    assert line.commits()[-1].transcript == "0"
    flood = Line(max_dtmf_digits=32)
    for _ in range(20_000):
        flood.nothing(5).key("7")
    flood.nothing(2000)
    (commit,) = flood.commits()
    assert commit.transcript == "7" * 32 and flood.core.dropped_digits == 20_000 - 32


def test_caller_voice_before_the_answer_merges_into_the_next_turn():
    line = Line().voice(700).quiet(40).final("my order number is A").quiet(900)
    (first,) = line.commits()
    line.voice(60)
    assert line.of(Merge) == [Merge(first.index)]
    line.voice(400).quiet(40).final("seventeen forty five.").quiet(100)
    second = line.commits()[-1]
    assert second.index == 2 and second.previous is None
    assert second.transcript == "my order number is A seventeen forty five."


def test_talking_over_the_bridge_merges_and_does_not_barge_in():
    line = Line().voice(700).quiet(400)
    (commit,) = line.commits()
    line.playing = True  # the cached bridge plays: no answer yet
    line.voice(100)
    assert line.of(Merge) == [Merge(commit.index)] and line.of(BargeIn) == []


def test_words_over_the_answer_barge_in_once_past_min_voiced():
    line = Line().voice(700).quiet(40).final("Where is my order?").quiet(100).answer()
    line.voice(200).partial("wait")
    assert line.of(BargeIn) == []  # under barge_in_min_voiced_ms: a cough is shorter
    line.voice(100).partial("wait no")
    assert line.of(BargeIn) == [BargeIn(1, "caller words")]
    line.voice(100).partial("wait no stop")
    assert len(line.of(BargeIn)) == 1  # decided once


def test_speech_without_words_barges_in_after_confirm_ms():
    line = Line().voice(700).quiet(400).answer()
    line.voice(680)
    assert line.of(BargeIn) == []
    line.voice(20)
    assert line.of(BargeIn) == [BargeIn(1, "caller speech")]


def test_a_backchannel_over_the_answer_is_ignored():
    line = Line().voice(700).quiet(400).answer()
    line.voice(400).quiet(40).final("mm-hm").quiet(400)
    assert line.of(BargeIn) == []
    assert line.of(IgnoreOverlap) == [IgnoreOverlap("backchannel", "mm-hm", 1560, 1)]
    assert len(line.commits()) == 1


def test_a_backchannel_or_a_cough_in_a_lull_of_the_agents_turn_is_ignored():
    """Between the bridge and the answer no audio plays, but the agent still has the floor."""
    line = Line().voice(700).quiet(400).answer()
    line.playing = False  # the bridge has played; the answer is not out yet
    line.voice(300).quiet(40).final("Okay.").quiet(400)
    line.voice(200).quiet(600)  # a cough: no words come
    assert line.of(BargeIn) == []
    assert [(i.kind, i.text) for i in line.of(IgnoreOverlap)] == [("backchannel", "Okay."), ("noise", "")]
    assert len(line.commits()) == 1
    line.core.turn_ended(1)  # once the agent's turn is over, the caller's "Okay." is a turn
    line.voice(300).quiet(40).final("Okay.").quiet(100)
    assert len(line.commits()) == 2 and line.commits()[1].transcript == "Okay."


def test_a_cough_over_the_answer_waits_for_words_then_is_ignored():
    line = Line().voice(700).quiet(400).answer()
    line.voice(200).quiet(300)  # pause detected; the STT has said nothing yet: wait
    assert line.of(IgnoreOverlap) == []
    line.quiet(200)  # stt_final_wait_ms after the last voice: noise
    (ignored,) = line.of(IgnoreOverlap)
    assert ignored.kind == "noise" and ignored.at == 1300 + 400
    assert len(line.commits()) == 1


def test_words_over_the_answer_become_a_turn_that_barges_in():
    line = Line().voice(700).quiet(400).answer()
    line.voice(200).quiet(40).final("no, cancel it.").quiet(100)
    second = line.commits()[-1]
    assert second.index == 2 and second.previous == "barge_in" and second.previous_index == 1
    assert second.transcript == "no, cancel it."


def test_a_new_turn_after_the_answer_has_played_finishes_the_old_one():
    line = Line().voice(700).quiet(400).answer()
    line.playing = False  # its audio has played; it waits for the end mark
    line.voice(500).quiet(40).final("thanks.").quiet(100)
    assert line.commits()[-1].previous == "finish"


def test_turn_ended_and_stale_indices_are_ignored():
    line = Line().voice(700).quiet(400)
    line.core.turn_ended(7)
    assert line.core.active == 1
    line.core.answer_started(7)
    assert not line.core.answering(1)
    line.core.turn_ended(1)
    assert line.core.active is None and line.core.take_transcript(1, line.t) is None


def test_transcripts_are_capped():
    line = Line(max_transcript_chars=100).voice(700).quiet(40)
    line.final("a" * 1_000_000).final("more words")
    line.quiet(1000)
    (commit,) = line.commits()
    assert len(commit.transcript) <= 100


def test_turn_numbers_continue_after_a_resumed_leg():
    core = TurnTaker(TurnPolicy(), BargeInPolicy(300, 700, ()), first_index=5)
    acts = core.dtmf("#", 10.0, False)
    assert [a.index for a in acts if isinstance(a, Commit)] == [5]


def test_timers_are_not_due_before_speech_and_follow_the_last_voice():
    line = Line()
    assert line.core.next_wake(0) is None
    line.voice(200)
    assert line.core.next_wake(line.t) == 200 + 60
    line.voice(100)
    assert line.core.next_wake(line.t) == 300 + 60


# ---------------------------------------------------------------- real audio through the gate


def _frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + 320] for i in range(0, len(pcm) - 319, 320)]


def test_the_gate_and_the_core_find_the_utterances_of_a_fixture():
    fx = load("order_status")
    gate = VoiceGate(2)
    core = TurnTaker(TurnPolicy(), BargeInPolicy(300, 700, ()))
    commits = []
    for i, frame in enumerate(_frames(ulaw_to_pcm16(fx.ulaw))):
        commits += [a for a in core.frame(gate.is_voiced(frame), i * 20.0, False) if isinstance(a, Commit)]
        if commits and core.active is not None:
            core.turn_ended(core.active)
    assert len(commits) == len(fx.script.utterances)
    for utt, commit in zip(fx.script.utterances, commits, strict=True):
        assert utt.end_ms - 400 <= commit.speech_end <= utt.end_ms
        assert commit.endpoint == commit.speech_end + 300


def test_the_gate_hears_nothing_in_a_frame_of_the_wrong_size():
    assert VoiceGate(0).is_voiced(bytes(321)) is False
