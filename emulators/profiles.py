"""Latency profiles and fault injection shared by every emulator.

Numbers are docs/design.md's "reference latency profile". A profile is deterministic given a
seed: each emulator owns one :class:`Dice` (a seeded RNG) and draws per request.

Faults can also be forced: an emulator keeps a queue of forced faults per service
(``force("llm", "http_500")``) that the next requests take in order, for tests that need
one exact failure.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

# Fault names the emulators inject. The client sees them as these FaultKinds (agent.providers.base):
# http_500 -> http_500, http_429 -> http_429, error_midstream -> stream_error, hang -> timeout,
# stall -> stall (or timeout), malformed -> malformed, drop -> disconnected.
EMULATED_FAULTS = ("http_500", "http_429", "error_midstream", "hang", "stall", "malformed", "drop")


@dataclass(frozen=True)
class Latency:
    """A latency distribution: lognormal fitted to a median and a p95 (seconds)."""

    median: float
    p95: float

    def draw(self, rng: random.Random) -> float:
        if self.median <= 0:
            return 0.0
        if self.p95 <= self.median:
            return self.median
        sigma = math.log(self.p95 / self.median) / 1.6449
        return rng.lognormvariate(math.log(self.median), sigma)


@dataclass(frozen=True)
class Profile:
    name: str
    stt_final_s: float = 0.0  # STT final after end of speech
    stt_partial_every_s: float = 0.2
    llm_fast_ttft: Latency = Latency(0.0, 0.0)
    llm_fast_tps: float = 0.0  # tokens per second; 0 = as fast as possible
    llm_reasoning_ttft: Latency = Latency(0.0, 0.0)
    llm_reasoning_tps: float = 0.0
    tts_first_audio: Latency = Latency(0.0, 0.0)
    # per-request fault probabilities (LLM and TTS requests)
    request_faults: dict[str, float] = field(default_factory=dict)
    # per-call (per socket) probabilities of a dropped socket
    stt_drop: float = 0.0
    tts_drop: float = 0.0


ZERO = Profile("zero")

REFERENCE = Profile(
    "reference",
    stt_final_s=0.25,
    stt_partial_every_s=0.2,
    llm_fast_ttft=Latency(0.35, 0.70),
    llm_fast_tps=60.0,
    llm_reasoning_ttft=Latency(1.2, 3.0),
    llm_reasoning_tps=40.0,
    tts_first_audio=Latency(0.15, 0.30),
)

CHAOS = Profile(
    "chaos",
    stt_final_s=REFERENCE.stt_final_s,
    stt_partial_every_s=REFERENCE.stt_partial_every_s,
    llm_fast_ttft=REFERENCE.llm_fast_ttft,
    llm_fast_tps=REFERENCE.llm_fast_tps,
    llm_reasoning_ttft=REFERENCE.llm_reasoning_ttft,
    llm_reasoning_tps=REFERENCE.llm_reasoning_tps,
    tts_first_audio=REFERENCE.tts_first_audio,
    request_faults={
        "http_500": 0.03,
        "http_429": 0.02,
        "error_midstream": 0.01,
        "hang": 0.01,
        "stall": 0.01,
        "malformed": 0.005,
    },
    stt_drop=0.01,
    tts_drop=0.01,
)

PROFILES = {p.name: p for p in (ZERO, REFERENCE, CHAOS)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown latency profile {name!r}; choose one of {sorted(PROFILES)}") from None


class Dice:
    """Seeded draws for one emulator, plus forced faults queued by tests."""

    def __init__(self, profile: Profile, seed: int = 0) -> None:
        self.profile = profile
        self.rng = random.Random(seed)
        self._forced: dict[str, deque[str]] = {}

    def force(self, service: str, fault: str) -> None:
        """The next request to ``service`` ("llm", "tts", "stt") gets ``fault``."""
        if fault not in EMULATED_FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {EMULATED_FAULTS}")
        self._forced.setdefault(service, deque()).append(fault)

    def request_fault(self, service: str) -> str | None:
        """A fault for this request, or None. Forced faults first, then the profile's odds."""
        forced = self._forced.get(service)
        if forced:
            return forced.popleft()
        roll = self.rng.random()
        acc = 0.0
        for fault, p in self.profile.request_faults.items():
            acc += p
            if roll < acc:
                return fault
        return None

    def socket_drop(self, service: str) -> bool:
        forced = self._forced.get(service)
        if forced and forced[0] == "drop":
            forced.popleft()
            return True
        p = self.profile.stt_drop if service == "stt" else self.profile.tts_drop
        return p > 0 and self.rng.random() < p

    def llm_timing(self, reasoning: bool) -> tuple[float, float]:
        """(time to first token in s, tokens per second; 0 = unthrottled)."""
        if reasoning:
            return self.profile.llm_reasoning_ttft.draw(self.rng), self.profile.llm_reasoning_tps
        return self.profile.llm_fast_ttft.draw(self.rng), self.profile.llm_fast_tps

    def tts_first_audio(self) -> float:
        return self.profile.tts_first_audio.draw(self.rng)


@dataclass
class FaultRecord:
    """One injected fault, as an emulator reports it on ``GET /_emulator/faults``."""

    service: str
    fault: str
    tag: str | None  # the client's X-Voxroute-Tag header, when it sent one
    at: float  # time.monotonic() when injected
    model: str | None = None  # the LLM emulator's: the model the request asked for

    def as_dict(self) -> dict:
        out = {"service": self.service, "fault": self.fault, "tag": self.tag, "at": self.at}
        return out | ({"model": self.model} if self.model is not None else {})
