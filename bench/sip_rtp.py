"""How many concurrent SIP calls one agent process paces at 50 RTP packets/s with jitter p99 < 20 ms.

Two processes on 127.0.0.1:

- the agent: ``SipServer`` (the runtime's SIP UA, ``voxroute.telephony.sip``) whose calls play a tone
  (in PCMU, as the TTS gives it) without pause, so every call sends 20 ms PCMU packets on its paced
  sender, and read the caller's audio through the jitter buffer;
- this load generator: places N calls with ``SipPhone`` (our UAC), sends each call's inbound RTP
  at 50 packets/s from a thread, and receives the agent's RTP on plain sockets in another
  thread with kernel receive timestamps (``SO_TIMESTAMPNS``), so its own load does not colour
  the figures.

Outbound jitter per packet is RFC 3550's D: (arrival gap) - (RTP timestamp gap), in ms, over
consecutive packets of a call. For each N: median and p99 of |D|, and loss. The answer is the
largest N with p99 < 20 ms.

    python -m bench.sip_rtp [--steps 50,100,200,300,400,500,600,800] [--seconds 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

LIMIT_MS = 20.0
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


# --------------------------------------------------------------------------- the agent process


async def agent_main(port: int) -> None:
    from voxroute.audio import pcm_to_wire
    from voxroute.telephony.sip.transport import SipServer, serving

    t = np.arange(8000) / 8000
    tone_pcm = (np.sin(2 * math.pi * 440 * t) * 6000).astype("<i2").tobytes()

    async def on_call(link) -> None:
        tone = pcm_to_wire(tone_pcm, link.audio_format)  # as the TTS would give it: the call's codec
        half_s = 500 * link.audio_format.bytes_per_ms

        async def feed() -> None:
            while not link.ended:
                if link.playout.queued_bytes < half_s:
                    await link.send_audio(tone)
                await asyncio.sleep(0.25)

        async def drain() -> None:
            async for _ in link.events():
                pass

        async with asyncio.TaskGroup() as tg:
            feeder = tg.create_task(feed())
            await drain()
            feeder.cancel()

    server = SipServer(on_call, bind=("127.0.0.1", port), allow_from=["127.0.0.1/32"])
    async with serving(server):
        print(f"READY {server.address[1]}", flush=True)  # type: ignore[index]
        await asyncio.Event().wait()


# --------------------------------------------------------------------------- the load generator


class Receiver(threading.Thread):
    """Reads agent RTP from N sockets with kernel timestamps; keeps |D| samples after ``since_ns``."""

    def __init__(self, socks: list[socket.socket]) -> None:
        super().__init__(daemon=True)
        self.socks = {s.fileno(): i for i, s in enumerate(socks)}
        self.by_fd = {s.fileno(): s for s in socks}
        self.last: list[tuple[int, int, int] | None] = [None] * len(socks)  # (seq, ts, arrival ns)
        self.samples: list[float] = []
        self.packets = [0] * len(socks)
        self.lost = 0
        self.since_ns = 1 << 62
        self.stop = False

    def run(self) -> None:
        poller = select.epoll()
        for fd in self.socks:
            poller.register(fd, select.EPOLLIN)
        anc = socket.CMSG_SPACE(16)
        while not self.stop:
            for fd, _ in poller.poll(0.1):
                sock, i = self.by_fd[fd], self.socks[fd]
                while True:
                    try:
                        data, ancdata, _, _ = sock.recvmsg(2048, anc)
                    except BlockingIOError:
                        break
                    arrival = None
                    for level, kind, cdata in ancdata:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", cdata[:16])
                            arrival = sec * 1_000_000_000 + nsec
                    if arrival is None or len(data) < 12:
                        continue
                    seq, ts = struct.unpack_from("!HI", data, 2)
                    self.packets[i] += 1
                    prev = self.last[i]
                    self.last[i] = (seq, ts, arrival)
                    if prev is None or arrival < self.since_ns:
                        continue
                    gap = (seq - prev[0]) & 0xFFFF
                    if gap != 1:
                        self.lost += max(0, gap - 1)
                        continue
                    d_ms = (arrival - prev[2]) / 1e6 - ((ts - prev[1]) & 0xFFFFFFFF) / 8.0
                    self.samples.append(abs(d_ms))
        poller.close()


def send_inbound(
    socks: list[socket.socket], dests: list[tuple[str, int] | None], stop: threading.Event
) -> None:
    """The callers' RTP: one PCMU packet per call every 20 ms, on an absolute schedule."""
    from voxroute.telephony.sip.rtp import RtpSender

    senders = [RtpSender(0) for _ in socks]
    payload = b"\xff" * 160
    t0 = time.monotonic()
    n = 0
    while not stop.is_set():
        n += 1
        for sock, dest, sender in zip(socks, dests, senders, strict=True):
            if dest is not None:
                try:
                    sock.sendto(sender.audio(payload), dest)
                except OSError:
                    pass
        delay = t0 + n * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)


async def step(target: str, n: int, seconds: float) -> dict:
    from voxroute.emulators.sip_carrier import SipPhone

    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        s.setblocking(False)
        socks.append(s)
    receiver = Receiver(socks)
    receiver.start()
    stop = threading.Event()
    dests: list[tuple[str, int] | None] = [None] * n
    sender = threading.Thread(target=send_inbound, args=(socks, dests, stop), daemon=True)
    sender.start()
    async with SipPhone.running() as phone:
        calls = []
        for i, s in enumerate(socks):
            calls.append(await phone.call(target, offer_port=s.getsockname()[1], codecs=[(0, "PCMU")]))
            if i % 20 == 19:
                await asyncio.sleep(0.05)  # do not burst hundreds of INVITEs at once
        async with asyncio.timeout(20):
            answered = [await c.answered for c in calls]
        for i, c in enumerate(calls):
            if c.remote_rtp is not None:
                dests[i] = c.remote_rtp  # symmetric RTP: the agent now sends to our measuring socket
        await asyncio.sleep(1.0)  # warm-up: latching, first packets
        receiver.since_ns = time.clock_gettime_ns(time.CLOCK_REALTIME)
        await asyncio.sleep(seconds)
        receiver.stop = True
        stop.set()
        for i, c in enumerate(calls):
            c.hangup()
            if i % 20 == 19:
                await asyncio.sleep(0.02)
    receiver.join(2)
    sender.join(2)
    for s in socks:
        s.close()
    d = np.array(receiver.samples) if receiver.samples else np.array([float("nan")])
    expected = n * seconds * 50
    return {
        "calls": n,
        "answered": sum(answered),
        "packets": len(receiver.samples),
        "expected_packets": int(expected),
        "lost": receiver.lost,
        "jitter_ms_p50": round(float(np.median(d)), 3),
        "jitter_ms_p99": round(float(np.percentile(d, 99)), 3),
        "jitter_ms_max": round(float(d.max()), 3),
    }


async def run(target: str, steps: list[int], seconds: float) -> dict:
    results = []
    best = 0
    for n in steps:
        r = await step(target, n, seconds)
        ok = r["answered"] == n and r["jitter_ms_p99"] < LIMIT_MS
        r["ok"] = ok
        results.append(r)
        print(
            f"N={n:4d}  answered {r['answered']:4d}  packets {r['packets']:6d}/{r['expected_packets']:6d}  "
            f"lost {r['lost']:5d}  jitter p50 {r['jitter_ms_p50']:6.2f} ms  p99 {r['jitter_ms_p99']:6.2f} ms  "
            f"max {r['jitter_ms_max']:7.2f} ms  {'ok' if ok else 'OVER'}",
            flush=True,
        )
        if not ok:
            break
        best = n
        await asyncio.sleep(0.5)
    return {"limit_ms": LIMIT_MS, "seconds_per_step": seconds, "largest_ok": best, "steps": results}


def start_agent() -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    agent = subprocess.Popen(
        [sys.executable, "-m", "bench.sip_rtp", "--agent"], stdout=subprocess.PIPE, text=True, env=env
    )
    assert agent.stdout is not None
    line = agent.stdout.readline()
    if not line.startswith("READY"):
        agent.kill()
        raise RuntimeError(f"agent did not start: {line!r}")
    return agent, f"sip:agent@127.0.0.1:{line.split()[1]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--steps", default="50,100,200,300,400,500,600,800")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per step")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.agent:
        asyncio.run(agent_main(args.port))
        return
    agent, target = start_agent()
    try:
        result = asyncio.run(run(target, [int(s) for s in args.steps.split(",")], args.seconds))
    finally:
        agent.terminate()
        agent.wait(5)
    print(f"largest N with outbound RTP jitter p99 < {LIMIT_MS:g} ms: {result['largest_ok']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
