"""Run-config schema: strict keys, dotted overrides, typed values, and the packaged stage configs."""

from __future__ import annotations

import json

import pytest

from llamavid.train.schema import ConfigError, load_config, packaged_config_dir

BASE = {"data": {"train_files": ["x.json"]}, "model": {"init": "some/llamavid-folder"}}


def test_unknown_key_is_an_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.weight_decy'.*Did you mean 'optim.weight_decay'"):
        load_config({**BASE, "optim": {"weight_decy": 0.1}})
    with pytest.raises(ConfigError, match="unknown config key 'trainer'"):
        load_config({**BASE, "trainer": {}})


def test_dotted_overrides_are_typed():
    cfg = load_config(BASE, ["optim.lr=2e-5", "train.max_steps=7", "data.train_files=[a.json, b.json]", "lora.enabled=true"])
    assert cfg.optim.lr == pytest.approx(2e-5) and isinstance(cfg.optim.lr, float)  # YAML 1.1 reads 2e-5 as str
    assert cfg.train.max_steps == 7
    assert cfg.data.train_files == ["a.json", "b.json"]
    assert cfg.lora.enabled is True
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_config(BASE, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(BASE, ["optim.lr"])


def test_wrong_values_name_the_key():
    with pytest.raises(ConfigError, match="train.max_steps must be an integer"):
        load_config(BASE, ["train.max_steps=1.5"])
    with pytest.raises(ConfigError, match=r"train.stage=4 is not supported; expected one of \[1, 2, 3\]"):
        load_config(BASE, ["train.stage=4"])
    with pytest.raises(ConfigError, match="data.overlong"):
        load_config(BASE, ["data.overlong=drop"])
    with pytest.raises(ConfigError, match="no training data"):
        load_config({})


@pytest.mark.parametrize("name", sorted(p.stem for p in packaged_config_dir().glob("*.yaml")))
def test_packaged_configs_load_and_have_headers(name):
    path = packaged_config_dir() / f"{name}.yaml"
    header = path.read_text().splitlines()[:12]
    text = "\n".join(header).lower()
    assert header[0].startswith("#") and "command" in text and "resume" in text and "hardware" in text, name
    cfg = load_config(name)
    if cfg.distributed.deepspeed_config:
        assert (packaged_config_dir() / f"{cfg.distributed.deepspeed_config}.json").is_file()


# Spec §9.1: lr, per-device batch x accumulation, model_max_length, DeepSpeed config, template.
PAPER = {
    "stage1_align": (1, 1e-3, 32, 1, 2048, "zero2", "plain_guided"),
    "stage2_instruct": (2, 2e-5, 4, 4, 2048, "zero2_offload", "imgsp_v1"),
    "stage3_long_video": (3, 2e-5, 1, 1, 65536, "zero2_offload", "imgsp_v1"),
    "stage1_align_13b": (1, 1e-3, 32, 1, 2048, "zero2_offload", "plain_guided"),
    "stage2_instruct_13b": (2, 2e-5, 2, 2, 2048, "zero2", "imgsp_v1"),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_hyper_parameters(name):
    stage, lr, batch, accum, length, ds, template = PAPER[name]
    cfg = load_config(name)
    assert (cfg.train.stage, cfg.optim.lr, cfg.train.per_device_batch_size, cfg.train.grad_accum_steps) == (
        stage, lr, batch, accum
    )
    assert (cfg.data.model_max_length, cfg.distributed.deepspeed_config, cfg.template) == (length, ds, template)
    assert (cfg.optim.scheduler, cfg.optim.warmup_ratio, cfg.optim.weight_decay) == ("cosine", 0.03, 0.0)
    assert cfg.train.precision == "bf16" and cfg.train.gradient_checkpointing and cfg.train.num_epochs == 1


def test_deepspeed_jsons_match_the_spec():
    folder = packaged_config_dir()
    zero2 = json.loads((folder / "zero2.json").read_text())
    assert zero2["zero_optimization"]["stage"] == 2
    assert zero2["zero_optimization"]["overlap_comm"] and zero2["zero_optimization"]["contiguous_gradients"]
    offload = json.loads((folder / "zero2_offload.json").read_text())["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == "cpu" and offload["offload_optimizer"]["pin_memory"]
    assert offload["offload_param"]["device"] == "cpu"
    assert json.loads((folder / "zero3.json").read_text())["zero_optimization"]["stage"] == 3
