from collections import Counter

import numpy as np
import pytest

from llamavid.synth.clips import VIDEO_QUESTION_TYPES, make_clip_caption, make_clip_question
from llamavid.synth.world import COLOURS, DIRECTIONS, SHAPES


def _objects(clip, index):
    """(shape, colour, row, col) of every labelled cell in frame ``index``."""
    labels = clip.frame_labels(index)
    rows, cols = np.nonzero(labels.shape)
    return [
        (SHAPES[labels.shape[r, c] - 1], COLOURS[labels.colour[r, c] - 1], int(r), int(c))
        for r, c in zip(rows, cols, strict=False)
    ]


def _check(item):
    clip, answer, question = item.media, item.answer, item.question
    frames = [_objects(clip, t) for t in range(clip.num_frames)]
    shapes_at = [{o[0] for o in f} for f in frames]
    colours_at = [{o[1] for o in f} for f in frames]
    if item.question_type == "video_direction":
        colour, shape = question.split()[-3:-1]
        track = [(r, c) for f in frames for s, col, r, c in f if (s, col) == (shape, colour)]
        (r0, c0), (r1, c1) = track[0], track[-1]
        moved = {"left": c1 < c0, "right": c1 > c0, "up": r1 < r0, "down": r1 > r0}
        assert [d for d in DIRECTIONS if moved[d]] == [answer]
    elif item.question_type == "video_order":
        first_seen = {
            s: min(t for t, present in enumerate(shapes_at) if s in present) for s in set().union(*shapes_at)
        }
        pick = min if "first" in question else max
        assert first_seen[answer] == pick(first_seen.values())
        assert list(first_seen.values()).count(first_seen[answer]) == 1
    elif item.question_type == "video_count":
        assert len(set().union(*shapes_at)) == int(answer)
    elif item.question_type == "video_appear":
        assert answer in shapes_at[-1] and answer not in shapes_at[0]
    elif item.question_type == "video_disappear":
        assert answer in colours_at[0] and answer not in colours_at[-1]
    elif item.question_type == "video_scene_change":
        backgrounds = [clip.frame_labels(t).background for t in range(clip.num_frames)]
        assert sum(a != b for a, b in zip(backgrounds, backgrounds[1:], strict=False)) == int(answer)
    elif item.question_type == "video_colour_change":
        shape = question.split()[-3]
        before = [c for s, c, *_ in frames[0] if s == shape]
        after = [c for s, c, *_ in frames[-1] if s == shape]
        assert after == [answer] and before != after


@pytest.mark.parametrize("question_type", list(VIDEO_QUESTION_TYPES))
def test_answers_agree_with_frame_labels(question_type):
    for index in range(25):
        item = make_clip_question(
            np.random.default_rng(index), "heldout", question_type, "x", num_frames=(5, 20)
        )
        assert item.answer in item.answer_options
        assert 5 <= item.media.num_frames <= 20
        _check(item)


def test_answers_are_balanced_within_each_type():
    for question_type, options in VIDEO_QUESTION_TYPES.items():
        answers = Counter(
            make_clip_question(np.random.default_rng(i), "train", question_type, "x").answer
            for i in range(150)
        )
        assert set(answers) == set(options)
        assert max(answers.values()) / 150 <= 2.0 / len(options)


def test_render_matches_frame_by_frame_and_is_deterministic():
    item = make_clip_question(np.random.default_rng(4), "train", "video_direction", "x", num_frames=12)
    frames = item.media.render(56)
    assert frames.shape == (12, 56, 56, 3) and frames.dtype == np.uint8
    assert all((frames[t] == item.media.render_frame(t, 56)).all() for t in range(12))
    again = make_clip_question(np.random.default_rng(4), "train", "video_direction", "x", num_frames=12)
    assert again.media.render().tobytes() == item.media.render().tobytes()
    other = make_clip_question(np.random.default_rng(5), "train", "video_direction", "x", num_frames=12)
    assert other.media.render().tobytes() != item.media.render().tobytes()


def test_caption_and_length_validation():
    item = make_clip_caption(np.random.default_rng(0), "train", "c", num_frames=60)
    assert item.media.num_frames == 60 and item.answer.endswith(".") and item.answer_options is None
    with pytest.raises(ValueError, match="clip range"):
        make_clip_question(np.random.default_rng(0), "train", "video_order", "x", num_frames=4)
    with pytest.raises(ValueError, match="clip range"):
        make_clip_question(np.random.default_rng(0), "train", "video_order", "x", num_frames=(8, 61))
