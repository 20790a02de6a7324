"""The paper's token ablation in miniature (``make tiny-ablation``): which visual tokens carry the answers?

Trains four tiny LLaMA-VIDs that differ only in their visual tokens, on the same stage-0 tower, caches, data and
schedule as ``make tiny-model`` (its image/short-video phases, steps scaled by ``--steps-scale``), then scores
them on the same held-out items and compares them with paired-bootstrap 95 % intervals:

* ``both``: 1 context + 16 content tokens per image, 1 + 1 per video frame (the shipped design);
* ``content_only``: no context token (16 per image, 1 per frame);
* ``context_only``: no content token (1 per image, 1 per frame);
* ``both_image_1``: images compressed to 1 content token, like video frames (1 + 1 per image).

"A beats B" means the paired-bootstrap 95 % interval of accuracy(A) - accuracy(B) excludes zero. Reuses the
``make tiny-model`` work folder (stage 0, tokenizers, caches), so run that first or let this script build them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from train_tiny_model import DATASETS, PHASES, REPO, STAGE0, load_datasets, load_tokenizers

from llamavid.eval.scoring import paired_bootstrap
from llamavid.model.processing_llamavid import LlamaVidProcessor
from llamavid.train.stage0_vision import load_tower, train_stage0
from llamavid.train.tiny import (
    TEMPLATE,
    AuxiliaryHeads,
    TinyModelSettings,
    TrainLog,
    build_tiny_model,
    score_items,
    train_phase,
)

logger = logging.getLogger("tiny_ablation")

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
EVAL_SETS = {
    "image_qa": ("heldout", "image_qa", 560, 0, 0),
    "video_qa": ("heldout", "video_qa", 560, 0, 0),
}
SHORT_VIDEO_SETS = ("image_qa", "image_qa_s1", "video_qa", "text_qa")


def ablation_phases(scale: float) -> list:
    """The main recipe's image/short-video phases (no long videos), steps scaled."""
    phases = []
    for phase in PHASES:
        if not set(phase.mixture) <= set(SHORT_VIDEO_SETS):
            continue
        phases.append(replace(phase, steps=max(50, int(phase.steps * scale)), eval_every=0))
    return phases


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
    parser.add_argument("--steps-scale", type=float, default=0.5, help="fraction of the main recipe's steps")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    work: Path = args.work_dir
    train_stage0(STAGE0, work / "stage0")
    tokenizer, qformer_tokenizer = load_tokenizers(work)
    tower, stage0_settings = load_tower(work / "stage0")
    specs = {name: DATASETS[name] for name in SHORT_VIDEO_SETS}
    specs.update({f"ablation_eval_{name}": spec for name, spec in EVAL_SETS.items()})
    data = load_datasets(work, specs, tower, stage0_settings.image_size)
    phases = ablation_phases(args.steps_scale)

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"phases": [asdict(p) for p in phases], "variants": {}, "comparisons": []}
    correct: dict[tuple[str, str], list[int]] = {}
    for name in args.variants.split(","):
        settings = VARIANTS[name]
        saved = args.out / f"{name}.json"
        if saved.is_file():  # resumable: a finished variant is not retrained
            row = json.loads(saved.read_text())
        else:
            started = time.time()
            torch.manual_seed(0)
            model = build_tiny_model(work / "stage0", tokenizer, qformer_tokenizer, settings)
            processor = LlamaVidProcessor.from_config(
                model.config, tokenizer, qformer_tokenizer, template=TEMPLATE
            )
            aux = AuxiliaryHeads(model.config.text_config.hidden_size)
            for phase in phases:
                train_phase(model, processor, phase, data, {}, TrainLog(), aux=aux)
            row = {
                "settings": asdict(settings),
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
