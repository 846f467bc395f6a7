"""When caller sound over the agent is a real interruption, and when it is a cough or an "mm-hm".

Sans-I/O: the session asks :meth:`BargeInPolicy.decide` with how long the caller has spoken
(voiced ms since their last pause) and what the STT has made of it so far. The rule:

- below ``min_voiced_ms`` of voice, nothing interrupts: a cough, a click, a keypad tone;
- past it, a transcript word that is not a backchannel interrupts at once;
- without such a word, speech interrupts once it has lasted ``confirm_ms``, unless the STT
  already heard only a backchannel ("okay", "mm-hm", "haan").

An utterance over the agent that never qualifies is not a turn: the session drops it and notes it
on the turn being spoken (``overlaps``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DEFAULT_BACKCHANNELS = (
    "ok", "okay", "mm", "mmm", "mhm", "mm-hm", "mm-hmm", "hmm", "hm", "uh-huh", "uh", "um", "ah", "oh",
    "yeah", "yes", "yep", "right", "sure", "alright", "all right", "got it", "i see", "fine", "cool",
    "haan", "han", "ha", "ji", "haan ji", "accha", "acha", "achha", "theek hai", "thik hai",
    "हाँ", "हां", "जी", "हाँ जी", "अच्छा", "ठीक", "ठीक है", "हम्म",
)  # fmt: skip

# A word: letters and digits, Devanagari with its vowel signs (which \w alone splits off), inner
# hyphens and apostrophes ("mm-hm", "it's"). The danda (।) ends a sentence, not a word.
_LETTER = r"[^\W_]|[\u0900-\u0963\u0966-\u097f]"
_WORD = re.compile(rf"(?:{_LETTER})+(?:[-'](?:{_LETTER})+)*")


def words(text: str) -> list[str]:
    """Lower-case words of ``text``."""
    return [w.lower() for w in _WORD.findall(text or "")]


class BargeInPolicy:
    def __init__(self, min_voiced_ms: int = 300, confirm_ms: int = 700, backchannels: Iterable[str] = ()):
        self.min_voiced_ms = min_voiced_ms
        self.confirm_ms = max(confirm_ms, min_voiced_ms)
        phrases = list(backchannels) or list(DEFAULT_BACKCHANNELS)
        self._vocabulary = {w for phrase in phrases for w in words(phrase)}

    def is_backchannel(self, text: str) -> bool:
        """Words, all of them backchannel words ("okay", "mm-hm", "haan ji")."""
        ws = words(text)
        return bool(ws) and all(w in self._vocabulary for w in ws)

    def has_content(self, text: str) -> bool:
        """A word that is not a backchannel: the caller is saying something."""
        return any(w not in self._vocabulary for w in words(text))

    def decide(self, voiced_ms: int, transcript: str) -> str | None:
        """Why the agent should stop talking now, or None to keep talking."""
        if voiced_ms < self.min_voiced_ms:
            return None
        if self.has_content(transcript):
            return "caller words"
        if voiced_ms >= self.confirm_ms and not self.is_backchannel(transcript):
            return "caller speech"
        return None
