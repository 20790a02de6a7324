"""The one answer normaliser for exact-match scoring (eval-synth, the tiny trainer's scoring, tests).

Lowercase, keep runs of letters and digits (any script), join them with single spaces: ``"Red."``, ``" red "`` and
``"RED!"`` all become ``"red"``; ``"3 times"`` stays ``"3 times"``. Benchmarks with their own official rule (VQA
accuracy) keep it in `llamavid.eval.scoring`.
"""

from __future__ import annotations

import re

__all__ = ["normalize_answer"]

_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script


def normalize_answer(text: str) -> str:
    """Canonical form of a short answer for exact-match comparison."""
    return " ".join(_WORD.findall(text.lower()))
