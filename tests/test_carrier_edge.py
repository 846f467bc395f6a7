"""What the four carriers' routes share (telephony/routes/edge.py, telephony/wslink.py): one stream
handler with the same rules and log lines for every carrier, one link that names the call's tenant
the same way, and one webhook form helper whose signature checks run before or after parsing."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.datastructures import MultiDict
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.streamedge import serve_edge, ws_url
from voxroute.agent.link import CallEnded
from voxroute.server import serve_app
from voxroute.telephony.app import TelephonySettings, create_app
from voxroute.telephony.carriers import CARRIERS, CarrierSettings
from voxroute.telephony.routes.edge import read_form
from voxroute.telephony.twilio import TwilioPeer

STEP = 5.0  # bound on each wait: a hang fails the test instead of blocking it


def open_app(on_call, **settings) -> FastAPI:
    """Every carrier, no secrets (dev): what the shared handler does, not the carriers' checks."""
    telephony = TelephonySettings(
        public_base_url="https://agent.example.com", allow_unsigned=True, **settings
    )
    return create_app(
        telephony,
        on_call,
        tenant_for_number={"+15550002222": "acme"}.get,
        carriers=CarrierSettings(),
    )


async def close_code(ws) -> int | None:
    async with asyncio.timeout(STEP):
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


async def test_every_carrier_stream_closes_1008_without_a_start_and_logs_it_the_same_way(caplog):
    async def on_call(link) -> None:
        raise AssertionError("no call starts")

    caplog.set_level(logging.INFO)
    async with serve_edge(open_app(on_call, start_timeout_s=0.2)) as url:
        for carrier in CARRIERS:
            async with connect(f"{ws_url(url)}/{carrier}/stream") as ws:
                assert await close_code(ws) == 1008
    lines = [r.getMessage() for r in caplog.records if "no start within 0.2 s" in r.getMessage()]
    names = sorted(line.split(" from ")[0] for line in lines)
    # Twilio's lines, the first carrier's, name no carrier
    assert names == ["exotel stream", "media stream", "plivo stream", "telnyx stream"]
    assert all(line.endswith("closing (1008)") for line in lines)


async def test_the_tenant_is_the_starts_else_the_numbers_else_the_default():
    """One link for every carrier: a start naming its tenant keeps it; one that does not (a
    set-up that did not name it) gets the tenant of the number called; else the default."""
    starts = {}

    async def on_call(link) -> None:
        starts[link.start.call_sid] = link.start
        async for _ in link.events():
            pass

    cases = {
        "CA1": {"tenant": "named", "to": "+15550002222"},
        "CA2": {"to": "+15550002222"},
        "CA3": {"to": "+15550009999"},
    }
    async with serve_edge(open_app(on_call, default_tenant="walkin", carriers=("twilio",))) as url:
        for sid, params in cases.items():
            peer = TwilioPeer("MZ" + sid, sid, custom_parameters=params)
            async with connect(ws_url(url) + "/twilio/stream") as ws:
                await ws.send(peer.connected())
                await ws.send(peer.start())
                await ws.send(peer.stop())
                assert await close_code(ws) == 1000
    assert {sid: s.tenant for sid, s in starts.items()} == {"CA1": "named", "CA2": "acme", "CA3": "walkin"}
    assert {s.carrier for s in starts.values()} == {"twilio"}
    assert starts["CA2"].to_number == "+15550002222"


async def test_a_protocol_error_ends_only_that_twilio_call_with_the_shared_log_line(caplog):
    ended = {}

    async def on_call(link) -> None:
        async for event in link.events():
            if isinstance(event, CallEnded):
                ended[link.start.call_sid] = event

    caplog.set_level(logging.INFO)
    async with serve_edge(open_app(on_call, carriers=("twilio",))) as url:
        peer = TwilioPeer("MZ9", "CA9")
        async with connect(ws_url(url) + "/twilio/stream") as ws:
            await ws.send(peer.connected())
            await ws.send(peer.start())
            await ws.send('{"event":"media","streamSid":"MZ9","media":{"payload":"!!"}}')
            assert await close_code(ws) == 1008
    assert ended == {"CA9": CallEnded("error")}
    assert "call CA9: protocol error, closing the stream (1008)" in caplog.text
    assert "call CA9: stream ended" in caplog.text


@pytest.fixture
async def form_app():
    """``read_form`` behind two routes: a body signature (checked before parsing, as Telnyx's) and
    a form signature (after, as Twilio's and Plivo's); each accepts a header ``ok: 1`` only."""
    app = FastAPI()

    def refused(request: Request) -> str | None:
        return None if request.headers.get("ok") == "1" else "no ok header"

    async def answer(form: MultiDict | Response) -> Response:
        if isinstance(form, Response):
            return form
        return Response(",".join(f"{k}={v}" for k, v in form.multi_items()))

    @app.post("/body")
    async def body(request: Request) -> Response:
        return await answer(
            await read_form(request, "body hook", "Body", check_body=lambda _: refused(request))
        )

    @app.post("/form")
    async def form(request: Request) -> Response:
        return await answer(
            await read_form(request, "form hook", "Form", check_form=lambda _: refused(request))
        )

    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


async def test_read_form_checks_a_body_signature_before_parsing_and_a_form_signature_after(form_app, caplog):
    garbage = {"content": b"\xff\xfe"}
    assert (await form_app.post("/body", **garbage)).status_code == 403  # refused before it is read
    assert (await form_app.post("/form", **garbage)).status_code == 400  # unreadable, then
    assert (await form_app.post("/body", headers={"ok": "1"}, **garbage)).status_code == 400
    refused = await form_app.post("/form", content=b"a=1")
    assert refused.status_code == 403 and refused.json() == {"detail": "invalid Form signature"}
    assert "form hook from 127.0.0.1:" in caplog.text and "rejected (403): no ok header" in caplog.text
    ok = await form_app.post("/form", content=b"a=1&a=2&b=", headers={"ok": "1"})
    assert ok.status_code == 200 and ok.text == "a=1,a=2,b="  # repeated keys kept: Twilio signs them all
    too_large = await form_app.post("/body", content=b"a" * (64 * 1024 + 1), headers={"ok": "1"})
    assert too_large.status_code == 413
    many = await form_app.post("/form", content="&".join(f"k{i}=v" for i in range(201)), headers={"ok": "1"})
    assert many.status_code == 400
