"""The routed LLM service in a real Pipecat pipeline, over real sockets to voxroute's LLM emulators
(issue 16): with the fast path failing (HTTP 500, 429, or hung) it still answers within the turn's
budget, and plain Pipecat with its own failover switcher, as its documentation recommends, does not
(asserted too, so the comparison stays honest as Pipecat changes)."""

from __future__ import annotations

import pytest

pytest.importorskip("pipecat", reason="needs the pipecat extra: pip install -e '.[pipecat]'")

from pipecat.frames.frames import LLMContextFrame  # noqa: E402
from pipecat.pipeline.llm_switcher import LLMSwitcher  # noqa: E402
from pipecat.pipeline.service_switcher import ServiceSwitcherStrategyFailover  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.services.openai.llm import OpenAILLMService  # noqa: E402
from pipecat.services.sarvam.llm import SarvamLLMService  # noqa: E402

from voxroute.integrations.pipecat import RoutedLLMService, RouteMetricsData  # noqa: E402
from voxroute.integrations.pipecat.harness import FAST, emulated, run_turn  # noqa: E402

QUESTION = "What are your opening hours on Sunday?"  # a routine (fast tier) turn
FAULTS = ["http_500", "http_429", "hang"]


def context() -> LLMContext:
    return LLMContext(
        [
            {"role": "system", "content": "You are a helpful shop assistant."},
            {"role": "user", "content": QUESTION},
        ]
    )


@pytest.mark.parametrize("fault", FAULTS)
async def test_routed_service_answers_within_budget_when_the_fast_path_fails(fault):
    async with emulated("zero") as (stack, services):
        stack.llm["openrouter"].behave(FAST, fault=fault)  # the fast path's first rung is down
        llm = RoutedLLMService(services)
        watch = await run_turn([llm], [LLMContextFrame(context())], window_s=2.0)
    (route,) = [d for d in watch.metrics if isinstance(d, RouteMetricsData)]
    assert route.tier == "fast" and route.path == "fast_backup", route
    first = watch.ms_after_speech_end(watch.first_text)
    assert first is not None and first <= route.budget_ms, (first, route.fallbacks)
    assert "".join(watch.text).strip()
    kinds = {f["kind"] for f in route.fallbacks}
    assert kinds == ({"timeout"} if fault == "hang" else {fault}), route.fallbacks


@pytest.mark.parametrize("fault", FAULTS)
async def test_plain_pipecat_failover_leaves_the_caller_waiting(fault):
    """Pipecat's failover switcher moves on only when a service reports itself unusable (a permanent
    error); a 500, a 429 or a hang is not one, so the backup never answers in time."""
    async with emulated("zero") as (stack, services):
        table = services.router.table
        budget_ms = table.cell("default", table.group("default", "en-IN"), "voice", "faq").budget_ms
        stack.llm["openrouter"].behave(FAST, fault=fault)
        primary = OpenAILLMService(
            api_key="emulated",
            base_url=f"{stack.openrouter_url}/api/v1",
            settings=OpenAILLMService.Settings(model=FAST),
        )
        backup = SarvamLLMService(
            api_key="emulated",
            base_url=f"{stack.sarvam_url}/v2",
            settings=SarvamLLMService.Settings(model="sarvam-105b"),
        )
        switcher = LLMSwitcher([primary, backup], strategy_type=ServiceSwitcherStrategyFailover)
        watch = await run_turn([switcher], [LLMContextFrame(context())], window_s=2.0)
        requests = dict(stack.llm["openrouter"].model_requests)
    first = watch.ms_after_speech_end(watch.first_text)
    assert first is None or first > budget_ms, (first, watch.text)
    assert requests.get(FAST, 0) >= 1  # it did ask the failing fast path
