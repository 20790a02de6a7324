"""Text-only instructions for stage 2 (the paper mixes ~40K text-only ShareGPT turns into its 665K mix).

The synthetic stand-ins exercise what the long-video questions need from the language model alone:
copying a fact stated earlier in the context (``text_recall``) and tiny arithmetic over the number words the
world uses (``text_next``, ``text_bigger``). The ``text_copy`` kind (opt-in, not part of ``text_qa``) asks for a
digit said in a short dialogue (``text_secret``), the long videos' subtitle needle without the video: it trains the
language model to copy a digit by identity, where ``text_next`` teaches it to answer a digit's successor.
"""

from __future__ import annotations

import numpy as np

from llamavid.synth._common import QAItem, draw_answer
from llamavid.synth.episodes import FILLER_LINES
from llamavid.synth.world import COLOURS, NAMES, NUMBER_WORDS

TEXT_QUESTION_TYPES: dict[str, list[str]] = {
    "text_next": [str(n) for n in range(1, 10)],
    "text_bigger": [str(n) for n in range(1, 10)],
    "text_recall": list(COLOURS),
}
"""Text-only question types of the ``text_qa`` kind (in rotation order) and their answer options."""

TEXT_COPY_TYPES: dict[str, list[str]] = {"text_secret": list(NUMBER_WORDS)}
"""Question types of the ``text_copy`` kind and their answer options."""


def make_text_question(rng: np.random.Generator, split: str, question_type: str, item_id: str) -> QAItem:
    """Build one text-only question of ``question_type`` (a key of :data:`TEXT_QUESTION_TYPES`).

    Raises:
        ValueError: on an unknown question type or split.
    """
    options, answer = draw_answer(rng, split, question_type, {**TEXT_QUESTION_TYPES, **TEXT_COPY_TYPES})
    if question_type == "text_next":
        question = f"What number comes after {int(answer) - 1}?"
    elif question_type == "text_bigger":
        smaller = int(rng.integers(int(answer)))
        first, second = (smaller, answer) if rng.random() < 0.5 else (answer, smaller)
        question = f"Which is bigger, {first} or {second}?"
    elif question_type == "text_secret":
        name, facts = _dialogue(rng, answer)
        question = f"{facts} What is {name}'s secret number?"
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


def _dialogue(rng: np.random.Generator, secret: str) -> tuple[str, str]:
    """``(speaker, text)``: three to seven subtitle-like lines (``Name: text``) of two to four speakers; the speaker
    says ``My secret number is <secret>.`` among filler lines, and up to two others tell other digits, so the
    answer is bound to the name."""
    count = int(rng.integers(2, 5))
    names = [NAMES[int(i)] for i in rng.permutation(len(NAMES))[:count]]
    others = [d for d in NUMBER_WORDS if d != secret]
    decoys = [
        others[int(i)] for i in rng.permutation(len(others))[: int(rng.integers(0, min(2, count - 1) + 1))]
    ]
    lines = [(names[0], f"My secret number is {secret}.")]
    lines += [(names[1 + i % (count - 1)], f"My secret number is {digit}.") for i, digit in enumerate(decoys)]
    for _ in range(int(rng.integers(1, 4))):
        speaker = int(rng.integers(count))
        other = names[(speaker + 1) % count]
        lines.append((names[speaker], FILLER_LINES[int(rng.integers(len(FILLER_LINES)))].format(other=other)))
    order = rng.permutation(len(lines))
    # The asked speaker's name opens the text (the question reads it back); its line may come anywhere.
    dialogue = " ".join(f"{lines[i][0]}: {lines[i][1]}" for i in order)
    return names[0], f"{names[0]}: Hello, I am {names[0]}. {dialogue}"
