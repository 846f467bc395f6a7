"""Early requests: the answer's first model request, started while the turn is not committed yet.

The STT's final comes some time after the caller stops (250 ms in the reference profile; with
Sarvam's own endpointing, after its silence window), and the commit waits for it. When the caller
has paused (``COMMIT_SILENCE_MS`` of quiet) the session may start the request the answer would make
on what the STT has heard so far, the last partial (the reference's "``vad.speech_end`` can be used
to start the LLM early on the last partial"). The answer's ladder adopts it as its first attempt
when the turn's request is the same, the caller's words compared without case and punctuation;
its first token then comes up to the STT's delay sooner. Otherwise it is cancelled, and what it
cost (estimated like any attempt cut short) is added to the turn's usage: the bill shows what the
speed costs. Off unless ``ladder.early_request`` is set (every miss is a prompt paid for nothing).

``EarlyRequest`` holds one such request: its stream runs in the call's task group and keeps its
events in a queue until a ladder takes them. ``EarlyQuota`` bounds what misses cost a call.
``EarlyRequests`` is a call's book of them: the pending one, the quota, the unused ones waiting to
be billed, the words the answer declined. A request still running when the caller hangs up is
cancelled with the call and billed to no turn.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from voxroute.agent.ladder import add_usage, estimated_prompt_tokens, pump, usd
from voxroute.agent.providers.base import LLMProvider, LLMRequest, LLMToken, LLMUsage
from voxroute.agent.timeline import TurnRecord
from voxroute.routing.table import ModelPath

log = logging.getLogger("voxroute.ladder")

_NOT_WORD = re.compile(r"[^\w]+")


def same_words(a: str, b: str) -> bool:
    """The same words, whatever the case, punctuation and spacing ("where is my order" and
    "Where is my order?"): a partial and the final that confirms it."""
    return _NOT_WORD.sub(" ", a.casefold()).split() == _NOT_WORD.sub(" ", b.casefold()).split()


def _without_last_words(req: LLMRequest) -> tuple[Any, ...]:
    fields = (req.model, req.max_tokens, req.temperature, req.tools, req.response_format, req.tag)
    return (*fields, req.messages[:-1], {k: v for k, v in req.messages[-1].items() if k != "content"})


class EarlyQuota:
    """How many early requests a call may still start: ``per_turn`` for each caller turn, and none
    after ``max_misses`` unused in a row (an STT whose partials do not come back as its finals)."""

    def __init__(self, per_turn: int, max_misses: int) -> None:
        self.per_turn = per_turn
        self.max_misses = max_misses
        self.started = 0  # for the pending caller turn
        self.misses = 0  # unused in a row

    def may_start(self) -> bool:
        return self.started < self.per_turn and self.misses < self.max_misses

    def start(self) -> None:
        self.started += 1

    def turn_committed(self) -> None:
        self.started = 0

    def missed(self) -> bool:
        """One went unused. True when that was the last miss allowed."""
        self.misses += 1
        return self.misses == self.max_misses

    def used(self) -> None:
        self.misses = 0


class EarlyRequest:
    def __init__(
        self,
        text: str,
        path: str,
        request: LLMRequest,
        started: float,
        index: int = 0,
        routing_class: str | None = None,
    ) -> None:
        self.text = text  # what the STT had heard (the caller's words in the request)
        self.path = path  # the model path it asks
        self.request = request
        self.started = started  # clock ms
        self.index = index  # the caller turn it is for
        self.routing_class = routing_class  # the route decided on the words heard
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.adopted = False  # a ladder took it as its first attempt
        self.tokens = 0  # streamed pieces received
        self.usage: LLMUsage | None = None

    def matches(self, req: LLMRequest) -> bool:
        """``req`` asks what this request asks (the caller's words compared by :func:`same_words`)."""
        if not req.messages or not self.request.messages:
            return False
        if _without_last_words(req) != _without_last_words(self.request):
            return False
        said, asked = req.messages[-1].get("content"), self.request.messages[-1].get("content")
        return isinstance(said, str) and isinstance(asked, str) and same_words(said, asked)

    def start(self, tg: asyncio.TaskGroup, provider: LLMProvider, name: str, stall_ms: float) -> None:
        self.task = tg.create_task(pump(provider, name, self.request, self._put, stall_ms))

    def _put(self, ev: Any) -> None:
        if isinstance(ev, LLMToken):
            self.tokens += 1
        elif isinstance(ev, LLMUsage):
            self.usage = ev
        self.events.put_nowait(ev)

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def cost(self, mp: ModelPath) -> tuple[int, int, float, bool]:
        """(prompt tokens, completion tokens, USD, estimated) of a request not used, at ``mp``'s
        prices: the provider's usage when it came, else estimated as the ladder estimates an attempt
        cut short (``estimated_prompt_tokens``, a streamed piece a token)."""
        if self.usage is not None:
            u = self.usage
            cost = u.cost_usd if u.cost_usd is not None else usd(mp, u.prompt_tokens, u.completion_tokens)
            return u.prompt_tokens, u.completion_tokens, cost, False
        prompt = estimated_prompt_tokens(self.request.messages)
        return prompt, self.tokens, usd(mp, prompt, self.tokens), True


class EarlyRequests:
    """One call's early requests. ``models``: the call's model paths (the prices of the unused)."""

    def __init__(self, per_turn: int, max_misses: int, models: dict[str, ModelPath], call_sid: str) -> None:
        self.pending: EarlyRequest | None = None  # the caller's pending utterance's, if any
        self.quota = EarlyQuota(per_turn, max_misses)
        self.unused: list[EarlyRequest] = []  # cancelled unused, billed to the next turn
        self.declined = ""  # the words the answer would start no early request on
        self._models = models
        self._call_sid = call_sid

    def heard(self, text: str) -> None:
        """What the caller's pending utterance is now: new words cancel the pending request."""
        early = self.pending
        if early is not None and not same_words(early.text, text):
            self.pending = None
            self.drop(early, None)

    def may_start(self, text: str) -> bool:
        return self.pending is None and self.quota.may_start() and text != self.declined

    def started(self, early: EarlyRequest) -> None:
        self.pending = early
        self.quota.start()

    def take(self, turn: TurnRecord, speech: bool) -> EarlyRequest | None:
        """A turn was committed: the pending request is its (a speech turn's), else cancelled and
        billed to it. The unused ones waiting are billed to it too."""
        early, self.pending = self.pending, None
        self.quota.turn_committed()
        self.bill(turn, self.unused)
        self.unused.clear()
        if early is not None and not speech:
            self.drop(early, turn)
            return None
        return early

    def finished(self, early: EarlyRequest | None, turn: TurnRecord, merged: bool) -> None:
        """``turn`` (given ``early``) ended: used, or cancelled and billed (a merged turn's to the next)."""
        if early is None:
            return
        if early.adopted:
            turn.usage["early_used"] = True
            self.quota.used()
        else:  # the caller's words were not those it asked
            self.drop(early, None if merged else turn)

    def drop(self, early: EarlyRequest, turn: TurnRecord | None) -> None:
        """Cancel an early request no turn used; its cost goes to ``turn`` (else to the next one)."""
        early.cancel()
        if self.quota.missed():
            log.info(
                "call %s: early requests unused %d times in a row: no more", self._call_sid, self.quota.misses
            )
        if turn is None:
            self.unused.append(early)
        else:
            self.bill(turn, [early])

    def bill(self, turn: TurnRecord, unused: list[EarlyRequest]) -> None:
        for early in unused:
            prompt, completion, cost, estimated = early.cost(self._models[early.path])
            add_usage(turn.usage, early.path, prompt, completion, cost, estimated)
            turn.usage["early_unused"] = turn.usage.get("early_unused", 0) + 1
