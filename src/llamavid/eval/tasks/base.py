"""What every benchmark task provides: items from the published files, judge requests, a scorer.

A task never runs the model and never talks to the judge itself: the runner does both and caches the results.
Tasks read the benchmark's *published* file layout (documented in each class docstring) so a downloaded copy
is used as is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from llamavid.errors import LlamaVidError
from llamavid.eval.judge import JudgeRequest

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".wmv", ".flv", ".mpg")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")


class DataFormatError(LlamaVidError, ValueError):
    """A benchmark file is missing or not in the published format (the message names the file and field)."""


@dataclass(frozen=True)
class EvalItem:
    """One model query of a benchmark.

    Attributes:
        id: Unique within the task; the key of every cache record.
        prompt: The user text sent to the model (without ``<image>``; the predictor adds it).
        media: Video/image/frame-folder path, or ``None`` when it could not be resolved (then ``media_error``).
        reference: Everything the scorer needs (answers, options, category...), JSON-serialisable.
        category: Reporting group (question type, sub-task, duration...), or ``None``.
        question: Text-decoder instruction; defaults to ``prompt`` (docs/architecture.md §10: the question, suffix included).
        media_error: Why the media is unusable, reported per item instead of raising for the whole run.
    """

    id: str
    prompt: str
    media: str | None
    reference: dict[str, Any] = field(default_factory=dict)
    category: str | None = None
    question: str | None = None
    media_error: str | None = None


@dataclass
class TaskScore:
    """A task's numbers: ``metrics`` (headline first), ``per_category`` tables, and notes on what was scored."""

    metrics: dict[str, float]
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    headline: str = ""


class Task:
    """Base class; subclasses set the class attributes and implement :meth:`load` and :meth:`score`."""

    name: ClassVar[str]
    family: ClassVar[str]
    modality: ClassVar[str]  # "video" or "image"
    decoding: ClassVar[str]  # a GENERATION_DEFAULTS preset (docs/architecture.md §6)
    needs_judge: ClassVar[bool] = False
    paper_key: ClassVar[str | None] = None  # column in report.PAPER_NUMBERS
    description: ClassVar[str] = ""

    def load(self, data_dir: Path) -> list[EvalItem]:
        raise NotImplementedError

    def judge_requests(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> list[JudgeRequest]:
        """Judge requests for items whose predictions are all present (empty for LLM-free tasks)."""
        return []

    def score(
        self,
        items: Sequence[EvalItem],
        predictions: Mapping[str, str],
        verdicts: Mapping[str, dict[str, Any]],
    ) -> TaskScore:
        raise NotImplementedError

    def submission(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], out_dir: Path
    ) -> Path | None:
        """Write the official submission file for splits with private answers (``None`` if not applicable)."""
        return None


# Helpers shared by task modules -------------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataFormatError(f"{path} not found; expected the benchmark's published annotation file there.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise DataFormatError(
            f"{path}: not valid JSON ({error}); re-download the annotation file."
        ) from error


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataFormatError(f"{path} not found; expected the benchmark's published question file there.")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as error:
                raise DataFormatError(f"{path}:{number}: not valid JSON ({error}).") from error
    return rows


def require(record: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [key for key in keys if key not in record]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {missing}; has {sorted(record)}.")


def find_media(folder: Path, name: str, extensions: Sequence[str]) -> tuple[str | None, str | None]:
    """Resolve ``name`` (with or without extension, or a frame folder) under ``folder``.

    Returns ``(path, None)`` or ``(None, error)``: a missing file is an item-level error, not a crash.
    """
    direct = folder / name
    if direct.is_file() or direct.is_dir():
        return os.fspath(direct), None
    for extension in extensions:
        candidate = folder / f"{name}{extension}"
        if candidate.is_file():
            return os.fspath(candidate), None
    return None, f"media {name!r} not found under {folder} (tried extensions {', '.join(extensions)})"


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def group_accuracy(items: Sequence[EvalItem], correct: Mapping[str, bool]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[bool]] = {}
    for item in items:
        groups.setdefault(item.category or "all", []).append(correct[item.id])
    return {
        name: {"accuracy": 100.0 * mean([float(x) for x in values]), "count": len(values)}
        for name, values in sorted(groups.items())
    }
