"""How fast redaction is (issue 18), and that it grows linearly with the text.

Each input is redacted ``--repeat`` times at two sizes, ``n`` and ``10 n``; the figures are the median
and p99 time per run and the cost ratio of the two sizes (linear: about 10; quadratic: about 100).
Inputs: plain digits (20,000 DTMF keys froze the server for 4 s with the old e-mail pattern), digits
with spaces, digit words, the adversarial shapes of the e-mail walks ("at a dot ..." chains, "a@a@..."),
ordinary call-centre prose with numbers in it (1 MB at the larger size), and a short log line.

    python -m bench.redact [--repeat 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from voxroute.agent.calllog.redact import redact

PROSE = (
    "hello my order is A 1745 and I paid 2,400 rupees, call me at nine eight zero. card 4111 1111 1111 1111 "
)


def inputs() -> dict[str, tuple[str, str]]:
    """name -> (text of size n, text of size 10 n)."""

    def sized(unit: str, chars: int) -> str:
        return (unit * (chars // len(unit) + 1))[:chars]

    return {
        "digits 20k/200k": ("1" * 20_000, "1" * 200_000),
        "spaced digits 40k/400k": ("1 " * 20_000, "1 " * 200_000),
        "digit words 50k/500k": (sized("one two ", 50_000), sized("one two ", 500_000)),
        "'at a dot' 45k/450k": ("at a dot " * 5_000, "at a dot " * 50_000),
        "'a@' 20k/200k": ("a@" * 10_000, "a@" * 100_000),
        "prose 100k/1M": (sized(PROSE, 100_000), sized(PROSE, 1_000_000)),
    }


def timed(text: str, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        redact(text)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    print(f"{'input':<26} {'small ms p50':>12} {'p99':>8} {'large ms p50':>13} {'p99':>8} {'ratio':>6}")
    for name, (small, large) in inputs().items():
        a, b = timed(small, args.repeat), timed(large, args.repeat)
        ratio = statistics.median(b) / max(statistics.median(a), 1e-9)
        results[name] = {
            "small_chars": len(small),
            "large_chars": len(large),
            "small_ms_p50": statistics.median(a),
            "small_ms_p99": p99(a),
            "large_ms_p50": statistics.median(b),
            "large_ms_p99": p99(b),
            "ratio": ratio,
        }
        print(
            f"{name:<26} {statistics.median(a):>12.2f} {p99(a):>8.2f} "
            f"{statistics.median(b):>13.2f} {p99(b):>8.2f} {ratio:>6.1f}"
        )
    line = "call CA0123 from +919800000001 to +918000000000: connecting media stream"
    per = timed(line, max(args.repeat, 1000))
    results["log line"] = {
        "chars": len(line),
        "us_p50": statistics.median(per) * 1000,
        "us_p99": p99(per) * 1000,
    }
    print(
        f"a log line ({len(line)} chars): p50 {statistics.median(per) * 1000:.1f} us, p99 {p99(per) * 1000:.1f} us"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
