"""Turn-taking, sans-I/O: when the caller's turn is over, and what caller sound over the agent means.

All of the call's turn-taking policy lives here, as a state machine with no awaits and no clock of
its own, in the manner of h11 and ``websockets``: the session feeds it events, each with the time
it happened, and carries out the actions it returns.

Events in:
- :meth:`TurnTaker.frame`: one 20 ms frame of caller audio, voiced or not (the VAD's verdict);
- :meth:`TurnTaker.stt_partial`, :meth:`TurnTaker.stt_final`: what the STT made of it;
- :meth:`TurnTaker.dtmf`: a keypad digit;
- :meth:`TurnTaker.answer_started`, :meth:`TurnTaker.turn_ended`: the agent's side of a turn;
- :meth:`TurnTaker.tick`: time passed with nothing else happening (:meth:`TurnTaker.next_wake`
  says when the next timer is due).

``playing`` on an event says whether agent audio was playing to the caller at that moment.

Actions out: :class:`Commit` (a caller turn is over: answer it), :class:`Merge` (the caller went
on talking before a committed turn was answered: drop that answer, its words join the next turn),
:class:`BargeIn` (stop the agent: the caller is interrupting), :class:`IgnoreOverlap` (sound over
the agent that was a cough or an "mm-hm": the agent goes on).

The rules:

- **End of speech is counted by the clock, not by frames.** ``silence_ms`` after the last voiced
  frame the turn may commit, whether frames keep arriving or not: SIP phones with silence
  suppression and Asterisk's AudioSocket send nothing while the caller is quiet.
- **A timer that fires late looks again before it counts.** A tick more than ``LATE_MS`` after its
  due time means this process was busy: the caller's frames that came meanwhile may not have been
  read yet, and the clock alone would take them for a pause (a turn cut in two). The core then asks
  to be woken one frame later, when they have been read; it does so again only if frames came in
  between, so a quiet caller is still answered.
- A turn commits on the STT's final (after ``COMMIT_SILENCE_MS`` of quiet) or on the pause,
  whichever comes first; a final that sounds unfinished ("... change my booking to") waits up to
  ``incomplete_hold_ms``. A pause with no final yet commits too; the turn then waits briefly for
  the final (:meth:`TurnTaker.take_transcript`).
- Keys: an entry ends with ``#`` or ``dtmf_timeout_ms`` after the last digit; at most
  ``max_dtmf_digits`` digits of an entry are kept.
- Caller voice for ``RESUME_MS`` after a commit, before any answer audio: the caller was not done
  (:class:`Merge`).
- Caller sound over the agent's audio is judged by :class:`voxroute.agent.bargein.BargeInPolicy` (barge in
  or not). An utterance that began while the agent had the floor (from its turn's first audio until
  that turn ends, lulls between a bridge and the answer included) becomes a turn only if it has
  words that are not a backchannel.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxroute.agent.bargein import BargeInPolicy
from voxroute.agent.chunker import looks_incomplete

FRAME_MS = 20
RESUME_MS = 60  # caller voice after a commit that merges into the unanswered turn
COMMIT_SILENCE_MS = 60  # quiet that must follow the STT's final before we commit on it
LATE_MS = 2 * FRAME_MS  # a timer this late: frames that came meanwhile may not have been read


@dataclass(frozen=True, slots=True)
class TurnPolicy:
    silence_ms: int = 300
    min_speech_ms: int = 120
    incomplete_hold_ms: int = 800
    stt_final_wait_ms: int = 400
    dtmf_timeout_ms: int = 1000
    max_dtmf_digits: int = 32
    max_transcript_chars: int = 2000


@dataclass(frozen=True, slots=True)
class Commit:
    """A caller turn is over. ``previous`` says what happens to the turn still running, if any:
    ``barge_in`` (its answer is playing: stop it), ``finish`` (its audio has played: stop waiting
    for the end mark), ``merge`` (not answered yet: its words are already in this transcript)."""

    index: int
    kind: str  # "speech" | "dtmf"
    speech_end: float
    endpoint: float
    transcript: str = ""  # empty: wait for the STT (take_transcript)
    language: str | None = None
    confidence: float | None = None
    stt_final: float | None = None
    previous: str | None = None
    previous_index: int | None = None


@dataclass(frozen=True, slots=True)
class Merge:
    index: int  # the committed turn the caller talked on into


@dataclass(frozen=True, slots=True)
class BargeIn:
    index: int
    why: str


@dataclass(frozen=True, slots=True)
class IgnoreOverlap:
    kind: str  # "backchannel" | "noise"
    text: str
    at: float
    index: int | None  # the turn being spoken (or the last one)


TurnAction = Commit | Merge | BargeIn | IgnoreOverlap


@dataclass(frozen=True, slots=True)
class TakenTranscript:
    text: str
    language: str | None
    confidence: float | None
    stt_final: float


class TurnTaker:
    def __init__(self, policy: TurnPolicy, barge: BargeInPolicy, first_index: int = 1) -> None:
        self.policy = policy
        self.barge = barge
        # the voice detector's stretch
        self.in_speech = False  # a stretch long enough to count (min_speech_ms) is under way
        self.voiced_run_ms = 0  # consecutive voiced ms
        self._speech_ms = 0  # voiced ms in this stretch
        self.last_voice: float | None = None  # time of the last voiced frame
        self._last_frame: float | None = None  # time the last frame (voiced or not) arrived
        self._recheck_at: float | None = None  # a late timer's second look
        self._rechecked_after: float | None = None  # the last frame before that second look
        self._stretch = False
        # the caller's pending utterance
        self._pending = False  # the caller spoke (or keyed) since the last commit
        self._began_over_agent = False
        self._overlap_ms = 0  # voiced ms of caller speech while the agent talks
        self._speech_end: float | None = None
        self._finals: list[tuple[str, str | None]] = []
        self._finals_chars = 0
        self._partial = ""
        self._confidence: float | None = None
        self._final_at: float | None = None
        self._punctuates = False  # seen a final end with . ? ! or ।: a final without one is a fragment
        self.digits = ""
        self._last_digit_at: float | None = None
        self.dropped_digits = 0
        # the turn being answered
        self._next_index = first_index
        self.active: int | None = None
        self._answer_started = False
        self._barged = False
        self._awaiting = False  # the active turn committed without a transcript and waits for one
        self._taken: list[tuple[str, str | None]] = []  # what the active turn's transcript is made of
        self._last_index: int | None = None
        self._committed_voice: float | None = None  # the last voiced frame a speech commit took in
        self._took = "finals"  # what that turn's transcript is: "finals", "partial" or "nothing"
        self.late_finals = 0  # finals dropped: their speech was a turn already (see stt_final)

    # ------------------------------------------------------------------ events

    def frame(self, voiced: bool, now: float, playing: bool) -> list[TurnAction]:
        """One 20 ms frame of caller audio that arrived at ``now``."""
        self._last_frame = now
        self._check_pause(now)
        acts: list[TurnAction] = []
        if voiced:
            self.voiced_run_ms += FRAME_MS
            self._speech_ms += FRAME_MS
            self.last_voice = now
            self._stretch = True
            if not self.in_speech and self._speech_ms >= self.policy.min_speech_ms:
                self.in_speech = True
                self._pending = True
                self._began_over_agent = self._agent_has_floor()
        else:
            self.voiced_run_ms = 0
        if self.voiced_run_ms == RESUME_MS and self.active is not None and not self._answer_started:
            acts.append(self._merge())
        elif self._agent_talking(playing):
            # Only voice heard while the agent talks counts (not the end of the caller's own turn).
            self._overlap_ms += FRAME_MS if self.voiced_run_ms else 0
            acts += self._judge_overlap()
        else:
            self._overlap_ms = 0
        if self.in_speech:
            self._speech_end = self.last_voice
        return acts + self._evaluate(now, playing)

    def tick(self, now: float, playing: bool, due: float | None = None) -> list[TurnAction]:
        """Time passed: the silence and key timers. ``due``: when the timer was set for."""
        if due is not None and now - due > LATE_MS and self._rechecked_after != self._last_frame:
            self._rechecked_after = self._last_frame
            self._recheck_at = now + FRAME_MS
            return []  # busy until now: read what came meanwhile, then look again
        self._recheck_at = None
        self._check_pause(now)
        return self._evaluate(now, playing)

    def stt_partial(self, text: str, now: float, playing: bool) -> list[TurnAction]:
        self._partial = text[: self.policy.max_transcript_chars]
        if self._overlap_ms and self._agent_talking(playing):
            return self._judge_overlap()
        return []

    def stt_final(
        self, text: str, language: str | None, confidence: float | None, now: float, playing: bool
    ) -> list[TurnAction]:
        text = text.strip()[: max(0, self.policy.max_transcript_chars - self._finals_chars)]
        if (
            text
            and not self._awaiting
            and self.last_voice is not None
            and self.last_voice == self._committed_voice
            and (self._took == "partial" or (self._took == "nothing" and not self._unanswered()))
        ):
            # The caller has said nothing since a turn committed on this speech and gave up waiting
            # for its final: it took the partial, or took nothing and said so ("not heard"). As a
            # turn of its own this final would answer words already answered, timed from a long-past
            # end of speech (its deadline gone before it began). (A turn that took nothing and has
            # not spoken yet is answered again with these words: the merge below.)
            self.late_finals += 1
            self._partial = ""
            return []
        if text:
            self._finals.append((text, language))
            self._finals_chars += len(text) + 1
            if confidence is not None:
                self._confidence = min(confidence, self._confidence or 1.0)
            self._punctuates |= text[-1] in ".!?।"
            self._final_at = now
            if not self._awaiting:
                self._pending = True
        self._partial = ""
        return self._evaluate(now, playing)

    def dtmf(self, digit: str, now: float, playing: bool) -> list[TurnAction]:
        if len(self.digits) < self.policy.max_dtmf_digits:
            self.digits += digit
        else:
            self.dropped_digits += 1
        self._last_digit_at = now
        self._pending = True
        return self._evaluate(now, playing)

    def answer_started(self, index: int) -> None:
        """The answer (or a phrase) of turn ``index`` reached the player."""
        if index == self.active:
            self._answer_started = True

    def answering(self, index: int) -> bool:
        return index == self.active and self._answer_started

    def turn_ended(self, index: int) -> None:
        if index == self.active:
            self.active = None
            self._awaiting = False

    def take_transcript(self, index: int, now: float) -> TakenTranscript | None:
        """The STT's finals (or else its partial) for turn ``index``, committed before them."""
        if index != self.active or not self._awaiting:
            return None
        self._awaiting = False
        if self._finals:
            self._took = "finals"
            return self._take_finals(self._final_at if self._final_at is not None else now)
        if self._partial:
            text, self._partial = self._partial, ""
            self._taken = [(text, None)]
            self._took = "partial"
            return TakenTranscript(text, None, None, now)
        self._took = "nothing"
        return None

    @property
    def partial(self) -> str:
        """The STT's latest partial (capped at ``max_transcript_chars``)."""
        return self._partial

    def has_final(self) -> bool:
        return bool(self._finals)

    def heard_text(self) -> str:
        """The finals of the caller's pending utterance, joined as the turn's transcript will be."""
        return " ".join(t for t, _ in self._finals)

    def pending_text(self) -> str:
        """What the STT has heard of the pending utterance so far, finals and the latest partial:
        the transcript the turn will get if that partial comes back as the last final (what
        speculative routing scores, so that the decision on the final finds it scored)."""
        return " ".join([*(t for t, _ in self._finals), *([self._partial] if self._partial else [])])

    @property
    def next_index(self) -> int:
        """The index the next committed turn will have."""
        return self._next_index

    def early_text(self, now: float) -> str | None:
        """What the STT has heard of an utterance the caller has paused in (``COMMIT_SILENCE_MS``
        of quiet), with no turn running: the words an early model request may be started on
        (``agent/preemptive.py``). None otherwise (keys pending, sound that began over the agent,
        nothing heard yet)."""
        if (
            self.active is not None
            or not (self._pending or self._finals)  # (after a merge the words are back, not pending)
            or self.digits
            or self._began_over_agent
            or self.last_voice is None
            or now - self.last_voice < COMMIT_SILENCE_MS
        ):
            return None
        return self.pending_text().strip() or None

    def silence(self, now: float) -> float:
        """ms since the caller's last voiced frame (since the call began, before any)."""
        return now - (self.last_voice if self.last_voice is not None else 0.0)

    def next_wake(self, now: float) -> float | None:
        """When a timer is next due (a time in ms), if the caller stays quiet and nothing arrives."""
        p = self.policy
        due: list[float] = []
        if self.digits and self._last_digit_at is not None:
            due.append(self._last_digit_at + p.dtmf_timeout_ms)
        if self.last_voice is not None and (self._stretch or self._pending):
            for wait in (COMMIT_SILENCE_MS, p.silence_ms, p.stt_final_wait_ms, p.incomplete_hold_ms):
                due.append(self.last_voice + wait)
        if self._recheck_at is not None:
            due.append(self._recheck_at)
        future = [t for t in due if t > now]
        return min(future) if future else None

    # ------------------------------------------------------------------ rules

    def _unanswered(self) -> bool:
        """A turn is committed and nothing of its answer has played yet."""
        return self.active is not None and not self._answer_started

    def _agent_talking(self, playing: bool) -> bool:
        """The agent has the floor and its audio is playing now."""
        return playing and self._agent_has_floor()

    def _agent_has_floor(self) -> bool:
        """The agent's turn has begun to answer (an answer, a bridge or a waiting phrase) and has not
        ended, even in a lull of its audio (between a bridge and the answer, or while a tool is
        called): an "mm-hm" or a cough then is no more a turn than one over the audio itself."""
        return self.active is not None and self._answer_started

    def _check_pause(self, now: float) -> None:
        """``silence_ms`` since the last voiced frame ends the stretch (by the clock)."""
        if self._stretch and self.last_voice is not None and now - self.last_voice >= self.policy.silence_ms:
            if self.in_speech:
                self._speech_end = self.last_voice
                self._overlap_ms = 0
            self.in_speech = False
            self._speech_ms = 0
            self._stretch = False
            self.voiced_run_ms = 0

    def _overlap_text(self) -> str:
        return " ".join([t for t, _ in self._finals] + [self._partial]).strip()

    def _judge_overlap(self) -> list[TurnAction]:
        if self._barged or self.active is None:
            return []
        why = self.barge.decide(self._overlap_ms, self._overlap_text())
        if why is None:
            return []
        self._barged = True
        return [BargeIn(self.active, why)]

    def _merge(self) -> Merge:
        """The caller went on talking: the unanswered turn's words go back to the pending utterance."""
        assert self.active is not None
        index = self.active
        self._finals[:0] = self._taken
        self._finals_chars += sum(len(t) + 1 for t, _ in self._taken)
        self._taken = []
        self.active = None
        self._awaiting = False
        return Merge(index)

    def _ready(self, now: float) -> str | None:
        p = self.policy
        if self.digits:
            if self.digits.endswith("#") or (
                self._last_digit_at is not None and now - self._last_digit_at >= p.dtmf_timeout_ms
            ):
                return "dtmf"
            return None
        silence = self.silence(now)
        if not self._pending or silence < COMMIT_SILENCE_MS:
            return None
        have_final = bool(self._finals)
        if not have_final and not (silence >= p.silence_ms and self._speech_end is not None):
            return None
        if (
            have_final
            and looks_incomplete(self.heard_text(), self._punctuates)
            and silence < p.incomplete_hold_ms
        ):
            return None  # "I need to change my booking to ..." - give the caller a moment more
        return "speech"

    def _evaluate(self, now: float, playing: bool) -> list[TurnAction]:
        kind = self._ready(now)
        if kind is None:
            return []
        if kind == "speech" and (self._agent_has_floor() or self._began_over_agent):
            # Sound that began over the agent is a turn only if it has words (agent/bargein.py).
            text = self.heard_text()
            if not self.barge.has_content(text):
                if not text and self.silence(now) < self.policy.stt_final_wait_ms:
                    return []  # wait for the STT's words
                return [self._ignore(text, now)]
        return [self._commit(kind, now, playing)]

    def _ignore(self, text: str, now: float) -> IgnoreOverlap:
        self._clear_finals()
        self._pending = False
        self._began_over_agent = False
        self._speech_end = None
        self._overlap_ms = 0  # the next sound over the agent is judged on its own
        return IgnoreOverlap("backchannel" if text else "noise", text, now, self.active or self._last_index)

    def _commit(self, kind: str, now: float, playing: bool) -> Commit:
        previous, previous_index = None, self.active
        if self.active is not None:
            if self._answer_started:
                previous = "barge_in" if playing and not self._barged else "finish"
            else:
                previous = "merge"
                self._merge()
        index = self._next_index
        self._next_index += 1
        transcript, language, confidence, stt_final = "", None, None, None
        if kind == "dtmf":
            transcript, self.digits = self.digits, ""
            speech_end = self._last_digit_at if self._last_digit_at is not None else now
            self._pending = bool(self._finals)
            self._taken = []
        else:
            speech_end = self.last_voice if self.last_voice is not None else now
            self._committed_voice, self._took = self.last_voice, "finals"
            self._taken = []
            if self._finals:
                taken = self._take_finals(self._final_at if self._final_at is not None else now)
                transcript, language, confidence, stt_final = (
                    taken.text,
                    taken.language,
                    taken.confidence,
                    taken.stt_final,
                )
            self._pending = False
        self._began_over_agent = False
        self._speech_end = None
        self.active, self._last_index = index, index
        self._answer_started = self._barged = False
        self._awaiting = kind == "speech" and not transcript
        return Commit(
            index,
            kind,
            speech_end,
            now,
            transcript,
            language,
            confidence,
            stt_final,
            previous,
            previous_index,
        )

    def _take_finals(self, stt_final: float) -> TakenTranscript:
        texts = [t for t, _ in self._finals]
        langs = [lang for _, lang in self._finals if lang]
        self._taken = list(self._finals)
        confidence = self._confidence
        self._clear_finals()
        return TakenTranscript(" ".join(texts), langs[-1] if langs else None, confidence, stt_final)

    def _clear_finals(self) -> None:
        self._finals.clear()
        self._finals_chars = 0
        self._confidence = None
