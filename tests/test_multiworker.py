"""Several voxroute workers (issue 15), as real processes on 127.0.0.1.

- Two ``voxroute serve`` processes behind a real nginx configured by ``deploy/nginx/`` (the
  locations file as shipped, the upstream file with this test's ports) and one PostgreSQL database
  of the test's own: a call's webhook and stream land on different workers; after a failed
  transfer, the dial action and the resumed stream land on the worker that did not run the first
  leg, and the conversation goes on with its history; ``GET /calls/{id}/handoff`` answers from
  either worker.
- Drain: SIGTERM to the worker carrying a call: the call finishes, a new call goes to the other
  worker (nginx retries the draining worker's 503), and every turn of both is in the call log.
- ``voxroute serve --workers 2``: two processes on one port, each reachable on its own port too;
  a worker killed is restarted; SIGTERM stops them all, exit 0.

nginx (Debian's ``nginx``) and PostgreSQL (``VOXROUTE_TEST_POSTGRES_URL``, ``.ci/postgres.sh``)
are required services: without them these tests skip, or fail under VOXROUTE_REQUIRE_SERVICES=1.
The provider emulators and the fake carrier run in the test's own process (profile ``zero``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import text

from tests.conftest import services_required
from tests.test_calllog import _postgres_database
from voxroute.agent.config import DEFAULT_CONFIG_PATH, load_config
from voxroute.agent.fixture import Fixture, load
from voxroute.emulators.carrier import dial
from voxroute.emulators.stack import EmulatorStack, run_emulators
from voxroute.server import ws_url
from voxroute.testing.ports import free_port

VOXROUTE = [sys.executable, "-m", "voxroute.cli"]
DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "nginx"
CALLER = {"From": "+919800000001", "To": "+918000000000"}
TOKEN = "twilio-auth-token-of-this-test"
START_S = 60.0  # a worker's start on a loaded machine (imports, the classifier, phrases)


def _required(reason: str) -> None:
    if services_required():
        pytest.fail(reason)
    pytest.skip(reason)


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        _required("nginx not installed (Debian: apt-get install nginx)")
    return found  # type: ignore[return-value]


def _bare_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("SARVAM_API_KEY", "OPENROUTER_API_KEY", "TWILIO_AUTH_TOKEN", "VOXROUTE_API_KEY",
                "VOXROUTE_DATABASE_URL", "TWILIO_ACCOUNT_SID"):  # fmt: skip
        env.pop(key, None)
    return env


# ---------------------------------------------------------------- the services


def render_nginx(directory: Path, port: int, workers: list[int], media: list[int]) -> Path:
    """nginx.conf for this test: deploy/nginx/voxroute-locations.conf included as shipped, the
    upstream file with the workers' ports (``voxroute``) and media ports (``voxroute_media``) in place
    of its sample servers, an access log that names the worker (upstream) of every request."""
    upstream = (DEPLOY / "voxroute-upstream.conf").read_text()
    samples = re.findall(r"server 127\.0\.0\.1:\d+", upstream)
    assert len(samples) == len(workers) + len(media) == 4, samples
    for sample, worker in zip(samples, workers + media, strict=True):
        upstream = upstream.replace(sample, f"server 127.0.0.1:{worker}")
    (directory / "voxroute-upstream.conf").write_text(upstream)
    temp = "\n".join(f"  {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                              "uwsgi", "scgi"))  # fmt: skip
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{ worker_connections 512; }}
http {{
  log_format upstreams '$msec $request_time $request_method $uri $status "$upstream_addr" "$upstream_status"';
  access_log {directory / "access.log"} upstreams;
{temp}
  include {directory / "voxroute-upstream.conf"};
  server {{
    listen 127.0.0.1:{port};
    include {DEPLOY / "voxroute-locations.conf"};
  }}
}}
"""
    )
    return conf


@dataclass
class Worker:
    port: int
    proc: subprocess.Popen
    log: Path
    media_port: int | None = None  # the carriers' streams (--media-port)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://{self.addr}"


@dataclass
class Cluster:
    proxy: str  # nginx: what the carrier calls
    workers: list[Worker]
    emulators: EmulatorStack
    database: str
    nginx_dir: Path
    config: dict = field(default_factory=dict)

    def worker(self, addr: str) -> int:
        """The worker at ``addr``: its main port, or its media port (the streams)."""
        for i, w in enumerate(self.workers):
            if addr in (w.addr, f"127.0.0.1:{w.media_port}"):
                return i
        raise ValueError(f"{addr}: no worker there")

    def requests(self) -> list[tuple[str, str, int, list[str], list[str]]]:
        """The access log: (method, path, status, upstreams tried, their statuses), in the order the
        requests came (nginx writes a line when a request ends: a stream's when its call ends)."""
        rows = []
        for line in (self.nginx_dir / "access.log").read_text().splitlines():
            match = re.fullmatch(r'(\S+) (\S+) (\S+) (\S+) (\d+) "(.*)" "(.*)"', line)
            assert match is not None, line
            end, took, method, path, status, addrs, statuses = match.groups()
            start = float(end) - float(took)
            rows.append((start, (method, path, int(status), addrs.split(", "), statuses.split(", "))))
        return [row for _, row in sorted(rows, key=lambda r: r[0])]

    def served(self, method: str, path: str) -> list[int]:
        """Which worker answered each such request (the last upstream nginx tried)."""
        return [self.worker(r[3][-1]) for r in self.requests() if r[0] == method and r[1] == path]


def _start_worker(port: int, media: int, config: Path, urls: dict, env: dict, directory: Path) -> Worker:
    directory.mkdir()
    log = directory / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*VOXROUTE, "serve", "--dev", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
             "--media-port", str(media), "--emulators", json.dumps(urls)],
            env={**env, "VOXROUTE_DATA_DIR": str(directory)}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Worker(port, proc, log, media)


def _start_nginx(nginx: str, conf: Path, directory: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(directory), "-e", str(directory / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def _wait_serving(worker: Worker) -> None:
    deadline = time.monotonic() + START_S
    while "serving on" not in worker.log.read_text():
        assert worker.proc.poll() is None, worker.log.read_text()
        assert time.monotonic() < deadline, "worker did not start: " + worker.log.read_text()
        time.sleep(0.1)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, twilio_token: str | None = None, **shutdown) -> AsyncIterator[Cluster]:
    """nginx on a free port in front of two ``voxroute serve --dev`` workers (providers at the
    emulators of this process), one PostgreSQL database. ``twilio_token``: the workers check Twilio's
    signatures with it."""
    nginx = _nginx()
    async with _postgres_database("voxroute_workers") as database, run_emulators("zero") as emu:
        # The ports are picked once the emulators listen: picked before, one of them was free when
        # picked and an emulator's by the time its worker started (address already in use).
        proxy_port, ports, media = free_port(), [free_port(), free_port()], [free_port(), free_port()]
        data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
        data.setdefault("telephony", {})["public_base_url"] = f"http://127.0.0.1:{proxy_port}"
        data.setdefault("shutdown", {}).update(shutdown)
        config = tmp_path / "voxroute.yaml"
        config.write_text(yaml.safe_dump(data, allow_unicode=True))
        nginx_dir = tmp_path / "nginx"
        nginx_dir.mkdir()
        # The media upstream lists the workers the other way round: a call's first webhook and its stream
        # land on different workers (each upstream takes turns on its own), as they may in production.
        conf = render_nginx(nginx_dir, proxy_port, ports, media[::-1])
        urls = {"sarvam": emu.sarvam_url, "openrouter": emu.openrouter_url, "twilio": emu.urls.twilio_api}
        env = {**_bare_env(), "VOXROUTE_DATABASE_URL": database, "VOXROUTE_CALLER_SALT": "salt-of-this-test"}
        if twilio_token:
            env["TWILIO_AUTH_TOKEN"] = twilio_token
        workers: list[Worker] = []
        proxy = _start_nginx(nginx, conf, nginx_dir)
        try:
            for i, (port, media_port) in enumerate(zip(ports, media, strict=True)):
                workers.append(_start_worker(port, media_port, config, urls, env, tmp_path / f"worker{i}"))
            for worker in workers:
                await asyncio.to_thread(_wait_serving, worker)
            assert proxy.poll() is None, (nginx_dir / "error.log").read_text()
            yield Cluster(f"http://127.0.0.1:{proxy_port}", workers, emu, database, nginx_dir, data)
        finally:
            for worker in workers:
                await asyncio.to_thread(_stop, worker.proc)
            await asyncio.to_thread(_stop, proxy, signal.SIGQUIT)


async def _turns(database: str, *call_sids: str) -> list[tuple[str, int, int, str | None]]:
    """(call, turn index, leg, transcript) of every stored turn of these calls."""
    from voxroute.agent.calllog.store import make_engine

    engine = make_engine(database)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT call_sid, turn_index, leg, transcript FROM turns WHERE call_sid = ANY(:sids) "
                    "ORDER BY call_sid, turn_index"
                ),
                {"sids": list(call_sids)},
            )
            return [tuple(r) for r in rows]
    finally:
        await engine.dispose()


async def _until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting: {what() if callable(what) else what}"
        await asyncio.sleep(0.1)


def _parameters(twiml: str) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in ET.fromstring(twiml).iter("Parameter")}  # type: ignore[misc]


def _first(fixture: Fixture, n: int) -> Fixture:
    """The fixture call with its first ``n`` utterances only (a shorter test)."""
    fixture.script = fixture.script.model_copy(update={"utterances": fixture.script.utterances[:n]})
    return fixture


def _signed(c: Cluster, path: str, form: dict[str, str]) -> dict:
    """A Twilio webhook's form and signature, over the public URL (nginx's) as Twilio signs it."""
    from twilio.request_validator import RequestValidator

    signature = RequestValidator(TOKEN).compute_signature(c.proxy + path, form)
    return {"data": form, "headers": {"X-Twilio-Signature": signature}}


def _sid() -> str:
    return "CA" + uuid.uuid4().hex


# ---------------------------------------------------------------- the tests


async def test_a_call_moves_between_workers_behind_nginx_and_keeps_its_history(tmp_path):
    """With Twilio's signatures checked: they are over the public URL (nginx's), which the workers
    rebuild from telephony.public_base_url and the path nginx passes unchanged."""
    async with (
        cluster(tmp_path, twilio_token=TOKEN) as c,
        httpx.AsyncClient(base_url=c.proxy, timeout=10) as http,
    ):
        sid = _sid()
        voice = await http.post("/twilio/voice", **_signed(c, "/twilio/voice", {"CallSid": sid, **CALLER}))
        assert voice.status_code == 200, voice.text
        params = _parameters(voice.text)
        # The caller says one thing, then keys 0 over the answer: a request for a person.
        first_leg = load("dtmf_entry")
        items = first_leg.script.utterances
        keyed = next(u for u in items if u.dtmf)
        keyed = keyed.model_copy(update={"dtmf": "0#", "play": "barge_in", "offset_ms": 500})
        first_leg.script = first_leg.script.model_copy(update={"utterances": [items[0], keyed]})
        stream = ws_url(c.proxy) + "/twilio/stream"
        assert params.get("call_token")  # the per-call HMAC a signed set-up carries
        first = await dial(first_leg, stream, custom_parameters=params, call_sid=sid, speed=2.0,
                           auth_token=TOKEN, public_url=stream)  # fmt: skip
        # The caller asked for a person: the worker of the stream transferred the call with <Dial>.
        updates = [r.form["Twiml"] for r in c.emulators.twilio.for_call(sid) if r.form.get("Twiml")]  # type: ignore[union-attr]
        assert len(updates) == 1 and "<Dial" in updates[0], updates
        assert first.closed_by == "server", first.as_dict()
        # The handoff record from either worker (round robin; three reads put the dial action below
        # on the worker that did not run the stream: the webhooks and the streams are two upstreams,
        # each taking turns on its own).
        records = [await http.get(f"/calls/{sid}/handoff") for _ in range(3)]
        # The human leg fails: Twilio calls the <Dial action>; its TwiML brings the caller back.
        dial_form = {"CallSid": sid, "DialCallStatus": "no-answer", **CALLER}
        back = await http.post(
            f"/twilio/dial-action/{sid}", **_signed(c, f"/twilio/dial-action/{sid}", dial_form)
        )
        assert back.status_code == 200, back.text
        after = await http.get(f"/calls/{sid}/handoff")  # the dial result, from the other worker
        resume = _parameters(back.text)
        assert resume.get("resume") == "transfer_failed"
        again = _first(load("order_status"), 1)
        second = await dial(again, stream, custom_parameters=resume, call_sid=sid, speed=2.0,
                            auth_token=TOKEN, public_url=stream)  # fmt: skip
        assert second.completed, second.as_dict()

        (webhook,) = c.served("POST", "/twilio/voice")
        streams = c.served("GET", "/twilio/stream")
        assert len(streams) == 2
        assert webhook != streams[0], "the webhook and the stream of the call landed on one worker"
        (dial_action,) = c.served("POST", f"/twilio/dial-action/{sid}")
        assert dial_action != streams[0] and streams[1] != streams[0], (
            "the dial action and the resumed stream must reach the worker that did not run the first leg"
        )
        reads = c.served("GET", f"/calls/{sid}/handoff")
        assert set(reads[:3]) == {0, 1}  # the handoff record, from both workers
        assert reads[3] != dial_action, "the dial result must be read from the worker that did not take it"
        for record in records:
            assert record.status_code == 200, record.text
            assert record.json()["transferred"] is True and record.json()["to"] == "+918000000999"
        assert records[0].json()["whisper"] == records[1].json()["whisper"]
        assert after.status_code == 200 and after.json()["human_leg"]["status"] == "no-answer"

        # The resumed leg continues the first leg's conversation: its turns are numbered after the
        # first leg's (the worker knew them only through the database), leg 2.
        async def both_legs():
            rows = await _turns(c.database, sid)
            return rows if any(row[2] == 2 for row in rows) else None

        rows = await _until(both_legs, 10, "the resumed leg's turns in the call log")
        # The resumed leg's worker, which never carried the first leg, holds its whole conversation.
        resumed = (await http.get(c.workers[streams[1]].base + f"/calls/{sid}")).json()
        said = [m["content"] for m in resumed["history"] if m["role"] == "user"]
        assert said == [items[0].text, "(keypad) 0#", again.script.utterances[0].text], said
        offer = load_config().agent.callback_phrases["en-IN"]  # (cut short if the caller talked over it)
        assert any(m["content"].startswith(offer) for m in resumed["history"]), resumed["history"]
        one = [i for _, i, leg, _ in rows if leg == 1]
        two = [i for _, i, leg, _ in rows if leg == 2]
        assert len(one) >= 2 and two == list(range(max(one) + 1, max(one) + 1 + len(two)))


async def test_sigterm_drains_a_worker_the_call_finishes_and_new_calls_go_to_the_other(tmp_path):
    async with cluster(tmp_path, drain_s=30) as c, httpx.AsyncClient(base_url=c.proxy, timeout=10) as http:
        fixture, later = _first(load("order_status"), 2), _first(load("booking_change"), 1)
        first_sid, second_sid = _sid(), _sid()
        params = _parameters((await http.post("/twilio/voice", data={"CallSid": first_sid, **CALLER})).text)
        call = asyncio.create_task(
            dial(
                fixture,
                ws_url(c.proxy) + "/twilio/stream",
                custom_parameters=params,
                call_sid=first_sid,
                speed=2.0,
            )
        )

        async def carrier_of_the_call():
            for i, w in enumerate(c.workers):
                if (await http.get(w.base + "/healthz")).json()["active_calls"] == 1:
                    return str(i)
            return None

        busy = int(await _until(carrier_of_the_call, 10, "the call on a worker"))
        other = 1 - busy
        c.workers[busy].proc.send_signal(signal.SIGTERM)

        async def unready():
            return (await http.get(c.workers[busy].base + "/readyz")).status_code == 503

        await _until(unready, 5, "the draining worker unready")
        # New calls while it drains: both the webhook and the stream end up on the other worker,
        # whichever worker nginx tries first.
        for _ in range(2):
            probe = await http.post("/twilio/voice", data={"CallSid": _sid(), **CALLER})
            assert probe.status_code == 200 and "<Connect>" in probe.text
        params = _parameters((await http.post("/twilio/voice", data={"CallSid": second_sid, **CALLER})).text)
        second = await dial(later, ws_url(c.proxy) + "/twilio/stream", custom_parameters=params,
                            call_sid=second_sid, speed=2.0)  # fmt: skip
        first = await call
        assert first.completed and not first.errors, first.as_dict()
        assert second.completed and not second.errors, second.as_dict()
        assert await asyncio.to_thread(c.workers[busy].proc.wait, 30) == 0
        log = c.workers[busy].log.read_text()
        assert "draining" in log and "voxroute stopped" in log
        assert "ending 1 call(s) with the closing phrase" not in log  # it finished on its own

        voices = [r for r in c.requests() if r[0] == "POST" and r[1] == "/twilio/voice"]
        streams = [r for r in c.requests() if r[0] == "GET" and r[1] == "/twilio/stream"]
        assert all(c.worker(r[3][-1]) == other and r[2] == 200 for r in voices[1:]), voices
        assert c.worker(streams[-1][3][-1]) == other, streams
        refused = [r for r in voices[1:] + streams if "503" in r[4]]
        assert all(c.worker(r[3][0]) == busy for r in refused), refused  # the 503s came from the drainer
        assert refused, "nginx never tried the draining worker: the retry was not exercised"

        # Every turn of both calls is in the call log: all the caller said, in order (a pause may
        # split an utterance into two turns).
        said = {sid: " ".join(u.text for u in f.script.utterances if u.text)
                for sid, f in ((first_sid, fixture), (second_sid, later))}  # fmt: skip
        stored: dict[str, str] = {}

        async def all_turns():
            rows = await _turns(c.database, first_sid, second_sid)
            stored.update({sid: " ".join(r[3] or "" for r in rows if r[0] == sid) for sid in said})
            return stored == said

        await _until(all_turns, 10, lambda: f"every turn in the call log: {stored} != {said}")


def test_serve_workers_two_processes_on_one_port(tmp_path):
    port, own, sip, audiosocket = free_port(), free_port(), free_port(udp=True), free_port()
    env = {**_bare_env(), "VOXROUTE_DATA_DIR": str(tmp_path)}
    log = tmp_path / "supervisor.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*VOXROUTE, "serve", "--dev", "--workers", "2", "--port", str(port), "--worker-ports", str(own),
             "--profile", "zero", "--sip", f"127.0.0.1:{sip}", "--audiosocket", f"127.0.0.1:{audiosocket}"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_S
        while log.read_text().count("serving on") < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        pids = re.findall(r"worker (\d) started \(pid (\d+)\)", log.read_text())
        assert sorted(i for i, _ in pids) == ["0", "1"]
        for i in (0, 1):  # each worker on its own port too, and the shared one answers
            assert httpx.get(f"http://127.0.0.1:{own + i}/readyz").json()["ready"] is True
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        # SIP and AudioSocket in worker 0 only: one UDP port cannot be split by dialog.
        assert log.read_text().count(f"SIP listening on udp 127.0.0.1:{sip}") == 1
        with socket.create_connection(("127.0.0.1", audiosocket), timeout=5):
            pass
        # A worker that dies is logged and restarted.
        os.kill(int(dict(pids)["1"]), signal.SIGKILL)
        deadline = time.monotonic() + START_S
        while log.read_text().count("serving on") < 3:
            assert time.monotonic() < deadline + 30, log.read_text()
            time.sleep(0.1)
        assert re.search(rf"worker 1 \(pid {dict(pids)['1']}\) ended, exit status -9", log.read_text())
        assert len(re.findall(r"worker 1 started", log.read_text())) == 2
        assert httpx.get(f"http://127.0.0.1:{own + 1}/readyz").status_code == 200
        assert log.read_text().count("SIP listening on udp") == 1  # the new worker 1 runs none either
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        text_ = log.read_text()
        assert text_.count("voxroute stopped") == 2  # the killed worker never said it
        assert "voxroute supervisor stopped (exit status 0)" in text_
    finally:
        _stop(proc)
