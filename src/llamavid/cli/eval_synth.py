"""``llamavid eval-synth MODEL``: exact-match accuracy on held-out synthetic items, per question type.

Why: the synthetic world (``llamavid.synth``) knows every answer, so a model folder can be scored end to end —
rendered pixels -> the inference core (`llamavid.inference.Engine`, the path ``llamavid ask`` takes) -> greedy
answers — against two references per type: chance
(1 / number of answer options) and the blind baseline (the best text-only answer fitted on train questions,
``question_majority`` from :func:`llamavid.synth.answer_statistics`, fitted on train items of the same
phrasing). A score near blind means the model is not using the video.

``--phrasing`` re-words the same items (``varied``: the trained templates, perturbed; ``heldout_templates``:
templates no training config may use), so the three phrasings are compared on identical media and answers;
``--phrasing varied,heldout_templates`` scores several in one run, each item rendered and encoded once.
``--clip-frames`` sets the clip length (or range) of video items and adds a per-length-bucket table;
``--balanced-needles`` balances the long videos' secret digits and needle colours. The sealed test seeds
(docs/tiny-model.md, "v5 plan", "v5.1 plan") are refused unless ``--sealed`` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llamavid.errors import InvalidInputError, LlamaVidRuntimeError

logger = logging.getLogger(__name__)

SETS = ("image_qa", "image_place", "image_crowded", "video_qa", "text_qa", "text_copy", "long_qa")
BLIND_FIT_ITEMS = 2000
PHRASINGS = (
    "canonical",
    "varied",
    "varied_wide",
    "heldout_templates",
)  # llamavid.synth.phrasing.PHRASINGS (checked in tests)
LENGTH_BUCKETS = ((5, 7), (8, 16), (17, 39), (40, 60))  # clip lengths reported separately (v5 plan)


def parse_clip_frames(text: str) -> int | tuple[int, int]:
    """``"12"`` -> 12, ``"5-60"`` -> (5, 60): a clip length or an inclusive range for ``generate_items``."""
    low, sep, high = text.strip().partition("-")
    try:
        value = (int(low), int(high)) if sep else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--clip-frames {text!r}: expected a frame count (12) or an inclusive range (5-60)"
        ) from None
    if isinstance(value, tuple) and value[0] > value[1]:
        raise argparse.ArgumentTypeError(f"--clip-frames {text!r}: the range's low end is above its high end")
    return value


def parse_phrasings(text: str) -> list[str]:
    """``"varied,heldout_templates"`` -> ``["varied", "heldout_templates"]``, each checked."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PHRASINGS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--phrasing {text!r}: expected one or more of {', '.join(PHRASINGS)}, comma-separated"
        )
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-synth",
        help="score a model folder on held-out synthetic image/video/text/long-video questions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", type=Path, help="llamavid model folder (e.g. src/llamavid/assets/tiny-llamavid)"
    )
    parser.add_argument("--sets", default="image_qa,video_qa,text_qa", help=f"comma list of {SETS}")
    parser.add_argument("-n", "--items", type=int, default=140, help="held-out items per set (types rotate)")
    parser.add_argument(
        "--seed", type=int, default=0, help="held-out dataset seed (0: CI set; 2: v5 dev seed)"
    )
    parser.add_argument(
        "--sealed",
        action="store_true",
        help="allow a sealed test seed: for a tiny model's one final score only (docs/tiny-model.md, v5 plans)",
    )
    parser.add_argument(
        "--phrasing",
        type=parse_phrasings,
        default=["canonical"],
        metavar="NAME[,NAME]",
        help=f"question wording(s) of the same items, comma-separated, from {', '.join(PHRASINGS)}; several "
        "wordings share each item's rendering and encoding (default: canonical)",
    )
    parser.add_argument(
        "--clip-frames",
        type=parse_clip_frames,
        default=None,
        metavar="N|LOW-HIGH",
        help="video clip length or inclusive range, within 5-60 (default: generate_items' 8-16)",
    )
    parser.add_argument(
        "--balanced-needles",
        action="store_true",
        help="long_qa: every secret digit and needle colour equally often",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--episode-frames", type=int, default=1200, help="long-video length in frames")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.set_defaults(func=run)


def evaluate(
    model_dir: Path,
    sets: list[str],
    items_per_set: int,
    seed: int = 0,
    batch_size: int = 16,
    episode_frames: int = 1200,
    phrasing: str | Sequence[str] = "canonical",
    clip_frames: int | tuple[int, int] | None = None,
    balanced_needles: bool = False,
    sealed: bool = False,
) -> dict[str, Any]:
    """Score ``model_dir`` on ``items_per_set`` held-out items of each set; returns per-type tables.

    ``phrasing`` may name several wordings of the same items (``("varied", "heldout_templates")``): each item's
    media is then rendered and encoded once, the visual tokens of all its wordings come from one Q-Former pass
    (`Engine.build_requests`), and ``results["by_phrasing"][wording][set]`` holds each wording's tables.
    ``results["sets"]`` is always the first wording's. A long video's questions (6 per episode) share one
    encoding and one Q-Former pass the same way.

    Raises:
        InvalidInputError: on an unknown set or phrasing, or a sealed test seed without ``sealed=True``.
    """
    check_seed(seed, sealed)
    phrasings = [phrasing] if isinstance(phrasing, str) else list(dict.fromkeys(phrasing))
    if not phrasings or any(name not in PHRASINGS for name in phrasings):
        raise InvalidInputError(f"phrasing {phrasing!r} is unknown; expected some of {PHRASINGS}")
    for set_name in sets:
        if set_name not in SETS:
            raise InvalidInputError(f"unknown set {set_name!r}; expected some of {SETS}")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    from llamavid.inference.engine import Engine
    from llamavid.inference.loading import load_model
    from llamavid.inference.settings import SamplingSettings

    loaded = load_model(model_dir, device="cpu", dtype="float32")
    engine = Engine(loaded.model, loaded.processor, name=loaded.name)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=6)
    options: dict[str, Any] = {}
    if clip_frames is not None:
        options["clip_frames"] = clip_frames
    if balanced_needles:
        options["balanced_needles"] = True
    results: dict[str, Any] = {
        "model": str(model_dir),
        "seed": seed,
        "phrasing": phrasings[0],
        "clip_frames": list(clip_frames) if isinstance(clip_frames, tuple) else clip_frames,
        "balanced_needles": balanced_needles,
        "sets": {},
    }
    by_phrasing: dict[str, dict[str, Any]] = {name: {} for name in phrasings}
    for set_name in sets:
        started = time.time()
        tables = _score_set(
            engine, greedy, set_name, items_per_set, seed, batch_size, episode_frames, phrasings, options
        )
        for name, table in tables.items():
            table["seconds"] = time.time() - started  # the wordings share this time
            by_phrasing[name][set_name] = table
        logger.info(
            "%s: mean %s in %.0f s",
            set_name,
            ", ".join(f"{tables[name]['mean']:.3f} ({name})" for name in phrasings),
            time.time() - started,
        )
    results["sets"] = by_phrasing[phrasings[0]]
    if len(phrasings) > 1:
        results["by_phrasing"] = by_phrasing
    return results


def _score_set(
    engine: Any,
    greedy: Any,
    set_name: str,
    items_per_set: int,
    seed: int,
    batch_size: int,
    episode_frames: int,
    phrasings: list[str],
    options: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """One set's tables per wording: the same items under each wording, each media encoded once."""
    from llamavid.synth import answer_statistics, generate_items, item_to_record

    extra: dict[str, Any] = {"episode_frames": episode_frames} if set_name == "long_qa" else {}
    worded = {
        name: generate_items(
            "heldout", items_per_set, seed=seed, kind=set_name, phrasing=name, **extra, **options
        )
        for name in phrasings
    }
    items = worded[phrasings[0]]
    for name in phrasings[1:]:  # re-wording never changes an item's media or answer (llamavid.synth.phrasing)
        if [(i.id, i.answer) for i in worded[name]] != [(i.id, i.answer) for i in items]:
            raise LlamaVidRuntimeError(
                f"phrasing {name!r} changed the items of {set_name}, not only their wording: a bug in "
                "llamavid.synth.phrasing, please report it"
            )
    scores = {}
    for name in phrasings:
        fit = generate_items(
            "train",
            200 if set_name == "long_qa" else BLIND_FIT_ITEMS,
            seed=seed,
            kind=set_name,
            episode_frames=60,  # used by long_qa only
            phrasing=name,  # the blind baseline sees the same wording as the scored items
            **options,
        )
        blind = answer_statistics(
            [item_to_record(i, "m") for i in fit], [item_to_record(i, "m") for i in worded[name]]
        )
        scores[name] = _SetScores(blind, "clip_frames" in options)
    for name, index, text in answer_items(engine, worded, greedy, batch_size):
        scores[name].add(worded[name][index], text)
    return {name: scores[name].table() for name in phrasings}


def answer_items(
    engine: Any, worded: dict[str, list[Any]], settings: Any, batch_size: int = 16
) -> Iterator[tuple[str, int, str]]:
    """Answers to the same synthetic items under each wording, as ``(wording, index, text)``.

    ``worded`` maps a wording to its items (the same media and answers in each: their questions differ). Each
    media item is rendered and encoded once and the visual tokens of all its questions come from one Q-Former
    pass (`Engine.build_requests`); a long video's questions share one encoding the same way.
    """
    from llamavid.synth import Episode, FrameSpec, render_frame

    size = engine.model.config.vision_config.image_size
    names = list(worded)
    items = worded[names[0]]
    for chunk in _media_chunks(items, batch_size):
        requests, owners = [], []
        for indices in chunk:
            item = items[indices[0]]
            if item.media is None:
                media = None
            elif isinstance(item.media, Episode):
                media = engine.load_media(item.media.render(size), subtitles=item.media.frame_subtitles())
            elif isinstance(item.media, FrameSpec):
                media = engine.load_media(render_frame(item.media, size))
            else:
                media = engine.load_media(item.media.render(size))
            pairs = [(name, index) for name in names for index in indices]
            requests += engine.build_requests(
                [worded[name][index].question for name, index in pairs], media, settings=settings
            )
            owners += pairs
        # Long prompts go one at a time: on CPU a padded batch of them takes SDPA's masked path, slower than
        # one request after another (6 questions of 3,431 tokens: 4.0 s batched, 2.4 s one by one).
        rows = 1 if isinstance(items[chunk[0][0]].media, Episode) else batch_size
        texts = []
        for start in range(0, len(requests), rows):
            texts += [answer.text for answer in engine.answer_batch(requests[start : start + rows])]
        for (name, index), text in zip(owners, texts, strict=True):
            yield name, index, text


def _media_chunks(items: list[Any], batch_size: int) -> list[list[list[int]]]:
    """Consecutive items as chunks of media groups (item indices sharing one media): a long video's questions
    are one group and a chunk of their own, so the video is encoded once; any other item is its own group, at
    most `batch_size` groups to a chunk. (Answer batches are cut to size afterwards.)"""
    from llamavid.synth import Episode

    chunks: list[list[list[int]]] = []
    last_key = None
    for index, item in enumerate(items):
        key = item.meta.get("media_id", item.id) if isinstance(item.media, Episode) else None
        if key is not None and key == last_key:
            chunks[-1][-1].append(index)
        elif chunks and key is None and last_key is None and len(chunks[-1]) < batch_size:
            chunks[-1].append([index])
        else:
            chunks.append([[index]])
        last_key = key
    return chunks


class _SetScores:
    """Hits of one set under one wording: per type and gold answer, held-out combos, clip-length buckets."""

    def __init__(self, blind: dict[str, Any], by_length: bool) -> None:
        self.blind, self.by_length = blind, by_length
        # hits[type][gold answer]: 1/0 per item; a type's accuracy is over all its answers
        self.hits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        # items whose (shape, colour) pair is held out
        self.combo_hits: dict[str, list[int]] = defaultdict(list)
        self.length_hits: dict[str, list[int]] = defaultdict(list)  # clip items by length bucket
        self.examples: list[dict[str, str]] = []

    def add(self, item: Any, text: str) -> None:
        from llamavid.inference.text import normalize_answer

        gold = normalize_answer(item.answer)
        correct = int(normalize_answer(text) == gold)
        self.hits[item.question_type][gold].append(correct)
        if item.meta.get("heldout_combo"):
            self.combo_hits[item.question_type].append(correct)
        if self.by_length and "num_frames" in item.meta:
            self.length_hits[_length_bucket(int(item.meta["num_frames"]))].append(correct)
        if len(self.examples) < 5:
            self.examples.append({"question": item.question, "answer": item.answer, "predicted": text})

    def table(self) -> dict[str, Any]:
        blind = self.blind
        per_type: dict[str, dict[str, Any]] = {
            name: {
                "accuracy": sum(map(sum, by_answer.values())) / sum(map(len, by_answer.values())),
                "count": sum(map(len, by_answer.values())),
                "blind": blind[name]["question_majority"],
                "chance": blind[name]["chance"],
                "heldout_combo_accuracy": _mean(self.combo_hits[name]),
                "heldout_combo_count": len(self.combo_hits[name]),
                "per_answer": {
                    answer: {"accuracy": sum(got) / len(got), "count": len(got)}
                    for answer, got in sorted(by_answer.items())
                },
            }
            for name, by_answer in sorted(self.hits.items())
        }
        combo = [hit for values in self.combo_hits.values() for hit in values]
        count = max(len(per_type), 1)
        return {
            "mean": sum(row["accuracy"] for row in per_type.values()) / count,
            "blind_mean": sum(row["blind"] for row in per_type.values()) / count,
            "chance_mean": sum(row["chance"] for row in per_type.values()) / count,
            "heldout_combo_accuracy": _mean(combo),
            "per_type": per_type,
            "per_length": {
                bucket: {"accuracy": sum(values) / len(values), "count": len(values)}
                for bucket, values in sorted(
                    self.length_hits.items(), key=lambda kv: int(kv[0].split("-")[0])
                )
            },
            "examples": self.examples,
        }


def check_seed(seed: int, sealed: bool) -> None:
    """Refuse a tiny model's sealed test seed unless the caller says this is that final score (``sealed``).

    Raises:
        InvalidInputError: if ``seed`` is a sealed seed and ``sealed`` is false.
    """
    from llamavid.train.curriculum import sealed_seed_name

    owner = sealed_seed_name(seed)
    if owner is not None and not sealed:
        raise InvalidInputError(
            f"seed {seed} is the sealed {owner} test seed (docs/tiny-model.md, {owner} plan), reserved for the "
            f"one final {owner} score; develop on the dev seed 2 (CI: 0), or pass --sealed for that final score"
        )


def _length_bucket(frames: int) -> str:
    for low, high in LENGTH_BUCKETS:
        if low <= frames <= high:
            return f"{low}-{high}"
    return f"{frames}-{frames}"


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def format_tables(results: dict[str, Any]) -> str:
    lines = [f"model: {results['model']}"]
    wordings = list(results.get("by_phrasing", {results.get("phrasing", ""): results["sets"]}).items())
    if "phrasing" in results:
        clip = results.get("clip_frames")
        clip_text = (
            "default" if clip is None else "-".join(str(v) for v in clip) if isinstance(clip, list) else clip
        )
        lines.append(
            f"seed: {results['seed']}, phrasing: {', '.join(name for name, _ in wordings)}, "
            f"clip frames: {clip_text}, balanced needles: {'yes' if results['balanced_needles'] else 'no'}"
        )
    for wording, sets in wordings:
        if len(wordings) > 1:
            lines += ["", f"# phrasing: {wording}"]
        lines += _set_tables(sets)
    return "\n".join(lines)


def _set_tables(sets: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for set_name, data in sets.items():
        lines += [
            "",
            f"## {set_name} (mean {data['mean']:.3f}, blind {data['blind_mean']:.3f}, "
            f"chance {data['chance_mean']:.3f})",
            "| type | n | accuracy | blind | chance | held-out combos (n) |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in data["per_type"].items():
            combo = row["heldout_combo_accuracy"]
            combo_cell = "-" if combo is None else f"{combo:.3f} ({row['heldout_combo_count']})"
            lines.append(
                f"| {name} | {row['count']} | {row['accuracy']:.3f} | {row['blind']:.3f} | "
                f"{row['chance']:.3f} | {combo_cell} |"
            )
        if data["heldout_combo_accuracy"] is not None:
            lines.append(f"held-out (shape, colour) combos: {data['heldout_combo_accuracy']:.3f}")
        if data.get("per_length"):
            lines += ["", "| clip frames | n | accuracy |", "|---|---|---|"]
            lines += [
                f"| {bucket} | {row['count']} | {row['accuracy']:.3f} |"
                for bucket, row in data["per_length"].items()
            ]
    return lines


def run(args: argparse.Namespace) -> int:
    import torch

    check_seed(args.seed, args.sealed)  # before loading anything
    torch.set_num_threads(args.threads)
    sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    results = evaluate(
        args.model,
        sets,
        args.items,
        args.seed,
        args.batch_size,
        args.episode_frames,
        phrasing=args.phrasing,
        clip_frames=args.clip_frames,
        balanced_needles=args.balanced_needles,
        sealed=args.sealed,
    )
    print(json.dumps(results, indent=1) if args.json else format_tables(results))
    return 0
