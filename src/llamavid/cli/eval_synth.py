"""``llamavid eval-synth MODEL``: exact-match accuracy on held-out synthetic items, per question type.

Why: the synthetic world (``llamavid.synth``) knows every answer, so a model folder can be scored end to end —
rendered pixels -> the inference core (`llamavid.inference.Engine`, the path ``llamavid ask`` takes) -> greedy
answers — against two references per type: chance
(1 / number of answer options) and the blind baseline (the best text-only answer fitted on train questions,
``question_majority`` from :func:`llamavid.synth.answer_statistics`). A score near blind means the model is not
using the video.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from llamavid.errors import InvalidInputError

logger = logging.getLogger(__name__)

SETS = ("image_qa", "video_qa", "text_qa", "long_qa")
BLIND_FIT_ITEMS = 2000


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
    parser.add_argument("--seed", type=int, default=0, help="held-out dataset seed")
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
) -> dict[str, Any]:
    """Score ``model_dir`` on ``items_per_set`` held-out items of each set; returns per-type tables."""
    from llamavid.inference.engine import Engine
    from llamavid.inference.loading import load_model
    from llamavid.inference.settings import SamplingSettings
    from llamavid.inference.text import normalize_answer
    from llamavid.synth import (
        Episode,
        FrameSpec,
        answer_statistics,
        generate_items,
        item_to_record,
        render_frame,
    )

    loaded = load_model(model_dir, device="cpu", dtype="float32")
    engine = Engine(loaded.model, loaded.processor, name=loaded.name)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=6)
    size = loaded.model.config.vision_config.image_size
    results: dict[str, Any] = {"model": str(model_dir), "sets": {}}
    for set_name in sets:
        if set_name not in SETS:
            raise InvalidInputError(f"unknown set {set_name!r}; expected some of {SETS}")
        started = time.time()
        extra: dict[str, Any] = {"episode_frames": episode_frames} if set_name == "long_qa" else {}
        items = generate_items("heldout", items_per_set, seed=seed, kind=set_name, **extra)
        fit_count = 200 if set_name == "long_qa" else BLIND_FIT_ITEMS
        fit = generate_items(
            "train",
            fit_count,
            seed=seed,
            kind=set_name,
            episode_frames=60,  # used by long_qa only
        )
        blind = answer_statistics(
            [item_to_record(i, "m") for i in fit], [item_to_record(i, "m") for i in items]
        )
        hits: dict[str, list[int]] = defaultdict(list)
        combo_hits: dict[str, list[int]] = defaultdict(list)  # items whose (shape, colour) pair is held out
        examples: list[dict[str, str]] = []
        step = 1 if set_name == "long_qa" else batch_size
        episodes: dict[str, Any] = {}
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            requests = []
            for item in chunk:
                if isinstance(item.media, Episode):
                    key = item.meta.get("media_id", item.id)
                    if key not in episodes:  # one episode serves 6 questions: encode it once
                        episodes.clear()
                        episodes[key] = engine.load_media(
                            item.media.render(size), subtitles=item.media.frame_subtitles()
                        )
                    media = episodes[key]
                elif item.media is None:
                    media = None
                elif isinstance(item.media, FrameSpec):
                    media = engine.load_media(render_frame(item.media, size))
                else:
                    media = engine.load_media(item.media.render(size))
                requests.append(engine.build_request(item.question, media, settings=greedy))
            texts = [answer.text for answer in engine.answer_batch(requests)]
            for item, text in zip(chunk, texts, strict=True):
                correct = int(normalize_answer(text) == normalize_answer(item.answer))
                hits[item.question_type].append(correct)
                if item.meta.get("heldout_combo"):
                    combo_hits[item.question_type].append(correct)
                if len(examples) < 5:
                    examples.append({"question": item.question, "answer": item.answer, "predicted": text})
        per_type: dict[str, dict[str, Any]] = {
            name: {
                "accuracy": sum(values) / len(values),
                "count": len(values),
                "blind": blind[name]["question_majority"],
                "chance": blind[name]["chance"],
                "heldout_combo_accuracy": _mean(combo_hits[name]),
                "heldout_combo_count": len(combo_hits[name]),
            }
            for name, values in sorted(hits.items())
        }
        combo = [hit for values in combo_hits.values() for hit in values]
        results["sets"][set_name] = {
            "mean": sum(row["accuracy"] for row in per_type.values()) / max(len(per_type), 1),
            "blind_mean": sum(row["blind"] for row in per_type.values()) / max(len(per_type), 1),
            "chance_mean": sum(row["chance"] for row in per_type.values()) / max(len(per_type), 1),
            "heldout_combo_accuracy": _mean(combo),
            "per_type": per_type,
            "examples": examples,
            "seconds": time.time() - started,
        }
        logger.info(
            "%s: mean %.3f in %.0f s", set_name, results["sets"][set_name]["mean"], time.time() - started
        )
    return results


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def format_tables(results: dict[str, Any]) -> str:
    lines = [f"model: {results['model']}"]
    for set_name, data in results["sets"].items():
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
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    results = evaluate(args.model, sets, args.items, args.seed, args.batch_size, args.episode_frames)
    print(json.dumps(results, indent=1) if args.json else format_tables(results))
    return 0
