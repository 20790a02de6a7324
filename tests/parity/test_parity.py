"""Numerical parity with the official LLaMA-VID code (transformers 4.31), from committed fixtures.

`tools/parity/make_fixtures.py` ran the official model on tiny seeded checkpoints and stored what it computed
(``tests/parity/fixtures``). Here the same checkpoints are written back in the official ``.bin`` layout, converted
with our converter and run through our processor and model; everything must agree: token ids exactly, visual
tokens / inputs_embeds / logits to 1e-4 in fp32, 8 greedy tokens exactly. See tools/parity/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from official_layout import (  # noqa: E402
    BERT_TOKENIZER,
    TinySizes,
    write_bert_folder,
    write_clip_folder,
    write_official_folder,
)

from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor  # noqa: E402
from llamavid.model.conversation import build_long_video_message  # noqa: E402
from llamavid.model.convert_original_checkpoint import convert  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CASES = json.loads((FIXTURES / "cases.json").read_text())
SIZES = TinySizes()
ATOL = 1e-4
IMAGE_TOKEN_INDEX = -200
LLAMAVID = Path(sys.executable).with_name("llamavid")


def _official_files(name: str, root: str) -> tuple[Path, Path]:
    """Write the case's official folder and vision tower (EVA file or CLIP folder) from the fixtures."""
    case = CASES[name]
    base = Path(root) / name
    official = base / "llama-vid-tiny"
    state = load_file(str(FIXTURES / "checkpoints" / f"{case['checkpoint']}.safetensors"))
    write_official_folder(official, state, case["official_config"], num_shards=2, fmt="bin")
    tower_state = load_file(str(FIXTURES / "checkpoints" / f"{case.get('vision_tower', 'eva')}.safetensors"))
    if "clip_config" in case:
        return official, write_clip_folder(base / "clip-vit-tiny-patch14", tower_state, case["clip_config"])
    eva = base / "eva_vit_g.pth"
    torch.save(tower_state, eva)
    return official, eva


@cache
def _converted(name: str, root: str) -> Path:
    case = CASES[name]
    official, tower = _official_files(name, root)
    clip = "clip_config" in case
    return convert(
        official,
        tower,
        Path(root) / name / "converted",
        bert_tokenizer_folder=BERT_TOKENIZER,
        image_size=case["image_size"],
        dtype="float32",
        # A CLIP folder carries its own head and layer counts; the tiny EVA needs them spelled out.
        vision_overrides=None if clip else SIZES.vision_overrides,
        qformer_overrides=SIZES.qformer_overrides,
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("parity"))


def _load(name: str, root: str):
    folder = _converted(name, root)
    model = LlamaVidForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return model, LlamaVidProcessor.from_pretrained(folder)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())


def _our_inputs(case: dict, fixture: dict, processor: LlamaVidProcessor) -> dict[str, torch.Tensor]:
    """Our processor's inputs for the case, with the official pixel values swapped in (checked separately)."""
    if case["media"] == "features":
        features = fixture["vision_features"]  # (T, 1+N, C) with CLS, as the official feature files store it
        frames = len(features)
        per_frame = processor.video_tokens_per_frame
        message = build_long_video_message(case["subtitles"], case["question"])
        prompt = processor.apply_chat_template([{"role": "user", "content": message}])
        # One <image> per frame in our prompt; the official script doubles each (video_token 2) before tokenising.
        assert prompt.replace("<image>", "<image><image>") == case["prompt"]
        ids = processor.tokenize_prompt(prompt, [per_frame] * frames)
        questions = processor.qformer_tokenizer([case["question"]], return_tensors="pt")
        return {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "vision_features": features,
            "frame_counts": torch.tensor([frames]),
            "media_is_image": torch.tensor([False]),
            "qformer_input_ids": questions["input_ids"],
            "qformer_attention_mask": questions["attention_mask"],
            "block_media": torch.tensor([0]),
            "block_question": torch.tensor([0]),
        }
    if case["media"] == "image":
        media = Image.fromarray(fixture["image_uint8"].numpy())
    else:
        media = fixture["video_uint8"].numpy()
    inputs = dict(processor(case["prompt"], media=media, questions=case["question"]))
    inputs["our_pixel_values"] = inputs.pop("pixel_values")
    inputs["pixel_values"] = fixture["pixel_values"]
    return inputs


@pytest.mark.parametrize("name", list(CASES))
def test_matches_official(name, root):
    model, processor = _load(name, root)
    _check_against_fixture(name, model, processor)


def _check_against_fixture(name: str, model, processor) -> None:
    case = CASES[name]
    fixture = load_file(str(FIXTURES / f"{name}.safetensors"))

    # 1. Token ids: the official slow tokenizer, chunk by chunk around <image> (spec §5.2, §11.19).
    official_ids = fixture["input_ids"][0].tolist()
    prompt = case["prompt"]
    if case["media"] == "features":
        prompt = prompt.replace("<image><image>", "<image>")
        assert processor.tokenize_prompt(prompt, [2] * prompt.count("<image>")) == official_ids
    else:
        assert processor.tokenize_prompt(prompt) == official_ids
    qformer_ids = processor.qformer_tokenizer([case["question"]], return_tensors="pt")["input_ids"]
    assert qformer_ids.tolist() == fixture["qformer_input_ids"].tolist()

    inputs = _our_inputs(case, fixture, processor)
    # 2. Preprocessing (PIL bicubic resize, pad-to-square for images, centre crop, CLIP normalisation).
    if "our_pixel_values" in inputs:
        assert _max_diff(inputs.pop("our_pixel_values"), fixture["pixel_values"]) <= 1e-5

    # 3. Visual tokens, inputs_embeds, logits (fp32).
    with torch.no_grad():
        names = (
            "pixel_values",
            "vision_features",
            "frame_counts",
            "media_is_image",
            "qformer_input_ids",
            "qformer_attention_mask",
            "block_media",
            "block_question",
        )
        embeds, _ = model.model.get_inputs_embeds(
            inputs["input_ids"], **{k: inputs[k] for k in names if k in inputs}
        )
        placeholder = inputs["input_ids"][0] == IMAGE_TOKEN_INDEX
        diffs = {
            "visual_tokens": _max_diff(embeds[0][placeholder], fixture["visual_tokens"]),
            "inputs_embeds": _max_diff(embeds[0], fixture["inputs_embeds"]),
        }
        logits = model(**inputs).logits[0]
        diffs["logits"] = _max_diff(logits, fixture["logits"])
    print(name, diffs)
    assert all(value <= ATOL for value in diffs.values()), diffs

    # 4. Greedy decoding (8 tokens, as the official generate with do_sample=False).
    expected = fixture["greedy_tokens"].tolist()
    output = model.generate(**inputs, do_sample=False, max_new_tokens=len(expected))
    assert output[0, inputs["input_ids"].shape[1] :].tolist() == expected


def test_console_script_converts_a_pretrained_qformer_on_a_clip_tower(tmp_path):
    """Issue 16 item 17: `llamavid convert` on what the official code builds with `qformer_pretrain_freeze` and its
    CLIP tower option (24 wide, so the official model projects it to the Q-Former's width), then the same numbers.

    Only public inputs: the official folder, the CLIP folder and a local bert-base-uncased folder (whose
    config.json gives the Q-Former's head count, as the official `init_bert` reads it); no tiny-size overrides.
    """
    official, clip = _official_files("video_pretrain_clip", str(tmp_path))
    bert = write_bert_folder(tmp_path / "bert-base-uncased", SIZES)
    out = tmp_path / "converted"
    command = [str(LLAMAVID)] if LLAMAVID.exists() else [sys.executable, "-m", "llamavid.cli.main"]
    args = [
        "convert",
        str(official),
        "--vision-tower",
        str(clip),
        "--bert-tokenizer",
        str(bert),
        "-o",
        str(out),
    ]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert config["qformer_input_width"] == SIZES.qformer_feature_width
    model = LlamaVidForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    assert tuple(model.model.vlm_att_bert_proj.weight.shape) == (SIZES.qformer_feature_width, 24)
    _check_against_fixture("video_pretrain_clip", model, LlamaVidProcessor.from_pretrained(out))
