"""The ``llamavid`` command line.

Each sub-command lives in its own module under ``llamavid.cli`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` to a callable ``(args) -> int``. Modules are discovered, so adding a command means
adding a module; third-party packages can add commands through the ``llamavid.commands`` entry-point group
(each entry point names a module with the same ``register`` function).
"""

from __future__ import annotations

import pkgutil

from llamavid.errors import LlamaVidError

_NOT_COMMANDS = {"main"}


def command_modules() -> tuple[str, ...]:
    """Names of the built-in sub-command modules, sorted so `--help` lists them in a stable order."""
    return tuple(
        f"{__name__}.{info.name}"
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name)
        if not info.name.startswith("_") and info.name not in _NOT_COMMANDS
    )


COMMAND_MODULES: tuple[str, ...] = command_modules()


class CommandError(LlamaVidError):
    """A user-facing failure: printed as one line, exit code 2, no traceback.

    Defined here rather than in ``main`` so that ``python -m llamavid.cli.main`` (where ``main`` runs as
    ``__main__``) and the command modules share one class.
    """
