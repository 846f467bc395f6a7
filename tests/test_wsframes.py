"""The media port's RFC 6455 server (telephony/wsframes.py, telephony/wsserver.py), rule by rule.

Each rule is checked on the sans-I/O codec and against real peers on 127.0.0.1: the ``websockets``
client library (an independent implementation) for what a well-behaved client does, and a raw
socket for the malformed bytes a library would never send. The codec is fuzzed in
tests/test_fuzz.py (targets ``websocket_upgrade`` and ``websocket_frames``).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.fuzzing import WS_UPGRADE, _ws_frame
from voxroute.telephony import wsframes, wsserver
from voxroute.telephony.wsframes import Close, FrameParser, HandshakeError, Ping, Pong, WsError
from voxroute.telephony.wsserver import MediaServer, bound_port

STEP = 5.0

# ---------------------------------------------------------------- the codec alone


def test_accept_key_is_the_rfc_example():
    request, used = wsframes.parse_request(WS_UPGRADE + b"\x81")
    assert used == len(WS_UPGRADE)
    assert request.path == "/twilio/stream?x=1"
    assert request.header("host") == "voice.example.com"
    assert wsframes.accept_key(request.key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3


def test_upgrade_request_incomplete_then_refusals():
    assert wsframes.parse_request(WS_UPGRADE[:-1]) is None
    cases = {
        b"POST /a HTTP/1.1\r\n": 405,
        b"GET /a HTTP/1.0\r\n": 400,
        b"GET a HTTP/1.1\r\n": 400,
    }
    rest = WS_UPGRADE.partition(b"\r\n")[2]
    for line, status in cases.items():
        with pytest.raises(HandshakeError) as info:
            wsframes.parse_request(line + rest)
        assert info.value.status == status, line
    for old, new, status in (
        (b"Upgrade: websocket", b"Upgrade: h2c", 426),
        (b"Connection: Upgrade", b"Connection: keep-alive", 426),
        (b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8", 426),
        (b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZQ==", 400),  # 11 bytes, not 16
        (b"Host: voice", b"Host voice", 400),
    ):
        with pytest.raises(HandshakeError) as info:
            wsframes.parse_request(WS_UPGRADE.replace(old, new))
        assert info.value.status == status, new
    with pytest.raises(HandshakeError) as info:
        wsframes.parse_request(b"GET / HTTP/1.1\r\n" + b"X-Pad: aaaaaaaa\r\n" * 2000)  # no end, over 16 KiB
    assert info.value.status == 431
    with pytest.raises(HandshakeError) as info:
        wsframes.parse_request(WS_UPGRADE.replace(b"\r\n\r\n", b"\r\n" + b"X-A: b\r\n" * 200 + b"\r\n"))
    assert info.value.status == 431


def test_lengths_of_7_16_and_64_bits_and_any_cut_of_the_bytes():
    messages = [bytes([i % 251]) * n for i, n in enumerate((0, 125, 126, 65535, 65536, 70000))]
    wire = b"".join(_ws_frame(2, m) for m in messages)
    for step in (1, 7, 1000, len(wire)):
        parser = FrameParser()
        got = [e for i in range(0, len(wire), step) for e in parser.feed(wire[i : i + step])]
        assert got == messages, step


def test_fragments_join_with_control_frames_between_and_text_is_utf8_across_fragments():
    text = "é€😀 namaste"
    raw = text.encode()
    parser = FrameParser()
    wire = _ws_frame(1, raw[:1], fin=False) + _ws_frame(9, b"p") + _ws_frame(0, raw[1:6], fin=False)
    wire += _ws_frame(10, b"q") + _ws_frame(0, raw[6:])
    assert parser.feed(wire) == [Ping(b"p"), Pong(b"q"), text]


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"\x81\x02ab", 1002),  # not masked
        (bytes((0xC1, 0x80)) + b"\0\0\0\0", 1002),  # RSV1 without an extension
        (_ws_frame(3, b""), 1002),  # reserved opcode
        (_ws_frame(0, b"x"), 1002),  # continuation with no message open
        (_ws_frame(1, b"a", fin=False) + _ws_frame(2, b"b"), 1002),  # new message inside one
        (_ws_frame(9, b"x" * 126), 1002),  # control frame over 125 bytes
        (_ws_frame(9, b"x", fin=False), 1002),  # fragmented control frame
        (bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63), 1002),  # 64-bit length, top bit set
        (_ws_frame(8, b"\x03"), 1002),  # close body of one byte
        (_ws_frame(8, struct.pack("!H", 1005)), 1002),  # a code never sent on the wire
        (_ws_frame(8, struct.pack("!H", 999)), 1002),
        (_ws_frame(8, struct.pack("!H", 1000) + b"\xff"), 1007),  # reason not UTF-8
        (_ws_frame(1, b"\xc3\x28"), 1007),  # text not UTF-8
        (bytes((0x82, 0xFF)) + struct.pack("!Q", (1 << 20) + 1), 1009),  # refused before the payload
        (_ws_frame(2, bytes(1 << 19), fin=False) + _ws_frame(0, bytes((1 << 19) + 1)), 1009),
    ],
)
def test_protocol_errors_name_their_close_code(wire, code):
    parser = FrameParser(max_size=1 << 20)
    assert parser.feed(_ws_frame(1, b"before") + wire) == ["before"]  # what came first still counts
    assert isinstance(parser.error, WsError)
    assert parser.error.code == code
    assert parser.feed(_ws_frame(1, b"after")) == []  # a failed parser reads nothing more


def test_close_frames_and_nothing_after_them():
    parser = FrameParser()
    wire = _ws_frame(8, struct.pack("!H", 4001) + b"fin") + _ws_frame(1, b"late")
    assert parser.feed(wire) == [Close(4001, "fin")]
    assert FrameParser().feed(_ws_frame(8, b"")) == [Close(1005, "")]


def test_server_frames_are_unmasked_with_the_shortest_length():
    for n, head in (
        (5, b"\x81\x05"),
        (126, b"\x81\x7e\x00\x7e"),
        (65536, b"\x81\x7f" + struct.pack("!Q", 65536)),
    ):
        out = wsframes.frame(1, b"a" * n)
        assert out == head + b"a" * n
    assert wsframes.close_frame(1000, "bye") == b"\x88\x05\x03\xe8bye"
    assert wsframes.close_frame(1005) == b"\x88\x00"


def test_the_pure_python_unmask_matches_the_c_one():
    from websockets.speedups import apply_mask as c_mask  # type: ignore[import-not-found]

    mask = b"\x01\x80\xfe\x37"
    for n in (0, 1, 3, 4, 5, 160, 1001):
        data = (bytes(range(256)) * 4)[:n]
        assert wsframes.xor_mask(data, mask) == c_mask(data, mask)
    assert wsframes.xor_mask(b"\x00\x00\x00\x00\x00", mask) == mask + mask[:1]


# ---------------------------------------------------------------- against real peers


async def _echo(ws) -> None:
    """Echo text; report a binary message as its length; on a close, its code."""
    await ws.accept()
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            ws.seen.append(msg["code"])
            return
        text = msg.get("text")
        await ws.send_text(text if text is not None else f"binary {len(msg['bytes'])}")


def _server(**routes):
    seen: list = []

    def wrap(handler):
        async def endpoint(ws):
            ws.seen = seen
            await handler(ws)

        return endpoint

    return MediaServer({f"/{k}": wrap(v) for k, v in routes.items()}, open_timeout_s=2), seen


async def test_a_websockets_client_sizes_fragments_ping_and_close_code():
    media, seen = _server(echo=_echo)
    async with media.serving() as server, asyncio.timeout(STEP):
        async with connect(f"ws://127.0.0.1:{bound_port(server)}/echo", max_size=None) as ws:
            for n in (0, 125, 126, 65535, 65536):
                await ws.send("x" * n)
                assert await ws.recv() == "x" * n
            await ws.send(bytes(70000))
            assert await ws.recv() == "binary 70000"
            await ws.send(["é€", "😀", " ok"])  # one message in three fragments
            assert await ws.recv() == "é€😀 ok"
            await (await ws.ping(b"alive"))  # the pong came back
            await ws.close(4001, "done")
    assert seen == [4001]


async def test_a_message_over_1_mib_closes_with_1009():
    media, seen = _server(echo=_echo)
    async with media.serving() as server, asyncio.timeout(STEP):
        async with connect(f"ws://127.0.0.1:{bound_port(server)}/echo", max_size=None) as ws:
            await ws.send("y" * (1 << 20))
            assert len(await ws.recv()) == 1 << 20
            await ws.send(bytes((1 << 20) + 1))
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1009
    assert seen == [1006]  # the peer sent no close frame of its own: abnormal, as Starlette says


async def _raw(port: int, data: bytes, *, handshake: bool = True) -> bytes:
    """Send ``data`` (after a valid upgrade and one echoed message when ``handshake``) and read
    until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if handshake:
            writer.write(WS_UPGRADE.replace(b"/twilio/stream?x=1", b"/echo"))
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
            assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
            writer.write(_ws_frame(1, b"first"))
            assert await reader.readexactly(7) == b"\x81\x05first"
        writer.write(data)
        return await reader.read()  # to EOF: the server closed the connection
    finally:
        writer.close()


MALFORMED = [
    (b"\x81\x05hello", 1002),  # an unmasked client frame
    (_ws_frame(1, b"\xff\xfe"), 1007),
    (_ws_frame(8, struct.pack("!H", 1004)), 1002),
    (bytes((0x81, 0xFF)) + struct.pack("!Q", 1 << 40), 1009),  # refused before any payload
    (_ws_frame(0xB, b""), 1002),
]


@pytest.mark.parametrize(("wire", "code"), MALFORMED)
async def test_malformed_frames_from_a_raw_socket_close_with_their_code(wire, code):
    media, seen = _server(echo=_echo)
    async with media.serving() as server, asyncio.timeout(STEP):
        out = await _raw(bound_port(server), wire)
    assert out[0] == 0x88 and struct.unpack("!H", out[2:4])[0] == code  # our close frame, then EOF
    assert seen == [1006]


async def test_ping_pong_and_a_clean_close_from_a_raw_socket():
    media, seen = _server(echo=_echo)
    async with media.serving() as server, asyncio.timeout(STEP):
        out = await _raw(bound_port(server), _ws_frame(9, b"hb") + _ws_frame(8, struct.pack("!H", 1000)))
    assert out == b"\x8a\x02hb" + b"\x88\x02\x03\xe8"  # the pong, then our close echoing 1000
    assert seen == [1000]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 426),  # a plain GET, no upgrade
        (WS_UPGRADE.replace(b"/twilio/stream?x=1", b"/echo").replace(b"13", b"12"), 426),
        (WS_UPGRADE.replace(b"GET", b"PUT"), 405),
        (b"GET /echo HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20000, 431),
        (WS_UPGRADE, 404),  # no such route here
    ],
)
async def test_bad_upgrade_requests_get_an_http_answer(request_bytes, status):
    media, seen = _server(echo=_echo)
    async with media.serving() as server, asyncio.timeout(STEP):
        out = await _raw(bound_port(server), request_bytes, handshake=False)
    assert out.startswith(f"HTTP/1.1 {status} ".encode()), out[:80]
    assert b"\r\nConnection: close\r\n" in out
    assert seen == []


async def test_a_connection_that_never_finishes_its_request_is_dropped_after_the_open_timeout():
    media, _seen = _server(echo=_echo)
    async with media.serving() as server, asyncio.timeout(STEP):
        out = await _raw(bound_port(server), b"GET /echo HTTP/1.1\r\n", handshake=False)
    assert out == b""  # dropped (open_timeout_s=2), nothing answered


async def test_a_flood_the_handler_does_not_read_stops_the_socket_reads_not_memory():
    release = asyncio.Event()
    sockets: list = []

    async def slow(ws) -> None:
        sockets.append(ws)
        await ws.accept()
        await release.wait()
        got = []
        while (msg := await ws.receive())["type"] != "websocket.disconnect":
            got.append(int(msg["text"][:6]))
        ws.seen.append(got == list(range(3000)))

    media, seen = _server(slow=slow)
    async with media.serving() as server, asyncio.timeout(STEP * 2):
        async with connect(f"ws://127.0.0.1:{bound_port(server)}/slow") as ws:

            async def flood() -> None:
                for i in range(3000):
                    await ws.send(f"{i:06d}" + "f" * 1000)

            sending = asyncio.create_task(flood())
            while not sockets or not sockets[0]._conn.reading_paused:  # noqa: ASYNC110  # a transport state
                await asyncio.sleep(0.01)
            # a socket read's worth of frames at most past the mark, not the whole flood
            assert wsserver.QUEUE_HIGH <= len(sockets[0]._conn.inbox) < 1000
            release.set()
            await sending
    assert seen == [True]  # every message, in order, once the handler read again


async def _talker_behind(server, sockets: list) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A peer of ``/talker`` with a small receive buffer that does not read: once the talker's
    writes have filled it (its transport paused writing), the peer's reader and writer."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", bound_port(server)))
    reader, writer = await asyncio.open_connection(sock=raw)
    writer.write(WS_UPGRADE.replace(b"/twilio/stream?x=1", b"/talker"))
    await reader.readuntil(b"\r\n\r\n")
    while not sockets or not sockets[0]._conn.write_paused:  # noqa: ASYNC110  # a transport state
        await asyncio.sleep(0.01)
    return reader, writer


async def test_a_peer_that_does_not_read_makes_sends_wait_not_the_buffer_grow():
    sent: list[int] = []
    sockets: list = []

    async def talker(ws) -> None:
        sockets.append(ws)
        await ws.accept()
        for i in range(400):
            await ws.send_text("z" * 65536)
            sent.append(i)

    media, _seen = _server(talker=talker)
    async with media.serving() as server, asyncio.timeout(STEP * 2):
        reader, writer = await _talker_behind(server, sockets)
        transport = sockets[0]._conn.transport
        assert len(sent) < 400
        assert transport.get_write_buffer_size() < 2 * 65536 + 1024  # the high-water mark and one frame
        received = 0
        while received < 400 * (65536 + 10):  # now read: every send completes (10-byte headers)
            received += len(await reader.read(1 << 20))
        writer.close()
    assert len(sent) == 400


async def test_bad_upgrade_bytes_do_not_disturb_an_open_stream():
    media, _seen = _server(echo=_echo)
    async with media.serving() as server, asyncio.timeout(STEP):
        port = bound_port(server)
        async with connect(f"ws://127.0.0.1:{port}/echo") as ws:
            junk = (b"\x00" * 100, b"GET / HTTP/1.1\r\n" * 2000, base64.b64encode(bytes(999)))
            for out in await asyncio.gather(*(_raw(port, j, handshake=False) for j in junk)):
                assert out == b"" or out.startswith(b"HTTP/1.1 431 "), out[:40]
            await ws.send("still here")
            assert await ws.recv() == "still here"


def test_the_peer_rules_hold_on_uvloop():
    """``voxroute serve`` runs on uvloop by default: its transports pause, resume and half-close
    by their own code, so the real-peer cases run on it too."""
    import uvloop

    async def cases() -> None:
        await test_a_websockets_client_sizes_fragments_ping_and_close_code()
        await test_a_message_over_1_mib_closes_with_1009()
        await test_ping_pong_and_a_clean_close_from_a_raw_socket()
        for wire, code in MALFORMED:
            await test_malformed_frames_from_a_raw_socket_close_with_their_code(wire, code)
        await test_bad_upgrade_requests_get_an_http_answer(WS_UPGRADE, 404)
        await test_a_flood_the_handler_does_not_read_stops_the_socket_reads_not_memory()
        await test_a_peer_that_does_not_read_makes_sends_wait_not_the_buffer_grow()

    uvloop.run(cases())


async def test_the_link_writes_straight_through_and_waits_only_for_a_peer_that_is_behind():
    from voxroute.telephony.wslink import WebSocketLink

    done: list[int] = []
    sockets: list = []

    async def talker(ws) -> None:
        sockets.append(ws)
        await ws.accept()
        link = WebSocketLink(ws, "test")
        for i in range(200):
            await link._send(["a" * 30000, "b" * 35536])  # one call's texts, as a codec gives them
            done.append(i)
        await link.close()

    media, _seen = _server(talker=talker)
    async with media.serving() as server, asyncio.timeout(STEP * 2):
        reader, writer = await _talker_behind(server, sockets)
        assert len(done) < 200
        assert sockets[0]._conn.transport.get_write_buffer_size() < 3 * 65536  # the mark and one call's texts
        data = b""
        while not data.endswith(b"\x88\x02\x03\xe8"):  # every text, then the link's close frame
            data += await reader.read(1 << 20)
        writer.close()
    assert len(done) == 200
    assert data.count(b"a" * 30000) == 200 and data.count(b"b" * 35536) == 200
