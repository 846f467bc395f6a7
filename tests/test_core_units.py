"""Unit tests of the core loop's pure parts: chunker, config (the turn core: test_turns.py).

The player's pacing, marks and clear cross the carrier socket: they are tested end to end in
test_replay.py (marks, barge-in and clear) and measured by bench/concurrency.py (pacing jitter), not
against an in-memory link."""

from __future__ import annotations

import pytest

from voxroute.agent.chunker import SpeakableChunker, looks_incomplete

# ---------------------------------------------------------------- chunker


def feed_all(chunker: SpeakableChunker, pieces: list[str]) -> list[str]:
    out = []
    for p in pieces:
        out += chunker.feed(p)
    return out + chunker.flush()


def test_chunker_cuts_sentences_and_keeps_every_word():
    text = "Thanks for waiting. Your order A1745 shipped yesterday, and it should arrive by Friday. Anything else?"
    pieces = [w + " " for w in text.split()]
    chunks = feed_all(SpeakableChunker(), pieces)
    assert " ".join(chunks).split() == text.split()
    assert chunks[0] == "Thanks for waiting."
    assert len(chunks) >= 2


def test_chunker_first_chunk_is_short_and_waits_for_a_boundary():
    c = SpeakableChunker(first_min_chars=12, min_chars=40)
    assert c.feed("Sure, ") == []  # too short for a first chunk
    assert c.feed("I can help with that. ") == ["Sure, I can help with that."]
    assert c.feed("Let me check, ") == []  # a clause, but shorter than min_chars now


def test_chunker_cuts_clauses_once_long_enough_and_bounds_length():
    c = SpeakableChunker(first_min_chars=5, min_chars=20, max_chars=60)
    assert c.feed("Okay. ") == ["Okay."]
    out = c.feed("I looked at the account history for you, ")
    assert out == ["I looked at the account history for you,"]
    long = "word " * 30
    out = c.feed(long)
    assert out and all(len(x) <= 60 for x in out)


def test_chunker_handles_hindi_danda():
    chunks = feed_all(SpeakableChunker(first_min_chars=5), ["आपका ऑर्डर कल पहुँच जाएगा। ", "धन्यवाद।"])
    assert chunks == ["आपका ऑर्डर कल पहुँच जाएगा।", "धन्यवाद।"]


@pytest.mark.parametrize(
    "text, incomplete",
    [
        ("I need to change my booking to", True),
        ("my order number is", True),
        ("I want to talk to a person and", True),
        ("next Friday, please.", False),
        ("I was charged twice for my order", False),
        ("", False),
    ],
)
def test_looks_incomplete(text, incomplete):
    assert looks_incomplete(text) is incomplete
