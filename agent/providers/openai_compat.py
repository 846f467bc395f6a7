"""OpenAI-compatible chat completions client (OpenRouter, Sarvam, CallMissed, OpenAI) over httpx + SSE.

A thin asyncio layer over :mod:`voxroute.agent.providers.openai_protocol`. One shared
``httpx.AsyncClient`` per provider keeps a keep-alive pool, so a call's turns reuse warm TCP (and
TLS) connections. ``stream()`` yields :class:`LLMToken` as chunks arrive (the caller keeps what it
already got when a stream fails), then :class:`LLMUsage`; when the model calls tools it also yields
:class:`LLMToolCalls` before the usage. Every failure is a :class:`ProviderError`:

=========================================  ============================================
what happened                              kind
=========================================  ============================================
HTTP 5xx before the stream                 ``http_500`` (``status`` set)
HTTP 429                                   ``http_429`` (``retry_after_s`` from Retry-After)
any other non-2xx                          ``http_error``
error chunk inside a 200 stream            ``stream_error`` (``after_first`` if tokens flowed)
chunk that is not the protocol             ``malformed``
connection dropped / cut before the end    ``disconnected``
only keep-alive comments (or only headers)
for ``stall_timeout_s``                    ``stall``
no byte at all for ``stall_timeout_s``,
or no first token in ``first_token_timeout_s``  ``timeout``
=========================================  ============================================

The caller still owns the turn deadline (``asyncio.timeout`` around the iteration); closing the
iterator (``aclose()`` or cancelling the task) closes the HTTP response at once, which is how
OpenRouter learns to stop generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from voxroute.agent.providers.base import (
    LLMEvent,
    LLMRequest,
    LLMToken,
    LLMToolCalls,
    LLMUsage,
    ProviderError,
)
from voxroute.agent.providers.openai_protocol import (
    FLAVORS,
    ChatStreamDecoder,
    ContentDelta,
    Done,
    Finish,
    KeepAlive,
    OpenAIProtocolError,
    StreamError,
    Usage,
    allowed_extras,
    build_body,
    parse_error_body,
    parse_retry_after,
)

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024
DRAIN_AFTER_DONE_S = 1.0  # read the rest of the body after [DONE] so the connection goes back to the pool


SHARD_CONNECTIONS = 16


class ClientShards:
    """httpx clients of at most ``SHARD_CONNECTIONS`` connections each (``max_connections`` in all);
    a request goes to the one with the fewest requests in flight per connection.

    Why not one client: httpcore 1.0's pool, on every request's start and end, counts its idle
    connections once per connection (quadratic in the pool's size). With 100 connections that was
    8% of the server's CPU while 200 calls started within a second (``bench.concurrency``, py-spy),
    enough to stall the event loop past the 20 ms inbound-lag limit.
    """

    def __init__(self, max_connections: int, timeout: httpx.Timeout) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        sizes = [SHARD_CONNECTIONS] * (max_connections // SHARD_CONNECTIONS)
        if max_connections % SHARD_CONNECTIONS:
            sizes.append(max_connections % SHARD_CONNECTIONS)
        tls = httpx.create_ssl_context()  # one for all: building one loads the CA store (~20 ms)
        self.clients = [
            httpx.AsyncClient(
                verify=tls,
                timeout=timeout,
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=60.0),
            )
            for n in sizes
        ]
        self.sizes = sizes
        self.in_flight = [0] * len(sizes)

    @contextlib.contextmanager
    def lease(self) -> Iterator[httpx.AsyncClient]:
        """The client with the fewest requests in flight per connection, for one request."""
        i = min(range(len(self.clients)), key=lambda k: self.in_flight[k] / self.sizes[k])
        self.in_flight[i] += 1
        try:
            yield self.clients[i]
        finally:
            self.in_flight[i] -= 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class OpenAICompatLLM:
    """An :class:`~agent.providers.base.LLMProvider` for one OpenAI-compatible endpoint.

    ``base_url`` includes the version prefix, as with the ``openai`` SDK: ``https://openrouter.ai/api/v1``,
    ``https://api.sarvam.ai/v1`` (or ``/v2``), ``https://api.callmissed.com/v1``. Prices are USD per
    million tokens and are used for ``LLMUsage.cost_usd`` when the provider reports no cost.
    ``extra_body`` adds allow-listed provider fields to every request (e.g. OpenRouter ``provider``);
    fields the flavor does not allow raise ValueError here, at start.
    """

    def __init__(
        self,
        name: str,
        flavor: str,
        base_url: str,
        api_key: str | None,
        price_in_per_mtok: float = 0.0,
        price_out_per_mtok: float = 0.0,
        connect_timeout: float = 5.0,
        first_token_timeout_s: float | None = None,
        stall_timeout_s: float = 10.0,
        *,
        extra_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        max_connections: int = 100,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; choose one of {FLAVORS}")
        self.name = name
        self.flavor = flavor
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_version = "v2" if urlsplit(self.base_url).path.rstrip("/").endswith("/v2") else "v1"
        self.price_in_per_mtok = price_in_per_mtok
        self.price_out_per_mtok = price_out_per_mtok
        self.first_token_timeout_s = first_token_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.extra_body = dict(extra_body or {})
        # For CallMissed the frontier-model extras are checked per request (they depend on the model id).
        bad = set(self.extra_body) - allowed_extras(
            flavor, "a/b" if flavor == "callmissed" else "", self.api_version
        )
        if bad:
            raise ValueError(f"{name}: fields {sorted(bad)} are not allowed for flavor {flavor!r}")
        self._headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
            if flavor == "sarvam":
                self._headers["api-subscription-key"] = api_key
        self._clients = ClientShards(
            max_connections,
            # Reads are timed by stream() itself (stall/first token); httpx only bounds connect and write.
            httpx.Timeout(connect=connect_timeout, read=None, write=connect_timeout, pool=connect_timeout),
        )

    async def aclose(self) -> None:
        await self._clients.aclose()

    def _cost(self, usage: Usage) -> float | None:
        if usage.cost_usd is not None:
            return usage.cost_usd
        if self.price_in_per_mtok or self.price_out_per_mtok:
            return (
                usage.prompt_tokens * self.price_in_per_mtok
                + usage.completion_tokens * self.price_out_per_mtok
            ) / 1e6
        return None

    def _fail(self, kind: str, message: str, *, after_first: bool = False, **kw: Any) -> ProviderError:
        log.warning("%s: %s: %s", self.name, kind, message)
        return ProviderError(self.name, kind, message, after_first=after_first, **kw)

    async def stream(
        self, request: LLMRequest, *, extra_body: dict[str, Any] | None = None
    ) -> AsyncIterator[LLMEvent]:
        """Stream one completion. ``extra_body`` adds per-request fields (filtered by the allow-list)."""
        body = build_body(
            self.flavor,
            request,
            stream=True,
            extra={**self.extra_body, **(extra_body or {})},
            api_version=self.api_version,
        )
        headers = dict(self._headers)
        if request.tag:
            headers["X-Voxroute-Tag"] = request.tag
        loop = asyncio.get_running_loop()
        start = loop.time()
        # Two clocks: no *data* for stall_timeout_s (keep-alives do not count), and, optionally, no first
        # token for first_token_timeout_s (which, when set, alone governs the wait for the first data). ``heard`` tells a silent hang (timeout) from a stall.
        last_data = start
        first_deadline = (
            start + self.first_token_timeout_s if self.first_token_timeout_s is not None else None
        )
        heard = False
        tokens = 0

        def deadline() -> float:
            if first_deadline is not None and last_data == start:
                return first_deadline  # before any data only the first-token clock runs: a model may think
            d = last_data + self.stall_timeout_s
            return min(d, first_deadline) if first_deadline is not None else d

        def timed_out() -> ProviderError:
            now = loop.time()
            if first_deadline is not None and now >= first_deadline:
                return self._fail("timeout", f"no first token in {self.first_token_timeout_s:.3g} s")
            if heard:
                return self._fail(
                    "stall",
                    f"no data for {self.stall_timeout_s:.3g} s (keep-alives only)",
                    after_first=tokens > 0,
                )
            return self._fail("timeout", f"no response for {self.stall_timeout_s:.3g} s")

        with self._clients.lease() as client:
            req = client.build_request("POST", self.url, json=body, headers=headers)
            try:
                async with asyncio.timeout_at(deadline()):
                    response = await client.send(req, stream=True)
            except TimeoutError:
                raise timed_out() from None
            except httpx.TimeoutException as e:
                raise self._fail("timeout", f"connect: {e!r}") from e
            except httpx.HTTPError as e:
                raise self._fail("disconnected", f"request failed: {e!r}") from e
            heard = True
            try:
                if response.status_code != 200:
                    raise await self._status_error(response, deadline())
                ctype = response.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    raise self._fail("malformed", f"expected text/event-stream, got {ctype!r}")
                decoder = ChatStreamDecoder(
                    strict_tool_arguments=False
                )  # bad arguments: the model's error result
                chunks = response.aiter_bytes()
                while not decoder.done:
                    try:
                        async with asyncio.timeout_at(deadline()):
                            data = await anext(chunks)
                    except TimeoutError:
                        raise timed_out() from None
                    except StopAsyncIteration:
                        if decoder.finished:  # complete answer, only [DONE] missing: tolerate
                            log.info("%s: stream ended after finish_reason without [DONE]", self.name)
                            return
                        raise self._fail(
                            "disconnected",
                            "stream ended before [DONE] and finish_reason",
                            after_first=tokens > 0,
                        ) from None
                    except httpx.HTTPError as e:
                        if decoder.finished:
                            log.info("%s: connection dropped after finish_reason: %r", self.name, e)
                            return
                        raise self._fail(
                            "disconnected", f"connection dropped: {e!r}", after_first=tokens > 0
                        ) from e
                    try:
                        events = decoder.feed(data)
                    except OpenAIProtocolError as e:
                        raise self._fail("malformed", str(e), after_first=tokens > 0) from e
                    for ev in events:
                        if isinstance(ev, KeepAlive):
                            continue
                        if isinstance(ev, Done):
                            break
                        last_data = loop.time()
                        if isinstance(ev, ContentDelta):
                            tokens += 1
                            first_deadline = None
                            yield LLMToken(ev.text)
                        elif isinstance(ev, Finish):
                            first_deadline = None
                            if ev.tool_calls:
                                yield LLMToolCalls(ev.tool_calls, decoder.chunks.model)
                        elif isinstance(ev, Usage):
                            yield LLMUsage(ev.prompt_tokens, ev.completion_tokens, self._cost(ev))
                        elif isinstance(ev, StreamError):
                            raise self._fail(
                                "stream_error",
                                f"error chunk code={ev.code!r}: {ev.message}",
                                after_first=tokens > 0,
                            )
                # Drain the end of the body so the connection returns to the keep-alive pool.
                try:
                    async with asyncio.timeout(DRAIN_AFTER_DONE_S):
                        async for _ in chunks:
                            pass
                except (TimeoutError, httpx.HTTPError):
                    pass
            finally:
                await response.aclose()

    async def _status_error(self, response: httpx.Response, deadline: float) -> ProviderError:
        status = response.status_code
        raw = b""
        try:
            async with asyncio.timeout_at(deadline):
                async for part in response.aiter_bytes():
                    raw += part
                    if len(raw) > MAX_ERROR_BODY:
                        break
        except (TimeoutError, httpx.HTTPError):
            pass
        try:
            err = parse_error_body(raw)
            detail = f"{err.code!r}: {err.message}" + (f" (param {err.param})" if err.param else "")
        except OpenAIProtocolError:
            detail = raw[:200].decode("utf-8", "replace")
        message = f"HTTP {status}: {detail}"
        if status == 429:
            retry = parse_retry_after(response.headers.get("retry-after"))
            if response.headers.get("retry-after-ms"):
                try:
                    retry = float(response.headers["retry-after-ms"]) / 1000
                except ValueError:
                    pass
            return self._fail("http_429", message, status=status, retry_after_s=retry)
        if status >= 500:
            return self._fail("http_500", message, status=status)
        return self._fail("http_error", message, status=status)
