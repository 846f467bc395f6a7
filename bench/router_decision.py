"""The router's decision time on the turn's critical path (issue 14), with the shipped classifier and
the default config (examples/default.yaml), in this process.

Per case, p50/p99 of the whole ``Conversation.decide`` (rules, tenant examples, classifier, signals,
table) and the CPU time per turn:

- ``cold_text``: the final transcript was never scored as a partial (the word cache as it is in a
  running process);
- ``cold_cache``: the same, with the classifier's per-word cache emptied before every turn (the
  worst case: every word is new);
- ``confirmed_partial``: the final equals the last partial scored by ``speculate`` (the usual
  case while the caller speaks), so the decision reuses its scores;
- ``bad_input``: empty, 10,000 characters, mixed script, emoji only.

Texts: the cross-domain development set and the Banking77 test split (data/router/).
Targets: p99 <= 5 ms from cold text, <= 1 ms for a confirmed partial.

    python -m bench.router_decision [--json PATH] [--rows N] [--config CFG]

(``--config``: a config whose ``routing.classifier`` names another artifact, e.g. an experiment's.)
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from voxroute.agent.config import load_config
from voxroute.routing.router import is_devanagari
from voxroute.runtime import build_router

DATA = Path(__file__).resolve().parent.parent / "data" / "router"
BAD = [
    "",
    "   ",
    "refund " * 1428 + "ab",
    "x" * 10_000,
    "मेरा refund अभी तक नहीं आया, it's been 10 days यार",
    "😡😡😡",
    "🙏",
    "\u200b\u200d",
    "₹₹₹ 0000000000000000000000000000000",
    "क" * 10_000,
]
TARGETS_MS = {"cold_text": 5.0, "cold_cache": 5.0, "confirmed_partial": 1.0, "bad_input": 5.0}


def texts(limit: int) -> list[str]:
    out = []
    for name in ("crossdomain.csv", "banking77_test.csv"):
        with (DATA / name).open(newline="", encoding="utf-8") as f:
            out += [r["text"] for r in csv.DictReader(f)]
    return out[:limit]


def run(router, items: list[str], mode: str) -> dict:
    wall, cpu = [], []
    for text in items:
        conv = router.conversation("default")
        language = "hi-IN" if is_devanagari(text) else "en-IN"
        if mode == "confirmed_partial":
            conv.speculate(text)
        if mode == "cold_cache":
            router.model._word_rows.clear()
        c0 = time.thread_time()
        t0 = time.perf_counter()
        conv.decide(text, language)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
    w = np.array(wall)
    return {
        "n": len(items),
        "p50_ms": round(float(np.percentile(w, 50)), 4),
        "p99_ms": round(float(np.percentile(w, 99)), 4),
        "max_ms": round(float(w.max()), 4),
        "cpu_ms_per_turn": round(float(np.mean(cpu)), 4),
        "target_p99_ms": TARGETS_MS[mode],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=3000, help="texts to time (default 3000)")
    ap.add_argument("--config", type=Path, default=None, help="config YAML (default: examples/default.yaml)")
    args = ap.parse_args()
    router = build_router(load_config(args.config))
    items = texts(args.rows)
    for text in items[:50]:  # warm up: imports, first allocations
        router.conversation("default").decide(text, "en-IN")
    results = {
        "cold_text": run(router, items, "cold_text"),
        "cold_cache": run(router, items[:500], "cold_cache"),
        "confirmed_partial": run(router, items, "confirmed_partial"),
        "bad_input": run(router, BAD * 20, "bad_input"),
    }
    for mode, r in results.items():
        ok = "ok" if r["p99_ms"] <= r["target_p99_ms"] else "OVER TARGET"
        print(
            f"{mode:18s} n={r['n']:5d}  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  max "
            f"{r['max_ms']:.3f} ms  cpu/turn {r['cpu_ms_per_turn']:.3f} ms  (target p99 <= "
            f"{r['target_p99_ms']} ms: {ok})"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
