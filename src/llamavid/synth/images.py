"""Single-image questions and captions (stage 1 captions, stage 2 image instructions).

Every question is built *answer first*: the answer is drawn uniformly from the type's answer options and the
scene is then constructed to make it true. That keeps answer distributions flat, so a text-only model cannot
beat chance by learning answer priors.
"""

from __future__ import annotations

import numpy as np

from llamavid.errors import InvalidInputError, LlamaVidRuntimeError
from llamavid.synth._common import (
    QAItem,
    choose,
    distinct_cells,
    draw_answer,
    join_phrases,
    phrase,
    pick_distractors,
    pick_target,
)
from llamavid.synth.render import (
    DEFAULT_GRID,
    FrameSpec,
    SceneObject,
    cell_centre,
    cell_quadrant,
    position_jitter,
    quadrant_of,
)
from llamavid.synth.world import (
    BACKGROUNDS,
    COLOURS,
    QUADRANTS,
    SHAPES,
    SIZES,
    WORDS,
    allowed_pairs,
    check_split,
)

IMAGE_COUNT_OPTIONS: tuple[str, ...] = tuple(str(n) for n in range(1, 7))

IMAGE_QUESTION_TYPES: dict[str, list[str]] = {
    "image_colour": list(COLOURS),
    "image_shape": list(SHAPES),
    "image_count": list(IMAGE_COUNT_OPTIONS),
    "image_position": list(QUADRANTS),
    "image_size": list(SIZES),
    "image_text": list(WORDS),
    "image_background": list(BACKGROUNDS),
}
"""Image question types and their answer options."""

CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image briefly.",
    "What is in this picture?",
    "Give a short description of the image.",
)


def _place(
    rng: np.random.Generator, pairs: list[tuple[str, str]], cells: list[tuple[int, int]], sizes: list[int]
) -> list[SceneObject]:
    objects = []
    for (shape, colour), (row, col), size_index in zip(pairs, cells, sizes, strict=True):
        x, y = cell_centre(row, col)
        dx, dy = position_jitter(rng, size_index)
        objects.append(SceneObject(shape, colour, x + dx, y + dy, size_index))
    return objects


def _scene(
    rng: np.random.Generator,
    target: tuple[str, str],
    distractors: list[tuple[str, str]],
    grid: int,
    word: str | None = None,
    target_cell: tuple[int, int] | None = None,
    target_size: int | None = None,
) -> tuple[FrameSpec, SceneObject]:
    """A frame with the target and distractors in distinct cells, objects in random order of drawing."""
    rows = grid - 1 if word is not None else grid
    cells = distinct_cells(rng, len(distractors) + 1, grid, rows)
    if target_cell is not None:
        cells = [target_cell] + [c for c in distinct_cells(rng, rows * grid, grid, rows) if c != target_cell][
            : len(distractors)
        ]
    sizes = [int(rng.integers(len(SIZES))) for _ in range(len(distractors) + 1)]
    if target_size is not None:
        sizes[0] = target_size
    objects = _place(rng, [target, *distractors], cells, sizes)
    target_object = objects[0]
    order = rng.permutation(len(objects))
    background = choose(rng, BACKGROUNDS)
    spec = FrameSpec(background=background, objects=tuple(objects[i] for i in order), word=word)
    return spec, target_object


def make_image_question(
    rng: np.random.Generator,
    split: str,
    question_type: str,
    item_id: str,
    grid: int = DEFAULT_GRID,
    distractors: tuple[int, int] = (1, 3),
) -> QAItem:
    """Build one image question of ``question_type`` (a key of :data:`IMAGE_QUESTION_TYPES`).

    ``distractors`` is the inclusive range of other objects drawn beside the target (``image_text`` draws one
    fewer, to leave room for the word; ``image_count`` ignores it). The default is the benchmark's scene; the
    ``image_crowded`` training stream asks on fuller scenes (:data:`CROWDED_DISTRACTORS`).

    Raises:
        ValueError: on an unknown question type or split, or a ``distractors`` range outside 1..5.
    """
    low, high = distractors
    if not 1 <= low <= high <= len(SHAPES) - 1:
        raise InvalidInputError(
            f"distractors={distractors!r} must be an inclusive range within 1..{len(SHAPES) - 1} "
            "(every object in a scene has its own shape)."
        )
    options, answer = draw_answer(rng, split, question_type, IMAGE_QUESTION_TYPES)
    n_distractors = int(rng.integers(low, high + 1))
    heldout = False
    if question_type == "image_colour":
        shape, colour, heldout = pick_target(rng, split, colour=answer)
        others = pick_distractors(rng, n_distractors, {shape}, {colour})
        spec, _ = _scene(rng, (shape, colour), others, grid)
        question = f"What colour is the {shape}?"
    elif question_type == "image_shape":
        shape, colour, heldout = pick_target(rng, split, shape=answer)
        others = pick_distractors(rng, n_distractors, {shape}, {colour})
        spec, _ = _scene(rng, (shape, colour), others, grid)
        question = f"What shape is the {colour} object?"
    elif question_type == "image_count":
        count = int(answer)
        pairs = allowed_pairs(split)
        chosen = [pairs[int(i)] for i in rng.integers(len(pairs), size=count)]
        cells = distinct_cells(rng, count, grid)
        objects = _place(rng, chosen, cells, [int(rng.integers(len(SIZES))) for _ in range(count)])
        spec = FrameSpec(background=choose(rng, BACKGROUNDS), objects=tuple(objects))
        heldout = split == "heldout" and any(p not in allowed_pairs("train") for p in chosen)
        question = choose(rng, ["How many objects are there?", "How many shapes are in the image?"])
    elif question_type == "image_position":
        shape, colour, heldout = pick_target(rng, split)
        others = pick_distractors(rng, n_distractors, {shape}, {colour})
        quadrant = QUADRANTS.index(answer)
        half = grid // 2
        row = int(rng.integers(half)) + half * (quadrant // 2)
        col = int(rng.integers(half)) + half * (quadrant % 2)
        spec, target = _scene(rng, (shape, colour), others, grid, target_cell=(row, col))
        if quadrant_of(target, grid) != quadrant:
            raise LlamaVidRuntimeError("internal error: target placed outside the requested quadrant")
        question = f"Where is the {colour} {shape}?"
    elif question_type == "image_size":
        shape, colour, heldout = pick_target(rng, split)
        others = pick_distractors(rng, n_distractors, {shape}, {colour})
        spec, _ = _scene(rng, (shape, colour), others, grid, target_size=SIZES.index(answer))
        question = f"What size is the {colour} {shape}?"
    elif question_type == "image_text":
        shape, colour, heldout = pick_target(rng, split)
        others = pick_distractors(rng, n_distractors - 1, {shape}, {colour})
        spec, _ = _scene(rng, (shape, colour), others, grid, word=answer)
        question = choose(rng, ["What word is written on the screen?", "What does the text say?"])
    else:  # image_background
        shape, colour, heldout = pick_target(rng, split)
        others = pick_distractors(rng, n_distractors, {shape}, {colour})
        spec, _ = _scene(rng, (shape, colour), others, grid)
        spec = FrameSpec(background=answer, objects=spec.objects, word=spec.word)
        question = "What colour is the background?"
    return QAItem(
        id=item_id,
        question=question,
        answer=answer,
        question_type=question_type,
        answer_options=list(options),
        media=spec,
        meta={"heldout_combo": bool(heldout)},
    )


CROWDED_QUESTION_TYPES: tuple[str, ...] = ("image_shape", "image_size")
"""Question types of the ``image_crowded`` training stream (``generate_items(kind="image_crowded")``)."""

CROWDED_DISTRACTORS: tuple[int, int] = (3, 5)
"""Objects beside the target in an ``image_crowded`` scene (4-6 objects in all, against 2-4 in ``image_qa``): on
such a scene "a shape that is present" is about as good a guess as chance, so the answer has to come from the
object the question names."""

PLACE_QUESTION_TYPES: tuple[str, ...] = ("image_shape", "image_size")
"""Question types :func:`make_place_question` asks (a train-time stream; see ``generate_items(kind="image_place")``)."""


def make_place_question(
    rng: np.random.Generator, split: str, question_type: str, item_id: str, grid: int = DEFAULT_GRID
) -> QAItem:
    """An ``image_shape`` or ``image_size`` question that names the object by its quadrant, not its colour.

    "What shape is the object in the top left?": the target is the only object in its quadrant (1-3 others
    stand in the other quadrants), so the answer is read from the object's pixels without a colour to key it on. The
    answer and its options are those of ``question_type``; ``meta["asks_by"]`` is ``"place"``.

    Raises:
        ValueError: on a question type outside :data:`PLACE_QUESTION_TYPES` or an unknown split.
    """
    if question_type not in PLACE_QUESTION_TYPES:
        raise InvalidInputError(
            f"question_type={question_type!r} cannot be asked by place; expected one of {PLACE_QUESTION_TYPES}."
        )
    options, answer = draw_answer(rng, split, question_type, IMAGE_QUESTION_TYPES)
    if question_type == "image_shape":
        shape, colour, heldout = pick_target(rng, split, shape=answer)
        size = int(rng.integers(len(SIZES)))
    else:
        shape, colour, heldout = pick_target(rng, split)
        size = SIZES.index(answer)
    distractors = pick_distractors(rng, int(rng.integers(1, 4)), {shape}, {colour})
    quadrant = int(rng.integers(len(QUADRANTS)))
    cells = [(r, c) for r in range(grid) for c in range(grid)]
    inside = [cell for cell in cells if cell_quadrant(*cell, grid) == quadrant]
    outside = [cell for cell in cells if cell_quadrant(*cell, grid) != quadrant]
    target_cell = inside[int(rng.integers(len(inside)))]
    others = [outside[int(i)] for i in rng.permutation(len(outside))[: len(distractors)]]
    sizes = [size] + [int(rng.integers(len(SIZES))) for _ in distractors]
    objects = _place(rng, [(shape, colour), *distractors], [target_cell, *others], sizes)
    if quadrant_of(objects[0], grid) != quadrant:
        raise LlamaVidRuntimeError("internal error: target placed outside the requested quadrant")
    order = rng.permutation(len(objects))
    spec = FrameSpec(background=choose(rng, BACKGROUNDS), objects=tuple(objects[i] for i in order))
    noun = "shape" if question_type == "image_shape" else "size"
    return QAItem(
        id=item_id,
        question=f"What {noun} is the object in the {QUADRANTS[quadrant]}?",
        answer=answer,
        question_type=question_type,
        answer_options=list(options),
        media=spec,
        meta={"heldout_combo": bool(heldout), "asks_by": "place"},
    )


def describe_image(spec: FrameSpec, grid: int = DEFAULT_GRID) -> str:
    """A deterministic one- or two-sentence caption listing every object with size, colour and quadrant."""
    parts = [
        f"{phrase(o.shape, o.colour, SIZES[o.size])} in the {QUADRANTS[quadrant_of(o, grid)]}"
        for o in sorted(spec.objects, key=lambda o: (o.cell(grid), o.shape))
    ]
    if parts:
        caption = f"{join_phrases(parts)} on a {spec.background} background."
    else:
        caption = f"an empty {spec.background} background."
    caption = caption[0].upper() + caption[1:]
    if spec.word is not None:
        caption += f" The word {spec.word} is written at the bottom."
    return caption


def make_image_caption(
    rng: np.random.Generator, split: str, item_id: str, grid: int = DEFAULT_GRID
) -> QAItem:
    """A stage-1 caption item: 1-4 objects, sometimes a word, caption from :func:`describe_image`."""
    check_split(split)
    count = int(rng.integers(1, 5))
    pairs = allowed_pairs(split)
    word = choose(rng, WORDS) if rng.random() < 0.2 else None
    rows = grid - 1 if word is not None else grid
    chosen = [pairs[int(i)] for i in rng.integers(len(pairs), size=count)]
    objects = _place(
        rng, chosen, distinct_cells(rng, count, grid, rows), [int(rng.integers(4)) for _ in chosen]
    )
    spec = FrameSpec(background=choose(rng, BACKGROUNDS), objects=tuple(objects), word=word)
    return QAItem(
        id=item_id,
        question=choose(rng, CAPTION_PROMPTS),
        answer=describe_image(spec, grid),
        question_type="image_caption",
        answer_options=None,
        media=spec,
        meta={"heldout_combo": split == "heldout" and any(p not in allowed_pairs("train") for p in chosen)},
    )
