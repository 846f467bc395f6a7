"""Start the SIP user agent and the AudioSocket server beside the runtime's HTTP app.

``sip_edge(services, sip="127.0.0.1:5060", audiosocket="127.0.0.1:9092")`` runs each call through
``CallSession`` (the one entry point into ``agent``), registers with the configured trunk, and
mounts its transfers (REFER) in the runtime's call control for the calls of carrier ``sip``: every
other carrier's calls keep their own control.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from voxroute.telephony.admission import CallGate, SilenceGuard
from voxroute.telephony.audiosocket import serve_audiosocket
from voxroute.telephony.carrier_control import CarrierTransfers
from voxroute.telephony.sip.transport import SipServer, SipTransfers, serving
from voxroute.telephony.sip.ua import Registration

log = logging.getLogger(__name__)


@dataclass
class SipEdge:
    server: SipServer | None = None
    transfers: SipTransfers | None = None
    sip_url: str | None = None  # sip:agent@host:port, what a caller dials
    audiosocket: tuple[str, int] | None = None


def parse_bind(text: str, what: str) -> tuple[str, int]:
    """``host:port`` (port 0: any free port) -> (host, port); ValueError naming ``what``."""
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{what}: {text!r} is not host:port")
    return host, int(port)


def registration_from(config: Any) -> Registration | None:
    """``config.sip.registration`` -> a UA Registration (the password from its environment variable)."""
    reg = config.sip.registration
    if reg is None:
        return None
    password = os.environ.get(reg.password_env, "")
    if not password:
        raise RuntimeError(f"sip.registration: no password in ${reg.password_env}")
    host, port = parse_bind(reg.registrar if ":" in reg.registrar else f"{reg.registrar}:5060", "registrar")
    address = socket.gethostbyname(host)  # once at start: the UA compares source addresses with it
    return Registration((address, port), reg.domain or host, reg.username, password, expires=reg.expires)


@contextlib.asynccontextmanager
async def sip_edge(
    services: Any, *, sip: str | None = None, audiosocket: str | None = None, gate: CallGate | None = None
) -> AsyncIterator[SipEdge]:
    """Run the SIP UA (``sip``: host:port, 0 for a free port) and/or AudioSocket for ``services``.
    ``gate``: the process's call admission (shared with the websocket carriers): over its cap or
    while draining, an INVITE gets 486 Busy Here and an AudioSocket call is hung up at once."""
    from voxroute.agent.session import CallSession

    config = services.config
    gate = gate if gate is not None else CallGate(config.telephony.max_concurrent_calls)
    silence_s = config.telephony.media_silence_timeout_s

    async def on_call(link) -> None:
        carrier = link.start.carrier or "sip"
        if gate.enter(carrier, link.start.call_sid) is not None:
            await link.hangup()
            return
        try:
            await CallSession(SilenceGuard(link, silence_s), services).run()
        finally:
            gate.leave()

    edge = SipEdge()
    async with contextlib.AsyncExitStack() as stack:
        if sip:
            server = SipServer(
                on_call,
                bind=parse_bind(sip, "--sip"),
                advertise_host=config.sip.advertise,
                allow_from=config.sip.allow_from,
                registration=registration_from(config),
                default_tenant=config.telephony.default_tenant,
                tenant_for_number=services.router.table.tenant_for_number,
                admit=lambda call_id: gate.check("sip", call_id),
            )
            await stack.enter_async_context(serving(server))
            assert server.address is not None
            edge.server = server
            edge.sip_url = f"sip:agent@{server.address[0]}:{server.address[1]}"
            edge.transfers = SipTransfers(
                server,
                target=config.sip.transfer_target,
                timeout_s=config.handoff.dial_timeout_s,
                hang_up_on_refusal=config.sip.hang_up_on_refused_transfer,
            )
            controls = services.call_control
            if not isinstance(controls, CarrierTransfers):
                raise TypeError("sip_edge needs the runtime's call control (voxroute.runtime.build_services)")
            stack.callback(controls.mount(server.carrier, edge.transfers))
        if audiosocket:
            host, port = parse_bind(audiosocket, "--audiosocket")
            edge.audiosocket = await stack.enter_async_context(
                serve_audiosocket(on_call, host, port, default_tenant=config.telephony.default_tenant)
            )
        yield edge
