"""Masking before storage: card numbers, phone numbers and e-mail addresses never reach the call log.

Pure functions over str. Transcripts come from speech recognition, so numbers arrive as digit runs
with spaces or dashes ("4111 1111 1111 1111", "+91 98000-00001") and sometimes as spoken digits
("nine eight zero zero ..."); both are handled. What is masked:

- ``[email]``: anything shaped like local@domain.tld.
- ``[card]``: a run of 13 to 19 digits (spaces or dashes allowed between them) that passes the Luhn
  check, or any run grouped 4-4-4-4 (a misheard card is still a card).
- ``[phone]``: a run of 10 to 15 digits (spaces, dashes, dots, brackets allowed), or a ``+`` and 8 or
  more; a run of seven or more spoken digits.
- ``[number]``: any other run of 16 to 19 digits.

Short numbers stay: order references ("A 1745"), amounts ("2,400 rupees"), dates, times.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Digits with single separators between them; the leading + and brackets belong to phone numbers.
DIGIT_RUN = re.compile(r"\+?\(?\d(?:[ .\-()]{0,2}\d)+\)?")
GROUPED_CARD = re.compile(r"^\d{4}([ -])\d{4}\1\d{4}\1\d{4}$")
SPOKEN_DIGIT = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine|double \w+|triple \w+)"
SPOKEN_RUN = re.compile(rf"\b{SPOKEN_DIGIT}(?:[ ,-]+{SPOKEN_DIGIT}){{6,}}\b", re.IGNORECASE)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of payment card numbers (``digits``: only digits, any script)."""
    total = 0
    for position, ch in enumerate(reversed(digits)):
        d = unicodedata.digit(ch)
        if position % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _mask_digits(match: re.Match[str]) -> str:
    run = match.group(0)
    digits = "".join(ch for ch in run if ch.isdigit())
    n = len(digits)
    core = run.strip("()+")
    if 13 <= n <= 19 and (luhn_ok(digits) or GROUPED_CARD.match(core)):
        return "[card]"
    if 10 <= n <= 15 or (run.startswith("+") and n >= 8):
        return "[phone]"
    if 16 <= n <= 19:  # card-length but failing Luhn: a misheard card more likely than anything else
        return "[number]"
    return run


def redact(text: str | None) -> str | None:
    """``text`` with card numbers, phone numbers and e-mail addresses masked (None stays None)."""
    if not text:
        return text
    text = EMAIL.sub("[email]", text)
    text = DIGIT_RUN.sub(_mask_digits, text)
    return SPOKEN_RUN.sub("[phone]", text)


def redact_json(value: Any) -> Any:
    """Every string inside a JSON-like value redacted (a handoff summary, fallback errors)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v) for v in value]
    return value
