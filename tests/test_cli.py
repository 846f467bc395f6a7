"""The ``voxroute`` command as a user runs it: real processes, real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from voxroute.agent.fixture import FIXTURES_DIR, read_wav
from voxroute.audio import ulaw_to_pcm16
from voxroute.testing.ports import free_port

VOXROUTE = [sys.executable, "-m", "voxroute.cli"]


def _env() -> dict:
    env = dict(os.environ)
    for key in ("SARVAM_API_KEY", "OPENROUTER_API_KEY", "TWILIO_AUTH_TOKEN", "VOXROUTE_API_KEY"):
        env.pop(key, None)
    return env


def test_replay_a_fixture_from_anywhere_on_disk(tmp_path):
    # A user's own fixture: a copy outside the repository with only its first caller item.
    script = json.loads((FIXTURES_DIR / "billing_dispute.json").read_text())
    script["call"] = "my_dispute"
    script["audio"] = "my_dispute.wav"
    script["utterances"] = script["utterances"][:1]
    (tmp_path / "my_dispute.json").write_text(json.dumps(script))
    shutil.copy(FIXTURES_DIR / "billing_dispute.wav", tmp_path / "my_dispute.wav")
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [*VOXROUTE, "replay", str(tmp_path / "my_dispute.wav"), "--profile", "zero", "--json", str(out),
         "--record-dir", str(tmp_path / "rec")],
        capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "my_dispute" in proc.stdout and "simulated LLM" in proc.stdout
    result = json.loads(out.read_text())
    call = result["calls"][0]
    assert call["fixture"] == "my_dispute" and call["ended"] == "completed"
    assert call["turns"][0]["transcript"] == script["utterances"][0]["text"]
    assert result["summary"]["turns"] == 1 and result["summary"]["within_budget"] == 1
    tag, rate, channels, data = read_wav(tmp_path / "rec" / "my_dispute.agent.wav")
    assert (tag, rate, channels) == (7, 8000, 1)
    pcm = np.frombuffer(ulaw_to_pcm16(data), "<i2").astype(float)
    assert np.sqrt(np.mean(pcm**2)) > 100  # the agent's answer is in the recording


def test_replay_reports_a_bad_fixture_clearly(tmp_path):
    proc = subprocess.run(
        [*VOXROUTE, "replay", "no_such_call"], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 2
    assert "no fixture named 'no_such_call'" in proc.stderr


def _wait_healthy(proc: subprocess.Popen, base: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.get(base + "/healthz", timeout=1).json()
        except httpx.HTTPError:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_dev_answers_the_twilio_webhook_and_stops_cleanly_on_a_signal(signum):
    port = free_port()
    proc = subprocess.Popen(
        [*VOXROUTE, "serve", "--dev", "--port", str(port)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"  # --dev without --host: loopback
        assert _wait_healthy(proc, base) == {"status": "ok", "active_calls": 0, "draining": False}
        twiml = httpx.post(base + "/twilio/voice", data={"CallSid": "CA" + "1" * 32, "From": "+15550001111"})
        assert twiml.status_code == 200
        assert "<Connect><Stream" in twiml.text and "/twilio/stream" in twiml.text
        assert httpx.get(base + "/calls/CAnope").status_code == 404
        assert httpx.post(base + "/plivo/answer", data={"CallUUID": "x"}).status_code == 404  # not enabled
        page = httpx.get(base + "/calls", headers={"Accept": "text/html"})
        assert "DEVELOPMENT MODE" in page.text
        proc.send_signal(signum)
        assert proc.wait(30) == 0
        out = proc.stdout.read()
        assert "DEVELOPMENT MODE" in out and "draining" in out and "voxroute stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_refuses_dev_only_flags_without_dev():
    proc = subprocess.run(
        [*VOXROUTE, "serve", "--emulators", '{"sarvam": "http://127.0.0.1:1", "openrouter": "http://127.0.0.1:1"}'],
        capture_output=True, text=True, env=_env(), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--emulators stand in for providers: development only, add --dev" in proc.stderr
