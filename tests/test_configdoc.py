"""docs/config.md is generated from the code and must match it (CI runs this test)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from voxroute.agent import configdoc
from voxroute.agent.config import Config

ROOT = Path(__file__).resolve().parents[1]


def test_docs_config_md_matches_the_code():
    page = (ROOT / "docs" / "config.md").read_text()
    assert page == configdoc.render(), (
        "docs/config.md is out of date: run `.venv/bin/python -m voxroute.agent.configdoc > docs/config.md`"
    )


def test_every_field_and_section_is_on_the_page():
    page = configdoc.render()
    for name in Config.model_fields:
        assert f"| `{name}` |" in page
    for section in ("telephony", "handoff", "call_log", "sip.registration", "tenants.<name>.agent", "tools"):
        assert f"### `{section}`" in page
    assert "| `webhook_secret_env` | str | `'VOXROUTE_WEBHOOK_SECRET'` |" in page
    assert "| `silence_ms` | int | `300` | >= 60, <= 3000 |" in page


def test_variables_the_code_reads_are_found():
    reads = configdoc.env_reads()
    # Read through os.environ, an env mapping, *_ENV constants and config defaults respectively.
    assert "agent/calllog/rows.py" in reads["VOXROUTE_CALLER_SALT"]
    assert "agent/fixture.py" in reads["VOXROUTE_FIXTURES"]
    assert "telephony/carriers.py" in reads["EXOTEL_SAMPLE_RATE"]
    assert "agent/config.py" in reads["TELNYX_API_KEY"]
    assert "agent/config.py" in reads["VOXROUTE_WEBHOOK_SECRET"]
    assert "VOXROUTE_CHAT_KEY_<TENANT>" in reads


def test_scanner_recognises_each_way_of_reading():
    source = """
import os
a = os.environ.get("A_ONE")
b = os.environ["B_TWO"]
c = os.getenv("C_THREE")
def f(env):
    return env.get("D_FOUR", "")
X_ENV, Y_ENV = "E_FIVE", "F_SIX"
SECRET_ENV = {"field": "G_SEVEN"}
if "H_EIGHT" in os.environ:
    pass
not_an_env_read = {"I_NINE": 1}.get("I_NINE")
"""
    found = configdoc._names_in_source(ast.parse(source))
    assert found == {"A_ONE", "B_TWO", "C_THREE", "D_FOUR", "E_FIVE", "F_SIX", "G_SEVEN", "H_EIGHT"}


def test_an_undescribed_variable_fails_the_page(monkeypatch):
    docs = dict(configdoc.ENV_DOCS)
    del docs["VOXROUTE_CALLER_SALT"]
    monkeypatch.setattr(configdoc, "ENV_DOCS", docs)
    with pytest.raises(SystemExit, match="VOXROUTE_CALLER_SALT"):
        configdoc.render()


def test_no_stale_variable_descriptions():
    """Each described variable is read by the code or named by an example config."""
    examples = " ".join(p.read_text() for p in (ROOT / "examples").glob("*.yaml"))
    named = set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", examples))
    stale = set(configdoc.ENV_DOCS) - set(configdoc.env_reads()) - named
    assert not stale
