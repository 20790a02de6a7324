"""8-bit / 4-bit loading of the LLM through bitsandbytes (transformers' `BitsAndBytesConfig`).

Only the language model's transformer layers are quantised. Everything LLaMA-VID adds around it stays in the load
dtype: the EVA vision tower, the text decoder and its projectors (``vlm_att_*``), the content projector
(``mm_projector``) and ``lm_head`` — small next to the LLM, and the visual tokens are sensitive to their precision.
bitsandbytes >= 0.48 runs both modes on CPU (install the ``quant`` extra).
"""

from __future__ import annotations

from typing import Any

from llamavid.errors import DependencyError, InvalidInputError

QUANTIZATION_MODES = ("8bit", "4bit")

# Module names kept out of quantisation. transformers 5 matches a pattern from the start of the full module name
# (up to a name boundary) or as a suffix, so the names are spelled in full.
SKIPPED_MODULES = [
    "model.vision_tower",
    "model.vlm_att_encoder",
    "model.vlm_att_projector",
    "model.vlm_att_key_projector",
    "model.vlm_att_val_projector",
    "model.vlm_att_bert_proj",
    "model.mm_projector",
    "lm_head",
]


def quantization_config(mode: str | None, compute_dtype: Any = None):
    """A `BitsAndBytesConfig` for ``"8bit"`` / ``"4bit"`` (NF4, double quantisation), or None for ``None``.

    Raises:
        ValueError: an unknown mode.
        ImportError: bitsandbytes is not installed.
    """
    if mode is None or mode == "none":
        return None
    if mode not in QUANTIZATION_MODES:
        raise InvalidInputError(f"quantization={mode!r}; expected one of {QUANTIZATION_MODES} or None.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise DependencyError(
            f"{mode} loading needs bitsandbytes: pip install 'llamavid[quant]' (or pip install bitsandbytes)."
        ) from None
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(SKIPPED_MODULES))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(SKIPPED_MODULES),
    )


__all__ = ["QUANTIZATION_MODES", "SKIPPED_MODULES", "quantization_config"]
