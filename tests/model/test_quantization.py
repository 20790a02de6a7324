"""8-bit / 4-bit loading (bitsandbytes on CPU): the tiny converted model loads, generates, and only the LLM
layers are quantised."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("bitsandbytes")
import bitsandbytes as bnb  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_layout import TinySizes, make_official_release  # noqa: E402

from llamavid.cli._engine_options import add_engine_arguments  # noqa: E402
from llamavid.inference.engine import Engine  # noqa: E402
from llamavid.model.convert_original_checkpoint import convert  # noqa: E402
from llamavid.model.quantization import quantization_config  # noqa: E402

SIZES = TinySizes(llm_width=64, llm_mlp=128)  # bitsandbytes 4-bit needs widths that fill its blocks
QUANTISED = {"8bit": bnb.nn.Linear8bitLt, "4bit": bnb.nn.Linear4bit}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    files = make_official_release(tmp_path_factory.mktemp("official"), SIZES, compress_type="mean")
    return convert(
        files["folder"],
        files["eva"],
        tmp_path_factory.mktemp("converted") / "out",
        bert_tokenizer_folder=files["bert"],
        image_size=56,
        dtype="float32",
        vision_overrides=SIZES.vision_overrides,
        qformer_overrides=SIZES.qformer_overrides,
    )


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_loads_quantised_and_generates(folder, mode):
    engine = Engine.from_pretrained(folder, device="cpu", dtype="float32", quantization=mode)
    model = engine.model
    layers = dict(model.named_modules())
    llm_linears = [
        name
        for name in layers
        if name.startswith("model.language_model.layers.") and isinstance(layers[name], nn.Linear)
    ]
    assert llm_linears and all(isinstance(layers[name], QUANTISED[mode]) for name in llm_linears)
    for prefix in ("model.vision_tower", "model.vlm_att", "model.mm_projector", "lm_head"):
        kept = [m for name, m in layers.items() if name.startswith(prefix) and isinstance(m, nn.Linear)]
        assert kept, prefix
        assert not any(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in kept), prefix
        assert all(m.weight.dtype == torch.float32 for m in kept), prefix

    frames = torch.randint(0, 255, (2, 40, 64, 3), dtype=torch.uint8).numpy()
    inputs = engine.processor(
        "USER: <image>\nwhat happens? ASSISTANT:", media=frames, questions="what happens?"
    )
    output = model.generate(**inputs, do_sample=False, max_new_tokens=4)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 4


def test_cli_flags_and_config():
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    assert parser.parse_args(["--load-in-8bit"]).quantization == "8bit"
    assert parser.parse_args(["--load-in-4bit"]).quantization == "4bit"
    assert parser.parse_args([]).quantization is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--load-in-8bit", "--load-in-4bit"])
    assert quantization_config(None) is None
    assert "model.mm_projector" in quantization_config("8bit").llm_int8_skip_modules
    with pytest.raises(ValueError, match="quantization"):
        quantization_config("3bit")
