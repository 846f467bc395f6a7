"""Soak (issue 18): N calls kept in flight for a long time against one voxroute server process.

Three processes on 127.0.0.1, as in bench/concurrency.py: the emulators (``zero`` profile), one
``voxroute serve --dev`` with its call log in a fresh SQLite data directory, and this load
generator, which keeps ``--calls`` fixture calls in flight through the fake Twilio carrier, in
real time: when a call ends, the next one is dialled. Meanwhile it samples

- the server's RSS (``VmRSS`` of ``/proc/PID/status``) every ``SAMPLE_S`` seconds;
- ``/healthz`` latency every ``PROBE_S`` seconds (an HTTP round trip through the server's event
  loop: its stalls show here), and the generator's own event-loop lag (a late ``sleep``);
- the server's event-loop lag histogram on ``/metrics``, if it exports one (a metric whose name
  contains ``loop_lag``), read at the end of the warm-up and at the end;
- how the machine treated the server: the share of the time its main thread (the event loop) ran
  on a CPU and the share it was runnable but waited for one (``/proc/PID/schedstat``), the load
  average, and the busiest processes. On a shared machine the second share says how much of the
  lag is the scheduler's rather than voxroute's.

After each call it reads the call back (``GET /calls/{sid}``: the live record) and notes its turns.
At the end it stops the server with SIGTERM and waits for it to exit. What the database had not
taken by then waits in the call log's write-ahead spool, which the next start writes: if the spool
is not empty, the soak starts the server again on the same data directory until it is (the issue's
own test of "nothing lost": a restart finds every call and turn), and reports both. Then it opens
the database: every call the generator dialled (and the server accepted) and every turn the server
showed must be there. Figures:

- RSS growth after warm-up: ``(RSS at end - RSS at end of warm-up) / RSS at end of warm-up``, each
  the mean of the samples in the ``RSS_WINDOW_S`` seconds before that moment (a call lasts ~20 s,
  so a window averages over the calls' own ups and downs);
- event-loop lag p50/p99 after warm-up: the server's histogram when there is one, else
  ``/healthz`` latency (an upper bound: it includes the HTTP round trip and the generator's lag);
- first audio p50/p99 and within-budget share of the turns in the database.

Targets: RSS growth under 5 %, loop lag p99 under 20 ms, zero lost records. Exit status 1 when
one is missed.

Warm-up: the server keeps its last 1000 finished calls in memory (``Services.finished``); at 50
calls in flight (~2 calls end per second) that buffer is full after ~8 minutes, so the 1-hour run
uses ``--warmup-s 600``.

    python -m bench.soak [--calls 50] [--duration-s 3600] [--warmup-s 600] [--profile zero] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import LOAD_FIXTURES as FIXTURES
from bench.common import percentile, processes, webhook_params
from voxroute.agent.calllog.store import SPOOL_DIR
from voxroute.agent.fixture import load
from voxroute.emulators.carrier import dial
from voxroute.replay import operator_headers
from voxroute.server import ws_url

SAMPLE_S = 2.0  # RSS sampling period
PROBE_S = 0.5  # /healthz probing period
TICK_S = 0.05  # the generator's own lag probe
RSS_WINDOW_S = 30.0  # RSS at a moment = mean of the samples this long before it
STOP_TIMEOUT_S = 120.0  # SIGTERM to exit: the drain (no calls are left by then) and the flush
# uvicorn shuts down on SIGTERM, then raises the signal again: a graceful stop exits with -SIGTERM
GRACEFUL_EXITS = (0, -signal.SIGTERM)
RSS_GROWTH_LIMIT_PCT = 5.0
LAG_LIMIT_MS = 20.0


@dataclass
class Seen:
    """What the load generator saw, filled in while the soak runs."""

    calls: dict[str, dict] = field(default_factory=dict)  # sid -> {fixture, completed, turns, ...}
    rss_kb: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, kB)
    healthz_ms: list[tuple[float, float]] = field(default_factory=list)
    healthz_errors: int = 0
    generator_lag_ms: list[tuple[float, float]] = field(default_factory=list)
    loadavg: list[float] = field(default_factory=list)
    server_gone_s: float | None = (
        None  # when the server process disappeared, if it did  # the machine's 1-minute load, with each RSS sample
    )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def schedstat(pid: int) -> tuple[float, float]:
    """Seconds the server's main thread (its event loop) has run on a CPU, and has waited runnable
    for one (``/proc/PID/schedstat``): the second says how much of its lag the machine caused."""
    on_cpu, waiting, _slices = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def rss_at(samples: list[tuple[float, int]], t: float, window_s: float = RSS_WINDOW_S) -> float | None:
    """Mean RSS (kB) of the samples in ``(t - window_s, t]``."""
    vals = [kb for ts, kb in samples if t - window_s < ts <= t]
    return sum(vals) / len(vals) if vals else None


# ---------------------------------------------------------------- the server's lag histogram

_BUCKET = re.compile(r"^(?P<name>[a-zA-Z_:]*loop_lag[a-zA-Z_:]*)_bucket\{(?P<labels>[^}]*)\}\s+(?P<v>\S+)$")


def lag_buckets(metrics_text: str) -> tuple[str, dict[float, float]] | None:
    """The cumulative buckets (upper bound in seconds -> count, summed over label sets) of the
    first histogram on ``/metrics`` whose name contains ``loop_lag``; None if there is none."""
    name, buckets = None, {}
    for line in metrics_text.splitlines():
        m = _BUCKET.match(line)
        if m is None or (name is not None and m["name"] != name):
            continue
        name = m["name"]
        le = re.search(r'le="([^"]+)"', m["labels"])
        if le is None:
            continue
        bound = float("inf") if le[1] == "+Inf" else float(le[1])
        buckets[bound] = buckets.get(bound, 0.0) + float(m["v"])
    return (name, buckets) if name else None


def bucket_pct(buckets: dict[float, float], pct: float) -> float | None:
    """The ``pct`` percentile in ms, interpolated linearly inside its bucket as Prometheus'
    ``histogram_quantile`` does; None if empty; the last finite bound if it lies above it."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if total <= 0:
        return None
    rank = total * pct / 100
    lower, below = 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return lower * 1000
            inside = buckets[b] - below
            return round((lower + (b - lower) * (rank - below) / inside) * 1000, 2)
        lower, below = b, buckets[b]
    return lower * 1000


async def read_lag_histogram(http: httpx.AsyncClient) -> tuple[str, dict[float, float]] | None:
    try:
        r = await http.get("/metrics")
    except httpx.HTTPError:
        return None
    return lag_buckets(r.text) if r.status_code == 200 else None


# ---------------------------------------------------------------- load and probes


async def caller(
    slot: int, n: int, base: str, http: httpx.AsyncClient, seen: Seen, t0: float, end: float, counter: list
) -> None:
    """One call slot: dial fixture calls back to back until ``end``."""
    await asyncio.sleep(slot * 2.0 / n)  # spread the first starts over two seconds
    while time.monotonic() < end:
        seq = counter[0]
        counter[0] += 1
        name = FIXTURES[seq % len(FIXTURES)]
        fixture = load(name)
        sid = f"CA{seq:032x}"
        entry: dict = {"fixture": name, "started_s": round(time.monotonic() - t0, 1), "turns": None}
        seen.calls[sid] = entry
        try:
            params = await webhook_params(http, sid)
            params["language"] = fixture.script.language
            result = await dial(
                fixture, ws_url(base) + "/twilio/stream", custom_parameters=params, call_sid=sid
            )
        except Exception as e:  # a failed call is a figure, not the end of the soak
            entry.update(completed=False, accepted=False, errors=[repr(e)])
            continue
        entry.update(
            completed=result.completed and not result.errors,
            accepted=result.closed_by != "handshake",
            errors=result.errors[:3],
            replies=sum(1 for item in result.items if item.reply_started_at is not None),
            max_lag_ms=result.max_lag_ms,
        )
        if entry["accepted"]:
            try:
                r = await http.get(f"/calls/{sid}")
                if r.status_code == 200:
                    entry["turns"] = [t["index"] for t in r.json()["turns"]]
                else:
                    entry["errors"].append(f"GET /calls/{sid}: {r.status_code}")
            except httpx.HTTPError as e:
                entry["errors"].append(f"GET /calls/{sid}: {e!r}")


async def sample_rss(pid: int, seen: Seen, t0: float, end: float) -> None:
    while True:
        try:
            seen.rss_kb.append((time.monotonic() - t0, rss_kb(pid)))
        except (FileNotFoundError, ProcessLookupError):
            seen.server_gone_s = time.monotonic() - t0  # the verdict says so; the calls fail on their own
            return
        seen.loadavg.append(os.getloadavg()[0])
        if time.monotonic() >= end:
            return
        await asyncio.sleep(min(SAMPLE_S, max(0.0, end - time.monotonic())))


async def probe_healthz(http: httpx.AsyncClient, seen: Seen, t0: float, end: float) -> None:
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            r = await http.get("/healthz", timeout=5)
            r.raise_for_status()
            seen.healthz_ms.append((start - t0, (time.monotonic() - start) * 1000))
        except httpx.HTTPError:
            seen.healthz_errors += 1
        await asyncio.sleep(PROBE_S)


async def generator_lag(seen: Seen, t0: float, end: float) -> None:
    while time.monotonic() < end:
        before = time.monotonic()
        await asyncio.sleep(TICK_S)
        seen.generator_lag_ms.append((before - t0, (time.monotonic() - before - TICK_S) * 1000))


# ---------------------------------------------------------------- the call log after the run


def stop_server(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> tuple[int | None, float]:
    """SIGTERM the server (our child) and reap it: its exit status (None if it did not exit in
    time) and how long it took."""
    t = time.monotonic()
    with contextlib.suppress(ProcessLookupError):  # already gone: waitpid tells how it ended
        os.kill(pid, signal.SIGTERM)
    while time.monotonic() - t < timeout_s:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.monotonic() - t
        time.sleep(0.1)
    return None, time.monotonic() - t


def stored(db: Path) -> tuple[set[str], dict[str, set[int]], list[tuple]]:
    """Call sids, turn indices by sid, and (first_audio_ms, budget_ms, within_budget) of each turn."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        calls = {sid for (sid,) in con.execute("SELECT call_sid FROM calls")}
        turns: dict[str, set[int]] = {}
        for sid, index in con.execute("SELECT call_sid, turn_index FROM turns"):
            turns.setdefault(sid, set()).add(index)
        latency = list(con.execute("SELECT first_audio_ms, budget_ms, within_budget FROM turns"))
    finally:
        con.close()
    return calls, turns, latency


def spool_pending_bytes(data: Path) -> int:
    """Bytes of the call log's write-ahead spool (``calllog-spool/*.jsonl``) that its checkpoints
    (``<file>.done``: the offset the database has taken) do not cover yet."""
    pending = 0
    for path in (data / SPOOL_DIR).glob("*.jsonl"):
        done = path.with_name(path.name + ".done")
        try:
            offset = int(done.read_text().strip() or 0) if done.exists() else 0
        except ValueError:
            offset = 0
        pending += max(0, path.stat().st_size - offset)
    return pending


def replay_spool(profile: str, data: Path, timeout_s: float) -> dict:
    """What the server left in the spool at its stop (the database fell behind), written by the next
    start, as the call log is designed to (agent/calllog/store.py): start ``serve`` again on the same
    data directory, wait until the spool is consumed, stop it the same way."""
    t = time.monotonic()
    with processes(profile=profile, serve_args=serve_args(data, 50)) as (_base, pid):
        while spool_pending_bytes(data) > 0 and time.monotonic() - t < timeout_s:
            time.sleep(1.0)
        exit_code, _stop_s = stop_server(pid)
    return {
        "replay_s": round(time.monotonic() - t, 1),
        "replay_exit_code": exit_code,
        "spool_pending_bytes_after_replay": spool_pending_bytes(data),
    }


def lost_records(seen: Seen, calls: set[str], turns: dict[str, set[int]]) -> dict:
    lost_calls = [sid for sid, e in seen.calls.items() if e.get("accepted") and sid not in calls]
    lost_turns = [
        (sid, i)
        for sid, e in seen.calls.items()
        for i in e.get("turns") or ()
        if i not in turns.get(sid, set())
    ]
    return {
        "lost_calls": len(lost_calls),
        "lost_turns": len(lost_turns),
        "lost_examples": [*lost_calls[:3], *(f"{s} turn {i}" for s, i in lost_turns[:3])],
    }


# ---------------------------------------------------------------- the run


def _pcts(values: list[float]) -> tuple[float | None, float | None]:
    return percentile(values, 50), percentile(values, 99)


async def load_phase(base: str, pid: int, calls: int, duration_s: float, warmup_s: float, seen: Seen) -> dict:
    t0 = time.monotonic()
    end = t0 + duration_s
    out: dict = {}
    counter = [0]
    limits = httpx.Limits(max_connections=calls + 10)
    async with (
        httpx.AsyncClient(base_url=base, timeout=30, headers=operator_headers(), limits=limits) as http,
        httpx.AsyncClient(base_url=base, timeout=5, headers=operator_headers()) as probe,
    ):

        async def warmup_mark() -> None:
            await asyncio.sleep(warmup_s)
            with contextlib.suppress(FileNotFoundError):
                out["sched_at_warmup"] = (time.monotonic(), *schedstat(pid))
            out["top_at_warmup"] = top_processes()
            out["lag_at_warmup"] = await read_lag_histogram(http)
            with contextlib.suppress(httpx.HTTPError):
                await http.post("/debug/stats/reset")

        async with asyncio.TaskGroup() as tg:
            for slot in range(calls):
                tg.create_task(caller(slot, calls, base, http, seen, t0, end, counter))
            tg.create_task(sample_rss(pid, seen, t0, end))
            tg.create_task(probe_healthz(probe, seen, t0, end))
            tg.create_task(generator_lag(seen, t0, end))
            tg.create_task(warmup_mark())

            async def at_end() -> None:  # while the last calls are still in flight
                await asyncio.sleep(max(0.0, end - time.monotonic()))
                with contextlib.suppress(FileNotFoundError):
                    out["sched_at_end"] = (time.monotonic(), *schedstat(pid))
                out["top_at_end"] = top_processes()
                out["lag_at_end"] = await read_lag_histogram(http)
                try:
                    out["debug_stats"] = (await http.get("/debug/stats")).json()
                except (httpx.HTTPError, ValueError):
                    out["debug_stats"] = {}

            tg.create_task(at_end())
        out["wall_s"] = time.monotonic() - t0
    return out


def top_processes(n: int = 8) -> list[str]:
    """What else the machine was doing: the busiest processes (CPU % over their lifetime)."""
    try:
        ps = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True)
    except OSError:
        return []
    return [line[:140] for line in ps.stdout.splitlines()[1 : n + 1]]


def git_state() -> str:
    """The commit measured, and whether the working tree had changes on top of it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout
    except OSError:
        return "unknown"
    changed = len(dirty.splitlines())
    return head.strip() + (f" + {changed} changed files" if changed else "")


def serve_args(data: Path, recent_calls: int) -> tuple[str, ...]:
    """The default config with ``call_log.recent_calls`` set: the finished calls a server keeps in
    memory are bounded by design, and the soak looks for growth beyond that bound, so the warm-up
    must fill it (1,000 by default would need a warm-up of about 10 minutes at 50 calls)."""
    import yaml

    from voxroute.agent.config import DEFAULT_CONFIG_PATH

    cfg = yaml.safe_load(Path(os.environ.get("VOXROUTE_CONFIG", DEFAULT_CONFIG_PATH)).read_text())
    cfg.setdefault("call_log", {})["recent_calls"] = recent_calls
    path = data / "soak.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return ("--config", str(path))


def run(
    calls: int, duration_s: float, warmup_s: float, profile: str, pinned: bool, recent_calls: int = 50
) -> dict:
    seen = Seen()
    code = git_state()  # before the server imports it: what this run measured
    data = Path(tempfile.mkdtemp(prefix="voxroute-soak-"))
    os.environ["VOXROUTE_DATA_DIR"] = str(data)  # the server inherits it: a call log of its own
    os.environ.pop("VOXROUTE_DATABASE_URL", None)
    with processes(pinned=pinned, profile=profile, serve_args=serve_args(data, recent_calls)) as (base, pid):
        rss_start = rss_kb(pid)
        phase = asyncio.run(load_phase(base, pid, calls, duration_s, warmup_s, seen))
        exit_code, stop_s = stop_server(pid)
    db = data / "voxroute.db"
    at_stop_calls, at_stop_turns, _latency = stored(db)
    pending = spool_pending_bytes(data)
    replay = replay_spool(profile, data, timeout_s=max(120.0, duration_s / 4)) if pending else {}
    db_calls, db_turns, latency = stored(db)
    lost = lost_records(seen, db_calls, db_turns)

    rss_warm = rss_at(seen.rss_kb, warmup_s)
    rss_end = rss_at(seen.rss_kb, duration_s)
    growth = (rss_end - rss_warm) / rss_warm * 100 if rss_warm and rss_end else None

    health = [ms for t, ms in seen.healthz_ms if t >= warmup_s]
    gen_lag = [ms for t, ms in seen.generator_lag_ms if t >= warmup_s]
    lag_source, lag_p50, lag_p99 = "healthz latency", *_pcts(health)
    before, after = phase.get("lag_at_warmup"), phase.get("lag_at_end")
    if after is not None:
        name, buckets = after
        if before is not None and before[0] == name:
            buckets = {b: v - before[1].get(b, 0.0) for b, v in buckets.items()}
        lag_source = f"server histogram {name}"
        lag_p50, lag_p99 = bucket_pct(buckets, 50), bucket_pct(buckets, 99)

    cpu_share = wait_share = None
    if "sched_at_warmup" in phase and "sched_at_end" in phase:
        (t1, cpu1, wait1), (t2, cpu2, wait2) = phase["sched_at_warmup"], phase["sched_at_end"]
        cpu_share, wait_share = round((cpu2 - cpu1) / (t2 - t1), 3), round((wait2 - wait1) / (t2 - t1), 3)
    first_audio = [fa for fa, _b, _w in latency if fa is not None]
    budgeted = [bool(w) for _fa, b, w in latency if b is not None and _fa is not None]
    entries = list(seen.calls.values())
    completed = sum(1 for e in entries if e.get("completed"))
    stats = phase.get("debug_stats") or {}
    result = {
        "calls_target": calls,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "wall_s": round(phase["wall_s"], 1),
        "profile": profile,
        "pinned": pinned,
        "calls_dialled": len(entries),
        "calls_completed": completed,
        "calls_failed": len(entries) - completed,
        "failure_examples": sorted({err for e in entries for err in e.get("errors") or ()})[:5],
        "turns_seen": sum(len(e.get("turns") or ()) for e in entries),
        "calls_stored_at_stop": len(at_stop_calls),
        "turns_stored_at_stop": sum(len(v) for v in at_stop_turns.values()),
        "spool_pending_bytes_at_stop": pending,
        **replay,
        "calls_stored": len(db_calls),
        "turns_stored": sum(len(v) for v in db_turns.values()),
        **lost,
        "lost_records": lost["lost_calls"] + lost["lost_turns"],
        "server_exit_code": exit_code,
        "server_gone_s": seen.server_gone_s,
        "server_stop_s": round(stop_s, 2),
        "rss_start_mb": round(rss_start / 1024, 1),
        "rss_warmup_end_mb": round(rss_warm / 1024, 1) if rss_warm else None,
        "rss_end_mb": round(rss_end / 1024, 1) if rss_end else None,
        "rss_max_mb": round(max(kb for _t, kb in seen.rss_kb) / 1024, 1),
        "rss_growth_pct": round(growth, 2) if growth is not None else None,
        "lag_source": lag_source,
        "lag_p50_ms": lag_p50,
        "lag_p99_ms": lag_p99,
        "healthz_ms_p50": percentile(health, 50),
        "healthz_ms_p99": percentile(health, 99),
        "healthz_ms_max": round(max(health), 1) if health else None,
        "healthz_errors": seen.healthz_errors,
        "generator_lag_ms_p99": percentile(gen_lag, 99),
        "server_loop_cpu_share": cpu_share,
        "server_loop_runqueue_wait_share": wait_share,
        "server_inbound_lag_ms_p99": stats.get("inbound_lag_ms_p99"),
        "server_outbound_late_ms_p99": stats.get("outbound_late_ms_p99"),
        "first_audio_ms_p50": percentile(first_audio, 50),
        "first_audio_ms_p99": percentile(first_audio, 99),
        "within_budget_share": round(sum(budgeted) / len(budgeted), 4) if budgeted else None,
        "rss_samples_mb": [
            (round(t), round(kb / 1024, 1)) for t, kb in seen.rss_kb[:: max(1, len(seen.rss_kb) // 120)]
        ],
        "loadavg_1m_mean": round(sum(seen.loadavg) / len(seen.loadavg), 2),
        "loadavg_1m_max": round(max(seen.loadavg), 2),
        "cpus": os.cpu_count(),
        "git": code,
        "top_at_warmup": phase.get("top_at_warmup"),
        "top_at_end": phase.get("top_at_end"),
        "data_dir": str(data),
        "seen_turns": {sid: e.get("turns") for sid, e in seen.calls.items()},
    }
    result["targets"] = {
        "rss_growth_under_5pct": growth is not None and growth < RSS_GROWTH_LIMIT_PCT,
        "lag_p99_under_20ms": lag_p99 is not None and lag_p99 < LAG_LIMIT_MS,
        "zero_lost_records": result["lost_records"] == 0 and exit_code in GRACEFUL_EXITS,
    }
    result["pass"] = all(result["targets"].values())
    return result


def table(r: dict) -> str:
    rows = [
        (
            "calls in flight",
            f"{r['calls_target']} for {r['duration_s']:.0f} s (warm-up {r['warmup_s']:.0f} s), wall {r['wall_s']} s",
        ),
        (
            "calls",
            f"{r['calls_dialled']} dialled, {r['calls_completed']} completed, {r['calls_failed']} failed",
        ),
        ("turns", f"{r['turns_seen']} seen, {r['turns_stored']} stored ({r['calls_stored']} calls stored)"),
        (
            "at the stop",
            f"{r['calls_stored_at_stop']} calls, {r['turns_stored_at_stop']} turns in the database; {r['spool_pending_bytes_at_stop']} bytes left in the spool"
            + (
                f" (written by a restart in {r['replay_s']} s, {r['spool_pending_bytes_after_replay']} bytes left)"
                if "replay_s" in r
                else ""
            ),
        ),
        (
            "lost records",
            f"{r['lost_records']} ({r['lost_calls']} calls, {r['lost_turns']} turns); server exit {r['server_exit_code']} after {r['server_stop_s']} s",
        ),
        (
            "RSS",
            f"start {r['rss_start_mb']} MB, warm-up end {r['rss_warmup_end_mb']} MB, end {r['rss_end_mb']} MB, max {r['rss_max_mb']} MB",
        ),
        ("RSS growth", f"{r['rss_growth_pct']} % (limit {RSS_GROWTH_LIMIT_PCT:.0f} %)"),
        (
            "loop lag",
            f"p50 {r['lag_p50_ms']} ms, p99 {r['lag_p99_ms']} ms ({r['lag_source']}; limit {LAG_LIMIT_MS:.0f} ms)",
        ),
        (
            "/healthz",
            f"p50 {r['healthz_ms_p50']} ms, p99 {r['healthz_ms_p99']} ms, max {r['healthz_ms_max']} ms, {r['healthz_errors']} errors",
        ),
        ("generator lag", f"p99 {r['generator_lag_ms_p99']} ms"),
        (
            "server loop",
            f"share of the time on a CPU {r['server_loop_cpu_share']}, runnable but waiting for one {r['server_loop_runqueue_wait_share']} (after warm-up)",
        ),
        (
            "machine",
            f"{r['cpus']} CPUs, 1-min load mean {r['loadavg_1m_mean']}, max {r['loadavg_1m_max']}; code {r['git']}",
        ),
        (
            "server media",
            f"inbound lag p99 {r['server_inbound_lag_ms_p99']} ms, outbound late p99 {r['server_outbound_late_ms_p99']} ms",
        ),
        (
            "first audio",
            f"p50 {r['first_audio_ms_p50']} ms, p99 {r['first_audio_ms_p99']} ms, within budget {r['within_budget_share']}",
        ),
    ]
    lines = [f"  {k:<16} {v}" for k, v in rows]
    lines += [f"  {k:<28} {'ok' if v else 'MISSED'}" for k, v in r["targets"].items()]
    if r["failure_examples"]:
        lines.append("  failures: " + "; ".join(r["failure_examples"]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--duration-s", type=float, default=3600)
    ap.add_argument("--warmup-s", type=float, default=600)
    ap.add_argument("--profile", default="zero")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--pin", action="store_true", help="server on a core of its own (see bench/common.pin)")
    ap.add_argument(
        "--recent-calls", type=int, default=50, help="finished calls the server keeps in memory (a bound)"
    )
    args = ap.parse_args()
    if not 0 < args.warmup_s < args.duration_s:
        ap.error("--warmup-s must be between 0 and --duration-s")
    result = run(args.calls, args.duration_s, args.warmup_s, args.profile, args.pin, args.recent_calls)
    print(f"soak: {'PASS' if result['pass'] else 'FAIL'}")
    print(table(result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    raise SystemExit(0 if result["pass"] else 1)


if __name__ == "__main__":
    main()
