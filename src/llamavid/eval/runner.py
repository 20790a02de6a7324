"""Run one benchmark task: predict (batched, resumable) -> judge (resumable) -> score (only when complete).

Files in the output folder:
    ``predictions.jsonl``  one record per answered item (``id``, ``prediction``, ``prompt``, decoding, seed).
    ``judgements.jsonl``   one record per judge request (``key``, verdict, raw reply, judge provenance, date).
    ``errors.jsonl``       item-level failures (missing video, corrupt file, malformed judge reply), latest per key.
    ``results.json`` / ``report.md``  written only when every item has a prediction (and every verdict).

Every record is appended and fsynced as soon as it exists, so killing a run loses at most the batch in flight;
the next run with the same ``--out`` skips what is done and retries what failed.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamavid.errors import InvalidInputError, LlamaVidError, LlamaVidRuntimeError
from llamavid.eval.judge import JudgeClient, JudgeError, JudgeRequest, MalformedJudgeReplyError
from llamavid.eval.predictor import GenerationSettings, Predictor, PredictRequest
from llamavid.eval.records import JsonlStore
from llamavid.eval.tasks.base import DataFormatError, EvalItem, Task, TaskScore

logger = logging.getLogger(__name__)


class IncompleteRunError(LlamaVidError, RuntimeError):
    """Some items have no prediction (or no verdict): no score is reported.

    Attributes:
        missing: ``{item or judge key: reason}`` for every missing entry.
    """

    def __init__(self, task: str, missing: dict[str, str]) -> None:
        self.missing = missing
        shown = "\n".join(f"  {key}: {reason}" for key, reason in list(missing.items())[:50])
        more = f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else ""
        super().__init__(
            f"{task}: refusing to report a score, {len(missing)} item(s) missing:\n{shown}{more}\n"
            "Fix the listed inputs (or the judge) and run the same command again; finished items are kept."
        )


@dataclass(frozen=True)
class RunSettings:
    """How to run a task (everything here is recorded in the report).

    Attributes:
        batch_size: Items per ``generate`` call.
        limit: Only the first N items (a labelled partial run).
        greedy: Override sampling presets with greedy decoding.
        seed: Base sampling seed (docs/architecture.md §10 video QA samples at T=0.2; fixing the seed makes reruns identical).
        max_new_tokens: Override the preset's length limit.
        fps: Video sampling rate (1 fps, as the official eval scripts).
        max_frames: Optional cap on sampled frames (the official scripts have none, docs/architecture.md §11).
        judge_workers: Concurrent judge requests.
    """

    batch_size: int = 1
    limit: int | None = None
    greedy: bool = False
    seed: int = 0
    max_new_tokens: int | None = None
    fps: float = 1.0
    max_frames: int | None = None
    judge_workers: int = 4

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InvalidInputError(f"batch size must be at least 1, got {self.batch_size}.")
        if self.limit is not None and self.limit < 1:
            raise InvalidInputError(f"--limit must be at least 1, got {self.limit}.")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


MediaLoader = Callable[[EvalItem, RunSettings], Any]


def default_media_loader(item: EvalItem, settings: RunSettings) -> Any:
    """Decode the item's media: videos at ``settings.fps`` (frames array), images as ``(H, W, 3)``."""
    from llamavid.data import load_media

    if item.media is None:
        raise InvalidInputError(f"item {item.id} has no media")
    if item.media.startswith("data:"):
        import io

        import numpy as np
        from PIL import Image

        from llamavid.eval.tasks.image import decode_data_uri

        with Image.open(io.BytesIO(decode_data_uri(item.media))) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    frames = load_media(item.media, fps=settings.fps, max_frames=settings.max_frames)
    if frames.fps is None and len(frames) == 1:
        return frames.frames[0]  # a still image: (H, W, 3) so the processor treats it as an image
    return frames.frames


class EvalRun:
    """One task on one data folder with one output folder.

    Args:
        task: The benchmark task.
        data_dir: Folder holding the benchmark in its published layout.
        out_dir: Output folder (predictions, judgements, errors, reports).
        settings: Run settings.
    """

    def __init__(self, task: Task, data_dir: str | Path, out_dir: str | Path, settings: RunSettings) -> None:
        self.task = task
        self.data_dir = Path(data_dir)
        self.out_dir = Path(out_dir)
        self.settings = settings
        items = task.load(self.data_dir)
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})[:10]
            raise DataFormatError(
                f"{task.name}: duplicate item ids {duplicates}; the annotation file is inconsistent."
            )
        self.total_items = len(items)
        self.items = items[: settings.limit] if settings.limit else items
        self.predictions = JsonlStore(self.out_dir / "predictions.jsonl", key="id")
        self.judgements = JsonlStore(self.out_dir / "judgements.jsonl", key="key")
        self.errors = JsonlStore(self.out_dir / "errors.jsonl", key="key")
        self.generation = GenerationSettings.for_task(
            task.decoding, greedy=settings.greedy, seed=settings.seed, max_new_tokens=settings.max_new_tokens
        )

    # Prediction -------------------------------------------------------------------------------------------
    def pending_items(self) -> list[EvalItem]:
        done = self.predictions.load()
        return [item for item in self.items if item.id not in done]

    def _record_error(self, key: str, stage: str, error: str) -> None:
        logger.warning("%s %s: %s", stage, key, error)
        self.errors.append({"key": key, "stage": stage, "error": error, "date": _now()})

    def _check_decoding(self) -> None:
        current = self.generation.to_dict()
        for record in self.predictions.load().values():
            if record.get("decoding") != current:
                raise InvalidInputError(
                    f"{self.predictions.path} holds predictions made with decoding {record.get('decoding')} but "
                    f"this run uses {current}; use another --out folder (or the same flags) so one report never "
                    "mixes decodings."
                )

    def predict(
        self, predictor: Predictor, media_loader: MediaLoader = default_media_loader
    ) -> dict[str, int]:
        """Answer every pending item, appending each prediction as soon as its batch finishes.

        Item-level failures (unresolvable or undecodable media) are appended to ``errors.jsonl`` and the item
        stays pending; failures of a whole batch (model errors) propagate.

        Returns:
            ``{"predicted": n, "failed": m, "skipped": already done}``.
        """
        self._check_decoding()
        pending = self.pending_items()
        counts = {"predicted": 0, "failed": 0, "skipped": len(self.items) - len(pending)}
        batch: list[tuple[EvalItem, PredictRequest]] = []

        def flush() -> None:
            if not batch:
                return
            seed = self.generation.batch_seed(batch[0][0].id)
            answers = predictor.predict([request for _, request in batch], self.generation, seed)
            if len(answers) != len(batch):
                raise LlamaVidRuntimeError(
                    f"predictor returned {len(answers)} answers for {len(batch)} requests"
                )
            for (item, _), answer in zip(batch, answers, strict=True):
                self.predictions.append(
                    {
                        "id": item.id,
                        "prediction": answer,
                        "prompt": item.prompt,
                        "model": getattr(predictor, "name", "unknown"),
                        "decoding": self.generation.to_dict(),
                        "seed": seed,
                        "date": _now(),
                    }
                )
                counts["predicted"] += 1
            batch.clear()

        for item in pending:
            if item.media_error is not None:
                self._record_error(item.id, "media", item.media_error)
                counts["failed"] += 1
                continue
            media = None
            if item.media is not None:
                try:
                    media = media_loader(item, self.settings)
                except (ValueError, OSError) as error:  # MediaError is a ValueError
                    self._record_error(item.id, "media", f"{type(error).__name__}: {error}")
                    counts["failed"] += 1
                    continue
            batch.append((item, PredictRequest.single(item.prompt, media, item.question)))
            if len(batch) >= self.settings.batch_size:
                flush()
        flush()
        return counts

    # Judging ----------------------------------------------------------------------------------------------
    def _prediction_texts(self) -> dict[str, str]:
        records = self.predictions.load()
        return {item.id: records[item.id]["prediction"] for item in self.items if item.id in records}

    def judge_requests(self) -> list[JudgeRequest]:
        return self.task.judge_requests(self.items, self._prediction_texts())

    def _valid_verdicts(self, judge_model: str | None = None) -> dict[str, dict[str, Any]]:
        """Cached verdicts whose prompt hash matches the current prompt (and judge model, when given)."""
        requests = {request.key: request for request in self.judge_requests()}
        valid = {}
        for key, record in self.judgements.load().items():
            request = requests.get(key)
            provenance = record.get("judge", {})
            if request is None or provenance.get("prompt_sha256") != request.prompt.sha256:
                continue
            if judge_model is not None and provenance.get("model") != judge_model:
                continue
            if record.get("fields") is not None and record["fields"] != request.fields:
                continue  # the prediction changed after judging
            valid[key] = record
        return valid

    def judge(self, client: JudgeClient) -> dict[str, int]:
        """Judge every prediction without a valid cached verdict; failures go to ``errors.jsonl`` per item."""
        done = self._valid_verdicts(client.model)
        todo = [request for request in self.judge_requests() if request.key not in done]
        counts = {"judged": 0, "failed": 0, "skipped": len(done)}
        lock = threading.Lock()

        def one(request: JudgeRequest) -> None:
            try:
                record = client.judge(request)
            except MalformedJudgeReplyError as error:
                with lock:
                    self._record_error(request.key, "judge", f"{error}; last reply: {error.reply[:300]!r}")
                    counts["failed"] += 1
                return
            except JudgeError as error:
                with lock:
                    self._record_error(request.key, "judge", str(error))
                    counts["failed"] += 1
                return
            record["fields"] = request.fields
            with lock:
                self.judgements.append(record)
                counts["judged"] += 1

        workers = max(1, self.settings.judge_workers)
        if workers == 1:
            for request in todo:
                one(request)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(one, todo))
        return counts

    # Scoring ----------------------------------------------------------------------------------------------
    def missing(self) -> dict[str, str]:
        """Every item without a prediction and every judge request without a verdict, with the reason."""
        errors = self.errors.load()
        predictions = self._prediction_texts()
        missing: dict[str, str] = {}
        for item in self.items:
            if item.id not in predictions:
                error = errors.get(item.id)
                missing[item.id] = (
                    f"{error['stage']} error: {error['error']}"
                    if error
                    else "no prediction yet (run with --model)"
                )
        if self.task.needs_judge:
            verdicts = self._valid_verdicts()
            for request in self.judge_requests():
                if request.key not in verdicts:
                    error = errors.get(request.key)
                    missing[request.key] = (
                        f"judge error: {error['error']}"
                        if error and error["stage"] == "judge"
                        else "not judged yet (run with --judge-url and --judge-model)"
                    )
        return missing

    def score(self) -> TaskScore:
        """Score the task. Raises :class:`IncompleteRunError` listing what is missing."""
        missing = self.missing()
        if missing:
            raise IncompleteRunError(self.task.name, missing)
        verdicts = {key: record["verdict"] for key, record in self._valid_verdicts().items()}
        return self.task.score(self.items, self._prediction_texts(), verdicts)

    def judge_provenance(self) -> list[dict[str, Any]]:
        """Distinct judge settings behind the verdicts in use, with their date range."""
        seen: dict[str, dict[str, Any]] = {}
        for record in self._valid_verdicts().values():
            provenance = dict(record.get("judge", {}))
            key = repr(sorted(provenance.items()))
            entry = seen.setdefault(
                key, {**provenance, "first_date": record["date"], "last_date": record["date"]}
            )
            entry["first_date"] = min(entry["first_date"], record["date"])
            entry["last_date"] = max(entry["last_date"], record["date"])
        return list(seen.values())

    def decodings(self) -> list[dict[str, Any]]:
        records = self.predictions.load()
        distinct: list[dict[str, Any]] = []
        for item in self.items:
            decoding = records.get(item.id, {}).get("decoding")
            if decoding is not None and decoding not in distinct:
                distinct.append(decoding)
        return distinct


def run_task(
    task: Task,
    data_dir: str | Path,
    out_dir: str | Path,
    settings: RunSettings,
    predictor: Predictor | None = None,
    judge: JudgeClient | None = None,
    media_loader: MediaLoader = default_media_loader,
) -> dict[str, Any]:
    """Predict (when a predictor is given), judge (when a client is given), score and write the reports.

    Returns:
        The report dictionary (also written to ``results.json`` and ``report.md``).

    Raises:
        IncompleteRunError: Items or verdicts are missing; nothing is scored (partial files stay on disk).
    """
    from llamavid.eval.report import build_report, write_reports

    run = EvalRun(task, data_dir, out_dir, settings)
    if predictor is not None:
        counts = run.predict(predictor, media_loader)
        logger.info("%s predictions: %s", task.name, counts)
    if judge is not None and task.needs_judge:
        counts = run.judge(judge)
        logger.info("%s judgements: %s", task.name, counts)
    score = run.score()
    submission = task.submission(run.items, run._prediction_texts(), run.out_dir)
    report = build_report(run, score, submission)
    write_reports(report, run.out_dir)
    return report


def items_by_id(items: Sequence[EvalItem]) -> dict[str, EvalItem]:
    return {item.id: item for item in items}
