"""The mark-aware Twilio serializer over real sockets (issue 16): voxroute's fake Twilio carrier dials a
Pipecat bot (FastAPI websocket transport, :class:`TwilioMarkSerializer`, Pipecat's Sarvam TTS against
the emulator); once the first chunk has played, the bot is interrupted as soon as the second chunk's
audio has gone out (its mark sent, its audio still in the carrier's buffer). The context keeps
exactly the text whose marks the carrier echoed before the ``clear``."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

pytest.importorskip("pipecat", reason="needs the pipecat extra: pip install -e '.[pipecat]'")

from fastapi import FastAPI, WebSocket  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair  # noqa: E402
from pipecat.services.sarvam.tts import SarvamHttpTTSService  # noqa: E402
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from voxroute.agent.fixture import load  # noqa: E402
from voxroute.agent.session import INTERRUPTED_MARK  # noqa: E402
from voxroute.emulators.carrier import dial  # noqa: E402
from voxroute.integrations.pipecat import TwilioMarkSerializer  # noqa: E402
from voxroute.integrations.pipecat.harness import emulated  # noqa: E402
from voxroute.server import serve_app, ws_url  # noqa: E402

SENTENCES = [
    "Your order A17 has shipped from our warehouse.",
    "It should reach you within two days, by Thursday evening.",
    "You will get a message with the tracking link shortly.",
]


class Bot:
    """One Pipecat bot per call: Twilio in and out through the mark-aware serializer."""

    def __init__(self, sarvam_url: str) -> None:
        self.sarvam_url = sarvam_url
        self.context = LLMContext([{"role": "user", "content": "Where is my order A17?"}])
        self.worker: PipelineWorker | None = None
        self.heard = None
        self.started = asyncio.Event()
        self.first_heard = asyncio.Event()
        self.interrupting = False
        self.interrupted = asyncio.Event()

    async def serve(self, websocket: WebSocket) -> None:
        await websocket.accept()
        serializer = await TwilioMarkSerializer.accept(websocket)
        transport = FastAPIWebsocketTransport(
            websocket,
            FastAPIWebsocketParams(
                audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer
            ),
        )
        self.heard = serializer.heard_text_processor()

        @self.heard.event_handler("on_chunk_heard")
        async def _heard(processor, text) -> None:
            self.first_heard.set()

        @self.heard.event_handler("on_chunk_sent")
        async def _sent(processor, text) -> None:
            if self.first_heard.is_set() and not self.interrupting:
                self.interrupting = True  # the caller talks over the chunk that just went out
                await self.worker.queue_frame(InterruptionFrame())

        @self.heard.event_handler("on_interrupted")
        async def _interrupted(processor, report) -> None:
            self.interrupted.set()

        pair = LLMContextAggregatorPair(self.context)
        async with aiohttp.ClientSession() as http:
            tts = SarvamHttpTTSService(
                api_key="emulated",
                aiohttp_session=http,
                base_url=self.sarvam_url,
                settings=SarvamHttpTTSService.Settings(model="bulbul:v3", voice="shubh", language="en-IN"),
            )
            pipeline = Pipeline([transport.input(), tts, transport.output(), self.heard, pair.assistant()])
            params = PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000)
            self.worker = PipelineWorker(pipeline, params=params, cancel_on_idle_timeout=False)

            @self.worker.event_handler("on_pipeline_started")
            async def _started(worker, frame) -> None:
                self.started.set()

            runner = WorkerRunner()
            await runner.add_workers(self.worker)
            await runner.run()


async def test_after_an_interruption_the_context_holds_only_the_text_whose_marks_were_echoed():
    async with emulated("zero") as (stack, _services):
        bot = Bot(stack.sarvam_url)
        app = FastAPI()
        app.add_api_websocket_route("/twilio/stream", bot.serve)
        async with serve_app(app) as url:
            call = asyncio.create_task(
                dial(load("order_status"), f"{ws_url(url)}/twilio/stream", agent_wait_s=10)
            )
            try:
                await asyncio.wait_for(bot.started.wait(), 10)
                for frame in (
                    LLMFullResponseStartFrame(),
                    LLMTextFrame(" ".join(SENTENCES)),
                    LLMFullResponseEndFrame(),
                ):
                    await bot.worker.queue_frame(frame)
                await asyncio.wait_for(bot.interrupted.wait(), 15)
                await asyncio.sleep(0.3)  # the flushed marks come back after the clear
            finally:
                if bot.worker is not None:
                    await bot.worker.cancel()
            result = await asyncio.wait_for(call, 10)
    assert len(result.clears) == 1
    cleared = result.clears[0]
    echoed_before = [m.name for m in result.marks if m.echoed_at is not None and m.echoed_at < cleared]
    flushed = [m.name for m in result.marks if m.echoed_at is not None and m.echoed_at >= cleared]
    assert echoed_before[:1] == ["heard-1"], result.marks
    heard = SENTENCES[: len(echoed_before)]  # marks come back in order, one per chunk
    assert bot.heard.heard == heard
    expected = {"role": "assistant", "content": f"{' '.join(heard)} {INTERRUPTED_MARK}"}
    assert bot.context.get_messages()[-1] == expected
    report = bot.heard.interruptions[0]
    assert report["heard"] == " ".join(heard)
    # a chunk whose audio had gone out but had not played when the clear came is not in the context
    assert report["dropped"] == " ".join(SENTENCES[len(heard) : len(heard) + len(flushed)]), (flushed, report)
