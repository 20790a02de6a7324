"""Many ways to ask each question: templates per question type, split into trained and held-out phrasings.

Why: a model trained on one wording per question learns the wording, not the language (the v4 tiny model lost
0.10-0.16 on paraphrases, 0.59 on "color", and scored 0/35 on "Where does the X move?"). Every exact-answer
question type has

* its **canonical** template(s): today's wording, what ``phrasing="canonical"`` (the default) emits, so
  default items stay exactly what they were;
* **train** templates: the canonical ones plus word-order changes, synonyms, "which way / in what direction /
  where does ... go", polite and terse forms;
* **held-out** templates: wordings that no training configuration may use (:func:`heldout_templates`), so a
  score on them measures generalisation to new phrasings.

``phrasing="varied"`` draws a train template and perturbs its wording (American spelling ``color``/``gray``,
a polite prefix or a "thanks" suffix, lower case, a dropped question mark, one typo in a non-vocabulary
word); ``phrasing="heldout_templates"`` draws a held-out template and renders it as written. Answers never
change: only the question text does, from a random stream of its own, so the same item under two phrasings has
the same medium and answer (paired comparisons).

Slots (``{shape}``, ``{colour}``, ``{name}``, ...) are read back from the canonical question (each canonical
template doubles as a pattern), plus ``{background}`` for media with one background throughout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from llamavid.errors import InvalidInputError
from llamavid.synth._common import choose
from llamavid.synth.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    NAMES,
    NUMBER_WORDS,
    QUADRANTS,
    SHAPES,
    SIZES,
    WORDS,
)

PHRASINGS: tuple[str, ...] = ("canonical", "varied", "varied_wide", "heldout_templates")
"""``canonical``: today's wording (default); ``varied``: train templates with perturbations; ``varied_wide``:
``varied`` with the wider train templates of :data:`_WIDE_TEMPLATES` too; ``heldout_templates``: the templates
never used in training, as written."""

CANONICAL_SHARE = 0.25
"""In ``varied`` mode, the probability of keeping the canonical template (the wording the CI scores)."""

_Templates = dict[str, tuple[str, ...]]

# question type -> {"canonical": ..., "train": extra train templates, "heldout": never trained}.
# A canonical template is also a pattern for reading slots back from today's questions; the first canonical
# template of a type is the one used when a slot-filled question has to be rendered canonically.
_TEMPLATES: dict[str, _Templates] = {
    "image_colour": {
        "canonical": ("What colour is the {shape}?",),
        "train": (
            "Which colour is the {shape}?",
            "What colour does the {shape} have?",
            "The {shape} is what colour?",
            "What is the colour of the {shape}?",
            "Tell me the colour of the {shape}.",
            "{shape} colour?",
            "What colour is the {shape} on the {background} background?",
            "Colour of the {shape}?",
            "What colour has the {shape} got?",
        ),
        "heldout": (
            "The {shape} has which colour?",
            "Could you tell me what colour the {shape} is?",
        ),
    },
    "image_shape": {
        "canonical": ("What shape is the {colour} object?",),
        "train": (
            "Which shape is the {colour} object?",
            "What shape is the {colour} thing?",
            "What is the shape of the {colour} object?",
            "The {colour} object is which shape?",
            "What kind of shape is the {colour} one?",
            "Tell me the shape of the {colour} item.",
            "{colour} object shape?",
            "What shape does the {colour} object have?",
            "On the {background} background, what shape is the {colour} object?",
        ),
        "heldout": (
            "What is the {colour} object's shape?",
            "The {colour} object has what shape?",
        ),
    },
    "image_count": {
        "canonical": ("How many objects are there?", "How many shapes are in the image?"),
        "train": (
            "How many objects do you see?",
            "How many shapes are there?",
            "Count the objects.",
            "What is the number of objects in the picture?",
            "How many things are in the image?",
            "Number of shapes?",
            "How many objects are in this picture?",
            "Count the shapes in the image.",
        ),
        "heldout": (
            "Tell me how many objects are in the image.",
            "How many shapes can you count?",
        ),
    },
    "image_position": {
        "canonical": ("Where is the {colour} {shape}?",),
        "train": (
            "In which corner is the {colour} {shape}?",
            "Where is the {colour} {shape} located?",
            "Which part of the image is the {colour} {shape} in?",
            "Where can you see the {colour} {shape}?",
            "Where's the {colour} {shape}?",
            "{colour} {shape} position?",
            "Tell me where the {colour} {shape} is.",
            "In which quadrant is the {colour} {shape}?",
            "Where is the {colour} {shape} on the {background} background?",
        ),
        "heldout": (
            "In what part of the image is the {colour} {shape}?",
            "Where in the picture can the {colour} {shape} be seen?",
        ),
    },
    "image_size": {
        "canonical": ("What size is the {colour} {shape}?",),
        "train": (
            "How big is the {colour} {shape}?",
            "Which size is the {colour} {shape}?",
            "What is the size of the {colour} {shape}?",
            "How large is the {colour} {shape}?",
            "The {colour} {shape} is what size?",
            "{colour} {shape} size?",
            "How big is the {colour} {shape} on the {background} background?",
            "Tell me how big the {colour} {shape} is.",
        ),
        "heldout": (
            "The {colour} {shape} has which size?",
            "Tell me the size of the {colour} {shape}.",
        ),
    },
    "image_text": {
        "canonical": ("What word is written on the screen?", "What does the text say?"),
        "train": (
            "What word is shown?",
            "Which word is written in the image?",
            "What is written at the bottom?",
            "Read the word on the screen.",
            "What does the writing say?",
            "Which word can you read?",
            "Text on screen?",
            "What word appears in the picture?",
        ),
        "heldout": (
            "Which word is on the screen?",
            "Tell me what the text on the screen says.",
        ),
    },
    "image_background": {
        "canonical": ("What colour is the background?",),
        "train": (
            "Which colour is the background?",
            "What is the background colour?",
            "What colour is behind the objects?",
            "The background is what colour?",
            "Background colour?",
            "Tell me the colour of the background.",
            "What is the colour of the backdrop?",
        ),
        "heldout": (
            "What is the colour behind the shapes?",
            "Tell me which colour the background has.",
        ),
    },
    "video_direction": {
        "canonical": ("Which way does the {colour} {shape} move?",),
        "train": (
            "In what direction does the {colour} {shape} move?",
            "Where does the {colour} {shape} go?",
            "Where does the {colour} {shape} move?",
            "Which direction is the {colour} {shape} moving?",
            "Which way is the {colour} {shape} heading?",
            "The {colour} {shape} moves which way?",
            "What direction does the {colour} {shape} travel in?",
            "{colour} {shape} direction?",
            "Tell me which way the {colour} {shape} moves.",
            "In which direction is the {colour} {shape} going?",
            "On the {background} background, which way does the {colour} {shape} move?",
        ),
        "heldout": (
            "Tell me the direction the {colour} {shape} moves in.",
            "Which direction does the {colour} {shape} go?",
        ),
    },
    "video_order": {
        "canonical": ("Which shape appears {which}?",),
        "train": (
            "Which shape shows up {which}?",
            "What shape appears {which}?",
            "What is the {which} shape to appear?",
            "Which shape comes {which}?",
            "Which object appears {which} in the video?",
            "Name the shape that appears {which}.",
            "{which} shape to appear?",
        ),
        "heldout": (
            "Of the shapes, which one appears {which}?",
            "Which shape is shown {which}?",
        ),
    },
    "video_count": {
        "canonical": (
            "How many different shapes appear in the video?",
            "How many distinct shapes are shown?",
        ),
        "train": (
            "How many different shapes are there in the video?",
            "How many kinds of shape appear?",
            "Count the different shapes in the video.",
            "How many distinct shapes appear in the clip?",
            "Number of different shapes?",
            "How many different shapes do you see over the video?",
            "What is the number of distinct shapes shown?",
        ),
        "heldout": (
            "Tell me how many different shapes the video shows.",
            "How many different shapes can you see in the clip?",
        ),
    },
    "video_appear": {
        "canonical": ("Which new shape appears during the video?",),
        "train": (
            "What new shape appears in the video?",
            "Which shape shows up during the video?",
            "Which shape appears later in the clip?",
            "What shape is added during the video?",
            "New shape?",
            "Which shape appears partway through?",
            "Tell me the shape that appears during the video.",
        ),
        "heldout": (
            "What shape is new in the video?",
            "Which shape is added during the clip?",
        ),
    },
    "video_disappear": {
        "canonical": ("What colour is the object that disappears?",),
        "train": (
            "Which colour is the object that disappears?",
            "What colour is the shape that vanishes?",
            "The object that disappears is what colour?",
            "What is the colour of the object that goes away?",
            "Colour of the disappearing object?",
            "Which object disappears? Give its colour.",
            "Tell me the colour of the shape that disappears.",
        ),
        "heldout": (
            "Which colour does the disappearing object have?",
            "Tell me what colour the object that goes away is.",
        ),
    },
    "video_scene_change": {
        "canonical": ("How many times does the background colour change?",),
        "train": (
            "How often does the background colour change?",
            "How many times does the background change colour?",
            "How many background changes are there?",
            "Count the background colour changes.",
            "How many times does the scene change?",
            "Number of background changes?",
            "How many times does the colour of the background change?",
        ),
        "heldout": (
            "How many times is there a background change?",
            "Count how often the background colour changes.",
        ),
    },
    "video_colour_change": {
        "canonical": ("What colour does the {shape} turn into?",),
        "train": (
            "Which colour does the {shape} turn into?",
            "What colour does the {shape} become?",
            "The {shape} changes to which colour?",
            "What colour is the {shape} at the end?",
            "What is the new colour of the {shape}?",
            "{shape} turns into what colour?",
            "Tell me the colour the {shape} changes to.",
        ),
        "heldout": (
            "Tell me the new colour of the {shape}.",
            "Which colour is the {shape} after it changes?",
        ),
    },
    "text_next": {
        "canonical": ("What number comes after {n}?",),
        "train": (
            "Which number comes after {n}?",
            "What is the next number after {n}?",
            "What number follows {n}?",
            "{n} plus one?",
            "What comes after {n}?",
            "Tell me the number after {n}.",
        ),
        "heldout": (
            "Which number follows {n}?",
            "What is one more than {n}?",
        ),
    },
    "text_bigger": {
        "canonical": ("Which is bigger, {a} or {b}?",),
        "train": (
            "Which is larger, {a} or {b}?",
            "Which number is bigger: {a} or {b}?",
            "What is bigger, {a} or {b}?",
            "Bigger of {a} and {b}?",
            "Which is more, {a} or {b}?",
            "Tell me the bigger number, {a} or {b}.",
        ),
        "heldout": (
            "Tell me which is bigger: {a} or {b}.",
            "Of {a} and {b}, which number is larger?",
        ),
    },
    "text_recall": {
        "canonical": ("{facts} What colour is {name}'s ball?",),
        "train": (
            "{facts} Which colour is {name}'s ball?",
            "{facts} What colour ball does {name} have?",
            "{facts} What is the colour of {name}'s ball?",
            "{facts} {name}'s ball is what colour?",
            "{facts} Colour of {name}'s ball?",
            "{facts} Tell me the colour of {name}'s ball.",
        ),
        "heldout": (
            "{facts} Which colour ball has {name} got?",
            "{facts} Tell me what colour ball {name} has.",
        ),
    },
    "text_secret": {
        "canonical": ("{facts} What is {name}'s secret number?",),
        "train": (
            "{facts} Which secret number does {name} tell?",
            "{facts} What secret number does {name} say?",
            "{facts} What number is {name}'s secret?",
            "{facts} {name}'s secret number?",
            "{facts} Tell me {name}'s secret number.",
            "{facts} What is the secret number that {name} mentions?",
        ),
        "heldout": (
            "{facts} Which number does {name} say is secret?",
            "{facts} Tell me the secret number of {name}.",
        ),
    },
    "long_visual_needle": {
        "canonical": ("What colour is the shape on the white screen?",),
        "train": (
            "Which colour is the shape on the white screen?",
            "What colour is the shape shown on the white frame?",
            "A white screen appears once. What colour is its shape?",
            "What is the colour of the shape on the white screen?",
            "White screen shape colour?",
            "Tell me the colour of the shape on the white screen.",
        ),
        "heldout": (
            "Which colour does the shape on the white screen have?",
            "Tell me what colour the shape on the white frame is.",
        ),
    },
    "long_subtitle_needle": {
        "canonical": ("What is {name}'s secret number?",),
        "train": (
            "Which secret number does {name} tell?",
            "What secret number does {name} say?",
            "What number is {name}'s secret?",
            "{name}'s secret number?",
            "Tell me {name}'s secret number.",
            "What is the secret number that {name} mentions?",
        ),
        "heldout": (
            "Which number does {name} say is secret?",
            "Tell me the secret number of {name}.",
        ),
    },
    "long_character": {
        "canonical": ("What colour is {name}?",),
        "train": (
            "Which colour is {name}?",
            "What colour does {name} have?",
            "{name} is what colour?",
            "What is {name}'s colour?",
            "Colour of {name}?",
            "Tell me the colour of {name}.",
        ),
        "heldout": (
            "Tell me what colour {name} is.",
            "{name} has which colour?",
        ),
    },
    "long_plot": {
        "canonical": ("Which character is introduced last?",),
        "train": (
            "Who is introduced last?",
            "Which character appears last?",
            "Who is the last character to be introduced?",
            "Which character is the last one introduced?",
            "Last character introduced?",
            "Tell me who is introduced last.",
        ),
        "heldout": (
            "Which character is the last to be introduced?",
            "Tell me the name of the character introduced last.",
        ),
    },
    "long_summary": {
        "canonical": ("How many scenes does the video have?",),
        "train": (
            "How many scenes are in the video?",
            "How many scenes are there?",
            "Count the scenes in the video.",
            "What is the number of scenes?",
            "Number of scenes?",
            "How many different scenes does the video show?",
        ),
        "heldout": (
            "Tell me how many scenes the video has.",
            "How many scenes can you count in the video?",
        ),
    },
    "long_reasoning": {
        "canonical": ("What colour is the room where {name} tells the secret number?",),
        "train": (
            "Which colour is the room where {name} tells the secret number?",
            "In which colour room does {name} tell the secret number?",
            "Where does {name} tell the secret number? Give the room colour.",
            "What is the colour of the room where {name} says the secret number?",
            "Room colour when {name} tells the secret?",
            "Tell me the colour of the room where {name} tells the secret number.",
        ),
        "heldout": (
            "Tell me the colour of the room in which {name} says the secret number.",
            "{name} tells the secret number in a room of which colour?",
        ),
    },
}

# Train-only questions that name an object by its place instead of its colour or shape (``generate_items(kind=
# "image_place")``): their answers are those of ``image_shape`` and ``image_size``, so they share those types'
# options and scoring, but a reader can only answer them by reading the object's shape or size from the frame
# (see docs/tiny-model.md, "After v5.4"). Keyed ``<question type>_by_place``; not question types themselves.
_PLACE_TEMPLATES: dict[str, _Templates] = {
    "image_shape_by_place": {
        "canonical": ("What shape is the object in the {place}?",),
        "train": (
            "What shape is in the {place}?",
            "Which shape is in the {place}?",
            "What is the shape of the object in the {place}?",
            "The object in the {place} is which shape?",
            "Tell me the shape of the thing in the {place}.",
            "{place} object shape?",
            "What shape do you see in the {place}?",
            "In the {place}, what shape is the object?",
        ),
        "heldout": (
            "The object in the {place} has what shape?",
            "What is the {place} object's shape?",
        ),
    },
    "image_size_by_place": {
        "canonical": ("What size is the object in the {place}?",),
        "train": (
            "How big is the object in the {place}?",
            "How large is the thing in the {place}?",
            "What is the size of the object in the {place}?",
            "The object in the {place} is what size?",
            "In the {place}, how big is the object?",
            "{place} object size?",
            "Tell me how big the object in the {place} is.",
        ),
        "heldout": (
            "The object in the {place} has which size?",
            "Tell me the size of the {place} object.",
        ),
    },
}

# More train templates, drawn only under phrasing="varied_wide" (tiny/v5.11 on), so every earlier curriculum still
# renders exactly the questions it was trained on. Why: on the dev seed, v5.10 read two held-out wordings as
# another question type: "Where in the picture can the {colour} {shape} be seen?" answered with a direction or a
# colour (24 / 97), "Of the shapes, which one appears {which}?" with a count (0 / 85); docs/tiny-model.md "v5.10
# on the dev seed". These give the trained wordings more of the sentence shapes people use for the same question
# ("Where" with a verb that is not a motion; "the shapes" with "which ... first/last"), never a held-out template;
# because they were chosen after that diagnosis, docs/tiny-model.md reports the two types' held-out scores apart.
_WIDE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "image_position": (
        "Where in the image is the {colour} {shape}?",
        "Where can I find the {colour} {shape}?",
        "Where does the {colour} {shape} sit in the picture?",
        "Where is the {colour} {shape} placed in the frame?",
        "Where would I look for the {colour} {shape}?",
        "Where is the {colour} {shape} drawn?",
        "Where on the {background} background can you spot the {colour} {shape}?",
    ),
    "video_order": (
        "Which of the shapes is the {which} one to appear?",
        "Among all the shapes, which shows up {which}?",
        "Which one of the shapes comes {which} in the video?",
        "The shapes appear one after another. Which one is {which}?",
        "Which shape did the video show {which}?",
        "Looking at the shapes in order, which one is {which}?",
    ),
}

# Wrappers that fit any direct question ("varied" and "varied_wide").
_POLITE_PREFIXES: tuple[str, ...] = (
    "Please tell me: ",
    "Could you help? ",
    "Quick question: ",
    "Hey, ",
    "Please answer: ",
    "I have a question. ",
)
_SUFFIXES: tuple[str, ...] = (
    " Please.",
    " Thanks!",
    " Thank you.",
    " Answer in one word.",
    " Please answer briefly.",
)
_SPELLING: dict[str, str] = {"colour": "color", "Colour": "Color", "grey": "gray", "Grey": "Gray"}
# Perturbation probabilities in "varied" mode (independent of each other).
_P_AMERICAN, _P_PREFIX, _P_SUFFIX, _P_LOWER, _P_NO_MARK, _P_TYPO = 0.3, 0.15, 0.1, 0.15, 0.1, 0.15

# Words a typo never touches: everything an answer or a slot can be, and the words that decide the answer.
_PROTECTED: frozenset[str] = (
    frozenset(
        w.lower()
        for group in (SHAPES, COLOURS, BACKGROUNDS, SIZES, WORDS, NAMES, DIRECTIONS, NUMBER_WORDS)
        for w in group
    )
    | frozenset(w for q in QUADRANTS for w in q.split())
    | {"first", "last", "new", "white"}
)

_SLOT_RE = re.compile(r"\{(\w+)\}")
_TEMPLATE_WORD_RE = re.compile(r"(?<![{\w])[A-Za-z]{4,}(?![}\w])")
_SLOT_VALUE = {"facts": r".+?", "which": r"first|last"}


def phrasing_question_types() -> tuple[str, ...]:
    """Every question type with templates (all exact-answer types)."""
    return tuple(_TEMPLATES)


def place_template_keys() -> tuple[str, ...]:
    """Template keys of the questions that name an object by its place (``"image_shape_by_place"``, ...).

    Every function here that takes a question type also takes one of these.
    """
    return tuple(_PLACE_TEMPLATES)


def _check(question_type: str) -> _Templates:
    templates = _TEMPLATES.get(question_type) or _PLACE_TEMPLATES.get(question_type)
    if templates is None:
        raise InvalidInputError(
            f"question_type={question_type!r} has no phrasing templates; expected one of "
            f"{list(_TEMPLATES) + list(_PLACE_TEMPLATES)}."
        )
    return templates


def canonical_templates(question_type: str) -> tuple[str, ...]:
    """Today's wording(s) of ``question_type`` (what the default ``phrasing="canonical"`` emits)."""
    return _check(question_type)["canonical"]


def _variants(question_type: str, wide: bool) -> tuple[str, ...]:
    """The non-canonical train templates of ``question_type``, plus the ``varied_wide`` ones if ``wide``."""
    variants = _check(question_type)["train"]
    return variants + _WIDE_TEMPLATES.get(question_type, ()) if wide else variants


def train_templates(question_type: str, *, wide: bool = False) -> tuple[str, ...]:
    """Every template training may use for ``question_type``: the canonical ones first, then the variants.

    ``wide=True`` adds the templates only ``phrasing="varied_wide"`` draws.
    """
    return canonical_templates(question_type) + _variants(question_type, wide)


def heldout_templates(question_type: str) -> tuple[str, ...]:
    """Templates of ``question_type`` that no training configuration uses (disjoint from :func:`train_templates`,
    wide or not)."""
    return _check(question_type)["heldout"]


def check_phrasing(phrasing: str) -> str:
    """Validate a phrasing mode name.

    Raises:
        InvalidInputError: if ``phrasing`` is not one of :data:`PHRASINGS`.
    """
    if phrasing not in PHRASINGS:
        raise InvalidInputError(f"phrasing={phrasing!r} is unknown; expected one of {PHRASINGS}.")
    return phrasing


def _pattern(template: str) -> re.Pattern[str]:
    parts = _SLOT_RE.split(template)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_SLOT_VALUE.get(part, r'[^?.,]+?')})"
        for i, part in enumerate(parts)
    )
    return re.compile(regex + r"\Z", re.DOTALL)


def read_slots(question_type: str, question: str) -> dict[str, str]:
    """The slot values of a canonical ``question`` (``{"shape": "star"}`` for "What colour is the star?").

    Raises:
        InvalidInputError: if ``question`` matches none of the type's canonical templates.
    """
    for template in canonical_templates(question_type):
        found = _pattern(template).match(question)
        if found:
            return found.groupdict()
    raise InvalidInputError(
        f"{question!r} is not a canonical {question_type} question; expected one of "
        f"{list(canonical_templates(question_type))}."
    )


def _typo(word: str, rng: np.random.Generator) -> str:
    position = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(3))
    if kind == 0:  # swap two neighbouring letters
        return word[:position] + word[position + 1] + word[position] + word[position + 2 :]
    if kind == 1:  # drop a letter
        return word[:position] + word[position + 1 :]
    return word[:position] + word[position] + word[position:]  # double a letter


def _perturb_template(template: str, rng: np.random.Generator) -> str:
    """Lower case and one typo, on the template's own words (slots are filled in afterwards, untouched)."""
    if rng.random() < _P_LOWER:
        template = template.lower()  # slot names are lower case already
    if rng.random() < _P_TYPO:
        words = [m for m in _TEMPLATE_WORD_RE.finditer(template) if m.group().lower() not in _PROTECTED]
        if words:
            match = words[int(rng.integers(len(words)))]
            template = template[: match.start()] + _typo(match.group(), rng) + template[match.end() :]
    return template


def render_template(template: str, slots: Mapping[str, str], rng: np.random.Generator | None = None) -> str:
    """Fill ``template``'s slots; with ``rng``, first perturb its own words (case, one typo), never the slots.

    A template that starts with a slot gets that value capitalised ("{shape} colour?" -> "Star colour?"),
    except names and fact sentences, which are left as they are.

    Raises:
        InvalidInputError: if a slot the template names is missing.
    """
    if rng is not None:
        template = _perturb_template(template, rng)
    parts = _SLOT_RE.split(template)
    out = []
    for index, part in enumerate(parts):
        if index % 2 == 0:
            out.append(part)
            continue
        if part not in slots:
            raise InvalidInputError(f"template {template!r} needs slot {part!r}; got {sorted(slots)}.")
        value = str(slots[part])
        if index == 1 and parts[0] == "" and part not in ("facts", "name"):
            value = value[:1].upper() + value[1:]
        out.append(value)
    return "".join(out)


def usable(template: str, slots: Mapping[str, Any]) -> bool:
    """Whether every slot ``template`` names is available."""
    return all(name in slots for name in _SLOT_RE.findall(template))


def rephrase(
    question_type: str,
    question: str,
    phrasing: str,
    rng: np.random.Generator,
    extra_slots: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Reword a canonical ``question`` of ``question_type`` under ``phrasing``.

    Args:
        question_type: a key of the templates (every exact-answer type).
        question: the canonical question (as generated today).
        phrasing: one of :data:`PHRASINGS`.
        rng: the item's phrasing stream (independent of the medium's stream).
        extra_slots: slots that are not in the canonical question (``background``); templates needing a slot
            that is missing are skipped.

    Returns:
        ``(question, template)``: the new wording and the template it came from.
    """
    check_phrasing(phrasing)
    if phrasing == "canonical":
        return question, ""
    slots = dict(extra_slots or {})
    slots.update(read_slots(question_type, question))
    if phrasing == "heldout_templates":
        candidates = [t for t in heldout_templates(question_type) if usable(t, slots)]
        template = choose(rng, candidates)
        return render_template(template, slots), template
    if rng.random() < CANONICAL_SHARE:
        candidates = [t for t in canonical_templates(question_type) if usable(t, slots)]
    else:
        pool = _variants(question_type, wide=phrasing == "varied_wide")
        candidates = [t for t in pool if usable(t, slots)]
    template = choose(rng, candidates)
    text = render_template(template, slots, rng)
    if rng.random() < _P_AMERICAN:
        text = re.sub(r"\b(" + "|".join(_SPELLING) + r")\b", lambda m: _SPELLING[m.group()], text)
    if rng.random() < _P_NO_MARK and text.endswith("?"):
        text = text[:-1]
    if rng.random() < _P_PREFIX:
        prefix = choose(rng, _POLITE_PREFIXES)
        first_word = re.match(r"\w*", text)
        if prefix.endswith(", ") and first_word and first_word.group() not in NAMES:
            text = text[:1].lower() + text[1:]  # "Hey, what colour ..."
        text = prefix + text
    if rng.random() < _P_SUFFIX and text.endswith(("?", ".")):
        text = text + choose(rng, _SUFFIXES)
    return text, template


__all__ = [
    "CANONICAL_SHARE",
    "PHRASINGS",
    "canonical_templates",
    "check_phrasing",
    "heldout_templates",
    "phrasing_question_types",
    "place_template_keys",
    "read_slots",
    "render_template",
    "rephrase",
    "train_templates",
    "usable",
]
