"""Converter tests on tiny checkpoints written in the official layout (spec §7): key mapping, values, config,
generation defaults, refusals, safe loading."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_layout import (  # noqa: E402
    TinySizes,
    clip_vision_state_dict,
    eva_state_dict,
    make_official_release,
    official_state_dict,
    write_bert_folder,
)

from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor  # noqa: E402
from llamavid.model.convert_original_checkpoint import (  # noqa: E402
    CheckpointMismatchError,
    SafetensorsShardWriter,
    convert,
    load_torch_file,
    rename_official_key,
)

SIZES = TinySizes()


def _convert(files: dict, out: Path, **kwargs) -> Path:
    kwargs.setdefault("bert_tokenizer_folder", files["bert"])
    return convert(
        files["folder"],
        files["eva"],
        out,
        vision_overrides=SIZES.vision_overrides,
        qformer_overrides=SIZES.qformer_overrides,
        **kwargs,
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    return make_official_release(tmp_path_factory.mktemp("official"), SIZES, compress_type="mean")


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory) -> Path:
    return _convert(release, tmp_path_factory.mktemp("converted") / "out")


def _state(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    state = {}
    for name in sorted(set(index.values())):
        with safe_open(str(folder / name), framework="pt") as handle:
            state.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    return state


def test_every_official_tensor_lands_under_our_name(converted):
    official = official_state_dict(SIZES)
    eva = eva_state_dict(SIZES)
    ours = _state(converted)
    model_keys = set(LlamaVidForConditionalGeneration.from_pretrained(converted).state_dict())
    assert set(ours) == model_keys
    # LLM, projectors, Q-Former (renamed), EVA blocks, fused bias.
    torch.testing.assert_close(
        ours["model.language_model.layers.1.mlp.down_proj.weight"],
        official["model.layers.1.mlp.down_proj.weight"],
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(ours["lm_head.weight"], official["lm_head.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        ours["model.mm_projector.2.bias"], official["model.mm_projector.2.bias"], rtol=0, atol=0
    )
    torch.testing.assert_close(ours["model.vlm_att_query"], official["model.vlm_att_query"], rtol=0, atol=0)
    pairs = {
        "model.vlm_att_encoder.embeddings.layernorm.weight": "model.vlm_att_encoder.bert.embeddings.LayerNorm.weight",
        "model.vlm_att_encoder.encoder.layer.0.crossattention.attention.key.weight": "model.vlm_att_encoder.bert.encoder.layer.0.crossattention.self.key.weight",
        "model.vlm_att_encoder.encoder.layer.1.attention.attention.value.bias": "model.vlm_att_encoder.bert.encoder.layer.1.attention.self.value.bias",
        "model.vlm_att_encoder.encoder.layer.1.output_query.LayerNorm.bias": "model.vlm_att_encoder.bert.encoder.layer.1.output_query.LayerNorm.bias",
    }
    for ours_key, official_key in pairs.items():
        torch.testing.assert_close(ours[ours_key], official[official_key], rtol=0, atol=0)
    bias = ours["model.vision_tower.encoder.layers.1.self_attn.qkv.bias"]
    width = SIZES.eva_width
    torch.testing.assert_close(bias[:width], eva["blocks.1.attn.q_bias"], rtol=0, atol=0)
    assert torch.count_nonzero(bias[width : 2 * width]) == 0
    torch.testing.assert_close(bias[2 * width :], eva["blocks.1.attn.v_bias"], rtol=0, atol=0)
    torch.testing.assert_close(
        ours["model.vision_tower.embeddings.position_embedding"], eva["pos_embed"], rtol=0, atol=0
    )
    # The unused last EVA block, its final norm and the RoPE caches are not carried over.
    assert not any(f"layers.{SIZES.eva_blocks - 1}." in key for key in ours if "vision_tower" in key)
    assert not any("inv_freq" in key or "position_ids" in key for key in ours)


def test_converted_folder_loads_and_generates(converted):
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "llama_vid"
    assert config["compress_type"] == "mean" and config["features_qformer_sees_cls"] is True
    generation = json.loads((converted / "generation_config.json").read_text())
    assert (
        generation["temperature"] == 0.2 and generation["max_new_tokens"] == 1024 and generation["do_sample"]
    )
    model = LlamaVidForConditionalGeneration.from_pretrained(converted).eval()
    processor = LlamaVidProcessor.from_pretrained(converted)
    assert processor.template == "vicuna_v1" and processor.video_tokens_per_frame == 2
    video = torch.randint(0, 255, (3, 40, 48, 3), dtype=torch.uint8).numpy()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nwhat color is the circle?"}]
    )
    inputs = processor(prompt, media=video, questions="what color is the circle?")
    assert int((inputs["input_ids"] == -200).sum()) == 3 * 2
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_long_video_config_rope_and_cls_flag(tmp_path):
    files = make_official_release(
        tmp_path,
        SIZES,
        bert_type="qformer_pretrain_freeze_all",
        rope_scaling={"type": "linear", "factor": 16.0},
        fmt="safetensors",
    )
    out = _convert(files, tmp_path / "out", save_processor=False)
    config = json.loads((out / "config.json").read_text())
    assert config["features_qformer_sees_cls"] is False
    rope = config["text_config"]["rope_parameters"]
    assert rope["rope_type"] == "linear" and rope["factor"] == 16.0
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"]) == (0.6, 0.9)
    model = LlamaVidForConditionalGeneration.from_pretrained(out)
    assert model.config.text_config.rope_parameters["factor"] == 16.0


def test_336_interpolates_position_table_once(tmp_path):
    files = make_official_release(tmp_path, SIZES, compress_type=None, image_size=336)
    out = _convert(files, tmp_path / "out", save_processor=False)
    table = _state(out)["model.vision_tower.embeddings.position_embedding"]
    source = eva_state_dict(SIZES)["pos_embed"]
    assert table.shape == (1, 1 + 24 * 24, SIZES.eva_width)
    torch.testing.assert_close(table[:, 0], source[:, 0], rtol=0, atol=0)
    grid = source[:, 1:].reshape(1, 16, 16, -1).permute(0, 3, 1, 2)
    expected = (
        F.interpolate(grid, size=(24, 24), mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .reshape(1, 576, -1)
    )
    torch.testing.assert_close(table[:, 1:], expected, rtol=0, atol=1e-6)
    assert json.loads((out / "generation_config.json").read_text())["do_sample"] is False


def test_raw_bert_checkpoint_converts_and_loads(tmp_path):
    files = make_official_release(tmp_path / "raw", SIZES, bert_type="raw_bert")
    out = _convert(files, tmp_path / "raw_out", save_processor=False)
    ours = _state(out)
    assert "model.vlm_att_bert_proj.weight" in ours
    assert "model.vlm_att_encoder.bert.encoder.layer.1.crossattention.self.key.weight" in ours
    LlamaVidForConditionalGeneration.from_pretrained(out)


def test_stage1_start_fills_qformer_from_instructblip_file(tmp_path):
    files = make_official_release(tmp_path, SIZES, with_vlm_att=False)
    with pytest.raises(CheckpointMismatchError, match="--qformer"):
        _convert(files, tmp_path / "refused", save_processor=False)
    out = _convert(files, tmp_path / "out", qformer_path=files["qformer"], save_processor=False)
    ours = _state(out)
    blip = torch.load(files["qformer"], weights_only=True)["model"]
    torch.testing.assert_close(ours["model.vlm_att_query"], blip["query_tokens"], rtol=0, atol=0)
    torch.testing.assert_close(ours["model.vlm_att_ln.bias"], blip["ln_vision.bias"], rtol=0, atol=0)
    torch.testing.assert_close(
        ours["model.vlm_att_encoder.encoder.layer.0.attention.attention.query.weight"],
        blip["Qformer.bert.encoder.layer.0.attention.self.query.weight"],
        rtol=0,
        atol=0,
    )
    assert "model.vlm_att_key_projector.weight" in ours  # fresh default init, as the official stage-1 start


def test_qformer_file_of_another_width(tmp_path):
    """An InstructBLIP file whose cross-attention and ln_vision are 48 wide, on a 32-wide tower: a pretrained
    Q-Former gets a fresh `vlm_att_bert_proj` (32 -> 48) as the official stage-1 start builds it; the plain
    `qformer` type, which the official code never projects for, is refused."""
    wide = make_official_release(tmp_path / "wide", TinySizes(eva_width=48, qformer_feature_width=48))
    files = make_official_release(tmp_path / "pretrain", SIZES, with_vlm_att=False)
    out = _convert(files, tmp_path / "out", qformer_path=wide["qformer"], save_processor=False)
    config = json.loads((out / "config.json").read_text())
    assert config["qformer_input_width"] == 48
    ours = _state(out)
    assert ours["model.vlm_att_bert_proj.weight"].shape == (48, SIZES.eva_width)
    blip = torch.load(wide["qformer"], weights_only=True)["model"]
    torch.testing.assert_close(ours["model.vlm_att_ln.weight"], blip["ln_vision.weight"], rtol=0, atol=0)
    plain = make_official_release(tmp_path / "plain", SIZES, bert_type="qformer", with_vlm_att=False)
    with pytest.raises(CheckpointMismatchError, match="only for pretrained Q-Formers"):
        _convert(plain, tmp_path / "refused", qformer_path=wide["qformer"], save_processor=False)


NARROW = TinySizes(eva_width=24, eva_mlp=48)  # a tower narrower than the pretrained Q-Former's 32


def test_pretrained_qformer_on_a_narrow_eva_keeps_the_official_projection(tmp_path):
    files = make_official_release(tmp_path, NARROW, compress_type=None, image_size=56)
    out = convert(
        files["folder"],
        files["eva"],
        tmp_path / "out",
        bert_tokenizer_folder=files["bert"],
        image_size=56,
        vision_overrides=NARROW.vision_overrides,
        qformer_overrides=NARROW.qformer_overrides,
        save_processor=False,
    )
    official = official_state_dict(NARROW)
    ours = _state(out)
    for name in ("vlm_att_bert_proj.weight", "vlm_att_bert_proj.bias", "vlm_att_ln.weight"):
        torch.testing.assert_close(ours[f"model.{name}"], official[f"model.{name}"], rtol=0, atol=0)
    assert ours["model.vlm_att_bert_proj.weight"].shape == (32, 24) and ours[
        "model.vlm_att_ln.weight"
    ].shape == (32,)
    config = json.loads((out / "config.json").read_text())
    assert config["qformer_input_width"] == 32 and config["qformer_config"]["encoder_hidden_size"] == 32


def test_clip_tower_converts_and_matches_transformers_clip(tmp_path):
    """The official CLIP option: our tower equals transformers' `CLIPVisionModel` hidden_states[-2] on the folder."""
    from transformers import CLIPVisionModel

    files = make_official_release(tmp_path, NARROW, compress_type="mean", image_size=56, vision_tower="clip")
    bert = write_bert_folder(tmp_path / "bert-base-uncased", NARROW)
    out = convert(files["folder"], files["eva"], tmp_path / "out", bert_tokenizer_folder=bert)
    config = json.loads((out / "config.json").read_text())
    vision = config["vision_config"]
    assert (
        vision["model_type"] == "clip_vision_model" and vision["num_hidden_layers"] == NARROW.eva_blocks - 1
    )
    assert vision["num_attention_heads"] == 4 and config["qformer_config"]["num_attention_heads"] == 4
    assert config["qformer_sees_cls"] is False and config["features_qformer_sees_cls"] is False
    assert json.loads((out / "conversion.json").read_text())["vision_tower_type"] == "clip"
    ours = _state(out)
    tower = {key for key in ours if key.startswith("model.vision_tower.")}
    assert not any("post_layernorm" in key or f"layers.{NARROW.eva_blocks - 1}." in key for key in tower)
    clip = clip_vision_state_dict(NARROW, 56)
    torch.testing.assert_close(
        ours["model.vision_tower.embeddings.class_embedding"],
        clip["vision_model.embeddings.class_embedding"],
        rtol=0,
        atol=0,
    )
    model = LlamaVidForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    reference = CLIPVisionModel.from_pretrained(files["eva"], dtype=torch.float32).eval()
    pixels = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(model.model.get_vision_features(pixels), expected, rtol=1e-5, atol=1e-5)


def test_clip_and_projection_refusals_name_the_problem(tmp_path):
    clip = make_official_release(tmp_path / "clip", NARROW, image_size=56, vision_tower="clip")
    eva = make_official_release(tmp_path / "eva", NARROW, image_size=56)
    with pytest.raises(CheckpointMismatchError, match="is the EVA tower: pass eva_vit_g.pth"):
        convert(eva["folder"], clip["eva"], tmp_path / "o1")
    with pytest.raises(FileNotFoundError, match="is a CLIP tower: pass that downloaded CLIP model folder"):
        convert(clip["folder"], eva["eva"], tmp_path / "o2")
    settings_path = clip["folder"] / "config.json"
    settings = json.loads(settings_path.read_text())
    for change, message in (
        ({"mm_vision_select_feature": "cls_patch"}, "only 'patch' is supported"),
        ({"mm_vision_select_layer": -5}, "outside the 3-layer CLIP tower"),
        ({"mm_vision_tower": "./model_zoo/resnet50"}, "names no vision tower"),
        ({"mm_hidden_size": 32}, "CLIP tower in .* is 24 wide"),
    ):
        settings_path.write_text(json.dumps({**settings, **change}))
        with pytest.raises(CheckpointMismatchError, match=message):
            convert(clip["folder"], clip["eva"], tmp_path / "o3", save_processor=False)
    settings_path.write_text(json.dumps(settings))
    with pytest.raises(CheckpointMismatchError, match="takes 56 px frames"):
        convert(clip["folder"], clip["eva"], tmp_path / "o4", image_size=84, save_processor=False)
    # A checkpoint whose Q-Former needs the projection but lacks it, and one that has it without the need.
    for shard in sorted(eva["folder"].glob("pytorch_model-*.bin")):
        part = torch.load(shard, weights_only=True)
        torch.save({k: v for k, v in part.items() if "vlm_att_bert_proj" not in k}, shard)
    with pytest.raises(CheckpointMismatchError, match="has no model.vlm_att_bert_proj"):
        _convert(eva, tmp_path / "o5", image_size=56, save_processor=False)
    same = make_official_release(tmp_path / "same", SIZES)
    shard = sorted(same["folder"].glob("pytorch_model-*.bin"))[-1]
    part = torch.load(shard, weights_only=True)
    part["model.vlm_att_bert_proj.weight"] = torch.zeros(32, 32)
    torch.save(part, shard)
    index_path = same["folder"] / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.vlm_att_bert_proj.weight"] = shard.name
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointMismatchError, match="has model.vlm_att_bert_proj"):
        _convert(same, tmp_path / "o6", save_processor=False)


def test_refusals_name_the_problem(tmp_path, release):
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert(tmp_path / "nowhere", release["eva"], tmp_path / "o1")
    with pytest.raises(FileNotFoundError, match="eva"):
        convert(release["folder"], tmp_path / "eva_vit_g.pth", tmp_path / "o2")
    plain = tmp_path / "plain"
    plain.mkdir()
    config = json.loads((release["folder"] / "config.json").read_text())
    (plain / "config.json").write_text(
        json.dumps({**config, "model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    with pytest.raises(CheckpointMismatchError, match="not a LLaMA-VID checkpoint"):
        convert(plain, release["eva"], tmp_path / "o3")
    with pytest.raises(CheckpointMismatchError, match="unknown key 'model.visual_resampler.weight'"):
        rename_official_key("model.visual_resampler.weight", "qformer_pretrain")
    bad_eva = eva_state_dict(SIZES)
    bad_eva["blocks.0.gamma_1"] = torch.ones(SIZES.eva_width)
    torch.save(bad_eva, tmp_path / "bad_eva.pth")
    with pytest.raises(CheckpointMismatchError, match="blocks.0.gamma_1"):
        _convert({**release, "eva": tmp_path / "bad_eva.pth"}, tmp_path / "o4", save_processor=False)


def test_missing_shard_is_refused(tmp_path):
    files = make_official_release(tmp_path, SIZES, num_shards=3)
    (files["folder"] / "pytorch_model-00002-of-00003.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00003.bin"):
        _convert(files, tmp_path / "out")


class _Exploit:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_bin_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    torch.save({"weight": torch.zeros(2), "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointMismatchError, match="refused to load"):
        load_torch_file(path)
    assert not marker.exists()
    # The converter reaches the same loader for shards.
    files = make_official_release(tmp_path / "rel", SIZES, num_shards=2)
    torch.save({"model.norm.weight": _Exploit(marker)}, files["folder"] / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(CheckpointMismatchError, match="refused to load"):
        _convert(files, tmp_path / "out", save_processor=False)
    assert not marker.exists()


def test_shard_writer_round_trips_and_casts(tmp_path):
    tensors = {
        "a": torch.randn(3, 4, dtype=torch.bfloat16),
        "b": torch.arange(5),
        "c": torch.randn(2).double().float(),
    }
    SafetensorsShardWriter(tmp_path / "x.safetensors", tensors).write()
    SafetensorsShardWriter(tmp_path / "y.safetensors", tensors, dtype=torch.float16).write()
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as handle:
        for key, value in tensors.items():
            torch.testing.assert_close(handle.get_tensor(key), value, rtol=0, atol=0)
    with safe_open(str(tmp_path / "y.safetensors"), framework="pt") as handle:
        assert handle.get_tensor("a").dtype == torch.float16 and handle.get_tensor("b").dtype == torch.int64


def test_cli_convert(tmp_path, release, capsys):
    from llamavid.cli.main import main

    code = main(
        [
            "convert",
            str(release["folder"]),
            "--eva",
            str(release["eva"]),
            "-o",
            str(tmp_path / "o"),
            "--bert-tokenizer",
            str(release["bert"]),
        ]
    )
    # Tiny widths need the head-count overrides that only the Python API takes: the CLI must fail cleanly.
    assert code == 2
    assert "error" in capsys.readouterr().err
