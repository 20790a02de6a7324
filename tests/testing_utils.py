"""Test utilities importable from any test module (`from testing_utils import ...`).

Shared helpers live here rather than in ``conftest.py``: several folders have their own ``conftest.py``, so
``import conftest`` would resolve to whichever one pytest loaded first.
"""

from __future__ import annotations

import importlib
import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_module(name: str):
    """Import an optional backend; skip without it locally, but fail under CI (a silent skip hides a gap)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but cannot be imported: {error}")
        pytest.skip(f"{name} not installed")
