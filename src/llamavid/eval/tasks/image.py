"""Image benchmarks of the LLaVA-1.5 protocol (docs/architecture.md §10): greedy, 128 new tokens, vicuna_v1.

Each class documents the published files it reads. Splits whose answers are private (VQAv2 test-dev, VizWiz
test, EgoSchema full) get their official submission file and are reported as "not scored locally".
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llamavid.errors import InvalidInputError
from llamavid.eval.scoring import (
    LETTERS,
    binary_metrics,
    exact_match,
    normalize_vqa_answer,
    parse_mme_answer,
    parse_option_letter,
    parse_yes_no,
    vqa_accuracy,
)
from llamavid.eval.tasks.base import (
    IMAGE_EXTENSIONS,
    DataFormatError,
    EvalItem,
    Task,
    TaskScore,
    find_media,
    group_accuracy,
    mean,
    read_json,
    read_jsonl,
    require,
)

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


def _image(folder: Path, name: str) -> tuple[str | None, str | None]:
    return find_media(folder, name, IMAGE_EXTENSIONS)


class ImageTask(Task):
    family = "image"
    modality = "image"
    decoding = "image_eval"


class GQA(ImageTask):
    """GQA testdev-balanced: ``llava_gqa_testdev_balanced.jsonl`` (``question_id``, ``image``, ``text``) with
    answers from ``testdev_balanced_questions.json`` (``{qid: {"answer", "types": {"structural"}}}``), images in
    ``DIR/images``. Exact match after LLaVA's clean-up (strip, trailing period, lower case)."""

    name = "gqa"
    paper_key = "gqa"
    description = "GQA testdev-balanced accuracy (exact match)"

    def load(self, data_dir: Path) -> list[EvalItem]:
        questions = read_jsonl(data_dir / "llava_gqa_testdev_balanced.jsonl")
        answers = read_json(data_dir / "testdev_balanced_questions.json")
        items = []
        for index, row in enumerate(questions):
            require(row, ("question_id", "image", "text"), f"llava_gqa_testdev_balanced.jsonl:{index + 1}")
            gold = answers.get(str(row["question_id"]))
            if gold is None or "answer" not in gold:
                raise DataFormatError(
                    f"testdev_balanced_questions.json has no answer for question {row['question_id']}."
                )
            path, error = _image(data_dir / "images", row["image"])
            items.append(
                EvalItem(
                    str(row["question_id"]),
                    row["text"],
                    path,
                    {"answer": gold["answer"]},
                    gold.get("types", {}).get("structural"),
                    media_error=error,
                )
            )
        return items

    def score(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], verdicts: Mapping[str, Any]
    ) -> TaskScore:
        correct = {item.id: exact_match(predictions[item.id], item.reference["answer"]) for item in items}
        return TaskScore(
            {"accuracy": 100.0 * mean([float(v) for v in correct.values()])},
            group_accuracy(items, correct),
            {"items": len(items)},
            headline="accuracy",
        )


class POPE(ImageTask):
    """POPE (COCO): ``llava_pope_test.jsonl`` (``question_id``, ``image``, ``text``, ``category``) and labels in
    ``coco/coco_pope_<category>.json`` (JSON lines with ``question_id``, ``label`` yes/no); images in
    ``DIR/val2014``. Per split: accuracy, precision, recall, F1, yes-ratio; headline = mean F1 of the splits."""

    name = "pope"
    paper_key = "pope"
    description = (
        "POPE adversarial/popular/random: F1 (headline: mean over splits), precision, recall, yes-ratio"
    )

    def load(self, data_dir: Path) -> list[EvalItem]:
        questions = read_jsonl(data_dir / "llava_pope_test.jsonl")
        labels: dict[tuple[str, str], str] = {}
        for category in sorted({str(q.get("category")) for q in questions}):
            for row in read_jsonl(data_dir / "coco" / f"coco_pope_{category}.json"):
                labels[(category, str(row["question_id"]))] = str(row["label"]).strip().lower()
        items = []
        for index, row in enumerate(questions):
            require(row, ("question_id", "image", "text", "category"), f"llava_pope_test.jsonl:{index + 1}")
            label = labels.get((row["category"], str(row["question_id"])))
            if label not in ("yes", "no"):
                raise DataFormatError(
                    f"coco_pope_{row['category']}.json: no yes/no label for question {row['question_id']}."
                )
            path, error = _image(data_dir / "val2014", row["image"])
            items.append(
                EvalItem(
                    f"{row['category']}/{row['question_id']}",
                    row["text"],
                    path,
                    {"label": label},
                    row["category"],
                    media_error=error,
                )
            )
        return items

    def score(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], verdicts: Mapping[str, Any]
    ) -> TaskScore:
        per_category = {}
        for category in sorted({item.category or "all" for item in items}):
            chosen = [item for item in items if (item.category or "all") == category]
            per_category[category] = binary_metrics(
                [parse_yes_no(predictions[item.id]) for item in chosen],
                [item.reference["label"] for item in chosen],
            )
        metrics = {
            "f1": mean([m["f1"] for m in per_category.values()]),
            "accuracy": mean([m["accuracy"] for m in per_category.values()]),
        }
        return TaskScore(metrics, per_category, {"items": len(items)}, headline="f1")


MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


class MME(ImageTask):
    """MME in its release layout: ``DIR/<category>/`` with either ``images/`` + ``questions_answers_YN/<img>.txt``
    or image and ``.txt`` side by side; each ``.txt`` line is ``question<TAB>Yes|No``. The LLaVA suffix
    "Answer the question using a single word or phrase." is appended. Category score = acc + acc+ (acc+: both
    questions of an image right); perception = sum over the 10 perception categories (the paper's number)."""

    name = "mme"
    paper_key = "mme"
    description = "MME perception (sum of acc + acc+ over 10 categories); cognition reported too"

    def load(self, data_dir: Path) -> list[EvalItem]:
        root = (
            data_dir / "MME_Benchmark_release_version"
            if (data_dir / "MME_Benchmark_release_version").is_dir()
            else data_dir
        )
        items = []
        for category_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            if category_dir.name not in MME_PERCEPTION + MME_COGNITION:
                continue
            qa_dir = category_dir / "questions_answers_YN"
            image_dir = category_dir / "images" if qa_dir.is_dir() else category_dir
            text_dir = qa_dir if qa_dir.is_dir() else category_dir
            for text_file in sorted(text_dir.glob("*.txt")):
                lines = [line for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
                for number, line in enumerate(lines):
                    parts = line.split("\t")
                    if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                        raise DataFormatError(
                            f"{text_file}:{number + 1}: expected 'question<TAB>Yes|No', got {line!r}."
                        )
                    path, error = _image(image_dir, text_file.stem)
                    items.append(
                        EvalItem(
                            f"{category_dir.name}/{text_file.stem}/{number}",
                            f"{parts[0].strip()}\n{SHORT_ANSWER}",
                            path,
                            {"answer": parts[1].strip().lower(), "image": text_file.stem},
                            category_dir.name,
                            media_error=error,
                        )
                    )
        if not items:
            raise DataFormatError(
                f"{root}: no MME category folders ({', '.join(MME_PERCEPTION)}, ...) found."
            )
        return items

    def score(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], verdicts: Mapping[str, Any]
    ) -> TaskScore:
        per_category: dict[str, dict[str, float]] = {}
        for category in sorted({item.category for item in items if item.category}):
            chosen = [item for item in items if item.category == category]
            right = {
                item.id: parse_mme_answer(predictions[item.id]) == item.reference["answer"] for item in chosen
            }
            images: dict[str, list[bool]] = {}
            for item in chosen:
                images.setdefault(item.reference["image"], []).append(right[item.id])
            acc = 100.0 * sum(right.values()) / len(right)
            acc_plus = 100.0 * sum(all(v) for v in images.values()) / len(images)
            per_category[category] = {
                "acc": acc,
                "acc_plus": acc_plus,
                "score": acc + acc_plus,
                "count": len(chosen),
            }
        perception = sum(v["score"] for k, v in per_category.items() if k in MME_PERCEPTION)
        cognition = sum(v["score"] for k, v in per_category.items() if k in MME_COGNITION)
        notes = []
        absent = [c for c in MME_PERCEPTION if c not in per_category]
        if absent:
            notes.append(f"perception sums only the categories present; missing: {', '.join(absent)}.")
        return TaskScore(
            {"perception": perception, "cognition": cognition},
            per_category,
            {"items": len(items)},
            notes,
            headline="perception",
        )


class ScienceQAImage(ImageTask):
    """ScienceQA-IMG: LLaVA's ``llava_test_CQM-A.json`` (``[{"id", "image"?, "conversations": [{"value"}]}]``)
    with answers from ScienceQA's ``problems.json`` (``{id: {"choices", "answer" (index), "subject"}}``); images
    under ``DIR/images/test``. Only questions with an image are asked (SQA-I); prompt = the question file's text
    plus "Answer with the option's letter from the given choices directly." (single-prediction prompt)."""

    name = "scienceqa_img"
    paper_key = "sqa_img"
    description = "ScienceQA test, image subset (SQA-I) accuracy"

    def load(self, data_dir: Path) -> list[EvalItem]:
        questions = read_json(data_dir / "llava_test_CQM-A.json")
        problems = read_json(data_dir / "problems.json")
        items = []
        for index, row in enumerate(questions):
            require(row, ("id", "conversations"), f"llava_test_CQM-A.json[{index}]")
            if not row.get("image"):
                continue
            problem = problems.get(str(row["id"]))
            if problem is None:
                raise DataFormatError(f"problems.json has no problem {row['id']}.")
            text = row["conversations"][0]["value"].replace("<image>", "").strip()
            path, error = _image(data_dir / "images" / "test", row["image"])
            if path is None:
                path, error = _image(data_dir / "images", row["image"])
            items.append(
                EvalItem(
                    str(row["id"]),
                    f"{text}\n{LETTER_ANSWER}",
                    path,
                    {"choices": problem["choices"], "answer": LETTERS[int(problem["answer"])]},
                    problem.get("subject"),
                    question=text,
                    media_error=error,
                )
            )
        return items

    def score(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], verdicts: Mapping[str, Any]
    ) -> TaskScore:
        parsed = {
            item.id: parse_option_letter(
                predictions[item.id], len(item.reference["choices"]), item.reference["choices"]
            )
            for item in items
        }
        correct = {item.id: parsed[item.id] == item.reference["answer"] for item in items}
        return TaskScore(
            {"accuracy": 100.0 * mean([float(v) for v in correct.values()])},
            group_accuracy(items, correct),
            {"items": len(items), "unparsed": sum(v is None for v in parsed.values())},
            headline="accuracy",
        )


class VQAv2(ImageTask):
    """VQAv2. Public split (scored locally): ``v2_OpenEnded_mscoco_val2014_questions.json`` +
    ``v2_mscoco_val2014_annotations.json``, images ``DIR/val2014/COCO_val2014_<id:012d>.jpg``. Private test-dev
    (the paper's number): ``llava_vqav2_mscoco_test-dev2015.jsonl``, images ``DIR/test2015``; only the submission
    file ``vqav2_submission.json`` (``[{"question_id", "answer"}]``, answers normalised) is written."""

    name = "vqav2"
    paper_key = "vqav2"
    description = "VQAv2: val scored locally (VQA accuracy); test-dev submission file"

    def load(self, data_dir: Path) -> list[EvalItem]:
        annotations = data_dir / "v2_mscoco_val2014_annotations.json"
        if annotations.is_file():
            questions = read_json(data_dir / "v2_OpenEnded_mscoco_val2014_questions.json")["questions"]
            gold = {a["question_id"]: a for a in read_json(annotations)["annotations"]}
            items = []
            for row in questions:
                answer = gold.get(row["question_id"])
                if answer is None:
                    raise DataFormatError(
                        f"{annotations.name} has no annotation for question {row['question_id']}."
                    )
                path, error = _image(data_dir / "val2014", f"COCO_val2014_{int(row['image_id']):012d}")
                items.append(
                    EvalItem(
                        str(row["question_id"]),
                        f"{row['question']}\n{SHORT_ANSWER}",
                        path,
                        {"answers": [a["answer"] for a in answer["answers"]], "split": "val2014"},
                        answer.get("answer_type"),
                        question=f"{row['question']}\n{SHORT_ANSWER}",
                        media_error=error,
                    )
                )
            return items
        rows = read_jsonl(data_dir / "llava_vqav2_mscoco_test-dev2015.jsonl")
        items = []
        for index, row in enumerate(rows):
            require(
                row, ("question_id", "image", "text"), f"llava_vqav2_mscoco_test-dev2015.jsonl:{index + 1}"
            )
            path, error = _image(data_dir / "test2015", row["image"])
            items.append(
                EvalItem(
                    str(row["question_id"]), row["text"], path, {"split": "test-dev2015"}, media_error=error
                )
            )
        return items

    def score(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], verdicts: Mapping[str, Any]
    ) -> TaskScore:
        public = [item for item in items if "answers" in item.reference]
        if not public:
            return TaskScore(
                {},
                counts={"items": len(items), "scored": 0},
                notes=["test-dev answers are private: not scored locally; upload vqav2_submission.json."],
            )
        values = {item.id: vqa_accuracy(predictions[item.id], item.reference["answers"]) for item in public}
        groups: dict[str, list[float]] = {}
        for item in public:
            groups.setdefault(item.category or "all", []).append(values[item.id])
        return TaskScore(
            {"accuracy": 100.0 * mean(list(values.values()))},
            {k: {"accuracy": 100.0 * mean(v), "count": len(v)} for k, v in sorted(groups.items())},
            {"items": len(items), "scored": len(public)},
            ["val2014 (public answers); the paper reports test-dev."],
            headline="accuracy",
        )

    def submission(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], out_dir: Path
    ) -> Path | None:
        if any("answers" in item.reference for item in items):
            return None
        path = out_dir / "vqav2_submission.json"
        rows = [
            {
                "question_id": int(item.id) if item.id.isdigit() else item.id,
                "answer": normalize_vqa_answer(predictions[item.id]),
            }
            for item in items
        ]
        path.write_text(json.dumps(rows) + "\n", encoding="utf-8")
        return path


class VizWiz(ImageTask):
    """VizWiz-VQA: ``val.json`` (``[{"image", "question", "answers": [{"answer"}], "answer_type"}]``, images
    ``DIR/val``) is scored locally with VQA accuracy; ``test.json`` (images ``DIR/test``, private answers) gets
    ``vizwiz_submission.json`` (``[{"image", "answer"}]``). Prompt: LLaVA's unanswerable + short-answer suffix."""

    name = "vizwiz"
    paper_key = "vizwiz"
    description = "VizWiz-VQA: val scored locally (VQA accuracy); test submission file"

    def load(self, data_dir: Path) -> list[EvalItem]:
        split = "val" if (data_dir / "val.json").is_file() else "test"
        rows = read_json(data_dir / f"{split}.json")
        items = []
        for index, row in enumerate(rows):
            require(row, ("image", "question"), f"{split}.json[{index}]")
            prompt = f"{row['question']}\n{VIZWIZ_UNANSWERABLE}\n{SHORT_ANSWER}"
            path, error = _image(data_dir / split, row["image"])
            reference: dict[str, Any] = {"split": split, "image": row["image"]}
            if split == "val":
                require(row, ("answers",), f"val.json[{index}]")
                reference["answers"] = [a["answer"] for a in row["answers"]]
            items.append(
                EvalItem(row["image"], prompt, path, reference, row.get("answer_type"), media_error=error)
            )
        return items

    score = VQAv2.score

    def submission(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], out_dir: Path
    ) -> Path | None:
        if any("answers" in item.reference for item in items):
            return None
        path = out_dir / "vizwiz_submission.json"
        rows = [
            {"image": item.reference["image"], "answer": normalize_vqa_answer(predictions[item.id])}
            for item in items
        ]
        path.write_text(json.dumps(rows) + "\n", encoding="utf-8")
        return path


class MMBench(ImageTask):
    """MMBench dev: the released TSV (``index, question, hint, A..D, answer, category, image`` base64), file
    ``DIR/mmbench_dev_20230712.tsv`` (or any single ``*.tsv``). Prompt as LLaVA: hint, question, ``A. ...`` lines,
    letter instruction. Scored with CircularEval (a question counts only if all its rotations, rows sharing
    ``index % 1e6``, are right) plus plain per-row accuracy; ``mmbench_submission.tsv`` adds a prediction column."""

    name = "mmbench"
    paper_key = "mmbench"
    description = "MMBench dev (CircularEval accuracy; submission TSV for the server)"

    def _tsv(self, data_dir: Path) -> Path:
        preferred = data_dir / "mmbench_dev_20230712.tsv"
        if preferred.is_file():
            return preferred
        found = sorted(data_dir.glob("*.tsv"))
        if len(found) != 1:
            raise DataFormatError(
                f"{data_dir}: expected one MMBench .tsv file, found {[f.name for f in found]}."
            )
        return found[0]

    def load(self, data_dir: Path) -> list[EvalItem]:
        source = self._tsv(data_dir)
        csv.field_size_limit(2**31 - 1)
        with open(source, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        items = []
        for number, row in enumerate(rows):
            require(row, ("index", "question", "A", "B", "image"), f"{source.name} row {number + 2}")
            options = [row[letter] for letter in "ABCDEFGH" if row.get(letter) not in (None, "", "nan")]
            question = row["question"]
            if row.get("hint") not in (None, "", "nan"):
                question = f"{row['hint']}\n{question}"
            prompt = "\n".join(
                [question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)] + [LETTER_ANSWER]
            )
            answer = row.get("answer") or None
            items.append(
                EvalItem(
                    str(row["index"]),
                    prompt,
                    f"data:image/jpeg;base64,{row['image']}",
                    {
                        "options": options,
                        "answer": answer,
                        "row": {k: v for k, v in row.items() if k != "image"},
                    },
                    row.get("category"),
                    question=question,
                )
            )
        return items

    def score(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], verdicts: Mapping[str, Any]
    ) -> TaskScore:
        public = [item for item in items if item.reference["answer"]]
        if not public:
            return TaskScore(
                {},
                counts={"items": len(items), "scored": 0},
                notes=["answers are private (test split): upload mmbench_submission.tsv."],
            )
        right = {
            item.id: parse_option_letter(
                predictions[item.id], len(item.reference["options"]), item.reference["options"]
            )
            == item.reference["answer"]
            for item in public
        }
        circular: dict[int, list[bool]] = {}
        categories: dict[int, str] = {}
        for item in public:
            group = int(item.id) % 1_000_000
            circular.setdefault(group, []).append(right[item.id])
            categories[group] = item.category or "all"
        per_category: dict[str, dict[str, float]] = {}
        for group, values in circular.items():
            entry = per_category.setdefault(categories[group], {"correct": 0.0, "count": 0.0})
            entry["correct"] += float(all(values))
            entry["count"] += 1
        table = {
            k: {"accuracy": 100.0 * v["correct"] / v["count"], "count": v["count"]}
            for k, v in sorted(per_category.items())
        }
        return TaskScore(
            {
                "circular_accuracy": 100.0 * mean([float(all(v)) for v in circular.values()]),
                "vanilla_accuracy": 100.0 * mean([float(v) for v in right.values()]),
            },
            table,
            {"items": len(items), "questions": len(circular)},
            headline="circular_accuracy",
        )

    def submission(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], out_dir: Path
    ) -> Path | None:
        path = out_dir / "mmbench_submission.tsv"
        fields = [
            "index",
            "question",
            "hint",
            "A",
            "B",
            "C",
            "D",
            "answer",
            "category",
            "l2-category",
            "prediction",
        ]
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fields, delimiter="\t", extrasaction="ignore")
            writer.writeheader()
            for item in items:
                letter = parse_option_letter(
                    predictions[item.id], len(item.reference["options"]), item.reference["options"]
                )
                writer.writerow({**item.reference["row"], "prediction": letter or predictions[item.id]})
        return path


class SEEDBenchImage(ImageTask):
    """SEED-Bench (image questions): ``SEED-Bench.json`` (``{"questions": [{"question_id", "question",
    "choice_a".."choice_d", "answer", "data_id", "data_type", "question_type_id"}], "question_type": {name: id}}``),
    images in ``DIR/SEED-Bench-image``. Accuracy overall and per question type (dimension)."""

    name = "seed_img"
    paper_key = "seed"
    description = "SEED-Bench image questions accuracy, per dimension"

    def load(self, data_dir: Path) -> list[EvalItem]:
        data = read_json(data_dir / "SEED-Bench.json")
        names = {v: k for k, v in data.get("question_type", {}).items()}
        items = []
        for index, row in enumerate(data["questions"]):
            if row.get("data_type", "image") != "image":
                continue
            require(
                row,
                ("question_id", "question", "choice_a", "answer", "data_id"),
                f"SEED-Bench.json questions[{index}]",
            )
            options = [row[f"choice_{c}"] for c in "abcd" if f"choice_{c}" in row]
            prompt = "\n".join(
                [row["question"]] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)] + [LETTER_ANSWER]
            )
            path, error = _image(data_dir / "SEED-Bench-image", row["data_id"])
            items.append(
                EvalItem(
                    str(row["question_id"]),
                    prompt,
                    path,
                    {"options": options, "answer": str(row["answer"]).strip().upper()},
                    names.get(row.get("question_type_id"), str(row.get("question_type_id"))),
                    question=row["question"],
                    media_error=error,
                )
            )
        return items

    def score(
        self, items: Sequence[EvalItem], predictions: Mapping[str, str], verdicts: Mapping[str, Any]
    ) -> TaskScore:
        correct = {
            item.id: parse_option_letter(
                predictions[item.id], len(item.reference["options"]), item.reference["options"]
            )
            == item.reference["answer"]
            for item in items
        }
        return TaskScore(
            {"accuracy": 100.0 * mean([float(v) for v in correct.values()])},
            group_accuracy(items, correct),
            {"items": len(items)},
            headline="accuracy",
        )


def decode_data_uri(uri: str) -> bytes:
    """Bytes of a ``data:...;base64,`` URI (MMBench ships images inline)."""
    header, _, payload = uri.partition(",")
    if not header.endswith(";base64"):
        raise InvalidInputError(f"unsupported data URI header {header[:40]!r}")
    return base64.b64decode(payload, validate=False)


__all__ = [
    "GQA",
    "MME",
    "MMBench",
    "POPE",
    "SEEDBenchImage",
    "ScienceQAImage",
    "VQAv2",
    "VizWiz",
    "decode_data_uri",
]
