"""voxroute.testing.ports: ports for test servers, below the range client sockets take theirs from."""

from __future__ import annotations

import socket

from voxroute.testing.ports import _ephemeral_low, free_port


def test_a_free_port_is_below_the_ephemeral_range_and_binds():
    low = _ephemeral_low()
    for udp in (False, True):
        port = free_port(udp=udp)
        assert 1024 <= port < low
        kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", port))


def test_consecutive_ports_all_bind():
    first = free_port(count=3)
    socks = [socket.socket() for _ in range(3)]
    try:
        for i, s in enumerate(socks):
            s.bind(("127.0.0.1", first + i))
    finally:
        for s in socks:
            s.close()


def test_a_port_in_use_is_not_handed_out(monkeypatch):
    """The first pick is a port another socket holds: it is passed over for the next pick."""
    import voxroute.testing.ports as ports

    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        taken = held.getsockname()[1]
        other = free_port()
        picks = iter([taken, other])

        class Picks:
            def randrange(self, start: int, stop: int) -> int:
                return next(picks)

        monkeypatch.setattr(ports.random, "SystemRandom", Picks)
        assert other != taken and free_port() == other
