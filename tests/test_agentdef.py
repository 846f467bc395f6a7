"""The agent per tenant (agent/agentdef.py): prompt templates, greeting, voices, knowledge file, and
configuration errors that name the dotted field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config


def _config(tmp_path: Path, agent: dict, tenant: str = "retail") -> Path:
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["tenants"][tenant] = {**data["tenants"]["default"], "numbers": ["+918000000123"], "agent": agent}
    path = tmp_path / "voxroute.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def test_prompt_template_knowledge_and_greeting(tmp_path):
    (tmp_path / "kb.md").write_text("# Returns\nReturns are free within 30 days.\n")
    path = _config(
        tmp_path,
        {
            "system_prompt": "You answer for {tenant}. It is {local_time} on {local_date}. Caller {caller}.",
            "greeting": {"en-IN": "Hello from {tenant}, it is {local_time}.", "hi-IN": "नमस्ते, {tenant}।"},
            "voices": {"hi-IN": "anushka"},
            "knowledge_file": "kb.md",  # relative: from the config file's folder
            "timezone": "Asia/Kolkata",
        },
    )
    agent = load_config(path).agent_for("retail")
    noon_utc = datetime(2026, 12, 3, 6, 30, tzinfo=UTC)  # 12:00 in India
    prompt = agent.prompt("en-IN", "+919800000001", noon_utc)
    assert prompt.startswith("You answer for retail. It is 12:00 on Thursday 03 December 2026.")
    assert "Caller ••••••••0001." in prompt and "9800000001" not in prompt
    assert prompt.endswith("Returns are free within 30 days.")  # the knowledge, after the prompt
    assert agent.greeting_text("en-IN", None, noon_utc) == "Hello from retail, it is 12:00."
    assert agent.greeting_text("hi-IN") == "नमस्ते, retail।"
    assert agent.voice("hi-IN") == "anushka" and agent.voice("en-IN") is None
    # the shared agent section stays the default tenant's: no greeting, the shared prompt, no knowledge
    default = load_config(path).agent_for("default")
    assert default.greeting_text("en-IN") is None and "##" not in default.prompt("en-IN")


@pytest.mark.parametrize(
    ("agent", "field", "why"),
    [
        ({"knowledge_file": "missing.md"}, "tenants.retail.agent.knowledge_file", "no such file"),
        ({"knowledge_file": "big.md", "knowledge_max_bytes": 1024}, "tenants.retail.agent.knowledge_file",
         "over knowledge_max_bytes (1024)"),
        ({"system_prompt": "Hi {customer}"}, "tenants.retail.agent.system_prompt", "unknown template field"),
        ({"greeting": "Hi {"}, "tenants.retail.agent.greeting", "not a valid template"),
        ({"greeting": {"ta-IN": "Vanakkam"}}, "tenants.retail.agent.greeting.ta-IN", "not one of the tenant"),
        ({"voices": {"ta-IN": "x"}}, "tenants.retail.agent.voices.ta-IN", "not one of the tenant"),
        ({"timezone": "Mars/Olympus"}, "tenants.retail.agent.timezone", "unknown time zone"),
        ({"knowledge_max_bytes": 10}, "tenants.retail.agent.knowledge_max_bytes", "greater than or equal"),
        ({"prompt": "x"}, "tenants.retail.agent.prompt", "Extra inputs"),
    ],
)  # fmt: skip
def test_configuration_errors_name_the_dotted_field(tmp_path, agent, field, why):
    (tmp_path / "big.md").write_text("x" * 2000)
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, agent))
    message = str(info.value)
    assert f"  {field}: " in message and why in message, message


def test_chat_section_defaults_off_with_a_derived_key_name():
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["tenants"]["my-shop"] = {**data["tenants"]["default"], "numbers": []}
    config = parse_config(data)
    tenant = config.tenants["my-shop"]
    assert tenant.chat.enabled is False and tenant.chat_key_env("my-shop") == "VOXROUTE_CHAT_KEY_MY_SHOP"
