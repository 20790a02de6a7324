"""Multi-turn conversations for stage-2 items: earlier questions about the same image or clip.

Why: people ask several questions about one picture, and LLaVA-style instruction data is multi-turn (the
``<image>`` placeholder sits in the first human turn only). An image or clip is built answer-first for *one*
question; the earlier turns ask what else is exactly knowable from the same medium (the colour of an object
whose shape is unique, the background, the count, how often the background changes, ...), each with its
exact answer and question type, worded like any other question (:mod:`llamavid.synth.phrasing`).

The item's own question stays the *last* turn, so its record's ``answer`` is still the last gpt turn and a
single-turn scorer can ignore the history.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from llamavid.synth._common import QAItem
from llamavid.synth.clips import Clip
from llamavid.synth.phrasing import canonical_templates, render_template, rephrase
from llamavid.synth.render import DEFAULT_GRID, FrameSpec, quadrant_of
from llamavid.synth.world import BACKGROUNDS, QUADRANTS, SIZES

MAX_SCENE_CHANGES = 4
"""The most background changes a clip question asks about (its answer options are 0-4)."""

_Fact = tuple[str, dict[str, str], str]  # (question type, slots, answer)


def image_facts(spec: FrameSpec, grid: int = DEFAULT_GRID) -> list[_Fact]:
    """Every question an image answers exactly, whatever it was built for.

    Objects are asked about by shape or colour only when that shape and colour are unique in the image, so
    every reference is unambiguous.
    """
    facts: list[_Fact] = []
    if 1 <= len(spec.objects) <= 6:
        facts.append(("image_count", {}, str(len(spec.objects))))
    if spec.background in BACKGROUNDS:
        facts.append(("image_background", {}, spec.background))
    if spec.word is not None:
        facts.append(("image_text", {}, spec.word))
    shapes = Counter(o.shape for o in spec.objects)
    colours = Counter(o.colour for o in spec.objects)
    for obj in spec.objects:
        if shapes[obj.shape] != 1 or colours[obj.colour] != 1:
            continue
        named = {"shape": obj.shape, "colour": obj.colour}
        facts += [
            ("image_colour", {"shape": obj.shape}, obj.colour),
            ("image_shape", {"colour": obj.colour}, obj.shape),
            ("image_position", named, QUADRANTS[quadrant_of(obj, grid)]),
            ("image_size", named, SIZES[obj.size]),
        ]
    return facts


def clip_facts(clip: Clip) -> list[_Fact]:
    """Every question a clip answers exactly: background changes, distinct shapes, and its motion or colour
    change when it has one."""
    facts: list[_Fact] = []
    backgrounds = [frame.background for frame in clip.frames]
    changes = sum(a != b for a, b in zip(backgrounds, backgrounds[1:], strict=False))
    if changes <= MAX_SCENE_CHANGES:
        facts.append(("video_scene_change", {}, str(changes)))
    shapes = {o.shape for frame in clip.frames for o in frame.objects}
    if 1 <= len(shapes) <= 6:
        facts.append(("video_count", {}, str(len(shapes))))
    for event in clip.events:
        detail = event.detail
        if event.kind == "move":
            named = {"shape": detail["shape"], "colour": detail["colour"]}
            facts.append(("video_direction", named, detail["direction"]))
        elif event.kind == "colour_change":
            facts.append(("video_colour_change", {"shape": detail["shape"]}, detail["to"]))
    return facts


def media_slots(media: Any) -> dict[str, str]:
    """Slots a question may use beyond its canonical wording: the background of a medium with one background."""
    if isinstance(media, FrameSpec):
        frames: tuple[FrameSpec, ...] = (media,)
    elif isinstance(media, Clip):
        frames = media.frames
    else:
        return {}
    backgrounds = {frame.background for frame in frames}
    if len(backgrounds) == 1 and (background := backgrounds.pop()) in BACKGROUNDS:
        return {"background": background}
    return {}


def earlier_turns(
    item: QAItem,
    count: int,
    rng: np.random.Generator,
    phrasing: str,
    grid: int = DEFAULT_GRID,
) -> list[dict[str, str]]:
    """Up to ``count`` earlier turns about ``item``'s medium, each of a different question type from the item's.

    Returns:
        ``[{"question", "answer", "question_type"}, ...]`` in conversation order (fewer when the medium answers
        fewer distinct questions; none for text-only items and long videos).
    """
    if count <= 0:
        return []
    if isinstance(item.media, FrameSpec):
        facts = image_facts(item.media, grid)
    elif isinstance(item.media, Clip):
        facts = clip_facts(item.media)
    else:
        return []
    # A turn that names the item's answer ("What shape is the white object?" before "What colour is the
    # diamond?") would let the last answer be copied from the conversation instead of read from the medium.
    by_type: dict[str, list[_Fact]] = {}
    for question_type, slots, answer in facts:
        if question_type != item.question_type and item.answer not in slots.values():
            by_type.setdefault(question_type, []).append((question_type, slots, answer))
    types = sorted(by_type)
    chosen = [types[int(i)] for i in rng.permutation(len(types))[:count]]
    extra = media_slots(item.media)
    turns = []
    for question_type in chosen:
        options = by_type[question_type]
        _, slots, answer = options[int(rng.integers(len(options)))]
        canonical = render_template(canonical_templates(question_type)[0], slots)
        question, _ = rephrase(question_type, canonical, phrasing, rng, extra)
        turns.append({"question": question, "answer": answer, "question_type": question_type})
    return turns


__all__ = ["clip_facts", "earlier_turns", "image_facts", "media_slots"]
