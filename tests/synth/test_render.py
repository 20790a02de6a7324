import numpy as np
import pytest

from llamavid.synth.render import (
    NEEDLE_BACKGROUND,
    FrameSpec,
    SceneObject,
    frame_labels,
    quadrant_of,
    random_frame_spec,
    render_frame,
)
from llamavid.synth.world import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    HELDOUT_PAIRS,
    SHAPES,
    SIZES,
)


def _cell_colours(image: np.ndarray, row: int, col: int, grid: int, background: tuple[int, int, int]) -> set:
    cell = image.shape[0] // grid
    pixels = image[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell].reshape(-1, 3)
    return {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)} - {background}


@pytest.mark.parametrize("size", [56, 64, 112, 224])
def test_labels_match_pixels_at_every_size(size):
    rng = np.random.default_rng(size)
    for _ in range(40):
        spec = random_frame_spec(rng, "heldout", word_probability=0.0)
        image = render_frame(spec, size)
        labels = frame_labels(spec)
        background = BACKGROUND_RGB[spec.background]
        assert labels.background == BACKGROUNDS.index(spec.background)
        for row in range(4):
            for col in range(4):
                colours = _cell_colours(image, row, col, 4, background)
                if labels.colour[row, col] == 0:
                    assert colours == set(), "an empty cell must show only the background"
                else:
                    assert colours == {COLOUR_RGB[COLOURS[labels.colour[row, col] - 1]]}


def test_same_spec_same_bytes_and_distinct_seeds_differ():
    first = render_frame(random_frame_spec(np.random.default_rng(1)))
    again = render_frame(random_frame_spec(np.random.default_rng(1)))
    other = render_frame(random_frame_spec(np.random.default_rng(2)))
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_shapes_and_sizes_are_distinguishable():
    masks = {}
    for shape in SHAPES:
        image = render_frame(FrameSpec("black", (SceneObject(shape, "white", 0.5, 0.5, 3),)))
        masks[shape] = image[:16, :16, 0] > 0
    assert len({m.tobytes() for m in masks.values()}) == len(SHAPES)
    areas = [
        int(
            (
                render_frame(FrameSpec("black", (SceneObject("circle", "white", 0.5, 0.5, s),)))[..., 0] > 0
            ).sum()
        )
        for s in range(len(SIZES))
    ]
    assert areas == sorted(areas) and len(set(areas)) == len(SIZES)


def test_word_is_drawn_in_the_bottom_row_only():
    spec = FrameSpec("black", (SceneObject("circle", "red", 0.5, 0.5),), word="boat")
    image = render_frame(spec)
    white = (image == 255).all(axis=-1)
    assert white[48:].sum() > 20 and white[:48].sum() == 0
    assert frame_labels(spec).word == 7


def test_needle_background_and_quadrants():
    spec = FrameSpec(NEEDLE_BACKGROUND, (SceneObject("star", "red", 3.5, 0.5),))
    image = render_frame(spec)
    assert tuple(image[0, 0]) == (255, 255, 255)
    assert frame_labels(spec).background == -1
    assert quadrant_of(spec.objects[0]) == 1


def test_random_train_frames_never_show_heldout_pairs():
    rng = np.random.default_rng(0)
    for _ in range(300):
        spec = random_frame_spec(rng, "train")
        assert not any((o.shape, o.colour) in HELDOUT_PAIRS for o in spec.objects)


def test_rejects_bad_geometry_and_names():
    with pytest.raises(ValueError, match="multiple of the grid"):
        render_frame(FrameSpec("black"), 50)
    with pytest.raises(ValueError, match="background"):
        render_frame(FrameSpec("pink"))
    with pytest.raises(ValueError, match="colour"):
        render_frame(FrameSpec("black", (SceneObject("circle", "pink", 0.5, 0.5),)))
    with pytest.raises(ValueError, match="shape"):
        render_frame(FrameSpec("black", (SceneObject("blob", "red", 0.5, 0.5),)))
