"""llamavid: LLaMA-VID ("An Image is Worth 2 Tokens in Large Language Models") on transformers 5.

Public API: `load` (a ready-to-ask model, see `llamavid.api`), `LlamaVidConfig`,
`LlamaVidForConditionalGeneration`, `LlamaVidProcessor`. Everything else is
reachable by module path but not promised. The model classes load lazily, so data-only modules
(`llamavid.data`, `llamavid.synth`) import without torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

_LAZY = {
    "LlamaVidConfig": "llamavid.model",
    "LlamaVidForConditionalGeneration": "llamavid.model",
    "LlamaVidProcessor": "llamavid.model",
    "load": "llamavid.api",
    "LlamaVid": "llamavid.api",
}

__all__ = [
    "LlamaVid",
    "LlamaVidConfig",
    "LlamaVidForConditionalGeneration",
    "LlamaVidProcessor",
    "convert",
    "load",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llamavid' has no attribute {name!r}")


def convert(*args: Any, **kwargs: Any) -> Any:
    """Convert a released LLaMA-VID checkpoint; see `llamavid.model.convert_original_checkpoint.convert`.

    Imported on first use so ``import llamavid`` stays light.
    """
    from llamavid.model.convert_original_checkpoint import convert as _convert

    return _convert(*args, **kwargs)
