"""Devices, dtypes and loading a model folder once: what every command does before its first answer."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llamavid.errors import InvalidInputError, ModelNotFoundError
from llamavid.serve.defaults import EMBEDDED_MODEL_DIR, RANDOM_MODEL_NAME

logger = logging.getLogger(__name__)

__all__ = ["LoadedModel", "default_model_path", "load_model", "resolve_device", "resolve_dtype"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else must name an available device."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InvalidInputError(
            f"device {device!r} is not a device name; expected auto, cpu, cuda[:N] or mps."
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"device {device!r} requested but CUDA is not available here; use --device cpu."
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(
            f"device {device!r} requested but Apple MPS is not available here; use --device cpu."
        )
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise InvalidInputError(f"device {device!r} is not supported; expected auto, cpu, cuda[:N] or mps.")
    return resolved


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: float32 on CPU (half precision is slow there), bfloat16 on CUDA when supported,
    else float16. The same rule for every command, so their feature-cache keys and answers agree."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise InvalidInputError(f"dtype {dtype!r} is not supported; expected auto, {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def default_model_path() -> Path | None:
    """The embedded tiny model when the package ships one, else ``None`` (the caller falls back to random)."""
    return EMBEDDED_MODEL_DIR if (EMBEDDED_MODEL_DIR / "config.json").is_file() else None


@dataclass
class LoadedModel:
    """A model in eval mode on its device, its processor, and how to name it."""

    model: Any
    processor: Any
    name: str
    is_random: bool = False
    encoder_id: str | None = (
        None  # the saved vision weights' id (feature-cache key), when loaded from a folder
    )


def load_model(
    path: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    quantization: str | None = None,
) -> LoadedModel:
    """Load a llamavid model folder (default: the embedded tiny model; a random one, with a warning, without it).

    Args:
        path: a folder written by ``save_pretrained``/``llamavid convert``.
        device: ``auto`` (default), ``cpu``, ``cuda[:N]`` or ``mps``.
        dtype: ``auto`` (default: float32 on CPU, bfloat16/float16 on GPUs), ``float32``, ``float16`` or
            ``bfloat16``.
        quantization: ``"8bit"`` or ``"4bit"`` loads the LLM layers through bitsandbytes (vision tower, text
            decoder, projectors and lm_head stay in `dtype`; see `llamavid.model.quantization`).

    Raises:
        ModelNotFoundError: `path` is not a llamavid model folder.
        DependencyError: quantization asked for without bitsandbytes installed.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    folder = Path(path) if path is not None else default_model_path()
    if folder is None:
        logger.warning(
            "No trained model given and none embedded at %s: using a RANDOM tiny LLaMA-VID. Its answers "
            "are noise; pass --model FOLDER for real answers.",
            EMBEDDED_MODEL_DIR,
        )
        return load_random_model(seed=0, device=torch_device, dtype=torch_dtype)
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"{folder}: not a llamavid model folder (no config.json). Pass a folder written by "
            "save_pretrained or `llamavid convert`."
        )
    from llamavid.model import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.model.quantization import quantization_config

    started = time.perf_counter()
    bnb_config = quantization_config(quantization, compute_dtype=torch_dtype)
    if bnb_config is None:
        model = LlamaVidForConditionalGeneration.from_pretrained(str(folder), dtype=torch_dtype)
        model = model.to(device=torch_device).eval()  # type: ignore[arg-type, call-arg]
    else:
        # Quantised weights cannot be moved after loading: place them on the device while loading.
        model = LlamaVidForConditionalGeneration.from_pretrained(
            str(folder), dtype=torch_dtype, quantization_config=bnb_config, device_map=str(torch_device)
        ).eval()
    processor = LlamaVidProcessor.from_pretrained(folder)
    logger.info(
        "loaded %s on %s (%s%s) in %.1f s",
        folder,
        torch_device,
        torch_dtype,
        f", LLM in {quantization}" if bnb_config is not None else "",
        time.perf_counter() - started,
    )
    from llamavid.data.feature_cache import checkpoint_sha256

    encoder_id = checkpoint_sha256(folder, "model.vision_tower.")
    return LoadedModel(model, processor, folder.resolve().name, encoder_id=encoder_id)


def load_random_model(
    seed: int = 0, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> LoadedModel:
    """The random tiny demo model (`llamavid demo --random`'s); for tests and for trying the plumbing offline."""
    from llamavid.demo import build_random_demo_model

    torch_device = resolve_device(device)
    model, processor = build_random_demo_model(seed)
    model = model.to(device=torch_device, dtype=resolve_dtype(dtype, torch_device)).eval()
    return LoadedModel(model, processor, RANDOM_MODEL_NAME, is_random=True)
