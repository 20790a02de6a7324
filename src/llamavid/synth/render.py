"""Frame descriptions, the numpy renderer and per-cell ground-truth labels.

A frame is described by a small immutable :class:`FrameSpec` (background, objects in grid-cell coordinates,
optional on-screen word) so that every generator can describe *what* is on screen without knowing the pixel
size, and the same description renders at 56, 64, 112 or 224 pixels. :func:`frame_labels` turns the same
description into per-cell targets (shape, colour, size) for vision-encoder pretraining: the findings in
``shared/tiny-model-findings.md`` show that attribute targets *without* position leave "where" questions at
the blind baseline, so labels are given per grid cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from llamavid.errors import InvalidInputError
from llamavid.synth import font
from llamavid.synth.world import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    NEEDLE_BACKGROUND_RGB,
    SHAPES,
    SIZE_FRACTIONS,
    SIZES,
    WORDS,
    allowed_pairs,
)

DEFAULT_FRAME_SIZE = 64
DEFAULT_GRID = 4
NEEDLE_BACKGROUND = "needle"
"""Background name of the white visual-needle screen (not a room colour, never asked about)."""
TEXT_RGB: tuple[int, int, int] = (255, 255, 255)


@dataclass(frozen=True)
class SceneObject:
    """One shape on screen.

    Attributes:
        shape: a name from :data:`~llamavid.synth.world.SHAPES`.
        colour: a name from :data:`~llamavid.synth.world.COLOURS`.
        x: horizontal centre in grid-cell units (``col + 0.5`` is the middle of column ``col``).
        y: vertical centre in grid-cell units, growing downwards.
        size: index into :data:`~llamavid.synth.world.SIZES`.
    """

    shape: str
    colour: str
    x: float
    y: float
    size: int = 2

    def cell(self, grid: int) -> tuple[int, int]:
        """The (row, column) cell that contains the object's centre."""
        row = min(max(int(math.floor(self.y)), 0), grid - 1)
        col = min(max(int(math.floor(self.x)), 0), grid - 1)
        return row, col


@dataclass(frozen=True)
class FrameSpec:
    """Everything needed to render one frame; immutable so generators can share and cache them.

    Attributes:
        background: a name from :data:`~llamavid.synth.world.BACKGROUNDS` or :data:`NEEDLE_BACKGROUND`.
        objects: drawn in order (later objects on top).
        word: an on-screen word drawn in white in the bottom grid row, or ``None``.
    """

    background: str
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)
    word: str | None = None


@dataclass(frozen=True)
class FrameLabels:
    """Per-cell ground truth of one frame, for pretraining the vision encoder with position.

    Attributes:
        shape: ``(G, G)`` int64; 0 = empty, else index into ``SHAPES`` plus one.
        colour: ``(G, G)`` int64; 0 = empty, else index into ``COLOURS`` plus one.
        size: ``(G, G)`` int64; 0 = empty, else index into ``SIZES`` plus one.
        background: index into ``BACKGROUNDS``, or -1 for the white needle screen.
        word: index into ``WORDS`` of the on-screen word, or -1. The word occupies the bottom row, whose cells
            are then labelled empty.
    """

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    background: int
    word: int


def _background_rgb(name: str) -> tuple[int, int, int]:
    if name == NEEDLE_BACKGROUND:
        return NEEDLE_BACKGROUND_RGB
    try:
        return BACKGROUND_RGB[name]
    except KeyError:
        raise InvalidInputError(
            f"background={name!r} is unknown; expected one of {BACKGROUNDS} or 'needle'."
        ) from None


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Ink mask of ``shape`` at normalised coordinates (u right, v down; the shape spans [-1, 1])."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        # 0.82 gives the square roughly the circle's area, so size is not confounded with shape.
        return (np.abs(u) <= 0.82) & (np.abs(v) <= 0.82)
    if shape == "triangle":
        # Apex up at v = -0.95, base at v = 0.85 with half-width 1.
        return (v <= 0.85) & (v >= -0.95) & (np.abs(u) <= (v + 0.95) / 1.8)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "cross":
        return ((np.abs(u) <= 0.34) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.34) & (np.abs(u) <= 1.0))
    if shape == "star":
        radius = np.sqrt(u * u + v * v)
        angle = np.arctan2(u, -v)  # 0 points up, so one tip is at the top
        # Five tips: the limit radius oscillates between 0.42 (inner) and 1.0 (tip).
        limit = 0.42 + 0.58 * np.abs(np.cos(2.5 * angle)) ** 4
        return radius <= limit
    raise InvalidInputError(f"shape={shape!r} is unknown; expected one of {SHAPES}.")


@lru_cache(maxsize=4096)
def _object_stamp(shape: str, radius_px: float, offset_x: float, offset_y: float, extent: int) -> np.ndarray:
    """Mask of one object on a ``(extent, extent)`` pixel window, cached because videos repeat positions."""
    pixel = np.arange(extent, dtype=np.float32) + 0.5
    u = ((pixel - offset_x) / radius_px)[None, :]
    v = ((pixel - offset_y) / radius_px)[:, None]
    mask = _shape_mask(shape, u, v)
    mask.setflags(write=False)
    return mask


def _check_geometry(size: int, grid: int) -> int:
    if grid < 2 or size < 8 * grid or size % grid:
        raise InvalidInputError(
            f"frame size {size} with grid {grid} is not supported; the size must be a multiple of the grid and "
            f"at least 8 pixels per cell (e.g. 56, 64, 112 or 224 with grid 4)."
        )
    return size // grid


def render_frame(spec: FrameSpec, size: int = DEFAULT_FRAME_SIZE, grid: int = DEFAULT_GRID) -> np.ndarray:
    """Render ``spec`` to an RGB image.

    Args:
        spec: the frame description.
        size: output height and width in pixels; a multiple of ``grid`` with at least 8 pixels per cell.
        grid: cells per side; object coordinates in ``spec`` are in these cell units.

    Returns:
        ``(size, size, 3)`` uint8 array (a fresh array the caller may modify).

    Raises:
        ValueError: on an unknown name in ``spec`` or an unsupported size/grid.
    """
    cell = _check_geometry(size, grid)
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = _background_rgb(spec.background)
    for obj in spec.objects:
        try:
            rgb = COLOUR_RGB[obj.colour]
        except KeyError:
            raise InvalidInputError(f"colour={obj.colour!r} is unknown; expected one of {COLOURS}.") from None
        if not 0 <= obj.size < len(SIZES):
            raise InvalidInputError(f"size index {obj.size} is out of range; expected 0..{len(SIZES) - 1}.")
        radius = SIZE_FRACTIONS[obj.size] * cell / 2.0
        centre_x, centre_y = obj.x * cell, obj.y * cell
        left, top = int(math.floor(centre_x - radius)), int(math.floor(centre_y - radius))
        extent = int(math.ceil(2 * radius)) + 2
        # Round the sub-pixel offset so stamps are reusable across frames without visible change.
        stamp = _object_stamp(
            obj.shape, radius, round(centre_x - left, 3), round(centre_y - top, 3), extent
        )  # (extent, extent)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + extent, size), min(left + extent, size)
        if y0 >= y1 or x0 >= x1:
            continue
        window = stamp[y0 - top : y1 - top, x0 - left : x1 - left]
        image[y0:y1, x0:x1][window] = rgb
    if spec.word is not None:
        _draw_word(image, spec.word, cell, grid)
    return image


def _draw_word(image: np.ndarray, word: str, cell: int, grid: int) -> None:
    scale = max(1, cell // 8)
    mask = font.text_mask(word, scale)  # (5·scale, W)
    height, width = mask.shape
    size = image.shape[0]
    if width > size:
        raise InvalidInputError(
            f"word {word!r} is {width} px wide at scale {scale}; it does not fit a {size}-px frame."
        )
    top = int((grid - 0.5) * cell - height / 2)
    left = (size - width) // 2
    image[top : top + height, left : left + width][mask] = TEXT_RGB


def frame_labels(spec: FrameSpec, grid: int = DEFAULT_GRID) -> FrameLabels:
    """Per-cell labels of ``spec`` (see :class:`FrameLabels`); independent of the pixel size."""
    shape = np.zeros((grid, grid), dtype=np.int64)
    colour = np.zeros((grid, grid), dtype=np.int64)
    size = np.zeros((grid, grid), dtype=np.int64)
    for obj in spec.objects:
        row, col = obj.cell(grid)
        shape[row, col] = SHAPES.index(obj.shape) + 1
        colour[row, col] = COLOURS.index(obj.colour) + 1
        size[row, col] = obj.size + 1
    background = -1 if spec.background == NEEDLE_BACKGROUND else BACKGROUNDS.index(spec.background)
    word = -1 if spec.word is None else WORDS.index(spec.word)
    return FrameLabels(shape=shape, colour=colour, size=size, background=background, word=word)


def cell_centre(row: int, col: int) -> tuple[float, float]:
    """The (x, y) centre of a cell in grid units."""
    return col + 0.5, row + 0.5


def cell_quadrant(row: int, col: int, grid: int = DEFAULT_GRID) -> int:
    """Index into :data:`~llamavid.synth.world.QUADRANTS` of grid cell ``(row, col)`` (grid must be even)."""
    half = grid // 2
    return 2 * int(row >= half) + int(col >= half)


def quadrant_of(obj: SceneObject, grid: int = DEFAULT_GRID) -> int:
    """Index into :data:`~llamavid.synth.world.QUADRANTS` of the cell holding ``obj`` (grid must be even)."""
    return cell_quadrant(*obj.cell(grid), grid)


def random_frame_spec(
    rng: np.random.Generator,
    split: str = "train",
    grid: int = DEFAULT_GRID,
    max_objects: int = 6,
    word_probability: float = 0.2,
    jitter: bool = True,
) -> FrameSpec:
    """A random frame for stage-0 vision pretraining: 0..``max_objects`` objects in distinct cells.

    Objects use only the (shape, colour) pairs allowed in ``split``, so an encoder pretrained on train frames
    has never seen a held-out pair. With ``word_probability`` a word is drawn and the bottom row is kept free.
    """
    word = WORDS[rng.integers(len(WORDS))] if rng.random() < word_probability else None
    rows = grid - 1 if word is not None else grid
    cells = rng.permutation(rows * grid)[: rng.integers(0, max_objects + 1)]
    pairs = allowed_pairs(split)
    objects = []
    for flat in cells:
        shape, colour = pairs[rng.integers(len(pairs))]
        size_index = int(rng.integers(len(SIZES)))
        x, y = cell_centre(int(flat) // grid, int(flat) % grid)
        if jitter:
            dx, dy = position_jitter(rng, size_index)
            x, y = x + dx, y + dy
        objects.append(SceneObject(shape, colour, x, y, size_index))
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    return FrameSpec(background=background, objects=tuple(objects), word=word)


def position_jitter(rng: np.random.Generator, size_index: int) -> tuple[float, float]:
    """A random offset (in cell units) that keeps an object of this size inside its cell."""
    slack = max(0.0, (1.0 - SIZE_FRACTIONS[size_index]) / 2.0) * 0.9
    return float(rng.uniform(-slack, slack)), float(rng.uniform(-slack, slack))
