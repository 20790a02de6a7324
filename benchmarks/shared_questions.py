"""Several questions about one media item: one Q-Former pass (`Engine.build_requests`) against one pass per
question (`Engine.build_request` in a loop), with the embedded tiny model on the CPU.

Two workloads from `llamavid eval-synth`'s CI scoring (seed 0):

* ``episode``: a 1,200-frame long-video episode with subtitles (one block per frame) and its 6 questions;
* ``clips``: 16 video clips of 8-16 frames, each asked in two wordings (``varied`` and ``heldout_templates``).

The media is encoded once outside the timing; what is timed is building the requests (prompt rendering and
visual tokens). The shared pass does each frame's question-free work (projection, the Q-Former's cross-attention
keys and values) once for all questions. The report gives the median of ``--repeats`` runs, the ratio
per-question / shared, and the largest difference between the two paths' visual tokens.

Usage: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/shared_questions.py [--repeats 5] [--json out.json]``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from timing import median_seconds, parse_arguments

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSET = REPO_ROOT / "src" / "llamavid" / "assets" / "tiny-llamavid"


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0])

    from llamavid.inference.engine import Engine
    from llamavid.synth import generate_items

    engine = Engine.from_pretrained(ASSET, device="cpu")
    size = engine.model.config.vision_config.image_size
    workloads: dict[str, list[tuple[Any, list[str]]]] = {}

    long_items = generate_items(
        "heldout", 6, seed=0, kind="long_qa", episode_frames=1200, phrasing="varied", balanced_needles=True
    )
    episode = long_items[0].media
    media = engine.load_media(episode.render(size), subtitles=episode.frame_subtitles())
    workloads["episode"] = [(media, [item.question for item in long_items])]

    varied = generate_items("heldout", 16, seed=0, kind="video_qa", phrasing="varied")
    heldout = generate_items("heldout", 16, seed=0, kind="video_qa", phrasing="heldout_templates")
    workloads["clips"] = [
        (engine.load_media(a.media.render(size)), [a.question, b.question])
        for a, b in zip(varied, heldout, strict=True)
    ]

    results: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats, "workloads": {}}
    for name, groups in workloads.items():

        def per_question(groups: list[tuple[Any, list[str]]] = groups) -> list[Any]:
            return [engine.build_request(q, media) for media, questions in groups for q in questions]

        def shared(groups: list[tuple[Any, list[str]]] = groups) -> list[Any]:
            return [r for media, questions in groups for r in engine.build_requests(questions, media)]

        base_s, base = median_seconds(per_question, args.repeats)
        new_s, new = median_seconds(shared, args.repeats)
        diff = max(
            float((a.visual_tokens - b.visual_tokens).abs().max()) for a, b in zip(base, new, strict=True)
        )
        row = {
            "media": len(groups),
            "questions": sum(len(questions) for _, questions in groups),
            "frames_per_media": groups[0][0].num_frames if name == "episode" else "8-16",
            "per_question_s": base_s,
            "shared_s": new_s,
            "speed-up": base_s / new_s,
            "max_abs_diff": diff,
        }
        results["workloads"][name] = row
        print(
            f"{name}: {row['questions']} questions on {row['media']} media | per question {base_s:.3f} s | "
            f"shared pass {new_s:.3f} s | {row['speed-up']:.2f}x | max |diff| {diff:.1e}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
