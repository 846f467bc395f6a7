"""The one retry rule (voxroute.agent.retry): the pure policy, the loop on a fake sleep, and every
carrier's REST call control (Twilio, Plivo, Telnyx) retrying by it over a real socket."""

from __future__ import annotations

import asyncio
import email.utils
import logging

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from voxroute.agent.retry import RetryPolicy, retry_after_s, retryable_status, send_with_retries
from voxroute.server import serve_app
from voxroute.telephony.call_control import CallControlError, TwilioCallControl
from voxroute.telephony.carrier_control import PlivoCallControl, TelnyxCallControl

NOW = 1_800_000_000.0
TWILIO_CALL = "CA00000000000000000000000000000003"

# ---------------------------------------------------------------- the rule (pure)


@pytest.mark.parametrize(
    ("attempt", "status", "retry_after", "expected"),
    [
        (1, None, None, 0.25),  # no answer: backoff
        (2, None, None, 0.5),
        (1, 500, None, 0.25),
        (2, 503, None, 0.5),
        (1, 429, None, 0.25),  # 429 without Retry-After: backoff
        (1, 429, 1.5, 1.5),  # ... with one: that long
        (1, 503, 0.0, 0.0),
        (1, 429, 2.5, None),  # longer than max_delay_s: not waited for
        (3, 500, None, None),  # the last attempt
        (1, 200, None, None),
        (1, 302, None, None),
        (1, 400, None, None),
        (1, 401, None, None),
        (1, 404, None, None),
        (1, 422, None, None),
    ],
)
def test_policy_delay(attempt, status, retry_after, expected):
    policy = RetryPolicy(attempts=3, base_delay_s=0.25, max_delay_s=2.0)
    assert policy.delay(attempt, status, retry_after) == expected


def test_backoff_is_capped():
    policy = RetryPolicy(attempts=10, base_delay_s=0.5, max_delay_s=3.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_bad_policies_are_refused():
    for bad in ({"attempts": 0}, {"timeout_s": 0}, {"base_delay_s": -1}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def test_retryable_statuses():
    assert [s for s in (200, 301, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504, 599)
            if retryable_status(s)] == [429, 500, 502, 503, 504, 599]  # fmt: skip


def test_retry_after_forms():
    assert retry_after_s("3", NOW) == 3.0
    assert retry_after_s(" 0 ", NOW) == 0.0
    assert retry_after_s(email.utils.formatdate(NOW + 7, usegmt=True), NOW) == 7.0
    assert retry_after_s(email.utils.formatdate(NOW - 60, usegmt=True), NOW) == 0.0  # past: at once
    for unreadable in (None, "", "soon", "-1", "1.5", "Wed, 21 Oct 2015 07:28:00"):  # the last: no zone
        assert retry_after_s(unreadable, NOW) is None


# ---------------------------------------------------------------- the loop (fake sleep, no socket)


def answers(*statuses_and_headers):
    """A ``send()`` answering each status in turn (an exception instance is raised instead)."""
    script = list(statuses_and_headers)
    calls = []

    async def send() -> httpx.Response:
        calls.append(len(calls) + 1)
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        status, headers = item if isinstance(item, tuple) else (item, {})
        return httpx.Response(status, headers=headers, request=httpx.Request("POST", "http://x/"))

    return send, calls


async def run(send, policy=None):
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    policy = policy or RetryPolicy(attempts=3, base_delay_s=0.25, max_delay_s=2.0, timeout_s=1.0)
    sent = await send_with_retries(send, policy, "test", sleep=sleep, clock=lambda: NOW)
    return sent, slept


async def test_5xx_then_success():
    send, calls = answers(500, 502, 200)
    sent, slept = await run(send)
    assert sent.response.status_code == 200 and sent.attempts == 3 and slept == [0.25, 0.5]
    assert calls == [1, 2, 3]


async def test_5xx_exhausted_gives_the_last_answer():
    send, _ = answers(500, 500, 503)
    sent, slept = await run(send)
    assert (sent.response.status_code, sent.attempts, sent.retried_out, sent.failure) == (
        503,
        3,
        True,
        "HTTP 503",
    )


async def test_4xx_is_final_at_once():
    send, _ = answers(403)
    sent, slept = await run(send)
    assert (sent.response.status_code, sent.attempts, sent.retried_out, slept) == (403, 1, False, [])


async def test_429_waits_its_retry_after():
    send, _ = answers((429, {"Retry-After": "1"}), 200)
    sent, slept = await run(send)
    assert sent.response.status_code == 200 and slept == [1.0]
    date = email.utils.formatdate(NOW + 2, usegmt=True)
    send, _ = answers((503, {"Retry-After": date}), 200)
    sent, slept = await run(send)
    assert sent.response.status_code == 200 and slept == [2.0]


async def test_429_asking_too_long_is_not_waited_for(caplog):
    send, calls = answers((429, {"Retry-After": "3600"}), 200)
    with caplog.at_level(logging.INFO, logger="voxroute.agent.retry"):
        sent, slept = await run(send)
    assert (sent.response.status_code, sent.attempts, sent.retried_out, slept) == (429, 1, True, [])
    assert calls == [1]


async def test_connection_errors_are_retried_and_named():
    send, _ = answers(httpx.ConnectError("refused"), httpx.ReadError("reset"))
    sent, slept = await run(send, RetryPolicy(attempts=2, base_delay_s=0.1, timeout_s=1.0))
    assert sent.response is None and sent.error == "ReadError: reset" and slept == [0.1]
    assert sent.retried_out is True and sent.failure == "ReadError: reset"


async def test_a_hung_attempt_ends_at_timeout_s():
    hung = asyncio.Event()

    async def send() -> httpx.Response:
        await hung.wait()  # never set: only the policy's timeout ends it
        raise AssertionError("unreachable")

    sent, slept = await run(send, RetryPolicy(attempts=2, base_delay_s=0.0, timeout_s=0.05))
    assert sent.response is None and sent.error == "no answer within 0.05 s" and sent.attempts == 2


# ---------------------------------------------------------------- every carrier's control, over a socket


class Flaky:
    """Any path: answers ``script`` in turn (status, headers), then 200 ``{}``; records the paths."""

    def __init__(self, *script: tuple[int, dict[str, str]]) -> None:
        self.script = list(script)
        self.paths: list[str] = []
        self.app = FastAPI()

        @self.app.api_route("/{path:path}", methods=["POST", "DELETE"])
        async def any_path(request: Request, path: str) -> JSONResponse:
            self.paths.append(request.url.path)
            status, headers = self.script.pop(0) if self.script else (200, {})
            return JSONResponse({"code": status, "message": "scripted"}, status, headers=headers)


def controls(base: str, attempts: int = 3):
    fast = {"api_base_url": base, "attempts": attempts, "backoff_s": 0.01, "timeout_s": 2.0}
    return {
        "twilio": (TwilioCallControl("AC" + "0" * 32, "token", **fast), TWILIO_CALL),
        "plivo": (PlivoCallControl("MA1", "token", "https://voice.example.com", **fast), "uuid-1"),
        "telnyx": (TelnyxCallControl("KEY", **fast), "v3:abc"),
    }


@pytest.mark.parametrize("carrier", ["twilio", "plivo", "telnyx"])
async def test_every_control_retries_429_after_retry_after_and_5xx(carrier):
    flaky = Flaky((429, {"Retry-After": "0"}), (503, {}))
    async with serve_app(flaky.app) as base:
        control, call = controls(base)[carrier]
        async with control:
            assert await control.hang_up(call) is True
    assert len(flaky.paths) == 3 and len(set(flaky.paths)) == 1


@pytest.mark.parametrize("carrier", ["twilio", "plivo", "telnyx"])
async def test_every_control_gives_up_on_4xx_at_once(carrier, caplog):
    flaky = Flaky((403, {}))
    async with serve_app(flaky.app) as base:
        control, call = controls(base)[carrier]
        async with control:
            with caplog.at_level(logging.WARNING, logger="voxroute.telephony.call_control"):
                with pytest.raises(CallControlError) as info:
                    await control.hang_up(call)
    assert info.value.status == 403 and len(flaky.paths) == 1
    assert "after 1 attempt, not retried" in caplog.text


@pytest.mark.parametrize("carrier", ["twilio", "plivo", "telnyx"])
async def test_every_control_raises_after_the_attempts(carrier, caplog):
    flaky = Flaky((500, {}), (500, {}))
    async with serve_app(flaky.app) as base:
        control, call = controls(base, attempts=2)[carrier]
        async with control:
            with caplog.at_level(logging.WARNING, logger="voxroute.telephony.call_control"):
                with pytest.raises(CallControlError, match="HTTP 500") as info:
                    await control.hang_up(call)
    assert info.value.status == 500 and len(flaky.paths) == 2
    assert "after 2 attempts)" in caplog.text


@pytest.mark.parametrize("call", ["../../x", "a/b", "x?y", "", "a b", "%2e%2e"])
async def test_a_bad_call_id_never_reaches_the_wire(call):
    flaky = Flaky()
    async with serve_app(flaky.app) as base:
        for control, _ in controls(base).values():
            async with control:
                with pytest.raises(CallControlError, match="not a call id"):
                    await control.hang_up(call)
    assert flaky.paths == []
