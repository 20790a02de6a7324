"""The closed vocabulary of the synthetic world, the held-out combinations and per-item seeding.

Everything a question can ask about is listed here once, so the renderer, the question generators and the
evaluation (chance levels, answer options) agree on the same finite answer sets. The world is deliberately
small (6 shapes, 8 colours, a 4×4 grid) so a ~10M-parameter model can learn it on a CPU, but every question type
still has at least four possible answers.
"""

from __future__ import annotations

import numpy as np

from llamavid.errors import InvalidInputError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
"""Shape names; a shape's id in frame labels is its index here plus one (0 means an empty cell)."""

COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
"""Object colour names; a colour's id in frame labels is its index here plus one (0 means an empty cell)."""

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    # Saturated and far apart in RGB so that a colour is identifiable from a single 8×8 patch.
    "red": (230, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 230, 40),
    "green": (30, 190, 40),
    "cyan": (0, 220, 230),
    "blue": (40, 80, 255),
    "purple": (170, 50, 220),
    "white": (245, 245, 245),
}

BACKGROUNDS: tuple[str, ...] = ("black", "grey", "navy", "brown", "maroon")
"""Background ("room") colour names. All are dark so that every object colour stays visible on them."""

BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "grey": (96, 96, 96),
    "navy": (20, 30, 100),
    "brown": (95, 60, 25),
    "maroon": (100, 15, 50),
}

NEEDLE_BACKGROUND_RGB: tuple[int, int, int] = (255, 255, 255)
"""The visual needle is the only white frame in a long video, which makes it one distinctive frame."""

NEEDLE_COLOURS: tuple[str, ...] = tuple(c for c in COLOURS if c != "white")
"""A white shape would vanish on the white needle screen, so the needle uses the other colours."""

SIZES: tuple[str, ...] = ("small", "medium", "large", "huge")
SIZE_FRACTIONS: tuple[float, ...] = (0.5, 0.66, 0.82, 0.98)
"""Object diameter as a fraction of the grid cell, per entry of :data:`SIZES` (16 % of a cell apart)."""

DEFAULT_SIZE: int = 2
"""Videos use one size ("large") so that size never confounds motion or appearance questions."""

QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

WORDS: tuple[str, ...] = ("cat", "dog", "sun", "moon", "tree", "fish", "bird", "boat")
"""On-screen words; rendered upper-case with the built-in bitmap font, answered lower-case."""

NAMES: tuple[str, ...] = ("Ann", "Bob", "Eve", "Max", "Kim", "Leo", "Zoe", "Sam")
"""Character names for long videos."""

NUMBER_WORDS: tuple[str, ...] = tuple(str(i) for i in range(10))

HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("circle", "purple"),
        ("square", "orange"),
        ("triangle", "cyan"),
        ("star", "green"),
        ("diamond", "red"),
        ("cross", "yellow"),
    }
)
"""(shape, colour) pairs that are never rendered in the train split.

One pair per shape, each with a different colour, so every shape and every colour is still seen in training
(the vision encoder must have seen every shape a question mentions) while their combination is novel.
"""

SPLITS: tuple[str, ...] = ("train", "heldout")
_SPLIT_KEYS: dict[str, int] = {"train": 0x7A11, "heldout": 0x4E1D}
# Each generator gets its own seed stream so adding a question type never changes the items of another.
_STREAM_KEYS: dict[str, int] = {
    "frame": 1,
    "image_qa": 2,
    "image_caption": 3,
    "video_qa": 4,
    "video_caption": 5,
    "text_qa": 6,
    "long_qa": 7,
    "episode": 8,
    "text_copy": 9,
    "image_place": 10,
    "image_crowded": 11,
}
# Streams for what is layered on top of an item (its wording, its extra turns, balanced answers): keyed by the
# item's own stream too, so changing them never changes the item's medium or answer.
_PURPOSE_KEYS: dict[str, int] = {"phrasing": 101, "turns": 102, "balance": 103, "needle": 104}


def check_split(split: str) -> str:
    """Validate a split name at the public boundary.

    Raises:
        ValueError: if ``split`` is not one of :data:`SPLITS`.
    """
    if split not in SPLITS:
        raise InvalidInputError(f"split={split!r} is not a synthetic split; expected one of {SPLITS}.")
    return split


def item_rng(split: str, stream: str, seed: int, index: int) -> np.random.Generator:
    """Return the generator for one item.

    The split key is part of the seed-sequence entropy, so train and held-out items never share a random stream
    whatever ``seed`` and ``index`` are; the same (split, stream, seed, index) always gives the same item, so
    items can be regenerated on demand instead of stored.
    """
    check_split(split)
    if stream not in _STREAM_KEYS:
        raise InvalidInputError(f"stream={stream!r} is unknown; expected one of {sorted(_STREAM_KEYS)}.")
    if seed < 0 or index < 0:
        raise InvalidInputError(f"seed and index must be non-negative, got seed={seed}, index={index}.")
    return np.random.default_rng([_SPLIT_KEYS[split], _STREAM_KEYS[stream], seed, index])


def allowed_pairs(split: str) -> list[tuple[str, str]]:
    """All (shape, colour) pairs that may be rendered in ``split`` (train excludes :data:`HELDOUT_PAIRS`)."""
    check_split(split)
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    if split == "train":
        pairs = [p for p in pairs if p not in HELDOUT_PAIRS]
    return pairs


def pair_allowed(split: str, shape: str, colour: str) -> bool:
    """Whether ``shape`` in ``colour`` may appear in ``split``."""
    return split != "train" or (shape, colour) not in HELDOUT_PAIRS


def item_purpose_rng(
    split: str, purpose: str, stream: str, seed: int, index: int, *extra: int
) -> np.random.Generator:
    """A generator for something layered on top of item ``(split, stream, seed, index)``.

    ``purpose`` is ``"phrasing"`` (question wording), ``"turns"`` (extra conversation turns), ``"balance"``
    (balanced answers) or ``"needle"`` (where the visual needle is drawn). It never shares a stream with
    :func:`item_rng`, so e.g. rewording a question leaves the item's medium and answer exactly as they were.
    """
    item_rng(split, stream, seed, index)  # validates the coordinates
    if purpose not in _PURPOSE_KEYS:
        raise InvalidInputError(f"purpose={purpose!r} is unknown; expected one of {sorted(_PURPOSE_KEYS)}.")
    return np.random.default_rng(
        [_SPLIT_KEYS[split], _PURPOSE_KEYS[purpose], _STREAM_KEYS[stream], seed, index, *extra]
    )
