"""The console script: registration, help, the demo and one-line errors (run as real subprocesses)."""

import json
import subprocess
import sys

import pytest

from llamavid.cli import COMMAND_MODULES
from llamavid.cli.main import build_parser


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llamavid.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_every_registered_command_has_help():
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert len(subcommands) >= len(COMMAND_MODULES)
    for name, sub in subcommands.items():
        assert sub.description or sub.format_help(), name


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout


def test_demo_answers_correctly_with_the_embedded_model(tmp_path):
    result = run_cli("demo", "--json", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["model"] == "tiny-llamavid"
    assert payload["visual_tokens"] == 2 * payload["frames"]  # 2 tokens per frame
    assert payload["expected"] in payload["answer"].lower().split()


def test_demo_with_random_weights_says_so(tmp_path):
    result = run_cli(
        "demo", "--random", "--json", "--frames", "4", "--max-new-tokens", "4", "--out", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["visual_tokens"] == 8 and payload["expected"] is None
    assert "untrained" in payload["model"]


@pytest.mark.parametrize("args", [("demo", "--frames", "0")])
def test_bad_arguments_give_one_line_errors(args):
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("llamavid demo: error:")
