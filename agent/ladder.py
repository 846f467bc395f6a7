"""The LLM fallback ladder of one turn: retry, hedge, continue.

- An error before the first token: nothing reached the caller, so try the next path at once.
- A first token later than ``hedge_after_ms``: start the next path in parallel; the first one
  to produce a token wins and the others are cancelled (and logged as "hedge lost").
- An error after tokens flowed: keep what was said and continue on the next path from there.
- Every attempt that failed is recorded in the turn's ``fallbacks`` with its kind and action.

Attempts are tasks of one TaskGroup; their events meet in one queue, tagged by attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import Config
from agent.providers.base import LLMProvider, LLMRequest, LLMToken, LLMUsage, ProviderError
from agent.timeline import Clock, TurnRecord

log = logging.getLogger("voxroute.ladder")

CONTINUE_PROMPT = "(Your reply was cut off. Finish it briefly without repeating.)"


class LadderExhausted(Exception):
    """Every attempt failed before anything was said."""


@dataclass
class _Attempt:
    ident: int
    path: str
    provider: str
    model: str
    started: float
    task: asyncio.Task | None = None
    got_token: bool = False

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
    ) -> None:
        self.cfg = config.ladder
        self.config = config
        self.llms = llms
        self.clock = clock
        self.turn = turn
        self.history = list(history)
        self.tag = tag
        self.spoken: list[str] = []
        self._attempts: dict[int, _Attempt] = {}
        self._events: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._next_path = 0
        self._paths: list[str] = []
        self._tg: asyncio.TaskGroup | None = None

    @property
    def launched(self) -> int:
        return len(self._attempts)

    def _running(self) -> list[_Attempt]:
        return [a for a in self._attempts.values() if a.running]

    async def run(self, paths: list[str], on_text: Callable[[str], None]) -> None:
        """Stream the reply's text into ``on_text``. Raises LadderExhausted if nothing could be said."""
        self._paths = paths
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._launch()
            try:
                await self._drive(on_text)
            finally:
                for a in self._running():
                    a.task.cancel()  # type: ignore[union-attr]

    def _launch(self, continuation: bool = False) -> None:
        assert self._tg is not None
        name = self._paths[self._next_path % len(self._paths)]
        self._next_path += 1
        path = self.config.models[name]
        messages = list(self.history)
        if continuation and self.spoken:
            messages.append({"role": "assistant", "content": "".join(self.spoken)})
            messages.append({"role": "user", "content": CONTINUE_PROMPT})
        req = LLMRequest(
            model=path.model,
            messages=messages,
            max_tokens=self.config.agent.max_tokens,
            temperature=self.config.agent.temperature,
            tag=self.tag,
        )
        att = _Attempt(self.launched + 1, name, path.provider, path.model, self.clock.now())
        self._attempts[att.ident] = att
        att.task = self._tg.create_task(self._pump(att, req))
        self.turn.mark("llm_request", self.clock.now())

    def _fail(self, att: _Attempt, kind: str, message: str, action: str) -> None:
        self.turn.add_fallback(att.provider, kind, message, action, model=att.model, service="llm")

    async def _drive(self, on_text: Callable[[str], None]) -> None:
        winner: int | None = None
        hedge_at = self.clock.now() + self.cfg.hedge_after_ms
        while True:
            timeout = None
            if winner is None and self.launched < self.cfg.max_attempts:
                timeout = max(0.0, hedge_at - self.clock.now()) / 1000
            try:
                async with asyncio.timeout(timeout):
                    ident, ev = await self._events.get()
            except TimeoutError:
                slow = ", ".join(a.path for a in self._running())
                log.info("turn %s: first token late on %s; hedging", self.tag, slow or "-")
                self._launch(continuation=bool(self.spoken))
                hedge_at = self.clock.now() + self.cfg.hedge_after_ms
                continue
            att = self._attempts[ident]
            if winner is not None and ident != winner:
                continue  # a cancelled attempt's late event
            if isinstance(ev, LLMToken):
                if winner is None:
                    winner = ident
                    self.turn.mark("llm_first_token", self.clock.now())
                    self.turn.usage.update(model=att.model, provider=att.provider)
                    for other in self._running():
                        if other.ident != ident:
                            other.task.cancel()  # type: ignore[union-attr]
                            waited = self.clock.now() - other.started
                            self._fail(
                                other, "timeout", f"no first token after {waited:.0f} ms", "hedge lost"
                            )
                att.got_token = True
                self.spoken.append(ev.text)
                on_text(ev.text)
            elif isinstance(ev, LLMUsage):
                self._add_usage(att, ev)
            elif ev is None:  # the attempt finished cleanly
                if att.got_token:
                    return
                self._fail(att, "malformed", "empty reply", "retry")
                if not self._running():
                    if self.launched >= self.cfg.max_attempts:
                        raise LadderExhausted
                    self._launch()
                    hedge_at = self.clock.now() + self.cfg.hedge_after_ms
            else:  # ProviderError
                can_retry = self.launched < self.cfg.max_attempts
                if winner == ident:
                    winner = None
                    if not can_retry:
                        self._fail(att, ev.kind, ev.message, "stop")
                        return
                    self._fail(att, ev.kind, ev.message, "continue on next path")
                    self._launch(continuation=True)
                    hedge_at = self.clock.now() + self.cfg.hedge_after_ms
                    continue
                self._fail(att, ev.kind, ev.message, "retry" if can_retry else "give up")
                if not self._running():
                    if not can_retry:
                        if self.spoken:
                            return
                        raise LadderExhausted
                    self._launch(continuation=bool(self.spoken))
                    hedge_at = self.clock.now() + self.cfg.hedge_after_ms

    def _add_usage(self, att: _Attempt, ev: LLMUsage) -> None:
        u = self.turn.usage
        u["prompt_tokens"] = u.get("prompt_tokens", 0) + ev.prompt_tokens
        u["completion_tokens"] = u.get("completion_tokens", 0) + ev.completion_tokens
        path = self.config.models[att.path]
        cost = ev.cost_usd
        if cost is None:
            cost = (
                ev.prompt_tokens * path.price_in_per_mtok + ev.completion_tokens * path.price_out_per_mtok
            ) / 1e6
        u["cost_usd"] = round(u.get("cost_usd", 0.0) + cost, 8)

    async def _pump(self, att: _Attempt, req: LLMRequest) -> None:
        provider = self.llms[att.provider]
        stall_s = self.cfg.stall_timeout_ms / 1000
        try:
            async with asyncio.timeout(None) as cm:
                async for ev in provider.stream(req):
                    self._events.put_nowait((att.ident, ev))
                    if isinstance(ev, LLMToken):
                        cm.reschedule(asyncio.get_running_loop().time() + stall_s)
            self._events.put_nowait((att.ident, None))
        except ProviderError as exc:
            self._events.put_nowait((att.ident, exc))
        except TimeoutError:
            err = ProviderError(att.provider, "stall", "no tokens for too long", after_first=True)
            self._events.put_nowait((att.ident, err))
