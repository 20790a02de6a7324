"""Evaluation: predict -> ``predictions.jsonl`` -> (judge -> ``judgements.jsonl``) -> score -> report.

Predictions and judge replies are written to disk one item at a time before anything is scored, so a scorer
change never needs the model again, an interrupted run resumes where it stopped, and a score is never reported
while an item is missing (:class:`~llamavid.eval.runner.IncompleteRunError` lists them).
"""

from llamavid.eval.records import JsonlStore
from llamavid.eval.runner import EvalRun, IncompleteRunError, RunSettings, run_task
from llamavid.eval.tasks import TASKS, get_task

__all__ = ["TASKS", "EvalRun", "IncompleteRunError", "JsonlStore", "RunSettings", "get_task", "run_task"]
