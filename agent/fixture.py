"""Fixture calls (format version 1, see docs/design.md): a caller-side WAV plus a JSON script.

The WAV is 8 kHz mu-law mono. Python's ``wave`` cannot read mu-law, so RIFF chunks are
parsed here (sox writes an 18-byte ``fmt `` chunk and a ``fact`` chunk).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FIXTURES_DIR = Path(
    os.environ.get("VOXROUTE_FIXTURES", Path(__file__).resolve().parent.parent / "fixtures" / "audio")
)

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_MULAW = 7
STT_MODES = ("audio", "transcripts")  # a script's ``stt``: how the emulated STT finds the words


class FixtureError(ValueError):
    """A fixture file is missing or malformed; the message names the file and the field."""


class ExpectTool(BaseModel):
    """The tool call the caller's words should lead to: the LLM emulator makes it (scripted), and a
    replay can check that the runtime ran it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict)


class Utterance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_ms: int | None = Field(default=None, ge=0)
    end_ms: int | None = Field(default=None, ge=0)
    text: str | None = None
    language: str | None = None
    expect_class: str | None = None
    expect_tool: ExpectTool | None = None  # format 1, optional: the tool call these words lead to
    dtmf: str | None = Field(default=None, pattern=r"^[0-9*#A-D]+$")
    play: Literal["after_agent", "barge_in"] = "after_agent"
    gap_ms: int = Field(default=700, ge=0)
    offset_ms: int = Field(default=900, ge=0)
    # False: caller sound over the agent that must not interrupt it (a backchannel, a cough); no turn.
    expect_turn: bool = True

    @model_validator(mode="after")
    def _audio_or_dtmf(self) -> Utterance:
        if self.dtmf is None:
            if self.start_ms is None or self.end_ms is None or self.text is None:
                raise ValueError("an audio utterance needs start_ms, end_ms and text (or give dtmf)")
            if self.end_ms <= self.start_ms:
                raise ValueError("end_ms must be after start_ms")
        return self

    @property
    def is_dtmf(self) -> bool:
        return self.dtmf is not None


class FixtureScript(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    call: str
    audio: str
    language: str = "en-IN"
    tenant: str = "default"
    from_: str = Field(default="+919800000000", alias="from")
    # format 1, optional: the agent speaks first (a tenant greeting): the first ``after_agent`` item
    # starts ``gap_ms`` after the greeting has played, not after the call connects.
    agent_first: bool = False
    # format 1, optional: how the call should end (``voxroute replay --assert`` checks it)
    expect_end: Literal["completed", "handoff"] | None = None
    # format 1, optional: False for a fixture made from a recording (agent/fixturegen.py) whose
    # transcripts and expectations no person has checked yet; absent: written by hand
    reviewed: bool | None = None
    # format 1, optional: what the emulated STT says. "audio" (the default): it recognises the
    # fixture's audio by matching its bytes. "transcripts": the replayer hands it the utterances'
    # texts and timing for this call, and it says them as the utterances' speech arrives (a recorded
    # call replays with its reviewed words; its audio is unknown to the matcher).
    stt: Literal["audio", "transcripts"] = "audio"
    utterances: list[Utterance] = Field(min_length=1)

    @field_validator("stt", mode="before")
    @classmethod
    def _stt_mode(cls, value: Any) -> Any:
        if value not in STT_MODES:
            raise ValueError(
                f"stt must be one of {', '.join(repr(m) for m in STT_MODES)} "
                f"('transcripts': replay the utterances' texts by timing; 'audio', the default: "
                f"recognise the audio), got {value!r}"
            )
        return value

    def language_of(self, utt: Utterance) -> str:
        return utt.language or self.language


class Fixture:
    """A loaded fixture: the script, and the caller audio as raw mu-law bytes."""

    def __init__(self, script: FixtureScript, ulaw: bytes, json_path: Path) -> None:
        self.script = script
        self.ulaw = ulaw
        self.json_path = json_path

    @property
    def name(self) -> str:
        return self.script.call

    def utterance_audio(self, utt: Utterance) -> bytes:
        """The mu-law bytes of one utterance (8 bytes per ms)."""
        assert utt.start_ms is not None and utt.end_ms is not None
        return self.ulaw[utt.start_ms * 8 : utt.end_ms * 8]


def read_wav(path: Path) -> tuple[int, int, int, bytes]:
    """Return (format tag, sample rate, channels, data) of a RIFF/WAVE file, reading chunks properly."""
    raw = path.read_bytes()
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise FixtureError(f"{path}: not a RIFF/WAVE file")
    pos, fmt, data = 12, None, None
    while pos + 8 <= len(raw):
        cid, size = raw[pos : pos + 4], struct.unpack_from("<I", raw, pos + 4)[0]
        body = raw[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise FixtureError(f"{path}: fmt chunk too short")
            tag, channels, rate = struct.unpack_from("<HHI", body, 0)
            bits = struct.unpack_from("<H", body, 14)[0]
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: real tag in the sub-format GUID
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (tag, rate, channels, bits)
        elif cid == b"data":
            data = body
        pos += 8 + size + (size & 1)
    if fmt is None or data is None:
        raise FixtureError(f"{path}: missing fmt or data chunk")
    return fmt[0], fmt[1], fmt[2], data


def write_ulaw_wav(path: Path, ulaw: bytes, rate: int = 8000) -> None:
    """Write 8-bit mu-law mono as a WAV with a fact chunk (as sox does)."""
    fmt = struct.pack("<HHIIHHH", WAVE_FORMAT_MULAW, 1, rate, rate, 1, 8, 0)
    fact = struct.pack("<I", len(ulaw))
    pad = b"\x00" if len(ulaw) & 1 else b""
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<I", 4)
        + fact
        + b"data"
        + struct.pack("<I", len(ulaw))
        + ulaw
        + pad
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def resolve(name_or_path: str | Path) -> Path:
    """A fixture name (``billing_dispute``) or the path of its .json or .wav -> the .json path."""
    p = Path(name_or_path)
    if p.suffix in (".json", ".wav") and p.exists():
        return p.with_suffix(".json") if p.suffix == ".wav" else p
    candidate = FIXTURES_DIR / f"{name_or_path}.json"
    if candidate.exists():
        return candidate
    raise FixtureError(f"no fixture named {name_or_path!r} (looked for {p} and {candidate})")


def load(name_or_path: str | Path) -> Fixture:
    json_path = resolve(name_or_path)
    try:
        script = FixtureScript.model_validate(json.loads(json_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError) as exc:
        raise FixtureError(f"{json_path}: {exc}") from exc
    wav_path = json_path.parent / script.audio
    if not wav_path.exists():
        raise FixtureError(f"{json_path}: audio file {wav_path} not found")
    tag, rate, channels, data = read_wav(wav_path)
    if tag != WAVE_FORMAT_MULAW or rate != 8000 or channels != 1:
        raise FixtureError(
            f"{wav_path}: expected 8 kHz mu-law mono, got format {tag}, {rate} Hz, {channels} ch"
        )
    for i, utt in enumerate(script.utterances):
        if utt.end_ms is not None and utt.end_ms * 8 > len(data):
            raise FixtureError(f"{json_path}: utterances[{i}].end_ms is past the end of the audio")
    return Fixture(script, data, json_path)


def all_fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES_DIR.glob("*.json"))
