"""``llamavid eval TASK``: predict, judge and score one benchmark, resumably.

Exit codes: 0 scored; 3 items or verdicts missing (listed, nothing scored); 2 usage/data errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llamavid.errors import InvalidInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    from llamavid.eval.tasks import TASKS

    parser = subparsers.add_parser(
        "eval",
        help="run a benchmark: predictions.jsonl -> (judge) -> score report",
        description=(
            "Evaluate a model on a benchmark in its published format. Predictions and judge replies are cached "
            "per item under --out; rerunning the same command resumes. No score is reported while any item is "
            "missing. Without --model only the cached predictions are judged/scored. Tasks: "
            + ", ".join(sorted(TASKS))
        ),
    )
    parser.add_argument("task", choices=sorted(TASKS), metavar="TASK", help="benchmark name")
    parser.add_argument("--data", required=True, type=Path, help="benchmark folder (published layout)")
    parser.add_argument(
        "--model", type=Path, default=None, help="llamavid model folder (omit to score cached predictions)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: eval-output/TASK)")
    parser.add_argument(
        "--greedy", action="store_true", help="greedy decoding instead of the task's sampling preset"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="only the first N items (reported as partial)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="items per generate call (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override the preset's length limit")
    parser.add_argument(
        "--max-frames", type=int, default=None, help="cap sampled video frames (default: none)"
    )
    parser.add_argument("--device", default=None, help="torch device for the model (default: CPU)")
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="model dtype"
    )
    parser.add_argument(
        "--judge-url", default=None, help="OpenAI-compatible API base URL (e.g. http://host:8000/v1)"
    )
    parser.add_argument("--judge-model", default=None, help="judge model id (required with --judge-url)")
    parser.add_argument("--judge-workers", type=int, default=4, help="concurrent judge requests (default 4)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llamavid.eval.judge import JudgeClient
    from llamavid.eval.predictor import ModelPredictor
    from llamavid.eval.runner import IncompleteRunError, RunSettings, run_task
    from llamavid.eval.tasks import get_task

    task = get_task(args.task)
    if (args.judge_url is None) != (args.judge_model is None):
        raise InvalidInputError("--judge-url and --judge-model go together (no default judge host).")
    settings = RunSettings(
        batch_size=args.batch_size,
        limit=args.limit,
        greedy=args.greedy,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        max_frames=args.max_frames,
        judge_workers=args.judge_workers,
    )
    out_dir = args.out or Path("eval-output") / task.name
    predictor = (
        ModelPredictor.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        if args.model
        else None
    )
    judge = JudgeClient(args.judge_url, args.judge_model) if args.judge_url else None
    try:
        report = run_task(task, args.data, out_dir, settings, predictor=predictor, judge=judge)
    except IncompleteRunError as error:
        print(f"llamavid eval: {error}", file=sys.stderr)
        return 3
    finally:
        if judge is not None:
            judge.close()
    metrics = (
        ", ".join(f"{name}={value:.2f}" for name, value in report["metrics"].items()) or "not scored locally"
    )
    print(f"{task.name}: {metrics} ({report['items']} items{', partial' if report['partial'] else ''})")
    print(f"report: {out_dir / 'report.md'}")
    if report["submission_file"]:
        print(f"submission file: {report['submission_file']}")
    return 0
