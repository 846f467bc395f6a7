"""Call recording, opt-in per tenant (agent/recording.py): a replayed call through the whole stack
leaves a WAV of its duration (stereo with ``channels: both``) and a sidecar of its turns; the call
page says so; retention deletes what is older than the tenant's ``retention_days``."""

from __future__ import annotations

import json
import os
import time
import wave

import numpy as np
import pytest
import yaml

from voxroute.agent import pages, recording
from voxroute.agent.config import DEFAULT_CONFIG_PATH, ConfigError, parse_config
from voxroute.agent.timeline import Clock


def _config(**settings):
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    if settings:
        data["tenants"]["default"]["recording"] = settings
    return parse_config(data)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


async def test_a_stereo_recording_of_a_replayed_call(replay_call, tmp_path, monkeypatch):
    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path))
    config = _config(enabled=True, channels="both", retention_days=7)
    result = await replay_call("order_status", profile="zero", config=config, items=2)
    assert result.ended == "completed", result.raw.get("error")
    wav_path = tmp_path / "recordings" / "default" / f"{result.call_sid}.wav"
    with wave.open(str(wav_path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    duration_s = len(frames) / 8000
    # The carrier streamed frames from start to stop: the recording lasts as long as the call did.
    assert duration_s == pytest.approx(result.carrier["duration_s"], abs=0.02)
    sidecar = json.loads(wav_path.with_suffix(".json").read_text())
    assert sidecar["channels"] == ["caller", "agent"] and sidecar["duration_ms"] == len(frames) // 8
    assert sidecar["agent_audio_ms"] == result.carrier["agent_audio_ms"]
    assert [t["index"] for t in sidecar["turns"]] == [t["index"] for t in result.turns]
    assert all("transcript" not in t and "reply" not in t for t in sidecar["turns"])
    # Left: the caller speaks during the fixture's first utterance and the agent is quiet then;
    # right: the agent speaks once the first turn's answer went out.
    items = result.carrier["items"]
    started = result.raw["carrier"]["items"][0]["started_at"]
    utt = slice(int(started * 8000) + 800, int(items[0]["ended_at"] * 8000) - 800)
    assert _rms(frames[utt, 0]) > 300 and _rms(frames[utt, 1]) < 30
    reply = slice(int(items[0]["reply_started_at"] * 8000), int(items[0]["reply_finished_at"] * 8000))
    assert _rms(frames[reply, 1]) > 300
    # The call page says it was recorded.
    assert f"recorded: <code>{result.call_sid}.wav</code>" in pages.call_page(
        {"call_sid": result.call_sid, "tenant": "default", "turns": []}
    )


async def test_recording_is_off_by_default_and_mono_for_the_caller(replay_call, tmp_path, monkeypatch):
    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path))
    result = await replay_call("order_status", profile="zero", speed=2.0, config=_config(), items=1)
    assert result.ended == "completed"
    assert not (tmp_path / "recordings" / "default").exists()
    assert "not recorded" in pages.call_page({"call_sid": result.call_sid, "tenant": "default", "turns": []})

    result = await replay_call(
        "order_status", profile="zero", speed=2.0, config=_config(enabled=True), items=1
    )
    with wave.open(str(tmp_path / "recordings" / "default" / f"{result.call_sid}.wav"), "rb") as w:
        assert (w.getnchannels(), w.getframerate()) == (1, 8000)
        # At twice real time too, every frame the carrier streamed is kept: the call's media time.
        assert w.getnframes() / 8000 == pytest.approx(result.carrier["duration_s"], abs=0.02)


def test_recording_settings_are_checked():
    with pytest.raises(ConfigError, match="recording.channels"):
        _config(enabled=True, channels="agent")
    with pytest.raises(ConfigError, match="recording.retention_days"):
        _config(enabled=True, retention_days=0)
    assert _config().tenants["default"].recording.enabled is False


class _FakeClock(Clock):
    def __init__(self) -> None:
        self.ms = 0.0

    def now(self) -> float:
        return self.ms


def test_agent_audio_lands_where_it_plays_and_a_clear_drops_the_unheard(tmp_path):
    clock = _FakeClock()
    rec = recording.CallRecorder(
        tmp_path / "x.wav", clock, stereo=True, max_minutes=1, tenant="t", call_sid="c"
    )
    rec.caller(b"\x01\x00" * 160)
    clock.ms = 500
    rec.agent(b"\x02\x00" * 480)  # 60 ms at 500 ms
    rec.agent(b"\x02\x00" * 480)  # queued after it: 560-620 ms
    assert len(rec._agent) == 620 * 16
    clock.ms = 580
    rec.cleared()  # the carrier had played up to 580 ms
    assert len(rec._agent) == 580 * 16
    assert bytes(rec._agent[: 500 * 16]) == bytes(500 * 16)


def test_a_call_longer_than_max_minutes_is_cut_not_grown(tmp_path):
    rec = recording.CallRecorder(
        tmp_path / "x.wav", _FakeClock(), stereo=False, max_minutes=1, tenant="t", call_sid="c"
    )
    frame = bytes(320)
    for _ in range(3001):  # 60.02 s of 20 ms frames
        rec.caller(frame)
    assert len(rec._caller) == rec.max_bytes and rec.truncated


def test_retention_deletes_what_is_older_than_the_tenants_days(tmp_path):
    root = tmp_path / "recordings"
    now = time.time()
    files = {}
    for tenant, sid, age_days in [
        ("retail", "old", 8),
        ("retail", "new", 6),
        ("bank", "old", 2),
        ("gone", "x", 31),
    ]:
        for suffix in (".wav", ".json"):
            path = root / tenant / f"{sid}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
            os.utime(path, (now - age_days * 86_400, now - age_days * 86_400))
            files[(tenant, sid, suffix)] = path
    deleted = recording.sweep(root, {"retail": 7, "bank": 1}, now)
    assert sorted(p.relative_to(root).as_posix() for p in deleted) == [
        "bank/old.json",
        "bank/old.wav",
        "gone/x.json",  # a tenant no longer configured keeps the default 30 days
        "gone/x.wav",
        "retail/old.json",
        "retail/old.wav",
    ]
    assert (root / "retail" / "new.wav").exists() and (root / "retail" / "new.json").exists()


async def test_the_retention_loop_sweeps_at_start(tmp_path):
    import asyncio

    root = tmp_path / "recordings"
    path = root / "default" / "a.wav"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    config = _config(enabled=True, retention_days=3)
    task = asyncio.create_task(
        recording.retention_loop(config, root, interval_s=3600, now=lambda: time.time() + 4 * 86_400)
    )
    for _ in range(200):
        if not path.exists():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert not path.exists()


async def test_a_later_leg_of_the_same_call_does_not_overwrite_the_first(tmp_path):
    """A call back from a failed transfer keeps its call id: its recording is CALLSID.2.wav."""
    paths = []
    for leg in (1, 2):
        rec = recording.CallRecorder(
            tmp_path / "t" / "CA1.wav", _FakeClock(), stereo=False, max_minutes=1, tenant="t", call_sid="CA1"
        )
        rec.caller(bytes([leg, 0]) * 800)
        paths.append(await rec.save([], "en-IN"))
    assert paths == [tmp_path / "t" / "CA1.wav", tmp_path / "t" / "CA1.2.wav"]
    for leg, path in enumerate(paths, 1):
        with wave.open(str(path), "rb") as w:
            assert w.readframes(1) == bytes([leg, 0])
        assert json.loads(path.with_suffix(".json").read_text())["duration_ms"] == 100
    assert recording.find_recording("t", "CA1", tmp_path) == paths[0]
