"""The ``llamavid`` command line.

Each sub-command lives in its own module under ``llamavid.cli`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` to a callable ``(args) -> int``. Adding a command means adding a module and one
line to ``COMMAND_MODULES``; third-party packages can add commands through the ``llamavid.commands`` entry-point
group (each entry point names a module with the same ``register`` function).
"""

COMMAND_MODULES: tuple[str, ...] = (
    "llamavid.cli.demo",
    "llamavid.cli.convert",
    "llamavid.cli.train",
    "llamavid.cli.eval_synth",
)
