"""The inference core: loading, media preparation, the feature cache, sampling settings, chat sessions,
text streaming, batching and the one `generate` path. Every interface (CLI, Python API, server, web UI,
evaluation) answers through `Engine`; see docs/architecture.md.

Names load on first use, so importing `llamavid.inference.settings` (the CLI's help does) needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Engine": "llamavid.inference.engine",
    "GenerationRequest": "llamavid.inference.engine",
    "PreparedMedia": "llamavid.inference.media",
    "FrameEncoder": "llamavid.inference.media",
    "Answer": "llamavid.inference.results",
    "AttentionResult": "llamavid.inference.results",
    "ChatSession": "llamavid.inference.session",
    "TextStream": "llamavid.inference.streaming",
    "BatchScheduler": "llamavid.inference.scheduler",
    "SamplingSettings": "llamavid.inference.settings",
    "Budget": "llamavid.inference.budget",
    "check_context_budget": "llamavid.inference.budget",
    "ContextBudgetError": "llamavid.errors",
    "load_model": "llamavid.inference.loading",
    "resolve_device": "llamavid.inference.loading",
    "resolve_dtype": "llamavid.inference.loading",
    "default_model_path": "llamavid.inference.loading",
    "normalize_answer": "llamavid.inference.text",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llamavid.inference' has no attribute {name!r}")
