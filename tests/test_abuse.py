"""The abuse suite (issue 18): a real ``voxroute serve`` process in production mode, attacked over
real sockets on 127.0.0.1.

The server runs without ``--dev``: every carrier enabled with its secret, the operator key set,
provider keys set, the providers' URLs pointing at the emulators (a separate ``voxroute
emulators`` process, profile ``zero``). The tests are what a hostile or careless peer does:
forged and missing signatures on every carrier, operator routes without the key, a start without
secrets, calls beyond the cap, idle and half-open sockets, a slow upgrade, a flood of DTMF digits
beside a real-time call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import services_required
from voxroute.agent.config import DEFAULT_CONFIG_PATH
from voxroute.agent.fixture import load
from voxroute.emulators.carriers import FakeCarrierSecrets
from voxroute.replay import replay_fixture
from voxroute.telephony.twilio import TwilioPeer
from voxroute.testing.ports import free_port

VOXROUTE = [sys.executable, "-m", "voxroute.cli"]
TWILIO_TOKEN = "abuse-twilio-token-0123456789abcdef"
EXOTEL_CREDS = "abusekey:abusetoken"
PLIVO_TOKEN = "abuse-plivo-token-0123456789"
TELNYX_SEED = bytes(range(32))
TELNYX_SECRET = "abuse-telnyx-stream-secret"
OPERATOR_KEY = "abuse-operator-key-0123456789"
MAX_CALLS = 3
STEP = 10.0  # bound on each wait: a hang fails the test instead of blocking it


def _telnyx_public() -> str:
    key = Ed25519PrivateKey.from_private_bytes(TELNYX_SEED).public_key()
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _bare_env() -> dict[str, str]:
    """The test process's environment without any secret voxroute reads."""
    drop = {
        "SARVAM_API_KEY", "OPENROUTER_API_KEY", "TWILIO_AUTH_TOKEN", "VOXROUTE_API_KEY", "TWILIO_ACCOUNT_SID",
        "EXOTEL_STREAM_CREDENTIALS", "PLIVO_AUTH_TOKEN", "PLIVO_AUTH_ID", "TELNYX_PUBLIC_KEY",
        "TELNYX_STREAM_SECRET", "TELNYX_API_KEY", "VOXROUTE_WEBHOOK_SECRET", "VOXROUTE_CONFIG",
        "VOXROUTE_CHAT_KEY", "VOXROUTE_DATABASE_URL", "VOXROUTE_CALLER_SALT",
    }  # fmt: skip
    return {k: v for k, v in os.environ.items() if k not in drop}


def secrets_env() -> dict[str, str]:
    return {
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "EXOTEL_STREAM_CREDENTIALS": EXOTEL_CREDS,
        "PLIVO_AUTH_TOKEN": PLIVO_TOKEN,
        "TELNYX_PUBLIC_KEY": _telnyx_public(),
        "TELNYX_STREAM_SECRET": TELNYX_SECRET,
        "VOXROUTE_API_KEY": OPERATOR_KEY,
        "VOXROUTE_CHAT_KEY": "abuse-chat-key",
        "OPENROUTER_API_KEY": "abuse-openrouter-key",
        "SARVAM_API_KEY": "abuse-sarvam-key",
    }


def production_config(path: Path, port: int, emulators: dict[str, str] | None, **telephony) -> Path:
    """The default config with every carrier enabled and, when given, providers at the emulators."""
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    if emulators is not None:
        sarvam, openrouter = emulators["sarvam"].rstrip("/"), emulators["openrouter"].rstrip("/")
        for prov in data["providers"].values():
            prov["base_url"] = {"sarvam": f"{sarvam}/v1", "openrouter": f"{openrouter}/api/v1"}[
                prov["flavor"]
            ]
        data.setdefault("sarvam", {}).update(ws_base_url="ws" + sarvam[len("http") :], rest_base_url=sarvam)
    data.setdefault("telephony", {}).update(
        public_base_url=f"http://127.0.0.1:{port}",
        carriers=["twilio", "exotel", "plivo", "telnyx"],
        max_concurrent_calls=MAX_CALLS,
        **telephony,
    )
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], **kw):
    proc = subprocess.Popen(args, env=env, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class Server:
    def __init__(self, base: str, config: Path, proc: subprocess.Popen, log: Path) -> None:
        self.base = base
        self.ws = "ws" + base[len("http") :]
        self.config = config
        self.proc = proc
        self.log = log
        self.fixtures: Path | None = None


HUGE = "huge_transcript"  # billing_dispute's audio, its first utterance transcribed as 1 MB of text


def emulator_fixtures(directory: Path) -> Path:
    """The fixtures the emulated STT knows: every shipped one, except that billing_dispute's audio is
    ``HUGE``, whose first utterance the STT transcribes as 1 MB of text (digits included)."""
    from voxroute.agent.fixture import FIXTURES_DIR

    directory.mkdir()
    for path in FIXTURES_DIR.iterdir():
        if path.suffix in (".json", ".wav") and path.name != "billing_dispute.json":
            (directory / path.name).symlink_to(path)
    script = json.loads((FIXTURES_DIR / "billing_dispute.json").read_text())
    script["call"] = HUGE
    sentence = "I was charged twice for order 1745 on card 4111 1111 1111 1111, call me on 98450 12345. "
    script["utterances"][0]["text"] = (sentence * (1_000_000 // len(sentence) + 1))[:1_000_000]
    (directory / f"{HUGE}.json").write_text(json.dumps(script))
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abuse")
    env = _bare_env()
    fixtures = {"VOXROUTE_FIXTURES": str(emulator_fixtures(tmp / "fixtures"))}
    with _process(
        [*VOXROUTE, "emulators", "--profile", "zero", "--quiet"],
        {**env, **fixtures},
        stdout=subprocess.PIPE,
        text=True,
    ) as emu:
        urls = json.loads(emu.stdout.readline())  # type: ignore[union-attr]
        port = free_port()
        config = production_config(tmp / "voxroute.yaml", port, urls, media_silence_timeout_s=20)
        env = {**env, **secrets_env(), "VOXROUTE_DATA_DIR": str(tmp / "data")}
        log = tmp / "serve.log"
        with (
            log.open("w") as out,
            _process(
                [*VOXROUTE, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                env,
                stdout=out,
                stderr=subprocess.STDOUT,
            ) as proc,
        ):
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while "serving on" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "server did not start: " + log.read_text()
                time.sleep(0.2)
            server = Server(base, config, proc, log)
            server.fixtures = Path(fixtures["VOXROUTE_FIXTURES"])
            yield server


# ---------------------------------------------------------------- helpers


def _operator() -> dict[str, str]:
    return {"X-API-Key": OPERATOR_KEY}


async def _close_code(ws) -> int | None:
    async with asyncio.timeout(STEP):
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


async def _handshake_status(url: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers or {}, open_timeout=STEP):
            pass
    return info.value.response.status_code


def _twilio_signature(url: str, params: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, params or {})}


async def _twilio_call(server: Server, http: httpx.AsyncClient, call_sid: str) -> tuple[httpx.Response, dict]:
    """The voice webhook, signed as Twilio signs it; the TwiML and its stream parameters."""
    form = {"CallSid": call_sid, "From": "+919800000001", "To": "+918000000000"}
    resp = await http.post(
        "/twilio/voice", data=form, headers=_twilio_signature(server.base + "/twilio/voice", form)
    )
    if resp.status_code != 200:  # refused (503 while draining): no TwiML
        return resp, {}
    params = {p.get("name"): p.get("value") for p in ET.fromstring(resp.text).iter("Parameter")}
    return resp, params


@contextlib.asynccontextmanager
async def _twilio_stream(server: Server, call_sid: str, params: dict[str, str]):
    url = server.ws + "/twilio/stream"
    headers = _twilio_signature(url)  # the public base is http://, so the signed URL is ws://
    async with connect(url, additional_headers=headers, open_timeout=STEP, max_size=None) as ws:
        peer = TwilioPeer("MZ" + call_sid[2:], call_sid, custom_parameters=params)
        await ws.send(peer.connected())
        await ws.send(peer.start())
        yield ws, peer


# ---------------------------------------------------------------- fail closed


async def test_forged_or_missing_signatures_are_refused_on_every_carrier(server):
    form = {"CallSid": "CAforged", "From": "+919800000001", "To": "+918000000000"}
    forged_twilio = RequestValidator("not-the-token").compute_signature(server.base + "/twilio/voice", form)
    forged_basic = {"Authorization": "Basic " + base64.b64encode(b"abusekey:wrong").decode()}
    async with httpx.AsyncClient(base_url=server.base, timeout=STEP) as http:
        webhooks = {
            "twilio voice, none": await http.post("/twilio/voice", data=form),
            "twilio voice, forged": await http.post(
                "/twilio/voice", data=form, headers={"X-Twilio-Signature": forged_twilio}
            ),
            "twilio whisper": await http.post("/twilio/whisper/CAx", data=form),
            "twilio dial action": await http.post("/twilio/dial-action/CAx", data=form),
            "plivo answer, none": await http.post("/plivo/answer", data={"CallUUID": "u1"}),
            "plivo answer, forged": await http.post(
                "/plivo/answer",
                data={"CallUUID": "u1"},
                headers={"X-Plivo-Signature-V3": "Zm9yZ2Vk", "X-Plivo-Signature-V3-Nonce": "1"},
            ),
            "plivo status": await http.post("/plivo/stream-status", data={"CallUUID": "u1"}),
            "plivo transfer": await http.post("/plivo/transfer/u1", data={"CallUUID": "u1"}),
            "telnyx texml, none": await http.post("/telnyx/texml", data={"CallSid": "t1"}),
            "telnyx texml, forged": await http.post(
                "/telnyx/texml",
                data={"CallSid": "t1"},
                headers={
                    "telnyx-signature-ed25519": base64.b64encode(bytes(64)).decode(),
                    "telnyx-timestamp": str(int(time.time())),
                },
            ),  # fmt: skip
            "exotel voicebot, none": await http.get("/exotel/voicebot", params={"CallSid": "e1"}),
            "exotel voicebot, forged": await http.get(
                "/exotel/voicebot", params={"CallSid": "e1"}, headers=forged_basic
            ),
        }
        assert {what: r.status_code for what, r in webhooks.items()} == dict.fromkeys(webhooks, 403)

        # Streams whose upgrade carries the check: the handshake itself fails with 403.
        twilio_ws = server.ws + "/twilio/stream"
        forged_ws = {
            "X-Twilio-Signature": RequestValidator("nope").compute_signature("wss" + twilio_ws[2:], {})
        }
        assert await _handshake_status(twilio_ws) == 403
        assert await _handshake_status(twilio_ws, forged_ws) == 403
        assert await _handshake_status(server.ws + "/exotel/stream") == 403
        assert await _handshake_status(server.ws + "/exotel/stream", forged_basic) == 403

        # A signed Twilio upgrade whose start lacks our per-call token: closed 1008, no call.
        async with _twilio_stream(server, "CAnotoken", {"from": "+919800000001"}) as (ws, _):
            assert await _close_code(ws) == 1008
        # Plivo and Telnyx sign the set-up, not the upgrade: a start without the per-call token
        # from our signed answer is closed 1008 before any call starts.
        from voxroute.telephony.plivo import PlivoPeer
        from voxroute.telephony.telnyx import TelnyxPeer

        async with connect(server.ws + "/plivo/stream", open_timeout=STEP) as ws:
            await ws.send(PlivoPeer("stream-1", "plivo-forged", extra_headers="callToken=forged").start())
            assert await _close_code(ws) == 1008
        async with connect(server.ws + "/telnyx/stream", open_timeout=STEP) as ws:
            peer = TelnyxPeer("stream-1", "telnyx-forged", custom_parameters={"call_token": "forged"})
            await ws.send(peer.connected())
            await ws.send(peer.start())
            assert await _close_code(ws) == 1008

        calls = (await http.get("/calls", headers=_operator())).json()
    forged_ids = {"CAforged", "CAnotoken", "plivo-forged", "telnyx-forged"}
    assert calls.keys() == {"active", "finished"}
    assert not forged_ids & {*calls["active"], *calls["finished"]}  # none of them became a call
    text = server.log.read_text()
    assert "rejected (403)" in text and "closing (1008)" in text


async def test_operator_and_debug_routes_need_the_key_in_any_of_its_forms(server):
    routes = [
        ("GET", "/calls"),
        ("GET", "/calls/CAnope"),
        ("GET", "/calls/CAnope/handoff"),
        ("POST", "/calls/CAnope/outcome"),
        ("GET", "/debug/stats"),
        ("GET", "/debug/engines"),
        ("GET", "/debug/routing"),
        ("POST", "/debug/stats/reset"),
        ("GET", "/metrics"),
    ]
    wrong = [
        {},
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic " + base64.b64encode(b"op:wrong").decode()},
    ]
    good = [
        {"X-API-Key": OPERATOR_KEY},
        {"Authorization": f"Bearer {OPERATOR_KEY}"},
        {"Authorization": "Basic " + base64.b64encode(f"op:{OPERATOR_KEY}".encode()).decode()},
    ]
    body = {"outcome": "resolved"}
    async with httpx.AsyncClient(base_url=server.base, timeout=STEP) as http:
        for method, path in routes:
            for headers in wrong:
                r = await http.request(method, path, headers=headers, json=body if method == "POST" else None)
                assert r.status_code == 401, (method, path, headers, r.status_code)
            for headers in good:
                r = await http.request(method, path, headers=headers, json=body if method == "POST" else None)
                assert r.status_code in (200, 404), (method, path, headers, r.status_code)
        metrics = await http.get("/metrics", headers={"Authorization": f"Bearer {OPERATOR_KEY}"})
        assert "voxroute_event_loop_lag_seconds_bucket" in metrics.text
        assert (
            "voxroute_calls_refused_total" in metrics.text or "# TYPE voxroute_calls_refused" in metrics.text
        )
        # liveness needs no key and says nothing about calls' content
        assert (await http.get("/healthz")).status_code == 200


def test_serve_without_secrets_exits_2_naming_every_missing_variable(tmp_path):
    config = production_config(tmp_path / "all-carriers.yaml", 8080, None)
    data = yaml.safe_load(config.read_text())
    data["telephony"]["twilio_auth_token_env"] = "MY_TWILIO_TOKEN"  # names are configurable
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    proc = subprocess.run(
        [*VOXROUTE, "serve", "--config", str(config), "--port", str(free_port())],
        capture_output=True, text=True, env=_bare_env(), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    expected = [
        "MY_TWILIO_TOKEN", "EXOTEL_STREAM_CREDENTIALS", "PLIVO_AUTH_TOKEN", "TELNYX_PUBLIC_KEY",
        "TELNYX_STREAM_SECRET", "VOXROUTE_API_KEY", "OPENROUTER_API_KEY", "SARVAM_API_KEY",
        "VOXROUTE_CHAT_KEY",
    ]  # fmt: skip
    assert proc.stderr.count("error:") == 1  # one message
    for name in expected:
        assert name in proc.stderr, name
    assert "TWILIO_AUTH_TOKEN" not in proc.stderr
    assert "9 environment variable(s) not set" in proc.stderr and "--dev" in proc.stderr
    # one secret set: it is no longer named, the others still are
    env = {**_bare_env(), "VOXROUTE_API_KEY": "k"}
    proc = subprocess.run(
        [*VOXROUTE, "serve", "--config", str(config), "--port", str(free_port())],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert (
        proc.returncode == 2 and "VOXROUTE_API_KEY" not in proc.stderr and "PLIVO_AUTH_TOKEN" in proc.stderr
    )


def test_serve_with_a_database_url_needs_the_caller_salt(tmp_path, monkeypatch):
    """Several hosts on one database must hash a caller's number alike: without
    VOXROUTE_CALLER_SALT each would make a salt of its own, and repeat contacts would not match."""
    from voxroute.agent.config import load_config
    from voxroute.runtime import missing_secrets

    config = production_config(tmp_path / "voxroute.yaml", 8080, None)
    env = {
        **_bare_env(),
        **secrets_env(),
        "VOXROUTE_DATABASE_URL": "postgresql://voxroute@db.invalid/voxroute",
    }
    proc = subprocess.run(
        [*VOXROUTE, "serve", "--config", str(config), "--port", str(free_port())],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "1 environment variable(s) not set" in proc.stderr and "VOXROUTE_CALLER_SALT" in proc.stderr
    for name, value in {**secrets_env(), "VOXROUTE_DATABASE_URL": "postgresql://db.invalid/v"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VOXROUTE_CALLER_SALT", "one salt for every host")
    assert missing_secrets(load_config(config)) == []
    monkeypatch.delenv("VOXROUTE_DATABASE_URL")  # one host's SQLite file: its own salt file will do
    monkeypatch.delenv("VOXROUTE_CALLER_SALT")
    assert missing_secrets(load_config(config)) == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_serve_dev_refuses_any_host_but_loopback(host):
    proc = subprocess.run(
        [*VOXROUTE, "serve", "--dev", "--host", host, "--port", str(free_port())],
        capture_output=True, text=True, env=_bare_env(), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"--dev binds a loopback address only (127.0.0.1, ::1), not {host}" in proc.stderr


# ---------------------------------------------------------------- bounded


async def test_calls_beyond_the_cap_are_refused_cleanly(server):
    async with (
        httpx.AsyncClient(base_url=server.base, timeout=STEP) as http,
        contextlib.AsyncExitStack() as held,
    ):
        for i in range(MAX_CALLS):
            sid = f"CAcap{i:030d}"
            resp, params = await _twilio_call(server, http, sid)
            assert resp.status_code == 200 and "call_token" in params
            ws, peer = await held.enter_async_context(_twilio_stream(server, sid, params))
            await ws.send(peer.media_pcm(bytes(320)))
        deadline = time.monotonic() + STEP
        while (await http.get("/healthz")).json()["active_calls"] < MAX_CALLS:
            assert time.monotonic() < deadline, "the held calls did not start"
            await asyncio.sleep(0.05)
        assert (await http.get("/readyz")).status_code == 503

        sid = "CAcap" + "9" * 30
        resp, _ = await _twilio_call(server, http, sid)
        reject = ET.fromstring(resp.text).find("Reject")
        assert resp.status_code == 200 and reject is not None and reject.get("reason") == "busy"
        # a stream that comes anyway (its webhook answered before the cap was reached)
        _, params = await _twilio_call_params_for(sid)
        async with _twilio_stream(server, sid, params) as (ws, _):
            assert await _close_code(ws) == 1013
        metrics = (await http.get("/metrics", headers=_operator())).text
        refused = [line for line in metrics.splitlines() if line.startswith("voxroute_calls_refused_total{")]
        assert any('carrier="twilio"' in line and 'reason="busy"' in line and float(line.split()[-1]) >= 2
                   for line in refused), refused  # fmt: skip
        assert (await http.get("/healthz")).json()["active_calls"] == MAX_CALLS
    deadline = time.monotonic() + STEP
    async with httpx.AsyncClient(base_url=server.base, timeout=STEP) as http:
        while (await http.get("/healthz")).json()["active_calls"]:
            assert time.monotonic() < deadline, "the held calls did not end"
            await asyncio.sleep(0.05)
        assert (await http.get("/readyz")).status_code == 200
    assert "refused (busy)" in server.log.read_text()


async def _twilio_call_params_for(call_sid: str) -> tuple[None, dict[str, str]]:
    """The stream parameters our webhook would have handed out for ``call_sid`` (valid call token)."""
    from voxroute.telephony.twiml import call_token

    return None, {"call_sid": call_sid, "from": "+919800000001", "to": "+918000000000",
                  "tenant": "default", "call_token": call_token(TWILIO_TOKEN, call_sid)}  # fmt: skip


def _healthz_latencies(base: str, n: int, pause_s: float = 0.01) -> list[float]:
    out = []
    with httpx.Client(base_url=base, timeout=STEP) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            out.append(time.perf_counter() - t0)
            time.sleep(pause_s)
    return out


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_idle_sockets_do_not_stall_healthz_and_half_requests_are_dropped(server):
    log_from = len(server.log.read_text())  # the module's server: its earlier tests logged too
    host, port = server.base.removeprefix("http://").split(":")
    idle = []
    for i in range(500):
        s = socket.create_connection((host, int(port)), timeout=STEP)
        if i % 2:
            s.sendall(b"GET /heal")  # half a request line
        idle.append(s)
    upgrade = socket.create_connection((host, int(port)), timeout=STEP)
    upgrade.sendall(
        b"GET /twilio/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    )
    opened = time.monotonic()
    try:
        latencies = await asyncio.to_thread(_healthz_latencies, server.base, 300)
        assert time.monotonic() - opened < 9, "the measurement must end before the sockets are dropped"
        p99 = _p99(latencies)
        print(
            f"/healthz with 500 idle sockets: p50 {sorted(latencies)[150] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
        )
        assert p99 < 0.050

        # the slow upgrade (headers never finished) is closed within ~10 s, and so are the idle ones
        upgrade.settimeout(15)
        assert upgrade.recv(1024) == b""
        closed_after = time.monotonic() - opened
        assert 9.0 <= closed_after < 12.0, closed_after
        for s in idle:
            s.settimeout(5)
            try:
                assert s.recv(1024) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in [*idle, upgrade]:
            s.close()
    # 501 sockets expired in the same tick: one line, not 501 (each written on the loop)
    expiries = [
        line
        for line in server.log.read_text()[log_from:].splitlines()
        if "no complete request within" in line
    ]
    assert len(expiries) == 1, expiries[:3]


async def _poll_health(server, latencies: list[float], stop: asyncio.Event) -> None:
    """/healthz every 20 ms until ``stop``: each answer's latency goes to ``latencies``."""
    async with httpx.AsyncClient(base_url=server.base, timeout=STEP) as http:
        while not stop.is_set():
            t0 = time.perf_counter()
            assert (await http.get("/healthz")).status_code == 200
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)


async def test_a_dtmf_flood_beside_a_real_time_call_stalls_nothing(server):
    """20,000 keyed digits on one stream while a real-time fixture call runs on another: /healthz
    stays fast and the other call's turns are within their budgets."""
    fixture = load("order_status")
    latencies: list[float] = []
    stop = asyncio.Event()
    log_from = len(server.log.read_text())  # the server is the module's: its earlier tests logged too

    async def flood() -> None:
        sid = "CAflood" + "0" * 27
        async with httpx.AsyncClient(base_url=server.base, timeout=STEP) as http:
            _, params = await _twilio_call(server, http, sid)
        async with _twilio_stream(server, sid, params) as (ws, peer):
            for i in range(20_000):
                await ws.send(peer.dtmf("0123456789"[i % 10] if i % 10 else "1"))
                if i % 500 == 0:
                    await ws.send(peer.media_pcm(bytes(320)))
            for _ in range(150):  # 3 s of silence: the entry completes and its turn runs
                await ws.send(peer.media_pcm(bytes(320)))
                await asyncio.sleep(0.02)

    os.environ["VOXROUTE_API_KEY"] = OPERATOR_KEY  # replay reads the operator key from here
    try:
        async with asyncio.TaskGroup() as tg:
            poller = tg.create_task(_poll_health(server, latencies, stop))
            call = tg.create_task(
                replay_fixture(
                    fixture,
                    server.base,
                    config=_config_of(server),
                    carrier_secrets=FakeCarrierSecrets(twilio_auth_token=TWILIO_TOKEN),
                )
            )
            await asyncio.sleep(1.0)  # the call is under way when the flood starts
            # The flooding peer is another party: its own thread and loop, so that its tight send
            # loop does not hold up this loop, which plays the real-time caller.
            await asyncio.to_thread(asyncio.run, flood())
            result = await call
            stop.set()
            await poller
    finally:
        os.environ.pop("VOXROUTE_API_KEY", None)
    p99 = _p99(latencies)
    print(f"/healthz during the DTMF flood: {len(latencies)} requests, p99 {p99 * 1000:.1f} ms")
    assert result["ended"] == "completed", result.get("error")
    late = [
        (t["index"], t["first_audio_ms"], t["budget_ms"]) for t in result["turns"] if not t["within_budget"]
    ]
    assert result["turns"] and not late, late
    log = server.log.read_text()[log_from:]
    stalls = log[log.find("event loop stalled") :][:4000]  # the server names the code that stalled
    assert p99 < 0.050, stalls


async def test_a_1_mb_transcript_beside_a_real_time_call_stalls_nothing(server):
    """The STT hands one stream a 1 MB transcript (card and phone numbers in it) while a real-time
    fixture call runs on another: /healthz stays fast, the other call's turns are within budget,
    and the flooded call ends without taking anything down."""
    latencies: list[float] = []
    stop = asyncio.Event()

    def dial(fixture):
        return replay_fixture(
            fixture,
            server.base,
            config=_config_of(server),
            carrier_secrets=FakeCarrierSecrets(twilio_auth_token=TWILIO_TOKEN),
        )

    assert server.fixtures is not None
    huge = await asyncio.to_thread(load, server.fixtures / f"{HUGE}.json")
    os.environ["VOXROUTE_API_KEY"] = OPERATOR_KEY
    try:
        async with asyncio.TaskGroup() as tg:
            poller = tg.create_task(_poll_health(server, latencies, stop))
            call = tg.create_task(dial(load("order_status")))
            await asyncio.sleep(1.0)
            flooded = await tg.create_task(dial(huge))
            result = await call
            stop.set()
            await poller
    finally:
        os.environ.pop("VOXROUTE_API_KEY", None)
    p99 = _p99(latencies)
    print(f"/healthz beside a 1 MB transcript: {len(latencies)} requests, p99 {p99 * 1000:.1f} ms; "
          f"that call ended {flooded['ended']}: {flooded.get('error')}")  # fmt: skip
    assert result["ended"] == "completed", result.get("error")
    late = [
        (t["index"], t["first_audio_ms"], t["budget_ms"]) for t in result["turns"] if not t["within_budget"]
    ]
    assert result["turns"] and not late, late
    log = server.log.read_text()
    assert p99 < 0.050, log[log.find("event loop stalled") :][:4000]
    assert server.proc.poll() is None
    stored = max((len(t.get("transcript") or "") for t in flooded["turns"]), default=0)
    assert stored < 100_000, stored  # the session keeps a bounded transcript, not 1 MB per turn


def _config_of(server: Server):
    from voxroute.agent.config import load_config

    return load_config(server.config)


# ---------------------------------------------------------------- the container

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


def dockerfile_instruction(name: str) -> list[str]:
    """An exec-form instruction of the Dockerfile (``ENTRYPOINT``, ``HEALTHCHECK ... CMD``) as argv."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return json.loads(line[line.index("[") :])
    raise AssertionError(f"no {name} in the Dockerfile")


def _as_nobody(argv: list[str], port: int, media_port: int) -> list[str]:
    """The container's command on this machine: no container runtime here (podman cannot pull the
    base image without network), so the same argv runs as an unprivileged user, with the venv's
    ``voxroute`` and free ports instead of 8080 and 8090 (the media streams). The venv's interpreter lives under /root (mode
    700) here, so the process keeps one capability, CAP_DAC_READ_SEARCH: it may read any file but
    write only where the user may (the data directory)."""
    argv = [str(REPO / ".venv" / "bin" / "voxroute") if a == "voxroute" else a for a in argv]
    argv = [{"8080": str(port), "8090": str(media_port)}.get(a, a) for a in argv]
    if argv[0].endswith("tini") and not Path(argv[0]).exists():
        argv = argv[argv.index("--") + 1 :]  # tini forwards signals; without it the process gets them itself
    caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *caps, *argv]


def _uids(pid: int) -> dict[str, list[int]]:
    def uids(*args: str) -> list[int]:
        out = subprocess.run(["ps", "-o", "uid=", *args], capture_output=True, text=True).stdout
        return [int(u) for u in out.split()]

    return {"self": uids("-p", str(pid)), "children": uids("--ppid", str(pid))}


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
async def test_the_container_entrypoint_runs_unprivileged_serves_health_and_drains_on_sigterm(tmp_path):
    closed = [p for p in REPO.parents if not p.stat().st_mode & 0o001]  # no search bit for others
    if closed:
        reason = (
            f"the checkout sits under {closed[0]} (mode {closed[0].stat().st_mode & 0o777:o}), which the "
            "unprivileged user cannot enter: alembic then finds no migrations folder (in the container "
            "the code is readable by that user); clone elsewhere or chmod o+x that folder"
        )
        if services_required():
            pytest.fail(reason)
        pytest.skip(reason)
    entrypoint = dockerfile_instruction("ENTRYPOINT")
    assert "--host" in entrypoint and "serve" in entrypoint
    health = dockerfile_instruction("HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3")
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, NOBODY, NOBODY)
    env = _bare_env()
    with _process(
        [*VOXROUTE, "emulators", "--profile", "zero", "--quiet"], env, stdout=subprocess.PIPE, text=True
    ) as emu:
        urls = json.loads(emu.stdout.readline())  # type: ignore[union-attr]
        port, media_port = free_port(), free_port()
        config = production_config(tmp_path / "voxroute.yaml", port, urls)
        cfg = yaml.safe_load(config.read_text())
        cfg["shutdown"] = {"drain_s": 1.0, "closing_timeout_s": 8.0}
        config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        config.chmod(0o644)
        env = {**env, **secrets_env(), "VOXROUTE_DATA_DIR": str(data), "VOXROUTE_CONFIG": str(config),
               "HOME": str(data)}  # fmt: skip
        log = tmp_path / "serve.log"
        with (
            log.open("w") as out,
            _process(
                _as_nobody(entrypoint, port, media_port), env, stdout=out, stderr=subprocess.STDOUT
            ) as proc,
        ):
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while "serving on" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.2)
            assert f"carrier media streams on ws://0.0.0.0:{media_port}" in log.read_text()  # --media-port
            ps = await asyncio.to_thread(_uids, proc.pid)
            assert ps["self"] == [NOBODY]
            if "tini" in _as_nobody(entrypoint, port, media_port)[5]:
                assert ps["children"] == [NOBODY]  # voxroute under tini, unprivileged too
            probe = await asyncio.to_thread(
                subprocess.run,
                _as_nobody([a.replace("8080", str(port)) for a in health], port, media_port),
                env=env,
                timeout=30,
            )
            assert probe.returncode == 0  # the image's HEALTHCHECK passes

            # a call in progress when SIGTERM comes: refused new calls, the closing phrase, exit 0
            server = Server(base, config, proc, log)
            async with httpx.AsyncClient(base_url=base, timeout=STEP) as http:
                sid = "CAdrain" + "0" * 27
                _, params = await _twilio_call(server, http, sid)
                async with _twilio_stream(server, sid, params) as (ws, peer):
                    await ws.send(peer.media_pcm(bytes(320)))
                    while (await http.get("/healthz")).json()["active_calls"] < 1:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                    proc.send_signal(signal.SIGTERM)
                    while not (await http.get("/healthz")).json()["draining"]:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                    assert (await http.get("/readyz")).status_code == 503
                    # a new call while draining: 503, so the proxy or Twilio's fallback URL takes it
                    resp, _ = await _twilio_call(server, http, "CAlate" + "0" * 28)
                    assert resp.status_code == 503, resp.text
                    audio = 0
                    async with asyncio.timeout(20):
                        with contextlib.suppress(ConnectionClosed):
                            while True:  # the caller keeps sending; the agent says the closing phrase
                                await ws.send(peer.media_pcm(bytes(320)))
                                try:
                                    async with asyncio.timeout(0.02):
                                        msg = json.loads(await ws.recv())
                                except TimeoutError:
                                    continue
                                if msg.get("event") == "media":
                                    audio += len(base64.b64decode(msg["media"]["payload"]))
                    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
            assert proc.wait(30) == 0
    text = log.read_text()
    assert "SIGTERM: draining" in text and "ending 1 call(s) with the closing phrase" in text
    assert "voxroute stopped" in text
    assert -1 < text.find("Running upgrade") < text.find("serving on")  # migrations before serving
    assert audio > 8000  # over a second of agent audio: greeting and closing phrase (8 kHz mu-law)
    stored = list(data.iterdir())
    assert any(p.name.startswith("voxroute.db") for p in stored), stored
    assert all(p.stat().st_uid == NOBODY for p in stored)  # written by the unprivileged user
