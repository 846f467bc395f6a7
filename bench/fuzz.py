"""Fuzz every codec and parser with many inputs (default 1,000,000 per target) and report.

    python -m bench.fuzz [--inputs N] [--seed S] [--json PATH] [--targets NAME ...] [--no-probes]
                         [--slice K] [--deadline HH:MM]

The targets, seeds and mutator are those of ``tests/test_fuzz.py`` (``tests/fuzzing.py``), which
runs 10,000 per target in CI. Per target it prints the inputs run, the distinct outcomes (clean
parses and each kind of documented error, numbers and quoted values blanked), the inputs that
raised an undocumented exception (bugs, with the first ones as hex to replay), inputs per
second, and the slowest single input (the 8 slowest are timed again, best of 3, since on a
shared machine one slow run may be the scheduler's doing). Targets take turns, ``--slice`` inputs at a time, so a run
stopped by ``--deadline`` (UTC) or by a signal has given every target the same share; the JSON
is rewritten after every round.

A slow input is only a hint of super-linear work; the scaling probes measure it: each builds
a pathological input of n and 4n units (lines ended by a bare CR, thousands of headers,
folded lines, quoted commas, tiny frames, deep JSON) and times the parser on both. Linear
code takes about 4x as long on the bigger one; quadratic code about 16x.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable

from tests.fuzzing import BY_NAME, TARGETS, Fuzzer, Result
from voxroute.agent.providers import openai_protocol as oai
from voxroute.telephony import audiosocket, twilio, wsframes
from voxroute.telephony.sip import auth, sdp
from voxroute.telephony.sip import message as sipmsg


def _probe_sip_headers(n: int) -> Callable[[], object]:
    data = b"OPTIONS sip:a@h SIP/2.0\r\n" + b"X-A: b\r\n" * 190 + b"Via: " + b"a," * n + b"\r\n\r\n"
    return lambda: sipmsg.parse(data).get_all("Via")


def _probe_sip_blank_lines(n: int) -> Callable[[], object]:
    data = b" \n" * n + b"OPTIONS sip:a@h SIP/2.0\n\n"
    return lambda: sipmsg.parse(data)


def _probe_sip_folded(n: int) -> Callable[[], object]:
    data = b"OPTIONS sip:a@h SIP/2.0\r\nSubject: a\r\n" + b" b\r\n" * n + b"\r\n"
    return lambda: sipmsg.parse(data)


def _probe_sip_stream_bytewise(n: int) -> Callable[[], object]:
    data = b"OPTIONS sip:a@h SIP/2.0\r\n" + b"X: " + b"a" * n + b"\r\n"

    def run() -> None:
        parser = sipmsg.StreamParser(max_bytes=1 << 30)
        for i in range(0, len(data), 64):
            parser.feed(data[i : i + 64])

    return run


def _probe_sip_stream_body_trickle(n: int) -> Callable[[], object]:
    head = b"OPTIONS sip:a@h SIP/2.0\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n"
    data = head + b"Content-Length: " + str(n).encode() + b"\r\n\r\n" + b"b" * n

    def run() -> None:
        parser = sipmsg.StreamParser(max_bytes=1 << 30)
        parser.feed(data[: len(data) - n])
        for i in range(len(data) - n, len(data)):
            parser.feed(data[i : i + 1])

    return run


def _probe_split_list(n: int) -> Callable[[], object]:
    value = '"a\\",' * n
    return lambda: sipmsg.split_list(value)


def _probe_auth_params(n: int) -> Callable[[], object]:
    value = "Digest " + 'a="x",' * n + 'realm="r", nonce="n"'
    return lambda: auth.parse_challenge(value)


def _probe_sdp_lines(n: int) -> Callable[[], object]:
    data = b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n" + b"a=rtpmap:0 PCMU/8000\r\n" * n
    return lambda: sdp.parse(data)


def _probe_sse_bare_cr(n: int) -> Callable[[], object]:
    data = b": k\r" * n + b"\n"
    return lambda: oai.SSEParser(max_line_bytes=1 << 30).feed(data)


def _probe_sse_long_line_in_reads(n: int) -> Callable[[], object]:
    data = b"data: " + b"x" * n

    def run() -> None:
        parser = oai.SSEParser(max_line_bytes=1 << 30)
        for i in range(0, len(data), 1024):
            parser.feed(data[i : i + 1024])

    return run


def _probe_audiosocket_tiny_frames(n: int) -> Callable[[], object]:
    import uuid

    data = audiosocket.uuid_frame(uuid.UUID(int=1)) + audiosocket.dtmf_frame("5") * n
    return lambda: audiosocket.AudioSocketParser().feed(data)


def _probe_websocket_tiny_frames(n: int) -> Callable[[], object]:
    from tests.fuzzing import _ws_frame

    data = _ws_frame(2, b"") * n
    return lambda: wsframes.FrameParser().feed(data)


def _probe_websocket_trickle(n: int) -> Callable[[], object]:
    from tests.fuzzing import _ws_frame

    data = _ws_frame(2, bytes(n))

    def run() -> None:
        parser = wsframes.FrameParser(max_size=1 << 30)
        for i in range(0, len(data), 16):
            parser.feed(data[i : i + 16])

    return run


def _probe_json_wide(n: int) -> Callable[[], object]:
    start = twilio.TwilioPeer("MZ1", "CA1").start()
    params = ",".join(f'"k{i}":"v"' for i in range(n))
    data = start.replace('"customParameters":{}', '"customParameters":{' + params + "}")
    return lambda: twilio.TwilioStream(max_message_bytes=1 << 30).feed(data)


PROBES: dict[str, tuple[Callable[[int], Callable[[], object]], int]] = {
    "sip: 1 list header of n values": (_probe_sip_headers, 4000),
    "sip: n folded lines": (_probe_sip_folded, 4000),
    "sip: n blank lines before the request line": (_probe_sip_blank_lines, 4000),
    "sip tcp: an n-byte header in 64-byte reads": (_probe_sip_stream_bytewise, 16000),
    "sip tcp: a 20 kB head, then n body bytes one by one": (_probe_sip_stream_body_trickle, 2000),
    "sip: split_list over n quoted commas": (_probe_split_list, 16000),
    "sip auth: n digest params": (_probe_auth_params, 4000),
    "sdp: n attribute lines": (_probe_sdp_lines, 4000),
    "sse: n lines ended by a bare CR": (_probe_sse_bare_cr, 20000),
    "sse: an n-byte line in 1 kB reads": (_probe_sse_long_line_in_reads, 200_000),
    "audiosocket: n 4-byte frames": (_probe_audiosocket_tiny_frames, 20000),
    "twilio: start with n custom parameters": (_probe_json_wide, 16000),
    "websocket: n empty frames in one read": (_probe_websocket_tiny_frames, 20000),
    "websocket: an n-byte frame in 16-byte reads": (_probe_websocket_trickle, 200_000),
}


def _time(run: Callable[[], object], repeat: int = 7) -> float:
    """The fastest of ``repeat`` runs: other processes on a shared machine only ever add time."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_probes() -> list[dict]:
    out = []
    gc.disable()  # the collector's own passes grow with live objects; time the parsers only
    try:
        for name, (build, n) in PROBES.items():
            small, big = _time(build(n)), _time(build(4 * n))
            out.append({"probe": name, "n": n, "ms_n": small * 1e3, "ms_4n": big * 1e3, "ratio": big / small})
            print(
                f"  {name:44} n={n:>7}  {small * 1e3:8.2f} ms  4n: {big * 1e3:8.2f} ms  x{big / small:5.1f}"
            )
    finally:
        gc.enable()
    return out


def _row(res: Result) -> dict:
    return {
        "target": res.target,
        "inputs": res.inputs,
        "distinct_outcomes": len(res.outcomes),
        "clean_parses": res.outcomes.get("ok", 0),
        "bug_inputs": sum(res.bug_kinds.values()),
        "bug_kinds": res.bug_kinds,
        "bugs": [{"error": b.error, "input_hex": b.data.hex()} for b in res.bugs[:5]],
        "seconds": res.seconds,
        "inputs_per_s": res.inputs / res.seconds if res.seconds else 0.0,
        "slowest_ms": res.slowest_s * 1e3,
        "slowest_input_bytes": len(res.slowest_input),
        "slowest_input_hex": res.slowest_input.hex(),
        "top_outcomes": dict(sorted(res.outcomes.items(), key=lambda kv: -kv[1])[:8]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here (rewritten after every target)")
    ap.add_argument("--targets", nargs="*", choices=sorted(BY_NAME), help="default: all")
    ap.add_argument("--no-probes", action="store_true", help="skip the scaling probes")
    ap.add_argument("--slice", type=int, default=10_000, help="inputs per target per turn")
    ap.add_argument("--deadline", help="stop starting new rounds after this UTC time (HH:MM)")
    args = ap.parse_args(argv)
    targets = [BY_NAME[n] for n in args.targets] if args.targets else TARGETS
    report: dict = {
        "inputs_per_target": args.inputs,
        "seed": args.seed,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "targets": [],
        "probes": [],
    }

    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)

    deadline = None
    if args.deadline:
        hh, mm = map(int, args.deadline.split(":"))
        now = time.gmtime()
        deadline = time.time() + ((hh * 60 + mm) - (now.tm_hour * 60 + now.tm_min)) * 60 - now.tm_sec
    print(
        f"fuzzing {len(targets)} targets x {args.inputs:,} inputs (seed {args.seed}), {args.slice:,} per turn"
    )
    started = time.perf_counter()
    fuzzers = [Fuzzer(t, args.seed, timed=True) for t in targets]
    done = 0
    while done < args.inputs and not (deadline and time.time() > deadline):
        n = min(args.slice, args.inputs - done)
        for f in fuzzers:
            f.run(n)
        done += n
        report["targets"] = [_row(f.retime_slowest()) for f in fuzzers]
        report["elapsed_s"] = time.perf_counter() - started
        report["complete"] = done >= args.inputs
        save()
        print(f"  {done:,} inputs per target after {report['elapsed_s']:.0f} s", flush=True)
    if done < args.inputs:
        print(f"deadline reached: {done:,} of {args.inputs:,} inputs per target ran")
    print(
        f"{'target':16} {'inputs':>10} {'outcomes':>8} {'clean':>9} {'bugs':>6} {'inputs/s':>9} {'slowest':>10}"
    )
    for f in fuzzers:
        res, row = f.result, _row(f.result)
        print(
            f"{res.target:16} {res.inputs:>10,} {row['distinct_outcomes']:>8} {row['clean_parses']:>9,} "
            f"{row['bug_inputs']:>6} {row['inputs_per_s']:>9,.0f} {row['slowest_ms']:>7.1f} ms "
            f"({row['slowest_input_bytes']:,} B)"
        )
        for bug in res.bugs[:3]:
            print("   BUG", bug.report()[:300])
    total = sum(r["inputs"] for r in report["targets"])
    bugs = sum(r["bug_inputs"] for r in report["targets"])
    print(f"total: {total:,} inputs, {bugs} undocumented exceptions, {time.perf_counter() - started:.0f} s")
    if not args.no_probes:
        print("scaling probes (fastest of 7; linear ~x4, quadratic ~x16):")
        report["probes"] = run_probes()
    save()
    return 1 if bugs else 0


if __name__ == "__main__":
    raise SystemExit(main())
