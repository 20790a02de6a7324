"""The paper's token ablation in miniature (``make tiny-ablation``): which visual tokens carry the answers?

Trains four tiny LLaMA-VIDs that differ only in their visual tokens, through the one training recipe
(``llamavid.train.recipe.run``, the same phases ``make tiny-model`` runs): the image/short-video phases of the
``tiny/v4`` curriculum with their steps scaled by ``--steps-scale``, on the same stage-0 tower and feature caches.
Then scores them on the same held-out items and compares them with paired-bootstrap 95 % intervals:

* ``both``: 1 context + 16 content tokens per image, 1 + 1 per video frame (the shipped design);
* ``content_only``: no context token (16 per image, 1 per frame);
* ``context_only``: no content token (1 per image, 1 per frame);
* ``both_image_1``: images compressed to 1 content token, like video frames (1 + 1 per image).

"A beats B" means the paired-bootstrap 95 % interval of accuracy(A) - accuracy(B) excludes zero. Reuses the
``make tiny-model`` work folder (stage 0, tokenizers, feature caches) or builds them there. Resumable: a finished
variant is read back from ``--out``; a killed one continues from its last finished phase or checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from llamavid.eval.scoring import paired_bootstrap
from llamavid.model import LlamaVidForConditionalGeneration, LlamaVidProcessor
from llamavid.train.curriculum import Curriculum, Phase, load_curriculum
from llamavid.train.recipe import run
from llamavid.train.schema import load_config, packaged_config_dir
from llamavid.train.tiny_model import TinyModelSettings, score_items
from llamavid.train.tiny_phase import load_phase_data

logger = logging.getLogger("tiny_ablation")
REPO = Path(__file__).resolve().parents[1]
PHASE_CONFIG = packaged_config_dir() / "tiny" / "phase.yaml"

VARIANTS: dict[str, TinyModelSettings] = {
    "both": TinyModelSettings(),
    "content_only": TinyModelSettings(context_token=False),
    "context_only": TinyModelSettings(compress_type="off", image_compress_type="off"),
    "both_image_1": TinyModelSettings(image_compress_type="mean"),
}
# (A, B, set): the comparisons of the paper's ablation.
COMPARISONS = [
    ("both", "content_only", "image_qa"),
    ("both", "content_only", "video_qa"),
    ("both", "context_only", "image_qa"),
    ("both", "context_only", "video_qa"),
    ("both", "both_image_1", "image_qa"),
]
EVAL_SETS = {  # held-out items (--eval-items each, 560 = 80 per question type), scored per variant at the end
    "image_qa": {"split": "heldout", "kind": "image_qa", "seed": 0},
    "video_qa": {"split": "heldout", "kind": "video_qa", "seed": 0},
}
SHORT_VIDEO_SETS = ("image_qa", "image_qa_s1", "video_qa", "text_qa", "text_copy")


def ablation_phases(curriculum: Curriculum, scale: float, min_steps: int = 50) -> list[Phase]:
    """The curriculum's image/short-video phases (no long videos), steps scaled, no in-training scoring."""
    return [
        replace(phase, steps=max(min_steps, int(phase.steps * scale)), eval_every=0)
        for phase in curriculum.phases
        if set(phase.mixture) <= set(SHORT_VIDEO_SETS)
    ]


def _losses_config(phase: Phase) -> dict[str, Any]:
    losses = phase.losses
    return {
        "lm": losses.lm,
        "answer_head": losses.answer_head,
        "grounding": losses.grounding,
        "scene": losses.scene,
        "answer_prior": {"types": list(losses.answer_prior), "on_heads": losses.answer_prior_on_heads},
    }


def write_curriculum(source: Curriculum, phases: list[Phase], path: Path, eval_items: int = 560) -> Path:
    """The ablation's own curriculum file: the source's short-video sets and stage 0, the scaled phases."""
    datasets: dict[str, Any] = {}
    for name in SHORT_VIDEO_SETS:
        if name not in source.datasets:  # text_copy came with v5.3
            continue
        split, kind, count, seed, _frames = source.datasets[name]
        datasets[name] = {
            "split": split,
            "kind": kind,
            "n": count,
            "seed": seed,
            **source.dataset_options.get(name, {}),
        }
    datasets.update({f"ablation_eval_{name}": dict(spec, n=eval_items) for name, spec in EVAL_SETS.items()})
    config = {
        "version": 1,
        "stage0": source.stage0,
        "datasets": datasets,
        "evals": [],
        "phases": [
            {
                **{k: v for k, v in asdict(phase).items() if k not in ("losses", "batch_sizes")},
                "batch_sizes": dict(phase.batch_sizes),
                "losses": _losses_config(phase),
            }
            for phase in phases
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by tools/tiny_ablation.py: tiny/v4's short-video phases, steps scaled.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def train_variant(
    name: str, settings: TinyModelSettings, curriculum_path: Path, phases: list[Phase], work: Path, out: Path
) -> Path:
    """Every phase of one variant through the recipe; returns the last phase's ``final`` folder."""
    init = "random"
    for phase in phases:
        overrides = [
            f"data.tiny.curriculum={curriculum_path}",
            f"data.tiny.phase={phase.name}",
            f"data.tiny.work_dir={work}",
            "data.tiny.eval=false",
            f"model.init={init}",
            f"model.random_init={json.dumps(asdict(settings))}",
            f"train.output_dir={out / name / phase.name}",
        ]
        run(load_config(PHASE_CONFIG, overrides))
        init = str(out / name / phase.name / "final")
    return Path(init)


def format_tables(results: dict) -> str:
    lines = ["| variant | tokens per image / frame | images | short videos |", "|---|---|---|---|"]
    for name, row in results["variants"].items():
        lines.append(
            f"| {name} | {row['tokens_per_image']} / {row['tokens_per_frame']} | "
            f"{row['image_qa']['mean']:.3f} | {row['video_qa']['mean']:.3f} |"
        )
    lines += ["", "| A vs B | set | A - B | 95 % interval | A beats B |", "|---|---|---|---|---|"]
    for row in results["comparisons"]:
        lines.append(
            f"| {row['a']} vs {row['b']} | {row['set']} | {row['difference']:+.3f} | "
            f"[{row['low']:+.3f}, {row['high']:+.3f}] | {'yes' if row['beats'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work-dir", type=Path, default=REPO / "build" / "tiny-model", help="make tiny-model's"
    )
    parser.add_argument("--out", type=Path, default=REPO / "build" / "tiny-ablation")
    parser.add_argument("--curriculum", default="tiny/v4", help="the curriculum whose short-video phases run")
    parser.add_argument("--steps-scale", type=float, default=0.5, help="fraction of the curriculum's steps")
    parser.add_argument("--min-steps", type=int, default=50, help="no scaled phase is shorter than this")
    parser.add_argument("--eval-items", type=int, default=560, help="held-out items per set (images, videos)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ",".join(VARIANTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    source_path = Path(args.curriculum)
    if not source_path.is_file():
        source_path = packaged_config_dir() / f"{args.curriculum.removesuffix('.yaml')}.yaml"
    source = load_curriculum(source_path)
    phases = ablation_phases(source, args.steps_scale, args.min_steps)
    curriculum_path = write_curriculum(source, phases, args.out / "curriculum.yaml", args.eval_items)
    curriculum = load_curriculum(curriculum_path)

    results: dict = {"phases": [p.name for p in phases], "steps": [p.steps for p in phases], "variants": {}}
    results["comparisons"] = []
    correct: dict[tuple[str, str], list[int]] = {}
    for name in args.variants.split(","):
        if name not in VARIANTS:
            parser.error(f"--variants: unknown variant {name!r}; expected some of {', '.join(VARIANTS)}")
        saved = args.out / f"{name}.json"
        if saved.is_file():
            row = json.loads(saved.read_text())
        else:
            started = time.time()
            final = train_variant(name, VARIANTS[name], curriculum_path, phases, args.work_dir, args.out)
            model = LlamaVidForConditionalGeneration.from_pretrained(str(final), dtype=torch.float32).eval()
            processor = LlamaVidProcessor.from_pretrained(final)
            tower = model.model.vision_tower
            evals = [f"ablation_eval_{set_name}" for set_name in EVAL_SETS]
            data = load_phase_data(
                curriculum,
                evals,
                tower,
                int(model.config.vision_config.image_size),
                args.work_dir / "features",
            )
            row = {
                "settings": asdict(VARIANTS[name]),
                "tokens_per_image": model.config.tokens_per_frame(is_image=True),
                "tokens_per_frame": model.config.tokens_per_frame(),
                "train_seconds": time.time() - started,
            }
            for set_name in EVAL_SETS:
                scored = score_items(model, processor, *data[f"ablation_eval_{set_name}"])
                row[set_name] = {k: scored[k] for k in ("mean", "per_type", "correct")}
            saved.write_text(json.dumps(row) + "\n")
        results["variants"][name] = dict(row)
        for set_name in EVAL_SETS:
            correct[(name, set_name)] = row[set_name]["correct"]
    for a, b, set_name in COMPARISONS:
        if (a, set_name) in correct and (b, set_name) in correct:
            stats = paired_bootstrap(correct[(a, set_name)], correct[(b, set_name)])
            results["comparisons"].append({"a": a, "b": b, "set": set_name, **stats})
    for row in results["variants"].values():
        for set_name in EVAL_SETS:
            row[set_name].pop("correct", None)
    (args.out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    table = format_tables(results)
    (args.out / "ablation.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
