"""The stakes classifier: caller turn text -> probabilities over routing classes.

A multinomial logistic regression over hashed-free, vocabulary-indexed features (word unigrams
and bigrams, character 2-5-grams inside word boundaries), trained by ``python -m voxroute.routing.train``.
Inference is numpy only and sits on the turn's critical path, so the per-word part of the
computation (unigram and character n-gram weights) is cached per model as one summed row per
word: a turn costs a few dict look-ups and one small ``np.add.reduce`` per word.

The feature function here is the single definition used by training and inference alike.
"""

from __future__ import annotations

import csv
import json
import re
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxroute.routing.embed import StaticEmbeddings

CLASSES: tuple[str, ...] = (
    "faq",
    "order_tracking",
    "booking_change",
    "complaint",
    "billing_dispute",
    "sales_qualification",
    "document_support",
    "regulated",
    "human_request",
    "out_of_scope",
)
HIGH_CLASSES: tuple[str, ...] = ("booking_change", "complaint", "billing_dispute", "regulated")
STAKES_LABELS: tuple[str, ...] = ("routine", "high_stakes", "human", "out_of_scope")

MODEL_DIR = Path(__file__).resolve().parent / "model"
DEFAULT_MODEL_PATH: Path = MODEL_DIR / "stakes.npz"

CHAR_NGRAMS = (2, 3, 4, 5)
# Words: Unicode word characters plus the whole Devanagari block except the dandas (।, ॥):
# Python's \w does not match Devanagari vowel signs and viramas, which would split words.
_TOKEN_RE = re.compile(r"[\w\u0900-\u0963\u0966-\u097f]+")
_DIGIT_RE = re.compile(r"\d")
_APOSTROPHES = str.maketrans("", "", "'\u2019`")
CLIP_CHARS = 500
CLIP_HEAD = 300
MAX_WORDS = 200
MAX_WORD_CHARS = 32
MAX_TEXT_CHARS = 20_000  # past this the text is not even normalised
# Per-model cache of per-word rows; bounded so a stream of junk words cannot grow memory.
_WORD_CACHE_MAX = 50_000


def normalize(text: str) -> str:
    """NFKC, lower case, apostrophes dropped, every digit (any script) -> '0'."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    return _DIGIT_RE.sub("0", text)


def clip(text: str) -> str:
    """A turn longer than CLIP_CHARS keeps its first CLIP_HEAD and last CLIP_CHARS - CLIP_HEAD
    characters: a spoken turn is rarely that long, and a junk one (10,000 characters) must cost no
    more than a long sentence. Applied by the router to every text it decides on."""
    if len(text) <= CLIP_CHARS:
        return text
    return text[:CLIP_HEAD] + " " + text[-(CLIP_CHARS - CLIP_HEAD) :]


def tokens(text: str) -> list[str]:
    """The words of a text. A very long turn keeps its first and last MAX_WORDS // 2 words, and a word
    its first MAX_WORD_CHARS characters, so that junk input (10,000 characters, no spaces) costs
    no more than a long sentence: the decision's time is bounded whatever the caller sends."""
    words = _TOKEN_RE.findall(
        normalize(text[:MAX_TEXT_CHARS]) if len(text) > MAX_TEXT_CHARS else normalize(text)
    )
    if len(words) > MAX_WORDS:
        words = words[: MAX_WORDS // 2] + words[-(MAX_WORDS // 2) :]
    return [w[:MAX_WORD_CHARS] for w in words]


def word_features(word: str) -> list[str]:
    """Unigram plus character n-grams of ' word ' (the padding marks the word boundary)."""
    feats = ["w " + word]
    padded = f" {word} "
    size = len(padded)
    for n in CHAR_NGRAMS:
        feats.extend(["c" + padded[i : i + n] for i in range(size - n + 1)])
    return feats


def bigram_features(words: list[str]) -> list[str]:
    return [f"b {a} {b}" for a, b in zip(words, words[1:], strict=False)]


# Domain-independent cues, from what stakes are rather than from any one business: money moving
# or owed, goods missing, wrong or damaged, account access and security, harm and legal matters,
# cancellation, repeated failure; versus questions (what, how, which, is there). English, Hindi
# and romanised Hindi. Each match adds the cue's feature CUE_REPEAT times, so that a cue weighs
# about as much as a word, whose char n-grams add a dozen features.
_CUES: dict[str, str] = {
    "money_moved": r"\b(?:charged|charges?|debited|deducted|double charged|paid|payments?|refund\w*|cashback|"
    r"winnings?|credit(?:ed)?|withdraw\w*|balance|wallet|money|amount|premium|emi|recharged?|bill(?:ed)?)\b"
    r"|\b(?:paise|paisa|rupaye|kat gaye|kat gaya|kata)\b|पैस|रुपय|रुपए|रिफ़ंड|रिफंड|कट ग|कटे|राशि(?!फल)|भुगतान",
    "not_received": r"\bnot (?:yet )?(?:received|credited|reflect\w*|refunded|come|came|arrived|delivered|"
    r"showing|updated?|updating|working|got|get|reached|returned)\b|\bnever (?:comes?|came|arrived?|received|got|"
    r"credited|reached|replied)\b|\b(?:still|yet) (?:not|no|pending|waiting)\b|\bpending\b|\bstuck\b|"
    r"\bmissing\b|\bhas ?n[o']?t (?:come|arrived|been|reached)|\bhave ?n[o']?t (?:got|received|been)|"
    r"\bdid ?n[o']?t (?:get|receive|come|arrive|go through|happen|work)|"
    r"\b(?:payment|transaction|transfer|recharge|order) (?:has |have |had )?failed\b|\bmoney (?:is |has |was )?gone\b|"
    r"\bnahi? (?:aaya|aayi|aaye|mila|"
    r"mili|mile|hua|hui|ho raha|ho rahi|aa raha)\b|नहीं (?:आया|आई|आए|मिला|मिली|हुआ|हो रहा)|अटक",
    "damaged_wrong": r"\b(?:broken|broke|damaged|torn|cracked|defective|faulty|expired|fake|leak\w*|"
    r"wrong|incorrect|instead of|empty|not switch\w* on|stopped working|dead|spoilt|spoiled|used|"
    r"but i (?:had )?ordered|not what i ordered)\b|"
    r"\b(?:galat|toota|tuta|phata|kharab|nakli)\b|टूट|फट|गलत|ख़राब|खराब|नकली|एक्सपायर",
    "account_security": r"\b(?:hack\w*|blocked|suspended|locked|frozen|compromised|unauthori[sz]ed|"
    r"without my (?:permission|consent|knowledge)|someone (?:else )?(?:used|logged|changed|withdrew)|"
    r"sim swap|otp|(?:can ?not|can'?t|cannot|unable to|not able to) (?:log ?in|login|sign in|access))\b"
    # a lost or forgotten password or PIN: account access, whoever asks (a reset by phone is how accounts
    # are taken over)
    r"|\b(?:forg[eo]t\w*|lost|recover\w*|retriev\w*|restor\w*|reset\w*|can'?t remember) (?:\w+ ){0,3}?"
    r"(?:pin|password|passcode|passkey|access key)s?\b|\b(?:pin|password|passcode|access key) (?:code )?"
    r"(?:recovery|retrieval|reset)\b|\b(?:password|pin|passcode) (?:bh?ool|yaad nahi?)"
    r"|ब्लॉक|हैक|पासवर्ड भूल",
    "harm_legal": r"\b(?:allerg\w*|rash\w*|vomit\w*|swallow\w*|side effects?|sick|hospital\w*|"
    r"admitted|accident|injur\w*|police|court|legal|lawyer|fir|consumer forum|rejected|denied|"
    r"harass\w*|passport)\b|उल्टी|एलर्जी|अस्पताल|रिजेक्ट|पुलिस",
    # a cancellation or a change to something in flight; not the fee or policy of one ("what is the
    # cancellation fee" is a question: see "policy"), and not an alarm or a reminder (see "assistant")
    "cancel": r"\b(?:cancel\w*(?! (?:fees?|charges?|polic\w*|penalt\w*|terms|rules)\b)"
    r"(?! (?:my |the |an? |all |this |that )?(?:alarms?|reminders?|timers?)\b)|close my|disconnect|"
    r"stop the|stop my|discontinue|reschedul\w*|"
    r"(?:chang|modif|updat|correct|edit|fix)\w* (?:(?:my|the|an?|our|this) )?(?:\w+ )?(?:order|booking|plan|date|"
    r"nominee|flight)|"
    # the address goods are going to (not the caller's own address on file: "change my address" is admin)
    r"(?:chang|modif|updat|correct|edit|fix)\w* (?:(?:my|the|an?|our|this) )?(?:(?:shipping|delivery|postal) address|"
    r"address (?:on|of|for|in) (?:my|the|an?|this|our) (?:order|parcel|package|shipment|delivery))|"
    r"(?:shipping|delivery) address (?:chang|modif|updat|correct)\w*|redirect\w* (?:my|the|a|this) "
    r"(?:shipment|parcel|package|order|delivery)|"
    r"(?:add|remov|delet|drop|includ|exclud|swap|replac|chang|modif|edit)\w* (?:an? |some |several |one |two |the |\w+ )?"
    r"(?:items?|products?|something|things?|quantit(?:y|ies)) (?:to|from|in|of|on) (?:my|an|the|our|this) order|"
    r"forg[eo]t\w* to (?:add|include|order)|"
    # closing an account is a cancellation (opening or editing one is admin: see "account_admin")
    r"(?:delet|terminat|clos)\w* (?:\w+ ){0,3}accounts?|account (?:deletion|termination|closure)|"
    r"band (?:kar|karna|karo))\b|रद्द|बंद कर",
    # ("25 times 4?" is arithmetic, not a caller who has called 25 times)
    "failure_repeat": r"\b(?:again and again|(?:second|third|fourth|fifth|\d+(?:th|rd|nd)?) times?"
    r"(?! ?\d+ ?(?:[?=]|$|is\b|equals?\b))|"
    r"every time|keeps? \w+ing|nobody|no one|no response|scam|cheat\w*|worst|pathetic|ridiculous|"
    r"unacceptable|fed up|complain\w*|terrible|horrible|awful|disgusting|(?:is|are) a joke|disappointed|"
    r"dissatisfied|not (?:at all )?(?:happy|satisfied))\b|baar baar|बार बार|तीसरी बार"
    r"|\b(?:do|teen|char|chaar|paanch|panch|kai|kitni|\d+) baar\b|\b(?:bekaar|bekar|bakwas|tamasha)\b|बेकार|बकवास"
    r"|\bkoi (?:madad|help|jawab|sun\w*) (?:nahi|nahin)\b|\bbahut pareshan\b|कोई (?:मदद|जवाब) नहीं|कोई नहीं सुन|परेशान हूँ",
    # money taken from the caller: a charge to dispute, not a fee asked about ("why was I charged a fee")
    "money_taken": r"\b(?:charged|debited|deducted|took|taken|on my (?:statement|bill)|noticed?|"
    r"kat (?:gaye|gaya|gayi|liya|liye)|kata|kaat)\b|कट ग|कटे|काट लि|काटे"
    # a fee the caller has seen: "this fee", "an extra charge", "why was there a fee"
    r"|\b(?:this|that|these|an? (?:extra|additional|added|strange|unknown|weird|hidden))\s+(?:\S+\s+)?(?:fees?|charges?)\b"
    r"|\bwhy (?:was|were|am|is|are|did|do|does|have|has)\b.{0,40}\b(?:fees?|charg\w*)",
    # money the caller wants back: owed, not asked about ("when will I get my money back?")
    "money_back": r"\b(?:(?:my|the) money back|refund (?:me|my money)|return my money|give (?:me )?back my|"
    r"get (?:a |my |the )?refunds?|get reimbursed|(?:track\w*|status of) (?:the |my |a )?refunds?|refunds? status|"
    r"(?:paisa|paise|paisay) wapas|refund (?:kaise )?(?:milega|chahiye))\b"
    r"|पैसे वापस|पैसा वापस|रिफंड (?:कैसे )?(?:मिलेगा|चाहिए)",
    "question": r"^\s*(?:what|how|which|where|when|is|are|does|do|can|could|will|should|any)\b|\?\s*$|"
    r"\b(?:kya|kaise|kitna|kitne|kitni|kaunsa|kab|kahan)\b|क्या|कैसे|कितन|कौन",
    "buy": r"\b(?:buy|purchase|kharid\w*|want to order|book (?:a|me)|suggest|recommend|choose|pick|"
    r"upgrade|add money|price|cost|offer|discount|coupon|plans?)\b|खरीद|कीमत",
    # booking something new (a ticket, a table, an appointment, a visit): a sale in any business,
    # as against changing or cancelling a booking the caller has (see _CHANGE_RE in cue_features)
    "book_new": r"\b(?:book|reserve)\s+(?:me\s+|us\s+|for\s+me\s+)?(?:an?|one|two|three|four|\d+|another|some|"
    r"(?:\w+ )?(?:tickets?|seats?|tables?|slots?|rooms?|appointments?|flights?|trains?|bus|visits?|sessions?|"
    r"classes|demo|test drive|consultation|service))\b"
    r"|\b(?:make|do|get|place)\s+(?:me\s+)?an?\s+(?:new\s+)?(?:booking|reservation|appointment|order)\b"
    r"|\b(?:schedule|fix|arrange)\s+(?:me\s+)?an?\s+(?:new\s+)?(?:appointment|visit|demo|test drive|slot|"
    r"consultation|session|installation|service|technician)\b"
    r"|\b(?:book|booking|reserve|appointment|order)\s+(?:karna|karni|karne|karo|kar do|kar dijiye|kariye|"
    r"karwa\w*|krna|krni|kr do|lena|leni|chahiye)\b"
    r"|बुक (?:करना|करनी|करने|कर दीजिए|कर दें|कर दो|करें|कीजिए|करवा|करा)|बुकिंग करनी|"
    r"(?:अपॉइंटमेंट|ऑर्डर) (?:लेना|लेनी|चाहिए|करना)",
    # asking for a person: the only thing that makes a turn a human request ("help me" does not)
    "person": r"\b(?:agent|human|person|representative|executive|supervisor|manager|someone|somebody|"
    r"operator|advisor|adviser|counsell?or|customer (?:care|service|support|assistance)|support (?:team|staff)|"
    r"staff|call cent(?:re|er)|robot|bot|machine|insaan|banda|bande|kisi se baat)\b"
    r"|एजेंट|इंसान|व्यक्ति|कर्मचारी|किसी से बात|प्रतिनिधि|ऑपरेटर|कस्टमर (?:केयर|सपोर्ट|सर्विस)|मशीन",
    "talk_to": r"\b(?:speak|talk|chat|connect|transfer|put me through)\w* (?:to|with|me)\b|\bcontact\w*\b|"
    r"\bget in touch\b|\breach (?:out|you|your|the customer|customer|support|someone|somebody|a person)\b|"
    r"\bbaat (?:karni|karna|karao|karwao|kara|karwa)|बात (?:करनी|कराइए|करवाइए|करवा|करा)|से जोड़",
    # something has gone wrong, said in general words: a problem, an issue, a complaint or claim
    "problem": r"\b(?:problems?|issues?|errors?|trouble|complain\w*|claims?|reclamation|report|dispute\w*|"
    r"fraud\w*|dikkat|samasya|pareshani)\b|शिकायत|समस्या|दिक्कत",
    # help with a task: a sale or a how-to as often as a problem, and not a request for a person
    "help_with": r"\b(?:help|helping|assist\w*|guide|madad|sahayata)\b|मदद|सहायता",
    # asking for information or rules in general, not reporting something of one's own gone wrong
    "info": r"\b(?:polic(?:y|ies)|information|info|options?|methods?|rules|terms|conditions|"
    r"how (?:do|can|could|should|would|to)|where (?:can|do|could|should|to)|"
    r"what (?:do|should|would) (?:i|we) (?:have to |need to )?do|"
    r"(?:do ?n[o']?t|dont) know (?:how|what|where)|tell me (?:about|more)|is it possible|allowed)\b"
    r"|नियम|जानकारी|कैसे कर",
    # the rules of a business in general: a fee, a policy, terms, when a refund is possible
    "policy": r"\b(?:fees?|penalt(?:y|ies)|polic(?:y|ies)|terms|charges? (?:for|of|on)|"
    r"(?:how long|how many days) (?:(?:do|does|will|would) )?(?:\w+ ){1,3}(?:usually |normally )?take|"
    r"in (?:what|which) cases|under what (?:circumstances|conditions))\b"
    r"|\b(?:niyam|shulk)\b|नियम|शुल्क|पॉलिसी",
    # opening, editing or switching an account or profile: admin, not access or security
    "account_admin": r"\b(?:open\w*|creat\w*|register\w*|sign\w* up|set\w* up|switch\w*|edit\w*|updat\w*|"
    r"chang\w*) (?:a |an |my |the |new |another |other |our |different |user |\w+ ){0,3}(?:accounts?|profiles?)\b"
    r"|\bregistration\b|\bsign(?:ing)?[ -]?up\b|\bnewsletter\b|\bmailing list\b"
    # an address kept on file for later orders (changing where an order in flight goes is "cancel")
    r"|\b(?:set\w*(?: up)?|add\w*|sav\w*|submit\w*|enter\w*|creat\w*) (?:(?:a|an|my|another|new|different|second|"
    r"other|extra) ){0,2}(?:shipping|delivery|billing) address(?:es)?\b",
    # what a home assistant is asked, no business's matter: alarms, lights, music, weather, jokes
    "assistant": r"\b(?:alarms?|reminders?|timers?|lights?|lamps?|bulbs?|volume|music|songs?|playlists?|radio|"
    r"podcasts?|audio ?books?|weather|(?:tell|hear|know|say) (?:me |us )?(?:a |an |any |some |another )?(?:\w+ )?jokes?|"
    r"recipes?|cook (?:me|something|dinner|lunch)|what (?:should|can) i cook|calendar|meetings?|tweets?|twitter|facebook|"
    r"gaana|gaane|mausam|chutkul\w*|khana (?:banau\w*|banaun|banaye\w*|banana))\b|अलार्म|गाना|गाने|मौसम|चुटकुल|खाना बनाऊ",
}
_CUE_RES = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in _CUES.items()]
# A booking changed, moved or cancelled (a change to what the caller has, so stakes), however it is
# said: a turn with one of these is no new booking ("I booked a table for Saturday but need Sunday",
# "cancel my hotel booking and book another date", "ticket ki date badal do").
_CHANGE_RE = re.compile(
    r"\b(?:chang\w*|modif\w*|shift\w*|postpon\w*|prepon\w*|mov(?:e|ed|ing)|extend\w*|amend\w*|rebook\w*|"
    r"push\w*|instead|different|earlier|later|booked|badal\w*|badha\w*|aage)\b|बदल|बढ़ा|आगे|किसी और|दूसरे दिन",
    re.IGNORECASE,
)
_NEWSLETTER_RE = re.compile(
    r"\b(?:newsletters?|mailing list|promotional (?:e-?mails?|messages|sms)|marketing (?:e-?mails?|messages))\b"
    r"|न्यूज़लेटर|न्यूजलेटर",
    re.IGNORECASE,
)
_SIGNUP_RE = re.compile(
    r"\bregistration\b|\bregister(?:ing)?\b(?! (?:an? |my |the )?complaint)|\bsign(?:ing)?[ -]?up\b"
    r"|रजिस्ट्रेशन|साइन ?अप",
    re.IGNORECASE,
)
_SIGNUP_TROUBLE = frozenset({"problem", "not_received"})
# The human_request offset of a trained model applies only to a turn with one of these: a turn that
# names no person and asks to be put through to no one ("say that again", "let's start over",
# "subscribe to the newsletter") is no request for a person, however unsure the model is of it.
HUMAN_OFFSET_CUES = frozenset({"k person", "k talk_to"})
CUE_REPEAT = 6
# Number types: an amount of money reads as stakes, a size, quantity, duration or reference
# number does not (a "60 by 78" bed is not a billing dispute).
_UNIT = (
    r"inch(?:es)?|feet|foot|ft|cm|mm|kg|kgs|gm|grams?|gb|mb|mbps|tb|ml|litres?|liters?|mah|cc|"
    r"seater|mg|size|kw|watts?|hp|"
)
_SPOKEN_DIGITS = (
    "zero|oh|one|two|three|four|five|six|seven|eight|nine|double|triple|"
    "ek|do|teen|char|chaar|paanch|panch|chhe|cheh|saat|aath|nau|shunya"
)
_HINDI_DIGITS = "शून्य|एक|दो|तीन|चार|पाँच|पांच|छह|छः|सात|आठ|नौ"
_NUMBER_TYPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("money", re.compile(
        r"(?:₹|\brs\.?|\binr|\$)\s*\d|\d[\d,.]*\s*(?:rupees?|rs\b|inr\b|dollars?|lakhs?|crores?|k\b)"
        r"|\d\s*(?:रुपये|रुपए|लाख)|\b(?:hundred|thousand|lakhs?|crores?|hazaa?r|sau)\s+(?:rupees?|rupaye|rs\b)"
        r"|(?:सौ|हज़ार|हजार|लाख)\s*(?:रुपये|रुपए)", re.IGNORECASE)),
    ("size", re.compile(
        rf"\d\s*(?:x|by|\*|×)\s*\d|\d(?:\.\d+)?\s*(?:{_UNIT[:-1]})\b|\bsize \d|\d\s*(?:इंच|किलो)",
        re.IGNORECASE)),
    ("duration", re.compile(
        r"(?:\d+|\b(?:a|one|two|three|four|five|six|seven|ten|few|several|many))\s*(?:days?|weeks?|months?|hours?|hrs?|minutes?|mins?|years?|din|mahine|ghante|दिन|हफ़्त|महीन)\b",
        re.IGNORECASE)),
    ("reference", re.compile(
        r"\d{5,}|\b[a-z]+\d+[a-z\d]*\b|\d+-\d+|\b(?:order|id|number|no|pnr|claim|ticket)\.?\s*(?:id\s*|number\s*|no\.?\s*)?(?:is\s*)?\d"
        # digits read out one by one, as a transcript of a spoken order or claim number has them
        rf"|(?:\b(?:{_SPOKEN_DIGITS})\b[\s,.-]*){{3,}}|(?:(?:{_HINDI_DIGITS})[\s,।-]*){{3,}}",
        re.IGNORECASE)),
    ("date", re.compile(
        r"\b(?:19|20)\d\d\b|\b\d{1,2}(?:st|nd|rd|th)\b|\b\d{1,2}[/.-]\d{1,2}(?:[/.-]\d{2,4})?\b"
        r"|\b\w+(?:st|nd|rd|th) of (?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)\w*\b",
        re.IGNORECASE)),
    ("any", re.compile(r"\d")),
)  # fmt: skip


def cue_features(text: str) -> list[str]:
    """Domain-independent cue and number-type features of one (raw) text, with repeats."""
    text = unicodedata.normalize("NFKC", clip(text))
    cues = {name for name, pattern in _CUE_RES if pattern.search(text)}
    numbers = {name for name, pattern in _NUMBER_TYPES if pattern.search(text)}
    # A policy or a plan named with a cancellation is the thing cancelled, not rules asked about
    # ("policy cancel karni hai" in insurance; "what is the cancellation policy" is no cancel cue).
    if "cancel" in cues:
        cues -= {"policy", "info"}
    # Pairs that mean more than their parts: money that has not arrived is owed; goods or money
    # that have not come after days are overdue; an account the caller cannot get into.
    if {"money_moved", "not_received"} <= cues:
        cues.add("money_owed")
    if "not_received" in cues and "duration" in numbers:
        cues.add("overdue")
    if "account_security" in cues and ({"not_received", "failure_repeat"} & cues):
        cues.add("access_problem")
    # Money asked about (a fee, a price, a policy) with nothing gone wrong is a question, not a
    # dispute; help to buy is a sale.
    trouble = {
        "not_received", "damaged_wrong", "failure_repeat", "account_security", "harm_legal", "problem", "money_back",
        "money_taken",
    }  # fmt: skip
    if "money_moved" in cues and ({"question", "info"} & cues) and not (trouble & cues):
        cues.add("money_question")
    # A fee or a policy asked about, an account opened or edited, with nothing gone wrong: routine
    # in any business. A home assistant's request is no business's (out of scope).
    if "policy" in cues and not (trouble & cues):
        cues.add("policy_question")
    # A newsletter or a mailing list is no service whose cancellation is a stake.
    if "cancel" in cues and _NEWSLETTER_RE.search(text):
        cues.discard("cancel")
    if "account_admin" in cues and not ((trouble | {"cancel"}) & cues):
        cues.add("account_task")
    # Trouble signing up is no account at risk and no money owed: nothing of the caller's is lost yet.
    elif _SIGNUP_RE.search(text) and not ((trouble - _SIGNUP_TROUBLE) | {"cancel", "money_moved"}) & cues:
        cues.add("account_task")
    if "assistant" in cues and not ((trouble | {"money_moved"}) & cues):
        cues.add("off_topic")
    if "book_new" in cues and ((trouble | {"cancel"}) & cues or _CHANGE_RE.search(text)):
        cues.discard("book_new")
    if {"help_with", "buy"} <= cues:
        cues.add("help_buy")
    # (a cancellation is a stake, not a task: "help me cancel my plan" is no how-to)
    stake = trouble | {"cancel"}
    if ({"help_with", "info"} & cues) and not ({"person", "talk_to"} & cues) and not (stake & cues):
        cues.add("task_not_person")
    if {"person", "talk_to"} <= cues:
        cues.add("ask_person")
    if {"money_moved", "problem"} <= cues:
        cues.add("money_problem")
    feats = [f"k {name}" for name in sorted(cues)] + [f"n {name}" for name in sorted(numbers)]
    return feats * CUE_REPEAT


def text_features(text: str) -> list[str]:
    """All feature strings of one text, with repeats (a feature's value is its count)."""
    words = tokens(text)
    feats: list[str] = []
    for w in words:
        feats.extend(word_features(w))
    feats.extend(bigram_features(words))
    feats.extend(cue_features(text))
    return feats


def stakes_of(routing_class: str, high_classes: Iterable[str] = HIGH_CLASSES) -> str:
    """The dataset label (routine/high_stakes/human/out_of_scope) a routing class stands for."""
    if routing_class == "human_request":
        return "human"
    if routing_class == "out_of_scope":
        return "out_of_scope"
    return "high_stakes" if routing_class in set(high_classes) else "routine"


def read_labelled_csv(path: str | Path) -> list[tuple[str, str]]:
    """Rows (text, label) of a CSV with at least the columns ``text,label``."""
    path = Path(path)
    rows: list[tuple[str, str]] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in ("text", "label") if c not in fields]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (header is {fields!r})")
        for line, row in enumerate(reader, start=2):
            label = (row.get("label") or "").strip()
            if label not in STAKES_LABELS:
                raise ValueError(
                    f"{path}: row {line}: label {label!r} is not one of {', '.join(STAKES_LABELS)}"
                )
            rows.append((row.get("text") or "", label))
    return rows


@dataclass(frozen=True, slots=True)
class Scores:
    classes: tuple[str, ...]
    probs: np.ndarray

    def prob(self, routing_class: str) -> float:
        return float(self.probs[self.classes.index(routing_class)])

    def best(self) -> tuple[str, float]:
        i = int(self.probs.argmax())
        return self.classes[i], float(self.probs[i])

    def mass(self, classes: Iterable[str]) -> float:
        index = self.classes.index
        return float(sum(self.probs[index(c)] for c in classes))


class StakesModel:
    """A trained artifact: ``stakes.npz`` (weights) + ``stakes.json`` (metadata) beside it."""

    _cache: dict[Path, StakesModel] = {}
    _cache_lock = threading.Lock()

    def __init__(
        self,
        classes: tuple[str, ...],
        vocab: list[str],
        weights: np.ndarray,
        bias: np.ndarray,
        high_threshold: float,
        high_classes: tuple[str, ...],
        version: str,
        meta: dict | None = None,
        outputs: tuple[str, ...] | None = None,
        output_class: np.ndarray | None = None,
        embeddings: StaticEmbeddings | None = None,
        dense_weights: np.ndarray | None = None,
        embed_scale: float = 1.0,
        human_offset: np.ndarray | None = None,
    ) -> None:
        """``outputs``/``output_class``: the model's own (finer) outputs, e.g. intents, and the class
        index each one belongs to; a class's probability is the sum of its outputs'. Without them
        the outputs are the classes. ``embeddings``/``dense_weights`` (D, outputs): a distilled
        sentence vector (routing/embed.py) times ``embed_scale`` adds its own term to the logits.
        ``human_offset`` (outputs,): added to the logits only when the turn names a person or asks
        to be put through (HUMAN_OFFSET_CUES); see ``routing/train.py`` ``tune_human_boost``."""
        outputs = outputs or classes
        if output_class is None:
            output_class = np.arange(len(classes))
        if weights.shape != (len(vocab), len(outputs)) or bias.shape != (len(outputs),):
            raise ValueError(f"weights {weights.shape} / bias {bias.shape} do not fit the vocabulary/outputs")
        if len(output_class) != len(outputs) or not all(0 <= c < len(classes) for c in output_class):
            raise ValueError("output_class must give a class index for every output")
        self.classes = classes
        self.outputs = outputs
        self._output_class = np.asarray(output_class, dtype=np.int64)
        self._identity = len(outputs) == len(classes) and bool(
            (self._output_class == np.arange(len(classes))).all()
        )
        self.high_threshold = float(high_threshold)
        self.high_classes = high_classes
        self.version = version
        self.meta = meta or {}
        self._index = {f: i for i, f in enumerate(vocab)}
        # Row len(vocab) is all zeros: the target of out-of-vocabulary features.
        self._w = np.vstack([weights.astype(np.float64), np.zeros((1, len(outputs)))])
        self._b = bias.astype(np.float64)
        self._oov = len(vocab)
        self._word_rows: dict[str, tuple[np.ndarray, int]] = {}
        self.embeddings = embeddings
        self._human_offset: np.ndarray | None = None
        if human_offset is not None:
            if human_offset.shape != (len(outputs),):
                raise ValueError(f"human offset {human_offset.shape} does not fit the outputs")
            self._human_offset = human_offset.astype(np.float64)
        self._dense: np.ndarray | None = None
        if embeddings is not None:
            if dense_weights is None or dense_weights.shape != (embeddings.dim, len(outputs)):
                raise ValueError(f"dense weights do not fit {embeddings.dim}-d embeddings and the outputs")
            self._dense = dense_weights.astype(np.float64) * float(embed_scale)

    @classmethod
    def load(cls, path: str | Path | None = None) -> StakesModel:
        path = Path(path) if path is not None else DEFAULT_MODEL_PATH
        key = path.resolve()
        with cls._cache_lock:
            model = cls._cache.get(key)
            if model is None:
                model = cls._read(key)
                cls._cache[key] = model
        return model

    @classmethod
    def _read(cls, path: Path) -> StakesModel:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        with np.load(path, allow_pickle=False) as z:
            weights = z["weights"]
            bias = z["bias"]
            vocab_blob = z["vocab"].tobytes().decode("utf-8")
            outputs = tuple(z["outputs"].tobytes().decode("utf-8").split("\n")) if "outputs" in z else None
            output_class = z["output_class"] if "output_class" in z else None
            dense_weights = z["dense_weights"] if "dense_weights" in z else None
            human_offset = z["human_offset"] if "human_offset" in z else None
        vocab = vocab_blob.split("\n") if vocab_blob else []
        emb_meta = meta.get("embeddings")
        embeddings = StaticEmbeddings.load(path.parent / emb_meta["file"]) if emb_meta else None
        return cls(
            classes=tuple(meta["classes"]),
            vocab=vocab,
            weights=weights,
            bias=bias,
            high_threshold=meta["high_threshold"],
            high_classes=tuple(meta["high_classes"]),
            version=meta["version"],
            meta=meta,
            outputs=outputs,
            output_class=output_class,
            embeddings=embeddings,
            dense_weights=dense_weights,
            embed_scale=emb_meta["scale"] if emb_meta else 1.0,
            human_offset=human_offset,
        )

    def _word_row(self, word: str) -> tuple[np.ndarray, int]:
        row = self._word_rows.get(word)
        if row is None:
            get = self._index.get
            oov = self._oov
            feats = word_features(word)
            row = (self._w[[get(f, oov) for f in feats]].sum(axis=0), len(feats))
            if len(self._word_rows) >= _WORD_CACHE_MAX:
                self._word_rows.clear()
            self._word_rows[word] = row
        return row

    def logits(self, text: str) -> np.ndarray:
        words = tokens(text)
        cues = cue_features(text)
        dense = self._dense_logits(text)
        if self._human_offset is not None and not HUMAN_OFFSET_CUES.isdisjoint(cues):
            dense = dense + self._human_offset
        if not words and not cues:
            return self._b + dense
        rows = [self._word_row(w) for w in words]
        # every n-gram and cue counts, in vocabulary or not
        total = sum(n for _, n in rows) + max(len(words) - 1, 0) + len(cues)
        get = self._index.get
        vecs = [r for r, _ in rows]
        for f in cues:
            i = get(f)
            if i is not None:
                vecs.append(self._w[i])
        for a, b in zip(words, words[1:], strict=False):
            i = get(f"b {a} {b}")
            if i is not None:
                vecs.append(self._w[i])
        return np.add.reduce(vecs) * (1.0 / np.sqrt(total)) + self._b + dense

    def _dense_logits(self, text: str) -> np.ndarray | float:
        if self.embeddings is None or self._dense is None:
            return 0.0
        return self.embeddings.encode(text) @ self._dense

    def scores(self, text: str) -> Scores:
        z = self.logits(text)
        z -= z.max()
        np.exp(z, out=z)
        z /= z.sum()
        if not self._identity:
            z = np.bincount(self._output_class, weights=z, minlength=len(self.classes))
        return Scores(self.classes, z)

    def p_high(self, scores: Scores) -> float:
        return scores.mass(self.high_classes)

    def escalates(self, scores: Scores) -> bool:
        """The tuned decision: stakes-high mass over the threshold, or a human asked for."""
        return self.p_high(scores) >= self.high_threshold or scores.best()[0] == "human_request"

    def stakes_label(self, scores: Scores) -> str:
        """Predicted dataset label: human, high_stakes (escalated), out_of_scope, else routine."""
        best = scores.best()[0]
        if best == "human_request":
            return "human"
        if self.p_high(scores) >= self.high_threshold:
            return "high_stakes"
        if best == "out_of_scope":
            return "out_of_scope"
        return "routine"
