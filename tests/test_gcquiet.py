"""agent/gcquiet.py: the collector held off between a committed turn and its model request."""

from __future__ import annotations

import gc

from voxroute.agent import gcquiet


def test_holds_nest_and_the_last_release_turns_the_collector_back_on():
    assert gc.isenabled() and gcquiet.held() == 0
    gcquiet.hold()
    gcquiet.hold()  # a second call's turn at the same moment
    assert not gc.isenabled()
    gcquiet.release()
    assert not gc.isenabled()
    gcquiet.release()
    assert gc.isenabled() and gcquiet.held() == 0
    gcquiet.release()  # an extra release does nothing
    assert gc.isenabled() and gcquiet.held() == 0


def test_a_collector_the_process_turned_off_stays_off():
    gc.disable()
    try:
        gcquiet.hold()
        gcquiet.release()
        assert not gc.isenabled()
    finally:
        gc.enable()
