"""Question phrasings, multi-turn items, balanced needles and clip lengths (opt-in layers over the same items)."""

import hashlib
import json
import re
from collections import Counter

import pytest

from llamavid.errors import InvalidInputError
from llamavid.synth import generate_items, item_to_record, regenerate_episode, write_dataset
from llamavid.synth.clips import VIDEO_QUESTION_TYPES
from llamavid.synth.dataset import QUESTION_TYPES
from llamavid.synth.phrasing import (
    PHRASINGS,
    canonical_templates,
    heldout_templates,
    phrasing_question_types,
    place_template_keys,
    read_slots,
    train_templates,
)
from llamavid.synth.render import FrameSpec, quadrant_of
from llamavid.synth.world import NEEDLE_COLOURS, NUMBER_WORDS, QUADRANTS, SIZES

SMALL = {"clip_frames": (5, 12), "episode_frames": 70}


def _fingerprint(split: str, kind: str, **options) -> str:
    rows = []
    for item in generate_items(split, 21, seed=3, kind=kind, **SMALL, **options):
        media = item.media
        if media is None:
            described = None
        elif isinstance(media, FrameSpec):
            described = repr(media)
        else:
            described = (
                repr(getattr(media, "frames", None))
                + repr(media.subtitles)
                + repr(getattr(media, "scenes", None))
            )
        meta = json.dumps(item.meta, sort_keys=True, default=repr)
        rows.append(
            [item.id, item.question, item.answer, item.question_type, item.answer_options, described, meta]
        )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# Computed with the generator as it was before phrasings, turns and balanced needles existed (commit 826c314):
# the defaults must keep emitting exactly those items.
BEFORE = {
    "heldout/image_qa": "7e646b2862ba502c",
    "heldout/video_qa": "0279b8935e006924",
    "heldout/text_qa": "8a3fc71a912f4de5",
    "heldout/long_qa": "3993c2656b3acc76",
    "heldout/stage2": "fe495a59c4b746df",
    "heldout/stage1": "18137395f7dad4e6",
    "train/stage2": "401e24a7a11339f1",
    "train/stage3": "85a8bc8bf5f33b87",
}


@pytest.mark.parametrize("key", sorted(BEFORE))
def test_defaults_emit_the_items_they_always_did(key):
    split, kind = key.split("/")
    assert _fingerprint(split, kind) == BEFORE[key]
    # Spelled-out defaults are the same call.
    assert _fingerprint(split, kind, phrasing="canonical", turns=1, balanced_needles=False) == BEFORE[key]


def _normal(template: str) -> str:
    return re.sub(r"[^a-z{} ]", "", template.lower()).strip()


def test_every_exact_answer_type_has_disjoint_train_and_heldout_templates():
    assert set(phrasing_question_types()) == set(QUESTION_TYPES)
    for question_type in QUESTION_TYPES:
        train, heldout = train_templates(question_type, wide=True), heldout_templates(question_type)
        assert set(train_templates(question_type)) <= set(train)
        assert set(canonical_templates(question_type)) <= set(train)
        assert len(train) >= 6 and len(heldout) >= 2, question_type
        assert not {_normal(t) for t in train} & {_normal(t) for t in heldout}, question_type
        assert len(set(train)) == len(train) and len(set(heldout)) == len(heldout)


def test_place_questions_have_their_own_train_and_heldout_templates():
    assert not set(place_template_keys()) & set(QUESTION_TYPES)
    for key in place_template_keys():
        train, heldout = train_templates(key), heldout_templates(key)
        assert len(train) >= 6 and len(heldout) >= 2
        assert not {_normal(t) for t in train} & {_normal(t) for t in heldout}
        assert all("{place}" in t and "{colour}" not in t and "{shape}" not in t for t in train + heldout)
    base = generate_items("train", 40, seed=3, kind="image_place")
    assert {item.question_type for item in base} == {"image_shape", "image_size"}
    for phrasing in ("varied", "heldout_templates"):
        items = generate_items("train", 40, seed=3, kind="image_place", phrasing=phrasing)
        for old, new in zip(base, items, strict=True):
            assert (old.answer, old.media) == (new.answer, new.media)
            pool = train_templates if phrasing == "varied" else heldout_templates
            assert new.meta["template"] in pool(f"{new.question_type}_by_place")
            assert read_slots(f"{old.question_type}_by_place", old.question)["place"] in QUADRANTS


def test_canonical_questions_read_back_their_slots():
    assert read_slots("video_direction", "Which way does the red star move?") == {
        "colour": "red",
        "shape": "star",
    }
    assert read_slots("video_order", "Which shape appears last?") == {"which": "last"}
    slots = read_slots("text_recall", "Ann has a red ball. Bob has a blue ball. What colour is Bob's ball?")
    assert slots == {"facts": "Ann has a red ball. Bob has a blue ball.", "name": "Bob"}
    with pytest.raises(InvalidInputError, match="not a canonical image_colour question"):
        read_slots("image_colour", "Which colour is the star?")
    for kind in ("image_qa", "video_qa", "text_qa", "text_copy", "long_qa"):
        for item in generate_items("train", 28, seed=5, kind=kind, **SMALL):
            read_slots(item.question_type, item.question)  # every default question is canonical


def _same_item(item):
    """What a rewording must leave alone: the item, its answer, its question type and its medium."""
    return item.id, item.answer, item.question_type, item.media


@pytest.mark.parametrize("kind", ["image_qa", "video_qa", "text_qa", "text_copy", "long_qa"])
def test_phrasings_change_only_the_question(kind):
    base = generate_items("heldout", 42, seed=2, kind=kind, **SMALL)
    for phrasing in ("varied", "heldout_templates"):
        items = generate_items("heldout", 42, seed=2, kind=kind, phrasing=phrasing, **SMALL)
        for old, new in zip(base, items, strict=True):
            assert _same_item(old) == _same_item(new)
            assert new.meta["phrasing"] == phrasing
            pool = train_templates if phrasing == "varied" else heldout_templates
            assert new.meta["template"] in pool(new.question_type)
        if phrasing == "heldout_templates":
            assert all(old.question != new.question for old, new in zip(base, items, strict=True))


# `varied` as it was when `varied_wide` was added (commit c732b0f): every curriculum before v5.11 trains on these.
VARIED_BEFORE_WIDE = {
    "image_qa": "a20f65dede393bcd",
    "video_qa": "66534e2eddce1973",
    "image_crowded": "b3c2b50ba0ac0c53",
    "stage2": "0ec2f18ea4e85e16",
}


@pytest.mark.parametrize("kind", sorted(VARIED_BEFORE_WIDE))
def test_varied_wording_is_unchanged_by_the_wide_templates(kind):
    assert _fingerprint("train", kind, phrasing="varied", turns=(1, 3)) == VARIED_BEFORE_WIDE[kind]


def test_varied_wide_rewords_only_position_and_order_questions_with_its_wider_templates():
    widened = {"image_position", "video_order"}
    for question_type in QUESTION_TYPES:
        extra = set(train_templates(question_type, wide=True)) - set(train_templates(question_type))
        assert bool(extra) == (question_type in widened), question_type
    used: Counter[str] = Counter()
    for kind in ("image_qa", "video_qa"):
        varied = generate_items("train", 400, seed=4, kind=kind, phrasing="varied", **SMALL)
        wide = generate_items("train", 400, seed=4, kind=kind, phrasing="varied_wide", **SMALL)
        for old, new in zip(varied, wide, strict=True):
            assert _same_item(old) == _same_item(new)
            assert new.meta["template"] in train_templates(new.question_type, wide=True)
            if new.question_type not in widened:
                assert new.question == old.question
            elif new.meta["template"] not in train_templates(new.question_type):
                used[new.question_type] += 1
    assert used["image_position"] >= 10 and used["video_order"] >= 10, used


def test_varied_phrasing_covers_spellings_typos_terse_and_polite_forms():
    items = [
        item
        for kind in ("image_qa", "video_qa", "long_qa")
        for item in generate_items("train", 700, seed=0, kind=kind, phrasing="varied", **SMALL)
    ]
    text = "\n".join(item.question for item in items)
    assert "color" in text and "colour" in text
    assert re.search(r"^(Please tell me|Quick question|Hey|Could you help)", text, re.M)
    assert re.search(r"(Thanks!|Please\.)$", text, re.M)
    assert "Where does the" in text and "In what direction does the" in text
    templates = Counter((item.question_type, item.meta["template"]) for item in items)
    for question_type in ("image_colour", "video_direction", "long_subtitle_needle"):
        used = {t for (q, t) in templates if q == question_type}
        assert used == set(train_templates(question_type)), question_type
    # Typos: a question word outside every template, that is not a slot value.
    vocabulary = {
        w.lower() for q in QUESTION_TYPES for t in train_templates(q) for w in re.findall(r"[A-Za-z]+", t)
    }
    vocabulary |= {w.lower() for item in items for w in re.findall(r"[A-Za-z]+", item.answer)}
    vocabulary |= {
        "color",
        "thanks",
        "thank",
        "please",
        "answer",
        "briefly",
        "quick",
        "hey",
        "could",
        "help",
        "tell",
    }
    assert any(
        w.lower() not in vocabulary
        and w.lower() not in {"red", "orange", "yellow", "green", "cyan", "blue", "purple"}
        for item in items
        for w in re.findall(r"[A-Za-z]+", item.question)
    )
    # No trained wording is ever a held-out one.
    heldout = {_normal(t) for q in QUESTION_TYPES for t in heldout_templates(q)}
    assert not {_normal(t) for _, t in templates} & heldout


def test_phrasing_and_turns_are_checked():
    with pytest.raises(InvalidInputError, match="phrasing='fancy' is unknown"):
        generate_items("train", 1, phrasing="fancy")
    with pytest.raises(InvalidInputError, match="turns="):
        generate_items("train", 1, turns=0)
    assert PHRASINGS[0] == "canonical"


def test_multi_turn_items_ask_about_the_same_medium_and_end_with_the_item_question():
    items = generate_items("train", 60, seed=1, kind="stage2", turns=(2, 4), phrasing="varied", **SMALL)
    multi = [item for item in items if item.earlier_turns]
    assert len(multi) > 30
    assert max(len(item.earlier_turns) for item in items) == 3
    assert all(not item.earlier_turns for item in items if item.media is None)
    for item in multi:
        record = item_to_record(item, "media.png")
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(item.earlier_turns) + 1)
        assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1
        assert turns[-2]["value"] == item.question and turns[-1]["value"] == record["answer"] == item.answer
        types = [turn["question_type"] for turn in item.earlier_turns]
        assert item.question_type not in types and len(set(types)) == len(types)
        for turn in item.earlier_turns:
            assert turn["answer"] in QUESTION_TYPES[turn["question_type"]]
            if isinstance(item.media, FrameSpec):
                _check_image_turn(item.media, turn)
    # Without turns the records are single-turn, as before.
    assert all(not item.earlier_turns for item in generate_items("train", 20, seed=1, kind="stage2", **SMALL))


def _check_image_turn(spec: FrameSpec, turn: dict) -> None:
    kind, answer = turn["question_type"], turn["answer"]
    if kind == "image_count":
        assert int(answer) == len(spec.objects)
    elif kind == "image_background":
        assert answer == spec.background
    elif kind in ("image_position", "image_size"):
        question = turn["question"].lower()
        objects = [o for o in spec.objects if o.colour in question and o.shape in question]
        assert len(objects) == 1
        expected = QUADRANTS[quadrant_of(objects[0])] if kind == "image_position" else SIZES[objects[0].size]
        assert answer == expected


def test_balanced_needles_tell_every_secret_digit_equally_often():
    items = generate_items("train", 6 * 20, seed=4, kind="long_qa", episode_frames=60, balanced_needles=True)
    digits = Counter(i.answer for i in items if i.question_type == "long_subtitle_needle")
    assert digits == Counter(dict.fromkeys(NUMBER_WORDS, 2))
    colours = Counter(i.answer for i in items[: 6 * 14] if i.question_type == "long_visual_needle")
    assert colours == Counter(dict.fromkeys(NEEDLE_COLOURS, 2))
    # The answers the needles give are what the episode shows and says, and the record regenerates it.
    needle = next(i for i in items if i.question_type == "long_subtitle_needle")
    episode = regenerate_episode(needle.meta["synth"])
    assert episode == needle.media
    assert any(f"secret number is {needle.answer}." in cue.text for cue in episode.subtitles)
    # Unbalanced (the default) draws the same episodes otherwise: only the needle answers differ.
    plain = generate_items("train", 6, seed=4, kind="long_qa", episode_frames=60)
    assert [i.answer for i in plain if i.question_type == "long_plot"] == [
        i.answer for i in items[:6] if i.question_type == "long_plot"
    ]


def test_varied_needles_move_only_the_needle_shape():
    """``varied_needles`` draws the needle at a random cell and size; everything else of the episode, its questions
    and answers stay, the media ids change (a different picture), and the record regenerates the varied episode."""
    from dataclasses import replace

    from llamavid.synth.world import COLOURS, SHAPES

    options = {
        "seed": 4,
        "kind": "long_qa",
        "episode_frames": 60,
        "balanced_needles": True,
        "phrasing": "varied",
    }
    plain = generate_items("train", 6 * 30, **options)
    varied = generate_items("train", 6 * 30, **options, varied_needles=True)
    assert [(i.question, i.answer, i.question_type) for i in varied] == [
        (i.question, i.answer, i.question_type) for i in plain
    ]
    episodes = [(a.media, b.media) for a, b in zip(plain[::6], varied[::6], strict=True)]
    assert all(replace(new, needle_size=3, needle_cell=None) == old for old, new in episodes)
    assert len({(new.needle_size, new.needle_cell) for _, new in episodes}) > 10
    assert {new.needle_size for _, new in episodes} == {1, 2, 3}
    for item in varied[::6]:
        assert item.meta["media_id"].endswith("-vn") and regenerate_episode(item.meta["synth"]) == item.media
        episode = item.media
        labels = episode.frame_labels(episode.needle_start)
        row, col = episode.needle_cell
        assert labels.background == -1
        assert SHAPES[labels.shape[row, col] - 1] == episode.needle_shape
        assert COLOURS[labels.colour[row, col] - 1] == episode.needle_colour
        assert SIZES[labels.size[row, col] - 1] == SIZES[episode.needle_size]
        assert int((labels.shape > 0).sum()) == 1
    # The default (and every eval) keeps the one big needle in the cell up-left of the centre.
    assert all(old.needle_cell is None and old.needle_size == 3 for old, _ in episodes)


@pytest.mark.parametrize("frames", [5, 60])
def test_clips_of_5_to_60_frames_for_every_type(frames):
    items = generate_items("train", len(VIDEO_QUESTION_TYPES), seed=0, kind="video_qa", clip_frames=frames)
    assert {item.question_type for item in items} == set(VIDEO_QUESTION_TYPES)
    assert all(item.media.num_frames == frames for item in items)
    lengths = {
        i.media.num_frames for i in generate_items("train", 200, seed=0, kind="video_qa", clip_frames=(5, 60))
    }
    assert min(lengths) <= 7 and max(lengths) >= 55


def test_write_dataset_passes_the_options_through(tmp_path):
    path = write_dataset(
        tmp_path, "train", 10, 0, "stage2", write_media=False, phrasing="heldout_templates", turns=3, **SMALL
    )
    records = json.loads(path.read_text())
    items = generate_items("train", 10, 0, "stage2", phrasing="heldout_templates", turns=3, **SMALL)
    assert [r["conversations"][-2]["value"].removeprefix("<image>\n") for r in records] == [
        i.question for i in items
    ]
    assert any(len(r["conversations"]) > 2 for r in records)
