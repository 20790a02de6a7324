"""LLaMA-VID model package: configuration, modeling, processing and conversation templates.

Importing it registers the ``llama_vid`` model type with transformers' Auto classes, so
``AutoConfig`` / ``AutoModel`` / ``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained(folder)`` load
llamavid folders without ``trust_remote_code``.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from llamavid.model.configuration_llamavid import IGNORE_INDEX, IMAGE_TOKEN_INDEX, LlamaVidConfig
from llamavid.model.conversation import TEMPLATES, build_prompt, get_template
from llamavid.model.image_processing_llamavid import LlamaVidImageProcessor
from llamavid.model.modeling_llamavid import (
    LlamaVidForConditionalGeneration,
    LlamaVidModel,
    LlamaVidVisualOutput,
)
from llamavid.model.processing_llamavid import LlamaVidProcessor

AutoConfig.register("llama_vid", LlamaVidConfig, exist_ok=True)
AutoModel.register(LlamaVidConfig, LlamaVidModel, exist_ok=True)
AutoModelForImageTextToText.register(LlamaVidConfig, LlamaVidForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(LlamaVidConfig, LlamaVidForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LlamaVidConfig, LlamaVidProcessor, exist_ok=True)

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
    "TEMPLATES",
    "LlamaVidConfig",
    "LlamaVidForConditionalGeneration",
    "LlamaVidImageProcessor",
    "LlamaVidModel",
    "LlamaVidProcessor",
    "LlamaVidVisualOutput",
    "build_prompt",
    "get_template",
]
