"""The fallback ladder over real sockets: retry, next rung, hedging, cooldown and recovery.

The ladder runs the real OpenAI-compatible clients against the LLM emulators on 127.0.0.1;
provider health runs on a fake clock so cooldown and recovery need no sleeping.
"""

from __future__ import annotations

import contextlib

import pytest

from voxroute.agent.config import load_config
from voxroute.agent.ladder import LadderExhausted, LLMLadder
from voxroute.agent.providers.openai_compat import OpenAICompatLLM
from voxroute.agent.timeline import Clock, TurnRecord
from voxroute.emulators.stack import run_emulators
from voxroute.routing.health import Health
from voxroute.runtime import emulator_options

FAST = "google/gemini-3-flash-preview"  # provider openrouter (examples/default.yaml)
BACKUP = "sarvam-30b"  # provider sarvam


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@contextlib.asynccontextmanager
async def ladder_env(profile: str = "zero"):
    config = load_config()
    async with run_emulators(profile, **emulator_options(config)) as emu:
        llms = {
            "openrouter": OpenAICompatLLM("openrouter", "openrouter", emu.urls.llm["openrouter"], "k"),
            "sarvam": OpenAICompatLLM("sarvam", "sarvam", emu.urls.llm["sarvam"], "k"),
        }
        try:
            yield config, emu, llms
        finally:
            for llm in llms.values():
                await llm.aclose()


async def run_ladder(config, llms, health, paths, **kw) -> tuple[TurnRecord, str]:
    turn = TurnRecord(index=1)
    history = [{"role": "user", "content": "Where is my order?"}]
    ladder = LLMLadder(
        config,
        llms,
        Clock(),
        turn,
        history,
        "t:1",
        models=config.routing_table().models["default"],
        health=health,
        **kw,
    )
    out: list[str] = []
    await ladder.run(paths, out.append)
    return turn, "".join(out)


async def test_retriable_error_is_retried_once_on_the_same_path():
    async with ladder_env() as (config, emu, llms):
        emu.dice["openrouter_llm"].force("llm", "http_500")
        turn, text = await run_ladder(config, llms, Health(), ["fast", "fast_backup"])
    assert text
    assert [f["action"] for f in turn.fallbacks] == ["retry same path"]
    assert turn.usage["path"] == "fast" and turn.usage["rung"] == 1


async def test_cooldown_skips_at_once_and_recovers_after_a_probe():
    clock = FakeClock()
    health = Health(cooldown_s=10, failures_to_cooldown=2, clock=clock)
    async with ladder_env() as (config, emu, llms):
        openrouter = emu.llm["openrouter"]
        openrouter.behave(None, fault="http_500")  # the fast provider is down

        turn, text = await run_ladder(config, llms, health, ["fast", "fast_backup"])
        assert text and turn.usage["path"] == "fast_backup" and turn.usage["rung"] == 2
        actions = [f["action"] for f in turn.fallbacks]
        assert actions[0] == "retry same path"
        assert "cooling down" in actions[1]
        assert openrouter.model_requests[FAST] == 2

        # The next turn skips the cooled-down path without sending it a request.
        turn, text = await run_ladder(config, llms, health, ["fast", "fast_backup"])
        assert text and turn.usage["path"] == "fast_backup"
        assert turn.fallbacks[0]["kind"] == "cooldown" and turn.fallbacks[0]["action"] == "skip"
        assert openrouter.model_requests[FAST] == 2

        # The provider recovers; after the cooldown one probe goes through and the path is back.
        openrouter.behaviours.clear()
        clock.t += 10.5
        turn, text = await run_ladder(config, llms, health, ["fast", "fast_backup"])
        assert text and turn.usage["path"] == "fast" and not turn.fallbacks
        assert openrouter.model_requests[FAST] == 3
        assert not health.in_cooldown(f"openrouter/{FAST}")


async def test_slow_first_token_is_hedged_and_the_loser_cancelled():
    health = Health(hedge_max_share=0.10)
    async with ladder_env() as (config, emu, llms):
        emu.llm["openrouter"].behave(FAST, ttft_median_s=3.0)
        turn, text = await run_ladder(config, llms, health, ["fast", "fast_backup"])
    assert text
    assert turn.usage["path"] == "fast_backup" and turn.usage["hedges"] == 1
    lost = [f for f in turn.fallbacks if f["action"] == "hedge lost"]
    assert len(lost) == 1 and lost[0]["path"] == "fast"
    assert health.hedges == 1


async def test_a_hedge_that_loses_at_once_is_not_counted_against_its_path():
    """The backup joins the race at the primary's p90 and loses it a moment later: it was not late by
    its own path's standard, so it is not a health failure. Before, two such turns in a row put a
    healthy backup in cooldown. The primary that waited past its own p90 still counts."""
    clock = FakeClock()
    health = Health(cooldown_s=10, failures_to_cooldown=2, clock=clock, hedge_max_share=1.0)
    async with ladder_env() as (config, emu, llms):
        emu.llm["openrouter"].behave(FAST, ttft_median_s=1.0)  # p90 guess 770 ms: hedged, then wins
        emu.llm["sarvam"].behave(BACKUP, ttft_median_s=3.0)  # the hedge: started at ~770 ms, loses
        for _ in range(3):
            turn, text = await run_ladder(config, llms, health, ["fast", "fast_backup"])
            assert text and turn.usage["path"] == "fast" and turn.usage["hedges"] == 1
            lost = [f for f in turn.fallbacks if f["path"] == "fast_backup"]
            assert [f["action"] for f in lost] == ["hedge lost"], turn.fallbacks
    assert not health.in_cooldown(f"sarvam/{BACKUP}")
    assert health.paths[f"sarvam/{BACKUP}"].failures == 0


async def test_a_primary_that_loses_its_hedge_late_is_counted():
    clock = FakeClock()
    health = Health(cooldown_s=10, failures_to_cooldown=2, clock=clock, hedge_max_share=1.0)
    async with ladder_env() as (config, emu, llms):
        emu.llm["openrouter"].behave(FAST, ttft_median_s=3.0)  # waits past its p90, loses
        for _ in range(2):
            turn, text = await run_ladder(config, llms, health, ["fast", "fast_backup"])
            assert text and turn.usage["path"] == "fast_backup"
    assert health.in_cooldown(f"openrouter/{FAST}")


async def test_hedge_cap_refuses_and_the_first_token_timeout_moves_on():
    health = Health(hedge_max_share=0.0)
    assert health.may_hedge()  # the one allowed hedge is spent
    async with ladder_env() as (config, emu, llms):
        emu.llm["openrouter"].behave(FAST, fault="hang")
        config.ladder.first_token_timeout_ms = 1500
        turn, text = await run_ladder(config, llms, health, ["fast", "fast_backup"])
    assert text and turn.usage["path"] == "fast_backup"
    assert health.hedges_refused >= 1 and "hedges" not in turn.usage
    assert turn.fallbacks[0]["kind"] == "timeout" and turn.fallbacks[0]["action"] == "next rung"


async def test_error_midstream_continues_on_the_next_rung():
    async with ladder_env() as (config, emu, llms):
        emu.dice["openrouter_llm"].force("llm", "error_midstream")
        turn, text = await run_ladder(config, llms, Health(), ["fast", "fast_backup"])
    assert text
    assert turn.fallbacks[0]["action"] == "continue on next rung"
    assert turn.usage["path"] == "fast_backup"


async def test_every_rung_down_raises_exhausted():
    async with ladder_env() as (config, emu, llms):
        emu.llm["openrouter"].behave(None, fault="http_500")
        emu.llm["sarvam"].behave(None, fault="http_429")
        with pytest.raises(ExceptionGroup) as group:
            await run_ladder(config, llms, Health(), ["fast", "fast_backup"])
    assert group.group_contains(LadderExhausted)


@pytest.mark.parametrize("path", ["fast", "fast_backup"])
async def test_usage_and_cost_per_path(path):
    """OpenRouter reports usage and cost (the emulator charges the configured prices); Sarvam's
    stream reports none, so the ladder estimates tokens and prices them, and says so."""
    async with ladder_env() as (config, emu, llms):
        turn, text = await run_ladder(config, llms, Health(), [path])
    u = turn.usage
    mp = config.models[path]
    per = u["by_path"][path]
    expected = (
        per["prompt_tokens"] * mp.price_in_per_mtok + per["completion_tokens"] * mp.price_out_per_mtok
    ) / 1e6
    assert per["cost_usd"] == pytest.approx(expected, rel=1e-3) and expected > 0
    assert u["cost_usd"] == per["cost_usd"]
    assert per.get("estimated", False) == (path == "fast_backup")
    if path == "fast_backup":
        assert per["completion_tokens"] == len(text.split())  # one streamed piece per word


async def test_an_acknowledgement_is_not_the_turns_model():
    """The fast path's acknowledgement (role "ack") runs beside the answer on the same turn: when its
    first token comes after the answer's, the turn's model stays the answer's (bench.routing_cost
    counted such a high-stakes turn as answered by the fast tier); its cost still counts."""
    async with ladder_env() as (config, emu, llms):
        turn = TurnRecord(index=1)
        history = [{"role": "user", "content": "I was charged twice."}]
        models = config.routing_table().models["default"]
        for path, role in (("reasoning", "answer"), ("fast_backup", "ack")):
            ladder = LLMLadder(
                config, llms, Clock(), turn, history, f"t:1:{role}", models=models, health=Health(), role=role
            )
            await ladder.run([path], lambda _: None)
    assert turn.usage["model"] == config.models["reasoning"].model and turn.usage["path"] == "reasoning"
    assert set(turn.usage["by_path"]) == {"reasoning", "fast_backup"}
