"""The training recipe on the tiny model: stages train the right modules, loss falls, resume is exact, LoRA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import fixed_records, tiny_run_config, write_records

from llamavid.train.recipe import TrainingRecipe, run
from testing_utils import require_module


@pytest.fixture
def image_data(tmp_path):
    image = np.zeros((56, 56, 3), np.uint8)
    image[:28, :28] = (220, 30, 30)
    Image.fromarray(image).save(tmp_path / "red.png")
    write_records(tmp_path / "captions.json", fixed_records("red.png", turns=2))
    return str(write_records(tmp_path / "train.json", fixed_records("red.png")))


@pytest.fixture
def long_video_data(tmp_path):
    from llamavid.data.official_features import save_features

    torch.manual_seed(0)
    save_features(torch.randn(4, 17, 32), "<image>Leo: hi<image><image>Ann: bye<image>", tmp_path / "movie")
    conv = [{"from": "human", "value": "<image>\nWho says bye?"}, {"from": "gpt", "value": "Ann"}]
    records = [{"id": f"m{i}", "video": "movie.safetensors", "conversations": conv} for i in range(4)]
    return str(write_records(tmp_path / "long.json", records))


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


STAGE_MODULES = {
    1: (
        {
            "model.mm_projector",
            "model.vlm_att_projector",
            "model.vlm_att_key_projector",
            "model.vlm_att_val_projector",
        },
        {
            "model.language_model",
            "lm_head",
            "model.vision_tower",
            "model.vlm_att_encoder",
            "model.vlm_att_query",
        },
    ),
    2: (
        {
            "model.language_model",
            "lm_head",
            "model.vlm_att_encoder",
            "model.vlm_att_query",
            "model.mm_projector",
            "model.vlm_att_val_projector",
            "model.vlm_att_ln",
        },
        {"model.vision_tower"},
    ),
    3: (
        {"model.language_model", "lm_head", "model.mm_projector"},
        {
            "model.vision_tower",
            "model.vlm_att_encoder",
            "model.vlm_att_query",
            "model.vlm_att_projector",
            "model.vlm_att_key_projector",
            "model.vlm_att_val_projector",
        },
    ),
}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_trains_its_modules_and_loss_falls(stage, tmp_path, image_data, long_video_data):
    files = {1: [image_data.replace("train.json", "captions.json")], 2: [image_data], 3: [long_video_data]}[
        stage
    ]
    extra = {"data": {"model_max_length": 2048}} if stage == 3 else {}
    cfg = tiny_run_config(tmp_path / f"run{stage}", files, stage=stage, **extra)
    cfg.train.max_steps = 4
    recipe = TrainingRecipe(cfg)
    recipe.setup()
    assert recipe.optimizer.defaults["fused"] is True  # CPU, one process: torch's fused AdamW kernel
    model = recipe.model
    before = _snapshot(model)
    losses = recipe.train()
    assert losses[-1] < losses[0], losses
    trained, frozen = STAGE_MODULES[stage]
    for name, param in model.named_parameters():
        top = ".".join(name.split(".")[:2]) if name.startswith("model.") else name.split(".")[0]
        if top in trained:
            assert param.requires_grad, name
        if top in frozen:
            assert not param.requires_grad, name
            assert torch.equal(param, before[name]), f"frozen {name} changed"
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert changed and all(model.get_parameter(n).requires_grad for n in changed)
    if stage == 3:  # 2048 > 1024 positions: linear RoPE x2, as the official stage-3 script does (spec §6)
        assert model.config.text_config.rope_parameters["rope_type"] == "linear"
        assert model.config.text_config.rope_parameters["factor"] == 2.0
    recipe.cleanup()


def test_resume_after_kill_continues_with_identical_losses(tmp_path, image_data):
    def config(name):
        cfg = tiny_run_config(
            tmp_path / name, [image_data], optim={"scheduler": "cosine", "warmup_ratio": 0.25}
        )
        cfg.train.max_steps, cfg.train.save_steps, cfg.train.per_device_batch_size = 4, 2, 1
        return cfg

    _, reference = run(config("straight"))

    killed = TrainingRecipe(config("killed"))
    killed.setup()
    original = killed.save_checkpoint

    def save_then_die():
        original()
        raise KeyboardInterrupt  # killed right after the step-2 checkpoint

    killed.save_checkpoint = save_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    out = tmp_path / "killed"
    assert (out / "latest").read_text().strip() == "step_0000002"
    assert not list((out / "checkpoints").glob(".*tmp*"))  # atomic: no half-written folder left

    resumed = TrainingRecipe(config("killed"), resume_from=out)
    resumed.setup()
    assert resumed.state.global_step == 2
    tail = resumed.train()
    assert len(tail) == 2
    np.testing.assert_allclose(tail, reference[2:], rtol=1e-6, atol=1e-6)
    resumed.save_checkpoint()
    resumed.save_final()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "final" / "model.safetensors").is_file() and (
        out / "final" / "processor_config.json"
    ).is_file()

    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor

    reloaded = LlamaVidForConditionalGeneration.from_pretrained(out / "final")
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    LlamaVidProcessor.from_pretrained(out / "final")


def test_lora_trains_adapters_and_merges(tmp_path, image_data):
    require_module("peft")
    cfg = tiny_run_config(
        tmp_path / "lora", [image_data], lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}
    )
    cfg.train.max_steps = 4
    recipe = TrainingRecipe(cfg)
    recipe.setup()
    before = _snapshot(recipe.model)
    losses = recipe.train()
    assert losses[-1] < losses[0]
    names = {n for n, p in recipe.model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in names) and any("mm_projector" in n for n in names)
    assert not any("lora_" in n for n in names if "vlm_att_encoder" in n)  # Q-Former Linears are not adapted
    for name, param in recipe.model.named_parameters():
        if "language_model" in name and "lora_" not in name:
            assert not param.requires_grad and torch.equal(param, before[name]), name
    recipe.save_checkpoint()
    final = recipe.save_final()
    assert (final / "adapter" / "adapter_config.json").is_file()
    from llamavid import LlamaVidForConditionalGeneration

    merged = LlamaVidForConditionalGeneration.from_pretrained(final)
    assert not any("lora" in name for name in merged.state_dict())
    recipe.cleanup()


def test_official_stage1_bin_is_renamed_and_loaded(tmp_path, image_data):
    """An official `mm_projector.bin` (pickle-free state dict, official key names) feeds stage 2."""
    from tiny_helpers import build_tiny_model

    reference = build_tiny_model(seed=7).state_dict()
    official = {
        "model.mm_projector.0.weight": reference["model.mm_projector.0.weight"],
        "model.vlm_att_query": reference["model.vlm_att_query"],
        "model.vlm_att_key_projector.bias": reference["model.vlm_att_key_projector.bias"],
    }
    torch.save(official, tmp_path / "mm_projector.bin")
    cfg = tiny_run_config(
        tmp_path / "s2", [image_data], model={"load_weights": [str(tmp_path / "mm_projector.bin")]}
    )
    recipe = TrainingRecipe(cfg)
    recipe.setup()
    for name, tensor in official.items():
        assert torch.equal(recipe.model.get_parameter(name).detach(), tensor), name
    recipe.cleanup()
