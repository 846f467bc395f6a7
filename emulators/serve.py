"""Serve an ASGI app on 127.0.0.1 from inside a running event loop (tests, replay, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import uvicorn


@contextlib.asynccontextmanager
async def serve_app(
    app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on ``host:port`` (0 = a free port) and yield ``http://host:port``.

    The server task belongs to a task group that is left only after the server shut down.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        ws="websockets-sansio",
        ws_max_size=1 << 20,
        ws_per_message_deflate=False,  # audio frames: compression costs CPU and saves nothing
        ws_ping_interval=None,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the owner handles signals
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(server.serve())
        while not server.started:
            if task.done():
                raise RuntimeError(f"server for {app!r} failed to start")
            await asyncio.sleep(0.01)
        sock = server.servers[0].sockets[0]
        bound_host, bound_port = sock.getsockname()[:2]
        try:
            yield f"http://{bound_host}:{bound_port}"
        finally:
            server.should_exit = True
    logging.getLogger(__name__).debug("server on %s:%s stopped", bound_host, bound_port)


def ws_url(http_url: str) -> str:
    return "ws" + http_url[len("http") :] if http_url.startswith("http") else http_url
