"""llamavid: LLaMA-VID ("An Image is Worth 2 Tokens in Large Language Models") on transformers 5.

Public API: `LlamaVidConfig`, `LlamaVidForConditionalGeneration`, `LlamaVidProcessor`. Everything else is
reachable by module path but not promised.
"""

__version__ = "0.1.0.dev0"

from llamavid.model import LlamaVidConfig, LlamaVidForConditionalGeneration, LlamaVidProcessor

__all__ = ["LlamaVidConfig", "LlamaVidForConditionalGeneration", "LlamaVidProcessor", "convert", "__version__"]


def convert(*args, **kwargs):
    """Convert a released LLaMA-VID checkpoint; see `llamavid.model.convert_original_checkpoint.convert`.

    Imported on first use so ``import llamavid`` stays light.
    """
    from llamavid.model.convert_original_checkpoint import convert as _convert

    return _convert(*args, **kwargs)
