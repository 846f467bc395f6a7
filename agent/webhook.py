"""Signed webhook delivery (the handoff summary), retried with backoff, never blocking the call.

``submit(url, body)`` is synchronous and only enqueues onto a bounded queue; ``run()`` (a task in the
owner's TaskGroup) delivers with a few concurrent workers; ``aclose(deadline_s)`` stops taking new
bodies and drains the queue within the deadline. When the queue is full the *oldest* waiting body is
dropped with an error log line: the newest summary is the one an operator needs, and the call never
waits for a slow receiver.

Each POST is signed the Standard Webhooks way (https://www.standardwebhooks.com), so any of its
libraries verifies it (``standardwebhooks.Webhook(secret).verify(body, headers)``) and rejects a
delivery replayed outside its tolerance window (5 minutes there)::

    Content-Type: application/json
    webhook-id: <id, the same on every retry of one body: receivers de-duplicate on it>
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>

The secret is ``whsec_<base64 key>`` as Standard Webhooks libraries take it (a secret without the
prefix is used as the key's raw bytes: receivers then pass it as bytes). The older voxroute headers
are still sent for receivers written against them, but they do not stop a replay (their timestamp
is not signed)::

    X-Voxroute-Signature: sha256=<hex HMAC-SHA256(secret, body)>
    X-Voxroute-Timestamp: <unix seconds of this attempt>
    X-Voxroute-Delivery: <the webhook-id>

Retried as every outgoing request is (:mod:`voxroute.agent.retry`): connection errors, timeouts, 5xx
and 429 (``attempts`` in all, delays ``base_delay_s * 2**n`` capped at ``max_delay_s``, or a 429's
``Retry-After``). Not retried: other 4xx and 3xx (logged, given up).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from voxroute.agent.calllog.redact import redact, redact_json
from voxroute.agent.retry import RetryPolicy, send_with_retries

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Voxroute-Signature"
TIMESTAMP_HEADER = "X-Voxroute-Timestamp"
DELIVERY_HEADER = "X-Voxroute-Delivery"
SIGNATURE_PREFIX = "sha256="
# Standard Webhooks
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"


def redact_body(body: bytes) -> bytes:
    """``body`` with cards, phone numbers and e-mail addresses masked in every JSON string (or in the
    text, if it is not JSON); the very same bytes when there is nothing to mask."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return body
    try:
        data = json.loads(text)
    except ValueError:
        masked = redact(text)
        return body if masked == text else masked.encode()
    masked_data = redact_json(data)
    return body if masked_data == data else json.dumps(masked_data, ensure_ascii=False).encode()


def sign(body: bytes, secret: str | bytes) -> str:
    """The ``X-Voxroute-Signature`` value for ``body``: ``sha256=<hex>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return SIGNATURE_PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, secret: str | bytes, header: str | None) -> bool:
    """Constant-time check of an ``X-Voxroute-Signature`` header (for receivers and tests)."""
    if not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    return hmac.compare_digest(sign(body, secret).encode(), header.strip().encode("utf-8", "replace"))


def signing_key(secret: str | bytes) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_<base64>`` decoded, else the raw bytes.

    A ``whsec_`` secret whose key is not valid base64 (or is empty) raises ``ValueError``: the
    sender then refuses to start instead of signing with a key no receiver holds.
    """
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :].strip()
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("webhook secret starts with whsec_ but the rest is not base64") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("webhook secret must not be empty")
    return key


def sign_standard(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``."""
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(secret: str | bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one delivery attempt of ``body`` (Standard Webhooks and the older ones)."""
    return {
        "Content-Type": "application/json",
        WEBHOOK_ID_HEADER: webhook_id,
        WEBHOOK_TIMESTAMP_HEADER: str(timestamp),
        WEBHOOK_SIGNATURE_HEADER: sign_standard(signing_key(secret), webhook_id, timestamp, body),
        SIGNATURE_HEADER: sign(body, secret),
        TIMESTAMP_HEADER: str(timestamp),
        DELIVERY_HEADER: webhook_id,
    }


@dataclass(frozen=True)
class _Delivery:
    url: str
    body: bytes
    delivery_id: str
    queued_at: float


@dataclass
class WebhookStats:
    queued: int = 0
    delivered: int = 0
    failed: int = 0  # gave up after retries or a non-retryable answer
    dropped: int = 0  # pushed out of a full queue, or submitted after close
    abandoned: int = 0  # still queued or in flight when aclose's deadline passed


class WebhookSender:
    """Delivers signed JSON bodies. ``run()`` must be running (in the owner's TaskGroup) to deliver."""

    def __init__(
        self,
        secret: str | bytes,
        *,
        attempts: int = 5,
        base_delay_s: float = 0.5,
        max_delay_s: float = 10.0,
        timeout_s: float = 5.0,
        queue_size: int = 100,
        concurrency: int = 4,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("webhook secret must not be empty")
        signing_key(secret)  # a malformed whsec_ secret fails here, at start
        if attempts < 1 or queue_size < 1 or concurrency < 1 or timeout_s <= 0:
            raise ValueError("attempts, queue_size and concurrency must be >= 1, timeout_s > 0")
        self._secret = secret
        self._clock = clock  # wall clock (unix seconds) for webhook-timestamp
        self.retry = RetryPolicy(attempts, base_delay_s, max_delay_s, timeout_s)
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._client = client  # None: run() owns one
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue(maxsize=queue_size)
        self._closing = False
        self._running = False
        self._stopped = asyncio.Event()
        self._stop = asyncio.Event()
        self._in_flight = 0
        self.stats = WebhookStats()

    def __repr__(self) -> str:
        return f"WebhookSender(queued={self._queue.qsize()}, closing={self._closing})"

    # ------------------------------------------------------------------ caller side (never blocks)

    def submit(self, url: str, body: bytes, *, delivery_id: str | None = None) -> bool:
        """Queue ``body`` for ``url``. False (and a log line) if not accepted: closed or bad URL.

        When the queue is full, the oldest waiting body is dropped (logged as an error) to make room.
        """
        if not isinstance(body, bytes | bytearray):
            raise TypeError(f"webhook body must be bytes, got {type(body).__name__}")
        delivery_id = delivery_id or uuid.uuid4().hex
        body = redact_body(bytes(body))  # signed as sent: after redaction
        if self._closing:
            self.stats.dropped += 1
            log.error("webhook %s to %s dropped: sender is closing", delivery_id, url)
            return False
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.stats.dropped += 1
            log.error("webhook %s dropped: not an http(s) URL: %r", delivery_id, url)
            return False
        if self._queue.full():
            oldest = self._queue.get_nowait()
            self._queue.task_done()
            self.stats.dropped += 1
            log.error(
                "webhook queue full (%d): dropped the oldest delivery %s to %s, queued %.1f s ago",
                self._queue.maxsize,
                oldest.delivery_id,
                oldest.url,
                time.monotonic() - oldest.queued_at,
            )
        self._queue.put_nowait(_Delivery(url, bytes(body), delivery_id, time.monotonic()))
        self.stats.queued += 1
        return True

    @property
    def pending(self) -> int:
        """Deliveries queued or in flight."""
        return self._queue.qsize() + self._in_flight

    # ------------------------------------------------------------------ the owner's task

    async def run(self) -> None:
        """Deliver until :meth:`aclose`. Run it as a task of the owner's TaskGroup."""
        if self._running:
            raise RuntimeError("WebhookSender.run() is already running")
        self._running = True
        try:
            if self._client is not None:
                await self._serve(self._client)
            else:
                async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
                    await self._serve(client)
        finally:
            self._running = False
            self._stopped.set()

    async def _serve(self, client: httpx.AsyncClient) -> None:
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(self._worker(client)) for _ in range(self.concurrency)]
            await self._stop.wait()  # set by aclose() once drained or out of time
            for task in workers:
                task.cancel()

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while True:
            delivery = await self._queue.get()
            self._in_flight += 1
            try:
                await self._deliver(client, delivery)
            except Exception:  # a bug here must not stop the other deliveries
                self.stats.failed += 1
                log.exception("webhook %s to %s: unexpected error", delivery.delivery_id, delivery.url)
            finally:
                self._in_flight -= 1
                self._queue.task_done()

    async def _deliver(self, client: httpx.AsyncClient, delivery: _Delivery) -> None:
        def send() -> Awaitable[httpx.Response]:
            # Signed afresh each attempt: the timestamp is part of what is signed.
            headers = signed_headers(self._secret, delivery.delivery_id, int(self._clock()), delivery.body)
            return client.post(delivery.url, content=delivery.body, headers=headers)

        what = f"webhook {delivery.delivery_id} to {delivery.url}"
        sent = await send_with_retries(send, self.retry, what, logger=log)
        r = sent.response
        if r is not None and 200 <= r.status_code < 300:
            self.stats.delivered += 1
            log.info("%s delivered (HTTP %d, attempt %d)", what, r.status_code, sent.attempts)
            return
        self.stats.failed += 1
        log.error("%s failed after %d attempt%s: %s%s", what, sent.attempts, "" if sent.attempts == 1 else "s",
                  sent.failure, "" if sent.retried_out else " (not retried)")  # fmt: skip

    # ------------------------------------------------------------------ shutdown

    async def aclose(self, deadline_s: float = 5.0) -> None:
        """Take no new bodies, wait up to ``deadline_s`` for the queue to drain, then stop ``run()``."""
        self._closing = True
        if not self._running:
            await asyncio.sleep(0)  # a run() task created just now gets to start
        if self._running:
            try:
                async with asyncio.timeout(deadline_s):
                    await self._queue.join()
            except TimeoutError:
                pass
        left = self.pending
        if left:
            self.stats.abandoned += left
            log.error(
                "webhook sender closed with %d deliver%s undelivered", left, "y" if left == 1 else "ies"
            )
        self._stop.set()
        if self._running:
            await self._stopped.wait()
        while not self._queue.empty():  # nobody will deliver these any more
            self._queue.get_nowait()
            self._queue.task_done()
