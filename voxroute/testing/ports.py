"""Ports for test and benchmark servers on 127.0.0.1.

Binding to port 0 and closing the socket hands out a port from the kernel's ephemeral range, the
range every outgoing connection also takes its local port from. Between the close and the server's
own bind, any client socket on the machine (another test's, another pytest-xdist worker's) may take
it: "address already in use". :func:`free_port` picks from the range just below the ephemeral one,
which no client socket uses, and checks that the port binds now.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_SPAN = 12_000  # ports below the ephemeral range to pick from


def _ephemeral_low() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default (and where /proc is absent, a safe floor anyway)


def free_port(udp: bool = False, host: str = "127.0.0.1", count: int = 1) -> int:
    """The first of ``count`` consecutive ports free on ``host`` now (TCP, or UDP with ``udp``),
    below the kernel's ephemeral range; the kernel's own pick if none is found there."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    top = _ephemeral_low()
    bottom = max(1024, top - _SPAN)
    pick = random.SystemRandom()
    for _ in range(200):
        first = pick.randrange(bottom, top - count + 1)
        if all(_binds(host, port, kind) for port in range(first, first + count)):
            return first
    if count > 1:
        raise RuntimeError(f"no {count} consecutive free ports below {top}")
    with socket.socket(socket.AF_INET, kind) as s:  # nothing free below the range: the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]


def _binds(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
