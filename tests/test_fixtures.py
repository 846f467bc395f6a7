"""The committed fixture calls in fixtures/audio: format, coverage and audio sanity.

Reads only the committed files (no synthesis). Regenerate with fixtures/audio/make_fixtures.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from voxroute.agent import fixture as fx

try:
    from voxroute.audio import ulaw_to_pcm16
except ImportError:  # pragma: no cover - voxroute/audio.py not there yet

    def _ulaw_table() -> np.ndarray:
        u = np.arange(256, dtype=np.int32) ^ 0xFF
        m = ((((u & 0x0F) << 3) | 0x84) << ((u >> 4) & 7)) - 0x84
        return np.where(u & 0x80, -m, m).astype("<i2")

    _ULAW_DEC = _ulaw_table()

    def ulaw_to_pcm16(ulaw: bytes) -> bytes:
        return _ULAW_DEC[np.frombuffer(ulaw, np.uint8)].tobytes()


KNOWN_CLASSES = {
    "faq",
    "order_tracking",
    "booking_change",
    "complaint",
    "billing_dispute",
    "sales_qualification",
    "document_support",
    "regulated",
    "human_request",
}
EXPECTED_CALLS = {
    "order_status",
    "billing_dispute",
    "booking_change",
    "angry_complaint",
    "pause_mid_sentence",
    "backchannel",
    "talk_over",
    "dtmf_entry",
    "hindi_order_status",
    "hindi_billing_dispute",
}
SPB = 8  # samples (= mu-law bytes) per ms at 8 kHz
EDGE_MS = 50  # each slice starts and ends with at least this much silence
MIN_VOICE_RMS = 1000  # PCM16 RMS of a voiced slice; the fixtures sit around 3000-6000 (silence is 0)

NAMES = fx.all_fixture_names()


def pcm_of(ulaw: bytes) -> np.ndarray:
    return np.frombuffer(ulaw_to_pcm16(ulaw), "<i2").astype(np.int32)


def audio_utts(f: fx.Fixture) -> list[fx.Utterance]:
    return [u for u in f.script.utterances if not u.is_dtmf]


def longest_zero_run(x: np.ndarray) -> int:
    """Length of the longest run of exact zeros in ``x``."""
    z = np.concatenate([[0], (x == 0).astype(np.int8), [0]])
    d = np.diff(z)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return int((ends - starts).max()) if starts.size else 0


@pytest.fixture(scope="module", params=NAMES)
def fixture(request: pytest.FixtureRequest) -> fx.Fixture:
    return fx.load(request.param)


def test_all_expected_calls_are_committed() -> None:
    assert len(NAMES) >= 8
    assert EXPECTED_CALLS <= set(NAMES)


def test_coverage_across_calls() -> None:
    loaded = [fx.load(n) for n in NAMES]
    hindi = [f for f in loaded if f.script.language == "hi-IN"]
    assert len(hindi) >= 2
    for f in hindi:
        for u in audio_utts(f):
            assert any("\u0900" <= ch <= "\u097f" for ch in u.text or ""), f"{f.name}: not Devanagari"
    utts = [u for f in loaded for u in f.script.utterances]
    assert any(u.is_dtmf for u in utts)
    assert any(u.play == "barge_in" for u in utts)
    classes = {u.expect_class for u in utts if u.expect_class}
    assert {"order_tracking", "billing_dispute", "booking_change", "complaint", "human_request"} <= classes


def test_wav_is_8k_mulaw_mono(fixture: fx.Fixture) -> None:
    tag, rate, channels, data = fx.read_wav(fixture.json_path.with_suffix(".wav"))
    assert (tag, rate, channels) == (fx.WAVE_FORMAT_MULAW, 8000, 1)
    assert data == fixture.ulaw
    assert 0 < len(data) < 25_000 * SPB


def test_script_fields(fixture: fx.Fixture) -> None:
    raw = json.loads(fixture.json_path.read_text(encoding="utf-8"))
    assert raw["call"] == fixture.json_path.stem
    assert raw["audio"] == fixture.json_path.stem + ".wav"
    utts = fixture.script.utterances
    turns = [u for u in utts if u.expect_turn]
    assert 2 <= len(turns) <= 4 and len(utts) <= 6
    for u in utts:
        if u.play == "after_agent":
            assert 500 <= u.gap_ms <= 900
        if u.is_dtmf:
            continue
        assert fixture.script.language_of(u) == fixture.script.language
        assert u.text == u.text.strip()
        if not u.expect_turn:  # a backchannel or a cough over the agent: short, and not a turn
            assert u.play == "barge_in" and u.expect_class is None
            assert 300 <= u.end_ms - u.start_ms <= 2000
            continue
        assert u.expect_class in KNOWN_CLASSES
        assert u.text
        assert 1000 <= u.end_ms - u.start_ms <= 5000


def test_utterances_are_voiced_with_silent_edges(fixture: fx.Fixture) -> None:
    for u in audio_utts(fixture):
        pcm = pcm_of(fixture.utterance_audio(u))
        assert pcm.size == (u.end_ms - u.start_ms) * SPB
        rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
        assert rms > MIN_VOICE_RMS, f"{fixture.name}: {u.text!r} is too quiet (RMS {rms:.0f})"
        edge = EDGE_MS * SPB
        assert not pcm[:edge].any(), f"{fixture.name}: {u.text!r} starts inside speech"
        assert not pcm[-edge:].any(), f"{fixture.name}: {u.text!r} ends inside speech"


def test_audio_outside_utterances_is_digital_silence(fixture: fx.Fixture) -> None:
    covered = np.zeros(len(fixture.ulaw), bool)
    previous_end = 0
    for u in audio_utts(fixture):
        assert u.start_ms >= previous_end, f"{fixture.name}: slices overlap or are out of order"
        previous_end = u.end_ms
        covered[u.start_ms * SPB : u.end_ms * SPB] = True
    outside = np.frombuffer(fixture.ulaw, np.uint8)[~covered]
    assert outside.size > 0
    assert (outside == 0xFF).all(), "silence between utterances must be mu-law 0xFF"


def test_pause_mid_sentence_has_one_long_internal_pause() -> None:
    f = fx.load("pause_mid_sentence")
    paused = []
    for u in audio_utts(f):
        pcm = pcm_of(f.utterance_audio(u))
        voiced = np.flatnonzero(pcm)
        inner = pcm[voiced[0] : voiced[-1] + 1]  # without the silent margins
        if longest_zero_run(inner) >= 600 * SPB:
            paused.append(u)
    assert len(paused) == 1
    assert paused[0].text == "I need to change my booking to next Friday, please."
    assert len(f.script.utterances) == 2


def test_talk_over_and_dtmf_items() -> None:
    talk = fx.load("talk_over").script.utterances
    assert [u.play for u in talk] == ["after_agent", "barge_in", "after_agent"]
    assert talk[1].offset_ms == 1200
    dtmf = fx.load("dtmf_entry").script.utterances
    assert [u.dtmf for u in dtmf] == [None, "4521#", None]
    assert dtmf[1].gap_ms == 600
