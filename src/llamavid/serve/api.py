"""Deprecated import path: the OpenAI-compatible server moved to `llamavid.serve.app` (batching to
`llamavid.inference.scheduler`). Kept for one release."""

from __future__ import annotations

import warnings

from llamavid.inference.scheduler import BatchScheduler, QueueFullError
from llamavid.serve.app import APIError, MediaResolver, RunningServer, ServerConfig, create_app

warnings.warn(
    "llamavid.serve.api is deprecated; import from llamavid.serve.app (server) or llamavid.inference "
    "(engine, scheduler). This path goes away in the next release.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "APIError",
    "BatchScheduler",
    "MediaResolver",
    "QueueFullError",
    "RunningServer",
    "ServerConfig",
    "create_app",
]
