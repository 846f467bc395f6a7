"""The routing table config, its resolution, provider health and `voxroute config check`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from voxroute.agent.config import ConfigError, load_config, parse_config
from voxroute.cli import app
from voxroute.routing.health import MIN_SAMPLES, Health
from voxroute.runtime import build_router

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _minimal(**tenant_extra) -> dict:
    tenant = {
        "table": {
            "english": {"voice": {"fast": ["f"], "reasoning": ["r"]}},
            "indic": {"voice": {"fast": ["i"], "reasoning": ["r"]}},
        },
        **tenant_extra,
    }
    return {
        "providers": {"p": {"flavor": "openrouter", "base_url": "http://a", "api_key_env": "K"}},
        "models": {
            "f": {"provider": "p", "model": "fast-1", "tier": "fast"},
            "i": {"provider": "p", "model": "indic-1", "tier": "fast"},
            "r": {"provider": "p", "model": "reason-1", "tier": "reasoning"},
        },
        "tenants": {"default": tenant},
    }


@pytest.mark.parametrize("name", ["default.yaml", "retail.yaml", "bank.yaml"])
def test_example_configs_load_and_resolve(name):
    cfg = load_config(EXAMPLES / name)
    table = cfg.routing_table()
    for tenant in cfg.tenants:
        rows = table.rows(tenant)
        classes = {r.routing_class for r in rows}
        assert {"faq", "billing_dispute", "human_request", "regulated"} <= classes
        for r in rows:
            tiers = [table.models[tenant][p].tier for p in r.ladder]
            # high-stakes classes start on the reasoning tier, low-stakes ones on the fast tier
            assert tiers[0] == ("fast" if r.stakes == "low" else "reasoning"), r
            assert table.models[tenant][r.escalated_ladder[0]].tier == "reasoning"


def test_bank_example_uses_sarvam_models_for_hindi():
    cfg = load_config(EXAMPLES / "bank.yaml")
    table = cfg.routing_table()
    assert table.group("bharat_bank", "hi-IN") == "indic"
    for cls in ("faq", "billing_dispute"):
        cell = table.cell("bharat_bank", "indic", "voice", cls)
        assert table.models["bharat_bank"][cell.ladder[0]].provider == "sarvam"
    assert table.cell("bharat_bank", "english", "voice", "regulated").budget_ms == 1500
    assert table.cell("bharat_bank", "english", "voice", "faq").budget_ms == 1200
    assert table.cell("bharat_bank", "english", "chat", "faq").budget_ms == 3000
    assert table.tenant_for_number("+91 1800-100-200") == "bharat_bank"


def test_resolution_rules():
    cfg = parse_config(
        _minimal(
            classes={"warranty": {"stakes": "high"}},
            budgets={"voice_ms": 900, "chat_ms": 2000},
        )
    )
    t = cfg.routing_table()
    faq = t.cell("default", "english", "voice", "faq")
    assert faq.ladder == ("f",) and faq.escalated_ladder == ("r", "f")
    dispute = t.cell("default", "english", "voice", "billing_dispute")
    assert dispute.ladder == ("r", "f")  # reasoning first, fast tier last (downgrade for speed)
    regulated = t.cell("default", "english", "voice", "regulated")
    assert regulated.ladder == ("r",)  # regulated never downgrades
    assert regulated.on_failure == "handoff"
    assert t.cell("default", "english", "voice", "warranty").stakes == "high"
    assert t.cell("default", "indic", "voice", "faq").ladder == ("i",)
    assert t.cell("default", "english", "chat", "faq").budget_ms == 2000
    assert t.group("default", "ta-IN") == "indic"
    assert t.group("default", "fr-FR") == "english"  # unknown language: the default group


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d["tenants"]["default"]["table"]["english"]["voice"].update(fast=["nope"]),
         "tenants.default.table.english.voice.fast.0: unknown model path 'nope'"),
        (lambda d: d["tenants"]["default"]["table"].update(klingon=d["tenants"]["default"]["table"]["english"]),
         "tenants.default.table.klingon: unknown language group"),
        (lambda d: d["tenants"]["default"].update(rules=[{"class": "nope", "pattern": "x"}]),
         "tenants.default.rules.0.class: unknown routing class 'nope'"),
        (lambda d: d["tenants"]["default"].update(rules=[{"class": "faq", "pattern": "(unclosed"}]),
         "tenants.default.rules.0.pattern"),
        (lambda d: d["models"]["f"].update(provider="ghost"), "models.f.provider: unknown provider 'ghost'"),
        (lambda d: d["tenants"]["default"].update(budgets={"voice_ms": 100}),
         "tenants.default.budgets.voice_ms: must be larger than bridge_lead_ms"),
        (lambda d: d.update(telephony={"default_tenant": "acme"}), "telephony.default_tenant: no tenant 'acme'"),
        (lambda d: d["tenants"]["default"]["table"]["english"]["voice"]["classes"].update(faq={"ladder": []})
         if "classes" in d["tenants"]["default"]["table"]["english"]["voice"]
         else d["tenants"]["default"]["table"]["english"]["voice"].update(classes={"faq": {"ladder": []}}),
         "tenants.default.table.english.voice.classes.faq.ladder"),
        (lambda d: d["tenants"]["default"].update(colour="blue"), "tenants.default.colour"),
    ],
)  # fmt: skip
def test_bad_config_names_the_field(change, expected):
    data = _minimal()
    change(data)
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "t.yaml")
    assert expected in str(exc.value)


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_config_check_cli(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(EXAMPLES / "bank.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "bharat_bank" in ok.output and "sarvam_105b" in ok.output and "ok:" in ok.output
    data = _minimal()
    data["tenants"]["default"]["table"]["english"]["voice"]["reasoning"] = ["missing"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    res = runner.invoke(app, ["config", "check", str(bad)])
    assert res.exit_code == 2
    assert "reasoning.0: unknown model path 'missing'" in res.output
    policy = build_router(load_config(EXAMPLES / "bank.yaml")).policy_version  # what the call log records
    assert f"routing policy {policy}" in " ".join(ok.output.split())


def test_policy_version_follows_what_routing_does():
    """The call log stores the policy hash with each call: the same table gives the same hash, a
    changed ladder or price a new one, and a cosmetic change (a prompt) none."""
    base = parse_config(_minimal()).routing_table().policy_version
    assert base == parse_config(_minimal()).routing_table().policy_version and len(base) == 12
    data = _minimal()
    data["tenants"]["default"]["table"]["english"]["voice"]["reasoning"] = ["r", "f"]
    assert parse_config(data).routing_table().policy_version != base
    data = _minimal()
    data.setdefault("agent", {})["system_prompt"] = "Be brief."
    assert parse_config(data).routing_table().policy_version == base


# ---------------------------------------------------------------- provider health


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_cooldown_probe_and_recovery():
    clock = FakeClock()
    h = Health(cooldown_s=10, failures_to_cooldown=2, clock=clock)
    assert h.available("p/m")
    assert not h.failure("p/m")
    assert h.failure("p/m")  # second failure in a row: cooldown
    assert not h.available("p/m") and h.in_cooldown("p/m")
    clock.t += 9.9
    assert not h.available("p/m")
    clock.t += 0.2
    assert h.available("p/m")  # the probe
    assert not h.available("p/m")  # only one probe at a time
    assert h.failure("p/m")  # a failed probe: cooldown again at once
    clock.t += 10.1
    assert h.available("p/m")
    h.success("p/m", 300)
    assert h.available("p/m") and not h.in_cooldown("p/m")
    assert h.snapshot()["paths"]["p/m"]["cooldowns"] == 2


def test_success_resets_consecutive_failures():
    h = Health(failures_to_cooldown=2, clock=FakeClock())
    h.failure("a")
    h.success("a", 100)
    assert not h.failure("a")


def test_ttft_percentiles_fall_back_to_expectation():
    h = Health(clock=FakeClock())
    assert h.ttft_ms("a", 0.5, 400) == 400
    assert h.ttft_ms("a", 0.9, 400) > 400
    for v in range(1, MIN_SAMPLES * 10 + 1):
        h.success("a", float(v * 10))
    assert h.ttft_ms("a", 0.5, 400) == pytest.approx(410, abs=20)
    assert h.ttft_ms("a", 0.9, 400) == pytest.approx(730, abs=20)


def test_hedge_cap():
    h = Health(hedge_max_share=0.10, clock=FakeClock())
    allowed = 0
    for _ in range(100):
        h.request()
        allowed += h.may_hedge()
    assert 10 <= allowed <= 11
    assert h.hedges == allowed and h.hedges_refused == 100 - allowed


def test_hedge_credit_saved_while_quiet_is_capped():
    """1,000 requests with no hedge, then a burst of 100 late first tokens: ``hedge_burst`` hedges
    start, not 100 (credit saved while nothing was hedged no longer lets a burst hedge everything)."""
    h = Health(hedge_max_share=0.10, clock=FakeClock(), hedge_burst=10)
    for _ in range(1000):
        h.request()
    assert sum(h.may_hedge() for _ in range(100)) == 10
    for _ in range(20):  # the share still comes back with the requests
        h.request()
    assert sum(h.may_hedge() for _ in range(100)) == 2


def test_class_examples_validate():
    cfg = parse_config(_minimal(classes={"trial": {"stakes": "low", "examples": ["is there a free trial"]}}))
    assert cfg.routing_table().classes["default"]["trial"].examples == ["is there a free trial"]
    for bad in ([""], ["   "], ["x" * 501]):
        with pytest.raises(ConfigError, match=r"examples"):
            parse_config(_minimal(classes={"trial": {"stakes": "low", "examples": bad}}))


def test_the_call_logs_policy_names_the_classifier_and_its_thresholds():
    """A new stakes model, or a new threshold, routes differently: the policy the call log records
    changes with it (the table's version alone would not), and stays put otherwise."""
    from voxroute.routing.classifier import StakesModel
    from voxroute.routing.router import Router

    cfg = parse_config(_minimal())
    model = StakesModel.load()
    base = Router(cfg.routing_table(), model).policy_version
    assert base == Router(cfg.routing_table(), model).policy_version and len(base) == 12
    assert Router(cfg.routing_table(), None).policy_version != base
    other = copy.copy(model)
    other.version = model.version + "-retrained"
    assert Router(cfg.routing_table(), other).policy_version != base
    data = _minimal()
    data.setdefault("routing", {})["high_threshold"] = 0.2
    assert Router(parse_config(data).routing_table(), model).policy_version != base


def test_a_trained_models_version_names_its_weights_and_threshold(tmp_path):
    import datetime as dt

    from voxroute.routing.classifier import DEFAULT_MODEL_PATH
    from voxroute.routing.train import model_version

    day = dt.date(2026, 12, 4)
    npz = tmp_path / "stakes.npz"
    npz.write_bytes(DEFAULT_MODEL_PATH.read_bytes())
    v = model_version(npz, 0.4, day)
    assert v.startswith("stakes-") and v.endswith("-20261204") and v == model_version(npz, 0.4, day)
    assert model_version(npz, 0.41, day) != v
    npz.write_bytes(npz.read_bytes() + b"\0")
    assert model_version(npz, 0.4, day) != v
    # the shipped model's version is its own weights' and threshold's
    shipped = json.loads(DEFAULT_MODEL_PATH.with_suffix(".json").read_text())
    stamped = dt.datetime.strptime(shipped["version"].rsplit("-", 1)[1], "%Y%m%d").date()
    assert shipped["version"] == model_version(DEFAULT_MODEL_PATH, shipped["high_threshold"], stamped)
