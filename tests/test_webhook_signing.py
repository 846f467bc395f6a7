"""Webhook deliveries verify with the Standard Webhooks library from PyPI (``standardwebhooks``), over a
real socket, and a delivery replayed outside its tolerance window is rejected by that library."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timedelta

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from voxroute.agent.webhook import WebhookSender, sign_standard, signing_key
from voxroute.server import serve_app

standardwebhooks = pytest.importorskip(
    "standardwebhooks", reason="the test extra: pip install standardwebhooks"
)
from standardwebhooks.webhooks import Webhook, WebhookVerificationError  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"voxroute-test-key-0123456789abcdef").decode()
STEP = 5.0  # bound on every wait


class Receiver:
    """Checks each delivery with ``standardwebhooks`` as it arrives, and keeps what it saw."""

    def __init__(self, secret: str | bytes) -> None:
        self.webhook = Webhook(secret)
        self.seen: list[tuple[bytes, dict[str, str]]] = []
        self.verified: list[dict] = []
        self.got = asyncio.Event()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request):
            body = await request.body()
            headers = dict(request.headers)
            self.seen.append((body, headers))
            try:
                self.verified.append(self.webhook.verify(body, headers))
            except WebhookVerificationError as exc:
                return JSONResponse({"error": str(exc)}, 401)
            self.got.set()
            return JSONResponse({}, 200)

        return app


async def deliver(receiver: Receiver, secret: str | bytes, body: bytes, **kwargs) -> None:
    async with serve_app(receiver.app()) as base:
        sender = WebhookSender(secret, base_delay_s=0.01, **kwargs)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sender.run())
            try:
                assert sender.submit(base + "/hook", body, delivery_id="msg_2aVx") is True
                async with asyncio.timeout(STEP):
                    await receiver.got.wait()
            finally:
                await sender.aclose(deadline_s=STEP)


def later(minutes: float) -> type[datetime]:
    """A ``datetime`` whose ``now()`` is ``minutes`` ahead: the receiver's clock at a replay."""

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(minutes=minutes)

    return Later


async def test_delivery_verifies_with_standardwebhooks_and_a_late_replay_is_rejected(monkeypatch):
    receiver = Receiver(SECRET)
    body = json.dumps({"reason": "billing_dispute", "summary": "refund asked"}).encode()
    await deliver(receiver, SECRET, body)
    assert receiver.verified == [json.loads(body)]
    (seen_body, headers) = receiver.seen[0]
    assert headers["webhook-id"] == "msg_2aVx"
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["x-voxroute-delivery"] == "msg_2aVx"  # the older headers ride along

    # The same delivery sent again a minute later is inside the window; six minutes later it is not.
    monkeypatch.setattr("standardwebhooks.webhooks.datetime", later(1))
    assert receiver.webhook.verify(seen_body, headers) == json.loads(body)
    monkeypatch.setattr("standardwebhooks.webhooks.datetime", later(6))
    with pytest.raises(WebhookVerificationError, match="too old"):
        receiver.webhook.verify(seen_body, headers)


async def test_stale_clock_delivery_is_refused_by_the_receiver():
    """A delivery stamped 10 minutes ago (a replay of an old request) gets a 401, never accepted."""
    receiver = Receiver(SECRET)
    async with serve_app(receiver.app()) as base:
        sender = WebhookSender(SECRET, attempts=1, clock=lambda: datetime.now().timestamp() - 600)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sender.run())
            sender.submit(base + "/hook", b'{"n": 1}')
            await sender.aclose(deadline_s=STEP)
    assert len(receiver.seen) == 1 and receiver.verified == []
    assert sender.stats.failed == 1 and sender.stats.delivered == 0


def test_tampering_and_wrong_key_fail():
    body = b'{"a": 1}'
    ts = int(datetime.now().timestamp())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_standard(signing_key(SECRET), "msg_1", ts, body),
    }
    assert Webhook(SECRET).verify(body, headers) == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b'{"a": 2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, {**headers, "webhook-id": "msg_2"})
    other = "whsec_" + base64.b64encode(b"another-key-0123456789").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


async def test_raw_secret_is_the_key_bytes():
    """A secret without ``whsec_`` is its own key: a receiver passes the same bytes."""
    receiver = Receiver(b"plain-secret")
    await deliver(receiver, "plain-secret", b'{"ok": true}')
    assert receiver.verified == [{"ok": True}]


def test_malformed_whsec_secret_fails_at_start():
    with pytest.raises(ValueError, match="not base64"):
        WebhookSender("whsec_not*base64!")
    with pytest.raises(ValueError, match="empty"):
        WebhookSender("whsec_")
