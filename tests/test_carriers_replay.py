"""Every fixture through Exotel, Plivo and Telnyx (issue 7): the same transcripts, routes and
within-budget first audio as through Twilio.

One runtime and one set of emulators on 127.0.0.1; each fixture is dialled once per carrier by
its fake (``emulators/carriers.py``) and once through the fake Twilio, all calls at the same time
(the runtime serves many calls at once; sequential replays would take minutes). Every carrier's
check is on: Exotel Basic auth, Plivo V3 signatures and call tokens, Telnyx Ed25519 webhooks and
call tokens. The emulated STT recognises fixture audio by exact bytes, so the carriers run in
their lossless 8 kHz formats (Exotel s16le 8 kHz, Plivo L16 8 kHz, Telnyx PCMU); 16 kHz is
covered at the codec level in test_carrier_protocols.py.
"""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import pytest

from tests.test_replay import _norm, expected_end, expected_items
from voxroute.agent.fixture import all_fixture_names, load
from voxroute.emulators.carriers import CARRIERS, CarrierNotWired, FakeCarrierSecrets, dial_fixture
from voxroute.replay import local_stack, replay_fixture

# SIP is not among them: RTP has no marks, so the fake SIP phone (emulators/sip_carrier.py) takes
# 1.5 s of agent silence for the end of a reply and speaks its next line into the lull between a
# bridge and a slow answer, which a Twilio caller (who waits for the end mark) never does: its
# turns then differ from Twilio's by timing, not by anything the runtime did. SIP calls are
# compared with Twilio fixture by fixture in tests/test_sip_calls.py and with real peers in
# tests/test_sip_peers.py.
CARRIERS_UNDER_TEST = ("exotel", "plivo", "telnyx")
STAGGER_S = 0.3  # between call starts
TELNYX_SEED = bytes(range(7, 39))
SECRETS = FakeCarrierSecrets(
    exotel_credentials="replaykey:replaytoken",
    plivo_auth_token="PLIVOREPLAYTOKEN",
    telnyx_private_key=TELNYX_SEED,
)


def _route(turn: dict) -> tuple:
    r = turn["route"] or {}
    return (r.get("class"), r.get("tier"), r.get("escalated"), r.get("handoff"), turn["budget_ms"])


@pytest.fixture
def carrier_secrets_in_env(monkeypatch):
    """The runtime reads carrier secrets from the environment: turn every check on."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = (
        Ed25519PrivateKey.from_private_bytes(TELNYX_SEED)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    monkeypatch.setenv("EXOTEL_STREAM_CREDENTIALS", SECRETS.exotel_credentials)
    monkeypatch.setenv("PLIVO_AUTH_TOKEN", SECRETS.plivo_auth_token)
    monkeypatch.setenv("TELNYX_PUBLIC_KEY", base64.b64encode(public).decode())
    monkeypatch.setenv("TELNYX_STREAM_SECRET", "replay-stream-secret")
    for name in ("EXOTEL_SAMPLE_RATE", "PLIVO_CONTENT_TYPE", "TELNYX_CODEC", "TELNYX_SAMPLE_RATE"):
        monkeypatch.delenv(name, raising=False)


def call_problems(carrier: str, name: str, call: dict, twilio: dict, record: dict) -> list[str]:
    """Everything in which ``call`` (through ``carrier``) differs from what must hold."""
    problems: list[str] = []
    where = (carrier, name)

    def check(ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{where}: {what}")

    if carrier == "twilio":
        check(call["ended"] == expected_end(name), f"ended {call['ended']}: {call.get('error')}")
        return problems
    # A caller who asks for a person is transferred through the call's own carrier
    # (telephony/carrier_control.py, SIP REFER): the agent closes the stream, as with Twilio.
    handoff = expected_end(name) == "handoff"
    check(call["ended"] == expected_end(name), f"ended {call['ended']}: {call.get('error')}")
    check(record.get("carrier") == carrier, f"call log carrier {record.get('carrier')!r}")
    if handoff:
        check(
            (call.get("handoff") or {}).get("transferred") is True, f"not transferred: {call.get('handoff')}"
        )
        check(
            call["carrier"]["closed_by"] == "server", "the agent did not close the stream after the transfer"
        )
    errors = [e for e in call["carrier"]["errors"] if not (handoff and "server closed" in e)]
    check(not errors, f"fake carrier errors {errors[:3]}")
    want = [_norm(x) for x in expected_items(name)]
    got = [_norm(t["transcript"]) for t in call["turns"]]
    check(got == want, f"transcripts {got} != {want}")
    routes, twilio_routes = [_route(t) for t in call["turns"]], [_route(t) for t in twilio["turns"]]
    check(routes == twilio_routes, f"routes {routes} != twilio {twilio_routes}")
    handoffs = [t["handoff"] for t in call["turns"]]
    check(handoffs == [t["handoff"] for t in twilio["turns"]], f"handoff turns {handoffs}")
    interrupted = [bool(t["interrupted"]) for t in call["turns"]]  # barge-in through clear
    twilio_interrupted = [bool(t["interrupted"]) for t in twilio["turns"]]
    check(interrupted == twilio_interrupted, f"interrupted {interrupted} != {twilio_interrupted}")
    for t in call["turns"]:
        fa = t["first_audio_ms"]
        ok = t["within_budget"] and fa is not None and fa <= t["budget_ms"]
        check(ok, f"turn {t['index']} first audio {fa} ms, budget {t['budget_ms']}: {t['timeline']}")
    check(call["carrier"]["agent_audio_ms"] > 1000, "the caller heard under 1 s of agent audio")
    marks = call["carrier"]["marks"]
    played = [m["echoed_at"] is not None for m in marks]
    # after a transfer the stream closes while "connecting you" plays: its marks are not echoed
    echoed = call["carrier"]["clears"] or (any(played) if handoff else all(played))
    check(bool(marks) and echoed, "marks missing or not echoed")
    # barge-in: the carrier's own clear went out, as Twilio's did (SIP has no carrier buffer to
    # clear: the agent stops sending RTP, which the interrupted turn above shows)
    if twilio["carrier"]["clears"] and carrier != "sip":
        check(bool(call["carrier"]["clears"]), "no clear where Twilio had one")
    return problems


async def test_every_fixture_through_every_carrier_matches_twilio(carrier_secrets_in_env):
    names = all_fixture_names()
    assert len(names) >= 9
    fixtures = {n: load(n) for n in names}
    jobs = [(carrier, name) for carrier in ("twilio", *CARRIERS_UNDER_TEST) for name in names]
    t0 = time.monotonic()

    async def dial(i: int, carrier: str, name: str) -> dict:
        # Staggered starts: the same fixture through four carriers at once would put four turns'
        # LLM, TTS and bridge on the same instant on a shared 2-core machine; this spreads them.
        await asyncio.sleep(i * STAGGER_S)
        return await replay_fixture(
            fixtures[name], stack.server_url, config=stack.config, carrier=carrier, carrier_secrets=SECRETS
        )

    def judge(results: dict) -> dict[tuple[str, str], list[str]]:
        out = {}
        for (carrier, name), call in results.items():
            record = stack.services.call_json(call["call_sid"]) or {}
            if found := call_problems(carrier, name, call, by[("twilio", name)], record):
                out[(carrier, name)] = found
        return out

    async with local_stack("reference", 1, list(fixtures.values())) as stack:
        calls = await asyncio.gather(*(dial(i, c, n) for i, (c, n) in enumerate(jobs)))
        by = dict(zip(jobs, calls, strict=True))
        problems = judge(by)
        # the checks are on: a fake carrier with the wrong secret is refused at call set-up
        wrong = FakeCarrierSecrets(
            exotel_credentials="replaykey:wrong", plivo_auth_token="WRONG", telnyx_private_key=bytes(32)
        )
        for carrier in CARRIERS_UNDER_TEST:  # SIP: allow-listed addresses (tests/test_sip.py)
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await replay_fixture(
                    fixtures[names[0]],
                    stack.server_url,
                    config=stack.config,
                    carrier=carrier,
                    carrier_secrets=wrong,
                )
            assert refused.value.response.status_code == 403, carrier
    elapsed = time.monotonic() - t0
    print(
        f"\n{len(jobs)} calls ({len(names)} fixtures x twilio + {len(CARRIERS_UNDER_TEST)} carriers) in {elapsed:.1f} s"
    )
    assert not problems, "\n".join(p for found in problems.values() for p in found)


async def test_an_unknown_carrier_is_a_clear_error():
    assert "sip" in CARRIERS
    with pytest.raises(CarrierNotWired, match="unknown carrier"):
        await dial_fixture(
            "pigeon", load("order_status"), "http://127.0.0.1:9", http=None, public_base_url=""
        )
