"""Multiple-choice video benchmarks scored without an LLM: MVBench, EgoSchema, Video-MME, MLVU.

The model sees the question, lettered options and the LLaVA-style instruction
"Answer with the option's letter from the given choices directly."; the answer's letter is read with
:func:`~llamavid.eval.scoring.parse_option_letter` (an answer naming no option counts as wrong). The prompt is
ours (LLaMA-VID did not report these benchmarks), identical across the four so numbers compare.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llamavid.eval.scoring import LETTERS, parse_option_letter
from llamavid.eval.tasks.base import (
    VIDEO_EXTENSIONS,
    DataFormatError,
    EvalItem,
    Task,
    TaskScore,
    find_media,
    group_accuracy,
    read_json,
    require,
)

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Z])[\.\):]\s*")


def mc_prompt(question: str, options: Sequence[str]) -> str:
    lines = [question.strip()] + [f"({LETTERS[i]}) {option}" for i, option in enumerate(options)]
    return "\n".join(lines + [MC_INSTRUCTION])


def strip_letter(option: str) -> str:
    """``"A. a cat"`` -> ``"a cat"`` (Video-MME stores options with their letters)."""
    return _LETTER_PREFIX.sub("", option, count=1).strip()


class MultipleChoiceVideoTask(Task):
    family = "video_multiple_choice"
    modality = "video"
    decoding = "video_qa"

    def _item(
        self,
        item_id: str,
        question: str,
        options: Sequence[str],
        answer: str | None,
        media: tuple[str | None, str | None],
        category: str | None,
        extra: dict[str, Any] | None = None,
    ) -> EvalItem:
        if answer is not None and answer not in LETTERS[: len(options)]:
            raise DataFormatError(
                f"{self.name} item {item_id}: answer {answer!r} is not one of {LETTERS[: len(options)]}."
            )
        return EvalItem(
            id=item_id,
            prompt=mc_prompt(question, options),
            question=question,
            media=media[0],
            media_error=media[1],
            reference={"options": list(options), "answer": answer, **(extra or {})},
            category=category,
        )

    def score(
        self,
        items: Sequence[EvalItem],
        predictions: Mapping[str, str],
        verdicts: Mapping[str, dict[str, Any]],
    ) -> TaskScore:
        scored = [item for item in items if item.reference.get("answer") is not None]
        parsed = {
            item.id: parse_option_letter(
                predictions[item.id], len(item.reference["options"]), item.reference["options"]
            )
            for item in scored
        }
        correct = {item.id: parsed[item.id] == item.reference["answer"] for item in scored}
        unparsed = sum(letter is None for letter in parsed.values())
        notes = []
        if len(scored) < len(items):
            notes.append(
                f"{len(items) - len(scored)} item(s) have private answers: not scored locally (see the submission file)."
            )
        if not scored:
            return TaskScore(metrics={}, counts={"items": len(items), "scored": 0}, notes=notes)
        accuracy = 100.0 * sum(correct.values()) / len(scored)
        return TaskScore(
            metrics={"accuracy": accuracy},
            per_category=group_accuracy(scored, correct),
            counts={"items": len(items), "scored": len(scored), "unparsed": unparsed},
            notes=notes,
            headline="accuracy",
        )


def _answer_letter(answer: str, options: Sequence[str], where: str) -> str:
    """MVBench/MLVU store the answer as the option text; map it to its letter."""
    for index, option in enumerate(options):
        if option.strip() == str(answer).strip():
            return LETTERS[index]
    raise DataFormatError(f"{where}: answer {answer!r} is not among the candidates {list(options)}.")


def _load_task_json_files(
    task: MultipleChoiceVideoTask, data_dir: Path, layout: str, category: Callable[[dict, Path], str]
) -> list[EvalItem]:
    """Read the ``DIR/json/<task>.json`` + ``DIR/video/[<task>/]`` layout that MVBench and MLVU share.

    Args:
        layout: the expected file names, for the error when none are found.
        category: the reporting category of a row (its task file or its question type).
    """
    files = sorted((data_dir / "json").glob("*.json"))
    if not files:
        raise DataFormatError(f"{data_dir / 'json'}: no task files; expected {layout}.")
    items = []
    for file in files:
        for index, row in enumerate(read_json(file)):
            where = f"{file.name}[{index}]"
            require(row, ("video", "question", "candidates", "answer"), where)
            media = find_media(data_dir / "video" / file.stem, row["video"], VIDEO_EXTENSIONS)
            if media[0] is None:
                media = find_media(data_dir / "video", row["video"], VIDEO_EXTENSIONS)
            options = [str(c) for c in row["candidates"]]
            items.append(
                task._item(
                    f"{file.stem}/{index}",
                    row["question"],
                    options,
                    _answer_letter(row["answer"], options, where),
                    media,
                    category(row, file),
                )
            )
    return items


class MVBench(MultipleChoiceVideoTask):
    """MVBench: ``DIR/json/<task>.json`` = ``[{"video", "question", "candidates", "answer"}]`` (answer = option
    text); videos under ``DIR/video/<task>/`` or ``DIR/video/``. Reported per task (20) and overall."""

    name = "mvbench"
    description = "MVBench (20 temporal tasks, multiple choice)"

    def load(self, data_dir: Path) -> list[EvalItem]:
        return _load_task_json_files(
            self, data_dir, "MVBench's json/<task>.json files", lambda row, file: file.stem
        )


class MLVU(MultipleChoiceVideoTask):
    """MLVU (dev, multiple-choice tasks): ``DIR/json/<n>_<task>.json`` = ``[{"video", "duration", "question",
    "candidates", "answer", "question_type"}]``; videos under ``DIR/video/<n>_<task>/`` or ``DIR/video/``."""

    name = "mlvu"
    description = "MLVU dev multiple-choice (long videos), per question type"

    def load(self, data_dir: Path) -> list[EvalItem]:
        return _load_task_json_files(
            self,
            data_dir,
            "MLVU's json/<n>_<task>.json files",
            lambda row, file: str(row.get("question_type", file.stem)),
        )


class VideoMME(MultipleChoiceVideoTask):
    """Video-MME: ``DIR/videomme.json`` (the released parquet's rows as a JSON list: ``videoID``, ``duration``,
    ``task_type``, ``question_id``, ``question``, ``options`` ["A. ...", ...], ``answer`` "A"); videos under
    ``DIR/data/<videoID>.mp4``. Reported per duration (short/medium/long) and per task type; no subtitles."""

    name = "videomme"
    description = "Video-MME (w/o subtitles), per duration and task type"

    def load(self, data_dir: Path) -> list[EvalItem]:
        source = data_dir / "videomme.json"
        rows = read_json(source)
        items = []
        for index, row in enumerate(rows):
            where = f"{source.name}[{index}]"
            require(row, ("videoID", "question_id", "question", "options", "answer"), where)
            media = find_media(data_dir / "data", str(row["videoID"]), VIDEO_EXTENSIONS)
            options = [strip_letter(str(option)) for option in row["options"]]
            items.append(
                self._item(
                    str(row["question_id"]),
                    row["question"],
                    options,
                    str(row["answer"]).strip(),
                    media,
                    str(row.get("duration", "all")),
                    {"task_type": row.get("task_type")},
                )
            )
        return items

    def score(
        self,
        items: Sequence[EvalItem],
        predictions: Mapping[str, str],
        verdicts: Mapping[str, dict[str, Any]],
    ) -> TaskScore:
        result = super().score(items, predictions, verdicts)
        correct = {
            item.id: parse_option_letter(
                predictions[item.id], len(item.reference["options"]), item.reference["options"]
            )
            == item.reference["answer"]
            for item in items
        }
        by_type: dict[str, list[bool]] = {}
        for item in items:
            by_type.setdefault(f"task: {item.reference.get('task_type')}", []).append(correct[item.id])
        for name, values in sorted(by_type.items()):
            result.per_category[name] = {"accuracy": 100.0 * sum(values) / len(values), "count": len(values)}
        return result


class EgoSchema(MultipleChoiceVideoTask):
    """EgoSchema: ``DIR/questions.json`` = ``[{"q_uid", "question", "option 0" ... "option 4"}]``, public answers
    for the 500-question subset in ``DIR/subset_answers.json`` (``{q_uid: index}``), videos ``DIR/videos/<q_uid>.mp4``.

    Only the subset is scored locally (labelled "subset"); the full-set answers are private, so every run writes
    ``egoschema_submission.csv`` (``q_uid,answer``) for the official server.
    """

    name = "egoschema"
    description = "EgoSchema (5-way; public 500-question subset scored locally, full set by submission)"

    def load(self, data_dir: Path) -> list[EvalItem]:
        rows = read_json(data_dir / "questions.json")
        answers_path = data_dir / "subset_answers.json"
        answers = read_json(answers_path) if answers_path.is_file() else {}
        items = []
        for index, row in enumerate(rows):
            where = f"questions.json[{index}]"
            require(row, ("q_uid", "question", "option 0"), where)
            options = [str(row[f"option {i}"]) for i in range(5) if f"option {i}" in row]
            media = find_media(data_dir / "videos", str(row["q_uid"]), VIDEO_EXTENSIONS)
            answer = answers.get(row["q_uid"])
            letter = LETTERS[int(answer)] if answer is not None else None
            items.append(
                self._item(
                    str(row["q_uid"]),
                    row["question"],
                    options,
                    letter,
                    media,
                    "subset" if letter is not None else "private",
                )
            )
        return items

    def submission(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], out_dir: Path
    ) -> Path | None:
        path = out_dir / "egoschema_submission.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["q_uid", "answer"])
            for item in items:
                letter = parse_option_letter(
                    predictions[item.id], len(item.reference["options"]), item.reference["options"]
                )
                # The server expects an option index; an unparsable answer is submitted as -1 (always wrong).
                writer.writerow([item.id, LETTERS.index(letter) if letter else -1])
        return path
