"""``emulators/recent.py``: an emulator's records stay bounded however long it runs."""

from __future__ import annotations

from voxroute.emulators.recent import Recent, remember


def test_recent_keeps_the_newest_and_reads_as_a_list():
    r: Recent[int] = Recent(keep=10)
    assert r == []
    for i in range(1000):
        r.append(i)
    assert 10 <= len(r) <= 20
    assert r[-1] == 999 and list(r) == list(range(1000 - len(r), 1000))
    r.clear()
    assert r == []


def test_remember_drops_the_oldest_keys():
    table: dict[str, int] = {}
    for i in range(50):
        remember(table, f"k{i}", i, keep=5)
    assert list(table) == ["k45", "k46", "k47", "k48", "k49"]
    remember(table, "k45", 0, keep=5)  # set again: the newest now
    remember(table, "new", 1, keep=5)
    assert list(table) == ["k47", "k48", "k49", "k45", "new"]
