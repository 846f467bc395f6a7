"""One retry rule for every outgoing HTTP request that may be repeated: the carriers' call control
(Twilio, Plivo, Telnyx) and the handoff webhook.

Retried: no answer (connection errors, timeouts: each attempt is bounded by ``timeout_s``), 5xx, and
429. Between attempts ``base_delay_s * 2**n`` (n = 0, 1, ...) capped at ``max_delay_s``; a 429 or 503
that names a ``Retry-After`` (seconds or an HTTP date) waits that long instead, unless it asks for
more than ``max_delay_s``: then the request is not repeated (the caller would wait past its use).
Not retried: any other answer (2xx, 3xx, 4xx), which the caller reads.

The rule (:meth:`RetryPolicy.delay`) is pure; :func:`send_with_retries` is the thin async loop that
applies it to a ``send()`` the caller builds afresh each attempt (a webhook signs each attempt anew).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)


def retryable_status(status: int) -> bool:
    """5xx and 429: the server may answer otherwise next time. Anything else is its final word."""
    return status >= 500 or status == 429


def retry_after_s(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds from ``now`` (unix time): delta-seconds or an HTTP date; None when
    absent or unreadable (the backoff applies then)."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is not one
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` counts the first try; each attempt is bounded by ``timeout_s``."""

    attempts: int = 3
    base_delay_s: float = 0.25
    max_delay_s: float = 2.0
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("delays must be >= 0")

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1-based) without a ``Retry-After``."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))

    def delay(self, attempt: int, status: int | None, retry_after: float | None = None) -> float | None:
        """How long to wait before the next attempt, after attempt ``attempt`` (1-based) ended with
        ``status`` (None: no answer). None: do not try again (a final answer, the last attempt, or a
        ``Retry-After`` longer than ``max_delay_s``)."""
        if status is not None and not retryable_status(status):
            return None
        if attempt >= self.attempts:
            return None
        if retry_after is not None and status is not None:
            return retry_after if retry_after <= self.max_delay_s else None
        return self.backoff(attempt)


@dataclass(frozen=True)
class Sent:
    """What :func:`send_with_retries` ended with: the last answer, or why there was none."""

    response: httpx.Response | None  # the last answer (a 5xx too, once the attempts ran out)
    error: str  # why there was no answer ("" when there was one)
    attempts: int  # how many were made
    retried_out: bool  # True: the last failure was retryable but the attempts (or Retry-After) ran out

    @property
    def failure(self) -> str:
        """One phrase for a log line: ``HTTP 503`` or the error."""
        return f"HTTP {self.response.status_code}" if self.response is not None else self.error


async def send_with_retries(
    send: Callable[[], Awaitable[httpx.Response]],
    policy: RetryPolicy,
    what: str,
    *,
    logger: logging.Logger = log,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
) -> Sent:
    """Call ``send()`` until it answers with something final, or the policy says stop. Each retry is
    logged at INFO as ``{what}: attempt N failed (...), retrying in D s``; the caller logs the end."""
    attempt = 0
    while True:
        attempt += 1
        response: httpx.Response | None = None
        error = ""
        try:
            async with asyncio.timeout(policy.timeout_s):
                response = await send()
        except TimeoutError:
            error = f"no answer within {policy.timeout_s:g} s"
        except httpx.HTTPError as exc:  # connection refused or reset, read errors, httpx timeouts
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        status = response.status_code if response is not None else None
        retry_after = None
        if response is not None and status in (429, 503):
            retry_after = retry_after_s(response.headers.get("retry-after"), clock())
        wait = policy.delay(attempt, status, retry_after)
        if wait is None:
            retryable = status is None or retryable_status(status)
            return Sent(response, error, attempt, retried_out=retryable)
        logger.info(
            "%s: attempt %d failed (%s), retrying in %.2f s",
            what,
            attempt,
            f"HTTP {status}" if status is not None else error,
            wait,
        )
        if response is not None:
            await response.aclose()
        await sleep(wait)
