"""The router's decisions (routing/router.py) with the shipped classifier and the default config,
and ``voxroute eval-router`` on the held-back splits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voxroute.agent.config import load_config, parse_config
from voxroute.cli import app
from voxroute.routing.classifier import read_labelled_csv
from voxroute.routing.evaluate import metrics, predict
from voxroute.routing.route import Route
from voxroute.routing.router import is_closing, is_devanagari, is_dialogue_act
from voxroute.runtime import build_router

DATA = Path(__file__).resolve().parent.parent / "data" / "router"


@pytest.fixture(scope="module")
def router():
    return build_router(load_config())


def test_rules_win_over_the_model(router):
    conv = router.conversation("default")
    r = conv.decide("can I talk to a real person please", "en-IN")
    assert r.routing_class == "human_request" and r.handoff and r.escalated
    assert r.reason.startswith("rule: asks for a person")


def test_billing_dispute_escalates_and_stays_escalated(router):
    conv = router.conversation("default")
    first = conv.decide("I was charged twice for my order last week.", "en-IN")
    assert first.routing_class == "billing_dispute" and first.tier == "reasoning" and first.escalated
    assert "escalate" in first.reason
    later = conv.decide("Okay, great. Thank you so much.", "en-IN")
    assert later.routing_class == "faq"
    assert later.escalated and later.tier == "reasoning" and "sticky escalation" in later.reason
    assert later.paths[0] == "reasoning"


def test_a_logged_route_reads_back_as_the_route_it_was(router):
    """The turn record holds the typed Route; the call log, replay JSON and an earlier leg hold its
    dict, which Route.from_dict reads back (the handoff summary's class, stakes and signals)."""
    route = router.conversation("default").decide("I was charged twice for my order last week.", "en-IN")
    logged = json.loads(json.dumps(route.as_dict()))
    back = Route.from_dict(logged)
    assert back is not None and back.as_dict() == logged
    assert (back.routing_class, back.stakes, back.paths) == ("billing_dispute", "high", route.paths)
    greeting = Route.unrouted("greeting", "the agent speaks first")
    assert greeting.as_dict() == {"class": "greeting", "tier": "none", "model": None, "escalated": False,
                                  "reason": "the agent speaks first"}  # fmt: skip
    read = Route.from_dict(greeting.as_dict())
    assert read is not None and read.as_dict() == greeting.as_dict() and read.tier == "none"
    # an older or hand-made log: what it does not say takes the default; stakes stays unsaid
    old = Route.from_dict({"class": "complaint", "escalated": 1, "paths": "fast", "budget_ms": True})
    assert old is not None and (old.stakes, old.escalated, old.paths, old.budget_ms) == ("", False, (), 1000)
    for nothing in (None, [], {}, {"class": ""}, {"class": 3}, "faq"):
        assert Route.from_dict(nothing) is None


def test_order_tracking_stays_fast_and_a_follow_up_keeps_its_class(router):
    conv = router.conversation("default")
    first = conv.decide("Hi, can you tell me where my order is?", "en-IN")
    assert first.routing_class == "order_tracking" and first.tier == "fast" and not first.escalated
    follow = conv.decide("It's A one seven four five.", "en-IN")
    assert follow.routing_class == "order_tracking" and not follow.escalated
    assert follow.reason.startswith("context: follows order_tracking")


# Closings, acknowledgements and deferrals in wording of their own (none is a fixture's line); the
# shipped model alone escalates most of them (p_high 0.34-0.73) or reads them as a request for a person.
CLOSINGS = [
    "I will think about it.",
    "Hmm, okay, I will let you know.",
    "No, nothing else, thanks.",
    "Okay, I will call you back later.",
    "Let me sleep on it, bye.",
    "theek hai, main soch ke batata hoon",
    "मैं सोचकर बताऊँगा।",
]


@pytest.mark.parametrize("speculated", [False, True])
@pytest.mark.parametrize("text", CLOSINGS)
def test_a_closing_in_a_routine_call_stays_on_the_fast_tier(router, text, speculated):
    assert is_closing(text)
    conv = router.conversation("default")
    conv.decide("What time does your store close on weekdays?", "en-IN")
    if speculated:  # the last partial was the whole turn: the decision reuses what it worked out
        conv.speculate(text)
    r = conv.decide(text, "hi-IN" if is_devanagari(text) else "en-IN")
    assert r.routing_class == "faq" and r.tier == "fast" and not r.escalated and not r.handoff, r
    assert r.reason.startswith("closing"), r.reason


def test_the_model_alone_escalates_closings(router):
    """Why the closing rule exists: without it several of CLOSINGS would reach the reasoning tier
    (3 of 7 with the model of 2026-12-04, which learnt more of what is routine; 4 before)."""
    model = router.model
    assert sum(model.escalates(model.scores(t)) for t in CLOSINGS) >= 3


@pytest.mark.parametrize(
    "text",
    [
        "Okay, but I still want my refund.",
        "Thank you for nothing, I am filing a complaint.",
        "Fine, then cancel my order.",
        "Okay, I will think about it, but first return my money.",
    ],
)
def test_closing_words_do_not_hide_stakes(router, text):
    assert not is_closing(text)
    conv = router.conversation("default")
    conv.decide("What time does your store close on weekdays?", "en-IN")
    r = conv.decide(text, "en-IN")
    assert r.escalated and r.tier == "reasoning", r


def test_a_closing_is_short_and_whole():
    assert not is_closing("")
    assert not is_closing("ok " * 3000)  # longer than any closing: not matched, and no backtracking
    assert not is_closing("Okay. What are your opening hours then?")
    assert is_closing("Okay, great. Thank you so much.")


DIALOGUE_ACTS = [
    "Sorry, can you say that again please?",
    "Hold on a second.",
    "That is not what I asked.",
    "Wait, that's the wrong answer.",
    "Could you explain that again?",
    "I don't mind, either is fine.",
    "Well done, I appreciate it.",
    "Let's start over.",
    "phir se boliye",
    "समझ नहीं आया, फिर से बताइए।",
]


@pytest.mark.parametrize("speculated", [False, True])
@pytest.mark.parametrize("text", DIALOGUE_ACTS)
def test_a_dialogue_act_in_a_routine_call_stays_on_the_fast_tier(router, text, speculated):
    assert is_dialogue_act(text)
    conv = router.conversation("default")
    conv.decide("What time does your store close on weekdays?", "en-IN")
    if speculated:
        conv.speculate(text)
    r = conv.decide(text, "hi-IN" if is_devanagari(text) else "en-IN")
    assert r.routing_class == "faq" and r.tier == "fast" and not r.escalated and not r.handoff, r
    assert r.reason.startswith("dialogue act"), r.reason


def test_the_model_alone_escalates_dialogue_acts(router):
    """Why the dialogue-act rule exists: the model alone sends half of DIALOGUE_ACTS to the reasoning
    tier (5 of 10 with the model of 2026-12-04; HWU64's dialogue acts: 0.31 escalated without it)."""
    model = router.model
    assert sum(model.escalates(model.scores(t)) for t in DIALOGUE_ACTS) >= 4


@pytest.mark.parametrize(
    "text",
    [
        "Stop my subscription.",
        "Wait, my card is missing.",
        "Say that again, I was charged twice?",
        "This is ridiculous, repeat that.",
        "Hold on, I want to speak to a manager.",
        "I don't care, just refund my money.",
        "samajh nahi aaya, mera refund nahi aaya",
    ],
)
def test_dialogue_act_words_do_not_hide_stakes(router, text):
    assert not is_dialogue_act(text)
    conv = router.conversation("default")
    conv.decide("What time does your store close on weekdays?", "en-IN")
    r = conv.decide(text, "en-IN")
    assert r.escalated, r


def test_a_dialogue_act_keeps_a_high_stakes_call_escalated(router):
    conv = router.conversation("default")
    assert conv.decide("I was charged twice for my order and want the money back.", "en-IN").escalated
    r = conv.decide("Sorry, can you say that again?", "en-IN")
    assert r.escalated and r.tier == "reasoning" and not r.reason.startswith("dialogue act"), r


def test_an_off_topic_turn_is_not_followed_as_context(router):
    conv = router.conversation("default")
    assert conv.decide("Tell me a joke.", "en-IN").routing_class == "out_of_scope"
    text = "Is parking free?"
    # the model is unsure of it: a follow-up it would otherwise take for the previous turn's topic
    assert router.model.scores(text).best()[1] < router.table.routing.signals.context_min_confidence
    r = conv.decide(text, "en-IN")
    assert r.routing_class != "out_of_scope" and not r.reason.startswith("context"), r.reason


def test_step_down_after_routine_turns():
    cfg = load_config()
    data = cfg.model_dump(mode="python", by_alias=True)
    data["routing"]["classes"] = {"complaint": {"stakes": "high", "step_down_after": 2}}
    router = build_router(parse_config(data))
    conv = router.conversation("default")
    assert conv.decide("This is the third time I am calling about the same problem!", "en-IN").escalated
    assert conv.decide("Hi, can you tell me where my order is?", "en-IN").escalated  # 1 routine turn
    r = conv.decide("Okay, great. Thank you so much.", "en-IN")
    assert not r.escalated and r.tier == "fast" and "step down after 2 routine turns" in r.reason


def test_signals_money_anger_and_unresolved_turns(router):
    conv = router.conversation("default")
    r = conv.decide("Honestly this is ridiculous, what is your opening time", "en-IN")
    assert "anger" in r.signals or r.stakes == "high"
    # The same request again after the agent could not answer: escalates although routine.
    conv = router.conversation("default")
    conv.decide("what are your opening hours on sunday", "en-IN")
    conv.outcome("apology")
    r = conv.decide("what are your opening hours on sunday", "en-IN")
    assert r.escalated and "unresolved" in r.reason
    # A money amount lowers the bar for a dispute; the reason says so.
    conv = router.conversation("default")
    r = conv.decide("there is a payment of 2,400 rupees I don't know about", "en-IN")
    assert r.escalated and "money named" in r.reason


def test_speculation_on_a_partial_is_confirmed_by_the_same_final(router):
    conv = router.conversation("default")
    conv.speculate("I want a refund for the duplicate payment")
    r = conv.decide("I want a refund for the duplicate payment", "en-IN")
    assert "speculative, confirmed" in r.reason and r.escalated
    conv.speculate("I want a")
    r = conv.decide("I want a refund for the duplicate payment", "en-IN")
    assert "speculative" not in r.reason  # the final differed: scored afresh


def test_hindi_uses_the_indic_table(router):
    conv = router.conversation("default")
    r = conv.decide("मेरे कार्ड से दो बार पैसे कट गए हैं।", "hi-IN")
    assert r.group == "indic" and r.routing_class == "billing_dispute"
    assert r.paths[0] == "reasoning_backup" and r.escalated
    r = router.conversation("default").decide("नमस्ते, मेरा ऑर्डर कहाँ है?", "hi-IN")
    assert r.group == "indic" and r.paths[0] == "fast_backup" and not r.escalated


def test_bridge_then_escalate_when_the_reasoning_path_is_too_slow(router):
    conv = router.conversation("default")
    r = conv.decide("I was charged twice", "en-IN", budget_left_ms=600)
    assert r.bridge_first and "bridge then escalate" in r.reason
    conv = router.conversation("default")
    r = conv.decide("I was charged twice", "en-IN", budget_left_ms=5000)
    assert not r.bridge_first


@pytest.mark.parametrize("split", ["banking77_test", "clinc150_test", "extra_test"])
def test_targets_through_the_whole_router(router, split):
    """The issue's targets, with rules and signals as they run in calls (not the model alone)."""
    if split == "clinc150_test":
        with (DATA / "clinc150_banking_credit.csv").open(newline="", encoding="utf-8") as f:
            rows = [(r["text"], r["label"]) for r in csv.DictReader(f) if r["split"] == "test"]
    else:
        rows = read_labelled_csv(DATA / f"{split}.csv")
    m = metrics(predict(router, rows))
    assert m["high_stakes_recall"] >= 0.95, m
    if split != "extra_test":  # extra_test is mostly high-stakes and human rows by design
        assert m["escalation_rate"] <= 0.35, m
    if m["human_recall"] is not None:
        assert m["human_recall"] >= 0.95, m


def test_eval_router_cli(tmp_path):
    src = tmp_path / "data.csv"
    src.write_text(
        "text,label\n"
        "I was charged twice for the same coffee,high_stakes\n"
        "what time do you open,routine\n"
        "let me speak to a human,human\n"
        "who won the world cup in 1998,out_of_scope\n",
        encoding="utf-8",
    )
    out, preds = tmp_path / "m.json", tmp_path / "p.csv"
    res = CliRunner().invoke(app, ["eval-router", str(src), "--json", str(out), "--predictions", str(preds)])
    assert res.exit_code == 0, res.output
    figures = json.loads(out.read_text())
    assert set(figures) == {
        "n", "accuracy", "high_stakes_recall", "high_stakes_precision", "human_recall",
        "escalation_rate", "routine_escalated", "out_of_scope_escalated", "routine_as_out_of_scope",
        "decision_ms_p50", "decision_ms_p99", "cpu_ms_per_turn",
    }  # fmt: skip
    assert figures["n"] == 4 and figures["human_recall"] == 1.0 and figures["high_stakes_recall"] == 1.0
    assert figures["routine_escalated"] == 0.0 and figures["out_of_scope_escalated"] == 0.0
    assert figures["routine_as_out_of_scope"] == 0.0
    rows = list(csv.DictReader(preds.open(encoding="utf-8")))
    assert [r["escalated"] for r in rows[:3]] == ["1", "0", "1"]
    assert rows[2]["predicted_class"] == "human_request"
    assert set(rows[0]) == {"text", "label", "predicted_class", "escalated", "decision_ms"}
    bad = tmp_path / "bad.csv"
    bad.write_text("text,lbl\nhello,routine\n")
    res = CliRunner().invoke(app, ["eval-router", str(bad)])
    assert res.exit_code == 2 and "missing" in res.output and "label" in res.output


def test_a_router_error_still_routes_the_turn(router, monkeypatch, caplog):
    conv = router.conversation("default")
    conv.decide("I was charged twice", "en-IN")

    def broken(text):
        raise RuntimeError("model file corrupted")

    monkeypatch.setattr(router.model, "scores", broken)
    r = conv.decide("and another thing about my account", "en-IN")
    assert r.reason.startswith("router error: RuntimeError")
    assert r.routing_class == "billing_dispute" and r.escalated and r.paths[0] == "reasoning"
    assert "routing failed" in caplog.text


def test_eval_router_by_column(tmp_path):
    src = tmp_path / "data.csv"
    src.write_text(
        "text,label,domain\n"
        "I won 5000 in the contest but it is not credited,high_stakes,gaming\n"
        "how do I create a team,routine,gaming\n"
        "Is the whey protein vegetarian?,routine,health\n"
        "let me speak to a human,human,health\n",
        encoding="utf-8",
    )
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["eval-router", str(src), "--by", "domain", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "by domain" in res.output and "gaming" in res.output and "health" in res.output
    figures = json.loads(out.read_text())
    assert figures["n"] == 4 and figures["by"]["column"] == "domain"
    per = figures["by"]["values"]
    assert set(per) == {"gaming", "health"}
    assert set(per["gaming"]) == set(figures) - {"by"}  # every figure, per value
    assert per["gaming"]["n"] == 2 and per["gaming"]["high_stakes_recall"] == 1.0
    assert per["health"]["human_recall"] == 1.0 and per["health"]["high_stakes_recall"] is None
    res = CliRunner().invoke(app, ["eval-router", str(src), "--by", "language"])
    assert res.exit_code == 2 and "no column 'language'" in " ".join(res.output.split())


def _tenant_examples_router(min_similarity: float = 0.5):
    cfg = load_config()
    data = cfg.model_dump(mode="python", by_alias=True)
    data["routing"]["signals"]["examples_min_similarity"] = min_similarity
    data["tenants"]["default"]["classes"] = {
        "trial_period": {
            "stakes": "low",
            "description": "the 100-night home trial of a mattress",
            "examples": [
                "how long is the trial period",
                "can I try the mattress at home first",
                "is there a free trial",
                "how many nights can I sleep on it before deciding",
            ],
        },
        "warranty_claim": {
            "stakes": "high",
            "examples": [
                "my mattress is sagging and I want to claim the warranty",
                "warranty claim for a broken bed",
            ],
        },
    }
    return build_router(parse_config(data))


def test_tenant_classes_from_examples_without_retraining():
    router = _tenant_examples_router()
    r = router.conversation("default").decide("Is there a free trial period for the mattress?", "en-IN")
    assert r.routing_class == "trial_period" and r.tier == "fast" and not r.escalated
    assert r.reason.startswith("examples: trial_period (nearest 'is there a free trial'"), r.reason
    r = router.conversation("default").decide("I want to claim warranty, the bed is broken", "en-IN")
    assert r.routing_class == "warranty_claim" and r.escalated and r.tier == "reasoning"
    # Unrelated turns are left to the model; a low-stakes example class never hides a high-stakes turn.
    r = router.conversation("default").decide("I was charged twice for my order last week.", "en-IN")
    assert r.routing_class == "billing_dispute" and r.escalated
    r = router.conversation("default").decide(
        "the trial was cancelled but I was charged 15000 rupees twice", "en-IN"
    )
    assert r.escalated and r.routing_class != "trial_period", r.reason
    # The minimum similarity is the tenant's dial: near 1 only an exact example matches.
    strict = _tenant_examples_router(min_similarity=0.999)
    r = strict.conversation("default").decide("Is there a free trial period for the mattress?", "en-IN")
    assert r.routing_class != "trial_period"
    r = strict.conversation("default").decide("Is there a free trial?", "en-IN")
    assert r.routing_class == "trial_period"
