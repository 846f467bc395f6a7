"""Server CPU per inbound media message on the media port, with no call session behind it.

N websocket clients (this process, pinned to core 1) each send a Twilio ``media`` message every
20 ms for D seconds to a server process pinned to core 0. The server reads each stream the way a
call's inbound strand does, through the media server (telephony/wsserver.py) and
``MediaStreamLink`` with the Twilio codec, and counts the messages; it reports its own process
CPU over the messages received after the first:

    python -m bench.media_inbound [--sockets 50] [--seconds 20] [--event-loop uvloop|asyncio]
                                  [--server media|bare] [--json PATH]

``--server bare``: the ``websockets`` library's own asyncio server and the Twilio codec, no link:
the floor that the library's framing gives. What one call-second costs here (50 messages) is the
share of the 4 ms per call-second target (issue 15) the inbound socket path takes before any
STT, VAD or turn work.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FRAME_S = 0.020


def _start_message(i: int) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": f"MZ{i}",
        "start": {"streamSid": f"MZ{i}", "callSid": f"CA{i}", "accountSid": "AC1", "tracks": ["inbound"],
                  "customParameters": {},
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    })  # fmt: skip


async def _serve(kind: str, sockets: int, port_file: Path) -> dict:
    from voxroute.telephony.twilio import TwilioStream

    count = {"messages": 0, "done": 0}
    first, all_done = asyncio.Event(), asyncio.Event()

    async def bare(ws) -> None:
        codec = TwilioStream()
        async for message in ws:
            codec.feed(message)
            count["messages"] += 1
            first.set()
        count["done"] += 1
        if count["done"] == sockets:
            all_done.set()

    from voxroute.telephony.wslink import MediaStreamLink  # imported before listening, not in a handshake

    async def linked(sock) -> None:
        await sock.accept()
        link = MediaStreamLink(sock, TwilioStream())
        await link.wait_start()
        async for _event in link.events():
            count["messages"] += 1
            first.set()
        count["done"] += 1
        if count["done"] == sockets:
            all_done.set()

    async def measure() -> dict:
        await first.wait()
        cpu0, seen0 = time.process_time(), count["messages"]
        await all_done.wait()
        cpu, seen = time.process_time() - cpu0, count["messages"] - seen0
        return {"messages": seen, "cpu_s": round(cpu, 3)}

    if kind == "bare":
        from websockets.asyncio.server import serve

        async with serve(bare, "127.0.0.1", 0, compression=None) as server:
            port_file.write_text(str(server.sockets[0].getsockname()[1]))  # noqa: ASYNC240  # once, at start
            return await measure()
    from voxroute.telephony.wsserver import MediaServer, bound_port

    async with MediaServer({"/twilio/stream": linked}).serving() as server:
        port_file.write_text(str(bound_port(server)))  # noqa: ASYNC240  # once, at start
        return await measure()


def server_main(kind: str, sockets: int, event_loop: str, port_file: Path, out: Path) -> None:
    os.sched_setaffinity(0, {0})
    if event_loop == "uvloop":
        import uvloop

        result = uvloop.run(_serve(kind, sockets, port_file))
    else:
        result = asyncio.run(_serve(kind, sockets, port_file))
    out.write_text(json.dumps(result))


async def _client(port: int, i: int, seconds: float) -> None:
    from websockets.asyncio.client import connect

    payload = base64.b64encode(bytes([0xFF]) * 160).decode()
    async with connect(f"ws://127.0.0.1:{port}/twilio/stream", compression=None) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(_start_message(i))
        await asyncio.sleep(i * FRAME_S / 13)  # spread the sockets over the 20 ms
        loop = asyncio.get_running_loop()
        t0, k = loop.time(), 0
        while k * FRAME_S < seconds:
            k += 1
            media = {"track": "inbound", "chunk": str(k), "timestamp": str(k * 20), "payload": payload}
            await ws.send(json.dumps({"event": "media", "sequenceNumber": str(k + 1), "streamSid": f"MZ{i}",
                                      "media": media}))  # fmt: skip
            await asyncio.sleep(max(0.0, t0 + k * FRAME_S - loop.time()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--server", choices=("media", "bare"), default="media")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--serve", nargs=2, metavar=("PORT_FILE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        server_main(args.server, args.sockets, args.event_loop, Path(args.serve[0]), Path(args.serve[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        port_file, out = Path(tmp) / "port", Path(tmp) / "out.json"
        port_file.write_text("")
        server = subprocess.Popen([
            sys.executable, "-m", "bench.media_inbound", "--server", args.server,
            "--sockets", str(args.sockets), "--event-loop", args.event_loop,
            "--serve", str(port_file), str(out),
        ])  # fmt: skip
        os.sched_setaffinity(0, {1})
        while not port_file.read_text():
            if server.poll() is not None:
                raise SystemExit("the server process exited")
            time.sleep(0.05)

        async def clients() -> None:
            port = int(port_file.read_text())
            await asyncio.gather(*(_client(port, i, args.seconds) for i in range(args.sockets)))

        asyncio.run(clients())
        server.wait(timeout=60)
        result = json.loads(out.read_text())
    us = result["cpu_s"] * 1e6 / max(result["messages"], 1)
    result |= {
        "server": args.server,
        "event_loop": args.event_loop,
        "sockets": args.sockets,
        "us_per_message": round(us, 1),
        "ms_per_call_second": round(us * 50 / 1000, 2),
        "load": os.getloadavg()[0],
    }
    print(
        f"{args.server} on {args.event_loop}, {args.sockets} sockets: {result['messages']} messages, "
        f"{result['us_per_message']} us of server CPU per message "
        f"({result['ms_per_call_second']} ms per call-second of 50), load {result['load']:.2f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
