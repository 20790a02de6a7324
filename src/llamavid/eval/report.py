"""Reports: ``results.json`` (machine-readable) and ``report.md`` (per-category table, decoding, judge, commit,
and the paper's numbers from docs/architecture.md §10 next to ours)."""

from __future__ import annotations

import datetime as _dt
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamavid.eval.records import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from llamavid.eval.runner import EvalRun
    from llamavid.eval.tasks.base import TaskScore

# Spec §10.1 / §10.2: the paper's reported numbers, keyed by Task.paper_key, then model row, then our metric name.
PAPER_NUMBERS: dict[str, dict[str, dict[str, float]]] = {
    "msvd_qa": {
        "Vicuna-7B (224)": {"accuracy": 69.7, "score": 3.7},
        "Vicuna-13B (224)": {"accuracy": 70.0, "score": 3.7},
    },
    "msrvtt_qa": {
        "Vicuna-7B (224)": {"accuracy": 57.7, "score": 3.2},
        "Vicuna-13B (224)": {"accuracy": 58.9, "score": 3.3},
    },
    "activitynet_qa": {
        "Vicuna-7B (224)": {"accuracy": 47.4, "score": 3.3},
        "Vicuna-13B (224)": {"accuracy": 47.5, "score": 3.3},
    },
    "video_chatgpt": {
        "Vicuna-7B (224)": {
            "correctness": 2.96,
            "detail": 3.00,
            "context": 3.53,
            "temporal": 2.46,
            "consistency": 2.51,
        },
        "Vicuna-13B (224)": {
            "correctness": 3.07,
            "detail": 3.05,
            "context": 3.60,
            "temporal": 2.58,
            "consistency": 2.63,
        },
    },
    "gqa": {
        "Vicuna-7B 224": {"accuracy": 63.0},
        "Vicuna-7B 336": {"accuracy": 64.3},
        "Vicuna-13B 336": {"accuracy": 65.0},
    },
    "mmbench": {
        "Vicuna-7B 224": {"circular_accuracy": 65.3},
        "Vicuna-7B 336": {"circular_accuracy": 65.1},
        "Vicuna-13B 336": {"circular_accuracy": 66.6},
    },
    "mme": {
        "Vicuna-7B 224": {"perception": 1405.6},
        "Vicuna-7B 336": {"perception": 1521.4},
        "Vicuna-13B 336": {"perception": 1542.3},
    },
    "pope": {"Vicuna-7B 224": {"f1": 86.6}, "Vicuna-7B 336": {"f1": 86.0}, "Vicuna-13B 336": {"f1": 86.0}},
    "seed": {
        "Vicuna-7B 224": {"accuracy": 59.7},
        "Vicuna-7B 336": {"accuracy": 59.9},
        "Vicuna-13B 336": {"accuracy": 62.3},
    },
    "sqa_img": {
        "Vicuna-7B 224": {"accuracy": 67.7},
        "Vicuna-7B 336": {"accuracy": 68.3},
        "Vicuna-13B 336": {"accuracy": 70.0},
    },
    "vizwiz": {
        "Vicuna-7B 224": {"accuracy": 52.5},
        "Vicuna-7B 336": {"accuracy": 54.2},
        "Vicuna-13B 336": {"accuracy": 54.3},
    },
    "vqav2": {
        "Vicuna-7B 224": {"accuracy": 78.3},
        "Vicuna-7B 336": {"accuracy": 79.3},
        "Vicuna-13B 336": {"accuracy": 80.0},
    },
}
# Splits behind the paper's numbers; a local score on another split is labelled as not comparable.
PAPER_SPLITS = {"vqav2": "test-dev", "vizwiz": "test", "gqa": "testdev-balanced", "mmbench": "dev"}


def git_commit() -> str | None:
    """The commit of the llamavid source tree, when it is a git checkout (``None`` for installed wheels)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    if result.returncode != 0 or not commit:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def build_report(run: EvalRun, score: TaskScore, submission: Path | None) -> dict[str, Any]:
    from llamavid import __version__

    task = run.task
    records = run.predictions.load()
    models = sorted({records[item.id].get("model", "unknown") for item in run.items if item.id in records})
    return {
        "task": task.name,
        "description": task.description,
        "data_dir": str(run.data_dir),
        "items": len(run.items),
        "total_items_in_data": run.total_items,
        "partial": len(run.items) < run.total_items,
        "metrics": score.metrics,
        "headline": score.headline,
        "per_category": score.per_category,
        "counts": score.counts,
        "notes": score.notes,
        "decoding": run.decodings(),
        "models": models,
        "judge": run.judge_provenance() if task.needs_judge else None,
        "submission_file": str(submission) if submission else None,
        "paper": PAPER_NUMBERS.get(task.paper_key or "", {}),
        "llamavid_version": __version__,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# {report['task']}: {report['description']}", ""]
    if report["partial"]:
        lines += [
            f"**Partial run**: {report['items']} of {report['total_items_in_data']} items (--limit); "
            "not comparable with published numbers.",
            "",
        ]
    if report["metrics"]:
        lines += ["| metric | value |", "|---|---|"]
        lines += [
            f"| {name}{' (headline)' if name == report['headline'] else ''} | {_fmt(v)} |"
            for name, v in report["metrics"].items()
        ]
    else:
        lines += ["No local score (private answers); see the submission file."]
    lines.append("")
    if report["per_category"]:
        columns = sorted(
            {key for row in report["per_category"].values() for key in row}, key=lambda k: (k == "count", k)
        )
        lines += [
            "## Per category",
            "",
            "| category | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for name, row in report["per_category"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
        lines.append("")
    if report["paper"]:
        metrics = sorted({m for row in report["paper"].values() for m in row})
        lines += [
            "## Paper (docs/architecture.md §10) vs this run",
            "",
            "| model | " + " | ".join(metrics) + " |",
            "|---|" + "---|" * len(metrics),
        ]
        for model, row in report["paper"].items():
            lines.append(f"| {model} | " + " | ".join(_fmt(row.get(m, "")) for m in metrics) + " |")
        lines.append(
            "| **this run** | " + " | ".join(_fmt(report["metrics"].get(m, "n/a")) for m in metrics) + " |"
        )
        lines.append("")
    lines += [
        "## Run",
        "",
        f"- items: {report['items']} (counts: {report['counts']})",
        f"- models: {', '.join(report['models'])}",
        f"- decoding: {report['decoding']}",
    ]
    if report["judge"] is not None:
        lines.append(f"- judge: {report['judge']}")
    if report["submission_file"]:
        lines.append(f"- submission file: `{report['submission_file']}`")
    lines += [f"- llamavid {report['llamavid_version']}, commit {report['commit']}, date {report['date']}"]
    lines += [f"- note: {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out_dir: Path) -> None:
    write_json_atomic(out_dir / "results.json", report)
    write_text_atomic(out_dir / "report.md", render_markdown(report))
