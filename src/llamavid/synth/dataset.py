"""Item generation, LLaVA-style JSON records (docs/architecture.md §9) and writing media to disk.

Items are generated from ``(split, kind, seed, index)`` alone, so a record also carries ``synth`` (its
generator coordinates) and a loader may regenerate frames instead of reading files.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llamavid.errors import DependencyError, InvalidInputError
from llamavid.synth._common import QAItem
from llamavid.synth.clips import (
    DEFAULT_CLIP_FRAMES,
    VIDEO_QUESTION_TYPES,
    Clip,
    Subtitle,
    make_clip_caption,
    make_clip_question,
)
from llamavid.synth.episodes import (
    DEFAULT_EPISODE_FRAMES,
    LONG_QUESTION_TYPES,
    Episode,
    episode_questions,
    make_episode,
    vary_needle,
)
from llamavid.synth.images import (
    CROWDED_DISTRACTORS,
    CROWDED_QUESTION_TYPES,
    IMAGE_QUESTION_TYPES,
    PLACE_QUESTION_TYPES,
    make_image_caption,
    make_image_question,
    make_place_question,
)
from llamavid.synth.phrasing import check_phrasing, rephrase
from llamavid.synth.render import (
    DEFAULT_FRAME_SIZE,
    DEFAULT_GRID,
    FrameSpec,
    frame_labels,
    random_frame_spec,
    render_frame,
)
from llamavid.synth.text import TEXT_COPY_TYPES, TEXT_QUESTION_TYPES, make_text_question
from llamavid.synth.turns import earlier_turns, media_slots
from llamavid.synth.world import NEEDLE_COLOURS, NUMBER_WORDS, check_split, item_purpose_rng, item_rng

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = (
    "image_caption",
    "video_caption",
    "image_qa",
    "image_place",
    "image_crowded",
    "video_qa",
    "text_qa",
    "text_copy",
    "long_qa",
    "stage1",
    "stage2",
    "stage3",
)
"""Dataset kinds. ``stage1`` = image and video captions (alternating); ``stage2`` = image QA, video QA and
text-only QA (5 : 4 : 1); ``stage3`` = long-video QA plus one free-form summary per episode. ``image_place``
(a training stream) asks shape and size of the object in a named quadrant instead of naming its colour;
``image_crowded`` (a training stream) asks shape and size on scenes of 4-6 objects instead of 2-4."""

VIDEO_FORMATS: tuple[str, ...] = ("npz", "mp4", "mkv")
"""``npz``: exact uint8 frames (``frames`` (T, H, W, 3) and ``timestamps`` (T,)); ``mp4``: H.264 yuv420p, lossy
like real videos; ``mkv``: FFV1 in packed RGB (bgr0), lossless and decodable by any PyAV/FFmpeg reader."""

DEFAULT_ITEMS: dict[str, int] = {"train": 10_000, "heldout": 1_000}

QUESTION_TYPES: dict[str, list[str]] = {
    **IMAGE_QUESTION_TYPES,
    **VIDEO_QUESTION_TYPES,
    **TEXT_QUESTION_TYPES,
    **LONG_QUESTION_TYPES,
    **TEXT_COPY_TYPES,
}
"""Every exact-answer question type and its answer options (chance level = 1 / number of options)."""

FREE_FORM_TYPES: tuple[str, ...] = ("image_caption", "video_caption", "long_summary_caption")

_STAGE2_SCHEDULE = ("image_qa",) * 5 + ("video_qa",) * 4 + ("text_qa",)


def _sub_kind_sequence(kind: str, n: int) -> list[tuple[str, int]]:
    """(sub-kind, index within that sub-kind) per item, so a mixed kind reuses the single-kind items."""
    if kind == "stage1":
        schedule: tuple[str, ...] = ("image_caption", "video_caption")
    elif kind == "stage2":
        schedule = _STAGE2_SCHEDULE
    else:
        schedule = (kind,)
    counters: Counter[str] = Counter()
    sequence = []
    for position in range(n):
        sub_kind = schedule[position % len(schedule)]
        sequence.append((sub_kind, counters[sub_kind]))
        counters[sub_kind] += 1
    return sequence


def generate_items(
    split: str,
    n: int,
    seed: int = 0,
    kind: str = "image_qa",
    grid: int = DEFAULT_GRID,
    clip_frames: int | tuple[int, int] = DEFAULT_CLIP_FRAMES,
    episode_frames: int = DEFAULT_EPISODE_FRAMES,
    phrasing: str = "canonical",
    turns: int | tuple[int, int] = 1,
    balanced_needles: bool = False,
    varied_needles: bool = False,
) -> list[QAItem]:
    """Generate ``n`` items of ``kind`` in memory (media as descriptions; nothing is rendered).

    Question types rotate round-robin inside each kind, so every type gets the same number of items, and each
    answer is drawn uniformly within its type. The defaults give exactly the items this function always gave;
    ``phrasing``, ``turns`` and ``balanced_needles`` are opt-in layers drawn from streams of their own, so they
    change only the question wording, the earlier turns or the needle answers.

    Args:
        split: ``"train"`` or ``"heldout"``.
        n: number of items.
        seed: selects an independent dataset; items are a pure function of ``(split, kind, seed, index)``.
        kind: one of :data:`KINDS`.
        grid: cells per side.
        clip_frames: clip length (or inclusive range) for video items, 5-60.
        episode_frames: long-video length, ≥ 60 (1,200 by default).
        phrasing: question wording, one of :data:`~llamavid.synth.phrasing.PHRASINGS`: ``"canonical"``
            (today's), ``"varied"`` (train templates, perturbed), ``"varied_wide"`` (``varied`` with more train
            templates, tiny/v5.11 on) or ``"heldout_templates"`` (never trained).
            Answers and media do not change. Captions and the long-video summary prompt keep their prompts.
        turns: conversation length of image and clip questions (or an inclusive range drawn per item): the
            item's question comes last, after up to ``turns - 1`` earlier questions about the same medium
            (:mod:`llamavid.synth.turns`). Text and long-video items stay single-turn.
        balanced_needles: long videos only: every block of 10 consecutive episodes tells each secret digit
            exactly once and every block of 7 shows each needle colour exactly once (instead of independent
            uniform draws, which leave a 50-episode set with some digits rare).
        varied_needles: long videos only: the visual needle's shape is drawn at a random cell and size
            (:func:`~llamavid.synth.episodes.vary_needle`) instead of one big shape in the middle; every answer
            and every other frame stay as they are. The episodes get their own media ids (suffix ``-vn``).

    Raises:
        ValueError: on an unknown split, kind or phrasing, a negative ``n`` or a bad ``turns``.
    """
    check_split(split)
    check_phrasing(phrasing)
    if kind not in KINDS:
        raise InvalidInputError(f"kind={kind!r} is unknown; expected one of {KINDS}.")
    if n < 0:
        raise InvalidInputError(f"n must be non-negative, got {n}.")
    low_turns, high_turns = (turns, turns) if isinstance(turns, int) else turns
    if not 1 <= low_turns <= high_turns:
        raise InvalidInputError(f"turns={turns!r} must be a count >= 1 or an inclusive range (low, high).")
    if kind in ("long_qa", "stage3"):
        return _long_items(
            split, n, seed, kind == "stage3", grid, episode_frames, phrasing, balanced_needles, varied_needles
        )
    items = []
    for sub_kind, index in _sub_kind_sequence(kind, n):
        rng = item_rng(split, sub_kind, seed, index)
        item_id = f"{split}-{sub_kind}-s{seed}-{index:06d}"
        if sub_kind == "image_qa":
            types = list(IMAGE_QUESTION_TYPES)
            item = make_image_question(rng, split, types[index % len(types)], item_id, grid)
        elif sub_kind == "image_crowded":
            types = list(CROWDED_QUESTION_TYPES)
            item = make_image_question(
                rng, split, types[index % len(types)], item_id, grid, distractors=CROWDED_DISTRACTORS
            )
        elif sub_kind == "image_place":
            types = list(PLACE_QUESTION_TYPES)
            item = make_place_question(rng, split, types[index % len(types)], item_id, grid)
        elif sub_kind == "image_caption":
            item = make_image_caption(rng, split, item_id, grid)
        elif sub_kind == "video_qa":
            types = list(VIDEO_QUESTION_TYPES)
            item = make_clip_question(rng, split, types[index % len(types)], item_id, clip_frames, grid)
        elif sub_kind == "video_caption":
            item = make_clip_caption(rng, split, item_id, clip_frames, grid)
        else:
            types = list(TEXT_QUESTION_TYPES if sub_kind == "text_qa" else TEXT_COPY_TYPES)
            item = make_text_question(rng, split, types[index % len(types)], item_id)
        item.meta.update(
            media_id=item_id, synth={"split": split, "stream": sub_kind, "seed": seed, "index": index}
        )
        if item.answer_options is not None and phrasing != "canonical":
            _reword(item, phrasing, item_purpose_rng(split, "phrasing", sub_kind, seed, index))
        if high_turns > 1 and sub_kind in ("image_qa", "image_crowded", "video_qa"):
            turn_rng = item_purpose_rng(split, "turns", sub_kind, seed, index)
            count = int(turn_rng.integers(low_turns, high_turns + 1)) - 1
            item.earlier_turns = earlier_turns(item, count, turn_rng, phrasing, grid)
        items.append(item)
    return items


def _reword(item: QAItem, phrasing: str, rng: np.random.Generator) -> None:
    """Replace a canonical question by its ``phrasing`` wording; the template goes to ``meta["template"]``."""
    key = f"{item.question_type}_by_place" if item.meta.get("asks_by") == "place" else item.question_type
    item.question, template = rephrase(key, item.question, phrasing, rng, media_slots(item.media))
    item.meta.update(phrasing=phrasing, template=template)


def _balanced_answers(split: str, seed: int, index: int) -> dict[str, str]:
    """Episode ``index``'s secret digit and needle colour, each a permutation over consecutive blocks."""
    digits = item_purpose_rng(split, "balance", "episode", seed, index // len(NUMBER_WORDS), 0)
    colours = item_purpose_rng(split, "balance", "episode", seed, index // len(NEEDLE_COLOURS), 1)
    return {
        "long_subtitle_needle": NUMBER_WORDS[
            int(digits.permutation(len(NUMBER_WORDS))[index % len(NUMBER_WORDS)])
        ],
        "long_visual_needle": NEEDLE_COLOURS[
            int(colours.permutation(len(NEEDLE_COLOURS))[index % len(NEEDLE_COLOURS)])
        ],
    }


def _long_items(
    split: str,
    n: int,
    seed: int,
    include_summary: bool,
    grid: int,
    episode_frames: int,
    phrasing: str = "canonical",
    balanced_needles: bool = False,
    varied_needles: bool = False,
) -> list[QAItem]:
    per_episode = len(LONG_QUESTION_TYPES) + int(include_summary)
    items: list[QAItem] = []
    for index in range(math.ceil(n / per_episode)):
        episode_id = f"{split}-episode-s{seed}-{index:06d}" + ("-vn" if varied_needles else "")
        synth: dict[str, Any] = {
            "split": split,
            "stream": "episode",
            "seed": seed,
            "index": index,
            "num_frames": episode_frames,
        }
        forced = _balanced_answers(split, seed, index) if balanced_needles else None
        if forced is not None:
            synth["answers"] = forced
        if varied_needles:
            synth["varied_needles"] = True
        episode = _episode(synth, grid)
        for number, item in enumerate(episode_questions(episode, episode_id, include_summary)):
            item.meta.update(media_id=episode_id, synth=dict(synth))
            if item.answer_options is not None and phrasing != "canonical":
                _reword(item, phrasing, item_purpose_rng(split, "phrasing", "episode", seed, index, number))
            items.append(item)
    return items[:n]


def regenerate_episode(synth: dict[str, Any], grid: int = DEFAULT_GRID) -> Episode:
    """Rebuild a long video from a record's ``synth`` field instead of decoding its file."""
    return _episode(synth, grid)


def _episode(synth: dict[str, Any], grid: int) -> Episode:
    split, seed, index = synth["split"], int(synth["seed"]), int(synth["index"])
    episode = make_episode(
        item_rng(split, "episode", seed, index), split, int(synth["num_frames"]), grid, synth.get("answers")
    )
    if synth.get("varied_needles"):
        episode = vary_needle(episode, item_purpose_rng(split, "needle", "episode", seed, index))
    return episode


def item_to_record(item: QAItem, media_path: str | None, subtitles_path: str | None = None) -> dict[str, Any]:
    """The LLaVA-style JSON record of ``item`` (docs/architecture.md §9) plus evaluation fields.

    ``conversations`` holds the item's earlier turns, if any, then its question: human and gpt turns
    alternating, ``"<image>\\n"`` before the first human turn when there is a medium; ``answer`` (the last gpt
    turn), ``question_type``, ``answer_options`` and ``heldout_combo`` are extra keys for scoring.
    """
    record: dict[str, Any] = {"id": item.id}
    pairs = [(turn["question"], turn["answer"]) for turn in item.earlier_turns] + [
        (item.question, item.answer)
    ]
    if item.media is not None:
        if media_path is None:
            raise InvalidInputError(f"item {item.id} has a medium but no media path was given.")
        record["image" if isinstance(item.media, FrameSpec) else "video"] = media_path
        pairs[0] = ("<image>\n" + pairs[0][0], pairs[0][1])
    if subtitles_path is not None:
        record["subtitles"] = subtitles_path
    record["conversations"] = [
        turn
        for human, gpt in pairs
        for turn in ({"from": "human", "value": human}, {"from": "gpt", "value": gpt})
    ]
    record["question_type"] = item.question_type
    record["answer"] = item.answer
    record["answer_options"] = item.answer_options
    record["heldout_combo"] = bool(item.meta.get("heldout_combo", False))
    if isinstance(item.media, (Clip, Episode)):
        record["num_frames"] = item.media.num_frames
        record["fps"] = item.media.fps
    for key in ("needle_time", "secret_time", "synth"):
        if key in item.meta:
            record[key] = item.meta[key]
    return record


def write_video(frames: np.ndarray, path: Path, video_format: str = "npz", fps: float = 1.0) -> Path:
    """Write ``(T, H, W, 3)`` uint8 frames; returns the path with the format's suffix.

    Raises:
        ValueError: on an unknown format or wrong frame array.
        ImportError: if ``mp4``/``mkv`` is requested without PyAV installed.
    """
    if video_format not in VIDEO_FORMATS:
        raise InvalidInputError(f"video_format={video_format!r} is unknown; expected one of {VIDEO_FORMATS}.")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidInputError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}.")
    path = path.with_suffix("." + video_format)
    if video_format == "npz":
        timestamps = np.arange(len(frames), dtype=np.float64) / fps
        np.savez_compressed(path, frames=frames, timestamps=timestamps)
        return path
    try:
        import av
    except ImportError as error:  # pragma: no cover - av is a core dependency
        raise DependencyError(
            "Writing mp4/mkv needs PyAV: pip install av, or use video_format='npz'."
        ) from error
    with av.open(str(path), mode="w") as container:
        codec, pix_fmt, options = (
            ("libx264", "yuv420p", {"crf": "16", "preset": "veryfast"})
            if video_format == "mp4"
            else ("ffv1", "bgr0", {})
        )
        stream = container.add_stream(codec, rate=int(round(fps)), options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _srt_time(seconds: float) -> str:
    milliseconds = int(round(seconds * 1000))
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def write_srt(subtitles: Iterable[Subtitle], path: Path) -> Path:
    """Write cues as a standard ``.srt`` file (what the real pipeline gets from Whisper or a movie)."""
    blocks = [
        f"{number}\n{_srt_time(cue.start)} --> {_srt_time(cue.end)}\n{cue.text}\n"
        for number, cue in enumerate(subtitles, start=1)
    ]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def write_dataset(
    out_dir: str | Path,
    split: str,
    n: int | None = None,
    seed: int = 0,
    kind: str = "image_qa",
    video_format: str = "npz",
    image_size: int = DEFAULT_FRAME_SIZE,
    grid: int = DEFAULT_GRID,
    clip_frames: int | tuple[int, int] = DEFAULT_CLIP_FRAMES,
    episode_frames: int = DEFAULT_EPISODE_FRAMES,
    write_media: bool = True,
    phrasing: str = "canonical",
    turns: int | tuple[int, int] = 1,
    balanced_needles: bool = False,
    varied_needles: bool = False,
) -> Path:
    """Generate a dataset and write its media and ``{split}_{kind}_s{seed}.json`` under ``out_dir``.

    Media paths in the JSON are relative to ``out_dir`` (use it as both ``image_folder`` and
    ``video_folder``): ``media/{split}/{kind}/{id}.png`` for images, ``.npz``/``.mp4``/``.mkv`` for videos,
    and an ``.srt`` next to every long video. Long-video questions share one file per episode.

    Args:
        out_dir: created if missing.
        split: ``"train"`` or ``"heldout"``.
        n: number of items; default :data:`DEFAULT_ITEMS` (10,000 train, 1,000 held-out).
        seed: dataset seed (see :func:`generate_items`).
        kind: one of :data:`KINDS`.
        video_format: one of :data:`VIDEO_FORMATS`.
        image_size: rendered frame size in pixels.
        grid: cells per side.
        clip_frames: clip length or inclusive range.
        episode_frames: long-video length.
        write_media: if False only the JSON is written (records can still be regenerated from ``synth``).
        phrasing / turns / balanced_needles / varied_needles: see :func:`generate_items`.

    Returns:
        Path of the JSON file.
    """
    check_split(split)
    n = DEFAULT_ITEMS[split] if n is None else n
    out = Path(out_dir)
    items = generate_items(
        split,
        n,
        seed,
        kind,
        grid,
        clip_frames,
        episode_frames,
        phrasing,
        turns,
        balanced_needles,
        varied_needles,
    )
    media_dir = out / "media" / split / kind
    if write_media:
        media_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[str, str | None]] = {}
    records = []
    for item in items:
        media_id = item.meta["media_id"]
        if item.media is not None and media_id not in written:
            base = media_dir / media_id
            subtitles_path: str | None = None
            if isinstance(item.media, FrameSpec):
                path = base.with_suffix(".png")
                if write_media:
                    Image.fromarray(render_frame(item.media, image_size, grid)).save(path, optimize=False)
            else:
                path = base.with_suffix("." + video_format)
                if write_media:
                    path = write_video(item.media.render(image_size), base, video_format, item.media.fps)
                if isinstance(item.media, Episode):
                    srt = base.with_suffix(".srt")
                    if write_media:
                        write_srt(item.media.subtitles, srt)
                    subtitles_path = srt.relative_to(out).as_posix()
            written[media_id] = (path.relative_to(out).as_posix(), subtitles_path)
        media_path, subtitles_path = written.get(media_id, (None, None))
        records.append(item_to_record(item, media_path, subtitles_path))
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{split}_{kind}_s{seed}.json"
    json_path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    logger.info(
        "wrote %d %s %s records to %s (%d media files %s)",
        len(records),
        split,
        kind,
        json_path,
        len(written),
        "written" if write_media else "referenced, not written",
    )
    return json_path


def pretraining_batch(
    split: str, seed: int, start: int, count: int, size: int = DEFAULT_FRAME_SIZE, grid: int = DEFAULT_GRID
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Random frames with per-cell labels for stage-0 vision pretraining (attributes *with* position).

    Frame ``k`` of the batch is frame ``start + k`` of the ``(split, seed)`` stream, so batches are
    reproducible and a run can resume at any index.

    Returns:
        ``images`` ``(B, size, size, 3)`` uint8 and labels ``shape``/``colour``/``size`` ``(B, G, G)`` int64
        (0 = empty cell), ``background`` ``(B,)`` and ``word`` ``(B,)`` (-1 = no word).
    """
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels: dict[str, list[Any]] = {"shape": [], "colour": [], "size": [], "background": [], "word": []}
    for k in range(count):
        spec = random_frame_spec(item_rng(split, "frame", seed, start + k), split, grid)
        images[k] = render_frame(spec, size, grid)
        frame = frame_labels(spec, grid)
        for key in labels:
            labels[key].append(getattr(frame, key))
    return images, {key: np.asarray(value, dtype=np.int64) for key, value in labels.items()}


def answer_statistics(
    train_records: list[dict[str, Any]], eval_records: list[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """Per question type: chance level, majority-answer (blind) accuracy, and question-conditioned blind accuracy.

    The blind baselines are fitted on ``train_records`` and scored on ``eval_records``: ``majority`` always
    answers the type's most frequent train answer; ``question_majority`` answers the most frequent train answer
    for the exact same question text (falling back to ``majority``), an upper bound on what a text-only
    model can learn from question wording. Free-form types are skipped.
    """
    by_type: dict[str, Counter[str]] = {}
    by_question: dict[tuple[str, str], Counter[str]] = {}
    for record in train_records:
        if record.get("answer_options") is None:
            continue
        question = record["conversations"][0]["value"]
        by_type.setdefault(record["question_type"], Counter())[record["answer"]] += 1
        by_question.setdefault((record["question_type"], question), Counter())[record["answer"]] += 1
    totals: dict[str, list[float]] = {}
    for record in eval_records:
        options = record.get("answer_options")
        if options is None:
            continue
        question_type = record["question_type"]
        type_counts = by_type.get(question_type, Counter())
        majority = type_counts.most_common(1)[0][0] if type_counts else options[0]
        question_counts = by_question.get((question_type, record["conversations"][0]["value"]))
        question_majority = question_counts.most_common(1)[0][0] if question_counts else majority
        row = totals.setdefault(question_type, [0.0, 0.0, 0.0, 0.0])
        row[0] += 1
        row[1] += record["answer"] == majority
        row[2] += record["answer"] == question_majority
        row[3] = 1.0 / len(options)
    return {
        question_type: {
            "count": count,
            "chance": chance,
            "majority": hits / count,
            "question_majority": q_hits / count,
        }
        for question_type, (count, hits, q_hits, chance) in totals.items()
    }
