"""Provider health and live time-to-first-token statistics, per model path.

- Consecutive failures (``failures_to_cooldown``) put a path in cooldown for ``cooldown_s``:
  ladders skip it at once, without waiting for it to fail again.
- After the cooldown one request is let through as a probe; success makes the path healthy,
  failure starts another cooldown. Other requests skip the path while the probe is out.
- Time to first token is kept per path (the last ``window`` samples); ``ttft_ms(path, q)`` is a
  live percentile, or the configured expectation until enough samples exist.
- Hedges are capped at a share of requests, counted process-wide.

Pure bookkeeping, no I/O: the clock is injected (``time.monotonic`` by default).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_SAMPLES = 8


@dataclass
class PathState:
    failures: int = 0  # consecutive
    cooldown_until: float = 0.0
    probing: bool = False
    probe_started: float = 0.0
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    requests: int = 0
    errors: int = 0
    cooldowns: int = 0
    _sorted: list[float] | None = None


class Health:
    def __init__(
        self,
        cooldown_s: float = 10.0,
        failures_to_cooldown: int = 2,
        hedge_max_share: float = 0.10,
        clock: Callable[[], float] = time.monotonic,
        hedge_burst: float = 10.0,
    ) -> None:
        self.cooldown_s = cooldown_s
        self.failures_to_cooldown = failures_to_cooldown
        self.hedge_max_share = hedge_max_share
        self.hedge_burst = max(1.0, hedge_burst)
        self._hedge_credit = 1.0  # the hedge cap's bucket: one so that the first turn may hedge
        self.clock = clock
        self.paths: dict[str, PathState] = {}
        self.requests = 0  # ladder runs (turn requests); each adds hedge_max_share to the hedge bucket
        self.hedges = 0
        self.hedges_refused = 0

    def _state(self, path: str) -> PathState:
        st = self.paths.get(path)
        if st is None:
            st = self.paths[path] = PathState()
        return st

    # ---- availability

    def available(self, path: str) -> bool:
        """May a request go to ``path`` now? Claims the probe slot when the cooldown is over."""
        st = self.paths.get(path)
        if st is None or st.cooldown_until == 0.0:
            return True
        now = self.clock()
        if now < st.cooldown_until:
            return False
        if st.probing and now - st.probe_started < self.cooldown_s:
            return False  # one probe at a time
        st.probing, st.probe_started = True, now
        return True

    def in_cooldown(self, path: str) -> bool:
        st = self.paths.get(path)
        return st is not None and (self.clock() < st.cooldown_until or st.probing)

    def cooldown_left_s(self, path: str) -> float:
        st = self.paths.get(path)
        return max(0.0, st.cooldown_until - self.clock()) if st else 0.0

    # ---- outcomes

    def started(self, path: str) -> None:
        self._state(path).requests += 1

    def success(self, path: str, ttft_ms: float | None = None) -> None:
        st = self._state(path)
        st.failures = 0
        st.cooldown_until = 0.0
        st.probing = False
        if ttft_ms is not None:
            st.ttft.append(ttft_ms)
            st._sorted = None

    def failure(self, path: str) -> bool:
        """Record a failure; True when it put the path in cooldown."""
        st = self._state(path)
        st.errors += 1
        st.failures += 1
        if st.probing or st.failures >= self.failures_to_cooldown:
            st.probing = False
            st.cooldown_until = self.clock() + self.cooldown_s
            st.cooldowns += 1
            st.failures = 0
            return True
        return False

    # ---- latency

    def ttft_ms(self, path: str, q: float, expected_ms: float) -> float:
        """The live q-quantile of the path's time to first token; before MIN_SAMPLES, a lognormal
        guess from the configured expectation (p90 about 2x the median)."""
        st = self.paths.get(path)
        if st is None or len(st.ttft) < MIN_SAMPLES:
            return expected_ms * (1.0 + 1.2 * max(0.0, q - 0.5) / 0.4)
        if st._sorted is None:
            st._sorted = sorted(st.ttft)
        s = st._sorted
        return s[min(len(s) - 1, int(q * len(s)))]

    # ---- hedging

    def request(self) -> None:
        self.requests += 1
        self._hedge_credit = min(self.hedge_burst, self._hedge_credit + self.hedge_max_share)

    def may_hedge(self) -> bool:
        """Within the hedge cap? A token bucket: each request adds ``hedge_max_share`` of a hedge, a
        hedge takes one, and at most ``hedge_burst`` are saved. Without that ceiling, credit saved
        over a quiet hour let a burst of late first tokens (200 calls' turns ending together) hedge
        nearly every one of them, which doubled the load just when the providers were slow.
        Counts the hedge when allowed."""
        if self._hedge_credit < 1.0:
            self.hedges_refused += 1
            return False
        self._hedge_credit -= 1.0
        self.hedges += 1
        return True

    def snapshot(self) -> dict:
        now = self.clock()
        return {
            "requests": self.requests,
            "hedges": self.hedges,
            "hedges_refused": self.hedges_refused,
            "paths": {
                name: {
                    "requests": st.requests,
                    "errors": st.errors,
                    "cooldowns": st.cooldowns,
                    "in_cooldown": now < st.cooldown_until,
                    "ttft_samples": len(st.ttft),
                }
                for name, st in self.paths.items()
            },
        }
