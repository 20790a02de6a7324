"""Text-only instructions for stage 2 (the paper mixes ~40K text-only ShareGPT turns into its 665K mix).

The synthetic stand-ins exercise what the long-video questions need from the language model alone:
copying a fact stated earlier in the context (``text_recall``) and tiny arithmetic over the number words the
world uses (``text_next``, ``text_bigger``).
"""

from __future__ import annotations

import numpy as np

from llamavid.synth._common import QAItem, draw_answer
from llamavid.synth.world import COLOURS, NAMES

TEXT_QUESTION_TYPES: dict[str, list[str]] = {
    "text_next": [str(n) for n in range(1, 10)],
    "text_bigger": [str(n) for n in range(1, 10)],
    "text_recall": list(COLOURS),
}
"""Text-only question types and their answer options."""


def make_text_question(rng: np.random.Generator, split: str, question_type: str, item_id: str) -> QAItem:
    """Build one text-only question of ``question_type`` (a key of :data:`TEXT_QUESTION_TYPES`).

    Raises:
        ValueError: on an unknown question type or split.
    """
    options, answer = draw_answer(rng, split, question_type, TEXT_QUESTION_TYPES)
    if question_type == "text_next":
        question = f"What number comes after {int(answer) - 1}?"
    elif question_type == "text_bigger":
        smaller = int(rng.integers(int(answer)))
        first, second = (smaller, answer) if rng.random() < 0.5 else (answer, smaller)
        question = f"Which is bigger, {first} or {second}?"
    else:
        count = int(rng.integers(2, 5))
        names = [NAMES[int(i)] for i in rng.permutation(len(NAMES))[:count]]
        others = [c for c in COLOURS if c != answer]
        colours = [answer] + [others[int(i)] for i in rng.permutation(len(others))[: count - 1]]
        order = rng.permutation(count)
        facts = " ".join(f"{names[i]} has a {colours[i]} ball." for i in order)
        question = f"{facts} What colour is {names[0]}'s ball?"
    return QAItem(
        id=item_id,
        question=question,
        answer=answer,
        question_type=question_type,
        answer_options=list(options),
        media=None,
        meta={"heldout_combo": False},
    )
