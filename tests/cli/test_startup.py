"""Building the CLI parser (what ``--help`` does) imports neither torch nor transformers: checked by import
tracking in a fresh interpreter, never by timing."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from llamavid.cli.main import build_parser
parser = build_parser()
for action in parser._subparsers._group_actions:
    for name, sub in action.choices.items():
        sub.format_help()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "numpy", "av", "PIL"))
print(json.dumps(heavy))
"""


def test_building_every_parser_imports_no_heavy_module():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    heavy = json.loads(result.stdout)
    assert heavy == [], f"--help imports {heavy[:10]}; import them inside the command's run() instead"


def test_help_of_every_command_exits_zero():
    from llamavid.cli import COMMAND_MODULES

    names = [module.rsplit(".", 1)[1].replace("_", "-") for module in COMMAND_MODULES]
    for name in ["", *names]:
        args = [sys.executable, "-m", "llamavid.cli.main", *([name] if name else []), "--help"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "usage:" in result.stdout, (name, result.stderr)
