"""Entity extraction from transcripts: spoken numbers, amounts, dates, references, names (English and Hindi)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from voxroute.agent.handoff.summary import Entity, EntityKind

log = logging.getLogger("voxroute.handoff")


# ---------------------------------------------------------------- text normalisation and tokens

_DEV_DIGITS = str.maketrans("०१२३४५६७८९", "0123456789")
# Spelling variants that STT engines mix: nukta forms and chandrabindu/anusvara.
_DEV_FOLD = str.maketrans({"\u093c": None, "\u0901": "\u0902"})
_TOKEN = re.compile(
    r"[₹$€£]|\d+(?:,\d+)*(?:\.\d+)?(?:st|nd|rd|th)?|[A-Za-z\u00c0-\u024f\u0900-\u0963\u0971-\u097f']+"
)


def _fold(text: str) -> str:
    return text.translate(_DEV_DIGITS).translate(_DEV_FOLD)


@dataclass(frozen=True, slots=True)
class _Tok:
    raw: str  # as written (case kept)
    low: str  # lowercased, folded
    stop: bool  # a sentence end (. ! ? ।) comes just before this token
    pause: bool  # any punctuation comes just before this token


def _tokens(text: str) -> list[_Tok]:
    folded = _fold(text)
    out: list[_Tok] = []
    prev_end = 0
    for m in _TOKEN.finditer(folded):
        gap = folded[prev_end : m.start()]
        stop = bool(re.search(r"[.!?।]", gap))
        pause = stop or bool(re.search(r"[,;:()\[\]\"]", gap))
        out.append(_Tok(m.group(0), m.group(0).lower().strip("'"), stop, pause))
        prev_end = m.end()
    return out


# ---------------------------------------------------------------- spoken numbers

_EN_UNITS = {
    "zero": 0, "oh": 0, "nil": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
_EN_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_EN_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
_HI_1_99 = (
    "एक दो तीन चार पांच छह सात आठ नौ दस ग्यारह बारह तेरह चौदह पंद्रह सोलह सत्रह अठारह उन्नीस बीस "
    "इक्कीस बाईस तेईस चौबीस पच्चीस छब्बीस सत्ताईस अट्ठाईस उनतीस तीस इकतीस बत्तीस तैंतीस चौंतीस पैंतीस "
    "छत्तीस सैंतीस अड़तीस उनतालीस चालीस इकतालीस बयालीस तैंतालीस चवालीस पैंतालीस छियालीस सैंतालीस अड़तालीस "
    "उनचास पचास इक्यावन बावन तिरेपन चौवन पचपन छप्पन सत्तावन अट्ठावन उनसठ साठ इकसठ बासठ तिरसठ चौंसठ "
    "पैंसठ छियासठ सड़सठ अड़सठ उनहत्तर सत्तर इकहत्तर बहत्तर तिहत्तर चौहत्तर पचहत्तर छिहत्तर सतहत्तर "
    "अठहत्तर उन्यासी अस्सी इक्यासी बयासी तिरासी चौरासी पचासी छियासी सत्तासी अट्ठासी नवासी नब्बे इक्यानबे "
    "बानबे तिरानबे चौरानबे पचानबे छियानबे सत्तानबे अट्ठानबे निन्यानबे"
).split()
_HI_SMALL: dict[str, float] = {_fold(w): i + 1 for i, w in enumerate(_HI_1_99)}
_HI_SMALL.update(
    {
        _fold(w): v
        for w, v in (
            ("शून्य", 0), ("ज़ीरो", 0), ("छः", 6), ("छे", 6), ("छै", 6), ("पन्द्रह", 15), ("सत्रा", 17),
            ("डेढ़", 1.5), ("ढाई", 2.5),
        )
    }
)  # fmt: skip
# "साढ़े तीन हज़ार" = 3500, "सवा सौ" = 125, "पौने तीन सौ" = 275: a part more or less than what follows
_FRACTIONS = {_fold("साढ़े"): 0.5, _fold("सवा"): 0.25, _fold("पौने"): -0.25}
_MULT: dict[str, int] = {
    "hundred": 100, "thousand": 1000, "lakh": 100_000, "lakhs": 100_000, "lac": 100_000,
    "lacs": 100_000, "million": 1_000_000, "crore": 10_000_000, "crores": 10_000_000,
    "billion": 1_000_000_000, "k": 1000,
    _fold("सौ"): 100, _fold("हज़ार"): 1000, _fold("हजार"): 1000, _fold("लाख"): 100_000,
    _fold("करोड़"): 10_000_000, _fold("करोड"): 10_000_000,
}  # fmt: skip
_DIGIT_WORDS = {**{w: v for w, v in _EN_UNITS.items() if w != "nil"}}
_DIGIT_WORDS.update({_fold(w): v for w, v in (("शून्य", 0), ("एक", 1), ("दो", 2), ("तीन", 3), ("चार", 4))})
_DIGIT_WORDS.update({_fold(w): v for w, v in (("पांच", 5), ("छह", 6), ("छः", 6), ("सात", 7), ("आठ", 8))})
_DIGIT_WORDS[_fold("नौ")] = 9
_DIGIT_WORDS["double"] = -2  # "double five" = 55 (digit reading only)
_DIGIT_WORDS["triple"] = -3


def _small_value(w: str) -> float | None:
    """The value of a number word below a hundred (or a numeral), else None."""
    if w in _EN_UNITS and w != "oh":
        return _EN_UNITS[w]
    if w in _EN_TEENS:
        return _EN_TEENS[w]
    if w in _EN_TENS:
        return _EN_TENS[w]
    if w in _HI_SMALL:
        return _HI_SMALL[w]
    if re.fullmatch(r"\d+(?:,\d+)*(?:\.\d+)?", w):
        try:
            return float(w.replace(",", ""))
        except ValueError:
            return None
    return None


def _is_number_word(w: str) -> bool:
    return _small_value(w) is not None or w in _MULT or w in _DIGIT_WORDS or w in _FRACTIONS


def parse_spoken_number(text: str) -> float | None:
    """A cardinal said in words or digits, English or Hindi ("two thousand four hundred and fifty",
    "twenty four hundred", "बारह सौ", "डेढ़ लाख", "1.5 lakh", "2,400"). None if it is not one number
    ("one seven four five" is a digit string: see :func:`spoken_digits`). Never raises."""
    try:
        words = [t.low for t in _tokens(text) if t.low != "and"]
        return _cardinal(words)
    except Exception:  # a parser bug must not cost the caller the handoff
        log.exception("number parser failed on %r", text[:80])
        return None


def _cardinal(words: list[str]) -> float | None:
    if not words:
        return None
    total = 0.0
    current: float | None = None  # the group below the next multiplier
    last_mult = float("inf")
    prev_tens = False  # the previous word was an English tens word: a unit may follow ("twenty four")
    hundred_done = False  # the group already has its hundreds: only tens and units may follow
    frac: float | None = None  # साढ़े (+0.5), सवा (+0.25), पौने (-0.25) modify the next number
    for w in words:
        if w in _FRACTIONS:
            if current is not None or frac is not None:
                return None
            frac = _FRACTIONS[w]
            continue
        if w in _MULT:
            mult = _MULT[w]
            base = 1.0 if current is None else current
            if frac is not None:
                base, frac = base + frac, None
            if mult == 100:
                if hundred_done or base >= 100:
                    return None
                current, hundred_done, prev_tens = base * 100, True, False
                continue
            if mult >= last_mult:
                return None
            total += base * mult
            last_mult, current, hundred_done, prev_tens = mult, None, False, False
            continue
        v = _small_value(w)
        if v is None:
            return None
        if current is None:
            current = v
        elif prev_tens and w in _EN_UNITS and 0 < v < 10:
            current += v
        elif hundred_done and current % 100 == 0 and v < 100:
            current += v
        else:
            return None
        prev_tens = w in _EN_TENS
    if frac is not None:
        if current is None:
            return None
        current += frac
    return total + (current or 0.0)


def spoken_digits(text: str) -> str | None:
    """Digits read one by one ("one seven four five", "double five two", "चार पाँच दो एक",
    "4 5 2 1") -> "1745"; None unless at least two digits are read that way."""
    out: list[str] = []
    repeat = 1
    for tok in _tokens(text):
        w = tok.low
        if w in ("double", "triple"):
            repeat = 2 if w == "double" else 3
            continue
        if w in _DIGIT_WORDS:
            out.append(str(_DIGIT_WORDS[w]) * repeat)
        elif re.fullmatch(r"\d+", w):
            out.append(w * repeat if len(w) == 1 else w)
        else:
            return None
        repeat = 1
    digits = "".join(out)
    return digits if len(out) >= 2 and repeat == 1 else None


# ---------------------------------------------------------------- number runs in a sentence


@dataclass(frozen=True, slots=True)
class _Run:
    start: int  # token index
    end: int  # exclusive
    value: float | None  # as a cardinal
    digits: str | None  # as a digit string (read digit by digit, or one numeral)


_NUMERAL = re.compile(r"\d+(?:,\d+)*(?:\.\d+)?")


def _numberish(w: str) -> bool:
    return _is_number_word(w) or bool(_NUMERAL.fullmatch(w))


def _number_runs(toks: list[_Tok]) -> list[_Run]:
    """Maximal runs of number words and numerals (a sentence end breaks a run), each read as a
    cardinal or as digits said one by one."""
    runs: list[_Run] = []
    n = len(toks)
    i = 0
    while i < n:
        w = toks[i].low
        nxt_num = i + 1 < n and _numberish(toks[i + 1].low) and not toks[i + 1].stop
        if not _numberish(w) or w == "k" or (w in ("oh", "double", "triple") and not nxt_num):
            i += 1
            continue
        j = i + 1
        while j < n and not toks[j].stop:
            t = toks[j].low
            if toks[j].pause and (_NUMERAL.fullmatch(t) or _NUMERAL.fullmatch(toks[j - 1].low)):
                break  # "4521, 300 rupees": a list of numbers, not one
            if _numberish(t):
                j += 1
            elif t == "and" and toks[j - 1].low in _MULT and j + 1 < n and _numberish(toks[j + 1].low):
                j += 1  # "two hundred and fifty"
            else:
                break
        words = [t.low for t in toks[i:j] if t.low != "and"]
        value = _cardinal(words)
        digits = None
        if value is None:
            digits = spoken_digits(" ".join(words))
            if digits is None:  # not one number: keep the first word alone and go on after it
                value, j = _cardinal(words[:1]), i + 1
        elif len(words) == 1 and words[0].isdigit():
            digits = words[0]
        runs.append(_Run(i, j, value, digits))
        i = j
    return runs


def _fmt_number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


# ---------------------------------------------------------------- entity extraction

_CUR_BEFORE = {"₹": "INR", "rs": "INR", "inr": "INR", "$": "USD", "usd": "USD", "€": "EUR", "£": "GBP"}
_CUR_AFTER = {
    "rupees": "INR", "rupee": "INR", "rupaye": "INR", "rupaiya": "INR", "rs": "INR", "inr": "INR",
    "dollars": "USD", "dollar": "USD", "bucks": "USD", "usd": "USD", "euros": "EUR", "euro": "EUR",
    "pounds": "GBP", "pound": "GBP",
    _fold("रुपये"): "INR", _fold("रुपए"): "INR", _fold("रुपया"): "INR", _fold("रु"): "INR",
    _fold("रूपये"): "INR", _fold("रूपए"): "INR",
}  # fmt: skip
_MONTHS = {
    m.lower(): m
    for m in ("January February March April May June July August September October November December".split())
}
_MONTHS.update({m[:3].lower(): m for m in list(_MONTHS.values())})
_MONTHS["sept"] = "September"
_MONTHS.update(
    {
        _fold(h): e
        for h, e in (
            ("जनवरी", "January"), ("फ़रवरी", "February"), ("फरवरी", "February"), ("मार्च", "March"),
            ("अप्रैल", "April"), ("मई", "May"), ("जून", "June"), ("जुलाई", "July"), ("अगस्त", "August"),
            ("सितंबर", "September"), ("सितम्बर", "September"), ("अक्टूबर", "October"),
            ("अक्तूबर", "October"), ("नवंबर", "November"), ("नवम्बर", "November"),
            ("दिसंबर", "December"), ("दिसम्बर", "December"),
        )
    }
)  # fmt: skip
_MONTHS.pop("may", None)  # "may" is mostly a verb; only "May <day>" / "<day> May" count (below)
_ORD_UNITS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9,
}  # fmt: skip
_ORDINALS = dict(_ORD_UNITS)
_ORDINALS.update(
    {
        "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
        "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
        "twentieth": 20, "thirtieth": 30,
    }
)  # fmt: skip
WEEKDAYS = {d.lower(): d for d in "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()}
_RELATIVE_EN = {"today", "tomorrow", "yesterday", "tonight"}
_RELATIVE_HI = {
    _fold("आज"): "today",
    _fold("परसों"): "the day after tomorrow or before yesterday (परसों)",
    _fold("कल"): "yesterday or tomorrow (कल)",
}
_HI_WEEK = {_fold("हफ्ते"), _fold("हफ़्ते"), _fold("सप्ताह"), _fold("हफ्ता")}
_HI_MONTH = {_fold("महीने"), _fold("महीना")}
_HI_REL = {_fold("पिछले"): "last", _fold("अगले"): "next", _fold("इस"): "this"}

_ORDER_WORDS = {
    "order",
    "orders",
    "parcel",
    "package",
    "shipment",
    "tracking",
    "awb",
    _fold("ऑर्डर"),
    _fold("आर्डर"),
}
_BOOKING_WORDS = {"booking", "reservation", "pnr", "ticket", "confirmation", _fold("बुकिंग")}
_CARD_WORDS = {"card", "cards", _fold("कार्ड")}
_ACCOUNT_WORDS = {"account", "a/c", "acct", _fold("खाता"), _fold("खाते"), _fold("अकाउंट")}
_PHONE_WORDS = {"phone", "mobile", "number's", "whatsapp", "cell", _fold("फ़ोन"), _fold("मोबाइल")}
_NAME_STOP = {
    "calling",
    "not",
    "very",
    "so",
    "really",
    "the",
    "a",
    "an",
    "just",
    "here",
    "from",
    "about",
    "and",
    "trying",
    "still",
    "going",
    "fed",
    "sick",
    "tired",
    "angry",
    "upset",
    "sorry",
    "okay",
    "fine",
    "waiting",
    "having",
    "your",
    "with",
    "in",
    "on",
    "at",
    "is",
    "it",
    "that",
    "this",
    "my",
    "calling.",
}
_REF_CODE = re.compile(r"\b([A-Z]{1,3})-?(\d{3,10})\b")
_BOOKING_CODE = re.compile(
    r"\b(?:booking|reservation|pnr|confirmation)(?:\s+(?:reference|ref|number|no\.?|code|id))?"
    r"(?:\s+(?:is|was|:))?\s*([A-Z0-9]{5,10})\b",
    re.IGNORECASE,
)
_PHONE = re.compile(r"(?<![\d])(\+?\d[\d\s-]{8,16}\d)(?![\d])")


def extract_entities(
    text: str,
    turn: int,
    language: str = "en-IN",
    *,
    dtmf: bool = False,
    hint: str | None = None,
) -> list[Entity]:
    """Entities in one caller turn. ``dtmf``: ``text`` is keypad digits; ``hint`` is what the digits
    (or a bare number) most likely are, from the conversation ("order_ref", "card_last4", ...;
    default ``order_ref``). ``language`` is the turn's language; English and Hindi vocabularies are
    always both applied (callers mix them). Never raises: bad input gives an empty list."""
    try:
        if not isinstance(text, str) or not text.strip():
            return []
        turn = max(0, int(turn))
        if dtmf:
            return _dtmf_entities(text, turn, hint)
        return dedupe(_extract(text[:2000], turn, hint))
    except Exception:
        log.exception("entity extraction failed on turn %s: %r", turn, str(text)[:80])
        return []


def _dtmf_entities(text: str, turn: int, hint: str | None) -> list[Entity]:
    digits = re.sub(r"[^0-9]", "", text)
    if len(digits) < 2:
        return []  # "0" for an operator, "1" for a menu: not an entity
    # a kind keyed digits can be (not an amount, a date or a name)
    kind = (
        hint if hint in ("order_ref", "booking_ref", "card_last4", "account_last4", "phone") else "order_ref"
    )
    if kind in ("card_last4", "account_last4") and len(digits) != 4:
        kind = "order_ref"
    return [Entity(kind=kind, value=digits[:40], turn=turn)]


def dedupe(items: Iterable[Entity]) -> list[Entity]:
    seen: set[tuple[str, str]] = set()
    out = []
    for e in items:
        key = (e.kind, e.value.lower())
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _extract(text: str, turn: int, hint: str | None) -> list[Entity]:
    toks = _tokens(text)
    low = [t.low for t in toks]
    runs = _number_runs(toks)
    out: list[Entity] = []
    used: set[int] = set()  # token indexes already part of an entity

    def ent(kind: EntityKind, value: str, span: Iterable[int] = ()) -> None:
        out.append(Entity(kind=kind, value=value, turn=turn))
        used.update(span)

    def near(i: int, words: set[str], before: int = 5) -> bool:
        return any(w in words for w in low[max(0, i - before) : i])

    # amounts: a number next to a currency
    for r in runs:
        if r.value is None:
            continue
        cur = None
        if r.start > 0 and low[r.start - 1] in _CUR_BEFORE:
            cur = _CUR_BEFORE[low[r.start - 1]]
        elif r.end < len(low) and low[r.end] in _CUR_AFTER and not toks[r.end].pause:
            cur = _CUR_AFTER[low[r.end]]
        if cur:
            ent("amount", f"{_fmt_number(r.value)} {cur}", range(r.start - 1, r.end + 1))

    # dates
    _dates(toks, low, runs, ent)

    # written references: "A1745", "B-2981"
    for m in _REF_CODE.finditer(_fold(text)):
        kind = "booking_ref" if _near_text(text, m.start(), _BOOKING_WORDS) else "order_ref"
        ent(kind, m.group(1).upper() + m.group(2))
    for m in _BOOKING_CODE.finditer(_fold(text)):
        code = m.group(1).upper()
        if any(c.isdigit() for c in code) and not any(e.value == code for e in out):
            ent("booking_ref", code)

    # phone numbers written as digits ("+91 98000 00001")
    phones: set[str] = set()
    for m in _PHONE.finditer(_fold(text)):
        digits = re.sub(r"\D", "", m.group(1))
        if 10 <= len(digits) <= 13:
            phones.add(digits)
            ent("phone", ("+" if m.group(1).startswith("+") else "") + digits)

    # spoken references and last four digits
    for r in runs:
        if r.digits is None or any(k in used for k in range(r.start, r.end)):
            continue
        digits = r.digits
        if any(digits in p for p in phones):
            continue
        prev = toks[r.start - 1] if r.start > 0 else None
        letter = (
            prev.raw.upper()
            if prev is not None and len(prev.raw) == 1 and prev.raw.isascii() and prev.raw.isalpha()
            else None
        )
        if (
            letter
            and prev is not None
            and (prev.raw.isupper() or near(r.start - 1, _ORDER_WORDS | _BOOKING_WORDS, 3))
        ):
            if len(digits) >= 3:
                kind = "booking_ref" if near(r.start - 1, _BOOKING_WORDS, 4) else "order_ref"
                ent(kind, letter + digits, range(r.start - 1, r.end))
                continue
        if len(digits) == 4 and near(r.start, _CARD_WORDS, 6):
            ent("card_last4", digits, range(r.start, r.end))
        elif len(digits) == 4 and near(r.start, _ACCOUNT_WORDS, 6):
            ent("account_last4", digits, range(r.start, r.end))
        elif len(digits) >= 10 and (near(r.start, _PHONE_WORDS, 6) or digits[0] in "6789"):
            ent("phone", digits, range(r.start, r.end))
        elif len(digits) >= 3 and near(r.start, _BOOKING_WORDS, 5):
            ent("booking_ref", digits, range(r.start, r.end))
        elif len(digits) >= 3 and (near(r.start, _ORDER_WORDS, 5) or (r.end - r.start) >= 3):
            # digits read one by one are a reference of some kind; the conversation says which
            kind = (
                hint if hint in ("order_ref", "booking_ref", "card_last4", "account_last4") else "order_ref"
            )
            if kind.endswith("last4") and len(digits) != 4:
                kind = "order_ref"
            ent(kind, digits, range(r.start, r.end))

    _names(toks, low, ent)
    return out


def _near_text(text: str, pos: int, words: set[str]) -> bool:
    before = [t.low for t in _tokens(text[max(0, pos - 40) : pos])][-4:]
    return any(w in words for w in before)


def _dates(toks: list[_Tok], low: list[str], runs: list[_Run], ent) -> None:
    run_at = {r.start: r for r in runs}
    n = len(low)
    last_month: str | None = None
    pending: list[int] = []  # "from the 5th to the 8th of April": days waiting for their month
    i = 0
    while i < n:
        w = low[i]
        prev = low[i - 1] if i > 0 else ""
        day, j = _ordinal_at(low, i)
        if day is None and i in run_at:
            r = run_at[i]
            if r.end < n and _month_word(toks, r.end + (low[r.end] == "of"), after_day=True):
                day, j = _day_of(r), r.end
        if day is not None:
            k = j + 1 if j < n and low[j] == "of" else j
            month = _month_word(toks, k, after_day=True)
            if month:
                for d in pending:
                    ent("date", f"{d} {month}")
                pending.clear()
                ent("date", f"{day} {month}")
                last_month = month
                i = k + 1
                continue
            if prev in _RANGE_WORDS:
                if last_month:  # "from the fifth of April to the eighth": the month carries over
                    ent("date", f"{day} {last_month}")
                elif prev in ("from", "between"):
                    pending.append(day)
                i = j
                continue
        # "March 12", "March the 12th"
        month = _month_word(toks, i, after_day=False)
        if month and i + 1 < n:
            k = i + 2 if low[i + 1] == "the" else i + 1
            d2, j2 = _ordinal_at(low, k)
            if d2 is None and k in run_at:
                d2, j2 = _day_of(run_at[k]), run_at[k].end
            if d2 is not None:
                ent("date", f"{d2} {month}")
                last_month = month
                i = j2
                continue
        # relative dates, kept as words (in English)
        nxt = low[i + 1] if i + 1 < n else ""
        if w in ("next", "this", "last", "coming") and (
            nxt in WEEKDAYS or nxt in ("week", "month", "weekend")
        ):
            ent("date", f"{w} {WEEKDAYS.get(nxt, nxt)}")
            i += 2
            continue
        if w == "day" and low[i : i + 3] == ["day", "after", "tomorrow"]:
            ent("date", "day after tomorrow")
            i += 3
            continue
        if w in _HI_REL and (nxt in _HI_WEEK or nxt in _HI_MONTH):
            ent("date", f"{_HI_REL[w]} {'week' if nxt in _HI_WEEK else 'month'}")
            i += 2
            continue
        if w in WEEKDAYS and prev in ("on", "by", "since", "from", "until", "till", "before", "after"):
            ent("date", WEEKDAYS[w])
        elif w in _RELATIVE_EN:
            ent("date", w)
        elif w in _RELATIVE_HI:
            ent("date", _RELATIVE_HI[w])
        i += 1


_RANGE_WORDS = {"to", "till", "until", "through", "and", "from", "between", _fold("से"), _fold("तक")}


def _day_of(r: _Run) -> int | None:
    v = r.value
    if v is not None and float(v).is_integer() and 1 <= v <= 31:
        return int(v)
    return None


def _ordinal_at(low: list[str], i: int) -> tuple[int | None, int]:
    """An ordinal day starting at token i ("the" skipped): (day, index after it) or (None, i)."""
    start = i
    if i < len(low) and low[i] == "the":
        i += 1
    if i >= len(low):
        return None, start
    w = low[i]
    if w in ("twenty", "thirty") and i + 1 < len(low) and low[i + 1] in _ORD_UNITS:
        d = _EN_TENS[w] + _ORD_UNITS[low[i + 1]]
        return (d, i + 2) if d <= 31 else (None, start)
    if w in _ORDINALS:
        return _ORDINALS[w], i + 1
    m = re.fullmatch(r"(\d{1,2})(st|nd|rd|th)", w)
    if m and 1 <= int(m.group(1)) <= 31:
        return int(m.group(1)), i + 1
    return None, start


def _month_word(toks: list[_Tok], i: int, *, after_day: bool) -> str | None:
    if i >= len(toks):
        return None
    w = toks[i].low.rstrip(".")
    if w == "may":
        return "May" if after_day or toks[i].raw == "May" else None
    return _MONTHS.get(w)


_NAME_CUES_EN = (
    ("my", "name", "is"),
    ("my", "name's"),
    ("name", "is"),
    ("this", "is"),
    ("i", "am"),
    ("i'm",),
)


def _names(toks: list[_Tok], low: list[str], ent) -> None:
    n = len(toks)
    for i in range(n):
        for cue in _NAME_CUES_EN:
            if tuple(low[i : i + len(cue)]) != cue:
                continue
            k = i + len(cue)
            strict = cue[0] in ("this", "i", "i'm")  # "this is the third time", "I am calling": need capitals
            parts: list[str] = []
            while k < n and len(parts) < 3:
                raw = toks[k].raw
                if parts and toks[k].pause:
                    break  # "My name is Priya, I was charged twice"
                if low[k] in _NAME_STOP or not raw.isalpha() or _is_number_word(low[k]):
                    break
                if strict and not raw[0].isupper():
                    break
                parts.append(raw[0].upper() + raw[1:])
                k += 1
            if parts and not (strict and len(parts) == 1 and low[i + len(cue)] in _MONTHS):
                ent("name", " ".join(parts), range(i, k))
                return
    # Hindi: "मेरा नाम प्रिया शर्मा है"
    name_w, mera = _fold("नाम"), {_fold("मेरा"), _fold("मेरी")}
    for i in range(1, n):
        if low[i] == name_w and low[i - 1] in mera:
            parts = []
            k = i + 1
            while k < n and len(parts) < 3 and not (parts and toks[k].pause):
                if low[k] in (_fold("है"), _fold("हैं"), _fold("हूं")):
                    break
                parts.append(toks[k].raw)
                k += 1
            if parts and k < n:
                ent("name", " ".join(parts), range(i, k))
                return
