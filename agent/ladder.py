"""The LLM fallback ladder of one turn: retry, next rung, hedge, continue.

The route gives the rungs (model path names, best first). For each attempt:

- A path in cooldown (provider health, routing/health.py) is skipped at once, with a logged fallback.
- An error before the first token: nothing reached the caller. A retriable error (5xx, 429, a
  dropped or broken stream) is retried once on the same path while the budget allows; otherwise
  the next rung starts at once.
- No first token by the path's live p90 (bounded by what is left of the turn's budget, and never
  sooner than ``hedge_min_ms``): the next rung starts in parallel (a hedge, within the
  process-wide hedge cap); the first attempt with a token wins and the others are cancelled and
  logged as "hedge lost". A loser counts against its path's health only if it had waited past
  its own p90.
- No first token by ``first_token_timeout_ms``: the attempt failed ("timeout"), next rung.
- An error after tokens flowed: keep what was said and continue on the next rung from there.

The first attempt may be an early request (``agent/preemptive.py``): started on what the STT had
heard when the caller paused, before the turn committed. The ladder adopts it as its first attempt
when it asks exactly what that attempt would ask (the caller's words compared without case and
punctuation), with its start time; otherwise it is left to the session, which cancels it.

Every failed attempt is recorded in the turn's ``fallbacks`` with its rung, kind and action, and
in provider health. Usage and cost are summed per path (the provider's reported cost when it
gives one, else the configured prices). Attempts are tasks of one TaskGroup; their events meet in
one queue, tagged by attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voxroute.agent.config import Config
from voxroute.agent.providers.base import (
    LLMProvider,
    LLMRequest,
    LLMToken,
    LLMToolCalls,
    LLMUsage,
    ProviderError,
)
from voxroute.agent.timeline import Clock, TurnRecord
from voxroute.routing.health import Health
from voxroute.routing.router import health_key
from voxroute.routing.table import ModelPath

if TYPE_CHECKING:
    from voxroute.agent.preemptive import EarlyRequest

log = logging.getLogger("voxroute.ladder")

CONTINUE_PROMPT = "(Your reply was cut off. Finish it briefly without repeating.)"
RETRIABLE = frozenset({"http_500", "http_429", "disconnected", "stream_error", "malformed"})


class LadderExhausted(Exception):
    """Every attempt failed before anything was said."""


@dataclass
class _Attempt:
    ident: int
    rung: int  # 1-based position in the route's ladder
    path: str
    key: str  # provider/model, the health key
    provider: str
    model: str
    started: float
    task: asyncio.Task | None = None
    got_token: bool = False
    hedge: bool = False  # started as a hedge
    hedge_checked: bool = False  # its hedge timer fired (hedged, or refused by the cap)
    tokens: int = 0  # content tokens received
    prompt_tokens: int = 0  # estimated from the prompt's length (estimated_prompt_tokens)
    usage_seen: bool = False
    cancelled: bool = False  # cancelled while running (a lost hedge, a timeout): the prompt was billed
    failed: bool = False

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


class LLMLadder:
    def __init__(
        self,
        config: Config,
        llms: dict[str, LLMProvider],
        clock: Clock,
        turn: TurnRecord,
        history: list[dict[str, Any]],
        tag: str,
        *,
        models: dict[str, ModelPath],
        health: Health,
        first_token_by: float | None = None,
        max_tokens: int | None = None,
        extra_messages: list[dict[str, Any]] | None = None,
        hedging: bool = True,
        role: str = "answer",
        tools: list[dict[str, Any]] | None = None,
        early: EarlyRequest | None = None,
    ) -> None:
        """``first_token_by``: clock time (ms) by which a first token keeps the turn in budget
        (None when a bridge already covers the budget); hedges start no later than that, and no
        earlier than the path's median. ``early``: an early request the first attempt may adopt."""
        self.cfg = config.ladder
        self.config = config
        self.llms = llms
        self.clock = clock
        self.turn = turn
        self.history = list(history) + list(extra_messages or [])
        self.tag = tag
        self.models = models
        self.health = health
        self.first_token_by = first_token_by
        self.max_tokens = max_tokens or config.agent.max_tokens
        self.hedging = hedging
        self.role = role  # "answer", or "ack" (the fast path's acknowledgement: not the turn's model)
        self.spoken: list[str] = []
        self.tools = tools
        self.tool_calls: list[Any] = []  # the winning attempt's tool calls (agent/tools.py reads them)
        self._attempts: dict[int, _Attempt] = {}
        self._events: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._paths: list[str] = []
        self._next_rung = 0
        self._retried: set[str] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._early = early

    @property
    def launched(self) -> int:
        return len(self._attempts)

    def _running(self) -> list[_Attempt]:
        return [a for a in self._attempts.values() if a.running]

    async def run(self, paths: list[str], on_text: Callable[[str], None]) -> None:
        """Stream the reply's text into ``on_text``. Raises LadderExhausted if nothing could be said."""
        self._paths = paths
        if self.hedging:
            self.health.request()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                self._launch_next()
                await self._drive(on_text)
            finally:
                for a in self._running():
                    self._cancel(a)
                self._estimate_missing_usage()

    def _cancel(self, att: _Attempt) -> None:
        att.cancelled = True
        att.task.cancel()  # type: ignore[union-attr]

    def _estimate_missing_usage(self) -> None:
        """Providers that report no usage on a stream (Sarvam v1), and attempts cut short: estimate
        tokens (about 4 characters a token for the prompt, one streamed piece a token) at the
        configured prices, so the turn's cost is never silently zero."""
        for att in self._attempts.values():
            if att.usage_seen or not (att.tokens or att.cancelled):
                continue
            cost = usd(self.models[att.path], att.prompt_tokens, att.tokens)
            add_usage(self.turn.usage, att.path, att.prompt_tokens, att.tokens, cost, estimated=True)

    # ---- launching

    def _pick_rung(self) -> int | None:
        """The next rung whose path is not cooling down; skipped ones are logged. None: no rung left."""
        while self._next_rung < len(self._paths):
            rung = self._next_rung
            self._next_rung += 1
            name = self._paths[rung]
            mp = self.models[name]
            if self.health.available(health_key(mp)):
                return rung
            left = self.health.cooldown_left_s(health_key(mp))
            self.turn.add_fallback(
                mp.provider,
                "cooldown",
                f"path {name} is cooling down ({left:.1f} s left)",
                "skip",
                model=mp.model,
                service="llm",
                path=name,
                rung=rung + 1,
            )
        return None

    def _launch_next(self, continuation: bool = False, hedge: bool = False) -> bool:
        if self.launched >= self.cfg.max_attempts:
            return False
        rung = self._pick_rung()
        if rung is None:
            if self.launched == 0:
                # Everything is cooling down: probing the first rung beats saying nothing.
                rung = 0
            else:
                return False
        self._launch(rung, continuation, hedge)
        return True

    def first_request(self, paths: list[str]) -> tuple[str, LLMRequest] | None:
        """(path, request) of the attempt ``run(paths)`` would launch first, if its path is not
        cooling down (an early request is not worth a probe)."""
        for name in paths[:1]:
            if self.health.available(health_key(self.models[name])):
                return name, self._request(self.models[name])
        return None

    def _request(self, mp: ModelPath, continuation: bool = False) -> LLMRequest:
        messages = list(self.history)
        if continuation and self.spoken:
            messages.append({"role": "assistant", "content": "".join(self.spoken)})
            messages.append({"role": "user", "content": CONTINUE_PROMPT})
        return LLMRequest(
            model=mp.model,
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=self.config.agent.temperature,
            tag=self.tag,
            tools=self.tools,
        )

    def _launch(self, rung: int, continuation: bool = False, hedge: bool = False) -> None:
        assert self._tg is not None
        name = self._paths[rung]
        mp = self.models[name]
        req = self._request(mp, continuation)
        early, self._early = self._early, None  # only the first attempt may adopt it
        if early is not None and (early.adopted or early.path != name or not early.matches(req)):
            early = None
        att = _Attempt(
            self.launched + 1,
            rung + 1,
            name,
            health_key(mp),
            mp.provider,
            mp.model,
            self.clock.now() if early is None else early.started,
            hedge=hedge,
        )
        att.prompt_tokens = estimated_prompt_tokens(req.messages)
        self._attempts[att.ident] = att
        self.health.started(att.key)
        if early is None:
            att.task = self._tg.create_task(self._pump(att, req))
        else:
            log.info("turn %s: the early request on %s is the first attempt", self.tag, name)
            early.adopted = True
            att.task = self._tg.create_task(self._pump_early(att, early))
            # The attempt lost, was cancelled (even before it ran) or ended: so has the request.
            att.task.add_done_callback(lambda _: early.cancel())
        if self.role == "answer":
            self.turn.mark("llm_request", att.started)

    # ---- timers

    def _own_p90(self, att: _Attempt) -> float:
        """The path's live first-token time at the hedge quantile (its p90 by default), at least
        ``hedge_min_ms``."""
        p90 = self.health.ttft_ms(att.key, self.cfg.hedge_quantile, self.models[att.path].expected_ttft_ms)
        return max(p90, self.cfg.hedge_min_ms)

    def _hedge_delay(self, att: _Attempt) -> float:
        mp = self.models[att.path]
        p90 = self._own_p90(att)
        if self.first_token_by is None:
            return p90
        p50 = self.health.ttft_ms(att.key, 0.5, mp.expected_ttft_ms)
        left = self.first_token_by - att.started
        return max(self.cfg.hedge_min_ms, min(p90, max(left, p50)))

    def _next_timer(self, winner: int | None) -> tuple[float | None, str, _Attempt | None]:
        """(seconds until the next timer, "hedge" or "timeout", the attempt it concerns)."""
        if winner is not None:
            return None, "", None
        now = self.clock.now()
        best: tuple[float, str, _Attempt] | None = None
        running = self._running()
        for att in running:
            at = att.started + self.cfg.first_token_timeout_ms
            if best is None or at < best[0]:
                best = (at, "timeout", att)
        newest = max(running, key=lambda a: a.started, default=None)
        if (
            self.hedging
            and newest is not None
            and self.launched < self.cfg.max_attempts
            and not newest.hedge_checked
        ):
            at = newest.started + self._hedge_delay(newest)
            if best is None or at < best[0]:
                best = (at, "hedge", newest)
        if best is None:
            return None, "", None
        return max(0.0, best[0] - now) / 1000, best[1], best[2]

    # ---- the event loop

    def abandoned(self, message: str, action: str) -> None:
        """The caller of ``run`` gave up waiting (a deadline outside the ladder): record the attempts
        that were still waiting for a first token."""
        for att in self._attempts.values():
            if not att.failed and not att.got_token:
                att.failed = True  # not the path's fault: no health failure
                self.turn.add_fallback(
                    att.provider, "timeout", message, action, model=att.model, service="llm",
                    path=att.path, rung=att.rung, role=self.role,
                )  # fmt: skip

    def _fail(self, att: _Attempt, kind: str, message: str, action: str, cooled: bool | None = None) -> None:
        """Record a failed attempt in the turn; counted in provider health unless ``cooled`` says the
        caller already did (True: that failure put the path in cooldown)."""
        att.failed = True
        if cooled is None:
            cooled = self.health.failure(att.key)
        if cooled:
            action += f"; path cooling down {self.health.cooldown_s:.0f} s"
        extra = {} if self.role == "answer" else {"role": self.role}
        self.turn.add_fallback(
            att.provider,
            kind,
            message,
            action,
            model=att.model,
            service="llm",
            path=att.path,
            rung=att.rung,
            **extra,
        )

    def _after_failure(self, att: _Attempt, kind: str, message: str) -> bool:
        """An attempt failed before its first token. Retry, next rung, or wait for the others.
        False when nothing is running and nothing is left to try."""
        continuation = bool(self.spoken)
        others = [a for a in self._running() if a.ident != att.ident]
        can_launch = self.launched < self.cfg.max_attempts
        cooled = self.health.failure(att.key)  # a path this failure cooled down is not retried
        retry = (
            kind in RETRIABLE
            and not cooled
            and att.path not in self._retried
            and can_launch
            and not others
            and self._time_for_retry(att)
        )
        if retry:
            self._fail(att, kind, message, "retry same path", cooled)
            self._retried.add(att.path)
            self._launch(att.rung - 1, continuation)
            return True
        self._fail(att, kind, message, "next rung" if can_launch and not others else "give up", cooled)
        if others:
            return True
        return self._launch_next(continuation)

    def _time_for_retry(self, att: _Attempt) -> bool:
        if self.first_token_by is None:
            return True
        p50 = self.health.ttft_ms(att.key, 0.5, self.models[att.path].expected_ttft_ms)
        return self.clock.now() + p50 <= self.first_token_by

    async def _drive(self, on_text: Callable[[str], None]) -> None:
        winner: int | None = None
        while True:
            timeout, what, subject = self._next_timer(winner)
            try:
                async with asyncio.timeout(timeout):
                    ident, ev = await self._events.get()
            except TimeoutError:
                assert subject is not None
                if what == "timeout":
                    self._cancel(subject)
                    waited = self.clock.now() - subject.started
                    if not self._after_failure(subject, "timeout", f"no first token after {waited:.0f} ms"):
                        raise LadderExhausted from None
                else:
                    subject.hedge_checked = True
                    if self.health.may_hedge():
                        log.info("turn %s: first token late on %s; hedging", self.tag, subject.path)
                        self.turn.usage["hedges"] = self.turn.usage.get("hedges", 0) + 1
                        self._launch_next(continuation=bool(self.spoken), hedge=True)
                    else:
                        log.info("turn %s: first token late on %s; hedge cap reached", self.tag, subject.path)
                continue
            att = self._attempts[ident]
            if winner is not None and ident != winner:
                continue  # a cancelled attempt's late event
            if isinstance(ev, LLMToken | LLMToolCalls):
                if winner is None:
                    winner = ident
                    self._won(att)
                att.got_token = True
                if isinstance(ev, LLMToolCalls):
                    self.tool_calls.extend(ev.calls)
                    continue
                att.tokens += 1
                self.spoken.append(ev.text)
                on_text(ev.text)
            elif isinstance(ev, LLMUsage):
                att.usage_seen = True
                self._add_usage(att, ev)
            elif ev is None:  # the attempt finished cleanly
                if att.got_token:
                    return
                if not self._after_failure(att, "malformed", "empty reply"):
                    raise LadderExhausted
            else:  # ProviderError
                if winner == ident:
                    winner = None
                    if self.launched >= self.cfg.max_attempts:
                        self._fail(att, ev.kind, ev.message, "stop")
                        return
                    self._fail(att, ev.kind, ev.message, "continue on next rung")
                    if not self._launch_next(continuation=True):
                        return  # keep what was said
                    continue
                if not self._after_failure(att, ev.kind, ev.message):
                    if self.spoken:
                        return
                    raise LadderExhausted

    def _won(self, att: _Attempt) -> None:
        """``att`` answered first (text or tool calls): it is the turn's model; the others lose."""
        now = self.clock.now()
        self.turn.mark("llm_first_token", now)
        if not att.got_token:
            self.health.success(att.key, now - att.started)
        if self.role == "answer":  # an acknowledgement that wins its race is not the turn's model
            self.turn.usage.update(model=att.model, provider=att.provider, path=att.path, rung=att.rung)
        for other in self._running():
            if other.ident != att.ident:
                self._cancel(other)
                waited = now - other.started
                # A loser counts against its path's health only if it was late by its own path's
                # standard (its live hedge quantile): a hedge that joined a moment ago and lost the
                # race did nothing wrong, and cooling it down would take a healthy backup away.
                late = waited >= self._own_p90(other)
                self._fail(
                    other,
                    "timeout",
                    f"no first token after {waited:.0f} ms",
                    "hedge lost",
                    cooled=None if late else False,
                )

    def _add_usage(self, att: _Attempt, ev: LLMUsage) -> None:
        cost = ev.cost_usd
        if cost is None:
            cost = usd(self.models[att.path], ev.prompt_tokens, ev.completion_tokens)
        add_usage(self.turn.usage, att.path, ev.prompt_tokens, ev.completion_tokens, cost)

    async def _pump(self, att: _Attempt, req: LLMRequest) -> None:
        provider = self.llms[att.provider]

        def put(ev: Any) -> None:
            self._events.put_nowait((att.ident, ev))

        await pump(provider, att.provider, req, put, self.cfg.stall_timeout_ms)

    async def _pump_early(self, att: _Attempt, early: EarlyRequest) -> None:
        """Pass on what the early request got and gets, as this attempt's events."""
        while True:
            ev = await early.events.get()
            self._events.put_nowait((att.ident, ev))
            if ev is None or isinstance(ev, ProviderError):
                return


async def pump(
    provider: LLMProvider, name: str, req: LLMRequest, put: Callable[[Any], None], stall_ms: float
) -> None:
    """Stream ``req`` to provider ``name`` into ``put``: tokens, tool calls and usage as they come, then None when the
    stream ended cleanly or a ProviderError (a stall after ``stall_ms`` without a token included)."""
    stall_s = stall_ms / 1000
    try:
        async with asyncio.timeout(None) as cm:
            async for ev in provider.stream(req):
                put(ev)
                if isinstance(ev, LLMToken):
                    cm.reschedule(asyncio.get_running_loop().time() + stall_s)
        put(None)
    except ProviderError as exc:
        put(exc)
    except TimeoutError:
        put(ProviderError(name, "stall", "no tokens for too long", after_first=True))


def usd(mp: ModelPath, prompt_tokens: int, completion_tokens: int) -> float:
    """What tokens cost at a model path's configured prices (per million tokens)."""
    return (prompt_tokens * mp.price_in_per_mtok + completion_tokens * mp.price_out_per_mtok) / 1e6


def estimated_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A prompt's tokens where the provider reports none: about 4 characters a token."""
    return max(1, sum(len(str(m.get("content") or "")) for m in messages) // 4)


def add_usage(
    usage: dict[str, Any], path: str, prompt: int, completion: int, cost: float, estimated: bool = False
) -> None:
    """Sum tokens and money into a turn's usage, in total and per model path."""
    usage["prompt_tokens"] = usage.get("prompt_tokens", 0) + prompt
    usage["completion_tokens"] = usage.get("completion_tokens", 0) + completion
    usage["cost_usd"] = round(usage.get("cost_usd", 0.0) + cost, 8)
    per = usage.setdefault("by_path", {}).setdefault(
        path, {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    )
    per["prompt_tokens"] += prompt
    per["completion_tokens"] += completion
    per["cost_usd"] = round(per["cost_usd"] + cost, 8)
    if estimated:
        per["estimated"] = True
