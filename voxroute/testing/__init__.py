"""Testing voxroute agents in your own project: the ``replay_call`` pytest fixture (agent.testing.plugin,
on by itself once voxroute is installed) and assertions on a replayed call that read as the product
speaks."""

from voxroute.testing.assertions import (
    ReplayResult,
    assert_ended,
    assert_expectations,
    assert_handoff,
    assert_routed,
    assert_tool_called,
    assert_within_budget,
    caller_turns,
    fixture_failures,
)

__all__ = [
    "ReplayResult",
    "assert_ended",
    "assert_expectations",
    "assert_handoff",
    "assert_routed",
    "assert_tool_called",
    "assert_within_budget",
    "caller_turns",
    "fixture_failures",
]
