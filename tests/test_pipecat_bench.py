"""bench/vs_pipecat.py in short (issue 16): two calls per system, so that the side-by-side benchmark
cannot rot. Its figures are the benchmark's to report; here: every key, every system heard, and
voxroute keeps its promise of no dead air."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pipecat", reason="needs the pipecat extra: pip install -e '.[pipecat]'")

from bench import vs_pipecat  # noqa: E402

KEYS = {
    "turns",
    "within_budget",
    "first_audio_ms_p50",
    "first_audio_ms_p95",
    "dead_air_turns",
    "calls_ended_early",
    "cost_per_call",
    "calls_per_core",
    "cpu_ms_per_call_second",
}


@pytest.mark.slow
async def test_two_calls_per_system(tmp_path):
    result = await vs_pipecat.run(2, "reference", 3)
    assert set(result["systems"]) == {"pipecat", "pipecat_voxroute", "voxroute"}
    for name, s in result["systems"].items():
        assert KEYS <= set(s), name
        assert s["turns"] > 0 and s["first_audio_ms_p50"] is not None, (name, s)
        assert s["cpu_ms_per_call_second"] > 0
    assert result["systems"]["voxroute"]["dead_air_turns"] == 0
    assert result["systems"]["voxroute"]["calls_ended_early"] == 0
    assert result["systems"]["voxroute"]["cost_per_call"] > 0
    path = tmp_path / "vs.json"
    path.write_text(json.dumps(result))
    assert "| voxroute |" in vs_pipecat.table(json.loads(path.read_text()))
