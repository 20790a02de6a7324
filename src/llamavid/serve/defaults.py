"""Serving defaults, importable without torch (the CLI builds its help from them)."""

from llamavid.assets import ASSETS_DIR
from llamavid.inference.settings import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P

EMBEDDED_MODEL_DIR = ASSETS_DIR / "tiny-llamavid"
"""Where the trained tiny model ships inside the package; the default ``--model``."""

RANDOM_MODEL_NAME = "random-tiny-llamavid"

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "EMBEDDED_MODEL_DIR",
    "RANDOM_MODEL_NAME",
]
