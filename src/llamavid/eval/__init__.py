"""Evaluation: predict -> ``predictions.jsonl`` -> (judge -> ``judgements.jsonl``) -> score -> report.

Predictions and judge replies are written to disk one item at a time before anything is scored, so a scorer
change never needs the model again, an interrupted run resumes where it stopped, and a score is never reported
while an item is missing (:class:`~llamavid.eval.runner.IncompleteRunError` lists them).

Names load on first use, so ``llamavid eval --help`` (which lists the tasks) imports neither torch nor
transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "JsonlStore": "llamavid.eval.records",
    "EvalRun": "llamavid.eval.runner",
    "IncompleteRunError": "llamavid.eval.runner",
    "RunSettings": "llamavid.eval.runner",
    "run_task": "llamavid.eval.runner",
    "TASKS": "llamavid.eval.tasks",
    "get_task": "llamavid.eval.tasks",
}

__all__ = ["TASKS", "EvalRun", "IncompleteRunError", "JsonlStore", "RunSettings", "get_task", "run_task"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llamavid.eval' has no attribute {name!r}")
