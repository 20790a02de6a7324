"""Every exception llamavid raises on purpose is a `LlamaVidError` (and still the built-in type callers caught).

Checked two ways: statically, every ``raise SomeClass(...)`` in the package names a `LlamaVidError` subclass
unless the Python protocol at that spot requires a built-in (listed below with the reason); and through the
public API, where typical mistakes must surface as `LlamaVidError`.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import importlib
from pathlib import Path

import numpy as np
import pytest

import llamavid
from llamavid.errors import InvalidInputError, LlamaVidError, ModelNotFoundError

SRC = Path(llamavid.__file__).parent

# Built-ins a protocol requires: attribute lookup (__getattr__), sequence indexing (__getitem__), abstract
# methods, argparse type converters, Gradio's user-facing error, and asyncio's own timeout inside one function.
PROTOCOL = (AttributeError, IndexError, NotImplementedError, argparse.ArgumentTypeError, asyncio.TimeoutError)
PROTOCOL_NAMES = {"gr.Error"}


def _raised_classes():
    for path in sorted(SRC.rglob("*.py")):
        module_name = "llamavid." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        module_name = module_name.removesuffix(".__init__")
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = ast.unparse(target)
            if name in PROTOCOL_NAMES:
                continue
            yield module_name, path.name, node.lineno, name


def _resolve(module_name: str, name: str):
    import builtins

    try:
        module = importlib.import_module(module_name)
    except ImportError:  # an optional extra is missing here; its module is checked where it installs
        return None
    value: object = module
    for part in name.split("."):
        value = getattr(value, part, None) if value is not None else None
    if value is None:
        value = getattr(builtins, name, None)
    return value


def test_every_raise_in_the_package_is_a_llamavid_error():
    wrong = []
    for module_name, file, line, name in _raised_classes():
        value = _resolve(module_name, name)
        if not isinstance(value, type):
            continue  # re-raising a caught exception object (`raise error`)
        if issubclass(value, LlamaVidError) or issubclass(value, PROTOCOL):
            continue
        wrong.append(f"{file}:{line} raises {name}")
    assert not wrong, "raise a llamavid.errors class instead:\n" + "\n".join(wrong)


def test_mistakes_through_the_public_api_are_llamavid_errors(tmp_path, serving_engine):
    with pytest.raises(ModelNotFoundError):
        llamavid.load(tmp_path / "no-such-model")
    with pytest.raises(LlamaVidError):
        serving_engine.ask(tmp_path / "missing.mp4", "what?")
    (tmp_path / "not-a-video.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(LlamaVidError):
        serving_engine.ask(tmp_path / "not-a-video.mp4", "what?")
    with pytest.raises(InvalidInputError):
        serving_engine.ask(np.zeros((4, 4), dtype=np.float32), "what?")
    with pytest.raises(InvalidInputError):
        serving_engine.ask(None, "   ")
    with pytest.raises(InvalidInputError):
        serving_engine.ask(None, "hi", temperature=-1)
