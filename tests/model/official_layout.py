"""Write tiny checkpoints in the *official* LLaMA-VID on-disk layout (spec §7), with seeded random weights.

Used by the converter tests and `benchmarks/convert.py`: the official names, shapes and files (config.json with
``model_type: "llava"``, ``pytorch_model-0000k-of-0000n.bin`` + index, ``eva_vit_g.pth``, the InstructBLIP
``{"model": {...}}`` file) are reproduced here from the spec, never copied from the official code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[1] / "assets"
LLM_TOKENIZER = (
    Path(__file__).resolve().parents[2] / "src" / "llamavid" / "assets" / "demo_tokenizer" / "tokenizer.model"
)
BERT_TOKENIZER = ASSETS / "tiny_bert_tokenizer"
# The official builder picks its CLIP tower for paths containing "openai" or "laion".
CLIP_TOWER_PATH = "./model_zoo/OpenAI/clip-vit-tiny-patch14"
# OpenAI CLIP's normalisation (preprocessor_config.json of the openai/clip-vit-* repositories).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class TinySizes:
    """Widths of a tiny official checkpoint (real releases: 1408 / 768 / 4096).

    `eva_width` is the vision tower's width (``mm_hidden_size``; EVA or CLIP). `qformer_feature_width` stands for
    the 1408 that the official code hard-codes as the width a *pretrained* Q-Former (``bert_type`` containing
    ``pretrain``) cross-attends to: a tower of another width gets ``vlm_att_bert_proj`` (tower -> 1408) and a
    1408-wide ``vlm_att_ln``.
    """

    eva_width: int = 32
    eva_mlp: int = 64
    eva_blocks: int = 3  # the file holds one more block than the model builds, as the real 40-vs-39
    patch: int = 14
    qformer_width: int = 32
    qformer_layers: int = 2
    qformer_mlp: int = 64
    qformer_vocab: int = 0  # 0: size of the tiny BERT vocab + [DEC]
    qformer_positions: int = 64
    llm_width: int = 32
    llm_layers: int = 2
    llm_heads: int = 4
    llm_mlp: int = 64
    llm_vocab: int = 512
    num_query: int = 4
    qformer_feature_width: int = 32

    def qformer_cross_width(self, bert_type: str) -> int:
        """Width the Q-Former's cross-attention reads (official ``att_feat_size``)."""
        return self.qformer_feature_width if "pretrain" in bert_type else self.eva_width

    def has_bert_proj(self, bert_type: str) -> bool:
        """Whether the official model builds ``vlm_att_bert_proj`` for this bert_type."""
        return "raw" in bert_type or self.qformer_cross_width(bert_type) != self.eva_width

    @property
    def vision_overrides(self) -> dict:
        return {"num_hidden_layers": self.eva_blocks - 1, "num_attention_heads": 4}

    @property
    def qformer_overrides(self) -> dict:
        return {"num_attention_heads": 4}

    def bert_vocab(self) -> int:
        if self.qformer_vocab:
            return self.qformer_vocab
        return len((BERT_TOKENIZER / "vocab.txt").read_text().splitlines()) + 1


def _rand(generator: torch.Generator, *shape: int, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


def _layer_norm(generator: torch.Generator, prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1 + _rand(generator, width, scale=0.05),
        f"{prefix}.bias": _rand(generator, width, scale=0.05),
    }


def _linear(
    generator: torch.Generator, prefix: str, out_f: int, in_f: int, bias: bool = True
) -> dict[str, torch.Tensor]:
    tensors = {f"{prefix}.weight": _rand(generator, out_f, in_f, scale=in_f**-0.5)}
    if bias:
        tensors[f"{prefix}.bias"] = _rand(generator, out_f, scale=0.05)
    return tensors


def eva_state_dict(sizes: TinySizes, seed: int = 0, grid: int = 16) -> dict[str, torch.Tensor]:
    """Raw EVA ViT-g state dict (LAVIS names), plus the unused final norm a CLIP release carries."""
    g = torch.Generator().manual_seed(seed)
    width = sizes.eva_width
    state = {
        "cls_token": _rand(g, 1, 1, width),
        "pos_embed": _rand(g, 1, 1 + grid * grid, width),
        "patch_embed.proj.weight": _rand(g, width, 3, sizes.patch, sizes.patch, scale=0.02),
        "patch_embed.proj.bias": _rand(g, width, scale=0.02),
    }
    for i in range(sizes.eva_blocks):
        p = f"blocks.{i}"
        state.update(_layer_norm(g, f"{p}.norm1", width))
        state[f"{p}.attn.qkv.weight"] = _rand(g, 3 * width, width, scale=width**-0.5)
        state[f"{p}.attn.q_bias"] = _rand(g, width, scale=0.05)
        state[f"{p}.attn.v_bias"] = _rand(g, width, scale=0.05)
        state.update(_linear(g, f"{p}.attn.proj", width, width))
        state.update(_layer_norm(g, f"{p}.norm2", width))
        state.update(_linear(g, f"{p}.mlp.fc1", sizes.eva_mlp, width))
        state.update(_linear(g, f"{p}.mlp.fc2", width, sizes.eva_mlp))
    state.update(_layer_norm(g, "norm", width))
    return state


def clip_vision_state_dict(sizes: TinySizes, image_size: int, seed: int = 3) -> dict[str, torch.Tensor]:
    """A CLIP vision tower in transformers' ``CLIPVisionModel`` names (``vision_model.*``), `eva_*` sizes.

    Also a few keys a full ``CLIPModel`` file carries besides the vision model (projection, logit scale, a text
    norm), which LLaMA-VID never uses.
    """
    g = torch.Generator().manual_seed(seed)
    width, positions = sizes.eva_width, 1 + (image_size // sizes.patch) ** 2
    v = "vision_model."
    state = {
        f"{v}embeddings.class_embedding": _rand(g, width),
        f"{v}embeddings.patch_embedding.weight": _rand(g, width, 3, sizes.patch, sizes.patch, scale=0.02),
        f"{v}embeddings.position_embedding.weight": _rand(g, positions, width),
    }
    state.update(_layer_norm(g, f"{v}pre_layrnorm", width))
    for i in range(sizes.eva_blocks):
        p = f"{v}encoder.layers.{i}"
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            state.update(_linear(g, f"{p}.self_attn.{name}", width, width))
        state.update(_layer_norm(g, f"{p}.layer_norm1", width))
        state.update(_linear(g, f"{p}.mlp.fc1", sizes.eva_mlp, width))
        state.update(_linear(g, f"{p}.mlp.fc2", width, sizes.eva_mlp))
        state.update(_layer_norm(g, f"{p}.layer_norm2", width))
    state.update(_layer_norm(g, f"{v}post_layernorm", width))
    state["visual_projection.weight"] = _rand(g, 16, width)
    state["logit_scale"] = torch.tensor(2.6592)
    state.update(_layer_norm(g, "text_model.final_layer_norm", 16))
    return state


def clip_config(sizes: TinySizes, image_size: int) -> dict:
    """A full ``CLIPModel`` config.json (``model_type: "clip"``) as the openai/clip-vit-* repositories hold."""
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 16,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "clip_text_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "projection_dim": 16,
            "vocab_size": 100,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": sizes.eva_width,
            "intermediate_size": sizes.eva_mlp,
            "num_hidden_layers": sizes.eva_blocks,
            "num_attention_heads": sizes.vision_overrides["num_attention_heads"],
            "image_size": image_size,
            "patch_size": sizes.patch,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": 16,
        },
    }


def write_clip_folder(folder: Path, state: dict[str, torch.Tensor], config: dict) -> Path:
    """A CLIP model folder as downloaded (config.json, pytorch_model.bin, preprocessor_config.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    torch.save({key: value.contiguous() for key, value in state.items()}, folder / "pytorch_model.bin")
    size = config["vision_config"]["image_size"]
    processor = {
        "crop_size": size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resample": 3,
        "size": size,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return folder


def write_bert_folder(folder: Path, sizes: TinySizes) -> Path:
    """A local ``bert-base-uncased`` folder for the tiny Q-Former: the tiny vocab and a tiny `BertConfig`.

    The official `init_bert` reads this config (widths, head count) before the checkpoint's weights replace the
    random ones; the weights file is empty.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(BERT_TOKENIZER / "vocab.txt", folder / "vocab.txt")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    vocab = len((BERT_TOKENIZER / "vocab.txt").read_text().splitlines())
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["BertForMaskedLM"],
                "model_type": "bert",
                "vocab_size": vocab,
                "hidden_size": sizes.qformer_width,
                "num_hidden_layers": sizes.qformer_layers,
                "num_attention_heads": sizes.qformer_overrides["num_attention_heads"],
                "intermediate_size": sizes.qformer_mlp,
                "max_position_embeddings": sizes.qformer_positions,
                "hidden_act": "gelu",
                "hidden_dropout_prob": 0.1,
                "attention_probs_dropout_prob": 0.1,
                "layer_norm_eps": 1e-12,
                "type_vocab_size": 2,
                "initializer_range": 0.02,
                "pad_token_id": 0,
                "position_embedding_type": "absolute",
            }
        )
    )
    torch.save({}, folder / "pytorch_model.bin")
    return folder


def qformer_state_dict(
    sizes: TinySizes, prefix: str, seed: int = 1, raw_bert: bool = False, cross_width: int | None = None
) -> dict[str, torch.Tensor]:
    """LAVIS Q-Former (or HF BERT decoder for raw_bert) weights under `prefix` (e.g. ``model.vlm_att_encoder.``).

    `cross_width`: what the Q-Former's cross-attention reads (default the tower width; raw BERT always reads
    patches projected to its own width).
    """
    g = torch.Generator().manual_seed(seed)
    width, mlp = sizes.qformer_width, sizes.qformer_mlp
    cross_in = width if raw_bert else (cross_width or sizes.eva_width)
    b = prefix + "bert."
    state = {
        f"{b}embeddings.word_embeddings.weight": _rand(g, sizes.bert_vocab(), width),
        f"{b}embeddings.position_embeddings.weight": _rand(g, sizes.qformer_positions, width),
        f"{b}embeddings.position_ids": torch.arange(sizes.qformer_positions).unsqueeze(0),
    }
    if raw_bert:
        state[f"{b}embeddings.token_type_embeddings.weight"] = _rand(g, 2, width)
    state.update(_layer_norm(g, f"{b}embeddings.LayerNorm", width))
    for i in range(sizes.qformer_layers):
        p = f"{b}encoder.layer.{i}"
        for name in ("query", "key", "value"):
            state.update(_linear(g, f"{p}.attention.self.{name}", width, width))
        state.update(_linear(g, f"{p}.attention.output.dense", width, width))
        state.update(_layer_norm(g, f"{p}.attention.output.LayerNorm", width))
        if raw_bert or i % 2 == 0:
            state.update(_linear(g, f"{p}.crossattention.self.query", width, width))
            state.update(_linear(g, f"{p}.crossattention.self.key", width, cross_in))
            state.update(_linear(g, f"{p}.crossattention.self.value", width, cross_in))
            state.update(_linear(g, f"{p}.crossattention.output.dense", width, width))
            state.update(_layer_norm(g, f"{p}.crossattention.output.LayerNorm", width))
        state.update(_linear(g, f"{p}.intermediate.dense", mlp, width))
        state.update(_linear(g, f"{p}.output.dense", width, mlp))
        state.update(_layer_norm(g, f"{p}.output.LayerNorm", width))
        if not raw_bert:
            state.update(_linear(g, f"{p}.intermediate_query.dense", mlp, width))
            state.update(_linear(g, f"{p}.output_query.dense", width, mlp))
            state.update(_layer_norm(g, f"{p}.output_query.LayerNorm", width))
    return state


def official_state_dict(
    sizes: TinySizes, bert_type: str = "qformer_pretrain", seed: int = 2, with_vlm_att: bool = True
) -> dict[str, torch.Tensor]:
    """Every key of an official full checkpoint (LLM, mm_projector, vlm_att_*)."""
    g = torch.Generator().manual_seed(seed)
    h, v = sizes.llm_width, sizes.eva_width
    state: dict[str, torch.Tensor] = {"model.embed_tokens.weight": _rand(g, sizes.llm_vocab, h)}
    for i in range(sizes.llm_layers):
        p = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state.update(_linear(g, f"{p}.self_attn.{name}", h, h, bias=False))
        state[f"{p}.self_attn.rotary_emb.inv_freq"] = torch.ones(h // sizes.llm_heads // 2)
        state.update(_linear(g, f"{p}.mlp.gate_proj", sizes.llm_mlp, h, bias=False))
        state.update(_linear(g, f"{p}.mlp.up_proj", sizes.llm_mlp, h, bias=False))
        state.update(_linear(g, f"{p}.mlp.down_proj", h, sizes.llm_mlp, bias=False))
        state[f"{p}.input_layernorm.weight"] = 1 + _rand(g, h, scale=0.05)
        state[f"{p}.post_attention_layernorm.weight"] = 1 + _rand(g, h, scale=0.05)
    state["model.norm.weight"] = 1 + _rand(g, h, scale=0.05)
    state.update(_linear(g, "model.mm_projector.0", h, v))
    state.update(_linear(g, "model.mm_projector.2", h, h))
    if with_vlm_att:
        raw = "raw" in bert_type
        cross = sizes.qformer_cross_width(bert_type)
        state.update(
            qformer_state_dict(
                sizes, "model.vlm_att_encoder.", seed=seed + 1, raw_bert=raw, cross_width=cross
            )
        )
        q_width = sizes.qformer_width
        if raw:
            state.update(_linear(g, "model.vlm_att_bert_proj", q_width, v))
        else:
            state["model.vlm_att_query"] = _rand(g, 1, sizes.num_query, q_width)
            if "pretrain" in bert_type:
                state.update(_layer_norm(g, "model.vlm_att_ln", cross))
            if sizes.has_bert_proj(bert_type):
                # A pretrained Q-Former on a tower of another width: tower -> 1408 before vlm_att_ln.
                state.update(_linear(g, "model.vlm_att_bert_proj", cross, v))
        state.update(_linear(g, "model.vlm_att_projector", v, q_width))
        state.update(_linear(g, "model.vlm_att_key_projector", v, v))
        state.update(_linear(g, "model.vlm_att_val_projector", h, v))
    state["lm_head.weight"] = _rand(g, sizes.llm_vocab, h, scale=h**-0.5)
    return state


def official_config(
    sizes: TinySizes,
    bert_type: str = "qformer_pretrain",
    compress_type: str | None = "mean",
    image_size: int = 224,
    rope_scaling: dict | None = None,
    vision_tower: str = "eva",
) -> dict:
    """The official config.json; `vision_tower` ``"clip"`` names a CLIP folder as the official CLIP option does.

    With CLIP the official training script leaves ``image_processor`` unset (the CLIP folder has its own).
    """
    clip = vision_tower == "clip"
    return {
        "_name_or_path": "./checkpoints/llama-vid-tiny",
        "architectures": ["LlavaLlamaAttForCausalLM"],
        "model_type": "llava",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": sizes.llm_width,
        "intermediate_size": sizes.llm_mlp,
        "num_attention_heads": sizes.llm_heads,
        "num_key_value_heads": sizes.llm_heads,
        "num_hidden_layers": sizes.llm_layers,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "vocab_size": sizes.llm_vocab,
        "image_aspect_ratio": "pad",
        "image_grid_pinpoints": None,
        "image_processor": None if clip else f"./llamavid/processor/clip-patch14-{image_size}",
        "mm_vision_tower": CLIP_TOWER_PATH if clip else "./model_zoo/LAVIS/eva_vit_g.pth",
        "mm_hidden_size": sizes.eva_width,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "max_token": 65536 if rope_scaling else 2048,
        "bert_type": bert_type,
        "num_query": sizes.num_query,
        "compress_type": compress_type,
    }


def write_tokenizer(folder: Path) -> None:
    shutil.copy(LLM_TOKENIZER, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": None,
                "clean_up_tokenization_spaces": False,
                "legacy": False,
                "model_max_length": 2048,
                "padding_side": "right",
                "tokenizer_class": "LlamaTokenizer",
            }
        )
    )


def write_official_folder(
    folder: Path,
    state: dict[str, torch.Tensor],
    config: dict,
    num_shards: int = 2,
    fmt: str = "bin",
) -> list[Path]:
    """Split `state` into `num_shards` files named as the official release (``.bin`` via torch.save)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder)
    keys = list(state)
    per = -(-len(keys) // num_shards)
    weight_map, files = {}, []
    for index in range(num_shards):
        part = {key: state[key].contiguous() for key in keys[index * per : (index + 1) * per]}
        if fmt == "bin":
            name = f"pytorch_model-{index + 1:05d}-of-{num_shards:05d}.bin"
            torch.save(part, folder / name)
        else:
            from safetensors.torch import save_file

            name = f"model-{index + 1:05d}-of-{num_shards:05d}.safetensors"
            save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        files.append(folder / name)
    index_name = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


def make_official_release(
    root: Path,
    sizes: TinySizes | None = None,
    bert_type: str = "qformer_pretrain",
    compress_type: str | None = "mean",
    image_size: int = 224,
    rope_scaling: dict | None = None,
    num_shards: int = 2,
    fmt: str = "bin",
    with_vlm_att: bool = True,
    vision_tower: str = "eva",
) -> dict[str, Path]:
    """A full tiny release under `root`: ``llama-vid-tiny/`` folder, the vision tower (``eva_vit_g.pth``, or a
    CLIP folder for ``vision_tower="clip"``) and the InstructBLIP file.

    ``files["eva"]`` is the vision tower in either case (the converter's positional argument).
    """
    sizes = sizes or TinySizes()
    folder = root / "llama-vid-tiny"
    state = official_state_dict(sizes, bert_type, with_vlm_att=with_vlm_att)
    write_official_folder(
        folder,
        state,
        official_config(sizes, bert_type, compress_type, image_size, rope_scaling, vision_tower),
        num_shards,
        fmt,
    )
    if vision_tower == "clip":
        tower = write_clip_folder(
            root / "clip-vit-tiny-patch14",
            clip_vision_state_dict(sizes, image_size),
            clip_config(sizes, image_size),
        )
    else:
        tower = root / "eva_vit_g.pth"
        torch.save(eva_state_dict(sizes), tower)
    # The InstructBLIP Q-Former was trained on EVA ViT-g: its cross-attention and ln_vision have that width.
    feature = sizes.qformer_feature_width
    blip = {
        f"Qformer.{k[len('model.vlm_att_encoder.') :]}": v
        for k, v in qformer_state_dict(sizes, "model.vlm_att_encoder.", seed=7, cross_width=feature).items()
    }
    g = torch.Generator().manual_seed(8)
    blip["query_tokens"] = _rand(g, 1, sizes.num_query, sizes.qformer_width)
    blip.update(
        {
            k.replace("model.vlm_att_ln", "ln_vision"): v
            for k, v in _layer_norm(g, "model.vlm_att_ln", feature).items()
        }
    )
    blip["llm_proj.weight"] = _rand(g, sizes.llm_width, sizes.qformer_width)
    torch.save({"model": blip}, root / "instruct_blip_trimmed.pth")
    return {
        "folder": folder,
        "eva": tower,
        "qformer": root / "instruct_blip_trimmed.pth",
        "bert": BERT_TOKENIZER,
    }
