"""``voxroute fixture from-wav`` (agent/fixturegen.py): a recording becomes a fixture.

The segmentation and the timing are sans-I/O (per-frame voice verdicts in, utterances out); the
end-to-end tests take a committed fixture's audio, mono and as a 16 kHz stereo recording with an
agent channel, and check the utterances, their Whisper transcripts (within 15 % word error of the
script) and the inferred gaps. Those need the ``voxroute[local]`` extra (marked ``local``)."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest

from voxroute.agent.fixture import load
from voxroute.agent.fixturegen import FRAME_MS, LEAD_MS, TAIL_MS, segment
from voxroute.audio import ulaw_to_pcm16


def _verdicts(n: int, *spans: tuple[int, int]) -> list[bool]:
    """n frames, voiced in each [first, last] (frame indices)."""
    out = [False] * n
    for first, last in spans:
        out[first : last + 1] = [True] * (last - first + 1)
    return out


def test_utterances_are_voiced_runs_joined_across_short_pauses():
    # 20 ms frames: speech 20-60, a 300 ms pause, 76-100; a 1 s pause; 151-170; a 100 ms blip at 250.
    caller = _verdicts(300, (20, 60), (76, 100), (151, 170), (250, 254))
    got = segment(caller, None, pause_ms=700, min_speech_ms=200)
    assert [(s.start_ms, s.end_ms) for s in got] == [
        (20 * FRAME_MS - LEAD_MS, 101 * FRAME_MS + TAIL_MS),
        (151 * FRAME_MS - LEAD_MS, 171 * FRAME_MS + TAIL_MS),
    ]
    # Mono: the first waits from the call's start, a later one the format's default gap.
    assert [s.gap_ms for s in got] == [20 * FRAME_MS - LEAD_MS, 700]


def test_gaps_come_from_the_agent_channel():
    caller = _verdicts(400, (20, 60), (150, 190), (300, 340))
    agent = _verdicts(400, (80, 120), (210, 280), (345, 360))  # the last is the agent after the caller
    got = segment(caller, agent)
    # A slice (its lead-in included) starts gap_ms after the end of the agent's last voiced frame.
    assert [s.gap_ms for s in got] == [
        20 * FRAME_MS - LEAD_MS,
        150 * FRAME_MS - LEAD_MS - 121 * FRAME_MS,
        300 * FRAME_MS - LEAD_MS - 281 * FRAME_MS,
    ]
    assert [s.after_agent_audio for s in got] == [False, True, True]
    # The caller speaking again with no agent words between: the pause since its own words.
    got = segment(_verdicts(200, (10, 40), (100, 130)), _verdicts(200))
    assert [s.gap_ms for s in got] == [10 * FRAME_MS - LEAD_MS, 100 * FRAME_MS - LEAD_MS - 41 * FRAME_MS]


@pytest.mark.local
def test_a_committed_fixture_round_trips_mono(tmp_path):
    pytest.importorskip("faster_whisper", reason="the voxroute[local] extra is not installed")
    from typer.testing import CliRunner

    from tests.test_local_stack import wer
    from voxroute.cli import app

    source = load("order_status")
    result = CliRunner().invoke(
        app, ["fixture", "from-wav", str(source.json_path.with_suffix(".wav")), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    made = load(tmp_path / "order_status.json")
    script = json.loads((tmp_path / "order_status.json").read_text())
    assert script["reviewed"] is False and made.script.reviewed is False
    want = [u for u in source.script.utterances if not u.is_dtmf]
    got = made.script.utterances
    assert len(got) == len(want)
    # Each slice holds its scripted words (the script's slices hold 100 ms of silence each side)
    # and none of the next utterance's.
    voice = [(w.start_ms + 100, w.end_ms - 100) for w in want]
    for i, g in enumerate(got):
        assert g.start_ms <= voice[i][0] and g.end_ms >= voice[i][1], (g, voice[i])
        assert i + 1 == len(got) or g.end_ms < voice[i + 1][0]
        assert g.play == "after_agent"
    rate = wer(" ".join(w.text for w in want), " ".join(g.text for g in got))
    assert rate <= 0.15, (rate, [g.text for g in got])
    # 8 kHz mu-law in: the same samples out (padded to whole 20 ms frames)
    assert len(made.ulaw) == len(source.ulaw) + (-len(source.ulaw) % 160)
    assert ulaw_to_pcm16(made.ulaw[: len(source.ulaw)]) == ulaw_to_pcm16(source.ulaw)


@pytest.mark.local
def test_a_stereo_16k_recording_infers_the_gaps_after_the_agent(tmp_path):
    pytest.importorskip("faster_whisper", reason="the voxroute[local] extra is not installed")
    from tests.test_local_stack import wer
    from voxroute.agent.fixturegen import from_wav
    from voxroute.agent.providers.local import resample_any

    caller_fx, agent_fx = load("order_status"), load("billing_dispute")

    def voiced_part(fx, utt) -> np.ndarray:  # the fixture slices hold 100 ms of silence each side
        pcm = np.frombuffer(ulaw_to_pcm16(fx.utterance_audio(utt)), "<i2")
        return pcm[800:-800]

    # A call: caller, 700 ms, agent, 600 ms, caller, 700 ms, agent, 900 ms, caller (8 kHz samples).
    caller_parts = [voiced_part(caller_fx, u) for u in caller_fx.script.utterances]
    agent_parts = [voiced_part(agent_fx, u) for u in agent_fx.script.utterances[:2]]
    gaps = [600, 900]
    left, right = [np.zeros(4000, "<i2")], [np.zeros(4000, "<i2")]
    for i, said in enumerate(caller_parts):
        left.append(said)
        right.append(np.zeros(len(said), "<i2"))
        if i < len(agent_parts):
            quiet = np.zeros(5600, "<i2")
            left += [quiet, np.zeros(len(agent_parts[i]) + gaps[i] * 8, "<i2")]
            right += [quiet, agent_parts[i], np.zeros(gaps[i] * 8, "<i2")]
    left.append(np.zeros(4000, "<i2"))
    right.append(np.zeros(4000, "<i2"))
    l16 = np.frombuffer(resample_any(np.concatenate(left).tobytes(), 8000, 16000), "<i2")
    r16 = np.frombuffer(resample_any(np.concatenate(right).tobytes(), 8000, 16000), "<i2")
    path = tmp_path / "call.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.stack([l16, r16], axis=1).astype("<i2").tobytes())

    made = load(from_wav(path, tmp_path / "out", channel=0))
    got = made.script.utterances
    assert len(got) == 3 and made.script.reviewed is False and not made.script.agent_first
    # The slice starts LEAD_MS before the words; the voice gate (20 ms frames) hears a word's onset
    # and the agent's last syllable a few frames late: within 100 ms.
    assert got[0].gap_ms == pytest.approx(500 - LEAD_MS, abs=100), [u.gap_ms for u in got]
    for g, want in zip(got[1:], gaps, strict=True):
        assert g.gap_ms == pytest.approx(want - LEAD_MS, abs=100), [u.gap_ms for u in got]
    rate = wer(" ".join(u.text for u in caller_fx.script.utterances), " ".join(u.text for u in got))
    assert rate <= 0.15, (rate, [u.text for u in got])

    # The agent on the left: --channel 1 takes the right as the caller's.
    swapped = tmp_path / "swapped.wav"
    with wave.open(str(swapped), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.stack([r16, l16], axis=1).astype("<i2").tobytes())
    again = load(from_wav(swapped, tmp_path / "out", channel=1))
    assert [(u.start_ms, u.gap_ms) for u in again.script.utterances] == [(u.start_ms, u.gap_ms) for u in got]


@pytest.mark.local
async def test_a_recorded_call_comes_back_as_a_fixture_that_replays_alike(tmp_path, monkeypatch):
    """Issue 17's round trip: a fixture replayed on the offline stack with stereo recording on; the
    recording through from-wav (the caller's words within 15 % word error of the original script)
    and from-call (the same, with the routes as expect_class); that fixture replayed: as many
    turns, the same routes, every expectation met."""
    pytest.importorskip("faster_whisper", reason="the voxroute[local] extra is not installed")
    pytest.importorskip("piper", reason="the voxroute[local] extra is not installed")
    import asyncio

    import yaml
    from typer.testing import CliRunner

    from tests.test_calllog import until
    from tests.test_local_stack import wer
    from voxroute.agent.config import DEFAULT_CONFIG_PATH, parse_config
    from voxroute.agent.fixturegen import from_wav
    from voxroute.cli import app
    from voxroute.replay import local_stack, replay_fixture
    from voxroute.testing import fixture_failures

    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path))
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["tenants"]["default"]["recording"] = {"enabled": True, "channels": "both"}
    config = parse_config(data)
    original = load("order_status")
    # One server for both replays: the second fixture adds nothing the first stack's emulators lack
    # (from-call writes no expect_tool; the STT is Whisper), and a local stack's start and stop
    # (the engine workers, Whisper and Piper loaded, the phrases synthesised) took ~10 s each.
    async with local_stack(fixtures=[original], config=config, stack="local") as stack:
        first = await replay_fixture(original, stack.server_url, config=stack.config)
        assert first["ended"] == "completed", first.get("error")
        # the recording is written as the call ends, before the call is a finished one
        await until(lambda: first["call_sid"] in stack.services.finished, 10.0, "the recording written")
        recorded = tmp_path / "recordings" / "default" / f"{first['call_sid']}.wav"
        made = load(await asyncio.to_thread(from_wav, recorded, tmp_path / "fixtures", name="round_trip"))
        said = made.script.utterances
        assert len(said) == len(original.script.utterances) and not made.script.agent_first
        rate = wer(" ".join(u.text for u in original.script.utterances), " ".join(u.text for u in said))
        assert rate <= 0.15, (rate, [u.text for u in said])

        # fixture from-call: the same, found by the call's id, with the routes as expectations.
        out = tmp_path / "from_call"
        cli = await asyncio.to_thread(
            CliRunner().invoke, app, ["fixture", "from-call", first["call_sid"], "--out", str(out)]
        )
        assert cli.exit_code == 0, cli.output
        logged = load(out / f"{first['call_sid']}.json")
        assert logged.script.reviewed is False
        assert [(u.start_ms, u.end_ms, u.text) for u in logged.script.utterances] == [
            (u.start_ms, u.end_ms, u.text) for u in said
        ]
        assert [u.expect_class for u in logged.script.utterances] == [
            t["route"]["class"] for t in first["turns"]
        ]
        assert not any(u.expect_tool for u in logged.script.utterances)  # (the one server, above)

        second = await replay_fixture(logged, stack.server_url, config=stack.config)
    assert second["ended"] == "completed", second.get("error")
    assert len(second["turns"]) == len(first["turns"])
    assert [t["route"]["class"] for t in second["turns"]] == [t["route"]["class"] for t in first["turns"]]
    assert fixture_failures(logged, second) == []  # what voxroute replay --assert checks


def test_from_call_names_what_is_missing(tmp_path):
    from voxroute.agent.fixture import FixtureError
    from voxroute.agent.fixturegen import from_call

    with pytest.raises(FixtureError, match=r"no recording of call CA404 under .* \(is recording on"):
        from_call("CA404", tmp_path / "out", root=tmp_path / "recordings")
    (tmp_path / "recordings" / "default").mkdir(parents=True)
    (tmp_path / "recordings" / "default" / "CA1.wav").write_bytes(b"RIFF")
    with pytest.raises(FixtureError, match="sidecar is unreadable"):
        from_call("CA1", tmp_path / "out", root=tmp_path / "recordings")
