"""``--log-format json``: one JSON object per line, the call and turn on every line logged inside a call,
and no caller number in clear."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from voxroute.agent.fixture import FIXTURES_DIR
from voxroute.agent.logs import TURN, call_context, configure_handler

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"time", "level", "logger", "message", "call_sid", "turn"}


def test_replay_logs_json_lines_with_call_and_turn(tmp_path):
    fixture = json.loads((FIXTURES_DIR / "order_status.json").read_text())
    caller = fixture["from"]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env |= {"VOXROUTE_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "voxroute.cli", "replay", "order_status", "--profile", "zero", "--fast",
         "-v", "--log-format", "json", "--json", str(out)],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    call = json.loads(out.read_text())["calls"][0]
    sid = call["call_sid"]

    lines = proc.stderr.splitlines()
    entries = [json.loads(line) for line in lines]  # every line parses
    assert entries and all(set(e) >= KEYS for e in entries)
    assert all(e["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") for e in entries)

    in_call = [e for e in entries if e["call_sid"] is not None]
    assert {e["call_sid"] for e in in_call} == {sid}
    session = [e for e in entries if e["logger"] == "voxroute.call"]
    assert session and all(e["call_sid"] == sid for e in session)  # every line of the session
    assert any(e["message"].startswith(f"call {sid} started") for e in session)
    assert any(e["message"].startswith(f"call {sid} ended") for e in session)
    turns = [t["index"] for t in call["turns"] if t.get("kind") != "greeting"]
    per_turn = [e for e in session if e["message"].startswith("turn call=")]  # timeline.log_turn
    assert [e["turn"] for e in per_turn] == turns
    assert all(f"index={e['turn']} " in e["message"] for e in per_turn)

    digits = caller.lstrip("+")
    assert caller not in proc.stderr and digits not in proc.stderr and digits[-10:] not in proc.stderr


def test_json_lines_are_redacted_and_carry_the_context():
    stream = io.StringIO()
    handler = configure_handler(logging.StreamHandler(stream), "json")
    logger = logging.getLogger("voxroute.test_json_logs")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    try:

        async def turn_task():
            TURN.set(4)
            logger.info("caller %s said\nhello", "+919800000001")

        async def call():
            with call_context("CA42"):
                logger.warning("outside a turn")
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(turn_task())
                try:
                    raise ValueError("card 4111 1111 1111 1111")
                except ValueError:
                    logger.exception("failed")
            logger.info("after the call")

        asyncio.run(call())
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    entries = [json.loads(line) for line in text.splitlines()]
    assert [(e["call_sid"], e["turn"]) for e in entries] == [
        ("CA42", None),
        ("CA42", 4),
        ("CA42", None),
        (None, None),
    ]
    assert entries[1]["message"].endswith("said\nhello") and "9800000001" not in text
    assert "exc" in entries[2] and "ValueError" in entries[2]["exc"] and "4111 1111" not in text
    assert entries[0]["level"] == "WARNING" and entries[0]["logger"] == "voxroute.test_json_logs"
    assert entries[0]["time"].endswith("Z")


def test_a_worker_of_serve_workers_names_itself_on_every_line():
    for log_format, expect in (("text", " worker 3 voxroute.x: hello"), ("json", '"worker": 3')):
        stream = io.StringIO()
        handler = configure_handler(logging.StreamHandler(stream), log_format, worker=3)
        logger = logging.getLogger("voxroute.x")
        logger.addHandler(handler)
        try:
            logger.warning("hello")
        finally:
            logger.removeHandler(handler)
        assert expect in stream.getvalue(), stream.getvalue()
    plain = io.StringIO()
    handler = configure_handler(logging.StreamHandler(plain), "json")
    logging.getLogger("voxroute.x").addHandler(handler)
    try:
        logging.getLogger("voxroute.x").warning("hello")
    finally:
        logging.getLogger("voxroute.x").removeHandler(handler)
    assert "worker" not in json.loads(plain.getvalue())  # one process: no worker key
