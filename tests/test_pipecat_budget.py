"""The turn-budget processor in a real Pipecat pipeline with Pipecat's own OpenAI LLM and Sarvam TTS
services, over real sockets to voxroute's emulators (issue 16): the cached bridge plays, in budget,
when the LLM emulator is slowed past the budget; nothing extra plays when it is fast."""

from __future__ import annotations

import aiohttp
import pytest

pytest.importorskip("pipecat", reason="needs the pipecat extra: pip install -e '.[pipecat]'")

from pipecat.frames.frames import LLMContextFrame  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.services.openai.llm import OpenAILLMService  # noqa: E402
from pipecat.services.sarvam.tts import SarvamHttpTTSService  # noqa: E402

from voxroute.integrations.pipecat import TurnBudgetProcessor  # noqa: E402
from voxroute.integrations.pipecat.budget import cached_phrases  # noqa: E402
from voxroute.integrations.pipecat.harness import FAST, emulated, run_turn  # noqa: E402


async def one_turn(slow_llm: bool):
    async with emulated("zero") as (stack, services):
        if slow_llm:
            stack.llm["openrouter"].behave(FAST, ttft_median_s=2.0)  # past the 1 s budget
        phrases = await cached_phrases(services, "en-IN")
        budget = TurnBudgetProcessor.from_config(services.config, phrases)
        llm = OpenAILLMService(
            api_key="emulated",
            base_url=f"{stack.openrouter_url}/api/v1",
            settings=OpenAILLMService.Settings(model=FAST),
        )
        async with aiohttp.ClientSession() as http:
            tts = SarvamHttpTTSService(
                api_key="emulated",
                aiohttp_session=http,
                base_url=stack.sarvam_url,
                sample_rate=8000,
                settings=SarvamHttpTTSService.Settings(model="bulbul:v3", voice="shubh", language="en-IN"),
            )
            context = LLMContext([{"role": "user", "content": "What are your opening hours on Sunday?"}])
            watch = await run_turn([llm, tts, budget], [LLMContextFrame(context)], window_s=3.5)
    return budget, watch, phrases


async def test_the_bridge_plays_in_budget_when_the_llm_is_slow():
    budget, watch, phrases = await one_turn(slow_llm=True)
    assert budget.bridges == 1 and budget.apologies == 0
    first_audio = watch.ms_after_speech_end(watch.first_audio)
    assert first_audio is not None and first_audio <= budget.budget_ms, first_audio
    assert first_audio >= budget.budget_ms - budget.bridge_lead_ms - 50  # not earlier than needed
    # the bridge came before the (late) answer's text, and the answer still came
    assert watch.first_text is not None and watch.first_audio < watch.first_text
    assert watch.audio_bytes > len(phrases["bridge"].pcm)  # the bridge, then the answer's audio


async def test_nothing_extra_plays_when_the_llm_is_fast():
    budget, watch, phrases = await one_turn(slow_llm=False)
    assert budget.bridges == 0 and budget.apologies == 0
    first_audio = watch.ms_after_speech_end(watch.first_audio)
    assert first_audio is not None and first_audio <= budget.budget_ms
    assert watch.first_text is not None and watch.audio_bytes > 0  # the answer's own audio, nothing else
