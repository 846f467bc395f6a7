"""Running one turn through a real Pipecat pipeline against voxroute's emulators on 127.0.0.1: what
the tests (tests/test_pipecat_*.py), bench/vs_pipecat.py and examples/pipecat_bot.py share.

``python -m voxroute.integrations.pipecat.harness --system pipecat --emulators JSON --port P`` serves a
:class:`PipecatBot` in a process of its own (bench/vs_pipecat.py's capacity ramp), with
``/healthz`` and voxroute's ``/debug/stats`` figures: inbound lag (caller frames against their media
clock) and outbound lateness (the output transport's paced sends against their schedule)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import WebSocket
from pipecat.frames.frames import (
    Frame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from voxroute.agent.config import Config, load_config
from voxroute.emulators.stack import EmulatorStack, run_emulators
from voxroute.runtime import build_services, emulator_options

log = logging.getLogger("voxroute.pipecat")

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
        elif isinstance(frame, LLMTextFrame | TTSTextFrame):  # the LLM's text, or the TTS's after it
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


@contextlib.asynccontextmanager
async def served_bot(
    system: str, profile: str = "zero", seed: int = 0, config: Config | None = None
) -> AsyncIterator[tuple[PipecatBot, str]]:
    """A :class:`PipecatBot` on the emulators, served on 127.0.0.1 (port 0): yields the bot and the
    websocket URL of its Twilio media stream route."""
    from voxroute.server import serve_app, ws_url

    async with emulated(profile, seed, config) as (stack, services):
        bot = PipecatBot(services, stack.sarvam_url, stack.openrouter_url, system=system)
        async with serve_app(bot_app(bot)) as url:
            yield bot, f"{ws_url(url)}/twilio/stream"


def bot_app(bot: PipecatBot, stats: bool = False):
    """A FastAPI app with the bot's Twilio media stream route (``/twilio/stream``); ``stats``: also
    ``/healthz`` and voxroute's ``/debug/stats`` and ``/debug/stats/reset`` (agent/metrics.py)."""
    from fastapi import FastAPI

    from voxroute.agent import metrics

    app = FastAPI()
    app.add_api_websocket_route("/twilio/stream", bot.call)
    if stats:
        app.add_api_route("/healthz", lambda: {"ok": True})
        app.add_api_route("/debug/stats", metrics.snapshot)
        app.add_api_route("/debug/stats/reset", lambda: metrics.reset() or {"ok": True}, methods=["POST"])
    return app


_TIMESTAMP = re.compile(r'"timestamp"\s*:\s*"?(\d+)')


def measure_inbound(serializer) -> None:
    """Record each caller frame's lag against its media timestamp (voxroute's ``InboundClock``) as
    the transport deserializes it."""
    from voxroute.agent.metrics import InboundClock

    clock = InboundClock()
    deserialize = serializer.deserialize

    async def measured(data):
        if isinstance(data, str) and (m := _TIMESTAMP.search(data)):
            clock.frame(int(m.group(1)))
        return await deserialize(data)

    serializer.deserialize = measured


def measure_pacing(output) -> None:
    """Record how late the websocket output transport's paced audio sends wake against their schedule
    (into voxroute's ``PACING``, as the Player's own sends are). Pipecat 1.14's transport sleeps to
    ``_next_send_time`` after each chunk it writes."""
    from voxroute.agent.player import PACING

    sleep = output._write_audio_sleep

    async def measured() -> None:
        due = output._next_send_time
        waits = due > time.monotonic()
        await sleep()
        if waits:
            PACING.late_ms.append((time.monotonic() - due) * 1000)

    output._write_audio_sleep = measured


# ---------------------------------------------------------------- a whole Pipecat phone bot

SYSTEMS = ("pipecat", "pipecat_voxroute")
LANGUAGES = ("en-IN", "hi-IN")  # what the Sarvam services here are set up to speak
EMULATED_KEY = "emulated"


class PipecatBot:
    """A Pipecat phone bot on a Twilio media stream route (``call``: a FastAPI websocket endpoint),
    its speech services pointed at the Sarvam emulator.

    ``system="pipecat"``: plain Pipecat as its documentation recommends (its Twilio serializer, Silero
    VAD, an ``LLMSwitcher`` with the failover strategy over the OpenAI-compatible fast model and a
    Sarvam backup). ``system="pipecat_voxroute"``: the same pipeline with voxroute's mark-aware
    serializer, the routed LLM service and the turn-budget processor. Per call it keeps the routed
    service's turns (``turns``), the budget processor's bridges and the LLM usage reported in
    Pipecat's metrics frames (``usage``: model, prompt and completion tokens)."""

    def __init__(
        self,
        services,
        sarvam_url: str,
        openrouter_url: str,
        system: str = "pipecat_voxroute",
        measure: bool = False,
    ) -> None:
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}; choose one of {SYSTEMS}")
        self.measure = measure  # inbound lag and outbound lateness into agent/metrics.py's figures
        self.services = services
        self.sarvam_url = sarvam_url
        self.openrouter_url = openrouter_url
        self.system = system
        self.calls: list[dict] = []  # per call: {"turns", "bridges", "usage", "done": set once filled}

    def _llm(self):
        from pipecat.pipeline.llm_switcher import LLMSwitcher
        from pipecat.pipeline.service_switcher import ServiceSwitcherStrategyFailover
        from pipecat.services.llm_service import LLMService
        from pipecat.services.openai.llm import OpenAILLMService
        from pipecat.services.sarvam.llm import SarvamLLMService

        from voxroute.integrations.pipecat.llm import RoutedLLMService

        if self.system == "pipecat_voxroute":
            return RoutedLLMService(self.services)
        primary = OpenAILLMService(
            api_key=EMULATED_KEY,
            base_url=f"{self.openrouter_url}/api/v1",
            settings=OpenAILLMService.Settings(model=FAST),
        )
        backup = SarvamLLMService(
            api_key=EMULATED_KEY,
            base_url=f"{self.sarvam_url}/v2",
            settings=SarvamLLMService.Settings(model="sarvam-105b"),
        )
        llms: list[LLMService[Any]] = [primary, backup]  # each with its own adapter type
        return LLMSwitcher(llms, strategy_type=ServiceSwitcherStrategyFailover)

    async def call(self, websocket: WebSocket) -> None:
        import aiohttp
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.metrics.metrics import LLMUsageMetricsData
        from pipecat.pipeline.worker import PipelineParams
        from pipecat.processors.aggregators.llm_context import LLMContext
        from pipecat.processors.aggregators.llm_response_universal import (
            LLMContextAggregatorPair,
            LLMUserAggregatorParams,
        )
        from pipecat.serializers.twilio import TwilioFrameSerializer
        from pipecat.services.sarvam.stt import SarvamRealtimeSTTService
        from pipecat.services.sarvam.tts import SarvamHttpTTSService
        from pipecat.transcriptions.language import Language
        from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

        from voxroute.integrations.pipecat.budget import TurnBudgetProcessor, cached_phrases
        from voxroute.integrations.pipecat.twilio import TwilioMarkSerializer
        from voxroute.server import ws_url

        voxroute = self.system == "pipecat_voxroute"
        await websocket.accept()
        marks = await TwilioMarkSerializer.accept(websocket)
        serializer = (
            marks
            if voxroute
            else TwilioFrameSerializer(
                marks.stream_sid, marks.call_sid, params=TwilioFrameSerializer.InputParams(auto_hang_up=False)
            )
        )
        transport = FastAPIWebsocketTransport(
            websocket,
            FastAPIWebsocketParams(
                audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer
            ),
        )
        if self.measure:
            measure_inbound(serializer)
            measure_pacing(transport.output())
        config = self.services.config
        # The call's language, as a Pipecat bot reads it from the stream's custom parameters
        start = marks.stream.start  # TwilioMarkSerializer.accept returns once the start is read
        assert start is not None
        language = start.parameters.get("language", config.language)
        if language not in LANGUAGES:
            log.warning("call %s: language %r not served; %s", marks.call_sid, language, config.language)
            language = config.language
        context = LLMContext([{"role": "system", "content": config.agent_for("default").prompt(language)}])
        pair = LLMContextAggregatorPair(
            context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
        )
        stt = SarvamRealtimeSTTService(
            api_key=EMULATED_KEY,
            base_url=f"{ws_url(self.sarvam_url)}/speech-to-text-realtime/ws",
            sample_rate=8000,
            settings=SarvamRealtimeSTTService.Settings(language=Language(language)),
        )
        llm = self._llm()
        usage = Stopwatch()  # after the LLM: its metrics frames (the usage of plain Pipecat's services)
        record = {"turns": [], "bridges": 0, "usage": [], "done": asyncio.Event()}
        self.calls.append(record)
        async with aiohttp.ClientSession() as http:
            tts = SarvamHttpTTSService(
                api_key=EMULATED_KEY,
                aiohttp_session=http,
                base_url=self.sarvam_url,
                settings=SarvamHttpTTSService.Settings(
                    model="bulbul:v3", voice="shubh", language=Language(language)
                ),
            )
            processors = [transport.input(), stt, pair.user(), llm, usage, tts]
            budget = None
            if voxroute:
                budget = TurnBudgetProcessor.from_config(
                    config, await cached_phrases(self.services, language), language=language
                )
                processors += [budget, transport.output(), marks.heard_text_processor(), pair.assistant()]
            else:
                processors += [transport.output(), pair.assistant()]
            params = PipelineParams(
                audio_in_sample_rate=8000,
                audio_out_sample_rate=8000,
                enable_metrics=True,
                enable_usage_metrics=True,
            )
            worker = PipelineWorker(Pipeline(processors), params=params, cancel_on_idle_timeout=False)

            @transport.event_handler("on_client_disconnected")
            async def _gone(transport, websocket) -> None:
                await worker.cancel()

            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(worker)
            try:
                await runner.run()
            finally:
                record["turns"] = [t.as_dict() for t in getattr(llm, "turns", [])]
                record["bridges"] = budget.bridges if budget is not None else 0
                record["usage"] = [
                    (d.model, d.value.prompt_tokens, d.value.completion_tokens)
                    for d in usage.metrics
                    if isinstance(d, LLMUsageMetricsData)
                ]
                record["done"].set()


async def _serve(system: str, urls: dict, port: int) -> None:
    from voxroute.runtime import EmulatorURLs
    from voxroute.server import serve_app, ws_url

    config = quiet_config()
    sarvam, openrouter = urls["sarvam"].rstrip("/"), urls["openrouter"].rstrip("/")
    emulators = EmulatorURLs(
        llm={"sarvam": f"{sarvam}/v1", "openrouter": f"{openrouter}/api/v1"},
        sarvam_ws=ws_url(sarvam),
        sarvam_rest=sarvam,
    )  # as `voxroute serve --emulators` builds them
    async with build_services(config, emulators) as services:
        bot = PipecatBot(services, sarvam, openrouter, system=system, measure=True)
        async with serve_app(bot_app(bot, stats=True), port=port):
            await asyncio.Event().wait()


def main() -> None:
    import argparse
    import json
    import sys

    from loguru import logger

    ap = argparse.ArgumentParser(description="a Pipecat phone bot on running emulators (bench/vs_pipecat.py)")
    ap.add_argument("--system", choices=SYSTEMS, default="pipecat_voxroute")
    ap.add_argument(
        "--emulators",
        required=True,
        help='what `voxroute emulators` prints: {"sarvam": URL, "openrouter": URL}',
    )
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    logger.remove()  # Pipecat logs every frame event at DEBUG: a deployment keeps warnings
    logger.add(sys.stderr, level="WARNING")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.system, json.loads(args.emulators), args.port))


if __name__ == "__main__":
    main()
