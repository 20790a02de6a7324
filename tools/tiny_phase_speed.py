"""Seconds per training step of every phase of a tiny-model curriculum, to plan `make tiny-model`'s time budget.

Each phase runs for ``--steps`` steps (a temporary copy of the curriculum with every phase shortened) through the
same ``llamavid train`` call the Makefile makes, started from the previous phase's ``final/`` folder of a finished
run (``--runs``), with the dev evaluations off. Seconds per step are taken between step 10 and the last logged
step (the first steps warm up); the set-up column is the rest of the call's wall time (items, feature caches,
model). The report projects each phase's full length from its step count in the curriculum. Nothing is written
outside ``--out`` and the temporary curriculum.

Usage: ``.venv/bin/python tools/tiny_phase_speed.py --runs build/tiny-model/runs [--curriculum tiny/v5.3]``
(about 20 minutes for v5 on 2 cores; results in docs/tiny-model.md, "Where make tiny-model's time goes").
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def shortened(curriculum: dict[str, Any], steps: int) -> dict[str, Any]:
    """A copy of a curriculum (its YAML as a dict) with every phase `steps` long and no dev evaluations."""
    short = copy.deepcopy(curriculum)
    for phase in short["phases"]:
        phase["steps"] = steps
        phase.pop("eval_every", None)
    return short


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=Path, required=True, help="the finished run's folder (runs/<phase>/final)"
    )
    parser.add_argument("--curriculum", default="tiny/v5.3", help="packaged name (tiny/v5.3) or a YAML path")
    parser.add_argument("--work-dir", type=Path, default=Path("build/tiny-model"), help="data.tiny.work_dir")
    parser.add_argument("--steps", type=int, default=30, help="steps per phase (at least 20)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("build/tiny-phase-speed"), help="where the runs go")
    parser.add_argument("--phases", default=None, help="comma list of phases to time (default: all)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="more `llamavid train` overrides for every call (e.g. train.precision=bf16)",
    )
    args = parser.parse_args()
    if args.steps < 20:
        parser.error("--steps must be at least 20 (seconds per step are measured from step 10 on)")

    from llamavid.train.curriculum import curriculum_mapping
    from llamavid.train.tiny_phase import TinyPhaseConfig

    source = TinyPhaseConfig(curriculum=args.curriculum, phase="-").curriculum_path()
    curriculum = curriculum_mapping(source)  # `extends` resolved: the shortened copy stands alone
    full_steps = {phase["name"]: int(phase["steps"]) for phase in curriculum["phases"]}
    chosen = list(full_steps) if args.phases is None else [name.strip() for name in args.phases.split(",")]
    unknown = sorted(set(chosen) - set(full_steps))
    if unknown:
        parser.error(f"--phases: {unknown} not in {source} (phases: {', '.join(full_steps)})")
    curriculum = shortened(curriculum, args.steps)
    train = [str(Path(sys.executable).with_name("llamavid")), "train"]
    config = REPO_ROOT / "src" / "llamavid" / "train" / "configs" / "tiny" / "phase.yaml"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        short = Path(tmp) / "short.yaml"
        short.write_text(yaml.safe_dump(curriculum, sort_keys=False), encoding="utf-8")
        order = list(full_steps)
        for name in chosen:
            steps = full_steps[name]
            index = order.index(name)
            previous = (
                order[index - 1] if index else None
            )  # each phase starts where the curriculum has it start
            output = args.out / name
            command = [
                *train,
                str(config),
                f"data.tiny.curriculum={short}",
                f"data.tiny.work_dir={args.work_dir}",
                f"data.tiny.threads={args.threads}",
                f"data.tiny.phase={name}",
                "data.tiny.eval=false",
                f"train.output_dir={output}",
                *args.overrides,
            ]
            if previous is not None:
                command.append(f"model.init={args.runs / previous / 'final'}")
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            logged = [
                json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line
            ]
            elapsed = {row["step"]: row["elapsed_s"] for row in logged if "step" in row}
            last = max(elapsed)
            per_step = (elapsed[last] - elapsed[10]) / (last - 10)
            row = {
                "phase": name,
                "steps": steps,
                "s_per_step": per_step,
                "projected_min": per_step * steps / 60,
                "setup_s": wall - elapsed[last],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| phase | steps | s / step | projected min | set-up s |\n|---|---|---|---|---|", file=sys.stderr)
    for row in rows:
        print(
            f"| {row['phase']} | {row['steps']} | {row['s_per_step']:.2f} | {row['projected_min']:.1f} | "
            f"{row['setup_s']:.0f} |",
            file=sys.stderr,
        )
    total = sum(row["projected_min"] for row in rows)
    setup = sum(row["setup_s"] for row in rows) / 60
    print(f"| total | | | {total:.0f} | {setup:.0f} min |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
