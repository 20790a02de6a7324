"""llamavid: LLaMA-VID on transformers 5."""

__version__ = "0.1.0.dev0"
