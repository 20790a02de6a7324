"""Build a new LLaMA-VID around any pretrained causal LM (``model.llm`` in a run config; docs/llms.md).

The LLM keeps its own classes, weights, tokenizer and chat template: its config becomes ``text_config``
(`LlamaVidModel` builds the family's base model with `AutoModel`, and `lm_head` holds its output layer); the
vision tower, the text decoder and the projectors are new (random, or the vision tower of a llamavid folder).
Stage 1 then trains the projectors and attention modules with the LLM frozen.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch

from llamavid.errors import DependencyError, MissingFileError

logger = logging.getLogger(__name__)

__all__ = ["build_from_llm", "load_llm"]

VISION_PREFIX = "model.vision_tower."


def load_llm(source: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(causal LM, tokenizer)`` from a transformers folder or a ``.gguf`` file, with the family's own classes.

    Raises:
        FileNotFoundError: nothing at `source`.
        ImportError: a GGUF file without the ``gguf`` package.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(source)
    if not path.exists():
        raise MissingFileError(
            f"model.llm {path} does not exist; give a transformers LLM folder (config.json, weights, "
            "tokenizer) or a .gguf file."
        )
    if path.suffix == ".gguf":
        if importlib.util.find_spec("gguf") is None:
            raise DependencyError(
                f"{path} is a GGUF file; reading it needs the gguf package: pip install 'llamavid[llm]' "
                "(or pip install gguf)."
            )
        folder, options = str(path.parent), {"gguf_file": path.name}
    else:
        if not (path / "config.json").is_file():
            raise MissingFileError(f"model.llm {path} has no config.json: not a transformers model folder.")
        folder, options = str(path), {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **options)
    llm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **options)
    return llm, tokenizer


def _vision_from_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The vision config (as a dict) and ``model.vision_tower.*`` weights of a llamavid model folder."""
    from safetensors import safe_open

    from llamavid.model import LlamaVidConfig

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not (folder / "config.json").is_file() or not files:
        raise MissingFileError(
            f"model.vision {folder} is not a llamavid model folder (config.json and *.safetensors weights); "
            "convert an official checkpoint with `llamavid convert` or point at a trained llamavid folder."
        )
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != LlamaVidConfig.model_type:
        raise MissingFileError(
            f"model.vision {folder} is not a llamavid model folder: its config.json has model_type "
            f"{model_type!r}, expected {LlamaVidConfig.model_type!r}."
        )
    config = LlamaVidConfig.from_pretrained(folder)
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (safe_open handles are not iterable)
                if key.startswith(VISION_PREFIX):
                    weights[key] = handle.get_tensor(key)
    if not weights:
        raise MissingFileError(
            f"model.vision {folder}: no {VISION_PREFIX}* weights in {[f.name for f in files]}."
        )
    return config.vision.to_dict(), weights


def build_from_llm(
    config_kwargs: dict[str, Any], llm: Any, vision: str | Path | None = None, seed: int = 0
) -> Any:
    """A new `LlamaVidForConditionalGeneration` whose LLM is `llm` (its weights, config and family classes).

    Args:
        config_kwargs: `LlamaVidConfig` arguments for everything but the LLM (a ``text_config`` here is an
            error: it comes from `llm`).
        llm: a loaded causal LM (`load_llm`).
        vision: a llamavid folder to take the vision tower from (config and weights); None: a random tower
            as `config_kwargs` describe.
        seed: seeds the new modules' initialisation.
    """
    from llamavid.model import LlamaVidConfig, LlamaVidForConditionalGeneration
    from llamavid.train.schema import ConfigError

    if "text_config" in config_kwargs:
        raise ConfigError(
            "model.random_init.text_config conflicts with model.llm: the LLM's own config is used; remove it."
        )
    kwargs = dict(config_kwargs)
    vision_weights: dict[str, torch.Tensor] = {}
    if vision is not None:
        kwargs["vision_config"], vision_weights = _vision_from_folder(vision)
    text_config = llm.config.to_dict()
    config = LlamaVidConfig(**kwargs, text_config=text_config)
    torch.manual_seed(seed)
    model = LlamaVidForConditionalGeneration(config)
    # The LLM's base model and output layer, under any family's attribute names (`model`, `transformer`, ...).
    missing, unexpected = model.model.language_model.load_state_dict(
        llm.base_model.state_dict(), strict=False
    )
    if missing or unexpected:
        raise ConfigError(
            f"model.llm: the {config.text.model_type} weights do not fit the LLM LLaMA-VID built from their "
            f"config (missing {missing[:3]}, unexpected {unexpected[:3]})."
        )
    output = llm.get_output_embeddings()
    if output is None:
        raise ConfigError(f"model.llm: the {config.text.model_type} model has no output layer (lm_head).")
    if getattr(output, "bias", None) is not None:
        raise ConfigError(
            f"model.llm: the {config.text.model_type} LLM's output layer has a bias, which LLaMA-VID's lm_head "
            "does not have; this family cannot be the language model yet."
        )
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(output.state_dict())
    if vision_weights:
        model.load_state_dict(vision_weights, strict=False)
    logger.info(
        "new LLaMA-VID around a %s LLM (%d layers, width %d)%s",
        config.text.model_type,
        config.text.num_hidden_layers,
        config.text.hidden_size,
        f", vision tower from {vision}" if vision is not None else ", random vision tower",
    )
    return model
