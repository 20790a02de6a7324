"""Deprecated import path: the inference core moved to `llamavid.inference`. Kept for one release.

``from llamavid.serve.engine import Engine`` still works and warns; new code imports from `llamavid.inference`.
"""

from __future__ import annotations

import warnings

from llamavid.inference.engine import MEDIA_OPTIONS, Engine, GenerationRequest, pop_media_options
from llamavid.inference.loading import default_model_path, resolve_device, resolve_dtype
from llamavid.inference.media import PreparedMedia
from llamavid.inference.results import THUMBNAIL_SIDE, Answer, AttentionResult
from llamavid.inference.session import ChatSession
from llamavid.inference.settings import SamplingSettings
from llamavid.inference.streaming import TextStream
from llamavid.serve.defaults import EMBEDDED_MODEL_DIR

warnings.warn(
    "llamavid.serve.engine is deprecated; import from llamavid.inference instead. "
    "This path goes away in the next release.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "EMBEDDED_MODEL_DIR",
    "MEDIA_OPTIONS",
    "THUMBNAIL_SIDE",
    "Answer",
    "AttentionResult",
    "ChatSession",
    "Engine",
    "GenerationRequest",
    "PreparedMedia",
    "SamplingSettings",
    "TextStream",
    "default_model_path",
    "pop_media_options",
    "resolve_device",
    "resolve_dtype",
]
