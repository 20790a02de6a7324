"""Short clips (5-60 frames at 1 fps): video questions and captions for stages 1 and 2.

Each question type needs information from more than one frame (motion, order, appearance, counting over time,
background or colour changes), which is exactly what the 2-token-per-frame representation has to carry.
As for images, answers are drawn first and the clip is built to make them true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llamavid.errors import InvalidInputError
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
    DEFAULT_FRAME_SIZE,
    DEFAULT_GRID,
    FrameLabels,
    FrameSpec,
    SceneObject,
    cell_centre,
    frame_labels,
    render_frame,
)
from llamavid.synth.world import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, check_split

MIN_CLIP_FRAMES = 5
MAX_CLIP_FRAMES = 60
DEFAULT_CLIP_FRAMES: tuple[int, int] = (8, 16)
"""Inclusive range of clip lengths; short enough for CPU training, long enough for several events."""

CLIP_COUNT_OPTIONS: tuple[str, ...] = tuple(str(n) for n in range(1, 7))
SCENE_CHANGE_OPTIONS: tuple[str, ...] = tuple(str(n) for n in range(5))

VIDEO_QUESTION_TYPES: dict[str, list[str]] = {
    "video_direction": list(DIRECTIONS),
    "video_order": list(SHAPES),
    "video_count": list(CLIP_COUNT_OPTIONS),
    "video_appear": list(SHAPES),
    "video_disappear": list(COLOURS),
    "video_scene_change": list(SCENE_CHANGE_OPTIONS),
    "video_colour_change": list(COLOURS),
}
"""Short-video question types and their answer options."""

VIDEO_CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the video briefly.",
    "What happens in this video?",
    "Summarize the clip.",
)


@dataclass(frozen=True)
class Subtitle:
    """One subtitle cue; times are in seconds (frame ``i`` of a 1 fps video is shown at ``i`` s)."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Event:
    """A ground-truth happening at ``time`` seconds, for debugging and for evaluation by position."""

    time: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Clip:
    """A short video held as frame descriptions (cheap) and rendered on demand.

    Attributes:
        frames: one :class:`~llamavid.synth.render.FrameSpec` per frame.
        events: what happens, in time order.
        fps: frames per second; the synthetic world always uses 1 fps like LLaMA-VID's video sampling.
        subtitles: clips have none; kept so clips and episodes share one interface.
        grid: the cell grid the frame descriptions are laid out on.
    """

    frames: tuple[FrameSpec, ...]
    events: tuple[Event, ...] = ()
    fps: float = 1.0
    subtitles: tuple[Subtitle, ...] = ()
    grid: int = DEFAULT_GRID

    @property
    def num_frames(self) -> int:
        """Number of frames."""
        return len(self.frames)

    def timestamps(self) -> np.ndarray:
        """Presentation time of every frame in seconds, ``(T,)`` float64."""
        return np.arange(self.num_frames, dtype=np.float64) / self.fps

    def frame_spec(self, index: int) -> FrameSpec:
        """Description of frame ``index``."""
        return self.frames[index]

    def render_frame(self, index: int, size: int = DEFAULT_FRAME_SIZE) -> np.ndarray:
        """Frame ``index`` as ``(size, size, 3)`` uint8."""
        return render_frame(self.frames[index], size, self.grid)

    def frame_labels(self, index: int) -> FrameLabels:
        """Per-cell labels of frame ``index``."""
        return frame_labels(self.frames[index], self.grid)

    def render(self, size: int = DEFAULT_FRAME_SIZE) -> np.ndarray:
        """All frames, ``(T, size, size, 3)`` uint8."""
        return np.stack([self.render_frame(i, size) for i in range(self.num_frames)])


def _clip_length(rng: np.random.Generator, num_frames: int | tuple[int, int]) -> int:
    low, high = (num_frames, num_frames) if isinstance(num_frames, int) else num_frames
    if not MIN_CLIP_FRAMES <= low <= high <= MAX_CLIP_FRAMES:
        raise InvalidInputError(
            f"num_frames={num_frames!r} is outside the clip range; expected {MIN_CLIP_FRAMES} <= low <= high <= "
            f"{MAX_CLIP_FRAMES}. Use make_episode for longer videos."
        )
    return int(rng.integers(low, high + 1))


def _static(shape: str, colour: str, cell: tuple[int, int]) -> SceneObject:
    x, y = cell_centre(*cell)
    return SceneObject(shape, colour, x, y)


def _frames_from_visibility(
    background: list[str], objects: list[SceneObject], visible: list[list[bool]]
) -> tuple[FrameSpec, ...]:
    """Frames where object ``j`` is drawn at frame ``t`` iff ``visible[j][t]``."""
    return tuple(
        FrameSpec(background[t], tuple(o for o, v in zip(objects, visible, strict=True) if v[t]))
        for t in range(len(background))
    )


def make_clip_question(
    rng: np.random.Generator,
    split: str,
    question_type: str,
    item_id: str,
    num_frames: int | tuple[int, int] = DEFAULT_CLIP_FRAMES,
    grid: int = DEFAULT_GRID,
) -> QAItem:
    """Build one short-video question of ``question_type`` (a key of :data:`VIDEO_QUESTION_TYPES`).

    Raises:
        ValueError: on an unknown type or split, or a clip length outside 5-60 frames.
    """
    options, answer = draw_answer(rng, split, question_type, VIDEO_QUESTION_TYPES)
    clip, question, heldout, caption = _BUILDERS[question_type](
        rng, split, answer, _clip_length(rng, num_frames), grid
    )
    return QAItem(
        id=item_id,
        question=question,
        answer=answer,
        question_type=question_type,
        answer_options=list(options),
        media=clip,
        meta={"heldout_combo": bool(heldout), "num_frames": clip.num_frames, "caption": caption},
    )


def make_clip_caption(
    rng: np.random.Generator,
    split: str,
    item_id: str,
    num_frames: int | tuple[int, int] = DEFAULT_CLIP_FRAMES,
    grid: int = DEFAULT_GRID,
) -> QAItem:
    """A stage-1 video caption item: a random clip of any type with its event-based caption."""
    check_split(split)
    question_type = choose(rng, list(VIDEO_QUESTION_TYPES))
    answer = choose(rng, VIDEO_QUESTION_TYPES[question_type])
    clip, _, heldout, caption = _BUILDERS[question_type](
        rng, split, answer, _clip_length(rng, num_frames), grid
    )
    return QAItem(
        id=item_id,
        question=choose(rng, VIDEO_CAPTION_PROMPTS),
        answer=caption,
        question_type="video_caption",
        answer_options=None,
        media=clip,
        meta={"heldout_combo": bool(heldout), "num_frames": clip.num_frames},
    )


# Each builder: (rng, split, answer, T, grid) -> (clip, question, heldout_combo, caption).
_Built = tuple[Clip, str, bool, str]


def _direction(rng: np.random.Generator, split: str, answer: str, length: int, grid: int) -> _Built:
    shape, colour, heldout = pick_target(rng, split)
    distractors = pick_distractors(rng, int(rng.integers(0, 3)), {shape}, {colour})
    lane = int(rng.integers(grid))
    # The target crosses the whole frame (first cell centre to last) along its lane, at constant speed.
    start, end = 0.5, grid - 0.5
    if answer in ("left", "up"):
        start, end = end, start
    horizontal = answer in ("left", "right")
    # Distractors stay in other lanes so the paths never overlap.
    free = [(r, c) for r, c in distinct_cells(rng, grid * grid, grid) if (r if horizontal else c) != lane]
    statics = [_static(s, c, cell) for (s, c), cell in zip(distractors, free, strict=False)]
    background = choose(rng, BACKGROUNDS)
    frames = []
    for t in range(length):
        along = start + (end - start) * t / (length - 1)
        x, y = (along, lane + 0.5) if horizontal else (lane + 0.5, along)
        frames.append(FrameSpec(background, (*statics, SceneObject(shape, colour, x, y))))
    parts = [f"{phrase(shape, colour)} moves {answer}"] + [
        f"{phrase(o.shape, o.colour)} stays still" for o in statics
    ]
    caption = _sentence(join_phrases(parts) + f" on a {background} background.")
    events = (Event(0.0, "move", {"shape": shape, "colour": colour, "direction": answer}),)
    question = f"Which way does the {colour} {shape} move?"
    return Clip(tuple(frames), events, grid=grid), question, heldout, caption


def _order(rng: np.random.Generator, split: str, answer: str, length: int, grid: int) -> _Built:
    first = bool(rng.random() < 0.5)
    shape, colour, heldout = pick_target(rng, split, shape=answer)
    others = pick_distractors(rng, 2, {shape}, {colour})
    times = sorted(int(t) for t in rng.choice(length - 1, size=3, replace=False))
    # Objects are listed in order of appearance; the distractors are already in random order.
    pairs = [(shape, colour), *others] if first else [*others, (shape, colour)]
    cells = distinct_cells(rng, 3, grid)
    objects = [_static(s, c, cell) for (s, c), cell in zip(pairs, cells, strict=True)]
    visible = [[t >= start for t in range(length)] for start in times]
    background = choose(rng, BACKGROUNDS)
    clip = Clip(
        _frames_from_visibility([background] * length, objects, visible),
        tuple(
            Event(float(t), "appear", {"shape": o.shape, "colour": o.colour})
            for t, o in zip(times, objects, strict=True)
        ),
        grid=grid,
    )
    caption = _sentence(
        ", then ".join(phrase(o.shape, o.colour) for o in objects) + " appear one after another."
    )
    question = "Which shape appears first?" if first else "Which shape appears last?"
    return clip, question, heldout, caption


def _count(rng: np.random.Generator, split: str, answer: str, length: int, grid: int) -> _Built:
    count = int(answer)
    shapes = [SHAPES[int(i)] for i in rng.permutation(len(SHAPES))[:count]]
    heldout = False
    pairs = []
    for shape in shapes:
        s, c, h = pick_target(rng, split, shape=shape)
        pairs.append((s, c))
        heldout |= h
    cells = distinct_cells(rng, count, grid)
    objects = [_static(s, c, cell) for (s, c), cell in zip(pairs, cells, strict=True)]
    visible = []
    for _ in objects:
        duration = int(rng.integers(1, max(2, length // 2) + 1))
        start = int(rng.integers(0, length - duration + 1))
        visible.append([start <= t < start + duration for t in range(length)])
    background = choose(rng, BACKGROUNDS)
    events = tuple(
        sorted(
            (
                Event(float(v.index(True)), "appear", {"shape": o.shape, "colour": o.colour})
                for o, v in zip(objects, visible, strict=True)
            ),
            key=lambda e: e.time,
        )
    )
    clip = Clip(_frames_from_visibility([background] * length, objects, visible), events, grid=grid)
    noun = "shape" if count == 1 else "shapes"
    caption = _sentence(
        f"{count} different {noun} come and go: " + join_phrases([phrase(s, c) for s, c in pairs]) + "."
    )
    question = choose(
        rng, ["How many different shapes appear in the video?", "How many distinct shapes are shown?"]
    )
    return clip, question, heldout, caption


def _appear(rng: np.random.Generator, split: str, answer: str, length: int, grid: int) -> _Built:
    shape, colour, heldout = pick_target(rng, split, shape=answer)
    others = pick_distractors(rng, int(rng.integers(1, 3)), {shape}, {colour})
    cells = distinct_cells(rng, len(others) + 1, grid)
    objects = [_static(s, c, cell) for (s, c), cell in zip([*others, (shape, colour)], cells, strict=True)]
    moment = int(rng.integers(1, length))
    visible = [[True] * length for _ in others] + [[t >= moment for t in range(length)]]
    background = choose(rng, BACKGROUNDS)
    clip = Clip(
        _frames_from_visibility([background] * length, objects, visible),
        (Event(float(moment), "appear", {"shape": shape, "colour": colour}),),
        grid=grid,
    )
    caption = _sentence(
        join_phrases([phrase(s, c) for s, c in others])
        + (" is" if len(others) == 1 else " are")
        + f" shown, then {phrase(shape, colour)} appears."
    )
    return clip, "Which new shape appears during the video?", heldout, caption


def _disappear(rng: np.random.Generator, split: str, answer: str, length: int, grid: int) -> _Built:
    shape, colour, heldout = pick_target(rng, split, colour=answer)
    others = pick_distractors(rng, int(rng.integers(1, 3)), {shape}, {colour})
    cells = distinct_cells(rng, len(others) + 1, grid)
    objects = [_static(s, c, cell) for (s, c), cell in zip([*others, (shape, colour)], cells, strict=True)]
    moment = int(rng.integers(1, length))
    visible = [[True] * length for _ in others] + [[t < moment for t in range(length)]]
    background = choose(rng, BACKGROUNDS)
    clip = Clip(
        _frames_from_visibility([background] * length, objects, visible),
        (Event(float(moment), "disappear", {"shape": shape, "colour": colour}),),
        grid=grid,
    )
    caption = _sentence(
        join_phrases([phrase(s, c) for s, c in [*others, (shape, colour)]])
        + f" are shown, then the {colour} {shape} disappears."
    )
    return clip, "What colour is the object that disappears?", heldout, caption


def _scene_change(rng: np.random.Generator, split: str, answer: str, length: int, grid: int) -> _Built:
    changes = int(answer)
    shape, colour, heldout = pick_target(rng, split)
    others = pick_distractors(rng, int(rng.integers(0, 2)), {shape}, {colour})
    cells = distinct_cells(rng, len(others) + 1, grid)
    objects = tuple(
        _static(s, c, cell) for (s, c), cell in zip([(shape, colour), *others], cells, strict=True)
    )
    moments = sorted(int(t) for t in 1 + rng.choice(length - 1, size=changes, replace=False))
    backgrounds = [choose(rng, BACKGROUNDS)]
    for _ in moments:
        backgrounds.append(choose(rng, [b for b in BACKGROUNDS if b != backgrounds[-1]]))
    per_frame = [backgrounds[sum(t >= m for m in moments)] for t in range(length)]
    events = tuple(
        Event(float(m), "scene_change", {"background": backgrounds[k + 1]}) for k, m in enumerate(moments)
    )
    clip = Clip(tuple(FrameSpec(b, objects) for b in per_frame), events, grid=grid)
    if changes:
        caption = _sentence(
            join_phrases([phrase(o.shape, o.colour) for o in objects])
            + (" stays" if len(objects) == 1 else " stay")
            + f" still while the background changes from {' to '.join(backgrounds)}."
        )
    else:
        caption = _sentence(
            join_phrases([phrase(o.shape, o.colour) for o in objects]) + f" on a {backgrounds[0]} background."
        )
    question = "How many times does the background colour change?"
    return clip, question, heldout, caption


def _colour_change(rng: np.random.Generator, split: str, answer: str, length: int, grid: int) -> _Built:
    shape, colour_after, heldout_after = pick_target(rng, split, colour=answer)
    _, colour_before, heldout_before = pick_target(rng, split, shape=shape, exclude_colours={colour_after})
    others = pick_distractors(rng, int(rng.integers(1, 3)), {shape}, {colour_before, colour_after})
    cells = distinct_cells(rng, len(others) + 1, grid)
    statics = [_static(s, c, cell) for (s, c), cell in zip(others, cells[1:], strict=True)]
    before = _static(shape, colour_before, cells[0])
    after = _static(shape, colour_after, cells[0])
    moment = int(rng.integers(1, length))
    background = choose(rng, BACKGROUNDS)
    frames = tuple(FrameSpec(background, (*statics, before if t < moment else after)) for t in range(length))
    clip = Clip(
        frames,
        (Event(float(moment), "colour_change", {"shape": shape, "from": colour_before, "to": colour_after}),),
        grid=grid,
    )
    caption = _sentence(f"{phrase(shape, colour_before)} turns {colour_after}.")
    return clip, f"What colour does the {shape} turn into?", heldout_after or heldout_before, caption


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


_BUILDERS = {
    "video_direction": _direction,
    "video_order": _order,
    "video_count": _count,
    "video_appear": _appear,
    "video_disappear": _disappear,
    "video_scene_change": _scene_change,
    "video_colour_change": _colour_change,
}
