"""Escalation outside banking (issue 14): the cross-domain development set (data/router/crossdomain.csv),
whose held-out businesses the shipped classifier never saw, routed through the whole router.

Targets per held-out domain: high-stakes escalated >= 0.90, person requests recognised >= 0.95,
routine escalated <= 0.15, out-of-scope escalated <= 0.15. Out-of-scope turns stay on the fast tier.
Bad input (empty, 10,000 characters, mixed script, emoji only) gets a decision and never raises.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from voxroute.agent.config import load_config
from voxroute.routing.evaluate import metrics, metrics_by, predict
from voxroute.runtime import build_router

DATA = Path(__file__).resolve().parent.parent / "data" / "router"


def _rows() -> list[dict[str, str]]:
    with (DATA / "crossdomain.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


ROWS = _rows()
HELD_OUT = sorted({r["domain"] for r in ROWS if r["split"] == "test"})


@pytest.fixture(scope="module")
def router():
    return build_router(load_config())


@pytest.fixture(scope="module")
def held_out_figures(router) -> dict[str, dict]:
    rows = [r for r in ROWS if r["split"] == "test"]
    preds = predict(router, [(r["text"], r["label"]) for r in rows])
    per = metrics_by(preds, [r["domain"] for r in rows])
    for domain, m in per.items():
        print(domain, {k: m[k] for k in ("n", "high_stakes_recall", "human_recall", "routine_escalated",
                                          "out_of_scope_escalated", "decision_ms_p99")})  # fmt: skip
    return per


def test_the_shipped_model_never_saw_the_held_out_domains(router):
    from voxroute.routing.train import PUBLIC_DOMAINS, PUBLIC_HELD_OUT

    assert len(HELD_OUT) >= 3
    held_out = router.model.meta["held_out_domains"]
    # exactly the domains whose rows are test, and the public domains kept out as a public check
    assert sorted(d for d in held_out if d not in PUBLIC_DOMAINS) == HELD_OUT
    assert sorted(d for d in held_out if d in PUBLIC_DOMAINS) == sorted(PUBLIC_HELD_OUT)
    mapping = {r["intent"] for r in csv.DictReader((DATA / "crossdomain_intents.csv").open(encoding="utf-8"))}
    assert {r["intent"] for r in ROWS} <= mapping
    for domain in HELD_OUT:
        labels = [r["label"] for r in ROWS if r["domain"] == domain]
        assert labels.count("high_stakes") >= 20 and labels.count("routine") >= 20, domain
        assert labels.count("human") >= 8 and labels.count("out_of_scope") >= 5, domain


@pytest.mark.parametrize("domain", HELD_OUT)
def test_targets_per_held_out_domain(held_out_figures, domain):
    m = held_out_figures[domain]
    print(domain, m)
    assert m["high_stakes_recall"] >= 0.90, m
    assert m["human_recall"] >= 0.95, m
    assert m["routine_escalated"] <= 0.15, m
    assert m["out_of_scope_escalated"] <= 0.15, m


def test_the_public_held_out_sets_meet_the_targets(router):
    """Bitext's customer-service requests and HWU64's home-assistant requests, held out of the shipped
    model's training: phrasing and label conventions no one at voxroute chose (data/router/README.md).
    Their errors guided the cue work and the hand-written how-to rows (2026-12-05), so they are a
    development check, as the hand-written test domains are; the check no one tunes on is HINT3.
    Targets as for the held-out businesses: high-stakes escalated >= 0.90, person requests >= 0.95,
    routine and out of scope escalated <= 0.15 (measured 2026-12-05: Bitext 0.922 / 0.978 / 0.060,
    HWU64 routine 0.118, out of scope 0.113)."""
    figures = {}
    for name in ("bitext_customer_service.csv", "hwu64_sample.csv"):
        with (DATA / name).open(newline="", encoding="utf-8") as f:
            rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
        figures[name] = metrics(predict(router, rows))
        print(name, {k: figures[name][k] for k in ("n", "high_stakes_recall", "human_recall",
                                                    "routine_escalated", "out_of_scope_escalated")})  # fmt: skip
    bitext, hwu = figures["bitext_customer_service.csv"], figures["hwu64_sample.csv"]
    assert bitext["human_recall"] >= 0.95, bitext
    assert bitext["high_stakes_recall"] >= 0.90 and bitext["routine_escalated"] <= 0.15, bitext
    assert hwu["routine_escalated"] <= 0.15 and hwu["out_of_scope_escalated"] <= 0.15, hwu


def test_per_language_figures_are_reported(router):
    rows = [r for r in ROWS if r["split"] == "test"]
    preds = predict(router, [(r["text"], r["label"]) for r in rows])
    per = metrics_by(preds, [r["language"] for r in rows])
    print(per)
    assert set(per) == {"en", "hi", "hinglish"}
    assert sum(m["n"] for m in per.values()) == len(rows) == metrics(preds)["n"]


def test_out_of_scope_stays_on_the_fast_tier(router):
    for text in ("Tell me a joke.", "What's the weather in Mumbai today?", "aaj kya khana banau"):
        r = router.conversation("default").decide(text, "en-IN")
        assert r.routing_class == "out_of_scope" and r.tier == "fast" and not r.escalated, r
        assert "politely" in r.guidance  # the answering model is told to redirect, not to answer


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "refund " * 1428 + "ab",  # 10,000 characters
        "x" * 10_000,
        "मेरा refund अभी तक नहीं आया, it's been 10 days यार",
        "😡😡😡",
        "🙏",
        "\u200b\u200d",
        "₹₹₹ 0000000000000000000000000000000",
    ],
)
def test_bad_input_gets_a_decision(router, text):
    conv = router.conversation("default")
    conv.speculate(text)
    r = conv.decide(text, "hi-IN" if "मेरा" in text else "en-IN")
    assert r.routing_class in router.table.classes["default"]
    assert not r.reason.startswith("router error"), r.reason
    assert r.tier in ("fast", "reasoning")


def test_the_public_sets_are_mapped_attributed_and_held_out_as_declared(router):
    """Every intent of the public sets (Bitext customer service, HWU64) has a reviewed mapping whose
    label every row carries; their licences travel with them; the shipped model was trained on the
    data in the repository, each public set included unless held out (PUBLIC_HELD_OUT)."""
    from voxroute.routing.train import PUBLIC_DOMAINS, PUBLIC_HELD_OUT, data_hash, public_domains

    assert router.model.meta["data_sha256"] == data_hash()

    mapping = {
        (r["source"], r["intent"]): r
        for r in csv.DictReader((DATA / "public_intents.csv").open(encoding="utf-8"))
    }
    for r in mapping.values():
        assert r["why"].strip(), r
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    for domain, (source, name) in PUBLIC_DOMAINS.items():
        rows = list(csv.DictReader((DATA / name).open(encoding="utf-8")))
        assert len(rows) >= 1000, name
        for r in rows:
            m = mapping.get((source, r["intent"])) or mapping[(source, "*")]
            assert m["label"] == r["label"], r
        assert name in readme, name
        assert (domain in router.model.meta["held_out_domains"]) == (domain in PUBLIC_HELD_OUT), domain
    assert "CDLA-Sharing" in readme and "CC BY 4.0" in readme
    assert (
        (DATA / "LICENSE-Bitext-CDLA-Sharing-1.0.txt")
        .read_text(encoding="utf-8")
        .startswith("Community Data License Agreement")
    )
    exs = public_domains()
    labels = {ex.label for d in exs.values() for ex in d}
    assert labels == {"routine", "high_stakes", "human", "out_of_scope"}
