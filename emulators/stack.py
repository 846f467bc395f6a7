"""Start every emulator on 127.0.0.1: what replay, tests and benchmarks run against.

- ``sarvam``: one port serving Sarvam STT (both sockets), TTS (websocket and REST) and chat
  (``/v1``, ``/v2``), as api.sarvam.ai does on one host.
- ``openrouter``: one port serving OpenRouter-style chat under ``/api/v1``.

Each service keeps its own seeded Dice. Fault logs and forced faults per service:
``GET /_emulator/{stt,tts,llm}/faults`` and ``POST /_emulator/{stt,tts,llm}/force`` on the Sarvam
port, ``GET /_emulator/faults`` on the OpenRouter port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from voxroute.agent.fixture import Fixture, all_fixture_names, load
from voxroute.emulators import scripted
from voxroute.emulators.carrier_rest import CarrierRestEmulator, emulated_plivo_token
from voxroute.emulators.llm import LLMEmulator
from voxroute.emulators.profiles import Dice, get_profile
from voxroute.emulators.sarvam import create_stt_app, create_tts_app
from voxroute.emulators.transcripts import TranscriptLibrary
from voxroute.emulators.twilio_rest import TwilioRestEmulator
from voxroute.runtime import EmulatorURLs
from voxroute.server import serve_app, ws_url

# Credentials of the emulated Twilio account (the runtime uses them when no real ones are set).
EMULATED_ACCOUNT_SID = "AC" + "0" * 31 + "1"
EMULATED_AUTH_TOKEN = "emulated-twilio-auth-token"


class PathDispatch:
    """A tiny ASGI router: the first prefix that matches a request's path takes it."""

    def __init__(self, routes: list[tuple[str, Any]], strip: dict[str, str] | None = None) -> None:
        self.routes = routes
        self.strip = strip or {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            # Sub-apps have no start-up work that must run; answer the lifespan protocol ourselves.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope.get("path", "")
        for prefix, app in self.routes:
            if path.startswith(prefix):
                if prefix in self.strip:
                    scope = dict(scope, path=self.strip[prefix] + path[len(prefix) :])
                await app(scope, receive, send)
                return
        if scope["type"] == "http":
            body = json.dumps(
                {"error": {"message": f"no emulated route for {path}", "code": "not_found_error"}}
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})
        else:
            await send({"type": "websocket.close", "code": 1008})


@dataclass
class EmulatorStack:
    urls: EmulatorURLs
    sarvam_url: str
    openrouter_url: str
    dice: dict[str, Dice] = field(default_factory=dict)
    llm: dict[str, LLMEmulator] = field(default_factory=dict)
    library: TranscriptLibrary | None = None
    stt_app: Any = None
    tts_app: Any = None
    twilio: TwilioRestEmulator | None = None
    carrier_rest: CarrierRestEmulator | None = None


@contextlib.asynccontextmanager
async def _serve_together(*apps: Any) -> AsyncIterator[list[str]]:
    """Each app on a server of its own (``serve_app``); on exit they all stop at once. Stopped one
    after another, each uvicorn server's stop (its 0.1 s tick, then its 0.1 s shutdown pause) added
    up to ~0.8 s at the end of every local stack."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    urls: list[asyncio.Future[str]] = [loop.create_future() for _ in apps]

    async def serve(app: Any, url: asyncio.Future[str]) -> None:
        async with serve_app(app) as served:
            url.set_result(served)
            await stop.wait()

    async with asyncio.TaskGroup() as tg:
        for app, url in zip(apps, urls, strict=True):
            tg.create_task(serve(app, url))
        try:
            yield [await url for url in urls]
        finally:
            stop.set()


def fixture_library(extra: list[Fixture] | None = None) -> TranscriptLibrary:
    fixtures = [load(name) for name in all_fixture_names()]
    seen = {f.json_path.resolve() for f in fixtures}
    for f in extra or []:
        if f.json_path.resolve() not in seen:
            fixtures.append(f)
    return TranscriptLibrary(fixtures)


@contextlib.asynccontextmanager
async def run_emulators(
    profile: str = "reference",
    seed: int = 0,
    fixtures: list[Fixture] | None = None,
    reasoning_models: frozenset[str] | set[str] = frozenset(),
    prices: dict[str, tuple[float, float]] | None = None,
    voice_speed: float = 1.0,
) -> AsyncIterator[EmulatorStack]:
    """``prices``: model id -> USD per million input/output tokens, for OpenRouter's reported cost.
    ``reasoning_models``: model ids the LLM emulators serve with the reasoning tier's latency
    (besides any id containing "reason"); the runtime passes its config's reasoning-tier models.
    ``voice_speed``: how fast the emulated TTS voice speaks (2.0: half the audio per character);
    the runtime plays the agent's audio in real time, so it sets how long every reply lasts."""
    prof = get_profile(profile)
    dice = {
        name: Dice(prof, seed * 1000 + i)
        for i, name in enumerate(("stt", "tts", "sarvam_llm", "openrouter_llm"))
    }
    library = fixture_library(fixtures)
    stt_app = create_stt_app(library, dice["stt"])
    tts_app = create_tts_app(dice["tts"], voice_speed=voice_speed)
    script = scripted.script_from_fixtures(library.fixtures)  # the utterances' expect_tool
    sarvam_llm = LLMEmulator(
        dice["sarvam_llm"], "sarvam", reasoning_models=reasoning_models, tool_script=script
    )
    openrouter_llm = LLMEmulator(
        dice["openrouter_llm"],
        "openrouter",
        reasoning_models=reasoning_models,
        prices=prices,
        tool_script=script,
    )
    sarvam = PathDispatch(
        [
            ("/speech-to-text", stt_app),
            ("/text-to-speech", tts_app),
            ("/v1/", sarvam_llm.app),
            ("/v2/", sarvam_llm.app),
            ("/_emulator/stt", stt_app),
            ("/_emulator/tts", tts_app),
            ("/_emulator/llm", sarvam_llm.app),
        ],
        strip={
            "/_emulator/stt": "/_emulator",
            "/_emulator/tts": "/_emulator",
            "/_emulator/llm": "/_emulator",
        },
    )
    twilio = TwilioRestEmulator(EMULATED_ACCOUNT_SID, EMULATED_AUTH_TOKEN)
    # Plivo signs its webhooks with the account's auth token: the runtime checks them with
    # $PLIVO_AUTH_TOKEN, so the stand-in uses that token when it is set.
    carrier_rest = CarrierRestEmulator(plivo_auth_token=emulated_plivo_token())
    async with _serve_together(sarvam, openrouter_llm.app, twilio.app, carrier_rest.app) as (
        sarvam_url,
        openrouter_url,
        twilio_url,
        carrier_url,
    ):
        urls = EmulatorURLs(
            llm={"sarvam": f"{sarvam_url}/v1", "openrouter": f"{openrouter_url}/api/v1"},
            sarvam_ws=ws_url(sarvam_url),
            sarvam_rest=sarvam_url,
            twilio_api=twilio_url,
            carrier_api=carrier_url,
        )
        yield EmulatorStack(
            urls=urls,
            sarvam_url=sarvam_url,
            openrouter_url=openrouter_url,
            dice=dice,
            llm={"sarvam": sarvam_llm, "openrouter": openrouter_llm},
            library=library,
            stt_app=stt_app,
            tts_app=tts_app,
            twilio=twilio,
            carrier_rest=carrier_rest,
        )
