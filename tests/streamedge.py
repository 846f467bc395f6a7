"""The telephony app as a test serves it: under uvicorn, and with ``stream_server == "media"`` its
stream routes also on the media port's websocket server (telephony/wsserver.py, ``telephony.media_port``).

``ws_url(http_url)`` names where that app's streams are served, so one test runs unchanged over
either path (parametrize it with ``STREAM_SERVERS``): the checks of a stream (signatures, tenant,
call cap, size limits, start timeout) must hold on both.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from voxroute.server import serve_app
from voxroute.server import ws_url as _asgi_ws_url
from voxroute.telephony.wsserver import MediaServer, bound_port, stream_routes

STREAM_SERVERS = ("asgi", "media")
_STREAMS: dict[str, str] = {}  # http url of an app under test -> ws base of its media server


@contextlib.asynccontextmanager
async def serve_edge(app, stream_server: str = "asgi") -> AsyncIterator[str]:
    """Yield the app's ``http://`` URL; ``ws_url`` of it is where its streams are served."""
    async with serve_app(app) as url:
        if stream_server == "asgi":
            yield url
            return
        assert stream_server == "media", stream_server
        async with MediaServer(stream_routes(app), open_timeout_s=5).serving() as media:
            _STREAMS[url] = f"ws://127.0.0.1:{bound_port(media)}"
            try:
                yield url
            finally:
                del _STREAMS[url]


def ws_url(http_url: str) -> str:
    return _STREAMS.get(http_url) or _asgi_ws_url(http_url)
