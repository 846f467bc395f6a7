"""A turn's deadline (agent/watchdog.py ``Deadline``) on a fake clock: when the bridge, its refills
and the hard cap fall due. The strand that plays them runs in every call test (tests/test_faults.py:
a slow model gets the bridge, a silent one the apology at the hard cap)."""

from __future__ import annotations

import pytest

from voxroute.agent.config import BudgetConfig
from voxroute.agent.watchdog import BRIDGE_LOOKS, Deadline, HardCapReached, PlayBridge, Sleep, StandDown

BUDGET = BudgetConfig(bridge_lead_ms=150, hard_cap_ms=8000, refill_ms=2500)
SPEECH_END = 1000.0
BRIDGE_AT = SPEECH_END + 1000 - 150  # a 1,000 ms budget, less the bridge lead


def test_an_answer_that_starts_in_time_needs_no_bridge() -> None:
    d = Deadline(SPEECH_END, BUDGET)
    assert d.next(1000, 1000, answering=False, audio_out=False, speaking=False) == Sleep(BRIDGE_AT)
    assert d.next(BRIDGE_AT, 1000, answering=True, audio_out=True, speaking=True) == StandDown()


def test_audio_out_before_the_bridge_is_due_stands_the_watchdog_down() -> None:
    """The fast path's acknowledgement went out: the turn core does not count it as the answer, the
    deadline does (the caller hears something)."""
    d = Deadline(SPEECH_END, BUDGET)
    d.next(1000, 1000, answering=False, audio_out=False, speaking=False)
    assert d.next(BRIDGE_AT, 1000, answering=False, audio_out=True, speaking=True) == StandDown()


def test_a_silent_model_gets_the_bridge_its_refills_and_then_the_hard_cap() -> None:
    d = Deadline(SPEECH_END, BUDGET)
    hard_cap = SPEECH_END + 8000
    steps = [
        # (now, speaking) -> the step
        ((1000, False), Sleep(BRIDGE_AT)),
        ((BRIDGE_AT, False), PlayBridge(first=True)),
        ((BRIDGE_AT, True), Sleep(BRIDGE_AT + 2500)),  # the bridge plays: a look after refill_ms
        ((BRIDGE_AT + 2500, False), PlayBridge(first=False)),  # silence again: refill
        ((BRIDGE_AT + 2500, True), Sleep(BRIDGE_AT + 5000)),
        ((BRIDGE_AT + 5000, True), Sleep(hard_cap)),  # still playing: no refill; the next look is the cap
        ((hard_cap, False), HardCapReached()),  # the cap comes before any refill
    ]
    for (now, speaking), expected in steps:
        # once the bridge plays, the turn has audio out: only the answer itself ends the watch
        audio_out = now > BRIDGE_AT or speaking
        assert d.next(now, 1000, answering=False, audio_out=audio_out, speaking=speaking) == expected, now


def test_the_answer_starting_between_refills_ends_the_watch() -> None:
    d = Deadline(SPEECH_END, BUDGET)
    d.next(1000, 1000, answering=False, audio_out=False, speaking=False)
    assert d.next(BRIDGE_AT, 1000, answering=False, audio_out=False, speaking=False) == PlayBridge(first=True)
    assert d.next(BRIDGE_AT, 1000, answering=False, audio_out=True, speaking=True) == Sleep(BRIDGE_AT + 2500)
    assert d.next(BRIDGE_AT + 900, 1000, answering=True, audio_out=True, speaking=True) == StandDown()


def test_a_budget_the_route_raises_while_the_watchdog_sleeps_moves_the_bridge() -> None:
    """The route gives the class's budget after the watchdog started (a reasoning class: 3,000 ms)."""
    d = Deadline(SPEECH_END, BUDGET)
    assert d.next(1000, 1000, answering=False, audio_out=False, speaking=False) == Sleep(BRIDGE_AT)
    assert d.next(BRIDGE_AT, 3000, answering=False, audio_out=False, speaking=False) == Sleep(3850)
    assert d.next(3850, 3000, answering=False, audio_out=False, speaking=False) == PlayBridge(first=True)


def test_the_watchdog_looks_again_a_bounded_number_of_times() -> None:
    """A budget that keeps moving does not keep the bridge back for ever."""
    d = Deadline(SPEECH_END, BUDGET)
    now, budget = 1000.0, 1000
    for _ in range(BRIDGE_LOOKS):
        step = d.next(now, budget, answering=False, audio_out=False, speaking=False)
        assert isinstance(step, Sleep)
        now, budget = step.until, budget + 1000
    assert d.next(now, budget, answering=False, audio_out=False, speaking=False) == PlayBridge(first=True)


@pytest.mark.parametrize("late_by", [0.0, 40.0, 7000.0])
def test_a_bridge_already_due_at_the_first_look_plays_at_once(late_by: float) -> None:
    """The turn started late (a long wait for the STT's final): no sleep before the bridge."""
    d = Deadline(SPEECH_END, BUDGET)
    now = BRIDGE_AT + late_by
    assert d.next(now, 1000, answering=False, audio_out=False, speaking=False) == PlayBridge(first=True)


def test_a_turn_that_starts_after_its_hard_cap_apologises_after_one_bridge() -> None:
    d = Deadline(SPEECH_END, BUDGET)
    now = SPEECH_END + 9000
    assert d.next(now, 1000, answering=False, audio_out=False, speaking=False) == PlayBridge(first=True)
    assert d.next(now, 1000, answering=False, audio_out=True, speaking=True) == HardCapReached()
