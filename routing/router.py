"""The latency-first router: one ``Router`` per process, one ``Conversation`` per call.

A turn's decision, in order (the first that applies decides the class):

1. keyword/regex rules of the tenant, then the shared rules: a match always wins;
2. a turn that only thanks, acknowledges or defers ("Thanks, I'll think it over"), or only manages
   the conversation ("Say that again", "That's not what I asked"), in a routine conversation is
   ``faq`` (CLOSING, DIALOGUE_ACT);
3. the stakes classifier: ``human_request`` when it wins; a high-stakes class when the mass of
   the high classes reaches the threshold (lowered when the caller names money or the STT was
   unsure); anger words make a low-stakes turn a ``complaint``;
4. a follow-up the model is unsure of ("It's A one seven four five") keeps the previous class.

Then the conversation's state: a high-stakes or human turn escalates, and escalation is sticky
(unless the class allows stepping down after N routine turns); repeated unresolved turns escalate
too. The table cell gives the ladder and targets. Every decision carries a reason string.

Work on partial transcripts: ``speculate(text)`` scores a partial while the caller still talks;
``decide`` reuses the scores when the final transcript is the same text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass

from voxroute.routing.classifier import Scores, StakesModel, clip, cue_features, tokens
from voxroute.routing.examples import ExampleIndex
from voxroute.routing.health import Health
from voxroute.routing.route import Route
from voxroute.routing.table import ClassRoute, ModelPath, RoutingTable

log = logging.getLogger("voxroute.routing")

ANGER = re.compile(
    r"\b(third time|(?:second|fourth|fifth) time|again and again|ridiculous|useless|pathetic|fed up|"
    r"unacceptable|worst|angry|furious|disgusting|scam|cheated?|fraudsters?|nobody (?:ever )?"
    r"(?:calls?|called|helps?|helped|answers?)|never (?:calls?|called) (?:me )?back|sick of|"
    r"what (?:the hell|rubbish)|nonsense|waste of (?:my )?time|(?:you are|youre|you re) not listening)\b"
    r"|\b(?:bakwas|bekaa?r|tamasha|(?:kitni|teesri|paanch|kai) baar|pareshan|gussa|dhokha)\b"
    r"|बकवास|परेशान|तीसरी बार|गुस्सा|धोखा",
    re.IGNORECASE,
)
MONEY = re.compile(
    r"₹|\$\s?\d|\brs\.?\s?\d|\binr\b|\brupees?\b|\brupaye\b|\bdollars?\b|\bpounds?\b|\beuros?\b|"
    r"\blakhs?\b|\bcrores?\b|रुपये|रुपए|रुपया|पैसे|पैसा",
    re.IGNORECASE,
)
# A turn that only closes, acknowledges or defers ("Okay, thank you", "I'll think about it", "theek
# hai, baad mein call karunga") is routine whatever the model makes of it: there is nothing in it
# but the phrases below, so it names no money, goods, account or complaint. The bank data the model
# learnt from has "I think" mostly in fraud reports, so such a turn could escalate on its own.
# Matched on the classifier's words (lower case, apostrophes dropped), the whole turn at once.
_CLOSING_PHRASES = (
    # thanks and goodbyes
    r"thanks?(?: you)?(?: (?:so|very) much| a lot| again| for (?:the|your|all the) (?:help|time|information|info))?",
    r"(?:good ?)?bye(?: bye)?|have a (?:nice|good|great) day|take care|see you",
    r"(?:that|thats|that is|its|it is) (?:all|it)(?: for now| for today| i needed)?",
    r"(?:nothing|no) (?:else|more)(?: questions?)?|no thanks|no thank you",
    # acknowledgements
    r"ok(?:ay)?|alright|all right|fine|sure|right|great|good|cool|perfect|nice|wonderful|excellent|lovely",
    r"yes|yeah|yep|no|hmm+|oh|ah|so|and|then|i see|got it|understood|i understand|noted|makes sense",
    r"sounds good|no problem|that helps|that answers my question",
    # deferring: the caller will decide, call back or come later
    r"(?:i|ill|i will|let me|i need to|i have to|ill have to) (?:think(?: about it| it over| about that)?|"
    r"consider it|decide later|sleep on it)",
    r"(?:i|ill|i will) (?:call|ring) (?:you )?back(?: later| tomorrow)?|(?:i|ill|i will) call (?:again|later)",
    r"(?:(?:i|ill|i will) )?(?:get back to you|let you know)(?: later)?",
    r"(?:maybe |may be )?later|not (?:right )?now|not today",
    # Hinglish and Hindi
    r"th?ee?k hai|ok ji|ji|haan|achh?a|dhanyavaa?d|dhanyawaa?d|shukriya|bas(?: itna hi)?|thank you ji",
    r"(?:main |mai )?soch(?: ?ke| ?kar) bata(?:ta|ti|unga|ungi|enge)(?: hoon| hu| hun)?",
    r"(?:main |mai )?baad mein(?: (?:call|phone) kar(?:unga|ungi|enge|ta hoon|ti hoon))?",
    r"ठीक है|जी|हाँ|हां|अच्छा|धन्यवाद|शुक्रिया|बहुत|बस|इतना ही|थैंक यू|बाय",
    r"(?:मैं )?सोच(?:कर| के) बता(?:ऊँगा|ऊंगा|ऊँगी|ऊंगी|एंगे|ता हूँ|ती हूँ)",
    r"(?:मैं )?बाद में(?: (?:फ़ोन|फोन|कॉल) कर(?:ूँगा|ूंगा|ूँगी|ूंगी|ेंगे))?",
)
_CLOSING_ONE = "(?:" + "|".join(_CLOSING_PHRASES) + ")"
CLOSING = re.compile(rf"{_CLOSING_ONE}(?: {_CLOSING_ONE})*")
CLOSING_MAX_WORDS = 12  # a closing is short; the bound also keeps the match's backtracking small
_WORDS = re.compile(r"\w+")
UNRESOLVED_OUTCOMES = frozenset({"apology", "not_heard"})


def is_closing(text: str) -> bool:
    """The turn only thanks, acknowledges, says goodbye or defers (see CLOSING)."""
    words = tokens(text)
    return 0 < len(words) <= CLOSING_MAX_WORDS and CLOSING.fullmatch(" ".join(words)) is not None


# A turn that only manages the conversation is routine whatever the business: it asks the agent to
# repeat, explain or wait, says the answer was not what was asked, does not mind either way, or
# praises ("Say that again please", "That's not what I asked", "Hold on", "Well done"). The bank
# data the model learnt from has nothing like it, so such a turn reads as a complaint, a change or a
# request for a person (HWU64's dialogue acts: 0.39 escalated). Matched on the classifier's words;
# the turn is one only when nothing else in it names a stake (money, goods, an account, a
# cancellation, a problem, a person, a sale, a number: DIALOGUE_ACT_OTHER_CUES) and no anger.
_DIALOGUE_ACT_PHRASES = (
    # say it again
    r"repeat\w*|retry|say (?:it |that |this )?(?:again|once more|one more time)|(?:one|once) more(?: time)?"
    r"|come again|pardon|what did you (?:just )?say|what was that|start (?:over|again)|try again"
    r"|(?:did|could|can) ?n[ot]* (?:hear|catch|follow)(?: you| that| it| what you said)?"
    r"|(?:hear|tell me) (?:it|that) again|again please",
    # explain it
    r"clarif\w*|rephrase|explain (?:that|it|this|yourself|your \w+|again|more|further)"
    r"|what do you mean|(?:not|isnt|is not) (?:so |very )?clear|your (?:answers?|response|reply|words|question)",
    # that was not it
    r"(?:wrong|incorrect|not (?:the |a )?(?:right|correct)) (?:answer|response|reply|command)"
    r"|not what i (?:asked|meant|said|wanted|am looking for|was looking for)",
    # wait, stop talking
    # ("wait" and "hold on" open the turn; "stop" ends it or a clause: "stop a transfer" is no act)
    r"^(?:no |ok |okay |please )?(?:wait|hold on)|stop(?: it| that| talking)?(?= (?:please|now|no|i|you)\b|$)"
    r"|(?:one|just a) (?:sec|second|minute|moment)|shut up|be quiet"
    r"|never ?mind|forget it",
    # either is fine
    r"(?:i )?(?:do ?nt|do not|would ?nt|would not) (?:really )?(?:care|mind|bother)|(?:does ?nt|does not|do ?nt) matter"
    r"|^(?:i )?(?:do ?nt|do not|would ?nt|would not) (?:really )?know$"
    r"|(?:not |un)important|whatever|either (?:one|is fine|way)|up to you|as you (?:like|wish)|no preference",
    # well done, agreed
    r"well done|(?:good|great|nice|fantastic|awesome|excellent|amazing) (?:job|work|answer)|appreciate\w*"
    r"|you (?:are|re) (?:great|awesome|amazing|the best|a star|my star|brilliant|smart|helpful)"
    r"|(?:strongly )?agree|exactly|(?:thats|that is|its|it is) (?:right|correct|true)",
    # Hinglish and Hindi
    r"(?:phir|fir) se(?: (?:bol|bata|kah|samjha)\w*)?|dobara|dubara|(?:samajh|samjh) (?:nahi|nahin) aaya|kya kaha"
    r"|ruk(?:o|iye|ie|ye)|ek (?:minute|second|min|sec)|koi baat nahi|chalega|badhiya|sahi (?:hai|baat)"
    r"|galat (?:jawab|answer)",
    r"फिर से|दोबारा|समझ नहीं आया|क्या कहा|रुकिए|रुकिये|रुको|एक मिनट|कोई बात नहीं|चलेगा|बढ़िया|सही है|गलत जवाब",
)
DIALOGUE_ACT = re.compile(r"\b(?:" + "|".join(_DIALOGUE_ACT_PHRASES) + r")(?!\w)")
DIALOGUE_ACT_MAX_WORDS = 12
# The rest of a dialogue act names nothing of the caller's own ("put a stop on my account" is not
# one, whatever "stop" matched).
_OWN = re.compile(r"\b(?:my|mine|our|mera|meri|mere|hamara|hamari|hamare)\b|मेरा|मेरी|मेरे|हमारा|हमारी|हमारे")
# Cues (routing/classifier.py) a dialogue act may have: a question, a request for help. Two more
# may come from a phrase above itself ("wrong answer", "samajh nahi aaya"), so the whole turn may
# have them and the rest of it, with the phrases taken out, may not; the whole turn is checked too
# because a phrase can hold part of a stake ("stop my subscription").
_DIALOGUE_ACT_CUES = frozenset({"k question", "k info", "k help_with", "k task_not_person"})
_DIALOGUE_ACT_PHRASE_CUES = frozenset({"k damaged_wrong", "k not_received"})


def is_dialogue_act(text: str) -> bool:
    """The turn only manages the conversation (see DIALOGUE_ACT)."""
    words = tokens(text)
    if not 0 < len(words) <= DIALOGUE_ACT_MAX_WORDS:
        return False
    joined = " ".join(words)
    if DIALOGUE_ACT.search(joined) is None or ANGER.search(joined):
        return False
    rest_text = DIALOGUE_ACT.sub(" ", joined)
    if _OWN.search(rest_text):
        return False
    whole = set(cue_features(joined)) - _DIALOGUE_ACT_PHRASE_CUES
    rest = set(cue_features(rest_text))
    return whole <= _DIALOGUE_ACT_CUES and rest <= _DIALOGUE_ACT_CUES


def is_devanagari(text: str) -> bool:
    return any("\u0900" <= ch <= "\u097f" for ch in text)


@dataclass
class _Speculation:
    text: str
    scores: Scores
    closing: bool  # is_closing(text), also worked out while the caller speaks
    dialogue_act: bool  # is_dialogue_act(text), likewise


class Router:
    """Process-wide: the routing table, the classifier, provider health and latency stats."""

    def __init__(
        self,
        table: RoutingTable,
        model: StakesModel | None,
        health: Health | None = None,
        tts_first_audio_ms: float = 150.0,
    ) -> None:
        self.table = table
        self.model = model
        r = table.routing
        self.health = health or Health(
            r.cooldown_s, r.failures_to_cooldown, r.hedge_max_share, hedge_burst=r.hedge_burst
        )
        self.signals = r.signals
        self.tts_first_audio_ms = tts_first_audio_ms
        self.threshold = r.high_threshold or (model.high_threshold if model else 0.5)
        # Per tenant: its own threshold (calibrated on its labelled turns) or the shared one.
        self.thresholds: dict[str, float] = {}
        # The classes the model knows, by tenant stakes.
        self._high: dict[str, tuple[str, ...]] = {}
        # Per tenant: its classes' example utterances, for nearest-neighbour recognition.
        self.examples: dict[str, ExampleIndex] = {}
        for tenant in table.tenants:
            known = model.classes if model else ()
            self._high[tenant] = tuple(c for c in known if table.stakes(tenant, c) == "high")
            own = table.tenants[tenant].high_threshold
            if own is not None:
                self.thresholds[tenant] = own
            examples = {c: d.examples for c, d in table.classes[tenant].items() if d.examples}
            if examples:
                self.examples[tenant] = ExampleIndex(examples)
        self.policy_version = self._policy_version()

    def _policy_version(self) -> str:
        """What routing does, as the call log records it with each call: the table's version (every
        resolved cell and model path) and the classifier's (its weights and threshold) with the
        thresholds in force. A new model or threshold is a new policy, so ``voxroute report
        --policy`` compares outcomes before and after it."""
        parts = {
            "table": self.table.policy_version,
            "classifier": self.model.version if self.model is not None else None,
            "threshold": round(self.threshold, 6),
            "tenant_thresholds": sorted(self.thresholds.items()),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]

    def conversation(self, tenant: str, channel: str = "voice") -> Conversation:
        return Conversation(self, self.table.tenant(tenant), channel)

    def models(self, tenant: str) -> dict[str, ModelPath]:
        return self.table.models[tenant]

    def ttft_ms(self, tenant: str, path: str, q: float) -> float:
        mp = self.table.models[tenant][path]
        return self.health.ttft_ms(health_key(mp), q, mp.expected_ttft_ms)


def health_key(mp: ModelPath) -> str:
    return f"{mp.provider}/{mp.model}"


class Conversation:
    """One call's routing state: sticky escalation, the last class, unresolved turns."""

    def __init__(self, router: Router, tenant: str, channel: str) -> None:
        self.router = router
        self.tenant = tenant
        self.channel = channel
        self.escalated = False
        self.escalated_by = ""
        self.routine_since_escalation = 0
        self.last_class: str | None = None
        self.unresolved = 0  # unresolved turns in a row
        self.last_caller_words: frozenset[str] = frozenset()
        self._spec: _Speculation | None = None
        self._last_outcome = "answered"

    # ---- partial transcripts

    def speculate(self, text: str) -> None:
        """Score a partial transcript now, off the critical path."""
        model = self.router.model
        text = clip(text)
        if model is None or not text.strip():
            return
        if self._spec is None or self._spec.text != text:
            self._spec = _Speculation(text, model.scores(text), is_closing(text), is_dialogue_act(text))

    def _is_closing(self, text: str) -> bool:
        spec = self._spec
        return spec.closing if spec is not None and spec.text == text else is_closing(text)

    def _is_dialogue_act(self, text: str) -> bool:
        spec = self._spec
        return spec.dialogue_act if spec is not None and spec.text == text else is_dialogue_act(text)

    def _scores(self, text: str) -> tuple[Scores, bool]:
        spec = self._spec
        self._spec = None
        if spec is not None and spec.text == text:
            return spec.scores, True
        assert self.router.model is not None
        return self.router.model.scores(text), False

    # ---- the decision

    def decide(
        self,
        text: str,
        language: str,
        *,
        budget_left_ms: float | None = None,
        stt_confidence: float | None = None,
        dtmf: bool = False,
    ) -> Route:
        """The route of one caller turn. A bug here must not cost the caller the turn: any error
        gives the conversation's current ladder with the error as the reason (and a log line)."""
        try:
            return self._decide(clip(text), language, budget_left_ms, stt_confidence, dtmf)
        except Exception as exc:
            log.exception("routing failed for %r; using the fallback route", text[:80])
            return self._fallback_route(language, f"router error: {exc!r}")

    def _fallback_route(self, language: str, reason: str) -> Route:
        table = self.router.table
        group = table.group(self.tenant, language)
        cell = table.cell(self.tenant, group, self.channel, self.last_class or "faq")
        ladder = cell.escalated_ladder if self.escalated else cell.ladder
        return self._route(cell, ladder, reason, escalated=self.escalated)

    def _route(self, cell: ClassRoute, ladder: tuple[str, ...], reason: str, **fields) -> Route:
        """A route from its table cell and the ladder chosen; ``fields`` adds the decision's own."""
        first = self.router.table.models[self.tenant][ladder[0]]
        return Route(
            routing_class=cell.routing_class,
            tier=first.tier,
            model=first.model,
            paths=ladder,
            reason=reason,
            stakes=cell.stakes,
            on_failure=cell.on_failure,
            ends_with_human=cell.ends_with_human,
            budget_ms=cell.budget_ms,
            structured_extraction=cell.structured_extraction,
            fast_paths=cell.fast_ladder,
            guidance=cell.guidance,
            tenant=self.tenant,
            group=cell.group,
            channel=self.channel,
            **fields,
        )

    def _decide(
        self,
        text: str,
        language: str,
        budget_left_ms: float | None,
        stt_confidence: float | None,
        dtmf: bool,
    ) -> Route:
        t0 = time.perf_counter()
        r = self.router
        table = r.table
        sig = r.signals
        signals: list[str] = []
        group = table.group(self.tenant, language)
        cls, reason = self._classify(text, stt_confidence, dtmf, signals)

        # repeated failure to resolve: the same request again, or turns that ended unresolved
        words = frozenset(w.lower() for w in _WORDS.findall(text))
        if not dtmf and words and self.last_caller_words:
            overlap = len(words & self.last_caller_words) / len(words | self.last_caller_words)
            if overlap >= 0.8 and len(words) >= 3:
                self.unresolved += 1
                signals.append("repeated request")
            elif self._last_outcome not in UNRESOLVED_OUTCOMES:
                self.unresolved = 0
        if not dtmf and words:
            self.last_caller_words = words
        stakes = table.stakes(self.tenant, cls)
        forced = False
        if self.unresolved >= sig.repeat_failures and stakes == "low":
            forced = True
            signals.append(f"{self.unresolved} unresolved turns")
            reason += f"; signal: {self.unresolved} unresolved turns -> escalate"

        cell = table.cell(self.tenant, group, self.channel, cls)
        if stakes != "low" or forced:
            if not self.escalated:
                reason += "; escalate"
            self.escalated = True
            self.escalated_by = cls
            self.routine_since_escalation = 0
        elif self.escalated:
            self.routine_since_escalation += 1
            # The class that escalated says whether (and when) the conversation steps down.
            step = table.cell(self.tenant, group, self.channel, self.escalated_by).step_down_after
            if step is not None and self.routine_since_escalation >= step:
                self.escalated = False
                reason += f"; step down after {step} routine turns"
            else:
                reason += "; sticky escalation"
        ladder = cell.escalated_ladder if self.escalated and stakes == "low" else cell.ladder
        models = table.models[self.tenant]
        tier = models[ladder[0]].tier
        bridge_first = False
        # Only a fast-tier path can acknowledge in time (a table without one bridges with the phrase).
        fast_ack = bool(cell.fast_ladder) and models[cell.fast_ladder[0]].tier == "fast"
        if tier == "reasoning" and cell.bridge_then_escalate and fast_ack:
            expected = r.ttft_ms(self.tenant, ladder[0], 0.5) + r.tts_first_audio_ms
            left = cell.budget_ms if budget_left_ms is None else budget_left_ms
            if expected > left:
                bridge_first = True
                reason += (
                    f"; bridge then escalate (expected first audio {expected:.0f} ms > {left:.0f} ms left)"
                )
        self.last_class = cls
        return self._route(
            cell,
            ladder,
            reason,
            escalated=self.escalated or stakes == "human",
            handoff=stakes == "human",
            bridge_first=bridge_first,
            decision_ms=(time.perf_counter() - t0) * 1000,
            signals=tuple(signals),
        )

    def _classify(
        self, text: str, stt_confidence: float | None, dtmf: bool, signals: list[str]
    ) -> tuple[str, str]:
        r = self.router
        sig = r.signals
        if dtmf:
            cls = self.last_class or "faq"
            return cls, f"keypad entry: follows {cls}"
        for pattern, rule in r.table.rules[self.tenant]:
            if pattern.search(text):
                return rule.routing_class, f"rule: {rule.label}"
        index = r.examples.get(self.tenant)
        match = index.nearest(text) if index is not None else None
        if match is not None and match.similarity < sig.examples_min_similarity:
            match = None
        # A closing or a dialogue act in a routine conversation stays routine (a high-stakes one
        # keeps its class below).
        if (
            sig.closings
            and match is None
            and (self.last_class is None or r.table.stakes(self.tenant, self.last_class) == "low")
        ):
            if self._is_closing(text):
                return "faq", "closing: the caller thanks, acknowledges or defers"
            if self._is_dialogue_act(text):
                return "faq", "dialogue act: the caller asks to repeat, explain or wait, or answers the agent"
        if r.model is None:
            if match is not None:
                return match.routing_class, _example_reason(match)
            cls = self.last_class or "faq"
            return cls, "no classifier: keeps the conversation's class"
        scores, speculative = self._scores(text)
        best, conf = scores.best()
        high = r._high[self.tenant]
        p_high = scores.mass(high)
        threshold = r.thresholds.get(self.tenant, r.threshold)
        why = []
        if sig.money_threshold_factor < 1 and MONEY.search(text):
            threshold *= sig.money_threshold_factor
            why.append("money named")
            signals.append("money")
        if stt_confidence is not None and stt_confidence < sig.low_stt_confidence:
            threshold *= sig.low_confidence_factor
            why.append(f"low STT confidence {stt_confidence:.2f}")
            signals.append("low_stt_confidence")
        spec = " (speculative, confirmed)" if speculative else ""
        extra = f" ({', '.join(why)})" if why else ""
        # An off-topic turn is no topic to follow: the caller's next turn is usually back on the business.
        uncertain = conf < sig.context_min_confidence and self.last_class not in (None, "out_of_scope")
        if r.table.stakes(self.tenant, best) == "human" and not uncertain:
            return best, f"model{spec}: {best} p={conf:.2f}"
        # A tenant class recognised by its examples; a low-stakes one does not hide a turn the
        # model finds high-stakes (the safe side wins).
        if match is not None and (
            r.table.stakes(self.tenant, match.routing_class) != "low" or p_high < threshold
        ):
            return match.routing_class, _example_reason(match) + f"; model p_high={p_high:.2f}"
        if p_high >= threshold:
            if r.table.stakes(self.tenant, best) != "high":
                best = max(high, key=scores.prob)
            # A follow-up inside a high-stakes topic keeps it ("Both charges were 2,400 rupees").
            if (
                self.last_class
                and r.table.stakes(self.tenant, self.last_class) == "high"
                and scores.prob(best) < sig.context_min_confidence
            ):
                best = self.last_class
            return best, f"model{spec}: p_high={p_high:.2f} >= {threshold:.2f}{extra} -> {best}"
        if sig.anger and (m := ANGER.search(text)):
            signals.append("anger")
            return "complaint", f"signal: anger ({m.group(0).lower()!r}); model p_high={p_high:.2f}"
        if uncertain and self.last_class is not None:  # uncertain implies a last class
            return self.last_class, f"context: follows {self.last_class} (model {best} p={conf:.2f})"
        return best, f"model{spec}: {best} p={conf:.2f}, p_high={p_high:.2f} < {threshold:.2f}{extra}"

    # ---- after the turn

    def outcome(self, outcome: str) -> None:
        """The turn's outcome (answered, apology, not_heard, ...): unresolved turns count up."""
        self._last_outcome = outcome
        if outcome in UNRESOLVED_OUTCOMES:
            self.unresolved += 1


def _example_reason(match) -> str:
    return f"examples: {match.routing_class} (nearest {match.example!r}, similarity {match.similarity:.2f})"
