"""The speech providers' lean websocket client (agent/providers/wsclient.py) against real peers on
127.0.0.1: the ``websockets`` library's asyncio server (an independent implementation) for what a
well-behaved server does, and raw sockets for what a library would never send (no pong, bytes that
are not UTF-8, a server that never closes). tests/test_sarvam_clients.py runs the Sarvam clients on
it against the Sarvam emulator."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus
from websockets.http11 import Response
from websockets.protocol import State

from voxroute.agent.providers.wsclient import LeanClientConnection, connect

STEP = 5.0  # a bound on each wait: a hang fails the test instead of stalling the suite


def _options(**kw) -> dict:
    return {"open_timeout": STEP, "ping_interval": None, "ping_timeout": None, "close_timeout": STEP} | kw


async def _connect(url: str, **kw) -> LeanClientConnection:
    client = await connect(
        url, additional_headers={"api-subscription-key": "k"}, max_size=1 << 20, **_options(**kw)
    )
    assert isinstance(client, LeanClientConnection)  # no proxy in the environment: the lean client
    return client


async def test_messages_both_ways_headers_fragments_and_a_clean_close():
    seen: dict = {}

    async def handler(ws: ServerConnection) -> None:
        seen["key"] = ws.request.headers.get("api-subscription-key") if ws.request else None
        seen["ua"] = ws.request.headers.get("User-Agent") if ws.request else None
        async for message in ws:
            if message == "fragments":
                await ws.send(["héllo ", "wörld"])  # one text message in three frames
                await ws.send([b"\x00\x01", b"\x02"])
            else:
                await ws.send(message)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = await _connect(f"ws://127.0.0.1:{port}/x?y=1")
        async with asyncio.timeout(STEP):
            await client.send("ünïcode")
            assert await client.recv() == "ünïcode"
            await client.send("x" * 200_000)  # a 64-bit length, masked
            assert await client.recv() == "x" * 200_000
            await client.send("fragments")
            assert await client.recv() == "héllo wörld"
            assert await client.recv() == b"\x00\x01\x02"
            await client.close()
    assert seen["key"] == "k" and seen["ua"] and "websockets" in seen["ua"]
    assert client.state is State.CLOSED
    with pytest.raises(ConnectionClosedOK):
        await client.send("late")
    with pytest.raises(ConnectionClosedOK):
        await client.recv()


async def test_every_length_encoding_and_a_fresh_mask_per_frame():
    masks: list[bytes] = []

    async def echo_lengths(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            b0, mask, plain = await _read_masked(reader)
            masks.append(mask)
            if b0 & 0x0F == 0x8:
                writer.close()
                return
            length = len(plain)
            reply = str(length).encode() if plain == b"z" * length and b0 == 0x81 else b"garbled"
            writer.write(bytes((0x81, len(reply))) + reply)

    sizes = [0, 1, 125, 126, 65535, 65536, 70000]
    server = await _raw_server(echo_lengths)
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = await _connect(f"ws://127.0.0.1:{port}/")
        async with asyncio.timeout(STEP):
            for size in sizes:
                await client.send("z" * size)
                assert await client.recv() == str(size)
            await client.close()
    assert len(set(masks)) == len(masks) == len(sizes) + 1  # the close frame's too


async def test_a_refused_handshake_raises_invalid_status_with_the_body():
    def refuse(conn: ServerConnection, request) -> Response:
        return Response(429, "Too Many Requests", Headers({"Retry-After": "7"}), b'{"error":"slow down"}')

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(InvalidStatus) as info:
            await _connect(f"ws://127.0.0.1:{port}/")
    assert info.value.response.status_code == 429
    assert info.value.response.headers["Retry-After"] == "7"
    assert info.value.response.body == b'{"error":"slow down"}'


async def test_the_server_closing_ends_recv_with_its_code_after_the_messages_before_it():
    async def handler(ws: ServerConnection) -> None:
        await ws.send("last words")
        await ws.close(4001, "bye")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = await _connect(f"ws://127.0.0.1:{port}/")
        async with asyncio.timeout(STEP):
            assert await client.recv() == "last words"
            with pytest.raises(ConnectionClosed) as info:
                await client.recv()
    assert info.value.rcvd is not None and (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye")


async def test_the_server_pings_are_answered():
    pongs: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        for _ in range(3):
            pongs.append(await (await ws.ping()))
        await ws.send("done")

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        client = await _connect(f"ws://127.0.0.1:{port}/")
        async with asyncio.timeout(STEP):
            assert await client.recv() == "done"
            await client.close()
    assert len(pongs) == 3


async def _raw_server(on_open):
    """A server that answers the opening handshake by hand, then runs ``on_open(reader, writer)``."""

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept_key = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key + b"\r\n\r\n"
        )
        await on_open(reader, writer)

    return await asyncio.start_server(accept, "127.0.0.1", 0)


async def _read_masked(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """One client frame, which must be masked: (its first byte, its mask, the unmasked payload)."""
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "a client frame must be masked"
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4)
    data = await reader.readexactly(length)
    return b0, mask, bytes(c ^ mask[i % 4] for i, c in enumerate(data))


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One masked client frame: (opcode, unmasked payload)."""
    b0, _, payload = await _read_masked(reader)
    return b0 & 0x0F, payload


async def test_a_server_that_never_answers_pings_is_failed_with_1011():
    frames: list[tuple[int, bytes]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frames.append(await _read_frame(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await _raw_server(silent)
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = await _connect(
            f"ws://127.0.0.1:{port}/", ping_interval=0.02, ping_timeout=0.02, close_timeout=0.05
        )
        async with asyncio.timeout(STEP):
            with pytest.raises(ConnectionClosed) as info:
                await client.recv()
    assert info.value.sent is not None and info.value.sent.code == 1011
    assert frames[0][0] == 0x9  # the keepalive ping
    assert (frames[-1][0], frames[-1][1][:2]) == (0x8, struct.pack("!H", 1011))


async def test_text_that_is_not_utf8_fails_the_connection_with_1007_and_a_stuck_close_is_aborted():
    got: list[tuple[int, bytes]] = []

    async def bad_text(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x81\x02\xc3\x28")  # a text frame holding an invalid UTF-8 sequence
        got.append(await _read_frame(reader))
        await reader.read()  # and never close: the client's close timeout must end it

    server = await _raw_server(bad_text)
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = await _connect(f"ws://127.0.0.1:{port}/", close_timeout=0.05)
        async with asyncio.timeout(STEP):
            with pytest.raises(ConnectionClosed):
                await client.recv()
    assert got[0][0] == 0x8 and got[0][1][:2] == struct.pack("!H", 1007)
    assert client.state is State.CLOSED


async def test_a_server_that_does_not_read_makes_send_wait_until_it_does():
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        while True:
            opcode, _ = await _read_frame(reader)
            if opcode == 0x8:
                writer.close()
                return

    server = await _raw_server(slow)
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = await _connect(f"ws://127.0.0.1:{port}/")
        chunk = "y" * 65536
        sent = 0
        sender = asyncio.create_task(_send_forever(client, chunk))
        async with asyncio.timeout(STEP):
            while not client._drain_waiters:  # noqa: ASYNC110 (the transport paused writing: send waits)
                await asyncio.sleep(0.01)
        assert not sender.done()
        release.set()
        async with asyncio.timeout(STEP):
            sent = await sender
            await client.close()
    assert sent == 64


async def _send_forever(client: LeanClientConnection, chunk: str) -> int:
    sent = 0
    for _ in range(64):
        await client.send(chunk)
        sent += 1
    return sent


def test_the_cases_hold_on_uvloop():
    """``voxroute serve`` runs on uvloop by default: its transports pause, resume and abort by
    their own code, so the cases run on it too."""
    import uvloop

    async def cases() -> None:
        await test_messages_both_ways_headers_fragments_and_a_clean_close()
        await test_every_length_encoding_and_a_fresh_mask_per_frame()
        await test_a_refused_handshake_raises_invalid_status_with_the_body()
        await test_the_server_closing_ends_recv_with_its_code_after_the_messages_before_it()
        await test_a_server_that_never_answers_pings_is_failed_with_1011()
        await test_text_that_is_not_utf8_fails_the_connection_with_1007_and_a_stuck_close_is_aborted()
        await test_a_server_that_does_not_read_makes_send_wait_until_it_does()

    uvloop.run(cases())
