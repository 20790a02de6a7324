"""Helpers shared by the image, clip and episode generators (private: not part of the promised API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llamavid.errors import InvalidInputError, LlamaVidRuntimeError
from llamavid.synth.world import COLOURS, HELDOUT_PAIRS, SHAPES, check_split

HELDOUT_COMBO_PROBABILITY = 0.5
"""In the held-out split, the fraction of targets drawn from the held-out (shape, colour) pairs."""


@dataclass
class QAItem:
    """One question about one medium, before it is written to disk.

    Attributes:
        id: unique within a split and kind.
        question: the human turn without the ``<image>`` placeholder.
        answer: the exact expected answer (lower case, one or two words or a number) or a caption.
        question_type: e.g. ``"image_colour"``; evaluation groups accuracy by it.
        answer_options: every answer the type can have (for chance level and constrained decoding), or
            ``None`` for free-form captions and summaries.
        media: a :class:`~llamavid.synth.render.FrameSpec` (image), a clip or an episode, or ``None``
            for text-only items.
        meta: extra JSON-serialisable facts (``heldout_combo``, needle time, ...).
        earlier_turns: questions asked before ``question`` in the same conversation (``question``, ``answer``,
            ``question_type`` each); empty for single-turn items (the default).
    """

    id: str
    question: str
    answer: str
    question_type: str
    answer_options: list[str] | None
    media: Any
    meta: dict[str, Any] = field(default_factory=dict)
    earlier_turns: list[dict[str, str]] = field(default_factory=list)


def choose(rng: np.random.Generator, options: list[Any] | tuple[Any, ...]) -> Any:
    """Uniform choice that keeps the element's Python type (``rng.choice`` would return numpy scalars)."""
    if not options:
        raise InvalidInputError("cannot choose from an empty list of options")
    return options[int(rng.integers(len(options)))]


def draw_answer(
    rng: np.random.Generator, split: str, question_type: str, types: dict[str, list[Any]]
) -> tuple[list[Any], Any]:
    """Validate ``split`` and ``question_type`` and draw the answer uniformly from that type's options.

    The answer is drawn *first* and the medium is then built to make it true, which keeps blind baselines at
    chance.

    Raises:
        ValueError: on an unknown split or question type.
    """
    check_split(split)
    if question_type not in types:
        raise InvalidInputError(f"question_type={question_type!r} is unknown; expected one of {list(types)}.")
    options = types[question_type]
    return options, choose(rng, options)


def pick_target(
    rng: np.random.Generator,
    split: str,
    shape: str | None = None,
    colour: str | None = None,
    exclude_shapes: tuple[str, ...] | set[str] = (),
    exclude_colours: tuple[str, ...] | set[str] = (),
) -> tuple[str, str, bool]:
    """Draw the (shape, colour) of a question's target object.

    The target is the object the answer depends on, so it is the one whose combination matters for
    compositional generalisation: in the held-out split it uses a held-out pair with probability
    :data:`HELDOUT_COMBO_PROBABILITY` whenever one satisfies the constraints; otherwise (and always in train)
    it uses a seen pair.

    Returns:
        ``(shape, colour, is_heldout_pair)``.
    """
    shapes = [s for s in SHAPES if s not in exclude_shapes] if shape is None else [shape]
    colours = [c for c in COLOURS if c not in exclude_colours] if colour is None else [colour]
    candidates = [(s, c) for s in shapes for c in colours]
    held = [p for p in candidates if p in HELDOUT_PAIRS]
    seen = [p for p in candidates if p not in HELDOUT_PAIRS]
    if split == "heldout" and held and (not seen or rng.random() < HELDOUT_COMBO_PROBABILITY):
        shape_name, colour_name = choose(rng, held)
        return shape_name, colour_name, True
    if not seen:
        raise InvalidInputError(f"no seen (shape, colour) pair satisfies shape={shape!r}, colour={colour!r}")
    shape_name, colour_name = choose(rng, seen)
    return shape_name, colour_name, False


def pick_distractors(
    rng: np.random.Generator,
    count: int,
    exclude_shapes: set[str],
    exclude_colours: set[str],
) -> list[tuple[str, str]]:
    """``count`` seen (shape, colour) pairs whose shapes and colours are all distinct and not excluded.

    Distinct attributes keep every reference in a question ("the circle", "the red object") unambiguous.
    """
    shapes = [s for s in SHAPES if s not in exclude_shapes]
    colours = [c for c in COLOURS if c not in exclude_colours]
    pairs: list[tuple[str, str]] = []
    for _ in range(count):
        for _attempt in range(50):
            shape, colour = choose(rng, shapes), choose(rng, colours)
            if (shape, colour) not in HELDOUT_PAIRS:
                break
        else:
            raise LlamaVidRuntimeError("could not draw a seen distractor pair")
        pairs.append((shape, colour))
        shapes.remove(shape)
        colours.remove(colour)
    return pairs


def distinct_cells(
    rng: np.random.Generator, count: int, grid: int, rows: int | None = None
) -> list[tuple[int, int]]:
    """``count`` distinct (row, col) cells among the first ``rows`` rows."""
    rows = grid if rows is None else rows
    flat = rng.permutation(rows * grid)[:count]
    return [(int(f) // grid, int(f) % grid) for f in flat]


def phrase(shape: str, colour: str, size: str | None = None) -> str:
    """ "a large red circle" style noun phrase for captions."""
    words = [w for w in (size, colour, shape) if w]
    article = "an" if words[0][0] in "aeiou" else "a"
    return f"{article} {' '.join(words)}"


def join_phrases(parts: list[str]) -> str:
    """Join with commas and a final "and"."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]
