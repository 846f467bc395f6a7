"""Running one turn through a real Pipecat pipeline against voxroute's emulators on 127.0.0.1: what
the tests (tests/test_pipecat_*.py), bench/vs_pipecat.py and examples/pipecat_bot.py share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

from pipecat.frames.frames import (
    Frame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from agent.config import Config, load_config
from agent.runtime import build_services, emulator_options
from emulators.stack import EmulatorStack, run_emulators

CONFIG = load_config()
MODELS = CONFIG.routing_table().models["default"]
FAST = MODELS["fast"].model  # on openrouter: the fast path's first rung


class Stopwatch(FrameProcessor):
    """At the end of a pipeline: when the user stopped speaking, the first answer text and audio."""

    def __init__(self) -> None:
        super().__init__()
        self.speech_end: float | None = None
        self.first_text: float | None = None
        self.first_audio: float | None = None
        self.text: list[str] = []
        self.audio_bytes = 0
        self.metrics: list = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        now = time.monotonic()
        if isinstance(frame, UserStoppedSpeakingFrame) and self.speech_end is None:
            self.speech_end = now
        elif isinstance(frame, LLMTextFrame):
            self.first_text = self.first_text or now
            self.text.append(frame.text)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self.first_audio = self.first_audio or now
            self.audio_bytes += len(frame.audio)
        elif isinstance(frame, MetricsFrame):
            self.metrics += frame.data
        await self.push_frame(frame, direction)

    def ms_after_speech_end(self, t: float | None) -> float | None:
        if t is None or self.speech_end is None:
            return None
        return (t - self.speech_end) * 1000


async def run_turn(
    processors: Sequence[FrameProcessor], frames: Sequence[Frame], window_s: float
) -> Stopwatch:
    """One user turn through a real Pipecat pipeline: the user stops speaking, ``frames`` follow; after
    ``window_s`` the pipeline is cancelled (a hung LLM would hold an EndFrame back forever)."""
    watch = Stopwatch()
    worker = PipelineWorker(Pipeline([*processors, watch]), cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame) -> None:
        started.set()

    async def drive() -> None:
        await asyncio.wait_for(started.wait(), 10)
        await worker.queue_frame(UserStoppedSpeakingFrame())
        for frame in frames:
            await worker.queue_frame(frame)
        await asyncio.sleep(window_s)
        await worker.cancel()

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), drive())
    return watch


def quiet_config() -> Config:
    cfg = load_config()
    cfg.call_log.enabled = False
    return cfg


@contextlib.asynccontextmanager
async def emulated(
    profile: str = "zero", seed: int = 0, config: Config | None = None
) -> AsyncIterator[tuple[EmulatorStack, object]]:
    """The emulators on 127.0.0.1 (port 0) and voxroute's services pointed at them."""
    config = config or quiet_config()
    async with run_emulators(profile, seed, **emulator_options(config)) as stack:
        async with build_services(config, stack.urls) as services:
            yield stack, services
