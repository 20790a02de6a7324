"""What a model answers to the long-video needle questions: gold against the greedy answer, and a confusion table.

`llamavid eval-synth` reports a needle's accuracy per secret digit or colour; this tool shows *what* the model says
instead (v5 confused neighbouring digits: docs/tiny-model.md, "v5.1 development"). It renders episodes of the
synthetic world with balanced needles, asks the subtitle and visual needle questions (or the long-video types
``--types`` names, e.g. ``long_summary``, whose answers 4-9 share the digits) through the inference
core (`llamavid.cli.eval_synth.answer_items`: one encoding per episode, as `eval-synth` scores) and prints one line per question and the confusion
counts (gold -> answer) of the misses.

Usage: ``.venv/bin/python tools/needle_answers.py MODEL --episodes 20 --frames 1200 --seed 2`` (dev seed 2; the
sealed seeds are refused like ``llamavid eval-synth`` refuses them). 20 episodes of 1,200 frames take ~1 min.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

NEEDLES = ("long_subtitle_needle", "long_visual_needle")


def needle_answers(
    model_dir: Path,
    episodes: int,
    frames: int,
    seed: int,
    phrasing: str,
    types: tuple[str, ...] = NEEDLES,
) -> list[dict[str, Any]]:
    """One row per question of ``types`` (default: the two needles) in ``episodes`` held-out episodes: type,
    question, gold, answer, correct."""
    from llamavid.cli.eval_synth import answer_items, check_seed
    from llamavid.errors import InvalidInputError
    from llamavid.inference.engine import Engine
    from llamavid.inference.loading import load_model
    from llamavid.inference.settings import SamplingSettings
    from llamavid.inference.text import normalize_answer
    from llamavid.synth import QUESTION_TYPES, generate_items

    check_seed(seed, sealed=False)
    known = sorted(t for t in QUESTION_TYPES if t.startswith("long_"))
    if not types or set(types) - set(known):
        raise InvalidInputError(f"--types: expected some of {known}; found {list(types)}.")
    loaded = load_model(model_dir, device="cpu", dtype="float32")
    engine = Engine(loaded.model, loaded.processor, name=loaded.name)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=6)
    items = generate_items(
        "heldout",
        6 * episodes,
        seed=seed,
        kind="long_qa",
        episode_frames=frames,
        balanced_needles=True,
        phrasing=phrasing,
    )
    needles = [item for item in items if item.question_type in types]  # an episode's questions stay adjacent
    rows = []
    for _, index, answer in answer_items(engine, {phrasing: needles}, greedy):
        item = needles[index]
        rows.append(
            {
                "type": item.question_type,
                "question": item.question,
                "gold": item.answer,
                "answer": answer.strip(),
                "correct": normalize_answer(answer) == normalize_answer(item.answer),
            }
        )
    return rows


def confusions(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per question type, ``"gold -> answer"`` counts of the misses, most frequent first."""
    table: dict[str, collections.Counter[str]] = {row["type"]: collections.Counter() for row in rows}
    for row in rows:
        if not row["correct"]:
            table[row["type"]][f"{row['gold']} -> {row['answer']}"] += 1
    return {name: dict(counter.most_common()) for name, counter in table.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model", type=Path, help="llamavid model folder (e.g. src/llamavid/assets/tiny-llamavid)"
    )
    parser.add_argument("--episodes", type=int, default=20, help="episodes (2 needle questions each)")
    parser.add_argument("--frames", type=int, default=1200, help="frames per episode (60, 300, 1200)")
    parser.add_argument("--seed", type=int, default=2, help="held-out seed (2: the dev seed)")
    parser.add_argument("--phrasing", default="varied", help="canonical, varied or heldout_templates")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--types",
        default=",".join(NEEDLES),
        help="comma-separated long-video question types (default: the two needles; e.g. long_summary)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows and confusions as JSON")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    types = tuple(name.strip() for name in args.types.split(",") if name.strip())
    rows = needle_answers(args.model, args.episodes, args.frames, args.seed, args.phrasing, types)
    table = confusions(rows)
    if args.json:
        print(json.dumps({"rows": rows, "confusions": table}, indent=1))
        return 0
    for row in rows:
        mark = "ok  " if row["correct"] else "MISS"
        print(
            f"{mark} {row['type']:22s} gold={row['gold']:7s} answer={row['answer']!r:10s} {row['question']}"
        )
    for name in table:
        right = [row["correct"] for row in rows if row["type"] == name]
        print(f"{name}: {sum(right)} / {len(right)}; misses: {table[name] or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
