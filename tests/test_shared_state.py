"""Call state shared by the processes of one database (issue 15, part 3: agent/calllog/state.py).

The store on its own (two stores on one database, as two processes have), then whole calls: two
runtime servers on 127.0.0.1 (A and B, each its own ``Services``, engine and call log) sharing one
database, SQLite or PostgreSQL (``VOXROUTE_TEST_POSTGRES_URL``, ``.ci/postgres.sh``; each test gets
a database of its own). A call's first leg runs on A; the whisper, the dial action and the caller's
resumed stream reach B, and the conversation goes on with its history.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import websockets
from sqlalchemy import select

from tests.test_calllog import _postgres_database
from tests.test_carrier_transfers import QUEUE, keyed_zero
from tests.test_carriers_replay import SECRETS, carrier_secrets_in_env  # noqa: F401  (a fixture)
from voxroute.agent.calllog.schema import calls_table, turns_table
from voxroute.agent.calllog.state import CallState
from voxroute.agent.calllog.store import CallLog, make_engine, migrate
from voxroute.agent.config import load_config
from voxroute.agent.fixture import load
from voxroute.agent.services import Services
from voxroute.emulators.carrier import connected_text, dial, make_ids, start_text, stop_text
from voxroute.replay import LocalStack, local_stack, replay_fixture
from voxroute.runtime import build_services, create_runtime_app
from voxroute.server import serve_app, ws_url
from voxroute.telephony.carriers import CARRIERS

# ---------------------------------------------------------------- databases


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request, tmp_path) -> AsyncIterator[str]:
    """An empty database of each kind, its schema migrated."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'voxroute.db'}"
        await _migrated(url)
        yield url
        return
    async with _postgres_database("voxroute_state") as url:
        await _migrated(url)
        yield url


async def _migrated(url: str) -> None:
    engine = make_engine(url)
    await migrate(engine)
    await engine.dispose()


@asynccontextmanager
async def running(*stores: CallState) -> AsyncIterator[None]:
    """Each store's writer in a task group, as the runtime owns it."""
    async with asyncio.TaskGroup() as tg:
        for store in stores:
            tg.create_task(store.run())
        try:
            yield
        finally:
            for store in stores:
                await store.aclose()


# ---------------------------------------------------------------- the store


async def test_two_stores_on_one_database_see_each_others_writes(db_url):
    a = CallState(make_engine(db_url), migrated=True)
    b = CallState(make_engine(db_url), migrated=True)
    async with running(a, b):
        assert await b.get("CA1", "handoff") is None
        assert await a.put("CA1", "handoff", {"whisper": "An angry caller", "transferred": False})
        assert await b.get("CA1", "handoff") == {"whisper": "An angry caller", "transferred": False}
        # Replaced whole, by whoever writes it last.
        assert await a.put("CA1", "handoff", {"whisper": "An angry caller", "transferred": True})
        assert await b.put("CA1", "human_leg", {"status": "no-answer", "connected": False})
        got = await a.get_many("CA1", ("handoff", "human_leg", "outcome"))
        assert got == {
            "handoff": {"whisper": "An angry caller", "transferred": True},
            "human_leg": {"status": "no-answer", "connected": False},
        }
        # Queued without waiting: in order, the last value of a kind wins.
        for n in range(5):
            a.put_nowait("CA2", "outcome", {"outcome": "resolved", "n": n})
        assert await a.put("CA2", "human_leg", {"status": "busy"})  # written after those before it
        assert await b.get("CA2", "outcome") == {"outcome": "resolved", "n": 4}
        # Handed out once: of two takers, one gets it.
        assert await a.put("CA3", "plivo_transfer", {"to": "+918000000999"})
        taken = await asyncio.gather(a.take("CA3", "plivo_transfer"), b.take("CA3", "plivo_transfer"))
        assert sorted(taken, key=lambda v: v is None) == [{"to": "+918000000999"}, None]
        assert await a.get("CA3", "plivo_transfer") is None
        assert await b.delete("CA1", "handoff")
        assert await a.get("CA1", "handoff") is None


async def test_a_database_away_bounds_reads_and_writes_and_the_caller_goes_on(tmp_path, caplog):
    """A database that does not answer: a read returns None within its timeout, an awaited write
    reports False within its own, and both are logged."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the database's directory should be")
    store = CallState(
        make_engine(f"sqlite+aiosqlite:///{blocked / 'voxroute.db'}"),
        read_timeout_s=0.3,
        write_timeout_s=0.3,
        retry_s=0.2,
        migrated=True,
    )
    loop = asyncio.get_running_loop()
    async with running(store):
        t0 = loop.time()
        assert await store.get("CA1", "call") is None
        assert await store.put("CA1", "call", {"history": []}) is False
        assert loop.time() - t0 < 1.5
        t1 = loop.time()  # known to be failing now: a write no longer waits at all
        assert await store.put("CA1", "handoff", {"whisper": "w"}) is False
        assert loop.time() - t1 < 0.05
    assert store.stats["read_failures"] == 1 and store.stats["failed"] == 2
    assert "call state: reading call of call CA1 failed" in caplog.text
    assert "not written" in caplog.text


async def test_an_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown call state kind 'summary'"):
        CallState(None).put_nowait("CA1", "summary", {})


async def test_old_rows_are_pruned(db_url):
    store = CallState(make_engine(db_url), migrated=True, ttl_s=3600, short_ttl_s=0.0)
    async with running(store):
        assert await store.put("CA1", "call", {"history": []})
        assert await store.put("CA1", "handoff", {"whisper": "w"})
        await store._prune()  # the conversation is short-lived; the handoff record stays a day
        assert await store.get_many("CA1", ("call", "handoff")) == {"handoff": {"whisper": "w"}}


# ---------------------------------------------------------------- whole calls on two servers


@pytest.fixture(params=["sqlite", "postgresql"])
async def shared_db(request, tmp_path, monkeypatch) -> AsyncIterator[str]:
    """The database both servers of a test use, as ``voxroute serve`` finds it: the environment.
    Each runtime migrates it at start, as a fresh deployment does."""
    monkeypatch.setenv("VOXROUTE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VOXROUTE_CALLER_SALT", "one-salt-for-every-host")
    monkeypatch.setenv("VOXROUTE_API_KEY", API_KEY)
    if request.param == "sqlite":
        monkeypatch.delenv("VOXROUTE_DATABASE_URL", raising=False)
        yield f"sqlite+aiosqlite:///{tmp_path / 'voxroute.db'}"
        return
    async with _postgres_database("voxroute_state") as url:
        monkeypatch.setenv("VOXROUTE_DATABASE_URL", url)
        yield url


API_KEY = "operator-key-for-tests"
OPERATOR = {"X-API-Key": API_KEY}


@asynccontextmanager
async def two_servers(fixtures, cfg) -> AsyncIterator[tuple[LocalStack, str, Services]]:
    """A: the emulators and a runtime server (``local_stack``); B: a second runtime server with its
    own ``Services`` (provider clients, call log, call state) on the same emulators and database."""
    async with local_stack("zero", 0, fixtures, cfg) as a:
        async with build_services(cfg, a.emulators.urls) as services_b:
            app_b = create_runtime_app(services_b, dev=True, carriers=CARRIERS)
            async with serve_app(app_b) as url_b:
                yield a, url_b, services_b


def _call_log(services: Services) -> CallLog:
    return next(o for o in services.observers if isinstance(o, CallLog))


def _first_utterance(name: str):
    fixture = load(name)
    fixture.script = fixture.script.model_copy(update={"utterances": fixture.script.utterances[:1]})
    return fixture


async def test_a_failed_transfer_resumes_on_the_other_server_with_its_history(shared_db):
    """Leg 1 on A ends in a transfer; the whisper, the dial action and the caller's stream back reach
    B, which continues the conversation: its history, its turn numbers, the call log's leg 2."""
    cfg = load_config()
    fixture = keyed_zero()  # "I want to check my order status.", then 0 for a person
    async with two_servers([fixture], cfg) as (a, url_b, services_b):
        raw = await replay_fixture(fixture, a.server_url, speed=4.0, config=cfg)
        sid = raw["call_sid"]
        async with httpx.AsyncClient(base_url=url_b, timeout=10) as b:
            at_once = await b.get(f"/calls/{sid}/handoff", headers=OPERATOR)  # as soon as leg 1 is over
            whisper = await b.post(f"/twilio/whisper/{sid}", data={"CallSid": "CA" + "1" * 32})
            back = await b.post(
                f"/twilio/dial-action/{sid}",
                data={"CallSid": sid, "DialCallStatus": "no-answer", "From": "+919800000001", "To": "+918000000000"},
            )  # fmt: skip
        params = {p.get("name"): p.get("value") for p in ET.fromstring(back.text).iter("Parameter")}
        result = await dial(
            _first_utterance("order_status"),
            ws_url(url_b) + "/twilio/stream",
            custom_parameters=params,
            call_sid=sid,
            speed=4.0,
        )
        resumed = services_b.call_json(sid)
        async with httpx.AsyncClient(timeout=10) as http:
            from_a = await http.get(f"{a.server_url}/calls/{sid}/handoff", headers=OPERATOR)
            from_b = await http.get(f"{url_b}/calls/{sid}/handoff", headers=OPERATOR)
            denied = await http.get(f"{url_b}/calls/{sid}/handoff")
            # A day later (the shared rows pruned) and after a restart (A's memory gone): the call log's.
            await _call_log(a.services).flush()
            await _call_log(services_b).flush()
            assert await a.services.state.delete(sid, "handoff") and await a.services.state.delete(
                sid, "human_leg"
            )
            a.services.handoffs.clear()
            logged = await http.get(f"{a.server_url}/calls/{sid}/handoff", headers=OPERATOR)
        await _call_log(a.services).flush()
        await _call_log(services_b).flush()
        assert a.services.call_json(sid, with_turns=False)["leg"] == 1  # A saw leg 1 only
        leg1 = a.services.finished[sid]

    assert raw["ended"] == "handoff" and raw["handoff"]["transferred"], raw.get("error")
    h = raw["handoff"]
    assert at_once.status_code == 200 and at_once.json()["transferred"] is True  # B knows of the transfer
    # B speaks A's whisper to the human.
    say = ET.fromstring(whisper.text).find("Say")
    assert say is not None and say.text == h["whisper"]
    # B sends the caller back to the agent, and the agent on B remembers the conversation.
    assert params.get("resume") == "transfer_failed"
    assert result.completed
    assert resumed is not None and resumed["leg"] == 2
    history = [m["content"] for m in resumed["history"]]
    said = "I want to check my order status."  # to A, in leg 1
    # the callback offer (cut short, with the interrupted mark, when the caller talks over it)
    offer = next(i for i, m in enumerate(history) if m.startswith(cfg.agent.callback_phrases["en-IN"]))
    assert said in history and history.index(said) < offer
    assert history[: len(leg1.history)] == [m["content"] for m in leg1.history]  # all of leg 1
    first = [t["index"] for t in raw["turns"]]
    assert [t["index"] for t in resumed["turns"]][0] == max(first) + 1
    # Either server answers the handoff record, with the human leg's result that B received.
    assert from_a.status_code == from_b.status_code == 200 and denied.status_code == 401
    assert from_a.json() == from_b.json()
    record = from_b.json()
    assert record["whisper"] == h["whisper"] and record["transferred"] is True
    assert record["human_leg"] == {"status": "no-answer", "connected": False, "duration_s": None}
    assert resumed["handoff"]["human_leg"] == record["human_leg"]  # B's leg carries the handoff
    assert logged.status_code == 200 and logged.json()["whisper"] == h["whisper"]
    assert logged.json()["human_leg"] == record["human_leg"]  # leg 2's end record, written by B
    # The call log: both legs, the second's turns after the first's.
    engine = make_engine(shared_db)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(turns_table.c.turn_index, turns_table.c.leg)
                    .where(turns_table.c.call_sid == sid)
                    .order_by(turns_table.c.turn_index)
                )
            ).all()
            legs = await conn.scalar(select(calls_table.c.legs).where(calls_table.c.call_sid == sid))
    finally:
        await engine.dispose()
    assert [tuple(r) for r in rows[: len(first)]] == [(i, 1) for i in first]
    second = [tuple(r) for r in rows[len(first) :]]
    assert second == [(t["index"], 2) for t in resumed["turns"]] and second
    assert legs == 2


async def test_the_operators_outcome_given_to_b_reaches_the_call_live_on_a(shared_db):
    """The operator's verdict reaches B while the call is live on A (a stream this test holds
    open): A takes it into the call's record when the call ends."""
    cfg = load_config()
    ids = make_ids(None)
    async with two_servers([], cfg) as (a, url_b, services_b):
        async with websockets.connect(ws_url(a.server_url) + "/twilio/stream") as stream:
            await stream.send(connected_text())
            await stream.send(start_text(1, ids, {"from": "+919800000001", "to": "+918000000000"}))
            while ids.call_sid not in a.services.calls:  # noqa: ASYNC110  # A takes the call
                await asyncio.sleep(0.02)
            await _call_log(a.services).flush()  # the call's row is in the database: B can know the call
            async with httpx.AsyncClient(base_url=url_b, timeout=10) as b:
                got = await b.post(
                    f"/calls/{ids.call_sid}/outcome",
                    json={"outcome": "unresolved", "reason": "refund refused"},
                    headers=OPERATOR,
                )
            assert ids.call_sid in a.services.calls  # still live on A
            await stream.send(stop_text(2, ids))
        while ids.call_sid in a.services.calls:  # noqa: ASYNC110  # the session ends
            await asyncio.sleep(0.02)
        ended = a.services.finished[ids.call_sid]
        await _call_log(a.services).flush()
        await _call_log(services_b).flush()
    assert got.status_code == 200 and got.json()["live"] is False  # not live on B
    assert ended.ended == "completed"
    assert (ended.outcome, ended.outcome_reason) == ("unresolved", "refund refused")  # A took it
    engine = make_engine(shared_db)
    try:
        async with engine.connect() as conn:
            query = select(calls_table).where(calls_table.c.call_sid == ids.call_sid)
            row = (await conn.execute(query)).mappings().one()
    finally:
        await engine.dispose()
    assert (row["outcome"], row["outcome_reason"]) == ("unresolved", "refund refused")


@pytest.mark.parametrize("shared_db", ["sqlite"], indirect=True)  # the store itself is tested on both
async def test_plivo_fetches_a_transfer_from_the_other_server(shared_db, carrier_secrets_in_env):  # noqa: F811
    """A asks Plivo for the transfer; Plivo's fetch of the transfer XML reaches B, which hands it out
    (once)."""
    fixture = keyed_zero()
    cfg = load_config()
    async with two_servers([fixture], cfg) as (a, url_b, _services_b):
        rest = a.emulators.carrier_rest
        rest.local_base = url_b  # Plivo's fetch reaches B
        call = await replay_fixture(
            fixture, a.server_url, speed=4.0, config=cfg, carrier="plivo", carrier_secrets=SECRETS
        )
        await rest.settle()
        sid = call["call_sid"]
        fetched = [f for f in rest.fetched if f.call_uuid == sid]
        async with httpx.AsyncClient(base_url=a.server_url, timeout=10) as http:
            again = await http.post(f"/plivo/transfer/{sid}", data={"CallUUID": sid})
    assert call["ended"] == "handoff" and call["handoff"]["transferred"] is True, call.get("error")
    (got,) = fetched
    assert got.status == 200, got.xml
    dial_el = ET.fromstring(got.xml).find("Dial")
    assert dial_el is not None and [n.text for n in dial_el] == [QUEUE.lstrip("+")]
    assert again.status_code in (403, 404)  # handed out once (A's own copy went with B's fetch)
