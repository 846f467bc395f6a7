"""Masking before storage and display: card numbers, phone numbers and e-mail addresses.

Pure functions over str, in time linear in the text: one tokenizer pass (a regex of single
character classes, which never backtracks), then a scan over the tokens. No pattern here may try
every start position inside a long run (``[\\w.]+@`` did: 20,000 DTMF digits took seconds).

Transcripts come from speech recognition, so numbers arrive in many shapes, and all are one *run*
of digits to this module:

- numerals with spaces, dashes, dots, slashes, commas or brackets between groups, in any script
  ("4111 1111 1111 1111", "+91 98000-00001", "४१११ ११११ ...");
- digit words in English, Hindi and romanised Hindi ("four one one one", "नौ आठ शून्य",
  "nau aath shunya"), with "double"/"triple" ("double nine" is two digits), mixed with numerals;
- a run split over consecutive turns of a call ("my card is 4111 1111" then "1111 1111"):
  :class:`ConversationRedactor` carries the open run into the next turn and re-masks the earlier
  turn when the next one completes a number.

What a run becomes (the whole run is masked, so a card followed by expiry and CVV in one run goes):

- ``[card]``: 13 or more digits whose first 13 to 19 pass the Luhn check, or grouped 4-4-4-4;
- ``[phone]``: 10 to 15 digits, a ``+`` and 8 or more, or seven or more with digit words in it;
- ``[number]``: any other run of 16 or more digits.

``[email]``: ``local@domain.tld``, and spoken forms ("john dot doe at gmail dot com", "... at the
rate gmail dot com", "... एट जीमेल डॉट कॉम").

Short numbers stay: order references ("A 1745"), amounts ("2,400 rupees"), dates ("12/03/2024"),
times ("10:30": a number glued to a colon and a number is a time, and ends a run), sizes ("72 by
36 inches").
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, overload

# Tokens: digits (any script), words (letters and Indic vowel signs), one other visible character.
# Spaces are no tokens: they are what lies between two tokens.
_TOKEN = re.compile(r"(\d+)|((?:[^\W\d_]|[\u0900-\u0963\u0971-\u097f])+)|(\S)")
NUM, WORD, PUNCT = 1, 2, 3  # the token's group

SEPARATORS = frozenset("-./,()–")  # between digit groups of one run
MAX_GAP = 3  # characters of separators and spaces between two groups of one run
GLUE = frozenset("._+-")  # inside an e-mail's local part (no spaces)
DOMAIN_GLUE = frozenset(".-")

_DIGIT_WORDS = {
    # English
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "niner": "9",
    # Hindi (folded: no nukta, chandrabindu as anusvara)
    "शून्य": "0", "शुन्य": "0", "सून्य": "0", "जीरो": "0", "एक": "1", "दो": "2", "तीन": "3",
    "चार": "4", "पांच": "5", "पाच": "5", "छह": "6", "छः": "6", "छे": "6", "छै": "6", "सात": "7",
    "आठ": "8", "नौ": "9", "नो": "9",
    # Hinglish
    "shunya": "0", "shoonya": "0", "sunya": "0", "shuniya": "0", "ek": "1", "do": "2", "teen": "3",
    "tin": "3", "char": "4", "chaar": "4", "paanch": "5", "panch": "5", "paach": "5", "paanc": "5",
    "chhe": "6", "chhah": "6", "chah": "6", "chhey": "6", "che": "6", "chheh": "6", "cheh": "6",
    "chha": "6", "saat": "7", "sat": "7", "aath": "8", "aat": "8", "ath": "8", "nau": "9",
    "nao": "9", "no": "9",
}  # fmt: skip
_REPEAT = {"double": 2, "triple": 3, "डबल": 2, "ट्रिपल": 3, "dabal": 2, "tripal": 3}
_AT = frozenset({"at", "एट", "ऐट", "attherate", "एटदरेट"})
_DOT = frozenset({"dot", "डॉट", "डाट", "डोट", "dat"})
_LOCAL_GLUE = frozenset({*_DOT, "underscore", "dash", "hyphen", "अंडरस्कोर"})
_TLDS = frozenset(
    "com in org net co io edu gov info biz me us uk ai app dev ac nic kom कॉम इन नेट ऑर्ग".split()
)
_INTERESTING = frozenset({*_DIGIT_WORDS, *_REPEAT, *_AT})  # words the scan looks at twice
_FOLD = str.maketrans({"\u093c": None, "\u0901": "\u0902"})

ASYNC_THRESHOLD = 32_768  # characters: above this, redact_async works in a thread
LOG_MAX_CHARS = 16_384  # a log message longer than this is cut before it is redacted


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of payment card numbers (``digits``: only digits, any script)."""
    total = 0
    for position, ch in enumerate(reversed(digits)):
        d = unicodedata.digit(ch)
        if position % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _fold(word: str) -> str:
    return word.lower().translate(_FOLD)


# ---------------------------------------------------------------- runs of digits


@dataclass
class _Run:
    """An open run: where its pieces are (per text) and what it holds so far."""

    pieces: dict[int, list[int]] = field(default_factory=dict)  # text number -> [start, end]
    digits: list[str] = field(default_factory=list)  # the first LABEL_DIGITS only
    count: int = 0
    groups: list[int] = field(default_factory=list)  # numeral group sizes (the first five)
    plus: bool = False
    spoken: bool = False

    def add(self, text: int, start: int, end: int, digits: str, spoken: bool) -> None:
        piece = self.pieces.get(text)
        if piece is None:
            self.pieces[text] = [start, end]
        else:
            piece[1] = end
        if len(self.digits) < LABEL_DIGITS:
            self.digits.extend(digits[: LABEL_DIGITS - len(self.digits)])
        self.count += len(digits)
        self.spoken = self.spoken or spoken
        if not spoken and len(self.groups) < 5:
            self.groups.append(len(digits))

    def label(self) -> str | None:
        """What the run is masked as (None: it stays). Depends on the first LABEL_DIGITS digits, the
        first five groups and the count; so it is final once ``count`` passes LABEL_DIGITS."""
        n = self.count
        if n >= 13:
            digits = "".join(self.digits)
            if any(luhn_ok(digits[:k]) for k in range(13, min(n, 19) + 1)) or self.groups[:4] == [4, 4, 4, 4]:
                return "[card]"
        if (self.plus and n >= 8) or 10 <= n <= 15 or (self.spoken and n >= 7):
            return "[phone]"
        if n >= 16:
            return "[number]"
        return None


LABEL_DIGITS = 20


@dataclass
class _Text:
    """One text of a conversation: its masks so far and the piece of the open run it holds."""

    key: Any
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # final masks
    shown: str | None = None  # what was last returned for it


class ConversationRedactor:
    """Redacts the texts of one conversation (a call's caller turns) in order, as one stream, so a
    number split over consecutive texts is masked in each of them.

    ``redact_turn(key, text)`` returns ``[(key, redacted), ...]``: this text's redaction first, then
    every earlier text whose redaction changed because this one completed a number (its key as
    given). Memory is bounded: only the texts holding pieces of a run still open are kept, and a run
    is final (earlier texts no longer change) once it has ``LABEL_DIGITS`` digits.
    """

    def __init__(self) -> None:
        self._texts: dict[int, _Text] = {}  # text number -> text, for texts the open run touches
        self._number = -1
        self._run: _Run | None = None
        self._gap = 0  # separator characters since the run's last group (-1: not a valid gap)

    def redact_turn(self, key: Any, text: str | None) -> list[tuple[Any, str | None]]:
        self._number += 1
        number = self._number
        if not text:
            # An empty turn does not break a run (the caller paused); it holds no piece of it.
            return [(key, text)]
        current = _Text(key, text)
        self._texts[number] = current
        if self._run is not None:
            self._gap = 0 if self._gap >= 0 else -1  # a turn boundary is a pause, not a separator
        self._scan(number, current)
        out: list[tuple[Any, str | None]] = []
        for n, t in list(self._texts.items()):
            shown = self._render(n, t)
            if n == number:
                out.insert(0, (key, shown))
            elif shown != t.shown:
                out.append((t.key, shown))
            t.shown = shown
        self._forget()
        return out

    # ---- the scan

    def _close(self) -> None:
        run = self._run
        self._run = None
        if run is None:
            return
        label = run.label()
        if label is not None:
            for n, (start, end) in run.pieces.items():
                if n in self._texts:
                    self._texts[n].spans.append((start, end, label))

    def _scan(self, number: int, current: _Text) -> None:
        text = current.text
        tokens = [(m.lastindex, *m.span()) for m in _TOKEN.finditer(text)]
        self._floor = 0  # e-mail walks go no further back than this token (the last address's end)
        self._no_email_until = -1  # an "at" up to this token lies in a domain walk that failed
        i = 0
        count = len(tokens)
        while i < count:
            kind, start, end = tokens[i]
            if self._run is not None and self._gap >= 0:
                self._gap += start - (tokens[i - 1][2] if i else 0)  # the spaces before this token
                if kind == PUNCT and text[start] in SEPARATORS:
                    self._gap += 1
                if self._gap > MAX_GAP:
                    self._close()
            if kind == PUNCT and text[start] in SEPARATORS:
                i += 1
                continue
            if kind == WORD:
                word = text[start:end].lower()
                if not word.isascii():
                    word = word.translate(_FOLD)
                if word not in _INTERESTING:  # the common case: a plain word ends any run
                    self._close()
                    i += 1
                    continue
            item = self._digit_item(text, tokens, i)
            if item is None:
                self._close()
                if kind == PUNCT and text[start] == "@":
                    i = self._written_email(current, tokens, i)
                    continue
                if kind == WORD and (at_end := self._spoken_at(text, tokens, i)) is not None:
                    i = self._spoken_email(current, tokens, i, at_end)
                    continue
                i += 1
                continue
            digits, spoken, last = item
            item_end = tokens[last][2]
            if self._run is None or self._gap < 0:
                self._close()
                self._run = _Run()
                prev = tokens[i - 1] if i > 0 else None
                if prev is not None and prev[0] == PUNCT and text[prev[1]] in "+(":
                    start = prev[1]  # "+91 ...", "(555) ..." mask from the sign
                    self._run.plus = text[start] == "+"
            self._run.add(number, start, item_end, digits, spoken)
            self._gap = 0
            i = last + 1

    def _digit_item(self, text: str, tokens: list, i: int) -> tuple[str, bool, int] | None:
        """The digits token ``i`` starts (numerals, a digit word, "double nine"), whether spoken, and
        the index of its last token; None if it is no digit."""
        kind, start, end = tokens[i]
        n = len(tokens)
        if kind == NUM:
            nxt = tokens[i + 1] if i + 1 < n else None
            prev_letter = i > 0 and tokens[i - 1][0] == WORD and tokens[i - 1][2] == start
            next_letter = nxt is not None and nxt[0] == WORD and nxt[1] == end
            if prev_letter or next_letter:  # part of an identifier ("CA12ab34", a CallSid, "A1745")
                return None
            if (
                nxt is not None
                and nxt[1] == end
                and text[end] == ":"
                and i + 2 < n
                and tokens[i + 2][0] == NUM
            ):
                return None  # a time ("10:30"): its own token, ending any run
            if start > 0 and text[start - 1] == ":" and i > 1 and tokens[i - 2][0] == NUM:
                return None  # the minutes of a time
            digits = text[start:end]
            if not digits.isascii():  # Devanagari and other scripts' digits
                digits = "".join(str(unicodedata.decimal(ch)) for ch in digits)
            return digits, False, i
        if kind != WORD:
            return None
        word = _fold(text[start:end])
        if word in _DIGIT_WORDS:
            return _DIGIT_WORDS[word], True, i
        times = _REPEAT.get(word)
        if times and i + 1 < n and tokens[i + 1][0] == WORD:
            digit = _DIGIT_WORDS.get(_fold(text[tokens[i + 1][1] : tokens[i + 1][2]]))
            if digit is not None:
                return digit * times, True, i + 1
        return None

    # ---- e-mail addresses

    def _written_email(self, current: _Text, tokens: list, at: int) -> int:
        """``local@domain.tld`` around the "@" at token ``at``: masked if the domain has a dot; returns
        the index of the next token to scan. Walks only over tokens glued to the "@" (no spaces), and
        never back past the last address, so each character is walked over at most twice."""
        text = current.text
        first = at
        while first > self._floor and _glued(text, tokens[first - 1], tokens[first], GLUE, back=True):
            first -= 1
        while first < at and tokens[first][0] == PUNCT:  # the local part starts with a letter or digit
            first += 1
        end = None  # the last label after a dot: where the domain may end
        labels = 0
        j = at + 1
        while j < len(tokens) and _glued(text, tokens[j - 1], tokens[j], DOMAIN_GLUE):
            if tokens[j][0] != PUNCT:
                if labels and tokens[j][0] == WORD and text[tokens[j - 1][1]] == ".":
                    end = j
                labels += 1
            j += 1
        if first == at or end is None:
            return at + 1
        self._mask(current, tokens[first][1], tokens[end][2], "[email]")
        self._floor = end + 1
        return end + 1

    def _spoken_at(self, text: str, tokens: list, i: int) -> int | None:
        """Token ``i`` is "at" (or "at the rate", "at-the-rate"): the index of its last token."""
        word = _fold(text[tokens[i][1] : tokens[i][2]])
        if word not in _AT:
            return None
        words = _next_words(text, tokens, i, 2, joiners="-")
        if [_fold(text[tokens[k][1] : tokens[k][2]]) for k in words] in (["the", "rate"], ["द", "रेट"]):
            return words[-1]
        return i

    def _spoken_email(self, current: _Text, tokens: list, at: int, at_end: int) -> int:
        """ "john dot doe at gmail dot com": a local part, "at", then a domain of labels joined by "dot"
        (or glued dots) ending in a known top-level domain (or any label after a glued dot). The walk
        over a domain that fails is not repeated for an "at" inside it (no quadratic time)."""
        text = current.text
        n = len(tokens)

        def word_at(k: int) -> str:
            return _fold(text[tokens[k][1] : tokens[k][2]])

        def label_at(k: int) -> bool:
            return 0 <= k < n and tokens[k][0] in (WORD, NUM) and word_at(k) not in _DOT

        def touching(k: int, j: int) -> bool:  # token k ends where token j starts
            return tokens[k][2] == tokens[j][1]

        if at <= self._no_email_until:
            return at + 1
        # The domain: label (dot label)+, ending at the last label that can be a top-level domain.
        k = at_end + 1
        if not label_at(k):
            return at + 1
        last, end = k, None
        while True:
            j = last + 1
            if j >= n:
                break
            if touching(last, j) and text[tokens[j][1]] == ".":  # "gmail.com"
                glued = True
            elif tokens[j][0] == WORD and word_at(j) in _DOT:  # "gmail dot com"
                glued = False
            else:
                break
            nxt = j + 1
            if not label_at(nxt) or (glued and not touching(j, nxt)):
                break
            last = nxt
            if tokens[nxt][0] == WORD and (glued or word_at(nxt) in _TLDS):
                end = nxt
        if end is None or (last + 1 < n and touching(last, last + 1) and text[tokens[last + 1][1]] == "@"):
            self._no_email_until = last  # (or the local part of a written address: "at a.b@c.com")
            return at + 1
        # The local part: label (glue label)*, walking back from "at", never past the last address.
        first = at - 1
        if first < self._floor or not label_at(first) or word_at(first) in _AT:
            return at + 1
        while True:
            g = first - 1
            if g - 1 < self._floor:
                break
            glued = tokens[g][0] == PUNCT and text[tokens[g][1]] in GLUE
            if glued and not (touching(g, first) and touching(g - 1, g)):
                break
            if not glued and not (tokens[g][0] == WORD and word_at(g) in _LOCAL_GLUE):
                break
            if not label_at(g - 1):
                break
            first = g - 1
        self._mask(current, tokens[first][1], tokens[end][2], "[email]")
        self._floor = end + 1
        return end + 1

    def _mask(self, current: _Text, start: int, end: int, label: str) -> None:
        current.spans.append((start, end, label))

    # ---- output

    def _render(self, number: int, t: _Text) -> str:
        spans = list(t.spans)
        run = self._run
        if run is not None and number in run.pieces and (label := run.label()) is not None:
            start, end = run.pieces[number]
            spans.append((start, end, label))
        return _apply(t.text, spans)

    def _forget(self) -> None:
        """Keep only the texts the open run touches (and not even those once its label is final)."""
        run = self._run
        keep = set(run.pieces) if run is not None and run.count <= LABEL_DIGITS else set()
        if run is not None:
            keep.add(self._number)  # the current text: the run may still grow within the next turn
        for n in [n for n in self._texts if n not in keep]:
            del self._texts[n]

    def finish(self) -> list[tuple[Any, str | None]]:
        """Close the open run (the conversation ended): texts whose redaction changes, as above."""
        self._run, run = None, self._run
        if run is None:
            return []
        out = []
        label = run.label()
        for n, t in self._texts.items():
            if label is not None and n in run.pieces:
                start, end = run.pieces[n]
                t.spans.append((start, end, label))
            shown = _apply(t.text, t.spans)
            if shown != t.shown:
                out.append((t.key, shown))
            t.shown = shown
        self._texts.clear()
        return out


def _glued(text: str, before: tuple, after: tuple, glue: frozenset[str], back: bool = False) -> bool:
    """``before`` touches ``after`` (no space between), and the new one (``after``, or ``before`` when
    walking back) is a word, digits or one of ``glue``."""
    kind, start, _ = before if back else after
    return before[2] == after[1] and (kind != PUNCT or text[start] in glue)


def _next_words(text: str, tokens: list, i: int, count: int, joiners: str) -> list[int]:
    """The indexes of up to ``count`` words after token ``i``, joined by spaces or ``joiners``."""
    out = []
    k = i + 1
    while len(out) < count and k < len(tokens):
        kind, start, _ = tokens[k]
        if kind == WORD:
            out.append(k)
        elif not (kind == PUNCT and text[start] in joiners):
            break
        k += 1
    return out


def _apply(text: str, spans: list[tuple[int, int, str]]) -> str:
    """``text`` with each span replaced by its label; overlapping spans are merged (first label)."""
    if not spans:
        return text
    spans = sorted(spans)
    out = []
    pos = 0
    cur_start, cur_end, cur_label = spans[0]
    for start, end, label in spans[1:]:
        if start < cur_end:
            cur_end = max(cur_end, end)
            continue
        out.append(text[pos:cur_start])
        out.append(cur_label)
        pos = cur_end
        cur_start, cur_end, cur_label = start, end, label
    out.append(text[pos:cur_start])
    out.append(cur_label)
    out.append(text[cur_end:])
    return "".join(out)


# ---------------------------------------------------------------- the public functions


@overload
def redact(text: str) -> str: ...
@overload
def redact(text: None) -> None: ...
def redact(text: str | None) -> str | None:
    """``text`` with card numbers, phone numbers and e-mail addresses masked (None stays None)."""
    if not text:
        return text
    redactor = ConversationRedactor()
    shown = redactor.redact_turn(0, text)[0][1]
    for _, final in redactor.finish():
        shown = final
    return shown


async def redact_async(text: str | None) -> str | None:
    """``redact`` that keeps the event loop free: a long text is redacted in a worker thread."""
    if text and len(text) > ASYNC_THRESHOLD:
        return await asyncio.to_thread(redact, text)
    return redact(text)


def redact_conversation(texts: Iterable[str | None]) -> list[str | None]:
    """Each text redacted, with numbers split across consecutive texts masked in all of them (the
    caller turns of one call, in order)."""
    out: list[str | None] = []
    redactor = ConversationRedactor()
    for position, text in enumerate(texts):
        out.append(text)
        for key, shown in redactor.redact_turn(position, text):
            out[key] = shown  # type: ignore[index]
    for key, shown in redactor.finish():
        out[key] = shown  # type: ignore[index]
    return out


def redact_json(value: Any) -> Any:
    """Every string inside a JSON-like value redacted (a handoff summary, fallback errors)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v) for v in value]
    return value


def redact_turns(turns: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn dicts (``TurnRecord.as_dict`` shape) as the call log stores them: transcripts redacted as
    one conversation, every other string on its own. New dicts; the given ones are not changed."""
    turns = list(turns)
    transcripts = redact_conversation(t.get("transcript") for t in turns)
    out = []
    for turn, transcript in zip(turns, transcripts, strict=True):
        copy = {k: (v if k == "transcript" else redact_json(v)) for k, v in turn.items()}
        if "transcript" in turn:
            copy["transcript"] = transcript
        out.append(copy)
    return out


async def redact_turns_async(turns: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``redact_turns`` off the event loop when the turns' text is long."""
    turns = list(turns)
    if (
        sum(len(str(t.get("transcript") or "")) + len(str(t.get("reply") or "")) for t in turns)
        > ASYNC_THRESHOLD
    ):
        return await asyncio.to_thread(redact_turns, turns)
    return redact_turns(turns)


@overload
def redact_handoff(record: dict[str, Any]) -> dict[str, Any]: ...
@overload
def redact_handoff(record: None) -> None: ...
def redact_handoff(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A handoff record (summary, transfer) redacted; its ``to`` is the configured human queue, the
    business's own number, and stays."""
    if not isinstance(record, dict):
        return redact_json(record)
    out = redact_json(record)
    if "to" in record:
        out["to"] = record["to"]
    return out


def redact_call(call: dict[str, Any], keep_number: bool = False) -> dict[str, Any]:
    """A call dict (``Services.call_json``) as an operator may see it, redacted as the call log stores
    it: transcripts as one conversation, every other string on its own (the LLM history's caller
    messages as one conversation too), and the caller's number in clear only if the call log keeps it
    raw (``keep_number``; else its last four digits). A new dict."""
    out = {k: (v if k in ("turns", "history") else redact_json(v)) for k, v in call.items()}
    if "handoff" in call:
        out["handoff"] = redact_handoff(call["handoff"])
    if "from_number" in call:
        number = call.get("from_number")
        out["from_number"] = number if keep_number or not number else mask_number(number)
    if "turns" in call:
        out["turns"] = redact_turns(call.get("turns") or [])
    if "history" in call:
        history = [redact_json(m) for m in call.get("history") or []]
        said = [
            i
            for i, m in enumerate(call.get("history") or [])
            if isinstance(m, dict) and m.get("role") == "user"
        ]
        raw = call["history"]
        for i, text in zip(
            said, redact_conversation(_str_or_none(raw[i].get("content")) for i in said), strict=True
        ):
            if isinstance(raw[i].get("content"), str):
                history[i]["content"] = text
        out["history"] = history
    return out


async def redact_call_async(call: dict[str, Any], keep_number: bool = False) -> dict[str, Any]:
    """``redact_call`` off the event loop when the call's text is long."""
    size = sum(
        len(str(t.get("transcript") or "")) + len(str(t.get("reply") or "")) for t in call.get("turns") or []
    )
    if size > ASYNC_THRESHOLD:
        return await asyncio.to_thread(redact_call, call, keep_number)
    return redact_call(call, keep_number)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class RedactingFilter(logging.Filter):
    """A log handler's filter that masks cards, phone numbers and e-mail addresses in every record
    it passes on: the message (arguments merged in), the exception's traceback and the stack. A
    message longer than ``LOG_MAX_CHARS`` is cut first: logging happens on the event loop."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > LOG_MAX_CHARS:  # redaction runs where the record is made: keep it short
            message = f"{message[:LOG_MAX_CHARS]} ... ({len(message)} characters, cut)"
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def mask_number(number: Any) -> str:
    """A phone number for a log line or a page: its last four digits only ("••••0001")."""
    s = "".join(ch for ch in str(number or "") if ch.isdecimal())
    return s if len(s) <= 4 else "•" * (len(s) - 4) + s[-4:]


__all__ = [
    "ConversationRedactor",
    "RedactingFilter",
    "luhn_ok",
    "mask_number",
    "redact",
    "redact_async",
    "redact_call",
    "redact_call_async",
    "redact_handoff",
    "redact_conversation",
    "redact_json",
    "redact_turns",
    "redact_turns_async",
]
