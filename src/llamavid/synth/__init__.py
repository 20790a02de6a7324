"""A seeded synthetic video world for training and evaluating a tiny LLaMA-VID on a CPU.

Why: real video data and a 7B model do not fit a 2-core CPU, but the LLaMA-VID pipeline (captions → instruction
tuning → long videos with subtitles) can be exercised end to end on a small, fully known world where every
answer is checkable against the pixels. numpy and Pillow only (PyAV optionally, to write mp4/mkv); no torch.

The world (:mod:`llamavid.synth.world`): 6 shapes, 8 colours, 4 sizes, 5 background ("room") colours,
8 on-screen words in a built-in 3×5 bitmap font, 8 character names, a 4×4 cell grid. Frames render at any size
that is a multiple of the grid with ≥ 8 px per cell (56, 64 (default), 112, 224); about 0.07 ms per random 64-px frame and 0.3 ms at 224 px (2-core CPU).

Held-out design (``split="heldout"``):

* seeds: every item's generator is seeded with ``(split key, stream key, seed, index)``
  (:func:`~llamavid.synth.world.item_rng`), so train and held-out items never share a random stream;
* combinations: the (shape, colour) pairs in :data:`~llamavid.synth.world.HELDOUT_PAIRS` — purple circle,
  orange square, cyan triangle, green star, red diamond, yellow cross — are never rendered in train (not even
  as distractors or in pretraining frames). In held-out items about half of the question targets use one of
  them; such records carry ``"heldout_combo": true`` so accuracy can be reported separately.

Public API (everything else is reachable by module path but not promised)::

    # frames and per-cell labels (stage-0 vision pretraining: attributes *with* position)
    render_frame(spec: FrameSpec, size=64, grid=4) -> np.ndarray            # (size, size, 3) uint8
    frame_labels(spec: FrameSpec, grid=4) -> FrameLabels                    # shape/colour/size (G, G), background, word
    random_frame_spec(rng, split="train", grid=4, max_objects=6, word_probability=0.2, jitter=True) -> FrameSpec
    pretraining_batch(split, seed, start, count, size=64, grid=4) -> (images (B,H,W,3), labels dict)

    # media (all share num_frames, fps, timestamps(), frame_spec(i), render_frame(i, size), frame_labels(i),
    # render(size), subtitles, events)
    Clip                                                                    # 5-60 frames, held as FrameSpecs
    Episode                                                                 # ≥ 1,200 frames, rendered on demand
    make_episode(rng, split, num_frames=1200, grid=4, answers=None) -> Episode
    episode_questions(episode, id_prefix, include_summary=False) -> list[QAItem]

    # questions, records, files
    generate_items(split, n, seed=0, kind="image_qa", grid=4, clip_frames=(8, 16), episode_frames=1200,
                   phrasing="canonical", turns=1, balanced_needles=False, varied_needles=False) -> list[QAItem]
    item_to_record(item, media_path, subtitles_path=None) -> dict           # LLaVA-style JSON record (docs/architecture.md §9)
    write_dataset(out_dir, split, n=None, seed=0, kind="image_qa", video_format="npz", image_size=64, grid=4,
                  clip_frames=(8, 16), episode_frames=1200, write_media=True) -> Path
    regenerate_episode(record["synth"]) -> Episode                          # frames without reading files
    answer_statistics(train_records, eval_records) -> {type: {count, chance, majority, question_majority}}

Opt-in layers (the defaults keep every item exactly as it was; each layer has its own random stream, so it
changes nothing else): ``phrasing="varied"`` words each question with one of many train templates (synonyms, word
order, terse and polite forms, ``color``/``gray``, typos) and ``phrasing="heldout_templates"`` with templates no
training uses (:mod:`llamavid.synth.phrasing`: ``train_templates`` / ``heldout_templates``); ``turns=(1, 3)``
puts earlier questions about the same image or clip before an item's own (:mod:`llamavid.synth.turns`);
``balanced_needles=True`` tells every secret digit and shows every needle colour equally often;
``varied_needles=True`` draws the visual needle at a random cell and size instead of one big centred shape (a
training layer: evals keep the default). Answers are always the short canonical answer.
:mod:`llamavid.synth.tokenizers` builds the tokenizers from this world's text.

Kinds (:data:`~llamavid.synth.dataset.KINDS`): ``image_caption``, ``video_caption``, ``image_qa``, ``video_qa``,
``text_qa``, ``long_qa``, ``image_place`` (image shape and size asked by the object's quadrant, a training
stream), ``image_crowded`` (image shape and size on scenes of 4-6 objects, a training stream), and the stage
mixtures ``stage1`` (captions), ``stage2`` (image/video/text QA 5:4:1) and ``stage3`` (long-video QA + a free-form
summary per episode).

Question types (:data:`QUESTION_TYPES` maps each to its answer options; answers are drawn uniformly first and
the medium is built to make them true, so blind baselines sit at chance):

* images: ``image_colour`` (8), ``image_shape`` (6), ``image_count`` (6: 1-6), ``image_position`` (4 quadrants),
  ``image_size`` (4), ``image_text`` (8 words), ``image_background`` (5);
* clips: ``video_direction`` (4), ``video_order`` (6: which shape appears first/last), ``video_count`` (6:
  distinct shapes over time), ``video_appear`` (6: shape), ``video_disappear`` (8: colour),
  ``video_scene_change`` (5: 0-4 background changes), ``video_colour_change`` (8);
* text only: ``text_next`` (9), ``text_bigger`` (9), ``text_recall`` (8: copy a fact from the context);
* long videos: ``long_visual_needle`` (7: colour of the shape on the one white frame), ``long_subtitle_needle``
  (10: a secret number said once), ``long_character`` (8: a named character's colour), ``long_plot``
  (8: who is introduced last), ``long_summary`` (6: 4-9 scenes), ``long_reasoning`` (5: the room where the
  secret is told);
* free-form (no ``answer_options``): ``image_caption``, ``video_caption``, ``long_summary_caption``.

Records follow docs/architecture.md §9 (``id``, ``image`` or ``video``, ``conversations`` with ``<image>`` in the first human
turn; text-only records have neither) plus ``question_type``, ``answer``, ``answer_options``, ``heldout_combo``,
and for videos ``num_frames``, ``fps`` (always 1), for long videos ``subtitles`` (an ``.srt`` path),
``needle_time``, ``secret_time``, and ``synth`` (generator coordinates for regeneration).
"""

from llamavid.synth._common import QAItem
from llamavid.synth.clips import Clip, Event, Subtitle, make_clip_caption, make_clip_question
from llamavid.synth.dataset import (
    KINDS,
    QUESTION_TYPES,
    VIDEO_FORMATS,
    answer_statistics,
    generate_items,
    item_to_record,
    pretraining_batch,
    regenerate_episode,
    write_dataset,
    write_srt,
    write_video,
)
from llamavid.synth.episodes import Character, Episode, episode_questions, make_episode
from llamavid.synth.images import describe_image, make_image_caption, make_image_question
from llamavid.synth.render import (
    FrameLabels,
    FrameSpec,
    SceneObject,
    frame_labels,
    random_frame_spec,
    render_frame,
)
from llamavid.synth.text import make_text_question
from llamavid.synth.world import HELDOUT_PAIRS, SPLITS, item_rng

__all__ = [
    "HELDOUT_PAIRS",
    "KINDS",
    "QUESTION_TYPES",
    "SPLITS",
    "VIDEO_FORMATS",
    "Character",
    "Clip",
    "Episode",
    "Event",
    "FrameLabels",
    "FrameSpec",
    "QAItem",
    "SceneObject",
    "Subtitle",
    "answer_statistics",
    "describe_image",
    "episode_questions",
    "frame_labels",
    "generate_items",
    "item_rng",
    "item_to_record",
    "make_clip_caption",
    "make_clip_question",
    "make_episode",
    "make_image_caption",
    "make_image_question",
    "make_text_question",
    "pretraining_batch",
    "random_frame_spec",
    "regenerate_episode",
    "render_frame",
    "write_dataset",
    "write_srt",
    "write_video",
]
