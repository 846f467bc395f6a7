"""`make demo` and `voxroute dial`: calls through the fake carrier into a server on the offline stack.

The server is the real runtime app on 127.0.0.1 (port 8080 by default, as the default config's
public URL says), with the embedded speech engines and the emulated LLM tiers; each call is dialled
in real time the way Twilio would, and every turn is printed as it was handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from voxroute.agent.config import Config
from voxroute.agent.fixture import Fixture
from voxroute.runtime import build_services, create_runtime_app, emulator_options

console = Console()
if not console.is_terminal:
    console = Console(width=140)


def call_seconds(fixture: Fixture) -> float:
    """Roughly how long the call lasts in real time: the caller's audio plus gaps and answers."""
    utts = fixture.script.utterances
    spoken = sum(((u.end_ms or 0) - (u.start_ms or 0)) for u in utts if not u.is_dtmf) / 1000
    return spoken + len(utts) * 4.5


def print_turns(call: dict[str, Any]) -> None:
    title = f"[bold]{call['fixture']}[/] call {call['call_sid']}: {call['ended']}"
    console.print(title)
    for t in call["turns"]:
        route = t.get("route") or {}
        fa, budget = t.get("first_audio_ms"), t.get("budget_ms")
        ok = "[green]within[/]" if t.get("within_budget") else "[red]over[/]"
        heard = t.get("transcript") or "(nothing)"
        llm = f" [dim]({t['llm']})[/]" if t.get("llm") else ""
        stt = "local STT heard" if t.get("language", "en").startswith("en") else "STT (emulated Sarvam) heard"
        console.print(f"  turn {t['index']}  [cyan]{stt}:[/] {heard}")
        console.print(
            f"          route: {route.get('class')} / {route.get('tier')}  reason: {route.get('reason')}"
        )
        console.print(f"          reply{llm}: {t.get('reply') or ''}")
        bridge = ""
        if t.get("bridge"):
            tl = t.get("timeline") or {}
            answer = (
                tl.get("tts_first_audio", 0) - tl.get("speech_end", 0) if "tts_first_audio" in tl else None
            )
            at = f"; answer audio ready at {answer:.0f} ms" if answer is not None else ""
            bridge = f", bridge ({t.get('bridge_kind')}) played first{at}"
        fa_s = "-" if fa is None else f"{fa:.0f} ms"
        usage = t.get("usage") or {}
        early = ""
        if usage.get("early_used"):  # ladder.early_request: asked on the last partial, at the pause
            tl = t.get("timeline") or {}
            asked = tl.get("llm_request", 0) - tl.get("speech_end", 0)
            early = f"; model asked {asked:.0f} ms after the end of speech, on the partial"
        console.print(f"          first audio {fa_s} vs budget {budget} ms: {ok}{bridge}{early}")
    if call.get("error"):
        console.print(f"  [red]error:[/] {call['error']}")


@contextlib.asynccontextmanager
async def offline_server(config: Config, port: int, profile: str = "reference"):
    """Emulated LLM tiers + the runtime app with the embedded stack, on 127.0.0.1:port."""
    from voxroute.emulators.stack import run_emulators
    from voxroute.server import serve_app

    async with run_emulators(profile, 0, None, **emulator_options(config)) as emu:
        async with build_services(config, emu.urls, stack="local") as services:
            # The offline demo is development mode by design: emulated LLMs, unsigned local calls.
            async with serve_app(create_runtime_app(services, dev=True), port=port) as url:
                yield url, services


async def dial_calls(
    fixtures: list[Fixture],
    config: Config,
    *,
    port: int = 8080,
    record_dir: Path = Path("out/demo"),
    keep_serving: bool = False,
) -> list[dict[str, Any]]:
    from voxroute.replay import replay_fixture

    calls: list[dict[str, Any]] = []
    t_start = time.monotonic()
    console.print("starting the runtime with the embedded offline stack (no keys, no network) ...")
    from voxroute.standins import stand_ins

    # The config's tool stand-ins (examples/retail.yaml's order service) are served beside the runtime.
    async with stand_ins(config) as (config, _), offline_server(config, port) as (url, services):
        console.print(
            f"server up at {url} in {time.monotonic() - t_start:.1f} s; {services.stt.name} / {services.tts.name}"
        )
        for fixture in fixtures:
            expect = call_seconds(fixture)
            with Progress(
                TextColumn("dialling [bold]{task.description}[/]"),
                BarColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as progress:
                task = progress.add_task(fixture.name, total=expect)
                async with asyncio.TaskGroup() as tg:
                    job = tg.create_task(replay_fixture(fixture, url, record_dir=record_dir, config=config))
                    while not job.done():
                        await asyncio.wait([job], timeout=0.25)
                        progress.update(task, completed=min(expect, progress.tasks[0].elapsed or 0))
                call = job.result()
            calls.append(call)
            print_turns(call)
            if call.get("recording"):
                console.print(f"  agent audio (8 kHz mu-law WAV): {call['recording']}")
            console.print(f"  call page: {url}/calls/{call['call_sid']}\n")
            await asyncio.to_thread(record_dir.mkdir, parents=True, exist_ok=True)
            async with httpx.AsyncClient(timeout=5) as http:
                r = await http.get(f"{url}/calls/{call['call_sid']}")
            await asyncio.to_thread(
                (record_dir / f"{fixture.name}.call.json").write_text,
                json.dumps(r.json(), indent=2, ensure_ascii=False),
            )
        console.print(
            "To answer a real Twilio number: expose port 8080 (e.g. a tunnel), set "
            "telephony.public_base_url in a copy of examples/default.yaml, point the number's voice "
            "webhook at PUBLIC_URL/twilio/voice, set TWILIO_AUTH_TOKEN, VOXROUTE_API_KEY (the operator "
            "key), SARVAM_API_KEY and OPENROUTER_API_KEY (serve refuses to start without them), then run:\n"
            "  .venv/bin/voxroute serve --config my.yaml --port 8080\n"
            "(to try it on this machine without keys: .venv/bin/voxroute serve --dev --local)"
        )
        if keep_serving and sys.stdin.isatty():
            console.print("call pages stay up until you press Enter.")
            await asyncio.to_thread(sys.stdin.readline)
    return calls
