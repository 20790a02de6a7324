"""The lmms-eval plugin under the real lmms-eval 0.7.3, in its own venv (its `av<16` pin clashes with ours)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testing_utils import IN_CI

ROOT = Path(__file__).resolve().parents[2]
LMMS_PYTHON = Path(os.environ.get("LLAMAVID_LMMS_VENV", ROOT / ".venv-lmms")) / "bin" / "python"


def test_real_lmms_eval_runs_a_local_task_with_the_plugin():
    if not LMMS_PYTHON.exists():
        message = f"{LMMS_PYTHON} missing: build it with `make lmms-venv` (make test does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [str(LMMS_PYTHON), str(ROOT / "tools" / "lmms_eval_smoke.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "lmms-eval smoke OK" in result.stdout
