"""The pytest plugin in a user's own project: a temporary folder outside the repository with its own
config, fixtures folder and test file, run as ``python -m pytest`` there with only the installed
package (the repository's tests/conftest.py is nowhere on the path)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from voxroute.agent.fixture import FIXTURES_DIR

REPO = Path(__file__).resolve().parent.parent

PYTEST_INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
voxroute_fixtures = calls
voxroute_config = config/voxroute.yaml
"""

TEST_FILE = """\
import sys

from voxroute.testing import assert_expectations, assert_routed, assert_within_budget


def test_nothing_of_the_voxroute_repository_is_loaded():
    repo_tests = "{repo}/tests"
    assert "tests.conftest" not in sys.modules
    assert not [m for m in list(sys.modules.values()) if str(getattr(m, "__file__", "")).startswith(repo_tests)]


async def test_my_dispute(replay_call):
    result = await replay_call("my_dispute", profile="zero", speed=4.0, voice_speed=3.0)
    assert [t["budget_ms"] for t in result.turns] == [1200, 1200]  # my config's budget
    assert_within_budget(result)
    assert_routed(result, turn=1, cls="billing_dispute", tier={tier!r})
    assert_expectations(result)
"""


def _project(tmp_path: Path, tier: str) -> Path:
    project = tmp_path / "my_agent"
    (project / "config").mkdir(parents=True)
    (project / "calls").mkdir()
    config = yaml.safe_load((REPO / "examples" / "default.yaml").read_text())
    config["tenants"]["default"]["budgets"]["voice_ms"] = 1200
    (project / "config" / "voxroute.yaml").write_text(yaml.safe_dump(config))
    script = json.loads((FIXTURES_DIR / "billing_dispute.json").read_text())
    script.update(call="my_dispute", audio="my_dispute.wav", expect_end="completed")
    script["utterances"] = script["utterances"][:2]
    (project / "calls" / "my_dispute.json").write_text(json.dumps(script))
    shutil.copy(FIXTURES_DIR / "billing_dispute.wav", project / "calls" / "my_dispute.wav")
    (project / "pytest.ini").write_text(PYTEST_INI)
    (project / "test_my_agent.py").write_text(TEST_FILE.format(repo=REPO, tier=tier))
    return project


def _run_pytest(project: Path) -> subprocess.CompletedProcess:
    drop = ("PYTHONPATH", "PYTEST_ADDOPTS", "VOXROUTE_DATA_DIR", "VOXROUTE_FIXTURES", "VOXROUTE_CONFIG")
    env = {
        k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("PYTEST_", "VOXROUTE_"))
    }
    env = {k: v for k, v in env.items() if not k.endswith("_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_user_project_replays_its_own_fixture_with_its_own_config(tmp_path):
    project = _project(tmp_path, tier="reasoning")
    proc = _run_pytest(project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
    assert not (project / "data").exists()  # the call log went to a temporary folder


def test_a_wrong_expectation_fails_the_users_run_with_a_readable_diff(tmp_path):
    project = _project(tmp_path, tier="fast")
    proc = _run_pytest(project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in proc.stdout
    assert 'my_dispute: turn 1 "I was charged twice for my order last week." routed elsewhere' in proc.stdout
    assert "- class=billing_dispute tier=fast" in proc.stdout
    assert "+ class=billing_dispute tier=reasoning" in proc.stdout
