"""Open-ended video QA judged by an LLM: MSVD-QA, MSRVTT-QA, ActivityNet-QA (docs/architecture.md §10).

Accepted layouts (``--data DIR``), videos under ``DIR/videos`` (or ``DIR``), found by name with or without
extension (``.mp4 .avi .mov .mkv ...``):

* LLaMA-VID's processed file ``test_qa.json``: ``[{"video_id", "question", "id", "answer"}, ...]``
  (what ``model_msvd_qa.py`` reads for MSVD/MSRVTT).
* The Video-ChatGPT / ActivityNet-QA pair ``test_q.json`` ``[{"video_name", "question_id", "question"}]`` and
  ``test_a.json`` ``[{"question_id", "answer", "type"}]`` (ActivityNet files are also tried with a ``v_`` prefix).

Accuracy = % of judge "yes"; Score = mean judge score (0-5), as the official ``eval_*_qa.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llamavid.eval.judge import PROMPTS, JudgeRequest
from llamavid.eval.tasks.base import (
    VIDEO_EXTENSIONS,
    DataFormatError,
    EvalItem,
    Task,
    TaskScore,
    find_media,
    mean,
    read_json,
    require,
)

# ActivityNet-QA's published question types (test_a.json "type").
ACTIVITYNET_TYPES = {
    0: "motion", 1: "spatial", 2: "temporal", 3: "yes_no", 4: "color", 5: "object", 6: "location",
    7: "number", 8: "other",
}  # fmt: skip


def video_folder(data_dir: Path) -> Path:
    for name in ("videos", "video", "all_test", "Test_Videos"):
        if (data_dir / name).is_dir():
            return data_dir / name
    return data_dir


def _number_duplicates(raw_ids: Sequence[str]) -> list[str]:
    """``id_0, id_1, ...`` per repeated id, exactly as the official eval scripts key their result files."""
    counts: dict[str, int] = {}
    result = []
    for raw in raw_ids:
        counts[raw] = counts.get(raw, -1) + 1
        result.append(f"{raw}_{counts[raw]}")
    return result


class OpenEndedVideoQA(Task):
    family = "video_open_qa"
    modality = "video"
    decoding = "video_qa"
    needs_judge = True
    category_from_type: bool = False

    def load(self, data_dir: Path) -> list[EvalItem]:
        videos = video_folder(data_dir)
        records: list[dict[str, Any]] = []
        if (data_dir / "test_qa.json").is_file():
            rows = read_json(data_dir / "test_qa.json")
            for index, row in enumerate(rows):
                require(row, ("video_id", "question", "id", "answer"), f"test_qa.json[{index}]")
                records.append(
                    {
                        "video": str(row["video_id"]),
                        "question": row["question"],
                        "qid": str(row["id"]),
                        "answer": str(row["answer"]),
                        "type": row.get("type"),
                    }
                )
        elif (data_dir / "test_q.json").is_file():
            questions = read_json(data_dir / "test_q.json")
            answers = read_json(data_dir / "test_a.json")
            if len(questions) != len(answers):
                raise DataFormatError(
                    f"{data_dir}: test_q.json has {len(questions)} entries but test_a.json {len(answers)}; they "
                    "must align one to one."
                )
            by_id = {str(a.get("question_id")): a for a in answers}
            for index, question in enumerate(questions):
                require(question, ("video_name", "question_id", "question"), f"test_q.json[{index}]")
                answer = by_id.get(str(question["question_id"]), answers[index])
                require(answer, ("answer",), f"test_a.json[{index}]")
                records.append(
                    {
                        "video": str(question["video_name"]),
                        "question": question["question"],
                        "qid": str(question["question_id"]),
                        "answer": str(answer["answer"]),
                        "type": answer.get("type"),
                    }
                )
        else:
            raise DataFormatError(
                f"{data_dir}: expected test_qa.json (LLaMA-VID format) or test_q.json + test_a.json "
                "(Video-ChatGPT / ActivityNet-QA format)."
            )
        items = []
        for record, item_id in zip(records, _number_duplicates([r["qid"] for r in records]), strict=True):
            path, error = find_media(videos, record["video"], VIDEO_EXTENSIONS)
            if path is None and not record["video"].startswith("v_"):
                path, _ = find_media(videos, "v_" + record["video"], VIDEO_EXTENSIONS)
                error = error if path is None else None
            items.append(
                EvalItem(
                    id=item_id,
                    prompt=record["question"],
                    media=path,
                    media_error=error,
                    reference={"question": record["question"], "answer": record["answer"]},
                    category=self._category(record),
                )
            )
        return items

    def _category(self, record: dict[str, Any]) -> str:
        kind = record.get("type")
        if isinstance(kind, int) and self.category_from_type:
            return ACTIVITYNET_TYPES.get(kind, str(kind))
        if kind is not None and self.category_from_type:
            return str(kind)
        words = record["question"].strip().lower().split()
        return words[0] if words else "other"

    def judge_requests(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> list[JudgeRequest]:
        return [
            JudgeRequest(
                key=f"{item.id}/qa",
                prompt=PROMPTS["qa"],
                fields={
                    "question": item.reference["question"],
                    "answer": item.reference["answer"],
                    "pred": predictions[item.id],
                },
            )
            for item in items
            if item.id in predictions
        ]

    def score(
        self,
        items: Sequence[EvalItem],
        predictions: Mapping[str, str],
        verdicts: Mapping[str, dict[str, Any]],
    ) -> TaskScore:
        groups: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            groups.setdefault(item.category or "all", []).append(verdicts[f"{item.id}/qa"])
        all_verdicts = [verdicts[f"{item.id}/qa"] for item in items]

        def summary(values: list[dict[str, Any]]) -> dict[str, float]:
            return {
                "accuracy": 100.0 * mean([float(v["pred"] == "yes") for v in values]),
                "score": mean([float(v["score"]) for v in values]),
                "count": len(values),
            }

        overall = summary(all_verdicts)
        return TaskScore(
            metrics={"accuracy": overall["accuracy"], "score": overall["score"]},
            per_category={name: summary(values) for name, values in sorted(groups.items())},
            counts={"items": len(items)},
            headline="accuracy",
        )


class MSVDQA(OpenEndedVideoQA):
    name = "msvd_qa"
    paper_key = "msvd_qa"
    description = "MSVD-QA zero-shot open-ended video QA (LLM-judged accuracy / score)"


class MSRVTTQA(OpenEndedVideoQA):
    name = "msrvtt_qa"
    paper_key = "msrvtt_qa"
    description = "MSRVTT-QA zero-shot open-ended video QA (LLM-judged accuracy / score)"


class ActivityNetQA(OpenEndedVideoQA):
    name = "activitynet_qa"
    paper_key = "activitynet_qa"
    category_from_type = True
    description = "ActivityNet-QA zero-shot open-ended video QA (LLM-judged accuracy / score)"


class VideoChatGPTBenchmark(Task):
    """Video-ChatGPT's video-based generative performance benchmark: five judged dimensions (docs/architecture.md §10).

    Layout: ``generic_qa.json`` and ``temporal_qa.json`` (``[{"Q", "A", "video_name"}]``) and
    ``consistency_qa.json`` (``[{"Q1", "Q2", "A", "video_name"}]``), videos under ``DIR/videos`` or
    ``DIR/Test_Videos``. Generic answers are judged for correctness, detail and context; temporal answers for
    temporal understanding; the two consistency answers together for consistency.

    Deviation, on purpose: the official consistency scorer fills *both* question slots with ``Q1`` (a bug in
    ``evaluate_benchmark_5_consistency.py``); we send ``Q2`` as the second question. The report notes it.
    """

    name = "video_chatgpt"
    family = "video_chatgpt"
    modality = "video"
    decoding = "video_qa"
    needs_judge = True
    paper_key = "video_chatgpt"
    description = "Video-ChatGPT benchmark: correctness, detail, context, temporal, consistency (0-5)"
    DIMENSIONS = ("correctness", "detail", "context", "temporal", "consistency")

    def load(self, data_dir: Path) -> list[EvalItem]:
        videos = video_folder(data_dir)
        items: list[EvalItem] = []
        for subset in ("generic", "temporal", "consistency"):
            rows = read_json(data_dir / f"{subset}_qa.json")
            keys = ("Q1", "Q2", "A", "video_name") if subset == "consistency" else ("Q", "A", "video_name")
            for index, row in enumerate(rows):
                require(row, keys, f"{subset}_qa.json[{index}]")
            ids = _number_duplicates([str(row["video_name"]) for row in rows])
            for row, base in zip(rows, ids, strict=True):
                path, error = find_media(videos, str(row["video_name"]), VIDEO_EXTENSIONS)
                questions = (
                    [("1", row["Q1"]), ("2", row["Q2"])] if subset == "consistency" else [("", row["Q"])]
                )
                for suffix, question in questions:
                    items.append(
                        EvalItem(
                            id=f"{subset}/{base}" + (f"/q{suffix}" if suffix else ""),
                            prompt=question,
                            media=path,
                            media_error=error,
                            reference={
                                "answer": row["A"],
                                "question": question,
                                "pair": f"{subset}/{base}" if suffix else None,
                            },
                            category=subset,
                        )
                    )
        return items

    def judge_requests(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> list[JudgeRequest]:
        requests = []
        by_id = {item.id: item for item in items}
        for item in items:
            if item.id not in predictions:
                continue
            if item.category == "generic":
                for dimension in ("correctness", "detail", "context"):
                    requests.append(self._single(item, predictions[item.id], dimension))
            elif item.category == "temporal":
                requests.append(self._single(item, predictions[item.id], "temporal"))
            elif item.id.endswith("/q1"):
                pair = item.reference["pair"]
                second = by_id.get(f"{pair}/q2")
                if second is None or second.id not in predictions:
                    continue
                requests.append(
                    JudgeRequest(
                        key=f"{pair}/consistency",
                        prompt=PROMPTS["consistency"],
                        fields={
                            "question1": item.prompt,
                            "question2": second.prompt,
                            "answer": item.reference["answer"],
                            "pred1": predictions[item.id],
                            "pred2": predictions[second.id],
                        },
                    )
                )
        return requests

    @staticmethod
    def _single(item: EvalItem, prediction: str, dimension: str) -> JudgeRequest:
        return JudgeRequest(
            key=f"{item.id}/{dimension}",
            prompt=PROMPTS[dimension],
            fields={"question": item.prompt, "answer": item.reference["answer"], "pred": prediction},
        )

    def score(
        self,
        items: Sequence[EvalItem],
        predictions: Mapping[str, str],
        verdicts: Mapping[str, dict[str, Any]],
    ) -> TaskScore:
        scores: dict[str, list[float]] = {dimension: [] for dimension in self.DIMENSIONS}
        for key, verdict in verdicts.items():
            dimension = key.rsplit("/", 1)[1]
            if dimension in scores:
                scores[dimension].append(float(verdict["score"]))
        metrics = {dimension: mean(values) for dimension, values in scores.items()}
        metrics["mean"] = mean([metrics[d] for d in self.DIMENSIONS])
        return TaskScore(
            metrics=metrics,
            per_category={d: {"score": metrics[d], "count": len(scores[d])} for d in self.DIMENSIONS},
            counts={"items": len(items), **{f"{d}_judgements": len(scores[d]) for d in self.DIMENSIONS}},
            notes=["consistency: Q2 is sent as the second question (the official scorer repeats Q1, a bug)."],
            headline="mean",
        )
