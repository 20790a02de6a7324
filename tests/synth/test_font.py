import numpy as np
import pytest

from llamavid.synth import font
from llamavid.synth.world import WORDS


def test_every_glyph_is_three_by_five_and_distinct():
    glyphs = {char: font.text_mask(char, 1) for char in font.SUPPORTED_CHARACTERS if char != " "}
    assert all(mask.shape == (5, 3) for mask in glyphs.values())
    assert all(mask.any() for mask in glyphs.values())
    as_bytes = [mask.tobytes() for mask in glyphs.values()]
    assert len(set(as_bytes)) == len(as_bytes)


def test_scaling_and_width():
    mask = font.text_mask("moon", 2)
    assert mask.shape == (10, (4 * 4 - 1) * 2)
    np.testing.assert_array_equal(mask[::2, ::2], font.text_mask("MOON", 1))


def test_all_world_words_render_distinctly():
    masks = {word: font.text_mask(word, 1).tobytes() for word in WORDS}
    assert len(set(masks.values())) == len(WORDS)


def test_rejects_unknown_characters_and_bad_scale():
    with pytest.raises(ValueError, match="not in the bitmap font"):
        font.text_mask("hé", 1)
    with pytest.raises(ValueError, match="positive"):
        font.text_mask("cat", 0)
