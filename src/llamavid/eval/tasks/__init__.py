"""Task registry: ``llamavid eval TASK`` looks names up here (one module per benchmark family)."""

from __future__ import annotations

from llamavid.errors import InvalidInputError
from llamavid.eval.tasks.base import DataFormatError, EvalItem, Task, TaskScore
from llamavid.eval.tasks.image import GQA, MME, POPE, MMBench, ScienceQAImage, SEEDBenchImage, VizWiz, VQAv2
from llamavid.eval.tasks.multiple_choice import MLVU, EgoSchema, MVBench, VideoMME
from llamavid.eval.tasks.open_qa import MSRVTTQA, MSVDQA, ActivityNetQA, VideoChatGPTBenchmark

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (
        MSVDQA, MSRVTTQA, ActivityNetQA, VideoChatGPTBenchmark,
        MVBench, EgoSchema, VideoMME, MLVU,
        GQA, POPE, MME, ScienceQAImage, VQAv2, VizWiz, MMBench, SEEDBenchImage,
    )
}  # fmt: skip


def get_task(name: str) -> Task:
    """Instantiate a task by name, failing with the list of known names."""
    try:
        return TASKS[name]()
    except KeyError:
        raise InvalidInputError(
            f"unknown eval task {name!r}; known tasks: {', '.join(sorted(TASKS))}."
        ) from None


__all__ = ["TASKS", "DataFormatError", "EvalItem", "Task", "TaskScore", "get_task"]
