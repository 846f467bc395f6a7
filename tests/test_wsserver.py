"""The websockets media server (telephony/wsserver.py) over real sockets on 127.0.0.1.

The carriers' own checks run on it in tests/test_twilio_app.py and tests/test_carrier_protocols.py
(each stream test runs on both servers); here: what the server itself decides.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voxroute.telephony.wsserver import MediaServer, TrustedProxies, bound_port, media_edge

STEP = 5.0


async def _close_code(ws) -> int | None:
    async with asyncio.timeout(STEP):
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


async def test_routes_accept_refuse_and_handler_failures():
    seen: list[str] = []

    async def echo(ws) -> None:
        seen.append(f"{ws.url.path}?{ws.url.query} {ws.headers.get('x-test')} {ws.client.host}")
        await ws.accept()
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                seen.append(f"disconnect {msg['code']}")
                return
            await ws.send_text(msg.get("text") or msg["bytes"].decode())

    async def refuse(ws) -> None:
        await ws.close(1008)  # before accept: HTTP 403, no socket

    async def broken_before(ws) -> None:
        raise RuntimeError("handler bug before accept")

    async def broken_after(ws) -> None:
        await ws.accept()
        await ws.receive()
        raise RuntimeError("handler bug after accept")

    async def silent(ws) -> None:
        return  # neither accepted nor refused: refused

    routes = {
        "/echo": echo,
        "/refuse": refuse,
        "/before": broken_before,
        "/after": broken_after,
        "/silent": silent,
    }
    async with MediaServer(routes).serving() as server:
        base = f"ws://127.0.0.1:{bound_port(server)}"
        async with (
            asyncio.timeout(STEP),
            connect(base + "/echo?a=1", additional_headers={"X-Test": "t"}) as ws,
        ):
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"bin")
            assert await ws.recv() == "bin"
        for path, status in (("/nowhere", 404), ("/refuse", 403), ("/before", 500), ("/silent", 403)):
            with pytest.raises(InvalidStatus) as info:
                async with asyncio.timeout(STEP), connect(base + path):
                    pass
            assert info.value.response.status_code == status, path
        async with connect(base + "/after") as ws:
            await ws.send("x")
            assert await _close_code(ws) == 1011
    assert seen[0] == "/echo?a=1 t 127.0.0.1"
    assert seen[1] == "disconnect 1000"


async def test_closing_the_server_ends_open_streams_and_waits_for_their_handlers():
    ended = asyncio.Event()

    async def hold(ws) -> None:
        await ws.accept()
        msg = await ws.receive()
        assert msg["type"] == "websocket.disconnect"
        ended.set()

    media = MediaServer({"/hold": hold})
    async with media.serving() as server:
        ws = await connect(f"ws://127.0.0.1:{bound_port(server)}/hold")
    assert ended.is_set()  # the handler finished before serving() returned
    assert await _close_code(ws) == 1001  # going away


def test_forwarded_for_is_believed_from_trusted_proxies_only():
    default = TrustedProxies("127.0.0.1")
    assert default.client(("127.0.0.1", 5), "203.0.113.9").host == "203.0.113.9"
    assert default.client(("127.0.0.1", 5), "198.51.100.1, 203.0.113.9").host == "203.0.113.9"
    assert default.client(("127.0.0.1", 5), None) == ("127.0.0.1", 5)
    assert default.client(("192.0.2.7", 5), "203.0.113.9") == ("192.0.2.7", 5)  # not a proxy of ours
    nets = TrustedProxies("10.0.0.0/8, 127.0.0.1")
    assert nets.client(("10.1.2.3", 5), "203.0.113.9, 10.9.9.9").host == "203.0.113.9"
    assert TrustedProxies("*").client(("192.0.2.7", 5), "203.0.113.9").host == "203.0.113.9"
    assert default.client(None, "203.0.113.9") is None


async def test_media_edge_without_a_port_serves_nothing():
    async with media_edge(object(), "127.0.0.1", None) as server:
        assert server is None
