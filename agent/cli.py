"""The ``voxroute`` command: serve a phone line, replay fixture calls, run the emulators."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agent.config import ConfigError, load_config
from agent.fixture import FixtureError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="voxroute: a real-time voice agent runtime."
)
console = Console()
if not console.is_terminal:
    console = Console(width=160)
err = Console(stderr=True)


def _setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    level = logging.INFO if verbose else logging.WARNING
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setLevel(logging.INFO)
        handlers.append(fh)
    sh = logging.StreamHandler()
    sh.setLevel(level)
    handlers.append(sh)
    logging.basicConfig(
        level=logging.INFO if log_file else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
    )
    for noisy in ("httpx", "httpcore", "websockets", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_call(call: dict) -> None:
    status = {"completed": "[green]completed[/]", "handoff": "[yellow]handoff[/]"}.get(
        call["ended"], "[red]error[/]"
    )
    title = f"{call['fixture']}  {call['call_sid']}  {status}"
    if call.get("mode") == "emulated":
        title += "  [dim](emulated providers: simulated LLM)[/]"
    table = Table(title=title, title_justify="left", show_lines=False)
    for col, kw in (
        ("#", {"justify": "right"}),
        ("caller said", {"max_width": 38}),
        ("route", {"max_width": 26}),
        ("agent said", {"max_width": 44}),
        ("first audio", {"justify": "right"}),
        ("budget", {"justify": "right"}),
        ("notes", {"max_width": 30}),
    ):
        table.add_column(col, **kw)
    for position, t in enumerate(call["turns"], 1):
        route = t.get("route") or {}
        fa = t.get("first_audio_ms")
        ok = "[green]" if t.get("within_budget") else "[red]"
        notes = []
        if t.get("bridge"):
            notes.append("bridge")
        if t.get("interrupted"):
            notes.append("barge-in")
        for f in t.get("fallbacks", []):
            notes.append(f"{f.get('service', '')} {f['kind']}→{f['action']}".strip())
        if t.get("outcome") not in ("answered", None):
            notes.append(t["outcome"])
        table.add_row(
            str(position),
            t.get("transcript") or "",
            f"{route.get('class', '-')}/{route.get('tier', '-')} {route.get('model', '')}",
            (t.get("heard") if t.get("interrupted") else t.get("reply")) or "",
            f"{ok}{_ms(fa)} ms[/]",
            f"{t.get('budget_ms')} ms",
            ", ".join(notes),
        )
    console.print(table)
    if h := call.get("handoff"):
        state = "transferred" if h.get("transferred") else f"not transferred ({h.get('error', 'call ended')})"
        console.print(
            f"handoff to {h.get('to')}: {state}; {h.get('reason')} [urgency {h.get('urgency')}, "
            f"tone {h.get('tone')}, summary by {h.get('source')} in {h.get('summary_ms')} ms]"
        )
    if call.get("error"):
        console.print(f"[red]error:[/] {call['error']}")
    if call.get("recording"):
        console.print(f"agent audio: {call['recording']}")


def print_summary(result: dict) -> None:
    s = result["summary"]
    console.print(
        f"[bold]{s['calls']} calls, {s['completed']} completed, {s['turns']} turns, "
        f"{s['within_budget']}/{s['turns']} first audio within budget[/], "
        f"p50 {_ms(s['first_audio_ms_p50'])} ms, p95 {_ms(s['first_audio_ms_p95'])} ms, "
        f"{s['bridges']} bridges, {s['fallbacks']} fallbacks (profile {result['profile']}, seed {result['seed']})"
    )


@app.command()
def replay(
    fixtures: Annotated[
        list[str], typer.Argument(help="fixture names (billing_dispute) or paths of .json/.wav")
    ],
    server: Annotated[
        str | None, typer.Option(help="a running voxroute server (default: start one here)")
    ] = None,
    profile: Annotated[
        str, typer.Option(help="emulator latency profile: zero, reference, chaos")
    ] = "reference",
    seed: Annotated[int, typer.Option(help="emulator seed")] = 0,
    fast: Annotated[bool, typer.Option("--fast", help="play the caller 4x faster than real time")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the results as JSON here")] = None,
    record_dir: Annotated[
        Path | None, typer.Option(help="write the agent side of each call as WAV here")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="config YAML (default examples/default.yaml)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Replay fixture calls through the whole stack and print every turn."""
    from agent.replay import replay as run_replay

    _setup_logging(verbose)
    try:
        cfg = load_config(config)
        result = asyncio.run(
            run_replay(
                fixtures,
                server=server,
                profile=profile,
                seed=seed,
                fast=fast,
                record_dir=record_dir,
                config=cfg,
                on_call_done=print_call,
            )
        )
    except (ConfigError, FixtureError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    print_summary(result)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        for call in result["calls"]:
            call.pop("carrier", None)
        json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
        console.print(f"results: {json_path}")
    if any(c["ended"] == "error" for c in result["calls"]):
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "0.0.0.0",
    port: Annotated[int, typer.Option()] = 8080,
    config: Annotated[Path | None, typer.Option(help="config YAML")] = None,
    profile: Annotated[
        str, typer.Option(help="latency profile of the emulators used for missing keys")
    ] = "reference",
    emulators_at: Annotated[
        str | None,
        typer.Option("--emulators", help='use emulators already running: {"sarvam": URL, "openrouter": URL}'),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings only")] = False,
) -> None:
    """Answer calls: Twilio's voice webhook at /twilio/voice, media streams at /twilio/stream."""
    _setup_logging(not quiet)
    try:
        cfg = load_config(config)
        external = json.loads(emulators_at) if emulators_at else None
    except (ConfigError, json.JSONDecodeError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    asyncio.run(_serve(cfg, host, port, profile, external))


async def _serve(cfg, host: str, port: int, profile: str, external: dict | None = None) -> None:
    import gc

    # Start-up objects (config, app, provider clients) never die: keep them out of the collector's
    # scans, so that a full collection does not stall every call's loop for longer than it must.
    gc.collect()
    gc.freeze()
    from agent.runtime import (
        EmulatorURLs,
        build_services,
        create_runtime_app,
        emulator_options,
        keys_missing,
    )
    from emulators.serve import serve_app, ws_url

    async def run(urls) -> None:
        async with build_services(cfg, urls) as services:
            async with serve_app(create_runtime_app(services), host=host, port=port, log_level="info") as url:
                logging.getLogger("voxroute").warning(
                    "voxroute serving on %s (public %s); Twilio voice webhook: %s/twilio/voice",
                    url,
                    cfg.telephony.public_base_url,
                    cfg.telephony.public_base_url,
                )
                await asyncio.Event().wait()

    if external is not None:
        sarvam, openrouter = external["sarvam"].rstrip("/"), external["openrouter"].rstrip("/")
        await run(
            EmulatorURLs(
                llm={"sarvam": f"{sarvam}/v1", "openrouter": f"{openrouter}/api/v1"},
                sarvam_ws=ws_url(sarvam),
                sarvam_rest=sarvam,
            )
        )
    elif keys_missing(cfg):
        from emulators.stack import run_emulators

        async with run_emulators(profile, **emulator_options(cfg)) as emu:
            await run(emu.urls)
    else:
        await run(None)


config_app = typer.Typer(no_args_is_help=True, help="Check configuration files.")
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    path: Annotated[Path, typer.Argument(help="config YAML to validate")],
    tenant: Annotated[str | None, typer.Option(help="print only this tenant's table")] = None,
) -> None:
    """Validate a config and print the resolved routing table (tenant, language group, channel, class)."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    table = cfg.routing_table()
    tenants = [tenant] if tenant else list(cfg.tenants)
    for name in tenants:
        if name not in cfg.tenants:
            err.print(f"[red]error:[/] no tenant {name!r} in {path}")
            raise typer.Exit(2)
        t = cfg.tenants[name]
        out = Table(
            title=f"tenant {name}: numbers {', '.join(t.numbers) or '-'}; languages {', '.join(t.languages)}; "
            f"budgets voice {t.budgets.voice_ms} ms, chat {t.budgets.chat_ms} ms",
            title_justify="left",
        )
        for col in ("group", "channel", "class", "stakes", "ladder", "after escalation", "budget", "targets"):
            out.add_column(col)
        models = table.models[name]
        for cell in table.rows(name):
            ladder = " > ".join(f"{p} ({models[p].model})" for p in cell.ladder)
            targets = [f"on failure: {cell.on_failure}"]
            if cell.structured_extraction:
                targets.append("structured extraction")
            if cell.step_down_after:
                targets.append(f"steps down after {cell.step_down_after}")
            out.add_row(
                cell.group,
                cell.channel,
                cell.routing_class,
                cell.stakes,
                ladder,
                " > ".join(cell.escalated_ladder) if cell.stakes == "low" else "(same)",
                f"{cell.budget_ms} ms",
                ", ".join(targets),
            )
        console.print(out)
    rules = len(cfg.routing.rules) + sum(len(t.rules) for t in cfg.tenants.values())
    console.print(f"[green]ok:[/] {path}: {len(cfg.tenants)} tenant(s), {rules} keyword rule(s)")


@app.command("eval-router")
def eval_router(
    data: Annotated[
        Path, typer.Argument(help="CSV with columns text,label (routine/high_stakes/human/out_of_scope)")
    ],
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON here")] = None,
    predictions: Annotated[Path | None, typer.Option(help="write one CSV row per input here")] = None,
    config: Annotated[Path | None, typer.Option(help="config YAML (its rules, table and classifier)")] = None,
    tenant: Annotated[
        str | None, typer.Option(help="route as this tenant (default: the default tenant)")
    ] = None,
) -> None:
    """Route every row of a labelled CSV and print accuracy, high-stakes recall/precision, human recall,
    escalation rate and decision time."""
    import csv

    from agent.runtime import build_router
    from routing.classifier import read_labelled_csv
    from routing.evaluate import metrics, predict

    try:
        cfg = load_config(config)
        rows = read_labelled_csv(data)
        router = build_router(cfg)
    except (ConfigError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if tenant is not None and tenant not in cfg.tenants:
        err.print(f"[red]error:[/] no tenant {tenant!r}")
        raise typer.Exit(2)
    preds = predict(router, rows, tenant)
    figures = metrics(preds)
    out = Table(title=f"eval-router {data}", title_justify="left")
    out.add_column("metric")
    out.add_column("value", justify="right")
    for key, value in figures.items():
        out.add_row(key, "-" if value is None else str(value))
    console.print(out)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2))
    if predictions:
        predictions.parent.mkdir(parents=True, exist_ok=True)
        with predictions.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "predicted_class", "escalated", "decision_ms"])
            for p in preds:
                w.writerow([p.text, p.label, p.predicted_class, int(p.escalated), f"{p.decision_ms:.4f}"])


@app.command()
def emulators(
    profile: Annotated[str, typer.Option()] = "reference",
    seed: Annotated[int, typer.Option()] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    config: Annotated[
        Path | None, typer.Option(help="config whose reasoning-tier models get the reasoning latency")
    ] = None,
) -> None:
    """Run the provider emulators alone (for a server started elsewhere, or for benchmarks).
    Prints one JSON line with their URLs."""
    _setup_logging(not quiet)

    async def run() -> None:
        from agent.runtime import emulator_options
        from emulators.stack import run_emulators

        cfg = load_config(config)
        async with run_emulators(profile, seed, **emulator_options(cfg)) as emu:
            print(json.dumps({"sarvam": emu.sarvam_url, "openrouter": emu.openrouter_url}), flush=True)
            await asyncio.Event().wait()

    asyncio.run(run())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
