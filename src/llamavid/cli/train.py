"""``llamavid train``: run one training stage from a YAML config plus dotted overrides."""

from __future__ import annotations

import argparse
import json
import logging

_EPILOG = """\
examples:
  llamavid train tiny_debug                              # random tiny model, synthetic data, < 1 min on CPU
  llamavid train stage2_instruct.yaml optim.lr=1e-5 train.output_dir=runs/s2
  llamavid train tiny_debug --resume runs/tiny_debug     # continue a killed run from its latest checkpoint
  torchrun --nproc_per_node 8 -m llamavid.cli.main train stage2_instruct.yaml   # several GPUs

CONFIG is a YAML path or a packaged config name: tiny_debug, stage1_align, stage2_instruct, stage3_long_video
(+ _13b variants). Overrides are section.key=value with YAML values (lists as [a, b]); unknown keys are errors.
Outputs in train.output_dir: checkpoints/step_N (resumable), latest, metrics.jsonl, loss_curve.png and
final/ (save_pretrained weights + processor + mm_projector.safetensors for the next stage).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a stage (alignment, instruction tuning, long video) from a YAML config",
        description=(
            "Train LLaMA-VID with the one training recipe. The stage, data, trainable modules, optimizer and "
            "distributed strategy come from CONFIG; override any key on the command line."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "config", metavar="CONFIG", help="YAML file or packaged config name (e.g. tiny_debug)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=2e-5"
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="run folder (uses its latest checkpoint) or a checkpoints/step_N folder",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as JSON and exit without training",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llamavid.train.schema import load_config

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from llamavid.train.datasets import read_training_json

    # Read every training file now: a wrong file must fail before the model is built, not after. (The dataset
    # parses them again later; that costs seconds per GB of JSON, far less than loading the model.)
    for path in cfg.data.train_files:
        read_training_json(path)
    from llamavid.train.recipe import run as run_recipe

    logging.getLogger("llamavid").setLevel(logging.INFO)
    recipe, losses = run_recipe(cfg, resume_from=args.resume)
    if recipe.is_main:
        first = f"{losses[0]:.4f}" if losses else "-"
        last = f"{losses[-1]:.4f}" if losses else "-"
        print(
            f"trained {len(losses)} steps (to step {recipe.state.global_step}/{recipe.total_steps}); "
            f"loss {first} -> {last}"
        )
        print(f"final model: {recipe.output_dir / 'final'}")
        print(f"loss curve:  {recipe.output_dir / 'loss_curve.png'}")
    return 0
