"""Small files shipped with the package (the demo tokenizer; later the embedded tiny model)."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
DEMO_TOKENIZER_DIR = ASSETS_DIR / "demo_tokenizer"
