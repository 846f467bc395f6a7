"""A recording becomes a fixture: ``voxroute fixture from-wav PATH.wav [--channel N] [--out DIR]``.

The WAV may be mono or stereo (a dual-channel carrier recording, or voxroute's own recording with
``channels: both``: left the caller, right the agent), PCM 8/16/24/32-bit, float or mu-law, at any
rate. The caller's channel (``--channel``, 0 = left) is resampled to 8 kHz and cut into utterances
by the runtime's own voice gate (agent/endpointing.py, webrtcvad at ``endpoint.vad_mode``): voiced
runs joined across pauses shorter than ``pause_ms``, runs shorter than ``min_speech_ms`` dropped.
Each utterance is transcribed by the offline STT (faster-whisper, agent/providers/local/). Its
``play`` mode is ``after_agent``; with a stereo file the other channel is the agent, and ``gap_ms``
is how long after the agent last spoke the utterance's slice begins (as a replay plays it; mono:
the format's default 700 ms). The fixture (format v1, ``reviewed: false`` until a person checks the transcripts) is
written with its audio as 8 kHz mu-law mono, and ``stt: transcripts``: a replay through the
emulated Sarvam says those transcripts (as reviewed) by timing, since no audio of the emulator's
scripts matches a recording's.
"""

from __future__ import annotations

import asyncio
import json
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxroute.agent.endpointing import VoiceGate
from voxroute.agent.fixture import FixtureError, FixtureScript, read_wav, write_ulaw_wav
from voxroute.audio import FRAME_BYTES, pcm16_to_ulaw, ulaw_to_pcm16

FRAME_MS = 20
LEAD_MS = 100  # silence kept before an utterance's first voiced frame (as the committed fixtures)
TAIL_MS = 120  # and after its last
DEFAULT_GAP_MS = 700  # a mono recording's utterance that follows a previous one: the format's default


@dataclass
class Segment:
    start_ms: int
    end_ms: int
    gap_ms: int
    after_agent_audio: bool = False  # the agent spoke between the previous words and these


def read_channels(path: Path) -> tuple[int, np.ndarray]:
    """(sample rate, samples as float64 on the PCM16 scale, shape (frames, channels))."""
    tag, rate, channels, data = read_wav(path)
    if tag == 7:  # mu-law
        x = np.frombuffer(ulaw_to_pcm16(data), "<i2").astype(np.float64)
    elif tag == 3:  # 32-bit float
        x = np.frombuffer(data[: len(data) // 4 * 4], "<f4").astype(np.float64) * 32767
    elif tag == 1:
        with wave.open(str(path), "rb") as w:
            width = w.getsampwidth()
        if width == 3:
            raw = np.frombuffer(data[: len(data) // 3 * 3], "u1").reshape(-1, 3).astype(np.int32)
            x = ((raw[:, 0] << 8 | raw[:, 1] << 16 | raw[:, 2] << 24) >> 16).astype(np.float64)
        elif width in (1, 2, 4):
            dtype = {1: "u1", 2: "<i2", 4: "<i4"}[width]
            x = np.frombuffer(data[: len(data) // width * width], dtype).astype(np.float64)
            x = (x - 128) * 256 if width == 1 else x / (65536 if width == 4 else 1)
        else:
            raise FixtureError(f"{path}: unsupported sample width {width} bytes")
    else:
        raise FixtureError(f"{path}: unsupported WAV format {tag} (use PCM, float or mu-law)")
    if channels < 1 or rate < 1000:
        raise FixtureError(f"{path}: {channels} channels at {rate} Hz is not audio we can use")
    return rate, x[: len(x) // channels * channels].reshape(-1, channels)


def to_8k(samples: np.ndarray, rate: int) -> bytes:
    """One channel -> PCM16 8 kHz, padded to whole 20 ms frames."""
    from voxroute.agent.providers.local import resample_any

    pcm = resample_any(np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes(), rate, 8000)
    return pcm + b"\x00" * (-len(pcm) % FRAME_BYTES)


def voiced_frames(pcm: bytes, vad_mode: int) -> list[bool]:
    gate = VoiceGate(vad_mode)
    return [gate.is_voiced(pcm[i : i + FRAME_BYTES]) for i in range(0, len(pcm), FRAME_BYTES)]


def segment(
    caller: list[bool], agent: list[bool] | None, *, pause_ms: int = 700, min_speech_ms: int = 200
) -> list[Segment]:
    """The caller's utterances from its per-frame voice verdicts; ``gap_ms`` from the agent's
    verdicts (same frames) when there are any."""
    runs: list[list[int]] = []  # [first, last] voiced frame of each utterance
    for i, v in enumerate(caller):
        if not v:
            continue
        if runs and (i - runs[-1][1]) * FRAME_MS < pause_ms:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    runs = [r for r in runs if (r[1] - r[0] + 1) * FRAME_MS >= min_speech_ms]
    n = len(caller)
    out: list[Segment] = []
    prev_end_frame = 0  # the frame after the previous utterance's last voiced one
    for first, last in runs:
        start_ms = max(0, first * FRAME_MS - LEAD_MS)
        end_ms = min(n * FRAME_MS, (last + 1) * FRAME_MS + TAIL_MS)
        agent_last = None
        if agent is not None:
            agent_last = next((j for j in range(first - 1, prev_end_frame - 1, -1) if agent[j]), None)
        # A replay plays the utterance's slice (lead-in included) gap_ms after the agent's reply ended.
        if agent_last is not None:  # the caller answered the agent
            gap = start_ms - (agent_last + 1) * FRAME_MS
        elif not out:  # first words, nobody spoke before: the time since the call connected
            gap = start_ms
        else:
            gap = start_ms - prev_end_frame * FRAME_MS if agent is not None else DEFAULT_GAP_MS
        out.append(Segment(start_ms, end_ms, max(0, gap), agent_last is not None))
        prev_end_frame = last + 1
    return out


async def transcribe(pieces: list[bytes]) -> list[str]:
    """Each piece (PCM16 8 kHz) through the offline Whisper, in one worker process."""
    from voxroute.agent.providers.local import WhisperEngine

    engine = WhisperEngine(processes=1)
    try:
        texts = []
        for pcm in pieces:
            text, _confidence = await engine.submit("transcribe", pcm)
            texts.append(text.strip())
        return texts
    finally:
        await asyncio.to_thread(engine.close)


def from_wav(
    path: Path,
    out_dir: Path,
    *,
    channel: int = 0,
    name: str | None = None,
    language: str = "en-IN",
    tenant: str = "default",
    pause_ms: int = 700,
    min_speech_ms: int = 200,
    vad_mode: int = 2,
) -> Path:
    """Write ``out_dir/NAME.json`` and ``NAME.wav`` from a recording; the JSON's path."""
    rate, samples = read_channels(path)
    if not 0 <= channel < samples.shape[1]:
        raise FixtureError(f"{path}: no channel {channel} (it has {samples.shape[1]}; 0 is the first)")
    caller = to_8k(samples[:, channel], rate)
    agent = None
    if samples.shape[1] == 2:
        agent = to_8k(samples[:, 1 - channel], rate)
    segments = segment(
        voiced_frames(caller, vad_mode),
        voiced_frames(agent, vad_mode) if agent is not None else None,
        pause_ms=pause_ms,
        min_speech_ms=min_speech_ms,
    )
    if not segments:
        raise FixtureError(f"{path}: no speech found on channel {channel}")
    texts = asyncio.run(transcribe([caller[s.start_ms * 16 : s.end_ms * 16] for s in segments]))
    name = name or path.stem
    script: dict[str, Any] = {
        "version": 1,
        "call": name,
        "audio": f"{name}.wav",
        "language": language,
        "tenant": tenant,
        "reviewed": False,
        # Replayed with these words (reviewed), said by timing: the emulated STT knows no such audio.
        "stt": "transcripts",
        "agent_first": segments[0].after_agent_audio,  # a greeting before the caller's first words
        "utterances": [
            {
                "start_ms": s.start_ms,
                "end_ms": s.end_ms,
                "text": text,
                "language": language,
                "play": "after_agent",
                "gap_ms": s.gap_ms,
            }
            for s, text in zip(segments, texts, strict=True)
        ],
    }
    FixtureScript.model_validate(script)  # what we write, the loader takes
    out_dir.mkdir(parents=True, exist_ok=True)
    wav_out, json_out = out_dir / f"{name}.wav", out_dir / f"{name}.json"
    if wav_out.resolve() == path.resolve():
        raise FixtureError(f"{wav_out} is the recording itself: choose another --out or --name")
    write_ulaw_wav(wav_out, pcm16_to_ulaw(caller))
    json_out.write_text(json.dumps(script, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return json_out


def from_call(
    call_sid: str, out_dir: Path, *, root: Path | None = None, name: str | None = None, **options: Any
) -> tuple[Path, bool]:
    """A recorded call (agent/recording.py) as a fixture: :func:`from_wav` on its recording, the
    language and tenant from its sidecar, and each utterance's ``expect_class`` from the class its
    turn was routed to (the sidecar holds the call log's turns). (the JSON's path, whether the
    caller's spoken turns and the utterances found paired one to one: if not, no expectations)."""
    from voxroute.agent.recording import recording_path, recordings_dir

    root = root or recordings_dir()
    found = sorted(root.glob(f"*/{recording_path(root, '_', call_sid).name}")) if root.is_dir() else []
    if not found:
        raise FixtureError(f"no recording of call {call_sid} under {root} (is recording on for its tenant?)")
    wav = found[0]
    try:
        sidecar = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FixtureError(
            f"{wav.with_suffix('.json')}: the recording's sidecar is unreadable: {exc}"
        ) from None
    json_path = from_wav(
        wav,
        out_dir,
        name=name or wav.stem,
        language=sidecar.get("language") or "en-IN",
        tenant=sidecar.get("tenant") or "default",
        **options,
    )
    script = json.loads(json_path.read_text(encoding="utf-8"))
    spoken = [t for t in sidecar.get("turns", []) if t.get("kind") == "speech"]
    paired = len(spoken) == len(script["utterances"])
    if paired:
        for utt, turn in zip(script["utterances"], spoken, strict=True):
            if turn.get("class"):
                utt["expect_class"] = turn["class"]
        FixtureScript.model_validate(script)
        json_path.write_text(json.dumps(script, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return json_path, paired
