"""``voxroute serve --workers N``: a pre-fork supervisor of N server processes on one port.

The supervisor binds the listening socket once and starts N ``voxroute serve`` processes that
inherit it (``--listen-fd``); each runs its own event loop, provider clients, call gate and call
log writer, and takes calls from the shared accept queue. A worker whose loop is busy calls
``accept`` later, so new calls go mostly to the others. Cross-process state (a resumed leg's
history, handoff records, dial results) lives in the call log database, so a webhook and the stream
of one call may land on different workers: with more than one worker, use PostgreSQL
(``VOXROUTE_DATABASE_URL``).

- The SIP user agent and the AudioSocket server run in worker 0 only: a SIP dialog's in-dialog
  requests must reach the process that holds it, and one UDP port cannot be split by dialog.
- With ``--worker-ports BASE``, worker ``i`` also listens on ``BASE + i`` (same host), so that
  Prometheus, readiness probes and benchmarks reach each worker's own ``/metrics``, ``/readyz``
  and ``/debug/stats`` (on the shared port they answer for whichever worker accepted).
- ``--dev`` without provider keys: the supervisor runs one set of emulators for every worker.
- SIGTERM or SIGINT to the supervisor goes to every worker, which drains (``/readyz`` 503, new
  calls refused with 503, calls in progress get ``shutdown.drain_s``, then the closing phrase);
  a second signal is passed on too (the workers end their calls at once). The supervisor exits 0
  when every worker stopped cleanly, else 1.
- A worker that dies is logged with its exit status and restarted (its calls are lost; new calls
  find a live process). SIGTERM to one worker's pid drains that worker alone, and a fresh one
  takes its place: a rolling restart, one worker at a time. If the restarted process dies within ``CRASH_LOOP_S`` of its start too (a
  fault at start: a database that refuses it, a missing extra), the supervisor stops the other
  workers and exits 1 rather than restart a process that cannot run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("voxroute.workers")

CRASH_LOOP_S = 10.0  # a restarted worker that ends sooner than this stops the supervisor
POLL_S = 0.1
BACKLOG = 2048


def bind_listener(host: str, port: int) -> socket.socket:
    """The shared listening socket (port 0: any free port), inheritable by the workers."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(info[4])
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen
    restarted: bool = False  # started in place of one that died
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts and watches the worker processes (a plain process: no event loop of its own)."""

    def __init__(self, count: int, command: Callable[[int], list[str]], pass_fds: Sequence[int]) -> None:
        if count < 1:
            raise ValueError("--workers must be at least 1")
        self.count = count
        self.command = command  # the argv of worker i
        self.pass_fds = tuple(pass_fds)
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self.failed = False

    def _spawn(self, index: int, restarted: bool = False) -> None:
        # A session of its own: a Ctrl-C at the terminal reaches the supervisor only, which passes it
        # on once (two would make the worker end its calls at once instead of draining them).
        proc = subprocess.Popen(
            self.command(index), pass_fds=self.pass_fds, start_new_session=True, preexec_fn=_die_with_parent
        )
        self.workers[index] = Worker(index, proc, restarted)
        log.warning("worker %d started (pid %d)", index, proc.pid)

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)

    def on_signal(self, signum: int, _frame=None) -> None:
        name = signal.Signals(signum).name
        if not self.stopping:
            log.warning("%s: draining %d worker(s)", name, len(self.workers))
        self.stopping = True
        self._signal_all(signum)

    def run(self) -> int:
        """Until every worker stopped: 0 if each stopped cleanly after a signal, else 1."""
        for index in range(self.count):
            if self.stopping:  # a signal while the workers start: those started get it
                break
            self._spawn(index)
        live = set(self.workers)
        while live:
            time.sleep(POLL_S)
            for index in sorted(live):
                worker = self.workers[index]
                code = worker.proc.poll()
                if code is None:
                    continue
                if self.stopping:
                    live.discard(index)
                    if code != 0:
                        self.failed = True
                    log.warning("worker %d (pid %d) stopped, exit status %d", index, worker.proc.pid, code)
                    continue
                lived = time.monotonic() - worker.started
                # a crash, or a worker drained on its own (SIGTERM to its pid): a fresh one takes its place
                log.error("worker %d (pid %d) ended, exit status %d, after %.1f s: restarting it", index,
                          worker.proc.pid, code, lived)  # fmt: skip
                if worker.restarted and lived < CRASH_LOOP_S:
                    log.error("worker %d died again within %.0f s of its restart: stopping every worker",
                              index, CRASH_LOOP_S)  # fmt: skip
                    self.failed = True
                    live.discard(index)
                    self.stopping = True
                    self._signal_all(signal.SIGTERM)
                    continue
                self._spawn(index, restarted=True)
        return 1 if self.failed else 0


def _die_with_parent() -> None:
    """In a worker before exec (Linux): SIGTERM it if the supervisor dies, so no worker is orphaned."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def shared_emulators(profile: str, config: str | None):
    """One set of provider emulators (``voxroute emulators``) for every worker; yields their URLs."""
    cmd = [
        sys.executable,
        "-m",
        "voxroute.cli",
        "emulators",
        "--profile",
        profile,
        "--quiet",
        "--call-control",
    ]
    if config:
        cmd += ["--config", config]
    # its own process group: a Ctrl-C at the terminal reaches the workers, which drain using the
    # emulators; the supervisor stops them after the workers
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise RuntimeError(f"the emulators did not start (exit status {proc.wait()})")
        yield json.loads(line)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def supervise(
    count: int,
    host: str,
    port: int,
    worker_args: list[str],
    *,
    emulators: tuple[str, str | None] | None = None,
) -> int:
    """Bind ``host:port``, run ``count`` workers (``voxroute serve`` + ``worker_args``) on it until
    a signal stops them; the exit status. ``emulators``: (profile, config) of shared emulators."""
    sock = bind_listener(host, port)
    bound = sock.getsockname()
    log.warning("voxroute supervisor: %d workers on %s:%d", count, bound[0], bound[1])
    with contextlib.ExitStack() as stack:
        args = list(worker_args)
        if emulators is not None:
            urls = stack.enter_context(shared_emulators(*emulators))
            args += ["--emulators", json.dumps(urls)]
        base = [sys.executable, "-m", "voxroute.cli", "serve", "--listen-fd", str(sock.fileno()), *args]
        supervisor = Supervisor(count, lambda i: [*base, "--worker-index", str(i)], (sock.fileno(),))
        previous = {s: signal.signal(s, supervisor.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = supervisor.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            sock.close()
    log.warning("voxroute supervisor stopped (exit status %d)", code)
    return code


def inherited_listener(fd: int) -> socket.socket:
    """The supervisor's listening socket in a worker."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    os.set_inheritable(fd, False)
    return sock
