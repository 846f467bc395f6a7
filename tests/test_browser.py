"""The call pages in a real browser: a call replayed through the whole stack (fake carrier, runtime,
emulators on 127.0.0.1) with an operator API key set, then headless Chromium, driven over the
DevTools protocol, signs in with ``?key=``, follows the list's link to the call, and checks that the
waterfall of every turn is drawn: one laid-out SVG per turn, its bars with real widths, its labels,
and the first-audio bar as long as the call's own number says against the budget line.

Needs Debian ``chromium``; skipped when it is absent, unless VOXROUTE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import FAST_VOICE, services_required
from voxroute.agent.fixture import load
from voxroute.agent.pages import WATERFALL_LABELS
from voxroute.replay import local_stack, replay_fixture

API_KEY = "operator-key-for-browser-tests"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1100,1400",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class DevTools:
    """A minimal Chrome DevTools protocol client for one page: commands by id, events kept."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    async def send(self, method: str, **params: Any) -> dict:
        ident = next(self.ids)
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    async def navigate(self, url: str) -> None:
        self.events.clear()
        await self.send("Page.navigate", url=url)
        while not any(ev.get("method") == "Page.loadEventFired" for ev in self.events):
            self.events.append(json.loads(await self.ws.recv()))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(path: str) -> AsyncIterator[DevTools]:
    """Headless Chromium with a fresh profile; yields a DevTools client on its first page."""
    # Chromium's helper processes may still write into the profile as it is removed: not a failure.
    with tempfile.TemporaryDirectory(prefix="voxroute-chromium-", ignore_cleanup_errors=True) as profile:
        proc = await asyncio.create_subprocess_exec(
            path,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            async with asyncio.timeout(20):
                # Chromium writes its port there once it listens; another process's file has no event.
                while not port_file.exists() or not port_file.read_text().strip():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                port = int(port_file.read_text().split()[0])
                async with httpx.AsyncClient() as http:
                    targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            page = next(t for t in targets if t.get("type") == "page")
            async with websockets.connect(page["webSocketDebuggerUrl"], max_size=2**24) as ws:
                tools = DevTools(ws)
                await tools.send("Page.enable")
                yield tools
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    async with asyncio.timeout(5):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


WATERFALLS_JS = """JSON.stringify([...document.querySelectorAll('svg.waterfall')].map(svg => ({
  turn: svg.dataset.turn,
  height: svg.getBoundingClientRect().height,
  bars: [...svg.querySelectorAll('g.stage')].map(g => {
    const shape = g.querySelector('rect.bar, path.marker');
    return {stage: g.dataset.stage, kind: shape.tagName, width: shape.getBBox().width,
            x: shape.getBBox().x, label: g.querySelector('text.label').textContent};
  }),
  budget_x: svg.querySelector('line.budget').x1.baseVal.value,
})))"""


async def test_chromium_draws_the_waterfall_of_every_turn(monkeypatch, tmp_path):
    path = chromium_path()
    if path is None:
        if services_required():
            pytest.fail(
                "chromium is not installed (apt-get install -y chromium) and VOXROUTE_REQUIRE_SERVICES=1"
            )
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    monkeypatch.setenv("VOXROUTE_API_KEY", API_KEY)
    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path))  # the call log writes here, not in ./data
    monkeypatch.delenv("VOXROUTE_DATABASE_URL", raising=False)
    fixture = load("billing_dispute")
    fixture.script = fixture.script.model_copy(update={"utterances": fixture.script.utterances[:2]})
    # the agent's voice at FAST_VOICE (tests/conftest.py): the waterfall draws when each reply started
    async with local_stack("reference", 0, [fixture], voice_speed=FAST_VOICE) as stack:
        # replay_fixture reads the call back through GET /calls/{sid}: with the key from the environment.
        raw = await replay_fixture(fixture, stack.server_url, speed=2.0, config=stack.config)
        assert raw["ended"] == "completed", raw.get("error")
        sid = raw["call_sid"]
        async with httpx.AsyncClient(base_url=stack.server_url, timeout=10) as http:
            assert (await http.get(f"/calls/{sid}")).status_code == 401  # the JSON API wants the key too
            call = (await http.get(f"/calls/{sid}", headers={"X-API-Key": API_KEY})).json()
        async with asyncio.timeout(40), chromium(path) as page:
            # (Without the key a browser meets the Basic challenge: tests/test_pages.py covers the 401.)
            await page.navigate(f"{stack.server_url}/calls?key={API_KEY}")
            assert await page.evaluate("location.pathname + location.search") == "/calls"  # key dropped
            assert "voxroute_operator" not in await page.evaluate("document.cookie")  # HttpOnly
            links = await page.evaluate("[...document.querySelectorAll('tr.call a')].map(a => a.href)")
            assert f"{stack.server_url}/calls/{sid}" in links
            await page.navigate(f"{stack.server_url}/calls/{sid}")
            text = await page.evaluate("document.body.innerText")
            waterfalls = json.loads(await page.evaluate(WATERFALLS_JS))
            shot = await page.send("Page.captureScreenshot", format="png")

    turns = call["turns"]
    assert len(turns) == 2 and len(waterfalls) == len(turns)
    assert "Simulated LLM" in text and "Transcript" in text
    assert (tmp_path / "call.png").write_bytes(base64.b64decode(shot["data"])) > 10_000
    for turn, drawn in zip(turns, waterfalls, strict=True):
        assert drawn["turn"] == str(turn["index"]) and drawn["height"] > 100
        stages = {b["stage"]: b for b in drawn["bars"]}
        wanted = [s for s in WATERFALL_LABELS if s in turn["timeline"]]
        assert list(stages) == wanted, (stages.keys(), turn["timeline"])
        assert {"speech_end", "endpoint", "stt_final", "route", "llm_first_token", "first_audio_out"} <= set(
            stages
        )
        for stage, bar in stages.items():
            assert bar["label"] == WATERFALL_LABELS[stage]
            assert bar["width"] > 0, bar  # laid out by the browser, not just present in the markup
        first = stages["first_audio_out"]
        assert first["kind"] == "rect"
        # The bar's drawn length against the budget line matches the call's own first-audio figure.
        px_per_ms = (drawn["budget_x"] - first["x"]) / turn["budget_ms"]
        assert first["width"] / px_per_ms == pytest.approx(turn["first_audio_ms"], abs=3)
        assert turn["transcript"] in text
