"""The signed webhook sender against a real receiver on 127.0.0.1 (FastAPI under uvicorn)."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from voxroute.agent.webhook import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    sign,
    verify_signature,
)
from voxroute.server import serve_app
from voxroute.testing.ports import free_port

SECRET = "whsec-test-0123456789"
STEP = 5.0  # bound on every wait: a hang fails the test instead of blocking it


@dataclass
class Receiver:
    fail_first: int = 0  # answer 500 to this many requests first
    status: int = 200  # then answer this
    hold: asyncio.Event | None = None  # when set: wait for it before answering
    seen: list[dict] = field(default_factory=list)  # every request
    valid: list[bytes] = field(default_factory=list)  # bodies with a good signature, answered 2xx
    got: asyncio.Event = field(default_factory=asyncio.Event)  # a valid body was accepted
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # any request came in

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request):
            body = await request.body()
            ok = verify_signature(body, SECRET, request.headers.get(SIGNATURE_HEADER))
            self.seen.append({"body": body, "headers": dict(request.headers), "signed": ok})
            self.arrived.set()
            if self.hold is not None:
                await self.hold.wait()
            if not ok:
                return JSONResponse({"error": "bad signature"}, 401)
            if self.fail_first > 0:
                self.fail_first -= 1
                return JSONResponse({"error": "boom"}, 500)
            if 200 <= self.status < 300:
                self.valid.append(body)
                self.got.set()
            return JSONResponse({}, self.status)

        return app


@asynccontextmanager
async def running(sender: WebhookSender):
    """``sender.run()`` owned by a TaskGroup, closed on the way out."""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(sender.run())
        try:
            yield sender
        finally:
            await sender.aclose(deadline_s=STEP)


def body_of(n: int) -> bytes:
    return json.dumps({"reason": "billing_dispute", "n": n}).encode()


# ---------------------------------------------------------------- signatures (no sockets)


def test_sign_and_verify():
    body = b'{"a":1}'
    assert sign(body, SECRET) == sign(body, SECRET.encode())
    assert sign(body, SECRET).startswith("sha256=") and len(sign(body, SECRET)) == 7 + 64
    assert verify_signature(body, SECRET, sign(body, SECRET))
    assert not verify_signature(body + b" ", SECRET, sign(body, SECRET))
    assert not verify_signature(body, "other", sign(body, SECRET))
    assert not verify_signature(body, SECRET, None)
    assert not verify_signature(body, SECRET, sign(body, SECRET)[7:])  # no prefix
    assert not verify_signature(body, SECRET, "sha256=\udcff")


def test_bad_arguments():
    with pytest.raises(ValueError):
        WebhookSender("")
    with pytest.raises(ValueError):
        WebhookSender(SECRET, queue_size=0)
    with pytest.raises(TypeError):
        WebhookSender(SECRET).submit("http://x/hook", "not bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- over sockets


async def test_delivers_signed_body_with_headers():
    receiver = Receiver()
    async with serve_app(receiver.app()) as base:
        sender = WebhookSender(SECRET, base_delay_s=0.01)
        async with running(sender):
            assert sender.submit(base + "/hook", body_of(1), delivery_id="d-1") is True
            async with asyncio.timeout(STEP):
                await receiver.got.wait()
    assert receiver.valid == [body_of(1)]
    (seen,) = receiver.seen
    headers = seen["headers"]
    assert headers[SIGNATURE_HEADER.lower()] == sign(body_of(1), SECRET)
    assert headers[DELIVERY_HEADER.lower()] == "d-1"
    assert headers[TIMESTAMP_HEADER.lower()].isdigit()
    assert headers["content-type"] == "application/json"
    assert sender.stats.delivered == 1 and sender.stats.failed == 0


async def test_retries_500_twice_then_delivers():
    receiver = Receiver(fail_first=2)
    async with serve_app(receiver.app()) as base:
        sender = WebhookSender(SECRET, attempts=5, base_delay_s=0.01)
        async with running(sender):
            sender.submit(base + "/hook", body_of(7))
            async with asyncio.timeout(STEP):
                await receiver.got.wait()
    assert len(receiver.seen) == 3
    assert all(s["signed"] and s["body"] == body_of(7) for s in receiver.seen)
    assert len({s["headers"][DELIVERY_HEADER.lower()] for s in receiver.seen}) == 1  # same id on retries
    assert receiver.valid == [body_of(7)]


async def test_gives_up_after_attempts_and_does_not_retry_4xx(caplog):
    failing = Receiver(fail_first=100)
    rejecting = Receiver(status=400)
    async with serve_app(failing.app()) as fail_base, serve_app(rejecting.app()) as reject_base:
        sender = WebhookSender(SECRET, attempts=3, base_delay_s=0.01)
        with caplog.at_level(logging.INFO, logger="voxroute.agent.webhook"):
            async with running(sender):
                sender.submit(fail_base + "/hook", body_of(1))
                sender.submit(reject_base + "/hook", body_of(2))
    assert len(failing.seen) == 3
    assert len(rejecting.seen) == 1
    assert sender.stats.failed == 2 and sender.stats.delivered == 0
    assert "failed after 3 attempts: HTTP 500" in caplog.text
    assert "failed after 1 attempt: HTTP 400 (not retried)" in caplog.text


async def test_connection_refused_is_retried_then_logged(caplog):
    port = free_port()  # nothing listens there
    sender = WebhookSender(SECRET, attempts=2, base_delay_s=0.01)
    with caplog.at_level(logging.ERROR, logger="voxroute.agent.webhook"):
        async with running(sender):
            sender.submit(f"http://127.0.0.1:{port}/hook", body_of(1))
    assert sender.stats.failed == 1
    assert "failed after 2 attempts: ConnectError" in caplog.text


async def test_full_queue_drops_oldest_with_error_log(caplog):
    receiver = Receiver()
    async with serve_app(receiver.app()) as base:
        sender = WebhookSender(SECRET, queue_size=2, concurrency=1, base_delay_s=0.01)
        with caplog.at_level(logging.ERROR, logger="voxroute.agent.webhook"):
            # run() not started yet: the queue fills; submit never blocks
            for n in range(1, 5):
                assert sender.submit(base + "/hook", body_of(n)) is True
            assert sender.pending == 2 and sender.stats.dropped == 2
            async with running(sender):
                pass  # aclose drains what is queued
    assert receiver.valid == [body_of(3), body_of(4)]
    assert caplog.text.count("webhook queue full (2): dropped the oldest delivery") == 2


async def test_aclose_drains_all_queued():
    receiver = Receiver()
    async with serve_app(receiver.app()) as base:
        sender = WebhookSender(SECRET, queue_size=50, concurrency=3, base_delay_s=0.01)
        async with running(sender):
            for n in range(20):
                sender.submit(base + "/hook", body_of(n))
        assert sender.pending == 0
        assert sender.submit(base + "/hook", body_of(99)) is False  # closed
    assert sorted(receiver.valid) == sorted(body_of(n) for n in range(20))
    assert sender.stats.delivered == 20 and sender.stats.dropped == 1


async def test_aclose_deadline_abandons_stuck_delivery(caplog):
    receiver = Receiver(hold=asyncio.Event())
    async with serve_app(receiver.app()) as base:
        sender = WebhookSender(SECRET, timeout_s=STEP, base_delay_s=0.01)
        with caplog.at_level(logging.ERROR, logger="voxroute.agent.webhook"):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sender.run())
                sender.submit(base + "/hook", body_of(1))
                async with asyncio.timeout(STEP):
                    await receiver.arrived.wait()
                    await sender.aclose(deadline_s=0.1)  # returns although the receiver never answers
        receiver.hold.set()  # let the server's handler finish so it shuts down at once
    assert sender.stats.abandoned == 1 and sender.stats.delivered == 0
    assert "closed with 1 delivery undelivered" in caplog.text


async def test_bad_url_is_rejected_with_a_log(caplog):
    sender = WebhookSender(SECRET)
    with caplog.at_level(logging.ERROR, logger="voxroute.agent.webhook"):
        assert sender.submit("ftp://example.com/x", b"{}") is False
        assert sender.submit("not a url", b"{}") is False
    assert sender.stats.dropped == 2 and "not an http(s) URL" in caplog.text
    await sender.aclose()  # run() never started: returns at once
