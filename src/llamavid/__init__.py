"""llamavid: LLaMA-VID ("An Image is Worth 2 Tokens in Large Language Models") on transformers 5.

Public API: `LlamaVidConfig`, `LlamaVidForConditionalGeneration`, `LlamaVidProcessor`. Everything else is
reachable by module path but not promised.
"""

__version__ = "0.1.0.dev0"

from llamavid.model import LlamaVidConfig, LlamaVidForConditionalGeneration, LlamaVidProcessor

__all__ = ["LlamaVidConfig", "LlamaVidForConditionalGeneration", "LlamaVidProcessor", "__version__"]
