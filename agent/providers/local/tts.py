"""Offline text-to-speech: Piper per sentence, espeak-ng for Hindi (the package docstring has the
whole picture)."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator

from voxroute.agent.providers.base import (
    SAMPLE_RATE,
    ProviderError,
)
from voxroute.agent.providers.local.common import ESPEAK_VOICES, TTS_NAME, resample_any
from voxroute.agent.providers.local.engines import PiperEngine
from voxroute.audio import PCM16_8K, PcmToWire, WireFormat, pcm_to_wire

# ---------------------------------------------------------------- TTS

_SENTENCE = re.compile(r"(?<=[.!?।])\s+")


def sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE.split(text)) if s]


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
