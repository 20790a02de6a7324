"""The one family of errors llamavid raises: catch `LlamaVidError` to handle every failure of the package.

Each class also derives from the built-in type callers caught before it existed (``ValueError``,
``FileNotFoundError``, ``ImportError``, ``RuntimeError``), so ``except ValueError`` around a llamavid call keeps
working. Messages follow one rule: what was received, what was expected, what to do. Importing this module
imports nothing heavy.
"""

from __future__ import annotations

__all__ = [
    "ContextBudgetError",
    "DependencyError",
    "InvalidInputError",
    "InvalidTypeError",
    "LlamaVidError",
    "LlamaVidRuntimeError",
    "MissingFileError",
    "ModelNotFoundError",
]


class LlamaVidError(Exception):
    """Base class of every error llamavid raises on purpose."""


class InvalidInputError(LlamaVidError, ValueError):
    """An argument, request field, configuration value or data record is not usable as given."""


class ContextBudgetError(InvalidInputError):
    """A prompt would not fit the model's context window or the configured KV-cache memory budget."""


class MissingFileError(LlamaVidError, FileNotFoundError):
    """A file or folder the caller named does not exist (or lacks a file it must hold)."""


class ModelNotFoundError(MissingFileError):
    """A model folder, checkpoint or file it needs does not exist."""


class InvalidTypeError(LlamaVidError, TypeError):
    """An argument has the wrong type (a config where a dict was expected, a tensor where a path was)."""


class DependencyError(LlamaVidError, ImportError):
    """An optional package (an extra such as ``llamavid[serve]``) is needed but not installed or not loadable."""


class LlamaVidRuntimeError(LlamaVidError, RuntimeError):
    """Something failed while running (a subprocess, a server, a worker) for a reason outside the input."""
