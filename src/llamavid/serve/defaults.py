"""Serving defaults, importable without torch (the CLI builds its help from them)."""

from llamavid.assets import ASSETS_DIR

EMBEDDED_MODEL_DIR = ASSETS_DIR / "tiny-llamavid"
"""Where the trained tiny model ships inside the package; the default ``--model`` once it exists."""

RANDOM_MODEL_NAME = "random-tiny-llamavid"

# Official cli.py sampling (spec §6): it always samples, temperature 0.2, top_p 0.7, 512 new tokens.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.7
DEFAULT_MAX_NEW_TOKENS = 512
