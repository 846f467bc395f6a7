"""What the STT emulator "hears": fixture audio recognised by exact byte matching, plus a simple VAD.

Fixture callers are recorded audio with a script, so the emulator can return the script's text
for the audio it receives instead of running a recogniser. Both STT sockets receive exactly
the fixture's mu-law bytes (realtime) or their PCM16 decoding (legacy; re-encoding is exact,
G.711 decode/encode round-trips except for the two zero codes, which are canonicalised), but
chunked and offset arbitrarily relative to the WAV.

Recognition: every voiced region of every fixture utterance is indexed by 8-byte n-grams (one
``uint64`` each, every 4th byte offset). A detected speech segment is looked up at every byte
offset; hits vote for an utterance, and the dominant alignment tells which part of the utterance
the segment covers. The covered fraction of the utterance's voiced time picks the words, snapped
to word boundaries, so that a caller who pauses mid-sentence (two segments) gets two finals that
concatenate to exactly the scripted text (:func:`split_words`, :class:`TranscriptSession`).

A fixture marked ``stt: transcripts`` (a recorded call, whose audio no script produced) is not
matched: the replayer registers the call's utterances (reviewed text, language, and where the
speech lies in each slice, :func:`timed_plan`) for its call SID, and :class:`TimedTranscripts`
says them by timing: a segment that starts after the current utterance's slice has passed is the
next utterance; within one utterance, the words follow the share of its voiced time heard so far.

Everything here is sans-I/O and synchronous.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from voxroute.agent.fixture import Fixture
from voxroute.agent.fixture import load as load_fixture
from voxroute.audio import ULAW_DEC, ULAW_ENC, pcm16_to_ulaw, ulaw_to_pcm16

log = logging.getLogger(__name__)

__all__ = [
    "UNRECOGNISED",
    "Match",
    "TranscriptLibrary",
    "TranscriptSession",
    "VadSegmenter",
    "canonical_ulaw",
    "pcm16_to_ulaw",
    "split_words",
    "ulaw_to_pcm16",
    "voiced_mask",
    "write_synthetic_fixture",
    "synthetic_speech",
    "SegmentEnded",
    "SegmentStarted",
    "TimedCursor",
    "TimedTranscriptSession",
    "TimedTranscripts",
    "TimedUtterance",
    "parse_plan",
    "timed_plan",
]

UNRECOGNISED = "(unrecognised speech)"
VAD_FRAME_BYTES = 80  # 10 ms of 8 kHz mu-law
VOICE_RMS = 200.0  # PCM16 RMS above which a 10 ms frame counts as speech (light noise does not)
NGRAM = 8  # bytes per n-gram: exactly one uint64
INDEX_STRIDE = 4  # index every 4th offset; queries look up every offset, so a hit is certain
MAX_KEY_REPEATS = 4  # n-grams seen more often than this carry no information (e.g. flat audio)
MIN_VOTES = 4
PARTIAL_TAIL_BYTES = 4800  # 0.6 s: a partial past this matches its last 0.6 s (TranscriptSession.partial)
QUERY_EVERY = 40  # bytes (5 ms) between sampled query places: a 1 s segment still casts ~200 votes

# decode -> encode: identity except the "negative zero" 0x7F, which becomes 0xFF
_CANON = ULAW_ENC[ULAW_DEC.view(np.uint16)].astype(np.uint8)


def canonical_ulaw(ulaw: bytes | np.ndarray) -> np.ndarray:
    arr = np.frombuffer(ulaw, np.uint8) if isinstance(ulaw, bytes | bytearray | memoryview) else ulaw
    return _CANON[arr]


def frame_rms(ulaw: np.ndarray) -> np.ndarray:
    """RMS of PCM16 per whole 10 ms frame of mu-law."""
    n = len(ulaw) // VAD_FRAME_BYTES
    if n == 0:
        return np.zeros(0)
    pcm = ULAW_DEC[ulaw[: n * VAD_FRAME_BYTES]].astype(np.float64).reshape(n, VAD_FRAME_BYTES)
    return np.sqrt((pcm * pcm).mean(axis=1))


_SQUARE = ULAW_DEC.astype(np.int64) ** 2  # PCM16 energy of each mu-law byte


def voiced_mask(ulaw: np.ndarray, threshold: float = VOICE_RMS) -> np.ndarray:
    """``frame_rms(ulaw) > threshold``, without the square root or the floats: a frame's energy
    against ``threshold`` squared (the STT emulator runs this on every chunk of every call)."""
    n = len(ulaw) // VAD_FRAME_BYTES
    if n == 0:
        return np.zeros(0, dtype=bool)
    energy = _SQUARE[ulaw[: n * VAD_FRAME_BYTES]].reshape(n, VAD_FRAME_BYTES).sum(axis=1)
    return energy > threshold * threshold * VAD_FRAME_BYTES


def _round_index(fraction: float, n: int) -> int:
    if fraction >= 1.0 - 1e-9:
        return n
    return max(0, min(n, math.floor(fraction * n + 0.5)))


def split_words(text: str, voiced_fraction_start: float, voiced_fraction_end: float) -> str:
    """The words of ``text`` covered by a slice of the utterance's voiced time, snapped to word boundaries.

    Word ``i`` of ``n`` belongs to the slice that contains ``(i + 0.5) / n`` of the voiced time, so
    slices that share a boundary (``[0, x]`` then ``[x, 1]``) concatenate, with a space, to ``text``.
    """
    words = text.split()
    i0 = _round_index(voiced_fraction_start, len(words))
    i1 = _round_index(voiced_fraction_end, len(words))
    return " ".join(words[i0:i1])


# ---------------------------------------------------------------- the library


@dataclass(frozen=True)
class Match:
    fixture: int  # index in the library
    utterance: int  # index in the fixture's script
    text: str
    language: str
    start: float  # covered fraction of the utterance's voiced time
    end: float
    votes: int


@dataclass
class _Utt:
    fixture: int
    utterance: int
    text: str
    language: str
    global_start: int
    length: int
    voiced_cum: np.ndarray  # voiced frames before frame i, len = frames + 1

    def fraction(self, pos: int) -> float:
        total = int(self.voiced_cum[-1])
        if total == 0:
            return 0.0
        frame = max(0, min(len(self.voiced_cum) - 1, pos // VAD_FRAME_BYTES))
        return float(self.voiced_cum[frame]) / total


class TranscriptLibrary:
    """Indexes fixtures so the emulator can say which scripted utterance a piece of audio is."""

    def __init__(self, fixtures: Iterable[Fixture] = ()) -> None:
        self.fixtures: list[Fixture] = []
        self._utts: list[_Utt] = []
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []  # (keys, global positions) per utterance
        self._keys = np.zeros(0, np.uint64)
        self._pos = np.zeros(0, np.int64)
        self._starts = np.zeros(0, np.int64)
        self._dirty = False
        self._total = 0
        for f in fixtures:
            self.add(f)

    @classmethod
    def from_dir(cls, directory: Path | str) -> TranscriptLibrary:
        """Every ``*.json`` fixture in ``directory`` (bad ones are logged and skipped)."""
        lib = cls()
        for p in sorted(Path(directory).glob("*.json")):
            try:
                lib.add(load_fixture(p))
            except Exception as exc:  # a broken fixture must not take the emulator down
                log.warning("transcripts: skipping fixture %s: %s", p, exc)
        return lib

    def __len__(self) -> int:
        return len(self._utts)

    def add(self, fixture: Fixture) -> None:
        fi = len(self.fixtures)
        self.fixtures.append(fixture)
        audio = canonical_ulaw(fixture.ulaw)
        for ui, utt in enumerate(fixture.script.utterances):
            if utt.is_dtmf or utt.start_ms is None or utt.end_ms is None:
                continue
            region = np.ascontiguousarray(audio[utt.start_ms * 8 : utt.end_ms * 8])
            voiced = voiced_mask(region)
            cum = np.concatenate([[0], np.cumsum(voiced)]).astype(np.int64)
            rec = _Utt(fi, ui, utt.text or "", fixture.script.language_of(utt), self._total, len(region), cum)
            self._utts.append(rec)
            self._chunks.append(self._index_region(region, voiced, self._total))
            self._total += len(region)
        self._dirty = True

    @staticmethod
    def _index_region(region: np.ndarray, voiced: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
        keys, poss = [], []
        buf = region.tobytes()
        for k in range(0, NGRAM, INDEX_STRIDE):
            count = (len(buf) - k) // NGRAM
            if count <= 0:
                continue
            keys.append(np.frombuffer(buf, "<u8", count=count, offset=k))
            poss.append(k + NGRAM * np.arange(count, dtype=np.int64))
        if not keys:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        key = np.concatenate(keys).astype(np.uint64)
        pos = np.concatenate(poss)
        if not len(voiced):
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        frame = pos // VAD_FRAME_BYTES
        keep = (frame < len(voiced)) & voiced[np.minimum(frame, len(voiced) - 1)]
        return key[keep], pos[keep] + base

    def build(self) -> None:
        """Build the lookup index now (else the first match does it)."""
        if not self._dirty:
            return
        if self._chunks:
            keys = np.concatenate([c[0] for c in self._chunks])
            pos = np.concatenate([c[1] for c in self._chunks])
        else:
            keys, pos = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        order = np.argsort(keys, kind="stable")
        keys, pos = keys[order], pos[order]
        if len(keys):
            _, counts = np.unique(keys, return_counts=True)
            common = np.repeat(counts > MAX_KEY_REPEATS, counts)
            keys, pos = keys[~common], pos[~common]
        self._keys, self._pos = keys, pos
        self._starts = np.array([u.global_start for u in self._utts], np.int64)
        self._dirty = False

    def utterance_text(self, fixture: int, utterance: int) -> str:
        return self.fixtures[fixture].script.utterances[utterance].text or ""

    def match(self, ulaw: bytes | np.ndarray, prefer: tuple[int, int] | None = None) -> Match | None:
        """Which utterance (and which part of it) this audio is, or None for unknown audio.

        ``prefer`` = the (fixture, utterance) last matched on this connection: among equally good
        candidates (identical audio in two fixtures), the same fixture, at or after it, wins.
        """
        self.build()
        q = canonical_ulaw(ulaw)
        if len(q) < NGRAM or not len(self._keys):
            return None
        # Sample the query: a run of INDEX_STRIDE consecutive offsets every QUERY_EVERY bytes. Each
        # run holds exactly one offset aligned with the index, so every sampled place can still vote.
        arr = np.ascontiguousarray(q, dtype=np.uint8)
        bases = np.arange(0, len(arr) - NGRAM - INDEX_STRIDE + 2, QUERY_EVERY, dtype=np.int64)
        qp = (bases[:, None] + np.arange(INDEX_STRIDE, dtype=np.int64)).ravel()
        qp = qp[qp <= len(arr) - NGRAM]
        if not len(qp):
            return None
        windows = np.lib.stride_tricks.sliding_window_view(arr, NGRAM)[qp]
        qk = np.ascontiguousarray(windows).view("<u8").ravel()
        left = np.searchsorted(self._keys, qk, side="left")
        right = np.searchsorted(self._keys, qk, side="right")
        counts = right - left
        if not counts.any():
            return None
        hit_q = np.repeat(qp, counts)
        # index of every hit in the sorted key array
        starts = np.repeat(left, counts)
        within = np.arange(len(starts)) - np.repeat(np.cumsum(counts) - counts, counts)
        g = self._pos[starts + within]
        utt_ids = np.searchsorted(self._starts, g, side="right") - 1
        offsets = (g - self._starts[utt_ids]) - hit_q  # where the segment starts inside the utterance
        # vote per (utterance, alignment): true hits of one utterance all share one alignment
        pair = utt_ids.astype(np.int64) * (1 << 32) + (offsets + (1 << 31))
        pairs, votes = np.unique(pair, return_counts=True)
        best_votes = int(votes.max())
        if best_votes < MIN_VOTES:
            return None
        candidates = pairs[votes == best_votes]
        chosen = self._tie_break(
            [(int(p >> 32), int((p & 0xFFFFFFFF) - (1 << 31))) for p in candidates], prefer
        )
        uid, off = chosen
        u = self._utts[uid]
        a = u.fraction(max(off, 0))
        b = u.fraction(min(off + len(q), u.length)) if off + len(q) < u.length else 1.0
        if b >= 1.0 - 1e-9:
            b = 1.0
        return Match(u.fixture, u.utterance, u.text, u.language, a, max(a, b), best_votes)

    def _tie_break(self, cands: list[tuple[int, int]], prefer: tuple[int, int] | None) -> tuple[int, int]:
        if len(cands) == 1 or prefer is None:
            return cands[0]

        def rank(c: tuple[int, int]) -> tuple[int, int, int]:
            u = self._utts[c[0]]
            same = u.fixture == prefer[0]
            return (0 if same and u.utterance >= prefer[1] else 1 if same else 2, u.utterance, c[0])

        return min(cands, key=rank)

    def expected_split(
        self, fixture: Fixture | int, utt_index: int, silence_ms: int = 200, threshold: float = VOICE_RMS
    ) -> list[str]:
        """The finals the STT emulator will produce for this utterance alone, with this silence window.

        One string when the utterance is one segment; several when the caller pauses longer than
        ``silence_ms`` mid-sentence (they always join with spaces to the scripted text).
        """
        fx = self.fixtures[fixture] if isinstance(fixture, int) else fixture
        utt = fx.script.utterances[utt_index]
        audio = fx.utterance_audio(utt) + b"\xff" * (8 * (silence_ms + 50))
        seg = VadSegmenter(silence_ms=silence_ms, threshold=threshold)
        session = TranscriptSession(self, fx.script.language_of(utt))
        texts: list[str] = []
        for ev in seg.feed(audio):
            if isinstance(ev, SegmentEnded):
                texts.append(session.final(ev.audio)[0])
        rest = seg.force_end()
        if rest is not None:
            texts.append(session.final(rest.audio)[0])
        return texts


# ---------------------------------------------------------------- per-connection transcription


@dataclass
class TranscriptSession:
    """Per-connection state: which words of each utterance were already returned."""

    library: TranscriptLibrary
    default_language: str | None = None
    progress: dict[tuple[int, int], int] = field(default_factory=dict)
    last: tuple[int, int] | None = None
    # the segment in progress as first matched whole (its bytes then), and that match
    _partial_head: tuple[bytes, Match] | None = None

    def _span(self, m: Match, final: bool) -> str:
        words = m.text.split()
        n = len(words)
        i0 = _round_index(m.start, n)
        i1 = _round_index(m.end, n)
        key = (m.fixture, m.utterance)
        done = self.progress.get(key, 0)
        start = 0 if i0 == 0 else (done if 0 < done < n else i0)
        end = min(n, max(i1, start + 1 if final else start))
        if final:
            self.progress[key] = end
            self.last = key
        return " ".join(words[start:end])

    def final(self, ulaw: bytes | np.ndarray) -> tuple[str, str | None]:
        """(text, language) of a finished speech segment."""
        self._partial_head = None  # the next segment's partials start over
        m = self.library.match(ulaw, self.last)
        if m is None:
            return UNRECOGNISED, self.default_language
        return self._span(m, True), m.language

    def partial(self, ulaw: bytes | np.ndarray) -> tuple[str, str | None] | None:
        """(text so far, language) of a segment still in progress; None when nothing is recognised yet.

        The segment grows by a partial's worth each time. Once its start has been matched, only its
        last ``PARTIAL_TAIL_BYTES`` are: where the segment ends is all a partial needs, and its
        start stays where the first match put it. Matching the whole segment again every 200 ms
        made the cost of a long utterance grow with its square. A tail that is not recognised, or
        is recognised as another utterance, falls back to the whole segment.
        """
        data = ulaw if isinstance(ulaw, bytes) else bytes(ulaw)
        head = self._partial_head
        m = None
        if head is not None and len(data) > PARTIAL_TAIL_BYTES and data.startswith(head[0]):
            tail = self.library.match(data[-PARTIAL_TAIL_BYTES:], self.last)
            if tail is not None and (tail.fixture, tail.utterance) == (head[1].fixture, head[1].utterance):
                m = replace(tail, start=head[1].start, end=max(head[1].start, tail.end))
        if m is None:
            m = self.library.match(data, self.last)
            self._partial_head = (data, m) if m is not None else None
        if m is None:
            return None
        text = self._span(m, False)
        return (text, m.language) if text else None


# ---------------------------------------------------------------- reviewed transcripts by timing

TIMING_SLACK_S = 0.05  # a VAD frame or two of disagreement about where speech starts or ends
MAX_PLAN_UTTERANCES = 2000
MAX_PLAN_TEXT = 10_000  # characters per utterance
MAX_PLAN_MS = 3_600_000  # an utterance's slice: at most an hour


@dataclass(frozen=True)
class TimedUtterance:
    """One utterance of a call replayed by timing: its reviewed words, and where speech lies in its
    slice of the fixture's audio as this module's VAD hears it (ms from the slice's start)."""

    text: str
    language: str | None
    duration_ms: int  # the slice
    speech_ms: tuple[int, int]  # start of the first voiced frame, end of the last
    voiced_ms: int  # voiced frames in the slice (0: the emulator will not hear it)

    @classmethod
    def of(cls, ulaw: bytes, text: str, language: str | None) -> TimedUtterance:
        voiced = np.flatnonzero(voiced_mask(canonical_ulaw(ulaw)))
        duration = len(ulaw) // 8
        if not len(voiced):
            return cls(text, language, duration, (0, duration), 0)
        span = (int(voiced[0]) * 10, (int(voiced[-1]) + 1) * 10)
        return cls(text, language, duration, span, len(voiced) * 10)

    def as_json(self) -> dict:
        return {
            "text": self.text,
            "language": self.language,
            "duration_ms": self.duration_ms,
            "speech_ms": list(self.speech_ms),
            "voiced_ms": self.voiced_ms,
        }


def timed_plan(fixture: Fixture) -> list[TimedUtterance]:
    """The fixture's audio utterances (not its keypad items), in the order the caller plays them."""
    script = fixture.script
    return [
        TimedUtterance.of(fixture.utterance_audio(u), u.text or "", script.language_of(u))
        for u in script.utterances
        if not u.is_dtmf
    ]


def _ms(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_PLAN_MS:
        raise ValueError(f"{what} must be an integer of milliseconds in 0-{MAX_PLAN_MS}, got {value!r}")
    return value


def parse_plan(items: object) -> list[TimedUtterance]:
    """A plan as JSON (a list of :meth:`TimedUtterance.as_json`) -> utterances; ValueError saying
    which field of which item is wrong."""
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_PLAN_UTTERANCES:
        raise ValueError(f"utterances must be a list of 1-{MAX_PLAN_UTTERANCES} objects")
    out = []
    for i, item in enumerate(items):
        where = f"utterances[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object")
        text, language = item.get("text"), item.get("language")
        if not isinstance(text, str) or len(text) > MAX_PLAN_TEXT:
            raise ValueError(f"{where}.text must be a string of at most {MAX_PLAN_TEXT} characters")
        if language is not None and (not isinstance(language, str) or not 0 < len(language) <= 16):
            raise ValueError(f"{where}.language must be a language code or null")
        duration = _ms(item.get("duration_ms"), f"{where}.duration_ms")
        span = item.get("speech_ms")
        if not isinstance(span, list) or len(span) != 2:
            raise ValueError(f"{where}.speech_ms must be [start, end]")
        start, end = (_ms(v, f"{where}.speech_ms") for v in span)
        voiced = _ms(item.get("voiced_ms"), f"{where}.voiced_ms")
        if not start <= end <= duration or voiced > end - start:
            raise ValueError(f"{where}: speech_ms and voiced_ms must lie within duration_ms")
        out.append(TimedUtterance(text, language, duration, (start, end), voiced))
    return out


@dataclass(frozen=True)
class TimedCursor:
    """How far a call's transcripts have gone: the utterance being said, and of it the words and
    voiced time that finals have covered, and where in its slice the last final ended."""

    utterance: int = 0
    words: int = 0
    voiced_ms: int = 0
    position_ms: int | None = None  # None: no final of this utterance yet


class TimedTranscripts:
    """One call's reviewed words, said by timing; shared by the call's STT connections (a socket
    that drops is replaced, and the new one carries on from the last final the old one sent)."""

    def __init__(self, utterances: list[TimedUtterance]) -> None:
        self.utterances = utterances
        self.committed = TimedCursor()
        self.finals = 0

    def session(self, default_language: str | None = None) -> TimedTranscriptSession:
        return TimedTranscriptSession(self, default_language)

    def commit(self, cursor: TimedCursor) -> None:
        """A final was sent: a later connection starts from here."""
        self.finals += 1
        key = (cursor.utterance, cursor.words, cursor.voiced_ms)
        if key >= (self.committed.utterance, self.committed.words, self.committed.voiced_ms):
            self.committed = cursor

    @property
    def said(self) -> int:
        """Utterances whose every word has been sent in a final."""
        c = self.committed
        if c.position_ms is None:  # no final sent yet
            return 0
        done = c.utterance
        if done < len(self.utterances) and c.words >= len(self.utterances[done].text.split()):
            done += 1
        return done


def _voiced_ms(ulaw: bytes | np.ndarray) -> int:
    return int(voiced_mask(canonical_ulaw(ulaw)).sum()) * 10


class TimedTranscriptSession:
    """One STT connection's view of a :class:`TimedTranscripts`. Times are the connection's audio
    time (seconds of audio received), as :class:`VadSegmenter` reports them."""

    def __init__(self, plan: TimedTranscripts, default_language: str | None = None) -> None:
        self.plan = plan
        self.default_language = default_language
        self.cursor = plan.committed
        self.anchor_s: float | None = None  # where the current utterance's slice began, in audio time
        self.in_segment = False

    def _skip_unheard(self) -> None:
        utts = self.plan.utterances
        while self.cursor.utterance < len(utts) and utts[self.cursor.utterance].voiced_ms == 0:
            self.cursor = TimedCursor(self.cursor.utterance + 1)

    def current(self) -> TimedUtterance | None:
        i = self.cursor.utterance
        return (
            self.plan.utterances[i] if self.anchor_s is not None and i < len(self.plan.utterances) else None
        )

    def begin(self, at_s: float) -> None:
        """A speech segment starts at ``at_s``: the current utterance's, or the next one's."""
        self.in_segment = True
        c = self.cursor
        utts = self.plan.utterances
        if c.utterance >= len(utts):
            return
        u = utts[c.utterance]
        if self.anchor_s is not None and at_s < self.anchor_s + u.duration_ms / 1000 + TIMING_SLACK_S:
            return  # its slice is still playing: a pause inside the utterance
        if self.anchor_s is None and c.position_ms is not None and c.words < len(u.text.split()):
            # A new connection in the middle of an utterance (the runtime replays the audio after
            # the last final it got): carry on from where that final ended.
            self.anchor_s = at_s - c.position_ms / 1000
            return
        if c.position_ms is not None:  # that utterance was said: this is the next one
            if c.words < len(u.text.split()):
                log.info("transcripts: utterance %d ended with words unsaid", c.utterance)
            self.cursor = TimedCursor(c.utterance + 1)
        self._skip_unheard()
        if self.cursor.utterance >= len(utts):
            self.anchor_s = None
            return
        self.anchor_s = at_s - utts[self.cursor.utterance].speech_ms[0] / 1000

    def _words(self, u: TimedUtterance, covered_ms: int, last: bool, final: bool) -> tuple[int, int]:
        n = len(u.text.split())
        start = self.cursor.words
        if last:
            end = n
        else:
            end = _round_index(min(1.0, covered_ms / u.voiced_ms) if u.voiced_ms else 1.0, n)
        return start, min(n, max(end, start + 1 if final else start))

    def final(self, ulaw: bytes | np.ndarray, end_s: float) -> tuple[str, str | None]:
        """(text, language) of a finished segment whose last voiced frame ended at ``end_s``."""
        if not self.in_segment:  # a flush without a segment start (manual endpointing)
            self.begin(max(0.0, end_s - len(ulaw) / 8000))
        self.in_segment = False
        u = self.current()
        if u is None:
            return UNRECOGNISED, self.default_language
        assert self.anchor_s is not None
        covered = self.cursor.voiced_ms + _voiced_ms(ulaw)
        last = (
            end_s >= self.anchor_s + u.speech_ms[1] / 1000 - TIMING_SLACK_S
            or covered >= u.voiced_ms - TIMING_SLACK_S * 1000
        )
        start, end = self._words(u, covered, last, final=True)
        position = max(0, round((end_s - self.anchor_s) * 1000))
        self.cursor = TimedCursor(self.cursor.utterance, end, min(covered, u.voiced_ms), position)
        return " ".join(u.text.split()[start:end]), u.language or self.default_language

    def partial(self, ulaw: bytes | np.ndarray) -> tuple[str, str | None] | None:
        """(text so far, language) of the segment in progress; None before its first words."""
        u = self.current()
        if u is None:
            return None
        start, end = self._words(u, self.cursor.voiced_ms + _voiced_ms(ulaw), last=False, final=False)
        text = " ".join(u.text.split()[start:end])
        return (text, u.language or self.default_language) if text else None

    def checkpoint(self) -> Callable[[], None]:
        """What to call once the final just made has been sent."""
        cursor = self.cursor
        return lambda: self.plan.commit(cursor)


# ---------------------------------------------------------------- server-side VAD


@dataclass(frozen=True)
class SegmentStarted:
    at_s: float  # audio time of the first voiced frame


@dataclass(frozen=True)
class SegmentEnded:
    at_s: float  # audio time of the end of the last voiced frame
    audio: bytes  # mu-law of the segment, from speech start through the silence window


VadEvent = SegmentStarted | SegmentEnded


class VadSegmenter:
    """Energy VAD over 8 kHz mu-law in 10 ms frames; a segment ends after ``silence_ms`` of silence.

    Time is audio time (samples fed), so a client sending faster than real time still gets the
    same segmentation. Any chunking of the input gives the same events.
    """

    def __init__(self, silence_ms: int = 200, threshold: float = VOICE_RMS, pad_ms: int = 20) -> None:
        self.silence_frames = max(1, math.ceil(silence_ms / 10))
        self.threshold = threshold
        self.pad_frames = pad_ms // 10
        self._pending = bytearray()  # bytes of an incomplete frame
        self._frames_seen = 0
        self._history: list[bytes] = []  # pre-speech padding frames
        self._segment = bytearray()
        self.in_speech = False
        self._speech_start_frame = 0
        self._last_voiced_frame = 0
        self._silent_run = 0

    @property
    def audio_s(self) -> float:
        return (self._frames_seen * VAD_FRAME_BYTES + len(self._pending)) / 8000

    @property
    def speech_s(self) -> float:
        """Audio time since the current segment started (0 when not in speech)."""
        return (self._frames_seen - self._speech_start_frame) * 0.01 if self.in_speech else 0.0

    def set_silence_ms(self, silence_ms: int) -> None:
        self.silence_frames = max(1, math.ceil(silence_ms / 10))

    def current(self) -> bytes:
        return bytes(self._segment)

    def feed(self, ulaw: bytes) -> list[VadEvent]:
        events: list[VadEvent] = []
        self._pending += ulaw
        n = len(self._pending) // VAD_FRAME_BYTES
        if n == 0:
            return events
        block = np.frombuffer(bytes(self._pending[: n * VAD_FRAME_BYTES]), np.uint8)
        del self._pending[: n * VAD_FRAME_BYTES]
        voiced = voiced_mask(block, self.threshold)
        for i in range(n):
            frame = block[i * VAD_FRAME_BYTES : (i + 1) * VAD_FRAME_BYTES].tobytes()
            idx = self._frames_seen
            self._frames_seen += 1
            if not self.in_speech:
                if voiced[i]:
                    self.in_speech = True
                    self._speech_start_frame = idx
                    self._last_voiced_frame = idx
                    self._silent_run = 0
                    self._segment = bytearray(b"".join(self._history))
                    self._segment += frame
                    self._history.clear()
                    events.append(SegmentStarted(idx * 0.01))
                else:
                    self._history.append(frame)
                    if len(self._history) > self.pad_frames:
                        self._history.pop(0)
                continue
            self._segment += frame
            if voiced[i]:
                self._last_voiced_frame = idx
                self._silent_run = 0
            else:
                self._silent_run += 1
                if self._silent_run >= self.silence_frames:
                    events.append(self._end())
        return events

    def _end(self) -> SegmentEnded:
        ev = SegmentEnded((self._last_voiced_frame + 1) * 0.01, bytes(self._segment))
        self.in_speech = False
        self._segment = bytearray()
        self._silent_run = 0
        return ev

    def force_end(self) -> SegmentEnded | None:
        """Flush: end the current segment now (None when not in speech)."""
        if not self.in_speech:
            return None
        if self._pending:
            self._segment += self._pending
            self._pending.clear()
        return self._end()


# ---------------------------------------------------------------- synthetic fixtures (tests)


def synthetic_speech(
    n_words: int, rng: np.random.Generator, word_ms: int = 300, gap_ms: int = 40
) -> np.ndarray:
    """PCM16 "speech": one noisy tone burst per word, short digital-silence gaps between words."""
    parts = []
    for _ in range(n_words):
        n = word_ms * 8
        t = np.arange(n) / 8000
        f0 = rng.uniform(120, 300)
        env = np.sin(np.pi * np.arange(n) / n) ** 0.5
        sig = (
            0.6 * np.sin(2 * np.pi * f0 * t)
            + 0.3 * np.sin(2 * np.pi * 2.7 * f0 * t)
            + 0.4 * rng.standard_normal(n)
        )
        parts.append((sig * env * rng.uniform(3000, 7000)).astype(np.int16))
        parts.append(np.zeros(gap_ms * 8, np.int16))
    return np.concatenate(parts[:-1]) if parts else np.zeros(0, np.int16)


def write_synthetic_fixture(
    directory: Path | str,
    name: str,
    utterances: list[dict],
    *,
    language: str = "en-IN",
    seed: int = 1,
    lead_ms: int = 400,
    between_ms: int = 1200,
) -> Path:
    """Write ``name.wav`` + ``name.json`` with noise "speech" for each utterance; return the JSON path.

    Each item of ``utterances``: ``{"text": ..., "language"?: ..., "pause_after": k, "pause_ms": ms}``
    (optionally a mid-sentence pause of ``pause_ms`` after word ``k``) plus any script fields.
    Between utterances there is digital silence (mu-law 0xFF), as in the real fixtures.
    """
    import json

    from voxroute.agent.fixture import write_ulaw_wav

    directory = Path(directory)
    rng = np.random.default_rng(seed)
    audio: list[np.ndarray] = [np.zeros(lead_ms * 8, np.int16)]
    pos_ms = lead_ms
    script_utts = []
    for spec in utterances:
        spec = dict(spec)
        words = spec["text"].split()
        k = spec.pop("pause_after", None)
        pause_ms = spec.pop("pause_ms", 0)
        if k:
            body = np.concatenate(
                [
                    synthetic_speech(k, rng),
                    np.zeros(pause_ms * 8, np.int16),
                    synthetic_speech(len(words) - k, rng),
                ]
            )
        else:
            body = synthetic_speech(len(words), rng)
        dur_ms = len(body) // 8
        script_utts.append({"start_ms": pos_ms, "end_ms": pos_ms + dur_ms, **spec})
        audio += [body, np.zeros(between_ms * 8, np.int16)]
        pos_ms += dur_ms + between_ms
    pcm = np.concatenate(audio).astype("<i2").tobytes()
    write_ulaw_wav(directory / f"{name}.wav", pcm16_to_ulaw(pcm))
    script = {
        "version": 1,
        "call": name,
        "audio": f"{name}.wav",
        "language": language,
        "utterances": script_utts,
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(script, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
