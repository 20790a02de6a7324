"""A 3×5 bitmap font (upper-case letters and digits), drawn by hand for this project.

A font file would be a dependency and would render differently across Pillow builds; a fixed bitmap scaled by
an integer factor gives byte-identical text at every frame size, which the determinism tests rely on.
"""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np

from llamavid.errors import InvalidInputError

GLYPH_WIDTH = 3
GLYPH_HEIGHT = 5

# Each glyph is five rows of three characters; "#" is ink.
_GLYPHS: dict[str, tuple[str, str, str, str, str]] = {
    "A": (".#.", "#.#", "###", "#.#", "#.#"),
    "B": ("##.", "#.#", "##.", "#.#", "##."),
    "C": (".##", "#..", "#..", "#..", ".##"),
    "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"),
    "F": ("###", "#..", "##.", "#..", "#.."),
    "G": (".##", "#..", "#.#", "#.#", ".##"),
    "H": ("#.#", "#.#", "###", "#.#", "#.#"),
    "I": ("###", ".#.", ".#.", ".#.", "###"),
    "J": ("..#", "..#", "..#", "#.#", ".#."),
    "K": ("#.#", "#.#", "##.", "#.#", "#.#"),
    "L": ("#..", "#..", "#..", "#..", "###"),
    "M": ("#.#", "###", "###", "#.#", "#.#"),
    "N": ("##.", "#.#", "#.#", "#.#", "#.#"),
    "O": (".#.", "#.#", "#.#", "#.#", ".#."),
    "P": ("##.", "#.#", "##.", "#..", "#.."),
    "Q": (".#.", "#.#", "#.#", "##.", ".##"),
    "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "S": (".##", "#..", ".#.", "..#", "##."),
    "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "U": ("#.#", "#.#", "#.#", "#.#", "###"),
    "V": ("#.#", "#.#", "#.#", "#.#", ".#."),
    "W": ("#.#", "#.#", "###", "###", "#.#"),
    "X": ("#.#", "#.#", ".#.", "#.#", "#.#"),
    "Y": ("#.#", "#.#", ".#.", ".#.", ".#."),
    "Z": ("###", "..#", ".#.", "#..", "###"),
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("##.", "..#", ".#.", "#..", "###"),
    "3": ("##.", "..#", ".#.", "..#", "##."),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "##.", "..#", "##."),
    "6": (".##", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "##."),
    " ": ("...", "...", "...", "...", "..."),
}

SUPPORTED_CHARACTERS: frozenset[str] = frozenset(_GLYPHS)


@cache
def _glyph(char: str) -> np.ndarray:
    rows = _GLYPHS[char]
    return np.array([[cell == "#" for cell in row] for row in rows], dtype=bool)  # (5, 3)


@lru_cache(maxsize=256)
def text_mask(text: str, scale: int) -> np.ndarray:
    """Return the ink mask of ``text`` at an integer ``scale``.

    Args:
        text: characters from :data:`SUPPORTED_CHARACTERS` (lower case is upper-cased).
        scale: pixels per font pixel; glyphs are 3·scale wide and 5·scale tall with a one-font-pixel gap.

    Returns:
        A read-only boolean array of shape ``(5·scale, (4·len(text) − 1)·scale)``.

    Raises:
        ValueError: on an unsupported character or a non-positive scale.
    """
    text = text.upper()
    unknown = sorted(set(text) - SUPPORTED_CHARACTERS)
    if unknown:
        raise InvalidInputError(f"Characters {unknown} are not in the bitmap font; use A-Z, 0-9 and space.")
    if scale < 1:
        raise InvalidInputError(f"scale must be a positive integer, got {scale}.")
    if not text:
        return np.zeros((GLYPH_HEIGHT * scale, 0), dtype=bool)
    columns: list[np.ndarray] = []
    gap = np.zeros((GLYPH_HEIGHT, 1), dtype=bool)
    for position, char in enumerate(text):
        if position:
            columns.append(gap)
        columns.append(_glyph(char))
    small = np.concatenate(columns, axis=1)  # (5, 4·len − 1)
    mask = np.kron(small, np.ones((scale, scale), dtype=bool)).astype(bool)
    mask.setflags(write=False)
    return mask
