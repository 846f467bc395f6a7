"""Cut a token stream into speakable chunks for TTS.

A chunk ends at a sentence boundary, or at a clause boundary (comma, semicolon, colon, dash)
once it is long enough, so TTS can start on the first clause while the LLM is still writing.
The first chunk may be shorter than the rest: it is what the caller waits for.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?।…]+[\"')\]]*(?=\s)")
_CLAUSE_END = re.compile(r"[,;:—–]+(?=\s)")


class SpeakableChunker:
    def __init__(self, first_min_chars: int = 12, min_chars: int = 40, max_chars: int = 220) -> None:
        self.first_min_chars = first_min_chars
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buf = ""
        self._emitted = 0

    def _min(self) -> int:
        return self.first_min_chars if self._emitted == 0 else self.min_chars

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the chunks that are now complete."""
        self._buf += text
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            chunk, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip()
            if chunk:
                out.append(chunk)
                self._emitted += 1
        return out

    def flush(self) -> list[str]:
        """End of the stream: whatever is left is the last chunk."""
        rest, self._buf = self._buf.strip(), ""
        if rest:
            self._emitted += 1
            return [rest]
        return []

    def _find_cut(self) -> int | None:
        buf = self._buf
        min_chars = self._min()
        for m in _SENTENCE_END.finditer(buf):
            if m.end() >= min_chars:
                return m.end()
        if len(buf) >= min_chars:
            for m in _CLAUSE_END.finditer(buf):
                if m.end() >= min_chars:
                    return m.end()
        if len(buf) >= self.max_chars:
            space = buf.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None


_INCOMPLETE_ENDINGS = frozenset(
    """a an the to of for and or but so because with my your our their his her its is are was were
    be at in on from by about into than that which who whose when where if as like uh um er hmm""".split()
)


def looks_incomplete(text: str, punctuating: bool = False) -> bool:
    """True when an utterance seems cut mid-sentence ("I need to change my booking to").

    ``punctuating``: this STT ends its sentences with punctuation, so a final without any is a
    fragment too ("I need to change my booking").
    """
    stripped = text.strip()
    if not stripped or stripped[-1] in ".!?।":
        return False
    if punctuating or stripped[-1] in ",;:-–—":
        return True
    last = re.sub(r"[^\w']", "", stripped.split()[-1].lower())
    return last in _INCOMPLETE_ENDINGS
