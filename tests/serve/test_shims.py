"""The old import paths keep working for one release, warn, and hold no code of their own."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import llamavid


@pytest.mark.parametrize(
    ("old", "names", "new"),
    [
        (
            "llamavid.serve.engine",
            ("Engine", "SamplingSettings", "ChatSession", "PreparedMedia"),
            "llamavid.inference",
        ),
        ("llamavid.serve.api", ("create_app", "ServerConfig", "BatchScheduler"), None),
    ],
)
def test_old_paths_warn_and_re_export(old, names, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        module = importlib.import_module(old)
    for name in names:
        assert hasattr(module, name), name
    if new is not None:
        assert module.Engine is importlib.import_module(new).Engine


def test_the_engine_shim_is_a_re_export_only():
    source = Path(llamavid.__file__).parent / "serve" / "engine.py"
    lines = source.read_text().splitlines()
    assert len(lines) <= 200
    assert not any(line.startswith(("def ", "class ")) for line in lines)
