"""The voice gate: is a 20 ms frame of caller audio speech? (webrtcvad)

The rules that turn voiced and unvoiced frames into turns live in the sans-I/O turn core
(``agent/turns.py``); this is only the detector, so that the core can be tested on verdicts.
"""

from __future__ import annotations

import webrtcvad

from voxroute.agent.providers.base import FRAME_BYTES, SAMPLE_RATE


class VoiceGate:
    def __init__(self, mode: int = 2) -> None:
        self._vad = webrtcvad.Vad(mode)

    def is_voiced(self, pcm: bytes) -> bool:
        """``pcm``: one 20 ms frame of PCM16 at 8 kHz (anything else is not speech)."""
        if len(pcm) != FRAME_BYTES:
            return False
        return self._vad.is_speech(pcm, SAMPLE_RATE)
