"""Long videos (≥ 1,200 frames at 1 fps) with characters, dialogue subtitles, plot events and needles.

An :class:`Episode` stores only its plan (scenes, cast, cues, the needle), a few kilobytes, and renders any
frame on demand, so a 1,200-frame video costs nothing until frames are asked for and frame ``i`` is identical
whether rendered alone or in sequence. The questions mirror the paper's long-video QA kinds (docs/architecture.md §9):

* summary: how many scenes the video has (plus a free-form summary for training),
* plot and characters: who is introduced last; what colour a named character is,
* reasoning and details: in which room a character tells a secret,
* needles: the colour of the shape on the single white frame (visual needle) and a secret number said once
  in the dialogue (subtitle needle).

Characters are coloured shapes with names. A character is introduced alone on screen while its subtitle says
"Hello, I am <name>." — the only link between a name and a look, so the character question needs both the
subtitle and the frames around it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from llamavid.errors import InvalidInputError, LlamaVidRuntimeError
from llamavid.synth._common import QAItem, choose, distinct_cells, join_phrases, phrase, pick_target
from llamavid.synth.clips import Event, Subtitle
from llamavid.synth.render import (
    DEFAULT_FRAME_SIZE,
    DEFAULT_GRID,
    NEEDLE_BACKGROUND,
    FrameLabels,
    FrameSpec,
    SceneObject,
    frame_labels,
    render_frame,
)
from llamavid.synth.world import (
    BACKGROUNDS,
    COLOURS,
    DEFAULT_SIZE,
    HELDOUT_PAIRS,
    NAMES,
    NEEDLE_COLOURS,
    NUMBER_WORDS,
    check_split,
)

DEFAULT_EPISODE_FRAMES = 1200
MIN_EPISODE_FRAMES = 60
"""Shorter episodes are allowed for curricula (the findings suggest growing from tens of frames upwards)."""

SCENE_COUNT_OPTIONS: tuple[str, ...] = tuple(str(n) for n in range(4, 10))

LONG_QUESTION_TYPES: dict[str, list[str]] = {
    "long_visual_needle": list(NEEDLE_COLOURS),
    "long_subtitle_needle": list(NUMBER_WORDS),
    "long_character": list(COLOURS),
    "long_plot": list(NAMES),
    "long_summary": list(SCENE_COUNT_OPTIONS),
    "long_reasoning": list(BACKGROUNDS),
}
"""Long-video question types with exact answers and their answer options."""

SUMMARY_PROMPT = "Summarize the video."

# Dialogue fillers carry no colour, shape, number or room word, so they never answer a question by accident.
FILLER_LINES: tuple[str, ...] = (
    "Hello {other}.",
    "Nice to see you {other}.",
    "What a nice day.",
    "Let us go.",
    "I am hungry.",
    "Where is my hat?",
    "Look over there!",
    "I like this room.",
    "Time to go home.",
    "Did you hear that?",
    "I will be back.",
    "This is fun.",
    "Wait for me {other}.",
)
_WOBBLE_AMPLITUDE = 0.15  # cell units; small enough that a character never leaves its cell
_WOBBLE_PERIOD = 9.0  # frames


@dataclass(frozen=True)
class Character:
    """A named coloured shape."""

    name: str
    shape: str
    colour: str


@dataclass(frozen=True)
class ScenePlan:
    """One scene: a frame range in one room with a fixed cast.

    Attributes:
        start: first frame (inclusive).
        end: last frame (exclusive).
        background: the room colour.
        cast: ``(character index, row, col, wobble phase)`` per character on screen.
        intro: index of the character introduced in this scene, or -1.
        intro_end: during ``[start, intro_end)`` only the introduced character is on screen.
    """

    start: int
    end: int
    background: str
    cast: tuple[tuple[int, int, int, float], ...]
    intro: int = -1
    intro_end: int = 0


@dataclass(frozen=True)
class Episode:
    """A long video rendered frame by frame from its plan.

    Attributes:
        num_frames: length in frames (1 fps, so also in seconds).
        characters: the cast, in order of introduction.
        scenes: consecutive scenes covering ``[0, num_frames)``.
        subtitles: dialogue cues ``(start, end, text)`` in seconds, text prefixed with the speaker's name.
        events: plot events in time order (scene starts, introductions, the secret, the needle).
        needle_start: first frame of the visual needle (a white screen with one big shape).
        needle_length: number of needle frames.
        needle_shape: the needle's shape.
        needle_colour: the needle's colour.
        answers: the exact answer of every :data:`LONG_QUESTION_TYPES` entry plus the facts they refer to.
        grid: the cell grid of the frame descriptions.
        fps: frames per second (always 1).
        needle_size: the needle shape's size (index into :data:`~llamavid.synth.world.SIZES`; 3, huge, unless
            the episode comes from a set with ``varied_needles``).
        needle_cell: the needle's ``(row, column)`` cell, or ``None`` for the cell just up-left of the centre.
    """

    num_frames: int
    characters: tuple[Character, ...]
    scenes: tuple[ScenePlan, ...]
    subtitles: tuple[Subtitle, ...]
    events: tuple[Event, ...]
    needle_start: int
    needle_length: int
    needle_shape: str
    needle_colour: str
    answers: dict[str, Any]
    grid: int = DEFAULT_GRID
    fps: float = 1.0
    needle_size: int = 3
    needle_cell: tuple[int, int] | None = None

    def timestamps(self) -> np.ndarray:
        """Presentation time of every frame in seconds, ``(T,)`` float64."""
        return np.arange(self.num_frames, dtype=np.float64) / self.fps

    def scene_index(self, index: int) -> int:
        """Index of the scene containing frame ``index``."""
        return bisect.bisect_right([s.start for s in self.scenes], index) - 1

    def frame_spec(self, index: int) -> FrameSpec:
        """Description of frame ``index``; a pure function of the plan and ``index``.

        Raises:
            IndexError: if ``index`` is outside ``[0, num_frames)``.
        """
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} is outside this episode's {self.num_frames} frames.")
        if self.needle_start <= index < self.needle_start + self.needle_length:
            if self.needle_cell is None:
                y = x = self.grid / 2 - 0.5  # middle of the cell just up-left of the frame centre
            else:
                y, x = self.needle_cell[0] + 0.5, self.needle_cell[1] + 0.5
            needle = SceneObject(self.needle_shape, self.needle_colour, x, y, self.needle_size)
            return FrameSpec(NEEDLE_BACKGROUND, (needle,))
        scene = self.scenes[self.scene_index(index)]
        objects = []
        for character_index, row, col, phase in scene.cast:
            if index < scene.intro_end and character_index != scene.intro:
                continue
            character = self.characters[character_index]
            wobble = _WOBBLE_AMPLITUDE * math.sin(
                2 * math.pi * (index - scene.start) / _WOBBLE_PERIOD + phase
            )
            objects.append(
                SceneObject(character.shape, character.colour, col + 0.5 + wobble, row + 0.5, DEFAULT_SIZE)
            )
        return FrameSpec(scene.background, tuple(objects))

    def render_frame(self, index: int, size: int = DEFAULT_FRAME_SIZE) -> np.ndarray:
        """Frame ``index`` as ``(size, size, 3)`` uint8."""
        return render_frame(self.frame_spec(index), size, self.grid)

    def frame_labels(self, index: int) -> FrameLabels:
        """Per-cell labels of frame ``index``."""
        return frame_labels(self.frame_spec(index), self.grid)

    def render(self, size: int = DEFAULT_FRAME_SIZE, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``[start, stop)`` as ``(T, size, size, 3)`` uint8 (1,200 frames at 64 px are 14.7 MB)."""
        stop = self.num_frames if stop is None else stop
        return np.stack([self.render_frame(i, size) for i in range(start, stop)])

    def subtitles_at(self, index: int) -> list[str]:
        """Texts of the cues shown during frame ``index`` (``start <= t < end``)."""
        time = index / self.fps
        return [cue.text for cue in self.subtitles if cue.start <= time < cue.end]

    def frame_subtitles(self) -> list[str]:
        """One string per frame for the movie prompt: each cue's text once, after the frame sampled at its start.

        This is the per-frame subtitle list of `llamavid.model.conversation.long_video_inputs` (1 fps sampling).
        """
        texts = [""] * self.num_frames
        for cue in self.subtitles:
            index = min(int(cue.start * self.fps), self.num_frames - 1)
            texts[index] += cue.text
        return texts

    def summary(self) -> str:
        """A deterministic free-form summary (the training target of the summary prompt)."""
        intro = join_phrases([f"{c.name} the {c.colour} {c.shape}" for c in self.characters])
        secret = self.answers["secret_speaker"]
        return (
            f"The video has {len(self.scenes)} scenes. The characters are {intro}, introduced in this order. "
            f"{secret} tells the secret number {self.answers['long_subtitle_needle']} in the "
            f"{self.answers['long_reasoning']} room. "
            f"{_sentence(phrase(self.needle_shape, self.needle_colour))} flashes on a white screen."
        )


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def _scene_lengths(rng: np.random.Generator, total: int, count: int) -> list[int]:
    minimum = max(2, total // (2 * count))
    spare = total - minimum * count
    weights = rng.dirichlet(np.ones(count))
    extra = np.floor(weights * spare).astype(int)
    extra[int(rng.integers(count))] += spare - int(extra.sum())
    return [minimum + int(e) for e in extra]


def make_episode(
    rng: np.random.Generator,
    split: str,
    num_frames: int = DEFAULT_EPISODE_FRAMES,
    grid: int = DEFAULT_GRID,
    answers: dict[str, str] | None = None,
) -> Episode:
    """Plan one long video.

    Every exact answer (one per :data:`LONG_QUESTION_TYPES` key) is drawn uniformly first and the plot is built
    around them, so all answer distributions are flat and one episode serves all six questions.

    Args:
        rng: the item's generator (see :func:`~llamavid.synth.world.item_rng`).
        split: ``"train"`` or ``"heldout"``; train never renders a held-out (shape, colour) pair.
        num_frames: length; at least :data:`MIN_EPISODE_FRAMES`.
        grid: cells per side.
        answers: optionally force some answers (keys of :data:`LONG_QUESTION_TYPES`), e.g. for tests.

    Raises:
        ValueError: on a bad split, length or forced answer.
    """
    check_split(split)
    if num_frames < MIN_EPISODE_FRAMES:
        raise InvalidInputError(
            f"num_frames={num_frames} is too short for an episode; use at least {MIN_EPISODE_FRAMES}."
        )
    chosen = {key: choose(rng, options) for key, options in LONG_QUESTION_TYPES.items()}
    for key, value in (answers or {}).items():
        if key not in LONG_QUESTION_TYPES or value not in LONG_QUESTION_TYPES[key]:
            raise InvalidInputError(
                f"cannot force answer {key}={value!r}; see LONG_QUESTION_TYPES for allowed values."
            )
        chosen[key] = value
    heldout_combo = False

    # 1. Scenes and who is introduced where. Scene 0 always introduces someone: nobody is known before.
    scene_count = int(chosen["long_summary"])
    lengths = _scene_lengths(rng, num_frames, scene_count)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
    character_count = min(int(rng.integers(3, 6)), scene_count)
    intro_scenes = [
        0,
        *sorted(int(s) for s in 1 + rng.choice(scene_count - 1, character_count - 1, replace=False)),
    ]

    # 2. The cast: the last-introduced character carries the plot answer's name; one random character carries
    # the character answer's colour. Shapes and colours are distinct within an episode.
    names = [n for n in NAMES if n != chosen["long_plot"]]
    names = [names[int(i)] for i in rng.permutation(len(names))[: character_count - 1]] + [
        chosen["long_plot"]
    ]
    queried = int(rng.integers(character_count))
    colours: list[str] = [""] * character_count
    shapes: list[str] = [""] * character_count
    shapes[queried], colours[queried], held = pick_target(rng, split, colour=chosen["long_character"])
    heldout_combo |= held
    for index in range(character_count):
        if index == queried:
            continue
        shapes[index], colours[index], held = pick_target(
            rng, split, exclude_shapes={s for s in shapes if s}, exclude_colours={c for c in colours if c}
        )
        heldout_combo |= held
    characters = tuple(Character(n, s, c) for n, s, c in zip(names, shapes, colours, strict=True))

    # 3. Who is on screen in each scene.
    cast_indices: list[list[int]] = []
    intro_of_scene: dict[int, int] = {scene: index for index, scene in enumerate(intro_scenes)}
    for scene in range(scene_count):
        known = [i for i in range(character_count) if intro_scenes[i] < scene]
        intro = intro_of_scene.get(scene, -1)
        extra_count = int(rng.integers(0 if intro >= 0 else 1, min(2, len(known)) + 1))
        extras = [known[int(i)] for i in rng.permutation(len(known))[:extra_count]]
        cast_indices.append(([intro] if intro >= 0 else []) + extras)

    # 4. The secret: a random character says it in a random scene where it is on screen.
    speaker = int(rng.integers(character_count))
    secret_scene = choose(rng, [s for s in range(scene_count) if speaker in cast_indices[s]])

    # 5. Rooms: consecutive scenes differ; the secret scene's room is the reasoning answer.
    backgrounds: list[str] = []
    for scene in range(scene_count):
        if scene == secret_scene:
            backgrounds.append(chosen["long_reasoning"])
            continue
        banned = {backgrounds[-1]} if backgrounds else set()
        if scene + 1 == secret_scene:
            banned.add(chosen["long_reasoning"])
        backgrounds.append(choose(rng, [b for b in BACKGROUNDS if b not in banned]))

    # 6. Scene plans and dialogue.
    scenes: list[ScenePlan] = []
    subtitles: list[Subtitle] = []
    events: list[Event] = []
    secret_line = f"{names[speaker]}: My secret number is {chosen['long_subtitle_needle']}."
    for scene in range(scene_count):
        start, end = starts[scene], starts[scene] + lengths[scene]
        cells = distinct_cells(rng, len(cast_indices[scene]), grid)
        cast = tuple(
            (index, row, col, float(rng.uniform(0, 2 * math.pi)))
            for index, (row, col) in zip(cast_indices[scene], cells, strict=True)
        )
        intro = intro_of_scene.get(scene, -1)
        intro_end = start + max(1, min(6, lengths[scene] // 2)) if intro >= 0 else start
        scenes.append(ScenePlan(start, end, backgrounds[scene], cast, intro, intro_end))
        events.append(
            Event(
                float(start),
                "scene",
                {"background": backgrounds[scene], "cast": [names[i] for i in cast_indices[scene]]},
            )
        )
        if intro >= 0:
            character = characters[intro]
            line = f"{character.name}: Hello, I am {character.name}."
            subtitles.append(Subtitle(float(start), float(intro_end), line))
            events.append(
                Event(
                    float(start),
                    "intro",
                    {"name": character.name, "shape": character.shape, "colour": character.colour},
                )
            )
        # Cue slots after the introduction, 2-3 s long with 2-10 s gaps.
        slots = []
        time = intro_end + int(rng.integers(1, 4))
        while True:
            duration = int(rng.integers(2, 4))
            if time + duration > end:
                break
            slots.append((time, time + duration))
            time += duration + int(rng.integers(2, 11))
        if scene == secret_scene and not slots:
            # The scene is too short for a gap before the cue: the secret fills the rest of the scene
            # (intro_end < end always holds, see intro_end above).
            slots.append((intro_end, end))
        secret_slot = int(rng.integers(len(slots))) if scene == secret_scene else -1
        for slot_index, (cue_start, cue_end) in enumerate(slots):
            if slot_index == secret_slot:
                subtitles.append(Subtitle(float(cue_start), float(cue_end), secret_line))
                events.append(
                    Event(
                        float(cue_start),
                        "secret",
                        {"name": names[speaker], "number": chosen["long_subtitle_needle"]},
                    )
                )
                continue
            talker = choose(rng, cast_indices[scene])
            others = [names[i] for i in cast_indices[scene] if i != talker]
            # Nobody to talk to: only lines that address no one.
            lines = FILLER_LINES if others else tuple(line for line in FILLER_LINES if "{other}" not in line)
            text = choose(rng, lines).format(other=choose(rng, others) if others else "")
            subtitles.append(Subtitle(float(cue_start), float(cue_end), f"{names[talker]}: {text}"))

    # 7. The visual needle: one white frame anywhere in the video.
    needle_shape, needle_colour, held = pick_target(rng, split, colour=chosen["long_visual_needle"])
    heldout_combo |= held
    needle_start = int(rng.integers(num_frames))
    events.append(Event(float(needle_start), "needle", {"shape": needle_shape, "colour": needle_colour}))
    events.sort(key=lambda e: e.time)
    subtitles.sort(key=lambda c: c.start)

    facts = dict(chosen)
    facts.update(
        secret_speaker=names[speaker],
        character_name=names[queried],
        heldout_combo=heldout_combo,
        needle_time=float(needle_start),
        secret_time=next(e.time for e in events if e.kind == "secret"),
    )
    if split == "train" and any((c.shape, c.colour) in HELDOUT_PAIRS for c in characters):
        raise LlamaVidRuntimeError("internal error: a held-out pair leaked into a train episode")
    return Episode(
        num_frames=num_frames,
        characters=characters,
        scenes=tuple(scenes),
        subtitles=tuple(subtitles),
        events=tuple(events),
        needle_start=needle_start,
        needle_length=1,
        needle_shape=needle_shape,
        needle_colour=needle_colour,
        answers=facts,
        grid=grid,
    )


def vary_needle(episode: Episode, rng: np.random.Generator) -> Episode:
    """``episode`` with its needle shape drawn at a random cell and a random size from medium to huge.

    Everything else (the needle's frame, shape and colour, the plot, every answer) is unchanged. Training sets
    with ``varied_needles`` use it so that a reader of the needle screen sees more than one picture per
    (shape, colour) pair: with the needle always at one place and size, the train split holds only 36 needle
    pictures, and a model learnt to tell them apart by shape as much as by colour (docs/tiny-model.md, "v5.15
    plan").
    """
    row, col = (int(v) for v in rng.integers(episode.grid, size=2))
    return replace(episode, needle_size=int(rng.integers(1, 4)), needle_cell=(row, col))


def episode_questions(episode: Episode, id_prefix: str, include_summary: bool = False) -> list[QAItem]:
    """The exact-answer questions of ``episode`` (one per :data:`LONG_QUESTION_TYPES` key), in fixed order.

    Args:
        episode: from :func:`make_episode`.
        id_prefix: item ids are ``f"{id_prefix}-{question_type}"``.
        include_summary: also add the free-form ``"long_summary_caption"`` item (not exact-match scorable).
    """
    facts = episode.answers
    questions = {
        "long_visual_needle": "What colour is the shape on the white screen?",
        "long_subtitle_needle": f"What is {facts['secret_speaker']}'s secret number?",
        "long_character": f"What colour is {facts['character_name']}?",
        "long_plot": "Which character is introduced last?",
        "long_summary": "How many scenes does the video have?",
        "long_reasoning": f"What colour is the room where {facts['secret_speaker']} tells the secret number?",
    }
    meta = {
        "heldout_combo": facts["heldout_combo"],
        "num_frames": episode.num_frames,
        "needle_time": facts["needle_time"],
        "secret_time": facts["secret_time"],
    }
    items = [
        QAItem(
            id=f"{id_prefix}-{question_type}",
            question=question,
            answer=str(facts[question_type]),
            question_type=question_type,
            answer_options=list(LONG_QUESTION_TYPES[question_type]),
            media=episode,
            meta=dict(meta),
        )
        for question_type, question in questions.items()
    ]
    if include_summary:
        items.append(
            QAItem(
                id=f"{id_prefix}-long_summary_caption",
                question=SUMMARY_PROMPT,
                answer=episode.summary(),
                question_type="long_summary_caption",
                answer_options=None,
                media=episode,
                meta=dict(meta),
            )
        )
    return items
