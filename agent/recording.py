"""Call recording, opt-in per tenant (``tenants.<name>.recording`` in the config).

A recorded call is two files under ``$VOXROUTE_DATA_DIR/recordings/<tenant>/``:

- ``<call_sid>.wav``: 8 kHz PCM16, mono (the caller) or stereo (left the caller, right the agent);
- ``<call_sid>.json``: the sidecar: channels, duration, and each turn's boundaries (the call log's
  timeline, ms from the call's start), without transcripts or replies.

The caller channel is the carrier's inbound frames end to end (carriers send frames through
silences too). The agent channel puts each piece of agent audio where it starts playing on the call
clock, as the player paces it, and drops what a barge-in ``clear`` flushed from the carrier.
While the call runs the audio is appended to two ``bytearray``s (at most ``max_minutes``); the WAV is
written by a worker thread when the call ends. :func:`sweep` deletes recordings older than the
tenant's ``retention_days``; :func:`retention_loop` runs it in the runtime's task group.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxroute.agent.calllog.database import data_dir
from voxroute.audio import WireFormat, WireToPcm
from voxroute.routing.route import Route

if TYPE_CHECKING:
    from voxroute.agent.config import Config, TenantRecordingConfig
    from voxroute.agent.link import CallStart, CarrierEvent, CarrierLink
    from voxroute.agent.timeline import Clock

log = logging.getLogger("voxroute.recording")

RATE = 8000
BYTES_PER_MS = 16  # PCM16 at 8 kHz
SIDECAR_VERSION = 1
_ZEROS = memoryview(bytes(BYTES_PER_MS * 1000))  # one second of silence, sliced without copying
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def recordings_dir(env: dict[str, str] | None = None) -> Path:
    return data_dir(env) / "recordings"


def _safe(name: str) -> str:
    """A file-name-safe form of a tenant or call id (they come from the carrier)."""
    cleaned = _UNSAFE.sub("_", name)[:128]
    return cleaned if cleaned.strip(".") else "_"


def recording_path(root: Path, tenant: str, call_sid: str) -> Path:
    return root / _safe(tenant) / f"{_safe(call_sid)}.wav"


def find_recording(tenant: Any, call_sid: Any, root: Path | None = None) -> Path | None:
    """The call's WAV if it was recorded (for the call page), else None."""
    if not isinstance(tenant, str) or not isinstance(call_sid, str):
        return None
    path = recording_path(root or recordings_dir(), tenant, call_sid)
    return path if path.is_file() else None


class CallRecorder:
    """One call's audio, held until the call ends. ``caller`` is called per inbound frame: it
    appends the bytes and nothing else."""

    def __init__(
        self, path: Path, clock: Clock, *, stereo: bool, max_minutes: int, tenant: str, call_sid: str
    ) -> None:
        self.path = path
        self.clock = clock
        self.stereo = stereo
        self.tenant = tenant
        self.call_sid = call_sid
        self.max_bytes = max_minutes * 60_000 * BYTES_PER_MS
        self._caller = bytearray()
        self._agent = bytearray()
        self.agent_bytes = 0  # agent audio handed to the carrier (before any clear)
        self.truncated = False

    @classmethod
    def for_call(
        cls,
        settings: TenantRecordingConfig,
        tenant: str,
        call_sid: str,
        clock: Clock,
        root: Path | None = None,
    ) -> CallRecorder | None:
        if not settings.enabled:
            return None
        return cls(
            recording_path(root or recordings_dir(), tenant, call_sid),
            clock,
            stereo=settings.channels == "both",
            max_minutes=settings.max_minutes,
            tenant=tenant,
            call_sid=call_sid,
        )

    # -- while the call runs

    def caller(self, pcm: bytes) -> None:
        if len(self._caller) < self.max_bytes:
            self._caller += pcm
        else:
            self.truncated = True

    def _now_byte(self) -> int:
        return int(self.clock.now()) * BYTES_PER_MS

    def agent(self, pcm: bytes) -> None:
        """Agent audio sent to the carrier now: it plays from now, or after what is still queued."""
        if not self.stereo:
            return
        self.agent_bytes += len(pcm)
        at = min(self._now_byte(), self.max_bytes)
        while len(self._agent) < at:  # silence since the agent last spoke
            self._agent += _ZEROS[: min(len(_ZEROS), at - len(self._agent))]
        if len(self._agent) + len(pcm) <= self.max_bytes:
            self._agent += pcm
        else:
            self.truncated = True

    def cleared(self) -> None:
        """The carrier flushed its queue (a barge-in): what had not played yet was never heard."""
        at = self._now_byte()
        if len(self._agent) > at:
            del self._agent[at:]

    def tap(self, link: CarrierLink) -> CarrierLink:
        """``link`` for the player: the agent audio it sends is recorded on the way (stereo only)."""
        return _RecordingLink(link, self) if self.stereo else link

    # -- when the call ends

    async def save(self, turns: list[dict[str, Any]], language: str) -> Path | None:
        """Write the WAV and its sidecar in a worker thread; None (and a log line) if that fails."""
        caller, agent = self._caller, self._agent  # handed to the thread, not copied
        self._caller, self._agent = bytearray(), bytearray()
        sidecar = {
            "version": SIDECAR_VERSION,
            "call_sid": self.call_sid,
            "tenant": self.tenant,
            "language": language,
            "rate": RATE,
            "channels": ["caller", "agent"] if self.stereo else ["caller"],
            "duration_ms": max(len(caller), len(agent)) // BYTES_PER_MS,
            "agent_audio_ms": self.agent_bytes // BYTES_PER_MS,
            "truncated": self.truncated,
            "turns": [turn_boundaries(t) for t in turns],
        }
        try:
            path = await asyncio.to_thread(
                write_recording, self.path, caller, agent if self.stereo else None, sidecar
            )
        except OSError as exc:
            log.error("call %s: recording not written to %s: %s", self.call_sid, self.path, exc)
            return None
        log.info("call %s recorded: %s (%d ms)", self.call_sid, path, sidecar["duration_ms"])
        return path


class _RecordingLink:
    """A carrier link that records the agent audio sent through it (and the clears).

    Agent audio goes out in the link's wire format (mu-law for Twilio, ...) and is decoded to PCM16
    8 kHz here, for the WAV: this decode is off the caller's path (the carrier gets the bytes as the
    TTS made them) and only runs on calls recorded in stereo (``tap``)."""

    def __init__(self, link: CarrierLink, recorder: CallRecorder) -> None:
        self._link = link
        self._recorder = recorder
        self._decoder = WireToPcm(link.audio_format)

    @property
    def start(self) -> CallStart:
        return self._link.start

    @property
    def audio_format(self) -> WireFormat:
        return self._link.audio_format

    def events(self) -> AsyncIterator[CarrierEvent]:
        return self._link.events()

    async def hangup(self) -> None:
        await self._link.hangup()

    async def send_audio(self, data: bytes) -> None:
        self._recorder.agent(self._decoder.decode(data))  # placed at "now": before the send awaits
        await self._link.send_audio(data)

    async def send_mark(self, name: str) -> None:
        await self._link.send_mark(name)

    async def clear(self) -> None:
        self._recorder.cleared()
        self._decoder.reset()
        await self._link.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)


def turn_boundaries(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn of the call log, reduced to what a recording needs: when things happened, no words."""
    route = Route.from_dict(turn.get("route"))
    return {
        "index": turn.get("index"),
        "kind": turn.get("kind"),
        "language": turn.get("language"),
        "class": route.routing_class if route else None,
        "timeline": dict(turn.get("timeline") or {}),
        "first_audio_ms": turn.get("first_audio_ms"),
        "interrupted": turn.get("interrupted"),
    }


def write_recording(
    path: Path, caller: bytes | bytearray, agent: bytes | bytearray | None, sidecar: dict[str, Any]
) -> Path:
    """The WAV (mono, or stereo interleaved: left ``caller``, right ``agent``) and its sidecar, each
    written to a temporary name and renamed (a reader never sees half a file). A call's later leg
    (back from a failed transfer, the same call id) goes to ``CALLSID.2.wav``, and so on. The WAV's
    path."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    leg = 1
    first = path
    while path.exists():
        leg += 1
        path = first.with_name(f"{first.stem}.{leg}.wav")
    if agent is None:
        frames, channels = caller, 1
    else:
        n = max(len(caller), len(agent)) // 2
        both = np.zeros((n, 2), "<i2")
        both[: len(caller) // 2, 0] = np.frombuffer(memoryview(caller)[: len(caller) // 2 * 2], "<i2")
        both[: len(agent) // 2, 1] = np.frombuffer(memoryview(agent)[: len(agent) // 2 * 2], "<i2")
        frames, channels = both.tobytes(), 2
    tmp = path.with_suffix(".wav.part")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(frames)
    os.replace(tmp, path)
    side = path.with_suffix(".json")
    tmp_side = path.with_suffix(".json.part")
    tmp_side.write_text(json.dumps(sidecar, indent=1), encoding="utf-8")
    os.replace(tmp_side, side)
    return path


# ---------------------------------------------------------------------------- retention


def expired(files: Iterable[tuple[Path, float]], now: float, retention_days: int) -> list[Path]:
    """Of (path, mtime) pairs, those older than ``retention_days`` at ``now`` (seconds)."""
    cutoff = now - retention_days * 86_400
    return [path for path, mtime in files if mtime < cutoff]


def retention_by_tenant(config: Config) -> dict[str, int]:
    return {_safe(name): t.recording.retention_days for name, t in config.tenants.items()}


def sweep(root: Path, retention: dict[str, int], now: float, default_days: int = 30) -> list[Path]:
    """Delete recordings (WAV and sidecar) older than their tenant's retention; the deleted paths.
    A folder of a tenant no longer configured keeps ``default_days``."""
    deleted: list[Path] = []
    if not root.is_dir():
        return deleted
    for tenant_dir in root.iterdir():
        if not tenant_dir.is_dir():
            continue
        files = []
        for path in tenant_dir.iterdir():
            if path.suffix in (".wav", ".json", ".part"):
                try:
                    files.append((path, path.stat().st_mtime))
                except FileNotFoundError:
                    continue
        for path in expired(files, now, retention.get(tenant_dir.name, default_days)):
            try:
                path.unlink()
                deleted.append(path)
            except FileNotFoundError:
                pass
    return deleted


async def retention_loop(
    config: Config, root: Path | None = None, interval_s: float = 3600.0, now: Callable[[], float] = time.time
) -> None:
    """Sweeps the recordings folder at start and every ``interval_s`` until cancelled."""
    root = root or recordings_dir()
    retention = retention_by_tenant(config)
    while True:
        try:
            deleted = await asyncio.to_thread(sweep, root, retention, now())
            if deleted:
                log.info("recording retention: deleted %d files under %s", len(deleted), root)
        except OSError as exc:
            log.error("recording retention: sweep of %s failed: %s", root, exc)
        await asyncio.sleep(interval_s)
